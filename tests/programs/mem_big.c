/* mem_big: holds argv[2] MiB of pseudo-random data (xorshift) in one
 * anonymous mapping; after the restore every byte must be the same. */
#include "cpt_test.h"
#include <sys/mman.h>

#define SEED 0x9e3779b97f4a7c15ULL

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 1, "MIB");
	size_t len = (size_t)strtoul(argv[2], NULL, 0) << 20;
	CHECK(len > 0, "bad size '%s'", argv[2]);
	void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap %zu MiB: %m", len >> 20);
	cpt_fill_random(mem, len, SEED);

	cpt_ready();
	cpt_wait();

	long off = cpt_cmp_random(mem, len, SEED);
	CHECK(off < 0, "memory differs at offset %#lx of %zu MiB", off, len >> 20);
	cpt_ok();
}
