/* log.c - logfmt lines to stderr or a reopenable file. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"

atomic_int nsd__log_threshold = NSD_LOG_INFO;

/* The destination: fd 2 or an O_APPEND file. 'lock' orders writes against
 * reopening, so no line goes to a descriptor that is being closed. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = STDERR_FILENO;
static char *log_path;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void nsd_log_set_level(int level)
{
    if (level < NSD_LOG_DEBUG)
        level = NSD_LOG_DEBUG;
    if (level > NSD_LOG_ERROR)
        level = NSD_LOG_ERROR;
    atomic_store(&nsd__log_threshold, level);
}

int nsd_log_level_parse(const char *src)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(src, level_names[i]) == 0)
            return i;
    if (strcmp(src, "warning") == 0)
        return NSD_LOG_WARN;
    return -1;
}

const char *nsd_log_level_name(int level)
{
    return level >= 0 && level < 4 ? level_names[level] : "unknown";
}

/* The log file opened for appending; -1 with the reason in 'err'. */
static int open_file(const char *path, ns_error_detail_t *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        ns_error_set(err, NS_EIO, "--log-file", "cannot open '%s': %s", path, strerror(errno));
    return fd;
}

int nsd_log_open(const char *path, ns_error_detail_t *err)
{
    int fd = STDERR_FILENO;
    char *copy = NULL;
    if (path != NULL && path[0] != '\0') {
        fd = open_file(path, err);
        if (fd < 0)
            return NS_EIO;
        copy = strdup(path);
        if (copy == NULL) {
            close(fd);
            return ns_error_set(err, NS_ENOMEM, "--log-file", "out of memory");
        }
    }
    pthread_mutex_lock(&lock);
    int old_fd = log_fd;
    char *old_path = log_path;
    log_fd = fd;
    log_path = copy;
    pthread_mutex_unlock(&lock);
    if (old_fd != STDERR_FILENO)
        close(old_fd);
    free(old_path);
    return 0;
}

int nsd_log_reopen(ns_error_detail_t *err)
{
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (log_path != NULL) {
        int fd = open_file(log_path, err);
        if (fd < 0) {
            rc = NS_EIO;
        } else {
            close(log_fd);
            log_fd = fd;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void nsd_log_close(void)
{
    (void)nsd_log_open(NULL, NULL);
}

const char *nsd_log_quote(char *dst, size_t dst_cap, const char *s)
{
    int plain = s[0] != '\0';
    for (const unsigned char *p = (const unsigned char *)s; *p && plain; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
            plain = 0;
    if (plain || dst_cap < 3)
        return s;
    size_t o = 0;
    dst[o++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p && o + 5 < dst_cap; p++) {
        if (*p == '"' || *p == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)*p;
        } else if (*p == '\n') {
            dst[o++] = '\\';
            dst[o++] = 'n';
        } else if (*p < ' ' || *p == 0x7f) {
            o += (size_t)snprintf(dst + o, dst_cap - o, "\\x%02x", *p);
        } else {
            dst[o++] = (char)*p;
        }
    }
    dst[o++] = '"';
    dst[o] = '\0';
    return dst;
}

void nsd_log_write(int level, const char *event, const char *fmt, ...)
{
    char line[4096];
    struct timespec ts = nsd_wall_time();
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n =
        snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000000L, nsd_log_level_name(level), event);
    size_t len = n < 0 ? 0 : (size_t)n;
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    if (fmt != NULL && fmt[0] != '\0' && len < sizeof(line) - 3) {
        line[len++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        n = vsnprintf(line + len, sizeof(line) - len - 1, fmt, ap);
        va_end(ap);
        if (n > 0)
            len += (size_t)n < sizeof(line) - len - 1 ? (size_t)n : sizeof(line) - len - 2;
    }
    line[len++] = '\n';
    pthread_mutex_lock(&lock);
    /* One write per line; a short write to a pipe or full disk loses the tail only. */
    ssize_t w = write(log_fd, line, len);
    (void)w;
    pthread_mutex_unlock(&lock);
}
