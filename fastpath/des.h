/* DES and two/three-key triple DES, in C, for the fast path.
 *
 * Why our own: the CUP MAC costs two 3DES block operations per message and
 * the budget for decode + MAC verify is 3 us. A call through pycryptodome
 * costs ~1 us of Python overhead per block even with cached cipher objects
 * (bench/codec.py measures both), while this runs in ~0.1 us per DES block.
 *
 * Plan: the standard tables (FIPS 46-3) are typed once below; the fast
 * tables are derived from them at import:
 *   - IP and FP as 8 byte-indexed tables of 64-bit masks (perm = 8 lookups);
 *   - the E expansion is a rotation (each 6-bit chunk of E(R) is 6 adjacent
 *     bits of R, wrapping), so it needs no table;
 *   - S-box followed by P merged into 8 tables of 64 32-bit words (SP).
 * A key schedule is computed once per key (des_key_setup) and kept by the
 * caller, so per block there is no key work at all.
 */
#ifndef SWITCHD_DES_H
#define SWITCHD_DES_H

#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t sub[16][8]; /* per round, eight 6-bit subkey chunks */
} des_schedule;

typedef struct {
    des_schedule ks[3];
    int single; /* 1: plain DES with ks[0] (an 8-byte key) */
} tdes_key;

static const uint8_t DES_IP[64] = {
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
    62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
    57, 49, 41, 33, 25, 17, 9,  1, 59, 51, 43, 35, 27, 19, 11, 3,
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7};

static const uint8_t DES_P[32] = {
    16, 7, 20, 21, 29, 12, 28, 17, 1,  15, 23, 26, 5,  18, 31, 10,
    2,  8, 24, 14, 32, 27, 3,  9,  19, 13, 30, 6,  22, 11, 4,  25};

static const uint8_t DES_PC1[56] = {
    57, 49, 41, 33, 25, 17, 9,  1,  58, 50, 42, 34, 26, 18,
    10, 2,  59, 51, 43, 35, 27, 19, 11, 3,  60, 52, 44, 36,
    63, 55, 47, 39, 31, 23, 15, 7,  62, 54, 46, 38, 30, 22,
    14, 6,  61, 53, 45, 37, 29, 21, 13, 5,  28, 20, 12, 4};

static const uint8_t DES_PC2[48] = {
    14, 17, 11, 24, 1,  5,  3,  28, 15, 6,  21, 10,
    23, 19, 12, 4,  26, 8,  16, 7,  27, 20, 13, 2,
    41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48,
    44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32};

static const uint8_t DES_SHIFTS[16] = {1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1};

static const uint8_t DES_S[8][64] = {
    {14, 4,  13, 1,  2,  15, 11, 8,  3,  10, 6,  12, 5,  9,  0,  7,
     0,  15, 7,  4,  14, 2,  13, 1,  10, 6,  12, 11, 9,  5,  3,  8,
     4,  1,  14, 8,  13, 6,  2,  11, 15, 12, 9,  7,  3,  10, 5,  0,
     15, 12, 8,  2,  4,  9,  1,  7,  5,  11, 3,  14, 10, 0,  6,  13},
    {15, 1,  8,  14, 6,  11, 3,  4,  9,  7,  2,  13, 12, 0,  5,  10,
     3,  13, 4,  7,  15, 2,  8,  14, 12, 0,  1,  10, 6,  9,  11, 5,
     0,  14, 7,  11, 10, 4,  13, 1,  5,  8,  12, 6,  9,  3,  2,  15,
     13, 8,  10, 1,  3,  15, 4,  2,  11, 6,  7,  12, 0,  5,  14, 9},
    {10, 0,  9,  14, 6,  3,  15, 5,  1,  13, 12, 7,  11, 4,  2,  8,
     13, 7,  0,  9,  3,  4,  6,  10, 2,  8,  5,  14, 12, 11, 15, 1,
     13, 6,  4,  9,  8,  15, 3,  0,  11, 1,  2,  12, 5,  10, 14, 7,
     1,  10, 13, 0,  6,  9,  8,  7,  4,  15, 14, 3,  11, 5,  2,  12},
    {7,  13, 14, 3,  0,  6,  9,  10, 1,  2,  8,  5,  11, 12, 4,  15,
     13, 8,  11, 5,  6,  15, 0,  3,  4,  7,  2,  12, 1,  10, 14, 9,
     10, 6,  9,  0,  12, 11, 7,  13, 15, 1,  3,  14, 5,  2,  8,  4,
     3,  15, 0,  6,  10, 1,  13, 8,  9,  4,  5,  11, 12, 7,  2,  14},
    {2,  12, 4,  1,  7,  10, 11, 6,  8,  5,  3,  15, 13, 0,  14, 9,
     14, 11, 2,  12, 4,  7,  13, 1,  5,  0,  15, 10, 3,  9,  8,  6,
     4,  2,  1,  11, 10, 13, 7,  8,  15, 9,  12, 5,  6,  3,  0,  14,
     11, 8,  12, 7,  1,  14, 2,  13, 6,  15, 0,  9,  10, 4,  5,  3},
    {12, 1,  10, 15, 9,  2,  6,  8,  0,  13, 3,  4,  14, 7,  5,  11,
     10, 15, 4,  2,  7,  12, 9,  5,  6,  1,  13, 14, 0,  11, 3,  8,
     9,  14, 15, 5,  2,  8,  12, 3,  7,  0,  4,  10, 1,  13, 11, 6,
     4,  3,  2,  12, 9,  5,  15, 10, 11, 14, 1,  7,  6,  0,  8,  13},
    {4,  11, 2,  14, 15, 0,  8,  13, 3,  12, 9,  7,  5,  10, 6,  1,
     13, 0,  11, 7,  4,  9,  1,  10, 14, 3,  5,  12, 2,  15, 8,  6,
     1,  4,  11, 13, 12, 3,  7,  14, 10, 15, 6,  8,  0,  5,  9,  2,
     6,  11, 13, 8,  1,  4,  10, 7,  9,  5,  0,  15, 14, 2,  3,  12},
    {13, 2,  8,  4,  6,  15, 11, 1,  10, 9,  3,  14, 5,  0,  12, 7,
     1,  15, 13, 8,  10, 3,  7,  4,  12, 5,  6,  11, 0,  14, 9,  2,
     7,  11, 4,  1,  9,  12, 14, 2,  0,  6,  10, 13, 15, 3,  5,  8,
     2,  1,  14, 7,  4,  10, 8,  13, 15, 12, 9,  0,  3,  5,  6,  11}};

/* Derived at import by des_init(). */
static uint64_t des_ip_tab[8][256];
static uint64_t des_fp_tab[8][256];
static uint32_t des_sp[8][64];
static int des_ready = 0;

/* Bit n (1-based, 1 = most significant) of a width-bit value. */
#define DES_BIT(v, n, width) (((v) >> ((width) - (n))) & 1u)

static inline void des_init(void) {
    uint8_t fp[64];
    int i, b, v;
    if (des_ready) return;
    /* FP is the inverse of IP: if IP moves input bit IP[i] to output i+1,
       FP moves input bit i+1 back to output IP[i]. */
    for (i = 0; i < 64; i++) fp[DES_IP[i] - 1] = (uint8_t)(i + 1);
    for (i = 0; i < 8; i++) {
        for (v = 0; v < 256; v++) {
            uint64_t in = (uint64_t)v << (56 - 8 * i), ip = 0, out = 0;
            for (b = 0; b < 64; b++) {
                if (DES_BIT(in, DES_IP[b], 64)) ip |= (uint64_t)1 << (63 - b);
                if (DES_BIT(in, fp[b], 64)) out |= (uint64_t)1 << (63 - b);
            }
            des_ip_tab[i][v] = ip;
            des_fp_tab[i][v] = out;
        }
    }
    for (i = 0; i < 8; i++) {
        for (v = 0; v < 64; v++) {
            int row = ((v >> 4) & 2) | (v & 1), col = (v >> 1) & 15;
            uint32_t s = (uint32_t)DES_S[i][row * 16 + col] << (28 - 4 * i), p = 0;
            for (b = 0; b < 32; b++)
                if (DES_BIT(s, DES_P[b], 32)) p |= (uint32_t)1 << (31 - b);
            des_sp[i][v] = p;
        }
    }
    des_ready = 1;
}

static inline uint64_t des_load64(const uint8_t *p) {
    return ((uint64_t)p[0] << 56) | ((uint64_t)p[1] << 48) | ((uint64_t)p[2] << 40) |
           ((uint64_t)p[3] << 32) | ((uint64_t)p[4] << 24) | ((uint64_t)p[5] << 16) |
           ((uint64_t)p[6] << 8) | (uint64_t)p[7];
}

static inline void des_store64(uint8_t *p, uint64_t v) {
    int i;
    for (i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}

static inline uint64_t des_perm(uint64_t (*tab)[256], uint64_t x) {
    return tab[0][x >> 56] | tab[1][(x >> 48) & 255] | tab[2][(x >> 40) & 255] |
           tab[3][(x >> 32) & 255] | tab[4][(x >> 24) & 255] | tab[5][(x >> 16) & 255] |
           tab[6][(x >> 8) & 255] | tab[7][x & 255];
}

static inline void des_key_setup(des_schedule *ks, const uint8_t key[8]) {
    uint64_t k = des_load64(key);
    uint32_t c = 0, d = 0;
    int i, r, j;
    for (i = 0; i < 28; i++) {
        c = (c << 1) | (uint32_t)DES_BIT(k, DES_PC1[i], 64);
        d = (d << 1) | (uint32_t)DES_BIT(k, DES_PC1[28 + i], 64);
    }
    for (r = 0; r < 16; r++) {
        uint64_t cd, sub = 0;
        for (i = 0; i < DES_SHIFTS[r]; i++) {
            c = ((c << 1) | (c >> 27)) & 0x0FFFFFFFu;
            d = ((d << 1) | (d >> 27)) & 0x0FFFFFFFu;
        }
        cd = ((uint64_t)c << 28) | d;
        for (i = 0; i < 48; i++) sub = (sub << 1) | DES_BIT(cd, DES_PC2[i], 56);
        for (j = 0; j < 8; j++) ks->sub[r][j] = (uint8_t)((sub >> (42 - 6 * j)) & 63);
    }
}

static inline uint32_t des_rotr(uint32_t x, int n) {
    n &= 31;
    return n ? (x >> n) | (x << (32 - n)) : x;
}

/* The round function: chunk j of E(R) is bits 4j..4j+5 of R (1-based,
   bit 0 meaning bit 32), i.e. R rotated right by 27-4j, low six bits. */
static inline uint32_t des_f(uint32_t r, const uint8_t *k) {
    return des_sp[0][(des_rotr(r, 27) & 63) ^ k[0]] | des_sp[1][(des_rotr(r, 23) & 63) ^ k[1]] |
           des_sp[2][(des_rotr(r, 19) & 63) ^ k[2]] | des_sp[3][(des_rotr(r, 15) & 63) ^ k[3]] |
           des_sp[4][(des_rotr(r, 11) & 63) ^ k[4]] | des_sp[5][(des_rotr(r, 7) & 63) ^ k[5]] |
           des_sp[6][(des_rotr(r, 3) & 63) ^ k[6]] | des_sp[7][(des_rotr(r, 31) & 63) ^ k[7]];
}

/* Sixteen rounds on the halves of an IP-permuted block, leaving them
   swapped as DES's output is (R16 || L16). Decryption runs the subkeys
   backwards. */
static inline void des_rounds(const des_schedule *ks, uint32_t *pl, uint32_t *pr, int decrypt) {
    uint32_t l = *pl, r = *pr, t;
    int i;
    for (i = 0; i < 16; i++) {
        t = r;
        r = l ^ des_f(r, ks->sub[decrypt ? 15 - i : i]);
        l = t;
    }
    *pl = r;
    *pr = l;
}

/* 3DES as E(K3) D(K2) E(K1) with the FP of each stage and the IP of the
   next left out: they cancel, so only the outer IP and FP are computed. */
static inline uint64_t des_chain(const des_schedule *a, int da, const des_schedule *b, int db,
                                 const des_schedule *c, int dc, int n, uint64_t x) {
    uint64_t ip = des_perm(des_ip_tab, x);
    uint32_t l = (uint32_t)(ip >> 32), r = (uint32_t)ip;
    des_rounds(a, &l, &r, da);
    if (n > 1) {
        des_rounds(b, &l, &r, db);
        des_rounds(c, &l, &r, dc);
    }
    return des_perm(des_fp_tab, ((uint64_t)l << 32) | r);
}

/* key_len 8, 16 or 24; any other length is the caller's error. */
static inline void tdes_setup(tdes_key *key, const uint8_t *bytes, int key_len) {
    des_init();
    des_key_setup(&key->ks[0], bytes);
    key->single = key_len == 8;
    if (key->single) return;
    des_key_setup(&key->ks[1], bytes + 8);
    des_key_setup(&key->ks[2], key_len == 24 ? bytes + 16 : bytes);
}

static inline uint64_t tdes_encrypt64(const tdes_key *key, uint64_t x) {
    return des_chain(&key->ks[0], 0, &key->ks[1], 1, &key->ks[2], 0, key->single ? 1 : 3, x);
}

static inline uint64_t tdes_decrypt64(const tdes_key *key, uint64_t x) {
    if (key->single) return des_chain(&key->ks[0], 1, 0, 0, 0, 0, 1, x);
    return des_chain(&key->ks[2], 1, &key->ks[1], 0, &key->ks[0], 1, 3, x);
}

#endif
