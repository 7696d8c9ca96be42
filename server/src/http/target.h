/* target.h - the request target and body framing as the client sent them,
 * checked where libmicrohttpd is lenient; http.c calls these. */
#ifndef NSD_TARGET_H
#define NSD_TARGET_H

#include <stddef.h>

#include "http.h"

/*! nsd_target_record() :
 *  From MHD's URI callback: keep the target as received (compared later,
 *  never read) and a copy of its query in 'req', and leave MHD 0.9.x no
 *  query to parse. @return 0 or NS_ENOMEM. */
int nsd_target_record(nsd_request_t *req, const char *uri);

/*! nsd_target_unescape() :
 *  MHD_OPTION_UNESCAPE_CALLBACK: the path stays as received (routes.c decodes it). */
size_t nsd_target_unescape(void *cls, struct MHD_Connection *conn, char *s);

/*! nsd_target_check_nul() :
 *  On the first access call, with MHD's 'url' and 'version': sets
 *  req->target_nul when a raw NUL byte cut the target short (0.9.x only). */
void nsd_target_check_nul(nsd_request_t *req, const char *url, const char *version);

/*! nsd_target_check_framing() :
 *  A body whose length two parties could read differently (request
 *  smuggling behind a proxy) is refused.
 *  @return 0 or NS_EINVAL, req->pending_detail set. */
int nsd_target_check_framing(nsd_request_t *req);

#endif /* NSD_TARGET_H */
