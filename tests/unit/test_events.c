/*
 * test_events.c - agent/events/events.c without a daemon: ids and the JSON
 * of emitted events, the per-app replay filter, and the one "suppressed"
 * event per refused request (events_suppressed, else events_request_end);
 * the syncer thread: a no-wait event (accepted) becomes durable and visible
 * with nothing after it, message history shows it at once, events_close
 * syncs what is pending; a mass expiry in the queue (250 messages, 500
 * recipients) records every expired event with one sync, made without
 * the queue lock (a message deleted meanwhile goes).  The socket,
 * webhooks and the delivery hooks: tests/integration/test_events.py.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/otpmaild.h"
#include "agent/events/events.h"
#include "queue/queue.h"
#include "queue/queue_int.h"
#include "tests/unit/tap.h"

struct otpmaild *otpmaild_ctx;

static json_t *lines;
static _Atomic uint64_t tapped;	/* the newest id published */

static void
tap(uint64_t id, const char *app, enum event_type type, const char *line, size_t len)
{
	(void)app;
	(void)type;
	(void)line;
	(void)len;
	atomic_store(&tapped, id);
}

static int
grab(void *arg, uint64_t id, const char *line, size_t len)
{
	(void)arg;
	(void)id;
	json_array_append_new(lines, json_loadb(line, len, 0, NULL));
	return 0;
}

static json_t *
replay(uint64_t after, const char *app)
{
	json_decref(lines);
	lines = json_array();
	events_replay(after, app, EV_MASK_ALL, grab, NULL);
	return lines;
}

static const char *
field(json_t *a, size_t i, const char *k)
{
	const char *s = json_string_value(json_object_get(json_array_get(a, i), k));
	return s ? s : "(null)";
}

static time_t fake_now;

static time_t
fake_clock(void)
{
	return fake_now;
}

#define XN	250	/* messages, two recipients each */

static struct queue *xq;
static char xdel[QUEUE_ID_LEN + 1];
static int xfree, xdeleted;

static void *
xprobe(void *arg)
{
	struct q_stats st;

	(void)arg;
	queue_stats(xq, &st);
	return NULL;
}

/* The sweep's sync: is the queue lock free meanwhile?  A delete then. */
static void
xsync(void *arg)
{
	struct timespec ts;
	pthread_t t;

	if (xq != NULL && !xfree && pthread_create(&t, NULL, xprobe, NULL) == 0) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 10;
		if ((xfree = pthread_timedjoin_np(t, NULL, &ts) == 0))
			xdeleted = queue_delete(xq, xdel) == Q_OK;
		else
			pthread_detach(t);
	}
	events_expired_sync(arg);
}

/* A mass expiry: one event log sync for the sweep, every event recorded. */
static void
test_mass_expiry(const char *dir)
{
	static const char msg[] = "From: a@example.org\r\nSubject: t\r\n\r\nbody\r\n";
	struct q_rcpt r[2] = { { .addr = "x@example.org" }, { .addr = "y@example.org" } };
	struct q_envelope t = { .klass = Q_CLASS_OTP, .sender = "app@example.org",
	    .rcpts = r, .nrcpt = 2, .tag = "otp app=shop" };
	struct queue_params p;
	struct q_stats st;
	char spool[300], err[256], id[QUEUE_ID_LEN + 1], path[600];
	struct q_envelope *e = NULL;
	uint64_t last, syncs;
	struct queue *q;
	json_t *a;
	size_t i, n = 0, enq = 0;

	memset(&p, 0, sizeof(p));
	snprintf(spool, sizeof(spool), "%s/spool", dir);
	p.dir = spool;
	p.klass[Q_CLASS_OTP] = (struct q_class_params){ 5, 40, 300, 0.2 };
	p.klass[Q_CLASS_DEFAULT] = (struct q_class_params){ 300, 4000, 86400, 0.2 };
	p.keep_done = 600;
	p.hostname = "mx.example.net";
	p.expired = events_expired;
	p.expired_sync = xsync;
	if ((q = queue_open(&p, err, sizeof(err))) == NULL) {
		ok(0, "queue_open");
		diag("queue_open: %s", err);
		return;
	}
	fake_now = time(NULL);
	queue_set_clock(q, fake_clock);
	t.expires = fake_now + 60;
	for (i = 0; i < XN; i++)
		if (queue_enqueue(q, &t, msg, sizeof(msg) - 1, i == 0 ? xdel : id) == Q_OK)
			enq++;
	is_int(enq, XN, "250 messages queued");
	xq = q;
	last = events_last_id();
	syncs = events_syncs();
	fake_now += 61;
	queue_run_timers(q);	/* or the timer thread: either sweeps them all */
	queue_stats(q, &st);
	is_int(st.expired, 2 * XN, "the sweep expired 500 recipients");
	syncs = events_syncs() - syncs;
	ok(syncs >= 1 && syncs <= 3, "their events took a handful of event log syncs");
	diag("event log syncs for 500 expired events: %llu", (unsigned long long)syncs);
	a = replay(last, "shop");
	for (i = 0; i < json_array_size(a); i++)
		if (strcmp(field(a, i, "type"), "expired") == 0)
			n++;
	is_int(n, 2 * XN, "every expired event is recorded and readable");
	ok(xfree, "the queue lock is free while the sweep syncs the event log");
	ok(xdeleted && queue_get(q, xdel, &e) == Q_NOTFOUND, "a message deleted "
	    "meanwhile is gone after the sweep");
	snprintf(path, sizeof(path), "%s/", spool);
	spool_path(xdel, path + strlen(path), sizeof(path) - strlen(path));
	ok(access(path, F_OK) == -1, "and so is its file");
	xq = NULL;
	queue_close(q);
}

int
main(void)
{
	struct q_class_params klass[Q_CLASS_COUNT] = { { 1, 2, 60, 0 }, { 1, 2, 60, 0 } };
	char dir[] = "/tmp/otpm-events-XXXXXX", err[256], cmd[300];
	struct otpmaild d = { 0 };
	struct q_rcpt rcpt = { .addr = "c@example.org" };
	struct q_envelope env = { .klass = Q_CLASS_OTP, .nrcpt = 1, .rcpts = &rcpt,
	    .tag = "otp app=shop" };
	struct timespec ms = { 0, 10 * 1000 * 1000 };
	json_t *req, *rep, *a;
	uint64_t id;
	int i;

	if (mkdtemp(dir) == NULL)
		return 1;
	d.cfg = config_load(NULL, err, sizeof(err));
	d.state_dir = dir;
	otpmaild_ctx = &d;
	ok(events_emit("shop", EV_ACCEPTED, "q1", "a@example.org", NULL) == 0,
	    "nothing is recorded before events_open");
	ok(events_open(&d, klass, err, sizeof(err)) == 0, "events_open");
	id = events_emit("shop", EV_ACCEPTED, "q1", "a@example.org",
	    json_pack("{s:s}", "class", "otp"));
	is_int(id, 1, "the first event is 1");
	is_int(events_emit("bank", EV_BOUNCED, "q2", "b@example.org", NULL), 2, "then 2");
	a = replay(0, NULL);
	is_int(json_array_size(a), 2, "an admin's replay has both");
	is_str(field(a, 0, "type"), "accepted", "type");
	is_str(field(a, 0, "class"), "otp", "extra fields kept");
	a = replay(0, "shop");
	ok(json_array_size(a) == 1 && strcmp(field(a, 0, "app"), "shop") == 0,
	    "shop's replay has shop's only");
	a = replay(0, "sho");
	is_int(json_array_size(a), 0, "an app name's prefix matches nothing");

	/* a "suppressed" answer: one event whether the handler emitted it or not */
	req = json_pack("{s:s, s:s}", "op", "mail.send", "to", "gone@example.org");
	rep = json_pack("{s:b, s:s, s:s, s:s}", "ok", 0, "error", "suppressed", "detail",
	    "the address is suppressed", "reason", "hard bounce");
	events_request_begin();
	events_request_end("shop", req, rep);
	a = replay(2, NULL);
	ok(json_array_size(a) == 1 && strcmp(field(a, 0, "type"), "suppressed") == 0 &&
	    strcmp(field(a, 0, "recipient"), "gone@example.org") == 0 &&
	    strcmp(field(a, 0, "reason"), "hard bounce") == 0 &&
	    json_is_null(json_object_get(json_array_get(a, 0), "message")),
	    "an unannounced suppressed answer gets its event");
	events_request_begin();
	events_suppressed("shop", "gone@example.org", "hard bounce", "hard");
	events_request_end("shop", req, rep);
	is_int(json_array_size(replay(3, NULL)), 1, "an announced one is not doubled");
	json_decref(rep);
	rep = json_pack("{s:b, s:s}", "ok", 0, "error", "rate_limited");
	events_request_begin();
	events_request_end("shop", req, rep);
	is_int(events_last_id(), 4, "other errors make no event");
	json_decref(rep);
	json_decref(req);

	events_close();
	ok(events_open(&d, klass, err, sizeof(err)) == 0, "reopened");
	is_int(events_emit("shop", EV_EXPIRED, "q1", "a@example.org", NULL), 5,
	    "ids go on after a reopen");

	/* the syncer: no-wait events (accepted) */
	ok(events_start(err, sizeof(err)) == 0, "events_start (the syncer)");
	events_set_tap(tap);
	events_accepted(&env, "q3");
	for (i = 0; i < 1000 && atomic_load(&tapped) < 6; i++)
		nanosleep(&ms, NULL);
	is_int(atomic_load(&tapped), 6, "an accepted event with nothing after it is "
	    "synced and published (the syncer)");
	events_set_tap(NULL);
	events_accepted(&env, "q3b");
	is_int(events_last_id(), 7, "events_last_id covers what was appended before it");
	events_accepted(&env, "q4");
	a = events_history("q4", NULL, 0);
	ok(json_array_size(a) == 1 && strcmp(field(a, 0, "type"), "accepted") == 0,
	    "message history shows an accepted event at once");
	json_decref(a);
	events_accepted(&env, "q5");
	events_close();
	ok(events_open(&d, klass, err, sizeof(err)) == 0, "reopened after a close "
	    "with a no-wait event pending");
	a = replay(8, NULL);
	ok(json_array_size(a) == 1 && strcmp(field(a, 0, "message"), "q5") == 0,
	    "events_close synced it");
	test_mass_expiry(dir);
	events_close();
	json_decref(lines);
	config_free(d.cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	(void)!system(cmd);
	return done_testing();
}
