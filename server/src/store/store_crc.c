/* store_crc.c - CRC-32C in portable C, eight bytes per step ("slicing by 8"). */
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

uint32_t nsd_crc32c(uint32_t crc, const void *src, size_t src_len)
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
