/* clock.h - the daemon's monotonic clock in milliseconds. */
#ifndef NSD_CLOCK_H
#define NSD_CLOCK_H

#include <stdint.h>

/*! nsd_now_ms() : CLOCK_MONOTONIC in milliseconds (the clock of every
 *  'now_ms' argument of the registry). Thread-safe. */
uint64_t nsd_now_ms(void);

#endif /* NSD_CLOCK_H */
