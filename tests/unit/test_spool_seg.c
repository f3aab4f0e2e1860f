/*
 * test_spool_seg.c - the queue over segment files (OTPMAIL_SPOOL_SEGMENTS):
 * new messages leave no file of their own; a restart loads each with its
 * body; a finished one keeps its state (an S record) and body until
 * purged; a deferred one moves to a file of its own and keeps its state;
 * purging all removes the segment; a torn tail is cut and the whole
 * records before it load; a flipped body byte is refused and the message
 * goes to corrupt/; a damaged message whose copy to corrupt/ fails stays
 * in its segment and is quarantined at the next start; a file wins over a
 * damaged segment copy, which is then not quarantined; a damaged record
 * with an empty payload is quarantined too.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "tests/unit/tap.h"

#define N	40

static char	 tdir[256];

static void
tlog(int prio, const char *line)
{
	(void)prio;
	if (getenv("TEST_VERBOSE"))
		printf("# log: %s\n", line);
}

static struct queue *
topen(void)
{
	struct queue_params p;
	char err[256];
	struct queue *q;

	memset(&p, 0, sizeof(p));
	p.dir = tdir;
	p.keep_done = 3600;
	p.hostname = "mx.example.net";
	p.log = tlog;
	if ((q = queue_open(&p, err, sizeof(err))) == NULL)
		diag("queue_open: %s", err);
	else
		queue_pause(q, 0);
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

/* The one segment's path, or "" */
static void
the_segment(char *out, size_t len)
{
	char path[300];
	struct dirent *de;
	DIR *dp;

	out[0] = '\0';
	snprintf(path, sizeof(path), "%s/seg", tdir);
	if ((dp = opendir(path)) == NULL)
		return;
	while ((de = readdir(dp)) != NULL)
		if (de->d_name[0] != '.')
			snprintf(out, len, "%s/%s", path, de->d_name);
	closedir(dp);
}

static void
body_of(int i, char *out, size_t len)
{
	snprintf(out, len, "From: a@example.org\r\nSubject: %d\r\n\r\nbody %d, "
	    "OTPG1 000000000000000000000000 M 3 00000000\r\n", i, i);
}

static enum q_status
enq(struct queue *q, int i, char id[QUEUE_ID_LEN + 1])
{
	struct q_rcpt rc;
	struct q_envelope t;
	char b[256];

	memset(&t, 0, sizeof(t));
	memset(&rc, 0, sizeof(rc));
	rc.addr = "r@example.com";
	t.klass = Q_CLASS_DEFAULT;
	t.sender = "a@example.org";
	t.rcpts = &rc;
	t.nrcpt = 1;
	body_of(i, b, sizeof(b));
	return queue_enqueue(q, &t, b, strlen(b), id);
}

/* Leases id (others are returned), sets its recipient, releases. */
static int
settle(struct queue *q, const char *id, enum q_rcpt_state st)
{
	struct q_envelope *l, *back[N];
	int nb = 0, found = 0, i;

	while (!found && nb < N && queue_lease(q, 100, &l) == Q_OK) {
		if (strcmp(l->id, id) != 0) {
			back[nb++] = l;
			continue;
		}
		l->rcpts[0].state = st;
		l->rcpts[0].reply = strdup(st == Q_RCPT_DELIVERED ? "250 ok" : "451 later");
		found = queue_release_lease(q, l) == Q_OK;
	}
	for (i = 0; i < nb; i++)
		queue_return_lease(q, back[i]);
	return found;
}

int
main(void)
{
	char ids[N][QUEUE_ID_LEN + 1], b[256], seg[700];
	struct q_envelope *e;
	struct queue *q;
	char *data, *full;
	size_t len, good = 0;
	struct stat st;
	int i, fd;

	setenv("OTPMAIL_SPOOL_SEGMENTS", "1", 1);
	/* a long spool path: no buffer of a path in it may be short */
	snprintf(tdir, sizeof(tdir), "/tmp/otpmail-sseg-a-spool-directory-with-a-long-name-XXXXXX");
	if (mkdtemp(tdir) == NULL)
		return 1;
	q = topen();
	ok(q != NULL, "the queue opens over segments");
	for (i = 0; i < N; i++)
		if (enq(q, i, ids[i]) != Q_OK)
			break;
	is_int(i, N, "40 messages queued");
	is_int(count_msgs(), 0, "no message file");
	is_int(count_dir("seg"), 1, "one segment");
	queue_close(q);

	q = topen();
	for (i = 0, good = 0; i < N; i++) {
		body_of(i, b, sizeof(b));
		if (queue_get(q, ids[i], &e) == Q_OK) {
			if (queue_body(q, ids[i], &data, &len) == Q_OK && len == strlen(b) &&
			    memcmp(data, b, len) == 0)
				good++;
			free(data);
			q_envelope_free(e);
		}
	}
	is_int(good, N, "reopened: each is there with its body");

	ok(settle(q, ids[0], Q_RCPT_DELIVERED), "the first delivered");
	ok(settle(q, ids[1], Q_RCPT_DEFERRED), "the second deferred");
	is_int(count_msgs(), 1, "the deferred one has a file of its own now");
	queue_close(q);

	q = topen();
	ok(queue_get(q, ids[0], &e) == Q_OK && e->finished && e->rcpts[0].state ==
	    Q_RCPT_DELIVERED, "reopened: the delivered one is finished (its S record)");
	if (e)
		q_envelope_free(e);
	e = NULL;
	ok(queue_body(q, ids[0], &data, &len) == Q_OK, "its body is still there");
	free(data);
	ok(queue_get(q, ids[1], &e) == Q_OK && e->rcpts[0].state == Q_RCPT_DEFERRED &&
	    e->state == Q_MSG_DEFERRED, "the deferred one is deferred (from its file)");
	if (e)
		q_envelope_free(e);
	body_of(1, b, sizeof(b));
	ok(queue_body(q, ids[1], &data, &len) == Q_OK && len == strlen(b) &&
	    memcmp(data, b, len) == 0, "its body, from its file");
	free(data);

	/* a flipped body byte in the segment */
	the_segment(seg, sizeof(seg));
	full = NULL;
	if (stat(seg, &st) == 0 && (full = malloc((size_t)st.st_size)) != NULL &&
	    (fd = open(seg, O_RDWR)) != -1) {
		char *p;

		if (read(fd, full, (size_t)st.st_size) == st.st_size &&
		    (p = memmem(full, (size_t)st.st_size, "body 5,", 7)) != NULL) {
			p[0] ^= 0x20;
			if (pwrite(fd, p, 1, p - full) != 1)
				diag("pwrite: %s", strerror(errno));
		}
		close(fd);
	}
	free(full);
	is_int(queue_body(q, ids[5], &data, &len), Q_NOTFOUND, "a flipped body byte: refused");
	ok(count_dir("corrupt") == 1, "and the message is in corrupt/");
	queue_close(q);

	/* a torn tail: half a record after the last whole one */
	the_segment(seg, sizeof(seg));
	if ((fd = open(seg, O_WRONLY | O_APPEND)) != -1) {
		if (write(fd, "OTPG1 0006621000000000aaaaaaaa M 500 0000", 41) != 41)
			diag("write: %s", strerror(errno));
		close(fd);
	}
	stat(seg, &st);
	len = (size_t)st.st_size;
	q = topen();
	stat(seg, &st);
	ok((size_t)st.st_size == len - 41, "reopened: the torn tail is cut off");
	for (i = 2, good = 0; i < N; i++)
		if (i != 5 && queue_get(q, ids[i], &e) == Q_OK) {
			good++;
			q_envelope_free(e);
		}
	is_int(good, N - 3, "and every whole record before it loads");
	for (i = 0; i < N; i++)
		(void)queue_delete(q, ids[i]);
	is_int(count_dir("seg"), 0, "all purged: the segment is gone");
	is_int(count_msgs(), 0, "and the moved one's file");
	queue_close(q);

	/* a damaged message at the scan, and corrupt/ unusable (a file) */
	q = topen();
	ok(q != NULL && enq(q, 100, ids[0]) == Q_OK && enq(q, 101, ids[1]) == Q_OK,
	    "two more queued");
	queue_close(q);
	the_segment(seg, sizeof(seg));
	full = NULL;
	if (stat(seg, &st) == 0 && (full = malloc((size_t)st.st_size)) != NULL &&
	    (fd = open(seg, O_RDWR)) != -1) {
		char *p;

		if (read(fd, full, (size_t)st.st_size) == st.st_size &&
		    (p = memmem(full, (size_t)st.st_size, "body 100,", 9)) != NULL) {
			p[0] ^= 0x20;
			if (pwrite(fd, p, 1, p - full) != 1)
				diag("pwrite: %s", strerror(errno));
		}
		close(fd);
	}
	free(full);
	{
		char c[300], p2[600];
		struct dirent *de;
		DIR *dp;

		snprintf(c, sizeof(c), "%s/corrupt", tdir);
		if ((dp = opendir(c)) != NULL) {
			while ((de = readdir(dp)) != NULL)
				if (de->d_name[0] != '.') {
					snprintf(p2, sizeof(p2), "%s/%s", c, de->d_name);
					unlink(p2);
				}
			closedir(dp);
		}
		rmdir(c);
		close(open(c, O_WRONLY | O_CREAT, 0600));
		q = topen();
		ok(q != NULL && queue_get(q, ids[1], &e) == Q_OK, "reopened: the good one loads");
		if (e)
			q_envelope_free(e);
		e = NULL;
		ok(queue_get(q, ids[0], &e) != Q_OK, "the damaged one is not queued");
		queue_close(q);
		unlink(c);
		mkdir(c, 0700);
	}
	q = topen();
	is_int(count_dir("corrupt"), 1, "its copy failed, so it stayed in its segment: "
	    "at the next start it is quarantined, a copy in corrupt/");
	(void)queue_delete(q, ids[1]);
	is_int(count_dir("seg"), 0, "the other purged: the segment is gone");
	queue_close(q);

	/* moved to its file before a crash (no V marker), then its segment
	 * copy damaged: the file wins, nothing is quarantined */
	{
		char hid[QUEUE_ID_LEN + 1], c[300], mpath[600], *p;
		unsigned long long plen;
		int hl;

		snprintf(c, sizeof(c), "%s/corrupt", tdir);
		q = topen();
		ok(q != NULL && enq(q, 200, ids[0]) == Q_OK && enq(q, 201, ids[1]) == Q_OK,
		    "two more queued");
		queue_close(q);
		the_segment(seg, sizeof(seg));
		full = NULL;
		fd = -1;
		if (stat(seg, &st) == 0 && (full = malloc((size_t)st.st_size + 1)) != NULL &&
		    (fd = open(seg, O_RDWR)) != -1 &&
		    read(fd, full, (size_t)st.st_size) == st.st_size) {
			full[st.st_size] = '\0';
			/* the first record is ids[0]'s: its payload is a message file */
			if (sscanf(full, "OTPG1 %24s M %llu %*x %*x\n%n", hid, &plen, &hl) == 2 &&
			    strcmp(hid, ids[0]) == 0) {
				spool_path(ids[0], b, sizeof(b));
				snprintf(mpath, sizeof(mpath), "%s/%s", tdir, b);
				close(open(mpath, O_WRONLY | O_CREAT, 0600));
				if (truncate(mpath, 0) == 0) {
					int mf = open(mpath, O_WRONLY);

					if (write(mf, full + hl, (size_t)plen) != (ssize_t)plen)
						diag("write %s", mpath);
					close(mf);
				}
			}
			if ((p = memmem(full, (size_t)st.st_size, "body 200,", 9)) != NULL) {
				p[0] ^= 0x20;
				if (pwrite(fd, p, 1, p - full) != 1)
					diag("pwrite: %s", strerror(errno));
			}
		}
		if (fd != -1)
			close(fd);
		free(full);
		q = topen();
		body_of(200, b, sizeof(b));
		ok(q != NULL && queue_body(q, ids[0], &data, &len) == Q_OK && len == strlen(b) &&
		    memcmp(data, b, len) == 0, "reopened: the message loads from its file");
		free(data);
		is_int(count_dir("corrupt"), 1, "its damaged segment copy is not quarantined "
		    "(corrupt/ holds only the earlier one)");
		(void)queue_delete(q, ids[0]);
		(void)queue_delete(q, ids[1]);
		is_int(count_dir("seg") + count_msgs(), 0, "both purged: no segment, no file");
		queue_close(q);
	}

	/* a damaged message record with an empty payload, a record after it
	 * (tests/fuzz/crashes/segment-damaged-empty-payload-not-quarantined) */
	{
		static const char rec[] =
		    "OTPG1 00000000000000010000beef M 0 00000001 c553e212\nEND\n"
		    "OTPG1 00000000000000010000beef S 1 8cdc1683 7c2a5058\nxEND\n";
		char path[400];

		snprintf(path, sizeof(path), "%s/seg/0000000000000001", tdir);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (write(fd, rec, sizeof(rec) - 1) != (ssize_t)sizeof(rec) - 1)
			diag("write %s", path);
		close(fd);
		q = topen();
		snprintf(path, sizeof(path), "%s/corrupt/00000000000000010000beef", tdir);
		ok(q != NULL && stat(path, &st) == 0 && st.st_size == 0,
		    "a damaged record with an empty payload: quarantined, an empty copy");
		is_int(count_dir("seg"), 0, "and its segment, nothing left in it, is gone");
		queue_close(q);
	}

	/* segments on, then off across a restart: what they hold is still
	 * read and delivered, new messages get files */
	{
		size_t files;
		char nid[QUEUE_ID_LEN + 1];

		q = topen();
		for (i = 0; i < 3; i++)
			if (q == NULL || enq(q, 300 + i, ids[i]) != Q_OK)
				break;
		is_int(i, 3, "three messages queued in a segment");
		files = count_msgs();
		if (q != NULL)
			queue_close(q);
		unsetenv("OTPMAIL_SPOOL_SEGMENTS");
		q = topen();
		for (i = 0, good = 0; q != NULL && i < 3; i++) {
			body_of(300 + i, b, sizeof(b));
			if (queue_body(q, ids[i], &data, &len) == Q_OK && len == strlen(b) &&
			    memcmp(data, b, len) == 0)
				good++;
			free(data);
		}
		is_int(good, 3, "segments off: the three are read from their segment");
		ok(q != NULL && enq(q, 310, nid) == Q_OK && count_msgs() == files + 1,
		    "a new message gets a file of its own");
		for (i = 0; q != NULL && i < 3; i++)
			(void)queue_delete(q, ids[i]);
		(void)queue_delete(q, nid);
		is_int(count_dir("seg"), 0, "the three purged: their segment is gone");
		if (q != NULL)
			queue_close(q);
		setenv("OTPMAIL_SPOOL_SEGMENTS", "1", 1);
	}
	return done_testing();
}
