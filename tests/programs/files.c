/* files: a table of file descriptors of many kinds, each checked from inside
 * after the restore at the same fd number:
 *   reg      regular file O_RDWR, offset 1234
 *   app      O_WRONLY|O_APPEND file
 *   gone     file unlinked while open, with content
 *   sh_a/b/c one open file description dup'ed twice (dup, dup2 to fd 100):
 *            one shared offset; sh_other opens the same file separately
 *   cloexec  one fd with FD_CLOEXEC (O_CLOEXEC), reg without
 *   dir      a directory fd (openat through it works)
 *   null, zero, urandom  character devices
 *   pipe     1000 bytes buffered, read end O_NONBLOCK, pipe size 128 KiB
 *   fifo     a FIFO opened O_RDWR with 500 bytes in it
 *   flocked  flock(LOCK_EX) held
 *   posix    fcntl F_SETLK write lock on bytes [100, 200)
 * and no other fds than these appear. */
#include "cpt_test.h"
#include <dirent.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

#define REG_SIZE 10000
#define REG_OFF 1234
#define GONE_SIZE 20000
#define PIPE_BYTES 1000
#define FIFO_BYTES 500
#define PIPE_SIZE (128 << 10)

static int fd_reg, fd_app, fd_gone, fd_sh_a, fd_sh_b, fd_sh_c = 100, fd_sh_other, fd_cloexec;
static int fd_dir, fd_null, fd_zero, fd_urandom, fd_pipe[2], fd_fifo, fd_flock, fd_posix;
static int fd_list[64], nfds;

static uint8_t byte_at(size_t i, unsigned salt)
{
	return (uint8_t)(i * 31 + salt + (i >> 8));
}

static void fill_file(int fd, size_t len, unsigned salt)
{
	uint8_t buf[4096];
	for (size_t off = 0; off < len; off += sizeof(buf)) {
		size_t n = len - off < sizeof(buf) ? len - off : sizeof(buf);
		for (size_t i = 0; i < n; i++)
			buf[i] = byte_at(off + i, salt);
		CHECK(write(fd, buf, n) == (ssize_t)n, "write: %m");
	}
}

static void check_content(int fd, size_t len, unsigned salt, const char *what)
{
	static uint8_t buf[GONE_SIZE];
	CHECK(pread(fd, buf, len, 0) == (ssize_t)len, "%s: pread: %m", what);
	for (size_t i = 0; i < len; i++)
		CHECK(buf[i] == byte_at(i, salt), "%s: byte %zu is %#x", what, i, buf[i]);
}

static int xopen(const char *name, int flags)
{
	const char *path = cpt_path(name);
	int fd = open(path, flags, 0644);
	CHECK(fd >= 0, "open %s: %m", path);
	return fd;
}

static off_t offset(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

static void check_flags(int fd, int want, const char *what)
{
	int fl = fcntl(fd, F_GETFL);
	int mask = O_ACCMODE | O_APPEND | O_NONBLOCK;
	CHECK(fl >= 0 && (fl & mask) == want, "%s (fd %d): flags %#x, want %#x", what, fd,
	      fl & mask, want);
}

static void list_fds(int *out, int *n)
{
	DIR *d = opendir("/proc/self/fd");
	CHECK(d != NULL, "opendir: %m");
	*n = 0;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] != '.' && fd != dirfd(d) && *n < 64)
			out[(*n)++] = fd;
	}
	closedir(d);
}

static void check_dev(int fd, const char *path)
{
	struct stat a, b;
	CHECK(fstat(fd, &a) == 0 && stat(path, &b) == 0, "stat %s: %m", path);
	CHECK(S_ISCHR(a.st_mode) && a.st_rdev == b.st_rdev, "fd %d is not %s", fd, path);
}

/* Run in a forked child: POSIX locks of the parent are only visible from
 * another process. */
static int child_sees_posix_lock(pid_t parent)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1000 };
	if (fcntl(fd_posix, F_GETLK, &fl) < 0)
		return 10;
	if (fl.l_type != F_WRLCK)
		return 11;
	if (fl.l_pid != parent)
		return 12;
	if (fl.l_start != 100 || fl.l_len != 100)
		return 13;
	return 0;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");

	fd_reg = xopen("reg", O_RDWR | O_CREAT | O_TRUNC);
	fill_file(fd_reg, REG_SIZE, 1);
	CHECK(lseek(fd_reg, REG_OFF, SEEK_SET) == REG_OFF, "lseek: %m");

	fd_app = xopen("app", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
	CHECK(write(fd_app, "abc", 3) == 3, "write: %m");

	fd_gone = xopen("gone", O_RDWR | O_CREAT | O_TRUNC);
	fill_file(fd_gone, GONE_SIZE, 2);
	CHECK(unlink(cpt_path("gone")) == 0, "unlink: %m");

	fd_sh_a = xopen("shared", O_RDWR | O_CREAT | O_TRUNC);
	fill_file(fd_sh_a, 1000, 3);
	fd_sh_b = dup(fd_sh_a);
	CHECK(fd_sh_b >= 0 && dup2(fd_sh_a, fd_sh_c) == fd_sh_c, "dup: %m");
	CHECK(lseek(fd_sh_a, 77, SEEK_SET) == 77, "lseek: %m");
	fd_sh_other = xopen("shared", O_RDONLY);
	CHECK(lseek(fd_sh_other, 500, SEEK_SET) == 500, "lseek: %m");

	fd_cloexec = xopen("reg", O_RDONLY | O_CLOEXEC);

	fd_dir = open(cpt_path(""), O_RDONLY | O_DIRECTORY);
	CHECK(fd_dir >= 0, "open dir: %m");
	fd_null = open("/dev/null", O_WRONLY);
	fd_zero = open("/dev/zero", O_RDONLY);
	fd_urandom = open("/dev/urandom", O_RDONLY);
	CHECK(fd_null >= 0 && fd_zero >= 0 && fd_urandom >= 0, "open /dev/...: %m");

	CHECK(pipe(fd_pipe) == 0, "pipe: %m");
	CHECK(fcntl(fd_pipe[1], F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE, "F_SETPIPE_SZ: %m");
	CHECK(fcntl(fd_pipe[0], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK: %m");
	fill_file(fd_pipe[1], PIPE_BYTES, 4);

	const char *fifo = cpt_path("fifo");
	CHECK(mkfifo(fifo, 0600) == 0, "mkfifo: %m");
	fd_fifo = xopen("fifo", O_RDWR);
	fill_file(fd_fifo, FIFO_BYTES, 5);

	fd_flock = xopen("flocked", O_RDWR | O_CREAT | O_TRUNC);
	CHECK(flock(fd_flock, LOCK_EX) == 0, "flock: %m");
	fd_posix = xopen("posixlocked", O_RDWR | O_CREAT | O_TRUNC);
	fill_file(fd_posix, 1000, 6);
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 100 };
	CHECK(fcntl(fd_posix, F_SETLK, &fl) == 0, "F_SETLK: %m");

	list_fds(fd_list, &nfds);

	cpt_ready();
	cpt_wait();

	int now[64], nnow;
	list_fds(now, &nnow); /* first, before this check opens anything */
	for (int i = 0; i < nnow; i++) {
		int known = 0;
		for (int j = 0; j < nfds; j++)
			known |= now[i] == fd_list[j];
		CHECK(known, "unexpected fd %d", now[i]);
	}
	CHECK(nnow == nfds, "%d fds open, want %d", nnow, nfds);

	CHECK(offset(fd_reg) == REG_OFF, "reg: offset %ld", (long)offset(fd_reg));
	check_flags(fd_reg, O_RDWR, "reg");
	check_content(fd_reg, REG_SIZE, 1, "reg");
	uint8_t c;
	CHECK(read(fd_reg, &c, 1) == 1 && c == byte_at(REG_OFF, 1), "reg: read at offset");

	check_flags(fd_app, O_WRONLY | O_APPEND, "app");
	CHECK(write(fd_app, "def", 3) == 3, "app: write: %m");
	char app[16] = "";
	int fd = xopen("app", O_RDONLY);
	CHECK(read(fd, app, sizeof(app)) == 6 && memcmp(app, "abcdef", 6) == 0,
	      "app: content '%.6s', want 'abcdef'", app);
	close(fd);

	struct stat st;
	CHECK(fstat(fd_gone, &st) == 0 && st.st_nlink == 0 && st.st_size == GONE_SIZE,
	      "gone: nlink %lu size %ld", (unsigned long)st.st_nlink, (long)st.st_size);
	check_content(fd_gone, GONE_SIZE, 2, "gone");
	char link[PATH_MAX], fdpath[64];
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd_gone);
	ssize_t ln = readlink(fdpath, link, sizeof(link) - 1);
	link[ln > 0 ? ln : 0] = 0;
	CHECK(ln > 10 && strcmp(link + ln - 10, " (deleted)") == 0, "gone: link '%s'", link);

	CHECK(offset(fd_sh_a) == 77 && offset(fd_sh_b) == 77 && offset(fd_sh_c) == 77,
	      "shared: offsets %ld %ld %ld, want 77", (long)offset(fd_sh_a),
	      (long)offset(fd_sh_b), (long)offset(fd_sh_c));
	CHECK(read(fd_sh_b, &c, 1) == 1 && c == byte_at(77, 3), "shared: read");
	CHECK(offset(fd_sh_a) == 78 && offset(fd_sh_c) == 78,
	      "dup'ed fds no longer share an offset (%ld %ld %ld)", (long)offset(fd_sh_a),
	      (long)offset(fd_sh_b), (long)offset(fd_sh_c));
	CHECK(offset(fd_sh_other) == 500, "separately opened fd: offset %ld",
	      (long)offset(fd_sh_other));
	check_flags(fd_sh_other, O_RDONLY, "shared other");

	CHECK(fcntl(fd_cloexec, F_GETFD) == FD_CLOEXEC, "cloexec fd lost FD_CLOEXEC");
	CHECK(fcntl(fd_reg, F_GETFD) == 0, "reg fd got FD_CLOEXEC");
	CHECK(fcntl(fd_sh_c, F_GETFD) == 0, "dup2'ed fd got FD_CLOEXEC");

	struct stat dst;
	CHECK(fstat(fd_dir, &st) == 0 && stat(cpt_path(""), &dst) == 0, "dir: stat: %m");
	CHECK(S_ISDIR(st.st_mode) && st.st_ino == dst.st_ino && st.st_dev == dst.st_dev,
	      "dir fd is not the test directory");
	fd = openat(fd_dir, "reg", O_RDONLY);
	CHECK(fd >= 0, "openat through the dir fd: %m");
	close(fd);

	check_dev(fd_null, "/dev/null");
	check_flags(fd_null, O_WRONLY, "/dev/null");
	CHECK(write(fd_null, "x", 1) == 1, "/dev/null: write: %m");
	check_dev(fd_zero, "/dev/zero");
	uint64_t z = 1;
	CHECK(read(fd_zero, &z, sizeof(z)) == sizeof(z) && z == 0, "/dev/zero: read");
	check_dev(fd_urandom, "/dev/urandom");
	CHECK(read(fd_urandom, &z, sizeof(z)) == sizeof(z), "/dev/urandom: read: %m");

	int avail = -1;
	CHECK(ioctl(fd_pipe[0], FIONREAD, &avail) == 0 && avail == PIPE_BYTES,
	      "pipe: %d bytes buffered, want %d", avail, PIPE_BYTES);
	CHECK(fcntl(fd_pipe[0], F_GETPIPE_SZ) == PIPE_SIZE, "pipe size %d",
	      fcntl(fd_pipe[0], F_GETPIPE_SZ));
	check_flags(fd_pipe[0], O_RDONLY | O_NONBLOCK, "pipe read end");
	check_flags(fd_pipe[1], O_WRONLY, "pipe write end");
	uint8_t buf[2 * PIPE_BYTES];
	CHECK(read(fd_pipe[0], buf, sizeof(buf)) == PIPE_BYTES, "pipe: short read: %m");
	for (int i = 0; i < PIPE_BYTES; i++)
		CHECK(buf[i] == byte_at((size_t)i, 4), "pipe: byte %d is %#x", i, buf[i]);
	CHECK(write(fd_pipe[1], "p", 1) == 1 && read(fd_pipe[0], &c, 1) == 1 && c == 'p',
	      "pipe: the two ends are not one pipe");

	CHECK(fstat(fd_fifo, &st) == 0 && S_ISFIFO(st.st_mode), "fifo: not a FIFO");
	check_flags(fd_fifo, O_RDWR, "fifo");
	CHECK(ioctl(fd_fifo, FIONREAD, &avail) == 0 && avail == FIFO_BYTES,
	      "fifo: %d bytes buffered, want %d", avail, FIFO_BYTES);
	CHECK(read(fd_fifo, buf, FIFO_BYTES) == FIFO_BYTES, "fifo: read: %m");
	for (int i = 0; i < FIFO_BYTES; i++)
		CHECK(buf[i] == byte_at((size_t)i, 5), "fifo: byte %d is %#x", i, buf[i]);
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fd/%d", fd_fifo);
	ln = readlink(fdpath, link, sizeof(link) - 1);
	link[ln > 0 ? ln : 0] = 0;
	CHECK(strcmp(link, cpt_path("fifo")) == 0, "fifo: fd points to '%s'", link);

	fd = xopen("flocked", O_RDONLY);
	errno = 0;
	CHECK(flock(fd, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK,
	      "flock: the lock is no longer held (%m)");
	close(fd);

	pid_t me = getpid(), child = fork();
	CHECK(child >= 0, "fork: %m");
	if (child == 0)
		_exit(child_sees_posix_lock(me));
	int status;
	CHECK(waitpid(child, &status, 0) == child, "waitpid: %m");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "posix lock not seen by a child (code %d: 11 unlocked, 12 other pid, 13 range)",
	      WEXITSTATUS(status));
	cpt_ok();
}
