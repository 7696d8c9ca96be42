/* auth.c - bearer-token authentication: load the token, judge Authorization headers. */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <normstat/wire_errors.h>

/* A token is one or more visible ASCII characters (RFC 6750's b64token and more). */
static int valid_token(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

int nsd_auth_load(nsd_auth_t *dst, const nsd_options_t *opts, ns_error_detail_t *err)
{
    memset(dst, 0, sizeof(*dst));
    const char *file = opts->auth_token_file;
    if (file[0] != '\0' && opts->auth_token[0] != '\0') {
        return ns_error_set(err, NS_EINVAL, "",
                            "set either --auth-token-file or --auth-token (NORMSTAT_AUTH_TOKEN)"
                            ", not both");
    }
    const char *who = "--auth-token";
    if (file[0] != '\0') {
        who = "--auth-token-file";
        FILE *f = fopen(file, "r");
        if (f == NULL) {
            return ns_error_set(err, NS_EINVAL, "--auth-token-file", "cannot open '%s': %s", file,
                                strerror(errno));
        }
        dst->len = fread(dst->token, 1, sizeof(dst->token), f);
        int bad = ferror(f) || dst->len == sizeof(dst->token);
        fclose(f);
        if (bad) {
            memset(dst, 0, sizeof(*dst));
            return ns_error_set(err, NS_EINVAL, "--auth-token-file",
                                "cannot read '%s' (or longer than %zu bytes)", file,
                                sizeof(dst->token) - 1);
        }
        dst->token[dst->len] = '\0';
        if (dst->len > 0 && dst->token[dst->len - 1] == '\n')
            dst->token[--dst->len] = '\0';
        if (dst->len > 0 && dst->token[dst->len - 1] == '\r')
            dst->token[--dst->len] = '\0';
    } else if (opts->auth_token[0] != '\0') {
        dst->len = strlen(opts->auth_token);
        memcpy(dst->token, opts->auth_token, dst->len + 1);
    } else {
        return 0;
    }
    if (!valid_token(dst->token, dst->len)) {
        memset(dst, 0, sizeof(*dst));
        return ns_error_set(err, NS_EINVAL, who,
                            "the token must be visible ASCII without spaces, not empty");
    }
    return 0;
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

int nsd_auth_check(const nsd_auth_t *auth, const char *header)
{
    if (auth == NULL || auth->len == 0)
        return 0;
    if (header == NULL || strncasecmp(header, "Bearer ", 7) != 0)
        return NS_EUNAUTHORIZED;
    const char *given = header + 7;
    while (*given == ' ')
        given++;
    size_t len = strlen(given);
    while (len > 0 && (given[len - 1] == ' ' || given[len - 1] == '\t'))
        len--;
    if (!valid_token(given, len))
        return NS_EUNAUTHORIZED;
    /* Every byte of the expected token is visited whatever the given one
     * holds, so the time taken tells nothing of where they differ. */
    unsigned char diff = (unsigned char)(len != auth->len);
    for (size_t i = 0; i < auth->len; i++)
        diff |= (unsigned char)(auth->token[i] ^ (i < len ? given[i] : 0));
    volatile unsigned char sink = diff;
    return sink == 0 ? 0 : NS_EFORBIDDEN;
}
