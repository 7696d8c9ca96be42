/* runs.c - `normstat runs`: the runs of one server, or of every shard.
 *
 * Runs spread over shards (deploy/nginx/normstat-shards.conf) have no single
 * list. A shard proxy answers GET /v1/runs with 404, which normstatd never
 * does, and serves shard K's own endpoints under /shards/K/, K = 0, 1, ...
 * without gaps; so when the server at --url answers that 404, the command
 * lists /shards/0/v1/runs, /shards/1/v1/runs, ... up to the first 404.
 * `--shards URL,URL,...` names the shards instead (normstatd instances or
 * a proxy's /shards/K). Either way each run carries its shard's URL, and a
 * shard that does not answer is reported without hiding the others. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* A proxy with more shards than this is not probed further. */
#define MAX_SHARDS 1024

/* What has been gathered across shards. */
typedef struct gathered_s {
    json_t *runs;   /* every run, each with "shard" */
    json_t *shards; /* per shard: {"url", "runs"} or {"url", "error"} */
    int exit_code;  /* of the first shard that failed, else NS_EXIT_OK */
} gathered_t;

static void print_header(int with_shard)
{
    printf("%-32s %10s %7s %8s %8s %12s%s\n", "RUN", "WORLD_SIZE", "LAYERS", "DOMAINS", "PENDING",
           "STEP", with_shard ? "  SHARD" : "");
}

static void print_row(const json_t *r)
{
    const char *shard = json_string_value(json_object_get(r, "shard"));
    printf("%-32s %10lld %7lld %8lld %8lld %12lld%s%s\n",
           json_string_value(json_object_get(r, "run")),
           (long long)json_integer_value(json_object_get(r, "world_size")),
           (long long)json_integer_value(json_object_get(r, "layers")),
           (long long)json_integer_value(json_object_get(r, "domains")),
           (long long)json_integer_value(json_object_get(r, "pending_steps")),
           (long long)json_integer_value(json_object_get(r, "step")), shard ? "  " : "",
           shard ? shard : "");
}

/* A client like the command's own, for another base URL. */
static int shard_client(const ns_cli_t *cli, const char *url, ns_client_t **dst,
                        ns_error_detail_t *err)
{
    ns_client_options_t opts;
    ns_client_options_default(&opts);
    opts.url = url;
    opts.timeout_ms = cli->timeout_ms;
    opts.token = cli->token;
    opts.cacert = cli->cacert;
    return ns_client_create(dst, &opts, err);
}

/* GET url/v1/runs into 'g'. @return 1 when the server answered 404 (no such
 * shard behind a proxy: nothing is recorded), else 0. */
static int gather_shard(const ns_cli_t *cli, const char *url, gathered_t *g)
{
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    ns_client_t *client = NULL;
    json_t *root = NULL, *r;
    size_t i;
    int rc = shard_client(cli, url, &client, &err);
    if (rc == 0)
        rc = ns_client_runs_list(client, &body, &err);
    if (rc == NS_ENOTFOUND && ns_client_last_status(client) == 404) {
        ns_client_free(client);
        ns_buf_free(&body);
        return 1;
    }
    if (rc == 0 && (root = json_loadb(body.data ? body.data : "", body.len, 0, NULL)) == NULL)
        rc = ns_error_set(&err, NS_EBADRESPONSE, "", "the answer is not JSON");
    if (rc == 0) {
        json_t *runs = json_object_get(root, "runs");
        json_array_foreach(runs, i, r)
        {
            json_object_set_new(r, "shard", json_string(url));
            json_array_append(g->runs, r);
        }
        json_array_append_new(g->shards,
                              json_pack("{s:s, s:I}", "url", url, "runs", (json_int_t)i));
    } else {
        int code = ns_cli_fail(url, rc, &err);
        if (g->exit_code == NS_EXIT_OK)
            g->exit_code = code;
        json_array_append_new(g->shards,
                              json_pack("{s:s, s:{s:s, s:s}}", "url", url, "error", "code",
                                        ns_client_error_name(rc), "message",
                                        err.code ? err.message : ns_client_strerror(rc)));
    }
    json_decref(root);
    ns_buf_free(&body);
    ns_client_free(client);
    return 0;
}

/* Every shard of the proxy at 'base', /shards/0, /shards/1, ... */
static void gather_proxy(const ns_cli_t *cli, const char *base, gathered_t *g)
{
    size_t len = strlen(base);
    while (len > 0 && base[len - 1] == '/')
        len--;
    for (int k = 0; k < MAX_SHARDS; k++) {
        char url[2048];
        snprintf(url, sizeof(url), "%.*s/shards/%d", (int)len, base, k);
        if (!gather_shard(cli, url, g))
            continue;
        if (k == 0) {
            fprintf(stderr,
                    "normstat: runs: %s answered GET /v1/runs with 404 and has no "
                    "/shards/0/: not a normstatd or a shard proxy\n",
                    base);
            g->exit_code = NS_EXIT_SERVER;
        }
        break;
    }
}

/* The shards of --shards URL,URL,... (empty items are skipped). */
static void gather_list(const ns_cli_t *cli, const char *list, gathered_t *g)
{
    char *copy = strdup(list), *save = NULL;
    if (copy == NULL)
        return;
    for (char *url = strtok_r(copy, ",", &save); url; url = strtok_r(NULL, ",", &save))
        if (gather_shard(cli, url, g)) {
            fprintf(stderr,
                    "normstat: runs: %s: GET /v1/runs answered 404: not a normstatd "
                    "or a proxy's /shards/K\n",
                    url);
            if (g->exit_code == NS_EXIT_OK)
                g->exit_code = NS_EXIT_SERVER;
        }
    free(copy);
}

static int by_run_name(const void *a, const void *b)
{
    const char *x = json_string_value(json_object_get(*(json_t *const *)a, "run"));
    const char *y = json_string_value(json_object_get(*(json_t *const *)b, "run"));
    return strcmp(x ? x : "", y ? y : "");
}

/* Prints what was gathered, runs sorted by name. */
static void print_gathered(const ns_cli_t *cli, gathered_t *g)
{
    size_t n = json_array_size(g->runs);
    json_t **rows = calloc(n ? n : 1, sizeof(*rows));
    json_t *sorted = json_array();
    for (size_t i = 0; rows && i < n; i++)
        rows[i] = json_array_get(g->runs, i);
    if (rows)
        qsort(rows, n, sizeof(*rows), by_run_name);
    for (size_t i = 0; rows && i < n; i++)
        json_array_append(sorted, rows[i]);
    if (cli->json) {
        json_t *out = json_pack("{s:O, s:O}", "runs", sorted, "shards", g->shards);
        json_dumpf(out, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        putchar('\n');
        json_decref(out);
    } else {
        print_header(1);
        for (size_t i = 0; i < json_array_size(sorted); i++)
            print_row(json_array_get(sorted, i));
    }
    json_decref(sorted);
    free(rows);
}

static int across_shards(ns_cli_t *cli, const char *list)
{
    gathered_t g = {json_array(), json_array(), NS_EXIT_OK};
    if (list != NULL)
        gather_list(cli, list, &g);
    else
        gather_proxy(cli, cli->url ? cli->url : NS_CLIENT_DEFAULT_URL, &g);
    print_gathered(cli, &g);
    json_decref(g.runs);
    json_decref(g.shards);
    return g.exit_code;
}

int ns_cli_cmd_runs(ns_cli_t *cli, int argc, char **argv)
{
    const ns_cli_command_t *me = &ns_cli_commands[0];
    const char *shards = NULL;
    ns_error_detail_t err = {0};
    ns_buf_t body = {0};
    int rc;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--shards") != 0)
            return ns_cli_usage(me, "unexpected argument '%s'", argv[i]);
        if (i + 1 >= argc || argv[i + 1][0] == '\0')
            return ns_cli_usage(me, "--shards needs URL,URL,...");
        shards = argv[++i];
    }
    if (shards != NULL)
        return across_shards(cli, shards);
    rc = ns_client_runs_list(cli->client, &body, &err);
    if (rc == NS_ENOTFOUND && ns_client_last_status(cli->client) == 404) {
        ns_buf_free(&body);
        return across_shards(cli, NULL);
    }
    if (rc) {
        ns_buf_free(&body);
        return ns_cli_fail("runs", rc, &err);
    }
    if (cli->json) {
        ns_cli_print_json(body.data, body.len);
    } else {
        json_t *root = json_loadb(body.data ? body.data : "", body.len, 0, NULL), *r;
        size_t i;
        print_header(0);
        json_array_foreach(json_object_get(root, "runs"), i, r) print_row(r);
        json_decref(root);
    }
    ns_buf_free(&body);
    return NS_EXIT_OK;
}
