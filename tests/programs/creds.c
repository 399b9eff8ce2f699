/* creds: credentials and the small per-process attributes around them.
 * Starting as root, it sets: cwd (a fresh temp dir), rlimits (NOFILE and
 * CORE lowered, hard too), a capability dropped from the bounding set,
 * supplementary groups, real/effective/saved gids and uids all different and
 * non-root, keeping one capability (PR_SET_KEEPCAPS + capset), then umask,
 * nice, personality, comm, parent-death signal, dumpable 0, no_new_privs.
 * Changing uids resets pdeathsig and dumpable, hence that order. */
#include "cpt_test.h"
#include <grp.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static const uid_t RUID = 1000, EUID = 1001, SUID = 1002;
static const gid_t RGID = 1010, EGID = 1011, SGID = 1012;
static const gid_t GROUPS[] = { 1020, 1021, 1022 };
#define NGROUPS_SET 3
#define KEPT_CAP CAP_NET_BIND_SERVICE
#define DROPPED_BSET_CAP CAP_MKNOD
#define UMASK 0027
#define NICE 7
#define PERSONA (PER_LINUX | ADDR_NO_RANDOMIZE)
#define COMM "cpt-creds"
#define PDEATHSIG SIGWINCH /* default action is ignore: harmless if it fires */
#define NOFILE_SOFT 200
#define NOFILE_HARD 300
#define CORE_SOFT 0
#define CORE_HARD (1 << 20)

static void caps(struct __user_cap_data_struct data[2], int set)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	long r = syscall(set ? SYS_capset : SYS_capget, &hdr, data);
	CHECK(r == 0, "%s: %m", set ? "capset" : "capget");
}

static void check_limit(int res, const char *name, rlim_t soft, rlim_t hard)
{
	struct rlimit rl;
	CHECK(getrlimit(res, &rl) == 0, "getrlimit %s: %m", name);
	CHECK(rl.rlim_cur == soft && rl.rlim_max == hard, "%s is %lu/%lu, want %lu/%lu", name,
	      (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max, (unsigned long)soft,
	      (unsigned long)hard);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	if (geteuid() != 0)
		cpt_skip("creds must start as root");

	const char *dir = cpt_path("creds-cwd");
	char cwd[PATH_MAX];
	CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir %s: %m", dir);
	CHECK(chdir(dir) == 0, "chdir %s: %m", dir);
	CHECK(getcwd(cwd, sizeof(cwd)) != NULL, "getcwd: %m");

	struct rlimit rl = { NOFILE_SOFT, NOFILE_HARD };
	CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0, "setrlimit NOFILE: %m");
	rl = (struct rlimit){ CORE_SOFT, CORE_HARD };
	CHECK(setrlimit(RLIMIT_CORE, &rl) == 0, "setrlimit CORE: %m");

	errno = 0; /* before the uid change: raising priority back needs CAP_SYS_NICE */
	CHECK(setpriority(PRIO_PROCESS, 0, NICE) == 0, "setpriority: %m");
	CHECK(prctl(PR_CAPBSET_DROP, DROPPED_BSET_CAP, 0, 0, 0) == 0, "PR_CAPBSET_DROP: %m");
	CHECK(setgroups(NGROUPS_SET, GROUPS) == 0, "setgroups: %m");
	CHECK(setresgid(RGID, EGID, SGID) == 0, "setresgid: %m");
	CHECK(prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) == 0, "PR_SET_KEEPCAPS: %m");
	CHECK(setresuid(RUID, EUID, SUID) == 0, "setresuid: %m");
	struct __user_cap_data_struct cap[2] = { 0 };
	cap[0].effective = cap[0].permitted = 1u << KEPT_CAP;
	caps(cap, 1);

	umask(UMASK);
	CHECK(personality(PERSONA) != -1, "personality: %m");
	CHECK(prctl(PR_SET_NAME, COMM, 0, 0, 0) == 0, "PR_SET_NAME: %m");
	CHECK(prctl(PR_SET_PDEATHSIG, PDEATHSIG, 0, 0, 0) == 0, "PR_SET_PDEATHSIG: %m");
	CHECK(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0, "PR_SET_DUMPABLE: %m");
	CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS: %m");

	cpt_ready();
	cpt_wait();

	uid_t r, e, s;
	CHECK(getresuid(&r, &e, &s) == 0, "getresuid: %m");
	CHECK(r == RUID && e == EUID && s == SUID, "uids %u/%u/%u, want %u/%u/%u", r, e, s, RUID,
	      EUID, SUID);
	CHECK((uid_t)setfsuid((uid_t)-1) == EUID, "fsuid %d", setfsuid((uid_t)-1));
	gid_t rg, eg, sg;
	CHECK(getresgid(&rg, &eg, &sg) == 0, "getresgid: %m");
	CHECK(rg == RGID && eg == EGID && sg == SGID, "gids %u/%u/%u, want %u/%u/%u", rg, eg, sg,
	      RGID, EGID, SGID);
	CHECK((gid_t)setfsgid((gid_t)-1) == EGID, "fsgid %d", setfsgid((gid_t)-1));
	gid_t groups[64];
	int n = getgroups(64, groups);
	CHECK(n == NGROUPS_SET, "%d supplementary groups, want %d", n, NGROUPS_SET);
	for (int i = 0; i < n; i++)
		CHECK(groups[i] == GROUPS[i], "group #%d is %u, want %u", i, groups[i], GROUPS[i]);

	caps(cap, 0);
	CHECK(cap[0].effective == 1u << KEPT_CAP && cap[0].permitted == 1u << KEPT_CAP &&
		      cap[0].inheritable == 0 && cap[1].effective == 0 && cap[1].permitted == 0 &&
		      cap[1].inheritable == 0,
	      "capabilities eff %#x:%#x prm %#x:%#x inh %#x:%#x", cap[1].effective,
	      cap[0].effective, cap[1].permitted, cap[0].permitted, cap[1].inheritable,
	      cap[0].inheritable);
	CHECK(prctl(PR_CAPBSET_READ, DROPPED_BSET_CAP, 0, 0, 0) == 0,
	      "capability %d is back in the bounding set", DROPPED_BSET_CAP);
	CHECK(prctl(PR_CAPBSET_READ, KEPT_CAP, 0, 0, 0) == 1,
	      "capability %d left the bounding set", KEPT_CAP);
	CHECK(prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == 1, "keepcaps is off");

	mode_t m = umask(0);
	CHECK(m == UMASK, "umask %03o, want %03o", m, UMASK);
	errno = 0;
	int nice_now = getpriority(PRIO_PROCESS, 0);
	CHECK(errno == 0 && nice_now == NICE, "nice %d, want %d", nice_now, NICE);
	int persona = personality(0xffffffff);
	CHECK(persona == PERSONA, "personality %#x, want %#x", persona, PERSONA);
	char comm[17] = "";
	CHECK(prctl(PR_GET_NAME, comm, 0, 0, 0) == 0 && strcmp(comm, COMM) == 0, "comm '%s'",
	      comm);
	int sig = -1;
	CHECK(prctl(PR_GET_PDEATHSIG, &sig, 0, 0, 0) == 0 && sig == PDEATHSIG,
	      "pdeathsig %d, want %d", sig, PDEATHSIG);
	CHECK(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0, "dumpable is on");
	CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs is off");

	check_limit(RLIMIT_NOFILE, "RLIMIT_NOFILE", NOFILE_SOFT, NOFILE_HARD);
	check_limit(RLIMIT_CORE, "RLIMIT_CORE", CORE_SOFT, CORE_HARD);

	char now[PATH_MAX];
	CHECK(getcwd(now, sizeof(now)) != NULL, "getcwd: %m");
	CHECK(strcmp(now, cwd) == 0, "cwd '%s', want '%s'", now, cwd);
	cpt_ok();
}
