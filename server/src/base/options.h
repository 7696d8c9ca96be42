/* options.h - normstatd's configuration: flags and NORMSTAT_* variables from options.def.
 *
 * Threads: parsing and help run once in main() before any thread starts;
 * afterwards nsd_options_t is read-only and may be shared freely. */
#ifndef NSD_OPTIONS_H
#define NSD_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <normstat/proto.h>

/* HOST:PORT; host is an IPv4 address, a bracketed IPv6 address or a name. */
typedef struct nsd_addr_s {
    char host[256];
    uint16_t port;
} nsd_addr_t;

/* An option that may be given with or without a value (--probe [URL]). */
typedef struct nsd_url_s {
    int set;
    char url[1024];
} nsd_url_t;

typedef char nsd_path_t[4096];

/* C type of each option type of options.def. */
#define NSD_CTYPE_ADDR   nsd_addr_t
#define NSD_CTYPE_PATH   nsd_path_t
#define NSD_CTYPE_BOOL   int
#define NSD_CTYPE_INT    int64_t
#define NSD_CTYPE_SIZE   uint64_t
#define NSD_CTYPE_LEVEL  int /* NSD_LOG_* of log.h */
#define NSD_CTYPE_ACTION int
#define NSD_CTYPE_URL    nsd_url_t

typedef struct nsd_options_s {
#define NSD_OPTION(id, flag, env, def, metavar, type, min, max, help) NSD_CTYPE_##type id;
#include "options.def"
#undef NSD_OPTION
} nsd_options_t;

/*! nsd_options_parse() :
 *  Fill 'dst' from the defaults of options.def, then the NORMSTAT_*
 *  variables of 'envp' ("NAME=value" strings, NULL-terminated; may be NULL),
 *  then argv[1..argc). Flags take "--flag VALUE" or "--flag=VALUE"; -h and
 *  -V mean --help and --version.
 *  @return 0, or NS_EINVAL with one line in err->message naming the flag
 *  or variable and the value ('dst' is then unspecified). */
int nsd_options_parse(nsd_options_t *dst, int argc, char *const argv[], char *const envp[],
                      ns_error_detail_t *err);

/*! nsd_options_help() : write the --help text, generated from options.def. */
void nsd_options_help(FILE *out, const char *prog);

/*! nsd_options_parse_size() :
 *  Parse "123", "64K", "16M", "2G", "1T" (binary multiples; an optional "iB"
 *  or "B" may follow the letter) into *dst.
 *  @return 0, or NS_EINVAL for anything else or an overflow. */
int nsd_options_parse_size(const char *src, uint64_t *dst);

/*! nsd_options_parse_addr() :
 *  Parse HOST:PORT ("127.0.0.1:8750", "[::1]:0", "localhost:80").
 *  @return 0, or NS_EINVAL. */
int nsd_options_parse_addr(const char *src, nsd_addr_t *dst);

#endif
