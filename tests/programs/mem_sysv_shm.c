/* mem_sysv_shm: a SysV shared memory segment attached twice (read-write and
 * read-only) with a pattern.  After the restore the id, size and attach
 * count are the same, the content is intact and both attaches are still
 * the same segment.  The segment is removed at the end; its id is also
 * reported ("SHMID") so the harness removes it if the program is killed. */
#include "cpt_test.h"
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>

#define SIZE (64UL << 10)

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 29 + (i >> 12) + 3);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	int id = shmget(IPC_PRIVATE, SIZE, IPC_CREAT | 0600);
	CHECK(id >= 0, "shmget: %m");
	cpt_report("SHMID %d", id);
	uint8_t *rw = shmat(id, NULL, 0);
	CHECK(rw != (void *)-1, "shmat rw: %m");
	uint8_t *ro = shmat(id, NULL, SHM_RDONLY);
	CHECK(ro != (void *)-1, "shmat ro: %m");
	for (size_t i = 0; i < SIZE; i++)
		rw[i] = pattern(i);

	cpt_ready();
	cpt_wait();

	struct shmid_ds ds;
	CHECK(shmctl(id, IPC_STAT, &ds) == 0, "shmctl(%d, IPC_STAT): %m", id);
	CHECK(ds.shm_segsz == SIZE, "segment size %zu", (size_t)ds.shm_segsz);
	CHECK(ds.shm_nattch == 2, "segment has %lu attaches, want 2", (unsigned long)ds.shm_nattch);
	CHECK((ds.shm_perm.mode & 0777) == 0600, "segment mode %o", ds.shm_perm.mode & 0777);

	char perms[5], path[PATH_MAX];
	CHECK(cpt_mapping(rw, perms, path, sizeof(path)) == 0, "rw attach missing");
	CHECK(strcmp(perms, "rw-s") == 0, "rw attach has perms %s", perms);
	CHECK(strncmp(path, "/SYSV", 5) == 0, "rw attach maps '%s', not a SysV segment", path);
	CHECK(cpt_mapping(ro, perms, path, sizeof(path)) == 0, "ro attach missing");
	CHECK(strcmp(perms, "r--s") == 0, "ro attach has perms %s", perms);
	CHECK(!cpt_probe((char *)ro, 1), "read-only attach is writable");

	for (size_t i = 0; i < SIZE; i++) {
		CHECK(rw[i] == pattern(i), "rw attach byte %#zx is %#x", i, rw[i]);
		CHECK(ro[i] == pattern(i), "ro attach byte %#zx is %#x", i, ro[i]);
	}
	rw[100] = 0xaa;
	CHECK(ro[100] == 0xaa, "the two attaches are no longer the same segment");

	/* A fresh attach by id sees the same memory too. */
	uint8_t *again = shmat(id, NULL, SHM_RDONLY);
	CHECK(again != (void *)-1, "shmat again: %m");
	CHECK(again[100] == 0xaa && again[SIZE - 1] == pattern(SIZE - 1),
	      "a new attach of segment %d sees other content", id);

	CHECK(shmdt(again) == 0 && shmdt(ro) == 0 && shmdt(rw) == 0, "shmdt: %m");
	CHECK(shmctl(id, IPC_RMID, NULL) == 0, "shmctl IPC_RMID: %m");
	cpt_ok();
}
