/* signals: dispositions, masks, the alternate stack and pending signals.
 *   SIGUSR2   SA_SIGINFO|SA_RESTART|SA_ONSTACK, sa_mask {SIGWINCH};
 *             pending for the process (kill)
 *   SIGINT    plain handler, SA_RESETHAND|SA_NODEFER;
 *             pending for the main thread (pthread_kill)
 *   SIGRTMIN+2 SA_SIGINFO; queued twice with sigqueue, values 42 then 43
 *   SIGTTIN   SA_SIGINFO; pending for the helper thread (pthread_kill)
 *   SIGHUP    SIG_IGN
 *   SIGPIPE   default, blocked, not pending
 * After the restore: the dispositions, altstack, masks and pending sets are
 * unchanged, and unblocking delivers each signal with its saved siginfo. */
#include "cpt_test.h"
#include <pthread.h>
#include <sys/mman.h>

#define ALTSTACK_SIZE (64 << 10)
#define SIGRT (SIGRTMIN + 2)
#define FLAG_BITS (SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_RESETHAND | SA_NODEFER)

static char *altstack;
static volatile int usr2_count, usr2_winch_blocked, usr2_on_altstack, int_count;
static volatile int rt_count, ttin_count;
static siginfo_t usr2_info, ttin_info;
static int rt_values[4], rt_codes[4];
static volatile pid_t ttin_tid;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int helper_ready, helper_go;
static pid_t helper_tid;

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	char here;
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	usr2_winch_blocked = sigismember(&cur, SIGWINCH);
	usr2_on_altstack = &here >= altstack && &here < altstack + ALTSTACK_SIZE;
	usr2_info = *si;
	usr2_count++;
}

static void on_int(int sig)
{
	(void)sig;
	int_count++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	if (rt_count < 4) {
		rt_values[rt_count] = si->si_value.sival_int;
		rt_codes[rt_count] = si->si_code;
	}
	rt_count++;
}

static void on_ttin(int sig, siginfo_t *si, void *uc)
{
	(void)sig, (void)uc;
	ttin_tid = cpt_gettid();
	ttin_info = *si;
	ttin_count++;
}

static void handle(int sig, void (*fn)(int, siginfo_t *, void *), void (*plain)(int),
		   int flags, int mask_sig)
{
	struct sigaction sa = { 0 };
	if (fn)
		sa.sa_sigaction = fn;
	else
		sa.sa_handler = plain;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	if (mask_sig)
		sigaddset(&sa.sa_mask, mask_sig);
	CHECK(sigaction(sig, &sa, NULL) == 0, "sigaction %d: %m", sig);
}

static void check_action(int sig, void *fn, int flags, int mask_sig)
{
	struct sigaction sa;
	CHECK(sigaction(sig, NULL, &sa) == 0, "sigaction %d: %m", sig);
	CHECK((void *)sa.sa_handler == fn, "signal %d: handler %p, want %p", sig,
	      (void *)sa.sa_handler, fn);
	CHECK((int)(sa.sa_flags & FLAG_BITS) == flags, "signal %d: flags %#x, want %#x", sig,
	      (int)(sa.sa_flags & FLAG_BITS), flags);
	for (int s = 1; s < SIGRTMIN; s++)
		CHECK(sigismember(&sa.sa_mask, s) == (s == mask_sig),
		      "signal %d: sa_mask has %d %s", sig, s,
		      sigismember(&sa.sa_mask, s) ? "set" : "unset");
}

/* Exact comparison of a set with a list of members, over all signals. */
static void check_set(const sigset_t *set, const int *members, int n, const char *what)
{
	for (int s = 1; s < NSIG; s++) {
		if (s == 32 || s == 33) /* glibc's own, not ours */
			continue;
		int want = 0;
		for (int i = 0; i < n; i++)
			want |= members[i] == s;
		CHECK(sigismember(set, s) == want, "%s: signal %d is %s", what, s,
		      want ? "missing" : "unexpected");
	}
}

static void *helper(void *arg)
{
	(void)arg;
	sigset_t all, pending, ttin;
	sigfillset(&all);
	CHECK(pthread_sigmask(SIG_SETMASK, &all, NULL) == 0, "helper mask");
	pthread_mutex_lock(&lock);
	helper_tid = cpt_gettid();
	helper_ready = 1;
	pthread_cond_broadcast(&cond);
	while (!helper_go)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);

	CHECK(sigpending(&pending) == 0, "sigpending: %m");
	CHECK(sigismember(&pending, SIGTTIN), "helper: SIGTTIN is no longer pending");
	CHECK(!sigismember(&pending, SIGUSR2), "helper: SIGUSR2 still pending");
	sigemptyset(&ttin);
	sigaddset(&ttin, SIGTTIN);
	CHECK(pthread_sigmask(SIG_UNBLOCK, &ttin, NULL) == 0, "unblock SIGTTIN");
	CHECK(ttin_count == 1, "helper: SIGTTIN delivered %d times", ttin_count);
	return NULL;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	altstack = mmap(NULL, ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			-1, 0);
	CHECK(altstack != MAP_FAILED, "mmap: %m");
	stack_t ss = { .ss_sp = altstack, .ss_size = ALTSTACK_SIZE, .ss_flags = 0 };
	CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack: %m");

	handle(SIGUSR2, on_usr2, NULL, SA_SIGINFO | SA_RESTART | SA_ONSTACK, SIGWINCH);
	handle(SIGINT, NULL, on_int, SA_RESETHAND | SA_NODEFER, 0);
	handle(SIGRT, on_rt, NULL, SA_SIGINFO, 0);
	handle(SIGTTIN, on_ttin, NULL, SA_SIGINFO, 0);
	struct sigaction ign = { .sa_handler = SIG_IGN }; /* signal() would add SA_RESTART */
	CHECK(sigaction(SIGHUP, &ign, NULL) == 0, "SIG_IGN: %m");

	const int blocked[] = { SIGUSR1, SIGUSR2, SIGINT, SIGRT, SIGTTIN, SIGPIPE };
	sigset_t mask;
	sigemptyset(&mask);
	for (size_t i = 0; i < sizeof(blocked) / sizeof(blocked[0]); i++)
		sigaddset(&mask, blocked[i]);
	CHECK(sigprocmask(SIG_SETMASK, &mask, NULL) == 0, "sigprocmask: %m");

	pthread_t th;
	CHECK(pthread_create(&th, NULL, helper, NULL) == 0, "pthread_create");
	pthread_mutex_lock(&lock);
	while (!helper_ready)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);

	CHECK(kill(getpid(), SIGUSR2) == 0, "kill: %m");
	CHECK(pthread_kill(pthread_self(), SIGINT) == 0, "pthread_kill self");
	CHECK(pthread_kill(th, SIGTTIN) == 0, "pthread_kill helper");
	CHECK(sigqueue(getpid(), SIGRT, (union sigval){ .sival_int = 42 }) == 0, "sigqueue: %m");
	CHECK(sigqueue(getpid(), SIGRT, (union sigval){ .sival_int = 43 }) == 0, "sigqueue: %m");
	CHECK(kill(getpid(), SIGHUP) == 0, "kill SIGHUP: %m");

	cpt_ready();
	cpt_wait();

	check_action(SIGUSR2, (void *)on_usr2, SA_SIGINFO | SA_RESTART | SA_ONSTACK, SIGWINCH);
	check_action(SIGINT, (void *)on_int, SA_RESETHAND | SA_NODEFER, 0);
	check_action(SIGRT, (void *)on_rt, SA_SIGINFO, 0);
	check_action(SIGTTIN, (void *)on_ttin, SA_SIGINFO, 0);
	check_action(SIGHUP, (void *)SIG_IGN, 0, 0);
	check_action(SIGPIPE, (void *)SIG_DFL, 0, 0);

	stack_t now;
	CHECK(sigaltstack(NULL, &now) == 0, "sigaltstack: %m");
	CHECK(now.ss_sp == altstack && now.ss_size == ALTSTACK_SIZE && now.ss_flags == 0,
	      "altstack %p+%zu flags %#x, want %p+%d flags 0", now.ss_sp, now.ss_size,
	      now.ss_flags, (void *)altstack, ALTSTACK_SIZE);

	sigset_t cur;
	CHECK(sigprocmask(SIG_BLOCK, NULL, &cur) == 0, "sigprocmask: %m");
	check_set(&cur, blocked, sizeof(blocked) / sizeof(blocked[0]), "blocked mask");
	const int want_pending[] = { SIGUSR2, SIGINT, SIGRT };
	CHECK(sigpending(&cur) == 0, "sigpending: %m");
	check_set(&cur, want_pending, 3, "pending set");
	CHECK(usr2_count == 0 && int_count == 0 && rt_count == 0 && ttin_count == 0,
	      "a handler already ran");

	sigset_t deliver;
	sigemptyset(&deliver);
	sigaddset(&deliver, SIGUSR2);
	sigaddset(&deliver, SIGINT);
	sigaddset(&deliver, SIGRT);
	CHECK(sigprocmask(SIG_UNBLOCK, &deliver, NULL) == 0, "unblock: %m");

	CHECK(usr2_count == 1, "SIGUSR2 delivered %d times", usr2_count);
	CHECK(usr2_info.si_signo == SIGUSR2 && usr2_info.si_code == SI_USER &&
		      usr2_info.si_pid == getpid() && usr2_info.si_uid == getuid(),
	      "SIGUSR2 siginfo: signo %d code %d pid %d uid %d", usr2_info.si_signo,
	      usr2_info.si_code, (int)usr2_info.si_pid, (int)usr2_info.si_uid);
	CHECK(usr2_winch_blocked, "SIGWINCH (sa_mask) was not blocked in the SIGUSR2 handler");
	CHECK(usr2_on_altstack, "SIGUSR2 handler did not run on the alternate stack");
	CHECK(int_count == 1, "SIGINT delivered %d times", int_count);
	/* SA_RESETHAND did its job: the handler is reset, the flags stay. */
	check_action(SIGINT, (void *)SIG_DFL, SA_RESETHAND | SA_NODEFER, 0);
	CHECK(rt_count == 2, "SIGRTMIN+2 delivered %d times, want 2", rt_count);
	CHECK(rt_values[0] == 42 && rt_values[1] == 43, "sigqueue values %d, %d; want 42, 43",
	      rt_values[0], rt_values[1]);
	CHECK(rt_codes[0] == SI_QUEUE && rt_codes[1] == SI_QUEUE, "sigqueue si_code %d, %d",
	      rt_codes[0], rt_codes[1]);

	pthread_mutex_lock(&lock);
	helper_go = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	CHECK(pthread_join(th, NULL) == 0, "join helper");
	CHECK(ttin_tid == helper_tid, "SIGTTIN handled by thread %d, not the helper %d",
	      (int)ttin_tid, (int)helper_tid);
	CHECK(ttin_info.si_code == SI_TKILL && ttin_info.si_pid == getpid(),
	      "SIGTTIN siginfo: code %d pid %d", ttin_info.si_code, (int)ttin_info.si_pid);

	CHECK(kill(getpid(), SIGHUP) == 0, "kill SIGHUP: %m"); /* ignored: we live on */
	CHECK(sigpending(&cur) == 0 && !sigismember(&cur, SIGHUP), "SIGHUP is pending");
	cpt_ok();
}
