/* clock.c - the daemon's only clock reads (see clock.h). */
#include "clock.h"

static struct timespec read_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return ts;
}

uint64_t nsd_now_ns(void)
{
    struct timespec ts = read_clock(CLOCK_MONOTONIC);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t nsd_now_us(void)
{
    struct timespec ts = read_clock(CLOCK_MONOTONIC);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t nsd_now_ms(void)
{
    struct timespec ts = read_clock(CLOCK_MONOTONIC);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t nsd_wall_ms(void)
{
    struct timespec ts = read_clock(CLOCK_REALTIME);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec nsd_wall_time(void)
{
    return read_clock(CLOCK_REALTIME);
}

struct timespec nsd_deadline_in(uint64_t delay_ms)
{
    struct timespec ts = read_clock(CLOCK_MONOTONIC);
    uint64_t ns = (uint64_t)ts.tv_nsec + (delay_ms % 1000u) * 1000000u;
    ts.tv_sec += (time_t)(delay_ms / 1000u + ns / 1000000000u);
    ts.tv_nsec = (long)(ns % 1000000000u);
    return ts;
}
