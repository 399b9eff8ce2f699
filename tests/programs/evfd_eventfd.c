/* evfd_eventfd: eventfds keep their count, mode and flags, checked after the
 * restore from inside:
 *   plain   count 5, EFD_NONBLOCK: reads 5, then EAGAIN
 *   sem     EFD_SEMAPHORE, count 3: reads 1 three times, then EAGAIN
 *   big     a count above 32 bits (0x123456789), blocking
 *   full    count 0xfffffffffffffffe: readable, not writable
 *   shared  count 0, shared with a child blocked in read() across the
 *           checkpoint: the parent writes 42 after the restore, the child
 *           reads 42 and exits 0
 */
#include "cpt_test.h"
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

#define BIG 0x123456789ULL
#define FULL 0xfffffffffffffffeULL

static uint64_t get(int fd, const char *what)
{
	uint64_t v = 0;
	CHECK(read(fd, &v, 8) == 8, "%s: read: %m", what);
	return v;
}

static void put(int fd, uint64_t v, const char *what)
{
	CHECK(write(fd, &v, 8) == 8, "%s: write: %m", what);
}

static void check_empty(int fd, const char *what)
{
	uint64_t v;
	CHECK(read(fd, &v, 8) < 0 && errno == EAGAIN, "%s: not empty (%m)", what);
}

static const char *fdinfo(int fd)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	return cpt_read_file(path);
}

static void wait_in_read(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/syscall", (int)pid);
	for (int i = 0; i < 5000; i++) {
		long nr = -2;
		if (sscanf(cpt_read_file(path), "%ld", &nr) == 1 && nr == SYS_read)
			return;
		cpt_sleep_ms(2);
	}
	cpt_fail("child %d never blocked in read", (int)pid);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	int plain = eventfd(5, EFD_NONBLOCK);
	int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	int big = eventfd(0, 0);
	int full = eventfd(0, EFD_NONBLOCK);
	int shared = eventfd(0, 0);
	CHECK(plain >= 0 && sem >= 0 && big >= 0 && full >= 0 && shared >= 0, "eventfd: %m");
	put(big, BIG, "big");
	put(full, FULL, "full");
	pid_t child = fork();
	CHECK(child >= 0, "fork: %m");
	if (child == 0) {
		uint64_t got = get(shared, "shared (child)");
		_exit(got == 42 ? 0 : 3);
	}
	wait_in_read(child);
	cpt_ready();
	cpt_wait();

	CHECK((fcntl(plain, F_GETFL) & O_NONBLOCK) != 0, "plain lost O_NONBLOCK");
	CHECK((fcntl(big, F_GETFL) & O_NONBLOCK) == 0, "big became O_NONBLOCK");
	CHECK(get(plain, "plain") == 5, "plain: wrong count");
	check_empty(plain, "plain");
	for (int i = 0; i < 3; i++)
		CHECK(get(sem, "sem") == 1, "sem: a semaphore reads 1");
	check_empty(sem, "sem");
	CHECK(strstr(fdinfo(sem), "eventfd-semaphore: 1") != NULL, "sem: fdinfo %s", fdinfo(sem));
	CHECK(get(big, "big") == BIG, "big: wrong count");
	struct pollfd p = { .fd = full, .events = POLLIN | POLLOUT };
	CHECK(poll(&p, 1, 0) == 1 && p.revents == POLLIN, "full: revents %#x", p.revents);
	uint64_t one = 1;
	CHECK(write(full, &one, 8) < 0 && errno == EAGAIN, "full: took one more (%m)");
	CHECK(get(full, "full") == FULL, "full: wrong count");

	put(shared, 42, "shared");
	int status;
	CHECK(waitpid(child, &status, 0) == child, "waitpid: %m");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
	cpt_ok();
}
