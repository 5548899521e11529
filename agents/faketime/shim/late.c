/*
 * For scripts/glibc-matrix: a program that loads librt.so.1 only after it started (dlopen,
 * RTLD_GLOBAL) and calls mq_timedreceive through the global scope, where the preloaded shim's
 * wrapper comes first. Before glibc 2.34 mq_* live in librt alone, so the wrapper finds the
 * real function only on first use. Waits on an empty queue until "faked now + 0.5 s" and
 * prints rc=<errno> elapsed_ms=<ms>: 110 after about 500 ms when the wrapper found librt's
 * function and translated the deadline; 38 (ENOSYS) at once when it found nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

typedef mqd_t (*open_fn)(const char *, int, ...);
typedef ssize_t (*receive_fn)(mqd_t, char *, size_t, unsigned int *, const struct timespec *);
typedef int (*unlink_fn)(const char *);

static long long ms(struct timespec t) { return t.tv_sec * 1000LL + t.tv_nsec / 1000000; }

int main(void)
{
	if (dlopen("librt.so.1", RTLD_NOW | RTLD_GLOBAL) == NULL) {
		fprintf(stderr, "dlopen librt.so.1: %s\n", dlerror());
		return 2;
	}
	open_fn open_q = (open_fn)dlsym(RTLD_DEFAULT, "mq_open");
	receive_fn receive = (receive_fn)dlsym(RTLD_DEFAULT, "mq_timedreceive");
	unlink_fn unlink_q = (unlink_fn)dlsym(RTLD_DEFAULT, "mq_unlink");
	if (open_q == NULL || receive == NULL || unlink_q == NULL) {
		fprintf(stderr, "mq_* not found after dlopen\n");
		return 2;
	}
	char name[64];
	snprintf(name, sizeof name, "/berth-late-%d", (int)getpid());
	struct mq_attr attr = {0, 4, 16, 0};
	mqd_t q = open_q(name, O_CREAT | O_RDWR, 0600, &attr);
	if (q == (mqd_t)-1) {
		perror("mq_open");
		return 2;
	}
	unlink_q(name);
	struct timespec deadline, start, end;
	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_nsec += 500000000L;
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_nsec -= 1000000000L;
		deadline.tv_sec++;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	char buf[16];
	ssize_t r = receive(q, buf, sizeof buf, NULL, &deadline);
	int rc = r < 0 ? errno : 0;
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("rc=%d\nelapsed_ms=%lld\n", rc, ms(end) - ms(start));
	return 0;
}
