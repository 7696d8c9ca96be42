/* tls.c - the certificate and key of --tls-cert / --tls-key: load, check, serve per
 * handshake, swap on SIGHUP. */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>

#include <normstat/wire_errors.h>

/* Largest PEM file read; a chain of a few certificates is a few KiB. */
#define PEM_MAX (1u << 20)
/* Most certificates in --tls-cert (the server's and its intermediates). */
#define CHAIN_MAX 16

/* The files' contents as read, and parsed once: each handshake gets a copy
 * of the parsed certificates and key (microseconds; importing from PEM
 * again would cost 0.1 to 0.4 ms a handshake). */
typedef struct pair_s {
    gnutls_datum_t cert; /* PEM, NUL-terminated, size without the NUL */
    gnutls_datum_t key;
    gnutls_x509_crt_t *chain; /* server certificate first */
    unsigned n_chain;
    gnutls_x509_privkey_t pkey;
    nsd_tls_info_t info;
} pair_t;

struct nsd_tls_s {
    nsd_path_t cert_path, key_path;
    /* pair: copied by handshakes, swapped by reloads. A mutex rather than
     * an rwlock: GnuTLS does not promise that copying from one parsed
     * certificate is safe on several threads at once. */
    pthread_mutex_t lock;
    pair_t *pair;
    struct MHD_OptionItem mhd_options[2];
};

/* GnuTLS's certificate callback has no user pointer; one daemon per process. */
static nsd_tls_t *active;

static void pair_free(pair_t *p)
{
    if (p == NULL)
        return;
    for (unsigned i = 0; i < p->n_chain; i++)
        gnutls_x509_crt_deinit(p->chain[i]);
    gnutls_free(p->chain);
    if (p->pkey != NULL)
        gnutls_x509_privkey_deinit(p->pkey);
    if (p->key.data != NULL)
        memset(p->key.data, 0, p->key.size);
    free(p->cert.data);
    free(p->key.data);
    free(p);
}

/* Read a whole file of at most PEM_MAX bytes into 'dst' (NUL-terminated). */
static int read_pem(gnutls_datum_t *dst, const char *flag, const char *path, ns_error_detail_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ns_error_set(err, NS_EINVAL, "", "%s: cannot open '%s': %s", flag, path,
                            strerror(errno));
    unsigned char *data = malloc(PEM_MAX + 1);
    if (data == NULL) {
        fclose(f);
        return ns_error_set(err, NS_ENOMEM, "", "%s: out of memory", flag);
    }
    size_t n = fread(data, 1, PEM_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > PEM_MAX || n == 0) {
        free(data);
        return ns_error_set(err, NS_EINVAL, "", "%s: cannot read '%s' (%s)", flag, path,
                            bad      ? "read error"
                            : n == 0 ? "empty"
                                     : "larger than 1 MiB");
    }
    data[n] = '\0';
    dst->data = data;
    dst->size = (unsigned)n;
    return 0;
}

/* Fingerprint and expiry of the server certificate, for the log. */
static void describe(nsd_tls_info_t *dst, gnutls_x509_crt_t crt, unsigned chain)
{
    unsigned char digest[32];
    size_t size = sizeof(digest);
    dst->chain = chain;
    dst->sha256[0] = dst->not_after[0] = '\0';
    if (gnutls_x509_crt_get_fingerprint(crt, GNUTLS_DIG_SHA256, digest, &size) == 0)
        for (size_t i = 0; i < size && 3 * i + 3 <= sizeof(dst->sha256); i++)
            snprintf(dst->sha256 + 3 * i, 4, i + 1 < size ? "%02X:" : "%02X", digest[i]);
    time_t t = gnutls_x509_crt_get_expiration_time(crt);
    struct tm tm;
    if (t != (time_t)-1 && gmtime_r(&t, &tm) != NULL)
        strftime(dst->not_after, sizeof(dst->not_after), "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Parse both files and check that they belong together. */
static int pair_parse(pair_t *p, const char *cert_path, const char *key_path,
                      ns_error_detail_t *err)
{
    int rc = gnutls_x509_crt_list_import2(&p->chain, &p->n_chain, &p->cert, GNUTLS_X509_FMT_PEM, 0);
    if (rc < 0 || p->n_chain == 0 || p->n_chain > CHAIN_MAX)
        return ns_error_set(
            err, NS_EINVAL, "", "--tls-cert: no PEM certificate chain of at most %d in '%s' (%s)",
            CHAIN_MAX, cert_path, rc < 0 ? gnutls_strerror(rc) : "wrong number of certificates");
    describe(&p->info, p->chain[0], p->n_chain);
    if ((rc = gnutls_x509_privkey_init(&p->pkey)) < 0)
        return ns_error_set(err, NS_ENOMEM, "", "--tls-key: %s", gnutls_strerror(rc));
    rc = gnutls_x509_privkey_import2(p->pkey, &p->key, GNUTLS_X509_FMT_PEM, NULL, 0);
    if (rc < 0)
        return ns_error_set(err, NS_EINVAL, "",
                            "--tls-key: no unencrypted PEM private key in '%s' (%s)", key_path,
                            gnutls_strerror(rc));
    /* GnuTLS compares the key with the certificate's public key here. */
    gnutls_certificate_credentials_t cred;
    if ((rc = gnutls_certificate_allocate_credentials(&cred)) < 0)
        return ns_error_set(err, NS_ENOMEM, "", "--tls-cert: %s", gnutls_strerror(rc));
    rc =
        gnutls_certificate_set_x509_key_mem2(cred, &p->cert, &p->key, GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_certificate_free_credentials(cred);
    if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH)
        return ns_error_set(err, NS_EINVAL, "",
                            "--tls-key: the key in '%s' does not belong to the certificate in '%s'",
                            key_path, cert_path);
    if (rc < 0)
        return ns_error_set(err, NS_EINVAL, "", "--tls-cert: '%s' with '%s' cannot be served (%s)",
                            cert_path, key_path, gnutls_strerror(rc));
    return 0;
}

static int pair_load(pair_t **dst, const char *cert_path, const char *key_path,
                     ns_error_detail_t *err)
{
    *dst = NULL;
    pair_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "--tls-cert: out of memory");
    int rc = read_pem(&p->cert, "--tls-cert", cert_path, err);
    if (rc == 0)
        rc = read_pem(&p->key, "--tls-key", key_path, err);
    if (rc == 0)
        rc = pair_parse(p, cert_path, key_path, err);
    if (rc != 0) {
        pair_free(p);
        return rc;
    }
    *dst = p;
    return 0;
}

static int same_datum(const gnutls_datum_t *a, const gnutls_datum_t *b)
{
    return a->size == b->size && memcmp(a->data, b->data, a->size) == 0;
}

int nsd_tls_enabled(const nsd_options_t *opts)
{
    return opts->tls_cert[0] != '\0' || opts->tls_key[0] != '\0';
}

int nsd_tls_load(nsd_tls_t **dst, const nsd_options_t *opts, ns_error_detail_t *err)
{
    *dst = NULL;
    if (!nsd_tls_enabled(opts))
        return 0;
    if (opts->tls_cert[0] == '\0' || opts->tls_key[0] == '\0')
        return ns_error_set(err, NS_EINVAL, "",
                            "%s needs %s too (or NORMSTAT_TLS_CERT and NORMSTAT_TLS_KEY)",
                            opts->tls_cert[0] ? "--tls-cert" : "--tls-key",
                            opts->tls_cert[0] ? "--tls-key" : "--tls-cert");
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES ||
        MHD_is_feature_supported(MHD_FEATURE_HTTPS_CERT_CALLBACK2) != MHD_YES)
        return ns_error_set(err, NS_EINVAL, "",
                            "--tls-cert: this libmicrohttpd was built without HTTPS support");
    nsd_tls_t *tls = calloc(1, sizeof(*tls));
    if (tls == NULL)
        return ns_error_set(err, NS_ENOMEM, "", "--tls-cert: out of memory");
    memcpy(tls->cert_path, opts->tls_cert, sizeof(tls->cert_path));
    memcpy(tls->key_path, opts->tls_key, sizeof(tls->key_path));
    int rc = pair_load(&tls->pair, tls->cert_path, tls->key_path, err);
    if (rc != 0) {
        free(tls);
        return rc;
    }
    pthread_mutex_init(&tls->lock, NULL);
    *dst = tls;
    return 0;
}

int nsd_tls_reload(nsd_tls_t *tls, int *changed, ns_error_detail_t *err)
{
    *changed = 0;
    pair_t *fresh;
    int rc = pair_load(&fresh, tls->cert_path, tls->key_path, err);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&tls->lock);
    pair_t *old = tls->pair;
    if (same_datum(&old->cert, &fresh->cert) && same_datum(&old->key, &fresh->key)) {
        old = fresh; /* nothing to swap */
    } else {
        tls->pair = fresh;
        *changed = 1;
    }
    pthread_mutex_unlock(&tls->lock);
    /* No handshake holds the old pair: each took its own copy. */
    pair_free(old);
    return 0;
}

void nsd_tls_info(nsd_tls_t *tls, nsd_tls_info_t *dst)
{
    pthread_mutex_lock(&tls->lock);
    *dst = tls->pair->info;
    pthread_mutex_unlock(&tls->lock);
}

/* gnutls_certificate_retrieve_function3, once per full handshake on an MHD
 * thread: a fresh copy of the current pair that GnuTLS frees with the
 * session (GNUTLS_CERT_RETR_DEINIT_ALL). */
static int retrieve(gnutls_session_t session, const struct gnutls_cert_retr_st *info,
                    gnutls_pcert_st **certs, unsigned *n_certs, gnutls_ocsp_data_st **ocsp,
                    unsigned *n_ocsp, gnutls_privkey_t *key, unsigned *flags)
{
    (void)session;
    (void)info;
    *certs = NULL;
    *n_certs = 0;
    *ocsp = NULL;
    *n_ocsp = 0;
    *key = NULL;
    *flags = 0;
    nsd_tls_t *tls = active;
    gnutls_pcert_st *chain = gnutls_malloc(CHAIN_MAX * sizeof(*chain));
    gnutls_privkey_t pk = NULL;
    if (tls == NULL || chain == NULL || gnutls_privkey_init(&pk) < 0) {
        gnutls_free(chain);
        return -1;
    }
    unsigned n = 0;
    int rc = 0;
    pthread_mutex_lock(&tls->lock);
    const pair_t *p = tls->pair;
    while (rc >= 0 && n < p->n_chain)
        if ((rc = gnutls_pcert_import_x509(&chain[n], p->chain[n], 0)) >= 0)
            n++;
    if (rc >= 0)
        rc = gnutls_privkey_import_x509(pk, p->pkey, GNUTLS_PRIVKEY_IMPORT_COPY);
    pthread_mutex_unlock(&tls->lock);
    if (rc < 0) {
        for (unsigned i = 0; i < n; i++)
            gnutls_pcert_deinit(&chain[i]);
        gnutls_free(chain);
        gnutls_privkey_deinit(pk);
        return -1;
    }
    *certs = chain;
    *n_certs = n;
    *key = pk;
    *flags = GNUTLS_CERT_RETR_DEINIT_ALL;
    return 0;
}

unsigned nsd_tls_mhd_flags(const nsd_tls_t *tls)
{
    return tls != NULL ? (unsigned)MHD_USE_TLS : 0u;
}

const struct MHD_OptionItem *nsd_tls_mhd_options(nsd_tls_t *tls)
{
    static const struct MHD_OptionItem none[] = {{MHD_OPTION_END, 0, NULL}};
    if (tls == NULL)
        return none;
    active = tls;
    tls->mhd_options[0] =
        (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK2, 0, (void *)retrieve};
    tls->mhd_options[1] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    return tls->mhd_options;
}

void nsd_tls_free(nsd_tls_t *tls)
{
    if (tls == NULL)
        return;
    if (active == tls)
        active = NULL;
    pthread_mutex_destroy(&tls->lock);
    pair_free(tls->pair);
    free(tls);
}
