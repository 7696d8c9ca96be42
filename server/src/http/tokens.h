/* tokens.h - the token table: bearer tokens and the scope each grants.
 *
 * A table is built once (from --auth-token, --auth-token-file and
 * --auth-tokens-file) and never changed afterwards; a reload builds a new one.
 * Lookups compare the presented token with every entry in time that does
 * not depend on where they differ. No function logs or copies a token into
 * an error message. A table is read-only once built and may be shared. */
#ifndef NSD_TOKENS_H
#define NSD_TOKENS_H

#include <stddef.h>

#include <normstat/proto.h>

/* What a token may do (doc/design.md, "Security"). */
typedef enum nsd_scope_e {
    NSD_SCOPE_READ = 1,  /* every GET */
    NSD_SCOPE_WRITE = 2, /* everything but DELETE on runs matching the pattern */
    NSD_SCOPE_ADMIN = 3, /* everything */
} nsd_scope_t;

/* The longest run pattern of a write token. */
#define NSD_PATTERN_MAX 256
/* The longest token. */
#define NSD_TOKEN_MAX 4095

/* A token's grant, as a request sees it. */
typedef struct nsd_grant_s {
    nsd_scope_t scope;
    char pattern[NSD_PATTERN_MAX + 1]; /* write: glob of run names (fnmatch); else "" */
} nsd_grant_t;

typedef struct nsd_tokens_s nsd_tokens_t;

/*! nsd_tokens_create() : an empty table. @return it, or NULL (out of memory). */
nsd_tokens_t *nsd_tokens_create(void);

/*! nsd_tokens_add() :
 *  Add 'token' (len bytes, visible ASCII, 1..NSD_TOKEN_MAX) with 'grant'.
 *  @return 0, NS_EINVAL (malformed, or already in the table: 'err' says
 *  which, never the token) or NS_ENOMEM. 'source' names where it came from
 *  in the message ("--auth-tokens-file: line 3"). */
int nsd_tokens_add(nsd_tokens_t *t, const char *token, size_t len, const nsd_grant_t *grant,
                   const char *source, ns_error_detail_t *err);

/*! nsd_tokens_parse() :
 *  Add the entries of a token file's text 'src' (src_len bytes): one per
 *  line, "TOKEN admin", "TOKEN read" or "TOKEN write RUN_GLOB", fields
 *  separated by spaces or tabs; blank lines and lines starting with '#' are
 *  skipped. RUN_GLOB is a fnmatch(3) pattern over run names ('*', '?',
 *  '[...]' and the name characters).
 *  @return 0, or NS_EINVAL with 'err' naming 'flag' and the line. */
int nsd_tokens_parse(nsd_tokens_t *t, const char *src, size_t src_len, const char *flag,
                     ns_error_detail_t *err);

/*! nsd_tokens_count() : entries in the table. */
size_t nsd_tokens_count(const nsd_tokens_t *t);

/*! nsd_tokens_find() :
 *  The grant of 'token' (len bytes), compared with every entry in constant
 *  time per entry. @return 0 with *grant filled, or NS_ENOTFOUND. */
int nsd_tokens_find(const nsd_tokens_t *t, const char *token, size_t len, nsd_grant_t *grant);

/*! nsd_tokens_free() : wipes the tokens. Accepts NULL. */
void nsd_tokens_free(nsd_tokens_t *t);

#endif
