/* evfd_pidfd: pidfds of processes of the tree name the same processes:
 *   live    PIDFD_NONBLOCK, of a child blocked in read(): not ready; after
 *           pidfd_send_signal(SIGKILL) ready, and waitid(P_PIDFD) reaps it
 *   self    of this process: signal 0 through it works
 *   zombie  of a child that exited with 7, not reaped: ready, and waitid
 *           (P_PIDFD) gives 7
 *   reaped  of a child already reaped: fdinfo says Pid -1, ready, and
 *           waitid finds no child
 * fdinfo shows each one's pid as before.
 */
#include "cpt_test.h"
#include <poll.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#ifndef PIDFD_NONBLOCK
#define PIDFD_NONBLOCK O_NONBLOCK
#endif

static int pidfd_open(pid_t pid, unsigned flags)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, flags);
	CHECK(fd >= 0, "pidfd_open(%d): %m", (int)pid);
	return fd;
}

static int fdinfo_pid(int fd)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	const char *p = strstr(cpt_read_file(path), "\nPid:");
	CHECK(p != NULL, "fd %d: no Pid in fdinfo", fd);
	return atoi(p + 5);
}

static int is_ready(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n = poll(&p, 1, ms);
	CHECK(n >= 0, "poll: %m");
	return n == 1 && (p.revents & POLLIN);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	int hold[2];
	CHECK(pipe(hold) == 0, "pipe: %m");
	pid_t live_pid = fork();
	CHECK(live_pid >= 0, "fork: %m");
	if (live_pid == 0) {
		char c;
		close(hold[1]);
		(void)!read(hold[0], &c, 1);
		_exit(0);
	}
	close(hold[0]);
	pid_t zombie_pid = fork();
	CHECK(zombie_pid >= 0, "fork: %m");
	if (zombie_pid == 0)
		_exit(7);
	pid_t reaped_pid = fork();
	CHECK(reaped_pid >= 0, "fork: %m");
	if (reaped_pid == 0) {
		cpt_sleep_ms(50);
		_exit(0);
	}
	int live = pidfd_open(live_pid, PIDFD_NONBLOCK);
	int self = pidfd_open(getpid(), 0);
	int zombie = pidfd_open(zombie_pid, 0);
	int reaped = pidfd_open(reaped_pid, 0);
	CHECK(waitpid(reaped_pid, NULL, 0) == reaped_pid, "waitpid: %m");
	CHECK(is_ready(zombie, 5000), "zombie: never exited");
	CHECK(fdinfo_pid(reaped) == -1, "reaped: fdinfo pid %d", fdinfo_pid(reaped));
	cpt_ready();
	cpt_wait();

	CHECK(fdinfo_pid(live) == live_pid, "live: pid %d, want %d", fdinfo_pid(live), live_pid);
	CHECK(fdinfo_pid(self) == getpid(), "self: pid %d", fdinfo_pid(self));
	CHECK(fdinfo_pid(zombie) == zombie_pid, "zombie: pid %d", fdinfo_pid(zombie));
	CHECK(fdinfo_pid(reaped) == -1, "reaped: pid %d", fdinfo_pid(reaped));
	CHECK((fcntl(live, F_GETFL) & O_NONBLOCK) != 0, "live lost PIDFD_NONBLOCK");
	CHECK((fcntl(self, F_GETFL) & O_NONBLOCK) == 0, "self became non-blocking");

	CHECK(syscall(SYS_pidfd_send_signal, self, 0, NULL, 0) == 0, "self: signal 0: %m");
	CHECK(!is_ready(live, 0), "live: ready while its process runs");
	CHECK(syscall(SYS_pidfd_send_signal, live, SIGKILL, NULL, 0) == 0, "live: kill: %m");
	CHECK(is_ready(live, 5000), "live: not ready once killed");
	siginfo_t si = { 0 };
	CHECK(waitid(P_PIDFD, (id_t)live, &si, WEXITED) == 0, "live: waitid: %m");
	CHECK(si.si_pid == live_pid && si.si_code == CLD_KILLED && si.si_status == SIGKILL,
	      "live: waitid pid %d code %d status %d", si.si_pid, si.si_code, si.si_status);

	CHECK(is_ready(zombie, 0), "zombie: not ready");
	memset(&si, 0, sizeof(si));
	CHECK(waitid(P_PIDFD, (id_t)zombie, &si, WEXITED) == 0, "zombie: waitid: %m");
	CHECK(si.si_pid == zombie_pid && si.si_code == CLD_EXITED && si.si_status == 7,
	      "zombie: waitid pid %d code %d status %d", si.si_pid, si.si_code, si.si_status);

	CHECK(is_ready(reaped, 0), "reaped: not ready");
	CHECK(waitid(P_PIDFD, (id_t)reaped, &si, WEXITED | WNOHANG) < 0 && errno == ECHILD,
	      "reaped: waitid found a child (%m)");
	cpt_ok();
}
