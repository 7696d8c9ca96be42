/* probe.c - `normstatd --probe [URL]`: GET /readyz over its own socket (HTTP or HTTPS),
 * for Docker's HEALTHCHECK.
 *
 * Over HTTPS the server's certificate is not verified: the probe asks a
 * daemon of this host whether it is ready, it does not authenticate it. */
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

#include "http.h"

/* Connect, send and receive each give up after this long. */
#define PROBE_TIMEOUT_S 5

/* Split "http[s]://host:port/path" (port defaults to 80 or 443, path to /readyz). */
static int parse_url(const char *url, int *https, char *host, size_t host_cap, char *port,
                     size_t port_cap, char *path, size_t path_cap)
{
    *https = strncmp(url, "https://", 8) == 0;
    if (!*https && strncmp(url, "http://", 7) != 0)
        return -1;
    const char *p = url + (*https ? 8 : 7);
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
    snprintf(port, port_cap, "%.*s", colon ? (int)pl : 3,
             colon    ? colon + 1
             : *https ? "443"
                      : "80");
    snprintf(path, path_cap, "%s", *auth_end ? auth_end : "/readyz");
    return 0;
}

/* A connected socket with a timeout on every call. @return the fd or -1 (reported). */
static int probe_connect(const char *host, const char *port)
{
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL) {
        fprintf(stderr, "normstatd: probe: cannot resolve %s\n", host);
        return -1;
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
        return -1;
    }
    return fd;
}

/* The probe's connection: a socket, with a TLS session over it for https. */
typedef struct probe_conn_s {
    int fd;
    gnutls_session_t tls;
    gnutls_certificate_credentials_t cred;
} probe_conn_t;

/* TLS handshake without certificate verification (see the top of the file).
 * A socket timeout surfaces as GNUTLS_E_AGAIN and ends it like any error. */
static int probe_tls_start(probe_conn_t *c, const char *host)
{
    int rc = gnutls_certificate_allocate_credentials(&c->cred);
    if (rc >= 0)
        rc = gnutls_init(&c->tls, GNUTLS_CLIENT);
    if (rc >= 0)
        rc = gnutls_set_default_priority(c->tls);
    if (rc >= 0)
        rc = gnutls_credentials_set(c->tls, GNUTLS_CRD_CERTIFICATE, c->cred);
    if (rc >= 0 && strspn(host, "0123456789.:") != strlen(host))
        gnutls_server_name_set(c->tls, GNUTLS_NAME_DNS, host, strlen(host));
    if (rc >= 0) {
        gnutls_transport_set_int(c->tls, c->fd);
        gnutls_handshake_set_timeout(c->tls, PROBE_TIMEOUT_S * 1000u);
        do
            rc = gnutls_handshake(c->tls);
        while (rc == GNUTLS_E_INTERRUPTED);
    }
    if (rc < 0)
        fprintf(stderr, "normstatd: probe: TLS handshake with %s failed: %s\n", host,
                gnutls_strerror(rc));
    return rc < 0 ? -1 : 0;
}

static int probe_send(probe_conn_t *c, const char *data, size_t len)
{
    if (c->tls == NULL)
        return send(c->fd, data, len, 0) == (ssize_t)len ? 0 : -1;
    return gnutls_record_send(c->tls, data, len) == (ssize_t)len ? 0 : -1;
}

static ssize_t probe_recv(probe_conn_t *c, char *dst, size_t dst_cap)
{
    if (c->tls == NULL)
        return recv(c->fd, dst, dst_cap, 0);
    ssize_t r = gnutls_record_recv(c->tls, dst, dst_cap);
    return r < 0 ? -1 : r;
}

static void probe_close(probe_conn_t *c)
{
    if (c->tls != NULL)
        gnutls_deinit(c->tls);
    if (c->cred != NULL)
        gnutls_certificate_free_credentials(c->cred);
    if (c->fd >= 0)
        close(c->fd);
}

static int probe(int https, const char *host, const char *port, const char *path)
{
    probe_conn_t c = {.fd = probe_connect(host, port)};
    if (c.fd < 0 || (https && probe_tls_start(&c, host) != 0)) {
        probe_close(&c);
        return 1;
    }
    char request[1536];
    int n = snprintf(request, sizeof(request),
                     "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: normstatd-probe\r\n"
                     "Connection: close\r\n\r\n",
                     path, strchr(host, ':') ? "[" : "", host, strchr(host, ':') ? "]" : "", port);
    char reply[256];
    size_t got = 0;
    if (n > 0 && (size_t)n < sizeof(request) && probe_send(&c, request, (size_t)n) == 0) {
        /* The status line is all we need. */
        while (got < sizeof(reply) - 1) {
            ssize_t r = probe_recv(&c, reply + got, sizeof(reply) - 1 - got);
            if (r <= 0)
                break;
            got += (size_t)r;
            if (memchr(reply, '\n', got) != NULL)
                break;
        }
    }
    probe_close(&c);
    reply[got] = '\0';
    int status = 0;
    if (sscanf(reply, "HTTP/%*d.%*d %d", &status) != 1)
        status = 0;
    if (status != 200) {
        fprintf(stderr, "normstatd: probe: GET %s://%s:%s%s answered %d\n",
                https ? "https" : "http", host, port, path, status);
        return 1;
    }
    return 0;
}

int nsd_probe_run(const nsd_options_t *opts)
{
    char host[256], port[16], path[1024];
    /* Without a URL, the scheme the daemon of these options serves. */
    int https = opts->tls_cert[0] != '\0';
    if (opts->probe.url[0] != '\0') {
        if (parse_url(opts->probe.url, &https, host, sizeof(host), port, sizeof(port), path,
                      sizeof(path)) != 0) {
            fprintf(stderr, "normstatd: --probe: expected http[s]://HOST[:PORT][/PATH], got '%s'\n",
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
    return probe(https, host, port, path);
}
