/* json_load.c - parse a request body with jansson, naming the field when a
 * number is too big for an integer. */
#include "proto_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* Depth-first search for the first integral real of magnitude >= 2^63 in a
 * tree parsed with JSON_DECODE_INT_AS_REAL; writes its JSON path. */
static int find_big_integer(const json_t *v, char *path, size_t path_cap)
{
    size_t len = strlen(path);
    if (json_is_real(v)) {
        double x = json_real_value(v);
        return fabs(x) >= 0x1p63 && x == floor(x);
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *member;
        json_object_foreach((json_t *)v, key, member) {
            snprintf(path + len, path_cap - len, "%s%s", len ? "." : "", key);
            if (find_big_integer(member, path, path_cap))
                return 1;
            path[len] = '\0';
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            snprintf(path + len, path_cap - len, "[%zu]", i);
            if (find_big_integer(json_array_get(v, i), path, path_cap))
                return 1;
            path[len] = '\0';
        }
    }
    return 0;
}

int ns__json_load(json_t **dst, const char *src, size_t src_len, ns_error_detail_t *err)
{
    json_error_t jerr;
    *dst = json_loadb(src ? src : "", src ? src_len : 0, JSON_REJECT_DUPLICATES, &jerr);
    if (*dst)
        return 0;
    if (strstr(jerr.text, "too big integer")) {
        /* jansson's message has no field; parse again with every number as
         * a real to find which one it was. */
        json_t *reals = json_loadb(src, src_len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL,
                                   NULL);
        char path[256] = "";
        int found = reals && find_big_integer(reals, path, sizeof(path));
        json_decref(reals);
        if (found)
            return ns_error_set(err, NS_EINVAL, path, "integer out of range");
    }
    return ns_error_set(err, NS_EINVAL, "", "invalid JSON at line %d, column %d: %s", jerr.line,
                        jerr.column, jerr.text);
}
