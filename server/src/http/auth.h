/* auth.h - optional bearer-token authentication of normstatd's requests.
 *
 * Threads: nsd_auth_load() runs once in main() before any thread starts;
 * nsd_auth_check() only reads and may run on any thread. */
#ifndef NSD_AUTH_H
#define NSD_AUTH_H

#include <stddef.h>

#include "base/options.h"

/* The token requests must present; len 0 = authentication off. */
typedef struct nsd_auth_s {
    char token[4096];
    size_t len;
} nsd_auth_t;

/*! nsd_auth_load() :
 *  The token of --auth-token-file (the file's content without its trailing
 *  newline) or else of --auth-token / NORMSTAT_AUTH_TOKEN; neither set
 *  leaves authentication off. Both set, an unreadable file, an empty token
 *  or one with spaces or control characters is an error.
 *  @return 0, or NS_EINVAL with one line in 'err' (never the token). */
int nsd_auth_load(nsd_auth_t *dst, const nsd_options_t *opts, ns_error_detail_t *err);

/*! nsd_auth_exempt() : 1 for what stays open: the probes (GET /livez, /healthz, /readyz)
 *  and the dashboard's static files (GET /, /ui, /ui/...), which hold no data. */
int nsd_auth_exempt(const char *method, const char *path);

/*! nsd_auth_check() :
 *  Judge an Authorization header value (NULL when absent) against 'auth';
 *  the token is compared in time independent of where it differs.
 *  @return 0 (allowed, or authentication off), NS_EUNAUTHORIZED (missing or
 *  not "Bearer <token>") or NS_EFORBIDDEN (another token). */
int nsd_auth_check(const nsd_auth_t *auth, const char *header);

#endif
