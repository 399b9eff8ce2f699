/* mem_file_private: MAP_PRIVATE mappings of a file the program creates.
 * A read-write mapping (from file offset 1 page) has a few pages written:
 * those copy-on-write pages keep the new content while the file keeps the
 * old.  The untouched pages must still be backed by the file: a write to the
 * file after the restore shows through them (so a restore must not turn
 * them into anonymous copies).  A read-only mapping of the same file is read
 * like a library's text. */
#include "cpt_test.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define FILE_PAGES 16
#define MAP_PAGES 12 /* mapping covers file pages 1..12 */

static const int written[] = { 1, 4, 5, 11 }; /* page indexes in the mapping */

static uint8_t old_byte(size_t file_off)
{
	return (uint8_t)('A' + file_off / PAGE + file_off % 7);
}

static uint8_t new_byte(size_t map_off)
{
	return (uint8_t)(0x80 | (map_off % 127));
}

static int is_written(size_t page)
{
	for (size_t i = 0; i < sizeof(written) / sizeof(written[0]); i++)
		if ((size_t)written[i] == page)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	const char *path = cpt_path("mem_file_private.data");
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	CHECK(fd >= 0, "open %s: %m", path);
	static uint8_t buf[FILE_PAGES * PAGE];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = old_byte(i);
	CHECK(write(fd, buf, sizeof(buf)) == (ssize_t)sizeof(buf), "write: %m");

	uint8_t *rw = mmap(NULL, MAP_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, PAGE);
	CHECK(rw != MAP_FAILED, "mmap rw: %m");
	uint8_t *ro = mmap(NULL, FILE_PAGES * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
	CHECK(ro != MAP_FAILED, "mmap ro: %m");
	close(fd); /* the mappings alone keep the file */

	volatile uint8_t sink = 0;
	for (size_t i = 0; i < MAP_PAGES * PAGE; i += PAGE)
		sink ^= rw[i] ^ ro[i]; /* fault the file pages in, without COW */
	for (size_t p = 0; p < MAP_PAGES; p++)
		if (is_written(p))
			for (size_t i = p * PAGE; i < (p + 1) * PAGE; i++)
				rw[i] = new_byte(i);

	cpt_ready();
	cpt_wait();

	char perms[5], mpath[PATH_MAX];
	CHECK(cpt_mapping(rw, perms, mpath, sizeof(mpath)) == 0, "rw mapping missing");
	CHECK(strcmp(perms, "rw-p") == 0, "rw mapping has perms %s", perms);
	CHECK(strcmp(mpath, path) == 0, "rw mapping is of '%s', want '%s'", mpath, path);
	CHECK(cpt_mapping(ro, perms, mpath, sizeof(mpath)) == 0, "ro mapping missing");
	CHECK(strcmp(perms, "r--p") == 0, "ro mapping has perms %s", perms);
	CHECK(strcmp(mpath, path) == 0, "ro mapping is of '%s', want '%s'", mpath, path);

	for (size_t i = 0; i < MAP_PAGES * PAGE; i++) {
		uint8_t want = is_written(i / PAGE) ? new_byte(i) : old_byte(i + PAGE);
		CHECK(rw[i] == want, "rw mapping byte %#zx is %#x, want %#x", i, rw[i], want);
	}
	for (size_t i = 0; i < FILE_PAGES * PAGE; i++)
		CHECK(ro[i] == old_byte(i), "ro mapping byte %#zx is %#x", i, ro[i]);

	fd = open(path, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "reopen %s: %m", path);
	CHECK(pread(fd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf), "pread: %m");
	for (size_t i = 0; i < sizeof(buf); i++)
		CHECK(buf[i] == old_byte(i), "file byte %#zx changed to %#x", i, buf[i]);

	/* Mapping page 0 = file page 1 (never written): shares the page cache.
	 * Mapping page 1 = file page 2 (COW copy): must not see the file. */
	static const char marker[] = "written to the file after the restore";
	CHECK(pwrite(fd, marker, sizeof(marker), PAGE) == (ssize_t)sizeof(marker), "pwrite: %m");
	CHECK(pwrite(fd, marker, sizeof(marker), 2 * PAGE) == (ssize_t)sizeof(marker), "pwrite: %m");
	CHECK(memcmp(rw, marker, sizeof(marker)) == 0,
	      "clean page of the private mapping does not show a write to the file "
	      "(restored as an anonymous copy?)");
	CHECK(memcmp(ro + PAGE, marker, sizeof(marker)) == 0,
	      "read-only mapping does not show a write to the file");
	CHECK(rw[PAGE] == new_byte(PAGE), "copy-on-write page shows a write to the file");
	cpt_ok();
}
