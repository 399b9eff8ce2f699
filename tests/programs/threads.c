/* threads: 4 worker threads, each with its own name (pthread_setname_np),
 * signal mask, __thread values and thread id, all waiting on a condition
 * variable (a futex).  After the restore each worker checks from inside
 * that its tid, name, mask and TLS are unchanged; the main thread checks
 * that the process has exactly the same 5 thread ids. */
#include "cpt_test.h"
#include <dirent.h>
#include <pthread.h>
#include <sys/prctl.h>

#define NWORKERS 4

static __thread uint64_t tls_value = 0x1111111111111111ULL; /* .tdata */
static __thread char tls_name[16];                           /* .tbss */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go, started;
static pid_t tids[NWORKERS + 1];
static pthread_t workers[NWORKERS];

static uint64_t tls_magic(int i)
{
	return 0x5a5a000000000000ULL ^ ((uint64_t)i << 32) ^ (uint64_t)(i * 7919);
}

/* Worker i blocks SIGUSR1 (as everyone) plus its own extra signals. */
static void worker_mask(int i, sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGRTMIN + i);
	if (i % 2)
		sigaddset(set, SIGUSR2);
	if (i == 3) {
		sigaddset(set, SIGTERM);
		sigaddset(set, SIGHUP);
	}
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	char name[16];
	snprintf(name, sizeof(name), "worker-%d", i);
	CHECK(pthread_setname_np(pthread_self(), name) == 0, "setname");
	sigset_t mask, cur;
	worker_mask(i, &mask);
	CHECK(pthread_sigmask(SIG_SETMASK, &mask, NULL) == 0, "sigmask");
	tls_value = tls_magic(i);
	memcpy(tls_name, name, sizeof(name));
	uint64_t stack_canary[4] = { tls_magic(i), ~tls_magic(i), 42, (uint64_t)i };
	pid_t tid = cpt_gettid();

	pthread_mutex_lock(&lock);
	tids[i + 1] = tid;
	started++;
	pthread_cond_broadcast(&cond);
	while (!go)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);

	CHECK(cpt_gettid() == tid, "worker %d: tid is %d, was %d", i, (int)cpt_gettid(),
	      (int)tid);
	char now[16] = "";
	CHECK(prctl(PR_GET_NAME, now) == 0, "PR_GET_NAME: %m");
	CHECK(strcmp(now, name) == 0, "worker %d: name is '%s', want '%s'", i, now, name);
	CHECK(pthread_sigmask(SIG_BLOCK, NULL, &cur) == 0, "sigmask");
	for (int sig = 1; sig < NSIG; sig++)
		CHECK(sigismember(&cur, sig) == sigismember(&mask, sig),
		      "worker %d: signal %d is %sblocked", i, sig,
		      sigismember(&cur, sig) ? "" : "not ");
	CHECK(tls_value == tls_magic(i), "worker %d: TLS value %#lx", i, (unsigned long)tls_value);
	CHECK(strcmp(tls_name, name) == 0, "worker %d: TLS name '%s'", i, tls_name);
	CHECK(stack_canary[0] == tls_magic(i) && stack_canary[1] == ~tls_magic(i) &&
		      stack_canary[2] == 42 && stack_canary[3] == (uint64_t)i,
	      "worker %d: stack variables changed", i);
	return (void *)(intptr_t)(100 + i);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	tids[0] = cpt_gettid();
	CHECK(tids[0] == getpid(), "main tid %d != pid %d", (int)tids[0], (int)getpid());
	tls_value = 0x4d41494e; /* "MAIN" */
	for (int i = 0; i < NWORKERS; i++)
		CHECK(pthread_create(&workers[i], NULL, worker, (void *)(intptr_t)i) == 0,
		      "pthread_create");
	pthread_mutex_lock(&lock);
	while (started < NWORKERS)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	for (int i = 1; i <= NWORKERS; i++)
		cpt_wait_in_syscall(tids[i], SYS_futex);

	cpt_ready();
	cpt_wait();

	/* The thread list, read before the workers can exit. */
	DIR *d = opendir("/proc/self/task");
	CHECK(d != NULL, "opendir /proc/self/task: %m");
	int seen = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		pid_t t = (pid_t)atoi(e->d_name);
		int known = 0;
		for (int i = 0; i <= NWORKERS; i++)
			known |= tids[i] == t;
		CHECK(known, "unexpected thread %d", (int)t);
		seen++;
	}
	closedir(d);
	CHECK(seen == NWORKERS + 1, "%d threads, want %d", seen, NWORKERS + 1);
	CHECK(cpt_gettid() == tids[0] && getpid() == tids[0], "main tid/pid changed");
	CHECK(tls_value == 0x4d41494e, "main TLS value %#lx", (unsigned long)tls_value);

	pthread_mutex_lock(&lock);
	go = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	for (int i = 0; i < NWORKERS; i++) {
		void *ret;
		CHECK(pthread_join(workers[i], &ret) == 0, "join worker %d", i);
		CHECK(ret == (void *)(intptr_t)(100 + i), "worker %d returned %p", i, ret);
	}
	cpt_ok();
}
