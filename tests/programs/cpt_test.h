/*
 * cpt_test.h - the protocol shared by every checkpoint test program.
 *
 *   prog REPORT [args...]
 *
 * The program appends lines to REPORT (opened O_WRONLY|O_APPEND, a regular
 * file: a pipe to the test process could not be restored):
 *   "READY"          its state is set up; it may now be dumped and restored
 *   "OK"             SIGUSR1 arrived and every check passed (exit 0)
 *   "FAIL <reason>"  a check failed, before or after READY (exit 1)
 *   "SKIP <reason>"  the machine lacks a feature the program needs (exit 0)
 *   "SHMID <id>"     a SysV segment the harness removes when it cleans up
 *
 * SIGUSR1 stays blocked for the whole life of the program and is taken with
 * sigwaitinfo() in a loop: a freeze and restore in the middle of the wait
 * makes the call fail with EINTR (or be restarted), never lose the signal.
 */
#ifndef CPT_TEST_H
#define CPT_TEST_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

/* Each program uses only some of these helpers. */
#define CPT_API static __attribute__((unused))

static int cpt_report_fd = -1;
static const char *cpt_report_path;

CPT_API void cpt_write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		buf += n;
		len -= (size_t)n;
	}
}

/* One line to the report in a single write(), so lines of several processes
 * sharing the O_APPEND file never interleave. */
__attribute__((format(printf, 1, 2)))
CPT_API void cpt_report(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	cpt_write_all(cpt_report_fd, line, (size_t)n);
}

__attribute__((format(printf, 1, 2), noreturn))
CPT_API void cpt_fail(const char *fmt, ...)
{
	int saved = errno;
	char msg[900];
	va_list ap;
	va_start(ap, fmt);
	errno = saved; /* for %m */
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cpt_report("FAIL %s", msg);
	dprintf(2, "pid %d: FAIL %s\n", (int)getpid(), msg);
	_exit(1); /* exit_group: also ends the other threads */
}

/* The one check macro: on failure it reports where and why, and exits 1.
 * "%m" in fmt prints strerror(errno). */
#define CHECK(cond, fmt, ...)                                                  \
	do {                                                                   \
		if (!(cond))                                                   \
			cpt_fail("%s:%d: " fmt " [pid %d: %s]", __FILE__,      \
				 __LINE__, ##__VA_ARGS__, (int)getpid(),       \
				 #cond);                                       \
	} while (0)

CPT_API void cpt_init(int argc, char **argv, int nargs, const char *usage)
{
	if (argc < 2 + nargs) {
		dprintf(2, "usage: %s REPORT %s\n", argv[0], usage);
		exit(2);
	}
	cpt_report_path = argv[1];
	cpt_report_fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (cpt_report_fd < 0) {
		dprintf(2, "%s: open %s: %m\n", argv[0], argv[1]);
		exit(2);
	}
	/* Blocked before any thread or child exists, so all inherit it. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0, "block SIGUSR1: %m");
}

CPT_API void cpt_ready(void)
{
	cpt_report("READY");
}

__attribute__((noreturn))
CPT_API void cpt_skip(const char *why)
{
	cpt_report("SKIP %s", why);
	exit(0);
}

/* Wait for SIGUSR1 (kept blocked): EINTR, e.g. after a freeze, just loops. */
CPT_API void cpt_wait(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	for (;;) {
		int sig = sigwaitinfo(&set, NULL);
		if (sig == SIGUSR1)
			return;
		CHECK(sig < 0 && errno == EINTR, "sigwaitinfo returned %d: %m", sig);
	}
}

__attribute__((noreturn))
CPT_API void cpt_ok(void)
{
	cpt_report("OK");
	exit(0);
}

/* A file beside the report, i.e. in the test's private temp dir.  The result
 * lives in one of a few static slots (no malloc: mem_anon checks brk). */
CPT_API const char *cpt_path(const char *name)
{
	static char slots[8][PATH_MAX];
	static unsigned next;
	char *out = slots[next++ % 8];
	const char *slash = strrchr(cpt_report_path, '/');
	int dirlen = slash ? (int)(slash - cpt_report_path) : 1;
	const char *dir = slash ? cpt_report_path : ".";
	snprintf(out, PATH_MAX, "%.*s/%s", dirlen, dir, name);
	return out;
}

CPT_API double cpt_now(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

CPT_API void cpt_sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

CPT_API pid_t cpt_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

/* xorshift64: cheap, reproducible pseudo-random data. */
CPT_API inline uint64_t cpt_xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *s = x;
}

/* Fill/compare with the xorshift stream seeded by seed; returns the offset
 * of the first differing 8-byte word, or -1 when all match. */
CPT_API void cpt_fill_random(void *buf, size_t len, uint64_t seed)
{
	uint64_t *w = buf, s = seed | 1;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = cpt_xorshift(&s);
}

CPT_API long cpt_cmp_random(const void *buf, size_t len, uint64_t seed)
{
	const uint64_t *w = buf;
	uint64_t s = seed | 1;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != cpt_xorshift(&s))
			return (long)(i * 8);
	return -1;
}

/* Read a whole small file (/proc) into a static buffer, NUL-terminated. */
CPT_API const char *cpt_read_file(const char *path)
{
	static char buf[1 << 18];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	CHECK(fd >= 0, "open %s: %m", path);
	size_t len = 0;
	for (;;) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - 1 - len);
		CHECK(n >= 0, "read %s: %m", path);
		if (n == 0)
			break;
		len += (size_t)n;
		CHECK(len < sizeof(buf) - 1, "%s is too big", path);
	}
	close(fd);
	buf[len] = 0;
	return buf;
}

/* The /proc/self/maps line of the mapping that starts exactly at addr:
 * its permissions ("rw-p") and path ("" for anonymous). 0 when found. */
CPT_API int cpt_mapping(const void *addr, char perms[5], char *path, size_t pathlen)
{
	const char *p = cpt_read_file("/proc/self/maps");
	while (*p) {
		unsigned long start, end;
		char pm[5] = "";
		int off = 0;
		if (sscanf(p, "%lx-%lx %4s %*s %*s %*s%n", &start, &end, pm, &off) >= 3 &&
		    start == (unsigned long)addr) {
			const char *q = p + off, *eol = strchrnul(q, '\n');
			while (q < eol && *q == ' ')
				q++;
			memcpy(perms, pm, 5);
			if (path)
				snprintf(path, pathlen, "%.*s", (int)(eol - q), q);
			return 0;
		}
		p = strchrnul(p, '\n');
		if (*p)
			p++;
	}
	return -1;
}

/* Does reading (or writing) the byte at addr fault?  Probes with a
 * temporary SIGSEGV/SIGBUS handler; returns 1 if the access worked. */
static sigjmp_buf cpt_probe_env;

CPT_API void cpt_probe_handler(int sig)
{
	siglongjmp(cpt_probe_env, sig);
}

CPT_API int cpt_probe(volatile char *addr, int write)
{
	struct sigaction sa = { 0 }, old_segv, old_bus;
	sa.sa_handler = cpt_probe_handler;
	sa.sa_flags = SA_NODEFER;
	sigaction(SIGSEGV, &sa, &old_segv);
	sigaction(SIGBUS, &sa, &old_bus);
	int ok = 0;
	if (sigsetjmp(cpt_probe_env, 1) == 0) {
		char c = *addr;
		if (write)
			*addr = c;
		ok = 1;
	}
	sigaction(SIGSEGV, &old_segv, NULL);
	sigaction(SIGBUS, &old_bus, NULL);
	return ok;
}

/* Wait until thread tid sleeps in syscall nr (per /proc/self/task/TID/syscall),
 * so READY is only written once the state to checkpoint really exists. */
CPT_API void cpt_wait_in_syscall(pid_t tid, long nr)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	for (int i = 0; i < 5000; i++) {
		long cur = -2;
		if (sscanf(cpt_read_file(path), "%ld", &cur) == 1 && cur == nr)
			return;
		cpt_sleep_ms(2);
	}
	cpt_fail("thread %d never entered syscall %ld", (int)tid, nr);
}

#endif
