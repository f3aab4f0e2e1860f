/*
 * queue.h - the durable spool and the scheduler (public interface of queue/).
 *
 * queue/ knows the filesystem only.  The agent enqueues signed messages,
 * delivery workers lease due messages, report per-recipient outcomes, and
 * admins steer the queue.  Every call is thread-safe.
 */
#ifndef OTPMAIL_QUEUE_H
#define OTPMAIL_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define QUEUE_ID_LEN	24	/* hex chars: time-sortable, unique forever */
#define QUEUE_REPLY_MAX	512	/* bytes of remote reply kept per recipient */
#define Q_CLASS_WORD_MAX	32	/* bytes of a recipient's err_class */

/* Outcomes of every queue call; they map onto the protocol's errors. */
enum q_status {
	Q_OK = 0,
	Q_TEMPFAIL,		/* I/O error: try again later ("unavailable") */
	Q_NOSPACE,		/* below the free-space floor ("unavailable") */
	Q_BADINPUT,		/* caller error ("bad_request") */
	Q_NOTFOUND,		/* no such id ("not_found") */
	Q_BUSY,			/* being delivered right now; retry shortly */
	Q_LOADING,		/* a large spool is still loading after a start */
};

enum q_class {
	Q_CLASS_OTP = 0,	/* first in line, seconds apart, dies at expiry */
	Q_CLASS_DEFAULT,	/* minutes doubling to an hour, 5 days, DSN */
	Q_CLASS_COUNT
};

enum q_rcpt_state {
	Q_RCPT_PENDING = 0,	/* not yet tried */
	Q_RCPT_DEFERRED,	/* tried, temporary failure, will retry */
	Q_RCPT_DELIVERED,	/* 2xx from the remote (or the sandbox) */
	Q_RCPT_FAILED,		/* permanent failure */
	Q_RCPT_EXPIRED,		/* lifetime over before delivery */
};

/* The overall state of a message (derived; used by list filters). */
enum q_msg_state {
	Q_MSG_QUEUED = 0,	/* waiting for its first attempt */
	Q_MSG_DELIVERING,	/* leased by a worker now */
	Q_MSG_DEFERRED,		/* some recipient deferred, retry scheduled */
	Q_MSG_HELD,		/* held by an admin */
	Q_MSG_DONE,		/* every recipient final (kept for status) */
};

struct q_rcpt {
	char		*addr;
	enum q_rcpt_state state;
	int		 attempts;
	time_t		 last_attempt;
	char		*reply;		/* last remote reply or reason; may be NULL */
	char		*err_class;	/* class of the last failure or DSN ("hard"...),
					 * a bare word set by the daemon; may be NULL */
};

struct q_envelope {
	char		 id[QUEUE_ID_LEN + 1];
	enum q_class	 klass;
	char		*sender;	/* "" = null sender (a bounce) */
	size_t		 nrcpt;
	struct q_rcpt	*rcpts;
	time_t		 created;
	time_t		 expires;	/* lifetime end; OTP: code expiry */
	time_t		 next_attempt;
	int		 attempts;	/* delivery attempts of the message */
	int		 held;
	int		 flags;		/* Q_F_* */
	size_t		 size;		/* bytes of the message body */
	char		*last_error;	/* human reason of the last deferral */
	char		*tag;		/* opaque caller tag (e.g. "otp"), may be NULL */
	uint32_t	 client_uid;	/* who submitted it */
	enum q_msg_state state;		/* filled on read/list */
	time_t		 finished;	/* when every recipient became final, 0 if not */
};

#define Q_F_BOUNCE	0x01	/* this message is a DSN: never bounce it */
#define Q_F_8BIT	0x02	/* body has 8-bit bytes: needs 8BITMIME */
#define Q_F_NOTIFIED	0x04	/* the DSN for it has been generated */
#define Q_F_SMTPUTF8	0x08	/* UTF-8 addresses: needs SMTPUTF8 (RFC 6531) */

/* Schedule of one class; all values are config keys. */
struct q_class_params {
	int		 retry_min;	/* seconds before the first retry */
	int		 retry_max;	/* the doubling stops here */
	int		 lifetime;	/* default lifetime (s) if expires==0 */
	double		 jitter;	/* +- fraction, e.g. 0.2 */
};

struct queue_params {
	const char	*dir;		/* <state_dir>/spool */
	struct q_class_params klass[Q_CLASS_COUNT];
	uint64_t	 min_free_bytes;	/* enqueue refuses below this */
	uint64_t	 min_free_inodes;
	int		 segments;	/* new messages in segment files (segment.c) */
	int		 keep_done;	/* seconds a finished message stays listable */
	const char	*bounce_from;	/* MAILER-DAEMON@host for DSNs */
	const char	*hostname;	/* Reporting-MTA in DSNs */
	/* Log sink for recovery, quarantine, I/O failures; may be NULL. */
	void		(*log)(int prio, const char *line);
	/* Signs a DSN before it is queued (DKIM, for bounce_from's domain):
	 * returns a malloc'd message, or NULL to queue it unsigned.  May be
	 * NULL. */
	char		*(*sign)(void *arg, const char *msg, size_t len, size_t *outlen);
	void		*sign_arg;
	/* Called (queue lock held) for each recipient the queue expires,
	 * with its state and reply set: the event log.  May be NULL.  What
	 * it records may wait for expired_sync, which the queue calls once
	 * the expiries of a sweep (a release: of its message) are made and
	 * before their state is saved or their files removed, by the same
	 * thread and without the lock: it returns once they are durable (one
	 * fdatasync for a mass expiry, not one per recipient).  May be NULL. */
	void		(*expired)(void *arg, const struct q_envelope *, size_t rcpt);
	void		(*expired_sync)(void *arg);
	void		*expired_arg;
};

struct queue;

/* Opens (creating) the spool, removes temporary files, lists the message
 * files, loads them (what does not parse goes to corrupt/) and rebuilds
 * the schedule; above 10,000 files it returns after the listing and a
 * thread loads them (see queue_loading). */
struct queue	*queue_open(const struct queue_params *, char *err, size_t errlen);
void		 queue_close(struct queue *);
/* Several hosts: ids made from now on name site (0..14) in their nonce's
 * first hex digit, so any host can tell where a message lives (before the
 * first id; the time part and the spool loader's clock are unchanged). */
void		 queue_id_site(int site);
/* The site an id names (its nonce's first hex digit), -1 if not an id. */
int		 queue_id_site_of(const char *id);
/* 1 while the spool found at open is still loading (on a thread of its
 * own: enqueue and lease work meanwhile; get, list and the admin calls
 * wait up to 2 s for it, then answer Q_LOADING; stats counts what is
 * loaded and says so). */
int		 queue_loading(struct queue *);

/*
 * Durably enqueues one message: body and envelope are on disk (fsync of the
 * files and of the directory) before this returns Q_OK.  The template gives
 * class, sender, recipients, expires (0 = class lifetime), flags, tag and
 * client_uid; the id is written to id_out.
 */
enum q_status	 queue_enqueue(struct queue *, const struct q_envelope *tmpl,
		    const char *data, size_t len, char id_out[QUEUE_ID_LEN + 1]);
/*
 * The same with a barrier: barrier(arg) runs once the message's data is on
 * disk but before the message gets its name (before it can ever be seen or
 * delivered, even after a crash).  If it returns -1 nothing is enqueued
 * and Q_TEMPFAIL is returned.  otp.issue waits there for its code's commit.
 * id_out holds the message's id when the barrier runs.
 */
enum q_status	 queue_enqueue_barrier(struct queue *, const struct q_envelope *tmpl,
		    const char *data, size_t len, char id_out[QUEUE_ID_LEN + 1],
		    int (*barrier)(void *), void *arg);

/*
 * Delivery side.  queue_lease blocks up to wait_ms for a due message that is
 * not held, not leased, and whose class is not paused; it returns Q_OK and a
 * copy of its envelope (only its pending/deferred recipients are to be tried),
 * or Q_NOTFOUND on timeout / shutdown.  OTP class comes first.  Expired
 * messages are never leased: the queue finishes them itself (Q_RCPT_EXPIRED,
 * DSN for the default class).
 */
enum q_status	 queue_lease(struct queue *, int wait_ms, struct q_envelope **);
/* The same, waiting up to wait_us microseconds. */
enum q_status	 queue_lease_us(struct queue *, long wait_us, struct q_envelope **);
/* Reads the body of a message (as enqueued). */
enum q_status	 queue_body(struct queue *, const char *id, char **data, size_t *len);
/*
 * Ends a lease: env->rcpts[i].state/reply/last_attempt carry this attempt's
 * outcome (DELIVERED / DEFERRED / FAILED), env->last_error a summary.  The
 * queue writes it atomically, reschedules with backoff and jitter if anything
 * is deferred, builds one DSN for failures of a non-bounce default-class
 * message, and frees env.
 */
enum q_status	 queue_release_lease(struct queue *, struct q_envelope *env);
/* Ends a lease as if it never happened: due again now, no attempt counted. */
enum q_status	 queue_return_lease(struct queue *, struct q_envelope *env);
/* Wakes every lease waiter (shutdown). */
void		 queue_shutdown(struct queue *);

/* Status and admin operations. */
enum q_status	 queue_get(struct queue *, const char *id, struct q_envelope **);
#define Q_FILTER_PENDING	(-2)	/* every state but done */
struct q_filter {
	int		 state;		/* -1 any, Q_FILTER_PENDING, else enum q_msg_state */
	int		 klass;		/* -1 any */
	const char	*domain;	/* recipient domain, NULL any */
	const char	*sender;	/* NULL any */
	time_t		 older_than;	/* created before (0 = no bound) */
	time_t		 younger_than;	/* created after (0 = no bound) */
	const char	*after_id;	/* paging: ids > this, NULL = start */
	size_t		 limit;		/* max results (0 = 100) */
};
/* Results sorted by id (= by age); *more tells whether the page was cut. */
enum q_status	 queue_list(struct queue *, const struct q_filter *,
		    struct q_envelope ***out, size_t *n, int *more);
enum q_status	 queue_hold(struct queue *, const char *id);
/* Records news of a recipient after the fact (a DSN received back): its
 * err_class and, if not NULL, the reply; Q_NOTFOUND if the message or the
 * recipient (matched without case) is not there, Q_BUSY while leased. */
enum q_status	 queue_note_rcpt(struct queue *, const char *id, const char *addr,
		    const char *err_class, const char *reply);
enum q_status	 queue_unhold(struct queue *, const char *id);
enum q_status	 queue_delete(struct queue *, const char *id);
/* Makes deferred messages due now: one id, a recipient domain, or all (both NULL). */
enum q_status	 queue_flush(struct queue *, const char *id, const char *domain, size_t *count);
void		 queue_pause(struct queue *, int paused);
int		 queue_paused(struct queue *);

struct q_stats {
	size_t		 by_state[Q_MSG_DONE + 1];
	size_t		 by_class[Q_CLASS_COUNT];
	uint64_t	 delivered, deferred, failed, expired, bounces;	/* since start */
	time_t		 oldest;	/* created time of the oldest live message, 0 none */
	int		 loading;	/* 1: the spool is still loading, counts are partial */
};
void		 queue_stats(struct queue *, struct q_stats *);

/* Why the last Q_NOSPACE of this thread happened (floor, inodes, full). */
extern _Thread_local const char *queue_nospace_why;

void		 q_envelope_free(struct q_envelope *);
void		 q_envelope_list_free(struct q_envelope **, size_t);
const char	*q_class_name(enum q_class);
int		 q_class_parse(const char *);		/* -1 if unknown */
const char	*q_rcpt_state_name(enum q_rcpt_state);
const char	*q_msg_state_name(enum q_msg_state);
int		 q_msg_state_parse(const char *);	/* -1 if unknown */

#endif
