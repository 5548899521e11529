/*
 * clockprobe: a small program for berth's vDSO tests and benchmark, built static (against
 * glibc and against musl). It answers one command per line on stdin, one line on stdout:
 *
 *   now          real=<ns> sysreal=<ns> mono=<ns> sysmono=<ns> coarse=<ns> tai=<ns> systai=<ns>
 *                gtod=<us> time=<s>   (sys* through the system call, the rest through the C
 *                library, which reads the vDSO)
 *   sleep <ms>   nanosleep, then "slept <ns>" (monotonic, through the system call)
 *   fork         the child answers from now on ("child <pid>"); when it exits, the parent
 *                answers "parent" and goes on
 *   spin <n>     n threads read CLOCK_REALTIME and CLOCK_MONOTONIC in a loop; "spinning"
 *   check        "reads=<n> backwards=<n>": monotonic readings that went backwards
 *   bench <n>    "bench realtime=<ns> monotonic=<ns>": per call, best of 7 runs of n calls
 *   exit         exits 0
 *
 * `clockprobe serve <file>` instead rewrites <file> (atomically) every second with
 * "seq=<n> real= sysreal= mono= sysmono= slept=<ns> forked=<ns>": slept is how long the last
 * nanosleep of 1 s took (monotonic, system call), forked the wall-clock offset (libc minus
 * system call) a child forked for the purpose measured. SIGTERM ends it (it may be PID 1).
 *
 * stdin is read byte by byte (no stdio buffering), so a forked child and its parent never
 * take each other's input.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOCK_TAI
#define CLOCK_TAI 11
#endif

static int64_t ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int64_t libc_clock(clockid_t c)
{
	struct timespec t;
	if (clock_gettime(c, &t) != 0)
		return -1;
	return ns(t);
}

static int64_t sys_clock(clockid_t c)
{
	struct timespec t;
	if (syscall(SYS_clock_gettime, c, &t) != 0)
		return -1;
	return ns(t);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#include <stdarg.h>
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t off = 0;
	while (off < n) {
		ssize_t w = write(1, buf + off, n - off);
		if (w <= 0)
			exit(3);
		off += w;
	}
}

static int read_line(char *buf, size_t size)
{
	size_t n = 0;
	for (;;) {
		char c;
		ssize_t r = read(0, &c, 1);
		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		if (n + 1 < size)
			buf[n++] = c;
	}
	buf[n] = 0;
	return (int)n;
}

static volatile long g_reads, g_backwards;

static void *spin(void *arg)
{
	(void)arg;
	int64_t last = 0;
	for (;;) {
		struct timespec r, m;
		clock_gettime(CLOCK_REALTIME, &r);
		clock_gettime(CLOCK_MONOTONIC, &m);
		if (ns(m) < last)
			__atomic_add_fetch(&g_backwards, 1, __ATOMIC_RELAXED);
		last = ns(m);
		__atomic_add_fetch(&g_reads, 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

static double per_call(clockid_t c, long n)
{
	struct timespec t;
	volatile int64_t sink = 0;
	double best = 1e18;
	for (long i = 0; i < n / 10; i++)
		clock_gettime(c, &t);
	for (int run = 0; run < 7; run++) {
		int64_t start = sys_clock(CLOCK_MONOTONIC);
		for (long i = 0; i < n; i++) {
			clock_gettime(c, &t);
			sink += t.tv_nsec;
		}
		double d = (double)(sys_clock(CLOCK_MONOTONIC) - start) / (double)n;
		if (d < best)
			best = d;
	}
	(void)sink;
	return best;
}

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

static void serve(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	int64_t slept = 0;
	for (long seq = 0;; seq++) {
		int64_t forked = 0;
		int fd[2];
		if (pipe(fd) == 0) {
			pid_t pid = fork();
			if (pid == 0) {
				int64_t off = libc_clock(CLOCK_REALTIME) - sys_clock(CLOCK_REALTIME);
				if (write(fd[1], &off, sizeof off) != sizeof off)
					_exit(1);
				_exit(0);
			}
			close(fd[1]);
			if (pid > 0 && read(fd[0], &forked, sizeof forked) != sizeof forked)
				forked = 0;
			close(fd[0]);
			if (pid > 0)
				waitpid(pid, NULL, 0);
		}
		FILE *f = fopen(tmp, "w");
		if (f) {
			fprintf(f, "seq=%ld real=%lld sysreal=%lld mono=%lld sysmono=%lld slept=%lld forked=%lld\n",
				seq, (long long)libc_clock(CLOCK_REALTIME), (long long)sys_clock(CLOCK_REALTIME),
				(long long)libc_clock(CLOCK_MONOTONIC), (long long)sys_clock(CLOCK_MONOTONIC),
				(long long)slept, (long long)forked);
			fclose(f);
			rename(tmp, path);
		}
		struct timespec d = {1, 0};
		int64_t start = sys_clock(CLOCK_MONOTONIC);
		while (nanosleep(&d, &d) != 0)
			;
		slept = sys_clock(CLOCK_MONOTONIC) - start;
	}
}

int main(int argc, char **argv)
{
	char line[256];
	if (argc == 3 && !strcmp(argv[1], "serve"))
		serve(argv[2]);
	say("ready");
	while (read_line(line, sizeof line) >= 0) {
		if (!strcmp(line, "now")) {
			struct timeval tv;
			gettimeofday(&tv, NULL);
			time_t t = time(NULL);
			say("real=%lld sysreal=%lld mono=%lld sysmono=%lld coarse=%lld tai=%lld systai=%lld gtod=%lld time=%lld",
			    (long long)libc_clock(CLOCK_REALTIME), (long long)sys_clock(CLOCK_REALTIME),
			    (long long)libc_clock(CLOCK_MONOTONIC), (long long)sys_clock(CLOCK_MONOTONIC),
			    (long long)libc_clock(CLOCK_REALTIME_COARSE), (long long)libc_clock(CLOCK_TAI),
			    (long long)sys_clock(CLOCK_TAI),
			    (long long)tv.tv_sec * 1000000 + tv.tv_usec, (long long)t);
		} else if (!strncmp(line, "sleep ", 6)) {
			long ms = atol(line + 6);
			struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
			int64_t start = sys_clock(CLOCK_MONOTONIC);
			while (nanosleep(&d, &d) != 0)
				;
			say("slept %lld", (long long)(sys_clock(CLOCK_MONOTONIC) - start));
		} else if (!strcmp(line, "fork")) {
			pid_t pid = fork();
			if (pid == 0) {
				say("child %d", (int)getpid());
				continue;
			}
			if (pid < 0) {
				say("fork failed");
				continue;
			}
			int st;
			while (waitpid(pid, &st, 0) < 0)
				;
			say("parent");
		} else if (!strncmp(line, "spin ", 5)) {
			int n = atoi(line + 5);
			for (int i = 0; i < n; i++) {
				pthread_t t;
				pthread_create(&t, NULL, spin, NULL);
			}
			say("spinning");
		} else if (!strcmp(line, "check")) {
			say("reads=%ld backwards=%ld", g_reads, g_backwards);
		} else if (!strncmp(line, "bench ", 6)) {
			long n = atol(line + 6);
			double r = per_call(CLOCK_REALTIME, n);
			double m = per_call(CLOCK_MONOTONIC, n);
			say("bench realtime=%.2f monotonic=%.2f", r, m);
		} else if (!strcmp(line, "exit")) {
			return 0;
		} else {
			say("unknown command");
		}
	}
	return 0;
}
