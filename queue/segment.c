/*
 * segment.c - new messages appended to shared files, <spool>/seg/<16 hex>,
 * one fdatasync per group of concurrent writers instead of a file, an
 * inode, an fsync and a shared directory fsync per message.  spool.c puts
 * new messages here when queue_segments is on (issue 21).
 *
 *   record: "OTPG1 <id> <kind> <len> <crc32 of the payload> <crc32 of the
 *            header before this field>\n" <payload> "END\n"
 *   kind:   M  a message (payload: spool.c's message text); synced
 *           S  a newer envelope (payload: its text), for a finished
 *              message; not synced, as spool.c's finished record: losing
 *              it to an OS crash repeats one delivery
 *           R  purged (no payload)
 *           V  moved to a file of its own (a durable state was needed)
 *           C  refused (its group's fdatasync failed, the sender was
 *              told), or quarantined (spool.c keeps a copy in corrupt/)
 *   R, V and C count the message out of its segment; the last S wins.
 *
 * A marker goes to the segment of its message, so a segment holds all
 * that is said of its messages, and goes as a whole once none is left
 * (never the one appended to, never during a sync round).  The scan
 * counts a segment's messages by id: a marker counts out only a message
 * of its own segment, once, so hostile or repeated markers can never
 * make a segment with a live message look empty.
 *
 * Appends go under one mutex, in order, so no hole can precede a synced
 * record: a crash leaves whole records and at most one torn one at the
 * end.  Reading back, a header that does not parse (it carries its own
 * CRC) ends the segment and the rest is cut off: a torn tail was never
 * acknowledged, since an acknowledgement waits for a sync that covers
 * every earlier write; anything else (a whole line that is not a header,
 * or a last record whose END is there but whose CRC fails) is copied to
 * corrupt/ first.  A good header whose payload fails its CRC, before the
 * last record, names a damaged message (SEG_DAMAGED) and the walk goes on
 * by the header's length.  No resynchronisation past a bad header: a
 * message body may hold text that looks like a record, and a reader that
 * searched for the next magic could be fed one.
 *
 * Group commit: a writer appends, takes a ticket and waits; when no sync
 * runs, one waiter syncs every segment written since the last round (a
 * segment rolled over meanwhile included) for every ticket taken so far,
 * then answers each waiter it covered.  A failed sync fails its round
 * and every segment it synced takes no more messages or states (the next
 * append opens a new one); a waiter whose record is in such a segment is
 * refused too, even if its ticket came after the round began: what a
 * failed fdatasync left on disk is unknown.  The caller appends a C
 * marker for each refused id, which such a segment still takes.
 *
 * A segment is made durable before its first record: created, then its
 * directory fsynced (and seg/ itself, with the spool directory, when
 * segs_open makes it).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "queue/segment.h"

#define SEG_MAGIC	"OTPG1"
#define SEG_HDR_MAX	96
#define SEG_END		"END\n"
#define SEG_END_LEN	4
/* bytes of a payload: a message part (header, envelope, body, END) at
 * most; a longer one is refused when written, since the scan would take
 * its header for garbage and cut it and everything after it */
#define SEG_LEN_MAX	((uint64_t)Q_MAX_ENV + Q_MAX_BODY + 4096)

struct seg {
	uint64_t	 no;
	int		 fd;
	uint64_t	 size;		/* bytes of whole records */
	uint64_t	 live;		/* M records without R, V or C */
	int		 dirty;		/* written since the last sync round began */
	int		 insync;	/* synced by the running round (its leader's) */
	int		 broken;	/* a sync or a cut failed: no more M or S
					 * records (markers still go) */
	int		 kept;		/* not read whole at the scan: never removed */
	struct seg	*next;
};

struct seg_wait {
	uint64_t	 t;
	struct seg	*s;		/* the record's segment */
	int		 done, rc, err;
	struct seg_wait	*next;
};

/* The ids of one segment's live messages, while the scan reads it. */
struct seg_idset {
	struct seg_idn {
		char		 id[QUEUE_ID_LEN + 1];
		struct seg_idn	*next;
	}		**b;
	size_t		 nb, n;
};

struct segs {
	char		*dir;
	uint64_t	 roll;		/* bytes after which a new segment opens */
	void		(*log)(int, const char *);
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	struct seg	*list;		/* every segment, newest first */
	struct seg	*cur;		/* appended to, or NULL */
	uint64_t	 next_no;
	uint64_t	 ticket;	/* the last taken */
	uint64_t	 rounds;	/* sync rounds run (tests) */
	int		 syncing;
	int		 scanned;	/* segs_scan ran */
	struct seg_wait	*w;		/* waiting for a round */
};

static void
segs_log(const struct segs *ss, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The test hook OTPMAIL_FAULT=seg_after_append: abort once a message is
 * written, before its sync (test_crash_points.py). */
static int	segs_fault_append;
int		(*segs_sync_test_hook)(uint64_t seg);

static void
segs_log(const struct segs *ss, int prio, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (ss->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	ss->log(prio, line);
}

/* The outcome of a failed write or sync. */
static enum q_status
segs_status(int e)
{
	return e == ENOSPC || e == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
}

/* 1 if iov (n pieces) is a payload segs_scan will read back. */
static int
segs_payload_ok(const struct iovec *iov, int n)
{
	uint64_t len = 0;
	int i;

	if (n < 0 || n > 8)
		return 0;
	for (i = 0; i < n; i++)
		len += iov[i].iov_len;
	return len <= SEG_LEN_MAX;
}

static struct seg *
segs_find(struct segs *ss, uint64_t no)
{
	struct seg *s;

	for (s = ss->list; s != NULL; s = s->next)
		if (s->no == no)
			return s;
	return NULL;
}

/* fsync of the directory path (the spool's files use it too).  0, or -1
 * with errno. */
int
segs_fsync_path(const char *path)
{
	int fd, rc, e;

	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	rc = fsync(fd);
	e = errno;
	close(fd);
	errno = e;
	return rc;
}

/* 1 if name is a segment's: 16 lower-case hex digits, not all zero. */
static int
segs_name_ok(const char *name, uint64_t *no)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 16; i++) {
		if (name[i] >= '0' && name[i] <= '9')
			v = v << 4 | (uint64_t)(name[i] - '0');
		else if (name[i] >= 'a' && name[i] <= 'f')
			v = v << 4 | (uint64_t)(name[i] - 'a' + 10);
		else
			return 0;
	}
	if (name[16] != '\0' || v == 0)
		return 0;
	*no = v;
	return 1;
}

static size_t
segs_idhash(const char *id, size_t nb)
{
	return spool_crc32(0, id, QUEUE_ID_LEN) % nb;
}

static void
segs_idset_free(struct seg_idset *set)
{
	struct seg_idn *e, *nx;
	size_t i;

	for (i = 0; i < set->nb; i++)
		for (e = set->b[i]; e != NULL; e = nx) {
			nx = e->next;
			free(e);
		}
	free(set->b);
	memset(set, 0, sizeof(*set));
}

/* Adds id (once).  0, or -1 (no memory). */
static int
segs_idset_add(struct seg_idset *set, const char *id)
{
	struct seg_idn *e, **nb, *nx;
	size_t i, h, n2;

	if (set->nb == 0) {
		if ((set->b = calloc(256, sizeof(*set->b))) == NULL)
			return -1;
		set->nb = 256;
	}
	for (e = set->b[segs_idhash(id, set->nb)]; e != NULL; e = e->next)
		if (memcmp(e->id, id, QUEUE_ID_LEN) == 0)
			return 0;
	if (set->n >= set->nb * 2 && (nb = calloc(set->nb * 2, sizeof(*nb))) != NULL) {
		n2 = set->nb * 2;
		for (i = 0; i < set->nb; i++)
			for (e = set->b[i]; e != NULL; e = nx) {
				nx = e->next;
				h = segs_idhash(e->id, n2);
				e->next = nb[h];
				nb[h] = e;
			}
		free(set->b);
		set->b = nb;
		set->nb = n2;
	}
	if ((e = malloc(sizeof(*e))) == NULL)
		return -1;
	memcpy(e->id, id, QUEUE_ID_LEN + 1);
	h = segs_idhash(id, set->nb);
	e->next = set->b[h];
	set->b[h] = e;
	set->n++;
	return 0;
}

/* Takes id out: 1, or 0 if it was not there. */
static int
segs_idset_del(struct seg_idset *set, const char *id)
{
	struct seg_idn **pp, *e;

	if (set->nb == 0)
		return 0;
	for (pp = &set->b[segs_idhash(id, set->nb)]; (e = *pp) != NULL; pp = &e->next)
		if (memcmp(e->id, id, QUEUE_ID_LEN) == 0) {
			*pp = e->next;
			free(e);
			set->n--;
			return 1;
		}
	return 0;
}

/*
 * Holding mu: s goes (file and all) if no message in it is left, it is
 * not the one appended to, and no sync round may still hold it.
 */
static void
segs_drop_if_empty_locked(struct segs *ss, struct seg *s)
{
	char path[PATH_MAX];
	struct seg **pp;

	if (s->live > 0 || s == ss->cur || s->dirty || s->kept || ss->syncing)
		return;
	for (pp = &ss->list; *pp != NULL && *pp != s; pp = &(*pp)->next)
		;
	if (*pp == NULL)
		return;
	*pp = s->next;
	snprintf(path, sizeof(path), "%s/%016" PRIx64, ss->dir, s->no);
	if (unlink(path) == -1)
		segs_log(ss, LOG_ERR, "queue: unlink segment %016" PRIx64 ": %s", s->no,
		    strerror(errno));
	close(s->fd);
	free(s);
}

/* Holding mu: every segment with no message left goes (see above). */
static void
segs_drop_empty_locked(struct segs *ss)
{
	struct seg *s, *nx;

	for (s = ss->list; s != NULL; s = nx) {
		nx = s->next;
		segs_drop_if_empty_locked(ss, s);
	}
}

/* Holding mu: a new segment, current.  NULL with errno. */
static struct seg *
segs_new_locked(struct segs *ss)
{
	char path[PATH_MAX];
	struct seg *s;
	int fd, e, tries;

	/* a name taken by a file the scan could not read is skipped, not
	 * opened: every append would fail on it */
	for (tries = 0;; tries++) {
		snprintf(path, sizeof(path), "%s/%016" PRIx64, ss->dir, ss->next_no);
		if ((fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC,
		    0600)) != -1)
			break;
		if (errno != EEXIST || tries == 64)
			return NULL;
		ss->next_no++;
	}
	/* its name durable before any record in it is acknowledged */
	if (segs_fsync_path(ss->dir) == -1 || (s = calloc(1, sizeof(*s))) == NULL) {
		e = errno;
		close(fd);
		unlink(path);
		errno = e;
		return NULL;
	}
	s->no = ss->next_no++;
	s->fd = fd;
	s->next = ss->list;
	ss->list = s;
	ss->cur = s;
	return s;
}

struct segs *
segs_open(const char *dir, uint64_t roll, void (*log)(int, const char *),
    char *err, size_t errlen)
{
	char parent[PATH_MAX], *slash;
	struct segs *ss;

	if (mkdir(dir, 0700) == 0) {
		/* seg/ itself durable before a segment in it is */
		snprintf(parent, sizeof(parent), "%s", dir);
		if ((slash = strrchr(parent, '/')) != NULL && slash != parent)
			*slash = '\0';
		else
			snprintf(parent, sizeof(parent), "%s", slash != NULL ? "/" : ".");
		if (segs_fsync_path(parent) == -1) {
			snprintf(err, errlen, "fsync %s: %s", parent, strerror(errno));
			return NULL;
		}
	} else if (errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
		return NULL;
	}
	if ((ss = calloc(1, sizeof(*ss))) == NULL || (ss->dir = strdup(dir)) == NULL) {
		free(ss);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	ss->roll = roll > 0 ? roll : SEGS_ROLL_DEFAULT;
	segs_fault_append = getenv("OTPMAIL_FAULT") != NULL &&
	    strcmp(getenv("OTPMAIL_FAULT"), "seg_after_append") == 0;
	ss->log = log;
	ss->next_no = 1;
	pthread_mutex_init(&ss->mu, NULL);
	pthread_cond_init(&ss->cv, NULL);
	return ss;
}

void
segs_close(struct segs *ss)
{
	struct seg *s, *nx;

	if (ss == NULL)
		return;
	for (s = ss->list; s != NULL; s = nx) {
		nx = s->next;
		close(s->fd);
		free(s);
	}
	pthread_mutex_destroy(&ss->mu);
	pthread_cond_destroy(&ss->cv);
	free(ss->dir);
	free(ss);
}

/*
 * Holding mu: one sync round for every ticket taken so far; mu is let go
 * during the syncs.  Answers the waiters it covered, and refuses every
 * waiter whose segment a failed sync broke.  The segments it syncs are
 * marked insync under mu and walked from the list's head as it was: new
 * segments only go in front of it, and none goes while a round runs.
 */
static void
segs_round_locked(struct segs *ss)
{
	struct seg *s, *head;
	struct seg_wait *it;
	uint64_t upto;
	int rc = 0, e = 0;

	ss->syncing = 1;
	ss->rounds++;
	upto = ss->ticket;
	head = ss->list;
	for (s = head; s != NULL; s = s->next) {
		s->insync = s->dirty;
		s->dirty = 0;
	}
	pthread_mutex_unlock(&ss->mu);
	for (s = head; s != NULL; s = s->next) {
		if (!s->insync)
			continue;
		if (segs_sync_test_hook != NULL && segs_sync_test_hook(s->no) == -1) {
			if (rc == 0) {
				rc = -1;
				e = errno;
			}
		} else if (fdatasync(s->fd) == -1 && rc == 0) {
			rc = -1;
			e = errno;
		}
	}
	pthread_mutex_lock(&ss->mu);
	for (s = head; s != NULL; s = s->next) {
		/* what the round left on disk is unknown: no more records */
		if (rc == -1 && s->insync)
			s->broken = 1;
		s->insync = 0;
	}
	if (rc == -1) {
		if (ss->cur != NULL && ss->cur->broken)
			ss->cur = NULL;
		segs_log(ss, LOG_ERR, "queue: fdatasync of a segment: %s", strerror(e));
	}
	for (it = ss->w; it != NULL; it = it->next) {
		if (it->done)
			continue;
		if (it->t <= upto) {
			it->done = 1;
			it->rc = rc;
			it->err = e;
		} else if (it->s->broken) {
			it->done = 1;
			it->rc = -1;
			it->err = rc == -1 ? e : EIO;
		}
	}
	ss->syncing = 0;
	segs_drop_empty_locked(ss);
	pthread_cond_broadcast(&ss->cv);
}

/*
 * Holding mu: writes one whole record (hdr, iov, END) at the end of s; a
 * short write is cut off again.  The header's length in *hl.  0, or -1
 * with errno.
 */
static int
segs_write_locked(struct segs *ss, struct seg *s, const char *id, char kind,
    const struct iovec *iov, int n, size_t *hlp, uint64_t *lenp)
{
	char hdr[SEG_HDR_MAX];
	struct iovec v[10], *vp;
	uint32_t crc = 0;
	size_t len = 0, total, done, left;
	ssize_t wr = 0;
	int hl, i, e, vn;

	for (i = 0; i < n; i++) {
		crc = spool_crc32(crc, iov[i].iov_base, iov[i].iov_len);
		len += iov[i].iov_len;
	}
	hl = snprintf(hdr, sizeof(hdr), SEG_MAGIC " %s %c %zu %08x", id, kind, len,
	    (unsigned)crc);
	hl += snprintf(hdr + hl, sizeof(hdr) - (size_t)hl, " %08x\n",
	    (unsigned)spool_crc32(0, hdr, (size_t)hl));
	v[0].iov_base = hdr;
	v[0].iov_len = (size_t)hl;
	if (n > 0)
		memcpy(v + 1, iov, (size_t)n * sizeof(*iov));
	v[n + 1].iov_base = (void *)SEG_END;
	v[n + 1].iov_len = SEG_END_LEN;
	total = (size_t)hl + len + SEG_END_LEN;
	/*
	 * A short write (a full disk gives one before ENOSPC) goes on with
	 * the rest: it is whole after all, or the next write says why not.
	 * mu is held, so nothing comes between the pieces.
	 */
	vp = v;
	vn = n + 2;
	for (done = 0; done < total; done += (size_t)wr) {
		if ((wr = writev(s->fd, vp, vn)) == -1 && errno == EINTR) {
			wr = 0;
			continue;
		}
		if (wr <= 0)
			break;
		for (left = (size_t)wr; vn > 0 && left >= vp->iov_len; vp++, vn--)
			left -= vp->iov_len;
		if (vn > 0) {
			vp->iov_base = (char *)vp->iov_base + left;
			vp->iov_len -= left;
		}
	}
	if (done != total) {
		e = wr == -1 ? errno : EIO;
		if (ftruncate(s->fd, (off_t)s->size) == -1)
			s->broken = 1;
		segs_log(ss, LOG_ERR, "queue: append to segment %016" PRIx64 ": %s", s->no,
		    strerror(e));
		errno = e;
		return -1;
	}
	*hlp = (size_t)hl;
	*lenp = len;
	s->size += total;
	return 0;
}

enum q_status
segs_append(struct segs *ss, const char *id, const struct iovec *iov, int n,
    struct seg_loc *loc)
{
	struct seg_wait w, **pp;
	struct seg *s, *old;
	uint64_t len;
	size_t hl;
	int e;

	loc->seg = 0;			/* no segment: segs_mark does nothing */
	if (!segs_payload_ok(iov, n) || !qid_valid(id))
		return Q_BADINPUT;
	pthread_mutex_lock(&ss->mu);
	if ((s = ss->cur) == NULL || s->broken || s->size >= ss->roll) {
		old = s;
		if ((s = segs_new_locked(ss)) == NULL) {
			e = errno;
			pthread_mutex_unlock(&ss->mu);
			segs_log(ss, LOG_ERR, "queue: a new segment: %s", strerror(e));
			return segs_status(e);
		}
		if (old != NULL)
			segs_drop_if_empty_locked(ss, old);
	}
	if (segs_write_locked(ss, s, id, SEG_MESSAGE, iov, n, &hl, &len) == -1) {
		e = errno;
		if (s->broken)
			ss->cur = NULL;
		pthread_mutex_unlock(&ss->mu);
		return segs_status(e);
	}
	loc->seg = s->no;
	loc->off = s->size - len - SEG_END_LEN;
	loc->len = len;
	s->dirty = 1;
	s->live++;
	if (segs_fault_append)
		abort();
	memset(&w, 0, sizeof(w));
	w.s = s;
	w.t = ++ss->ticket;
	w.next = ss->w;
	ss->w = &w;
	while (!w.done) {
		if (!ss->syncing)
			segs_round_locked(ss);
		else
			pthread_cond_wait(&ss->cv, &ss->mu);
	}
	for (pp = &ss->w; *pp != &w; pp = &(*pp)->next)
		;
	*pp = w.next;
	pthread_mutex_unlock(&ss->mu);
	if (w.rc == -1)
		return segs_status(w.err);
	return Q_OK;
}

int
segs_read(struct segs *ss, const struct seg_loc *loc, char *buf)
{
	struct seg *s;
	size_t got = 0;
	ssize_t r;
	int fd;

	pthread_mutex_lock(&ss->mu);
	fd = -1;
	if ((s = segs_find(ss, loc->seg)) == NULL)
		errno = ENOENT;
	else if (loc->off > s->size || loc->len > s->size - loc->off)
		errno = EINVAL;		/* not a place of a whole record */
	else		/* a dup: a segment that goes meanwhile is still read whole */
		fd = dup(s->fd);
	pthread_mutex_unlock(&ss->mu);
	if (fd == -1)
		return -1;
	while (got < loc->len) {
		r = pread(fd, buf + got, loc->len - got, (off_t)(loc->off + got));
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			close(fd);
			return -1;
		}
		got += (size_t)r;
	}
	close(fd);
	return 0;
}

enum q_status
segs_state(struct segs *ss, uint64_t no, const char *id, const struct iovec *iov, int n,
    struct seg_loc *loc)
{
	struct seg *s;
	uint64_t len;
	size_t hl;
	int rc, e = 0;

	if (!segs_payload_ok(iov, n) || !qid_valid(id))
		return Q_BADINPUT;
	pthread_mutex_lock(&ss->mu);
	if ((s = segs_find(ss, no)) == NULL || s->live == 0 || s->broken) {
		pthread_mutex_unlock(&ss->mu);
		return Q_NOTFOUND;
	}
	if ((rc = segs_write_locked(ss, s, id, SEG_STATE, iov, n, &hl, &len)) == -1)
		e = errno;
	else if (loc != NULL) {
		loc->seg = s->no;
		loc->off = s->size - len - SEG_END_LEN;
		loc->len = len;
	}
	pthread_mutex_unlock(&ss->mu);
	if (rc == -1)
		return segs_status(e);
	return Q_OK;
}

void
segs_mark(struct segs *ss, uint64_t no, const char *id, char kind)
{
	struct seg *s;
	uint64_t len;
	size_t hl;

	/* a bad id would make a header the scan cuts at; an M or S kind
	 * without its payload would be read back as one */
	if (!qid_valid(id) || (kind != SEG_REMOVED && kind != SEG_MOVED && kind != SEG_CANCEL))
		return;
	pthread_mutex_lock(&ss->mu);
	if ((s = segs_find(ss, no)) == NULL || s->live == 0) {
		pthread_mutex_unlock(&ss->mu);
		return;
	}
	/*
	 * Not synced: lost to an OS crash, the message is read back once
	 * more (see the top); a failed write says so and counts it out.  A
	 * segment that takes no more records (a failed sync) still takes
	 * markers: they need no sync, and without its C a message refused by
	 * that sync came back at the next start and was delivered.  If what
	 * precedes the marker did not reach the disk, the scan cuts there
	 * and the marker with it, which is no worse than no marker.  Not in a
	 * segment the scan could not read whole.
	 */
	if (!s->kept)
		(void)segs_write_locked(ss, s, id, kind, NULL, 0, &hl, &len);
	s->live--;
	segs_drop_if_empty_locked(ss, s);
	pthread_mutex_unlock(&ss->mu);
}

/* Parses a record header: 0 and its fields, or -1. */
static int
segs_parse_hdr(const char *p, size_t n, char id[QUEUE_ID_LEN + 1], char *kind,
    uint64_t *len, uint32_t *crc, size_t *hl)
{
	const char *nl = memchr(p, '\n', n < SEG_HDR_MAX ? n : SEG_HDR_MAX);
	char line[SEG_HDR_MAX + 1], again[SEG_HDR_MAX + 32], k, tail;
	unsigned long long l;
	unsigned c, hc;
	int al;

	if (nl == NULL)
		return -1;
	memcpy(line, p, (size_t)(nl - p));
	line[nl - p] = '\0';
	if (sscanf(line, SEG_MAGIC " %24[0-9a-f] %c %llu %8x %8x%c", id, &k, &l, &c, &hc,
	    &tail) != 5 ||
	    !qid_valid(id) || (k != SEG_MESSAGE && k != SEG_STATE && k != SEG_REMOVED &&
	    k != SEG_MOVED && k != SEG_CANCEL) || l > SEG_LEN_MAX)
		return -1;
	/* the canonical form only: no signs, leading zeros or spaces */
	al = snprintf(again, sizeof(again), SEG_MAGIC " %s %c %llu %08x", id, k, l, c);
	if (spool_crc32(0, again, (size_t)al) != hc)
		return -1;
	snprintf(again + al, sizeof(again) - (size_t)al, " %08x", hc);
	if (strlen(again) != (size_t)(nl - p) || memcmp(again, p, (size_t)(nl - p)) != 0)
		return -1;
	*kind = k;
	*len = l;
	*crc = c;
	*hl = (size_t)(nl - p) + 1;
	return 0;
}

/* A copy of segment s in <spool>/corrupt (before a cut that is not a
 * torn tail), fsynced.  0, or -1 (logged): then nothing may be cut. */
static int
segs_keep_copy(struct segs *ss, struct seg *s)
{
	char path[PATH_MAX], cdir[PATH_MAX], buf[65536];
	ssize_t r = 0;
	off_t o = 0;
	int fd = -1, rc = 0, i;

	snprintf(cdir, sizeof(cdir), "%s/../corrupt", ss->dir);

	/* a name taken (the same segment number, the same second) gets .N */
	snprintf(path, sizeof(path), "%s/../corrupt/segment-%016" PRIx64 "-%ld", ss->dir,
	    s->no, (long)time(NULL));
	for (i = 1; i < 100; i++) {
		if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) != -1 ||
		    errno != EEXIST)
			break;
		snprintf(path, sizeof(path), "%s/../corrupt/segment-%016" PRIx64 "-%ld.%d",
		    ss->dir, s->no, (long)time(NULL), i);
	}
	if (fd == -1) {
		segs_log(ss, LOG_ERR, "queue: %s: %s", path, strerror(errno));
		return -1;
	}
	while ((r = pread(s->fd, buf, sizeof(buf), o)) > 0) {
		if (write(fd, buf, (size_t)r) != r) {
			rc = -1;
			break;
		}
		o += r;
	}
	/* the copy and its name durable before the cut that follows is */
	if (rc == -1 || r == -1 || fsync(fd) == -1 ||
	    segs_fsync_path(cdir) == -1) {
		segs_log(ss, LOG_ERR, "queue: copy of segment %016" PRIx64 " to %s: %s", s->no,
		    path, errno != 0 ? strerror(errno) : "short write");
		rc = -1;
	}
	close(fd);
	if (rc == -1)
		unlink(path);
	return rc;
}

/*
 * Every record of one segment in order, to fn (see the top: damaged
 * messages, torn tails, garbage); counts its live messages by id.  What
 * follows the last whole record is cut off; garbage (not a torn tail) is
 * first copied to corrupt/, and if that fails nothing is cut and the
 * segment takes no more records.  0, or -1: a read failed, or fn said
 * -1 (then nothing is cut either).
 */
static int
segs_scan_one(struct segs *ss, struct seg *s, int (*fn)(void *, uint64_t, const char *,
    char, const struct seg_loc *), void *arg)
{
	struct seg_idset live;
	struct stat st;
	uint64_t off = 0, len, size;
	uint32_t crc;
	size_t hl, want;
	char id[QUEUE_ID_LEN + 1], kind, hdr[SEG_HDR_MAX], *buf = NULL;
	struct seg_loc loc;
	int lost = 0, rc = 0;

	memset(&live, 0, sizeof(live));
	if (fstat(s->fd, &st) == -1)
		return -1;
	size = (uint64_t)st.st_size;
	while (off < size) {
		want = size - off < SEG_HDR_MAX ? (size_t)(size - off) : SEG_HDR_MAX;
		if (pread(s->fd, hdr, want, (off_t)off) != (ssize_t)want) {
			rc = -1;
			break;
		}
		if (segs_parse_hdr(hdr, want, id, &kind, &len, &crc, &hl) == -1) {
			/* no whole line before the end: torn; else garbage */
			if (memchr(hdr, '\n', want) != NULL)
				lost = 1;
			break;
		}
		/* len is bounded by segs_parse_hdr: no overflow here */
		if (off + hl + len + SEG_END_LEN > size)
			break;		/* its header says more than is there: torn */
		free(buf);
		if ((buf = malloc(len + SEG_END_LEN + 1)) == NULL ||
		    pread(s->fd, buf, len + SEG_END_LEN, (off_t)(off + hl)) !=
		    (ssize_t)(len + SEG_END_LEN)) {
			rc = -1;
			break;
		}
		loc.seg = s->no;
		loc.off = off + hl;
		loc.len = len;
		s->size = off + hl + len + SEG_END_LEN;	/* fn may segs_read it */
		if (memcmp(buf + len, SEG_END, SEG_END_LEN) != 0 ||
		    spool_crc32(0, buf, len) != crc) {
			/* the last record: torn (never acknowledged), and cut;
			 * a copy is kept if its END is there (it may be a
			 * damaged acknowledged one); else the header (its own
			 * CRC) is good and says where the next one starts: a
			 * damaged message, named to the caller */
			if (off + hl + len + SEG_END_LEN == size) {
				if (memcmp(buf + len, SEG_END, SEG_END_LEN) == 0)
					lost = 1;
				break;
			}
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 ": record of %s "
			    "at %" PRIu64 " damaged", s->no, id, off);
			if (kind == SEG_MESSAGE) {
				if (segs_idset_add(&live, id) == -1) {
					rc = -1;
					break;
				}
				if (fn != NULL && fn(arg, s->no, id, SEG_DAMAGED, &loc) == -1) {
					rc = -1;
					break;
				}
			}
			off += hl + len + SEG_END_LEN;
			continue;
		}
		if (kind == SEG_MESSAGE) {
			if (segs_idset_add(&live, id) == -1) {
				rc = -1;
				break;
			}
		} else if (kind != SEG_STATE && !segs_idset_del(&live, id)) {
			/* a marker for no live message of this segment: it
			 * counts nothing out, and the caller is not told */
			off += hl + len + SEG_END_LEN;
			continue;
		}
		if (fn != NULL && fn(arg, s->no, id, kind, &loc) == -1) {
			rc = -1;
			break;
		}
		off += hl + len + SEG_END_LEN;
	}
	free(buf);
	s->live = live.n;
	segs_idset_free(&live);
	s->size = off;
	if (rc == -1)
		return -1;
	if (off < size) {
		if (lost && segs_keep_copy(ss, s) == -1) {
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 ": garbage at %" PRIu64
			    " left in place (no copy): it takes no more records", s->no, off);
			s->broken = 1;
			return 0;
		}
		segs_log(ss, lost ? LOG_ERR : LOG_WARNING, "queue: segment %016" PRIx64 ": %"
		    PRIu64 " bytes after the last whole record cut off%s", s->no, size - off,
		    lost ? " (not a torn tail: a copy of the segment is in corrupt/)" : "");
		if (ftruncate(s->fd, (off_t)off) == -1 || fdatasync(s->fd) == -1) {
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 ": cut: %s; it takes "
			    "no more records", s->no, strerror(errno));
			s->broken = 1;
		}
	}
	return 0;
}

static int
segs_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

int
segs_scan(struct segs *ss, int (*fn)(void *, uint64_t, const char *, char,
    const struct seg_loc *), void *arg)
{
	char path[PATH_MAX];
	struct dirent *de;
	struct stat st;
	struct seg *s;
	uint64_t *nos = NULL, *nn, v;
	size_t n = 0, cap = 0, i;
	DIR *dp;
	int rc = 0, fd;

	if (ss->scanned)
		return 0;
	ss->scanned = 1;
	if ((dp = opendir(ss->dir)) == NULL) {
		segs_log(ss, LOG_ERR, "queue: opendir %s: %s", ss->dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(dp)) != NULL) {
		if (strlen(de->d_name) != 16 || !segs_name_ok(de->d_name, &v))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			if ((nn = realloc(nos, cap * sizeof(*nos))) == NULL) {
				closedir(dp);
				free(nos);
				return -1;
			}
			nos = nn;
		}
		nos[n++] = v;
	}
	closedir(dp);
	if (n > 0)
		qsort(nos, n, sizeof(*nos), segs_cmp);
	/* past every name, read or not: a new segment never reuses one */
	if (n > 0 && nos[n - 1] >= ss->next_no)
		ss->next_no = nos[n - 1] + 1;
	/*
	 * Before any other use: no lock held while fn runs (it may read).
	 * A segment that cannot be opened or read is logged and left as it
	 * is (never removed, no record appended); the others are read.
	 */
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%016" PRIx64, ss->dir, nos[i]);
		memset(&st, 0, sizeof(st));
		if ((fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW)) == -1 ||
		    fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 ": %s", nos[i],
			    fd != -1 && st.st_mode != 0 && !S_ISREG(st.st_mode) ?
			    "not a regular file" : strerror(errno));
			if (fd != -1)
				close(fd);
			rc = -1;
			continue;
		}
		if ((s = calloc(1, sizeof(*s))) == NULL) {
			close(fd);
			rc = -1;
			continue;
		}
		s->fd = fd;
		s->no = nos[i];
		s->next = ss->list;
		ss->list = s;
		if (segs_scan_one(ss, s, fn, arg) == -1) {
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 " not read whole: "
			    "left as it is", s->no);
			s->kept = 1;
			s->broken = 1;
			rc = -1;
		}
	}
	pthread_mutex_lock(&ss->mu);
	segs_drop_empty_locked(ss);
	pthread_mutex_unlock(&ss->mu);
	free(nos);
	return rc;
}

uint64_t
segs_live(struct segs *ss, uint64_t no)
{
	struct seg *s;
	uint64_t v;

	pthread_mutex_lock(&ss->mu);
	s = segs_find(ss, no);
	v = s != NULL ? s->live : 0;
	pthread_mutex_unlock(&ss->mu);
	return v;
}

size_t
segs_count(struct segs *ss)
{
	struct seg *s;
	size_t n = 0;

	pthread_mutex_lock(&ss->mu);
	for (s = ss->list; s != NULL; s = s->next)
		n++;
	pthread_mutex_unlock(&ss->mu);
	return n;
}

uint64_t
segs_rounds(struct segs *ss)
{
	uint64_t v;

	pthread_mutex_lock(&ss->mu);
	v = ss->rounds;
	pthread_mutex_unlock(&ss->mu);
	return v;
}
