/* tree: a process tree with sessions, process groups and a zombie.
 *
 *   root (session leader: the harness starts it with setsid)
 *   +- A   same group and session as root
 *   |  +- A1
 *   +- B   its own process group (setpgid)
 *   |  +- B1  in B's group
 *   +- C   a new session (setsid)
 *   |  +- C1  in C's session, its own group
 *   +- Z   exited with status 7, never reaped: a zombie
 *
 * Every process remembers its pid, ppid, pgid and sid (the root's ppid is
 * not checked: its parent is not part of the tree).  On SIGUSR1 the root
 * checks itself and reaps Z (status 7 must survive the restore), then passes
 * SIGUSR1 to A, B and C, which check themselves and do the same with their
 * child.  Each parent reaps its child and requires exit 0; a failing check
 * writes FAIL to the report itself. */
#include "cpt_test.h"
#include <sys/wait.h>

struct ids {
	pid_t pid, ppid, pgid, sid;
};

static int ready_pipe[2];

static struct ids my_ids(void)
{
	return (struct ids){ getpid(), getppid(), getpgid(0), getsid(0) };
}

/* The root's parent (the test) is outside the tree: after a restore it is
 * whoever restored it, so only the others check their ppid. */
static void check_ids(const struct ids *saved, const char *who, int check_ppid)
{
	struct ids now = my_ids();
	CHECK(now.pid == saved->pid, "%s: pid %d, was %d", who, now.pid, saved->pid);
	CHECK(!check_ppid || now.ppid == saved->ppid, "%s: ppid %d, was %d", who, now.ppid,
	      saved->ppid);
	CHECK(now.pgid == saved->pgid, "%s: pgid %d, was %d", who, now.pgid, saved->pgid);
	CHECK(now.sid == saved->sid, "%s: sid %d, was %d", who, now.sid, saved->sid);
}

static void say_ready(void)
{
	CHECK(write(ready_pipe[1], "r", 1) == 1, "write ready pipe: %m");
	close(ready_pipe[1]);
}

static void reap_ok(pid_t child, const char *who)
{
	int status;
	CHECK(waitpid(child, &status, 0) == child, "%s: waitpid %d: %m", who, (int)child);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child %d ended with status %#x",
	      who, (int)child, status);
}

/* A grandchild: check itself when told, exit 0. */
static void grandchild(const char *who, int own_group)
{
	if (own_group)
		CHECK(setpgid(0, 0) == 0, "%s: setpgid: %m", who);
	struct ids saved = my_ids();
	say_ready();
	cpt_wait();
	check_ids(&saved, who, 1);
	_exit(0);
}

/* A child: optional new group or session, one grandchild; checks both. */
static void child(const char *who, const char *gc_who, int new_group, int new_session)
{
	close(ready_pipe[0]);
	if (new_group)
		CHECK(setpgid(0, 0) == 0, "%s: setpgid: %m", who);
	if (new_session)
		CHECK(setsid() == getpid(), "%s: setsid: %m", who);
	struct ids saved = my_ids();
	pid_t gc = fork();
	CHECK(gc >= 0, "%s: fork: %m", who);
	if (gc == 0)
		grandchild(gc_who, new_session);
	say_ready();
	cpt_wait();
	check_ids(&saved, who, 1);
	CHECK(getpgid(gc) == (new_session ? gc : saved.pgid), "%s: %s has pgid %d", who, gc_who,
	      (int)getpgid(gc));
	CHECK(getsid(gc) == saved.sid, "%s: %s has sid %d", who, gc_who, (int)getsid(gc));
	CHECK(kill(gc, SIGUSR1) == 0, "%s: kill %d: %m", who, (int)gc);
	reap_ok(gc, who);
	_exit(0);
}

static pid_t spawn(const char *who, const char *gc_who, int new_group, int new_session)
{
	pid_t pid = fork();
	CHECK(pid >= 0, "fork %s: %m", who);
	if (pid == 0)
		child(who, gc_who, new_group, new_session);
	return pid;
}

static char proc_state(pid_t pid)
{
	char path[64], state = '?';
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	const char *stat = cpt_read_file(path);
	const char *paren = strrchr(stat, ')');
	if (paren)
		sscanf(paren + 1, " %c", &state);
	return state;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	struct ids saved = my_ids();
	CHECK(saved.sid == saved.pid && saved.pgid == saved.pid,
	      "root must be a session leader (start it with setsid)");
	CHECK(pipe(ready_pipe) == 0, "pipe: %m");

	pid_t z = fork();
	CHECK(z >= 0, "fork Z: %m");
	if (z == 0)
		_exit(7);
	pid_t a = spawn("A", "A1", 0, 0);
	pid_t b = spawn("B", "B1", 1, 0);
	pid_t c = spawn("C", "C1", 0, 1);
	close(ready_pipe[1]);
	char buf[8];
	size_t got = 0;
	while (got < 6) {
		ssize_t n = read(ready_pipe[0], buf, sizeof(buf));
		CHECK(n > 0, "only %zu of 6 processes got ready", got);
		got += (size_t)n;
	}
	close(ready_pipe[0]);
	siginfo_t si = { 0 };
	CHECK(waitid(P_PID, (id_t)z, &si, WEXITED | WNOWAIT) == 0, "waitid Z: %m");
	CHECK(si.si_code == CLD_EXITED && si.si_status == 7, "Z: code %d status %d", si.si_code,
	      si.si_status);

	cpt_ready();
	cpt_wait();

	check_ids(&saved, "root", 0);
	CHECK(getpgid(a) == saved.pid && getsid(a) == saved.pid, "A: pgid %d sid %d",
	      (int)getpgid(a), (int)getsid(a));
	CHECK(getpgid(b) == b && getsid(b) == saved.pid, "B: pgid %d sid %d", (int)getpgid(b),
	      (int)getsid(b));
	CHECK(getpgid(c) == c && getsid(c) == c, "C: pgid %d sid %d", (int)getpgid(c),
	      (int)getsid(c));
	CHECK(proc_state(z) == 'Z', "Z (pid %d) is in state %c, not a zombie", (int)z, proc_state(z));
	int status;
	CHECK(waitpid(z, &status, WNOHANG) == z, "waitpid Z: not reapable (%m)");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "Z ended with status %#x, want exit 7",
	      status);

	CHECK(kill(a, SIGUSR1) == 0 && kill(b, SIGUSR1) == 0 && kill(c, SIGUSR1) == 0,
	      "kill children: %m");
	reap_ok(a, "root");
	reap_ok(b, "root");
	reap_ok(c, "root");
	cpt_ok();
}
