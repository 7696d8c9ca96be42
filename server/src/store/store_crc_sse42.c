/* store_crc_sse42.c - CRC-32C with the SSE4.2 crc32 instruction, eight bytes
 * per instruction; the only server file built with -msse4.2 (server.mk), and
 * called only when the CPU has it (store_crc.c). Same values as the portable
 * reference: the instruction computes the Castagnoli CRC, reflected, with
 * neither the initial nor the final inversion, which are done here. */
#include "store_crc.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#include <string.h>

uint32_t nsd__crc32c_sse42(uint32_t crc, const void *src, size_t src_len)
{
    const unsigned char *p = src;
    uint64_t c = ~crc;
    for (; src_len >= 8; src_len -= 8, p += 8) {
        uint64_t v;
        memcpy(&v, p, sizeof(v)); /* x86 is little-endian; no alignment assumed */
        c = _mm_crc32_u64(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    while (src_len-- > 0)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif
