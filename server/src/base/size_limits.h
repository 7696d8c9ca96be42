/* size_limits.h - the daemon's size ceilings, each named once (as curl names its
 * DYN_* limits): a buffer that reaches its ceiling fails instead of growing. */
#ifndef NSD_SIZE_LIMITS_H
#define NSD_SIZE_LIMITS_H

#include <stddef.h>

#define NSD_MIB ((size_t)1 << 20)

/* One answer body (statistics, /sync, /grad; JSON or safetensors). */
#define NSD_ANSWER_MAX ((size_t)1 << 30)

/* The block a streamed answer is handed to libmicrohttpd in (respond.c):
 * what the reader holds besides the piece being written. */
#define NSD_STREAM_BLOCK ((size_t)64 * 1024)

/* One error body ({"error": {"code", "message"}}). */
#define NSD_ERROR_BODY_MAX ((size_t)64 * 1024)

/* Channels of one layer in an imported checkpoint (or snapshot). */
#define NSD_CHECKPOINT_CHANNELS_MAX ((size_t)1 << 24)

/* One /metrics exposition. */
#define NSD_METRICS_MAX (64 * NSD_MIB)

/* Request body read and dropped after an early answer, so a client that
 * ignores the answer still gets it; beyond, the connection closes. */
#define NSD_DISCARD_MAX (16 * NSD_MIB)

/* Log bytes committed since the last snapshot pass that trigger the next
 * one early, so the log (and recovery time) stays bounded. */
#define NSD_SNAPSHOT_LOG_BYTES (64 * NSD_MIB)

#endif /* NSD_SIZE_LIMITS_H */
