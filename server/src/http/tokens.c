/* tokens.c - the token table: entries, the token file's grammar, constant-time lookup. */
#include "tokens.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/wire_errors.h>

/* At most this many tokens: every request compares its token with each. */
#define TOKENS_MAX 4096

typedef struct entry_s {
    char *token; /* NUL-terminated copy */
    size_t len;
    nsd_grant_t grant;
} entry_t;

struct nsd_tokens_s {
    entry_t *v;
    size_t n, cap;
};

/* A token is one or more visible ASCII characters (RFC 6750's b64token and more). */
static int valid_token(const char *s, size_t len)
{
    if (len == 0 || len > NSD_TOKEN_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

/* 1 when a[0..a_len) equals b[0..b_len); every byte of 'a' is visited
 * whatever 'b' holds, so the time tells nothing of where they differ. */
static unsigned equal_ct(const char *a, size_t a_len, const char *b, size_t b_len)
{
    unsigned char diff = (unsigned char)(a_len != b_len);
    for (size_t i = 0; i < a_len; i++)
        diff |= (unsigned char)(a[i] ^ (i < b_len ? b[i] : 0));
    volatile unsigned char sink = diff;
    return sink == 0;
}

nsd_tokens_t *nsd_tokens_create(void)
{
    return calloc(1, sizeof(nsd_tokens_t));
}

size_t nsd_tokens_count(const nsd_tokens_t *t)
{
    return t->n;
}

int nsd_tokens_find(const nsd_tokens_t *t, const char *token, size_t len, nsd_grant_t *grant)
{
    /* No early exit: every entry is compared, the match is selected by a
     * mask. Tokens are unique, so at most one matches. */
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < t->n; i++) {
        size_t mask = (size_t)0 - (size_t)equal_ct(t->v[i].token, t->v[i].len, token, len);
        found = (i & mask) | (found & ~mask);
    }
    if (found == SIZE_MAX)
        return NS_ENOTFOUND;
    *grant = t->v[found].grant;
    return 0;
}

int nsd_tokens_add(nsd_tokens_t *t, const char *token, size_t len, const nsd_grant_t *grant,
                   const char *source, ns_error_detail_t *err)
{
    if (!valid_token(token, len))
        return ns_error_set(err, NS_EINVAL, "",
                            "%s: a token must be 1 to %d visible ASCII characters without spaces",
                            source, NSD_TOKEN_MAX);
    nsd_grant_t seen;
    if (nsd_tokens_find(t, token, len, &seen) == 0)
        return ns_error_set(err, NS_EINVAL, "", "%s: a token given before is given again", source);
    if (t->n == TOKENS_MAX)
        return ns_error_set(err, NS_EINVAL, "", "%s: more than %d tokens", source, TOKENS_MAX);
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 8;
        entry_t *v = realloc(t->v, cap * sizeof(*v));
        if (v == NULL)
            return ns_error_set(err, NS_ENOMEM, "", "%s: out of memory", source);
        t->v = v;
        t->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "%s: out of memory", source);
    memcpy(copy, token, len);
    copy[len] = '\0';
    t->v[t->n++] = (entry_t){copy, len, *grant};
    return 0;
}

/* A run glob: fnmatch syntax over the name alphabet [A-Za-z0-9_.:-]. */
static int valid_pattern(const char *s, size_t len)
{
    if (len == 0 || len > NSD_PATTERN_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              strchr("_.:-*?[]!", c) != NULL))
            return 0;
    }
    return 1;
}

/* Split line[0..len) at spaces and tabs into at most 'cap' fields. @return the count. */
static size_t split_fields(const char *line, size_t len, const char **field, size_t *field_len,
                           size_t cap)
{
    size_t n = 0, i = 0;
    while (i < len) {
        while (i < len && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (i == len)
            break;
        size_t start = i;
        while (i < len && line[i] != ' ' && line[i] != '\t')
            i++;
        if (n < cap) {
            field[n] = line + start;
            field_len[n] = i - start;
        }
        n++;
    }
    return n;
}

/* One non-blank, non-comment line. */
static int parse_line(nsd_tokens_t *t, const char *line, size_t len, const char *source,
                      ns_error_detail_t *err)
{
    const char *f[4];
    size_t fl[4];
    size_t n = split_fields(line, len, f, fl, 4);
    nsd_grant_t grant = {0};
    if (n >= 2 && fl[1] == 5 && memcmp(f[1], "admin", 5) == 0)
        grant.scope = NSD_SCOPE_ADMIN;
    else if (n >= 2 && fl[1] == 4 && memcmp(f[1], "read", 4) == 0)
        grant.scope = NSD_SCOPE_READ;
    else if (n >= 2 && fl[1] == 5 && memcmp(f[1], "write", 5) == 0)
        grant.scope = NSD_SCOPE_WRITE;
    else if (n < 2)
        return ns_error_set(err, NS_EINVAL, "",
                            "%s: expected \"TOKEN SCOPE\" (admin, read, or write RUN_GLOB)",
                            source);
    else
        return ns_error_set(err, NS_EINVAL, "",
                            "%s: unknown scope '%.*s'; scopes are admin, read and write RUN_GLOB",
                            source, fl[1] > 32 ? 32 : (int)fl[1], f[1]);
    size_t want = grant.scope == NSD_SCOPE_WRITE ? 3 : 2;
    if (n != want)
        return ns_error_set(err, NS_EINVAL, "", "%s: %s takes %s", source,
                            grant.scope == NSD_SCOPE_WRITE ? "write"
                            : f[1][0] == 'a'               ? "admin"
                                                           : "read",
                            grant.scope == NSD_SCOPE_WRITE ? "one RUN_GLOB" : "nothing after it");
    if (grant.scope == NSD_SCOPE_WRITE) {
        if (!valid_pattern(f[2], fl[2]))
            return ns_error_set(err, NS_EINVAL, "",
                                "%s: RUN_GLOB '%.*s' must be 1 to %d of [A-Za-z0-9_.:-] and the "
                                "glob characters *?[]!",
                                source, fl[2] > 64 ? 64 : (int)fl[2], f[2], NSD_PATTERN_MAX);
        memcpy(grant.pattern, f[2], fl[2]);
        grant.pattern[fl[2]] = '\0';
    }
    return nsd_tokens_add(t, f[0], fl[0], &grant, source, err);
}

int nsd_tokens_parse(nsd_tokens_t *t, const char *src, size_t src_len, const char *flag,
                     ns_error_detail_t *err)
{
    size_t line_no = 0;
    for (size_t pos = 0; pos < src_len;) {
        const char *line = src + pos;
        const char *nl = memchr(line, '\n', src_len - pos);
        size_t len = nl ? (size_t)(nl - line) : src_len - pos;
        pos += len + (nl != NULL);
        line_no++;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        size_t skip = 0;
        while (skip < len && (line[skip] == ' ' || line[skip] == '\t'))
            skip++;
        if (skip == len || line[skip] == '#')
            continue;
        if (memchr(line, '\0', len) != NULL)
            return ns_error_set(err, NS_EINVAL, "", "%s: line %zu holds a NUL byte", flag, line_no);
        char source[600];
        snprintf(source, sizeof(source), "%s: line %zu", flag, line_no);
        int rc = parse_line(t, line + skip, len - skip, source, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void nsd_tokens_free(nsd_tokens_t *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n; i++) {
        volatile char *p = t->v[i].token;
        for (size_t k = 0; k < t->v[i].len; k++)
            p[k] = 0;
        free(t->v[i].token);
    }
    free(t->v);
    free(t);
}
