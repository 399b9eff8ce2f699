/* evfd_inotify: an inotify instance keeps its watches, by path and mask, with
 * the same watch descriptors, though the kernel chooses them:
 *   dir     a directory, IN_CREATE|IN_DELETE, watch 1
 *   (2-4)   watches added and removed: their numbers are gone
 *   file    a file, IN_MODIFY|IN_EXCL_UNLINK, watch 5
 *   (6-8)   more added and removed
 *   once    a file, IN_ATTRIB|IN_ONESHOT, watch 9
 * Every event is read before READY. After the restore: fdinfo lists the
 * same watches (wd and mask), no event is queued, creating a file in dir
 * reports it on watch 1 with its name, writing file reports watch 5, a chmod
 * of once reports watch 9 then IN_IGNORED (one-shot), inotify_rm_watch(5)
 * works, and a new watch gets a number none of them has.
 */
#include "cpt_test.h"
#include <poll.h>
#include <sys/inotify.h>

#define BUF 4096

static int in;

static void drain(void)
{
	char buf[BUF];
	while (read(in, buf, sizeof(buf)) > 0)
		;
	CHECK(errno == EAGAIN, "drain: %m");
}

static int add(const char *name, uint32_t mask)
{
	int wd = inotify_add_watch(in, cpt_path(name), mask);
	CHECK(wd > 0, "inotify_add_watch(%s): %m", name);
	return wd;
}

static void burn(int count)
{
	for (int i = 0; i < count; i++) {
		int wd = add("burn", IN_OPEN);
		CHECK(inotify_rm_watch(in, wd) == 0, "inotify_rm_watch: %m");
	}
}

/* "wd:mask " of each watch in fdinfo, sorted by the kernel's order of wd. */
static const char *marks(void)
{
	static char out[2][512];
	static int slot;
	char *buf = out[slot++ % 2], path[64];
	buf[0] = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", in);
	unsigned seen[16][2];
	int n = 0;
	for (const char *p = cpt_read_file(path); (p = strstr(p, "inotify wd:")) != NULL; p++) {
		CHECK(n < 16, "too many watches");
		CHECK(sscanf(p, "inotify wd:%x ino:%*x sdev:%*x mask:%x", &seen[n][0], &seen[n][1]) ==
			      2,
		      "fdinfo line %.60s", p);
		n++;
	}
	for (unsigned wd = 1; wd < 64; wd++)
		for (int i = 0; i < n; i++)
			if (seen[i][0] == wd)
				sprintf(buf + strlen(buf), "%x:%x ", seen[i][0], seen[i][1]);
	return buf;
}

/* The next event, within a second. */
static struct inotify_event *next_event(void)
{
	static char buf[BUF] __attribute__((aligned(8)));
	static int len, off;
	if (off >= len) {
		struct pollfd p = { .fd = in, .events = POLLIN };
		CHECK(poll(&p, 1, 1000) == 1, "no event within a second");
		len = (int)read(in, buf, sizeof(buf));
		CHECK(len > 0, "read: %m");
		off = 0;
	}
	struct inotify_event *ev = (struct inotify_event *)(buf + off);
	off += (int)sizeof(*ev) + (int)ev->len;
	return ev;
}

static void expect(int wd, uint32_t mask, const char *name)
{
	struct inotify_event *ev = next_event();
	CHECK(ev->wd == wd && (ev->mask & mask) == mask, "event wd %d mask %#x, want wd %d mask %#x",
	      ev->wd, ev->mask, wd, mask);
	if (name)
		CHECK(ev->len > 0 && strcmp(ev->name, name) == 0, "event name %s, want %s",
		      ev->len ? ev->name : "", name);
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	CHECK(mkdir(cpt_path("dir"), 0755) == 0, "mkdir: %m");
	int fds[3];
	const char *names[3] = { "file", "once", "burn" };
	for (int i = 0; i < 3; i++) {
		fds[i] = open(cpt_path(names[i]), O_RDWR | O_CREAT, 0644);
		CHECK(fds[i] >= 0, "open: %m");
		close(fds[i]);
	}
	in = inotify_init1(IN_NONBLOCK);
	CHECK(in >= 0, "inotify_init1: %m");
	int dir = add("dir", IN_CREATE | IN_DELETE);
	burn(3);
	int file = add("file", IN_MODIFY | IN_EXCL_UNLINK);
	burn(3);
	int once = add("once", IN_ATTRIB | IN_ONESHOT);
	CHECK(dir == 1 && file == 5 && once == 9, "watches %d %d %d", dir, file, once);
	drain();
	char before[512];
	snprintf(before, sizeof(before), "%s", marks());
	cpt_ready();
	cpt_wait();

	CHECK(strcmp(marks(), before) == 0, "watches %s, were %s", marks(), before);
	char buf[BUF];
	CHECK(read(in, buf, sizeof(buf)) < 0 && errno == EAGAIN, "an event was queued (%m)");
	int fd = open(cpt_path("dir/new"), O_WRONLY | O_CREAT, 0644);
	CHECK(fd >= 0, "create: %m");
	close(fd);
	expect(dir, IN_CREATE, "new");
	fd = open(cpt_path("file"), O_WRONLY);
	CHECK(fd >= 0 && write(fd, "x", 1) == 1, "write: %m");
	close(fd);
	expect(file, IN_MODIFY, NULL);
	CHECK(chmod(cpt_path("once"), 0600) == 0, "chmod: %m");
	expect(once, IN_ATTRIB, NULL);
	expect(once, IN_IGNORED, NULL);
	CHECK(inotify_rm_watch(in, file) == 0, "inotify_rm_watch(%d): %m", file);
	expect(file, IN_IGNORED, NULL);
	int fresh = add("burn", IN_OPEN);
	CHECK(fresh != dir && fresh != file && fresh != once, "new watch got %d", fresh);
	cpt_ok();
}
