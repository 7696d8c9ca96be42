/* tls.h - HTTPS: the certificate and key normstatd serves, loaded, checked and swapped on SIGHUP.
 *
 * libmicrohttpd does the TLS itself (GnuTLS); this module hands it the
 * certificate chain and key of --tls-cert / --tls-key through
 * MHD_OPTION_HTTPS_CERT_CALLBACK2, called once per handshake. Each handshake
 * gets its own copy of the pair, which GnuTLS frees with the session, so a
 * reload can drop the old pair at once: new connections get the new pair,
 * connections already open keep the one they negotiated.
 *
 * Threads: nsd_tls_load() runs in main() before any thread; the handshake
 * callback runs on MHD's pool threads; nsd_tls_reload() runs on the
 * coordinator's thread (SIGHUP). A mutex, held for a copy or a swap,
 * orders them. One nsd_tls_t per process: GnuTLS's callback carries no
 * user pointer, so the active one is a file-level pointer set by
 * nsd_tls_mhd_options(). */
#ifndef NSD_TLS_H
#define NSD_TLS_H

#include <stddef.h>

#include "base/options.h"

struct MHD_OptionItem;
typedef struct nsd_tls_s nsd_tls_t;

/* A description of the pair being served, for logs and tests. */
typedef struct nsd_tls_info_s {
    char sha256[96];    /* fingerprint of the server certificate, "AB:CD:..." */
    char not_after[32]; /* its expiry, "2027-12-04T21:40:00Z" */
    unsigned chain;     /* certificates in --tls-cert */
} nsd_tls_info_t;

/*! nsd_tls_enabled() : 1 when --tls-cert or --tls-key is set. */
int nsd_tls_enabled(const nsd_options_t *opts);

/*! nsd_tls_load() :
 *  Read --tls-cert and --tls-key (PEM), check that libmicrohttpd can serve
 *  TLS, that both parse and that the key belongs to the certificate.
 *  @return 0 with *dst set (NULL when neither option is set), or NS_EINVAL
 *  (NS_ENOMEM) with one line in 'err' naming the option and the file. */
int nsd_tls_load(nsd_tls_t **dst, const nsd_options_t *opts, ns_error_detail_t *err);

/*! nsd_tls_reload() :
 *  Read both files again; if they load and match, new handshakes use them.
 *  Otherwise the pair served so far stays. Files unchanged since the last
 *  load are not swapped.
 *  @return 0 (swapped or unchanged: *changed tells), or the error of
 *  nsd_tls_load() with 'err' set. */
int nsd_tls_reload(nsd_tls_t *tls, int *changed, ns_error_detail_t *err);

/*! nsd_tls_info() : what is served now. */
void nsd_tls_info(nsd_tls_t *tls, nsd_tls_info_t *dst);

/*! nsd_tls_mhd_flags() : MHD_USE_TLS with 'tls', else 0. */
unsigned nsd_tls_mhd_flags(const nsd_tls_t *tls);

/*! nsd_tls_mhd_options() :
 *  The MHD_OPTION_ARRAY items for MHD_start_daemon(): the certificate
 *  callback with 'tls', nothing (only MHD_OPTION_END) without. Makes 'tls'
 *  the process's active pair. */
const struct MHD_OptionItem *nsd_tls_mhd_options(nsd_tls_t *tls);

/*! nsd_tls_free() : after the MHD daemon stopped. Accepts NULL. */
void nsd_tls_free(nsd_tls_t *tls);

#endif
