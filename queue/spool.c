/*
 * spool.c - the queue on disk.  <spool>/msg/XX/<id> holds the message: a
 * header line with lengths and CRC-32s, the envelope text, the body, and an
 * end marker; it is written once.  Later envelope versions go to
 * msg/XX/<id>.st, replaced atomically.  XX is a hash of the id, so no
 * directory grows huge.  Every file is written by spool_write_atomic
 * through tmp/; whatever is read back is untrusted: strict parse, bounded
 * lengths, and anything bad goes to corrupt/ with a log line.
 *
 *   message file: "OTPQ1 <envlen> <bodylen> <envcrc32> <bodycrc32>\n"
 *                 <envelope text> <body> "END\n"
 *   state file:   "OTPS1 <envlen> <envcrc32>\n" <envelope text> "END\n"
 *   envelope:     fixed-order lines "v 1", "id", "class", "sender", "created",
 *                 "expires", "next", "attempts", "held", "flags", "size", "uid",
 *                 "finished", "tag", "error", "rcpts N", N x "r state attempts
 *                 last addr reply", "."; strings are "-" (none) or "=" + bytes
 *                 with %XX for anything but printable ASCII.
 * The exact file size must match the header, so a file cut at any byte is
 * refused; recovery reads header + envelope only (the body CRC is checked
 * when the body is read for delivery).
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
#include <syslog.h>
#include <unistd.h>

#include "queue/queue_int.h"

#define SPOOL_MSG_MAGIC		"OTPQ1"
#define SPOOL_ST_MAGIC		"OTPS1"
#define SPOOL_END		"END\n"
#define SPOOL_END_LEN		4
#define SPOOL_HDR_MAX		96
#define SPOOL_FIRST_READ	8192

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
static int	spool_fsync_dir(struct spool *, const char *rel);
static enum q_status spool_write_file(struct spool *, const char *, const struct iovec *,
		    int, int);
static enum q_status spool_store_state_file(struct spool *, const char *, const char *,
		    size_t, int);
static int	spool_mkdir(const char *);
static void	spool_fault(const char *step);

static uint32_t		 spool_crc_tab[256];
static pthread_once_t	 spool_crc_once = PTHREAD_ONCE_INIT;
static atomic_ulong	 spool_tmp_seq;
_Thread_local const char *queue_nospace_why = "the spool is out of space";
static const char	*spool_fault_step;	/* $OTPMAIL_FAULT, tests only */

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

static unsigned
spool_dir_of(const char *id)
{
	uint32_t h = 2166136261u;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return (h ^ (h >> 16)) & (Q_NDIRS - 1);
}

void
spool_path(const char *id, int state, char *out, size_t len)
{
	snprintf(out, len, "msg/%02x/%s%s", spool_dir_of(id), id, state ? ".st" : "");
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

static int
spool_mkdir(const char *path)
{
	if (mkdir(path, 0700) == -1 && errno != EEXIST)
		return -1;
	return 0;
}

int
spool_init(struct spool *sp, const char *dir, uint64_t min_bytes,
    uint64_t min_inodes, void (*log)(int, const char *), char *err, size_t errlen)
{
	char path[PATH_MAX];
	int i;

	memset(sp, 0, sizeof(*sp));
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
	free(sp->dir);
	sp->dir = NULL;
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

enum q_status
spool_check_space(struct spool *sp)
{
	struct statvfs vfs;

	if (sp->min_free_bytes == 0 && sp->min_free_inodes == 0)
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
	return Q_OK;
}

/* --- the one atomic write -------------------------------------------- */

/*
 * Crash injection for tests/integration/test_crash_points.py: with
 * OTPMAIL_FAULT=<step> in the environment (read once, in spool_init) the
 * process aborts at that step of spool_write_atomic.  Unset: a NULL test.
 */
static void
spool_fault(const char *step)
{
	if (spool_fault_step != NULL && strcmp(spool_fault_step, step) == 0)
		abort();
}

static int
spool_fsync_dir(struct spool *sp, const char *rel)
{
	char path[PATH_MAX];
	char *slash;
	int fd, rc;

	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((slash = strrchr(path, '/')) != NULL)
		*slash = '\0';
	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	rc = fsync(fd);
	close(fd);
	return rc;
}

enum q_status
spool_write_atomic(struct spool *sp, const char *rel, const struct iovec *iov, int iovcnt)
{
	return spool_write_file(sp, rel, iov, iovcnt, 1);
}

/*
 * durable = 0 keeps the atomic rename but skips both fsyncs: for a state
 * that may be lost in an OS crash (a finished message: losing it means one
 * redelivery, which at-least-once allows; a half-written state file fails
 * its CRC and the enqueued envelope is used).
 */
static enum q_status
spool_write_file(struct spool *sp, const char *rel, const struct iovec *iov, int iovcnt,
    int durable)
{
	char tmp[PATH_MAX], dst[PATH_MAX];
	struct iovec cur[8];
	ssize_t w;
	int fd = -1, i, n, saved;
	const char *what = "open";

	if (iovcnt < 1 || iovcnt > 8)
		return Q_BADINPUT;
	snprintf(tmp, sizeof(tmp), "%s/tmp/%ld.%lu", sp->dir, (long)getpid(),
	    atomic_fetch_add(&spool_tmp_seq, 1));
	snprintf(dst, sizeof(dst), "%s/%s", sp->dir, rel);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1)
		goto fail;
	memcpy(cur, iov, (size_t)iovcnt * sizeof(*iov));
	n = iovcnt;
	i = 0;
	what = "write";
	while (i < n) {
		if ((w = writev(fd, cur + i, n - i)) == -1) {
			if (errno == EINTR)
				continue;
			goto fail;
		}
		while (i < n && (size_t)w >= cur[i].iov_len) {
			w -= (ssize_t)cur[i].iov_len;
			i++;
		}
		if (i < n) {
			cur[i].iov_base = (char *)cur[i].iov_base + w;
			cur[i].iov_len -= (size_t)w;
		}
	}
	spool_fault("after_tmp_write");
	what = "fsync";
	if (durable && fsync(fd) == -1)
		goto fail;
	spool_fault("after_fsync");
	what = "close";
	if (close(fd) == -1) {
		fd = -1;
		goto fail;
	}
	fd = -1;
	what = "rename";
	if (rename(tmp, dst) == -1)
		goto fail;
	spool_fault("after_rename");
	what = "fsync dir";
	if (durable && spool_fsync_dir(sp, rel) == -1) {
		/* The file is in place, maybe not durable: report tempfail. */
		saved = errno;
		spool_log(sp, LOG_ERR, "queue: fsync dir of %s: %s", rel, strerror(saved));
		queue_nospace_why = "the spool's file system is full";
		return saved == ENOSPC || saved == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
	}
	spool_fault("after_dir_fsync");
	return Q_OK;
fail:
	saved = errno;
	if (fd != -1)
		close(fd);
	unlink(tmp);
	spool_log(sp, LOG_ERR, "queue: %s %s: %s", what, rel, strerror(saved));
	queue_nospace_why = "the spool's file system is full";
	return saved == ENOSPC || saved == EDQUOT ? Q_NOSPACE : Q_TEMPFAIL;
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
	const char *p = text, *end = text + len, *v, *f[6];
	size_t vl, fl[6], i;
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
		if (spool_fields(v, vl, f, fl, 5) != 5)
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

/* --- message and state files ------------------------------------------ */

enum q_status
spool_store_message(struct spool *sp, const struct q_envelope *env,
    const char *body, size_t len)
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
	spool_path(env->id, 0, rel, sizeof(rel));
	iov[0].iov_base = hdr;
	iov[0].iov_len = (size_t)hl;
	iov[1].iov_base = etext;
	iov[1].iov_len = elen;
	iov[2].iov_base = (void *)body;
	iov[2].iov_len = len;
	iov[3].iov_base = (void *)SPOOL_END;
	iov[3].iov_len = SPOOL_END_LEN;
	st = spool_write_atomic(sp, rel, iov, 4);
	free(etext);
	return st;
}

enum q_status
spool_store_state_text(struct spool *sp, const char *id, const char *etext, size_t elen)
{
	return spool_store_state_file(sp, id, etext, elen, 1);
}

static enum q_status
spool_store_state_file(struct spool *sp, const char *id, const char *etext, size_t elen,
    int durable)
{
	char rel[128], hdr[SPOOL_HDR_MAX];
	struct iovec iov[3];
	int hl;

	hl = snprintf(hdr, sizeof(hdr), SPOOL_ST_MAGIC " %zu %08x\n", elen,
	    (unsigned)spool_crc32(0, etext, elen));
	spool_path(id, 1, rel, sizeof(rel));
	iov[0].iov_base = hdr;
	iov[0].iov_len = (size_t)hl;
	iov[1].iov_base = (void *)etext;
	iov[1].iov_len = elen;
	iov[2].iov_base = (void *)SPOOL_END;
	iov[2].iov_len = SPOOL_END_LEN;
	return spool_write_file(sp, rel, iov, 3, durable);
}

enum q_status
spool_store_state(struct spool *sp, const struct q_envelope *env)
{
	enum q_status st;
	size_t elen;
	char *etext;

	if ((etext = spool_env_format(env, &elen)) == NULL)
		return Q_TEMPFAIL;
	/* Only a finished message's state may be lost to an OS crash. */
	st = spool_store_state_file(sp, env->id, etext, elen, env->finished == 0);
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
 * Reads one file (message file: nnum 2; state file: nnum 1) and parses its
 * envelope; checks the exact size, the CRC of the envelope and the end
 * marker.  body[] gets offset, length and CRC of the body.
 */
static int
spool_load_file(struct spool *sp, const char *id, int state, struct q_envelope *env,
    uint64_t *body, char *why, size_t whylen)
{
	char path[PATH_MAX], rel[128], first[SPOOL_FIRST_READ], endm[SPOOL_END_LEN];
	char *ebuf = NULL;
	uint64_t nums[4], total;
	size_t hl, want, elen;
	struct stat stt;
	int fd, rc = -1, nnum = state ? 1 : 2;

	spool_path(id, state, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(why, whylen, "open: %s", strerror(errno));
		return errno == ENOENT ? 1 : -1;
	}
	if (fstat(fd, &stt) == -1 || !S_ISREG(stt.st_mode)) {
		snprintf(why, whylen, "not a regular file");
		goto done;
	}
	want = (size_t)stt.st_size < sizeof(first) ? (size_t)stt.st_size : sizeof(first);
	if (spool_read_file(fd, 0, first, want) == -1 ||
	    spool_parse_header(first, want, state ? SPOOL_ST_MAGIC : SPOOL_MSG_MAGIC,
	    nnum, nums, &hl) == -1) {
		snprintf(why, whylen, "bad header");
		goto done;
	}
	elen = (size_t)nums[0];
	if (elen > Q_MAX_ENV || (!state && nums[1] > Q_MAX_BODY)) {
		snprintf(why, whylen, "bad lengths");
		goto done;
	}
	total = hl + elen + (state ? 0 : nums[1]) + SPOOL_END_LEN;
	if ((uint64_t)stt.st_size != total) {
		snprintf(why, whylen, "size %lld, header says %llu (truncated?)",
		    (long long)stt.st_size, (unsigned long long)total);
		goto done;
	}
	if (spool_read_file(fd, (off_t)(total - SPOOL_END_LEN), endm, SPOOL_END_LEN) == -1 ||
	    memcmp(endm, SPOOL_END, SPOOL_END_LEN) != 0) {
		snprintf(why, whylen, "no end marker");
		goto done;
	}
	if ((ebuf = malloc(elen + 1)) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto done;
	}
	if (hl + elen <= want)
		memcpy(ebuf, first + hl, elen);
	else if (spool_read_file(fd, (off_t)hl, ebuf, elen) == -1) {
		snprintf(why, whylen, "read: %s", strerror(errno));
		goto done;
	}
	if (spool_crc32(0, ebuf, elen) != (uint32_t)nums[nnum]) {
		snprintf(why, whylen, "envelope checksum mismatch");
		goto done;
	}
	if (spool_env_parse(ebuf, elen, env, why, whylen) == -1)
		goto done;
	if (strcmp(env->id, id) != 0) {
		snprintf(why, whylen, "id mismatch");
		goto fail_env;
	}
	if (!state && env->size != nums[1]) {
		snprintf(why, whylen, "size mismatch");
		goto fail_env;
	}
	if (body != NULL) {
		body[0] = hl + elen;
		body[1] = state ? 0 : nums[1];
		body[2] = state ? 0 : nums[3];
	}
	rc = 0;
	goto done;
fail_env:
	q_envelope_clear(env);
done:
	free(ebuf);
	close(fd);
	return rc;
}

int
spool_load(struct spool *sp, const char *id, struct q_envelope **out,
    char *why, size_t whylen)
{
	struct q_envelope *m = NULL, *s = NULL;
	char swhy[256], rel[128];
	int rc;

	*out = NULL;
	if ((m = calloc(1, sizeof(*m))) == NULL || (s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(why, whylen, "out of memory");
		goto fail;
	}
	if (spool_load_file(sp, id, 0, m, NULL, why, whylen) != 0)
		goto fail;
	rc = spool_load_file(sp, id, 1, s, NULL, swhy, sizeof(swhy));
	if (rc == 0) {
		if (s->size != m->size || s->nrcpt != m->nrcpt || s->created != m->created) {
			snprintf(swhy, sizeof(swhy), "state does not match its message");
			q_envelope_free(s);
			s = NULL;
			rc = -1;
		} else {
			q_envelope_free(m);
			*out = s;
			return 0;
		}
	}
	if (rc == -1) {
		/* A bad state file: keep it for inspection, go back to the
		 * enqueued envelope (at least once beats never). */
		spool_path(id, 1, rel, sizeof(rel));
		spool_quarantine_path(sp, rel, swhy);
	}
	free(s);
	*out = m;
	return 0;
fail:
	free(m);
	free(s);
	return -1;
}

enum q_status
spool_read_body(struct spool *sp, const char *id, char **data, size_t *len)
{
	char path[PATH_MAX], rel[128], why[256];
	struct q_envelope env;
	uint64_t body[3];
	char *buf;
	int fd, rc;

	*data = NULL;
	*len = 0;
	rc = spool_load_file(sp, id, 0, &env, body, why, sizeof(why));
	if (rc == 1)
		return Q_NOTFOUND;
	if (rc == -1)
		goto corrupt;
	q_envelope_clear(&env);
	if ((buf = malloc((size_t)body[1] + 1)) == NULL)
		return Q_TEMPFAIL;
	spool_path(id, 0, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		free(buf);
		return errno == ENOENT ? Q_NOTFOUND : Q_TEMPFAIL;
	}
	rc = spool_read_file(fd, (off_t)body[0], buf, (size_t)body[1]);
	close(fd);
	if (rc == -1) {
		free(buf);
		snprintf(why, sizeof(why), "short body");
		goto corrupt;
	}
	if (spool_crc32(0, buf, (size_t)body[1]) != (uint32_t)body[2]) {
		free(buf);
		snprintf(why, sizeof(why), "body checksum mismatch");
		goto corrupt;
	}
	buf[body[1]] = '\0';
	*data = buf;
	*len = (size_t)body[1];
	return Q_OK;
corrupt:
	spool_quarantine(sp, id, why);
	return Q_NOTFOUND;
}

void
spool_remove(struct spool *sp, const char *id, int sync)
{
	char path[PATH_MAX], rel[128];

	/* Message file first: a crash in between leaves an orphan state
	 * file, which the next scan removes. */
	spool_path(id, 0, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if (unlink(path) == -1 && errno != ENOENT)
		spool_log(sp, LOG_ERR, "queue: unlink %s: %s", rel, strerror(errno));
	spool_path(id, 1, rel, sizeof(rel));
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
	char rel[128], path[PATH_MAX];

	spool_path(id, 0, rel, sizeof(rel));
	spool_quarantine_path(sp, rel, why);
	spool_path(id, 1, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", sp->dir, rel);
	if (access(path, F_OK) == 0)
		spool_quarantine_path(sp, rel, "its message is corrupt");
}

size_t
spool_scan(struct spool *sp, void (*fn)(void *, const char *), void *arg)
{
	char path[PATH_MAX], rel[128], id[QUEUE_ID_LEN + 1];
	struct dirent *de;
	struct stat stt;
	size_t n = 0, nl;
	DIR *dp;
	int d;

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
			snprintf(rel, sizeof(rel), "msg/%02x/%.100s", d, de->d_name);
			if (nl == QUEUE_ID_LEN + 3 && strcmp(de->d_name + QUEUE_ID_LEN, ".st") == 0) {
				memcpy(id, de->d_name, QUEUE_ID_LEN);
				id[QUEUE_ID_LEN] = '\0';
				if (qid_valid(id) && (int)spool_dir_of(id) == d) {
					/* A state file goes with its message; alone it
					 * is the leftover of a delete: remove it. */
					spool_path(id, 0, path, sizeof(path));
					if (fstatat(dirfd(dp), id, &stt, AT_SYMLINK_NOFOLLOW) == -1 &&
					    errno == ENOENT)
						unlinkat(dirfd(dp), de->d_name, 0);
					continue;
				}
			}
			if (nl == QUEUE_ID_LEN && qid_valid(de->d_name) &&
			    (int)spool_dir_of(de->d_name) == d) {
				fn(arg, de->d_name);
				n++;
				continue;
			}
			spool_quarantine_path(sp, rel, "not a spool file name");
		}
		closedir(dp);
	}
	return n;
}
