/* pty_session: a session with a pty as controlling terminal and a foreground group.
 *
 *   root R  its own session, no controlling terminal; holds the pty's master
 *   +- S    setsid(), opens the slave: it becomes S's controlling terminal
 *      +- G  its own process group, made the foreground group (tcsetpgrp);
 *      |     holds /dev/tty open
 *      +- H  in S's group: in the background
 *
 * After SIGUSR1 (passed R -> S -> G, H), each checks from inside: S leads
 * the session the pty belongs to (TIOCGSID), G's group is the foreground
 * one and ^C typed on the terminal (TIOCSTI) interrupts G and not H; the
 * ctty in /proc/self/stat is the pty; R still has no controlling terminal.
 * Parents reap their children and require exit 0. */
#include "cpt_test.h"
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

static char slave_name[64];
static int ready_pipe[2];

static void say_ready(void)
{
	CHECK(write(ready_pipe[1], "r", 1) == 1, "ready pipe: %m");
}

static void wait_children_ready(int n)
{
	char c;
	for (int i = 0; i < n; i++)
		CHECK(read(ready_pipe[0], &c, 1) == 1, "ready pipe: %m");
}

static void reap_ok(pid_t child, const char *who)
{
	int status;
	CHECK(waitpid(child, &status, 0) == child, "%s: waitpid: %m", who);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child %d ended %#x", who,
	      (int)child, status);
}

/* The controlling terminal's device number, from /proc/self/stat (field 7). */
static unsigned long ctty_nr(void)
{
	const char *stat = cpt_read_file("/proc/self/stat");
	const char *p = strrchr(stat, ')');
	unsigned long nr = 0;
	CHECK(p && sscanf(p + 2, "%*c %*d %*d %*d %lu", &nr) == 1, "parse stat");
	return nr;
}

static volatile sig_atomic_t got_int;

static void on_int(int sig)
{
	(void)sig;
	got_int = 1;
}

static void member(int tty, pid_t session, int foreground)
{
	struct sigaction sa = { 0 };
	sa.sa_handler = on_int;
	CHECK(sigaction(SIGINT, &sa, NULL) == 0, "sigaction: %m");
	pid_t me = getpid(), group = getpgrp();
	say_ready();
	cpt_wait();
	CHECK(getsid(0) == session && tcgetsid(tty) == session, "sid %d, tty's %d, want %d",
	      (int)getsid(0), (int)tcgetsid(tty), (int)session);
	CHECK((tcgetpgrp(tty) == group) == foreground, "pid %d: foreground group %d, mine %d",
	      (int)me, (int)tcgetpgrp(tty), (int)group);
	struct stat st;
	CHECK(stat(slave_name, &st) == 0 && ctty_nr() == st.st_rdev, "ctty %lu, tty %lu",
	      ctty_nr(), (unsigned long)st.st_rdev);
	int fd = open("/dev/tty", O_RDWR | O_NOCTTY);
	CHECK(fd >= 0, "open /dev/tty: %m");
	close(fd);
	if (foreground) {
		char intr = 3;
		CHECK(ioctl(tty, TIOCSTI, &intr) == 0, "TIOCSTI: %m");
		for (int i = 0; i < 200 && !got_int; i++)
			cpt_sleep_ms(10);
		CHECK(got_int, "^C on the terminal did not interrupt the foreground group");
	} else {
		cpt_sleep_ms(300); /* while G's ^C goes by */
		CHECK(!got_int, "^C interrupted a background group");
	}
	_exit(0);
}

static void session_leader(void)
{
	CHECK(setsid() == getpid(), "setsid: %m");
	int tty = open(slave_name, O_RDWR); /* no O_NOCTTY: it becomes our terminal */
	CHECK(tty >= 0, "open %s: %m", slave_name);
	pid_t me = getpid();
	pid_t g = fork();
	CHECK(g >= 0, "fork: %m");
	if (g == 0) {
		CHECK(setpgid(0, 0) == 0, "setpgid: %m");
		int devtty = open("/dev/tty", O_RDWR);
		CHECK(devtty >= 0, "open /dev/tty: %m");
		member(devtty, me, 1);
	}
	setpgid(g, g);
	CHECK(tcsetpgrp(tty, g) == 0, "tcsetpgrp: %m");
	pid_t h = fork();
	CHECK(h >= 0, "fork: %m");
	if (h == 0)
		member(tty, me, 0);
	say_ready();
	cpt_wait();
	CHECK(getsid(0) == me && tcgetsid(tty) == me, "S: sid %d, tty's %d", (int)getsid(0),
	      (int)tcgetsid(tty));
	CHECK(tcgetpgrp(tty) == g, "S: foreground group %d, want %d", (int)tcgetpgrp(tty), (int)g);
	CHECK(kill(g, SIGUSR1) == 0 && kill(h, SIGUSR1) == 0, "kill: %m");
	reap_ok(g, "S");
	reap_ok(h, "S");
	_exit(0);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	CHECK(pipe(ready_pipe) == 0, "pipe: %m");
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	CHECK(master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0, "openpt: %m");
	CHECK(ptsname_r(master, slave_name, sizeof(slave_name)) == 0, "ptsname: %m");
	pid_t s = fork();
	CHECK(s >= 0, "fork: %m");
	if (s == 0)
		session_leader();
	wait_children_ready(3);
	cpt_ready();
	cpt_wait();
	CHECK(ctty_nr() == 0, "R has a controlling terminal %lu", ctty_nr());
	CHECK(open("/dev/tty", O_RDWR) < 0 && errno == ENXIO, "R: /dev/tty opened");
	char name[64];
	CHECK(ptsname_r(master, name, sizeof(name)) == 0 && !strcmp(name, slave_name),
	      "R: the master's slave is %s, was %s", name, slave_name);
	CHECK(kill(s, SIGUSR1) == 0, "kill: %m");
	reap_ok(s, "R");
	cpt_ok();
}
