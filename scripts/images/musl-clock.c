/*
 * Test bed: a musl program that can be a container's entry point (built twice by
 * scripts/lib/images.sh: linked dynamically against musl's loader, and statically).
 *   musl-clock          waits for TERM or INT, then exits 0
 *   musl-clock now      prints the wall clock: "<time()> <clock_gettime(CLOCK_REALTIME) s>"
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "now") == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		printf("%lld %lld\n", (long long)time(NULL), (long long)ts.tv_sec);
		return 0;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	while (!stop)
		pause();
	return 0;
}
