/*
 * CRC32C (Castagnoli, RFC 3720): the one C implementation shared by every segstore kernel.
 *
 * Both _ext/crc32c.pyx and _ext/records.pyx `cdef extern` this header, so the frame
 * encoder, the scanner and the Python-level crc32c() run the same code. Each extension
 * module gets its own copy of the (static) table and dispatch flag and must call
 * segstore_crc32c_init() once at import, before any thread can call segstore_crc32c().
 *
 * Convention (as zlib's crc32): the crc argument and the result are finished CRC values,
 * so segstore_crc32c(0, p, n) is the standard CRC of p[0:n) and
 * segstore_crc32c(segstore_crc32c(0, a, na), b, nb) == CRC of a || b.
 *
 * x86-64: SSE4.2 `crc32` instruction when the CPU has it (runtime dispatch; the function is
 * compiled with a target attribute, so the module builds without -msse4.2 and still runs on
 * CPUs without it). Everything else: portable slicing-by-8.
 */
#ifndef SEGSTORE_CRC32C_IMPL_H
#define SEGSTORE_CRC32C_IMPL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Reflected Castagnoli polynomial. */
#define SEGSTORE_CRC32C_POLY 0x82F63B78u

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SEGSTORE_CRC32C_X86 1
#include <nmmintrin.h>
#else
#define SEGSTORE_CRC32C_X86 0
#endif

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define SEGSTORE_CRC32C_LITTLE_ENDIAN 1
#else
#define SEGSTORE_CRC32C_LITTLE_ENDIAN 0
#endif

static uint32_t segstore_crc32c_table[8][256];
static int segstore_crc32c_have_hw = 0;

/*
 * The hardware path runs three independent crc32 streams over adjacent blocks (the
 * instruction has a latency of 3 cycles but a throughput of 1) and merges them with
 * "append this many zero bytes" operators, as in Mark Adler's crc32c.c. The tables apply
 * those operators for blocks of LONG, SHORT and TINY bytes, one input byte at a time.
 * TINY lets records of a few hundred bytes (the common Raft entry) use three streams
 * too: a 290-byte frame has 192 bytes in three streams of 64.
 */
#define SEGSTORE_CRC32C_LONG 8192
#define SEGSTORE_CRC32C_SHORT 256
#define SEGSTORE_CRC32C_TINY 64
static uint32_t segstore_crc32c_long[4][256];
static uint32_t segstore_crc32c_short[4][256];
static uint32_t segstore_crc32c_tiny[4][256];

static uint32_t segstore_gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) {
        if (vec & 1u) {
            sum ^= *mat;
        }
        vec >>= 1;
        mat++;
    }
    return sum;
}

static void segstore_gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) {
        square[n] = segstore_gf2_times(mat, mat[n]);
    }
}

/* Tables that append len zero bytes (len a power of two, >= 2) to a raw CRC register. */
static void segstore_crc32c_zeros(uint32_t zeros[4][256], size_t len) {
    uint32_t even[32], odd[32];
    odd[0] = SEGSTORE_CRC32C_POLY; /* the operator for one zero bit */
    for (int n = 1; n < 32; n++) {
        odd[n] = 1u << (n - 1);
    }
    segstore_gf2_square(even, odd); /* 2 bits */
    segstore_gf2_square(odd, even); /* 4 bits */
    for (;;) {
        segstore_gf2_square(even, odd); /* 8 bits, then 4x the previous even */
        len >>= 1;
        if (len == 0) {
            break;
        }
        segstore_gf2_square(odd, even);
        len >>= 1;
        if (len == 0) {
            memcpy(even, odd, sizeof even);
            break;
        }
    }
    for (uint32_t n = 0; n < 256; n++) {
        zeros[0][n] = segstore_gf2_times(even, n);
        zeros[1][n] = segstore_gf2_times(even, n << 8);
        zeros[2][n] = segstore_gf2_times(even, n << 16);
        zeros[3][n] = segstore_gf2_times(even, n << 24);
    }
}

static inline uint32_t segstore_crc32c_shift(const uint32_t zeros[4][256], uint32_t crc) {
    return zeros[0][crc & 0xFFu] ^ zeros[1][(crc >> 8) & 0xFFu] ^
           zeros[2][(crc >> 16) & 0xFFu] ^ zeros[3][crc >> 24];
}

/* Fill the slicing tables and probe the CPU. Idempotent; call once at module import. */
static void segstore_crc32c_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t crc = i;
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (SEGSTORE_CRC32C_POLY & (0u - (crc & 1u)));
        }
        segstore_crc32c_table[0][i] = crc;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int k = 1; k < 8; k++) {
            uint32_t prev = segstore_crc32c_table[k - 1][i];
            segstore_crc32c_table[k][i] = (prev >> 8) ^ segstore_crc32c_table[0][prev & 0xFFu];
        }
    }
    segstore_crc32c_zeros(segstore_crc32c_long, SEGSTORE_CRC32C_LONG);
    segstore_crc32c_zeros(segstore_crc32c_short, SEGSTORE_CRC32C_SHORT);
    segstore_crc32c_zeros(segstore_crc32c_tiny, SEGSTORE_CRC32C_TINY);
#if SEGSTORE_CRC32C_X86
    __builtin_cpu_init();
    segstore_crc32c_have_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

/* Portable slicing-by-8; always available (tests force it via crc32c_portable()). */
static inline uint32_t segstore_crc32c_portable(uint32_t crc, const unsigned char *p, size_t n) {
    const uint32_t(*t)[256] = (const uint32_t(*)[256])segstore_crc32c_table;
    uint32_t c = ~crc;
#if SEGSTORE_CRC32C_LITTLE_ENDIAN
    /* Byte steps until p is 8-aligned so the word loads below are aligned. */
    while (n > 0 && ((uintptr_t)p & 7u) != 0) {
        c = t[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = t[7][w & 0xFFu] ^ t[6][(w >> 8) & 0xFFu] ^ t[5][(w >> 16) & 0xFFu] ^
            t[4][(w >> 24) & 0xFFu] ^ t[3][(w >> 32) & 0xFFu] ^ t[2][(w >> 40) & 0xFFu] ^
            t[1][(w >> 48) & 0xFFu] ^ t[0][w >> 56];
        p += 8;
        n -= 8;
    }
#endif
    while (n > 0) {
        c = t[0][(c ^ *p++) & 0xFFu] ^ (c >> 8);
        n--;
    }
    return ~c;
}

#if SEGSTORE_CRC32C_X86
/* Consume whole groups of 3 * block bytes from *p as three interleaved streams. */
__attribute__((target("sse4.2"))) static inline uint64_t segstore_crc32c_sse42_3way(
    uint64_t c0, const unsigned char **pp, size_t *np, size_t block,
    const uint32_t zeros[4][256]) {
    const unsigned char *p = *pp;
    size_t n = *np;
    while (n >= 3 * block) {
        uint64_t c1 = 0, c2 = 0;
        const unsigned char *end = p + block;
        do {
            uint64_t w0, w1, w2;
            memcpy(&w0, p, 8);
            memcpy(&w1, p + block, 8);
            memcpy(&w2, p + 2 * block, 8);
            c0 = _mm_crc32_u64(c0, w0);
            c1 = _mm_crc32_u64(c1, w1);
            c2 = _mm_crc32_u64(c2, w2);
            p += 8;
        } while (p < end);
        c0 = segstore_crc32c_shift(zeros, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = segstore_crc32c_shift(zeros, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * block;
        n -= 3 * block;
    }
    *pp = p;
    *np = n;
    return c0;
}

__attribute__((target("sse4.2"))) static uint32_t segstore_crc32c_sse42(
    uint32_t crc, const unsigned char *p, size_t n) {
    uint64_t c = (uint32_t)~crc;
    while (n > 0 && ((uintptr_t)p & 7u) != 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    c = segstore_crc32c_sse42_3way(c, &p, &n, SEGSTORE_CRC32C_LONG,
                                   (const uint32_t(*)[256])segstore_crc32c_long);
    c = segstore_crc32c_sse42_3way(c, &p, &n, SEGSTORE_CRC32C_SHORT,
                                   (const uint32_t(*)[256])segstore_crc32c_short);
    c = segstore_crc32c_sse42_3way(c, &p, &n, SEGSTORE_CRC32C_TINY,
                                   (const uint32_t(*)[256])segstore_crc32c_tiny);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    while (n > 0) {
        c = _mm_crc32_u8((uint32_t)c, *p++);
        n--;
    }
    return ~(uint32_t)c;
}
#endif

#if SEGSTORE_CRC32C_X86
__attribute__((target("sse4.2"))) static void segstore_crc32c_sse42_x3(
    const unsigned char *const *p, const size_t *n, uint32_t *out) {
    size_t common = n[0] < n[1] ? n[0] : n[1];
    common = n[2] < common ? n[2] : common;
    uint64_t c0 = 0xFFFFFFFFu, c1 = 0xFFFFFFFFu, c2 = 0xFFFFFFFFu;
    size_t i = 0;
    for (; i + 8 <= common; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p[0] + i, 8);
        memcpy(&w1, p[1] + i, 8);
        memcpy(&w2, p[2] + i, 8);
        c0 = _mm_crc32_u64(c0, w0);
        c1 = _mm_crc32_u64(c1, w1);
        c2 = _mm_crc32_u64(c2, w2);
    }
    if (i + 4 <= common) {
        uint32_t w0, w1, w2;
        memcpy(&w0, p[0] + i, 4);
        memcpy(&w1, p[1] + i, 4);
        memcpy(&w2, p[2] + i, 4);
        c0 = _mm_crc32_u32((uint32_t)c0, w0);
        c1 = _mm_crc32_u32((uint32_t)c1, w1);
        c2 = _mm_crc32_u32((uint32_t)c2, w2);
        i += 4;
    }
    for (; i < common; i++) {
        c0 = _mm_crc32_u8((uint32_t)c0, p[0][i]);
        c1 = _mm_crc32_u8((uint32_t)c1, p[1][i]);
        c2 = _mm_crc32_u8((uint32_t)c2, p[2][i]);
    }
    out[0] = segstore_crc32c_sse42(~(uint32_t)c0, p[0] + common, n[0] - common);
    out[1] = segstore_crc32c_sse42(~(uint32_t)c1, p[1] + common, n[1] - common);
    out[2] = segstore_crc32c_sse42(~(uint32_t)c2, p[2] + common, n[2] - common);
}
#endif

/*
 * out[k] = segstore_crc32c(0, p[k], n[k]) for k < 3. Frames of a few hundred bytes are
 * too short for the three-block split above to pay much, so checks of many records
 * interleave three records' chains instead: their common length runs as three streams.
 */
static inline void segstore_crc32c_x3(const unsigned char *const *p, const size_t *n,
                                      uint32_t *out) {
#if SEGSTORE_CRC32C_X86
    if (segstore_crc32c_have_hw) {
        segstore_crc32c_sse42_x3(p, n, out);
        return;
    }
#endif
    for (int k = 0; k < 3; k++) {
        out[k] = segstore_crc32c_portable(0, p[k], n[k]);
    }
}

/* The entry point every kernel uses: hardware when available, else slicing-by-8. */
static inline uint32_t segstore_crc32c(uint32_t crc, const unsigned char *p, size_t n) {
#if SEGSTORE_CRC32C_X86
    if (segstore_crc32c_have_hw) {
        return segstore_crc32c_sse42(crc, p, n);
    }
#endif
    return segstore_crc32c_portable(crc, p, n);
}

static inline int segstore_crc32c_hardware(void) { return segstore_crc32c_have_hw; }

#endif /* SEGSTORE_CRC32C_IMPL_H */
