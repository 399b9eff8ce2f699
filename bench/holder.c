/*
 * The process the benchmarks checkpoint and restore.
 *
 *   holder mem  MIB   READYFILE   one process holding MIB MiB of pseudo-random memory
 *   holder tree N     READYFILE   a tree of N processes (this one and N-1 children),
 *                                 each holding a little pseudo-random memory
 *   holder maps N     READYFILE   one process with N mappings of alternating protection
 *
 * Once set up it writes "READY <checksum>\n" to READYFILE and waits in pause().
 * On SIGUSR1 (mem mode) it sums its memory again and writes "CHECK <checksum>\n"
 * to READYFILE.check, so the benchmark can see that a restored copy holds the
 * same bytes. The memory is pseudo-random (xorshift) so that no page is zero and
 * no compression or zero-page skipping flatters either tool.
 *
 * Files are opened by name and closed again: the only descriptors kept are
 * 0, 1 and 2 (the benchmark points them at /dev/null), so both tools dump the
 * same, simplest set of files.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHILD_BYTES (256 * 4096UL) /* "a little memory" per child of the tree: 1 MiB */

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

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s mem MIB|tree N|maps N READYFILE\n", argv[0]);
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
    fprintf(stderr, "%s: unknown mode %s\n", argv[0], argv[1]);
    return 2;
}
