/* A standalone driver for the fuzz targets (builds without libFuzzer):
 *   fuzz_X CORPUS_DIR [MUTATIONS]
 * runs every seed, then MUTATIONS inputs made from the seeds by a fixed
 * pseudo-random sequence (bit flips, byte sets, insertions, deletions,
 * truncations, splices). A crash, hang or sanitizer report fails the run. */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input being run, written to ./crash-input when the run dies (abort,
 * a fault, or a sanitizer report) so that it can be replayed:
 *   fuzz_X DIR_OR_FILE */
static const uint8_t *cur;
static size_t cur_n;

static void save_input(void)
{
    int fd = open("crash-input", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, cur, cur_n) < 0) {}
        close(fd);
    }
    static const char msg[] = "the failing input is in ./crash-input\n";
    if (write(2, msg, sizeof msg - 1) < 0) {}
}

static void on_signal(int sig)
{
    save_input();
    signal(sig, SIG_DFL);
    raise(sig);
}

void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

static void run_one(const uint8_t *p, size_t n)
{
    cur = p, cur_n = n;
    LLVMFuzzerTestOneInput(p, n);
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t next(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)rng;
}

typedef struct {
    uint8_t *p;
    size_t n;
} seed;

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR [MUTATIONS]\n", argv[0]);
        return 2;
    }
    long mutations = argc > 2 ? atol(argv[2]) : 1000;
    signal(SIGABRT, on_signal);
    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(save_input);
    seed seeds[256];
    size_t ns = 0;
    DIR *d = opendir(argv[1]);
    if (!d) { /* one file: replay it */
        FILE *f = fopen(argv[1], "rb");
        if (!f) {
            perror(argv[1]);
            return 2;
        }
        uint8_t *p = malloc(1 << 20);
        size_t n = fread(p, 1, 1 << 20, f);
        fclose(f);
        run_one(p, n);
        printf("%s: %s ran clean\n", argv[0], argv[1]);
        free(p);
        return 0;
    }
    struct dirent *e;
    while ((e = readdir(d)) && ns < 256) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1], e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        seeds[ns].p = malloc(1 << 16);
        seeds[ns].n = fread(seeds[ns].p, 1, 1 << 16, f);
        fclose(f);
        run_one(seeds[ns].p, seeds[ns].n);
        ns++;
    }
    closedir(d);
    if (ns == 0) {
        fprintf(stderr, "no seeds in %s\n", argv[1]);
        return 2;
    }
    uint8_t *buf = malloc(1 << 17);
    for (long i = 0; i < mutations; i++) {
        seed *s = &seeds[next() % ns];
        size_t n = s->n;
        memcpy(buf, s->p, n);
        int rounds = 1 + next() % 4;
        for (int r = 0; r < rounds; r++) {
            uint32_t at = n ? next() % n : 0;
            switch (next() % 6) {
            case 0: if (n) buf[at] ^= (uint8_t)(1u << (next() % 8)); break;
            case 1: if (n) buf[at] = (uint8_t)next(); break;
            case 2: /* insert */
                if (n < (1 << 16)) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = (uint8_t)next();
                    n++;
                }
                break;
            case 3: if (n) { memmove(buf + at, buf + at + 1, n - at - 1); n--; } break;
            case 4: n = at; break;
            case 5: { /* splice the tail of another seed */
                seed *o = &seeds[next() % ns];
                size_t from = o->n ? next() % o->n : 0, take = o->n - from;
                if (at + take > (1 << 16)) take = (1 << 16) - at;
                memcpy(buf + at, o->p + from, take);
                n = at + take;
                break;
            }
            }
        }
        run_one(buf, n);
    }
    printf("%s: %zu seeds and %ld mutations ran clean\n", argv[0], ns, mutations);
    free(buf);
    for (size_t i = 0; i < ns; i++) free(seeds[i].p);
    return 0;
}
