/* test_store_crc.c - the store's CRC-32C against the published test vectors
 * (RFC 3720, B.4; the CRC catalogue's check value) and against a bitwise
 * reference written here from the polynomial, on every length and split. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "store/store_crc.h"

/* RFC 3720 (iSCSI), appendix B.4, "CRC Examples": 32-byte messages. The
 * RFC lists the CRC bytes as sent (least significant first): "aa 36 91 8a"
 * is 0x8a9136aa. */
START_TEST(test_rfc3720_vectors)
{
    unsigned char b[32];
    memset(b, 0x00, sizeof(b));
    ck_assert_uint_eq(nsd_crc32c(0, b, sizeof(b)), 0x8a9136aau);
    memset(b, 0xff, sizeof(b));
    ck_assert_uint_eq(nsd_crc32c(0, b, sizeof(b)), 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)i;
    ck_assert_uint_eq(nsd_crc32c(0, b, sizeof(b)), 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)(31 - i);
    ck_assert_uint_eq(nsd_crc32c(0, b, sizeof(b)), 0x113fdb5cu);
    /* An iSCSI SCSI Read (10) command PDU, the RFC's fifth example. */
    static const unsigned char pdu[48] = {
        0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
    ck_assert_uint_eq(nsd_crc32c(0, pdu, sizeof(pdu)), 0xd9963a56u);
}
END_TEST

/* The "check" value of CRC-32C in Greg Cook's catalogue of parametrised CRC
 * algorithms (CRC-32/ISCSI): the CRC of "123456789". */
START_TEST(test_check_value)
{
    ck_assert_uint_eq(nsd_crc32c(0, "123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(nsd_crc32c(0, NULL, 0), 0u);
    ck_assert_uint_eq(nsd_crc32c_portable(0, "123456789", 9), 0xe3069283u);
}
END_TEST

/* One bit at a time, straight from the definition. */
static uint32_t bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1u ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

/* The hardware path is the one in use on a CPU that has it (a test run on
 * such a CPU checks it above, the portable one on others). */
START_TEST(test_impl_named)
{
    const char *impl = nsd_crc32c_impl();
    ck_assert(strcmp(impl, "sse4.2") == 0 || strcmp(impl, "portable") == 0);
#if defined(__x86_64__)
    __builtin_cpu_init();
    ck_assert_str_eq(impl, __builtin_cpu_supports("sse4.2") ? "sse4.2" : "portable");
#endif
}
END_TEST

/* Every length up to 300 from every start alignment, in one piece and
 * split in two anywhere, against the bitwise reference. */
START_TEST(test_matches_bitwise_reference)
{
    uint64_t rng = ns_test_seed();
    unsigned char buf[320];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)ns_test_rand(&rng);
    for (size_t off = 0; off < 8; off++)
        for (size_t n = 0; n <= 300; n++) {
            uint32_t want = bitwise(buf + off, n);
            ck_assert_uint_eq(nsd_crc32c(0, buf + off, n), want);
            size_t cut = n ? (size_t)(ns_test_rand(&rng) % (n + 1)) : 0;
            ck_assert_uint_eq(nsd_crc32c(nsd_crc32c(0, buf + off, cut), buf + off + cut, n - cut),
                              want);
            ck_assert_uint_eq(nsd_crc32c_portable(0, buf + off, n), want);
            ck_assert_uint_eq(nsd_crc32c_portable(nsd_crc32c_portable(0, buf + off, cut),
                                                  buf + off + cut, n - cut),
                              want);
        }
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("store_crc");
    TCase *tc = tcase_create("crc32c");
    tcase_add_test(tc, test_rfc3720_vectors);
    tcase_add_test(tc, test_check_value);
    tcase_add_test(tc, test_impl_named);
    tcase_add_test(tc, test_matches_bitwise_reference);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(make_suite)
