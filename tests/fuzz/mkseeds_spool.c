/*
 * mkseeds_spool.c - writes the seed corpora of fuzz_spool_env and
 * fuzz_spool_file from real envelopes (spool_env_format,
 * spool_store_message), so seeds follow the on-disk format.
 *   clang -I. -D_GNU_SOURCE tests/fuzz/mkseeds_spool.c queue/[dqs]*.c -lm -o mkseeds
 *   ./mkseeds tests/fuzz/corpus
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
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
	return 0;
}
