/*
 * test_spool.c - the on-disk queue: write/read/update round trips, a file
 * truncated at every byte offset is quarantined and never loaded, garbage
 * and temporary files, a corrupt body, the free-space floor, ids, a failed
 * shared directory fsync (every thread of its round refused, nothing left).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "tests/unit/tap.h"

static char	 tdir[256];
static int	 nlogs;

static void
tlog(int prio, const char *line)
{
	(void)prio;
	nlogs++;
	if (getenv("TEST_VERBOSE"))
		printf("# log: %s\n", line);
}

static struct queue *
topen(uint64_t min_free)
{
	struct queue_params p;
	char err[256];
	struct queue *q;

	memset(&p, 0, sizeof(p));
	p.dir = tdir;
	p.min_free_bytes = min_free;
	p.keep_done = 3600;
	p.hostname = "mx.example.net";
	p.log = tlog;
	q = queue_open(&p, err, sizeof(err));
	if (q == NULL)
		diag("queue_open: %s", err);
	return q;
}

static size_t
count_dir(const char *sub)
{
	char path[512];
	struct dirent *de;
	size_t n = 0;
	DIR *dp;

	snprintf(path, sizeof(path), "%s/%s", tdir, sub);
	if ((dp = opendir(path)) == NULL)
		return 0;
	while ((de = readdir(dp)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(dp);
	return n;
}

static size_t
count_msgs(void)
{
	char sub[32];
	size_t n = 0;
	int i;

	for (i = 0; i < Q_NDIRS; i++) {
		snprintf(sub, sizeof(sub), "msg/%02x", i);
		n += count_dir(sub);
	}
	return n;
}

static char *
slurp(const char *path, size_t *len)
{
	struct stat st;
	char *b;
	int fd;

	if ((fd = open(path, O_RDONLY)) == -1 || fstat(fd, &st) == -1)
		return NULL;
	b = malloc((size_t)st.st_size + 1);
	if (b == NULL || read(fd, b, (size_t)st.st_size) != st.st_size) {
		free(b);
		close(fd);
		return NULL;
	}
	close(fd);
	*len = (size_t)st.st_size;
	return b;
}

static int
spit(const char *path, const char *b, size_t len)
{
	int fd, rc;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) == -1)
		return -1;
	rc = write(fd, b, len) == (ssize_t)len ? 0 : -1;
	close(fd);
	return rc;
}

static const char body[] =
    "From: App <app@example.org>\r\nTo: a@example.com\r\nSubject: hi\r\n\r\n"
    "Hello,\r\nline two with % and \xc3\xa9\r\n";

static enum q_status
enq(struct queue *q, const char *sender, const char *r1, const char *r2,
    char id[QUEUE_ID_LEN + 1])
{
	struct q_rcpt rc[2];
	struct q_envelope t;

	memset(&t, 0, sizeof(t));
	memset(rc, 0, sizeof(rc));
	rc[0].addr = (char *)r1;
	rc[1].addr = (char *)r2;
	t.klass = Q_CLASS_DEFAULT;
	t.sender = (char *)sender;
	t.rcpts = rc;
	t.nrcpt = r2 ? 2 : 1;
	t.tag = "test tag";
	t.client_uid = 1234;
	t.flags = Q_F_8BIT;
	return queue_enqueue(q, &t, body, sizeof(body) - 1, id);
}

static void
test_env_text(void)
{
	struct q_envelope e, back;
	struct q_rcpt r[2];
	char why[128], *txt;
	size_t len;

	memset(&e, 0, sizeof(e));
	memset(r, 0, sizeof(r));
	strcpy(e.id, "0005ff0011223344aabbccdd");
	e.klass = Q_CLASS_OTP;
	e.sender = "";
	e.created = 1700000000;
	e.expires = 1700000300;
	e.next_attempt = 1700000010;
	e.attempts = 3;
	e.held = 1;
	e.flags = Q_F_BOUNCE;
	e.size = 42;
	e.client_uid = 4294967295u;
	e.finished = 0;
	e.tag = NULL;
	e.last_error = "451 4.7.1 try later\nsecond line %41 - x";
	r[0].addr = "a@example.com";
	r[0].state = Q_RCPT_DEFERRED;
	r[0].attempts = 2;
	r[0].last_attempt = 1700000005;
	r[0].reply = "-";
	r[1].addr = "b@example.com";
	r[1].state = Q_RCPT_DELIVERED;
	r[1].reply = "250 2.0.0 ok \xc3\xa9";
	e.rcpts = r;
	e.nrcpt = 2;
	txt = spool_env_format(&e, &len);
	ok(txt != NULL, "envelope text formats");
	ok(spool_env_parse(txt, len, &back, why, sizeof(why)) == 0, "envelope text parses back");
	is_str(back.id, e.id, "id round trip");
	is_int(back.klass, Q_CLASS_OTP, "class round trip");
	is_str(back.sender, "", "null sender round trip");
	ok(back.tag == NULL, "NULL tag stays NULL");
	is_str(back.last_error, e.last_error, "error with LF and % round trip");
	is_int(back.client_uid, 4294967295u, "uid round trip");
	is_int(back.held, 1, "held round trip");
	is_int(back.next_attempt, 1700000010, "next attempt round trip");
	is_str(back.rcpts[0].reply, "-", "reply \"-\" is not NULL");
	is_str(back.rcpts[1].reply, r[1].reply, "8-bit reply round trip");
	is_int(back.rcpts[0].attempts, 2, "rcpt attempts round trip");
	is_int(back.rcpts[1].state, Q_RCPT_DELIVERED, "rcpt state round trip");
	q_envelope_clear(&back);
	/* a recipient's err_class: round trip, and envelopes without it load */
	r[0].err_class = "hard";
	{
		char *t2 = spool_env_format(&e, &len), *p;

		ok(t2 != NULL && spool_env_parse(t2, len, &back, why, sizeof(why)) == 0 &&
		    back.rcpts[0].err_class != NULL &&
		    strcmp(back.rcpts[0].err_class, "hard") == 0 &&
		    back.rcpts[1].err_class == NULL, "err_class round trip (set, unset)");
		q_envelope_clear(&back);
		free(t2);
		ok(spool_env_parse(txt, strlen(txt), &back, why, sizeof(why)) == 0 &&
		    back.rcpts[0].err_class == NULL, "an envelope from before err_class loads");
		q_envelope_clear(&back);
		t2 = spool_env_format(&e, &len);
		/* a seventh field is refused */
		p = strstr(t2, " =hard\n");
		if (p != NULL) {
			char *t3 = malloc(len + 3);

			memcpy(t3, t2, (size_t)(p - t2) + 6);
			memcpy(t3 + (p - t2) + 6, " -", 2);
			memcpy(t3 + (p - t2) + 8, p + 6, len - (size_t)(p - t2) - 6);
			ok(spool_env_parse(t3, len + 2, &back, why, sizeof(why)) == -1,
			    "a recipient line with a seventh field is refused");
			free(t3);
		} else
			ok(0, "a recipient line with a seventh field is refused");
		free(t2);
	}
	r[0].err_class = NULL;
	/* every strict rule: a changed byte anywhere either still parses to
	 * something well-formed or is refused, never crashes (ASan checks) */
	{
		size_t i, refused = 0;
		char *mut = malloc(len);

		for (i = 0; i < len; i++) {
			memcpy(mut, txt, len);
			mut[i] = mut[i] == 'x' ? '\n' : 'x';
			if (spool_env_parse(mut, len, &back, why, sizeof(why)) == -1)
				refused++;
			else
				q_envelope_clear(&back);
		}
		ok(refused > len / 2, "most single-byte changes are refused");
		free(mut);
	}
	ok(spool_env_parse(txt, len - 1, &back, why, sizeof(why)) == -1,
	    "envelope without its end line is refused");
	free(txt);
}

static void
test_round_trip(void)
{
	char id[QUEUE_ID_LEN + 1], id2[QUEUE_ID_LEN + 1];
	struct q_envelope *e, *l;
	struct queue *q;
	char *data;
	size_t len;

	q = topen(0);
	ok(q != NULL, "queue opens on an empty dir");
	is_int(enq(q, "app@example.org", "a@example.com", "b@Example.NET", id), Q_OK,
	    "enqueue ok");
	ok(qid_valid(id), "id is 24 hex chars");
	is_int(count_msgs(), 1, "one message file, no state file yet");
	is_int(count_dir("tmp"), 0, "no temporary file left");
	ok(queue_get(q, id, &e) == Q_OK, "get after enqueue");
	is_int(e->state, Q_MSG_QUEUED, "state queued");
	is_int(e->nrcpt, 2, "two recipients");
	q_envelope_free(e);
	queue_close(q);

	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK, "found after reopen");
	is_str(e->sender, "app@example.org", "sender after reopen");
	is_str(e->rcpts[1].addr, "b@Example.NET", "recipient after reopen");
	is_str(e->tag, "test tag", "tag after reopen");
	is_int(e->client_uid, 1234, "uid after reopen");
	is_int(e->flags, Q_F_8BIT, "flags after reopen");
	is_int(e->size, sizeof(body) - 1, "size after reopen");
	q_envelope_free(e);
	ok(queue_body(q, id, &data, &len) == Q_OK && len == sizeof(body) - 1 &&
	    memcmp(data, body, len) == 0, "body byte-identical after reopen");
	free(data);

	/* an update through a lease lands in a state record */
	queue_pause(q, 0);
	ok(queue_lease(q, 1000, &l) == Q_OK, "lease it");
	l->rcpts[0].state = Q_RCPT_DELIVERED;
	l->rcpts[0].reply = strdup("250 2.0.0 Ok: queued as X");
	l->rcpts[1].state = Q_RCPT_DEFERRED;
	l->rcpts[1].reply = strdup("451 4.3.0 greylisted");
	l->last_error = strdup("b@Example.NET: 451 4.3.0 greylisted");
	ok(queue_release_lease(q, l) == Q_OK, "release the lease");
	is_int(count_msgs(), 1, "still one file: the state is a record appended to it");
	queue_close(q);

	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK, "found after update + reopen");
	is_int(e->rcpts[0].state, Q_RCPT_DELIVERED, "delivered rcpt persisted");
	is_str(e->rcpts[0].reply, "250 2.0.0 Ok: queued as X", "reply persisted");
	is_int(e->rcpts[1].state, Q_RCPT_DEFERRED, "deferred rcpt persisted");
	is_int(e->rcpts[1].attempts, 1, "rcpt attempts persisted");
	is_int(e->attempts, 1, "message attempts persisted");
	is_int(e->state, Q_MSG_DEFERRED, "state deferred");
	ok(e->next_attempt > time(NULL), "next attempt in the future");
	is_str(e->last_error, "b@Example.NET: 451 4.3.0 greylisted", "last error persisted");
	q_envelope_free(e);
	ok(queue_body(q, id, &data, &len) == Q_OK && len == sizeof(body) - 1,
	    "body unchanged by updates");
	free(data);
	/* a second message sorts after the first */
	is_int(enq(q, "app@example.org", "c@example.com", NULL, id2), Q_OK, "second enqueue");
	ok(strcmp(id, id2) < 0, "ids sort by time");
	ok(queue_delete(q, id) == Q_OK && queue_delete(q, id2) == Q_OK, "delete both");
	is_int(count_msgs(), 0, "delete removes every file");
	queue_close(q);
}

static size_t
file_size(const char *path)
{
	struct stat stt;

	return stat(path, &stt) == 0 ? (size_t)stt.st_size : 0;
}

static void
test_truncation(void)
{
	char id[QUEUE_ID_LEN + 1], rel[128], path[512], cpath[512], why[256];
	struct q_envelope *e;
	struct queue *q;
	char *full;
	size_t len, len0, len1, off, loaded = 0, base = 0, cut = 0, listed = 0;
	size_t quarantined = 0, bad = 0;
	int n;

	q = topen(0);
	enq(q, "app@example.org", "a@example.com", NULL, id);
	queue_close(q);
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", tdir, rel);
	len0 = file_size(path);
	q = topen(0);
	ok(queue_lease(q, 1000, &e) == Q_OK, "lease for a state record");
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	queue_release_lease(q, e);
	ok(queue_hold(q, id) == Q_OK, "hold appends a second record");
	queue_close(q);
	full = slurp(path, &len);
	ok(full != NULL && len0 > sizeof(body) && len > len0, "read the message file");

	/* every truncation point, through the loader: inside the message
	 * part nothing loads; inside a record the state before it is used
	 * and the torn record is cut off */
	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK && e->state == Q_MSG_HELD && e->attempts == 1,
	    "whole file: held after one attempt");
	if (e != NULL)
		q_envelope_free(e);
	queue_close(q);
	len1 = 0;
	for (off = len0; off < len; off++)	/* end of the first record */
		if (off > len0 + 5 && memcmp(full + off - 4, "END\n", 4) == 0 &&
		    memcmp(full + off, "OTPS1 ", 6) == 0) {
			len1 = off;
			break;
		}
	ok(len1 > len0, "two records found after the message part");
	for (off = 0; off < len; off++) {
		struct spool sp;
		char err[64];
		int good;

		spit(path, full, off);
		spool_init(&sp, tdir, 0, 0, 0, NULL, err, sizeof(err));
		if (spool_load(&sp, id, &e, why, sizeof(why)) == 0) {
			loaded++;
			if (off < len1)
				good = e->attempts == 0 && !e->held;
			else
				good = e->attempts == 1 && !e->held;
			if (good)
				base++;
			else
				diag("offset %zu: attempts %d held %d", off, e->attempts, e->held);
			if (file_size(path) == (off < len1 ? len0 : len1))
				cut++;
			q_envelope_free(e);
		} else if (off >= len0)
			bad++;
		spool_free(&sp);
	}
	is_int(loaded, len - len0, "no file cut inside its message part loads (every byte)");
	is_int(bad, 0, "every file cut inside a record loads");
	is_int(base, len - len0, "a torn record: the state before it is used");
	is_int(cut, len - len0, "a torn record is cut off the file");

	/* and through queue_open: quarantined, never listed */
	snprintf(cpath, sizeof(cpath), "%s/corrupt", tdir);
	for (off = 0; off < len0; off += (off < 200 ? 1 : 7)) {
		spit(path, full, off);
		n = (int)count_dir("corrupt");
		q = topen(0);
		if (q == NULL)
			break;
		if (queue_get(q, id, &e) == Q_OK) {
			listed++;
			q_envelope_free(e);
		}
		queue_close(q);
		if ((int)count_dir("corrupt") > n)
			quarantined++;
		/* empty corrupt/ again */
		{
			DIR *dp = opendir(cpath);
			struct dirent *de;
			char p2[1024];

			while (dp && (de = readdir(dp)) != NULL)
				if (de->d_name[0] != '.') {
					snprintf(p2, sizeof(p2), "%s/%s", cpath, de->d_name);
					unlink(p2);
				}
			if (dp)
				closedir(dp);
		}
	}
	is_int(listed, 0, "queue_open never registers a truncated message part");
	ok(quarantined > 0 && access(path, F_OK) == -1, "truncated files go to corrupt/");
	diag("%zu truncation points through queue_open quarantined", quarantined);

	/* a record that fails its checks ends the walk like a torn one */
	spit(path, full, len);
	full[len1 + 20] ^= 0x01;
	spit(path, full, len);
	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK && e->attempts == 1 && e->state == Q_MSG_DEFERRED,
	    "a garbled last record: the one before it is used");
	if (e != NULL)
		q_envelope_free(e);
	is_int(file_size(path), len1, "the garbled record is cut off");
	/* and a new record goes after the good ones */
	ok(queue_hold(q, id) == Q_OK, "hold again");
	queue_close(q);
	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK && e->state == Q_MSG_HELD, "held after reopen");
	if (e != NULL)
		q_envelope_free(e);
	free(full);
	queue_delete(q, id);
	queue_close(q);
}

static void
test_compact(void)
{
	char id[QUEUE_ID_LEN + 1], rel[128], path[512];
	struct q_envelope *e;
	struct queue *q;
	size_t len0, maxlen = 0;
	int i;

	q = topen(0);
	enq(q, "app@example.org", "a@example.com", NULL, id);
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", tdir, rel);
	len0 = file_size(path);
	for (i = 0; i < 400; i++) {
		queue_hold(q, id);
		queue_unhold(q, id);
		if (file_size(path) > maxlen)
			maxlen = file_size(path);
	}
	queue_close(q);
	diag("file at most %zu bytes (message part %zu)", maxlen, len0);
	ok(maxlen < len0 + 64 * 1024 + 4096, "records are compacted");
	q = topen(0);
	ok(queue_get(q, id, &e) == Q_OK && e->state == Q_MSG_QUEUED,
	    "after 800 records and compactions: the newest state");
	if (e != NULL)
		q_envelope_free(e);
	{
		char *data;
		size_t blen;

		ok(queue_body(q, id, &data, &blen) == Q_OK && blen == sizeof(body) - 1 &&
		    memcmp(data, body, blen) == 0, "the body survives compaction");
		free(data);
	}
	is_int(count_dir("tmp"), 0, "no temporary file left");
	queue_delete(q, id);
	queue_close(q);
}

static void
test_garbage(void)
{
	char id[QUEUE_ID_LEN + 1], path[600], rel[128];
	struct q_envelope *e;
	struct queue *q;
	char *data;
	size_t len, c0;
	int fd;

	/* temporary files are removed at open */
	snprintf(path, sizeof(path), "%s/tmp/123.4", tdir);
	spit(path, "half a message", 14);
	snprintf(path, sizeof(path), "%s/tmp/999.1", tdir);
	spit(path, "", 0);
	q = topen(0);
	is_int(count_dir("tmp"), 0, "temporary files removed at open");

	/* garbage under a valid id name and under a stray name */
	is_int(enq(q, "app@example.org", "a@example.com", NULL, id), Q_OK, "a good message");
	queue_close(q);
	c0 = count_dir("corrupt");
	spool_path("0123456789abcdef01234567", rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", tdir, rel);
	spit(path, "OTPQ1 99999999999999999999 1 00000000 00000000\ngarbage", 53);
	snprintf(path, sizeof(path), "%s/msg/00/notes.txt", tdir);
	spit(path, "hello", 5);
	snprintf(path, sizeof(path), "%s/msg/01/ffffffffffffffffffffffff", tdir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	close(fd);
	q = topen(0);
	ok(q != NULL, "queue opens over garbage");
	is_int(count_dir("corrupt") - c0, 3, "three garbage files quarantined");
	ok(queue_get(q, id, &e) == Q_OK, "the good message survives");
	q_envelope_free(e);

	/* a flipped body byte is caught when the body is read */
	spool_path(id, rel, sizeof(rel));
	snprintf(path, sizeof(path), "%s/%s", tdir, rel);
	{
		char *full = slurp(path, &len);

		full[len - 10] ^= 0x20;
		spit(path, full, len);
		free(full);
	}
	ok(queue_lease(q, 1000, &e) == Q_OK, "lease the message with a bad body");
	is_int(queue_body(q, id, &data, &len), Q_NOTFOUND, "corrupt body refused");
	ok(access(path, F_OK) == -1, "corrupt body quarantined");
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	queue_release_lease(q, e);
	is_int(queue_get(q, id, &e), Q_NOTFOUND, "a message with a corrupt body is dropped");
	is_int(count_msgs(), 0, "no file is written for it");
	queue_close(q);
}

static void
test_nospace(void)
{
	char id[QUEUE_ID_LEN + 1];
	struct queue *q;
	size_t before = count_msgs();

	q = topen((uint64_t)1 << 62);
	is_int(enq(q, "app@example.org", "a@example.com", NULL, id), Q_NOSPACE,
	    "below the free-space floor: Q_NOSPACE");
	is_int(count_msgs(), before, "nothing written");
	is_int(count_dir("tmp"), 0, "no temporary file");
	queue_close(q);
	{
		struct q_envelope t;
		struct q_rcpt r = { .addr = "bad addr@example.com" };

		q = topen(0);
		memset(&t, 0, sizeof(t));
		t.sender = "a@b.c";
		t.rcpts = &r;
		t.nrcpt = 1;
		is_int(queue_enqueue(q, &t, "x", 1, id), Q_BADINPUT, "space in address refused");
		r.addr = "ok@example.com";
		t.sender = "a\r\nb@c";
		is_int(queue_enqueue(q, &t, "x", 1, id), Q_BADINPUT, "CRLF in sender refused");
		queue_close(q);
	}
}

#define IDT 4
#define IDN 20000
static char ids[IDT][IDN][QUEUE_ID_LEN + 1];

static void *
idthr(void *arg)
{
	char (*mine)[QUEUE_ID_LEN + 1] = arg;
	int i;

	for (i = 0; i < IDN; i++)
		qid_new(mine[i]);
	return NULL;
}

static int
cmpid(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void
test_ids(void)
{
	pthread_t t[IDT];
	int i, dup = 0, sorted = 1;

	for (i = 0; i < IDT; i++)
		pthread_create(&t[i], NULL, idthr, ids[i]);
	for (i = 0; i < IDT; i++)
		pthread_join(t[i], NULL);
	for (i = 1; i < IDN; i++)
		if (strcmp(ids[0][i - 1], ids[0][i]) >= 0)
			sorted = 0;
	ok(sorted, "ids of one thread strictly increase");
	qsort(ids, IDT * IDN, QUEUE_ID_LEN + 1, cmpid);
	for (i = 1; i < IDT * IDN; i++)
		if (strcmp(((char (*)[QUEUE_ID_LEN + 1])ids)[i - 1],
		    ((char (*)[QUEUE_ID_LEN + 1])ids)[i]) == 0)
			dup++;
	is_int(dup, 0, "80,000 ids from 4 threads are unique");
	ok(qid_valid("0123456789abcdef01234567") && !qid_valid("0123456789ABCDEF01234567") &&
	    !qid_valid("0123") && !qid_valid("../../etc/passwd0000000"), "id validation");
}

static void
test_recovery_time(void)
{
	char id[QUEUE_ID_LEN + 1];
	struct timespec a, b;
	struct q_envelope **v;
	struct q_filter f = { .state = -1, .klass = -1, .limit = 100000 };
	struct queue *q;
	size_t n, i, N = 1000;
	int more, okc = 1;
	double secs;

	q = topen(0);
	queue_pause(q, 1);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < N; i++)
		okc &= enq(q, "app@example.org", "a@example.com", NULL, id) == Q_OK;
	clock_gettime(CLOCK_MONOTONIC, &b);
	secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	ok(okc, "1000 enqueues");
	diag("enqueue: %zu in %.2f s = %.0f/s (one thread)", N, secs, (double)N / secs);
	queue_close(q);
	clock_gettime(CLOCK_MONOTONIC, &a);
	q = topen(0);
	clock_gettime(CLOCK_MONOTONIC, &b);
	secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
	diag("recovery of %zu messages: %.3f s", N, secs);
	ok(secs < 5, "recovery of 1000 messages under 5 s");
	ok(queue_paused(q), "pause survives a restart");
	ok(queue_list(q, &f, &v, &n, &more) == Q_OK && n == N, "all 1000 listed after reopen");
	for (i = 0; i < n; i++)
		queue_delete(q, v[i]->id);
	q_envelope_list_free(v, n);
	queue_pause(q, 0);
	queue_close(q);
}

/*
 * queue.list pages walk the id-ordered list: after a restart (the spool
 * loads on its own thread while new messages come in), with deletions in
 * between and an after_id that is gone; deferred messages share their
 * reply strings (q_intern) and each still reads back its own.
 */
static void
test_order_and_sharing(void)
{
	enum { NOLD = 300, NNEW = 5 };
	char id[QUEUE_ID_LEN + 1], last[QUEUE_ID_LEN + 1], gone[QUEUE_ID_LEN + 1];
	char newids[NNEW][QUEUE_ID_LEN + 1];
	struct q_filter f = { .state = -1, .klass = -1, .limit = 50 };
	struct q_envelope **v, *e;
	struct queue *q;
	size_t n, i, total = 0, pages = 0;
	int more, okc = 1, sorted = 1, nd = 0;

	q = topen(0);
	queue_pause(q, 1);
	for (i = 0; i < NOLD; i++)
		okc &= enq(q, "app@example.org", "a@example.com", NULL, id) == Q_OK;
	ok(okc, "300 enqueued");
	queue_close(q);
	q_load_sync_max = 0;		/* the loader thread, as for a large spool */
	q = topen(0);
	for (i = 0; i < NNEW; i++)	/* very likely while the 300 still load */
		okc &= enq(q, "new@example.org", "b@example.com", NULL, newids[i]) == Q_OK;
	ok(okc, "5 enqueued right after the restart");
	last[0] = '\0';
	f.after_id = NULL;
	do {
		if (queue_list(q, &f, &v, &n, &more) != Q_OK)
			break;
		for (i = 0; i < n; i++) {
			if (last[0] != '\0' && strcmp(last, v[i]->id) >= 0)
				sorted = 0;
			memcpy(last, v[i]->id, sizeof(last));
		}
		total += n;
		pages++;
		q_envelope_list_free(v, n);
		f.after_id = last;
	} while (more && pages < 100);
	is_int((int)total, NOLD + NNEW, "every message on some page");
	ok(sorted, "pages in id order across the restart");
	is_int((int)pages, (NOLD + NNEW + 49) / 50, "pages of 50");
	ok(strcmp(last, newids[NNEW - 1]) == 0, "the new messages come last");

	/* the first page, then its last id deleted: paging from a gone id */
	f.after_id = NULL;
	ok(queue_list(q, &f, &v, &n, &more) == Q_OK && n == 50 && more, "first page of 50");
	memcpy(gone, v[49]->id, sizeof(gone));
	memcpy(id, v[48]->id, sizeof(id));
	q_envelope_list_free(v, n);
	ok(queue_delete(q, gone) == Q_OK && queue_delete(q, id) == Q_OK, "two deleted");
	f.after_id = gone;
	ok(queue_list(q, &f, &v, &n, &more) == Q_OK && n == 50 && strcmp(v[0]->id, gone) > 0,
	    "a page after a deleted id starts after it");
	q_envelope_list_free(v, n);

	/* one reply for many deferrals: shared, and each reads back */
	queue_pause(q, 0);
	for (i = 0; i < 40 && queue_lease(q, 1000, &e) == Q_OK; i++) {
		e->rcpts[0].state = Q_RCPT_DEFERRED;
		e->rcpts[0].reply = strdup(i % 2 ? "450 4.2.0 try later" : "451 4.3.0 busy");
		e->last_error = strdup("deferred");
		if (queue_release_lease(q, e) == Q_OK)
			nd++;
	}
	queue_pause(q, 1);
	is_int(nd, 40, "40 deferred");
	f.after_id = NULL;
	f.state = Q_MSG_DEFERRED;
	f.limit = 100;
	okc = queue_list(q, &f, &v, &n, &more) == Q_OK && n == 40;
	for (i = 0; okc && i < n; i++)
		okc = v[i]->rcpts[0].reply != NULL && v[i]->last_error != NULL &&
		    strcmp(v[i]->last_error, "deferred") == 0 &&
		    (strcmp(v[i]->rcpts[0].reply, "450 4.2.0 try later") == 0 ||
		    strcmp(v[i]->rcpts[0].reply, "451 4.3.0 busy") == 0) &&
		    strcmp(v[i]->sender, "app@example.org") == 0;
	ok(okc, "the deferred ones list with their own reply, error and sender");
	q_envelope_list_free(v, n);
	queue_close(q);
	/* and through a restart (strings loaded from the files get shared) */
	q = topen(0);
	f.state = -1;
	f.limit = 1000;
	ok(queue_list(q, &f, &v, &n, &more) == Q_OK && n == NOLD + NNEW - 2, "all after reopen");
	for (i = 0; i < n; i++)
		queue_delete(q, v[i]->id);
	q_envelope_list_free(v, n);
	f.limit = 10;
	ok(queue_list(q, &f, &v, &n, &more) == Q_OK && n == 0 && !more, "all deleted");
	queue_pause(q, 0);
	queue_close(q);
	q_load_sync_max = 10000;
}

/*
 * While a large spool loads (the loader made slow here): new messages are
 * enqueued and leased at once, queue_list and queue_get answer Q_LOADING
 * after their 2 s wait, queue_stats counts what is in and says loading;
 * once loaded everything lists.
 */
static void
test_loading(void)
{
	struct q_filter f = { .state = -1, .klass = -1, .limit = 100 };
	char id[QUEUE_ID_LEN + 1], old[QUEUE_ID_LEN + 1], nid[QUEUE_ID_LEN + 1];
	struct q_envelope **v, *e = NULL;
	struct q_stats st;
	struct queue *q;
	size_t n, i;
	int more, okc = 1;

	q = topen(0);
	queue_pause(q, 1);
	for (i = 0; i < 20; i++)
		okc &= enq(q, "app@example.org", "a@example.com", NULL, id) == Q_OK;
	memcpy(old, id, sizeof(old));
	queue_pause(q, 0);
	queue_close(q);
	ok(okc, "20 enqueued");
	q_load_sync_max = 0;
	q_load_test_delay_ms = 6000;	/* list and get below wait 2 s each */
	q = topen(0);
	ok(q != NULL && queue_loading(q), "open returns while the spool loads");
	ok(enq(q, "new@example.org", "n@example.com", NULL, nid) == Q_OK,
	    "enqueue while loading");
	ok(queue_lease(q, 1000, &e) == Q_OK && e != NULL && strcmp(e->id, nid) == 0,
	    "the new message is leased while loading");
	if (e != NULL) {
		e->rcpts[0].state = Q_RCPT_DELIVERED;
		queue_release_lease(q, e);
	}
	queue_stats(q, &st);
	ok(st.loading && st.by_state[Q_MSG_QUEUED] == 0, "stats: loading, partial counts");
	is_int(queue_list(q, &f, &v, &n, &more), Q_LOADING, "list: still loading after 2 s");
	is_int(queue_get(q, old, &e), Q_LOADING, "get of a message not yet loaded: loading");
	for (i = 0; i < 5 && queue_list(q, &f, &v, &n, &more) == Q_LOADING; i++)
		;
	ok(i < 5 && n == 21, "after the load all 21 list");
	for (i = 0; i < n; i++)
		queue_delete(q, v[i]->id);
	q_envelope_list_free(v, n);
	queue_stats(q, &st);
	ok(!st.loading && !queue_loading(q), "loaded");
	queue_close(q);
	q_load_test_delay_ms = 0;
	q_load_sync_max = 10000;
}

/* FNV-1a as the layout before the time directories used. */
static unsigned
old_dir_of(const char *id)
{
	uint32_t h = 2166136261u;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 16777619u;
	return (h ^ (h >> 16)) & (Q_NDIRS - 1);
}

/* The directory a message is in, or -1. */
static int
dir_holding(const char *id)
{
	char path[PATH_MAX];
	struct stat st;
	int d;

	for (d = 0; d < Q_NDIRS; d++) {
		snprintf(path, sizeof(path), "%s/msg/%02x/%s", tdir, d, id);
		if (stat(path, &st) == 0)
			return d;
	}
	return -1;
}

#define LT	8	/* threads */
#define LN	25	/* messages each */

static struct queue *lq;
static _Atomic int lbad;

static void *
lthr(void *arg)
{
	char id[QUEUE_ID_LEN + 1];
	int i;

	(void)arg;
	for (i = 0; i < LN; i++)
		if (enq(lq, "app@example.org", "a@example.com", NULL, id) != Q_OK ||
		    dir_holding(id) == -1)
			lbad++;
	return NULL;
}

static void
test_layout(void)
{
	char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1], src[PATH_MAX], dst[PATH_MAX];
	char clk[17];
	struct q_envelope *e = NULL;
	pthread_t th[LT];
	struct queue *q;
	size_t ncorrupt;
	int da, db, od, i;

	q = topen(0);
	queue_pause(q, 1);
	ok(enq(q, "app@example.org", "a@example.com", NULL, a) == Q_OK &&
	    enq(q, "app@example.org", "a@example.com", NULL, b) == Q_OK, "two enqueued");
	da = dir_holding(a);
	db = dir_holding(b);
	/* bits 20-27 of the clock in the id: the same second, the same one
	 * (unless the two straddle a boundary, 1 in ~1000 runs) */
	snprintf(clk, sizeof(clk), "%.16s", a);
	ok(da >= 0 && da == (int)((strtoull(clk, NULL, 16) >> 20) & (Q_NDIRS - 1)),
	    "a message's directory comes from the clock in its id");
	ok(da == db || db == ((da + 1) & (Q_NDIRS - 1)),
	    "messages queued together share a directory");

	/* concurrent enqueues share the directory fsyncs, and each is named */
	lq = q;
	lbad = 0;
	for (i = 0; i < LT; i++)
		pthread_create(&th[i], NULL, lthr, NULL);
	for (i = 0; i < LT; i++)
		pthread_join(th[i], NULL);
	is_int(lbad, 0, "200 concurrent enqueues (8 threads): each acknowledged one is in place");
	queue_close(q);

	/* a file where the older layout put it is moved and loaded */
	od = (int)old_dir_of(a);
	if (od == da)
		od = (da + 1) & (Q_NDIRS - 1);
	snprintf(src, sizeof(src), "%s/msg/%02x/%s", tdir, da, a);
	snprintf(dst, sizeof(dst), "%s/msg/%02x/%s", tdir, od, a);
	ok(rename(src, dst) == 0, "message moved to another directory");
	ncorrupt = count_dir("corrupt");
	q = topen(0);
	ok(q != NULL && queue_get(q, a, &e) == Q_OK && e != NULL, "it is loaded");
	q_envelope_free(e);
	is_int(dir_holding(a), da, "and back in its directory");
	is_int((int)count_dir("corrupt"), (int)ncorrupt, "nothing quarantined for it");
	queue_close(q);
}

/*
 * A failed shared directory fsync: the first thread's fsync (hooked) waits
 * until the others have linked their files and taken tickets, so the next
 * round covers all of them; that round fails (EIO).  Each of its threads
 * is refused and removes its file; the rounds after it succeed.
 */
#define FT	6	/* threads */

static pthread_mutex_t	 fmu = PTHREAD_MUTEX_INITIALIZER;
static int		 fdir = -1, fcalls, fwaited;
static uint64_t		 ffrom, fupto;
static struct queue	*fq;

static int
fhook(struct spool *sp, int dir, uint64_t from, uint64_t upto)
{
	int n, i;

	pthread_mutex_lock(&fmu);
	if (fdir == -1)
		fdir = dir;
	n = dir == fdir ? ++fcalls : 0;
	if (n == 2) {
		ffrom = from;
		fupto = upto;
	}
	pthread_mutex_unlock(&fmu);
	if (n == 1) {
		/* the others' tickets, 10 s at most: the test never hangs */
		for (i = 0; i < 10000 && spool_dsync_tickets(sp, dir) < upto + FT - 1; i++)
			usleep(1000);
		fwaited = spool_dsync_tickets(sp, dir) >= upto + FT - 1;
		return 0;
	}
	if (n == 2) {
		errno = EIO;
		return -1;
	}
	return 0;
}

struct fthr {
	pthread_t	 t;
	enum q_status	 st;
	char		 id[QUEUE_ID_LEN + 1];
};

static void *
fthr(void *arg)
{
	struct fthr *f = arg;

	f->st = enq(fq, "app@example.org", "a@example.com", NULL, f->id);
	return NULL;
}

/* Runs n enqueues at once; 0, or -1 if one has not finished in 30 s. */
static int
frun(struct fthr *f, int n)
{
	struct timespec ts;
	int i, rc = 0;

	for (i = 0; i < n; i++) {
		f[i].st = Q_TEMPFAIL;
		f[i].id[0] = '\0';
		pthread_create(&f[i].t, NULL, fthr, &f[i]);
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	for (i = 0; i < n; i++)
		if (pthread_timedjoin_np(f[i].t, NULL, &ts) != 0)
			rc = -1;
	return rc;
}

static void
test_dir_fsync_error(void)
{
	struct fthr f[FT], g[FT];
	struct q_envelope *e;
	struct timespec ts;
	struct queue *q;
	int i, nok = 0, nfail = 0, gone = 0, gok = 0, loaded = 0;

	/* start in the first quarter of a directory's second (2^20 us of the
	 * clock in the ids): all of them share one */
	for (;;) {
		clock_gettime(CLOCK_REALTIME, &ts);
		if ((((uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000) &
		    0xfffff) < 0x40000)
			break;
		usleep(1000);
	}
	q = topen(0);
	queue_pause(q, 1);
	fq = q;
	spool_dsync_test_hook = fhook;
	if (frun(f, FT) == -1) {
		ok(0, "no thread hangs when a directory fsync fails");
		return;		/* threads still run: leave all as it is */
	}
	ok(fwaited, "the first fsync waited for the others' tickets");
	is_int((int)(fupto - ffrom + 1), FT - 1, "the failed round covered 5 threads");
	for (i = 0; i < FT; i++) {
		if (f[i].st == Q_OK)
			nok++;
		else if (f[i].st == Q_TEMPFAIL)
			nfail++;
		if (f[i].st != Q_OK && f[i].id[0] != '\0' && dir_holding(f[i].id) == -1 &&
		    queue_get(q, f[i].id, &e) == Q_NOTFOUND)
			gone++;
	}
	is_int(nfail, FT - 1, "each thread of the failed round is refused (tempfail)");
	is_int(nok, 1, "the thread of the round before it is not");
	is_int(gone, FT - 1, "each refused file is removed and not in the queue");

	/* the disk is back: the next rounds succeed */
	ok(frun(g, FT) == 0, "the next enqueues finish");
	for (i = 0; i < FT; i++)
		if (g[i].st == Q_OK && dir_holding(g[i].id) != -1)
			gok++;
	is_int(gok, FT, "after it, every enqueue is acknowledged and in place");
	spool_dsync_test_hook = NULL;
	queue_close(q);

	/* what a restart's scan loads: the acknowledged ones, none refused */
	q = topen(0);
	for (i = 0; i < FT; i++) {
		e = NULL;
		if ((f[i].st == Q_OK) == (queue_get(q, f[i].id, &e) == Q_OK))
			loaded++;
		q_envelope_free(e);
		e = NULL;
		if (queue_get(q, g[i].id, &e) == Q_OK)
			loaded++;
		q_envelope_free(e);
	}
	is_int(loaded, 2 * FT, "after a restart: the acknowledged are loaded, the refused not");
	queue_close(q);
}

int
main(void)
{
	char cmd[600];

	snprintf(tdir, sizeof(tdir), "/tmp/test_spool.XXXXXX");
	if (mkdtemp(tdir) == NULL)
		return 1;
	strcat(tdir, "/spool");
	test_env_text();
	test_round_trip();
	test_truncation();
	test_compact();
	test_garbage();
	test_nospace();
	test_ids();
	test_recovery_time();
	test_order_and_sharing();
	test_loading();
	test_layout();
	test_dir_fsync_error();
	ok(nlogs > 0, "the log sink was used");
	snprintf(cmd, sizeof(cmd), "rm -rf '%.*s'", (int)(strlen(tdir) - 6), tdir);
	if (system(cmd) != 0)
		diag("cleanup failed");
	return done_testing();
}
