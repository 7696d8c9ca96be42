/* print.c - how the normstat tool shows answers: JSON, tables, key: value. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

void ns_cli_print_json(const char *src, size_t src_len)
{
    json_t *root = json_loadb(src ? src : "", src_len, 0, NULL);
    if (root == NULL) {
        fwrite(src ? src : "", 1, src_len, stdout);
        putchar('\n');
        return;
    }
    json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    putchar('\n');
    json_decref(root);
}

/* A few values of an array into 'dst', enough to recognise it on a terminal. */
static void format_values(char *dst, size_t dst_cap, const float *v, size_t n)
{
    size_t shown = n < 4 ? n : 4, at = 0;
    dst[0] = '\0';
    for (size_t c = 0; c < shown && at < dst_cap; c++)
        at += (size_t)snprintf(dst + at, dst_cap - at, "%s%.6g", c ? " " : "", (double)v[c]);
    if (n > shown && at < dst_cap)
        snprintf(dst + at, dst_cap - at, " ...");
}

/* An integer cell: "-" for a field the answer does not carry (-1). */
static const char *int_cell(char *dst, size_t dst_cap, int64_t v)
{
    if (v < 0)
        snprintf(dst, dst_cap, "-");
    else
        snprintf(dst, dst_cap, "%lld", (long long)v);
    return dst;
}

void ns_cli_print_result(const ns_result_t *res)
{
    char mean[96], var[96], count[24], batches[24], step[24];
    printf("%-40s %8s %12s %12s %8s  %-34s %s\n", "LAYER", "CHANNELS", "COUNT", "BATCHES", "STEP",
           "MEAN", "VAR");
    for (size_t i = 0; i < ns_result_count(res); i++) {
        const ns_result_layer_t *l = ns_result_at(res, i);
        format_values(mean, sizeof(mean), l->mean, l->mean ? l->channels : 0);
        format_values(var, sizeof(var), l->var, l->var ? l->channels : 0);
        printf("%-40s %8zu %12s %12s %8s  %-34s %s\n", l->name, l->channels,
               int_cell(count, sizeof(count), l->count),
               int_cell(batches, sizeof(batches), l->num_batches),
               int_cell(step, sizeof(step), l->step), mean, var);
    }
}

void ns_cli_print_object(const json_t *obj, int indent)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (json_is_object(v)) {
            printf("%*s%s:\n", indent, "", key);
            ns_cli_print_object(v, indent + 2);
            continue;
        }
        printf("%*s%s: ", indent, "", key);
        if (json_is_string(v)) {
            printf("%s\n", json_string_value(v));
        } else {
            char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(9));
            printf("%s\n", text ? text : "?");
            free(text);
        }
    }
}
