/* drift.c - `normstat drift` and `normstat history`: how far a run's EMA is
 * from PreciseBN per layer now, and one layer's last steps for a channel
 * (GET /v1/runs/{run}/drift and /history). Tables on a terminal, the
 * server's JSON otherwise. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* A number of the answer, "-" when it is null (a drift not yet defined). */
static void print_number(const json_t *v, int width)
{
    if (json_is_number(v))
        printf(" %*.6g", width, json_number_value(v));
    else
        printf(" %*s", width, "-");
}

static void print_drift_rows(const json_t *root)
{
    printf("%-32s %-12s %8s %8s %8s %12s %12s %8s %12s\n", "LAYER", "DOMAIN", "CHANNELS", "STEP",
           "NBT", "MEAN_MAX", "MEAN_AVG", "CHANNEL", "VAR_MAX");
    size_t i;
    json_t *row;
    json_array_foreach(json_object_get(root, "layers"), i, row)
    {
        const json_t *d = json_object_get(row, "drift");
        printf("%-32s %-12s %8lld %8lld %8lld", json_string_value(json_object_get(row, "layer")),
               json_string_value(json_object_get(row, "domain")),
               (long long)json_integer_value(json_object_get(row, "channels")),
               (long long)json_integer_value(json_object_get(row, "last_step")),
               (long long)json_integer_value(json_object_get(row, "num_batches_tracked")));
        print_number(json_object_get(d, "mean_max"), 12);
        print_number(json_object_get(d, "mean_avg"), 12);
        print_number(json_object_get(d, "mean_max_channel"), 8);
        print_number(json_object_get(d, "var_max"), 12);
        printf("\n");
    }
}

static void print_history(const json_t *root)
{
    const json_t *pop = json_object_get(root, "population");
    printf("run %s, layer %s, domain %s, channel %lld of %lld; PreciseBN now: mean",
           json_string_value(json_object_get(root, "run")),
           json_string_value(json_object_get(root, "layer")),
           json_string_value(json_object_get(root, "domain")),
           (long long)json_integer_value(json_object_get(root, "channel")),
           (long long)json_integer_value(json_object_get(root, "channels")));
    print_number(json_object_get(pop, "mean"), 0);
    printf(", var");
    print_number(json_object_get(pop, "var"), 0);
    printf("\n%8s %10s %12s %12s %12s %12s %12s\n", "STEP", "COUNT", "BATCH_MEAN", "BATCH_VAR",
           "EMA_MEAN", "EMA_VAR", "DRIFT_MAX");
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(root, "steps"), i, s)
    {
        printf("%8lld %10lld", (long long)json_integer_value(json_object_get(s, "step")),
               (long long)json_integer_value(json_object_get(s, "count")));
        static const char *const keys[] = {"batch_mean", "batch_var", "ema_mean", "ema_var"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            print_number(json_object_get(s, keys[k]), 12);
        print_number(json_object_get(json_object_get(s, "drift"), "mean_max"), 12);
        printf("\n");
    }
}

/* Print a fetched answer (JSON, or a table by 'table'), free it. @return 0. */
static int print_answer(const ns_cli_t *cli, ns_buf_t *body, void (*table)(const json_t *))
{
    if (cli->json) {
        ns_cli_print_json(body->data, body->len);
    } else {
        json_t *root = json_loadb(body->data ? body->data : "", body->len, 0, NULL);
        table(root);
        json_decref(root);
    }
    ns_buf_free(body);
    return 0;
}

int ns_cli_cmd_drift(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[9];
    const char *run = NULL, *domain = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc)
            domain = argv[++i];
        else if (argv[i][0] == '-')
            return ns_cli_usage(me, "unknown option or missing value '%s'", argv[i]);
        else if (run != NULL)
            return ns_cli_usage(me, "unexpected argument '%s'", argv[i]);
        else
            run = argv[i];
    }
    if (run == NULL)
        return ns_cli_usage(me, "needs a run");
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc = ns_client_drift(cli->client, run, domain, &body, &err);
    if (rc) {
        ns_buf_free(&body);
        return ns_cli_fail("drift", rc, &err);
    }
    return print_answer(cli, &body, print_drift_rows);
}

int ns_cli_cmd_history(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[10];
    const char *run = NULL, *layer = NULL, *domain = NULL;
    long channel = -1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--domain") == 0 && i + 1 < argc) {
            domain = argv[++i];
        } else if (strcmp(argv[i], "--channel") == 0 && i + 1 < argc) {
            char *end;
            errno = 0;
            const char *v = argv[++i];
            channel = strtol(v, &end, 10);
            if (errno || *end || end == v || channel < 0)
                return ns_cli_usage(me, "--channel: '%s' is not an integer >= 0", v);
        } else if (argv[i][0] == '-') {
            return ns_cli_usage(me, "unknown option or missing value '%s'", argv[i]);
        } else if (run == NULL) {
            run = argv[i];
        } else if (layer == NULL) {
            layer = argv[i];
        } else {
            return ns_cli_usage(me, "unexpected argument '%s'", argv[i]);
        }
    }
    if (layer == NULL)
        return ns_cli_usage(me, "needs a run and a layer");
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc = ns_client_history(cli->client, run, layer, domain, channel, &body, &err);
    if (rc) {
        ns_buf_free(&body);
        return ns_cli_fail("history", rc, &err);
    }
    return print_answer(cli, &body, print_history);
}
