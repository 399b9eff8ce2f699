/* evfd_timerfd: timerfds keep their clock, time left, interval, flags and
 * unread expirations, and stay armed:
 *   tick   CLOCK_MONOTONIC every 20 ms, never read: after the restore a read
 *          returns at least the expirations unread at READY (and no more than
 *          could have happened since it was armed), and it goes on ticking;
 *          an epoll watching it reports it ready at once
 *   once   CLOCK_MONOTONIC, 10 ms, expired before READY: reads exactly 1,
 *          then it is disarmed
 *   long   CLOCK_BOOTTIME, 60 s, every 7 s: 30..60 s left, interval 7 s
 *   abs    CLOCK_REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET, 60 s
 *          from now, every 1 s: 30..60 s left, and fdinfo shows clock 0 and
 *          settime flags 03
 *   idle   never armed: disarmed, nothing to read
 */
#include "cpt_test.h"
#include <poll.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#define MS 1000000LL
#define SEC 1000000000LL

static long long ns(struct timespec t)
{
	return t.tv_sec * SEC + t.tv_nsec;
}

static struct timespec ts(long long n)
{
	return (struct timespec){ n / SEC, n % SEC };
}

static int timer(int clock, int flags, int setflags, long long value, long long interval)
{
	int fd = timerfd_create(clock, flags);
	CHECK(fd >= 0, "timerfd_create(%d): %m", clock);
	if (value || interval) {
		struct itimerspec its = { ts(interval), ts(value) };
		CHECK(timerfd_settime(fd, setflags, &its, NULL) == 0, "timerfd_settime: %m");
	}
	return fd;
}

static const char *fdinfo(int fd)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	return cpt_read_file(path);
}

static unsigned long long unread(int fd)
{
	struct itimerspec cur;
	CHECK(timerfd_gettime(fd, &cur) == 0, "timerfd_gettime: %m"); /* counts what fired */
	const char *p = strstr(fdinfo(fd), "ticks:");
	CHECK(p != NULL, "no ticks in fdinfo");
	return strtoull(p + 6, NULL, 10);
}

static void check_left(int fd, long long lo, long long hi, long long interval, const char *what)
{
	struct itimerspec cur;
	CHECK(timerfd_gettime(fd, &cur) == 0, "%s: timerfd_gettime: %m", what);
	long long left = ns(cur.it_value);
	CHECK(left > lo && left <= hi, "%s: %lld ns left, want %lld..%lld", what, left, lo, hi);
	CHECK(ns(cur.it_interval) == interval, "%s: interval %lld ns, want %lld", what,
	      ns(cur.it_interval), interval);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	double armed = cpt_now(CLOCK_MONOTONIC);
	int tick = timer(CLOCK_MONOTONIC, 0, 0, 20 * MS, 20 * MS);
	int once = timer(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 10 * MS, 0);
	int lng = timer(CLOCK_BOOTTIME, 0, 0, 60 * SEC, 7 * SEC);
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int absolute = timer(CLOCK_REALTIME, 0, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
			ns(now) + 60 * SEC, SEC);
	int idle = timer(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 0, 0);
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 0x71c };
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, tick, &ev) == 0, "epoll_ctl: %m");
	cpt_sleep_ms(110);
	unsigned long long at_ready = unread(tick);
	CHECK(at_ready >= 4, "tick: only %llu expirations after 110 ms", at_ready);
	CHECK(unread(once) == 1, "once: did not expire");
	cpt_ready();
	cpt_wait();

	CHECK(epoll_wait(ep, &ev, 1, 0) == 1 && ev.data.u64 == 0x71c, "tick: not ready");
	uint64_t n = 0;
	CHECK(read(tick, &n, 8) == 8, "tick: read: %m");
	double since = cpt_now(CLOCK_MONOTONIC) - armed;
	CHECK(n >= at_ready, "tick: %llu expirations, %llu were unread at READY",
	      (unsigned long long)n, at_ready);
	CHECK(n <= since / 0.020 + 2, "tick: %llu expirations in %.3f s", (unsigned long long)n,
	      since);
	struct pollfd p = { .fd = tick, .events = POLLIN };
	CHECK(poll(&p, 1, 1000) == 1, "tick: stopped ticking");
	CHECK(read(tick, &n, 8) == 8 && n >= 1, "tick: read: %m");

	CHECK(read(once, &n, 8) == 8 && n == 1, "once: read %llu (%m)", (unsigned long long)n);
	CHECK(read(once, &n, 8) < 0 && errno == EAGAIN, "once: read again (%m)");
	check_left(once, -1, 0, 0, "once");

	check_left(lng, 30 * SEC, 60 * SEC, 7 * SEC, "long");
	check_left(absolute, 30 * SEC, 60 * SEC, SEC, "abs");
	CHECK(strstr(fdinfo(absolute), "clockid: 0\n") != NULL, "abs: %s", fdinfo(absolute));
	CHECK(strstr(fdinfo(absolute), "settime flags: 03\n") != NULL, "abs: %s", fdinfo(absolute));
	CHECK(strstr(fdinfo(lng), "clockid: 7\n") != NULL, "long: %s", fdinfo(lng));
	check_left(idle, -1, 0, 0, "idle");
	CHECK(read(idle, &n, 8) < 0 && errno == EAGAIN, "idle: read (%m)");
	cpt_ok();
}
