/* holder: for benchmarks.  Holds argv[2] MiB (default 64) of pseudo-random
 * data (xorshift), writes READY and then waits forever; SIGUSR1 (optional)
 * checks the data like mem_big and exits. */
#include "cpt_test.h"
#include <sys/mman.h>

#define SEED 0x6a09e667f3bcc908ULL

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "[MIB]");
	size_t len = (size_t)strtoul(argc > 2 ? argv[2] : "64", NULL, 0) << 20;
	CHECK(len > 0, "bad size");
	void *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap %zu MiB: %m", len >> 20);
	cpt_fill_random(mem, len, SEED);

	cpt_ready();
	cpt_wait();

	long off = cpt_cmp_random(mem, len, SEED);
	CHECK(off < 0, "memory differs at offset %#lx of %zu MiB", off, len >> 20);
	cpt_ok();
}
