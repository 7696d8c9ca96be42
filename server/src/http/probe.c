/* probe.c - `normstatd --probe [URL]`: GET /readyz over a plain socket, for Docker's HEALTHCHECK.
 */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "http.h"

/* Connect, send and receive each give up after this long. */
#define PROBE_TIMEOUT_S 5

/* Split "http://host:port/path" (port defaults to 80, path to /readyz). */
static int parse_url(const char *url, char *host, size_t host_cap, char *port, size_t port_cap,
                     char *path, size_t path_cap)
{
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    const char *p = url + 7;
    size_t auth_len = strcspn(p, "/");
    const char *auth_end = p + auth_len;
    const char *host_start = p, *host_end, *colon;
    if (*p == '[') {
        host_start = p + 1;
        host_end = memchr(p, ']', auth_len);
        if (host_end == NULL)
            return -1;
        colon = host_end + 1 < auth_end && host_end[1] == ':' ? host_end + 1 : NULL;
    } else {
        colon = memchr(p, ':', auth_len);
        host_end = colon ? colon : auth_end;
    }
    size_t hl = (size_t)(host_end - host_start);
    if (hl == 0 || hl >= host_cap)
        return -1;
    memcpy(host, host_start, hl);
    host[hl] = '\0';
    size_t pl = colon ? (size_t)(auth_end - colon - 1) : 0;
    if (colon != NULL && (pl == 0 || pl >= port_cap))
        return -1;
    snprintf(port, port_cap, "%.*s", colon ? (int)pl : 2, colon ? colon + 1 : "80");
    snprintf(path, path_cap, "%s", *auth_end ? auth_end : "/readyz");
    return 0;
}

static int probe(const char *host, const char *port, const char *path)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) {
        fprintf(stderr, "normstatd: probe: cannot resolve %s\n", host);
        return 1;
    }
    int fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    struct timeval tv = {PROBE_TIMEOUT_S, 0};
    if (fd >= 0) {
        /* On Linux SO_SNDTIMEO also bounds connect(). */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    }
    int ok = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
    freeaddrinfo(res);
    if (!ok) {
        fprintf(stderr, "normstatd: probe: cannot connect to %s:%s\n", host, port);
        if (fd >= 0)
            close(fd);
        return 1;
    }
    char request[1536];
    int n = snprintf(request, sizeof(request),
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: normstatd-probe\r\n"
                     "Connection: close\r\n\r\n",
                     path, strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
    char reply[256];
    size_t got = 0;
    if (n > 0 && (size_t)n < sizeof(request) && send(fd, request, (size_t)n, 0) == n) {
        /* The status line is all we need. */
        while (got < sizeof(reply) - 1) {
            ssize_t r = recv(fd, reply + got, sizeof(reply) - 1 - got, 0);
            if (r <= 0)
                break;
            got += (size_t)r;
            if (memchr(reply, '\n', got) != NULL)
                break;
        }
    }
    close(fd);
    reply[got] = '\0';
    int status = 0;
    if (sscanf(reply, "HTTP/%*d.%*d %d", &status) != 1)
        status = 0;
    if (status != 200) {
        fprintf(stderr, "normstatd: probe: GET http://%s:%s%s answered %d\n", host, port, path,
                status);
        return 1;
    }
    return 0;
}

int nsd_probe_run(const nsd_options_t *opts)
{
    char host[256], port[16], path[1024];
    if (opts->probe.url[0] != '\0') {
        if (parse_url(opts->probe.url, host, sizeof(host), port, sizeof(port), path,
                      sizeof(path)) != 0) {
            fprintf(stderr, "normstatd: --probe: expected http://HOST[:PORT][/PATH], got '%s'\n",
                    opts->probe.url);
            return 2;
        }
    } else {
        /* The wildcard addresses are reachable through loopback. */
        const char *h = opts->listen.host;
        if (strcmp(h, "0.0.0.0") == 0 || h[0] == '\0')
            h = "127.0.0.1";
        else if (strcmp(h, "::") == 0)
            h = "::1";
        snprintf(host, sizeof(host), "%s", h);
        snprintf(port, sizeof(port), "%u", (unsigned)opts->listen.port);
        snprintf(path, sizeof(path), "/readyz");
    }
    return probe(host, port, path);
}
