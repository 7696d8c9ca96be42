/* queue.h - the daemon's one intrusive FIFO queue (singly linked, with a
 * tail), in the spirit of BSD's STAILQ: an element embeds an nsd_qnode_t
 * and is found again with nsd_container_of(). A zeroed nsd_queue_t is an
 * empty queue. Threads: none; the owner of the queue guards it. */
#ifndef NSD_QUEUE_H
#define NSD_QUEUE_H

#include <stddef.h>

typedef struct nsd_qnode_s {
    struct nsd_qnode_s *next;
} nsd_qnode_t;

typedef struct nsd_queue_s {
    nsd_qnode_t *head;
    nsd_qnode_t *tail; /* NULL when empty */
} nsd_queue_t;

/* The element that embeds 'node' as its member 'member'. */
#define nsd_container_of(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

static inline int nsd_queue_empty(const nsd_queue_t *q)
{
    return q->head == NULL;
}

/*! nsd_queue_push() : append 'n' at the tail. */
static inline void nsd_queue_push(nsd_queue_t *q, nsd_qnode_t *n)
{
    n->next = NULL;
    if (q->tail != NULL)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
}

/*! nsd_queue_pop() : detach the head; NULL when empty. */
static inline nsd_qnode_t *nsd_queue_pop(nsd_queue_t *q)
{
    nsd_qnode_t *n = q->head;
    if (n == NULL)
        return NULL;
    q->head = n->next;
    if (q->head == NULL)
        q->tail = NULL;
    n->next = NULL;
    return n;
}

/*! nsd_queue_take() : the whole queue, in order; 'q' is left empty. */
static inline nsd_queue_t nsd_queue_take(nsd_queue_t *q)
{
    nsd_queue_t all = *q;
    q->head = q->tail = NULL;
    return all;
}

/*! nsd_queue_concat() : append every element of 'src' to 'dst' in order;
 *  'src' is left empty. */
static inline void nsd_queue_concat(nsd_queue_t *dst, nsd_queue_t *src)
{
    if (src->head == NULL)
        return;
    if (dst->tail != NULL)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    src->head = src->tail = NULL;
}

#endif /* NSD_QUEUE_H */
