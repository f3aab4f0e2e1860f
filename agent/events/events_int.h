/*
 * events_int.h - internals of agent/events/: the durable log (eventlog.c)
 * and the webhook senders (webhook.c).  Not for other folders.
 */
#ifndef OTPMAIL_EVENTS_INT_H
#define OTPMAIL_EVENTS_INT_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/events/events.h"

#define EVENTLOG_SEGMENT_BYTES	(4u << 20)	/* a segment is closed past this */
#define EVENTLOG_SEGMENT_AGE	3600		/* ... or when its first event is this old */
#define EVENT_LINE_MAX		4096		/* one event, JSON, on disk */

struct eventlog;

/*
 * The log: <dir>/<first id, 16 hex>.log segments of one JSON object per
 * line, each starting {"id":N,...}; appended with O_APPEND, fdatasync'd by
 * a sync of eventlog_sync_fd.  A torn last line (crash) is cut at open.
 */
struct eventlog	*eventlog_open(const char *dir, char *err, size_t errlen);
void		 eventlog_close(struct eventlog *);
uint64_t	 eventlog_last(const struct eventlog *);
/* Appends one line (no newline) as event id; the caller serialises, and
 * syncs it (eventlog_sync_fd) before anyone may see it. */
int		 eventlog_append(struct eventlog *, uint64_t id, const char *line, size_t len);
/* Appends n lines, each with its newline, as ids first..first + n - 1 (one
 * writev); a torn write is cut off again. */
struct iovec;
int		 eventlog_appendv(struct eventlog *, uint64_t first, const struct iovec *,
		    size_t n);
/* A new descriptor of the newest segment, for a sync outside the caller's
 * lock; the caller closes it. */
int		 eventlog_sync_fd(struct eventlog *);
/* The first id of the newest segment (the one eventlog_sync_fd opens). */
uint64_t	 eventlog_first(const struct eventlog *);
/* Calls fn for each event after `after`, from segments written at or after
 * not_before, in id order, until fn returns non-zero.  -1 on I/O error. */
int		 eventlog_scan(struct eventlog *, uint64_t after, time_t not_before,
		    events_line_fn fn, void *arg);
/* Removes segments last written before cutoff (never the newest). */
size_t		 eventlog_expire(struct eventlog *, time_t cutoff);
/* The id at the start of a line, 0 if none. */
uint64_t	 eventlog_line_id(const char *line, size_t len);

/* webhook.c */
int		 webhook_open(struct otpmaild *, struct eventlog *, char *err, size_t errlen);
int		 webhook_start(char *err, size_t errlen);
/* A new event of app was logged and synced (under the publish lock). */
void		 webhook_notify(const char *app);
void		 webhook_close(void);

#endif
