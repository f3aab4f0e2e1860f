/*
 * test_segment.c - queue/segment.c (a draft, not used by the spool yet):
 * appends from many threads read back whole after a reopen; a segment cut
 * at every byte of its last record keeps the records before and cuts the
 * tail; a bad CRC ends a segment there, and a record-like text inside a
 * body is never read as a record; state records are read back, the last
 * whole, and count nothing out; markers count messages out and a
 * segment with none left goes (not the current one); segments roll.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "queue/segment.h"
#include "tests/unit/tap.h"

#define NTHREADS	8
#define PER_THREAD	50

static char	 tdir[256], sdir[300];

struct seen {
	struct seg_loc last;
	int	 n, m, d, st, x, bad;
	char	 ids[1000][QUEUE_ID_LEN + 1];
	struct seg_loc locs[1000];
};

static int
collect(void *arg, uint64_t seg, const char *id, char kind, const struct seg_loc *loc)
{
	struct seen *s = arg;

	(void)seg;
	s->n++;
	if (kind == SEG_MESSAGE && s->m < 1000) {
		snprintf(s->ids[s->m], sizeof(s->ids[0]), "%s", id);
		s->locs[s->m++] = *loc;
	} else if (kind == SEG_REMOVED)
		s->d++;
	else if (kind == SEG_DAMAGED)
		s->x++;
	else if (kind == SEG_STATE) {
		s->st++;
		s->last = *loc;		/* read after the scan: fn may not call back */
	}
	else
		s->bad++;
	return 0;
}

static struct segs *
sopen(uint64_t roll)
{
	char err[256];
	struct segs *ss = segs_open(sdir, roll, NULL, err, sizeof(err));

	if (ss == NULL)
		diag("segs_open: %s", err);
	return ss;
}

static void
body_of(const char *id, char *out, size_t len)
{
	snprintf(out, len, "OTPQ1 body of %s\nOTPG1 %s M 3 00000000\nabcEND\n", id, id);
}

struct job {
	struct segs	*ss;
	int		 k, fails;
};

static void *
writer(void *arg)
{
	struct job *j = arg;
	char id[QUEUE_ID_LEN + 1], body[256];
	struct iovec iov;
	struct seg_loc loc;
	int i;

	for (i = 0; i < PER_THREAD; i++) {
		snprintf(id, sizeof(id), "%016x%08x", j->k * 1000 + i, 0xabcdef01u);
		body_of(id, body, sizeof(body));
		iov.iov_base = body;
		iov.iov_len = strlen(body);
		if (segs_append(j->ss, id, &iov, 1, &loc) != Q_OK)
			j->fails++;
	}
	return NULL;
}

static size_t
files_in(const char *dir)
{
	struct dirent *de;
	size_t n = 0;
	DIR *dp = opendir(dir);

	if (dp == NULL)
		return 0;
	while ((de = readdir(dp)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(dp);
	return n;
}

static int
one_segment(char *path, size_t len)
{
	struct dirent *de;
	DIR *dp = opendir(sdir);
	int n = 0;

	if (dp == NULL)
		return 0;
	while ((de = readdir(dp)) != NULL)
		if (de->d_name[0] != '.') {
			snprintf(path, len, "%s/%s", sdir, de->d_name);
			n++;
		}
	closedir(dp);
	return n;
}

static void
test_threads(void)
{
	pthread_t th[NTHREADS];
	struct job j[NTHREADS];
	struct segs *ss = sopen(0);
	struct seen *s = calloc(1, sizeof(*s));
	char body[256], buf[256];
	int i, fails = 0, good = 0;

	for (i = 0; i < NTHREADS; i++) {
		j[i].ss = ss;
		j[i].k = i;
		j[i].fails = 0;
		pthread_create(&th[i], NULL, writer, &j[i]);
	}
	for (i = 0; i < NTHREADS; i++) {
		pthread_join(th[i], NULL);
		fails += j[i].fails;
	}
	is_int(fails, 0, "400 appends from 8 threads, none refused");
	diag("%llu sync rounds for %d appends", (unsigned long long)segs_rounds(ss),
	    NTHREADS * PER_THREAD);
	ok(segs_rounds(ss) < (uint64_t)(NTHREADS * PER_THREAD),
	    "fewer sync rounds than appends (grouped)");
	segs_close(ss);
	ss = sopen(0);
	ok(segs_scan(ss, collect, s) == 0, "reopened: the scan reads the segment");
	is_int(s->m, NTHREADS * PER_THREAD, "every message is there");
	for (i = 0; i < s->m; i++) {
		body_of(s->ids[i], body, sizeof(body));
		if (s->locs[i].len == strlen(body) && segs_read(ss, &s->locs[i], buf) == 0 &&
		    memcmp(buf, body, s->locs[i].len) == 0)
			good++;
	}
	is_int(good, s->m, "each reads back whole at its place (a record-like text "
	    "in the body is body)");
	is_int(s->bad, 0, "no other record");
	for (i = 0; i < s->m; i++)
		segs_mark(ss, s->locs[i].seg, s->ids[i], SEG_REMOVED);
	is_int(segs_count(ss), 0, "all done: the segment (not current after a reopen) goes");
	is_int(files_in(sdir), 0, "and its file");
	segs_close(ss);
	free(s);
}

static void
test_torn_tail(void)
{
	struct segs *ss = sopen(0);
	char id[QUEUE_ID_LEN + 1], body[256], path[600];
	struct seg_loc loc;
	struct iovec iov;
	struct stat st;
	off_t full, before = 0, cut;
	int i, fd, bad = 0, wrong = 0;
	struct seen *s;
	char *copy;

	for (i = 0; i < 3; i++) {
		snprintf(id, sizeof(id), "%016x%08x", 7000 + i, 0x12345678u);
		body_of(id, body, sizeof(body));
		iov.iov_base = body;
		iov.iov_len = strlen(body);
		segs_append(ss, id, &iov, 1, &loc);
		if (i == 1) {
			one_segment(path, sizeof(path));
			stat(path, &st);
			before = st.st_size;
		}
	}
	segs_close(ss);
	ok(one_segment(path, sizeof(path)) == 1, "one segment");
	stat(path, &st);
	full = st.st_size;
	copy = malloc((size_t)full);
	fd = open(path, O_RDONLY);
	if (read(fd, copy, (size_t)full) != full)
		bad++;
	close(fd);
	for (cut = before; cut < full; cut++) {
		fd = open(path, O_WRONLY | O_TRUNC);
		if (write(fd, copy, (size_t)cut) != cut)
			bad++;
		close(fd);
		s = calloc(1, sizeof(*s));
		ss = sopen(0);
		if (segs_scan(ss, collect, s) != 0 || s->m != 2)
			wrong++;
		stat(path, &st);
		if (st.st_size != before)
			wrong++;
		segs_close(ss);
		free(s);
	}
	is_int(bad, 0, "the segment copied and cut");
	is_int(wrong, 0, "cut at every byte of its last record: the two before are read, "
	    "the tail is cut off");
	/* a bad CRC in the middle record ends the segment there */
	fd = open(path, O_WRONLY | O_TRUNC);
	copy[before - 10] ^= 0x20;	/* inside the second record's payload */
	if (write(fd, copy, (size_t)full) != full)
		bad++;
	close(fd);
	s = calloc(1, sizeof(*s));
	ss = sopen(0);
	segs_scan(ss, collect, s);
	ok(s->m == 2 && s->x == 1, "a bad CRC in the second record: named damaged, and "
	    "the walk goes on by its header's length to the third");
	segs_close(ss);
	free(s);
	free(copy);
	unlink(path);
}

static void
test_state(void)
{
	struct segs *ss = sopen(0);
	char id[QUEUE_ID_LEN + 1], body[256];
	struct seg_loc loc;
	struct iovec iov;
	struct seen *s = calloc(1, sizeof(*s));

	snprintf(id, sizeof(id), "%016x%08x", 8000, 0x2u);
	body_of(id, body, sizeof(body));
	iov.iov_base = body;
	iov.iov_len = strlen(body);
	ok(segs_append(ss, id, &iov, 1, &loc) == Q_OK, "a message");
	iov.iov_base = "v 1\nstate one\n.\n";
	iov.iov_len = strlen(iov.iov_base);
	ok(segs_state(ss, loc.seg, id, &iov, 1, NULL) == Q_OK, "a state record");
	iov.iov_base = "v 1\nstate two\n.\n";
	iov.iov_len = strlen(iov.iov_base);
	ok(segs_state(ss, loc.seg, id, &iov, 1, NULL) == Q_OK, "another");
	is_int(segs_live(ss, loc.seg), 1, "state records do not count the message out");
	segs_close(ss);
	ss = sopen(0);
	segs_scan(ss, collect, s);
	memset(body, 0, sizeof(body));
	ok(s->m == 1 && s->st == 2 && s->last.len < sizeof(body) &&
	    segs_read(ss, &s->last, body) == 0 && strcmp(body, "v 1\nstate two\n.\n") == 0,
	    "reopened: the message and its two states, the last one whole");
	is_int(segs_live(ss, loc.seg), 1, "still live");
	segs_mark(ss, loc.seg, id, SEG_REMOVED);
	is_int(segs_count(ss), 0, "removed: the segment goes");
	segs_close(ss);
	free(s);
}

static void
test_roll(void)
{
	struct segs *ss = sopen(1000);
	char id[QUEUE_ID_LEN + 1], body[256];
	struct seg_loc loc[20];
	struct iovec iov;
	int i;

	for (i = 0; i < 20; i++) {
		snprintf(id, sizeof(id), "%016x%08x", 9000 + i, 0x1u);
		body_of(id, body, sizeof(body));
		iov.iov_base = body;
		iov.iov_len = strlen(body);
		segs_append(ss, id, &iov, 1, &loc[i]);
	}
	ok(segs_count(ss) > 2, "a small roll size: several segments");
	ok(loc[0].seg != loc[19].seg, "the first and last message in different ones");
	for (i = 0; i < 20; i++)
		if (loc[i].seg == loc[0].seg) {
			snprintf(id, sizeof(id), "%016x%08x", 9000 + i, 0x1u);
			segs_mark(ss, loc[i].seg, id, SEG_REMOVED);
		}
	is_int(segs_live(ss, loc[0].seg), 0, "the first segment's messages done");
	ok(segs_count(ss) >= 2 && files_in(sdir) == segs_count(ss),
	    "it went; the others stay");
	for (i = 0; i < 20; i++)
		if (loc[i].seg != loc[0].seg && loc[i].seg != loc[19].seg) {
			snprintf(id, sizeof(id), "%016x%08x", 9000 + i, 0x1u);
			segs_mark(ss, loc[i].seg, id, SEG_REMOVED);
		}
	for (i = 0; i < 20; i++)
		if (loc[i].seg == loc[19].seg) {
			snprintf(id, sizeof(id), "%016x%08x", 9000 + i, 0x1u);
			segs_mark(ss, loc[i].seg, id, SEG_REMOVED);
		}
	is_int(segs_count(ss), 1, "all done: only the current segment stays");
	segs_close(ss);
	ss = sopen(1000);
	ok(segs_scan(ss, NULL, NULL) == 0 && segs_count(ss) == 0,
	    "reopened: an empty segment (done markers only) goes at the scan");
	segs_close(ss);
}

int
main(void)
{
	snprintf(tdir, sizeof(tdir), "/tmp/otpmail-seg-XXXXXX");
	if (mkdtemp(tdir) == NULL)
		return 1;
	snprintf(sdir, sizeof(sdir), "%s/seg", tdir);
	test_threads();
	test_torn_tail();
	test_state();
	test_roll();
	rmdir(sdir);
	rmdir(tdir);
	return done_testing();
}
