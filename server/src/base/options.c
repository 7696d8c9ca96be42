/* options.c - parse normstatd's flags and NORMSTAT_* variables, print --help; all from options.def.
 */
#include "options.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <normstat/wire_errors.h>

#include "log.h"

enum { T_ADDR, T_PATH, T_BOOL, T_INT, T_SIZE, T_LEVEL, T_ACTION, T_URL };

typedef struct option_row_s {
    const char *flag;
    const char *env;
    const char *def;
    const char *metavar;
    int type;
    uint64_t min, max;
    const char *help;
    size_t offset;
} option_row_t;

static const option_row_t rows[] = {
#define NSD_OPTION(id, flag, env, def, metavar, type, min, max, help)                              \
    {flag,                                                                                         \
     env,                                                                                          \
     def,                                                                                          \
     metavar,                                                                                      \
     T_##type,                                                                                     \
     (uint64_t)(min),                                                                              \
     (uint64_t)(max),                                                                              \
     help,                                                                                         \
     offsetof(nsd_options_t, id)},
#include "options.def"
#undef NSD_OPTION
};
#define N_ROWS (sizeof(rows) / sizeof(rows[0]))

/* An option error: one line naming the flag or variable, in 'err'. */
#define fail(err, ...) ns_error_set((err), NS_EINVAL, "", __VA_ARGS__)

int nsd_options_parse_size(const char *src, uint64_t *dst)
{
    if (!isdigit((unsigned char)src[0]))
        return NS_EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(src, &end, 10);
    if (errno != 0)
        return NS_EINVAL;
    unsigned shift = 0;
    switch (*end) {
    case '\0':
        break;
    case 'k':
    case 'K':
        shift = 10;
        break;
    case 'm':
    case 'M':
        shift = 20;
        break;
    case 'g':
    case 'G':
        shift = 30;
        break;
    case 't':
    case 'T':
        shift = 40;
        break;
    default:
        return NS_EINVAL;
    }
    if (shift != 0) {
        end++;
        if (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)
            end += strlen(end);
    }
    if (*end != '\0')
        return NS_EINVAL;
    if (shift != 0 && v > (UINT64_MAX >> shift))
        return NS_EINVAL;
    *dst = (uint64_t)v << shift;
    return 0;
}

static int valid_hostname(const char *s)
{
    if (s[0] == '\0')
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_')
            return 0;
    return 1;
}

int nsd_options_parse_addr(const char *src, nsd_addr_t *dst)
{
    const char *colon = strrchr(src, ':');
    if (colon == NULL || colon == src)
        return NS_EINVAL;
    size_t host_len = (size_t)(colon - src);
    char host[sizeof(dst->host)];
    if (src[0] == '[') {
        /* [v6]:port */
        if (host_len < 3 || src[host_len - 1] != ']')
            return NS_EINVAL;
        host_len -= 2;
        if (host_len >= sizeof(host))
            return NS_EINVAL;
        memcpy(host, src + 1, host_len);
        host[host_len] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return NS_EINVAL;
    } else {
        if (host_len >= sizeof(host))
            return NS_EINVAL;
        memcpy(host, src, host_len);
        host[host_len] = '\0';
        if (!valid_hostname(host))
            return NS_EINVAL;
    }
    const char *p = colon + 1;
    if (!isdigit((unsigned char)p[0]) || strlen(p) > 5)
        return NS_EINVAL;
    char *end;
    unsigned long port = strtoul(p, &end, 10);
    if (*end != '\0' || port > 65535)
        return NS_EINVAL;
    memcpy(dst->host, host, host_len + 1);
    dst->port = (uint16_t)port;
    return 0;
}

static int parse_bool(const char *s, int *dst)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off", ""};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        if (strcmp(s, yes[i]) == 0)
            return *dst = 1, 0;
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (strcmp(s, no[i]) == 0)
            return *dst = 0, 0;
    return NS_EINVAL;
}

/* Store 'value' into the field of 'row'; 'who' names the flag or variable in errors. */
static int set_value(nsd_options_t *dst, const option_row_t *row, const char *value,
                     const char *who, ns_error_detail_t *err)
{
    void *field = (char *)dst + row->offset;
    switch (row->type) {
    case T_ADDR:
        if (nsd_options_parse_addr(value, field) != 0)
            return fail(err, "%s: expected HOST:PORT (e.g. 127.0.0.1:8750), got '%s'", who, value);
        return 0;
    case T_PATH: {
        size_t len = strlen(value);
        if (len >= sizeof(nsd_path_t))
            return fail(err, "%s: path longer than %zu bytes", who, sizeof(nsd_path_t) - 1);
        memcpy(field, value, len + 1);
        return 0;
    }
    case T_BOOL:
        if (parse_bool(value, field) != 0)
            return fail(err, "%s: expected true or false, got '%s'", who, value);
        return 0;
    case T_INT: {
        char *end;
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (value[0] == '\0' || isspace((unsigned char)value[0]) || *end != '\0' || errno != 0 ||
            v < (long long)row->min || (v >= 0 && (uint64_t)v > row->max))
            /* An INT's min may be negative (-1 for "not given"). */
            return fail(err, "%s: expected an integer in %lld..%llu, got '%s'", who,
                        (long long)row->min, (unsigned long long)row->max, value);
        *(int64_t *)field = v;
        return 0;
    }
    case T_SIZE: {
        uint64_t v;
        if (nsd_options_parse_size(value, &v) != 0 || v < row->min || v > row->max)
            return fail(err,
                        "%s: expected a size in bytes with an optional K, M or G suffix "
                        "(%llu..%llu), got '%s'",
                        who, (unsigned long long)row->min, (unsigned long long)row->max, value);
        *(uint64_t *)field = v;
        return 0;
    }
    case T_LEVEL: {
        int level = nsd_log_level_parse(value);
        if (level < 0)
            return fail(err, "%s: expected debug, info, warn or error, got '%s'", who, value);
        *(int *)field = level;
        return 0;
    }
    case T_URL: {
        nsd_url_t *u = field;
        size_t len = strlen(value);
        if (len >= sizeof(u->url))
            return fail(err, "%s: URL longer than %zu bytes", who, sizeof(u->url) - 1);
        memcpy(u->url, value, len + 1);
        return 0;
    }
    default:
        return 0;
    }
}

static const char *env_lookup(char *const envp[], const char *name)
{
    if (envp == NULL || name == NULL)
        return NULL;
    size_t len = strlen(name);
    for (size_t i = 0; envp[i] != NULL; i++)
        if (strncmp(envp[i], name, len) == 0 && envp[i][len] == '=')
            return envp[i] + len + 1;
    return NULL;
}

int nsd_options_parse(nsd_options_t *dst, int argc, char *const argv[], char *const envp[],
                      ns_error_detail_t *err)
{
    memset(dst, 0, sizeof(*dst));
    for (size_t i = 0; i < N_ROWS; i++) {
        const option_row_t *row = &rows[i];
        if (row->type == T_ACTION || row->type == T_URL)
            continue;
        char who[96];
        snprintf(who, sizeof(who), "default of --%s", row->flag);
        if (row->def[0] != '\0' || row->type == T_PATH)
            if (set_value(dst, row, row->def, who, err) != 0)
                return NS_EINVAL;
    }
    for (size_t i = 0; i < N_ROWS; i++) {
        const char *value = env_lookup(envp, rows[i].env);
        if (value != NULL && set_value(dst, &rows[i], value, rows[i].env, err) != 0)
            return NS_EINVAL;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "-h") == 0)
            arg = "--help";
        else if (strcmp(arg, "-V") == 0)
            arg = "--version";
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return fail(err, "unexpected argument '%s' (see --help)", arg);
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const option_row_t *row = NULL;
        for (size_t i = 0; i < N_ROWS; i++)
            if (strlen(rows[i].flag) == name_len && strncmp(rows[i].flag, name, name_len) == 0)
                row = &rows[i];
        if (row == NULL)
            return fail(err, "unknown option '--%.*s' (see --help)", (int)name_len, name);
        char who[96];
        snprintf(who, sizeof(who), "--%s", row->flag);
        void *field = (char *)dst + row->offset;
        const char *value = eq ? eq + 1 : NULL;
        switch (row->type) {
        case T_ACTION:
            if (value != NULL)
                return fail(err, "%s takes no value", who);
            *(int *)field = 1;
            continue;
        case T_BOOL:
            /* "--no-persist" alone means true; "--no-persist=false" is accepted too. */
            if (set_value(dst, row, value ? value : "true", who, err) != 0)
                return NS_EINVAL;
            continue;
        case T_URL:
            ((nsd_url_t *)field)->set = 1;
            if (value == NULL && a + 1 < argc && strncmp(argv[a + 1], "-", 1) != 0)
                value = argv[++a];
            if (value != NULL && set_value(dst, row, value, who, err) != 0)
                return NS_EINVAL;
            continue;
        default:
            if (value == NULL) {
                if (a + 1 >= argc)
                    return fail(err, "%s needs a value (%s)", who, row->metavar);
                value = argv[++a];
            }
            if (set_value(dst, row, value, who, err) != 0)
                return NS_EINVAL;
        }
    }
    return 0;
}

void nsd_options_help(FILE *out, const char *prog)
{
    fprintf(out,
            "Usage: %s [OPTION]...\n"
            "normstatd serves synchronized and population BatchNorm statistics over HTTP.\n\n"
            "Every option may also be set by its environment variable; flags win.\n\n",
            prog);
    for (size_t i = 0; i < N_ROWS; i++) {
        const option_row_t *row = &rows[i];
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", row->flag, row->metavar[0] ? " " : "",
                 row->metavar);
        fprintf(out, "  %-28s %s\n", left, row->help);
        if (row->env != NULL) {
            if (row->def[0] != '\0')
                fprintf(out, "  %-28s [%s, default %s]\n", "", row->env, row->def);
            else
                fprintf(out, "  %-28s [%s]\n", "", row->env);
        }
    }
}
