/* timers: interval timers and POSIX timers, armed far in the future.
 *   ITIMER_REAL 1000 s / 500 s, ITIMER_VIRTUAL 900 s / 90 s,
 *   ITIMER_PROF 800 s / 80 s (getitimer must give the same intervals and
 *   a remaining time no more than the value (plus a tick) and no less
 *   than the value minus the time that passed);
 *   POSIX timers: t0 CLOCK_MONOTONIC 3600 s / 60 s, t1 deleted (a hole in
 *   the ids), t2 CLOCK_REALTIME disarmed with SIGRTMIN+1 and sival 77.
 * After the restore t0 and t2 have the same ids and t1 is still invalid;
 * t2 is armed for 10 ms and must signal with its saved sigevent. */
#include "cpt_test.h"
#include <sys/time.h>

#define TIMER_SIG (SIGRTMIN + 1)
#define SIVAL 77

struct itv {
	int which;
	const char *name;
	long value, interval;
};

static const struct itv itimers[] = {
	{ ITIMER_REAL, "ITIMER_REAL", 1000, 500 },
	{ ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 900, 90 },
	{ ITIMER_PROF, "ITIMER_PROF", 800, 80 },
};

static volatile int fired; /* none of these should fire during the test */

static void on_timer_signal(int sig)
{
	(void)sig;
	fired++;
}

static double tv_s(struct timeval tv)
{
	return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static double ts_s(struct timespec ts)
{
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static timer_t make_timer(clockid_t clk, int value)
{
	struct sigevent sev = { 0 };
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = TIMER_SIG;
	sev.sigev_value.sival_int = value;
	timer_t t;
	CHECK(timer_create(clk, &sev, &t) == 0, "timer_create: %m");
	return t;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	signal(SIGALRM, on_timer_signal);
	signal(SIGVTALRM, on_timer_signal);
	signal(SIGPROF, on_timer_signal);
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, TIMER_SIG);
	CHECK(sigprocmask(SIG_BLOCK, &rt, NULL) == 0, "block: %m"); /* taken by sigtimedwait */

	double start = cpt_now(CLOCK_MONOTONIC);
	for (size_t i = 0; i < 3; i++) {
		struct itimerval v = { { itimers[i].interval, 0 }, { itimers[i].value, 0 } };
		CHECK(setitimer(itimers[i].which, &v, NULL) == 0, "setitimer %s: %m",
		      itimers[i].name);
	}
	timer_t t0 = make_timer(CLOCK_MONOTONIC, 0);
	timer_t t1 = make_timer(CLOCK_MONOTONIC, 1);
	timer_t t2 = make_timer(CLOCK_REALTIME, SIVAL);
	CHECK(timer_delete(t1) == 0, "timer_delete: %m");
	struct itimerspec spec = { { 60, 0 }, { 3600, 0 } };
	CHECK(timer_settime(t0, 0, &spec, NULL) == 0, "timer_settime: %m");
	cpt_report("INFO timer ids %ld %ld (deleted) %ld", (long)(intptr_t)t0, (long)(intptr_t)t1,
		   (long)(intptr_t)t2);

	cpt_ready();
	cpt_wait();

	double passed = cpt_now(CLOCK_MONOTONIC) - start;
	for (size_t i = 0; i < 3; i++) {
		struct itimerval v;
		CHECK(getitimer(itimers[i].which, &v) == 0, "getitimer %s: %m", itimers[i].name);
		CHECK(tv_s(v.it_interval) == (double)itimers[i].interval,
		      "%s interval %.6f, want %ld", itimers[i].name, tv_s(v.it_interval),
		      itimers[i].interval);
		double left = tv_s(v.it_value);
		/* The kernel adds one tick to the CPU-time timers' first expiry. */
		CHECK(left <= itimers[i].value + 0.02 && left >= itimers[i].value - passed - 1,
		      "%s has %.3f s left: set to %ld s, %.3f s ago", itimers[i].name, left,
		      itimers[i].value, passed);
	}

	struct itimerspec cur;
	CHECK(timer_gettime(t0, &cur) == 0, "timer_gettime(t0 = %ld): %m", (long)(intptr_t)t0);
	CHECK(ts_s(cur.it_interval) == 60, "t0 interval %.6f", ts_s(cur.it_interval));
	double left = ts_s(cur.it_value);
	CHECK(left <= 3600 && left >= 3600 - passed - 1, "t0 has %.3f s left, set %.3f s ago",
	      left, passed);
	errno = 0;
	CHECK(timer_gettime(t1, &cur) == -1 && errno == EINVAL,
	      "deleted timer %ld exists again (%m)", (long)(intptr_t)t1);
	CHECK(timer_gettime(t2, &cur) == 0, "timer_gettime(t2 = %ld): %m", (long)(intptr_t)t2);
	CHECK(cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0, "t2 is armed");
	CHECK(fired == 0, "an interval timer fired %d times", fired);

	spec = (struct itimerspec){ { 0, 0 }, { 0, 10 * 1000000L } };
	CHECK(timer_settime(t2, 0, &spec, NULL) == 0, "timer_settime t2: %m");
	siginfo_t si;
	struct timespec wait = { 5, 0 };
	int sig = sigtimedwait(&rt, &si, &wait);
	CHECK(sig == TIMER_SIG, "t2 did not fire within 5 s: %m");
	CHECK(si.si_code == SI_TIMER && si.si_value.sival_int == SIVAL &&
		      si.si_timerid == (int)(intptr_t)t2,
	      "t2 siginfo: code %d value %d timerid %d", si.si_code, si.si_value.sival_int,
	      si.si_timerid);
	cpt_ok();
}
