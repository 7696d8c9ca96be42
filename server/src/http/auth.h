/* auth.h - optional bearer-token authentication and scopes of normstatd's requests.
 *
 * Tokens come from --auth-token / --auth-token-file (one admin token) and
 * --auth-tokens-file (tokens with scopes, tokens.h); none of them set leaves
 * authentication off. nsd_auth_check() finds who a request is (401 when the
 * header is missing, malformed or names no known token), nsd_auth_permit()
 * whether that grant covers the route (403 naming the missing scope).
 *
 * Threads: nsd_auth_create() runs in main() before any thread starts;
 * nsd_auth_check() runs on MHD's pool threads; nsd_auth_reload() on the
 * coordinator's (SIGHUP). An rwlock guards the table: a check holds it for
 * one lookup, a reload for a pointer swap. */
#ifndef NSD_AUTH_H
#define NSD_AUTH_H

#include <stddef.h>

#include "base/options.h"
#include "tokens.h"

typedef struct nsd_auth_s nsd_auth_t;

/*! nsd_auth_create() :
 *  The token table of the options: the token of --auth-token-file (the
 *  file's content without its trailing newline) or else of --auth-token /
 *  NORMSTAT_AUTH_TOKEN, as admin, and the entries of --auth-tokens-file.
 *  Both single-token sources set, an unreadable file, an empty token or one
 *  with spaces or control characters, a malformed line or a token given
 *  twice is an error.
 *  @return 0 with *dst set (NULL: authentication off), or NS_EINVAL /
 *  NS_ENOMEM with one line in 'err' naming the option (never a token). */
int nsd_auth_create(nsd_auth_t **dst, const nsd_options_t *opts, ns_error_detail_t *err);

/*! nsd_auth_single_token() :
 *  The admin token of --auth-token-file (without its trailing newline) or
 *  --auth-token, as text in *dst (NULL when neither is set): what a relay
 *  presents upstream. Free it with nsd_auth_token_free().
 *  @return 0, or NS_EINVAL / NS_ENOMEM with one line in 'err' (never the token). */
int nsd_auth_single_token(const nsd_options_t *opts, char **dst, ns_error_detail_t *err);

/*! nsd_auth_token_free() : wipes and frees a token; accepts NULL. */
void nsd_auth_token_free(char *token);

/*! nsd_auth_reload() :
 *  Read the token files again; if they load, later requests are judged by
 *  them. Otherwise the tokens in use stay. *count gets the number of tokens
 *  in use afterwards. @return 0, or the error of nsd_auth_create(). */
int nsd_auth_reload(nsd_auth_t *auth, size_t *count, ns_error_detail_t *err);

/*! nsd_auth_free() : accepts NULL. */
void nsd_auth_free(nsd_auth_t *auth);

/*! nsd_auth_exempt() : 1 for what stays open: the probes (GET /livez, /healthz, /readyz)
 *  and the dashboard's static files (GET /, /ui, /ui/...), which hold no data. */
int nsd_auth_exempt(const char *method, const char *path);

/*! nsd_auth_check() :
 *  Judge an Authorization header value (NULL when absent) against 'auth'
 *  (NULL: off, everything is admin); the token is compared with every known
 *  one in time independent of where they differ.
 *  @return 0 with *grant filled, or NS_EUNAUTHORIZED: the header is missing
 *  or not "Bearer <token>" (*unknown = 0), or the token is not known
 *  (*unknown = 1). */
int nsd_auth_check(nsd_auth_t *auth, const char *header, nsd_grant_t *grant, int *unknown);

/*! nsd_auth_permit() :
 *  May 'grant' make a 'method' request on a route of run 'run' ("" for
 *  routes without a run)? GET and HEAD need read (a write grant reads the
 *  runs it matches), PUT and POST write on the run, DELETE admin.
 *  @return 0, or NS_EFORBIDDEN with *need set to the scope missing ("read",
 *  "write" or "admin") and 'err' saying what was asked and what the token
 *  may do. */
int nsd_auth_permit(const nsd_grant_t *grant, const char *method, const char *run,
                    const char **need, ns_error_detail_t *err);

#endif
