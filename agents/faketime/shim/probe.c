/*
 * Test probe for berth-faketime: exercises each wrapped function and prints
 * key=value lines. Elapsed times use CLOCK_MONOTONIC, which the shim leaves real.
 *
 *   probe now                   every wall-clock reading (ns) and the raw kernel clocks
 *   probe <wait> <seconds>      an absolute wall-clock wait of faked now + seconds:
 *                               cond, cond-mono, cond-clock, sem, sem-clock, mutex, rwlock,
 *                               nanosleep-abs, timerfd-abs, timerfd-dup, timer-abs, mq, join
 *   probe sem-at <sec> <nsec>   sem_timedwait with that exact absolute deadline
 *   probe bench <n>             ns per clock_gettime call (realtime, monotonic)
 *   probe stress <threads> <seconds> <offset_ns>...
 *                               threads compare faked and raw realtime readings; prints how
 *                               many matched each expected offset (±0.5 s) and how many none
 *   probe signals <seconds> <offset_ns>
 *                               a SIGALRM handler every 200 us reads the clock while main
 *                               does too; prints how many handler readings had the offset
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

struct probe_timeb {
	time_t time;
	unsigned short millitm;
	short timezone;
	short dstflag;
};
extern int ftime(struct probe_timeb *);

static int64_t ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec; }

static int64_t mono_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return ns(t);
}

static struct timespec deadline(clockid_t clk, double secs)
{
	struct timespec t;
	clock_gettime(clk, &t);
	int64_t v = ns(t) + (int64_t)(secs * 1e9);
	t.tv_sec = v / 1000000000LL;
	t.tv_nsec = v % 1000000000LL;
	return t;
}

static double g_secs;
static int g_rc;
static pthread_mutex_t g_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t g_rw = PTHREAD_RWLOCK_INITIALIZER;
static pthread_cond_t g_c;
static const char *g_kind;

static void *waiter(void *arg)
{
	(void)arg;
	struct timespec d;
	if (!strcmp(g_kind, "cond") || !strcmp(g_kind, "cond-mono") || !strcmp(g_kind, "cond-clock")) {
		clockid_t clk = !strcmp(g_kind, "cond-mono") ? CLOCK_MONOTONIC : CLOCK_REALTIME;
		d = deadline(clk, g_secs);
		pthread_mutex_lock(&g_m);
		do {
			g_rc = !strcmp(g_kind, "cond-clock")
				       ? pthread_cond_clockwait(&g_c, &g_m, CLOCK_REALTIME, &d)
				       : pthread_cond_timedwait(&g_c, &g_m, &d);
		} while (g_rc == 0); /* spurious wake-ups */
		pthread_mutex_unlock(&g_m);
	} else if (!strcmp(g_kind, "mutex")) {
		d = deadline(CLOCK_REALTIME, g_secs);
		g_rc = pthread_mutex_timedlock(&g_m, &d);
	} else if (!strcmp(g_kind, "rwlock")) {
		d = deadline(CLOCK_REALTIME, g_secs);
		g_rc = pthread_rwlock_timedrdlock(&g_rw, &d);
	}
	return NULL;
}

static void *sleeper(void *arg)
{
	(void)arg;
	sleep(30);
	return NULL;
}

static int run_wait(const char *kind, double secs)
{
	struct timespec d;
	int rc = -1, err = 0;
	g_kind = kind;
	g_secs = secs;
	int64_t start = mono_ns();
	if (!strncmp(kind, "cond", 4) || !strcmp(kind, "mutex") || !strcmp(kind, "rwlock")) {
		pthread_condattr_t a;
		pthread_condattr_init(&a);
		pthread_condattr_setclock(&a, !strcmp(kind, "cond-mono") ? CLOCK_MONOTONIC : CLOCK_REALTIME);
		pthread_cond_init(&g_c, &a);
		if (!strcmp(kind, "mutex"))
			pthread_mutex_lock(&g_m);
		if (!strcmp(kind, "rwlock"))
			pthread_rwlock_wrlock(&g_rw);
		start = mono_ns();
		pthread_t t;
		pthread_create(&t, NULL, waiter, NULL);
		pthread_join(t, NULL);
		rc = g_rc;
	} else if (!strcmp(kind, "sem") || !strcmp(kind, "sem-clock")) {
		sem_t s;
		sem_init(&s, 0, 0);
		d = deadline(CLOCK_REALTIME, secs);
		do {
			rc = !strcmp(kind, "sem") ? sem_timedwait(&s, &d)
						  : sem_clockwait(&s, CLOCK_REALTIME, &d);
		} while (rc != 0 && errno == EINTR);
		err = errno;
		rc = rc == 0 ? 0 : err;
	} else if (!strcmp(kind, "nanosleep-abs")) {
		d = deadline(CLOCK_REALTIME, secs);
		while ((rc = clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &d, NULL)) == EINTR)
			;
	} else if (!strcmp(kind, "timerfd-abs") || !strcmp(kind, "timerfd-dup")) {
		int fd = timerfd_create(CLOCK_REALTIME, 0);
		int use = !strcmp(kind, "timerfd-dup") ? dup(fd) : fd;
		struct itimerspec its = {{0, 0}, deadline(CLOCK_REALTIME, secs)};
		rc = timerfd_settime(use, TFD_TIMER_ABSTIME, &its, NULL);
		if (rc == 0) {
			uint64_t n;
			rc = read(fd, &n, sizeof n) == sizeof n ? 0 : errno;
		} else {
			rc = errno;
		}
	} else if (!strcmp(kind, "timer-abs")) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGRTMIN);
		sigprocmask(SIG_BLOCK, &set, NULL);
		struct sigevent sev;
		memset(&sev, 0, sizeof sev);
		sev.sigev_notify = SIGEV_SIGNAL;
		sev.sigev_signo = SIGRTMIN;
		timer_t id;
		if (timer_create(CLOCK_REALTIME, &sev, &id) != 0)
			return printf("rc=%d\n", errno), 1;
		struct itimerspec its = {{0, 0}, deadline(CLOCK_REALTIME, secs)};
		rc = timer_settime(id, TIMER_ABSTIME, &its, NULL);
		if (rc == 0) {
			struct timespec limit = {30, 0};
			rc = sigtimedwait(&set, NULL, &limit) == SIGRTMIN ? 0 : errno;
		}
		timer_delete(id);
	} else if (!strcmp(kind, "mq")) {
		char name[64];
		snprintf(name, sizeof name, "/berth-faketime-probe-%d", (int)getpid());
		struct mq_attr attr = {0, 4, 16, 0, {0}};
		mqd_t q = mq_open(name, O_CREAT | O_RDWR | O_EXCL, 0600, &attr);
		if (q == (mqd_t)-1)
			return printf("rc=%d\n", errno), 1;
		mq_unlink(name);
		start = mono_ns();
		d = deadline(CLOCK_REALTIME, secs);
		char buf[16];
		rc = mq_timedreceive(q, buf, sizeof buf, NULL, &d) < 0 ? errno : 0;
		mq_close(q);
	} else if (!strcmp(kind, "join")) {
		pthread_t t;
		pthread_create(&t, NULL, sleeper, NULL);
		d = deadline(CLOCK_REALTIME, secs);
		rc = pthread_timedjoin_np(t, NULL, &d);
	} else {
		fprintf(stderr, "unknown wait %s\n", kind);
		return 2;
	}
	int64_t elapsed = mono_ns() - start;
	printf("rc=%d\nelapsed_ms=%lld\n", rc, (long long)(elapsed / 1000000));
	return 0;
}

static void print_now(void)
{
	struct timespec t;
	struct timeval tv;
	struct probe_timeb tb;
	clock_gettime(CLOCK_REALTIME, &t);
	printf("realtime=%lld\n", (long long)ns(t));
	clock_gettime(CLOCK_REALTIME_COARSE, &t);
	printf("realtime_coarse=%lld\n", (long long)ns(t));
	clock_gettime(CLOCK_TAI, &t);
	printf("tai=%lld\n", (long long)ns(t));
	gettimeofday(&tv, NULL);
	printf("gettimeofday=%lld\n", (long long)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL);
	printf("time=%lld\n", (long long)time(NULL) * 1000000000LL);
	timespec_get(&t, TIME_UTC);
	printf("timespec_get=%lld\n", (long long)ns(t));
	ftime(&tb);
	printf("ftime=%lld\n", (long long)tb.time * 1000000000LL + tb.millitm * 1000000LL);
	syscall(SYS_clock_gettime, CLOCK_REALTIME, &t);
	printf("raw_realtime=%lld\n", (long long)ns(t));
	syscall(SYS_clock_gettime, CLOCK_TAI, &t);
	printf("raw_tai=%lld\n", (long long)ns(t));
	clock_gettime(CLOCK_MONOTONIC, &t);
	printf("monotonic=%lld\n", (long long)ns(t));
	syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
	printf("raw_monotonic=%lld\n", (long long)ns(t));
	clock_gettime(CLOCK_BOOTTIME, &t);
	printf("boottime=%lld\n", (long long)ns(t));
	syscall(SYS_clock_gettime, CLOCK_BOOTTIME, &t);
	printf("raw_boottime=%lld\n", (long long)ns(t));
}

static void bench(long n)
{
	struct timespec t;
	volatile int64_t sink = 0;
	clockid_t clocks[] = {CLOCK_REALTIME, CLOCK_MONOTONIC};
	const char *names[] = {"realtime", "monotonic"};
	for (int c = 0; c < 2; c++) {
		for (long i = 0; i < n / 10; i++) /* warm up */
			clock_gettime(clocks[c], &t);
		int64_t start = mono_ns();
		for (long i = 0; i < n; i++) {
			clock_gettime(clocks[c], &t);
			sink += t.tv_nsec;
		}
		printf("%s_ns_per_call=%.2f\n", names[c], (double)(mono_ns() - start) / (double)n);
	}
	(void)sink;
}

#define STRESS_MAX_OFFSETS 8
static int64_t g_stress_offsets[STRESS_MAX_OFFSETS];
static int g_stress_n;
static int64_t g_stress_until;
static long g_stress_hits[STRESS_MAX_OFFSETS + 1];

static void *stress_thread(void *arg)
{
	(void)arg;
	long hits[STRESS_MAX_OFFSETS + 1] = {0};
	while (mono_ns() < g_stress_until) {
		struct timespec raw, faked;
		syscall(SYS_clock_gettime, CLOCK_REALTIME, &raw);
		clock_gettime(CLOCK_REALTIME, &faked);
		int64_t d = ns(faked) - ns(raw);
		int k = g_stress_n;
		for (int i = 0; i < g_stress_n; i++)
			if (d > g_stress_offsets[i] - 500000000LL && d < g_stress_offsets[i] + 500000000LL)
				k = i;
		hits[k]++;
	}
	for (int i = 0; i <= g_stress_n; i++)
		__atomic_fetch_add(&g_stress_hits[i], hits[i], __ATOMIC_RELAXED);
	return NULL;
}

static int stress(int threads, double secs, int n, char **offsets)
{
	if (threads < 1 || threads > 64 || n < 1 || n > STRESS_MAX_OFFSETS)
		return 2;
	g_stress_n = n;
	for (int i = 0; i < n; i++)
		g_stress_offsets[i] = atoll(offsets[i]);
	g_stress_until = mono_ns() + (int64_t)(secs * 1e9);
	pthread_t t[64];
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, stress_thread, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < n; i++)
		printf("offset%d=%ld\n", i, g_stress_hits[i]);
	printf("other=%ld\n", g_stress_hits[n]);
	return 0;
}

static volatile sig_atomic_t g_sig_good, g_sig_bad;
static int64_t g_sig_offset;

static void on_alarm(int sig)
{
	(void)sig;
	int saved = errno;
	struct timespec raw, faked;
	syscall(SYS_clock_gettime, CLOCK_REALTIME, &raw);
	clock_gettime(CLOCK_REALTIME, &faked);
	int64_t d = ns(faked) - ns(raw) - g_sig_offset;
	if (d > -500000000LL && d < 500000000LL)
		g_sig_good++;
	else
		g_sig_bad++;
	errno = saved;
}

static int signals(double secs, int64_t offset)
{
	g_sig_offset = offset;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_alarm;
	sa.sa_flags = SA_RESTART;
	sigaction(SIGALRM, &sa, NULL);
	struct itimerval it = {{0, 200}, {0, 200}};
	setitimer(ITIMER_REAL, &it, NULL);
	int64_t until = mono_ns() + (int64_t)(secs * 1e9);
	long reads = 0;
	struct timespec t;
	while (mono_ns() < until) {
		clock_gettime(CLOCK_REALTIME, &t);
		reads++;
	}
	struct itimerval off = {{0, 0}, {0, 0}};
	setitimer(ITIMER_REAL, &off, NULL);
	printf("main_reads=%ld\nhandler_good=%ld\nhandler_bad=%ld\n", reads, (long)g_sig_good,
	       (long)g_sig_bad);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 2 && !strcmp(argv[1], "now")) {
		print_now();
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "bench")) {
		bench(atol(argv[2]));
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "sem-at")) {
		sem_t s;
		sem_init(&s, 0, 0);
		struct timespec d = {atol(argv[2]), atol(argv[3])};
		int64_t start = mono_ns();
		int rc = sem_timedwait(&s, &d);
		printf("rc=%d\nelapsed_ms=%lld\n", rc == 0 ? 0 : errno,
		       (long long)((mono_ns() - start) / 1000000));
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "signals"))
		return signals(atof(argv[2]), atoll(argv[3]));
	if (argc >= 5 && !strcmp(argv[1], "stress"))
		return stress(atoi(argv[2]), atof(argv[3]), argc - 4, argv + 4);
	if (argc == 3)
		return run_wait(argv[1], atof(argv[2]));
	fprintf(stderr, "usage: probe now | bench <n> | sem-at <sec> <nsec> | <wait> <seconds>\n");
	return 2;
}
