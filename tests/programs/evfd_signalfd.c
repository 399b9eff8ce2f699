/* evfd_signalfd: signalfds keep their mask and flags, and read the signals
 * pending for the restored process:
 *   usr2    mask {SIGUSR2, SIGRTMIN+1}, SFD_NONBLOCK; SIGUSR2 pending at the
 *           checkpoint: reads it (sent by this pid), then EAGAIN
 *   rt      mask {SIGRTMIN+3}, blocking, watched by an epoll: not ready until
 *           sigqueue(SIGRTMIN+3, 77) after the restore, then reads it with
 *           its value
 * The masks in fdinfo are the same after the restore.
 */
#include "cpt_test.h"
#include <sys/epoll.h>
#include <sys/signalfd.h>

static const char *sigmask_line(int fd)
{
	static char line[64];
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	const char *p = strstr(cpt_read_file(path), "sigmask:");
	CHECK(p != NULL, "fd %d: no sigmask in fdinfo", fd);
	snprintf(line, sizeof(line), "%.*s", (int)strcspn(p, "\n"), p);
	return line;
}

static void read_one(int fd, int signo, int value, const char *what)
{
	struct signalfd_siginfo si;
	CHECK(read(fd, &si, sizeof(si)) == sizeof(si), "%s: read: %m", what);
	CHECK((int)si.ssi_signo == signo, "%s: got signal %u, want %d", what, si.ssi_signo, signo);
	CHECK(si.ssi_pid == (uint32_t)getpid(), "%s: sent by %u", what, si.ssi_pid);
	if (value >= 0)
		CHECK(si.ssi_int == value, "%s: value %d, want %d", what, si.ssi_int, value);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	sigset_t usr2, rt, all;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigaddset(&usr2, SIGRTMIN + 1);
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN + 3);
	sigemptyset(&all);
	sigaddset(&all, SIGUSR2);
	sigaddset(&all, SIGRTMIN + 1);
	sigaddset(&all, SIGRTMIN + 3);
	CHECK(sigprocmask(SIG_BLOCK, &all, NULL) == 0, "sigprocmask: %m");
	int fd_usr2 = signalfd(-1, &usr2, SFD_NONBLOCK);
	int fd_rt = signalfd(-1, &rt, 0);
	CHECK(fd_usr2 >= 0 && fd_rt >= 0, "signalfd: %m");
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0xabc };
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd_rt, &ev) == 0, "epoll_ctl: %m");
	CHECK(kill(getpid(), SIGUSR2) == 0, "kill: %m");
	char mask_usr2[64], mask_rt[64];
	snprintf(mask_usr2, sizeof(mask_usr2), "%s", sigmask_line(fd_usr2));
	snprintf(mask_rt, sizeof(mask_rt), "%s", sigmask_line(fd_rt));
	cpt_ready();
	cpt_wait();

	CHECK(strcmp(sigmask_line(fd_usr2), mask_usr2) == 0, "usr2: %s, was %s",
	      sigmask_line(fd_usr2), mask_usr2);
	CHECK(strcmp(sigmask_line(fd_rt), mask_rt) == 0, "rt: %s, was %s", sigmask_line(fd_rt),
	      mask_rt);
	CHECK((fcntl(fd_usr2, F_GETFL) & O_NONBLOCK) != 0, "usr2 lost O_NONBLOCK");
	CHECK((fcntl(fd_rt, F_GETFL) & O_NONBLOCK) == 0, "rt became O_NONBLOCK");
	read_one(fd_usr2, SIGUSR2, -1, "usr2");
	struct signalfd_siginfo si;
	CHECK(read(fd_usr2, &si, sizeof(si)) < 0 && errno == EAGAIN, "usr2: more signals (%m)");
	CHECK(epoll_wait(ep, &ev, 1, 0) == 0, "rt: ready with no signal pending");
	union sigval val = { .sival_int = 77 };
	CHECK(sigqueue(getpid(), SIGRTMIN + 3, val) == 0, "sigqueue: %m");
	CHECK(epoll_wait(ep, &ev, 1, 1000) == 1 && ev.data.u64 == 0xabc, "rt: not ready");
	read_one(fd_rt, SIGRTMIN + 3, 77, "rt");
	cpt_ok();
}
