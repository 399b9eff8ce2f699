/* mem_dirty: argv[2] MiB of anonymous memory that a thread keeps rewriting
 * while the process is dumped (pre-copy: pages written after they were
 * copied must be copied again while frozen).
 *
 * Write number k (k = 1, 2, ...) goes to page page_of(k): a window of
 * WINDOW pages that slides one page forward every STEP writes. A page
 * holds its stamp (the k that last wrote it) in its first word and in the
 * rest words derived from (page, stamp). `done` is the last completed k.
 * After SIGUSR1 the writer stops (finishing its page) and every page must
 * hold exactly the stamp of the last write to it: a page restored from a
 * stale copy shows an older stamp. */
#include "cpt_test.h"
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>

#define PAGE 4096
#define WORDS (PAGE / 8)
#define WINDOW 256
#define STEP 64

static uint64_t *mem;
static size_t npages;
static _Atomic uint64_t done;
static atomic_int stop;

static size_t page_of(uint64_t k)
{
	return (size_t)((k / STEP + k % WINDOW) % npages);
}

static void fill(uint64_t *page, size_t p, uint64_t stamp)
{
	uint64_t x = (p * 0x9e3779b97f4a7c15ULL) ^ (stamp * 0xbf58476d1ce4e5b9ULL) ^ 1;
	for (size_t i = 1; i < WORDS; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		page[i] = x;
	}
	page[0] = stamp;
}

static int consistent(const uint64_t *page, size_t p, uint64_t stamp)
{
	uint64_t x = (p * 0x9e3779b97f4a7c15ULL) ^ (stamp * 0xbf58476d1ce4e5b9ULL) ^ 1;
	for (size_t i = 1; i < WORDS; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		if (page[i] != x)
			return 0;
	}
	return page[0] == stamp;
}

static void *writer(void *arg)
{
	(void)arg;
	for (uint64_t k = 1; !atomic_load(&stop); k++) {
		size_t p = page_of(k);
		fill(mem + p * WORDS, p, k);
		atomic_store(&done, k);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 1, "MIB");
	size_t len = (size_t)strtoul(argv[2], NULL, 0) << 20;
	CHECK(len >= (size_t)WINDOW * PAGE, "bad size '%s'", argv[2]);
	npages = len / PAGE;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap %zu MiB: %m", len >> 20);
	for (size_t p = 0; p < npages; p++)
		fill(mem + p * WORDS, p, 0);
	pthread_t thread;
	CHECK(pthread_create(&thread, NULL, writer, NULL) == 0, "pthread_create");
	while (atomic_load(&done) < WINDOW * STEP) /* writing before READY */
		usleep(1000);

	cpt_ready();
	cpt_wait();

	atomic_store(&stop, 1);
	CHECK(pthread_join(thread, NULL) == 0, "pthread_join");
	uint64_t last = atomic_load(&done);
	uint64_t *expected = calloc(npages, sizeof(*expected));
	CHECK(expected != NULL, "calloc");
	for (uint64_t k = 1; k <= last; k++)
		expected[page_of(k)] = k;
	for (size_t p = 0; p < npages; p++) {
		const uint64_t *page = mem + p * WORDS;
		CHECK(consistent(page, p, expected[p]),
		      "page %zu holds stamp %lu, last written by %lu of %lu writes", p,
		      (unsigned long)page[0], (unsigned long)expected[p], (unsigned long)last);
	}
	cpt_report("WRITES %lu", (unsigned long)last);
	cpt_ok();
}
