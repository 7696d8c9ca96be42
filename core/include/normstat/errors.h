/* normstat/errors.h - the error codes of libnscore.
 *
 * Core functions return 0 or one of these negative codes. The values are
 * pinned: a released code never changes. The wire protocol and the client
 * number their own codes in the gaps and after these (normstat/wire_errors.h,
 * normstat/client.h), so one int says what failed at every level. */
#ifndef NORMSTAT_ERRORS_H
#define NORMSTAT_ERRORS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ns_error_e {
    NS_OK = 0,
    NS_EINVAL = -1,    /* an argument outside its domain (size, count, momentum, ...) */
    NS_ENOTFOUND = -2, /* nothing to read yet, e.g. a PreciseBN accumulator with n == 0 */
    NS_EVALUE = -6     /* a non-finite value, or a negative variance */
} ns_error_t;

#ifdef __cplusplus
}
#endif
#endif /* NORMSTAT_ERRORS_H */
