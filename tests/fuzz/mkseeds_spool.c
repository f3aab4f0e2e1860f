/*
 * mkseeds_spool.c - writes the seed corpora of fuzz_spool_env,
 * fuzz_spool_file and fuzz_segment from real envelopes (spool_env_format,
 * spool_store_message; a spool with segments on for the segment seeds),
 * so seeds follow the on-disk format.
 *   clang -I. -D_GNU_SOURCE tests/fuzz/mkseeds_spool.c queue/[dqs]*.c -lm -o mkseeds
 *   ./mkseeds tests/fuzz/corpus
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/queue_int.h"

static void
put(const char *dir, const char *name, const char *a, size_t al, const char *b, size_t bl)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((f = fopen(path, "wb")) == NULL)
		abort();
	fwrite(a, 1, al, f);
	if (b != NULL)
		fwrite(b, 1, bl, f);
	fclose(f);
}

static char *slurp(const char *, size_t *);

/*
 * The segment seeds: a spool with segments on, messages stored, then the
 * markers each case needs; seg/0000000000000001 is the seed, whole or
 * cut (a torn tail) or with a payload byte flipped (a damaged message).
 */
enum { MK_S = 1, MK_R = 2, MK_V = 4, MK_C = 8 };

static void
mkseg(const char *out, const char *name, int nmsg, int marks, const char *body,
    struct q_rcpt *r, long cut, long flip)
{
	char tmpl[] = "/tmp/mkseeds-seg-XXXXXX", err[256], path[PATH_MAX], dir[PATH_MAX];
	struct q_envelope e[4];
	struct spool sp;
	struct stat st;
	size_t l, prev = 0;
	char *t;
	int i;

	if (mkdtemp(tmpl) == NULL || nmsg > 4 ||
	    spool_init(&sp, tmpl, 1, 0, 0, NULL, err, sizeof(err)) == -1)
		abort();
	snprintf(path, sizeof(path), "%s/seg/0000000000000001", tmpl);
	for (i = 0; i < nmsg; i++) {
		memset(&e[i], 0, sizeof(e[i]));
		snprintf(e[i].id, sizeof(e[i].id), "00000000000000%02x0000beef", i + 1);
		e[i].klass = i == 0 ? Q_CLASS_OTP : Q_CLASS_DEFAULT;
		e[i].sender = "sender@example.org";
		e[i].nrcpt = (size_t)(i % 3) + 1;
		e[i].rcpts = r;
		e[i].created = 1790000000;
		e[i].expires = 1790000300;
		e[i].size = strlen(body) - (size_t)i;
		e[i].tag = i == 0 ? "otp" : NULL;
		e[i].client_uid = 1000;
		prev = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
		if (spool_store_message(&sp, &e[i], body, e[i].size, NULL, NULL) != Q_OK)
			abort();
	}
	/* S: a finished state (not synced, stays in the segment); V: a
	 * durable one (the message moves to its file); R: purged; C:
	 * quarantined */
	if ((marks & MK_S) && nmsg > 0) {
		prev = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
		e[0].finished = 1790000100;
		e[0].attempts = 1;
		if (spool_store_state(&sp, &e[0]) != Q_OK)
			abort();
	}
	if ((marks & MK_V) && nmsg > 1) {
		e[1].attempts = 1;
		e[1].next_attempt = 1790000200;
		if (spool_store_state(&sp, &e[1]) != Q_OK)
			abort();
	}
	if ((marks & MK_R) && nmsg > 2)
		spool_remove(&sp, e[2].id, 0);
	if ((marks & MK_C) && nmsg > 3)
		spool_quarantine(&sp, e[3].id, "a seed");
	t = slurp(path, &l);
	/* cut: bytes off the end, or (-1) the last record cut in its header;
	 * flip: an offset, or in the last record's payload (-2) or its
	 * header (-3: garbage) */
	if (cut > 0 && (size_t)cut < l)
		l -= (size_t)cut;
	else if (cut == -1 && prev + 30 < l)
		l = prev + 30;
	if (flip == -2)
		flip = (long)prev + 80;
	else if (flip == -3)
		flip = (long)prev + 10;
	if (flip >= 0 && (size_t)flip < l)
		t[flip] ^= 0x20;
	snprintf(dir, sizeof(dir), "%s/segment", out);
	put(dir, name, t, l, NULL, 0);
	free(t);
	spool_free(&sp);
	snprintf(path, sizeof(path), "rm -rf %s", tmpl);
	if (system(path) != 0)
		abort();
}

static char *
slurp(const char *path, size_t *len)
{
	char *buf = malloc(1 << 20);
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd == -1 || buf == NULL)
		abort();
	n = read(fd, buf, 1 << 20);
	close(fd);
	*len = n > 0 ? (size_t)n : 0;
	return buf;
}

int
main(int argc, char **argv)
{
	struct q_rcpt r[3] = {
		{ "bob@example.org", Q_RCPT_PENDING, 0, 0, NULL },
		{ "carol@example.net", Q_RCPT_DEFERRED, 2, 1790000000, "451 4.7.1 try later" },
		{ "dave@example.com", Q_RCPT_FAILED, 1, 1790000100, "550 5.1.1 no such user" },
	};
	struct q_envelope e;
	struct spool sp;
	char dir[PATH_MAX], tmpl[] = "/tmp/mkseeds-XXXXXX", err[256], rel[128], path[PATH_MAX];
	char *t, *m, *st, name[64];
	size_t l, ml, sl;
	static const char body[] = "From: a@example.org\r\nTo: bob@example.org\r\n"
	    "Subject: hi\r\n\r\nhello\r\n";
	int i;

	if (argc != 2 || mkdtemp(tmpl) == NULL)
		return 2;
	if (spool_init(&sp, tmpl, 0, 0, 0, NULL, err, sizeof(err)) == -1)
		return 1;
	for (i = 0; i < 3; i++) {
		memset(&e, 0, sizeof(e));
		snprintf(e.id, sizeof(e.id), "0000000000000001deadbeef");
		e.klass = i == 0 ? Q_CLASS_OTP : Q_CLASS_DEFAULT;
		e.sender = i == 2 ? "" : "sender@example.org";
		e.nrcpt = (size_t)i + 1;
		e.rcpts = r;
		e.created = 1790000000;
		e.expires = 1790000300;
		e.next_attempt = 1790000030;
		e.attempts = i;
		e.held = i == 1;
		e.flags = i == 2 ? Q_F_BOUNCE : Q_F_8BIT;
		e.size = sizeof(body) - 1;
		e.last_error = i ? "451 4.7.1 try later" : NULL;
		e.tag = i == 0 ? "otp" : NULL;
		e.client_uid = 1000;
		t = spool_env_format(&e, &l);
		snprintf(dir, sizeof(dir), "%s/spool_env", argv[1]);
		snprintf(name, sizeof(name), "seed%02d", i);
		put(dir, name, t, l, NULL, 0);
		free(t);
		if (spool_store_message(&sp, &e, body, sizeof(body) - 1, NULL, NULL) != Q_OK)
			return 1;
		spool_path(e.id, rel, sizeof(rel));
		snprintf(path, sizeof(path), "%s/%s", tmpl, rel);
		m = slurp(path, &ml);
		e.attempts++;
		if (spool_store_state(&sp, &e) != Q_OK)
			return 1;
		st = slurp(path, &sl);
		snprintf(dir, sizeof(dir), "%s/spool_file", argv[1]);
		/* the first byte is not part of the file (kept for old seeds):
		 * the message part alone, then with a state record appended */
		snprintf(name, sizeof(name), "msg%02d", i);
		put(dir, name, "\0", 1, m, ml);
		snprintf(name, sizeof(name), "msgst%02d", i);
		put(dir, name, "\1", 1, st, sl);
		free(m);
		free(st);
		spool_remove(&sp, e.id, 0);
	}
	spool_free(&sp);
	snprintf(path, sizeof(path), "rm -rf %s", tmpl);
	if (system(path) != 0)
		return 1;
	/* segments: one message, several, with each marker, all of them */
	mkseg(argv[1], "seg-one", 1, 0, body, r, 0, -1);
	mkseg(argv[1], "seg-three", 3, 0, body, r, 0, -1);
	mkseg(argv[1], "seg-state", 2, MK_S, body, r, 0, -1);
	mkseg(argv[1], "seg-moved", 2, MK_V, body, r, 0, -1);
	mkseg(argv[1], "seg-removed", 3, MK_R, body, r, 0, -1);
	mkseg(argv[1], "seg-cancel", 4, MK_C, body, r, 0, -1);
	mkseg(argv[1], "seg-all", 4, MK_S | MK_V | MK_R | MK_C, body, r, 0, -1);
	/* a torn tail: the last record cut in its payload, in its header */
	mkseg(argv[1], "seg-torn", 3, 0, body, r, 20, -1);
	mkseg(argv[1], "seg-torn-hdr", 3, MK_S, body, r, -1, -1);
	/* a payload byte flipped: in the first message (damaged, quarantined),
	 * in the last record (a torn tail) */
	mkseg(argv[1], "seg-flip", 3, 0, body, r, 0, 120);
	mkseg(argv[1], "seg-flip-last", 2, 0, body, r, 0, -2);
	/* garbage: a header that does not parse, its line whole */
	mkseg(argv[1], "seg-garbage", 3, MK_S, body, r, 0, -3);
	return 0;
}
