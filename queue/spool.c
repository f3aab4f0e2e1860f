/*
 * spool.c - the queue on disk.  <spool>/msg/XX/<id> holds one message: a
 * header line with lengths and CRC-32s, the envelope text, the body, and
 * an end marker, written once; every later version of the envelope (hold,
 * a delivery attempt, done) is a state record appended to the same file.
 * One inode per message, no rename per state change.  XX comes from the
 * time in the id (bits 20-27 of its microsecond clock: a directory per
 * second, 256 in turn), so no directory grows huge, and the messages
 * queued in the same second share one: their links are made durable by
 * shared fsyncs of it (spool_fsync_dir).  A file found under the XX of an
 * older layout (an FNV hash of the id) is moved at loading.  Whatever is read back is untrusted:
 * strict parse, bounded lengths, and a bad message goes to corrupt/ with a
 * log line.
 *
 *   message:      "OTPQ1 <envlen> <bodylen> <envcrc32> <bodycrc32>\n"
 *                 <envelope text> <body> "END\n"
 *   state record: "OTPS1 <envlen> <envcrc32>\n" <envelope text> "END\n"
 *   envelope:     fixed-order lines "v 1", "id", "class", "sender", "created",
 *                 "expires", "next", "attempts", "held", "flags", "size", "uid",
 *                 "finished", "tag", "error", "rcpts N", N x "r state attempts
 *                 last addr reply [class]", "."; strings are "-" (none) or "=" + bytes
 *                 with %XX for anything but printable ASCII.
 *
 * A new message gets its name only once it is whole and fsynced (an unnamed
 * O_TMPFILE in its directory, then linkat, then an fsync of the directory),
 * so a crash leaves the whole message or nothing.  A state record is
 * appended and, unless the message is finished, fdatasynced; the last whole
 * record wins.  A record cut short (a crash or a failed write) is the tail
 * of the file: loading cuts it off and uses the record before it (or the
 * envelope of the message part), which at worst repeats a delivery.  A file
 * cut inside the message part is refused.  When the records of a message
 * pass SPOOL_COMPACT bytes, the file is rewritten with the newest envelope
 * (tmp/, fsync, rename).  Recovery reads header, envelope and records; the
 * body CRC is checked when the body is read for delivery.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <syslog.h>
#include <unistd.h>
#include <linux/futex.h>

#include "queue/queue_int.h"
#include "queue/segment.h"

#define SPOOL_MSG_MAGIC		"OTPQ1"
#define SPOOL_ST_MAGIC		"OTPS1"
#define SPOOL_END		"END\n"
#define SPOOL_END_LEN		4
#define SPOOL_HDR_MAX		96
#define SPOOL_FIRST_READ	8192
#define SPOOL_COMPACT		(64 * 1024)	/* bytes of records before a rewrite */
#define SPOOL_TAIL_MAX		((size_t)64 << 20)	/* bytes of records read back */
#define SPOOL_NLOCKS		64

/*
 * The fsyncs of one msg/XX, shared: a thread that has linked a name into
 * it takes a ticket; if no fsync of it runs, it starts one for every
 * ticket taken so far (each of those links was made before it began),
 * else it waits.  The thread whose fsync ends hands its result to each
 * waiter it covered and wakes them one by one, and names one of those it
 * did not cover to run the next: a broadcast had every waiter, covered or
 * not, wake and fight for the mutex (15 woken per fsync at 1,000 msg/s).
 * A waiter sleeps on its own word, st.
 */
enum { SPOOL_DW_WAIT, SPOOL_DW_DONE, SPOOL_DW_LEAD };

struct spool_dwait {
	uint64_t		 t;
	int			 rc, err;
	_Atomic uint32_t	 st;		/* SPOOL_DW_* */
	struct spool_dwait	*next;
};

struct spool_dsync {
	pthread_mutex_t		 mu;
	uint64_t		 ticket;	/* the last one taken */
	uint64_t		 synced;	/* the last one answered */
	int			 busy;		/* an fsync runs or is handed on */
	struct spool_dwait	*w;		/* waiting */
};

struct spool_sb {		/* growable text of the envelope */
	char	*p;
	size_t	 len, cap;
	int	 oom;
};

static void	spool_crc_init(void);
static unsigned	spool_dir_of(const char *id);
static void	spool_sb_add(struct spool_sb *, const char *, size_t);
static void	spool_sb_printf(struct spool_sb *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static void	spool_sb_str(struct spool_sb *, const char *);
static int	spool_parse_u64(const char *, size_t, uint64_t max, uint64_t *);
static int	spool_parse_str(const char *, size_t, size_t max, char **);
static int	spool_next_line(const char **, const char *, const char **, size_t *);
static int	spool_kv(const char **, const char *, const char *key, const char **, size_t *);
static int	spool_kv_u64(const char **, const char *, const char *, uint64_t, uint64_t *);
static int	spool_kv_str(const char **, const char *, const char *, size_t, char **);
static int	spool_parse_header(const char *, size_t, const char *magic, int nnum,
		    uint64_t *nums, size_t *hdrlen);
static int	spool_read_file(int fd, off_t off, char *, size_t);
static enum q_status spool_write_file(struct spool *, const char *, const struct iovec *,
		    int, int, int (*)(void *), void *);
static enum q_status spool_compact(struct spool *, const char *id, int fd,
		    const char *etext, size_t elen);
static int	spool_env_check(const char *, size_t, uint32_t crc, const char *id,
		    const struct q_envelope *base, struct q_envelope *, char *, size_t);
static int	spool_mkdir(const char *);
static void	spool_fault(const char *step);
static struct spool_smap *smap_new(void);
static void	smap_free(struct spool_smap *);
static void	spool_cut(struct spool *, int, off_t, const char *);
static pthread_mutex_t *spool_lock_of(const char *id);

static uint32_t		 spool_crc_tab[256];
static pthread_once_t	 spool_crc_once = PTHREAD_ONCE_INIT;
static atomic_ulong	 spool_tmp_seq;
_Thread_local const char *queue_nospace_why = "the spool is out of space";
static const char	*spool_fault_step;	/* $OTPMAIL_FAULT, tests only */
int	(*spool_dsync_test_hook)(struct spool *, int dir, uint64_t from, uint64_t upto);
/* State records of one message are appended under one of these (by id). */
static pthread_mutex_t	 spool_locks[SPOOL_NLOCKS] = {
	[0 ... SPOOL_NLOCKS - 1] = PTHREAD_MUTEX_INITIALIZER
};

/* --- checksums and paths -------------------------------------------- */

static void
spool_crc_init(void)
{
	uint32_t c;
	int i, k;

	for (i = 0; i < 256; i++) {
		c = (uint32_t)i;
		for (k = 0; k < 8; k++)
			c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
		spool_crc_tab[i] = c;
	}
}

uint32_t
spool_crc32(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	pthread_once(&spool_crc_once, spool_crc_init);
	crc = ~crc;
	while (len--)
		crc = spool_crc_tab[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* The directory of id: from the clock in a queue id, else a hash. */
static unsigned
spool_dir_of(const char *id)
{
	uint64_t t = 0;
	uint32_t h = 2166136261u;
	int i, v;

	for (i = 0; i < 16; i++) {
		if (id[i] >= '0' && id[i] <= '9')
			v = id[i] - '0';
		else if (id[i] >= 'a' && id[i] <= 'f')
			v = id[i] - 'a' + 10;
		else
			break;
		t = t << 4 | (uint64_t)v;
	}
	if (i == 16)
		return (unsigned)(t >> 20) & (Q_NDIRS - 1);
	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return (h ^ (h >> 16)) & (Q_NDIRS - 1);
}

void
spool_path(const char *id, char *out, size_t len)
{
	snprintf(out, len, "msg/%02x/%s", spool_dir_of(id), id);
}

void
spool_log(const struct spool *sp, int prio, const char *fmt, ...)
{
	char line[1024];
	va_list ap;

	if (sp->log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	sp->log(prio, line);
}

/* --- set-up ---------------------------------------------------------- */

/*
 * Makes the directory path unless it exists; one it makes is durable in
 * its parent (fsync of the parent) before a file in it is acknowledged.
 */
static int
spool_mkdir(const char *path)
{
	char parent[PATH_MAX], *slash;

	if (mkdir(path, 0700) == -1)
		return errno == EEXIST ? 0 : -1;
	snprintf(parent, sizeof(parent), "%s", path);
	if ((slash = strrchr(parent, '/')) == NULL)
		snprintf(parent, sizeof(parent), ".");
	else if (slash == parent)
		slash[1] = '\0';
	else
		*slash = '\0';
	return segs_fsync_path(parent);
}

int
spool_init(struct spool *sp, const char *dir, int segments, uint64_t min_bytes,
    uint64_t min_inodes, void (*log)(int, const char *), char *err, size_t errlen)
{
	char path[PATH_MAX];
	int i;

	memset(sp, 0, sizeof(*sp));
	sp->dirfd = -1;
	if (dir == NULL || *dir == '\0' || strlen(dir) > PATH_MAX - 64) {
		snprintf(err, errlen, "queue: bad spool directory");
		return -1;
	}
	if ((sp->dir = strdup(dir)) == NULL) {
		snprintf(err, errlen, "queue: out of memory");
		return -1;
	}
	spool_fault_step = getenv("OTPMAIL_FAULT");
	sp->min_free_bytes = min_bytes;
	sp->min_free_inodes = min_inodes;
	sp->log = log;
	if (spool_mkdir(dir) == -1)
		goto fail;
	snprintf(path, sizeof(path), "%s/tmp", dir);
	if (spool_mkdir(path) == -1)
		goto fail;
	snprintf(path, sizeof(path), "%s/corrupt", dir);
	if (spool_mkdir(path) == -1)
		goto fail;
	snprintf(path, sizeof(path), "%s/msg", dir);
	if (spool_mkdir(path) == -1)
		goto fail;
	for (i = 0; i < Q_NDIRS; i++) {
		snprintf(path, sizeof(path), "%s/msg/%02x", dir, i);
		if (spool_mkdir(path) == -1)
			goto fail;
	}
	/* linkat of an O_TMPFILE goes through /proc/self/fd (no capability
	 * needed); without /proc, new files go through tmp/ and rename. */
	sp->tmpfile_ok = access("/proc/self/fd", X_OK) == 0 &&
	    getenv("OTPMAIL_SPOOL_NO_TMPFILE") == NULL;
	/* loading opens msg/XX/<id> relative to it: three path components
	 * to look up per file, not the whole state directory's path */
	sp->dirfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	/* without it (no memory), each dir fsync is its own */
	if ((sp->dsync = calloc(Q_NDIRS, sizeof(*sp->dsync))) != NULL)
		for (i = 0; i < Q_NDIRS; i++) {
			pthread_mutex_init(&sp->dsync[i].mu, NULL);
		}
	/* new messages in segment files (see "segments" below) when
	 * queue_segments is on; OTPMAIL_SPOOL_SEGMENTS=1 turns them on for a
	 * whole test suite.  With it off, segments a run with it on left are
	 * still read (and emptied as their messages go): turning it off
	 * across a restart loses nothing. */
	sp->seg_new = segments || (getenv("OTPMAIL_SPOOL_SEGMENTS") != NULL &&
	    strcmp(getenv("OTPMAIL_SPOOL_SEGMENTS"), "1") == 0);
	snprintf(path, sizeof(path), "%s/seg", dir);
	if (sp->seg_new || access(path, F_OK) == 0) {
		if ((sp->smap = smap_new()) == NULL)
			snprintf(err, errlen, "queue: out of memory");
		else if ((sp->segs = segs_open(path, 0, log, err, errlen)) == NULL) {
			smap_free(sp->smap);
			sp->smap = NULL;
		}
		if (sp->segs == NULL) {
			spool_free(sp);
			return -1;
		}
	}
	return 0;
fail:
	snprintf(err, errlen, "queue: mkdir %s: %s", path, strerror(errno));
	free(sp->dir);
	sp->dir = NULL;
	return -1;
}

void
spool_free(struct spool *sp)
{
	int i;

	if (sp->dsync != NULL)
		for (i = 0; i < Q_NDIRS; i++) {
			pthread_mutex_destroy(&sp->dsync[i].mu);
		}
	free(sp->dsync);
	sp->dsync = NULL;
	segs_close(sp->segs);
	sp->segs = NULL;
	smap_free(sp->smap);
	sp->smap = NULL;
	free(sp->dir);
	sp->dir = NULL;
	if (sp->dirfd != -1)
		close(sp->dirfd);
	sp->dirfd = -1;
}

size_t
spool_clean_tmp(struct spool *sp)
{
	char path[PATH_MAX];
	struct dirent *de;
	size_t n = 0;
	DIR *dp;
	int dfd;

	snprintf(path, sizeof(path), "%s/tmp", sp->dir);
	if ((dp = opendir(path)) == NULL)
		return 0;
	dfd = dirfd(dp);
	while ((de = readdir(dp)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (unlinkat(dfd, de->d_name, 0) == 0)
			n++;
	}
	closedir(dp);
	if (n > 0)
		spool_log(sp, LOG_INFO, "queue: removed %zu temporary file(s)", n);
	return n;
}

/* Headroom above the floors for which a good result is kept a second:
 * more than a second of enqueues at any rate the spool can take. */
#define SPOOL_SPACE_SLACK_BYTES		(256ull << 20)
#define SPOOL_SPACE_SLACK_INODES	65536ull

enum q_status
spool_check_space(struct spool *sp)
{
	struct statvfs vfs;
	struct timespec ts;
	int64_t now;

	if (sp->min_free_bytes == 0 && sp->min_free_inodes == 0)
		return Q_OK;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	if (now < atomic_load_explicit(&sp->space_ok_until, memory_order_relaxed))
		return Q_OK;
	if (statvfs(sp->dir, &vfs) == -1) {
		spool_log(sp, LOG_ERR, "queue: statvfs %s: %s", sp->dir, strerror(errno));
		return Q_TEMPFAIL;
	}
	if ((uint64_t)vfs.f_bavail * vfs.f_frsize < sp->min_free_bytes) {
		queue_nospace_why = "the spool is below its free-space floor "
		    "(queue_min_free_space)";
		return Q_NOSPACE;
	}
	if (vfs.f_files > 0 && (uint64_t)vfs.f_favail < sp->min_free_inodes) {
		queue_nospace_why = "the spool is below its free-inode floor "
		    "(queue_min_free_inodes)";
		return Q_NOSPACE;
	}
	if ((uint64_t)vfs.f_bavail * vfs.f_frsize >= sp->min_free_bytes +
	    SPOOL_SPACE_SLACK_BYTES && (vfs.f_files == 0 ||
	    (uint64_t)vfs.f_favail >= sp->min_free_inodes + SPOOL_SPACE_SLACK_INODES))
		atomic_store_explicit(&sp->space_ok_until, now + 1000, memory_order_relaxed);
	return Q_OK;
}

/* --- writing files ---------------------------------------------------- */

/*
 * Crash injection for tests/integration/test_crash_points.py: with
 * OTPMAIL_FAULT=<step> in the environment (read once, in spool_init) the
 * process aborts at that step.  A new file: after_tmp_write, after_fsync,
 * after_rename (its name is in place), after_dir_fsync; a state record:
 * state_after_write, state_after_fsync (durable records only).  Unset: a
 * NULL test.
 */
static void
spool_fault(const char *step)
{
	if (spool_fault_step != NULL && strcmp(spool_fault_step, step) == 0)
		abort();
}

/* The index of msg/XX in rel ("msg/XX/<name>"), or -1. */
static int
spool_msg_dir(const char *rel)
{
	unsigned d;
	char c;

	if (strncmp(rel, "msg/", 4) != 0 || sscanf(rel + 4, "%2x%c", &d, &c) != 2 ||
	    c != '/' || d >= Q_NDIRS)
		return -1;
	return (int)d;
}

static void
spool_dw_set(struct spool_dwait *w, uint32_t st)
{
	atomic_store(&w->st, st);
	/* w may be gone once st is set (its thread returned): a wake-up on
	 * its address is then spurious for whoever sleeps there, which every
	 * futex user allows for */
	(void)syscall(SYS_futex, &w->st, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

/*
 * fsync of the directory that holds rel (relative to the spool), once
 * what the caller did in it is done: shared with the other threads that
 * wait for the same msg/XX (struct spool_dsync).  0, or -1 with errno.
 */
int
spool_fsync_dir(struct spool *sp, const char *rel)
{
	struct spool_dsync *g;
	struct spool_dwait w, *done, *lead, *it, *nx, **pp;
	char path[PATH_MAX];
	char *slash;
	uint64_t from, upto;
	uint32_t st;
	int d, rc, e;

	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((slash = strrchr(path, '/')) != NULL)
		*slash = '\0';
	if (sp->dsync == NULL || (d = spool_msg_dir(rel)) == -1)
		return segs_fsync_path(path);
	g = &sp->dsync[d];
	pthread_mutex_lock(&g->mu);
	w.t = ++g->ticket;
	if (g->busy) {
		w.rc = -1;
		w.err = EIO;
		atomic_store(&w.st, SPOOL_DW_WAIT);
		w.next = g->w;
		g->w = &w;
		pthread_mutex_unlock(&g->mu);
		while ((st = atomic_load(&w.st)) == SPOOL_DW_WAIT)
			(void)syscall(SYS_futex, &w.st, FUTEX_WAIT_PRIVATE,
			    SPOOL_DW_WAIT, NULL, NULL, 0);
		if (st == SPOOL_DW_DONE) {
			if (w.rc == -1)
				errno = w.err;
			return w.rc;
		}
		pthread_mutex_lock(&g->mu);	/* named to run the next one */
	}
	g->busy = 1;
	from = g->synced + 1;
	upto = g->ticket;
	pthread_mutex_unlock(&g->mu);
	if (spool_dsync_test_hook != NULL &&
	    spool_dsync_test_hook(sp, d, from, upto) == -1)
		rc = -1;
	else
		rc = segs_fsync_path(path);
	e = errno;
	pthread_mutex_lock(&g->mu);
	g->synced = upto;
	done = lead = NULL;
	for (pp = &g->w; (it = *pp) != NULL; )
		if (it->t <= upto) {		/* covered: out of the list */
			*pp = it->next;
			it->next = done;
			done = it;
		} else
			pp = &it->next;
	for (it = g->w; it != NULL; it = it->next)	/* the oldest left runs next */
		if (lead == NULL || it->t < lead->t)
			lead = it;
	for (pp = &g->w; lead != NULL && *pp != lead; pp = &(*pp)->next)
		;
	if (lead != NULL)
		*pp = lead->next;
	g->busy = lead != NULL;		/* handed on, still busy */
	pthread_mutex_unlock(&g->mu);
	for (it = done; it != NULL; it = nx) {
		nx = it->next;
		it->rc = rc;
		it->err = e;
		spool_dw_set(it, SPOOL_DW_DONE);
	}
	if (lead != NULL)
		spool_dw_set(lead, SPOOL_DW_LEAD);
	if (rc == -1)
		errno = e;
	return rc;
}

/* The last ticket taken in msg/XX (tests). */
uint64_t
spool_dsync_tickets(struct spool *sp, int dir)
{
	struct spool_dsync *g;
	uint64_t t;

	if (sp->dsync == NULL || dir < 0 || dir >= Q_NDIRS)
		return 0;
	g = &sp->dsync[dir];
	pthread_mutex_lock(&g->mu);
	t = g->ticket;
	pthread_mutex_unlock(&g->mu);
	return t;
}

static enum q_status
spool_errno_status(int e)
{
	queue_nospace_why = "the spool's file system is full";
	return e == ENOSPC || e == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
}

/* Writes all of iov at off (pwritev, short writes resumed). */
static int
spool_pwritev_all(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	struct iovec cur[8];
	ssize_t w;
	int i = 0;

	if (iovcnt < 1 || iovcnt > 8) {
		errno = EINVAL;
		return -1;
	}
	memcpy(cur, iov, (size_t)iovcnt * sizeof(*iov));
	while (i < iovcnt) {
		if ((w = pwritev(fd, cur + i, iovcnt - i, off)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		off += w;
		while (i < iovcnt && (size_t)w >= cur[i].iov_len) {
			w -= (ssize_t)cur[i].iov_len;
			i++;
		}
		if (i < iovcnt) {
			cur[i].iov_base = (char *)cur[i].iov_base + w;
			cur[i].iov_len -= (size_t)w;
		}
	}
	return 0;
}

enum q_status
spool_write_atomic(struct spool *sp, const char *rel, const struct iovec *iov, int iovcnt)
{
	return spool_write_file(sp, rel, iov, iovcnt, 1, NULL, NULL);
}

/*
 * Writes the file rel whole and durably, or not at all.  A new name
 * (replace = 0): an unnamed O_TMPFILE in rel's directory, write, fsync,
 * linkat to its name, fsync of the directory: one inode, no rename, and
 * never a visible partial file.  Replacing a file (or without O_TMPFILE):
 * tmp/<unique>, write, fsync, rename onto rel, fsync of the directory.
 * barrier(arg), if given, runs between the data fsync and the naming; -1
 * from it abandons the file.
 */
static enum q_status
spool_write_file(struct spool *sp, const char *rel, const struct iovec *iov, int iovcnt,
    int replace, int (*barrier)(void *), void *arg)
{
	char tmp[PATH_MAX], dst[PATH_MAX], proc[64];
	char *slash;
	int fd = -1, saved, anon = 0;
	const char *what = "open";

	snprintf(dst, sizeof(dst), "%s/%s", sp->dir, rel);
	tmp[0] = '\0';
	if (!replace && sp->tmpfile_ok) {
		snprintf(tmp, sizeof(tmp), "%s", dst);
		if ((slash = strrchr(tmp, '/')) != NULL)
			*slash = '\0';
		fd = open(tmp, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
		tmp[0] = '\0';
		if (fd != -1)
			anon = 1;
		else if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)
			sp->tmpfile_ok = 0;	/* not on this file system */
		else
			goto fail;
	}
	if (!anon) {
		snprintf(tmp, sizeof(tmp), "%s/tmp/%ld.%lu", sp->dir, (long)getpid(),
		    atomic_fetch_add(&spool_tmp_seq, 1));
		if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1)
			goto fail;
	}
	what = "write";
	if (spool_pwritev_all(fd, iov, iovcnt, 0) == -1)
		goto fail;
	spool_fault("after_tmp_write");
	what = "fsync";
	if (fsync(fd) == -1)
		goto fail;
	spool_fault("after_fsync");
	if (barrier != NULL && barrier(arg) == -1) {
		errno = EIO;
		what = "barrier";
		goto fail;
	}
	if (anon) {
		what = "link";
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, dst, AT_SYMLINK_FOLLOW) == -1)
			goto fail;
	}
	what = "close";
	saved = close(fd);
	fd = -1;
	if (saved == -1)
		goto fail;
	if (!anon) {
		what = "rename";
		if (rename(tmp, dst) == -1)
			goto fail;
	}
	spool_fault("after_rename");
	what = "fsync dir";
	if (spool_fsync_dir(sp, rel) == -1) {
		/*
		 * The file is in place, maybe not durable: report tempfail.
		 * A new file goes again, or a restart would deliver a message
		 * whose sender was told it was refused (and retries it).
		 * Every thread of the failed fsync round gets its error and
		 * removes its own file; the removal is synced if the disk
		 * is back (else by the next fsync of the directory).
		 */
		saved = errno;
		spool_log(sp, LOG_ERR, "queue: fsync dir of %s: %s", rel, strerror(saved));
		if (!replace && unlink(dst) == -1)
			spool_log(sp, LOG_ERR, "queue: unlink %s: %s", rel, strerror(errno));
		else if (!replace)
			(void)spool_fsync_dir(sp, rel);
		return spool_errno_status(saved);
	}
	spool_fault("after_dir_fsync");
	return Q_OK;
fail:
	saved = errno;
	if (fd != -1)
		close(fd);
	if (tmp[0] != '\0')
		unlink(tmp);
	spool_log(sp, LOG_ERR, "queue: %s %s: %s", what, rel, strerror(saved));
	return spool_errno_status(saved);
}

/* --- envelope text ---------------------------------------------------- */

static void
spool_sb_add(struct spool_sb *sb, const char *s, size_t n)
{
	char *np;
	size_t ncap;

	if (sb->oom)
		return;
	if (sb->len + n + 1 > sb->cap) {
		ncap = sb->cap ? sb->cap : 512;
		while (ncap < sb->len + n + 1)
			ncap *= 2;
		if ((np = realloc(sb->p, ncap)) == NULL) {
			sb->oom = 1;
			return;
		}
		sb->p = np;
		sb->cap = ncap;
	}
	memcpy(sb->p + sb->len, s, n);
	sb->len += n;
	sb->p[sb->len] = '\0';
}

static void
spool_sb_printf(struct spool_sb *sb, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		sb->oom = 1;
		return;
	}
	spool_sb_add(sb, tmp, (size_t)n);
}

/* NULL is "-"; a string is "=" then its bytes, %XX for anything but
 * printable ASCII other than '%'. */
static void
spool_sb_str(struct spool_sb *sb, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char e[3];

	if (s == NULL) {
		spool_sb_add(sb, "-", 1);
		return;
	}
	spool_sb_add(sb, "=", 1);
	for (p = (const unsigned char *)s; *p != '\0'; p++) {
		if (*p > 0x20 && *p < 0x7f && *p != '%') {
			spool_sb_add(sb, (const char *)p, 1);
			continue;
		}
		e[0] = '%';
		e[1] = hex[*p >> 4];
		e[2] = hex[*p & 15];
		spool_sb_add(sb, e, 3);
	}
}

char *
spool_env_format(const struct q_envelope *env, size_t *len)
{
	struct spool_sb sb = { 0 };
	size_t i;

	spool_sb_printf(&sb, "v 1\nid %s\nclass %d\nsender ", env->id, (int)env->klass);
	spool_sb_str(&sb, env->sender ? env->sender : "");
	spool_sb_printf(&sb, "\ncreated %lld\nexpires %lld\nnext %lld\n",
	    (long long)env->created, (long long)env->expires, (long long)env->next_attempt);
	spool_sb_printf(&sb, "attempts %d\nheld %d\nflags %d\nsize %zu\nuid %u\n",
	    env->attempts, env->held ? 1 : 0, env->flags, env->size,
	    (unsigned)env->client_uid);
	spool_sb_printf(&sb, "finished %lld\ntag ", (long long)env->finished);
	spool_sb_str(&sb, env->tag);
	spool_sb_add(&sb, "\nerror ", 7);
	spool_sb_str(&sb, env->last_error);
	spool_sb_printf(&sb, "\nrcpts %zu\n", env->nrcpt);
	for (i = 0; i < env->nrcpt; i++) {
		spool_sb_printf(&sb, "r %d %d %lld ", (int)env->rcpts[i].state,
		    env->rcpts[i].attempts, (long long)env->rcpts[i].last_attempt);
		spool_sb_str(&sb, env->rcpts[i].addr);
		spool_sb_add(&sb, " ", 1);
		spool_sb_str(&sb, env->rcpts[i].reply);
		/* the class is a later field: envelopes without it still load */
		if (env->rcpts[i].err_class != NULL) {
			spool_sb_add(&sb, " ", 1);
			spool_sb_str(&sb, env->rcpts[i].err_class);
		}
		spool_sb_add(&sb, "\n", 1);
	}
	spool_sb_add(&sb, ".\n", 2);
	if (sb.oom) {
		free(sb.p);
		return NULL;
	}
	*len = sb.len;
	return sb.p;
}

static int
spool_parse_u64(const char *s, size_t n, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || n > 20)
		return -1;
	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (v > max)
		return -1;
	*out = v;
	return 0;
}

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes "-" (NULL) or "=..." into a malloc'd string of at most max bytes. */
static int
spool_parse_str(const char *s, size_t n, size_t max, char **out)
{
	char *r;
	size_t i, o = 0;
	int hi, lo;

	*out = NULL;
	if (n == 1 && s[0] == '-')
		return 0;
	if (n == 0 || s[0] != '=' || n - 1 > max * 3)
		return -1;
	if ((r = malloc(n)) == NULL)
		return -1;
	for (i = 1; i < n; i++) {
		if (s[i] == '%') {
			if (i + 2 >= n)
				goto bad;
			if ((hi = hexval(s[i + 1])) < 0 || (lo = hexval(s[i + 2])) < 0)
				goto bad;
			if (hi == 0 && lo == 0)
				goto bad;	/* no NUL inside strings */
			r[o++] = (char)(hi * 16 + lo);
			i += 2;
		} else if ((unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f)
			r[o++] = s[i];
		else
			goto bad;
	}
	if (o > max)
		goto bad;
	r[o] = '\0';
	*out = r;
	return 0;
bad:
	free(r);
	return -1;
}

static int
spool_next_line(const char **pp, const char *end, const char **line, size_t *len)
{
	const char *p = *pp, *nl;

	if (p >= end)
		return -1;
	if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
		return -1;
	*line = p;
	*len = (size_t)(nl - p);
	*pp = nl + 1;
	return 0;
}

/* Reads the next line, which must be "key value"; gives the value. */
static int
spool_kv(const char **pp, const char *end, const char *key, const char **val, size_t *vlen)
{
	const char *line;
	size_t len, kl = strlen(key);

	if (spool_next_line(pp, end, &line, &len) == -1)
		return -1;
	if (len < kl + 1 || memcmp(line, key, kl) != 0 || line[kl] != ' ')
		return -1;
	*val = line + kl + 1;
	*vlen = len - kl - 1;
	return 0;
}

static int
spool_kv_u64(const char **pp, const char *end, const char *key, uint64_t max, uint64_t *out)
{
	const char *v;
	size_t n;

	if (spool_kv(pp, end, key, &v, &n) == -1)
		return -1;
	return spool_parse_u64(v, n, max, out);
}

static int
spool_kv_str(const char **pp, const char *end, const char *key, size_t max, char **out)
{
	const char *v;
	size_t n;

	if (spool_kv(pp, end, key, &v, &n) == -1)
		return -1;
	return spool_parse_str(v, n, max, out);
}

/* Splits a line into at most nf space-separated fields. */
static size_t
spool_fields(const char *s, size_t n, const char **f, size_t *fl, size_t nf)
{
	size_t k = 0, i = 0, st;

	while (i <= n && k < nf) {
		st = i;
		while (i < n && s[i] != ' ')
			i++;
		f[k] = s + st;
		fl[k] = i - st;
		k++;
		if (i == n)
			return k;
		i++;
	}
	return i <= n ? k + 1 : k;	/* k + 1 flags "too many" */
}

int
spool_env_parse(const char *text, size_t len, struct q_envelope *env,
    char *why, size_t whylen)
{
	const char *p = text, *end = text + len, *v, *f[7];
	size_t vl, fl[7], i, nf;
	uint64_t u;
	const char *what = "version";
	char *s;

	memset(env, 0, sizeof(*env));
	if (len > Q_MAX_ENV)
		goto bad;
	if (spool_kv(&p, end, "v", &v, &vl) == -1 || vl != 1 || v[0] != '1')
		goto bad;
	what = "id";
	if (spool_kv(&p, end, "id", &v, &vl) == -1 || vl != QUEUE_ID_LEN)
		goto bad;
	memcpy(env->id, v, QUEUE_ID_LEN);
	env->id[QUEUE_ID_LEN] = '\0';
	if (!qid_valid(env->id))
		goto bad;
	what = "class";
	if (spool_kv_u64(&p, end, "class", Q_CLASS_COUNT - 1, &u) == -1)
		goto bad;
	env->klass = (enum q_class)u;
	what = "sender";
	if (spool_kv_str(&p, end, "sender", Q_MAX_ADDR, &env->sender) == -1 ||
	    env->sender == NULL)
		goto bad;
	what = "created";
	if (spool_kv_u64(&p, end, "created", INT64_MAX, &u) == -1)
		goto bad;
	env->created = (time_t)u;
	what = "expires";
	if (spool_kv_u64(&p, end, "expires", INT64_MAX, &u) == -1)
		goto bad;
	env->expires = (time_t)u;
	what = "next";
	if (spool_kv_u64(&p, end, "next", INT64_MAX, &u) == -1)
		goto bad;
	env->next_attempt = (time_t)u;
	what = "attempts";
	if (spool_kv_u64(&p, end, "attempts", INT_MAX, &u) == -1)
		goto bad;
	env->attempts = (int)u;
	what = "held";
	if (spool_kv_u64(&p, end, "held", 1, &u) == -1)
		goto bad;
	env->held = (int)u;
	what = "flags";
	if (spool_kv_u64(&p, end, "flags", 0xff, &u) == -1)
		goto bad;
	env->flags = (int)u;
	what = "size";
	if (spool_kv_u64(&p, end, "size", Q_MAX_BODY, &u) == -1)
		goto bad;
	env->size = (size_t)u;
	what = "uid";
	if (spool_kv_u64(&p, end, "uid", UINT32_MAX, &u) == -1)
		goto bad;
	env->client_uid = (uint32_t)u;
	what = "finished";
	if (spool_kv_u64(&p, end, "finished", INT64_MAX, &u) == -1)
		goto bad;
	env->finished = (time_t)u;
	what = "tag";
	if (spool_kv_str(&p, end, "tag", Q_MAX_TEXT, &env->tag) == -1)
		goto bad;
	what = "error";
	if (spool_kv_str(&p, end, "error", Q_MAX_TEXT, &env->last_error) == -1)
		goto bad;
	what = "rcpts";
	if (spool_kv_u64(&p, end, "rcpts", Q_MAX_RCPT, &u) == -1 || u == 0)
		goto bad;
	if ((env->rcpts = calloc((size_t)u, sizeof(*env->rcpts))) == NULL)
		goto bad;
	env->nrcpt = (size_t)u;
	what = "recipient";
	for (i = 0; i < env->nrcpt; i++) {
		struct q_rcpt *r = &env->rcpts[i];

		if (spool_kv(&p, end, "r", &v, &vl) == -1)
			goto bad;
		nf = spool_fields(v, vl, f, fl, 6);
		if (nf != 5 && nf != 6)
			goto bad;
		if (spool_parse_u64(f[0], fl[0], Q_RCPT_EXPIRED, &u) == -1)
			goto bad;
		r->state = (enum q_rcpt_state)u;
		if (spool_parse_u64(f[1], fl[1], INT_MAX, &u) == -1)
			goto bad;
		r->attempts = (int)u;
		if (spool_parse_u64(f[2], fl[2], INT64_MAX, &u) == -1)
			goto bad;
		r->last_attempt = (time_t)u;
		if (spool_parse_str(f[3], fl[3], Q_MAX_ADDR, &s) == -1 || s == NULL ||
		    *s == '\0') {
			free(s);
			goto bad;
		}
		r->addr = s;
		if (spool_parse_str(f[4], fl[4], Q_MAX_TEXT, &r->reply) == -1)
			goto bad;
		if (nf == 6 && spool_parse_str(f[5], fl[5], Q_CLASS_WORD_MAX,
		    &r->err_class) == -1)
			goto bad;
	}
	what = "end";
	if (spool_next_line(&p, end, &v, &vl) == -1 || vl != 1 || v[0] != '.' || p != end)
		goto bad;
	return 0;
bad:
	snprintf(why, whylen, "bad envelope (%s)", what);
	q_envelope_clear(env);
	return -1;
}

/* --- message file and state records ------------------------------------ */

/* --- segments (queue_segments = yes, or OTPMAIL_SPOOL_SEGMENTS=1) ------- */

/*
 * New messages go to segment files (segment.c) when segments are on: one
 * fdatasync per group of concurrent writers instead of a file, an inode
 * and two fsyncs each.  The map says where each such message is.  What
 * happens to one:
 *   - queued: an M record, durable;
 *   - finished: an S record (its envelope, not synced, as a finished
 *     record in a file), read back as its state; the body stays;
 *   - a durable state (deferred, held, ...): it moves to a file of its
 *     own (the message part, then the state record), then a V marker;
 *   - purged: an R marker;  refused (a failed sync): a C marker;
 *   - quarantined: a copy in corrupt/ (fsynced), then a C marker.
 * After a crash a file wins over a segment's copy.  A move, a purge and a
 * quarantine of one id run under the id's lock (spool_lock_of), so a
 * purge cannot slip between a move's copy and its V marker and leave a
 * file behind that a restart would deliver again.  Readers of a body take
 * no lock: a read that loses the race with a move finds the file, which
 * is in place before the entry leaves the map.
 */
struct smap_ent {
	char		 id[QUEUE_ID_LEN + 1];
	struct seg_loc	 msg;		/* the M record's payload */
	struct seg_loc	 st;		/* the last S record's, or len 0 */
	int		 damaged;	/* its record failed its CRC at the scan */
	struct smap_ent	*next;
};

struct spool_smap {
	pthread_mutex_t	 mu;
	struct smap_ent	**b;
	size_t		 nb, n;
};

static size_t
smap_hash(const struct spool_smap *m, const char *id)
{
	return spool_crc32(0, id, QUEUE_ID_LEN) % m->nb;
}

static struct spool_smap *
smap_new(void)
{
	struct spool_smap *m;

	if ((m = calloc(1, sizeof(*m))) == NULL)
		return NULL;
	m->nb = 1024;
	if ((m->b = calloc(m->nb, sizeof(*m->b))) == NULL) {
		free(m);
		return NULL;
	}
	pthread_mutex_init(&m->mu, NULL);
	return m;
}

static void
smap_free(struct spool_smap *m)
{
	struct smap_ent *e, *nx;
	size_t i;

	if (m == NULL)
		return;
	for (i = 0; i < m->nb; i++)
		for (e = m->b[i]; e != NULL; e = nx) {
			nx = e->next;
			free(e);
		}
	free(m->b);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* Holding mu: the entry of id, or NULL; *pp its link when pp is given. */
static struct smap_ent *
smap_find_locked(struct spool_smap *m, const char *id, struct smap_ent ***pp)
{
	struct smap_ent **l;

	for (l = &m->b[smap_hash(m, id)]; *l != NULL; l = &(*l)->next)
		if (memcmp((*l)->id, id, QUEUE_ID_LEN) == 0) {
			if (pp != NULL)
				*pp = l;
			return *l;
		}
	return NULL;
}

static int
smap_put(struct spool_smap *m, const char *id, const struct seg_loc *msg)
{
	struct smap_ent *e, **nb, *it, *nx;
	size_t i, n2, h;

	if ((e = calloc(1, sizeof(*e))) == NULL)
		return -1;
	memcpy(e->id, id, QUEUE_ID_LEN + 1);
	e->msg = *msg;
	pthread_mutex_lock(&m->mu);
	if (m->n >= m->nb * 2 && (nb = calloc(m->nb * 2, sizeof(*nb))) != NULL) {
		n2 = m->nb * 2;
		for (i = 0; i < m->nb; i++)
			for (it = m->b[i]; it != NULL; it = nx) {
				nx = it->next;
				h = spool_crc32(0, it->id, QUEUE_ID_LEN) % n2;
				it->next = nb[h];
				nb[h] = it;
			}
		free(m->b);
		m->b = nb;
		m->nb = n2;
	}
	h = smap_hash(m, id);
	e->next = m->b[h];
	m->b[h] = e;
	m->n++;
	pthread_mutex_unlock(&m->mu);
	return 0;
}

/* A copy of id's entry: 1, or 0 when it is not in a segment. */
static int
smap_get(struct spool_smap *m, const char *id, struct smap_ent *out)
{
	struct smap_ent *e;

	if (m == NULL || strlen(id) != QUEUE_ID_LEN)
		return 0;
	pthread_mutex_lock(&m->mu);
	if ((e = smap_find_locked(m, id, NULL)) != NULL)
		*out = *e;
	pthread_mutex_unlock(&m->mu);
	return e != NULL;
}

/* id's newest state record, if id's message is in the same segment. */
static void
smap_set_state(struct spool_smap *m, const char *id, const struct seg_loc *st)
{
	struct smap_ent *e;

	pthread_mutex_lock(&m->mu);
	if ((e = smap_find_locked(m, id, NULL)) != NULL && e->msg.seg == st->seg)
		e->st = *st;
	pthread_mutex_unlock(&m->mu);
}

static void
smap_set_damaged(struct spool_smap *m, const char *id)
{
	struct smap_ent *e;

	pthread_mutex_lock(&m->mu);
	if ((e = smap_find_locked(m, id, NULL)) != NULL)
		e->damaged = 1;
	pthread_mutex_unlock(&m->mu);
}

/* Takes id out: 1 (and its entry in *out), or 0. */
static int
smap_del(struct spool_smap *m, const char *id, struct smap_ent *out)
{
	struct smap_ent *e, **pp;

	if (m == NULL || strlen(id) != QUEUE_ID_LEN)
		return 0;
	pthread_mutex_lock(&m->mu);
	if ((e = smap_find_locked(m, id, &pp)) != NULL) {
		*pp = e->next;
		m->n--;
	}
	pthread_mutex_unlock(&m->mu);
	if (e == NULL)
		return 0;
	if (out != NULL)
		*out = *e;
	free(e);
	return 1;
}

/* The payload at loc, malloc'd (NUL after it), or NULL with why. */
static char *
spool_seg_payload(struct spool *sp, const struct seg_loc *loc, char *why, size_t whylen)
{
	char *buf;

	if (loc->len > Q_MAX_ENV + Q_MAX_BODY + SPOOL_HDR_MAX + SPOOL_END_LEN) {
		snprintf(why, whylen, "bad length");
		return NULL;
	}
	if ((buf = malloc(loc->len + 1)) == NULL) {
		snprintf(why, whylen, "out of memory");
		return NULL;
	}
	if (segs_read(sp->segs, loc, buf) == -1) {
		snprintf(why, whylen, "segment read: %s", strerror(errno));
		free(buf);
		return NULL;
	}
	buf[loc->len] = '\0';
	return buf;
}

/*
 * A message part in memory (an M record's payload): header, exact
 * lengths, end marker, envelope; the body's place when body is given
 * (its CRC checked).  0, or -1 with why.
 */
static int
spool_seg_parse(const char *buf, size_t len, const char *id, struct q_envelope *env,
    const char **body, size_t *blen, char *why, size_t whylen)
{
	uint64_t nums[4];
	size_t hl;

	if (spool_parse_header(buf, len, SPOOL_MSG_MAGIC, 2, nums, &hl) == -1) {
		snprintf(why, whylen, "bad header");
		return -1;
	}
	if (nums[0] > Q_MAX_ENV || nums[1] > Q_MAX_BODY ||
	    hl + nums[0] + nums[1] + SPOOL_END_LEN != len ||
	    memcmp(buf + len - SPOOL_END_LEN, SPOOL_END, SPOOL_END_LEN) != 0) {
		snprintf(why, whylen, "bad lengths");
		return -1;
	}
	if (env != NULL) {
		if (spool_env_check(buf + hl, (size_t)nums[0], (uint32_t)nums[2], id, NULL,
		    env, why, whylen) == -1)
			return -1;
		if (env->size != nums[1]) {
			snprintf(why, whylen, "size mismatch");
			q_envelope_clear(env);
			return -1;
		}
	}
	if (body != NULL) {
		if (spool_crc32(0, buf + hl + nums[0], (size_t)nums[1]) != (uint32_t)nums[3]) {
			snprintf(why, whylen, "body checksum mismatch");
			return -1;
		}
		*body = buf + hl + nums[0];
		*blen = (size_t)nums[1];
	}
	return 0;
}

/*
 * A segment message's payload to corrupt/<id> (or <id>.N), fsynced with
 * its directory, then a C marker.  Without a copy there is no marker: the
 * message stays in its segment (out of the map, so not delivered) and is
 * read back at the next start, as a quarantined file would stay in msg/.
 */
static void
spool_seg_quarantine(struct spool *sp, const struct smap_ent *e, const char *why)
{
	char path[PATH_MAX], cdir[PATH_MAX], w2[64], *buf;
	int fd = -1, i, rc = -1, saved = 0;

	if ((buf = spool_seg_payload(sp, &e->msg, w2, sizeof(w2))) == NULL) {
		spool_log(sp, LOG_ERR, "queue: corrupt message %s in segment %016llx left "
		    "there (no copy: %s): %s", e->id, (unsigned long long)e->msg.seg, w2, why);
		return;
	}
	snprintf(path, sizeof(path), "%s/corrupt/%s", sp->dir, e->id);
	for (i = 1; i < 100; i++) {
		if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) != -1 ||
		    errno != EEXIST)
			break;
		snprintf(path, sizeof(path), "%s/corrupt/%s.%d", sp->dir, e->id, i);
	}
	if (fd != -1) {
		/* an empty payload (a damaged record can have one) is an
		 * empty copy: spool_pwritev_all takes a 0-byte write for EIO */
		if ((e->msg.len == 0 || spool_pwritev_all(fd,
		    &(struct iovec){ buf, (size_t)e->msg.len }, 1, 0) == 0) && fsync(fd) == 0)
			rc = 0;
		saved = errno;
		close(fd);
		snprintf(cdir, sizeof(cdir), "%s/corrupt", sp->dir);
		if (rc == 0 && segs_fsync_path(cdir) == -1) {
			saved = errno;
			rc = -1;
		}
		if (rc == -1)
			unlink(path);
	} else
		saved = errno;
	free(buf);
	if (rc == -1) {
		spool_log(sp, LOG_ERR, "queue: corrupt message %s in segment %016llx left "
		    "there (copy to corrupt/: %s): %s", e->id, (unsigned long long)e->msg.seg,
		    strerror(saved), why);
		return;
	}
	segs_mark(sp->segs, e->msg.seg, e->id, SEG_CANCEL);
	spool_log(sp, LOG_WARNING, "queue: corrupt message %s in segment %016llx moved to "
	    "corrupt/: %s", e->id, (unsigned long long)e->msg.seg, why);
}

static enum q_status
spool_seg_store(struct spool *sp, const struct q_envelope *env, const struct iovec *iov,
    int n, int (*barrier)(void *), void *arg)
{
	struct seg_loc loc;
	enum q_status st;

	/* the record is there once durable: what must come first does */
	if (barrier != NULL && barrier(arg) == -1) {
		spool_log(sp, LOG_ERR, "queue: barrier of %s refused", env->id);
		return Q_TEMPFAIL;
	}
	if ((st = segs_append(sp->segs, env->id, iov, n, &loc)) != Q_OK) {
		segs_mark(sp->segs, loc.seg, env->id, SEG_CANCEL);
		if (st == Q_NOSPACE)	/* the detail the answer gives */
			queue_nospace_why = "the spool's file system is full";
		return st;
	}
	spool_fault("seg_after_sync");
	if (smap_put(sp->smap, env->id, &loc) == -1) {
		segs_mark(sp->segs, loc.seg, env->id, SEG_CANCEL);
		return Q_TEMPFAIL;
	}
	return Q_OK;
}

/*
 * A state for a message in a segment: finished, an S record there;
 * anything else, the message moves to a file of its own (the message
 * part, then this state as its record), then a V marker.
 */
static enum q_status
spool_seg_state(struct spool *sp, const struct smap_ent *e, const char *etext, size_t elen,
    int durable)
{
	char hdr[SPOOL_HDR_MAX], rel[128], why[160], *buf;
	struct iovec iov[4];
	struct seg_loc st;
	enum q_status r;
	int n;

	n = snprintf(hdr, sizeof(hdr), SPOOL_ST_MAGIC " %zu %08x\n", elen,
	    (unsigned)spool_crc32(0, etext, elen));
	if (!durable) {
		iov[0].iov_base = (void *)etext;
		iov[0].iov_len = elen;
		r = segs_state(sp->segs, e->msg.seg, e->id, iov, 1, &st);
		if (r == Q_OK) {
			smap_set_state(sp->smap, e->id, &st);	/* the newest wins */
			return Q_OK;
		}
		if (r != Q_NOTFOUND)
			return r;
		/* its segment takes no more records (a failed sync): the
		 * message moves to a file of its own, as for a durable state */
	}
	if ((buf = spool_seg_payload(sp, &e->msg, why, sizeof(why))) == NULL) {
		spool_log(sp, LOG_ERR, "queue: id=%s: moving it out of segment %016llx: %s",
		    e->id, (unsigned long long)e->msg.seg, why);
		return Q_TEMPFAIL;
	}
	iov[0].iov_base = buf;
	iov[0].iov_len = (size_t)e->msg.len;
	iov[1].iov_base = hdr;
	iov[1].iov_len = (size_t)n;
	iov[2].iov_base = (void *)etext;
	iov[2].iov_len = elen;
	iov[3].iov_base = (void *)SPOOL_END;
	iov[3].iov_len = SPOOL_END_LEN;
	spool_path(e->id, rel, sizeof(rel));
	r = spool_write_file(sp, rel, iov, 4, 0, NULL, NULL);
	free(buf);
	if (r != Q_OK)
		return r;
	if (smap_del(sp->smap, e->id, NULL))
		segs_mark(sp->segs, e->msg.seg, e->id, SEG_MOVED);
	return Q_OK;
}

enum q_status
spool_store_message(struct spool *sp, const struct q_envelope *env,
    const char *body, size_t len, int (*barrier)(void *), void *arg)
{
	char rel[128], hdr[SPOOL_HDR_MAX];
	struct iovec iov[4];
	enum q_status st;
	size_t elen;
	char *etext;
	int hl;

	if ((etext = spool_env_format(env, &elen)) == NULL)
		return Q_TEMPFAIL;
	hl = snprintf(hdr, sizeof(hdr), SPOOL_MSG_MAGIC " %zu %zu %08x %08x\n", elen, len,
	    (unsigned)spool_crc32(0, etext, elen), (unsigned)spool_crc32(0, body, len));
	spool_path(env->id, rel, sizeof(rel));
	iov[0].iov_base = hdr;
	iov[0].iov_len = (size_t)hl;
	iov[1].iov_base = etext;
	iov[1].iov_len = elen;
	iov[2].iov_base = (void *)body;
	iov[2].iov_len = len;
	iov[3].iov_base = (void *)SPOOL_END;
	iov[3].iov_len = SPOOL_END_LEN;
	st = sp->seg_new ? spool_seg_store(sp, env, iov, 4, barrier, arg) :
	    spool_write_file(sp, rel, iov, 4, 0, barrier, arg);
	free(etext);
	return st;
}

/* Cuts a refused state record off again; errno is kept. */
static void
spool_cut(struct spool *sp, int fd, off_t size, const char *rel)
{
	int saved = errno;

	if (ftruncate(fd, size) == -1)
		spool_log(sp, LOG_ERR, "queue: truncate %s: %s", rel, strerror(errno));
	errno = saved;
}

static pthread_mutex_t *
spool_lock_of(const char *id)
{
	return &spool_locks[spool_crc32(0, id, strlen(id)) % SPOOL_NLOCKS];
}

/*
 * Appends a state record to the message file; durable = fdatasync before
 * returning (everything but a finished message: losing that one to an OS
 * crash means one more delivery, which at-least-once allows).  A failed
 * write (or a record whose fdatasync failed) is cut off again, so the file
 * always ends with a whole record, and a refused one is not read at start.
 */
enum q_status
spool_store_state_text(struct spool *sp, const char *id, const char *etext, size_t elen,
    int durable)
{
	char rel[128], path[PATH_MAX], hdr[SPOOL_HDR_MAX], first[SPOOL_HDR_MAX];
	pthread_mutex_t *lk = spool_lock_of(id);
	uint64_t nums[4];
	struct iovec iov[3];
	enum q_status st = Q_OK;
	struct stat stt;
	size_t hl;
	int fd, n, saved;
	const char *what = "open";
	struct smap_ent se;

	if (sp->smap != NULL) {
		/* looked up under the id's lock: a move by another thread is
		 * seen, not done twice */
		pthread_mutex_lock(lk);
		if (smap_get(sp->smap, id, &se)) {
			st = spool_seg_state(sp, &se, etext, elen, durable);
			pthread_mutex_unlock(lk);
			return st;
		}
		pthread_mutex_unlock(lk);
	}
	n = snprintf(hdr, sizeof(hdr), SPOOL_ST_MAGIC " %zu %08x\n", elen,
	    (unsigned)spool_crc32(0, etext, elen));
	iov[0].iov_base = hdr;
	iov[0].iov_len = (size_t)n;
	iov[1].iov_base = (void *)etext;
	iov[1].iov_len = elen;
	iov[2].iov_base = (void *)SPOOL_END;
	iov[2].iov_len = SPOOL_END_LEN;
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	pthread_mutex_lock(lk);
	if ((fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		saved = errno;
		pthread_mutex_unlock(lk);
		if (saved == ENOENT)
			return Q_NOTFOUND;
		spool_log(sp, LOG_ERR, "queue: open %s: %s", rel, strerror(saved));
		return spool_errno_status(saved);
	}
	what = "fstat";
	if (fstat(fd, &stt) == -1)
		goto fail;
	if (stt.st_size > SPOOL_COMPACT) {
		/* many records: is it time to rewrite the file? */
		what = "read";
		n = stt.st_size < SPOOL_HDR_MAX ? (int)stt.st_size : SPOOL_HDR_MAX;
		if (spool_read_file(fd, 0, first, (size_t)n) == -1)
			goto fail;
		if (spool_parse_header(first, (size_t)n, SPOOL_MSG_MAGIC, 2, nums, &hl) == 0 &&
		    (uint64_t)stt.st_size > hl + nums[0] + nums[1] + SPOOL_END_LEN +
		    SPOOL_COMPACT) {
			st = spool_compact(sp, id, fd, etext, elen);
			close(fd);
			pthread_mutex_unlock(lk);
			return st;
		}
	}
	what = "write";
	if (spool_pwritev_all(fd, iov, 3, stt.st_size) == -1) {
		spool_cut(sp, fd, stt.st_size, rel);
		goto fail;
	}
	spool_fault("state_after_write");
	if (durable) {
		what = "fdatasync";
		if (fdatasync(fd) == -1) {
			/* refused, so not there either (a restart would read it) */
			spool_cut(sp, fd, stt.st_size, rel);
			goto fail;
		}
		spool_fault("state_after_fsync");
	}
	close(fd);
	pthread_mutex_unlock(lk);
	return Q_OK;
fail:
	saved = errno;
	close(fd);
	pthread_mutex_unlock(lk);
	spool_log(sp, LOG_ERR, "queue: %s %s: %s", what, rel, strerror(saved));
	return spool_errno_status(saved);
}

enum q_status
spool_store_state(struct spool *sp, const struct q_envelope *env)
{
	enum q_status st;
	size_t elen;
	char *etext;

	if ((etext = spool_env_format(env, &elen)) == NULL)
		return Q_TEMPFAIL;
	st = spool_store_state_text(sp, env->id, etext, elen, env->finished == 0);
	free(etext);
	return st;
}

/*
 * Parses "MAGIC n1 n2 ... crc1 crc2\n": nnum decimal lengths then hex CRCs
 * (as many as lengths).  nums gets lengths then CRCs.
 */
static int
spool_parse_header(const char *buf, size_t len, const char *magic, int nnum,
    uint64_t *nums, size_t *hdrlen)
{
	const char *nl, *f[6];
	size_t fl[6], n, ml = strlen(magic), i, k;
	uint64_t v;
	int h;

	if (len > SPOOL_HDR_MAX)
		len = SPOOL_HDR_MAX;
	if ((nl = memchr(buf, '\n', len)) == NULL)
		return -1;
	n = (size_t)(nl - buf);
	if (spool_fields(buf, n, f, fl, 6) != (size_t)(1 + 2 * nnum))
		return -1;
	if (fl[0] != ml || memcmp(f[0], magic, ml) != 0)
		return -1;
	for (i = 0; i < (size_t)nnum; i++)
		if (spool_parse_u64(f[1 + i], fl[1 + i], UINT64_MAX / 4, &nums[i]) == -1)
			return -1;
	for (i = 0; i < (size_t)nnum; i++) {
		const char *s = f[1 + nnum + i];

		if (fl[1 + nnum + i] != 8)
			return -1;
		for (v = 0, k = 0; k < 8; k++) {
			if (s[k] >= '0' && s[k] <= '9')
				h = s[k] - '0';
			else if (s[k] >= 'a' && s[k] <= 'f')
				h = s[k] - 'a' + 10;
			else
				return -1;
			v = v * 16 + (uint64_t)h;
		}
		nums[nnum + i] = v;
	}
	*hdrlen = n + 1;
	return 0;
}

static int
spool_read_file(int fd, off_t off, char *buf, size_t len)
{
	ssize_t r;
	size_t got = 0;

	while (got < len) {
		r = pread(fd, buf + got, len - got, off + (off_t)got);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		got += (size_t)r;
	}
	return 0;
}

/*
 * Checks and parses one envelope (the message part's or a record's): CRC,
 * strict parse, the right id, and for a record the message it belongs to.
 */
static int
spool_env_check(const char *buf, size_t len, uint32_t crc, const char *id,
    const struct q_envelope *base, struct q_envelope *env, char *why, size_t whylen)
{
	if (spool_crc32(0, buf, len) != crc) {
		snprintf(why, whylen, "envelope checksum mismatch");
		return -1;
	}
	if (spool_env_parse(buf, len, env, why, whylen) == -1)
		return -1;
	if (strcmp(env->id, id) != 0) {
		snprintf(why, whylen, "id mismatch");
		goto fail;
	}
	if (base != NULL && (env->size != base->size || env->nrcpt != base->nrcpt ||
	    env->created != base->created)) {
		snprintf(why, whylen, "state does not match its message");
		goto fail;
	}
	return 0;
fail:
	q_envelope_clear(env);
	return -1;
}

/*
 * The message part of an open file: header, exact lengths, end marker.
 * Fills nums (envlen, bodylen, envcrc, bodycrc) and *hl; the envelope is
 * copied to *ebuf (malloc'd) when ebuf is not NULL.  first holds the first
 * *got bytes of the file (read here).
 */
static int
spool_read_message_part(int fd, const struct stat *stt, char *first, size_t *got,
    uint64_t nums[4], size_t *hl, uint64_t *total, char **ebuf, char *why, size_t whylen)
{
	char endm[SPOOL_END_LEN];
	size_t want, elen;
	char *e;

	want = (size_t)stt->st_size < SPOOL_FIRST_READ ? (size_t)stt->st_size :
	    SPOOL_FIRST_READ;
	*got = want;
	if (spool_read_file(fd, 0, first, want) == -1 ||
	    spool_parse_header(first, want, SPOOL_MSG_MAGIC, 2, nums, hl) == -1) {
		snprintf(why, whylen, "bad header");
		return -1;
	}
	elen = (size_t)nums[0];
	if (elen > Q_MAX_ENV || nums[1] > Q_MAX_BODY) {
		snprintf(why, whylen, "bad lengths");
		return -1;
	}
	*total = *hl + elen + nums[1] + SPOOL_END_LEN;
	if ((uint64_t)stt->st_size < *total) {
		snprintf(why, whylen, "size %lld, header says %llu (truncated?)",
		    (long long)stt->st_size, (unsigned long long)*total);
		return -1;
	}
	if (*total <= want)
		memcpy(endm, first + *total - SPOOL_END_LEN, SPOOL_END_LEN);
	else if (spool_read_file(fd, (off_t)(*total - SPOOL_END_LEN), endm,
	    SPOOL_END_LEN) == -1) {
		snprintf(why, whylen, "read: %s", strerror(errno));
		return -1;
	}
	if (memcmp(endm, SPOOL_END, SPOOL_END_LEN) != 0) {
		snprintf(why, whylen, "no end marker");
		return -1;
	}
	if (ebuf == NULL)
		return 0;
	if ((e = malloc(elen + 1)) == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	if (*hl + elen <= want)
		memcpy(e, first + *hl, elen);
	else if (spool_read_file(fd, (off_t)*hl, e, elen) == -1) {
		free(e);
		snprintf(why, whylen, "read: %s", strerror(errno));
		return -1;
	}
	*ebuf = e;
	return 0;
}

/*
 * Walks the state records in tail[0..len): each whole, valid record
 * replaces *env.  Returns the length of the whole records; anything after
 * it is a torn or bad record, described in why.
 */
static size_t
spool_walk_records(const char *tail, size_t len, const char *id, struct q_envelope *env,
    char *why, size_t whylen)
{
	struct q_envelope rec;
	uint64_t nums[2];
	size_t off = 0, hl, elen;

	while (off < len) {
		if (spool_parse_header(tail + off, len - off, SPOOL_ST_MAGIC, 1, nums,
		    &hl) == -1) {
			snprintf(why, whylen, "bad record header");
			break;
		}
		elen = (size_t)nums[0];
		if (elen > Q_MAX_ENV || hl + elen + SPOOL_END_LEN > len - off) {
			snprintf(why, whylen, "record cut short");
			break;
		}
		if (memcmp(tail + off + hl + elen, SPOOL_END, SPOOL_END_LEN) != 0) {
			snprintf(why, whylen, "record without end marker");
			break;
		}
		memset(&rec, 0, sizeof(rec));
		if (spool_env_check(tail + off + hl, elen, (uint32_t)nums[1], id, env, &rec,
		    why, whylen) == -1)
			break;
		q_envelope_clear(env);
		*env = rec;
		off += hl + elen + SPOOL_END_LEN;
	}
	return off;
}

/*
 * Loads msg/XX/<id>: the message part, then its state records.  A bad
 * record ends the walk and is cut off with a log line (see the top of the
 * file).  Returns 0, 1 if there is no such file, -1 with why.
 */
static int
spool_load_file(struct spool *sp, const char *id, struct q_envelope *env,
    char *why, size_t whylen)
{
	char path[PATH_MAX], rel[128], first[SPOOL_FIRST_READ], rwhy[160];
	char *ebuf = NULL, *tail = NULL, *owned = NULL;
	uint64_t nums[4], total;
	size_t hl, got, tlen, good;
	struct stat stt;
	int fd, rc = -1;

	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((fd = sp->dirfd != -1 ? openat(sp->dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW) :
	    open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(why, whylen, "open: %s", strerror(errno));
		return errno == ENOENT ? 1 : -1;
	}
	if (fstat(fd, &stt) == -1 || !S_ISREG(stt.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		goto done;
	}
	if (spool_read_message_part(fd, &stt, first, &got, nums, &hl, &total, &ebuf,
	    why, whylen) == -1)
		goto done;
	if (spool_env_check(ebuf, (size_t)nums[0], (uint32_t)nums[2], id, NULL, env,
	    why, whylen) == -1)
		goto done;
	if (env->size != nums[1]) {
		snprintf(why, whylen, "size mismatch");
		q_envelope_clear(env);
		goto done;
	}
	rc = 0;
	if ((uint64_t)stt.st_size == total)
		goto done;
	tlen = (size_t)((uint64_t)stt.st_size - total);
	if (tlen > SPOOL_TAIL_MAX)
		tlen = SPOOL_TAIL_MAX;
	if (total + tlen <= got)
		tail = first + total;
	else if ((tail = malloc(tlen + 1)) == NULL ||
	    spool_read_file(fd, (off_t)total, tail, tlen) == -1) {
		/* unreadable records: the message's own envelope stands */
		spool_log(sp, LOG_ERR, "queue: id=%s: state records unreadable: %s", id,
		    strerror(errno));
		free(tail);
		goto done;
	} else
		owned = tail;
	good = spool_walk_records(tail, tlen, id, env, rwhy, sizeof(rwhy));
	if (total + good < (uint64_t)stt.st_size) {
		spool_log(sp, LOG_WARNING, "queue: id=%s: state record at offset %llu dropped "
		    "(%s), the state before it is used", id,
		    (unsigned long long)(total + good), rwhy);
		if (truncate(path, (off_t)(total + good)) == -1)
			spool_log(sp, LOG_ERR, "queue: truncate %s: %s", rel, strerror(errno));
	}
done:
	free(ebuf);
	free(owned);
	close(fd);
	return rc;
}

/*
 * Loads a message of a segment: its envelope, or its last S record's.
 * 0, 1 if it is not in a segment, -1 with why.
 */
static int
spool_seg_load(struct spool *sp, const char *id, struct q_envelope *env, char *why,
    size_t whylen)
{
	struct q_envelope rec;
	struct smap_ent e;
	char *buf, *sbuf;
	int rc;

	if (!smap_get(sp->smap, id, &e))
		return 1;
	if ((buf = spool_seg_payload(sp, &e.msg, why, whylen)) == NULL)
		return smap_get(sp->smap, id, &e) ? -1 : 1;	/* moved meanwhile */
	rc = spool_seg_parse(buf, (size_t)e.msg.len, id, env, NULL, NULL, why, whylen);
	free(buf);
	if (rc == -1 || e.st.len == 0)
		return rc;
	/* a bad state record: the message's own envelope stands (it was
	 * whole at the scan, so this is a read error) */
	if ((sbuf = spool_seg_payload(sp, &e.st, why, whylen)) == NULL)
		return 0;
	memset(&rec, 0, sizeof(rec));
	if (spool_env_check(sbuf, (size_t)e.st.len, spool_crc32(0, sbuf, (size_t)e.st.len),
	    id, env, &rec, why, whylen) == 0) {
		q_envelope_clear(env);
		*env = rec;
	} else
		spool_log(sp, LOG_WARNING, "queue: id=%s: segment state record refused (%s), "
		    "the state before it is used", id, why);
	free(sbuf);
	return 0;
}

int
spool_load(struct spool *sp, const char *id, struct q_envelope **out,
    char *why, size_t whylen)
{
	struct q_envelope *m;
	pthread_mutex_t *lk = spool_lock_of(id);
	int rc;

	*out = NULL;
	if ((m = calloc(1, sizeof(*m))) == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	pthread_mutex_lock(lk);
	if ((rc = spool_seg_load(sp, id, m, why, whylen)) == 1)
		rc = spool_load_file(sp, id, m, why, whylen);
	pthread_mutex_unlock(lk);
	if (rc != 0) {
		free(m);
		return -1;
	}
	*out = m;
	return 0;
}

/*
 * Reads the body of an open message file into a malloc'd buffer and checks
 * its CRC; returns 0, or -1 with why.
 */
static int
spool_read_body_fd(int fd, char **data, size_t *len, uint64_t *total, char *why,
    size_t whylen)
{
	char first[SPOOL_FIRST_READ];
	uint64_t nums[4];
	struct stat stt;
	size_t hl, got, blen;
	char *buf;

	if (fstat(fd, &stt) == -1 || !S_ISREG(stt.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		return -1;
	}
	if (spool_read_message_part(fd, &stt, first, &got, nums, &hl, total, NULL,
	    why, whylen) == -1)
		return -1;
	blen = (size_t)nums[1];
	if ((buf = malloc(blen + 1)) == NULL) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	if (hl + nums[0] + blen <= got)
		memcpy(buf, first + hl + nums[0], blen);
	else if (spool_read_file(fd, (off_t)(hl + nums[0]), buf, blen) == -1) {
		free(buf);
		snprintf(why, whylen, "short body");
		return -1;
	}
	if (spool_crc32(0, buf, blen) != (uint32_t)nums[3]) {
		free(buf);
		snprintf(why, whylen, "body checksum mismatch");
		return -1;
	}
	buf[blen] = '\0';
	*data = buf;
	*len = blen;
	return 0;
}

enum q_status
spool_read_body(struct spool *sp, const char *id, char **data, size_t *len)
{
	char path[PATH_MAX], rel[128], why[256];
	struct smap_ent se;
	uint64_t total;
	int fd, rc;

	*data = NULL;
	*len = 0;
	if (smap_get(sp->smap, id, &se)) {
		const char *b;
		size_t bl;
		char *buf, *out;

		if ((buf = spool_seg_payload(sp, &se.msg, why, sizeof(why))) == NULL) {
			/* moved to its file (and its segment gone) meanwhile? */
			if (!smap_get(sp->smap, id, &se))
				return spool_read_body(sp, id, data, len);
			return Q_TEMPFAIL;
		}
		if (spool_seg_parse(buf, (size_t)se.msg.len, id, NULL, &b, &bl, why,
		    sizeof(why)) == -1) {
			free(buf);
			spool_quarantine(sp, id, why);
			return Q_NOTFOUND;
		}
		/* the body moved to the front of its buffer: one allocation */
		out = buf;
		memmove(out, b, bl);
		out[bl] = '\0';
		*data = out;
		*len = bl;
		return Q_OK;
	}
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1)
		return errno == ENOENT ? Q_NOTFOUND : Q_TEMPFAIL;
	rc = spool_read_body_fd(fd, data, len, &total, why, sizeof(why));
	close(fd);
	if (rc == 0)
		return Q_OK;
	if (strcmp(why, "out of memory") == 0)
		return Q_TEMPFAIL;
	spool_quarantine(sp, id, why);
	return Q_NOTFOUND;
}

/*
 * Rewrites a message file whose records grew past SPOOL_COMPACT: the
 * newest envelope becomes the message part, the records go.  Called with
 * the id's lock held and fd open on the file.
 */
static enum q_status
spool_compact(struct spool *sp, const char *id, int fd, const char *etext, size_t elen)
{
	char rel[128], hdr[SPOOL_HDR_MAX], why[256];
	struct iovec iov[4];
	enum q_status st;
	uint64_t total;
	size_t blen;
	char *body;
	int hl;

	spool_path(id, rel, sizeof(rel));
	if (spool_read_body_fd(fd, &body, &blen, &total, why, sizeof(why)) == -1) {
		spool_log(sp, LOG_ERR, "queue: id=%s: cannot compact its file: %s", id, why);
		return Q_TEMPFAIL;
	}
	hl = snprintf(hdr, sizeof(hdr), SPOOL_MSG_MAGIC " %zu %zu %08x %08x\n", elen, blen,
	    (unsigned)spool_crc32(0, etext, elen), (unsigned)spool_crc32(0, body, blen));
	iov[0].iov_base = hdr;
	iov[0].iov_len = (size_t)hl;
	iov[1].iov_base = (void *)etext;
	iov[1].iov_len = elen;
	iov[2].iov_base = body;
	iov[2].iov_len = blen;
	iov[3].iov_base = (void *)SPOOL_END;
	iov[3].iov_len = SPOOL_END_LEN;
	st = spool_write_file(sp, rel, iov, 4, 1, NULL, NULL);
	free(body);
	if (st == Q_OK)
		spool_log(sp, LOG_INFO, "queue: id=%s: state records compacted", id);
	return st;
}

void
spool_remove(struct spool *sp, const char *id, int sync)
{
	char path[PATH_MAX], rel[128];
	struct smap_ent se;

	if (sp->smap != NULL) {
		/* not between a move's copy and its V marker (see "segments") */
		pthread_mutex_lock(spool_lock_of(id));
		if (smap_del(sp->smap, id, &se)) {
			segs_mark(sp->segs, se.msg.seg, id, SEG_REMOVED);
			pthread_mutex_unlock(spool_lock_of(id));
			return;
		}
		pthread_mutex_unlock(spool_lock_of(id));
	}
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if (unlink(path) == -1 && errno != ENOENT)
		spool_log(sp, LOG_ERR, "queue: unlink %s: %s", rel, strerror(errno));
	if (sync)
		spool_fsync_dir(sp, rel);
}

void
spool_quarantine_path(struct spool *sp, const char *rel, const char *why)
{
	char src[PATH_MAX], dst[PATH_MAX];
	const char *base;
	int i;

	base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	snprintf(src, sizeof(src), "%s/%s", sp->dir, rel);
	snprintf(dst, sizeof(dst), "%s/corrupt/%s", sp->dir, base);
	for (i = 1; i < 100 && access(dst, F_OK) == 0; i++)
		snprintf(dst, sizeof(dst), "%s/corrupt/%s.%d", sp->dir, base, i);
	if (rename(src, dst) == -1) {
		spool_log(sp, LOG_ERR, "queue: quarantine %s: %s; removing it", rel,
		    strerror(errno));
		unlink(src);
		return;
	}
	spool_log(sp, LOG_WARNING, "queue: corrupt file %s moved to corrupt/: %s", rel, why);
}

void
spool_quarantine(struct spool *sp, const char *id, const char *why)
{
	char rel[128];
	struct smap_ent se;

	if (sp->smap != NULL) {
		pthread_mutex_lock(spool_lock_of(id));
		if (smap_del(sp->smap, id, &se)) {
			spool_seg_quarantine(sp, &se, why);
			pthread_mutex_unlock(spool_lock_of(id));
			return;
		}
		pthread_mutex_unlock(spool_lock_of(id));
	}
	spool_path(id, rel, sizeof(rel));
	spool_quarantine_path(sp, rel, why);
}

/*
 * Moves msg/<from>/id, named in an older layout, to its directory now;
 * 0, or -1 (quarantined or left) with a log line.
 */
static int
spool_move_old(struct spool *sp, int from, const char *id)
{
	char src[PATH_MAX], dst[PATH_MAX], rel[128];

	snprintf(rel, sizeof(rel), "msg/%02x/%s", from, id);
	snprintf(src, sizeof(src), "%s/%s", sp->dir, rel);
	snprintf(dst, sizeof(dst), "%s/msg/%02x/%s", sp->dir, spool_dir_of(id), id);
	if (access(dst, F_OK) == 0) {
		spool_quarantine_path(sp, rel, "a message of the same id is in its directory");
		return -1;
	}
	if (rename(src, dst) == -1) {
		spool_log(sp, LOG_ERR, "queue: rename %s: %s", rel, strerror(errno));
		return -1;
	}
	spool_path(id, rel, sizeof(rel));
	if (spool_fsync_dir(sp, rel) == -1) {
		spool_log(sp, LOG_ERR, "queue: fsync dir of %s: %s", rel, strerror(errno));
		return -1;
	}
	snprintf(rel, sizeof(rel), "msg/%02x/%s", from, id);
	(void)spool_fsync_dir(sp, rel);
	return 0;
}

/* segs_scan's callback: the map as the records say. */
static int
spool_seg_collect(void *arg, uint64_t seg, const char *id, char kind,
    const struct seg_loc *loc)
{
	struct spool *sp = arg;

	(void)seg;
	switch (kind) {
	case SEG_MESSAGE:
		(void)smap_del(sp->smap, id, NULL);	/* the same id twice: the later */
		if (smap_put(sp->smap, id, loc) == -1)
			spool_log(sp, LOG_ERR, "queue: out of memory for %s: loaded at "
			    "the next start", id);
		break;
	case SEG_STATE:
		smap_set_state(sp->smap, id, loc);
		break;
	case SEG_DAMAGED:	/* quarantined after the scan, unless a marker
				 * says it was done with (spool_seg_damaged) */
		(void)smap_del(sp->smap, id, NULL);
		if (smap_put(sp->smap, id, loc) == 0)
			smap_set_damaged(sp->smap, id);
		break;
	default:
		(void)smap_del(sp->smap, id, NULL);
		break;
	}
	return 0;
}

/* After the scan: the messages whose record was damaged, to corrupt/. */
static void
spool_seg_damaged(struct spool *sp)
{
	struct spool_smap *m = sp->smap;
	struct smap_ent *e, se;
	char (*ids)[QUEUE_ID_LEN + 1] = NULL, (*nid)[QUEUE_ID_LEN + 1];
	size_t i, k = 0, cap = 0;

	pthread_mutex_lock(&m->mu);
	for (i = 0; i < m->nb; i++)
		for (e = m->b[i]; e != NULL; e = e->next) {
			if (!e->damaged)
				continue;
			if (k == cap) {
				cap = cap ? cap * 2 : 16;
				if ((nid = realloc(ids, cap * sizeof(*ids))) == NULL)
					break;
				ids = nid;
			}
			memcpy(ids[k++], e->id, QUEUE_ID_LEN + 1);
		}
	pthread_mutex_unlock(&m->mu);
	for (i = 0; i < k; i++)
		if (smap_del(m, ids[i], &se))
			spool_seg_quarantine(sp, &se, "damaged in its segment (checksum)");
	free(ids);
}

/* fn for each message of the segments; how many. */
static size_t
spool_seg_list(struct spool *sp, void (*fn)(void *, const char *), void *arg)
{
	struct spool_smap *m = sp->smap;
	struct smap_ent *e;
	char (*ids)[QUEUE_ID_LEN + 1];
	size_t i, k = 0, n;

	if (m == NULL)
		return 0;
	/* copied out: fn may come back to the spool */
	pthread_mutex_lock(&m->mu);
	n = m->n;
	if ((ids = calloc(n ? n : 1, sizeof(*ids))) != NULL)
		for (i = 0; i < m->nb; i++)
			for (e = m->b[i]; e != NULL && k < n; e = e->next)
				memcpy(ids[k++], e->id, QUEUE_ID_LEN + 1);
	pthread_mutex_unlock(&m->mu);
	if (ids == NULL) {
		spool_log(sp, LOG_ERR, "queue: out of memory listing the segments");
		return 0;
	}
	for (i = 0; i < k; i++)
		fn(arg, ids[i]);
	free(ids);
	return k;
}

/* A file id at the scan: a segment's copy of it gives way. */
static void
spool_seg_file_wins(struct spool *sp, const char *id)
{
	struct smap_ent se;

	if (smap_del(sp->smap, id, &se))
		segs_mark(sp->segs, se.msg.seg, id, SEG_MOVED);
}

size_t
spool_scan(struct spool *sp, void (*fn)(void *, const char *), void *arg)
{
	char path[PATH_MAX], rel[128];
	struct dirent *de;
	struct { char id[QUEUE_ID_LEN + 1]; int from; } *old = NULL, *p;
	size_t n = 0, nl, nold = 0, capold = 0, i;
	DIR *dp;
	int d;

	if (sp->segs != NULL && segs_scan(sp->segs, spool_seg_collect, sp) == -1)
		spool_log(sp, LOG_ERR, "queue: the segments were not all read (see above)");
	for (d = 0; d < Q_NDIRS; d++) {
		snprintf(path, sizeof(path), "%s/msg/%02x", sp->dir, d);
		if ((dp = opendir(path)) == NULL) {
			spool_log(sp, LOG_ERR, "queue: opendir %s: %s", path, strerror(errno));
			continue;
		}
		while ((de = readdir(dp)) != NULL) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			nl = strlen(de->d_name);
			if (nl == QUEUE_ID_LEN && qid_valid(de->d_name) &&
			    (int)spool_dir_of(de->d_name) == d) {
				spool_seg_file_wins(sp, de->d_name);
				fn(arg, de->d_name);
				n++;
				continue;
			}
			/* another layout's place: moved once every directory
			 * is read (so none is read twice) */
			if (nl == QUEUE_ID_LEN && qid_valid(de->d_name)) {
				if (nold == capold) {
					capold = capold ? capold * 2 : 64;
					if ((p = realloc(old, capold * sizeof(*old))) == NULL) {
						spool_log(sp, LOG_ERR, "queue: out of memory "
						    "for %s: loaded at the next start", de->d_name);
						capold = nold;
						continue;
					}
					old = p;
				}
				memcpy(old[nold].id, de->d_name, QUEUE_ID_LEN + 1);
				old[nold++].from = d;
				continue;
			}
			snprintf(rel, sizeof(rel), "msg/%02x/%.100s", d, de->d_name);
			spool_quarantine_path(sp, rel, "not a spool file name");
		}
		closedir(dp);
	}
	for (i = 0; i < nold; i++)
		if (spool_move_old(sp, old[i].from, old[i].id) == 0) {
			spool_seg_file_wins(sp, old[i].id);
			fn(arg, old[i].id);
			n++;
		}
	/* after the files: a message moved to its file before a crash (no V
	 * marker yet) is not quarantined for a damaged segment copy */
	if (sp->segs != NULL)
		spool_seg_damaged(sp);
	n += spool_seg_list(sp, fn, arg);
	if (nold > 0)
		spool_log(sp, LOG_INFO, "queue: %zu message files of an older layout "
		    "moved to their directories", nold);
	free(old);
	return n;
}
