/* main.c - `normstat [--url URL] COMMAND ...`: global options, dispatch,
 * exit codes and help. */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static void usage_main(FILE *out)
{
    fprintf(out, "usage: normstat [--url URL] [--token TOKEN] [--cacert FILE] [--timeout MS] "
                 "[--json|--table] COMMAND [ARGS]\n"
                 "\n"
                 "The command-line client of normstatd, the BatchNorm statistics service.\n"
                 "\n"
                 "commands:\n");
    for (const ns_cli_command_t *c = ns_cli_commands; c->name; c++)
        fprintf(out, "  %-16s %s\n", c->name, c->summary);
    fprintf(out, "\n"
                 "global options (also accepted after the command):\n"
                 "  --url URL      server (default $NORMSTAT_URL, else " NS_CLIENT_DEFAULT_URL ")\n"
                 "  --token TOKEN  send \"Authorization: Bearer TOKEN\" (default $NORMSTAT_TOKEN)\n"
                 "  --cacert FILE  https: trust the CAs (or the certificate) of this PEM file\n"
                 "                 instead of the system's (default $NORMSTAT_CACERT)\n"
                 "  --timeout MS   give up on an exchange after MS milliseconds (default 30000)\n"
                 "  --json         print JSON (the default when stdout is not a terminal)\n"
                 "  --table        print tables (the default on a terminal)\n"
                 "  -h, --help     this text; `normstat COMMAND --help` for a command\n"
                 "\n"
                 "exit status:\n"
                 "  0  success\n"
                 "  1  the server answered with an error (4xx/5xx), or an unexpected answer\n"
                 "  2  usage error: bad arguments, or a file that cannot be read or written\n"
                 "  3  could not connect to the server, or no answer within the timeout\n");
}

int ns_cli_fail(const char *what, int code, const ns_error_detail_t *err)
{
    const char *msg = err && err->code ? err->message : ns_client_strerror(code);
    fprintf(stderr, "normstat: %s: %s (%s)\n", what, msg, ns_client_error_name(code));
    if (code == NS_ECONNECT || code == NS_EREQTIMEOUT)
        return NS_EXIT_CONNECT;
    return NS_EXIT_SERVER;
}

int ns_cli_usage(const ns_cli_command_t *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "normstat %s: ", cmd->name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: normstat %s\n(normstat %s --help for more)\n", cmd->usage, cmd->name);
    return NS_EXIT_USAGE;
}

/* Consumes a global option at argv[*i]; @return 1 if it was one, -1 on a
 * missing or bad value, 0 otherwise. */
static int global_option(ns_cli_t *cli, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (strcmp(a, "--json") == 0) {
        cli->json = 1;
        return 1;
    }
    if (strcmp(a, "--table") == 0) {
        cli->json = 0;
        return 1;
    }
    if (strcmp(a, "--url") == 0 || strcmp(a, "--timeout") == 0 || strcmp(a, "--token") == 0 ||
        strcmp(a, "--cacert") == 0) {
        if (*i + 1 >= argc) {
            fprintf(stderr, "normstat: %s needs a value\n", a);
            return -1;
        }
        const char *v = argv[++*i];
        if (strcmp(a, "--url") == 0) {
            cli->url = v;
        } else if (strcmp(a, "--token") == 0) {
            cli->token = v;
        } else if (strcmp(a, "--cacert") == 0) {
            cli->cacert = v;
        } else {
            char *end;
            errno = 0;
            cli->timeout_ms = strtol(v, &end, 10);
            if (errno || *end || end == v || cli->timeout_ms < 0) {
                fprintf(stderr, "normstat: --timeout: '%s' is not a number of milliseconds\n", v);
                return -1;
            }
        }
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    ns_cli_t cli = {.url = getenv("NORMSTAT_URL"),
                    .token = getenv("NORMSTAT_TOKEN"),
                    .cacert = getenv("NORMSTAT_CACERT"),
                    .timeout_ms = 30000,
                    .json = !isatty(STDOUT_FILENO)};
    char **rest = calloc((size_t)argc + 1, sizeof(char *));
    int n_rest = 0, rc;
    if (rest == NULL)
        return NS_EXIT_USAGE;
    /* Global options anywhere; everything else is the command's. */
    for (int i = 1; i < argc; i++) {
        int g = global_option(&cli, argc, argv, &i);
        if (g < 0) {
            free(rest);
            return NS_EXIT_USAGE;
        }
        if (g == 0)
            rest[n_rest++] = argv[i];
    }
    if (n_rest == 0 || strcmp(rest[0], "--help") == 0 || strcmp(rest[0], "-h") == 0 ||
        strcmp(rest[0], "help") == 0) {
        usage_main(n_rest ? stdout : stderr);
        free(rest);
        return n_rest ? NS_EXIT_OK : NS_EXIT_USAGE;
    }
    const ns_cli_command_t *cmd = ns_cli_commands;
    while (cmd->name && strcmp(cmd->name, rest[0]) != 0)
        cmd++;
    if (cmd->name == NULL) {
        fprintf(stderr, "normstat: unknown command '%s'\n", rest[0]);
        usage_main(stderr);
        free(rest);
        return NS_EXIT_USAGE;
    }
    for (int i = 1; i < n_rest; i++)
        if (strcmp(rest[i], "--help") == 0 || strcmp(rest[i], "-h") == 0) {
            printf("usage: normstat %s\n\n%s\n", cmd->usage, cmd->summary);
            printf("\nexit status: 0 ok, 1 server error, 2 usage, 3 connection failure or "
                   "timeout\n");
            free(rest);
            return NS_EXIT_OK;
        }
    ns_client_options_t opts;
    ns_error_detail_t err = {0};
    ns_client_options_default(&opts);
    opts.url = cli.url;
    opts.timeout_ms = cli.timeout_ms;
    opts.token = cli.token;
    opts.cacert = cli.cacert;
    if ((rc = ns_client_create(&cli.client, &opts, &err))) {
        fprintf(stderr, "normstat: %s\n", err.message);
        free(rest);
        return NS_EXIT_USAGE;
    }
    rc = cmd->run(&cli, n_rest - 1, rest + 1);
    ns_client_free(cli.client);
    free(rest);
    return rc;
}
