/* store_crc.h - CRC-32C (Castagnoli), the checksum of every log row and
 * snapshot of the store (see the DESIGN in store_writer.c).
 *
 * CRC-32C as in RFC 3720 (iSCSI) section 12.1 and B.4: reflected polynomial
 * 0x82F63B78, initial value and final xor 0xFFFFFFFF. It detects every burst
 * of up to 32 bits and misses random damage with probability 2^-32.
 * Threads: any; the tables and the choice are made once (pthread_once). */
#ifndef NSD_STORE_CRC_H
#define NSD_STORE_CRC_H

#include <stddef.h>
#include <stdint.h>

/*! nsd_crc32c() :
 *  The CRC-32C of 'src_len' bytes at 'src', continued from 'crc' (0 for a
 *  fresh start: nsd_crc32c(nsd_crc32c(0, a, n), b, m) is the CRC of a then b).
 *  'src' may be NULL when 'src_len' is 0. */
uint32_t nsd_crc32c(uint32_t crc, const void *src, size_t src_len);

/*! nsd_crc32c_portable() : the same in portable C, the reference the
 *  hardware path is tested against. */
uint32_t nsd_crc32c_portable(uint32_t crc, const void *src, size_t src_len);

/*! nsd_crc32c_impl() : which one nsd_crc32c() uses: "sse4.2" or "portable". */
const char *nsd_crc32c_impl(void);

#if defined(__x86_64__)
/* The SSE4.2 crc32 instruction (store_crc_sse42.c); only on a CPU that has it. */
uint32_t nsd__crc32c_sse42(uint32_t crc, const void *src, size_t src_len);
#endif

#endif /* NSD_STORE_CRC_H */
