/*
 * queue_int.h - the pieces of queue/ behind queue.h: ids (qid.c), the
 * on-disk format (spool.c), the due-heaps and backoff (sched.c) and DSN
 * building (dsn.c).  Not for use outside queue/ and its unit tests.
 */
#ifndef OTPMAIL_QUEUE_INT_H
#define OTPMAIL_QUEUE_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>

#include "queue/queue.h"

/* Bounds on what a spool file may hold (files read back are untrusted). */
#define Q_MAX_RCPT		10000
#define Q_MAX_ADDR		512	/* bytes of an address (sender or rcpt) */
#define Q_MAX_TEXT		4096	/* bytes of a decoded reply / error / tag */
#define Q_MAX_ENV		(4u << 20)	/* bytes of an encoded envelope */
#define Q_MAX_BODY		((size_t)1 << 30)
#define Q_NDIRS			256	/* hashed subdirectories msg/00 .. msg/ff */

/* --- qid.c ---------------------------------------------------------- */
/* A fresh id: 16 hex of a strictly increasing microsecond clock, then 8 hex
 * of a per-process random nonce. */
void		 qid_new(char out[QUEUE_ID_LEN + 1]);
/* Raises the clock floor to the time part of an id seen in the spool, so a
 * clock stepped backwards never sorts new ids before old ones. */
void		 qid_seen(const char *id);
/* 1 if s is 24 lower-case hex chars. */
int		 qid_valid(const char *s);

/* --- spool.c -------------------------------------------------------- */
struct spool_dsync;
struct spool_smap;
struct segs;

struct spool {
	char		*dir;
	uint64_t	 min_free_bytes;
	uint64_t	 min_free_inodes;
	void		(*log)(int prio, const char *line);
	int		 tmpfile_ok;	/* new files via O_TMPFILE + linkat */
	int		 dirfd;		/* the spool directory (O_PATH), or -1 */
	_Atomic int64_t	 space_ok_until;	/* ms, CLOCK_MONOTONIC_COARSE */
	struct spool_dsync *dsync;	/* [Q_NDIRS]: shared fsyncs of msg/XX */
	struct segs	*segs;		/* the segments, or NULL (none, not on) */
	int		 seg_new;	/* new messages go to segments */
	struct spool_smap *smap;	/* id -> its place in a segment */
};

int		 spool_init(struct spool *, const char *dir, int segments, uint64_t min_bytes,
		    uint64_t min_inodes, void (*log)(int, const char *),
		    char *err, size_t errlen);
void		 spool_free(struct spool *);
void		 spool_log(const struct spool *, int prio, const char *fmt, ...)
		    __attribute__((format(printf, 3, 4)));
/* Removes every temporary file (start-up); returns how many. */
size_t		 spool_clean_tmp(struct spool *);
/* Free space and inodes above their floors?  A result far above them
 * (SPOOL_SPACE_SLACK) is kept for a second: no statfs per message. */
enum q_status	 spool_check_space(struct spool *);
/* Replaces a file atomically and durably: tmp/<unique> -> write -> fsync
 * -> rename onto rel (relative to the spool) -> fsync of rel's directory. */
enum q_status	 spool_write_atomic(struct spool *, const char *rel,
		    const struct iovec *, int iovcnt);
/* Envelope text (strict, versioned key/value lines). */
char		*spool_env_format(const struct q_envelope *, size_t *len);
int		 spool_env_parse(const char *, size_t, struct q_envelope *,
		    char *why, size_t whylen);
/* The message file: header line, envelope, body, end marker; written
 * whole (O_TMPFILE + linkat) and fsynced with its directory. */
enum q_status	 spool_store_message(struct spool *, const struct q_envelope *,
		    const char *body, size_t len, int (*barrier)(void *), void *arg);
/* A later version of the envelope, appended to the message file as a state
 * record (fdatasynced if durable; Q_NOTFOUND if the file is gone). */
enum q_status	 spool_store_state(struct spool *, const struct q_envelope *);
enum q_status	 spool_store_state_text(struct spool *, const char *id,
		    const char *env, size_t envlen, int durable);
/* Loads a message's envelope (the last whole state record wins; a torn
 * one is cut off).  Returns 0, or -1 with a reason (caller quarantines). */
int		 spool_load(struct spool *, const char *id, struct q_envelope **,
		    char *why, size_t whylen);
/* Reads and checks the body; a bad body is quarantined (Q_NOTFOUND). */
enum q_status	 spool_read_body(struct spool *, const char *id, char **, size_t *);
void		 spool_remove(struct spool *, const char *id, int sync);
int		 spool_fsync_dir(struct spool *, const char *rel);
/*
 * Tests: run by the thread that syncs msg/<dir> for tickets from..upto,
 * before the fsync and without the lock; -1 (errno set) is that round's
 * result instead of the fsync's.  NULL in the daemon.
 */
extern int	(*spool_dsync_test_hook)(struct spool *, int dir, uint64_t from,
		    uint64_t upto);
/* Tests: the last ticket taken in msg/<dir>. */
uint64_t	 spool_dsync_tickets(struct spool *, int dir);
/* Moves a message file (or one stray file) into corrupt/. */
void		 spool_quarantine(struct spool *, const char *id, const char *why);
void		 spool_quarantine_path(struct spool *, const char *rel, const char *why);
/* Calls fn for each message file; strays are quarantined.  Returns the
 * number of ids seen. */
size_t		 spool_scan(struct spool *, void (*fn)(void *, const char *id), void *);
/* Relative path: msg/XX/ID */
void		 spool_path(const char *id, char *out, size_t len);
uint32_t	 spool_crc32(uint32_t crc, const void *, size_t);

/* --- sched.c -------------------------------------------------------- */
#define SCHED_NONE	((size_t)-1)

struct sched_node {
	time_t		 key;
	const char	*id;		/* tie-break: older id first */
	size_t		 idx;		/* SCHED_NONE when in no heap */
	void		*owner;
};

struct sched_heap {
	struct sched_node **v;
	size_t		 n, cap;
};

void		 sched_heap_init(struct sched_heap *);
void		 sched_heap_free(struct sched_heap *);
/* Inserts the node or moves it to its new key; -1 on ENOMEM. */
int		 sched_heap_set(struct sched_heap *, struct sched_node *, time_t key);
void		 sched_heap_del(struct sched_heap *, struct sched_node *);
struct sched_node *sched_heap_top(const struct sched_heap *);

/* The run queues, one heap per class; OTP is always asked first. */
struct sched {
	struct sched_heap run[Q_CLASS_COUNT];
	struct sched_heap timers;	/* expiry of live messages, purge of done ones */
};
void		 sched_init(struct sched *);
void		 sched_free(struct sched *);
/* The first node due at now, OTP class before default; NULL if none. */
struct sched_node *sched_due(const struct sched *, time_t now);
/* Earliest key over the run heaps, or 0 if all are empty. */
time_t		 sched_next(const struct sched *);
/* Delay before retry number `attempts` (1 = first retry): retry_min doubled
 * per attempt up to retry_max, times 1 +- jitter (u uniform in [0,1)). */
int		 sched_backoff(const struct q_class_params *, int attempts, double u);
/* Uniform in [0,1), thread-safe. */
double		 sched_random(void);

/* --- dsn.c ---------------------------------------------------------- */
/*
 * Builds an RFC 3464 multipart/report for the failed/expired recipients of
 * env; body is the original message (its header section is returned),
 * may be NULL.  Returns a malloc'd CRLF message.
 */
char		*dsn_build(const struct q_envelope *env, const char *body, size_t bodylen,
		    const char *bounce_from, const char *hostname, time_t now,
		    size_t *len);
/* RFC 5322 date in UTC, locale independent. */
void		 dsn_date(time_t, char *out, size_t len);

/* --- queue.c (tests) ------------------------------------------------ */
/* Spools of up to this many messages load within queue_open; larger ones
 * on the loader thread (10,000; tests set 0 to load every spool there). */
extern size_t	 q_load_sync_max;
/* Tests: the loader thread sleeps this long before it starts (0). */
extern unsigned	 q_load_test_delay_ms;
/* Replaces the clock (tests); NULL = time(). */
void		 queue_set_clock(struct queue *, time_t (*)(void));
/* Runs expiry and purge of everything due now (the timer thread does this). */
void		 queue_run_timers(struct queue *);
struct q_envelope *q_envelope_dup(const struct q_envelope *);
/* Frees what the envelope points to and zeroes it. */
void		 q_envelope_clear(struct q_envelope *);

#endif
