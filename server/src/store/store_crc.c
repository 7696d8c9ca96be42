/* store_crc.c - CRC-32C: the portable reference, eight bytes per step
 * ("slicing by 8", about 1 GB/s), and the choice, made once, of the SSE4.2
 * crc32 instruction (store_crc_sse42.c, same values, about 10x faster) when
 * the CPU has it. */
#include "store_crc.h"

#include <pthread.h>

#define CRC32C_POLY 0x82F63B78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

/* table[0] is the byte-at-a-time table; table[k][b] is the CRC of byte b
 * followed by k zero bytes, so eight table reads advance eight bytes. */
static void build_tables(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int i = 0; i < 8; i++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++)
        for (int k = 1; k < 8; k++)
            table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xffu];
}

uint32_t nsd_crc32c_portable(uint32_t crc, const void *src, size_t src_len)
{
    pthread_once(&table_once, build_tables);
    const unsigned char *p = src;
    uint32_t c = ~crc;
    for (; src_len >= 8; src_len -= 8, p += 8) {
        /* Little-endian composition by bytes: no alignment or byte-order
         * assumption about the host. */
        uint32_t lo = c ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                           (uint32_t)p[3] << 24);
        c = table[7][lo & 0xffu] ^ table[6][(lo >> 8) & 0xffu] ^ table[5][(lo >> 16) & 0xffu] ^
            table[4][lo >> 24] ^ table[3][p[4]] ^ table[2][p[5]] ^ table[1][p[6]] ^ table[0][p[7]];
    }
    while (src_len-- > 0)
        c = (c >> 8) ^ table[0][(c ^ *p++) & 0xffu];
    return ~c;
}

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);
static crc_fn chosen;
static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;

static void choose(void)
{
    chosen = nsd_crc32c_portable;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        chosen = nsd__crc32c_sse42;
#endif
}

uint32_t nsd_crc32c(uint32_t crc, const void *src, size_t src_len)
{
    pthread_once(&chosen_once, choose);
    return chosen(crc, src, src_len);
}

const char *nsd_crc32c_impl(void)
{
    pthread_once(&chosen_once, choose);
    return chosen == nsd_crc32c_portable ? "portable" : "sse4.2";
}
