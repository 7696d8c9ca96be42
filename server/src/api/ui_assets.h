/* ui_assets.h - the dashboard's files (server/ui/), compiled into normstatd.
 *
 * The table is generated at build time by server/ui/embed.py from the files
 * under server/ui/ (see server/ui/ui.mk); nothing is read from disk or
 * fetched at run time. Read-only, any thread. */
#ifndef NSD_UI_ASSETS_H
#define NSD_UI_ASSETS_H

#include <stddef.h>

typedef struct nsd_ui_asset_s {
    const char *path;         /* as served: "/ui/", "/ui/dashboard.js" */
    const char *content_type; /* with charset for text */
    const unsigned char *data;
    size_t len;
} nsd_ui_asset_t;

/* The files, and how many there are. */
extern const nsd_ui_asset_t nsd_ui_assets[];
extern const size_t nsd_ui_assets_count;

#endif
