/* commands.c - the commands of the normstat tool, one function each. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* argv[*i] is 'name' with a value after it: returns the value, or NULL
 * (and leaves *i) when argv[*i] is not 'name'. *missing is set when the
 * value is absent. */
static const char *opt(int argc, char **argv, int *i, const char *name, int *missing)
{
    if (strcmp(argv[*i], name) != 0)
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int read_file(const char *path, ns_buf_t *dst)
{
    char chunk[65536];
    size_t n;
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "normstat: %s: %s\n", path, strerror(errno));
        return NS_EXIT_USAGE;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (ns_buf_append(dst, chunk, n)) {
            fclose(f);
            fprintf(stderr, "normstat: %s: out of memory\n", path);
            return NS_EXIT_USAGE;
        }
    fclose(f);
    return 0;
}

static int write_file(const char *path, const ns_buf_t *src)
{
    FILE *f = strcmp(path, "-") == 0 ? stdout : fopen(path, "wb");
    int ok = f != NULL && fwrite(src->data ? src->data : "", 1, src->len, f) == src->len;
    if (f != NULL && f != stdout && fclose(f) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "normstat: %s: %s\n", path, strerror(errno));
        return NS_EXIT_USAGE;
    }
    return 0;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A client call that fetched a body failed: free what arrived, report it.
 * @return the exit code. */
static int fetch_failed(const char *what, int rc, ns_buf_t *body, const ns_error_detail_t *err)
{
    ns_buf_free(body);
    return ns_cli_fail(what, rc, err);
}

/* The answer as JSON (NULL when it does not parse; jansson accepts NULL). */
static json_t *body_json(const ns_buf_t *body)
{
    return json_loadb(body->data ? body->data : "", body->len, 0, NULL);
}

/* ---------------------------------------------------------------- run */

static int parse_uint(const char *s, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    if (s[0] == '-' || s[0] == '\0')
        return -1;
    *out = strtoull(s, &end, 10);
    return (errno || *end || *out > max) ? -1 : 0;
}

static int run_create(ns_cli_t *cli, const ns_cli_command_t *me, const char *run, int argc,
                      char **argv)
{
    ns_run_config_t cfg;
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    unsigned long long u;
    int created = 0, rc, missing = 0;
    const char *v;
    ns_run_config_defaults(&cfg);
    for (int i = 0; i < argc; i++) {
        if ((v = opt(argc, argv, &i, "--world-size", &missing))) {
            if (parse_uint(v, 4294967295ULL, &u) || u == 0)
                return ns_cli_usage(me, "--world-size: '%s' is not an integer >= 1", v);
            cfg.has_world_size = 1;
            cfg.world_size = (uint32_t)u;
        } else if ((v = opt(argc, argv, &i, "--momentum", &missing))) {
            char *end;
            cfg.has_momentum = 1;
            if (strcmp(v, "null") == 0 || strcmp(v, "none") == 0) {
                cfg.momentum = NS_MOMENTUM_CUMULATIVE;
            } else {
                errno = 0;
                cfg.momentum = strtod(v, &end);
                if (errno || *end || end == v || !(cfg.momentum >= 0 && cfg.momentum <= 1))
                    return ns_cli_usage(me, "--momentum: '%s' is not in [0, 1] or null", v);
            }
        } else if ((v = opt(argc, argv, &i, "--sync-timeout-ms", &missing))) {
            if (parse_uint(v, UINT64_MAX, &u) || u == 0)
                return ns_cli_usage(me, "--sync-timeout-ms: '%s' is not an integer >= 1", v);
            cfg.has_sync_timeout_ms = 1;
            cfg.sync_timeout_ms = u;
        } else if ((v = opt(argc, argv, &i, "--on-timeout", &missing))) {
            if (strcmp(v, "partial") != 0 && strcmp(v, "drop") != 0)
                return ns_cli_usage(me, "--on-timeout: '%s' is neither partial nor drop", v);
            cfg.has_on_timeout = 1;
            cfg.on_timeout_drop = strcmp(v, "drop") == 0;
        } else if (strcmp(argv[i], "--ema-debias") == 0) {
            cfg.has_ema_debias = 1;
            cfg.ema_debias = 1;
        } else if (strcmp(argv[i], "--no-ema-debias") == 0) {
            cfg.has_ema_debias = 1;
            cfg.ema_debias = 0;
        } else {
            return ns_cli_usage(me, missing ? "%s needs a value" : "unknown option '%s'", argv[i]);
        }
        if (missing)
            return ns_cli_usage(me, "%s needs a value", argv[i]);
    }
    if (missing)
        return ns_cli_usage(me, "an option needs a value");
    if ((rc = ns_client_run_put(cli->client, run, &cfg, &created, &body, &err)))
        return fetch_failed("run create", rc, &body, &err);
    if (cli->json) {
        ns_cli_print_json(body.data, body.len);
    } else {
        json_t *root = body_json(&body);
        printf("%s run %s\n", created ? "created" : "updated", run);
        ns_cli_print_object(json_object_get(root, "config"), 2);
        json_decref(root);
    }
    ns_buf_free(&body);
    return 0;
}

static int cmd_run(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[1];
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc;
    if (argc < 2)
        return ns_cli_usage(me, "needs a subcommand and a run");
    const char *sub = argv[0], *run = argv[1];
    if (strcmp(sub, "create") == 0)
        return run_create(cli, me, run, argc - 2, argv + 2);
    if (argc > 2)
        return ns_cli_usage(me, "unexpected argument '%s'", argv[2]);
    if (strcmp(sub, "show") == 0) {
        if ((rc = ns_client_run_get(cli->client, run, &body, &err)))
            return fetch_failed("run show", rc, &body, &err);
        if (cli->json) {
            ns_cli_print_json(body.data, body.len);
        } else {
            json_t *root = body_json(&body);
            ns_cli_print_object(root, 0);
            json_decref(root);
        }
        ns_buf_free(&body);
        return 0;
    }
    if (strcmp(sub, "delete") == 0) {
        if ((rc = ns_client_run_delete(cli->client, run, &err)))
            return ns_cli_fail("run delete", rc, &err);
        if (cli->json)
            printf("{\"deleted\":\"%s\"}\n", run);
        else
            printf("deleted run %s\n", run);
        return 0;
    }
    return ns_cli_usage(me, "unknown subcommand '%s'", sub);
}

/* ---------------------------------------------------------------- report */

/* JSON when the first non-blank byte is '{', safetensors when the name says
 * so or the first 8 bytes are a header length that fits the file. */
static int sniff_format(const char *path, const ns_buf_t *b, ns_format_t *format)
{
    const unsigned char *p = (const unsigned char *)b->data;
    size_t i = 0;
    while (i < b->len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\r' || p[i] == '\n'))
        i++;
    if (i < b->len && p[i] == '{') {
        *format = NS_FORMAT_JSON;
        return 0;
    }
    if (has_suffix(path, ".safetensors") || b->len >= 9) {
        uint64_t h = 0;
        for (int k = 7; b->len >= 8 && k >= 0; k--)
            h = (h << 8) | p[k];
        if (has_suffix(path, ".safetensors") || (h <= b->len - 8 && p[8] == '{')) {
            *format = NS_FORMAT_SAFETENSORS;
            return 0;
        }
    }
    return -1;
}

static int cmd_report(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[2];
    const char *run = NULL, *path = NULL;
    int sync = 0, rc;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--sync") == 0)
            sync = 1;
        else if (argv[i][0] == '-' && argv[i][1])
            return ns_cli_usage(me, "unknown option '%s'", argv[i]);
        else if (run == NULL)
            run = argv[i];
        else if (path == NULL)
            path = argv[i];
        else
            return ns_cli_usage(me, "unexpected argument '%s'", argv[i]);
    }
    if (path == NULL)
        return ns_cli_usage(me, "needs a run and a file");
    ns_buf_t file = {0};
    ns_format_t format;
    if ((rc = read_file(path, &file)))
        return rc;
    if (sniff_format(path, &file, &format)) {
        ns_buf_free(&file);
        fprintf(stderr, "normstat: %s: neither a JSON nor a safetensors report\n", path);
        return NS_EXIT_USAGE;
    }
    ns_error_detail_t err = {0};
    if (!sync) {
        rc = ns_client_report_raw(cli->client, run, file.data, file.len, format, &err);
        ns_buf_free(&file);
        if (rc)
            return ns_cli_fail("report", rc, &err);
        if (cli->json)
            printf("{\"accepted\":true}\n");
        else
            printf("accepted\n");
        return 0;
    }
    /* /sync takes a decoded report: decode it here, so a bad file is a usage
     * error with the server's own message format. */
    ns_report_t *report = NULL;
    if (format == NS_FORMAT_JSON)
        rc = ns_report_decode_json(&report, file.data, file.len, &err);
    else
        rc = ns_report_decode_safetensors(&report, (const uint8_t *)file.data, file.len, &err);
    ns_buf_free(&file);
    if (rc) {
        fprintf(stderr, "normstat: %s: %s\n", path, err.message);
        return NS_EXIT_USAGE;
    }
    report->unbiased = 0; /* decoding converted var to biased */
    ns_result_t *res = NULL;
    rc = ns_client_sync(cli->client, run, report, NS_FORMAT_SAFETENSORS, &res, &err);
    ns_report_free(report);
    if (rc)
        return ns_cli_fail("report --sync", rc, &err);
    if (cli->json) {
        printf("{\"step\":%lld,\"complete\":%s,\"workers\":%lld,\"layers\":{",
               (long long)ns_result_step(res), ns_result_complete(res) ? "true" : "false",
               (long long)ns_result_workers(res));
        for (size_t l = 0; l < ns_result_count(res); l++) {
            const ns_result_layer_t *L = ns_result_at(res, l);
            printf("%s\"%s\":{\"count\":%lld,\"mean\":[", l ? "," : "", L->name,
                   (long long)L->count);
            for (size_t c = 0; c < L->channels; c++)
                printf(c ? ",%.9g" : "%.9g", (double)L->mean[c]);
            printf("],\"var\":[");
            for (size_t c = 0; c < L->channels; c++)
                printf(c ? ",%.9g" : "%.9g", (double)L->var[c]);
            printf("]}");
        }
        printf("}}\n");
    } else {
        printf("step %lld: %s, %lld workers\n", (long long)ns_result_step(res),
               ns_result_complete(res) ? "complete" : "partial", (long long)ns_result_workers(res));
        ns_cli_print_result(res);
    }
    ns_result_free(res);
    return 0;
}

/* ---------------------------------------------------------------- stats */

/* An argument that no option of 'me' took: the run, or a usage error (an
 * option without its value, an unknown option, a second run).
 * @return 0 or the exit code. */
static int take_run(const ns_cli_command_t *me, const char *arg, int missing, const char **run)
{
    if (missing)
        return ns_cli_usage(me, "%s needs a value", arg);
    if (arg[0] == '-')
        return ns_cli_usage(me, "unknown option '%s'", arg);
    if (*run != NULL)
        return ns_cli_usage(me, "unexpected argument '%s'", arg);
    *run = arg;
    return 0;
}

static int cmd_stats(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[3];
    ns_stats_query_t q = {0};
    const char *run = NULL, *out = NULL, *v;
    int missing = 0, rc;
    for (int i = 0; i < argc; i++) {
        if ((v = opt(argc, argv, &i, "--source", &missing)))
            q.source = v;
        else if ((v = opt(argc, argv, &i, "--domain", &missing)))
            q.domain = v;
        else if ((v = opt(argc, argv, &i, "--mixture", &missing)))
            q.mixture = v;
        else if ((v = opt(argc, argv, &i, "--layers", &missing)))
            q.layers = v;
        else if ((v = opt(argc, argv, &i, "--variance", &missing))) {
            if (strcmp(v, "biased") != 0 && strcmp(v, "unbiased") != 0)
                return ns_cli_usage(me, "--variance: '%s' is neither biased nor unbiased", v);
            q.variance_biased = strcmp(v, "biased") == 0;
        } else if ((v = opt(argc, argv, &i, "-o", &missing)) ||
                   (v = opt(argc, argv, &i, "--output", &missing)))
            out = v;
        else if ((rc = take_run(me, argv[i], missing, &run)))
            return rc;
    }
    if (run == NULL)
        return ns_cli_usage(me, "needs a run");
    /* JSON unless -o names a safetensors file: the table is read from the
     * JSON answer, which also carries each layer's step (the safetensors one
     * is state_dict keys only). */
    ns_format_t format = NS_FORMAT_JSON;
    if (out) {
        if (!has_suffix(out, ".json") && !has_suffix(out, ".safetensors"))
            return ns_cli_usage(me, "-o: '%s' must end in .safetensors or .json", out);
        if (has_suffix(out, ".safetensors"))
            format = NS_FORMAT_SAFETENSORS;
    }
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    if ((rc = ns_client_stats_fetch(cli->client, run, &q, format, &body, &err)))
        return fetch_failed("stats", rc, &body, &err);
    if (out) {
        rc = write_file(out, &body);
        ns_buf_free(&body);
        return rc;
    }
    if (cli->json) {
        ns_cli_print_json(body.data, body.len);
        ns_buf_free(&body);
        return 0;
    }
    ns_result_t *res = NULL;
    if ((rc = ns_result_decode(&res, NS_FORMAT_JSON, body.data, body.len, &err)))
        return fetch_failed("stats", rc, &body, &err);
    ns_buf_free(&body);
    printf("run %s, source %s, domain %s, step %lld\n", run, q.source ? q.source : "ema",
           q.mixture  ? q.mixture
           : q.domain ? q.domain
                      : "*",
           (long long)ns_result_step(res));
    ns_cli_print_result(res);
    ns_result_free(res);
    return 0;
}

/* ---------------------------------------------------------------- precise-reset */

static int cmd_precise_reset(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[4];
    const char *run = NULL, *domain = NULL, *v;
    int missing = 0, rc;
    for (int i = 0; i < argc; i++) {
        if ((v = opt(argc, argv, &i, "--domain", &missing)))
            domain = v;
        else if ((rc = take_run(me, argv[i], missing, &run)))
            return rc;
    }
    if (run == NULL)
        return ns_cli_usage(me, "needs a run");
    ns_error_detail_t err = {0};
    int64_t gen = 0;
    if ((rc = ns_client_precise_reset(cli->client, run, domain, &gen, &err)))
        return ns_cli_fail("precise-reset", rc, &err);
    if (cli->json)
        printf("{\"run\":\"%s\",\"domain\":\"%s\",\"generation\":%lld}\n", run,
               domain ? domain : "*", (long long)gen);
    else
        printf("run %s, domain %s: PreciseBN generation %lld\n", run, domain ? domain : "*",
               (long long)gen);
    return 0;
}

/* ---------------------------------------------------------------- checkpoint */

static int cmd_checkpoint(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[5];
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc;
    if (argc != 3)
        return ns_cli_usage(me, "needs save|restore, a run and a file");
    const char *sub = argv[0], *run = argv[1], *path = argv[2];
    if (strcmp(sub, "save") == 0) {
        if ((rc = ns_client_checkpoint_get(cli->client, run, &body, &err)))
            return fetch_failed("checkpoint save", rc, &body, &err);
        rc = write_file(path, &body);
        ns_buf_free(&body);
        if (rc == 0 && strcmp(path, "-") != 0)
            printf(cli->json ? "{\"saved\":\"%s\"}\n" : "saved checkpoint of run %s\n", run);
        return rc;
    }
    if (strcmp(sub, "restore") == 0) {
        if ((rc = read_file(path, &body)))
            return rc;
        rc = ns_client_checkpoint_put(cli->client, run, body.data ? body.data : "", body.len, &err);
        ns_buf_free(&body);
        if (rc)
            return ns_cli_fail("checkpoint restore", rc, &err);
        printf(cli->json ? "{\"restored\":\"%s\"}\n" : "restored run %s\n", run);
        return 0;
    }
    return ns_cli_usage(me, "unknown subcommand '%s'", sub);
}

/* ---------------------------------------------------------------- health, version, metrics */

static int cmd_health(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[6];
    ns_error_detail_t err = {0};
    ns_buf_t live = {0}, ready = {0};
    int rc;
    if (argc > 0)
        return ns_cli_usage(me, "unexpected argument '%s'", argv[0]);
    if ((rc = ns_client_health(cli->client, 0, &live, &err)))
        return fetch_failed("health (livez)", rc, &live, &err);
    rc = ns_client_health(cli->client, 1, &ready, &err);
    if (cli->json)
        printf("{\"live\":true,\"ready\":%s}\n", rc ? "false" : "true");
    else
        printf("live: yes\nready: %s\n", rc ? "no" : "yes");
    ns_buf_free(&live);
    ns_buf_free(&ready);
    if (rc)
        return ns_cli_fail("health (readyz)", rc, &err);
    return 0;
}

static int cmd_version(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[7];
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc;
    if (argc > 0)
        return ns_cli_usage(me, "unexpected argument '%s'", argv[0]);
    if ((rc = ns_client_version(cli->client, &body, &err)))
        return fetch_failed("version", rc, &body, &err);
    if (cli->json) {
        ns_cli_print_json(body.data, body.len);
    } else {
        json_t *root = body_json(&body);
        printf("normstat client: %s\n", NS_VERSION_STRING);
        ns_cli_print_object(root, 0);
        json_decref(root);
    }
    ns_buf_free(&body);
    return 0;
}

static int cmd_metrics(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[8];
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc;
    if (argc > 0)
        return ns_cli_usage(me, "unexpected argument '%s'", argv[0]);
    if ((rc = ns_client_metrics(cli->client, &body, &err)))
        return fetch_failed("metrics", rc, &body, &err);
    fwrite(body.data ? body.data : "", 1, body.len, stdout);
    ns_buf_free(&body);
    return 0;
}

/* Indexes above (ns_cli_commands[i]) follow this order. */
const ns_cli_command_t ns_cli_commands[] = {
    {"runs", "list runs with a summary each (at a shard proxy: every shard's)",
     "runs [--shards URL,URL,...]\n"
     "  --shards  list these servers' runs together (normstatd, or a proxy's /shards/K)",
     ns_cli_cmd_runs},
    {"run", "create (or update), show or delete a run",
     "run create RUN [--world-size N] [--momentum M|null] [--sync-timeout-ms MS]\n"
     "                     [--on-timeout partial|drop] [--ema-debias|--no-ema-debias]\n"
     "       normstat run show RUN\n"
     "       normstat run delete RUN",
     cmd_run},
    {"report", "send a worker's report (a JSON or safetensors file, told apart by content)",
     "report RUN FILE [--sync]\n"
     "  --sync  wait for the step to finalize and print its global statistics",
     cmd_report},
    {"stats", "population statistics of a run, as a table, JSON, or a file",
     "stats RUN [--source ema|precise|last] [--domain D] [--mixture a:0.7,b:0.3]\n"
     "                     [--layers l1,l2] [--variance biased] [-o out.safetensors|out.json]",
     cmd_stats},
    {"precise-reset", "start a new PreciseBN generation", "precise-reset RUN [--domain D]",
     cmd_precise_reset},
    {"checkpoint", "save a run's whole state to a file, or restore it from one",
     "checkpoint save|restore RUN FILE   (FILE '-' saves to stdout)", cmd_checkpoint},
    {"health", "liveness and readiness of the server (exit 1 when not ready)", "health",
     cmd_health},
    {"version", "version and build of the server", "version", cmd_version},
    {"metrics", "the server's Prometheus metrics", "metrics", cmd_metrics},
    {"drift", "how far each layer's EMA is from PreciseBN now, worst first",
     "drift RUN [--domain D|*]", ns_cli_cmd_drift},
    {"history", "a layer's last steps for one channel: batch, EMA after it, drift",
     "history RUN LAYER [--domain D|*] [--channel C]", ns_cli_cmd_history},
    {NULL, NULL, NULL, NULL},
};
