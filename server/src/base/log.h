/* log.h - normstatd's log: one logfmt line per event, to stderr or a file.
 *
 *   ts=2026-11-22T17:00:00.123Z level=info event=run_created run=r1 world_size=4
 *
 * Event names are stable identifiers (tests and operators grep for them);
 * the format string carries the "key=value" fields after them. Values that
 * may contain spaces, quotes or '=' go through nsd_log_quote().
 *
 * Threads: every function may be called from any thread. A line is written
 * with a single write(2) under a lock, so lines never interleave. */
#ifndef NSD_LOG_H
#define NSD_LOG_H

#include <stdatomic.h>
#include <stddef.h>

#include <normstat/proto.h>

enum { NSD_LOG_DEBUG = 0, NSD_LOG_INFO = 1, NSD_LOG_WARN = 2, NSD_LOG_ERROR = 3 };

/* Current threshold; read with nsd_log_enabled(). */
extern atomic_int nsd__log_threshold;

/*! nsd_log_enabled() : 1 if a line of 'level' would be written. */
static inline int nsd_log_enabled(int level)
{
    return level >= atomic_load_explicit(&nsd__log_threshold, memory_order_relaxed);
}

/*! nsd_log() :
 *  Log one event if 'level' passes the threshold; the arguments are not
 *  evaluated otherwise. 'fmt' formats the fields after event=<event>. */
#define nsd_log(level, event, ...)                                                                 \
    do {                                                                                           \
        if (nsd_log_enabled(level))                                                                \
            nsd_log_write((level), (event), __VA_ARGS__);                                          \
    } while (0)

/*! nsd_log_write() : write one line unconditionally (use nsd_log()). */
void nsd_log_write(int level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*! nsd_log_set_level() : set the threshold (NSD_LOG_*). */
void nsd_log_set_level(int level);

/*! nsd_log_level_parse() : "debug", "info", "warn" (or "warning"), "error"
 *  to NSD_LOG_*; @return -1 for anything else. */
int nsd_log_level_parse(const char *src);

/*! nsd_log_level_name() : the name of NSD_LOG_* 'level'. */
const char *nsd_log_level_name(int level);

/*! nsd_log_open() :
 *  Log to 'path' (appending, created 0644), or to stderr when path is NULL
 *  or "". The path is kept for nsd_log_reopen().
 *  @return 0, or NS_EIO / NS_ENOMEM with the reason in 'err' (may be NULL;
 *  the previous destination stays in use). */
int nsd_log_open(const char *path, ns_error_detail_t *err);

/*! nsd_log_reopen() :
 *  Reopen the log file (after logrotate moved it; SIGHUP). No-op for stderr.
 *  @return 0, or NS_EIO with the reason in 'err' (may be NULL; the old file
 *  stays in use). */
int nsd_log_reopen(ns_error_detail_t *err);

/*! nsd_log_close() : go back to stderr and close the file, if any. */
void nsd_log_close(void);

/*! nsd_log_quote() :
 *  's' as a logfmt value: itself if it is non-empty and holds no space, '"',
 *  '=', '\\' or control character; otherwise quoted with those escaped,
 *  written into dst (truncated to dst_cap). @return 's' or 'dst'. */
const char *nsd_log_quote(char *dst, size_t dst_cap, const char *s);

#endif
