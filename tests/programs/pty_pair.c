/* pty_pair: pseudo-terminal pairs with their settings and queued data.
 *
 *   A  canonical: custom c_cc (VINTR ^G, VEOL '#'), flags and speeds, a window
 *      size; queued for the slave's reader: whole lines ended by '\n', VEOL
 *      and end-of-file, then a line still being typed; echo on, so the
 *      master's reader has the echo and what the slave wrote (ONLCR applied)
 *   B  raw: VMIN = VTIME = 0, packet mode on the master, exclusive slave,
 *      node chowned and chmod'ed; all 256 byte values queued for the slave,
 *      10000 bytes for the master (more than its line discipline holds)
 *   C  locked again once its slave was open
 *   D  its slave closed after writing: the master reads the data, then EIO
 *
 * What A's master must read is learnt from a twin pair set up the same way
 * and read before READY. Everything is checked after SIGUSR1: the same
 * /dev/pts numbers, settings, modes, and every queued byte, once. */
#include "cpt_test.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <asm/termbits.h>

#define NAME_LEN 64
#define B_OUT 10000

struct pair {
	int master, slave;
	char name[NAME_LEN];
	dev_t rdev;
	struct termios2 t;
	struct winsize ws;
};

static void open_pair(struct pair *p)
{
	p->master = open("/dev/ptmx", O_RDWR | O_NOCTTY);
	CHECK(p->master >= 0, "open /dev/ptmx: %m");
	int unlock = 0;
	CHECK(ioctl(p->master, TIOCSPTLCK, &unlock) == 0, "unlock: %m");
	int n;
	CHECK(ioctl(p->master, TIOCGPTN, &n) == 0, "TIOCGPTN: %m");
	snprintf(p->name, NAME_LEN, "/dev/pts/%d", n);
	p->slave = open(p->name, O_RDWR | O_NOCTTY);
	CHECK(p->slave >= 0, "open %s: %m", p->name);
	struct stat st;
	CHECK(fstat(p->slave, &st) == 0, "fstat: %m");
	p->rdev = st.st_rdev;
}

static void set_termios(struct pair *p, const struct termios2 *t)
{
	CHECK(ioctl(p->slave, TCSETS2, t) == 0, "TCSETS2 %s: %m", p->name);
	CHECK(ioctl(p->slave, TCGETS2, &p->t) == 0, "TCGETS2: %m");
	CHECK(ioctl(p->master, TIOCGWINSZ, &p->ws) == 0, "TIOCGWINSZ: %m");
}

static void write_all(int fd, const void *buf, size_t len, const char *what)
{
	const char *b = buf;
	while (len) {
		ssize_t n = write(fd, b, len);
		CHECK(n > 0, "write %s: %m", what);
		b += n;
		len -= (size_t)n;
	}
}

/* Until the line discipline has taken what was written (a kernel worker moves it). */
static void settle(int fd)
{
	struct pollfd pfd = { fd, POLLIN, 0 };
	poll(&pfd, 1, 0);
	cpt_sleep_ms(50);
}

static void setup_a(struct pair *p)
{
	struct termios2 t;
	CHECK(ioctl(p->slave, TCGETS2, &t) == 0, "TCGETS2: %m");
	t.c_cc[VINTR] = 7;
	t.c_cc[VEOL] = '#';
	t.c_lflag &= ~(tcflag_t)ECHOCTL;
	t.c_iflag |= IXANY;
	t.c_cflag &= ~(tcflag_t)CBAUD;
	t.c_cflag |= BOTHER | (BOTHER << IBSHIFT);
	t.c_ospeed = 9600;
	t.c_ispeed = 4800;
	struct winsize ws = { 40, 132, 1320, 800 };
	CHECK(ioctl(p->master, TIOCSWINSZ, &ws) == 0, "TIOCSWINSZ: %m");
	set_termios(p, &t);
	static const char typed[] = "first line\nsecond#third\neof-ended\004half a li";
	write_all(p->master, typed, sizeof(typed) - 1, "A master");
	settle(p->slave); /* the echo first, then what the slave writes */
	write_all(p->slave, "output one\n", 11, "A slave");
	settle(p->master);
}

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 7 + 3);
}

static size_t read_nb(int fd, unsigned char *buf, size_t cap, int *err)
{
	size_t got = 0;
	*err = 0;
	while (got < cap) {
		ssize_t n = read(fd, buf + got, cap - got);
		if (n < 0) {
			*err = errno;
			break;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return got;
}

static void check_same(struct pair *p)
{
	char name[NAME_LEN];
	CHECK(ptsname_r(p->master, name, sizeof(name)) == 0, "ptsname: %m");
	CHECK(strcmp(name, p->name) == 0, "master of %s is now %s", p->name, name);
	struct stat st;
	CHECK(fstat(p->slave, &st) == 0 && st.st_rdev == p->rdev, "%s: other device", p->name);
	CHECK(strcmp(ttyname(p->slave), p->name) == 0, "ttyname %s", ttyname(p->slave));
	struct termios2 t;
	CHECK(ioctl(p->slave, TCGETS2, &t) == 0, "TCGETS2: %m");
	CHECK(t.c_iflag == p->t.c_iflag && t.c_oflag == p->t.c_oflag &&
		      t.c_cflag == p->t.c_cflag && t.c_lflag == p->t.c_lflag &&
		      t.c_line == p->t.c_line && !memcmp(t.c_cc, p->t.c_cc, sizeof(t.c_cc)) &&
		      t.c_ispeed == p->t.c_ispeed && t.c_ospeed == p->t.c_ospeed,
	      "%s: termios changed (lflag %#o, was %#o)", p->name, t.c_lflag, p->t.c_lflag);
	struct winsize ws;
	CHECK(ioctl(p->master, TIOCGWINSZ, &ws) == 0, "TIOCGWINSZ: %m");
	CHECK(!memcmp(&ws, &p->ws, sizeof(ws)), "%s: window %dx%d", p->name, ws.ws_row, ws.ws_col);
}

static void expect_line(int fd, const char *want)
{
	char buf[256];
	ssize_t n = read(fd, buf, sizeof(buf));
	CHECK(n == (ssize_t)strlen(want) && !memcmp(buf, want, (size_t)n),
	      "A: read %zd bytes '%.*s', wanted '%s'", n, (int)(n > 0 ? n : 0), buf, want);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	struct pair a, twin, b, c, d;
	open_pair(&a);
	open_pair(&twin);
	open_pair(&b);
	open_pair(&c);
	open_pair(&d);

	setup_a(&a);
	setup_a(&twin);
	settle(twin.master);
	static unsigned char a_out[8192];
	CHECK(fcntl(twin.master, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	int err;
	size_t a_out_len = read_nb(twin.master, a_out, sizeof(a_out), &err);
	CHECK(a_out_len > 11, "the twin's master read %zu bytes", a_out_len);

	struct termios2 raw;
	CHECK(ioctl(b.slave, TCGETS2, &raw) == 0, "TCGETS2: %m");
	raw.c_iflag = 0;
	raw.c_oflag = 0;
	raw.c_lflag = 0;
	raw.c_cc[VMIN] = 0;
	raw.c_cc[VTIME] = 0;
	set_termios(&b, &raw);
	int on = 1;
	CHECK(ioctl(b.master, TIOCPKT, &on) == 0, "TIOCPKT: %m");
	CHECK(ioctl(b.slave, TIOCEXCL) == 0, "TIOCEXCL: %m");
	CHECK(fchown(b.slave, 4321, 5) == 0 && fchmod(b.slave, 0600) == 0, "chown: %m");
	static unsigned char buf[B_OUT + 512];
	for (size_t i = 0; i < B_OUT; i++)
		buf[i] = pattern(i);
	write_all(b.slave, buf, B_OUT, "B slave");
	for (size_t i = 0; i < 1024; i++)
		buf[i] = (unsigned char)i;
	write_all(b.master, buf, 1024, "B master");

	set_termios(&c, &raw);
	write_all(c.slave, "locked", 6, "C slave");
	int lock = 1;
	CHECK(ioctl(c.master, TIOCSPTLCK, &lock) == 0, "lock: %m");

	write_all(d.slave, "bye\n", 4, "D slave");
	settle(d.master);
	close(d.slave);
	close(twin.master);
	close(twin.slave);
	settle(a.slave);
	settle(b.slave);

	cpt_ready();
	cpt_wait();

	check_same(&a);
	check_same(&b);
	check_same(&c);
	CHECK(fcntl(a.slave, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	expect_line(a.slave, "first line\n");
	expect_line(a.slave, "second#");
	expect_line(a.slave, "third\n");
	expect_line(a.slave, "eof-ended");
	CHECK(read(a.slave, buf, 16) < 0 && errno == EAGAIN, "A: more than the whole lines");
	struct termios2 t = a.t;
	t.c_lflag &= ~(tcflag_t)ICANON;
	t.c_cc[VMIN] = 1;
	CHECK(ioctl(a.slave, TCSETS2, &t) == 0, "TCSETS2: %m");
	expect_line(a.slave, "half a li");
	CHECK(fcntl(a.master, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	size_t got = read_nb(a.master, buf, sizeof(buf), &err);
	CHECK(got == a_out_len && !memcmp(buf, a_out, got),
	      "A: the master read %zu bytes '%.*s', wanted %zu '%.*s'", got, (int)got, buf,
	      a_out_len, (int)a_out_len, a_out);

	int mode = 0;
	CHECK(ioctl(b.master, TIOCGPKT, &mode) == 0 && mode == 1, "B: packet mode %d", mode);
	CHECK(ioctl(b.slave, TIOCGEXCL, &mode) == 0 && mode == 1, "B: exclusive %d", mode);
	struct stat st;
	CHECK(fstat(b.slave, &st) == 0 && (st.st_mode & 07777) == 0600 && st.st_uid == 4321 &&
		      st.st_gid == 5,
	      "B: node mode %o owner %d:%d", st.st_mode & 07777, st.st_uid, st.st_gid);
	CHECK(fcntl(b.slave, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	got = read_nb(b.slave, buf, sizeof(buf), &err);
	CHECK(got == 1024, "B: the slave read %zu bytes", got);
	for (size_t i = 0; i < 1024; i++)
		CHECK(buf[i] == (unsigned char)i, "B: input byte %zu is %d", i, buf[i]);
	CHECK(fcntl(b.master, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	size_t total = 0;
	for (;;) {
		unsigned char pkt[4096];
		ssize_t n = read(b.master, pkt, sizeof(pkt));
		if (n < 0 && errno == EAGAIN) {
			struct pollfd pfd = { b.master, POLLIN, 0 };
			if (total < B_OUT && poll(&pfd, 1, 1000) == 1)
				continue;
			break;
		}
		CHECK(n > 0 && pkt[0] == TIOCPKT_DATA, "B: packet read %zd, status %d", n, pkt[0]);
		for (ssize_t i = 1; i < n; i++, total++)
			CHECK(total < B_OUT && pkt[i] == pattern(total), "B: output byte %zu", total);
	}
	CHECK(total == B_OUT, "B: the master read %zu bytes of %d", total, B_OUT);

	CHECK(ioctl(c.master, TIOCGPTLCK, &lock) == 0 && lock == 1, "C: lock %d", lock);
	CHECK(open(c.name, O_RDWR | O_NOCTTY) < 0 && errno == EIO, "C: opened while locked");
	CHECK(fcntl(c.master, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	CHECK(read(c.master, buf, 16) == 6 && !memcmp(buf, "locked", 6), "C: master data");

	CHECK(fcntl(d.master, F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	got = read_nb(d.master, buf, 64, &err);
	CHECK(got == 5 && !memcmp(buf, "bye\r\n", 5), "D: the master read %zu bytes", got);
	CHECK(err == EIO, "D: the master read ended with %s, not EIO", strerror(err));
	cpt_ok();
}
