/* posix_mqueue: POSIX message queues held open, and one held by no one.
 *
 *   posix_mqueue REPORT PREFIX [notify]
 *
 * /PREFIX_a  mode 0640, 8 x 128 bytes, six messages of mixed priorities
 *            (one empty); held twice: read-write O_NONBLOCK, and write-only
 * /PREFIX_u  4 x 16 bytes, one message, unlinked while held open
 * /PREFIX_i  mode 0604, owner 1234:1235, one message, not held open at all
 *
 * After the restore: sizes, modes, owners, access modes and O_NONBLOCK are
 * as they were, every message comes out in the same order with its
 * priority, both descriptors of /PREFIX_a are on one queue, and /PREFIX_u
 * is still nameless.  The named queues are removed at the end.  With
 * "notify", /PREFIX_a also has an mq_notify registration (for SIGUSR2). */
#include "cpt_test.h"
#include <mqueue.h>

struct msg {
	const char *text;
	unsigned prio;
};

/* Sent in this order; received highest priority first, oldest first within. */
static const struct msg sent[] = {
	{"one", 1}, {"two", 7}, {"three", 1}, {"four", 7}, {"five", 0}, {"", 3},
};
static const struct msg expected[] = {
	{"two", 7}, {"four", 7}, {"", 3}, {"one", 1}, {"three", 1}, {"five", 0},
};
#define NMSG (sizeof(sent) / sizeof(sent[0]))

static char name_a[64], name_u[64], name_i[64];

static void expect_message(mqd_t q, const char *text, unsigned prio, const char *what)
{
	static char buf[8192]; /* mq_receive wants room for the largest message */
	unsigned got_prio = 0;
	ssize_t n = mq_receive(q, buf, sizeof(buf), &got_prio);
	CHECK(n >= 0, "%s: mq_receive: %m", what);
	CHECK((size_t)n == strlen(text) && memcmp(buf, text, (size_t)n) == 0,
	      "%s: got '%.*s', want '%s'", what, (int)n, buf, text);
	CHECK(got_prio == prio, "%s: '%s' has priority %u, want %u", what, text, got_prio, prio);
}

static void expect_attr(mqd_t q, long flags, long maxmsg, long msgsize, long cur, const char *what)
{
	struct mq_attr a;
	CHECK(mq_getattr(q, &a) == 0, "%s: mq_getattr: %m", what);
	CHECK(a.mq_flags == flags, "%s: flags %#lx, want %#lx", what, a.mq_flags, flags);
	CHECK(a.mq_maxmsg == maxmsg && a.mq_msgsize == msgsize,
	      "%s: size %ld x %ld, want %ld x %ld", what, a.mq_maxmsg, a.mq_msgsize, maxmsg, msgsize);
	CHECK(a.mq_curmsgs == cur, "%s: %ld messages, want %ld", what, a.mq_curmsgs, cur);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 1, "PREFIX");
	snprintf(name_a, sizeof(name_a), "/%s_a", argv[2]);
	snprintf(name_u, sizeof(name_u), "/%s_u", argv[2]);
	snprintf(name_i, sizeof(name_i), "/%s_i", argv[2]);
	umask(0);

	struct mq_attr attr = {.mq_maxmsg = 8, .mq_msgsize = 128};
	mqd_t a = mq_open(name_a, O_RDWR | O_CREAT | O_EXCL | O_NONBLOCK, 0640, &attr);
	CHECK(a != (mqd_t)-1, "mq_open %s: %m", name_a);
	for (size_t i = 0; i < NMSG; i++)
		CHECK(mq_send(a, sent[i].text, strlen(sent[i].text), sent[i].prio) == 0,
		      "mq_send: %m");
	if (argc > 3 && strcmp(argv[3], "notify") == 0) {
		struct sigevent ev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGUSR2};
		CHECK(mq_notify(a, &ev) == 0, "mq_notify: %m");
	}
	mqd_t w = mq_open(name_a, O_WRONLY);
	CHECK(w != (mqd_t)-1, "mq_open %s write-only: %m", name_a);

	struct mq_attr small = {.mq_maxmsg = 4, .mq_msgsize = 16};
	mqd_t u = mq_open(name_u, O_RDWR | O_CREAT | O_EXCL, 0600, &small);
	CHECK(u != (mqd_t)-1, "mq_open %s: %m", name_u);
	CHECK(mq_send(u, "hidden", 6, 2) == 0, "mq_send hidden: %m");
	CHECK(mq_unlink(name_u) == 0, "mq_unlink %s: %m", name_u);

	mqd_t idle = mq_open(name_i, O_WRONLY | O_CREAT | O_EXCL, 0604, NULL);
	CHECK(idle != (mqd_t)-1, "mq_open %s: %m", name_i);
	CHECK(mq_send(idle, "idle", 4, 9) == 0, "mq_send idle: %m");
	CHECK(fchown(idle, 1234, 1235) == 0, "fchown %s: %m", name_i);
	CHECK(mq_close(idle) == 0, "mq_close: %m");

	cpt_ready();
	cpt_wait();

	expect_attr(a, O_NONBLOCK, 8, 128, NMSG, name_a);
	expect_attr(w, 0, 8, 128, NMSG, "the write-only descriptor");
	CHECK((fcntl(w, F_GETFL) & O_ACCMODE) == O_WRONLY, "the write-only descriptor is not");
	struct stat st;
	CHECK(fstat(a, &st) == 0 && (st.st_mode & 07777) == 0640, "%s has mode %o", name_a,
	      st.st_mode & 07777);
	for (size_t i = 0; i < NMSG; i++)
		expect_message(a, expected[i].text, expected[i].prio, name_a);
	static char buf[128];
	CHECK(mq_receive(a, buf, sizeof(buf), NULL) < 0 && errno == EAGAIN,
	      "%s has more messages, or blocks (not O_NONBLOCK)", name_a);
	CHECK(mq_send(w, "via w", 5, 4) == 0, "mq_send via the write-only descriptor: %m");
	expect_message(a, "via w", 4, "the two descriptors of the same queue");

	expect_attr(u, 0, 4, 16, 1, "the unlinked queue");
	expect_message(u, "hidden", 2, "the unlinked queue");
	CHECK(mq_open(name_u, O_RDONLY) == (mqd_t)-1 && errno == ENOENT,
	      "%s has a name again", name_u);

	idle = mq_open(name_i, O_RDONLY | O_NONBLOCK);
	CHECK(idle != (mqd_t)-1, "mq_open %s: %m", name_i);
	CHECK(fstat(idle, &st) == 0, "fstat: %m");
	CHECK((st.st_mode & 07777) == 0604 && st.st_uid == 1234 && st.st_gid == 1235,
	      "%s has mode %o owner %d:%d", name_i, st.st_mode & 07777, (int)st.st_uid,
	      (int)st.st_gid);
	expect_attr(idle, O_NONBLOCK, 10, 8192, 1, name_i);
	expect_message(idle, "idle", 9, name_i);

	CHECK(mq_unlink(name_a) == 0 && mq_unlink(name_i) == 0, "mq_unlink: %m");
	cpt_ok();
}
