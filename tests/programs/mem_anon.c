/* mem_anon: private anonymous memory in its common shapes.
 * - 16 read-write pages with a pattern, and a pattern on the stack;
 * - a PROT_NONE guard region (must stay inaccessible);
 * - a read-only region with a pattern (readable, writes fault);
 * - a 64 MiB region where only every 1 MiB-th page was touched (it must stay
 *   sparse: a restore must not fill it with zero pages);
 * - heap grown with sbrk: content and the program break itself. */
#include "cpt_test.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define RW_PAGES 16
#define BIG_SIZE (64UL << 20)
#define BIG_STEP (1UL << 20)
#define HEAP_SIZE (256UL << 10)
#define STACK_SIZE (32UL << 10)

static uint8_t pattern(size_t off, unsigned salt)
{
	return (uint8_t)((off * 131 + off / PAGE + salt) ^ (off >> 9));
}

static void fill(uint8_t *p, size_t len, unsigned salt)
{
	for (size_t i = 0; i < len; i++)
		p[i] = pattern(i, salt);
}

static long mismatch(const uint8_t *p, size_t len, unsigned salt)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != pattern(i, salt))
			return (long)i;
	return -1;
}

static void check_perms(void *addr, const char *want, const char *what)
{
	char perms[5];
	CHECK(cpt_mapping(addr, perms, NULL, 0) == 0, "%s at %p is not in /proc/self/maps", what,
	      addr);
	CHECK(strcmp(perms, want) == 0, "%s at %p has perms %s, want %s", what, addr, perms, want);
}

static size_t resident_pages(void *addr, size_t len)
{
	static unsigned char vec[BIG_SIZE / PAGE];
	CHECK(mincore(addr, len, vec) == 0, "mincore: %m");
	size_t n = 0;
	for (size_t i = 0; i < len / PAGE; i++)
		n += vec[i] & 1;
	return n;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	long off;

	uint8_t *rw = mmap(NULL, RW_PAGES * PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(rw != MAP_FAILED, "mmap rw: %m");
	fill(rw, RW_PAGES * PAGE, 1);

	uint8_t *guard = mmap(NULL, 4 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(guard != MAP_FAILED, "mmap guard: %m");

	uint8_t *ro = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
	CHECK(ro != MAP_FAILED, "mmap ro: %m");
	fill(ro, 4 * PAGE, 2);
	CHECK(mprotect(ro, 4 * PAGE, PROT_READ) == 0, "mprotect ro: %m");

	/* No THP here: one touched byte would make a 2 MiB page resident. */
	uint8_t *big = mmap(NULL, BIG_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	CHECK(big != MAP_FAILED, "mmap big: %m");
	CHECK(madvise(big, BIG_SIZE, MADV_NOHUGEPAGE) == 0, "madvise: %m");
	size_t touched = 0;
	for (size_t o = 0; o < BIG_SIZE; o += BIG_STEP) {
		fill(big + o, PAGE, (unsigned)(o / BIG_STEP) + 10);
		touched++;
	}
	size_t resident_before = resident_pages(big, BIG_SIZE);
	CHECK(resident_before == touched, "%zu resident pages in big region, want %zu",
	      resident_before, touched);

	uint8_t *heap = sbrk((intptr_t)HEAP_SIZE);
	CHECK(heap != (void *)-1, "sbrk: %m");
	fill(heap, HEAP_SIZE, 3);
	void *brk_end = sbrk(0);

	uint8_t stack[STACK_SIZE];
	fill(stack, STACK_SIZE, 4);

	cpt_ready();
	cpt_wait();

	off = mismatch(rw, RW_PAGES * PAGE, 1);
	CHECK(off < 0, "rw region differs at offset %ld", off);
	check_perms(rw, "rw-p", "rw region");

	check_perms(guard, "---p", "guard region");
	CHECK(!cpt_probe((char *)guard + PAGE, 0), "guard region is readable");

	off = mismatch(ro, 4 * PAGE, 2);
	CHECK(off < 0, "read-only region differs at offset %ld", off);
	check_perms(ro, "r--p", "read-only region");
	CHECK(!cpt_probe((char *)ro + 5, 1), "read-only region is writable");

	/* Residency first: reading untouched pages below maps the zero page. */
	size_t resident_after = resident_pages(big, BIG_SIZE);
	CHECK(resident_after <= touched + 16, "big region: %zu pages resident, only %zu touched",
	      resident_after, touched);
	check_perms(big, "rw-p", "big region");
	for (size_t o = 0; o < BIG_SIZE; o += PAGE) {
		if (o % BIG_STEP == 0) {
			off = mismatch(big + o, PAGE, (unsigned)(o / BIG_STEP) + 10);
			CHECK(off < 0, "big region page at +%#zx differs at %ld", o, off);
		} else {
			for (size_t i = 0; i < PAGE; i += 8)
				CHECK(*(uint64_t *)(big + o + i) == 0,
				      "big region untouched page at +%#zx is not zero", o);
		}
	}

	off = mismatch(heap, HEAP_SIZE, 3);
	CHECK(off < 0, "heap differs at offset %ld", off);
	CHECK(sbrk(0) == brk_end, "program break is %p, was %p", sbrk(0), brk_end);

	off = mismatch(stack, STACK_SIZE, 4);
	CHECK(off < 0, "stack array differs at offset %ld", off);
	cpt_ok();
}
