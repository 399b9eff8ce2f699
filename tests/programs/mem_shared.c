/* mem_shared: MAP_SHARED|MAP_ANONYMOUS memory shared by a parent and its
 * forked child.  Both write their halves before READY.  After the restore
 * the parent writes, the child must see it; the child writes, the parent
 * must see it: the two must still share one object, not two copies. */
#include "cpt_test.h"
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define PAGES 8
#define HALF (PAGES * PAGE / 2)

struct ctl {
	volatile int child_ready;
	volatile int parent_says; /* written by the parent after the restore */
	volatile int child_says;  /* written by the child in reply */
};

static uint8_t pattern(size_t i, unsigned salt)
{
	return (uint8_t)(i * 7 + salt + i / PAGE);
}

static void check_data(const uint8_t *data, const char *who)
{
	for (size_t i = 0; i < HALF; i++)
		CHECK(data[i] == pattern(i, 1), "%s: parent half byte %#zx is %#x", who, i, data[i]);
	for (size_t i = HALF; i < 2 * HALF; i++)
		CHECK(data[i] == pattern(i, 2), "%s: child half byte %#zx is %#x", who, i, data[i]);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	uint8_t *shm = mmap(NULL, PAGE + PAGES * PAGE, PROT_READ | PROT_WRITE,
			    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(shm != MAP_FAILED, "mmap: %m");
	struct ctl *ctl = (struct ctl *)shm;
	uint8_t *data = shm + PAGE;

	pid_t child = fork();
	CHECK(child >= 0, "fork: %m");
	if (child == 0) {
		for (size_t i = HALF; i < 2 * HALF; i++)
			data[i] = pattern(i, 2);
		ctl->child_ready = 1;
		cpt_wait();
		check_data(data, "child");
		CHECK(ctl->parent_says == 0x5eed, "child does not see the parent's write (%#x)",
		      ctl->parent_says);
		ctl->child_says = 0xc0de;
		_exit(0);
	}
	for (size_t i = 0; i < HALF; i++)
		data[i] = pattern(i, 1);
	for (int i = 0; !ctl->child_ready; i++) {
		CHECK(i < 5000, "child never got ready");
		cpt_sleep_ms(2);
	}

	cpt_ready();
	cpt_wait();

	check_data(data, "parent");
	ctl->parent_says = 0x5eed;
	CHECK(kill(child, SIGUSR1) == 0, "kill child %d: %m", (int)child);
	int status;
	CHECK(waitpid(child, &status, 0) == child, "waitpid child: %m");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child ended with status %#x",
	      status);
	CHECK(ctl->child_says == 0xc0de, "parent does not see the child's write (%#x)",
	      ctl->child_says);
	cpt_ok();
}
