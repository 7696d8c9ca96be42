/* mixture.c - the mixture query of GET /stats: "a:0.7,b:0.3". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "proto_internal.h"

/* A weight: plain decimal ("0.7", "1", "2.5e-1"); no sign, hex, inf or nan. */
static int parse_weight(const char *s, size_t len, double *out)
{
    char text[64];
    if (len == 0 || len >= sizeof(text) || strspn(s, "0123456789.eE+-") < len ||
        (!(s[0] >= '0' && s[0] <= '9') && s[0] != '.'))
        return -1;
    memcpy(text, s, len);
    text[len] = '\0';
    char *end;
    double w = strtod(text, &end);
    if (*end != '\0' || !isfinite(w) || w < 0)
        return -1;
    *out = w;
    return 0;
}

int ns_mixture_parse(ns_mixture_weight_t *dst, size_t dst_cap, size_t *dst_len, const char *src,
                     ns_error_detail_t *err)
{
    size_t n = 0;
    int positive = 0;
    *dst_len = 0;
    if (!src || !src[0])
        return ns_error_set(err, NS_EINVAL, "mixture", "expected domain:weight[,domain:weight...]");
    for (const char *p = src;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        /* Names may contain ':', so the weight follows the last one. */
        const char *colon = NULL;
        for (size_t i = len; i > 0 && !colon; i--)
            if (p[i - 1] == ':')
                colon = p + i - 1;
        if (!colon)
            return ns_error_set(err, NS_EINVAL, "mixture", "\"%.*s\": expected domain:weight",
                                (int)(len < 140 ? len : 140), p);
        size_t name_len = (size_t)(colon - p);
        if (name_len < 1 || name_len > NS_NAME_MAX)
            return ns_error_set(err, NS_EINVAL, "mixture", "\"%.*s\": invalid domain name",
                                (int)(len < 140 ? len : 140), p);
        if (n == dst_cap)
            return ns_error_set(err, NS_EINVAL, "mixture", "more than %zu domains", dst_cap);
        ns_mixture_weight_t *w = &dst[n];
        memcpy(w->domain, p, name_len);
        w->domain[name_len] = '\0';
        if (!ns_name_valid(w->domain))
            return ns_error_set(err, NS_EINVAL, "mixture", "\"%s\": invalid domain name",
                                w->domain);
        for (size_t i = 0; i < n; i++)
            if (strcmp(dst[i].domain, w->domain) == 0)
                return ns_error_set(err, NS_EINVAL, "mixture", "\"%s\" appears twice", w->domain);
        if (parse_weight(colon + 1, len - name_len - 1, &w->weight))
            return ns_error_set(err, NS_EINVAL, "mixture",
                                "\"%s\": weight must be a finite number >= 0", w->domain);
        positive |= w->weight > 0;
        n++;
        if (!comma)
            break;
        p = comma + 1;
    }
    if (!positive)
        return ns_error_set(err, NS_EINVAL, "mixture", "at least one weight must be > 0");
    *dst_len = n;
    return 0;
}
