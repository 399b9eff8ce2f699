/* A process that holds one of each object tests/test_proc.py parses:
 * locks and a lease, eventfd/epoll/signalfd/timerfd/inotify, POSIX timers, a deleted
 * shared mapping whose path has a space, a second thread, and two children
 * (one forked by each thread).  Usage: holder DIR; prints one line of
 * "key=value" and waits to be killed (its children die with it).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define CHECK(x) do { if ((x) < 0) { perror(#x); exit(1); } } while (0)

static pid_t thread_tid, thread_child;
static pthread_barrier_t ready;

static pid_t fork_sleeper(void)
{
	pid_t pid = fork();
	CHECK(pid);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		for (;;)
			pause();
	}
	return pid;
}

static void *thread_main(void *arg)
{
	(void)arg;
	thread_tid = gettid();
	thread_child = fork_sleeper();
	pthread_barrier_wait(&ready);
	for (;;)
		pause();
	return NULL;
}

static int open_in(const char *dir, const char *name, int flags)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, flags | O_CREAT, 0600);
	CHECK(fd);
	return fd;
}

static void on_usr2(int sig) { (void)sig; }

int main(int argc, char **argv)
{
	const char *dir = argv[1];
	char path[4096];
	gid_t groups[] = {1234, 5678};
	timer_t t;
	pthread_t th;

	(void)argc;
	CHECK(prctl(PR_SET_NAME, "a) (b c"));
	CHECK(setgroups(2, groups));
	umask(027);

	int f_flock = open_in(dir, "flock", O_RDWR);
	CHECK(flock(f_flock, LOCK_EX));
	int f_posix = open_in(dir, "posix", O_RDWR | O_APPEND);
	struct flock pl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 5, .l_len = 10};
	CHECK(fcntl(f_posix, F_SETLK, &pl));
	int f_ofd = open_in(dir, "ofd", O_RDWR);
	struct flock ol = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 0};
	CHECK(fcntl(f_ofd, F_OFD_SETLK, &ol));

	int f_lease = open_in(dir, "lease", O_RDONLY);
	CHECK(fcntl(f_lease, F_SETLEASE, F_RDLCK));

	int f_map = open_in(dir, "with space", O_RDWR);
	CHECK(ftruncate(f_map, 4096));
	char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, f_map, 0);
	if (map == MAP_FAILED)
		return 1;
	map[0] = 1;
	close(f_map);
	snprintf(path, sizeof(path), "%s/with space", dir);
	CHECK(unlink(path));

	int f_event = eventfd(5, 0);
	CHECK(f_event);
	int f_epoll = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x42};
	CHECK(epoll_ctl(f_epoll, EPOLL_CTL_ADD, f_event, &ev));
	int pipefd[2];
	CHECK(pipe(pipefd));
	ev.events = EPOLLOUT;
	ev.data.u64 = 0x43;
	CHECK(epoll_ctl(f_epoll, EPOLL_CTL_ADD, pipefd[1], &ev));
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	CHECK(sigprocmask(SIG_BLOCK, &mask, NULL));
	int f_signal = signalfd(-1, &mask, 0);
	CHECK(f_signal);
	int f_timer = timerfd_create(CLOCK_MONOTONIC, 0);
	struct itimerspec its = {.it_interval = {1, 0}, .it_value = {100, 0}};
	CHECK(timerfd_settime(f_timer, 0, &its, NULL));
	int f_inotify = inotify_init1(0);
	CHECK(inotify_add_watch(f_inotify, dir, IN_CREATE));

	signal(SIGPIPE, SIG_IGN);
	signal(SIGUSR2, on_usr2);

	struct sigevent se = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2};
	se.sigev_value.sival_ptr = (void *)0x1234;
	CHECK(timer_create(CLOCK_MONOTONIC, &se, &t));
	memset(&se, 0, sizeof(se));
	se.sigev_notify = SIGEV_THREAD_ID;
	se.sigev_signo = SIGRTMIN + 1;
	se.sigev_value.sival_int = 77;
	se._sigev_un._tid = gettid();
	CHECK(timer_create(CLOCK_REALTIME, &se, &t));
	memset(&se, 0, sizeof(se));
	se.sigev_notify = SIGEV_NONE;
	CHECK(timer_create(CLOCK_BOOTTIME, &se, &t));

	pthread_barrier_init(&ready, NULL, 2);
	CHECK(pthread_create(&th, NULL, thread_main, NULL));
	pthread_barrier_wait(&ready);
	pid_t child = fork_sleeper();

	printf("flock=%d posix=%d ofd=%d lease=%d event=%d epoll=%d signal=%d timer=%d inotify=%d "
	       "map=%lu child=%d thread=%d thread_child=%d\n",
	       f_flock, f_posix, f_ofd, f_lease, f_event, f_epoll, f_signal, f_timer, f_inotify,
	       (unsigned long)map, child, thread_tid, thread_child);
	fflush(stdout);
	for (;;)
		pause();
}
