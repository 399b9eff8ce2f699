/* evfd_epoll: epoll instances keep their watches (descriptor, events, data,
 * EPOLLET/EPOLLONESHOT/EPOLLEXCLUSIVE), keyed by the same descriptor numbers,
 * and report what is ready:
 *   ep     lt   eventfd with count 1, EPOLLIN, data 0x1111: ready
 *          et   eventfd with count 0, EPOLLIN|EPOLLET, data 0x2222: silent
 *               until written, then reported once
 *          os   pipe with data, EPOLLIN|EPOLLONESHOT, data 0x3333, reported
 *               before the checkpoint: silent until re-armed (EPOLL_CTL_MOD)
 *          hup  pipe whose writer is closed, EPOLLIN|EPOLLONESHOT, data 0x4444,
 *               reported before the checkpoint: silent
 *          out  pipe write end, EPOLLOUT, data 0x5555: ready
 *   ex     eventfd with count 1, EPOLLIN|EPOLLEXCLUSIVE, data 0x6666: ready
 *   outer  watches ep, EPOLLIN, data 0x7777: ready, since ep is
 *   empty  no watch: nothing ready
 * fdinfo lists the same watches (number, events, data) as before; the
 * program's own EPOLL_CTL_MOD and EPOLL_CTL_DEL find them.
 */
#include "cpt_test.h"
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define MAXW 16

static int ep, ex, outer, empty, lt, et, os_pipe[2], hup_pipe[2], out_pipe[2];

static void add(int epfd, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	CHECK(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl(ADD %d): %m", fd);
}

/* The data of every ready watch, as a bit set of data >> 12 (0x1111 -> bit 1). */
static unsigned ready(int epfd)
{
	struct epoll_event evs[MAXW];
	int n = epoll_wait(epfd, evs, MAXW, 0);
	CHECK(n >= 0, "epoll_wait: %m");
	unsigned set = 0;
	for (int i = 0; i < n; i++)
		set |= 1u << (evs[i].data.u64 >> 12);
	return set;
}

/* "tfd events data" of each watch in fdinfo, sorted: ino and pos may change. */
static const char *watches(int epfd)
{
	static char out[8][1024];
	static int slot;
	char *buf = out[slot++ % 8], path[64], lines[MAXW][64];
	int n = 0;
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", epfd);
	for (const char *p = cpt_read_file(path); (p = strstr(p, "tfd:")) != NULL; p++) {
		int tfd;
		unsigned events;
		unsigned long long data;
		CHECK(sscanf(p, "tfd: %d events: %x data: %llx", &tfd, &events, &data) == 3,
		      "fdinfo line %.60s", p);
		CHECK(n < MAXW, "too many watches");
		snprintf(lines[n++], 64, "%d:%x:%llx ", tfd, events, data);
	}
	qsort(lines, n, 64, (int (*)(const void *, const void *))strcmp);
	buf[0] = 0;
	for (int i = 0; i < n; i++)
		strcat(buf, lines[i]);
	return buf;
}

int main(int argc, char **argv)
{
	cpt_init(argc, argv, 0, "");
	ep = epoll_create1(EPOLL_CLOEXEC);
	ex = epoll_create1(0);
	outer = epoll_create1(0);
	empty = epoll_create1(0);
	lt = eventfd(1, EFD_NONBLOCK);
	et = eventfd(0, EFD_NONBLOCK);
	int ex_ev = eventfd(1, EFD_NONBLOCK);
	CHECK(pipe2(os_pipe, O_NONBLOCK) == 0 && pipe2(hup_pipe, O_NONBLOCK) == 0 &&
		      pipe2(out_pipe, O_NONBLOCK) == 0,
	      "pipe2: %m");
	CHECK(write(os_pipe[1], "data", 4) == 4, "write: %m");
	close(hup_pipe[1]);
	add(ep, lt, EPOLLIN, 0x1111);
	add(ep, et, EPOLLIN | EPOLLET, 0x2222);
	add(ep, os_pipe[0], EPOLLIN | EPOLLONESHOT, 0x3333);
	add(ep, hup_pipe[0], EPOLLIN | EPOLLONESHOT, 0x4444);
	add(ep, out_pipe[1], EPOLLOUT, 0x5555);
	add(ex, ex_ev, EPOLLIN | EPOLLEXCLUSIVE, 0x6666);
	add(outer, ep, EPOLLIN, 0x7777);
	/* Fire the one-shot watches: they are disarmed from now on. */
	CHECK(ready(ep) == (1u << 1 | 1u << 3 | 1u << 4 | 1u << 5), "before: ready %#x", ready(ep));
	CHECK(ready(ep) == (1u << 1 | 1u << 5), "before: one-shot watches still armed");
	char before[4][1024];
	int all[4] = { ep, ex, outer, empty };
	for (int i = 0; i < 4; i++)
		snprintf(before[i], sizeof(before[i]), "%s", watches(all[i]));
	cpt_ready();
	cpt_wait();

	for (int i = 0; i < 4; i++)
		CHECK(strcmp(watches(all[i]), before[i]) == 0, "epoll %d: watches %s, were %s",
		      all[i], watches(all[i]), before[i]);
	CHECK((fcntl(ep, F_GETFD) & FD_CLOEXEC) != 0, "ep lost FD_CLOEXEC");
	CHECK(ready(outer) == 1u << 7, "outer: ready %#x", ready(outer));
	CHECK(ready(ex) == 1u << 6, "ex: ready %#x", ready(ex));
	CHECK(ready(empty) == 0, "empty: ready %#x", ready(empty));
	CHECK(ready(ep) == (1u << 1 | 1u << 5), "ep: ready %#x", ready(ep));
	uint64_t one = 1;
	CHECK(write(et, &one, 8) == 8, "write: %m");
	CHECK(ready(ep) == (1u << 1 | 1u << 2 | 1u << 5), "et: not reported once written");
	CHECK(ready(ep) == (1u << 1 | 1u << 5), "et: reported twice for one edge");
	struct epoll_event ev = { .events = EPOLLIN | EPOLLONESHOT, .data.u64 = 0x3333 };
	CHECK(epoll_ctl(ep, EPOLL_CTL_MOD, os_pipe[0], &ev) == 0, "MOD os: %m");
	CHECK(ready(ep) == (1u << 1 | 1u << 3 | 1u << 5), "os: not reported once re-armed");
	CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, lt, NULL) == 0, "DEL lt: %m");
	CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, hup_pipe[0], NULL) == 0, "DEL hup: %m");
	CHECK(ready(ep) == 1u << 5, "after DEL: ready %#x", ready(ep));
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, et, &ev) < 0 && errno == EEXIST, "et: added twice");
	cpt_ok();
}
