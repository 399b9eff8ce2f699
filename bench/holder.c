/*
 * The process the benchmarks checkpoint and restore.
 *
 *   holder mem  MIB   READYFILE   one process holding MIB MiB of pseudo-random memory
 *   holder tree N     READYFILE   a tree of N processes (this one and N-1 children),
 *                                 each holding a little pseudo-random memory
 *   holder maps N     READYFILE   one process with N mappings of alternating protection
 *   holder tcp  N     READYFILE   one server with N established TCP connections (over
 *                                 127.0.0.1) and 10,000 open descriptors in all (the
 *                                 rest are pipes); the clients are one process outside
 *                                 the dumped tree, which echoes what it gets
 *
 * Once set up it writes "READY <checksum>\n" to READYFILE and waits in pause().
 * On SIGUSR1 (mem mode) it sums its memory again and writes "CHECK <checksum>\n"
 * to READYFILE.check, so the benchmark can see that a restored copy holds the
 * same bytes. The memory is pseudo-random (xorshift) so that no page is zero and
 * no compression or zero-page skipping flatters either tool.
 *
 * In tcp mode SIGUSR1 sends a byte on every connection and waits for the echo:
 * CHECK is the number of connections that answered, READY was N.
 *
 * Except in tcp mode, files are opened by name and closed again: the only
 * descriptors kept are 0, 1 and 2 (the benchmark points them at /dev/null),
 * so both tools dump the same, simplest set of files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHILD_BYTES (256 * 4096UL) /* "a little memory" per child of the tree: 1 MiB */
#define TCP_DESCRIPTORS 10000       /* open in the tcp mode's server, connections included */

static volatile sig_atomic_t check_requested;
static uint64_t *mem;
static size_t mem_words;

static void on_usr1(int sig) {
    (void)sig;
    check_requested = 1;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Fill with xorshift64 and return the sum of the words written. */
static uint64_t fill(uint64_t *words, size_t n, uint64_t seed) {
    uint64_t x = seed | 1, sum = 0;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words[i] = x;
        sum += x;
    }
    return sum;
}

static uint64_t sum_of(const uint64_t *words, size_t n) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += words[i];
    return sum;
}

static void *map_anon(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        die("mmap");
    return p;
}

/* One write of the whole line, so a reader never sees half of it. */
static void write_file(const char *path, const char *tag, uint64_t value) {
    char line[64];
    int len = snprintf(line, sizeof line, "%s %016llx\n", tag, (unsigned long long)value);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        die(tmp);
    if (write(fd, line, (size_t)len) != len)
        die("write");
    close(fd);
    if (rename(tmp, path) < 0) /* atomic: the reader sees all or nothing */
        die("rename");
}

/* Wait for signals forever; answer SIGUSR1 with a checksum of mem. */
static void serve(const char *readyfile) {
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old); /* no lost wake-up between the test and the wait */
    char checkfile[4096];
    snprintf(checkfile, sizeof checkfile, "%s.check", readyfile);
    for (;;) {
        while (!check_requested)
            sigsuspend(&old);
        check_requested = 0;
        write_file(checkfile, "CHECK", sum_of(mem, mem_words));
    }
}

static void mode_mem(unsigned long mib, const char *readyfile) {
    size_t bytes = mib << 20;
    mem = map_anon(bytes);
    mem_words = bytes / 8;
    uint64_t sum = fill(mem, mem_words, 0x9e3779b97f4a7c15ULL);
    write_file(readyfile, "READY", sum);
    serve(readyfile);
}

static void mode_tree(unsigned long n, const char *readyfile) {
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0)
        die("pipe");
    uint64_t total = 0;
    for (unsigned long i = 1; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(ready[0]);
            mem = map_anon(CHILD_BYTES);
            mem_words = CHILD_BYTES / 8;
            fill(mem, mem_words, i * 0x9e3779b97f4a7c15ULL);
            if (write(ready[1], "r", 1) != 1)
                die("write");
            close(ready[1]);
            for (;;)
                pause();
        }
    }
    close(ready[1]);
    for (unsigned long got = 1; got < n;) {
        char c;
        ssize_t r = read(ready[0], &c, 1);
        if (r == 1)
            got++;
        else if (r == 0 || errno != EINTR)
            die("a child of the tree died before it was ready");
    }
    close(ready[0]);
    mem = map_anon(CHILD_BYTES);
    mem_words = CHILD_BYTES / 8;
    total = fill(mem, mem_words, 0x9e3779b97f4a7c15ULL);
    write_file(readyfile, "READY", total);
    serve(readyfile);
}

static void mode_maps(unsigned long n, const char *readyfile) {
    long page = sysconf(_SC_PAGESIZE);
    size_t bytes = n * (size_t)page;
    mem = map_anon(bytes);
    mem_words = bytes / 8;
    uint64_t sum = fill(mem, mem_words, 0x9e3779b97f4a7c15ULL);
    /* Every other page read-only: neighbours differ, so the kernel keeps n VMAs. */
    for (unsigned long i = 1; i < n; i += 2)
        if (mprotect((char *)mem + i * (size_t)page, (size_t)page, PROT_READ) < 0)
            die("mprotect");
    write_file(readyfile, "READY", sum);
    serve(readyfile);
}

/* The clients: N connections to PORT, each echoing what comes. Never returns. */
static void echo_clients(unsigned long n, in_port_t port) {
    struct pollfd *fds = calloc(n, sizeof *fds);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = port};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (unsigned long i = 0; i < n; i++) {
        fds[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        fds[i].events = POLLIN;
        if (fds[i].fd < 0 || connect(fds[i].fd, (struct sockaddr *)&to, sizeof to) < 0)
            die("connect");
    }
    for (;;) {
        if (poll(fds, n, -1) < 0 && errno != EINTR)
            die("poll");
        for (unsigned long i = 0; i < n; i++) {
            char buf[256];
            if (!(fds[i].revents & POLLIN))
                continue;
            ssize_t got = read(fds[i].fd, buf, sizeof buf);
            if (got <= 0)
                exit(0); /* the server is gone for good */
            if (write(fds[i].fd, buf, (size_t)got) != got)
                die("echo");
        }
    }
}

/* Send a byte on every connection; return how many echoed it back. */
static uint64_t echo_round(int *conns, unsigned long n) {
    struct pollfd *fds = calloc(n, sizeof *fds);
    uint64_t answered = 0;
    for (unsigned long i = 0; i < n; i++) {
        fds[i].fd = conns[i];
        fds[i].events = POLLIN;
        if (write(conns[i], "e", 1) != 1)
            fds[i].fd = -1;
    }
    for (unsigned long left = n; left > 0;) {
        int ready = poll(fds, n, 10000);
        if (ready <= 0)
            break;
        for (unsigned long i = 0; i < n; i++) {
            char c;
            if (fds[i].fd >= 0 && (fds[i].revents & POLLIN)) {
                answered += read(fds[i].fd, &c, 1) == 1 && c == 'e';
                fds[i].fd = -1;
                left--;
            }
        }
    }
    free(fds);
    return answered;
}

static void mode_tcp(unsigned long n, const char *readyfile) {
    struct rlimit lim = {TCP_DESCRIPTORS + 64, TCP_DESCRIPTORS + 64};
    if (setrlimit(RLIMIT_NOFILE, &lim) < 0)
        die("setrlimit");
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in at = {.sin_family = AF_INET};
    socklen_t len = sizeof at;
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (listener < 0 || bind(listener, (struct sockaddr *)&at, sizeof at) < 0 ||
        listen(listener, (int)n) < 0 || getsockname(listener, (struct sockaddr *)&at, &len) < 0)
        die("listen");
    /* The clients' process is a grandchild whose parent exits: it is outside our tree
     * (the benchmark, a subreaper, inherits it), and in a session of its own, so that
     * our pid is free again once we are gone. */
    pid_t middle = fork();
    if (middle < 0)
        die("fork");
    if (middle == 0) {
        close(listener);
        if (fork() == 0 && setsid() > 0)
            echo_clients(n, at.sin_port);
        _exit(0);
    }
    waitpid(middle, NULL, 0);
    int *conns = calloc(n, sizeof *conns);
    for (unsigned long i = 0; i < n; i++)
        if ((conns[i] = accept(listener, NULL, NULL)) < 0)
            die("accept");
    for (long open_now = 3 + 1 + (long)n; open_now + 2 <= TCP_DESCRIPTORS; open_now += 2) {
        int ends[2];
        if (pipe(ends) < 0)
            die("pipe");
    }
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    write_file(readyfile, "READY", n);
    char checkfile[4096];
    snprintf(checkfile, sizeof checkfile, "%s.check", readyfile);
    for (;;) {
        while (!check_requested)
            sigsuspend(&old);
        check_requested = 0;
        write_file(checkfile, "CHECK", echo_round(conns, n));
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s mem MIB|tree N|maps N|tcp N READYFILE\n", argv[0]);
        return 2;
    }
    unsigned long n = strtoul(argv[2], NULL, 10);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    if (strcmp(argv[1], "mem") == 0)
        mode_mem(n, argv[3]);
    else if (strcmp(argv[1], "tree") == 0 && n >= 1)
        mode_tree(n, argv[3]);
    else if (strcmp(argv[1], "maps") == 0 && n >= 1)
        mode_maps(n, argv[3]);
    else if (strcmp(argv[1], "tcp") == 0 && n >= 1)
        mode_tcp(n, argv[3]);
    fprintf(stderr, "%s: unknown mode %s\n", argv[0], argv[1]);
    return 2;
}
