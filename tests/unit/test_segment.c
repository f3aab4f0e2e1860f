/*
 * test_segment.c - queue/segment.c: appends from many threads read back
 * whole after a reopen; a segment cut at every byte of its last record
 * keeps the records before and cuts the tail; a bad CRC names a damaged
 * message and the walk goes on, and a record-like text inside a body is
 * never read as a record; state records are read back, the last whole,
 * and count nothing out; markers count messages out and a segment with
 * none left goes (not the current one); segments roll.  Then what went
 * wrong before: a failed sync refuses its whole group and the writers
 * that joined it meanwhile, and the segment takes no more records; file
 * names that are not a segment's (signs, capitals, symlinks) are left
 * alone; a marker for no live message of its segment counts nothing out;
 * fn's -1 cuts nothing; garbage with no copy in corrupt/ is not cut; a
 * read past the whole records is refused; a marker with a bad id and a
 * payload too long to read back are refused; a damaged last record with
 * its END there is cut with a copy kept.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "queue/segment.h"
#include "tests/unit/tap.h"

#define NTHREADS	8
#define PER_THREAD	50

static char	 tdir[256], sdir[300];

struct seen {
	struct segs	*ss;		/* given: fn reads each state record */
	char	 lastbuf[256];
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
		s->last = *loc;
		if (s->ss != NULL && loc->len < sizeof(s->lastbuf) &&
		    segs_read(s->ss, loc, s->lastbuf) == 0)
			s->lastbuf[loc->len] = '\0';
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

/* Removes dir and the files in it. */
static void
rm_dir(const char *dir)
{
	struct dirent *de;
	char path[700];
	DIR *dp;

	if ((dp = opendir(dir)) != NULL) {
		while ((de = readdir(dp)) != NULL)
			if (de->d_name[0] != '.') {
				snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
				unlink(path);
			}
		closedir(dp);
	}
	rmdir(dir);
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
	s->ss = ss;
	segs_scan(ss, collect, s);
	ok(strcmp(s->lastbuf, "v 1\nstate two\n.\n") == 0,
	    "fn reads a record with segs_read during the scan");
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

/* --- a failed sync ---------------------------------------------------- */

struct failjob {
	struct segs	*ss;
	struct seg_loc	 loc;
	enum q_status	 st;
	int		 k;
};

static struct failjob	*fail_second;
static pthread_t	 fail_th;
static int		 fail_calls;

static void *
fail_writer(void *arg)
{
	struct failjob *j = arg;
	char id[QUEUE_ID_LEN + 1], body[256];
	struct iovec iov;

	snprintf(id, sizeof(id), "%016x%08x", 11000 + j->k, 0x5u);
	body_of(id, body, sizeof(body));
	iov.iov_base = body;
	iov.iov_len = strlen(body);
	j->st = segs_append(j->ss, id, &iov, 1, &j->loc);
	return NULL;
}

static off_t
seg_size(uint64_t no)
{
	char path[400];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%016llx", sdir, (unsigned long long)no);
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* The first round: a second writer appends to the same segment while it
 * runs, then the sync fails; later rounds succeed. */
static int
fail_hook(uint64_t no)
{
	off_t before;
	int i;

	if (fail_calls++ > 0)
		return 0;
	before = seg_size(no);
	pthread_create(&fail_th, NULL, fail_writer, fail_second);
	for (i = 0; i < 400 && seg_size(no) == before; i++)
		usleep(5000);
	errno = EIO;
	return -1;
}

static void
test_sync_fail(void)
{
	struct segs *ss = sopen(0);
	struct failjob first, second, third, before;
	char id[QUEUE_ID_LEN + 1];
	struct iovec iov;

	memset(&before, 0, sizeof(before));
	before.ss = ss;
	before.k = 0;
	fail_writer(&before);
	memset(&first, 0, sizeof(first));
	memset(&second, 0, sizeof(second));
	memset(&third, 0, sizeof(third));
	first.ss = second.ss = third.ss = ss;
	first.k = 1;
	second.k = 2;
	third.k = 3;
	fail_second = &second;
	fail_calls = 0;
	segs_sync_test_hook = fail_hook;
	fail_writer(&first);
	pthread_join(fail_th, NULL);
	segs_sync_test_hook = NULL;
	is_int(first.st, Q_TEMPFAIL, "a failed sync: its writer is refused");
	ok(second.loc.seg == first.loc.seg && second.st == Q_TEMPFAIL,
	    "a writer that appended to the segment during the failed round is refused "
	    "too (a later round's sync is no proof)");
	iov.iov_base = "v 1\n.\n";
	iov.iov_len = 6;
	snprintf(id, sizeof(id), "%016x%08x", 11001, 0x5u);
	is_int(segs_state(ss, first.loc.seg, id, &iov, 1, NULL), Q_NOTFOUND,
	    "the segment takes no more records (state refused)");
	fail_writer(&third);
	ok(third.st == Q_OK && third.loc.seg != first.loc.seg,
	    "the next append goes to a new segment and is acknowledged");
	ok(before.st == Q_OK && before.loc.seg == first.loc.seg,
	    "(a message acknowledged before, in the same segment)");
	segs_mark(ss, first.loc.seg, id, SEG_CANCEL);
	snprintf(id, sizeof(id), "%016x%08x", 11002, 0x5u);
	segs_mark(ss, second.loc.seg, id, SEG_CANCEL);
	is_int(segs_live(ss, first.loc.seg), 1, "both refused marked C: the acknowledged "
	    "one is left in the broken segment");
	segs_close(ss);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	is_int(segs_live(ss, first.loc.seg), 1, "reopened: the refused ones do not come back "
	    "(their C markers went to the broken segment)");
	snprintf(id, sizeof(id), "%016x%08x", 11000, 0x5u);
	segs_mark(ss, before.loc.seg, id, SEG_REMOVED);
	snprintf(id, sizeof(id), "%016x%08x", 11003, 0x5u);
	segs_mark(ss, third.loc.seg, id, SEG_REMOVED);
	is_int(segs_count(ss), 0, "all removed: both segments go");
	segs_close(ss);
}

/* --- a short write ----------------------------------------------------- */

static void	append_one(struct segs *, int, struct seg_loc *, char[QUEUE_ID_LEN + 1]);

static char	 last_log[512];

static void
keep_log(int prio, const char *line)
{
	(void)prio;
	snprintf(last_log, sizeof(last_log), "%s", line);
}

static void
test_short_write(void)
{
	char err[256], id[QUEUE_ID_LEN + 1], body[400];
	struct segs *ss = segs_open(sdir, 0, keep_log, err, sizeof(err));
	struct seg_loc loc, l2;
	struct rlimit old, lim;
	struct iovec iov;
	enum q_status st;
	off_t size;

	append_one(ss, 19000, &loc, id);
	size = seg_size(loc.seg);
	/* the file may grow by 10 bytes: the first writev is short, the
	 * next fails with EFBIG (as a full disk gives a short write, then
	 * ENOSPC) */
	signal(SIGXFSZ, SIG_IGN);
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = (rlim_t)size + 10;
	setrlimit(RLIMIT_FSIZE, &lim);
	snprintf(id, sizeof(id), "%016x%08x", 19001, 0x7u);
	memset(body, 'b', sizeof(body));
	iov.iov_base = body;
	iov.iov_len = sizeof(body);
	st = segs_append(ss, id, &iov, 1, &l2);
	setrlimit(RLIMIT_FSIZE, &old);
	is_int(st, Q_TEMPFAIL, "a short write, then a failed one: refused");
	ok(strstr(last_log, strerror(EFBIG)) != NULL, "the log says why (the second "
	    "write's errno, not EIO)");
	if (strstr(last_log, strerror(EFBIG)) == NULL)
		diag("log: %s", last_log);
	ok(seg_size(loc.seg) == size, "the piece written is cut off again");
	snprintf(id, sizeof(id), "%016x%08x", 19000, 0x7u);
	segs_mark(ss, loc.seg, id, SEG_REMOVED);
	segs_close(ss);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	is_int(segs_count(ss), 0, "reopened: nothing left");
	segs_close(ss);
}

/* --- what the scan must not trust --------------------------------------- */

static void
append_one(struct segs *ss, int k, struct seg_loc *loc, char id[QUEUE_ID_LEN + 1])
{
	char body[256];
	struct iovec iov;

	snprintf(id, QUEUE_ID_LEN + 1, "%016x%08x", k, 0x7u);
	body_of(id, body, sizeof(body));
	iov.iov_base = body;
	iov.iov_len = strlen(body);
	if (segs_append(ss, id, &iov, 1, loc) != Q_OK)
		diag("append %s refused", id);
}

static void
test_names(void)
{
	char path[600], victim[400], id[QUEUE_ID_LEN + 1];
	struct seg_loc loc;
	struct segs *ss = sopen(0);
	struct seen *s = calloc(1, sizeof(*s));
	struct stat st;
	int fd;

	append_one(ss, 12000, &loc, id);
	segs_close(ss);
	/* a file outside seg/ with a record-like garbage line */
	snprintf(victim, sizeof(victim), "%s/victim", tdir);
	fd = open(victim, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (write(fd, "not a segment\nat all\n", 21) != 21)
		diag("write victim");
	close(fd);
	snprintf(path, sizeof(path), "%s/00000000000000ff", sdir);
	if (symlink(victim, path) == -1)
		diag("symlink: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/+000000000000001", sdir);
	close(open(path, O_WRONLY | O_CREAT, 0600));
	snprintf(path, sizeof(path), "%s/000000000000000A", sdir);
	close(open(path, O_WRONLY | O_CREAT, 0600));
	snprintf(path, sizeof(path), "%s/00000000000000fe", sdir);
	mkdir(path, 0700);

	ss = sopen(0);
	ok(segs_scan(ss, collect, s) == -1, "names that cannot be read: the scan says so");
	is_int(s->m, 1, "the real segment's message is read all the same");
	ok(stat(victim, &st) == 0 && st.st_size == 21,
	    "a symlink named like a segment is not followed (its target is not cut)");
	append_one(ss, 12001, &loc, id);
	ok(loc.seg > 0xff, "a new segment is numbered past every segment name");
	segs_close(ss);
	snprintf(path, sizeof(path), "%s/00000000000000ff", sdir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/+000000000000001", sdir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/000000000000000A", sdir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/00000000000000fe", sdir);
	rmdir(path);
	unlink(victim);
	/* the two real messages, removed */
	ss = sopen(0);
	memset(s, 0, sizeof(*s));
	segs_scan(ss, collect, s);
	for (fd = 0; fd < s->m; fd++)
		segs_mark(ss, s->locs[fd].seg, s->ids[fd], SEG_REMOVED);
	is_int(segs_count(ss), 0, "cleaned up");
	segs_close(ss);
	free(s);
}

static void
test_markers(void)
{
	char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1], other[QUEUE_ID_LEN + 1];
	struct seg_loc la, lb;
	struct segs *ss = sopen(0);
	struct seen *s = calloc(1, sizeof(*s));

	append_one(ss, 13000, &la, a);
	append_one(ss, 13001, &lb, b);
	snprintf(other, sizeof(other), "%016x%08x", 13999, 0x7u);
	/* on disk: R of an id never in the segment, and A's R twice */
	segs_mark(ss, la.seg, other, SEG_REMOVED);
	segs_mark(ss, la.seg, a, SEG_REMOVED);
	segs_close(ss);
	ss = sopen(0);
	segs_scan(ss, collect, s);
	ok(s->m == 2 && s->d == 1, "reopened: two messages, one marker that counts");
	is_int(segs_live(ss, lb.seg), 1, "a marker for an id not in the segment counts "
	    "nothing out: B still live");
	is_int(segs_count(ss), 1, "and its segment stays");
	segs_mark(ss, lb.seg, b, SEG_REMOVED);
	is_int(segs_count(ss), 0, "B removed: it goes");
	segs_close(ss);
	free(s);
}

static int
stop_at_first(void *arg, uint64_t seg, const char *id, char kind, const struct seg_loc *loc)
{
	(void)arg;
	(void)seg;
	(void)id;
	(void)kind;
	(void)loc;
	return -1;
}

static void
test_fn_stop(void)
{
	char id[QUEUE_ID_LEN + 1], path[600];
	struct seg_loc loc;
	struct segs *ss = sopen(0);
	off_t size;

	append_one(ss, 14000, &loc, id);
	append_one(ss, 14001, &loc, id);
	segs_close(ss);
	size = seg_size(loc.seg);
	ss = sopen(0);
	ok(segs_scan(ss, stop_at_first, NULL) == -1, "fn says -1: the scan says -1");
	ok(seg_size(loc.seg) == size, "and nothing of the segment is cut");
	segs_close(ss);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	is_int(segs_live(ss, loc.seg), 2, "both messages still there");
	segs_close(ss);
	snprintf(path, sizeof(path), "%s/%016llx", sdir, (unsigned long long)loc.seg);
	unlink(path);
}

static void
test_garbage_no_copy(void)
{
	char id[QUEUE_ID_LEN + 1], path[600], cdir[400], body[64];
	struct seg_loc loc, bad;
	struct segs *ss = sopen(0);
	struct iovec iov;
	off_t size;
	int fd;

	append_one(ss, 15000, &loc, id);
	segs_close(ss);
	snprintf(path, sizeof(path), "%s/%016llx", sdir, (unsigned long long)loc.seg);
	fd = open(path, O_WRONLY | O_APPEND);
	if (write(fd, "garbage line\nmore of it\n", 24) != 24)
		diag("write");
	close(fd);
	size = seg_size(loc.seg);
	snprintf(cdir, sizeof(cdir), "%s/corrupt", tdir);
	rmdir(cdir);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	ok(seg_size(loc.seg) == size, "garbage, no corrupt/ for its copy: nothing is cut");
	iov.iov_base = "v 1\n.\n";
	iov.iov_len = 6;
	is_int(segs_state(ss, loc.seg, id, &iov, 1, NULL), Q_NOTFOUND,
	    "and the segment takes no more records");
	bad = loc;
	bad.off = loc.off + 10;
	ok(segs_read(ss, &bad, body) == -1 && errno == EINVAL,
	    "a read past the whole records is refused");
	segs_close(ss);
	mkdir(cdir, 0700);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	ok(seg_size(loc.seg) == size - 24 && files_in(cdir) == 1,
	    "with corrupt/: a copy there, then the garbage cut");
	segs_mark(ss, loc.seg, id, SEG_REMOVED);
	segs_close(ss);
	rm_dir(cdir);
}

static void
test_limits(void)
{
	char id[QUEUE_ID_LEN + 1], path[600], cdir[400], small[8] = "x";
	struct seg_loc loc, l2;
	struct segs *ss = sopen(0);
	struct iovec iov;
	off_t size;
	int fd;

	append_one(ss, 16000, &loc, id);
	size = seg_size(loc.seg);
	segs_mark(ss, loc.seg, "../../etc/x y\nOTPG1", SEG_REMOVED);
	ok(seg_size(loc.seg) == size && segs_live(ss, loc.seg) == 1,
	    "a marker for a bad id writes nothing and counts nothing out");
	segs_mark(ss, loc.seg, id, SEG_MESSAGE);
	ok(seg_size(loc.seg) == size && segs_live(ss, loc.seg) == 1,
	    "nor does a marker of a kind that is not R, V or C");
	iov.iov_base = small;
	iov.iov_len = (size_t)Q_MAX_ENV + Q_MAX_BODY + 8192;
	snprintf(id, sizeof(id), "%016x%08x", 16001, 0x7u);
	is_int(segs_append(ss, id, &iov, 1, &l2), Q_BADINPUT,
	    "a payload longer than the scan reads back is refused before it is written");
	ok(seg_size(loc.seg) == size, "nothing written");
	segs_close(ss);
	/* the last record damaged with its END there: cut, and a copy kept */
	snprintf(path, sizeof(path), "%s/%016llx", sdir, (unsigned long long)loc.seg);
	fd = open(path, O_RDWR);
	if (pwrite(fd, "#", 1, (off_t)loc.off + 3) != 1)
		diag("pwrite");
	close(fd);
	snprintf(cdir, sizeof(cdir), "%s/corrupt", tdir);
	mkdir(cdir, 0700);
	ss = sopen(0);
	segs_scan(ss, NULL, NULL);
	ok(seg_size(loc.seg) <= 0 && files_in(cdir) == 1,
	    "a last record whose CRC fails but whose END is there: cut (the segment, "
	    "empty, goes), a copy kept");
	segs_close(ss);
	rm_dir(cdir);
	unlink(path);
}

/* Hostile headers after one good record: each with its own header CRC
 * right, so only the fields can refuse it. */
static void
test_hostile_headers(void)
{
	static const char *const bad[] = {
		"OTPG1 %s M 1099511627776 00000000",	/* 1 TiB: past the bound */
		"OTPG1 %s M -1 00000000",		/* negative */
		"OTPG1 %s M 18446744073709551617 00000000",	/* wraps */
		"OTPG1 ../../../../etc/passwd00 M 2 00000000",	/* not an id */
		"OTPG1 00000000000000000000000G M 2 00000000",	/* not hex */
		"OTPG1 %s Z 2 00000000",		/* unknown kind */
		"OTPG1 %s M 02 00000000",		/* not canonical */
	};
	char id[QUEUE_ID_LEN + 1], path[600], cdir[400], line[200], rec[300], p2[700];
	struct seg_loc loc;
	struct segs *ss;
	struct seen *s = calloc(1, sizeof(*s));
	struct dirent *de;
	size_t k, wrong = 0, copies = 0, kept = 0;
	off_t good;
	DIR *dp;
	int fd, n;

	snprintf(cdir, sizeof(cdir), "%s/corrupt", tdir);
	mkdir(cdir, 0700);
	for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		ss = sopen(0);
		append_one(ss, 18000 + (int)k, &loc, id);
		segs_close(ss);
		good = seg_size(loc.seg);
		snprintf(line, sizeof(line), bad[k], id);
		n = snprintf(rec, sizeof(rec), "%s %08x\nab\nEND\n", line,
		    (unsigned)spool_crc32(0, line, strlen(line)));
		snprintf(path, sizeof(path), "%s/%016llx", sdir, (unsigned long long)loc.seg);
		fd = open(path, O_WRONLY | O_APPEND);
		if (write(fd, rec, (size_t)n) != n)
			diag("write");
		close(fd);
		memset(s, 0, sizeof(*s));
		ss = sopen(0);
		if (segs_scan(ss, collect, s) != 0 || s->m != 1 || s->bad != 0 || s->x != 0)
			wrong++;
		if (seg_size(loc.seg) == good)
			kept++;
		segs_mark(ss, loc.seg, id, SEG_REMOVED);
		segs_close(ss);
		unlink(path);
	}
	if ((dp = opendir(cdir)) != NULL) {
		while ((de = readdir(dp)) != NULL)
			if (de->d_name[0] != '.') {
				snprintf(p2, sizeof(p2), "%s/%s", cdir, de->d_name);
				unlink(p2);
				copies++;
			}
		closedir(dp);
	}
	rmdir(cdir);
	is_int(wrong, 0, "7 hostile headers (huge, negative, wrapping lengths, a path for "
	    "an id, non-hex, unknown kind, leading zero): never a record");
	is_int(kept, 7, "each cut off, the good record before it kept");
	is_int(copies, 7, "each segment copied to corrupt/ first (garbage, not a torn tail)");
	free(s);
}

/* Appends, reads, states and markers from many threads over small
 * segments that roll and go while others are written (TSan). */
struct churn {
	struct segs	*ss;
	int		 k, bad;
};

static void *
churner(void *arg)
{
	struct churn *c = arg;
	char id[QUEUE_ID_LEN + 1], body[256], buf[256];
	struct seg_loc loc;
	struct iovec iov;
	int i;

	for (i = 0; i < 100; i++) {
		snprintf(id, sizeof(id), "%016x%08x", 17000 + c->k * 1000 + i, 0x9u);
		body_of(id, body, sizeof(body));
		iov.iov_base = body;
		iov.iov_len = strlen(body);
		if (segs_append(c->ss, id, &iov, 1, &loc) != Q_OK) {
			c->bad++;
			continue;
		}
		if (segs_read(c->ss, &loc, buf) != 0 || memcmp(buf, body, loc.len) != 0)
			c->bad++;
		iov.iov_base = "v 1\n.\n";
		iov.iov_len = 6;
		if (segs_state(c->ss, loc.seg, id, &iov, 1, NULL) != Q_OK)
			c->bad++;
		segs_mark(c->ss, loc.seg, id, SEG_REMOVED);
	}
	return NULL;
}

static void
test_churn(void)
{
	pthread_t th[4];
	struct churn c[4];
	struct segs *ss = sopen(600);
	int i, bad = 0;

	for (i = 0; i < 4; i++) {
		c[i].ss = ss;
		c[i].k = i;
		c[i].bad = 0;
		pthread_create(&th[i], NULL, churner, &c[i]);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		bad += c[i].bad;
	}
	is_int(bad, 0, "4 threads append, read, state and remove over rolling segments");
	ok(segs_count(ss) <= 1 && files_in(sdir) == segs_count(ss),
	    "every segment but the current one went, file and all");
	segs_close(ss);
	ss = sopen(600);
	ok(segs_scan(ss, NULL, NULL) == 0 && segs_count(ss) == 0, "reopened: nothing left");
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
	test_sync_fail();
	test_short_write();
	test_names();
	test_markers();
	test_fn_stop();
	test_garbage_no_copy();
	test_limits();
	test_hostile_headers();
	test_churn();
	rmdir(sdir);
	rmdir(tdir);
	return done_testing();
}
