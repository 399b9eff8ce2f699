/* fd_refused KIND: holds one descriptor vzcpt must refuse to checkpoint, so
 * that a dump fails with one clear line and the program runs on:
 *   io_uring  an io_uring instance
 *   perf      a software perf event on this task
 *   fanotify  a fanotify group
 *   bpf       a BPF array map
 *   uffd      a userfaultfd
 *   inotify   an inotify instance with an event not yet read
 *   pidfd     a pidfd of its parent, which is outside the tree
 *   epoll     an epoll watching an eventfd added as a descriptor since closed
 *             (the eventfd lives on, dup'ed to another number)
 * It reports "FD <n>" (the descriptor) before READY, SKIP if the kernel
 * will not make one; on SIGUSR1 it checks the descriptor is still there.
 */
#include "cpt_test.h"
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <linux/perf_event.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>

static int make(const char *kind)
{
	if (strcmp(kind, "io_uring") == 0) {
		struct io_uring_params p = { 0 };
		return (int)syscall(SYS_io_uring_setup, 4, &p);
	}
	if (strcmp(kind, "perf") == 0) {
		struct perf_event_attr a = { .type = PERF_TYPE_SOFTWARE,
					     .size = sizeof(a),
					     .config = PERF_COUNT_SW_TASK_CLOCK };
		return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
	}
	if (strcmp(kind, "fanotify") == 0)
		return fanotify_init(FAN_CLASS_NOTIF, O_RDONLY);
	if (strcmp(kind, "bpf") == 0) {
		union bpf_attr a;
		memset(&a, 0, sizeof(a));
		a.map_type = BPF_MAP_TYPE_ARRAY;
		a.key_size = 4;
		a.value_size = 4;
		a.max_entries = 1;
		return (int)syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof(a));
	}
	if (strcmp(kind, "uffd") == 0)
		return (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (strcmp(kind, "inotify") == 0) {
		int fd = inotify_init1(0);
		CHECK(fd >= 0, "inotify_init1: %m");
		CHECK(inotify_add_watch(fd, cpt_report_path, IN_MODIFY) > 0, "add_watch: %m");
		return fd; /* writing READY to the report queues an event */
	}
	if (strcmp(kind, "epoll") == 0) {
		int ep = epoll_create1(0), ev = eventfd(0, 0);
		struct epoll_event e = { .events = EPOLLIN };
		CHECK(ep >= 0 && ev >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0, "epoll: %m");
		CHECK(dup(ev) >= 0 && close(ev) == 0, "dup: %m");
		return ep;
	}
	if (strcmp(kind, "pidfd") == 0)
		return (int)syscall(SYS_pidfd_open, getppid(), 0);
	cpt_fail("unknown kind %s", kind);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 1, "KIND");
	int fd = make(argv[2]);
	if (fd < 0) {
		char why[128];
		snprintf(why, sizeof(why), "cannot make %s: %s", argv[2], strerror(errno));
		cpt_skip(why);
	}
	cpt_report("FD %d", fd);
	cpt_ready();
	cpt_wait();
	CHECK(fcntl(fd, F_GETFD) >= 0, "descriptor %d is gone: %m", fd);
	cpt_ok();
}
