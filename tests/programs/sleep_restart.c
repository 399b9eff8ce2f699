/* sleep_restart: threads asleep in syscalls when the dump comes.
 * - "sleeper" is in nanosleep(3 s).  A freeze may end the call early with
 *   EINTR and the remaining time (it then sleeps the rest), or restart it;
 *   either way each call returns 0 or EINTR with a sane remainder, and the
 *   whole sleep lasts at least 3 s of CLOCK_MONOTONIC.
 * - "reader" is blocked in read() on a pipe; after the restore the main
 *   thread writes to the pipe and the reader must get exactly that. */
#include "cpt_test.h"
#include <pthread.h>

#define SLEEP_S 3

static const char message[] = "data sent after the restore";
static int pipefd[2];
static pid_t sleeper_tid, reader_tid;
static double sleep_start, sleep_end;
static int sleep_calls;
static char got[128];
static ssize_t got_len;

static void *sleeper(void *arg)
{
	(void)arg;
	sleeper_tid = cpt_gettid();
	struct timespec req = { SLEEP_S, 0 }, rem;
	sleep_start = cpt_now(CLOCK_MONOTONIC);
	for (;;) {
		sleep_calls++;
		memset(&rem, 0xff, sizeof(rem));
		int r = nanosleep(&req, &rem);
		if (r == 0)
			break;
		CHECK(errno == EINTR, "nanosleep: %m");
		CHECK(rem.tv_sec >= 0 && rem.tv_nsec >= 0 && rem.tv_nsec < 1000000000L &&
			      (rem.tv_sec < req.tv_sec ||
			       (rem.tv_sec == req.tv_sec && rem.tv_nsec <= req.tv_nsec)),
		      "nanosleep EINTR with remaining %ld.%09ld of %ld.%09ld", (long)rem.tv_sec,
		      rem.tv_nsec, (long)req.tv_sec, req.tv_nsec);
		req = rem;
	}
	sleep_end = cpt_now(CLOCK_MONOTONIC);
	return NULL;
}

static void *reader(void *arg)
{
	(void)arg;
	reader_tid = cpt_gettid();
	do
		got_len = read(pipefd[0], got, sizeof(got));
	while (got_len < 0 && errno == EINTR);
	return NULL;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	CHECK(pipe2(pipefd, O_CLOEXEC) == 0, "pipe: %m");
	pthread_t ts, tr;
	CHECK(pthread_create(&ts, NULL, sleeper, NULL) == 0, "pthread_create");
	CHECK(pthread_create(&tr, NULL, reader, NULL) == 0, "pthread_create");
	while (!sleeper_tid || !reader_tid)
		cpt_sleep_ms(1);
	cpt_wait_in_syscall(sleeper_tid, SYS_clock_nanosleep); /* glibc's nanosleep */
	cpt_wait_in_syscall(reader_tid, SYS_read);

	cpt_ready();
	cpt_wait();

	CHECK(write(pipefd[1], message, sizeof(message)) == (ssize_t)sizeof(message),
	      "write to pipe: %m");
	CHECK(pthread_join(tr, NULL) == 0, "join reader");
	CHECK(got_len == (ssize_t)sizeof(message) && memcmp(got, message, sizeof(message)) == 0,
	      "reader got %zd bytes '%.*s'", got_len, (int)(got_len > 0 ? got_len : 0), got);

	CHECK(pthread_join(ts, NULL) == 0, "join sleeper");
	double slept = sleep_end - sleep_start;
	CHECK(slept >= SLEEP_S - 0.01, "slept only %.3f s of %d s in %d calls", slept, SLEEP_S,
	      sleep_calls);
	cpt_report("INFO slept %.3f s in %d nanosleep calls", slept, sleep_calls);
	cpt_ok();
}
