/* test_conns.c - connection admission, eviction, the reserve and deadlines
 * (http/conns.c), on socket pairs: a connection the table shuts down is
 * seen closed (end-of-file) at the pair's other end. */
#include <arpa/inet.h>
#include <pthread.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"
#include "http/conns.h"

typedef struct peer_s {
    nsd_conn_t *c;
    int ours, theirs; /* the daemon's end, the client's end */
} peer_t;

static struct sockaddr_in addr_of(int last_octet)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(0x7f000000u | (unsigned)last_octet);
    return a;
}

/* Admit and start a connection from 127.0.0.<octet>: 1 if admitted. */
static int connect_from(nsd_conns_t *t, int octet, peer_t *p)
{
    struct sockaddr_in a = addr_of(octet);
    memset(p, 0, sizeof(*p));
    p->ours = p->theirs = -1;
    if (!nsd_conns_admit(t, (const struct sockaddr *)&a, sizeof(a)))
        return 0;
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    p->ours = sv[0];
    p->theirs = sv[1];
    p->c = nsd_conns_started(t, p->ours, (const struct sockaddr *)&a, sizeof(a));
    ck_assert_ptr_nonnull(p->c);
    return 1;
}

/* Was the daemon's end shut down? (the client's end reads end-of-file) */
static int was_shut(const peer_t *p)
{
    char b;
    return recv(p->theirs, &b, 1, MSG_DONTWAIT) == 0;
}

static void hang_up(nsd_conns_t *t, peer_t *p)
{
    nsd_conns_closed(t, p->c);
    close(p->ours);
    close(p->theirs);
    p->c = NULL;
}

static nsd_conns_t *table(uint32_t max, uint32_t per_address, uint64_t header_ms)
{
    nsd_conns_config_t cfg = {max, per_address, header_ms, 60000, 60000};
    nsd_conns_t *t = nsd_conns_create(&cfg);
    ck_assert_ptr_nonnull(t);
    return t;
}

START_TEST(test_per_address_limit)
{
    nsd_conns_t *t = table(100, 3, 60000);
    peer_t p[4];
    for (int i = 0; i < 3; i++)
        ck_assert(connect_from(t, 2, &p[i]));
    ck_assert(!connect_from(t, 2, &p[3]));
    ck_assert(connect_from(t, 3, &p[3])); /* another address is not affected */
    nsd_conns_stats_t st;
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.refused[NSD_REFUSED_PER_ADDRESS], 1);
    ck_assert_uint_eq(st.open_general, 4);
    hang_up(t, &p[0]);
    ck_assert(connect_from(t, 2, &p[0])); /* a slot of its own again */
    for (int i = 0; i < 4; i++)
        hang_up(t, &p[i]);
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.open_general, 0);
    nsd_conns_free(t);
}
END_TEST

START_TEST(test_eviction_of_the_heaviest_idle)
{
    nsd_conns_t *t = table(4, 10, 60000);
    peer_t a[3], b, c;
    for (int i = 0; i < 3; i++)
        ck_assert(connect_from(t, 2, &a[i])); /* .2 holds 3, waiting for headers */
    ck_assert(connect_from(t, 3, &b));
    /* a[0] is inside a request: never evicted */
    nsd_conns_request_line(t, a[0].c);
    nsd_conns_headers_done(t, a[0].c);
    ck_assert(connect_from(t, 4, &c)); /* full: .2's oldest idle one makes room */
    ck_assert(!was_shut(&a[0]));
    ck_assert(was_shut(&a[1]));
    ck_assert(!was_shut(&a[2]) && !was_shut(&b));
    ck_assert(!nsd_conns_reserved(c.c));
    nsd_conns_stats_t st;
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.closed[NSD_CLOSED_EVICTED], 1);
    ck_assert_uint_eq(st.open_general, 4);
    /* .3 (1) against .2 (now 2): not two more, so no eviction: the reserve */
    peer_t d, e, f;
    ck_assert(connect_from(t, 3, &d));
    ck_assert(nsd_conns_reserved(d.c));
    ck_assert(!was_shut(&a[2]));
    ck_assert(connect_from(t, 3, &e) && nsd_conns_reserved(e.c));
    ck_assert(!connect_from(t, 3, &f)); /* two reserved slots per address */
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.refused[NSD_REFUSED_LIMIT], 1);
    ck_assert_uint_eq(st.open_reserve, 2);
    /* the reserve's one request other than a probe */
    ck_assert(nsd_conns_take_other(t, d.c));
    ck_assert(!nsd_conns_take_other(t, e.c));
    hang_up(t, &d);
    ck_assert(nsd_conns_take_other(t, e.c));
    peer_t *all[] = {&a[0], &a[1], &a[2], &b, &c, &e};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        hang_up(t, all[i]);
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.open_general + st.open_reserve, 0);
    nsd_conns_free(t);
}
END_TEST

START_TEST(test_deadlines)
{
    /* header_ms 0: due at once; the body (60 s) is not */
    nsd_conns_t *t = table(10, 10, 0);
    peer_t p, q;
    ck_assert(connect_from(t, 2, &p));
    ck_assert(connect_from(t, 2, &q));
    ck_assert(nsd_conns_overdue(t, p.c));
    nsd_conns_request_line(t, q.c);
    nsd_conns_headers_done(t, q.c);
    ck_assert(!nsd_conns_overdue(t, q.c));
    nsd_conns_body_done(t, q.c);
    ck_assert(!nsd_conns_overdue(t, q.c)); /* no deadline while handled */
    nsd_conns_stats_t st;
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.closed[NSD_CLOSED_HEADER_TIMEOUT], 1);
    hang_up(t, &p);
    hang_up(t, &q);
    nsd_conns_free(t);
}
END_TEST

START_TEST(test_sweep_shuts_overdue)
{
    nsd_conns_t *t = table(10, 10, 0);
    ck_assert_int_eq(nsd_conns_start(t), 0);
    peer_t p;
    ck_assert(connect_from(t, 2, &p));
    /* bounded wait for the sweep (it runs every 20 ms) */
    struct timeval tv = {10, 0};
    setsockopt(p.theirs, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char b;
    ck_assert_int_eq(recv(p.theirs, &b, 1, 0), 0);
    hang_up(t, &p);
    nsd_conns_free(t);
}
END_TEST

typedef struct start_call_s {
    nsd_conns_t *t;
    int fd;
    struct sockaddr_in addr;
    nsd_conn_t *c;
} start_call_t;

static void *start_elsewhere(void *arg)
{
    start_call_t *call = arg;
    call->c = nsd_conns_started(call->t, call->fd, (const struct sockaddr *)&call->addr,
                                sizeof(call->addr));
    return NULL;
}

/* Admitted on one thread (the accept thread), started on another (a daemon
 * thread): the admission, reserve slot included, follows the socket. */
START_TEST(test_handoff_to_another_thread)
{
    nsd_conns_t *t = table(1, 3, 60000);
    struct sockaddr_in a = addr_of(2);
    int sv[3][2];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]), 0);
    const struct sockaddr *sa = (const struct sockaddr *)&a;
    ck_assert(nsd_conns_admit_socket(t, sv[0][0], sa, sizeof(a))); /* the general slot */
    ck_assert(nsd_conns_admit_socket(t, sv[1][0], sa, sizeof(a))); /* a reserved one */
    start_call_t call[2];
    for (int i = 1; i >= 0; i--) { /* started in another order than admitted */
        call[i] = (start_call_t){t, sv[i][0], a, NULL};
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, start_elsewhere, &call[i]), 0);
        pthread_join(th, NULL);
        ck_assert_ptr_nonnull(call[i].c);
    }
    ck_assert(!nsd_conns_reserved(call[0].c));
    ck_assert(nsd_conns_reserved(call[1].c));
    nsd_conns_stats_t st;
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.open_general, 1);
    ck_assert_uint_eq(st.open_reserve, 1);
    /* A third is admitted to the second reserve slot; abandoned, it gives it back. */
    ck_assert(nsd_conns_admit_socket(t, sv[2][0], sa, sizeof(a)));
    nsd_conns_abandon_socket(t, sv[2][0]);
    ck_assert(nsd_conns_admit_socket(t, sv[2][0], sa, sizeof(a)));
    nsd_conns_abandon_socket(t, sv[2][0]);
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.open_reserve, 1);
    ck_assert_uint_eq(st.accepted, 2);
    for (int i = 0; i < 2; i++)
        nsd_conns_closed(t, call[i].c);
    nsd_conns_stats(t, &st);
    ck_assert_uint_eq(st.open_general + st.open_reserve, 0);
    for (int i = 0; i < 3; i++) {
        close(sv[i][0]);
        close(sv[i][1]);
    }
    nsd_conns_free(t);
}
END_TEST

static Suite *conns_suite(void)
{
    Suite *s = suite_create("conns");
    TCase *tc = tcase_create("conns");
    tcase_add_test(tc, test_per_address_limit);
    tcase_add_test(tc, test_eviction_of_the_heaviest_idle);
    tcase_add_test(tc, test_deadlines);
    tcase_add_test(tc, test_sweep_shuts_overdue);
    tcase_add_test(tc, test_handoff_to_another_thread);
    tcase_set_timeout(tc, 30);
    suite_add_tcase(s, tc);
    return s;
}

NS_TEST_MAIN(conns_suite)
