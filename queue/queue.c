/*
 * queue.c - the public queue API: an in-memory index of every spooled
 * message (hash by id + the due heaps of sched.c), leases for delivery
 * workers, admin operations, expiry and purge (a timer thread), and DSN
 * generation.  One mutex guards memory.  Enqueue and the end of a lease
 * write outside it; other state writes are rare and happen under it, and
 * never for a leased message (the lease owner writes when it ends).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <unistd.h>

#include "queue/queue_int.h"

struct qmsg {
	struct q_envelope env;
	int		 leased;	/* handed to a worker */
	int		 deleted;	/* deleted while leased: drop at release */
	time_t		 flushed_from;	/* next_attempt before an admin's flush, 0 none */
	unsigned	 gen;		/* bumped by every change to env */
	struct sched_node run;		/* in run[class] when due-able */
	struct sched_node timer;	/* expiry, or purge when finished */
	struct qmsg	*hnext;
	struct qmsg	*onext, *oprev;	/* every message, in id order */
};

struct queue {
	struct queue_params p;
	char		*dir, *bounce_from, *hostname;
	struct spool	 sp;
	pthread_mutex_t	 mtx;
	pthread_cond_t	 cv;		/* lease waiters */
	pthread_cond_t	 tcv;		/* the timer thread */
	struct sched	 sched;
	struct qmsg	**tab;
	size_t		 tabsz, n;
	/* Every message in id (= age) order, so queue_list's first page walks
	 * limit messages, not the queue.  New ids only grow, so an insert
	 * lands at the tail (a few steps back at most: ids are drawn before
	 * the file is written). */
	struct qmsg	*ohead, *otail;
	/*
	 * Recovery of a large spool (over q_load_sync_max files) runs on its
	 * own thread (q_load_main) once the file names are listed, so the
	 * daemon answers while it loads: new messages are enqueued and
	 * delivered, and due recovered ones as soon as they are in.  Calls
	 * that need the whole index (get, list, stats, admin changes) wait on
	 * lcv until loading is over.  Recovered messages are read in
	 * directory order (the inodes of one directory together) and appended
	 * to the head segment of the id list that ends at lcursor, before
	 * every new message; that segment is sorted once at the end
	 * (q_load_sort).
	 */
	pthread_t	 load_thr;
	pthread_cond_t	 lcv;
	int		 loading, load_ok;
	struct qmsg	*lcursor;
	char		(*lids)[QUEUE_ID_LEN + 1];	/* the listed ids */
	size_t		 nlids, caplids;
	/* The strings of the index that many messages share (sender, tag,
	 * last error, replies) are kept once, with a count (q_intern): a
	 * deferred message then costs its own id and address, not another
	 * copy of the same 450 reply.  imtx is taken alone or inside mtx. */
	pthread_mutex_t	 imtx;
	struct q_istr	**itab;
	size_t		 itabsz, ni;
	int		 paused, shutdown, stopping, thread_ok;
	pthread_t	 timer_thr;
	uint64_t	 delivered, deferred, failed, expired, bounces;
	time_t		(*clock)(void);
};

struct q_istr {
	struct q_istr	*next;
	uint32_t	 hash;
	uint32_t	 refs;
	char		 s[];
};

struct q_recover {
	struct queue	*q;
	size_t		 ok, bad;
	char		**dsn;		/* ids whose DSN is still owed */
	size_t		 ndsn, capdsn;
};

static time_t	q_now(struct queue *);
static uint32_t	q_hash(const char *);
static struct qmsg *q_find(struct queue *, const char *);
static int	q_insert(struct queue *, struct qmsg *);
static int	q_hash_insert(struct queue *, struct qmsg *);
static int	q_wait_loaded(struct queue *);
static void	*q_load_main(void *);
static void	q_list_one(void *, const char *);
static void	q_unlink(struct queue *, struct qmsg *);
static void	q_order_link(struct queue *, struct qmsg *);
static void	q_order_unlink(struct queue *, struct qmsg *);
static void	q_msg_free(struct queue *, struct qmsg *);
static char	*q_intern(struct queue *, const char *, size_t max);
static void	q_unintern(struct queue *, char *);
static int	q_env_intern(struct queue *, struct q_envelope *);
static enum q_msg_state q_state(const struct qmsg *);
static void	q_schedule(struct queue *, struct qmsg *);
static enum q_status q_persist_locked(struct queue *, struct qmsg *);
static int	q_dsn_needed(const struct qmsg *);
static int	q_expire_locked(struct queue *, struct qmsg *, time_t);
static void	q_send_dsn(struct queue *, struct q_envelope *);
static void	q_expired_sync(struct queue *);
static void	q_expired_save(struct queue *, struct qmsg **, size_t);
static void	q_run_timers_locked(struct queue *);
static void	*q_timer_main(void *);
static void	q_recover_one(void *, const char *);
static int	q_addr_ok(const char *, int allow_empty);
static void	q_log(struct queue *, int, const char *, ...)
		    __attribute__((format(printf, 3, 4)));
static void	q_abstime(struct timespec *, long ms);
static void	q_abstime_us(struct timespec *, long us);

size_t q_load_sync_max = 10000;
unsigned q_load_test_delay_ms;
#define Q_LOAD_WAIT_MS	2000
#define Q_EXPIRE_BATCH	512	/* expiries whose events one sync covers */

static const struct q_class_params q_defaults[Q_CLASS_COUNT] = {
	[Q_CLASS_OTP] = { 5, 60, 600, 0.2 },
	[Q_CLASS_DEFAULT] = { 300, 4000, 5 * 86400, 0.2 },
};

/* --- small helpers ------------------------------------------------- */

static void
q_log(struct queue *q, int prio, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (q->p.log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	q->p.log(prio, line);
}

static time_t
q_now(struct queue *q)
{
	return q->clock ? q->clock() : time(NULL);
}

static void
q_abstime_us(struct timespec *ts, long us)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += us / 1000000L;
	ts->tv_nsec += (us % 1000000L) * 1000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static void
q_abstime(struct timespec *ts, long ms)
{
	q_abstime_us(ts, ms * 1000L);
}

static uint32_t
q_hash(const char *id)
{
	uint32_t h = 2166136261u;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return h;
}

static struct qmsg *
q_find(struct queue *q, const char *id)
{
	struct qmsg *m;

	if (id == NULL || q->tabsz == 0)
		return NULL;
	for (m = q->tab[q_hash(id) & (q->tabsz - 1)]; m != NULL; m = m->hnext)
		if (strcmp(m->env.id, id) == 0)
			return m;
	return NULL;
}

static int
q_insert(struct queue *q, struct qmsg *m)
{
	if (q_hash_insert(q, m) == -1)
		return -1;
	q_order_link(q, m);
	return 0;
}

/* m into the hash table (grown as needed); not yet in the id order. */
static int
q_hash_insert(struct queue *q, struct qmsg *m)
{
	struct qmsg **nt, *e, *next;
	size_t nsz, i, b;

	if (q->n + 1 > q->tabsz) {
		nsz = q->tabsz ? q->tabsz * 2 : 1024;
		if ((nt = calloc(nsz, sizeof(*nt))) == NULL)
			return -1;
		for (i = 0; i < q->tabsz; i++)
			for (e = q->tab[i]; e != NULL; e = next) {
				next = e->hnext;
				b = q_hash(e->env.id) & (nsz - 1);
				e->hnext = nt[b];
				nt[b] = e;
			}
		free(q->tab);
		q->tab = nt;
		q->tabsz = nsz;
	}
	b = q_hash(m->env.id) & (q->tabsz - 1);
	m->hnext = q->tab[b];
	q->tab[b] = m;
	q->n++;
	m->run.id = m->env.id;
	m->run.owner = m;
	m->timer.id = m->env.id;
	m->timer.owner = m;
	return 0;
}

static void
q_unlink(struct queue *q, struct qmsg *m)
{
	struct qmsg **pp;

	sched_heap_del(&q->sched.run[m->env.klass], &m->run);
	sched_heap_del(&q->sched.timers, &m->timer);
	for (pp = &q->tab[q_hash(m->env.id) & (q->tabsz - 1)]; *pp != NULL;
	    pp = &(*pp)->hnext)
		if (*pp == m) {
			*pp = m->hnext;
			q->n--;
			q_order_unlink(q, m);
			return;
		}
}

/* Links m into the id-ordered list right after p (NULL: at the head). */
static void
q_order_after(struct queue *q, struct qmsg *p, struct qmsg *m)
{
	m->oprev = p;
	m->onext = p != NULL ? p->onext : q->ohead;
	if (m->onext != NULL)
		m->onext->oprev = m;
	else
		q->otail = m;
	if (p != NULL)
		p->onext = m;
	else
		q->ohead = m;
}

/* Links a new message into the id-ordered list: from the tail back to the
 * first id below its own (the tail itself but for racing enqueues). */
static void
q_order_link(struct queue *q, struct qmsg *m)
{
	struct qmsg *p = q->otail;

	while (p != NULL && strcmp(p->env.id, m->env.id) > 0)
		p = p->oprev;
	q_order_after(q, p, m);
}

static void
q_order_unlink(struct queue *q, struct qmsg *m)
{
	if (m == q->lcursor)
		q->lcursor = m->oprev;
	if (m->oprev != NULL)
		m->oprev->onext = m->onext;
	else
		q->ohead = m->onext;
	if (m->onext != NULL)
		m->onext->oprev = m->oprev;
	else
		q->otail = m->oprev;
	m->onext = m->oprev = NULL;
}

/* Frees a message of the index: its shared strings go back to the table. */
static void
q_msg_free(struct queue *q, struct qmsg *m)
{
	size_t i;

	if (m == NULL)
		return;
	q_unintern(q, m->env.sender);
	q_unintern(q, m->env.tag);
	q_unintern(q, m->env.last_error);
	m->env.sender = m->env.tag = m->env.last_error = NULL;
	for (i = 0; m->env.rcpts != NULL && i < m->env.nrcpt; i++) {
		q_unintern(q, m->env.rcpts[i].reply);
		m->env.rcpts[i].reply = NULL;
	}
	q_envelope_clear(&m->env);
	free(m);
}

/* --- shared strings -------------------------------------------------- */

/* The shared copy of s (at most max bytes of it), one more reference;
 * NULL for NULL, or when out of memory. */
static char *
q_intern(struct queue *q, const char *s, size_t max)
{
	struct q_istr **nt, *e, *next;
	uint32_t h = 2166136261u;
	size_t n, i, nsz;

	if (s == NULL)
		return NULL;
	n = strnlen(s, max);
	for (i = 0; i < n; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	pthread_mutex_lock(&q->imtx);
	if (q->ni + 1 > q->itabsz) {
		nsz = q->itabsz ? q->itabsz * 2 : 64;
		if ((nt = calloc(nsz, sizeof(*nt))) != NULL) {
			for (i = 0; i < q->itabsz; i++)
				for (e = q->itab[i]; e != NULL; e = next) {
					next = e->next;
					e->next = nt[e->hash & (nsz - 1)];
					nt[e->hash & (nsz - 1)] = e;
				}
			free(q->itab);
			q->itab = nt;
			q->itabsz = nsz;
		} else if (q->itabsz == 0) {
			pthread_mutex_unlock(&q->imtx);
			return NULL;
		}
	}
	for (e = q->itab[h & (q->itabsz - 1)]; e != NULL; e = e->next)
		if (e->hash == h && strncmp(e->s, s, n) == 0 && e->s[n] == '\0' &&
		    e->refs < UINT32_MAX) {
			e->refs++;
			pthread_mutex_unlock(&q->imtx);
			return e->s;
		}
	if ((e = malloc(sizeof(*e) + n + 1)) == NULL) {
		pthread_mutex_unlock(&q->imtx);
		return NULL;
	}
	memcpy(e->s, s, n);
	e->s[n] = '\0';
	e->hash = h;
	e->refs = 1;
	e->next = q->itab[h & (q->itabsz - 1)];
	q->itab[h & (q->itabsz - 1)] = e;
	q->ni++;
	pthread_mutex_unlock(&q->imtx);
	return e->s;
}

static void
q_unintern(struct queue *q, char *s)
{
	struct q_istr *e, **pp;

	if (s == NULL)
		return;
	e = (struct q_istr *)(void *)(s - offsetof(struct q_istr, s));
	pthread_mutex_lock(&q->imtx);
	if (--e->refs == 0) {
		for (pp = &q->itab[e->hash & (q->itabsz - 1)]; *pp != NULL; pp = &(*pp)->next)
			if (*pp == e) {
				*pp = e->next;
				q->ni--;
				break;
			}
		free(e);
	}
	pthread_mutex_unlock(&q->imtx);
}

/* Swaps an envelope's own (malloc'd) strings for shared ones: all or,
 * out of memory, none (-1, the envelope unchanged). */
static int
q_env_intern(struct queue *q, struct q_envelope *e)
{
	char *s[3], **rv = NULL;
	size_t i;

	s[0] = q_intern(q, e->sender, Q_MAX_ADDR);
	s[1] = q_intern(q, e->tag, Q_MAX_TEXT);
	s[2] = q_intern(q, e->last_error, Q_MAX_TEXT);
	if ((e->sender && !s[0]) || (e->tag && !s[1]) || (e->last_error && !s[2]) ||
	    (e->nrcpt > 0 && (rv = calloc(e->nrcpt, sizeof(*rv))) == NULL))
		goto fail;
	for (i = 0; i < e->nrcpt; i++)
		if (e->rcpts[i].reply != NULL &&
		    (rv[i] = q_intern(q, e->rcpts[i].reply, Q_MAX_TEXT)) == NULL)
			goto fail;
	free(e->sender);
	free(e->tag);
	free(e->last_error);
	e->sender = s[0];
	e->tag = s[1];
	e->last_error = s[2];
	for (i = 0; i < e->nrcpt; i++) {
		free(e->rcpts[i].reply);
		e->rcpts[i].reply = rv[i];
	}
	free(rv);
	return 0;
fail:
	for (i = 0; rv != NULL && i < e->nrcpt; i++)
		q_unintern(q, rv[i]);
	free(rv);
	for (i = 0; i < 3; i++)
		q_unintern(q, s[i]);
	return -1;
}

static int
q_addr_ok(const char *a, int allow_empty)
{
	size_t n;

	if (a == NULL)
		return 0;
	n = strnlen(a, Q_MAX_ADDR + 1);
	if (n > Q_MAX_ADDR || (n == 0 && !allow_empty))
		return 0;
	for (; *a != '\0'; a++)
		if ((unsigned char)*a <= 0x20 || (unsigned char)*a == 0x7f)
			return 0;
	return 1;
}

static enum q_msg_state
q_state(const struct qmsg *m)
{
	if (m->env.finished)
		return Q_MSG_DONE;
	if (m->leased)
		return Q_MSG_DELIVERING;
	if (m->env.held)
		return Q_MSG_HELD;
	if (m->env.attempts > 0)
		return Q_MSG_DEFERRED;
	return Q_MSG_QUEUED;
}

/* Puts m in the heaps its state asks for. */
static void
q_schedule(struct queue *q, struct qmsg *m)
{
	struct sched_heap *run = &q->sched.run[m->env.klass];

	if (m->env.finished) {
		sched_heap_del(run, &m->run);
		sched_heap_set(&q->sched.timers, &m->timer,
		    m->env.finished + (q->p.keep_done > 0 ? q->p.keep_done : 0));
		return;
	}
	sched_heap_set(&q->sched.timers, &m->timer, m->env.expires);
	if (m->env.held || m->leased)
		sched_heap_del(run, &m->run);
	else
		sched_heap_set(run, &m->run, m->env.next_attempt);
}

static enum q_status
q_persist_locked(struct queue *q, struct qmsg *m)
{
	enum q_status st;

	st = spool_store_state(&q->sp, &m->env);
	if (st != Q_OK)
		q_log(q, LOG_ERR, "queue: id=%s state not saved (status %d)", m->env.id, st);
	return st;
}

static int
q_dsn_needed(const struct qmsg *m)
{
	size_t i;

	if (m->env.klass != Q_CLASS_DEFAULT || !m->env.finished ||
	    (m->env.flags & (Q_F_BOUNCE | Q_F_NOTIFIED)) ||
	    m->env.sender == NULL || *m->env.sender == '\0')
		return 0;
	for (i = 0; i < m->env.nrcpt; i++)
		if (m->env.rcpts[i].state == Q_RCPT_FAILED ||
		    m->env.rcpts[i].state == Q_RCPT_EXPIRED)
			return 1;
	return 0;
}

/* Every recipient still open becomes EXPIRED; returns 1 if a DSN is owed. */
static int
q_expire_locked(struct queue *q, struct qmsg *m, time_t now)
{
	struct q_rcpt *r;
	size_t i;

	for (i = 0; i < m->env.nrcpt; i++) {
		r = &m->env.rcpts[i];
		if (r->state != Q_RCPT_PENDING && r->state != Q_RCPT_DEFERRED)
			continue;
		r->state = Q_RCPT_EXPIRED;
		if (r->reply == NULL)
			r->reply = q_intern(q, m->env.klass == Q_CLASS_OTP ?
			    "code expired before delivery" :
			    "message lifetime expired before delivery", Q_MAX_TEXT);
		q->expired++;
		if (q->p.expired != NULL)
			q->p.expired(q->p.expired_arg, &m->env, i);
	}
	m->env.finished = now;
	m->gen++;
	q_log(q, LOG_INFO, "queue: id=%s class=%s expired attempts=%d", m->env.id,
	    q_class_name(m->env.klass), m->env.attempts);
	return q_dsn_needed(m);
}

/* Builds and enqueues the DSN for env (a copy; freed here), then marks the
 * message notified.  Called without the lock. */
static void
q_send_dsn(struct queue *q, struct q_envelope *env)
{
	char id[QUEUE_ID_LEN + 1], from[600];
	struct q_envelope tmpl;
	struct q_rcpt rcpt;
	struct qmsg *m;
	enum q_status st;
	char *body = NULL, *msg;
	size_t blen = 0, mlen = 0, i;

	if (spool_read_body(&q->sp, env->id, &body, &blen) != Q_OK)
		body = NULL;
	if (q->bounce_from != NULL && *q->bounce_from != '\0')
		snprintf(from, sizeof(from), "%s", q->bounce_from);
	else
		snprintf(from, sizeof(from), "MAILER-DAEMON@%s",
		    q->hostname && *q->hostname ? q->hostname : "localhost");
	msg = dsn_build(env, body, blen, from, q->hostname, q_now(q), &mlen);
	free(body);
	if (msg == NULL) {
		q_log(q, LOG_ERR, "queue: id=%s DSN not built (out of memory)", env->id);
		goto done;
	}
	if (q->p.sign != NULL) {
		size_t slen = 0;
		char *signed_msg = q->p.sign(q->p.sign_arg, msg, mlen, &slen);

		if (signed_msg != NULL) {
			free(msg);
			msg = signed_msg;
			mlen = slen;
		}
	}
	memset(&tmpl, 0, sizeof(tmpl));
	memset(&rcpt, 0, sizeof(rcpt));
	rcpt.addr = env->sender;
	tmpl.klass = Q_CLASS_DEFAULT;
	tmpl.sender = "";
	tmpl.nrcpt = 1;
	tmpl.rcpts = &rcpt;
	tmpl.flags = Q_F_BOUNCE;
	/* the original header section may be 8-bit (a UTF-8 address, RFC 6532) */
	for (i = 0; i < mlen; i++)
		if ((unsigned char)msg[i] >= 0x80) {
			tmpl.flags |= Q_F_8BIT;
			break;
		}
	tmpl.tag = "dsn";
	st = queue_enqueue(q, &tmpl, msg, mlen, id);
	free(msg);
	if (st != Q_OK) {
		q_log(q, LOG_ERR, "queue: id=%s DSN not queued (status %d)", env->id, st);
		goto done;
	}
	/* the recipient (the bounced mail's sender) is not logged: the log keeps no
	 * address in clear; queue.show of the DSN names it */
	q_log(q, LOG_INFO, "queue: id=%s dsn=%s", env->id, id);
	pthread_mutex_lock(&q->mtx);
	q->bounces++;
	if ((m = q_find(q, env->id)) != NULL && !m->deleted) {
		m->env.flags |= Q_F_NOTIFIED;
		m->gen++;
		if (!m->leased)
			q_persist_locked(q, m);
	}
	pthread_mutex_unlock(&q->mtx);
done:
	q_envelope_free(env);
}

/* --- envelopes ------------------------------------------------------ */

void
q_envelope_clear(struct q_envelope *e)
{
	size_t i;

	if (e == NULL)
		return;
	free(e->sender);
	free(e->last_error);
	free(e->tag);
	for (i = 0; e->rcpts != NULL && i < e->nrcpt; i++) {
		free(e->rcpts[i].addr);
		free(e->rcpts[i].reply);
		free(e->rcpts[i].err_class);
	}
	free(e->rcpts);
	memset(e, 0, sizeof(*e));
}

void
q_envelope_free(struct q_envelope *e)
{
	if (e == NULL)
		return;
	q_envelope_clear(e);
	free(e);
}

void
q_envelope_list_free(struct q_envelope **v, size_t n)
{
	size_t i;

	if (v == NULL)
		return;
	for (i = 0; i < n; i++)
		q_envelope_free(v[i]);
	free(v);
}

struct q_envelope *
q_envelope_dup(const struct q_envelope *s)
{
	struct q_envelope *d;
	size_t i;

	if ((d = calloc(1, sizeof(*d))) == NULL)
		return NULL;
	*d = *s;
	d->sender = d->last_error = d->tag = NULL;
	d->rcpts = NULL;
	d->nrcpt = 0;
	if ((d->sender = strdup(s->sender ? s->sender : "")) == NULL)
		goto fail;
	if (s->last_error && (d->last_error = strdup(s->last_error)) == NULL)
		goto fail;
	if (s->tag && (d->tag = strdup(s->tag)) == NULL)
		goto fail;
	if (s->nrcpt > 0 && (d->rcpts = calloc(s->nrcpt, sizeof(*d->rcpts))) == NULL)
		goto fail;
	d->nrcpt = s->nrcpt;
	for (i = 0; i < s->nrcpt; i++) {
		d->rcpts[i] = s->rcpts[i];
		d->rcpts[i].addr = d->rcpts[i].reply = d->rcpts[i].err_class = NULL;
		if ((d->rcpts[i].addr = strdup(s->rcpts[i].addr)) == NULL)
			goto fail;
		if (s->rcpts[i].reply && (d->rcpts[i].reply = strdup(s->rcpts[i].reply)) == NULL)
			goto fail;
		if (s->rcpts[i].err_class &&
		    (d->rcpts[i].err_class = strdup(s->rcpts[i].err_class)) == NULL)
			goto fail;
	}
	return d;
fail:
	q_envelope_free(d);
	return NULL;
}

const char *
q_class_name(enum q_class c)
{
	switch (c) {
	case Q_CLASS_OTP:	return "otp";
	case Q_CLASS_DEFAULT:	return "default";
	default:		return "unknown";
	}
}

int
q_class_parse(const char *s)
{
	if (s == NULL)
		return -1;
	if (strcmp(s, "otp") == 0)
		return Q_CLASS_OTP;
	if (strcmp(s, "default") == 0)
		return Q_CLASS_DEFAULT;
	return -1;
}

const char *
q_rcpt_state_name(enum q_rcpt_state s)
{
	switch (s) {
	case Q_RCPT_PENDING:	return "pending";
	case Q_RCPT_DEFERRED:	return "deferred";
	case Q_RCPT_DELIVERED:	return "delivered";
	case Q_RCPT_FAILED:	return "failed";
	case Q_RCPT_EXPIRED:	return "expired";
	default:		return "unknown";
	}
}

static const char *const q_msg_state_names[] = {
	"queued", "delivering", "deferred", "held", "done"
};

const char *
q_msg_state_name(enum q_msg_state s)
{
	if ((unsigned)s > Q_MSG_DONE)
		return "unknown";
	return q_msg_state_names[s];
}

int
q_msg_state_parse(const char *s)
{
	int i;

	for (i = 0; s != NULL && i <= Q_MSG_DONE; i++)
		if (strcmp(s, q_msg_state_names[i]) == 0)
			return i;
	return -1;
}

/* --- open, recover, close ------------------------------------------- */

/* Loads one listed message (the file outside the lock) and puts it in
 * the index after the ones recovered before it. */
static void
q_recover_one(void *arg, const char *id)
{
	struct q_recover *rc = arg;
	struct queue *q = rc->q;
	struct q_envelope *env;
	struct qmsg *m;
	char why[256], **nd;

	if (spool_load(&q->sp, id, &env, why, sizeof(why)) == -1) {
		spool_quarantine(&q->sp, id, why);
		rc->bad++;
		return;
	}
	if ((m = calloc(1, sizeof(*m))) == NULL) {
		q_envelope_free(env);
		return;
	}
	if (q_env_intern(q, env) == -1) {
		q_envelope_free(env);
		free(m);
		return;
	}
	m->env = *env;
	free(env);
	m->run.idx = m->timer.idx = SCHED_NONE;
	pthread_mutex_lock(&q->mtx);
	if (q_find(q, m->env.id) != NULL || q_hash_insert(q, m) == -1) {
		pthread_mutex_unlock(&q->mtx);
		q_msg_free(q, m);
		return;
	}
	q_order_after(q, q->lcursor, m);
	q->lcursor = m;
	m->run.id = m->timer.id = m->env.id;
	m->run.owner = m->timer.owner = m;
	q_schedule(q, m);
	rc->ok++;
	/* a lease waiter may take it now; one that is due later is seen by
	 * the waiters' own timed wake-ups (a signal per deferred message
	 * woke a delivery worker a million times for nothing) */
	if (m->run.idx != SCHED_NONE && m->env.next_attempt <= q_now(q))
		pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	if (q_dsn_needed(m)) {
		if (rc->ndsn == rc->capdsn) {
			rc->capdsn = rc->capdsn ? rc->capdsn * 2 : 16;
			if ((nd = realloc(rc->dsn, rc->capdsn * sizeof(*nd))) == NULL)
				return;
			rc->dsn = nd;
		}
		if ((rc->dsn[rc->ndsn] = strdup(m->env.id)) != NULL)
			rc->ndsn++;
	}
}

/* spool_scan's callback at open: the id is listed, its clock seen. */
static void
q_list_one(void *arg, const char *id)
{
	struct queue *q = arg;
	char (*nv)[QUEUE_ID_LEN + 1];
	size_t cap;

	qid_seen(id);
	if (q->nlids == q->caplids) {
		cap = q->caplids ? q->caplids * 2 : 1024;
		if ((nv = realloc(q->lids, cap * sizeof(*nv))) == NULL)
			return;		/* not loaded now; the next start does */
		q->lids = nv;
		q->caplids = cap;
	}
	memcpy(q->lids[q->nlids++], id, QUEUE_ID_LEN + 1);
}

static int
q_cmp_msgp(const void *a, const void *b)
{
	const struct qmsg *x = *(const struct qmsg *const *)a;
	const struct qmsg *y = *(const struct qmsg *const *)b;

	return memcmp(x->env.id, y->env.id, QUEUE_ID_LEN);
}

/* Sorts the recovered segment of the id list (ohead .. lcursor) in place;
 * called with q->mtx held, at the end of loading. */
static void
q_load_sort(struct queue *q)
{
	struct qmsg **v, *m, *after;
	size_t n = 0, i;

	if (q->lcursor == NULL)
		return;
	for (m = q->ohead; m != q->lcursor; m = m->onext)
		n++;
	n++;
	after = q->lcursor->onext;
	if ((v = malloc(n * sizeof(*v))) == NULL) {
		/* no array: an insertion into the sorted rest, one by one */
		struct qmsg *rest = q->ohead, *next;

		q->ohead = after;
		if (after != NULL)
			after->oprev = NULL;
		else
			q->otail = NULL;
		for (i = 0; i < n; i++, rest = next) {
			next = rest->onext;
			q_order_link(q, rest);
		}
		return;
	}
	for (i = 0, m = q->ohead; i < n; i++, m = m->onext)
		v[i] = m;
	qsort(v, n, sizeof(*v), q_cmp_msgp);
	q->ohead = v[0];
	v[0]->oprev = NULL;
	for (i = 0; i < n; i++) {
		v[i]->onext = i + 1 < n ? v[i + 1] : after;
		if (i > 0)
			v[i]->oprev = v[i - 1];
	}
	if (after != NULL)
		after->oprev = v[n - 1];
	else
		q->otail = v[n - 1];
	free(v);
}

/* The loader thread: the listed ids in order, then the DSNs still owed. */
static void *
q_load_main(void *arg)
{
	struct queue *q = arg;
	struct q_recover rc = { 0 };
	struct timespec t0, t1;
	struct qmsg *m;
	size_t i;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc.q = q;
	if (q_load_test_delay_ms > 0)
		usleep(q_load_test_delay_ms * 1000u);	/* tests: a slow disk */
	for (i = 0; i < q->nlids; i++) {
		if (__atomic_load_n(&q->stopping, __ATOMIC_RELAXED))
			break;
		q_recover_one(&rc, q->lids[i]);
	}
	free(q->lids);
	q->lids = NULL;
	pthread_mutex_lock(&q->mtx);
	q_load_sort(q);
	q->loading = 0;
	q->lcursor = NULL;
	pthread_cond_broadcast(&q->lcv);
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	q_log(q, LOG_INFO, "queue: recovered %zu message(s), %zu quarantined, in %.3f s%s",
	    rc.ok, rc.bad, (double)(t1.tv_sec - t0.tv_sec) +
	    (double)(t1.tv_nsec - t0.tv_nsec) / 1e9, q->paused ? " (delivery paused)" : "");
	for (i = 0; i < rc.ndsn; i++) {
		struct q_envelope *copy = NULL;

		pthread_mutex_lock(&q->mtx);
		if ((m = q_find(q, rc.dsn[i])) != NULL && !m->deleted && q_dsn_needed(m))
			copy = q_envelope_dup(&m->env);
		pthread_mutex_unlock(&q->mtx);
		if (copy != NULL && !__atomic_load_n(&q->stopping, __ATOMIC_RELAXED))
			q_send_dsn(q, copy);
		else
			q_envelope_free(copy);
		free(rc.dsn[i]);
	}
	free(rc.dsn);
	return NULL;
}

/* Calls that need the whole index wait here (with q->mtx held) while the
 * spool is still loading, Q_LOAD_WAIT_MS at most: a request worker is not
 * held for the minutes a million messages take.  0, or -1 if still
 * loading (the caller answers Q_LOADING). */
static int
q_wait_loaded(struct queue *q)
{
	struct timespec ts;

	if (!q->loading)
		return 0;
	q_abstime(&ts, Q_LOAD_WAIT_MS);
	while (q->loading && !q->stopping)
		if (pthread_cond_timedwait(&q->lcv, &q->mtx, &ts) == ETIMEDOUT)
			break;
	return q->loading ? -1 : 0;
}

int
queue_loading(struct queue *q)
{
	int l;

	pthread_mutex_lock(&q->mtx);
	l = q->loading;
	pthread_mutex_unlock(&q->mtx);
	return l;
}

struct queue *
queue_open(const struct queue_params *params, char *err, size_t errlen)
{
	pthread_condattr_t ca;
	struct queue *q;
	char path[4096];
	const char *slow;
	int c;

	if ((q = calloc(1, sizeof(*q))) == NULL) {
		snprintf(err, errlen, "queue: out of memory");
		return NULL;
	}
	q->p = *params;
	q->sp.dirfd = -1;	/* spool_free is safe before spool_init */
	for (c = 0; c < Q_CLASS_COUNT; c++) {
		if (q->p.klass[c].retry_min <= 0)
			q->p.klass[c].retry_min = q_defaults[c].retry_min;
		if (q->p.klass[c].retry_max < q->p.klass[c].retry_min)
			q->p.klass[c].retry_max = q->p.klass[c].retry_min > q_defaults[c].retry_max ?
			    q->p.klass[c].retry_min : q_defaults[c].retry_max;
		if (q->p.klass[c].lifetime <= 0)
			q->p.klass[c].lifetime = q_defaults[c].lifetime;
		if (q->p.klass[c].jitter < 0 || q->p.klass[c].jitter > 0.9)
			q->p.klass[c].jitter = q_defaults[c].jitter;
	}
	q->dir = params->dir ? strdup(params->dir) : NULL;
	q->bounce_from = params->bounce_from ? strdup(params->bounce_from) : NULL;
	q->hostname = strdup(params->hostname ? params->hostname : "localhost");
	q->p.dir = q->dir;
	q->p.bounce_from = q->bounce_from;
	q->p.hostname = q->hostname;
	pthread_mutex_init(&q->mtx, NULL);
	pthread_mutex_init(&q->imtx, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->cv, &ca);
	pthread_cond_init(&q->tcv, &ca);
	pthread_cond_init(&q->lcv, &ca);
	pthread_condattr_destroy(&ca);
	sched_init(&q->sched);
	if (q->dir == NULL || spool_init(&q->sp, q->dir, params->segments,
	    params->min_free_bytes, params->min_free_inodes, params->log, err,
	    errlen) == -1) {
		if (q->dir == NULL)
			snprintf(err, errlen, "queue: no spool directory");
		goto fail;
	}
	snprintf(path, sizeof(path), "%s/paused", q->dir);
	q->paused = access(path, F_OK) == 0;

	spool_clean_tmp(&q->sp);
	/* The names only (a directory read); the files load on q_load_main.
	 * Every listed id raises the id clock first, so new ids sort after
	 * all of them. */
	spool_scan(&q->sp, q_list_one, q);
	/* tests only: a spool of any size loads on the thread, after a delay
	 * (the disk of a large spool), so "still loading" can be reached */
	if ((slow = getenv("OTPMAIL_TEST_SLOW_LOAD")) != NULL) {
		q_load_sync_max = 0;
		q_load_test_delay_ms = (unsigned)strtoul(slow, NULL, 10);
	}
	if (q->nlids > 0 && q->nlids <= q_load_sync_max) {
		/* a small spool loads at once: a fraction of a second */
		q->loading = 1;
		q_load_main(q);
	} else if (q->nlids > 0) {
		q->loading = 1;
		if (pthread_create(&q->load_thr, NULL, q_load_main, q) != 0) {
			q->loading = 0;
			snprintf(err, errlen, "queue: cannot start the loader thread");
			goto fail;
		}
		q->load_ok = 1;
	}
	if (pthread_create(&q->timer_thr, NULL, q_timer_main, q) != 0) {
		snprintf(err, errlen, "queue: cannot start the timer thread");
		goto fail;
	}
	(void)pthread_setname_np(q->timer_thr, "queue-timer");
	q->thread_ok = 1;
	return q;
fail:
	queue_close(q);
	return NULL;
}

void
queue_close(struct queue *q)
{
	struct qmsg *m, *next;
	size_t i;

	if (q == NULL)
		return;
	pthread_mutex_lock(&q->mtx);
	q->stopping = q->shutdown = 1;
	pthread_cond_broadcast(&q->cv);
	pthread_cond_broadcast(&q->tcv);
	pthread_cond_broadcast(&q->lcv);
	pthread_mutex_unlock(&q->mtx);
	if (q->load_ok)
		pthread_join(q->load_thr, NULL);
	if (q->thread_ok)
		pthread_join(q->timer_thr, NULL);
	free(q->lids);
	sched_free(&q->sched);	/* first: it touches the nodes */
	for (i = 0; i < q->tabsz; i++)
		for (m = q->tab[i]; m != NULL; m = next) {
			next = m->hnext;
			q_msg_free(q, m);
		}
	free(q->tab);
	spool_free(&q->sp);
	pthread_mutex_destroy(&q->mtx);
	pthread_cond_destroy(&q->cv);
	pthread_cond_destroy(&q->tcv);
	pthread_cond_destroy(&q->lcv);
	pthread_mutex_destroy(&q->imtx);
	free(q->itab);		/* every string went with its message */
	free(q->dir);
	free(q->bounce_from);
	free(q->hostname);
	free(q);
}

void
queue_set_clock(struct queue *q, time_t (*fn)(void))
{
	pthread_mutex_lock(&q->mtx);
	q->clock = fn;
	pthread_mutex_unlock(&q->mtx);
}

/* --- enqueue -------------------------------------------------------- */

enum q_status
queue_enqueue(struct queue *q, const struct q_envelope *tmpl, const char *data,
    size_t len, char id_out[QUEUE_ID_LEN + 1])
{
	return queue_enqueue_barrier(q, tmpl, data, len, id_out, NULL, NULL);
}

enum q_status
queue_enqueue_barrier(struct queue *q, const struct q_envelope *tmpl, const char *data,
    size_t len, char id_out[QUEUE_ID_LEN + 1], int (*barrier)(void *), void *arg)
{
	struct q_envelope *env = NULL;
	struct qmsg *m = NULL;
	enum q_status st;
	time_t now;
	size_t i;

	if (tmpl == NULL || data == NULL || len > Q_MAX_BODY ||
	    (unsigned)tmpl->klass >= Q_CLASS_COUNT || !q_addr_ok(tmpl->sender, 1) ||
	    tmpl->nrcpt == 0 || tmpl->nrcpt > Q_MAX_RCPT || tmpl->rcpts == NULL)
		return Q_BADINPUT;
	for (i = 0; i < tmpl->nrcpt; i++)
		if (!q_addr_ok(tmpl->rcpts[i].addr, 0))
			return Q_BADINPUT;
	if ((st = spool_check_space(&q->sp)) != Q_OK) {
		if (st == Q_NOSPACE)
			q_log(q, LOG_WARNING, "queue: enqueue refused: free space below the floor");
		return st;
	}
	if ((m = calloc(1, sizeof(*m))) == NULL)
		return Q_TEMPFAIL;
	m->run.idx = m->timer.idx = SCHED_NONE;
	env = &m->env;
	now = q_now(q);
	qid_new(env->id);
	env->klass = tmpl->klass;
	env->created = now;
	env->expires = tmpl->expires > 0 ? tmpl->expires :
	    now + q->p.klass[tmpl->klass].lifetime;
	env->next_attempt = now;
	env->flags = tmpl->flags & (Q_F_BOUNCE | Q_F_8BIT | Q_F_SMTPUTF8);
	env->size = len;
	env->client_uid = tmpl->client_uid;
	env->held = tmpl->held ? 1 : 0;
	if ((env->sender = q_intern(q, tmpl->sender, Q_MAX_ADDR)) == NULL)
		goto oom;
	if (tmpl->tag != NULL && (env->tag = q_intern(q, tmpl->tag, Q_MAX_TEXT)) == NULL)
		goto oom;
	if ((env->rcpts = calloc(tmpl->nrcpt, sizeof(*env->rcpts))) == NULL)
		goto oom;
	env->nrcpt = tmpl->nrcpt;
	for (i = 0; i < tmpl->nrcpt; i++)
		if ((env->rcpts[i].addr = strdup(tmpl->rcpts[i].addr)) == NULL)
			goto oom;
	/* the barrier may read the id (the caller's answer names it) */
	memcpy(id_out, env->id, QUEUE_ID_LEN + 1);
	if ((st = spool_store_message(&q->sp, env, data, len, barrier, arg)) != Q_OK) {
		q_msg_free(q, m);
		return st;
	}
	pthread_mutex_lock(&q->mtx);
	if (q_insert(q, m) == -1) {
		pthread_mutex_unlock(&q->mtx);
		spool_remove(&q->sp, env->id, 0);
		q_msg_free(q, m);
		return Q_TEMPFAIL;
	}
	q_schedule(q, m);
	memcpy(id_out, env->id, QUEUE_ID_LEN + 1);
	pthread_mutex_unlock(&q->mtx);
	/* after the unlock, or the woken worker sleeps at once on q->mtx */
	pthread_cond_signal(&q->cv);
	return Q_OK;
oom:
	q_msg_free(q, m);
	return Q_TEMPFAIL;
}

/* --- leases --------------------------------------------------------- */

enum q_status
queue_lease(struct queue *q, int wait_ms, struct q_envelope **out)
{
	return queue_lease_us(q, wait_ms > 0 ? wait_ms * 1000L : 0, out);
}

enum q_status
queue_lease_us(struct queue *q, long wait_us, struct q_envelope **out)
{
	struct timespec deadline, now_ts, wake;
	struct sched_node *nd;
	struct qmsg *m;
	time_t now, next;
	long ms;

	*out = NULL;
	q_abstime_us(&deadline, wait_us > 0 ? wait_us : 0);
	pthread_mutex_lock(&q->mtx);
	for (;;) {
		if (q->shutdown)
			break;
		now = q_now(q);
		while (!q->paused && (nd = sched_due(&q->sched, now)) != NULL) {
			m = nd->owner;
			sched_heap_del(&q->sched.run[m->env.klass], &m->run);
			if (now >= m->env.expires) {
				/* the timer thread finishes it */
				sched_heap_set(&q->sched.timers, &m->timer, now);
				pthread_cond_signal(&q->tcv);
				continue;
			}
			if ((*out = q_envelope_dup(&m->env)) == NULL) {
				q_schedule(q, m);
				pthread_mutex_unlock(&q->mtx);
				return Q_TEMPFAIL;
			}
			m->leased = 1;
			(*out)->state = Q_MSG_DELIVERING;
			pthread_mutex_unlock(&q->mtx);
			return Q_OK;
		}
		clock_gettime(CLOCK_MONOTONIC, &now_ts);
		if (now_ts.tv_sec > deadline.tv_sec || (now_ts.tv_sec == deadline.tv_sec &&
		    now_ts.tv_nsec >= deadline.tv_nsec))
			break;
		wake = deadline;
		next = q->paused ? 0 : sched_next(&q->sched);
		if (next > 0) {
			ms = next > now ? (long)(next - now) * 1000 : 0;
			if (ms > 1000)
				ms = 1000;	/* the clock may be stepped */
			q_abstime(&wake, ms > 0 ? ms : 10);
			if (wake.tv_sec > deadline.tv_sec || (wake.tv_sec == deadline.tv_sec &&
			    wake.tv_nsec > deadline.tv_nsec))
				wake = deadline;
		}
		pthread_cond_timedwait(&q->cv, &q->mtx, &wake);
	}
	pthread_mutex_unlock(&q->mtx);
	return Q_NOTFOUND;
}

enum q_status
queue_release_lease(struct queue *q, struct q_envelope *env)
{
	struct q_envelope *dsn = NULL;
	struct q_rcpt *o, *r;
	struct qmsg *m;
	enum q_status st = Q_OK;
	size_t i, pending = 0, elen = 0;
	unsigned gen0;
	char *text;
	time_t now, flushed;
	int need_dsn = 0, durable, expired = 0, wake, wake_timer;

	if (env == NULL)
		return Q_BADINPUT;
	pthread_mutex_lock(&q->mtx);
	if ((m = q_find(q, env->id)) == NULL || !m->leased) {
		pthread_mutex_unlock(&q->mtx);
		q_envelope_free(env);
		return Q_NOTFOUND;
	}
	now = q_now(q);
	/* an admin's flush is an extra try: a deferral then neither counts as
	 * a failed attempt nor moves the retry schedule on */
	flushed = m->flushed_from;
	m->flushed_from = 0;
	for (i = 0; env->nrcpt == m->env.nrcpt && i < m->env.nrcpt; i++) {
		o = &m->env.rcpts[i];
		r = &env->rcpts[i];
		if (o->state != Q_RCPT_PENDING && o->state != Q_RCPT_DEFERRED)
			continue;
		if (r->state == Q_RCPT_PENDING)
			continue;	/* not tried this time */
		o->state = r->state;
		if (!(flushed && (r->state == Q_RCPT_DEFERRED || r->state == Q_RCPT_PENDING)))
			o->attempts++;
		o->last_attempt = r->last_attempt > 0 ? r->last_attempt : now;
		if (r->reply != NULL) {
			q_unintern(q, o->reply);
			o->reply = q_intern(q, r->reply, QUEUE_REPLY_MAX);
		}
		free(o->err_class);
		o->err_class = r->err_class != NULL ?
		    strndup(r->err_class, Q_CLASS_WORD_MAX) : NULL;
		switch (o->state) {
		case Q_RCPT_DELIVERED:	q->delivered++; break;
		case Q_RCPT_FAILED:	q->failed++; break;
		case Q_RCPT_EXPIRED:	q->expired++; break;
		default:		o->state = Q_RCPT_DEFERRED; q->deferred++; break;
		}
	}
	if (env->last_error != NULL) {
		q_unintern(q, m->env.last_error);
		m->env.last_error = q_intern(q, env->last_error, QUEUE_REPLY_MAX);
	}
	m->gen++;
	if (m->deleted)
		goto drop;
	for (i = 0; i < m->env.nrcpt; i++)
		if (m->env.rcpts[i].state == Q_RCPT_PENDING ||
		    m->env.rcpts[i].state == Q_RCPT_DEFERRED)
			pending++;
	if (!flushed || pending == 0)
		m->env.attempts++;
	if (pending > 0 && now >= m->env.expires) {
		need_dsn = q_expire_locked(q, m, now);
		expired = 1;
	} else if (pending > 0 && flushed > now)
		m->env.next_attempt = flushed;	/* back on the schedule it had */
	else if (pending > 0) {
		m->env.next_attempt = now + sched_backoff(&q->p.klass[m->env.klass],
		    m->env.attempts, sched_random());
		if (m->env.next_attempt > m->env.expires)
			m->env.next_attempt = m->env.expires;
	} else {
		m->env.finished = now;
		need_dsn = q_dsn_needed(m);
	}
	if (need_dsn)
		dsn = q_envelope_dup(&m->env);
	text = spool_env_format(&m->env, &elen);
	gen0 = m->gen;
	durable = m->env.finished == 0;
	pthread_mutex_unlock(&q->mtx);

	if (expired)
		q_expired_sync(q);	/* its events before its state */
	st = text ? spool_store_state_text(&q->sp, m->env.id, text, elen, durable) :
	    Q_TEMPFAIL;
	free(text);

	pthread_mutex_lock(&q->mtx);
	m->leased = 0;
	if (m->deleted) {
		q_envelope_free(dsn);
		dsn = NULL;
		goto drop;
	}
	if (m->gen != gen0 || st != Q_OK)
		st = q_persist_locked(q, m);
	q_schedule(q, m);
	/*
	 * One waiting worker is enough for one message (a broadcast woke all
	 * of them per delivery, and they fought over q->mtx: 13 futex calls
	 * per message in scenario 2), and none for a finished one: it has
	 * nothing left to deliver (the woken worker found nothing and slept
	 * again, 0.3 context switches per message in scenario 1).  The timer
	 * thread, which wakes every second anyway, only if this message's
	 * timer is already due.
	 */
	wake = !m->env.finished;
	wake_timer = m->timer.idx != SCHED_NONE && m->timer.key <= now;
	pthread_mutex_unlock(&q->mtx);
	/* after the unlock, or the woken thread sleeps at once on q->mtx */
	if (wake)
		pthread_cond_signal(&q->cv);
	if (wake_timer)
		pthread_cond_signal(&q->tcv);
	if (dsn != NULL)
		q_send_dsn(q, dsn);
	q_envelope_free(env);
	return st;
drop:
	q_unlink(q, m);
	pthread_mutex_unlock(&q->mtx);
	spool_remove(&q->sp, m->env.id, 1);
	q_log(q, LOG_INFO, "queue: id=%s deleted after its delivery attempt", m->env.id);
	q_msg_free(q, m);
	q_envelope_free(env);
	return Q_OK;
}

/*
 * Gives a lease back untouched (the delivery process died before it said
 * what happened): nothing counts as an attempt, the message is due again at
 * once.  A message deleted meanwhile goes the release's way.
 */
enum q_status
queue_return_lease(struct queue *q, struct q_envelope *env)
{
	struct qmsg *m;

	if (env == NULL)
		return Q_BADINPUT;
	pthread_mutex_lock(&q->mtx);
	if ((m = q_find(q, env->id)) == NULL || !m->leased) {
		pthread_mutex_unlock(&q->mtx);
		q_envelope_free(env);
		return Q_NOTFOUND;
	}
	if (m->deleted) {
		pthread_mutex_unlock(&q->mtx);
		return queue_release_lease(q, env);
	}
	m->leased = 0;
	q_schedule(q, m);
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	q_envelope_free(env);
	return Q_OK;
}

enum q_status
queue_body(struct queue *q, const char *id, char **data, size_t *len)
{
	enum q_status st;
	struct qmsg *m;

	*data = NULL;
	*len = 0;
	pthread_mutex_lock(&q->mtx);
	if (q_find(q, id) == NULL && q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);	/* a leased one is in already */
		return Q_LOADING;
	}
	m = q_find(q, id);
	if (m == NULL || m->deleted) {
		pthread_mutex_unlock(&q->mtx);
		return Q_NOTFOUND;
	}
	pthread_mutex_unlock(&q->mtx);
	st = spool_read_body(&q->sp, id, data, len);
	if (st != Q_NOTFOUND)
		return st;
	/* The file went to corrupt/ (or vanished): forget the message; a
	 * lease holder's release then drops it instead of retrying forever. */
	pthread_mutex_lock(&q->mtx);
	if ((m = q_find(q, id)) != NULL && !m->deleted) {
		q_log(q, LOG_ERR, "queue: id=%s dropped: its message file is unreadable", id);
		if (m->leased) {
			m->deleted = 1;
			m->gen++;
			m = NULL;
		} else
			q_unlink(q, m);
	} else
		m = NULL;
	pthread_mutex_unlock(&q->mtx);
	q_msg_free(q, m);
	return Q_NOTFOUND;
}

void
queue_shutdown(struct queue *q)
{
	pthread_mutex_lock(&q->mtx);
	q->shutdown = 1;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
}

/* --- timers: expiry and purge --------------------------------------- */

/* Makes the expired events recorded so far durable (queue.h). */
static void
q_expired_sync(struct queue *q)
{
	if (q->p.expired_sync != NULL)
		q->p.expired_sync(q->p.expired_arg);
}

/*
 * Saves the state of the messages q_run_timers_locked expired, once their
 * events are durable: one sync for all of them, without the lock (a mass
 * expiry stalls no request).  Meanwhile they are finished in memory and
 * leased to this sweep: nothing else writes them, a delete marks them.
 * Then their DSNs are queued.
 */
static void
q_expired_save(struct queue *q, struct qmsg **v, size_t n)
{
	struct q_envelope *dsn[Q_EXPIRE_BATCH];
	struct qmsg *m;
	size_t i, k = 0;

	for (i = 0; i < n; i++) {
		v[i]->leased = 1;
		q_schedule(q, v[i]);	/* out of the run heap */
	}
	pthread_mutex_unlock(&q->mtx);
	q_expired_sync(q);
	pthread_mutex_lock(&q->mtx);
	for (i = 0; i < n; i++) {
		m = v[i];
		m->leased = 0;
		if (m->deleted) {
			q_unlink(q, m);
			spool_remove(&q->sp, m->env.id, 0);
			q_msg_free(q, m);
			continue;
		}
		q_persist_locked(q, m);
		q_schedule(q, m);
		if (q_dsn_needed(m) && (dsn[k] = q_envelope_dup(&m->env)) != NULL)
			k++;
	}
	if (k == 0)
		return;
	/* copies: q_send_dsn lets go of the lock, the messages may go */
	pthread_mutex_unlock(&q->mtx);
	for (i = 0; i < k; i++)
		q_send_dsn(q, dsn[i]);
	pthread_mutex_lock(&q->mtx);
}

static void
q_run_timers_locked(struct queue *q)
{
	struct qmsg *exp[Q_EXPIRE_BATCH];
	struct q_envelope *copy;
	struct sched_node *nd;
	struct qmsg *m;
	size_t nexp = 0;
	time_t now;

	for (;;) {
		now = q_now(q);
		nd = sched_heap_top(&q->sched.timers);
		m = nd != NULL && nd->key <= now ? nd->owner : NULL;
		/* expiries are gathered: their events are synced together,
		 * before anything else the sweep does */
		if (m != NULL && !m->leased && !m->env.finished && now >= m->env.expires &&
		    nexp < Q_EXPIRE_BATCH) {
			(void)q_expire_locked(q, m, now);
			sched_heap_del(&q->sched.timers, &m->timer);
			exp[nexp++] = m;
			continue;
		}
		if (nexp > 0) {
			q_expired_save(q, exp, nexp);
			nexp = 0;
			continue;
		}
		if (m == NULL)
			return;
		if (m->leased) {
			/* its release reschedules it */
			sched_heap_del(&q->sched.timers, &m->timer);
			continue;
		}
		if (m->env.finished && q_dsn_needed(m)) {
			/* its DSN is still owed (queueing it failed, or it is
			 * under way): retry, and keep the message till then */
			sched_heap_set(&q->sched.timers, &m->timer, now + 60);
			if ((copy = q_envelope_dup(&m->env)) != NULL) {
				pthread_mutex_unlock(&q->mtx);
				q_send_dsn(q, copy);
				pthread_mutex_lock(&q->mtx);
			}
			continue;
		}
		if (m->env.finished) {
			q_unlink(q, m);
			spool_remove(&q->sp, m->env.id, 0);
			q_msg_free(q, m);
			continue;
		}
		if (now < m->env.expires) {
			sched_heap_set(&q->sched.timers, &m->timer, m->env.expires);
			continue;
		}
	}
}

void
queue_run_timers(struct queue *q)
{
	pthread_mutex_lock(&q->mtx);
	q_run_timers_locked(q);
	pthread_mutex_unlock(&q->mtx);
}

static void *
q_timer_main(void *arg)
{
	struct queue *q = arg;
	struct sched_node *nd;
	struct timespec ts;
	time_t now;
	long ms;

	pthread_mutex_lock(&q->mtx);
	while (!q->stopping) {
		q_run_timers_locked(q);
		if (q->stopping)
			break;
		ms = 1000;
		now = q_now(q);
		if ((nd = sched_heap_top(&q->sched.timers)) != NULL && nd->key <= now)
			ms = 0;
		if (ms > 0) {
			q_abstime(&ts, ms);
			pthread_cond_timedwait(&q->tcv, &q->mtx, &ts);
		}
	}
	pthread_mutex_unlock(&q->mtx);
	return NULL;
}

/* --- status and admin ----------------------------------------------- */

enum q_status
queue_get(struct queue *q, const char *id, struct q_envelope **out)
{
	struct qmsg *m;

	*out = NULL;
	pthread_mutex_lock(&q->mtx);
	if (q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);
		return Q_LOADING;
	}
	if ((m = q_find(q, id)) == NULL || m->deleted) {
		pthread_mutex_unlock(&q->mtx);
		return Q_NOTFOUND;
	}
	if ((*out = q_envelope_dup(&m->env)) != NULL)
		(*out)->state = q_state(m);
	pthread_mutex_unlock(&q->mtx);
	return *out ? Q_OK : Q_TEMPFAIL;
}

static int
q_match(const struct qmsg *m, const struct q_filter *f)
{
	const char *at;
	size_t i;

	if (m->deleted)
		return 0;
	if (f->state >= 0 && (int)q_state(m) != f->state)
		return 0;
	if (f->state == Q_FILTER_PENDING && q_state(m) == Q_MSG_DONE)
		return 0;
	if (f->klass >= 0 && (int)m->env.klass != f->klass)
		return 0;
	if (f->sender != NULL && strcasecmp(m->env.sender, f->sender) != 0)
		return 0;
	if (f->older_than > 0 && m->env.created >= f->older_than)
		return 0;
	if (f->younger_than > 0 && m->env.created <= f->younger_than)
		return 0;
	if (f->after_id != NULL && strcmp(m->env.id, f->after_id) <= 0)
		return 0;
	if (f->domain != NULL) {
		for (i = 0; i < m->env.nrcpt; i++)
			if ((at = strrchr(m->env.rcpts[i].addr, '@')) != NULL &&
			    strcasecmp(at + 1, f->domain) == 0)
				break;
		if (i == m->env.nrcpt)
			return 0;
	}
	return 1;
}

enum q_status
queue_list(struct queue *q, const struct q_filter *f, struct q_envelope ***out,
    size_t *n, int *more)
{
	struct q_filter any = { .state = -1, .klass = -1 };
	struct qmsg **hits = NULL, *m;
	struct q_envelope **res = NULL;
	size_t i, nhits = 0, cap, limit, k;

	*out = NULL;
	*n = 0;
	if (more != NULL)
		*more = 0;
	if (f == NULL)
		f = &any;
	limit = f->limit ? f->limit : 100;
	/*
	 * Walk the id-ordered list from the start (or from after_id) and stop
	 * at limit + 1 matches: a page costs what it skips and returns, not
	 * the size of the queue.  An after_id that is gone (delivered and
	 * purged since the last page) is found by walking from the head.
	 */
	cap = limit + 1;
	if ((hits = calloc(cap, sizeof(*hits))) == NULL)
		return Q_TEMPFAIL;
	pthread_mutex_lock(&q->mtx);
	if (q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);
		free(hits);
		return Q_LOADING;
	}
	m = q->ohead;
	if (f->after_id != NULL) {
		if ((m = q_find(q, f->after_id)) != NULL)
			m = m->onext;
		else
			for (m = q->ohead; m != NULL && strcmp(m->env.id, f->after_id) <= 0;
			    m = m->onext)
				;
	}
	for (; m != NULL && nhits < cap; m = m->onext)
		if (q_match(m, f))
			hits[nhits++] = m;
	k = nhits < limit ? nhits : limit;
	if (k > 0 && (res = calloc(k, sizeof(*res))) == NULL)
		goto oom;
	for (i = 0; i < k; i++) {
		if ((res[i] = q_envelope_dup(&hits[i]->env)) == NULL) {
			q_envelope_list_free(res, i);
			res = NULL;
			goto oom;
		}
		res[i]->state = q_state(hits[i]);
	}
	pthread_mutex_unlock(&q->mtx);
	free(hits);
	*out = res;
	*n = k;
	if (more != NULL)
		*more = nhits > limit;
	return Q_OK;
oom:
	pthread_mutex_unlock(&q->mtx);
	free(hits);
	return Q_TEMPFAIL;
}

static enum q_status
q_set_held(struct queue *q, const char *id, int held)
{
	enum q_status st = Q_OK;
	struct qmsg *m;
	time_t saved_next;

	pthread_mutex_lock(&q->mtx);
	if (q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);
		return Q_LOADING;
	}
	if ((m = q_find(q, id)) == NULL || m->deleted) {
		pthread_mutex_unlock(&q->mtx);
		return Q_NOTFOUND;
	}
	if (m->env.finished || m->env.held == held) {
		pthread_mutex_unlock(&q->mtx);
		return Q_OK;
	}
	saved_next = m->env.next_attempt;
	m->env.held = held;
	if (!held)
		m->env.next_attempt = q_now(q);
	m->gen++;
	if (!m->leased) {
		if ((st = q_persist_locked(q, m)) != Q_OK) {
			/* not on disk, not done: a retry must write it (else it
			 * finds the state set and answers ok with nothing saved) */
			m->env.held = !held;
			m->env.next_attempt = saved_next;
		}
		q_schedule(q, m);
	}
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	return st;
}

enum q_status
queue_note_rcpt(struct queue *q, const char *id, const char *addr, const char *err_class,
    const char *reply)
{
	enum q_status st = Q_NOTFOUND;
	struct q_rcpt *r;
	struct qmsg *m;
	char *c, *t;
	size_t i;

	pthread_mutex_lock(&q->mtx);
	if ((m = q_find(q, id)) == NULL || m->deleted || m->leased) {
		pthread_mutex_unlock(&q->mtx);
		return m != NULL && m->leased && !m->deleted ? Q_BUSY : Q_NOTFOUND;
	}
	for (i = 0; i < m->env.nrcpt; i++) {
		r = &m->env.rcpts[i];
		if (strcasecmp(r->addr, addr) != 0)
			continue;
		c = strndup(err_class, Q_CLASS_WORD_MAX);
		/* replies are shared strings (q_intern) */
		t = reply != NULL ? q_intern(q, reply, QUEUE_REPLY_MAX) : NULL;
		if (c == NULL || (reply != NULL && t == NULL)) {
			free(c);
			q_unintern(q, t);
			st = Q_TEMPFAIL;
			break;
		}
		free(r->err_class);
		r->err_class = c;
		if (t != NULL) {
			q_unintern(q, r->reply);
			r->reply = t;
		}
		m->gen++;
		st = q_persist_locked(q, m);
		break;
	}
	pthread_mutex_unlock(&q->mtx);
	return st;
}

enum q_status
queue_hold(struct queue *q, const char *id)
{
	return q_set_held(q, id, 1);
}

enum q_status
queue_unhold(struct queue *q, const char *id)
{
	return q_set_held(q, id, 0);
}

enum q_status
queue_delete(struct queue *q, const char *id)
{
	struct qmsg *m;

	pthread_mutex_lock(&q->mtx);
	if (q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);
		return Q_LOADING;
	}
	if ((m = q_find(q, id)) == NULL || m->deleted) {
		pthread_mutex_unlock(&q->mtx);
		return Q_NOTFOUND;
	}
	if (m->leased) {
		/* the lease owner removes it when it reports back */
		m->deleted = 1;
		m->gen++;
		pthread_mutex_unlock(&q->mtx);
		return Q_OK;
	}
	q_unlink(q, m);
	pthread_mutex_unlock(&q->mtx);
	spool_remove(&q->sp, m->env.id, 1);
	q_msg_free(q, m);
	return Q_OK;
}

enum q_status
queue_flush(struct queue *q, const char *id, const char *domain, size_t *count)
{
	struct q_filter f = { .state = -1, .klass = -1, .domain = domain };
	struct qmsg *m;
	size_t i, n = 0;
	time_t now;

	if (count != NULL)
		*count = 0;
	pthread_mutex_lock(&q->mtx);
	if (q_wait_loaded(q) == -1) {
		pthread_mutex_unlock(&q->mtx);
		return Q_LOADING;
	}
	now = q_now(q);
	if (id != NULL) {
		if ((m = q_find(q, id)) == NULL || m->deleted) {
			pthread_mutex_unlock(&q->mtx);
			return Q_NOTFOUND;
		}
		if (!m->env.finished && !m->env.held && !m->leased && m->env.next_attempt > now) {
			m->flushed_from = m->env.next_attempt;
			m->env.next_attempt = now;
			q_schedule(q, m);
		}
		n = 1;
	} else {
		for (i = 0; i < q->tabsz; i++)
			for (m = q->tab[i]; m != NULL; m = m->hnext) {
				if (m->env.finished || m->env.held || m->leased || !q_match(m, &f))
					continue;
				if (m->env.next_attempt > now) {
					m->flushed_from = m->env.next_attempt;
					m->env.next_attempt = now;
					q_schedule(q, m);
				}
				n++;
			}
	}
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	if (count != NULL)
		*count = n;
	return Q_OK;
}

void
queue_pause(struct queue *q, int paused)
{
	char path[4096];
	int fd;

	pthread_mutex_lock(&q->mtx);
	q->paused = paused ? 1 : 0;
	snprintf(path, sizeof(path), "%s/paused", q->dir);
	if (paused) {
		/* remembered across restarts (and power cuts), like a held queue */
		if ((fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) != -1)
			close(fd);
	} else
		unlink(path);
	if (spool_fsync_dir(&q->sp, "paused") == -1)
		q_log(q, LOG_ERR, "queue: fsync of the spool directory: %s", strerror(errno));
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mtx);
	q_log(q, LOG_INFO, "queue: delivery %s", paused ? "paused" : "resumed");
}

int
queue_paused(struct queue *q)
{
	int p;

	pthread_mutex_lock(&q->mtx);
	p = q->paused;
	pthread_mutex_unlock(&q->mtx);
	return p;
}

void
queue_stats(struct queue *q, struct q_stats *s)
{
	struct qmsg *m;
	size_t i;

	memset(s, 0, sizeof(*s));
	pthread_mutex_lock(&q->mtx);
	/* counts of what is loaded so far rather than a wait: monitoring
	 * polls this, and must not hold request workers */
	s->loading = q->loading;
	for (i = 0; i < q->tabsz; i++)
		for (m = q->tab[i]; m != NULL; m = m->hnext) {
			if (m->deleted)
				continue;
			s->by_state[q_state(m)]++;
			s->by_class[m->env.klass]++;
			if (!m->env.finished && (s->oldest == 0 || m->env.created < s->oldest))
				s->oldest = m->env.created;
		}
	s->delivered = q->delivered;
	s->deferred = q->deferred;
	s->failed = q->failed;
	s->expired = q->expired;
	s->bounces = q->bounces;
	pthread_mutex_unlock(&q->mtx);
}
