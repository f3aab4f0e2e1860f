/*
 * sandbox.c - the sandbox Maildir (see sandbox.h).  Delivery writes each
 * message once, durably, with the envelope in Return-Path/Delivered-To
 * lines; the reader side treats every file as untrusted: names are checked,
 * sizes bounded, headers parsed from the first SANDBOX_HEAD_MAX bytes only.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <openssl/evp.h>

#include "agent/delivery/sandbox.h"

#define SANDBOX_HEAD_MAX	(64 * 1024)

static int	 sandbox_mkdirs(const char *maildir, char *err, size_t errlen);
static int	 sandbox_write_all(int fd, const char *p, size_t len);
static int	 sandbox_fsync_dir(const char *path);
static void	 sandbox_headers(const char *buf, size_t len, struct sandbox_entry *);
static void	 sandbox_decode(const char *in, char *out, size_t outlen);
static int	 sandbox_cmp(const void *, const void *);

static pthread_mutex_t sandbox_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned sandbox_seq;

void
sandbox_dir(const struct config *cfg, const char *state_dir, char *out, size_t len)
{
	if (cfg->sandbox_maildir != NULL && cfg->sandbox_maildir[0] != '\0')
		snprintf(out, len, "%s", cfg->sandbox_maildir);
	else
		snprintf(out, len, "%s/sandbox", state_dir);
}

int
sandbox_name_ok(const char *name)
{
	const char *p;

	if (name == NULL || name[0] == '\0' || name[0] == '.' ||
	    strlen(name) > SANDBOX_NAME_MAX)
		return 0;
	for (p = name; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && strchr("._,:=-", *p) == NULL)
			return 0;
	return 1;
}

static int
sandbox_mkdirs(const char *maildir, char *err, size_t errlen)
{
	static const char *sub[] = { "", "/tmp", "/new", "/cur" };
	char path[4096];
	size_t i;

	for (i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		snprintf(path, sizeof(path), "%s%s", maildir, sub[i]);
		if (mkdir(path, 0750) == -1 && errno != EEXIST) {
			snprintf(err, errlen, "sandbox: mkdir %s: %s", path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

static int
sandbox_write_all(int fd, const char *p, size_t len)
{
	ssize_t n;

	while (len > 0) {
		n = write(fd, p, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static int
sandbox_fsync_dir(const char *path)
{
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	r = fsync(fd);
	close(fd);
	return r;
}

int
sandbox_deliver(const char *maildir, const char *id, const char *sender,
    const char *const *rcpts, size_t nrcpt, const char *data, size_t len,
    char *name, size_t namelen, char *err, size_t errlen)
{
	char tmp[4096], dst[4096], dir[4096], fname[SANDBOX_NAME_MAX + 1];
	const char *nl, *eol;
	struct timeval tv;
	unsigned seq;
	size_t i;
	int fd = -1;
	FILE *hdr = NULL;
	char *hbuf = NULL;
	size_t hlen = 0;

	if (sandbox_mkdirs(maildir, err, errlen) == -1)
		return -1;
	pthread_mutex_lock(&sandbox_mu);
	seq = ++sandbox_seq;
	pthread_mutex_unlock(&sandbox_mu);
	gettimeofday(&tv, NULL);
	snprintf(fname, sizeof(fname), "%lld.M%06ldP%dQ%u_%.40s.otpmail",
	    (long long)tv.tv_sec, (long)tv.tv_usec, (int)getpid(), seq, id);
	if (!sandbox_name_ok(fname)) {
		snprintf(err, errlen, "sandbox: bad queue id");
		return -1;
	}
	snprintf(tmp, sizeof(tmp), "%s/tmp/%s", maildir, fname);
	snprintf(dst, sizeof(dst), "%s/new/%s", maildir, fname);
	snprintf(dir, sizeof(dir), "%s/new", maildir);

	/* The envelope, in the message's own line ending. */
	nl = memchr(data, '\n', len);
	eol = nl != NULL && nl > data && nl[-1] == '\r' ? "\r\n" : "\n";
	if ((hdr = open_memstream(&hbuf, &hlen)) == NULL) {
		snprintf(err, errlen, "sandbox: out of memory");
		return -1;
	}
	fprintf(hdr, "Return-Path: <%s>%s", sender, eol);
	for (i = 0; i < nrcpt; i++)
		fprintf(hdr, "Delivered-To: %s%s", rcpts[i], eol);
	if (fclose(hdr) != 0) {
		free(hbuf);
		snprintf(err, errlen, "sandbox: out of memory");
		return -1;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (fd == -1) {
		snprintf(err, errlen, "sandbox: open %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (sandbox_write_all(fd, hbuf, hlen) == -1 ||
	    sandbox_write_all(fd, data, len) == -1) {
		snprintf(err, errlen, "sandbox: write %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (fsync(fd) == -1) {
		snprintf(err, errlen, "sandbox: fsync %s: %s", tmp, strerror(errno));
		goto fail;
	}
	if (close(fd) == -1) {
		fd = -1;
		snprintf(err, errlen, "sandbox: close %s: %s", tmp, strerror(errno));
		goto fail;
	}
	fd = -1;
	if (rename(tmp, dst) == -1) {
		snprintf(err, errlen, "sandbox: rename into new/: %s", strerror(errno));
		goto fail;
	}
	if (sandbox_fsync_dir(dir) == -1) {
		snprintf(err, errlen, "sandbox: fsync %s: %s", dir, strerror(errno));
		free(hbuf);
		return -1;	/* the file is there; a retry makes a duplicate at worst */
	}
	free(hbuf);
	if (name != NULL)
		snprintf(name, namelen, "%s", fname);
	return 0;
fail:
	if (fd != -1)
		close(fd);
	unlink(tmp);
	free(hbuf);
	return -1;
}

/* Decodes RFC 2047 encoded words (B and Q); other bytes pass through. */
static void
sandbox_decode(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	int last_was_word = 0;

	while (*in != '\0' && o + 1 < outlen) {
		const char *q1, *q2, *end;

		if (in[0] == '=' && in[1] == '?' &&
		    (q1 = strchr(in + 2, '?')) != NULL && q1[1] != '\0' && q1[2] == '?' &&
		    (end = strstr(q1 + 3, "?=")) != NULL) {
			char enc = (char)toupper((unsigned char)q1[1]);
			const char *t = q1 + 3;
			size_t tl = end - t;

			q2 = end + 2;
			if (enc == 'B' && tl < 4096) {
				unsigned char buf[3072 + 4];
				int n = EVP_DecodeBlock(buf, (const unsigned char *)t, (int)tl);

				if (n >= 0) {
					while (tl > 0 && t[tl - 1] == '=' && n > 0) {
						tl--;
						n--;
					}
					for (int k = 0; k < n && o + 1 < outlen; k++)
						out[o++] = (char)buf[k];
				}
			} else if (enc == 'Q') {
				for (; t < end && o + 1 < outlen; t++) {
					if (*t == '_')
						out[o++] = ' ';
					else if (*t == '=' && t + 2 < end + 1 &&
					    isxdigit((unsigned char)t[1]) &&
					    isxdigit((unsigned char)t[2])) {
						char hx[3] = { t[1], t[2], 0 };
						out[o++] = (char)strtol(hx, NULL, 16);
						t += 2;
					} else
						out[o++] = *t;
				}
			}
			in = q2;
			last_was_word = 1;
			continue;
		}
		/* Whitespace between two encoded words is dropped (RFC 2047 6.2). */
		if (last_was_word && (*in == ' ' || *in == '\t')) {
			const char *w = in;

			while (*w == ' ' || *w == '\t')
				w++;
			if (w[0] == '=' && w[1] == '?') {
				in = w;
				continue;
			}
		}
		last_was_word = 0;
		out[o++] = *in++;
	}
	out[o] = '\0';
}

static void
sandbox_headers(const char *buf, size_t len, struct sandbox_entry *e)
{
	char line[2048], *dst;
	size_t i = 0, l;

	while (i < len) {
		/* One unfolded header field. */
		l = 0;
		if (buf[i] == '\r' || buf[i] == '\n')
			break;			/* end of the header */
		for (;;) {
			if (i >= len)
				break;
			if (buf[i] == '\n') {
				i++;
				if (i < len && (buf[i] == ' ' || buf[i] == '\t'))
					continue;	/* folded */
				break;
			}
			if (buf[i] != '\r' && l + 1 < sizeof(line))
				line[l++] = (unsigned char)buf[i] < ' ' ? ' ' : buf[i];
			i++;
		}
		line[l] = '\0';
		dst = NULL;
		if (strncasecmp(line, "From:", 5) == 0)
			dst = e->from;
		else if (strncasecmp(line, "To:", 3) == 0)
			dst = e->to;
		else if (strncasecmp(line, "Subject:", 8) == 0)
			dst = e->subject;
		else if (strncasecmp(line, "Date:", 5) == 0)
			dst = e->date;
		if (dst != NULL && dst[0] == '\0') {
			char *v = strchr(line, ':') + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			sandbox_decode(v, dst, SANDBOX_FIELD_MAX);
		}
	}
}

static int
sandbox_cmp(const void *a, const void *b)
{
	const struct sandbox_entry *x = a, *y = b;

	if (x->mtime != y->mtime)
		return x->mtime < y->mtime ? 1 : -1;
	return strcmp(y->file, x->file);	/* names start with the time */
}

int
sandbox_list(const char *maildir, size_t max, struct sandbox_entry **out,
    size_t *n, char *err, size_t errlen)
{
	static const char *sub[] = { "new", "cur" };
	struct sandbox_entry *v = NULL, *nv;
	size_t cnt = 0, cap = 0, k;
	char path[4096], *buf = NULL;
	struct dirent *de;
	struct stat st;
	DIR *dir;
	ssize_t r;
	int fd;

	*out = NULL;
	*n = 0;
	if ((buf = malloc(SANDBOX_HEAD_MAX)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (k = 0; k < 2; k++) {
		snprintf(path, sizeof(path), "%s/%s", maildir, sub[k]);
		if ((dir = opendir(path)) == NULL) {
			if (errno == ENOENT)
				continue;
			snprintf(err, errlen, "opendir %s: %s", path, strerror(errno));
			goto fail;
		}
		while ((de = readdir(dir)) != NULL) {
			if (!sandbox_name_ok(de->d_name))
				continue;
			snprintf(path, sizeof(path), "%s/%s/%s", maildir, sub[k], de->d_name);
			if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1)
				continue;
			if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
				close(fd);
				continue;
			}
			r = read(fd, buf, SANDBOX_HEAD_MAX);
			close(fd);
			if (r < 0)
				continue;
			if (cnt == cap) {
				cap = cap ? cap * 2 : 64;
				if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
					closedir(dir);
					snprintf(err, errlen, "out of memory");
					goto fail;
				}
				v = nv;
			}
			memset(&v[cnt], 0, sizeof(v[cnt]));
			snprintf(v[cnt].file, sizeof(v[cnt].file), "%.200s", de->d_name);
			v[cnt].size = (size_t)st.st_size;
			v[cnt].mtime = st.st_mtime;
			sandbox_headers(buf, (size_t)r, &v[cnt]);
			cnt++;
		}
		closedir(dir);
	}
	free(buf);
	if (cnt > 0)
		qsort(v, cnt, sizeof(*v), sandbox_cmp);
	if (cnt > max)
		cnt = max;
	*out = v;
	*n = cnt;
	return 0;
fail:
	free(buf);
	free(v);
	return -1;
}

int
sandbox_read(const char *maildir, const char *file, size_t maxlen,
    char **data, size_t *len, char *name, size_t namelen, char *err, size_t errlen)
{
	static const char *sub[] = { "new", "cur" };
	struct sandbox_entry *v = NULL;
	char path[4096], *buf;
	struct stat st;
	size_t n, got = 0;
	ssize_t r;
	int fd = -1, k;

	*data = NULL;
	*len = 0;
	if (file == NULL) {
		if (sandbox_list(maildir, 1, &v, &n, err, errlen) == -1)
			return -1;
		if (n == 0) {
			free(v);
			snprintf(err, errlen, "the sandbox is empty");
			return 1;
		}
		snprintf(name, namelen, "%s", v[0].file);
		free(v);
		file = name;
	} else {
		if (!sandbox_name_ok(file)) {
			snprintf(err, errlen, "not a sandbox message name");
			return -1;
		}
		snprintf(name, namelen, "%s", file);
	}
	for (k = 0; k < 2 && fd == -1; k++) {
		snprintf(path, sizeof(path), "%s/%s/%s", maildir, sub[k], file);
		fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	}
	if (fd == -1) {
		snprintf(err, errlen, "no sandbox message %s", file);
		return 1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		close(fd);
		snprintf(err, errlen, "not a regular file");
		return -1;
	}
	n = (size_t)st.st_size < maxlen ? (size_t)st.st_size : maxlen;
	if ((buf = malloc(n + 1)) == NULL) {
		close(fd);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	while (got < n) {
		r = read(fd, buf + got, n - got);
		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += r;
	}
	close(fd);
	buf[got] = '\0';
	*data = buf;
	*len = got;
	return 0;
}
