/*
 * segment.c - new messages appended to shared files, <spool>/seg/<16 hex>,
 * one fdatasync per group of concurrent writers instead of a file, an
 * inode, an fsync and a shared directory fsync per message.  A DRAFT for
 * issue 21 (branch wip/segment-spool): spool.c does not use it yet; the
 * plan is in tests/bench/README.md, "Session 14", and the session's note.
 *
 *   record: "OTPG1 <id> <kind> <len> <crc32 of the payload> <crc32 of the
 *            header before this field>\n" <payload> "END\n"
 *   kind:   M  a message (payload: spool.c's message text); synced
 *           S  a newer envelope (payload: its text), for a finished
 *              message; not synced, as spool.c's finished record: losing
 *              it to an OS crash repeats one delivery
 *           R  purged (no payload)
 *           V  moved to a file of its own (a durable state was needed)
 *           C  refused: its group's fdatasync failed, the sender was told
 *   R, V and C count the message out of its segment; the last S wins.
 *
 * A marker goes to the segment of its message, so a segment holds all
 * that is said of its messages, and goes as a whole once none is left.
 *
 * Appends go under one mutex, in order, so no hole can precede a synced
 * record: a crash leaves whole records and at most one torn one at the
 * end.  Reading back, the first record that does not parse (or whose CRC
 * fails) ends the segment; what follows was never acknowledged, since an
 * acknowledgement waits for a sync that covers every earlier write.  No
 * resynchronisation past a bad record: a message body may hold text that
 * looks like a record, and a reader that searched for the next magic
 * could be fed one.
 *
 * Group commit: a writer appends, takes a ticket and waits; when no sync
 * runs, one waiter syncs every segment written since the last round (a
 * segment rolled over meanwhile included) for every ticket taken so far,
 * then answers each waiter it covered.  A failed sync fails its round;
 * the segment written to is abandoned (the next append opens a new one),
 * and the caller appends a C record for each refused id where it can.
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

struct seg {
	uint64_t	 no;
	int		 fd;
	uint64_t	 size;		/* bytes of whole records */
	uint64_t	 live;		/* M records without D, V or C */
	int		 dirty;		/* written since the last sync round began */
	int		 broken;	/* a sync failed: no more appends */
	struct seg	*next;
};

struct seg_wait {
	uint64_t	 t;
	int		 done, rc, err;
	struct seg_wait	*next;
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
	struct seg_wait	*w;		/* waiting for a round */
};

static void
segs_log(const struct segs *ss, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The test hook OTPMAIL_FAULT=seg_after_append: abort once a message is
 * written, before its sync (test_crash_points.py). */
static int	segs_fault_append;

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

static struct seg *
segs_find(struct segs *ss, uint64_t no)
{
	struct seg *s;

	for (s = ss->list; s != NULL; s = s->next)
		if (s->no == no)
			return s;
	return NULL;
}

/* fsync of the segment directory (a segment made or removed). */
static int
segs_fsync_dir(struct segs *ss)
{
	int fd, rc, e;

	if ((fd = open(ss->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	rc = fsync(fd);
	e = errno;
	close(fd);
	errno = e;
	return rc;
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

	if (s->live > 0 || s == ss->cur || s->dirty || ss->syncing)
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
	int fd, e;

	snprintf(path, sizeof(path), "%s/%016" PRIx64, ss->dir, ss->next_no);
	if ((fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600)) == -1)
		return NULL;
	if (segs_fsync_dir(ss) == -1 || (s = calloc(1, sizeof(*s))) == NULL) {
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
	struct segs *ss;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
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
 * during the syncs.  Answers the waiters it covered.
 */
static void
segs_round_locked(struct segs *ss)
{
	struct seg *s, *dirty[64];
	struct seg_wait *it;
	uint64_t upto;
	size_t n = 0, i;
	int rc = 0, e = 0;

	ss->syncing = 1;
	ss->rounds++;
	upto = ss->ticket;
	for (s = ss->list; s != NULL; s = s->next)
		if (s->dirty) {
			s->dirty = 0;
			if (n < sizeof(dirty) / sizeof(dirty[0]))
				dirty[n++] = s;
			else {		/* cannot happen: a roll per round at most */
				rc = -1;
				e = EIO;
			}
		}
	pthread_mutex_unlock(&ss->mu);
	for (i = 0; i < n; i++)
		if (fdatasync(dirty[i]->fd) == -1 && rc == 0) {
			rc = -1;
			e = errno;
		}
	pthread_mutex_lock(&ss->mu);
	if (rc == -1) {
		/* what the round covered is unknown: no more appends there */
		for (i = 0; i < n; i++)
			dirty[i]->broken = 1;
		if (ss->cur != NULL && ss->cur->broken)
			ss->cur = NULL;
		segs_log(ss, LOG_ERR, "queue: fdatasync of a segment: %s", strerror(e));
	}
	for (it = ss->w; it != NULL; it = it->next)
		if (it->t <= upto && !it->done) {
			it->done = 1;
			it->rc = rc;
			it->err = e;
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
	struct iovec v[10];
	uint32_t crc = 0;
	size_t len = 0, total;
	ssize_t wr;
	int hl, i, e;

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
	wr = writev(s->fd, v, n + 2);
	if (wr != (ssize_t)total) {
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
	if (n < 0 || n > 8 || !qid_valid(id))
		return Q_BADINPUT;
	pthread_mutex_lock(&ss->mu);
	if ((s = ss->cur) == NULL || s->broken || s->size >= ss->roll) {
		old = s;
		if ((s = segs_new_locked(ss)) == NULL) {
			e = errno;
			pthread_mutex_unlock(&ss->mu);
			segs_log(ss, LOG_ERR, "queue: a new segment: %s", strerror(e));
			return e == ENOSPC || e == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
		}
		if (old != NULL)
			segs_drop_if_empty_locked(ss, old);
	}
	if (segs_write_locked(ss, s, id, SEG_MESSAGE, iov, n, &hl, &len) == -1) {
		e = errno;
		if (s->broken)
			ss->cur = NULL;
		pthread_mutex_unlock(&ss->mu);
		return e == ENOSPC || e == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
	}
	loc->seg = s->no;
	loc->off = s->size - len - SEG_END_LEN;
	loc->len = len;
	s->dirty = 1;
	s->live++;
	if (segs_fault_append)
		abort();
	memset(&w, 0, sizeof(w));
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
		return w.err == ENOSPC || w.err == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
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
	s = segs_find(ss, loc->seg);
	fd = s != NULL ? dup(s->fd) : -1;
	pthread_mutex_unlock(&ss->mu);
	if (fd == -1) {
		errno = s == NULL ? ENOENT : errno;
		return -1;
	}
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

	if (n < 0 || n > 8 || !qid_valid(id))
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
		return e == ENOSPC || e == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
	return Q_OK;
}

void
segs_mark(struct segs *ss, uint64_t no, const char *id, char kind)
{
	struct seg *s;
	uint64_t len;
	size_t hl;

	pthread_mutex_lock(&ss->mu);
	if ((s = segs_find(ss, no)) == NULL || s->live == 0) {
		pthread_mutex_unlock(&ss->mu);
		return;
	}
	/* not synced: lost to an OS crash, the message is read back once
	 * more (see the top); a failed write says so and counts it out */
	if (!s->broken)
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
	    k != SEG_MOVED && k != SEG_CANCEL) || l > Q_MAX_ENV + Q_MAX_BODY + 4096)
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
 * torn tail). */
static void
segs_keep_copy(struct segs *ss, struct seg *s)
{
	char path[PATH_MAX], buf[65536];
	ssize_t r;
	off_t o = 0;
	int fd;

	snprintf(path, sizeof(path), "%s/../corrupt/segment-%016" PRIx64 "-%ld", ss->dir,
	    s->no, (long)time(NULL));
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1) {
		segs_log(ss, LOG_ERR, "queue: %s: %s", path, strerror(errno));
		return;
	}
	while ((r = pread(s->fd, buf, sizeof(buf), o)) > 0) {
		if (write(fd, buf, (size_t)r) != r)
			break;
		o += r;
	}
	if (fsync(fd) == -1)
		segs_log(ss, LOG_ERR, "queue: fsync %s: %s", path, strerror(errno));
	close(fd);
}

/*
 * Every record of one segment in order, to fn (see the top: damaged
 * messages, torn tails, garbage).  Returns the bytes of whole records,
 * or -1 (read error).
 */
static int64_t
segs_scan_one(struct segs *ss, struct seg *s, int (*fn)(void *, uint64_t, const char *,
    char, const struct seg_loc *), void *arg)
{
	struct stat st;
	uint64_t off = 0, len, size;
	uint32_t crc;
	size_t hl, want;
	char id[QUEUE_ID_LEN + 1], kind, hdr[SEG_HDR_MAX], *buf = NULL;
	struct seg_loc loc;
	ssize_t r;
	int lost = 0;

	if (fstat(s->fd, &st) == -1)
		return -1;
	size = (uint64_t)st.st_size;
	while (off < size) {
		want = size - off < SEG_HDR_MAX ? (size_t)(size - off) : SEG_HDR_MAX;
		if ((r = pread(s->fd, hdr, want, (off_t)off)) != (ssize_t)want) {
			free(buf);
			return -1;
		}
		if (segs_parse_hdr(hdr, want, id, &kind, &len, &crc, &hl) == -1) {
			/* no whole line before the end: torn; else garbage */
			if (memchr(hdr, '\n', want) != NULL)
				lost = 1;
			break;
		}
		if (off + hl + len + SEG_END_LEN > size)
			break;		/* its header says more than is there: torn */
		free(buf);
		if ((buf = malloc(len + SEG_END_LEN + 1)) == NULL)
			return -1;
		if (pread(s->fd, buf, len + SEG_END_LEN, (off_t)(off + hl)) !=
		    (ssize_t)(len + SEG_END_LEN)) {
			free(buf);
			return -1;
		}
		loc.seg = s->no;
		loc.off = off + hl;
		loc.len = len;
		if (memcmp(buf + len, SEG_END, SEG_END_LEN) != 0 ||
		    spool_crc32(0, buf, len) != crc) {
			/* the last record: torn (never acknowledged); else the
			 * header (its own CRC) is good and says where the next
			 * one starts: a damaged message, named to the caller */
			if (off + hl + len + SEG_END_LEN == size)
				break;
			if (kind == SEG_MESSAGE) {
				s->live++;
				if (fn != NULL)
					(void)fn(arg, s->no, id, SEG_DAMAGED, &loc);
			}
			segs_log(ss, LOG_ERR, "queue: segment %016" PRIx64 ": record of %s "
			    "at %" PRIu64 " damaged", s->no, id, off);
			off += hl + len + SEG_END_LEN;
			continue;
		}
		if (kind == SEG_MESSAGE)
			s->live++;
		else if (kind != SEG_STATE && s->live > 0)
			s->live--;
		if (fn != NULL && fn(arg, s->no, id, kind, &loc) == -1)
			break;
		off += hl + len + SEG_END_LEN;
	}
	free(buf);
	if (lost)
		segs_keep_copy(ss, s);
	if (off < size) {
		segs_log(ss, lost ? LOG_ERR : LOG_WARNING, "queue: segment %016" PRIx64 ": %"
		    PRIu64 " bytes after the last whole record cut off%s", s->no, size - off,
		    lost ? " (not a torn tail: a copy of the segment is in corrupt/)" : "");
		if (ftruncate(s->fd, (off_t)off) == -1 || fdatasync(s->fd) == -1)
			return -1;
	}
	s->size = off;
	return (int64_t)off;
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
	char path[PATH_MAX], *end;
	struct dirent *de;
	struct seg *s;
	uint64_t *nos = NULL, *nn;
	size_t n = 0, cap = 0, i;
	DIR *dp;
	int rc = 0;

	if ((dp = opendir(ss->dir)) == NULL)
		return -1;
	while ((de = readdir(dp)) != NULL) {
		unsigned long long v;

		if (strlen(de->d_name) != 16)
			continue;
		errno = 0;
		v = strtoull(de->d_name, &end, 16);
		if (*end != '\0' || errno != 0 || v == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			if ((nn = realloc(nos, cap * sizeof(*nos))) == NULL) {
				rc = -1;
				break;
			}
			nos = nn;
		}
		nos[n++] = v;
	}
	closedir(dp);
	if (n > 0)
		qsort(nos, n, sizeof(*nos), segs_cmp);
	/* before any other use: no lock held while fn runs (it may read) */
	for (i = 0; rc == 0 && i < n; i++) {
		snprintf(path, sizeof(path), "%s/%016" PRIx64, ss->dir, nos[i]);
		if ((s = calloc(1, sizeof(*s))) == NULL) {
			rc = -1;
			break;
		}
		if ((s->fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC)) == -1) {
			free(s);
			rc = -1;
			break;
		}
		s->no = nos[i];
		s->next = ss->list;
		ss->list = s;
		if (nos[i] >= ss->next_no)
			ss->next_no = nos[i] + 1;
		if (segs_scan_one(ss, s, fn, arg) == -1)
			rc = -1;
	}
	pthread_mutex_lock(&ss->mu);
	if (rc == 0)
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
