/* h_ui.c - GET /ui/ and its files: the dashboard, served from the binary; / and /ui redirect. */
#include <string.h>

#include "http/http.h"
#include "ui_assets.h"

/* The page runs only its own files and talks only to this daemon. */
static const char *const asset_headers[] = {
    "Content-Security-Policy",
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options",
    "nosniff",
    "Referrer-Policy",
    "no-referrer",
    "Cache-Control",
    "no-cache",
    NULL};

/* Relative, so the page also opens behind a proxy that mounts the daemon under a prefix. */
static const char *const redirect_headers[] = {"Location", "ui/", NULL};

void nsd_h_ui_redirect(nsd_request_t *req)
{
    nsd_respond_static(req, 302, NULL, NULL, 0, redirect_headers);
}

void nsd_h_ui_asset(nsd_request_t *req)
{
    for (size_t i = 0; i < nsd_ui_assets_count; i++) {
        const nsd_ui_asset_t *a = &nsd_ui_assets[i];
        if (strcmp(a->path, req->route->pattern) == 0) {
            nsd_respond_static(req, 200, a->content_type, a->data, a->len, asset_headers);
            return;
        }
    }
    nsd_respond_error(req, NS_ENOTFOUND, "the dashboard was built without this file");
}
