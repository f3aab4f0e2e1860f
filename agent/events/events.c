/*
 * events.c - the event emitters (see events.h): each event gets the next
 * id under one lock (the emit lock) and is appended to the log
 * (eventlog.c); then it is made durable by a group commit (one fdatasync
 * for the events of every emitter that came meanwhile) and published
 * under a second lock (the publish lock): handed to the subscribers' tap
 * (control.c copies it, bounded) and announced to the app's webhook
 * thread (webhook.c), in id order.  Readers of the log see only ids up to
 * the last one synced; nothing is shown before it is on disk.  A reader
 * (events_last_id, events_history) first waits for what was appended
 * before it asked (ev_catch_up), so an answered request's events show.
 *
 * Two kinds of emitters.  A waiting one (delivered, deferred, bounced,
 * expired: the spool changes after it) returns once its events are
 * durable and published; a queue sweep's expired events wait together
 * (events_expired_sync).  A no-wait one (accepted, suppressed: the
 * request path, whose answer promises nothing about the event) returns
 * once they are appended; the syncer thread makes them durable and
 * publishes them.  A power loss in that window loses them (a killed
 * process does not: they are written), as a crash between
 * queue_enqueue_barrier and events_accepted always could; ids stay
 * contiguous, and an id lost that way was never shown to anyone.
 *
 * A group commit is a round led by whoever finds none running (ev_publish):
 * a waiting emitter or the syncer; the others follow on the futex word
 * ev.gen.  Waiting emitters lead their own rounds rather than hand them
 * to the syncer: leading costs the fdatasync it must wait for anyway,
 * while following the syncer would add a wake-up of the syncer, a sleep
 * of the emitter and a wake-up back (two syscalls, three context switches
 * per round).  The syncer runs rounds (under load at most one per
 * EV_GATHER_NS) while anything appended is not synced, then sleeps on the
 * futex word ev.kick; a no-wait emitter makes a syscall only to wake it
 * from there (ev_syncer_kick).
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <linux/futex.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/delivery.h"
#include "agent/events/events_int.h"
#include "queue/queue.h"

#define EV_HISTORY_MAX	1000	/* events message.status shows */
#define EV_GATHER_NS	8000000	/* the syncer's rounds start at most this often */

/* An event appended to the log, to be published once synced. */
struct ev_pending {
	char		*buf;		/* the allocation; the line starts within */
	char		*line;		/* {"id":N,... (no newline) */
	size_t		 len;
	uint64_t	 id;
	enum event_type	 type;
	char		 app[CONFIG_APP_NAME_MAX + 16];
};

static struct {
	pthread_mutex_t	 mu;		/* the emit lock */
	struct eventlog	*log;
	struct otpmaild	*d;
	struct q_class_params klass[Q_CLASS_COUNT];
	int		 open;
	struct ev_pending *q;		/* appended, not yet synced (under mu) */
	size_t		 nq, capq;
	pthread_mutex_t	 pub;		/* the publish lock */
	pthread_cond_t	 pubcv;
	events_tap_fn	 tap;		/* under pub */
	_Atomic int	 syncing;	/* a leader is syncing (set under pub) */
	_Atomic uint32_t gen;		/* leader rounds ended: the followers' futex */
	_Atomic int	 nwait;		/* followers asleep on gen */
	int		 sfd;		/* the leader's descriptor of the segment */
	uint64_t	 sfirst;	/* ... that starts at this id (under mu) */
	_Atomic uint64_t synced;	/* newest id on disk and published */
	_Atomic uint64_t appended;	/* newest id written (set under mu) */
	_Atomic uint64_t nsyncs;	/* fdatasyncs of the log (events_syncs) */
	pthread_t	 syncer;
	int		 syncer_started;
	_Atomic int	 syncer_on;	/* no-wait events are the syncer's to sync */
	_Atomic int	 idle;		/* the syncer sleeps on kick (or is about to) */
	_Atomic uint32_t kick;		/* the syncer's futex word */
	_Atomic int	 stop;		/* events_close: sync what is left and end */
} ev = { .mu = PTHREAD_MUTEX_INITIALIZER, .pub = PTHREAD_MUTEX_INITIALIZER,
	.pubcv = PTHREAD_COND_INITIALIZER, .sfd = -1 };

static void	*ev_syncer(void *);
static void	 ev_syncer_stop(void);
static int	 ev_syncer_kick(void);
static void	 ev_publish(uint64_t upto);
static uint64_t	 ev_batch_end(int wait);
static void	 ev_wait_synced(uint64_t upto);
/* ev_batch_end's wait: appended only (the syncer's), durable (leading a
 * round if none runs), durable by the syncer's next round */
#define EV_NOWAIT	0
#define EV_WAIT		1
#define EV_FOLLOW	2
static void	 ev_catch_up(void);

/* Where this worker's current message went, per recipient (deliver.c). */
struct ev_hop {
	char		*rcpt;
	char		 mx[256];
	char		 ip[64];
	char		 tls[32];
};
static _Thread_local struct ev_hop *ev_hops;
static _Thread_local size_t ev_nhops;
static _Thread_local int ev_supp_emitted;	/* this request's suppressed events */

static const char *const ev_names[EV_TYPE_COUNT] = {
	"accepted", "delivered", "deferred", "bounced", "expired", "suppressed"
};

const char *
event_type_name(enum event_type t)
{
	return (unsigned)t < EV_TYPE_COUNT ? ev_names[t] : "?";
}

int
event_type_parse(const char *s)
{
	int i;

	for (i = 0; i < EV_TYPE_COUNT; i++)
		if (strcmp(s, ev_names[i]) == 0)
			return i;
	return -1;
}

int
events_open(struct otpmaild *d, const struct q_class_params *klass, char *err, size_t errlen)
{
	char dir[4096];

	snprintf(dir, sizeof(dir), "%s/events", d->state_dir);
	if ((ev.log = eventlog_open(dir, err, errlen)) == NULL)
		return -1;
	memcpy(ev.klass, klass, sizeof(ev.klass));
	ev.d = d;
	atomic_store(&ev.synced, eventlog_last(ev.log));
	atomic_store(&ev.appended, eventlog_last(ev.log));
	if (webhook_open(d, ev.log, err, errlen) == -1) {
		eventlog_close(ev.log);
		ev.log = NULL;
		return -1;
	}
	pthread_mutex_lock(&ev.mu);
	ev.open = 1;
	pthread_mutex_unlock(&ev.mu);
	return 0;
}

int
events_start(char *err, size_t errlen)
{
	if (ev.log == NULL)
		return 0;
	if (webhook_start(err, errlen) == -1)
		return -1;
	/* on before it runs: what is appended meanwhile is its first round */
	atomic_store(&ev.syncer_on, 1);
	if (pthread_create(&ev.syncer, NULL, ev_syncer, NULL) != 0) {
		atomic_store(&ev.syncer_on, 0);
		snprintf(err, errlen, "events: pthread_create failed");
		return -1;
	}
	(void)pthread_setname_np(ev.syncer, "event-sync");
	ev.syncer_started = 1;
	return 0;
}

void
events_close(void)
{
	/* first: its last rounds notify the webhooks, still open */
	ev_syncer_stop();
	webhook_close();
	/* no leader syncs on ev.sfd while it goes (lock order: pub, then mu) */
	pthread_mutex_lock(&ev.pub);
	while (ev.syncing)
		pthread_cond_wait(&ev.pubcv, &ev.pub);
	pthread_mutex_lock(&ev.mu);
	ev.open = 0;
	eventlog_close(ev.log);
	ev.log = NULL;
	if (ev.sfd != -1)
		close(ev.sfd);
	ev.sfd = -1;
	while (ev.nq > 0)
		free(ev.q[--ev.nq].buf);
	free(ev.q);
	ev.q = NULL;
	ev.capq = 0;
	pthread_mutex_unlock(&ev.mu);
	pthread_mutex_unlock(&ev.pub);
}

void
events_expire(void)
{
	size_t n;

	if (ev.log == NULL)
		return;
	pthread_mutex_lock(&ev.mu);
	n = ev.open ? eventlog_expire(ev.log, time(NULL) - ev.d->cfg->events_keep) : 0;
	pthread_mutex_unlock(&ev.mu);
	if (n > 0)
		log_msg(LOG_INFO, "event=events_expired segments=%zu", n);
}

void
events_set_tap(events_tap_fn fn)
{
	pthread_mutex_lock(&ev.pub);
	ev.tap = fn;
	pthread_mutex_unlock(&ev.pub);
}

/* The publish lock: no event is published while it is held. */
void
events_lock(void)
{
	pthread_mutex_lock(&ev.pub);
}

void
events_unlock(void)
{
	pthread_mutex_unlock(&ev.pub);
}

/*
 * A reader sees what was appended before it asked: a request answered
 * before its accepted or suppressed events were synced is followed by
 * message.status or events.subscribe (its last_id) showing them.  It waits
 * for their round, most often the syncer's, already running.
 */
static void
ev_catch_up(void)
{
	uint64_t upto = atomic_load(&ev.appended);

	if (upto > atomic_load(&ev.synced))
		ev_publish(upto);
}

/* The newest event anyone may see (on disk), once those appended before
 * the call are. */
uint64_t
events_last_id(void)
{
	if (ev.log == NULL)
		return 0;
	ev_catch_up();
	return atomic_load(&ev.synced);
}

/*
 * A batch (one message's recipients): each event is formatted by its
 * emitter without any lock, into a line that leaves room in front for its
 * id; at the end of the batch the ids are given and the lines written (one
 * writev) under the emit lock, then made durable with the other emitters'
 * by ev_publish.  Nothing is shown to a subscriber or a webhook before it
 * is on disk, so a crash never reuses an id someone saw.
 */
#define EV_ID_ROOM	32	/* {"id":<20 digits>, */

static _Thread_local int ev_batching;	/* depth: events_batch_begin nests */
static _Thread_local struct ev_pending *ev_tl;	/* this thread's batch */
static _Thread_local size_t ev_ntl, ev_captl;

static void
ev_batch_begin(void)
{
	ev_batching++;
}

/*
 * Group commit: returns once every event up to `upto` is on disk and
 * published.  The first emitter to find no sync running leads: it takes
 * what is appended so far, syncs it (no lock held), publishes it in id
 * order and wakes the others; who finds its events covered returns.
 * Followers sleep on a futex word (ev.gen, bumped by each leader at the
 * end of its round) without the publish lock: a wake-up costs them no
 * second wait for that lock, and a leader with no follower makes no call.
 */
/* Sleeps while gen is still g (the leader bumps gen, then reads nwait: one
 * of them sees the other). */
static void
ev_sleep_gen(uint32_t g)
{
	atomic_fetch_add(&ev.nwait, 1);
	if (atomic_load(&ev.gen) == g)
		(void)syscall(SYS_futex, &ev.gen, FUTEX_WAIT_PRIVATE, g, NULL, NULL, 0);
	atomic_fetch_sub(&ev.nwait, 1);
}

static void
ev_follow(void)
{
	uint32_t g = atomic_load(&ev.gen);

	if (atomic_load(&ev.syncing))
		ev_sleep_gen(g);
}

static void
ev_publish(uint64_t upto)
{
	struct ev_pending *q;
	uint64_t target;
	size_t n, i;
	int fd, r;

	for (;;) {
		if (atomic_load(&ev.synced) >= upto)
			return;		/* a leader took them already */
		if (atomic_load(&ev.syncing)) {
			ev_follow();
			continue;
		}
		pthread_mutex_lock(&ev.pub);
		if (atomic_load(&ev.syncing) || atomic_load(&ev.synced) >= upto) {
			pthread_mutex_unlock(&ev.pub);
			continue;
		}
		atomic_store(&ev.syncing, 1);
		pthread_mutex_unlock(&ev.pub);
		pthread_mutex_lock(&ev.mu);
		target = ev.open ? eventlog_last(ev.log) : upto;
		q = ev.q;
		n = ev.nq;
		ev.q = NULL;
		ev.nq = ev.capq = 0;
		fd = -1;
		if (ev.open) {
			/* the leader's own descriptor of the newest segment, kept
			 * until the log starts another (only a leader uses it) */
			if (ev.sfd == -1 || ev.sfirst != eventlog_first(ev.log)) {
				if (ev.sfd != -1)
					close(ev.sfd);	/* synced at the switch */
				ev.sfd = eventlog_sync_fd(ev.log);
				ev.sfirst = eventlog_first(ev.log);
			}
			fd = ev.sfd;
		}
		pthread_mutex_unlock(&ev.mu);
		r = fd != -1 && n > 0 ? fdatasync(fd) : n > 0 ? -1 : 0;
		if (fd != -1 && n > 0)
			atomic_fetch_add(&ev.nsyncs, 1);
		if (r == -1)
			log_msg(LOG_ERR, "event=events_error detail=\"fdatasync of the event "
			    "log failed\"");
		pthread_mutex_lock(&ev.pub);
		for (i = 0; i < n; i++) {
			if (ev.tap != NULL)
				ev.tap(q[i].id, q[i].app, q[i].type, q[i].line, q[i].len);
			webhook_notify(q[i].app);
			free(q[i].buf);
		}
		free(q);
		if (target > atomic_load(&ev.synced))
			atomic_store(&ev.synced, target);
		atomic_store(&ev.syncing, 0);
		atomic_fetch_add(&ev.gen, 1);
		pthread_mutex_unlock(&ev.pub);
		/* events_close waits on pubcv; the followers on gen */
		pthread_cond_broadcast(&ev.pubcv);
		if (atomic_load(&ev.nwait) > 0)
			(void)syscall(SYS_futex, &ev.gen, FUTEX_WAKE_PRIVATE, INT_MAX,
			    NULL, NULL, 0);
	}
}

/*
 * Under load the syncer starts a round at most every EV_GATHER_NS: what is
 * appended meanwhile shares its fdatasync (the request threads no longer
 * wait, so nothing else groups them).  A first event after a pause is
 * synced at once; a waiting emitter never waits for this (it leads its own
 * round, taking the no-wait events along), nor does events_close.
 */
static void
ev_gather(struct timespec *last)
{
	struct timespec now, until;
	int64_t ns;

	clock_gettime(CLOCK_MONOTONIC, &now);
	ns = (int64_t)(now.tv_sec - last->tv_sec) * 1000000000 + (now.tv_nsec - last->tv_nsec);
	if (ns >= 0 && ns < EV_GATHER_NS && !atomic_load(&ev.stop)) {
		until = *last;
		until.tv_nsec += EV_GATHER_NS;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		(void)clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
		now = until;
	}
	*last = now;
}

/*
 * The syncer: rounds while anything appended is not synced, then sleep.
 * The lost wake-up (an emitter appends while the syncer decides to sleep)
 * cannot happen: the syncer stores idle, then loads appended; an emitter
 * stores appended, then loads idle (all seq_cst, one total order).  If the
 * emitter's load comes first, so does its store, and the syncer sees the
 * event and does not sleep; otherwise the emitter sees idle and bumps
 * kick, which the syncer read before storing idle: its FUTEX_WAIT returns
 * at once or is woken.  Only the emitter that swaps idle back to 0 makes
 * the wake-up call.  events_close ends it the same way (stop, then kick);
 * it clears syncer_on, then syncs once more: an emitter that still found
 * it on had appended before it looked (the same pairing), and one that
 * finds it off syncs its events itself.
 */
static void *
ev_syncer(void *arg)
{
	struct timespec last = { 0, 0 };
	uint64_t upto;
	uint32_t k;

	(void)arg;
	for (;;) {
		while (atomic_load(&ev.appended) > atomic_load(&ev.synced)) {
			ev_gather(&last);
			ev_publish(atomic_load(&ev.appended));
		}
		if (atomic_load(&ev.stop))
			break;
		k = atomic_load(&ev.kick);
		atomic_store(&ev.idle, 1);
		if (atomic_load(&ev.appended) <= atomic_load(&ev.synced) &&
		    !atomic_load(&ev.stop))
			(void)syscall(SYS_futex, &ev.kick, FUTEX_WAIT_PRIVATE, k, NULL, NULL, 0);
		atomic_store(&ev.idle, 0);
	}
	atomic_store(&ev.syncer_on, 0);
	if ((upto = atomic_load(&ev.appended)) > atomic_load(&ev.synced))
		ev_publish(upto);
	return NULL;
}

/* A no-wait emitter's events (appended) are the syncer's; 0 if there is
 * none (before events_start, after events_close): the caller syncs them. */
static int
ev_syncer_kick(void)
{
	if (!atomic_load(&ev.syncer_on))
		return 0;
	if (atomic_load(&ev.idle) && atomic_exchange(&ev.idle, 0)) {
		atomic_fetch_add(&ev.kick, 1);
		(void)syscall(SYS_futex, &ev.kick, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	}
	return 1;
}

/*
 * Sleeps until the events up to upto are synced and published by the
 * syncer (kicked by the caller).  The leader of a round stores synced,
 * bumps gen, then reads nwait; this reads gen, then synced, counts itself
 * in nwait and sleeps only if gen has not moved: one of the two sees the
 * other, so no wake-up is lost.  The syncer's last round at events_close
 * takes everything appended.
 */
static void
ev_wait_synced(uint64_t upto)
{
	uint32_t g;

	for (;;) {
		g = atomic_load(&ev.gen);
		if (atomic_load(&ev.synced) >= upto)
			return;
		ev_sleep_gen(g);
	}
}

/* Ends the syncer once everything appended is durable and published. */
static void
ev_syncer_stop(void)
{
	if (!ev.syncer_started)
		return;
	atomic_store(&ev.stop, 1);
	atomic_fetch_add(&ev.kick, 1);
	(void)syscall(SYS_futex, &ev.kick, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	pthread_join(ev.syncer, NULL);
	ev.syncer_started = 0;
	atomic_store(&ev.stop, 0);
}

/* Gives the batch its ids and writes it; the newest id, 0 if none.  wait:
 * returns once they are durable and published, else once appended (the
 * syncer's then). */
static uint64_t
ev_batch_end(int wait)
{
	struct iovec *iov = NULL;
	struct ev_pending *p;
	uint64_t id, upto = 0;
	size_t i, n = 0;
	char pre[EV_ID_ROOM];
	int k;

	if (ev_batching > 1) {
		ev_batching--;		/* an outer batch writes them */
		return 0;
	}
	ev_batching = 0;
	if (ev_ntl == 0)
		goto out;
	if ((iov = calloc(ev_ntl, sizeof(*iov))) == NULL)
		goto fail;
	pthread_mutex_lock(&ev.mu);
	if (!ev.open) {
		pthread_mutex_unlock(&ev.mu);
		goto out;
	}
	if (ev.nq + ev_ntl > ev.capq) {
		size_t cap = ev.capq ? ev.capq : 16;

		while (cap < ev.nq + ev_ntl)
			cap *= 2;
		if ((p = realloc(ev.q, cap * sizeof(*p))) == NULL) {
			pthread_mutex_unlock(&ev.mu);
			goto fail;
		}
		ev.q = p;
		ev.capq = cap;
	}
	id = eventlog_last(ev.log);
	for (i = 0; i < ev_ntl; i++) {
		p = &ev_tl[i];
		/* "id" first: the log finds it at the start of the line */
		k = snprintf(pre, sizeof(pre), "{\"id\":%" PRIu64 ",", id + n + 1);
		if (p->len + (size_t)k > EVENT_LINE_MAX) {
			log_msg(LOG_ERR, "event=events_error type=%s detail=\"event longer "
			    "than %d bytes, not recorded\"", event_type_name(p->type),
			    EVENT_LINE_MAX);
			free(p->buf);
			p->buf = NULL;
			continue;
		}
		p->line -= k;
		memcpy(p->line, pre, (size_t)k);
		p->len += (size_t)k;
		p->id = id + n + 1;
		iov[n].iov_base = p->line;
		iov[n].iov_len = p->len + 1;	/* and its newline */
		n++;
	}
	if (n > 0 && eventlog_appendv(ev.log, id + 1, iov, n) == -1) {
		pthread_mutex_unlock(&ev.mu);
		goto fail;
	}
	for (i = 0; i < ev_ntl; i++)
		if (ev_tl[i].buf != NULL) {
			ev.q[ev.nq++] = ev_tl[i];
			ev_tl[i].buf = NULL;
		}
	upto = n > 0 ? id + n : 0;
	if (upto > 0)
		atomic_store(&ev.appended, upto);	/* then ev_syncer_kick looks */
	pthread_mutex_unlock(&ev.mu);
	/* the syncer's, when it runs (and was not asked to lead): then wait
	 * for its round or not at all; without it, a round of our own */
	if (upto > 0 && (wait == EV_WAIT || !ev_syncer_kick()))
		ev_publish(upto);
	else if (upto > 0 && wait == EV_FOLLOW)
		ev_wait_synced(upto);
	goto out;
fail:
	log_msg(LOG_ERR, "event=events_error events=%zu detail=\"cannot record the "
	    "events\"", ev_ntl);
out:
	free(iov);
	for (i = 0; i < ev_ntl; i++)
		free(ev_tl[i].buf);
	/* thread-local: nothing may outlive the batch (threads end unannounced) */
	free(ev_tl);
	ev_tl = NULL;
	ev_ntl = ev_captl = 0;
	return upto;
}

/* Formats one event (no lock held) into this thread's batch; outside a
 * batch, writes it at once and returns its id.  0: not recorded. */
uint64_t
events_emit(const char *app, enum event_type type, const char *msg, const char *rcpt,
    json_t *fields)
{
	struct ev_pending *p;
	json_t *o = NULL;
	char *s = NULL;
	size_t len;
	int batch = ev_batching;

	if (!ev.open)
		goto out;
	if (ev_ntl == ev_captl) {
		size_t cap = ev_captl ? ev_captl * 2 : 8;

		if ((p = realloc(ev_tl, cap * sizeof(*p))) == NULL)
			goto fail;
		ev_tl = p;
		ev_captl = cap;
	}
	o = json_pack("{s:s, s:I, s:s, s:s?, s:s?}", "type", event_type_name(type),
	    "time", (json_int_t)time(NULL), "app", app, "message", msg, "recipient", rcpt);
	if (o == NULL)
		goto fail;
	if (fields != NULL)
		json_object_update(o, fields);
	s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
	/* s is {...}: the line is the id's room, then s without its '{' */
	if (s == NULL || (len = strlen(s)) < 2 || len > EVENT_LINE_MAX)
		goto fail;
	p = &ev_tl[ev_ntl];
	if ((p->buf = malloc(EV_ID_ROOM + len)) == NULL)
		goto fail;
	p->line = p->buf + EV_ID_ROOM;
	memcpy(p->line, s + 1, len - 1);
	p->line[len - 1] = '\n';
	p->len = len - 1;
	p->id = 0;
	p->type = type;
	snprintf(p->app, sizeof(p->app), "%s", app);
	ev_ntl++;
	goto out;
fail:
	log_msg(LOG_ERR, "event=events_error type=%s message=%s detail=\"cannot record "
	    "the event\"", event_type_name(type), msg ? msg : "-");
out:
	json_decref(fields);
	json_decref(o);
	free(s);
	return batch ? 0 : ev_batch_end(EV_WAIT);
}

void
events_batch_begin(void)
{
	ev_batch_begin();
}

void
events_batch_end(void)
{
	(void)ev_batch_end(EV_FOLLOW);
}

uint64_t
events_batch_end_async(void)
{
	return ev_batch_end(EV_NOWAIT);
}

void
events_wait(uint64_t upto)
{
	if (upto > 0)
		ev_wait_synced(upto);
}

uint64_t
events_syncs(void)
{
	return atomic_load(&ev.nsyncs);
}

void
events_app_of(const struct q_envelope *env, char *out, size_t len)
{
	const char *a = env->tag ? strstr(env->tag, " app=") : NULL;

	if (a != NULL)
		snprintf(out, len, "%s", a + 5);
	else
		snprintf(out, len, "uid:%u", (unsigned)env->client_uid);
}

void
events_accepted(const struct q_envelope *env, const char *id)
{
	char app[CONFIG_APP_NAME_MAX + 16];
	size_t i;

	time_t expires = env->expires;

	/* a template without an end gets its class's lifetime (queue.c) */
	if (expires == 0 && env->klass < Q_CLASS_COUNT)
		expires = time(NULL) + ev.klass[env->klass].lifetime;
	events_app_of(env, app, sizeof(app));
	ev_batch_begin();
	for (i = 0; i < env->nrcpt; i++)
		events_emit(app, EV_ACCEPTED, id, env->rcpts[i].addr,
		    json_pack("{s:s, s:I}", "class", q_class_name(env->klass),
		    "expires", (json_int_t)expires));
	ev_batch_end(EV_NOWAIT);	/* the message is durable; the answer need not wait */
}

void
events_note_hop(const char *rcpt, const char *mx, const char *ip, const char *tls)
{
	struct ev_hop *h;
	void *p;

	if (!ev.open || (p = realloc(ev_hops, (ev_nhops + 1) * sizeof(*ev_hops))) == NULL)
		return;
	ev_hops = p;
	h = &ev_hops[ev_nhops];
	if ((h->rcpt = strdup(rcpt)) == NULL)
		return;
	snprintf(h->mx, sizeof(h->mx), "%s", mx ? mx : "");
	snprintf(h->ip, sizeof(h->ip), "%s", ip ? ip : "");
	snprintf(h->tls, sizeof(h->tls), "%s", tls && *tls ? tls : "none");
	ev_nhops++;
}

static void
ev_hops_clear(void)
{
	size_t i;

	for (i = 0; i < ev_nhops; i++)
		free(ev_hops[i].rcpt);
	free(ev_hops);
	ev_hops = NULL;
	ev_nhops = 0;
}

/* The class of a failure, with the blocklist its reply names. */
static json_t *
ev_failure(const char *reply)
{
	struct bounce_result b = { 0 };
	json_t *o;

	bounce_classify(reply, &b);
	o = json_pack("{s:s, s:s}", "class", bounce_class_name(b.klass), "reply",
	    reply ? reply : "");
	if (o != NULL && b.list[0] != '\0')
		json_object_set_new(o, "blocklist", json_string(b.list));
	return o;
}

/* When the scheduler will try again: its backoff without the jitter. */
static time_t
ev_next_attempt(const struct q_envelope *env)
{
	const struct q_class_params *p = &ev.klass[env->klass < Q_CLASS_COUNT ? env->klass : 0];
	double d = p->retry_min > 0 ? p->retry_min : 1, hi = p->retry_max;
	time_t t;
	int i;

	for (i = 1; i < env->attempts + 1 && d < hi; i++)
		d *= 2;
	if (d > hi && hi > 0)
		d = hi;
	t = time(NULL) + (time_t)d;
	return env->expires > 0 && t > env->expires ? env->expires : t;
}

void
events_delivery(const struct q_envelope *env, const char *was_open, size_t nopen)
{
	char app[CONFIG_APP_NAME_MAX + 16];
	const struct q_rcpt *r;
	json_t *f;
	size_t i, k;

	if (!ev.open)
		goto out;
	events_app_of(env, app, sizeof(app));
	ev_batch_begin();
	for (i = 0; i < nopen && i < env->nrcpt; i++) {
		if (!was_open[i])
			continue;
		r = &env->rcpts[i];
		switch (r->state) {
		case Q_RCPT_DELIVERED:
			for (k = 0; k < ev_nhops; k++)
				if (strcmp(ev_hops[k].rcpt, r->addr) == 0)
					break;
			if (k < ev_nhops)
				f = json_pack("{s:s, s:s, s:s}", "mx", ev_hops[k].mx,
				    "ip", ev_hops[k].ip, "tls", ev_hops[k].tls);
			else
				f = json_pack("{s:s?, s:n, s:n}", "mx",
				    ev.d->cfg->sandbox ? "sandbox" : NULL, "ip", "tls");
			if (f != NULL)
				json_object_set_new(f, "reply", json_string(r->reply ? r->reply : ""));
			events_emit(app, EV_DELIVERED, env->id, r->addr, f);
			break;
		case Q_RCPT_DEFERRED:
			if ((f = ev_failure(r->reply)) != NULL) {
				json_object_set_new(f, "next_attempt",
				    json_integer((json_int_t)ev_next_attempt(env)));
				json_object_set_new(f, "attempts", json_integer(r->attempts + 1));
			}
			events_emit(app, EV_DEFERRED, env->id, r->addr, f);
			break;
		case Q_RCPT_FAILED:
			events_emit(app, EV_BOUNCED, env->id, r->addr, ev_failure(r->reply));
			break;
		default:
			break;
		}
	}
	/* durable before the spool forgets the outcome: by the syncer's next
	 * round, which groups them (the delivery worker waits a little, the
	 * request it would delay does not exist) */
	ev_batch_end(EV_FOLLOW);
out:
	ev_hops_clear();
}

/*
 * The queue's expiry callbacks: a sweep's expired events (thousands when
 * many lifetimes end together) are one batch, opened by the first of them
 * and written and synced by events_expired_sync (one fdatasync), which
 * the queue calls before it saves their messages' state.
 */
static _Thread_local int ev_exp_batch;	/* events_expired opened a batch */

void
events_expired(void *arg, const struct q_envelope *env, size_t i)
{
	char app[CONFIG_APP_NAME_MAX + 16];

	(void)arg;
	if (!ev.open || i >= env->nrcpt)
		return;
	if (!ev_exp_batch) {
		ev_batch_begin();
		ev_exp_batch = 1;
	}
	events_app_of(env, app, sizeof(app));
	events_emit(app, EV_EXPIRED, env->id, env->rcpts[i].addr,
	    json_pack("{s:s, s:s, s:i}", "class", q_class_name(env->klass), "reason",
	    env->rcpts[i].reply ? env->rcpts[i].reply : "lifetime expired",
	    "attempts", env->rcpts[i].attempts));
}

void
events_expired_sync(void *arg)
{
	(void)arg;
	if (!ev_exp_batch)
		return;
	ev_exp_batch = 0;
	(void)ev_batch_end(EV_WAIT);
}

void
events_suppressed(const char *app, const char *rcpt, const char *reason, const char *klass)
{
	ev_supp_emitted++;
	/* an answer's event, like accepted: the request does not wait for it */
	ev_batch_begin();
	events_emit(app, EV_SUPPRESSED, NULL, rcpt, json_pack("{s:s?, s:s?}", "reason",
	    reason, "class", klass));
	ev_batch_end(EV_NOWAIT);
}

void
events_request_begin(void)
{
	ev_supp_emitted = 0;
}

/* A "suppressed" answer no events_suppressed call announced: the address is
 * the answer's (address/recipient) or the request's "to". */
void
events_request_end(const char *app, json_t *req, json_t *reply)
{
	const char *err = json_string_value(json_object_get(reply, "error"));
	const char *rcpt, *klass;
	json_t *to = json_object_get(req, "to");

	if (err == NULL || strcmp(err, "suppressed") != 0 || ev_supp_emitted > 0 || !ev.open)
		return;
	if ((rcpt = json_string_value(json_object_get(reply, "address"))) == NULL &&
	    (rcpt = json_string_value(json_object_get(reply, "recipient"))) == NULL &&
	    (rcpt = json_string_value(to)) == NULL)
		rcpt = json_string_value(json_array_get(to, 0));
	if ((klass = json_string_value(json_object_get(reply, "class"))) == NULL)
		klass = json_string_value(json_object_get(reply, "reason_class"));
	events_suppressed(app, rcpt, json_string_value(json_object_get(reply, "reason")) ?:
	    json_string_value(json_object_get(reply, "detail")), klass);
}

/* ---- readers ---------------------------------------------------------- */

/* Does the line hold "key":"val" (as a key: JSON escapes every quote in
 * a string, so a value can never contain it)? */
static int
ev_line_has(const char *line, size_t len, const char *key, const char *val)
{
	char pat[160];
	int n = snprintf(pat, sizeof(pat), "\"%s\":\"%s\"", key, val);

	return n > 0 && (size_t)n < sizeof(pat) && memmem(line, len, pat, (size_t)n) != NULL;
}

static int
ev_line_type(const char *line, size_t len)
{
	int i;

	for (i = 0; i < EV_TYPE_COUNT; i++)
		if (ev_line_has(line, len, "type", ev_names[i]))
			return i;
	return -1;
}

struct ev_replay {
	uint64_t	 upto;		/* the newest id on disk when it began */
	const char	*app;
	unsigned	 mask;
	events_line_fn	 fn;
	void		*arg;
};

static int
ev_replay_one(void *arg, uint64_t id, const char *line, size_t len)
{
	struct ev_replay *r = arg;
	int t;

	if (id > r->upto)
		return 1;	/* written, not yet synced: no one may see it */
	if (r->app != NULL && !ev_line_has(line, len, "app", r->app))
		return 0;
	if ((t = ev_line_type(line, len)) < 0 || !(r->mask & (1u << t)))
		return 0;
	return r->fn(r->arg, id, line, len);
}

int
events_replay(uint64_t after, const char *app, unsigned mask, events_line_fn fn, void *arg)
{
	struct ev_replay r = { 0, app, mask, fn, arg };

	if (ev.log == NULL)
		return -1;
	r.upto = atomic_load(&ev.synced);
	return eventlog_scan(ev.log, after, 0, ev_replay_one, &r);
}

struct ev_hist {
	uint64_t	 upto;
	const char	*msg;
	const char	*app;
	json_t		*arr;
};

static int
ev_hist_one(void *arg, uint64_t id, const char *line, size_t len)
{
	struct ev_hist *h = arg;
	json_t *o;

	if (id > h->upto)
		return 1;	/* not yet synced */
	if (!ev_line_has(line, len, "message", h->msg) ||
	    (h->app != NULL && !ev_line_has(line, len, "app", h->app)))
		return 0;
	if ((o = json_loadb(line, len, 0, NULL)) != NULL)
		json_array_append_new(h->arr, o);
	return json_array_size(h->arr) >= EV_HISTORY_MAX;
}

json_t *
events_history(const char *msg, const char *app, time_t created)
{
	struct ev_hist h = { 0, msg, app, NULL };

	if (ev.log == NULL || strlen(msg) > 64 || strpbrk(msg, "\"\\") != NULL)
		return NULL;
	ev_catch_up();
	h.upto = atomic_load(&ev.synced);
	if ((h.arr = json_array()) == NULL)
		return NULL;
	if (eventlog_scan(ev.log, 0, created > 0 ? created - 1 : 0, ev_hist_one, &h) == -1) {
		json_decref(h.arr);
		return NULL;
	}
	return h.arr;
}
