/* Harness for noise.c (tools/dev/noise_kernel.py, for bench/noise.py and tests/firmware/test_noise_c.py):
 *
 *   noise_c AUDIO INIT RUNS BLOCK
 *
 * AUDIO: samples as the I2S hands them over (32-bit little-endian slots); INIT: the meter's
 * state words at start (40 x int32) then the log2 table (257 x uint16), both as the firmware
 * has them. Each run starts from INIT, feeds AUDIO in blocks of BLOCK samples (the last one
 * shorter) and is timed with CLOCK_MONOTONIC around the processing only. Prints one JSON
 * object: the runs' nanoseconds, then the state words and histogram after the last run. */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "noise.h"

static void *slurp(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*size > 0 ? (size_t)*size : 1);
    if (!p || fread(p, 1, (size_t)*size, f) != (size_t)*size) {
        fprintf(stderr, "%s: cannot read\n", path);
        exit(2);
    }
    fclose(f);
    return p;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: %s AUDIO INIT RUNS BLOCK\n", argv[0]);
        return 2;
    }
    long asize, isize;
    const uint16_t *audio = slurp(argv[1], &asize);
    const unsigned char *init = slurp(argv[2], &isize);
    int runs = atoi(argv[3]);
    int32_t block = atoi(argv[4]);
    if (isize != NOISE_S_WORDS * 4 + NOISE_TAB * 2 || runs < 1 || block < 1) {
        fprintf(stderr, "bad INIT size %ld, runs or block\n", isize);
        return 2;
    }
    int32_t n = (int32_t)(asize / 4);
    int32_t st0[NOISE_S_WORDS], st[NOISE_S_WORDS];
    uint16_t tab[NOISE_TAB];
    memcpy(st0, init, sizeof st0);
    memcpy(tab, init + sizeof st0, sizeof tab);
    static uint32_t hist[NOISE_NB];
    printf("{\"ns\": [");
    for (int r = 0; r < runs; r++) {
        memcpy(st, st0, sizeof st);
        memset(hist, 0, sizeof hist);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int32_t done = 0; done < n; done += block) {
            int32_t k = n - done < block ? n - done : block;
            noise_run(audio + 2 * (size_t)done, k, st, hist, tab);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long long ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
        printf("%s%lld", r ? ", " : "", ns);
    }
    printf("], \"n\": %ld, \"st\": [", (long)n);
    for (int i = 0; i < NOISE_S_WORDS; i++)
        printf("%s%ld", i ? ", " : "", (long)st[i]);
    printf("], \"hist\": [");
    for (int i = 0; i < NOISE_NB; i++)
        printf("%s%lu", i ? ", " : "", (unsigned long)hist[i]);
    printf("]}\n");
    return 0;
}
