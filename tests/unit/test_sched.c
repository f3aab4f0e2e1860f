/*
 * test_sched.c - the scheduler and the queue's life cycle: heap order,
 * OTP before default, backoff doubling and jitter bounds, flush, hold,
 * pause, expiry (OTP silently, default with one DSN), permanent failure,
 * no bounce of a bounce, leases never handed out twice, delete during a
 * lease, and purge after keep_done.  A fake clock drives time.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/queue_int.h"
#include "tests/unit/tap.h"

#define BAIL do { diag("cannot go on"); exit(done_testing() | 1); } while (0)

static char		 tdir[256];
static volatile time_t	 fake_now = 1800000000;

static time_t
fake_clock(void)
{
	return fake_now;
}

static struct queue *
topen(void)
{
	struct queue_params p;
	char err[256];
	struct queue *q;

	memset(&p, 0, sizeof(p));
	p.dir = tdir;
	p.klass[Q_CLASS_OTP] = (struct q_class_params){ 5, 40, 300, 0.2 };
	p.klass[Q_CLASS_DEFAULT] = (struct q_class_params){ 300, 4000, 5 * 86400, 0.2 };
	p.keep_done = 600;
	p.hostname = "mx.example.net";
	p.bounce_from = "MAILER-DAEMON@mx.example.net";
	q = queue_open(&p, err, sizeof(err));
	if (q == NULL)
		diag("queue_open: %s", err);
	else
		queue_set_clock(q, fake_clock);
	return q;
}

static enum q_status
enq(struct queue *q, enum q_class c, const char *sender, const char *rcpt,
    time_t expires, char id[QUEUE_ID_LEN + 1])
{
	static const char msg[] = "From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n";
	struct q_rcpt r = { .addr = (char *)rcpt };
	struct q_envelope t;

	memset(&t, 0, sizeof(t));
	t.klass = c;
	t.sender = (char *)sender;
	t.rcpts = &r;
	t.nrcpt = 1;
	t.expires = expires;
	return queue_enqueue(q, &t, msg, sizeof(msg) - 1, id);
}

static size_t
qcount(struct queue *q, int state)
{
	struct q_filter f = { .state = state, .klass = -1, .limit = 100000 };
	struct q_envelope **v;
	size_t n = 0;
	int more;

	if (queue_list(q, &f, &v, &n, &more) != Q_OK)
		return (size_t)-1;
	q_envelope_list_free(v, n);
	return n;
}

static void
test_heap(void)
{
	struct sched_heap h;
	struct sched_node nd[500];
	char idbuf[500][8];
	time_t last = -1000;
	int i, sorted = 1;

	sched_heap_init(&h);
	srand(7);
	for (i = 0; i < 500; i++) {
		snprintf(idbuf[i], sizeof(idbuf[i]), "%05d", i);
		nd[i].id = idbuf[i];
		nd[i].idx = SCHED_NONE;
		sched_heap_set(&h, &nd[i], rand() % 1000);
	}
	for (i = 0; i < 500; i += 5)
		sched_heap_del(&h, &nd[i]);
	sched_heap_set(&h, &nd[1], -5);	/* move to the front */
	is_int(h.n, 400, "400 nodes after 100 deletions");
	ok(sched_heap_top(&h) == &nd[1], "an updated key moves the node");
	while (h.n > 0) {
		struct sched_node *t = sched_heap_top(&h);

		if (t->key < last)
			sorted = 0;
		last = t->key;
		sched_heap_del(&h, t);
	}
	ok(sorted, "nodes come out in key order");
	sched_heap_free(&h);

	/* equal keys: the older id first */
	{
		struct sched_node a = { .id = "b", .idx = SCHED_NONE };
		struct sched_node b = { .id = "a", .idx = SCHED_NONE };

		sched_heap_init(&h);
		sched_heap_set(&h, &a, 10);
		sched_heap_set(&h, &b, 10);
		ok(sched_heap_top(&h) == &b, "ties go to the older id");
		sched_heap_free(&h);
	}
	/* OTP before default, even when the default one is older */
	{
		struct sched s;
		struct sched_node o = { .id = "2", .idx = SCHED_NONE };
		struct sched_node d = { .id = "1", .idx = SCHED_NONE };

		sched_init(&s);
		sched_heap_set(&s.run[Q_CLASS_DEFAULT], &d, 100);
		sched_heap_set(&s.run[Q_CLASS_OTP], &o, 150);
		ok(sched_due(&s, 120) == &d, "only the default one is due at 120");
		ok(sched_due(&s, 200) == &o, "both due: OTP first");
		ok(sched_due(&s, 50) == NULL, "nothing due at 50");
		is_int(sched_next(&s), 100, "next due at 100");
		sched_free(&s);
	}
}

static void
test_backoff(void)
{
	struct q_class_params otp = { 5, 40, 300, 0 }, def = { 300, 4000, 0, 0.2 };
	int i, d, lo_hit = 0, hi_hit = 0, in = 1;

	is_int(sched_backoff(&otp, 1, 0.5), 5, "otp: first retry 5 s");
	is_int(sched_backoff(&otp, 2, 0.5), 10, "otp: then 10 s");
	is_int(sched_backoff(&otp, 3, 0.5), 20, "otp: then 20 s");
	is_int(sched_backoff(&otp, 4, 0.5), 40, "otp: then 40 s");
	is_int(sched_backoff(&otp, 9, 0.5), 40, "otp: capped at retry_max");
	is_int(sched_backoff(&otp, 1000000, 0.5), 40, "huge attempt count stays capped");
	is_int(sched_backoff(&def, 1, 0.5), 300, "default: 300 s without jitter draw");
	for (i = 0; i < 20000; i++) {
		d = sched_backoff(&def, 2, sched_random());
		if (d < 480 || d > 720)
			in = 0;
		if (d < 500)
			lo_hit = 1;
		if (d > 700)
			hi_hit = 1;
	}
	ok(in, "jitter stays within 600 s +- 20%");
	ok(lo_hit && hi_hit, "jitter reaches both ends of its range");
	def.jitter = 5;
	d = sched_backoff(&def, 1, 0.0);
	ok(d >= 1, "absurd jitter is clamped, never <= 0");
}

static void
test_lifecycle(void)
{
	char d1[QUEUE_ID_LEN + 1], o1[QUEUE_ID_LEN + 1], b1[QUEUE_ID_LEN + 1];
	struct q_envelope *e, *e2;
	struct queue *q;
	time_t t0 = fake_now;

	q = topen();
	is_int(enq(q, Q_CLASS_DEFAULT, "app@example.org", "x@example.com", 0, d1), Q_OK,
	    "enqueue default");
	fake_now++;
	is_int(enq(q, Q_CLASS_OTP, "app@example.org", "y@example.net", t0 + 120, o1), Q_OK,
	    "enqueue otp (newer)");
	ok(queue_lease(q, 0, &e) == Q_OK && strcmp(e->id, o1) == 0, "OTP leased first");
	ok(queue_lease(q, 0, &e2) == Q_OK && strcmp(e2->id, d1) == 0, "then default");
	{
		struct q_envelope *e3 = NULL;

		ok(queue_lease(q, 50, &e3) == Q_NOTFOUND, "a leased message is never handed out twice");
		if (e3 != NULL)
			queue_release_lease(q, e3);
	}
	queue_release_lease(q, e2);	/* nothing tried */
	{
		struct q_envelope *g;

		ok(queue_get(q, o1, &g) == Q_OK && g->state == Q_MSG_DELIVERING, "state delivering");
		q_envelope_free(g);
	}
	/* OTP deferred: retried 5 s +- 20% later */
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	e->rcpts[0].reply = strdup("421 4.4.2 timeout");
	queue_release_lease(q, e);
	ok(queue_get(q, o1, &e) == Q_OK, "get otp");
	ok(e->next_attempt >= fake_now + 4 && e->next_attempt <= fake_now + 6,
	    "otp next attempt 5 s +- jitter");
	is_int(e->state, Q_MSG_DEFERRED, "otp deferred");
	q_envelope_free(e);
	ok(queue_lease(q, 0, &e) == Q_NOTFOUND, "not due before its retry time");
	ok(queue_get(q, o1, &e) == Q_OK, "get otp before the flush");
	{
		time_t sched = e->next_attempt;
		int tries = e->attempts;
		size_t n;

		q_envelope_free(e);
		/* flush makes it due */
		ok(queue_flush(q, NULL, "EXAMPLE.net", &n) == Q_OK && n == 1, "flush by domain");
		ok(queue_lease(q, 0, &e) == Q_OK && strcmp(e->id, o1) == 0, "due after flush");
		e->rcpts[0].state = Q_RCPT_DEFERRED;
		queue_release_lease(q, e);
		ok(queue_get(q, o1, &e) == Q_OK, "get otp after the flushed try");
		is_int(e->attempts, 1, "a flushed try that defers is not counted");
		is_int(e->rcpts[0].attempts, 1, "nor counted for the recipient");
		ok(e->attempts == tries && e->next_attempt == sched,
		    "and the retry schedule stays where it was (no backoff pushed)");
		q_envelope_free(e);
		fake_now = sched;
	}
	ok(queue_lease(q, 0, &e) == Q_OK && strcmp(e->id, o1) == 0, "due on its schedule");
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	queue_release_lease(q, e);
	ok(queue_get(q, o1, &e) == Q_OK && e->next_attempt >= fake_now + 8 &&
	    e->next_attempt <= fake_now + 12, "second otp retry doubles to 10 s");
	is_int(e->attempts, 2, "two counted tries");
	q_envelope_free(e);

	/* hold, release, pause */
	fake_now += 100;
	ok(queue_hold(q, o1) == Q_OK, "hold");
	ok(queue_lease(q, 0, &e) == Q_NOTFOUND, "held message is not leased");
	ok(queue_unhold(q, o1) == Q_OK, "release");
	queue_pause(q, 1);
	ok(queue_lease(q, 0, &e) == Q_NOTFOUND, "paused: nothing leased");
	queue_pause(q, 0);
	ok(queue_lease(q, 0, &e) == Q_OK && strcmp(e->id, o1) == 0, "released + resumed: due");
	queue_release_lease(q, e);	/* nothing tried: stays deferred */

	/* OTP past its expiry: expired, no DSN */
	fake_now = t0 + 121;
	queue_run_timers(q);
	ok(queue_get(q, o1, &e) == Q_OK, "expired otp still listable");
	is_int(e->state, Q_MSG_DONE, "otp done");
	is_int(e->rcpts[0].state, Q_RCPT_EXPIRED, "otp recipient expired");
	is_str(e->rcpts[0].reply, "421 4.4.2 timeout", "last remote reply kept");
	q_envelope_free(e);
	is_int(qcount(q, -1), 2, "no DSN for OTP mail");

	/* default past its lifetime: expired + one DSN to the sender */
	fake_now = t0 + 5 * 86400 + 1;
	queue_run_timers(q);
	ok(queue_get(q, d1, &e) == Q_OK && e->rcpts[0].state == Q_RCPT_EXPIRED,
	    "default recipient expired");
	ok(e->flags & Q_F_NOTIFIED, "marked notified");
	q_envelope_free(e);
	is_int(qcount(q, Q_MSG_QUEUED), 1, "one DSN queued");
	{
		struct q_filter f = { .state = Q_MSG_QUEUED, .klass = -1, .sender = "" };
		struct q_envelope **v;
		size_t n;
		int more;
		char *body;
		size_t blen;

		queue_list(q, &f, &v, &n, &more);
		if (n != 1)
			BAIL;
		ok(n == 1 && strcmp(v[0]->rcpts[0].addr, "app@example.org") == 0 &&
		    (v[0]->flags & Q_F_BOUNCE), "DSN: null sender, to the sender, bounce flag");
		memcpy(b1, v[0]->id, sizeof(b1));
		ok(queue_body(q, b1, &body, &blen) == Q_OK &&
		    strstr(body, "multipart/report") && strstr(body, "Final-Recipient: rfc822; x@example.com"),
		    "DSN body is a report about x@example.com");
		free(body);
		q_envelope_list_free(v, n);
	}
	/* the DSN itself failing: no bounce of a bounce */
	ok(queue_lease(q, 0, &e) == Q_OK && strcmp(e->id, b1) == 0, "lease the DSN");
	e->rcpts[0].state = Q_RCPT_FAILED;
	e->rcpts[0].reply = strdup("550 5.1.1 no such user");
	queue_release_lease(q, e);
	is_int(qcount(q, -1), 2, "no bounce of a bounce (the old OTP one was purged)");
	is_int(qcount(q, Q_MSG_DONE), 2, "both done");
	is_int(queue_get(q, o1, &e), Q_NOTFOUND, "OTP message purged keep_done after it ended");

	/* done messages are purged after keep_done */
	fake_now += 601;
	queue_run_timers(q);
	is_int(qcount(q, -1), 0, "purged after keep_done");
	queue_close(q);
}

static void
test_failure_dsn(void)
{
	char id[QUEUE_ID_LEN + 1], nid[QUEUE_ID_LEN + 1];
	struct q_envelope *e;
	struct q_stats s;
	struct queue *q;

	q = topen();
	enq(q, Q_CLASS_DEFAULT, "app@example.org", "x@example.com", 0, id);
	enq(q, Q_CLASS_DEFAULT, "", "y@example.com", 0, nid);
	ok(queue_lease(q, 0, &e) == Q_OK, "lease");
	e->rcpts[0].state = Q_RCPT_FAILED;
	e->rcpts[0].reply = strdup("550 5.1.1 <x@example.com>: user unknown");
	queue_release_lease(q, e);
	ok(queue_lease(q, 0, &e) == Q_OK, "lease null-sender message");
	e->rcpts[0].state = Q_RCPT_FAILED;
	queue_release_lease(q, e);
	is_int(qcount(q, Q_MSG_QUEUED), 1, "one DSN for the failure, none for the null sender");
	queue_stats(q, &s);
	is_int(s.failed, 2, "stats: two failed");
	is_int(s.bounces, 1, "stats: one bounce");
	is_int(s.by_state[Q_MSG_DONE], 2, "stats: two done");
	is_int(s.by_class[Q_CLASS_DEFAULT], 3, "stats: three default");
	ok(queue_get(q, id, &e) == Q_OK && e->state == Q_MSG_DONE &&
	    e->rcpts[0].state == Q_RCPT_FAILED && e->finished == fake_now,
	    "failed message is done with its reply");
	q_envelope_free(e);
	queue_close(q);
	/* reopen: no second DSN (notified was persisted) */
	q = topen();
	is_int(qcount(q, Q_MSG_QUEUED), 1, "no duplicate DSN after restart");
	{
		struct q_filter f = { .state = -1, .klass = -1, .limit = 1000 };
		struct q_envelope **v;
		size_t n, i;
		int more;

		queue_list(q, &f, &v, &n, &more);
		for (i = 0; i < n; i++)
			queue_delete(q, v[i]->id);
		q_envelope_list_free(v, n);
	}
	queue_close(q);
}

static void
test_delete_lease(void)
{
	char id[QUEUE_ID_LEN + 1];
	struct q_envelope *e, *g;
	struct queue *q;

	q = topen();
	enq(q, Q_CLASS_DEFAULT, "app@example.org", "x@example.com", 0, id);
	ok(queue_lease(q, 0, &e) == Q_OK, "lease");
	ok(queue_delete(q, id) == Q_OK, "delete while leased");
	is_int(queue_get(q, id, &g), Q_NOTFOUND, "gone from status at once");
	is_int(queue_hold(q, id), Q_NOTFOUND, "hold of a deleted message: not found");
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	ok(queue_release_lease(q, e) == Q_OK, "release after delete");
	is_int(queue_get(q, id, &g), Q_NOTFOUND, "not resurrected by the release");
	ok(queue_lease(q, 0, &e) == Q_NOTFOUND, "not leased again");
	queue_close(q);
	q = topen();
	is_int(queue_get(q, id, &g), Q_NOTFOUND, "not resurrected by a restart");
	queue_close(q);

	/* hold while leased: the release keeps it held */
	q = topen();
	enq(q, Q_CLASS_DEFAULT, "app@example.org", "x@example.com", 0, id);
	queue_lease(q, 0, &e);
	ok(queue_hold(q, id) == Q_OK, "hold while leased");
	e->rcpts[0].state = Q_RCPT_DEFERRED;
	queue_release_lease(q, e);
	ok(queue_get(q, id, &g) == Q_OK && g->state == Q_MSG_HELD, "held after release");
	q_envelope_free(g);
	queue_close(q);
	q = topen();
	ok(queue_get(q, id, &g) == Q_OK && g->state == Q_MSG_HELD, "held after restart");
	q_envelope_free(g);
	queue_delete(q, id);
	queue_close(q);
}

/* Workers lease and release while the main thread deletes: a message is
 * never leased twice at once, and nothing deleted comes back. */
#define RN 300
static struct queue *rq;
static int leased_now[RN];
static char rids[RN][QUEUE_ID_LEN + 1];
static pthread_mutex_t rmtx = PTHREAD_MUTEX_INITIALIZER;
static int rdouble, rstop, rleases, rnow, rmax;

static int
ridx(const char *id)
{
	int i;

	for (i = 0; i < RN; i++)
		if (strcmp(rids[i], id) == 0)
			return i;
	return -1;
}

static void *
rworker(void *arg)
{
	struct q_envelope *e;
	int i;

	(void)arg;
	while (!rstop) {
		if (queue_lease(rq, 20, &e) != Q_OK)
			continue;
		i = ridx(e->id);
		pthread_mutex_lock(&rmtx);
		if (i >= 0 && leased_now[i]++)
			rdouble++;
		rleases++;
		if (++rnow > rmax)
			rmax = rnow;
		pthread_mutex_unlock(&rmtx);
		usleep(200);
		pthread_mutex_lock(&rmtx);
		if (i >= 0)
			leased_now[i]--;
		rnow--;
		pthread_mutex_unlock(&rmtx);
		e->rcpts[0].state = Q_RCPT_DEFERRED;
		queue_flush(rq, NULL, NULL, NULL);
		queue_release_lease(rq, e);
		queue_flush(rq, e ? NULL : NULL, NULL, NULL);
	}
	return NULL;
}

static void
test_race(void)
{
	pthread_t t[4];
	struct q_envelope *g;
	int i, back = 0;

	rq = topen();
	queue_set_clock(rq, NULL);
	for (i = 0; i < RN; i++)
		enq(rq, Q_CLASS_OTP, "app@example.org", "x@example.com", 0, rids[i]);
	for (i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, rworker, NULL);
	/* the deletes start once the workers are leasing (however loaded
	 * the machine: up to 10 s) */
	for (i = 0; i < 10000; i++) {
		pthread_mutex_lock(&rmtx);
		back = rleases;
		pthread_mutex_unlock(&rmtx);
		if (back >= 20)
			break;
		usleep(1000);
	}
	back = 0;
	for (i = 0; i < RN; i += 2) {
		queue_delete(rq, rids[i]);
		usleep(100);
	}
	usleep(50000);
	rstop = 1;
	queue_shutdown(rq);
	for (i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	diag("%d leases, at most %d at once", rleases, rmax);
	ok(rleases >= 20, "the workers leased messages while others were deleted");
	is_int(rdouble, 0, "no message leased twice at once (4 workers)");
	for (i = 0; i < RN; i += 2)
		if (queue_get(rq, rids[i], &g) == Q_OK) {
			back++;
			q_envelope_free(g);
		}
	is_int(back, 0, "no deleted message resurrected");
	is_int(qcount(rq, -1), RN / 2, "the others are all still there");
	queue_close(rq);
	rq = topen();
	is_int(qcount(rq, -1), RN / 2, "and after a restart");
	queue_close(rq);
}

int
main(void)
{
	char cmd[600];

	snprintf(tdir, sizeof(tdir), "/tmp/test_sched.XXXXXX");
	if (mkdtemp(tdir) == NULL)
		return 1;
	strcat(tdir, "/spool");
	test_heap();
	test_backoff();
	test_lifecycle();
	test_failure_dsn();
	test_delete_lease();
	test_race();
	snprintf(cmd, sizeof(cmd), "rm -rf '%.*s'", (int)(strlen(tdir) - 6), tdir);
	if (system(cmd) != 0)
		diag("cleanup failed");
	return done_testing();
}
