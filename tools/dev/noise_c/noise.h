/* See noise.c: firmware/lib/soundlevel.py's `_run` in C. */
#ifndef NOISE_H
#define NOISE_H
#include <stdint.h>

#define NOISE_S_WORDS 40
#define NOISE_NB 1280
#define NOISE_TAB 257

/* n samples (little-endian 32-bit slots, 24 data bits on top, read as halfwords) from buf */
void noise_run(const uint16_t *buf, int32_t n, int32_t *st, uint32_t *hist, const uint16_t *tab);

#endif
