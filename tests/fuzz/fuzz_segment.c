/*
 * fuzz_segment.c - libFuzzer target for segment files read back from disk
 * (queue/segment.c's segs_scan under spool_scan, as the daemon's start runs
 * it: record headers, CRCs, torn tails, garbage, damaged messages, S/R/V/C
 * markers; then spool_load and spool_read_body of each message listed).
 * The input becomes seg/0000000000000001 in a private spool opened with
 * segments on.  Oracles, beyond no crash, leak or UB: the ids listed are
 * those an independent walk of the input leaves live; a message that loads
 * has its id and a body of exactly env->size bytes; a damaged message is
 * quarantined (its payload in corrupt/<id>), never listed or loaded;
 * garbage leaves a copy of the segment in corrupt/.  Each record carries
 * two CRC-32s, which random mutation almost never gets right: a custom
 * mutator rewrites most mutants' headers with true lengths and CRCs (see
 * fz_fix), so the records' ids, kinds and order get fuzzed too.  The input
 * is still the file as it is, reproducers included.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_int.h"

#define FZ_SEG		"seg/0000000000000001"
#define FZ_MAXIDS	512	/* more records than an 8 KB input holds */

/* What the walk of the input expects of one id. */
struct fz_id {
	char		 id[QUEUE_ID_LEN + 1];
	int		 live;		/* its last M record stands */
	int		 damaged;	/* ... and failed its CRC */
	size_t		 off, len;	/* that record's payload */
	int		 listed;
};

struct fz_model {
	struct fz_id	 v[FZ_MAXIDS];
	size_t		 n;
	int		 garbage;	/* a bad header line: a copy in corrupt/ */
};

static char fz_dir[PATH_MAX];

int	LLVMFuzzerInitialize(int *argc, char ***argv);
int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t	LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max);
size_t	LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max, unsigned seed);

static size_t	fz_fix(uint8_t *, size_t, size_t max, unsigned seed);
static void	fz_empty(const char *sub);
static void	fz_rmdir(void);
static void	fz_walk(const char *, size_t, struct fz_model *);
static struct fz_id *fz_find(struct fz_model *, const char *id, int add);
static void	fz_listed(void *, const char *id);
static int	fz_hdr(const char *, size_t, char *id, char *kind, size_t *len,
		    uint32_t *crc, size_t *hl);
static int	fz_file_is(const char *rel, const char *data, size_t len);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char tmpl[] = "/dev/shm/fuzz-seg-XXXXXX", tmpl2[] = "/tmp/fuzz-seg-XXXXXX";
	char *dir;

	(void)argc;
	(void)argv;
	if ((dir = mkdtemp(tmpl)) == NULL && (dir = mkdtemp(tmpl2)) == NULL)
		abort();
	snprintf(fz_dir, sizeof(fz_dir), "%s", dir);
	atexit(fz_rmdir);
	return 0;
}

static int
fz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void
fz_rmdir(void)
{
	nftw(fz_dir, fz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

/* Every file of <spool>/sub goes. */
static void
fz_empty(const char *sub)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *dp;

	snprintf(path, sizeof(path), "%s/%s", fz_dir, sub);
	if ((dp = opendir(path)) == NULL)
		return;
	while ((de = readdir(dp)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/%s", fz_dir, sub, de->d_name);
		unlink(path);
	}
	closedir(dp);
}

static struct fz_id *
fz_find(struct fz_model *m, const char *id, int add)
{
	size_t i;

	for (i = 0; i < m->n; i++)
		if (strcmp(m->v[i].id, id) == 0)
			return &m->v[i];
	if (!add || m->n == FZ_MAXIDS) {
		/* listed, but no record of the input names it; or more ids
		 * than records of 50 bytes fit in the input */
		fprintf(stderr, "fuzz_segment: %s %s\n", id, add ? "one id too many" :
		    "listed, not in the segment");
		abort();
	}
	memset(&m->v[m->n], 0, sizeof(m->v[0]));
	memcpy(m->v[m->n].id, id, QUEUE_ID_LEN + 1);
	return &m->v[m->n++];
}

static int
fz_lowhex(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

/*
 * A record header as segment.c's top describes it, written from that
 * description, not from its parser: "OTPG1 <24 hex> <kind> <len> <8 hex
 * crc> <8 hex crc of what precedes it>\n", canonical (lower-case hex, no
 * leading zero), within the first 96 bytes.  0, or -1.
 */
static int
fz_hdr(const char *p, size_t n, char *id, char *kind, size_t *len, uint32_t *crc,
    size_t *hl)
{
	const char *nl = memchr(p, '\n', n < 96 ? n : 96), *q;
	unsigned long long l = 0;
	size_t ll, i;
	char hex[9];

	if (nl == NULL)
		return -1;
	ll = (size_t)(nl - p);
	/* "OTPG1 " 24 " K " digits " " 8 " " 8 */
	if (ll < 6 + 24 + 3 + 1 + 1 + 8 + 1 + 8 || memcmp(p, "OTPG1 ", 6) != 0 ||
	    !fz_lowhex(p + 6, 24) || p[30] != ' ' || p[32] != ' ')
		return -1;
	if (strchr("MSRVC", p[31]) == NULL || p[31] == '\0')
		return -1;
	q = p + 33;
	for (i = 0; q + i < nl && q[i] >= '0' && q[i] <= '9'; i++) {
		if (l > (ULLONG_MAX - 9) / 10)
			return -1;
		l = l * 10 + (unsigned long long)(q[i] - '0');
	}
	if (i == 0 || (i > 1 && q[0] == '0') || l > Q_MAX_ENV + Q_MAX_BODY + 4096)
		return -1;
	q += i;
	if (nl - q != 18 || q[0] != ' ' || q[9] != ' ' || !fz_lowhex(q + 1, 8) ||
	    !fz_lowhex(q + 10, 8))
		return -1;
	memcpy(hex, q + 10, 8);
	hex[8] = '\0';
	if (spool_crc32(0, p, (size_t)(q + 9 - p)) != (uint32_t)strtoul(hex, NULL, 16))
		return -1;
	memcpy(hex, q + 1, 8);
	*crc = (uint32_t)strtoul(hex, NULL, 16);
	memcpy(id, p + 6, 24);
	id[24] = '\0';
	*kind = p[31];
	*len = (size_t)l;
	*hl = ll + 1;
	return 0;
}

/*
 * What the scan must make of the segment: the first header that does not
 * parse ends it (garbage if its line is whole, else a torn tail), as does
 * a record running past the end or a bad last record (torn); a bad record
 * before the end is a damaged message (M) or nothing; the later M of an id
 * wins; R, V and C take it out.
 */
static void
fz_walk(const char *d, size_t size, struct fz_model *m)
{
	char id[QUEUE_ID_LEN + 1], kind;
	size_t off = 0, len, hl, want;
	uint32_t crc;
	struct fz_id *e;
	int bad;

	memset(m, 0, sizeof(*m));
	while (off < size) {
		want = size - off < 96 ? size - off : 96;
		if (fz_hdr(d + off, want, id, &kind, &len, &crc, &hl) == -1) {
			m->garbage = memchr(d + off, '\n', want) != NULL;
			break;
		}
		if (len > size - off - hl || size - off - hl - len < 4)
			break;
		bad = memcmp(d + off + hl + len, "END\n", 4) != 0 ||
		    spool_crc32(0, d + off + hl, len) != crc;
		if (bad && off + hl + len + 4 == size)
			break;
		if (kind == 'M' || (!bad && kind != 'S')) {
			e = fz_find(m, id, 1);
			e->live = kind == 'M';
			e->damaged = bad;
			e->off = off + hl;
			e->len = len;
		}
		off += hl + len + 4;
	}
}

/*
 * Rewrites the records' headers the way a writer would: each line that
 * starts "OTPG1 " keeps its id and kind, gets the length of its payload
 * (the stated one if "END\n" follows it, else up to the next "END\n")
 * and both CRCs; one record in eight keeps a wrong payload CRC (a damaged
 * message, or a torn tail).  The first line that is not a header, and what
 * follows it, stay as they are.  The new size, or size if it would not fit.
 */
static size_t
fz_fix(uint8_t *data, size_t size, size_t max, unsigned seed)
{
	static char out[65536];
	const char *d = (const char *)data, *nl, *f[4], *end;
	size_t off = 0, o = 0, fl[4], plen, stated, hl, i, k;
	char hdr[160];
	uint32_t crc;
	int n;

	if (max > sizeof(out))
		max = sizeof(out);
	while (off < size) {
		nl = memchr(d + off, '\n', size - off < 96 ? size - off : 96);
		if (nl == NULL || size - off < 6 || memcmp(d + off, "OTPG1 ", 6) != 0)
			break;
		/* the fields: magic, id, kind, length (the rest is rewritten) */
		for (k = 0, i = off; k < 4 && d + i < nl; k++) {
			f[k] = d + i;
			while (d + i < nl && d[i] != ' ')
				i++;
			fl[k] = (size_t)(d + i - f[k]);
			while (d + i < nl && d[i] == ' ')
				i++;
		}
		if (k < 4 || fl[1] > 32 || fl[2] == 0 || fl[3] > 20)
			break;
		hl = (size_t)(nl - d) + 1 - off;
		for (stated = 0, i = 0; i < fl[3] && f[3][i] >= '0' && f[3][i] <= '9'; i++)
			stated = stated * 10 + (size_t)(f[3][i] - '0');
		off += hl;
		if (i == fl[3] && stated <= size - off && size - off - stated >= 4 &&
		    memcmp(d + off + stated, "END\n", 4) == 0)
			plen = stated;
		else if ((end = memmem(d + off, size - off, "END\n", 4)) != NULL)
			plen = (size_t)(end - (d + off));
		else
			plen = size - off;
		crc = spool_crc32(0, d + off, plen);
		if ((seed >> (o % 16)) % 8 == 0)
			crc ^= 1;
		n = snprintf(hdr, sizeof(hdr), "OTPG1 %.*s %c %zu %08x", (int)fl[1], f[1], *f[2],
		    plen, (unsigned)crc);
		n += snprintf(hdr + n, sizeof(hdr) - (size_t)n, " %08x\n",
		    (unsigned)spool_crc32(0, hdr, (size_t)n));
		if (o + (size_t)n + plen + 4 > max)
			return size;
		memcpy(out + o, hdr, (size_t)n);
		memcpy(out + o + n, d + off, plen);
		o += (size_t)n + plen;
		off += plen;
		if (off < size) {
			memcpy(out + o, "END\n", 4);
			o += 4;
			off += 4;
		}
	}
	if (off < size) {
		if (o + size - off > max)
			return size;
		memcpy(out + o, d + off, size - off);
		o += size - off;
	}
	memcpy(data, out, o);
	return o;
}

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max, unsigned seed)
{
	size = LLVMFuzzerMutate(data, size, max);
	/* a quarter of the mutants stay raw: bad headers, torn tails */
	if (seed % 4 != 0)
		size = fz_fix(data, size, max, seed);
	return size;
}

/* spool_scan's callback: the id must be one the walk left live. */
static void
fz_listed(void *arg, const char *id)
{
	struct fz_model *m = arg;
	struct fz_id *e = fz_find(m, id, 0);

	if (!e->live || e->damaged || e->listed) {
		fprintf(stderr, "fuzz_segment: %s listed (live %d, damaged %d, listed %d)\n",
		    id, e->live, e->damaged, e->listed);
		abort();
	}
	e->listed = 1;
}

/* 1 if <spool>/rel holds exactly data. */
static int
fz_file_is(const char *rel, const char *data, size_t len)
{
	char path[PATH_MAX], *buf;
	struct stat st;
	int fd, ok;

	snprintf(path, sizeof(path), "%s/%s", fz_dir, rel);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1)
		return 0;
	if (fstat(fd, &st) == -1 || (size_t)st.st_size != len ||
	    (buf = malloc(len + 1)) == NULL) {
		close(fd);
		return 0;
	}
	ok = read(fd, buf, len) == (ssize_t)len && memcmp(buf, data, len) == 0;
	free(buf);
	close(fd);
	return ok;
}

/* A copy of the segment in corrupt/ (segment-<no>-<time>)? */
static int
fz_seg_copied(void)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *dp;
	int found = 0;

	snprintf(path, sizeof(path), "%s/corrupt", fz_dir);
	if ((dp = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(dp)) != NULL)
		if (strncmp(de->d_name, "segment-0000000000000001-", 25) == 0)
			found = 1;
	closedir(dp);
	return found;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fz_model m;
	const char *d = (const char *)data;
	char rel[64], why[256], err[256], *body;
	struct q_envelope *env;
	struct spool sp;
	size_t i, blen;
	enum q_status st;
	int fd;

	if (spool_init(&sp, fz_dir, 1, 0, 0, NULL, err, sizeof(err)) == -1) {
		fprintf(stderr, "spool_init: %s\n", err);
		abort();
	}
	snprintf(rel, sizeof(rel), "%s/" FZ_SEG, fz_dir);
	if ((fd = open(rel, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == -1 ||
	    (size > 0 && write(fd, d, size) != (ssize_t)size))
		abort();
	close(fd);
	fz_walk(d, size, &m);

	/* the daemon's start: the names, then each message loaded */
	spool_scan(&sp, fz_listed, &m);
	for (i = 0; i < m.n; i++) {
		struct fz_id *e = &m.v[i];

		if (e->live && !e->damaged && !e->listed) {
			fprintf(stderr, "fuzz_segment: %s live but not listed\n", e->id);
			abort();
		}
		if (e->live && e->damaged) {
			/* quarantined by the scan: its payload in corrupt/<id> */
			snprintf(rel, sizeof(rel), "corrupt/%s", e->id);
			if (!fz_file_is(rel, d + e->off, e->len)) {
				fprintf(stderr, "fuzz_segment: damaged %s not in %s\n", e->id,
				    rel);
				abort();
			}
		}
		if (!e->listed)
			continue;
		why[0] = '\0';
		if (spool_load(&sp, e->id, &env, why, sizeof(why)) == -1) {
			if (why[0] == '\0' || env != NULL)
				abort();
			/* its payload is there to be read: the scan kept its
			 * segment (refused for what it says, not for a read) */
			if (strncmp(why, "segment read", 12) == 0) {
				fprintf(stderr, "fuzz_segment: %s listed, unreadable: %s\n",
				    e->id, why);
				abort();
			}
			spool_quarantine(&sp, e->id, why);	/* as the daemon does */
			continue;
		}
		if (env == NULL || strcmp(env->id, e->id) != 0 || env->nrcpt > Q_MAX_RCPT)
			abort();
		body = NULL;
		blen = 0;
		st = spool_read_body(&sp, e->id, &body, &blen);
		if (st == Q_OK && (body == NULL || blen != env->size)) {
			fprintf(stderr, "fuzz_segment: %s body %zu bytes, envelope %zu\n",
			    e->id, blen, env->size);
			abort();
		}
		if (st != Q_OK && st != Q_NOTFOUND && st != Q_TEMPFAIL)
			abort();
		free(body);
		q_envelope_free(env);
	}
	if (m.garbage && !fz_seg_copied()) {
		fprintf(stderr, "fuzz_segment: garbage, and no copy of the segment\n");
		abort();
	}
	spool_free(&sp);
	fz_empty("seg");
	fz_empty("corrupt");
	fz_empty("tmp");
	return 0;
}
