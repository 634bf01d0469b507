/* The noise kernel of firmware/lib/soundlevel.py (`_run`, viper) translated line by line into C
 * with int32_t arithmetic: the reference for bench/noise.py's viper-vs-C ratio and, through
 * tests/firmware/test_noise_c.py, bit-exact with the firmware (state words and histogram).
 *
 * Nothing is changed from the viper code: same operations in the same order, same locals, same
 * loads and stores of the state words. Where the viper code relies on 32-bit wrap-around (the
 * mantissa shift `(lo << 8) & m30`, the sample counter) the C code computes in uint32_t, which
 * is the board's behaviour and keeps C free of signed overflow. Left shifts of negative values and
 * `>>` on negative values are arithmetic, as GCC defines them (the viper emitter's SLL/SRA).
 * Plain C, no intrinsics: gcc -O2 is the reference. */
#include <stdint.h>
#include "noise.h"

#define K1 1406
#define K2 919
#define K3 1508
#define C5 242
#define P5 553
#define C6 580
#define P6 31

void noise_run(const uint16_t *buf, int32_t n, int32_t *st, uint32_t *hist, const uint16_t *tab)
{
    const int32_t m30 = (1 << 30) - 1;
    int32_t x1 = st[0];
    int32_t d1 = st[1];
    int32_t dr = st[2];
    int32_t z1 = st[3];
    int32_t a1 = st[4];
    int32_t ar = st[5];
    int32_t b1 = st[6];
    int32_t br = st[7];
    int32_t c1 = st[8];
    int32_t cr = st[9];
    int32_t e1 = st[10];
    int32_t er = st[11];
    int32_t f1 = st[12];
    int32_t fr = st[13];
    int32_t g1 = st[14];
    int32_t gr = st[15];
    int32_t tpos = st[16];
    int32_t ah = st[17];
    int32_t al = st[18];
    int32_t zh = st[19];
    int32_t zl = st[20];
    int32_t over = st[33];
    int32_t x, t, q, z, v, y, w, u, k, m, lo, e, gm, ge, warm, j, lv;
    if (st[35] == 0 && n > 0) {
        x1 = (((int32_t)(buf[1] ^ 0x8000) - 0x8000) << 8) | (buf[0] >> 8);
        st[35] = 1;
    }
    int32_t i = 0;
    int32_t end = 2 * n;
    int32_t stop;
    while (i < end) {
        stop = i + 2 * (48 - tpos); /* up to the next tick, or to the end of the block */
        if (stop > end)
            stop = end;
        tpos += (stop - i) >> 1;
        while (i < stop) {
            x = (((int32_t)(buf[i + 1] ^ 0x8000) - 0x8000) << 8) | (buf[i] >> 8);
            i += 2;
            if ((uint32_t)(x + 8388544) > 16777087u)
                over += 1;
            /* DC blocker */
            t = d1 + dr;
            q = t >> 13;
            dr = t & 8191;
            d1 = x - x1 + d1 - q;
            x1 = x;
            z = (d1 + 8) >> 4;
            /* Z energy */
            if ((uint32_t)(z + 4096) < 8192u) {
                zl += z * z;
            } else {
                v = z >= 0 ? z : -z;
                v = (v + 32) >> 6;
                v = v * v;
                if (zl > m30) {
                    zl -= m30 + 1;
                    zh += 1;
                }
                zh += v >> 18;
                zl += (v & 262143) << 12;
                if (zl > m30) {
                    zl -= m30 + 1;
                    zh += 1;
                }
            }
            /* A: four low sections */
            t = K1 * a1 + ar;
            q = t >> 19;
            ar = t & 524287;
            y = z - z1 + a1 - q;
            z1 = z;
            t = K1 * b1 + br;
            q = t >> 19;
            br = t & 524287;
            w = y - a1 + b1 - q;
            a1 = y;
            t = K2 * c1 + cr;
            q = t >> 16;
            cr = t & 65535;
            y = w - b1 + c1 - q;
            b1 = w;
            t = K3 * e1 + er;
            q = t >> 14;
            er = t & 16383;
            w = y - c1 + e1 - q;
            c1 = y;
            /* the top end, Q11 */
            t = C5 * e1 + P5 * f1 + fr;
            q = t >> 11;
            fr = t & 2047;
            y = w + q;
            e1 = w;
            t = C6 * f1 + P6 * g1 + gr;
            q = t >> 11;
            gr = t & 2047;
            w = y + q;
            f1 = y;
            g1 = w;
            /* A energy */
            if ((uint32_t)(w + 4096) < 8192u) {
                al += w * w;
            } else {
                v = w >= 0 ? w : -w;
                v = (v + 32) >> 6;
                v = v * v;
                if (al > m30) {
                    al -= m30 + 1;
                    ah += 1;
                }
                ah += v >> 18;
                al += (v & 262143) << 12;
                if (al > m30) {
                    al -= m30 + 1;
                    ah += 1;
                }
            }
        }
        if (tpos < 48)
            break; /* the block ended inside a tick */
        tpos = 0;
        /* -- a tick ---------------------------------------------------------------------------- */
        if (al > m30) {
            al -= m30 + 1;
            ah += 1;
        }
        if (zl > m30) {
            zl -= m30 + 1;
            zh += 1;
        }
        u = st[21] + al;
        k = st[22] + ah;
        if (u > m30) {
            u -= m30 + 1;
            k += 1;
        }
        if (k > m30) {
            k -= m30 + 1;
            st[23] = st[23] + 1;
        }
        st[21] = u;
        st[22] = k;
        u = st[24] + zl;
        k = st[25] + zh;
        if (u > m30) {
            u -= m30 + 1;
            k += 1;
        }
        if (k > m30) {
            k -= m30 + 1;
            st[26] = st[26] + 1;
        }
        st[24] = u;
        st[25] = k;
        m = ah;
        lo = al;
        e = 30;
        if (m == 0) {
            m = lo;
            lo = 0;
            e = 0;
        }
        zh = 0;
        zl = 0;
        ah = 0;
        al = 0;
        if (m > 0) {
            while (m < 4096) {
                m = (m << 8) | (lo >> 22);
                lo = (int32_t)(((uint32_t)lo << 8) & (uint32_t)m30);
                e -= 8;
            }
            while (m < 1048576) {
                m = (m << 1) | (lo >> 29);
                lo = (lo << 1) & m30;
                e -= 1;
            }
            while (m > 33554431) {
                m >>= 4;
                e += 4;
            }
            while (m > 2097151) {
                m >>= 1;
                e += 1;
            }
            m = (m * 522) >> 8;
            e -= 8;
            while (m > 2097151) {
                m >>= 1;
                e += 1;
            }
        }
        gm = st[28];
        ge = st[29];
        if (gm > 0) {
            gm -= (gm * 522) >> 16;
            if (gm < 1048576) {
                gm <<= 1;
                ge -= 1;
            }
            if (m > 0) {
                if (ge >= e) {
                    if (ge - e < 24)
                        gm += m >> (ge - e);
                } else if (e - ge < 24) {
                    gm = m + (gm >> (e - ge));
                    ge = e;
                } else {
                    gm = m;
                    ge = e;
                }
                if (gm > 2097151) {
                    gm >>= 1;
                    ge += 1;
                }
            }
            if (ge < -64)
                gm = 0;
        } else if (m > 0) {
            gm = m;
            ge = e;
        }
        st[28] = gm;
        st[29] = ge;
        warm = st[34];
        if (warm > 0) {
            st[34] = warm - 1;
            continue;
        }
        if (gm > 0) {
            j = (gm >> 12) & 255;
            lv = ((ge + 20) << 15) + tab[j] + (((tab[j + 1] - tab[j]) * (gm & 4095)) >> 12);
        } else {
            lv = -(1 << 24);
        }
        if (st[32] == 0) {
            st[30] = lv;
            st[31] = lv;
        } else {
            if (lv > st[30])
                st[30] = lv;
            if (lv < st[31])
                st[31] = lv;
        }
        j = (lv >> 10) - 160;
        if (j < 0)
            j = 0;
        else if (j > 1279)
            j = 1279;
        hist[j] = hist[j] + 1;
        st[32] = st[32] + 1;
    }
    st[0] = x1;
    st[1] = d1;
    st[2] = dr;
    st[3] = z1;
    st[4] = a1;
    st[5] = ar;
    st[6] = b1;
    st[7] = br;
    st[8] = c1;
    st[9] = cr;
    st[10] = e1;
    st[11] = er;
    st[12] = f1;
    st[13] = fr;
    st[14] = g1;
    st[15] = gr;
    st[16] = tpos;
    st[17] = ah;
    st[18] = al;
    st[19] = zh;
    st[20] = zl;
    st[27] = (int32_t)((uint32_t)st[27] + (uint32_t)n);
    st[33] = over;
}
