/*
 * events.h - the interface of agent/events/: what became of each message,
 * as a stream of events per app (accepted, delivered, deferred, bounced,
 * expired, suppressed) with ids that only grow.  Events go to a durable log
 * under <state_dir>/events/ (eventlog.c), to the connections subscribed
 * with events.subscribe (a tap control.c installs), and to the app's
 * webhook if it has one (webhook.c, its own threads).
 *
 * Every emitter returns at once: a slow subscriber or webhook costs bounded
 * memory and never holds up delivery.  Calls before events_open or after
 * events_close do nothing.  The schema is in man/otpmail-events.7.
 */
#ifndef OTPMAIL_EVENTS_H
#define OTPMAIL_EVENTS_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <jansson.h>

struct otpmaild;
struct q_envelope;
struct q_class_params;
struct buf;

enum event_type {
	EV_ACCEPTED = 0,	/* durably queued */
	EV_DELIVERED,		/* 2xx from the receiving MX (or the sandbox) */
	EV_DEFERRED,		/* temporary failure; will retry */
	EV_BOUNCED,		/* permanent failure */
	EV_EXPIRED,		/* lifetime over before delivery */
	EV_SUPPRESSED,		/* refused at submission: the address is suppressed */
	EV_TYPE_COUNT
};
#define EV_MASK_ALL	((1u << EV_TYPE_COUNT) - 1)

/* Opens the log (call before the queue, whose expiries it records) and
 * reads the webhook secrets (before privileges are dropped). */
int		 events_open(struct otpmaild *, const struct q_class_params *klass,
		    char *err, size_t errlen);
/* Starts the webhook threads and the event log's syncer (after privileges
 * are dropped). */
int		 events_start(char *err, size_t errlen);
/* Syncs and publishes what is appended, then closes. */
void		 events_close(void);
/* Drops events older than events_keep (the main loop, every minute). */
void		 events_expire(void);

/* ---- emitters (one call at each place an outcome is known) ---------- */

/* submit.c, once the message is on disk: one event per recipient.  Returns
 * once they are in the log, before they are durable: the syncer thread
 * syncs and publishes them (without one, the caller does). */
void		 events_accepted(const struct q_envelope *, const char *id);
/* The events this thread emits until the matching end are written and
 * made durable together, at the end (batches nest). */
void		 events_batch_begin(void);
void		 events_batch_end(void);
/* The same end without the wait: returns the newest id written (0: none),
 * which events_wait then waits for (durable and published). */
uint64_t	 events_batch_end_async(void);
void		 events_wait(uint64_t upto);
/* deliver.c's release block, before the lease is released: this attempt's
 * outcome of each recipient open at lease time (was_open[i], i < nopen):
 * delivered, deferred or bounced. */
void		 events_delivery(const struct q_envelope *, const char *was_open,
		    size_t nopen);
/* deliver.c, per recipient accepted by a server: where it went.  Kept per
 * thread until that message's events_delivery. */
void		 events_note_hop(const char *rcpt, const char *mx, const char *ip,
		    const char *tls);
/* The queue's expiry callback (queue_params.expired): recipient i of env. */
void		 events_expired(void *arg, const struct q_envelope *, size_t i);
/* queue_params.expired_sync: writes and syncs the expired events gathered. */
void		 events_expired_sync(void *arg);
/* The event log's fdatasyncs since the start (tests). */
uint64_t	 events_syncs(void);
/*
 * The suppression list's refusal: app's submission to rcpt was answered
 * "suppressed".  reason and klass (the bounce class that put the address
 * on the list, e.g. "hard") may be NULL; msg is NULL (nothing was queued).
 * The suppression code calls it where it refuses; a request answered with
 * error "suppressed" by a handler that did not call it gets its event from
 * events_request_end (ctl_dispatch), so there is one either way.  Like
 * events_accepted, it does not wait for the event to be durable.
 */
void		 events_suppressed(const char *app, const char *rcpt, const char *reason,
		    const char *klass);
/* ctl_dispatch, around each handler (same thread). */
void		 events_request_begin(void);
void		 events_request_end(const char *app, json_t *req, json_t *reply);
/*
 * The general emitter: fields (stolen, may be NULL) are added to the
 * event.  Returns the event's id, 0 if it could not be recorded.
 */
uint64_t	 events_emit(const char *app, enum event_type, const char *msg,
		    const char *rcpt, json_t *fields);

/* ---- readers -------------------------------------------------------- */

const char	*event_type_name(enum event_type);
int		 event_type_parse(const char *);	/* -1 if unknown */
/* The app owning a queued message: its tag's "app=NAME", else "uid:N". */
void		 events_app_of(const struct q_envelope *, char *out, size_t len);
/* The id of the newest event (0: none yet), including those appended
 * before the call (it waits for their sync). */
uint64_t	 events_last_id(void);
/* The events of one message (app NULL: any), oldest first, including those
 * appended before the call (it waits for their sync); NULL on error. */
json_t		*events_history(const char *msg, const char *app, time_t created);

/*
 * Subscribers (control.c).  The tap is called for each new event in id
 * order, under the publish lock: it must only copy the line (bounded) and
 * return.  events_replay calls fn for the logged events after `after` of
 * app (NULL: all) whose type is in mask, until fn returns non-zero.  A
 * subscriber replays without the lock, then the rest under events_lock and
 * registers before events_unlock: it misses nothing and sees nothing twice.
 */
typedef void	(*events_tap_fn)(uint64_t id, const char *app, enum event_type,
		    const char *line, size_t len);
void		 events_set_tap(events_tap_fn);
typedef int	(*events_line_fn)(void *arg, uint64_t id, const char *line, size_t len);
int		 events_replay(uint64_t after, const char *app, unsigned mask,
		    events_line_fn fn, void *arg);
void		 events_lock(void);
void		 events_unlock(void);

/* Webhook backlogs: stats (app NULL: every app) and metrics. */
json_t		*events_webhook_stats(const char *app);
void		 events_webhook_metrics(struct buf *);

#endif
