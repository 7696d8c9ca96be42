/* clock.h - the daemon's only clock reads: monotonic time for intervals and
 * deadlines, wall time for timestamps. Thread-safe. */
#ifndef NSD_CLOCK_H
#define NSD_CLOCK_H

#include <stdint.h>
#include <time.h>

/*! nsd_now_ms() : CLOCK_MONOTONIC in milliseconds (the clock of every
 *  'now_ms' argument of the registry). */
uint64_t nsd_now_ms(void);

/*! nsd_now_us() / nsd_now_ns() : CLOCK_MONOTONIC in micro- / nanoseconds
 *  (durations). */
uint64_t nsd_now_us(void);
uint64_t nsd_now_ns(void);

/*! nsd_wall_ms() : CLOCK_REALTIME in milliseconds since the epoch. */
uint64_t nsd_wall_ms(void);

/*! nsd_wall_time() : CLOCK_REALTIME as a timespec (log timestamps). */
struct timespec nsd_wall_time(void);

/*! nsd_deadline_in() : the CLOCK_MONOTONIC instant 'delay_ms' from now, for
 *  pthread_cond_timedwait() on a condition created with that clock. */
struct timespec nsd_deadline_in(uint64_t delay_ms);

#endif /* NSD_CLOCK_H */
