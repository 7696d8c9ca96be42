/* auth.c - bearer-token authentication: the token files, Authorization headers, scopes. */
#include "auth.h"

#include <errno.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <normstat/wire_errors.h>

/* Largest --auth-tokens-file read. */
#define TOKENS_FILE_MAX (4u << 20)

struct nsd_auth_s {
    const nsd_options_t *opts; /* read again by a reload; lives as long as the daemon */
    pthread_rwlock_t lock;     /* table: read by checks, swapped by reloads */
    nsd_tokens_t *table;
};

/* Read a whole file of at most 'max' bytes. @return 0 with a malloc'd,
 * NUL-terminated *dst, or NS_EINVAL / NS_ENOMEM naming 'flag'. */
static int read_file(char **dst, size_t *len, const char *flag, const char *path, size_t max,
                     ns_error_detail_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ns_error_set(err, NS_EINVAL, flag, "cannot open '%s': %s", path, strerror(errno));
    char *data = malloc(max + 1);
    if (data == NULL) {
        fclose(f);
        return ns_error_set(err, NS_ENOMEM, flag, "out of memory");
    }
    *len = fread(data, 1, max + 1, f);
    int bad = ferror(f) || *len > max;
    fclose(f);
    if (bad) {
        memset(data, 0, max + 1);
        free(data);
        return ns_error_set(err, NS_EINVAL, flag, "cannot read '%s' (or longer than %zu bytes)",
                            path, max);
    }
    data[*len] = '\0';
    *dst = data;
    return 0;
}

static void wipe_free(char *data, size_t len)
{
    if (data == NULL)
        return;
    volatile char *p = data;
    for (size_t i = 0; i < len; i++)
        p[i] = 0;
    free(data);
}

int nsd_auth_single_token(const nsd_options_t *opts, char **dst, ns_error_detail_t *err)
{
    *dst = NULL;
    const char *file = opts->auth_token_file;
    if (file[0] != '\0' && opts->auth_token[0] != '\0')
        return ns_error_set(err, NS_EINVAL, "",
                            "set either --auth-token-file or --auth-token (NORMSTAT_AUTH_TOKEN)"
                            ", not both");
    if (file[0] == '\0') {
        if (opts->auth_token[0] == '\0')
            return 0;
        *dst = strdup(opts->auth_token);
        return *dst != NULL ? 0 : ns_error_set(err, NS_ENOMEM, "--auth-token", "out of memory");
    }
    size_t len;
    int rc = read_file(dst, &len, "--auth-token-file", file, NSD_TOKEN_MAX, err);
    if (rc != 0)
        return rc;
    size_t n = len;
    if (n > 0 && (*dst)[n - 1] == '\n')
        n--;
    if (n > 0 && (*dst)[n - 1] == '\r')
        n--;
    if (memchr(*dst, '\0', n) != NULL) {
        wipe_free(*dst, len);
        *dst = NULL;
        return ns_error_set(err, NS_EINVAL, "--auth-token-file", "'%s' holds a NUL byte", file);
    }
    memset(*dst + n, 0, len - n);
    return 0;
}

void nsd_auth_token_free(char *token)
{
    if (token != NULL)
        wipe_free(token, strlen(token));
}

/* The admin token of --auth-token-file or --auth-token, if any. */
static int load_single(nsd_tokens_t *t, const nsd_options_t *opts, ns_error_detail_t *err)
{
    char *token;
    int rc = nsd_auth_single_token(opts, &token, err);
    if (rc != 0 || token == NULL)
        return rc;
    const nsd_grant_t admin = {.scope = NSD_SCOPE_ADMIN};
    rc = nsd_tokens_add(t, token, strlen(token), &admin,
                        opts->auth_token_file[0] != '\0' ? "--auth-token-file" : "--auth-token",
                        err);
    nsd_auth_token_free(token);
    return rc;
}

/* A table from every token source of the options. */
static int load_table(nsd_tokens_t **dst, const nsd_options_t *opts, ns_error_detail_t *err)
{
    *dst = NULL;
    nsd_tokens_t *t = nsd_tokens_create();
    if (t == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    int rc = load_single(t, opts, err);
    const char *file = opts->auth_tokens_file;
    if (rc == 0 && file[0] != '\0') {
        char *data;
        size_t len;
        rc = read_file(&data, &len, "--auth-tokens-file", file, TOKENS_FILE_MAX, err);
        size_t before = nsd_tokens_count(t);
        if (rc == 0) {
            rc = nsd_tokens_parse(t, data, len, "--auth-tokens-file", err);
            wipe_free(data, len);
        }
        if (rc == 0 && nsd_tokens_count(t) == before)
            rc = ns_error_set(err, NS_EINVAL, "", "--auth-tokens-file: '%s' holds no token", file);
    }
    if (rc != 0) {
        nsd_tokens_free(t);
        return rc;
    }
    *dst = t;
    return 0;
}

int nsd_auth_create(nsd_auth_t **dst, const nsd_options_t *opts, ns_error_detail_t *err)
{
    *dst = NULL;
    nsd_tokens_t *table;
    int rc = load_table(&table, opts, err);
    if (rc != 0)
        return rc;
    if (nsd_tokens_count(table) == 0) {
        nsd_tokens_free(table);
        return 0;
    }
    nsd_auth_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        nsd_tokens_free(table);
        return ns_error_set(err, NS_ENOMEM, "", "out of memory");
    }
    a->opts = opts;
    a->table = table;
    pthread_rwlock_init(&a->lock, NULL);
    *dst = a;
    return 0;
}

int nsd_auth_reload(nsd_auth_t *auth, size_t *count, ns_error_detail_t *err)
{
    nsd_tokens_t *fresh;
    int rc = load_table(&fresh, auth->opts, err);
    if (rc == 0 && nsd_tokens_count(fresh) == 0) {
        nsd_tokens_free(fresh);
        rc = ns_error_set(err, NS_EINVAL, "", "no token left; authentication stays on");
    }
    pthread_rwlock_wrlock(&auth->lock);
    nsd_tokens_t *old = rc == 0 ? auth->table : NULL;
    if (rc == 0)
        auth->table = fresh;
    *count = nsd_tokens_count(auth->table);
    pthread_rwlock_unlock(&auth->lock);
    nsd_tokens_free(old);
    return rc;
}

void nsd_auth_free(nsd_auth_t *auth)
{
    if (auth == NULL)
        return;
    pthread_rwlock_destroy(&auth->lock);
    nsd_tokens_free(auth->table);
    free(auth);
}

int nsd_auth_exempt(const char *method, const char *path)
{
    static const char *const probes[] = {"/livez", "/healthz", "/readyz", "/", "/ui"};
    if (strcmp(method, "GET") != 0)
        return 0;
    /* The dashboard's files (one plain name under /ui/) hold no data; the
     * page asks for the token and sends it with every API call it makes. */
    if (strncmp(path, "/ui/", 4) == 0 && path[4] != '.' && strpbrk(path + 4, "/%") == NULL)
        return 1;
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++)
        if (strcmp(path, probes[i]) == 0)
            return 1;
    return 0;
}

int nsd_auth_check(nsd_auth_t *auth, const char *header, nsd_grant_t *grant, int *unknown)
{
    *unknown = 0;
    if (auth == NULL) {
        *grant = (nsd_grant_t){.scope = NSD_SCOPE_ADMIN};
        return 0;
    }
    if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0)
        return NS_EUNAUTHORIZED;
    const char *given = header + 7;
    while (*given == ' ')
        given++;
    size_t len = strlen(given);
    while (len > 0 && (given[len - 1] == ' ' || given[len - 1] == '\t'))
        len--;
    if (len == 0 || memchr(given, ' ', len) != NULL || memchr(given, '\t', len) != NULL)
        return NS_EUNAUTHORIZED;
    pthread_rwlock_rdlock(&auth->lock);
    int rc = nsd_tokens_find(auth->table, given, len, grant);
    pthread_rwlock_unlock(&auth->lock);
    *unknown = rc != 0;
    return rc == 0 ? 0 : NS_EUNAUTHORIZED;
}

int nsd_auth_permit(const nsd_grant_t *grant, const char *method, const char *run,
                    const char **need, ns_error_detail_t *err)
{
    int reading = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int deleting = strcmp(method, "DELETE") == 0;
    int matches =
        grant->scope == NSD_SCOPE_WRITE && run[0] != '\0' && fnmatch(grant->pattern, run, 0) == 0;
    switch (grant->scope) {
    case NSD_SCOPE_ADMIN:
        return 0;
    case NSD_SCOPE_READ:
        if (reading)
            return 0;
        *need = deleting ? "admin" : "write";
        return ns_error_set(err, NS_EFORBIDDEN, "",
                            "this token may only read; %s needs the %s scope", method, *need);
    case NSD_SCOPE_WRITE:
        if (!deleting && matches)
            return 0;
        *need = deleting ? "admin" : reading ? "read" : "write";
        if (deleting)
            return ns_error_set(err, NS_EFORBIDDEN, "",
                                "this token writes runs matching '%s'; DELETE needs the admin "
                                "scope",
                                grant->pattern);
        if (run[0] == '\0')
            return ns_error_set(err, NS_EFORBIDDEN, "",
                                "this token writes runs matching '%s'; this route needs the read "
                                "scope",
                                grant->pattern);
        return ns_error_set(err, NS_EFORBIDDEN, "",
                            "this token writes runs matching '%s', not run '%s'; %s it needs the "
                            "%s scope",
                            grant->pattern, run, reading ? "reading" : "writing",
                            reading ? "read" : "write");
    }
    *need = "admin";
    return ns_error_set(err, NS_EFORBIDDEN, "", "this token has no scope");
}
