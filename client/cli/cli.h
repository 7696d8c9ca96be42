/* cli.h - what the files of the normstat command-line tool share. */
#ifndef NS_CLI_H
#define NS_CLI_H

#include <stdio.h>

#include <jansson.h>

#include <normstat/client.h>

/* Exit codes scripts can rely on (also printed by `normstat --help`). */
enum {
    NS_EXIT_OK = 0,     /* done */
    NS_EXIT_SERVER = 1, /* the server answered with an error, or an unexpected answer */
    NS_EXIT_USAGE = 2,  /* bad arguments, or an input/output file that cannot be used */
    NS_EXIT_CONNECT = 3 /* could not connect, or no answer within --timeout */
};

/* The state every command sees. */
typedef struct ns_cli_s {
    const char *url;
    long timeout_ms;
    const char *token;  /* bearer token, or NULL */
    const char *cacert; /* PEM file of the CAs to trust over https, or NULL */
    int json;           /* JSON output (--json, or stdout is not a terminal) */
    ns_client_t *client;
} ns_cli_t;

/* One command: its name, one-line summary, usage text and entry point. */
typedef struct ns_cli_command_s {
    const char *name;
    const char *summary;
    const char *usage;
    int (*run)(ns_cli_t *cli, int argc, char **argv);
} ns_cli_command_t;

extern const ns_cli_command_t ns_cli_commands[];

/* `normstat runs` (runs.c): one server's runs, or every shard's. */
int ns_cli_cmd_runs(ns_cli_t *cli, int argc, char **argv);
/* `normstat drift` and `normstat history` (drift.c). */
int ns_cli_cmd_drift(ns_cli_t *cli, int argc, char **argv);
int ns_cli_cmd_history(ns_cli_t *cli, int argc, char **argv);

/* Report a failed client call on stderr; @return its exit code. */
int ns_cli_fail(const char *what, int code, const ns_error_detail_t *err);
/* Usage error of 'cmd' (message then a hint); @return NS_EXIT_USAGE. */
int ns_cli_usage(const ns_cli_command_t *cmd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Print a JSON body: pretty when it parses, as it is otherwise. */
void ns_cli_print_json(const char *src, size_t src_len);
/* Print a stats or sync answer as a table. */
void ns_cli_print_result(const ns_result_t *res);
/* Print a JSON object's scalars as "key: value" lines, nested objects indented. */
void ns_cli_print_object(const json_t *obj, int indent);

#endif /* NS_CLI_H */
