/*
 * sched.c - what is due: binary min-heaps of nodes keyed by time (ties go
 * to the older id), one run heap per class with OTP always asked first,
 * one timer heap for expiry and purge; and the retry backoff with jitter.
 * Callers hold the queue lock; nothing here locks or allocates per node.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "queue/queue_int.h"

static int	sched_less(const struct sched_node *, const struct sched_node *);
static void	sched_swap(struct sched_heap *, size_t, size_t);
static void	sched_up(struct sched_heap *, size_t);
static void	sched_down(struct sched_heap *, size_t);

static int
sched_less(const struct sched_node *a, const struct sched_node *b)
{
	if (a->key != b->key)
		return a->key < b->key;
	return strcmp(a->id, b->id) < 0;
}

static void
sched_swap(struct sched_heap *h, size_t i, size_t j)
{
	struct sched_node *t = h->v[i];

	h->v[i] = h->v[j];
	h->v[j] = t;
	h->v[i]->idx = i;
	h->v[j]->idx = j;
}

static void
sched_up(struct sched_heap *h, size_t i)
{
	while (i > 0 && sched_less(h->v[i], h->v[(i - 1) / 2])) {
		sched_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void
sched_down(struct sched_heap *h, size_t i)
{
	size_t l, r, m;

	for (;;) {
		l = 2 * i + 1;
		r = l + 1;
		m = i;
		if (l < h->n && sched_less(h->v[l], h->v[m]))
			m = l;
		if (r < h->n && sched_less(h->v[r], h->v[m]))
			m = r;
		if (m == i)
			return;
		sched_swap(h, i, m);
		i = m;
	}
}

void
sched_heap_init(struct sched_heap *h)
{
	memset(h, 0, sizeof(*h));
}

void
sched_heap_free(struct sched_heap *h)
{
	size_t i;

	for (i = 0; i < h->n; i++)
		h->v[i]->idx = SCHED_NONE;
	free(h->v);
	memset(h, 0, sizeof(*h));
}

int
sched_heap_set(struct sched_heap *h, struct sched_node *nd, time_t key)
{
	struct sched_node **nv;
	size_t ncap;

	if (nd->idx != SCHED_NONE) {
		nd->key = key;
		sched_up(h, nd->idx);
		sched_down(h, nd->idx);
		return 0;
	}
	if (h->n == h->cap) {
		ncap = h->cap ? h->cap * 2 : 64;
		if ((nv = realloc(h->v, ncap * sizeof(*nv))) == NULL)
			return -1;
		h->v = nv;
		h->cap = ncap;
	}
	nd->key = key;
	nd->idx = h->n;
	h->v[h->n++] = nd;
	sched_up(h, nd->idx);
	return 0;
}

void
sched_heap_del(struct sched_heap *h, struct sched_node *nd)
{
	size_t i = nd->idx;

	if (i == SCHED_NONE || i >= h->n || h->v[i] != nd)
		return;
	h->n--;
	if (i != h->n) {
		h->v[i] = h->v[h->n];
		h->v[i]->idx = i;
		sched_up(h, i);
		sched_down(h, i);
	}
	nd->idx = SCHED_NONE;
}

struct sched_node *
sched_heap_top(const struct sched_heap *h)
{
	return h->n ? h->v[0] : NULL;
}

void
sched_init(struct sched *s)
{
	int c;

	for (c = 0; c < Q_CLASS_COUNT; c++)
		sched_heap_init(&s->run[c]);
	sched_heap_init(&s->timers);
}

void
sched_free(struct sched *s)
{
	int c;

	for (c = 0; c < Q_CLASS_COUNT; c++)
		sched_heap_free(&s->run[c]);
	sched_heap_free(&s->timers);
}

struct sched_node *
sched_due(const struct sched *s, time_t now)
{
	struct sched_node *nd;
	int c;

	/* Class order is priority order: Q_CLASS_OTP is 0. */
	for (c = 0; c < Q_CLASS_COUNT; c++)
		if ((nd = sched_heap_top(&s->run[c])) != NULL && nd->key <= now)
			return nd;
	return NULL;
}

time_t
sched_next(const struct sched *s)
{
	struct sched_node *nd;
	time_t t = 0;
	int c;

	for (c = 0; c < Q_CLASS_COUNT; c++)
		if ((nd = sched_heap_top(&s->run[c])) != NULL &&
		    (t == 0 || nd->key < t))
			t = nd->key;
	return t;
}

int
sched_backoff(const struct q_class_params *p, int attempts, double u)
{
	double d, j;
	int i, lo, hi;

	lo = p->retry_min > 0 ? p->retry_min : 1;
	hi = p->retry_max >= lo ? p->retry_max : lo;
	d = lo;
	for (i = 1; i < attempts && d < hi; i++)
		d *= 2;
	if (d > hi)
		d = hi;
	j = p->jitter;
	if (j < 0 || isnan(j))
		j = 0;
	if (j > 0.9)
		j = 0.9;
	if (u < 0 || u >= 1)
		u = 0.5;
	d *= 1.0 + j * (2.0 * u - 1.0);
	return d < 1 ? 1 : (int)lround(d);
}

double
sched_random(void)
{
	static __thread unsigned short xs[3];
	static __thread int seeded;

	if (!seeded) {
		if (getrandom(xs, sizeof(xs), 0) != sizeof(xs))
			xs[0] = (unsigned short)(uintptr_t)&xs;
		seeded = 1;
	}
	return erand48(xs);
}
