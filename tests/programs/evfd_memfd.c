/* evfd_memfd: memfds keep their name, content, size, seals, mode and offsets,
 * and the descriptors and mappings of one memfd still share it:
 *   data    "cpt data", 3 pages and 100 bytes with a hole in page 1, mode
 *           0640, seals GROW|SHRINK, offset 1234; a second description
 *           (reopened O_RDONLY through /proc/self/fd) at offset 10; mapped
 *           MAP_SHARED read-write and written through the mapping: what one
 *           writes the other reads, both ways
 *   sealed  "cpt sealed", WRITE|SEAL, mapped MAP_SHARED read-only: writes
 *           and writable mappings are refused
 *   future  "cpt future", mapped MAP_SHARED read-write, then sealed
 *           FUTURE_WRITE: the mapping still writes, a new writable mapping
 *           is refused
 *   mapped  "cpt mapped", only mapped (MAP_SHARED, its descriptor closed),
 *           shared with a child: what each writes the other reads
 *   priv    "cpt priv", mapped MAP_PRIVATE with page 0 written: page 0 keeps
 *           the private copy, page 1 the memfd's content
 *   plain   "", made without MFD_ALLOW_SEALING, empty
 *   noexec  made with MFD_NOEXEC_SEAL: mode 0666, sealed against exec
 */
#include "cpt_test.h"
#include <sys/mman.h>
#include <sys/wait.h>

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U
#endif
#ifndef F_SEAL_EXEC
#define F_SEAL_EXEC 0x0020
#endif

#define PAGE 4096
#define DATA_SIZE (3 * PAGE + 100)

static int data, reopened, sealed, future, priv, plain, noexec;
static char *data_map, *sealed_map, *future_map, *mapped_map, *priv_map;

static int make(const char *name, unsigned flags, size_t size, uint64_t seed)
{
	int fd = memfd_create(name, flags);
	CHECK(fd >= 0, "memfd_create(%s): %m", name);
	CHECK(ftruncate(fd, (off_t)size) == 0, "ftruncate: %m");
	static char buf[4 * PAGE];
	cpt_fill_random(buf, sizeof(buf), seed);
	if (size)
		CHECK(pwrite(fd, buf, size, 0) == (ssize_t)size, "pwrite: %m");
	return fd;
}

static char *map(int fd, size_t size, int prot, int flags)
{
	char *p = mmap(NULL, size, prot, flags, fd, 0);
	CHECK(p != MAP_FAILED, "mmap: %m");
	return p;
}

static void check_link(int fd, const char *want)
{
	char path[64], link[256];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, link, sizeof(link) - 1);
	CHECK(n > 0, "readlink %s: %m", path);
	link[n] = 0;
	CHECK(strcmp(link, want) == 0, "fd %d is %s, want %s", fd, link, want);
}

static void check_mapping(void *addr, const char *perms, const char *path)
{
	char got[5], name[256];
	CHECK(cpt_mapping(addr, got, name, sizeof(name)) == 0, "no mapping at %p", addr);
	CHECK(strcmp(got, perms) == 0 && strcmp(name, path) == 0, "mapping %p: %s %s", addr, got,
	      name);
}

static void wait_for(volatile char *p, char want, const char *what)
{
	for (int i = 0; i < 500 && *p != want; i++)
		cpt_sleep_ms(10);
	CHECK(*p == want, "%s: %#x", what, *p);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	data = make("cpt data", MFD_ALLOW_SEALING, DATA_SIZE, 1);
	CHECK(fallocate(data, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, PAGE, PAGE) == 0,
	      "punch: %m");
	CHECK(fchmod(data, 0640) == 0, "fchmod: %m");
	data_map = map(data, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	memcpy(data_map, "through the map", 15);
	CHECK(fcntl(data, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) == 0, "seal: %m");
	CHECK(lseek(data, 1234, SEEK_SET) == 1234, "lseek: %m");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", data);
	reopened = open(path, O_RDONLY);
	CHECK(reopened >= 0 && lseek(reopened, 10, SEEK_SET) == 10, "reopen: %m");

	sealed = make("cpt sealed", MFD_ALLOW_SEALING, PAGE, 2);
	CHECK(fcntl(sealed, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SEAL) == 0, "seal: %m");
	sealed_map = map(sealed, PAGE, PROT_READ, MAP_SHARED);

	future = make("cpt future", MFD_ALLOW_SEALING, PAGE, 3);
	future_map = map(future, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	CHECK(fcntl(future, F_ADD_SEALS, F_SEAL_FUTURE_WRITE) == 0, "seal: %m");

	int mapped = make("cpt mapped", 0, 2 * PAGE, 4);
	mapped_map = map(mapped, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED);
	close(mapped);

	priv = make("cpt priv", 0, 2 * PAGE, 5);
	priv_map = map(priv, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE);
	memset(priv_map, 0x5a, PAGE);

	plain = memfd_create("", 0);
	CHECK(plain >= 0, "memfd_create: %m");
	noexec = memfd_create("cpt noexec", MFD_NOEXEC_SEAL);
	if (noexec < 0 && errno == EINVAL) /* before Linux 6.3: like any other */
		noexec = memfd_create("cpt noexec", MFD_ALLOW_SEALING);
	CHECK(noexec >= 0, "memfd_create: %m");
	int noexec_seals = fcntl(noexec, F_GET_SEALS);

	pid_t child = fork();
	CHECK(child >= 0, "fork: %m");
	if (child == 0) { /* answers the parent through the shared mapping */
		wait_for(mapped_map + PAGE, 'P', "child: no word from the parent");
		mapped_map[PAGE + 1] = 'C';
		_exit(0);
	}
	cpt_ready();
	cpt_wait();

	/* data: a descriptor and a mapping of one memfd */
	check_link(data, "/memfd:cpt data (deleted)");
	check_link(reopened, "/memfd:cpt data (deleted)");
	check_mapping(data_map, "rw-s", "/memfd:cpt data (deleted)");
	struct stat st;
	CHECK(fstat(data, &st) == 0 && st.st_size == DATA_SIZE, "data: size %ld", (long)st.st_size);
	CHECK((st.st_mode & 07777) == 0640, "data: mode %o", st.st_mode & 07777);
	CHECK(fcntl(data, F_GET_SEALS) == (F_SEAL_GROW | F_SEAL_SHRINK), "data: seals %#x",
	      fcntl(data, F_GET_SEALS));
	CHECK(lseek(data, 0, SEEK_CUR) == 1234, "data: offset moved");
	CHECK(lseek(reopened, 0, SEEK_CUR) == 10, "reopened: offset moved");
	CHECK((fcntl(reopened, F_GETFL) & O_ACCMODE) == O_RDONLY, "reopened: not read-only");
	static char buf[4 * PAGE], want[4 * PAGE];
	cpt_fill_random(want, sizeof(want), 1);
	memset(want + PAGE, 0, PAGE);
	memcpy(want, "through the map", 15);
	CHECK(pread(data, buf, sizeof(buf), 0) == DATA_SIZE, "data: pread: %m");
	CHECK(memcmp(buf, want, DATA_SIZE) == 0, "data: content differs");
	memcpy(data_map + 100, "map after", 9);
	CHECK(pread(data, buf, 9, 100) == 9 && memcmp(buf, "map after", 9) == 0,
	      "data: the descriptor does not see the mapping");
	CHECK(pwrite(data, "fd after", 8, PAGE + 5) == 8, "data: pwrite: %m");
	CHECK(memcmp(data_map + PAGE + 5, "fd after", 8) == 0,
	      "data: the mapping does not see the descriptor");
	CHECK(ftruncate(data, 1) < 0 && errno == EPERM, "data: shrank despite its seal");

	/* sealed */
	CHECK(fcntl(sealed, F_GET_SEALS) == (F_SEAL_WRITE | F_SEAL_SEAL), "sealed: seals %#x",
	      fcntl(sealed, F_GET_SEALS));
	check_mapping(sealed_map, "r--s", "/memfd:cpt sealed (deleted)");
	CHECK(cpt_cmp_random(sealed_map, PAGE, 2) < 0, "sealed: content differs");
	CHECK(write(sealed, "x", 1) < 0 && errno == EPERM, "sealed: writable (%m)");
	CHECK(mmap(NULL, PAGE, PROT_WRITE, MAP_SHARED, sealed, 0) == MAP_FAILED,
	      "sealed: writable mapping allowed");

	/* future */
	CHECK(fcntl(future, F_GET_SEALS) == F_SEAL_FUTURE_WRITE, "future: seals %#x",
	      fcntl(future, F_GET_SEALS));
	CHECK(cpt_cmp_random(future_map, PAGE, 3) < 0, "future: content differs");
	memcpy(future_map, "still", 5);
	CHECK(pread(future, buf, 5, 0) == 5 && memcmp(buf, "still", 5) == 0,
	      "future: the old mapping no longer writes the memfd");
	CHECK(mmap(NULL, PAGE, PROT_WRITE, MAP_SHARED, future, 0) == MAP_FAILED,
	      "future: new writable mapping allowed");

	/* mapped: one memfd for parent and child */
	check_mapping(mapped_map, "rw-s", "/memfd:cpt mapped (deleted)");
	CHECK(cpt_cmp_random(mapped_map, PAGE, 4) < 0, "mapped: content differs");
	mapped_map[PAGE] = 'P';
	wait_for(mapped_map + PAGE + 1, 'C', "mapped: no answer from the child");
	int status;
	CHECK(waitpid(child, &status, 0) == child && status == 0, "child status %#x", status);

	/* priv */
	check_mapping(priv_map, "rw-p", "/memfd:cpt priv (deleted)");
	for (int i = 0; i < PAGE; i++)
		CHECK(priv_map[i] == 0x5a, "priv: private page lost at %d", i);
	cpt_fill_random(want, sizeof(want), 5);
	CHECK(memcmp(priv_map + PAGE, want + PAGE, PAGE) == 0, "priv: page 1 differs");
	CHECK(pread(priv, buf, PAGE, 0) == PAGE && memcmp(buf, want, PAGE) == 0,
	      "priv: the private copy leaked into the memfd");

	/* plain */
	check_link(plain, "/memfd: (deleted)");
	CHECK(fcntl(plain, F_GET_SEALS) == F_SEAL_SEAL, "plain: seals %#x",
	      fcntl(plain, F_GET_SEALS));
	CHECK(fstat(plain, &st) == 0 && st.st_size == 0, "plain: size %ld", (long)st.st_size);

	/* noexec */
	CHECK(fcntl(noexec, F_GET_SEALS) == noexec_seals, "noexec: seals %#x, were %#x",
	      fcntl(noexec, F_GET_SEALS), noexec_seals);
	if (noexec_seals & F_SEAL_EXEC) {
		CHECK(fstat(noexec, &st) == 0 && (st.st_mode & 0777) == 0666, "noexec: mode %o",
		      st.st_mode & 0777);
		CHECK(fchmod(noexec, 0755) < 0 && errno == EPERM, "noexec: made executable");
	}
	cpt_ok();
}
