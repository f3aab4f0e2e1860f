/*
 * eventlog.c - the durable event log: segments <first id>.log under
 * <state_dir>/events/, one JSON event per line, appended and made durable
 * (fdatasync, once per group of concurrent batches) before anyone is shown them.  Reading needs no lock: a reader stops at a
 * line without its newline (being written), and a segment removed under it
 * is skipped.  Why files and not the Berkeley DB store: events belong to
 * this site's queue (ids, like queue ids, are per site), while the store
 * may be replicated to other sites; and an append plus fdatasync is the
 * cheapest durable write there is, with no checkpoints or log cleanup.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/uio.h>

#include "agent/events/events_int.h"

struct eventlog {
	char		*dir;
	int		 fd;		/* the newest segment, O_APPEND */
	uint64_t	 first;		/* its first id */
	off_t		 size;
	time_t		 opened;	/* when it got its first event */
	uint64_t	 last;		/* newest id written */
};

static int	eventlog_segments(const char *dir, uint64_t **out, size_t *n);
static int	eventlog_new_segment(struct eventlog *, uint64_t first);
static int	eventlog_recover(struct eventlog *, uint64_t first, char *err, size_t errlen);

uint64_t
eventlog_line_id(const char *line, size_t len)
{
	static const char pre[] = "{\"id\":";
	char num[24];
	size_t i = sizeof(pre) - 1, k = 0;

	if (len < i || memcmp(line, pre, i) != 0)
		return 0;
	while (i < len && k < sizeof(num) - 1 && line[i] >= '0' && line[i] <= '9')
		num[k++] = line[i++];
	num[k] = '\0';
	return k > 0 ? strtoull(num, NULL, 10) : 0;
}

static int
eventlog_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* First ids of the segments, sorted. */
static int
eventlog_segments(const char *dir, uint64_t **out, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	uint64_t *v = NULL, id;
	size_t cap = 0;
	char *end;
	void *p;

	*out = NULL;
	*n = 0;
	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (strlen(e->d_name) != 20 || strcmp(e->d_name + 16, ".log") != 0)
			continue;
		id = strtoull(e->d_name, &end, 16);
		if (end != e->d_name + 16)
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			if ((p = realloc(v, cap * sizeof(*v))) == NULL) {
				free(v);
				closedir(d);
				return -1;
			}
			v = p;
		}
		v[(*n)++] = id;
	}
	closedir(d);
	if (*n > 1)
		qsort(v, *n, sizeof(*v), eventlog_cmp);
	*out = v;
	return 0;
}

static void
eventlog_path(const struct eventlog *l, uint64_t first, char *out, size_t len)
{
	snprintf(out, len, "%s/%016" PRIx64 ".log", l->dir, first);
}

static int
eventlog_new_segment(struct eventlog *l, uint64_t first)
{
	char path[4200];
	int fd, dfd;

	eventlog_path(l, first, path, sizeof(path));
	if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) == -1)
		return -1;
	/* the segment's name must survive a crash as much as its lines */
	if ((dfd = open(l->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		(void)fsync(dfd);
		close(dfd);
	}
	if (l->fd != -1) {
		(void)fdatasync(l->fd);	/* what a batch wrote there */
		close(l->fd);
	}
	l->fd = fd;
	l->first = first;
	l->size = 0;
	l->opened = time(NULL);
	return 0;
}

/* Reads the newest segment: its last id; a torn last line is cut off. */
static int
eventlog_recover(struct eventlog *l, uint64_t first, char *err, size_t errlen)
{
	char path[4200], *buf = NULL, *nl;
	struct stat st;
	size_t keep = 0;
	ssize_t got;
	int fd;

	eventlog_path(l, first, path, sizeof(path));
	if ((fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC)) == -1 || fstat(fd, &st) == -1) {
		snprintf(err, errlen, "events: open %s: %s", path, strerror(errno));
		goto fail;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		snprintf(err, errlen, "events: out of memory");
		goto fail;
	}
	got = pread(fd, buf, (size_t)st.st_size, 0);
	if (got != st.st_size) {
		snprintf(err, errlen, "events: read %s: %s", path, strerror(errno));
		goto fail;
	}
	buf[got] = '\0';
	if ((nl = memrchr(buf, '\n', (size_t)got)) != NULL)
		keep = (size_t)(nl - buf) + 1;
	if (keep < (size_t)got && ftruncate(fd, (off_t)keep) == -1) {
		snprintf(err, errlen, "events: truncate %s: %s", path, strerror(errno));
		goto fail;
	}
	l->last = first > 0 ? first - 1 : 0;
	if (keep > 0) {
		char *start = keep > 1 ? memrchr(buf, '\n', keep - 1) : NULL;
		uint64_t id;

		start = start ? start + 1 : buf;
		if ((id = eventlog_line_id(start, keep - (size_t)(start - buf))) > 0)
			l->last = id;
	}
	l->fd = fd;
	l->first = first;
	l->size = (off_t)keep;
	l->opened = st.st_mtime;
	free(buf);
	return 0;
fail:
	if (fd != -1)
		close(fd);
	free(buf);
	return -1;
}

struct eventlog *
eventlog_open(const char *dir, char *err, size_t errlen)
{
	struct eventlog *l = calloc(1, sizeof(*l));
	uint64_t *segs = NULL;
	size_t n = 0;

	if (l == NULL || (l->dir = strdup(dir)) == NULL) {
		free(l);
		snprintf(err, errlen, "events: out of memory");
		return NULL;
	}
	l->fd = -1;
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "events: mkdir %s: %s", dir, strerror(errno));
		goto fail;
	}
	if (eventlog_segments(dir, &segs, &n) == -1) {
		snprintf(err, errlen, "events: read %s: %s", dir, strerror(errno));
		goto fail;
	}
	if (n == 0) {
		if (eventlog_new_segment(l, 1) == -1) {
			snprintf(err, errlen, "events: create a segment in %s: %s", dir,
			    strerror(errno));
			goto fail;
		}
	} else if (eventlog_recover(l, segs[n - 1], err, errlen) == -1)
		goto fail;
	free(segs);
	return l;
fail:
	free(segs);
	eventlog_close(l);
	return NULL;
}

void
eventlog_close(struct eventlog *l)
{
	if (l == NULL)
		return;
	if (l->fd != -1)
		close(l->fd);
	free(l->dir);
	free(l);
}

uint64_t
eventlog_last(const struct eventlog *l)
{
	return l->last;
}

int
eventlog_append(struct eventlog *l, uint64_t id, const char *line, size_t len)
{
	struct iovec iov[2] = { { (void *)line, len }, { (void *)"\n", 1 } };
	char *rec;
	int r;

	/* one iovec per event: the line and its newline together */
	if ((rec = malloc(len + 1)) == NULL)
		return -1;
	memcpy(rec, line, len);
	rec[len] = '\n';
	iov[0].iov_base = rec;
	iov[0].iov_len = len + 1;
	r = eventlog_appendv(l, id, iov, 1);
	free(rec);
	return r;
}

int
eventlog_appendv(struct eventlog *l, uint64_t first, const struct iovec *iov, size_t n)
{
	size_t i, j, k, want;
	ssize_t w;
	off_t at;

	if ((l->size >= (off_t)EVENTLOG_SEGMENT_BYTES ||
	    (l->size > 0 && time(NULL) - l->opened >= EVENTLOG_SEGMENT_AGE)) &&
	    eventlog_new_segment(l, first) == -1)
		return -1;
	if (l->size == 0)
		l->opened = time(NULL);
	at = l->size;
	for (i = 0; i < n; i += k) {
		k = n - i < IOV_MAX ? n - i : IOV_MAX;
		for (want = 0, j = 0; j < k; j++)
			want += iov[i + j].iov_len;
		w = writev(l->fd, iov + i, (int)k);
		if (w != (ssize_t)want) {
			/* a short write leaves a torn line: cut the batch, its ids unused */
			if ((w > 0 || i > 0) && ftruncate(l->fd, at) == -1)
				return -1;
			l->size = at;
			return -1;
		}
		l->size += (off_t)want;
	}
	l->last = first + n - 1;
	return 0;
}

uint64_t
eventlog_first(const struct eventlog *l)
{
	return l->first;
}

/* A descriptor of the newest segment to sync without the caller's lock
 * (a new segment may close l->fd meanwhile; it syncs the old one first). */
int
eventlog_sync_fd(struct eventlog *l)
{
	return fcntl(l->fd, F_DUPFD_CLOEXEC, 0);
}

/* The lines of one segment after `after`; 1 if fn stopped the scan. */
static int
eventlog_scan_one(const char *path, uint64_t after, events_line_fn fn, void *arg)
{
	char *buf = NULL, *p, *nl, *end;
	struct stat st;
	ssize_t got;
	uint64_t id;
	int fd, r = 0;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return errno == ENOENT ? 0 : -1;	/* expired under us */
	if (fstat(fd, &st) == -1 || (buf = malloc((size_t)st.st_size + 1)) == NULL) {
		close(fd);
		return -1;
	}
	got = pread(fd, buf, (size_t)st.st_size, 0);
	close(fd);
	if (got < 0) {
		free(buf);
		return -1;
	}
	end = buf + got;
	for (p = buf; p < end && r == 0; p = nl + 1) {
		if ((nl = memchr(p, '\n', (size_t)(end - p))) == NULL)
			break;		/* being written */
		if ((id = eventlog_line_id(p, (size_t)(nl - p))) > after)
			r = fn(arg, id, p, (size_t)(nl - p)) != 0;
	}
	free(buf);
	return r;
}

int
eventlog_scan(struct eventlog *l, uint64_t after, time_t not_before, events_line_fn fn,
    void *arg)
{
	char path[4200];
	uint64_t *segs;
	size_t n, i, start = 0;
	struct stat st;
	int r = 0;

	if (eventlog_segments(l->dir, &segs, &n) == -1)
		return -1;
	/* the last segment that can hold after + 1 */
	for (i = 0; i < n; i++)
		if (segs[i] <= after + 1)
			start = i;
	for (i = start; i < n && r == 0; i++) {
		eventlog_path(l, segs[i], path, sizeof(path));
		if (not_before > 0 && i + 1 < n && stat(path, &st) == 0 &&
		    st.st_mtime < not_before)
			continue;
		r = eventlog_scan_one(path, after, fn, arg);
	}
	free(segs);
	return r < 0 ? -1 : 0;
}

size_t
eventlog_expire(struct eventlog *l, time_t cutoff)
{
	char path[4200];
	uint64_t *segs;
	struct stat st;
	size_t n, i, gone = 0;

	if (eventlog_segments(l->dir, &segs, &n) == -1)
		return 0;
	for (i = 0; i + 1 < n; i++) {
		eventlog_path(l, segs[i], path, sizeof(path));
		if (segs[i] == l->first || stat(path, &st) == -1 || st.st_mtime >= cutoff)
			continue;
		if (unlink(path) == 0)
			gone++;
	}
	free(segs);
	return gone;
}
