/*
 * segment.h - shared append-only files for new messages (segment.c), used
 * by spool.c when queue_segments is on.  Not for use outside queue/ and
 * its unit tests.
 */
#ifndef OTPMAIL_QUEUE_SEGMENT_H
#define OTPMAIL_QUEUE_SEGMENT_H

#include <stdint.h>
#include <sys/uio.h>

#include "queue/queue.h"

#define SEGS_ROLL_DEFAULT	((uint64_t)64 << 20)

/* record kinds */
#define SEG_MESSAGE	'M'	/* a message; durable */
#define SEG_STATE	'S'	/* a newer envelope (a finished one; not synced) */
#define SEG_REMOVED	'R'	/* purged */
#define SEG_MOVED	'V'	/* it has a file of its own now (a durable state) */
#define SEG_CANCEL	'C'	/* refused after a failed sync */
#define SEG_DAMAGED	'X'	/* (to segs_scan's fn only) a message whose
				 * payload is damaged: quarantine it */

struct segs;

struct seg_loc {
	uint64_t	 seg;		/* the segment's number */
	uint64_t	 off;		/* of the payload */
	uint64_t	 len;		/* of the payload */
};

/* dir: <spool>/seg, made if missing; roll: bytes after which a new
 * segment opens (0: SEGS_ROLL_DEFAULT). */
struct segs	*segs_open(const char *dir, uint64_t roll, void (*log)(int, const char *),
		    char *err, size_t errlen);
void		 segs_close(struct segs *);

/*
 * Every record of every segment, oldest first, to fn (which may read
 * with segs_read); a torn tail is cut off, with a log line.  Counts each
 * segment's live messages by id (M records less the R, V and C markers of
 * the same ids; a marker for no live message of its segment is not
 * passed on).  -1 from fn stops that segment's walk and nothing of it is
 * cut.  Once, after the open and before any other use (a second call does
 * nothing).  0, or -1 if a segment could not be read whole (logged; it is
 * left as it is, and the others are read).
 */
int		 segs_scan(struct segs *, int (*fn)(void *, uint64_t seg, const char *id,
		    char kind, const struct seg_loc *), void *arg);

/* Appends a message (the payload: iov, at most 8 pieces) to the current
 * segment; returns once a sync covers it (grouped).  Its place in *loc.
 * Refused after the write (its sync failed, or its segment's), it is still
 * counted in its segment: the caller marks it SEG_CANCEL (a no-op when
 * loc->seg is 0). */
enum q_status	 segs_append(struct segs *, const char *id, const struct iovec *, int n,
		    struct seg_loc *loc);

/* Appends a state record for id (the payload: its envelope text) to its
 * segment seg, not synced: it survives the daemon's crash, and an OS
 * crash at worst repeats a delivery.  Q_OK (its place in *loc when loc
 * is given), or the write's failure. */
enum q_status	 segs_state(struct segs *, uint64_t seg, const char *id,
		    const struct iovec *, int n, struct seg_loc *loc);

/* Appends marker kind (SEG_REMOVED, SEG_MOVED, SEG_CANCEL) for id to its
 * segment seg (not synced; also to a segment whose sync failed) and
 * counts the message out; a segment with none left (and not current)
 * goes.  Another kind, or an id that is not
 * a queue id, does nothing.  Once per message: spool.c's map ensures it. */
void		 segs_mark(struct segs *, uint64_t seg, const char *id, char kind);

/* Reads loc's payload into buf (loc->len bytes).  0, or -1 with errno
 * (ENOENT: the segment is gone; EINVAL: loc is past its whole records). */
int		 segs_read(struct segs *, const struct seg_loc *, char *buf);

/*
 * Tests: run by a sync round's leader instead of the fdatasync of segment
 * seg, without the lock; -1 (errno set) fails the round.  NULL in the
 * daemon.
 */
extern int	(*segs_sync_test_hook)(uint64_t seg);
/* fsync of the directory at path: 0, or -1 with errno. */
int		 segs_fsync_path(const char *path);
/* The live messages of segment seg (tests). */
uint64_t	 segs_live(struct segs *, uint64_t seg);
/* Sync rounds run since the open (tests). */
uint64_t	 segs_rounds(struct segs *);
/* How many segments exist (tests). */
size_t		 segs_count(struct segs *);

#endif
