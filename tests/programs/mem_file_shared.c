/* mem_file_shared: MAP_SHARED mappings of a file the program creates.
 * Writes through the mapping reach the file and writes to the file show in
 * the mapping, before and after the restore; a second, read-only shared
 * mapping of the same file sees the same bytes. */
#include "cpt_test.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define PAGES 8

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 13 + i / PAGE + 1);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	const char *path = cpt_path("mem_file_shared.data");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0, "open %s: %m", path);
	CHECK(ftruncate(fd, PAGES * PAGE) == 0, "ftruncate: %m");
	uint8_t *rw = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	CHECK(rw != MAP_FAILED, "mmap rw: %m");
	uint8_t *ro = mmap(NULL, PAGES * PAGE, PROT_READ, MAP_SHARED, fd, 0);
	CHECK(ro != MAP_FAILED, "mmap ro: %m");
	close(fd);

	for (size_t i = 0; i < PAGES * PAGE; i++)
		rw[i] = pattern(i); /* dirty pages, never msync'ed */
	static const char via_file[] = "written with pwrite before the dump";
	fd = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "reopen: %m");
	CHECK(pwrite(fd, via_file, sizeof(via_file), 3 * PAGE) == (ssize_t)sizeof(via_file),
	      "pwrite: %m");
	close(fd);

	cpt_ready();
	cpt_wait();

	char perms[5], mpath[PATH_MAX];
	CHECK(cpt_mapping(rw, perms, mpath, sizeof(mpath)) == 0, "rw mapping missing");
	CHECK(strcmp(perms, "rw-s") == 0, "rw mapping has perms %s", perms);
	CHECK(strcmp(mpath, path) == 0, "rw mapping is of '%s'", mpath);
	CHECK(cpt_mapping(ro, perms, mpath, sizeof(mpath)) == 0, "ro mapping missing");
	CHECK(strcmp(perms, "r--s") == 0, "ro mapping has perms %s", perms);

	static uint8_t file[PAGES * PAGE];
	fd = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "reopen: %m");
	CHECK(pread(fd, file, sizeof(file), 0) == (ssize_t)sizeof(file), "pread: %m");
	for (size_t i = 0; i < PAGES * PAGE; i++) {
		size_t rel = i - 3 * PAGE;
		uint8_t want = rel < sizeof(via_file) ? (uint8_t)via_file[rel] : pattern(i);
		CHECK(rw[i] == want, "rw mapping byte %#zx is %#x, want %#x", i, rw[i], want);
		CHECK(ro[i] == want, "ro mapping byte %#zx is %#x, want %#x", i, ro[i], want);
		CHECK(file[i] == want, "file byte %#zx is %#x, want %#x", i, file[i], want);
	}

	/* Still one object: a write on either side shows on the other. */
	static const char after[] = "written through the mapping after the restore";
	memcpy(rw + 5 * PAGE, after, sizeof(after));
	CHECK(pread(fd, file, sizeof(after), 5 * PAGE) == (ssize_t)sizeof(after), "pread: %m");
	CHECK(memcmp(file, after, sizeof(after)) == 0, "write through the mapping not in the file");
	CHECK(memcmp(ro + 5 * PAGE, after, sizeof(after)) == 0,
	      "write through the rw mapping not seen by the ro mapping");
	static const char after2[] = "written to the file after the restore";
	CHECK(pwrite(fd, after2, sizeof(after2), 6 * PAGE) == (ssize_t)sizeof(after2),
	      "pwrite: %m");
	CHECK(memcmp(rw + 6 * PAGE, after2, sizeof(after2)) == 0,
	      "write to the file not seen by the mapping");
	CHECK(msync(rw, PAGES * PAGE, MS_SYNC) == 0, "msync: %m");
	cpt_ok();
}
