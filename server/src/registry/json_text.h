/* json_text.h - JSON numbers written as text directly, for the answers the
 * registry writes without a jansson tree (checkpoint_stream.c,
 * drift_views.c). */
#ifndef NSD_JSON_TEXT_H
#define NSD_JSON_TEXT_H

#include <normstat/proto.h>

/* Longest nsd_json_real() text plus a separator: "-2.2250738585072014e-308,". */
#define NSD_JSON_REAL_MAX 25

/*! nsd_json_real() :
 *  Append finite 'v' as "%.17g" with ".0" added to an integral value (a
 *  real that reads back bit for bit, and as a real).
 *  @return 0, NS_EVALUE if 'v' is not finite, or the buffer's error. */
int nsd_json_real(ns_buf_t *dst, double v);

#endif /* NSD_JSON_TEXT_H */
