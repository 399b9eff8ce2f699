/* unix_pending [MODE]: unix listeners with connections not yet accepted.
 *
 *   S  stream, bound to a path, backlog 2, with three clients waiting (its
 *      queue is full): c1 of this process; one of a child process, bound
 *      to a path of its own; c3, non-blocking and shut down for writing.
 *   Q  seqpacket, bound to an abstract name, non-blocking, backlog 5: q0
 *      connected and accepted, a message waiting for the server; then q1
 *      (autobound), q2 (shut down for reading) and one of a second child
 *      process, which runs as nobody (uid and gid 65534), waiting.
 *
 * After SIGUSR1 it checks, from inside, that S is still full (backlog 2),
 * that accept() gives the clients in the order they connected, that the
 * names on both ends are as before, that each end's SO_PEERCRED names the
 * process (and user) at the other end, that data flows both ways with
 * message boundaries, that the shutdowns hold, and that the options set on
 * S and on the clients are as they were.
 *
 * MODE adds E, a stream listener on an abstract name, which vzcpt must
 * refuse to checkpoint; "FD <n>" names the descriptor the refusal names:
 *   data     a client has sent "early" before being accepted (FD: client)
 *   closed   a client connected and closed before being accepted (FD: E)
 *   outside  the test connects to "\0vzcpt-pending-extra-<pid>" (FD: E)
 * After SIGUSR1 E's connection is accepted and checked too.
 */
#include "cpt_test.h"
#include <poll.h>
#include <stddef.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

struct name {
	struct sockaddr_un addr;
	socklen_t len;
};

static struct name path_name(const char *path)
{
	struct name n = { .addr.sun_family = AF_UNIX };
	snprintf(n.addr.sun_path, sizeof(n.addr.sun_path), "%s", path);
	n.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
	return n;
}

static struct name abstract_name(const char *what)
{
	struct name n = { .addr.sun_family = AF_UNIX };
	int len = snprintf(n.addr.sun_path + 1, sizeof(n.addr.sun_path) - 1, "vzcpt-pending-%s%d",
			   what, (int)getpid());
	n.len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len);
	return n;
}

static const struct name unnamed = { .addr.sun_family = AF_UNIX,
				     .len = sizeof(sa_family_t) };

static int same(const struct name *a, const struct name *b)
{
	return a->len == b->len && memcmp(&a->addr, &b->addr, a->len) == 0;
}

static struct name sock_name(int fd)
{
	struct name n = { 0 };
	n.len = sizeof(n.addr);
	CHECK(getsockname(fd, (struct sockaddr *)&n.addr, &n.len) == 0, "getsockname %d: %m", fd);
	return n;
}

static struct name peer_name(int fd)
{
	struct name n = { 0 };
	n.len = sizeof(n.addr);
	CHECK(getpeername(fd, (struct sockaddr *)&n.addr, &n.len) == 0, "getpeername %d: %m", fd);
	return n;
}

static int listener(int type, const struct name *n, int backlog)
{
	int fd = socket(AF_UNIX, type, 0);
	CHECK(fd >= 0, "socket: %m");
	CHECK(bind(fd, (const struct sockaddr *)&n->addr, n->len) == 0, "bind: %m");
	CHECK(listen(fd, backlog) == 0, "listen: %m");
	return fd;
}

static int client(int type, const struct name *to)
{
	int fd = socket(AF_UNIX, type, 0);
	CHECK(fd >= 0, "socket: %m");
	CHECK(connect(fd, (const struct sockaddr *)&to->addr, to->len) == 0, "connect: %m");
	return fd;
}

/* A non-blocking connect to a full queue fails with EAGAIN. */
static int queue_full(const struct name *to)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	CHECK(fd >= 0, "socket: %m");
	int rc = connect(fd, (const struct sockaddr *)&to->addr, to->len);
	int full = rc < 0 && errno == EAGAIN;
	CHECK(full || rc == 0, "probe connect: %m");
	close(fd);
	return full;
}

static struct ucred peer_cred(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	CHECK(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0, "SO_PEERCRED: %m");
	return cred;
}

/* SO_PEERCRED of fd: the process pid, of user and group id. */
static void expect_peer(int fd, pid_t pid, uid_t id, const char *what)
{
	struct ucred cred = peer_cred(fd);
	CHECK(cred.pid == pid && cred.uid == id && cred.gid == id,
	      "%s: the peer is process %d, uid %d, gid %d; want %d, %d", what, (int)cred.pid,
	      (int)cred.uid, (int)cred.gid, (int)pid, (int)id);
}

static int int_opt(int fd, int opt)
{
	int value;
	socklen_t len = sizeof(value);
	CHECK(getsockopt(fd, SOL_SOCKET, opt, &value, &len) == 0, "getsockopt %d: %m", opt);
	return value;
}

static void set_int_opt(int fd, int opt, int value)
{
	CHECK(setsockopt(fd, SOL_SOCKET, opt, &value, sizeof(value)) == 0, "setsockopt %d: %m", opt);
}

static long timeout_us(int fd, int opt)
{
	struct timeval tv;
	socklen_t len = sizeof(tv);
	CHECK(getsockopt(fd, SOL_SOCKET, opt, &tv, &len) == 0, "getsockopt %d: %m", opt);
	return tv.tv_sec * 1000000L + tv.tv_usec;
}

static void set_timeout(int fd, int opt, long us)
{
	struct timeval tv = { us / 1000000, us % 1000000 };
	CHECK(setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv)) == 0, "setsockopt %d: %m", opt);
}

static int waiting(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1;
}

static void send_all(int fd, const char *msg)
{
	CHECK(send(fd, msg, strlen(msg), MSG_NOSIGNAL) == (ssize_t)strlen(msg), "send %s: %m", msg);
}

/* One message (or up to len bytes of a stream): exactly `want`, waiting up to 5 s. */
static void expect(int fd, const char *want)
{
	char buf[64];
	struct pollfd p = { .fd = fd, .events = POLLIN };
	CHECK(poll(&p, 1, 5000) == 1, "nothing to read for %s", want);
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, (size_t)n) == 0,
	      "read %zd bytes (%.*s), want %s", n, n > 0 ? (int)n : 0, buf, want);
}

static void expect_eof(int fd, const char *what)
{
	char c;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	CHECK(poll(&p, 1, 5000) == 1, "%s: no end of stream", what);
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	CHECK(n == 0, "%s: read %zd, want end of stream (%m)", what, n);
}

static int take(int listen_fd)
{
	int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
	CHECK(fd >= 0, "accept: %m");
	return fd;
}

__attribute__((noreturn)) static void child_client(const struct name *s, int ready)
{
	struct name mine = path_name(cpt_path("client.sock"));
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(fd >= 0, "socket: %m");
	CHECK(bind(fd, (const struct sockaddr *)&mine.addr, mine.len) == 0, "bind: %m");
	set_int_opt(fd, SO_PRIORITY, 4);
	CHECK(connect(fd, (const struct sockaddr *)&s->addr, s->len) == 0, "connect: %m");
	CHECK(write(ready, "x", 1) == 1, "write: %m");
	close(ready);
	cpt_wait();
	expect_peer(fd, getppid(), 0, "child");
	CHECK(int_opt(fd, SO_PRIORITY) == 4, "child: SO_PRIORITY %d", int_opt(fd, SO_PRIORITY));
	struct name got = sock_name(fd);
	CHECK(same(&got, &mine), "child: its name changed");
	got = peer_name(fd);
	CHECK(same(&got, s), "child: its peer's name changed");
	send_all(fd, "child");
	expect(fd, "back-child");
	_exit(0);
}

/* The second child: a client of Q as nobody. */
__attribute__((noreturn)) static void nobody_client(const struct name *q, int ready)
{
	CHECK(setgroups(0, NULL) == 0 && setresgid(65534, 65534, 65534) == 0 &&
		      setresuid(65534, 65534, 65534) == 0,
	      "become nobody: %m");
	int fd = client(SOCK_SEQPACKET, q);
	CHECK(write(ready, "x", 1) == 1, "write: %m");
	close(ready);
	cpt_wait();
	expect_peer(fd, getppid(), 0, "nobody");
	send_all(fd, "nobody");
	expect(fd, "back-nobody");
	_exit(0);
}

/* A child that keeps only the report and `ready` open. */
static pid_t fork_client(int ready[2])
{
	CHECK(pipe2(ready, O_CLOEXEC) == 0, "pipe: %m");
	pid_t pid = fork();
	CHECK(pid >= 0, "fork: %m");
	if (pid == 0) {
		for (int fd = 3; fd < 64; fd++)
			if (fd != cpt_report_fd && fd != ready[1])
				close(fd);
	} else {
		close(ready[1]);
	}
	return pid;
}

static void wait_connected(int ready[2])
{
	char c;
	CHECK(read(ready[0], &c, 1) == 1, "the child did not connect");
	close(ready[0]);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "[data|closed|outside]");
	const char *mode = argc > 2 ? argv[2] : "";
	struct name s_name = path_name(cpt_path("pending.sock"));
	struct name q_name = abstract_name("");
	struct name e_name = abstract_name("extra-");

	int s = listener(SOCK_STREAM, &s_name, 2);
	set_timeout(s, SO_RCVTIMEO, 1000000);
	int c1 = client(SOCK_STREAM, &s_name);
	set_int_opt(c1, SO_PASSCRED, 1);
	set_int_opt(c1, SO_SNDBUF, 65536);
	int c1_sndbuf = int_opt(c1, SO_SNDBUF);
	int ready[2];
	pid_t child = fork_client(ready);
	if (child == 0)
		child_client(&s_name, ready[1]);
	wait_connected(ready);
	int c3 = client(SOCK_STREAM, &s_name);
	CHECK(fcntl(c3, F_SETFL, O_NONBLOCK) == 0, "fcntl: %m");
	CHECK(shutdown(c3, SHUT_WR) == 0, "shutdown: %m");
	set_timeout(c3, SO_RCVTIMEO, 2000000);
	CHECK(queue_full(&s_name), "S took a fourth connection");

	int q = listener(SOCK_SEQPACKET, &q_name, 5);
	int q0 = client(SOCK_SEQPACKET, &q_name);
	int aq0 = take(q);
	send_all(q0, "q0");
	CHECK(fcntl(q, F_SETFL, O_NONBLOCK) == 0, "fcntl: %m");
	int q1 = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	CHECK(q1 >= 0, "socket: %m");
	CHECK(bind(q1, (const struct sockaddr *)&unnamed.addr, unnamed.len) == 0, "autobind: %m");
	set_timeout(q1, SO_SNDTIMEO, 3000000);
	struct name q1_name = sock_name(q1);
	CHECK(q1_name.len > unnamed.len, "q1 was not autobound");
	CHECK(connect(q1, (const struct sockaddr *)&q_name.addr, q_name.len) == 0, "connect: %m");
	int q2 = client(SOCK_SEQPACKET, &q_name);
	CHECK(shutdown(q2, SHUT_RD) == 0, "shutdown: %m");
	pid_t nobody = fork_client(ready);
	if (nobody == 0)
		nobody_client(&q_name, ready[1]);
	wait_connected(ready);

	int e = -1;
	if (*mode) {
		e = listener(SOCK_STREAM, &e_name, 4);
		if (strcmp(mode, "data") == 0) {
			int early = client(SOCK_STREAM, &e_name);
			send_all(early, "early");
			cpt_report("FD %d", early);
		} else if (strcmp(mode, "closed") == 0) {
			close(client(SOCK_STREAM, &e_name));
			cpt_report("FD %d", e);
		} else {
			CHECK(strcmp(mode, "outside") == 0, "unknown mode %s", mode);
			cpt_report("FD %d", e);
		}
	}
	cpt_ready();
	cpt_wait();
	CHECK(kill(child, SIGUSR1) == 0 && kill(nobody, SIGUSR1) == 0, "kill: %m");

	/* S: still full, then its clients in the order they came. */
	CHECK(queue_full(&s_name), "S is no longer full: its backlog or queue changed");
	struct name got = peer_name(c1);
	CHECK(same(&got, &s_name), "c1: peer name");
	got = sock_name(c1);
	CHECK(same(&got, &unnamed), "c1 got a name");
	expect_peer(c1, getpid(), 0, "c1");
	CHECK(fcntl(c3, F_GETFL) & O_NONBLOCK, "c3 lost O_NONBLOCK");
	CHECK(timeout_us(s, SO_RCVTIMEO) == 1000000, "S: SO_RCVTIMEO %ld", timeout_us(s, SO_RCVTIMEO));
	CHECK(int_opt(c1, SO_PASSCRED) == 1, "c1 lost SO_PASSCRED");
	CHECK(int_opt(c1, SO_SNDBUF) == c1_sndbuf, "c1: SO_SNDBUF %d, want %d",
	      int_opt(c1, SO_SNDBUF), c1_sndbuf);
	CHECK(timeout_us(c3, SO_RCVTIMEO) == 2000000, "c3: SO_RCVTIMEO %ld",
	      timeout_us(c3, SO_RCVTIMEO));
	CHECK(timeout_us(q1, SO_SNDTIMEO) == 3000000, "q1: SO_SNDTIMEO %ld",
	      timeout_us(q1, SO_SNDTIMEO));
	CHECK(int_opt(q2, SO_PASSCRED) == 0 && timeout_us(q2, SO_RCVTIMEO) == 0,
	      "q2 gained options");
	CHECK(!(fcntl(c1, F_GETFL) & O_NONBLOCK), "c1 became non-blocking");
	CHECK(send(c3, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "c3 can write again (%m)");
	send_all(c1, "one");
	int a1 = take(s);
	got = sock_name(a1);
	CHECK(same(&got, &s_name), "first accepted: its name");
	got = peer_name(a1);
	CHECK(same(&got, &unnamed), "first accepted: a named peer");
	expect_peer(a1, getpid(), 0, "first accepted");
	expect(a1, "one");
	send_all(a1, "back-one");
	expect(c1, "back-one");
	int a2 = take(s);
	got = peer_name(a2);
	struct name child_name = path_name(cpt_path("client.sock"));
	CHECK(same(&got, &child_name), "second accepted is not the child's");
	expect_peer(a2, child, 0, "second accepted");
	expect(a2, "child");
	send_all(a2, "back-child");
	int a3 = take(s);
	expect_eof(a3, "third accepted (c3 shut down its writing)");
	send_all(a3, "back-three");
	expect(c3, "back-three");
	CHECK(!waiting(s), "S has a fourth connection");
	CHECK(!queue_full(&s_name), "S stays full once its queue is empty");
	close(take(s)); /* the probe that got in */

	/* Q: the connection accepted before, then q1 and q2 in order. */
	expect(aq0, "q0");
	send_all(aq0, "back-q0");
	expect(q0, "back-q0");
	CHECK(fcntl(q, F_GETFL) & O_NONBLOCK, "Q lost O_NONBLOCK");
	int b1 = take(q);
	got = peer_name(b1);
	CHECK(same(&got, &q1_name), "first accepted from Q is not q1");
	got = sock_name(b1);
	CHECK(same(&got, &q_name), "first accepted from Q: its name");
	got = sock_name(q1);
	CHECK(same(&got, &q1_name), "q1 lost its autobound name");
	got = peer_name(q1);
	CHECK(same(&got, &q_name), "q1: peer name");
	send_all(q1, "m1");
	send_all(q1, "m1b");
	expect(b1, "m1"); /* one message at a time */
	expect(b1, "m1b");
	send_all(b1, "r1");
	expect(q1, "r1");
	expect_peer(b1, getpid(), 0, "first accepted from Q");
	int b2 = take(q);
	got = peer_name(b2);
	CHECK(same(&got, &unnamed), "second accepted from Q: a named peer");
	CHECK(send(b2, "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE,
	      "q2 shut down its reading, yet its server can send (%m)");
	send_all(q2, "m2");
	expect(b2, "m2");
	expect_eof(q2, "q2 (shut down for reading)");
	int b3 = take(q);
	expect_peer(b3, nobody, 65534, "third accepted from Q");
	expect(b3, "nobody");
	send_all(b3, "back-nobody");
	CHECK(accept(q, NULL, NULL) < 0 && errno == EAGAIN, "Q has a fourth connection (%m)");

	if (e >= 0) {
		int ae = take(e);
		if (strcmp(mode, "data") == 0)
			expect(ae, "early");
		else if (strcmp(mode, "closed") == 0)
			expect_eof(ae, "the closed client's connection");
	}

	pid_t children[] = { child, nobody };
	for (int i = 0; i < 2; i++) {
		int status;
		CHECK(waitpid(children[i], &status, 0) == children[i], "waitpid: %m");
		CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d failed (%#x)",
		      (int)children[i], status);
	}
	cpt_ok();
}
