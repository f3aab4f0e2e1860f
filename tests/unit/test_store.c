/*
 * test_store.c - the OTP store (store/otp.c and friends) with an injected
 * clock: single use, expiry, context and purpose binding, every limit and
 * its retry_after, resend keeping the last codes, per-code failures,
 * lock-out growth and the hard cap, secret rotation and file mode, pending
 * and cancel, revoke, sweep, reopen, concurrency, no clear text on disk, and
 * damaged files quarantined at open (verify.c).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "store/store_int.h"
#include "tests/unit/tap.h"

static char root[256], dbdir[300], secret[300], oldsecret[300];
static time_t T0 = 1800000000;

static struct store *open_with(const struct store_params *);
static void	params(struct store_params *, int durable);
static struct store *open_default(struct store_params *);
static void	req(struct otp_request *, const char *addr, const char *purpose,
		    const char *ctx, time_t now);
static enum s_status issue_sent(struct store *, struct otp_request *, char *code);
static size_t	count_records(struct store *);
static size_t	count_type(struct store *, int type);
static int	grep_dir(const char *dir, const char *needle);
static void	wipe(void);
static int memcmp_calls;	/* __wrap_CRYPTO_memcmp: the store's comparisons */

static void
wipe(void)
{
	char cmd[1024];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'/db '%s'/secret* '%s'/quarantine", root, root,
	    root);
	if (system(cmd) != 0)
		diag("cleanup failed");
}

static struct store *
open_with(const struct store_params *p)
{
	char err[512];
	struct store *s;

	s = store_open(p, err, sizeof(err));
	if (s == NULL)
		diag("store_open: %s", err);
	return s;
}

/* The defaults in the test's directory; durable 0: no fsync per commit. */
static void
params(struct store_params *p, int durable)
{
	store_params_defaults(p);
	p->dir = dbdir;
	p->secret_file = secret;
	p->durable = durable;
}

static struct store *
open_default(struct store_params *p)
{
	params(p, 0);
	return open_with(p);
}

static void
req(struct otp_request *q, const char *addr, const char *purpose, const char *ctx,
    time_t now)
{
	memset(q, 0, sizeof(*q));
	q->addr = addr;
	q->purpose = purpose;
	q->context = ctx;
	q->now = now;
	q->client_uid = 1000;
}

/* Issues and marks sent, as ops_otp.c does; code gets the clear code. */
static enum s_status
issue_sent(struct store *s, struct otp_request *q, char *code)
{
	struct otp_result res;
	enum s_status st;

	st = store_otp_issue(s, q, &res);
	if (st != S_OK)
		return st;
	if (code)
		strcpy(code, res.code);
	return store_otp_mark_sent(s, q, res.issue_id, "0123456789abcdef01234567");
}

static size_t
count_records(struct store *s)
{
	return count_type(s, 0);
}

/* Records whose key starts with type (0: every record). */
static size_t
count_type(struct store *s, int type)
{
	DBC *c;
	DBT k, v;
	size_t n = 0;

	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.flags = v.flags = DB_DBT_MALLOC;
	if (s->db->cursor(s->db, NULL, &c, 0) != 0)
		return (size_t)-1;
	while (c->get(c, &k, &v, DB_NEXT) == 0) {
		if (type == 0 || (k.size > 0 && ((uint8_t *)k.data)[0] == type))
			n++;
		free(k.data);
		free(v.data);
	}
	c->close(c);
	return n;
}

/* 1 if any file under dir holds needle. */
static int
grep_dir(const char *dir, const char *needle)
{
	char path[1024], *buf;
	struct dirent *e;
	struct stat st;
	DIR *d;
	FILE *f;
	int hit = 0;
	size_t nl = strlen(needle);

	if ((d = opendir(dir)) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL && !hit) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size == 0)
			continue;
		if ((f = fopen(path, "rb")) == NULL)
			continue;
		buf = malloc((size_t)st.st_size);
		if (buf && fread(buf, 1, (size_t)st.st_size, f) == (size_t)st.st_size &&
		    memmem(buf, (size_t)st.st_size, needle, nl) != NULL)
			hit = 1;
		free(buf);
		fclose(f);
	}
	closedir(d);
	return hit;
}

static void
test_basic(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result res, vr;
	struct store *s;
	struct stat st;
	char code[16];

	wipe();
	s = open_default(&p);
	ok(s != NULL, "open creates the environment");
	ok(stat(secret, &st) == 0 && (st.st_mode & 0777) == 0600 && st.st_size == 32,
	    "secret created: 32 bytes, mode 0600");

	req(&q, "Alice@Example.org", NULL, NULL, T0);
	is_int(store_otp_issue(s, &q, &res), S_OK, "issue");
	is_int((long)strlen(res.code), 6, "default code length 6");
	ok(strspn(res.code, "0123456789") == 6, "default alphabet digits");
	is_int(res.ttl, 300, "default ttl 300");
	is_int((long)(res.expires_at - T0), 300, "expires_at = now + ttl");
	is_int((long)strlen(res.issue_id), 32, "issue id 32 hex");
	is_int(res.resend_after, 30, "resend_after = cooldown");
	is_int(store_otp_mark_sent(s, &q, res.issue_id, "abcdef0123456789abcdef01"), S_OK,
	    "mark_sent");
	strcpy(code, res.code);

	req(&q, "alice@example.ORG", NULL, NULL, T0 + 10);
	is_int(store_otp_verify(s, &q, code, &vr), S_OK,
	    "verify ok (address case-folded, purpose defaults to login)");
	is_str(vr.queue_id, "abcdef0123456789abcdef01", "verify reports the queue id");
	is_int(store_otp_verify(s, &q, code, &vr), S_NOTFOUND, "single use: second verify");

	/* bad input */
	req(&q, "a@b.example", "Login!", NULL, T0);
	is_int(store_otp_issue(s, &q, &res), S_BADINPUT, "purpose with odd characters refused");
	req(&q, "a@b.example", NULL, NULL, T0);
	q.ttl = 3601;
	is_int(store_otp_issue(s, &q, &res), S_BADINPUT, "ttl above max_ttl refused");
	q.ttl = 600;
	is_int(store_otp_issue(s, &q, &res), S_OK, "ttl below max_ttl accepted");
	is_int(res.ttl, 600, "requested ttl used");
	store_close(s);
}

static void
test_expiry_binding(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16];

	wipe();
	s = open_default(&p);
	req(&q, "bob@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	q.now = T0 + 300;
	is_int(store_otp_verify(s, &q, code, &r), S_EXPIRED, "expired at now == expiry");
	is_str(r.queue_id, "0123456789abcdef01234567", "expired: queue id reported for the log");
	q.now = T0 + 5000;
	is_int(store_otp_verify(s, &q, code, &r), S_EXPIRED, "still expired later");

	req(&q, "bob@example.org", NULL, NULL, T0 + 6000);
	issue_sent(s, &q, code);
	q.now = T0 + 6000 + 299;
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "valid one second before expiry");

	/* context binding */
	req(&q, "carol@example.org", "login", "session-A", T0);
	issue_sent(s, &q, code);
	req(&q, "carol@example.org", "login", "session-B", T0 + 1);
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "other context: not found");
	req(&q, "carol@example.org", "login", NULL, T0 + 1);
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "no context: not found");
	req(&q, "carol@example.org", "reset", "session-A", T0 + 1);
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "other purpose: not found");
	req(&q, "carol@example.org", "login", "session-A", T0 + 2);
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "its context: ok");
	store_close(s);
}

static void
test_limits(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char addr[64];
	int i;

	wipe();
	params(&p, 0);
	p.max_per_client_minute = 2;
	p.max_global_per_second = 0;
	s = open_with(&p);

	/* resend cooldown: an issue of this run composing its mail holds it
	 * (concurrent issues get one mail); a crashed run's never does */
	req(&q, "dave@example.org", NULL, NULL, T0);
	is_int(store_otp_issue(s, &q, &r), S_OK, "issue pending");
	q.now = T0 + 1;
	{
		struct otp_result r2;

		is_int(store_otp_issue(s, &q, &r2), S_RATE_LIMITED,
		    "a pending issue holds the cooldown");
		is_int(r2.retry_after, 29, "its retry_after: the cooldown left");
	}
	is_int(store_otp_mark_sent(s, &q, r.issue_id, "q1"), S_OK, "mark sent");
	q.now = T0 + 6;
	is_int(store_otp_issue(s, &q, &r), S_RATE_LIMITED, "resend within cooldown refused");
	is_str(r.limit, "resend_cooldown", "limit named resend_cooldown");
	is_int(r.retry_after, 25, "retry_after = cooldown left");
	q.now = T0 + 31;
	is_int(store_otp_issue(s, &q, &r), S_OK, "resend after cooldown");

	/* client per minute (2): T0 issued 2 times for uid 1000 already */
	req(&q, "erin@example.org", NULL, NULL, T0 + 40);
	is_int(store_otp_issue(s, &q, &r), S_RATE_LIMITED, "3rd issue of the client in a minute");
	is_str(r.limit, "client_minute", "limit named client_minute");
	is_int(r.retry_after, 20, "retry_after = window end");
	q.client_uid = 1001;
	is_int(store_otp_issue(s, &q, &r), S_OK, "another client uid is not limited");
	req(&q, "erin2@example.org", NULL, NULL, T0 + 60);
	is_int(store_otp_issue(s, &q, &r), S_OK, "client window over");
	{
		size_t swept = 0;
		DB_BTREE_STAT *bs = NULL;

		is_int(store_sweep(s, T0 + 121, &swept), S_OK, "sweep");
		ok(s->rate->stat(s->rate, NULL, &bs, 0) == 0 && bs->bt_nkeys == 0,
		    "sweep removes ended client windows");
		free(bs);
	}
	req(&q, "fay@example.org", NULL, NULL, T0 + 200);
	is_int(store_otp_issue(s, &q, &r), S_OK, "issue pending, then the daemon dies");
	store_close(s);
	s = open_with(&p);
	q.now = T0 + 201;
	is_int(store_otp_issue(s, &q, &r), S_OK, "a crashed run's pending issue holds no cooldown");
	store_close(s);

	/* address per hour (10), over several purposes */
	wipe();
	s = open_default(&p);
	for (i = 0; i < 10; i++) {
		snprintf(addr, sizeof(addr), "p%d", i);
		req(&q, "frank@example.org", addr, NULL, T0 + i * 100);
		if (store_otp_issue(s, &q, &r) != S_OK)
			break;
	}
	is_int(i, 10, "10 issues in an hour");
	is_int(r.resend_after, 3600 - 900, "the 10th says when the next is allowed");
	req(&q, "FRANK@example.org", "p11", NULL, T0 + 1000);
	is_int(store_otp_issue(s, &q, &r), S_RATE_LIMITED, "11th in the hour refused");
	is_str(r.limit, "address_hourly", "limit named address_hourly");
	is_int(r.retry_after, 2600, "retry_after = hour window end");
	q.now = T0 + 3600;
	is_int(store_otp_issue(s, &q, &r), S_OK, "allowed after the hour");
	store_close(s);

	/* global per second */
	wipe();
	params(&p, 0);
	p.max_global_per_second = 2;
	s = open_with(&p);
	req(&q, "g1@example.org", NULL, NULL, T0);
	ok(store_otp_issue(s, &q, &r) == S_OK, "global 1/2");
	q.addr = "g2@example.org";
	ok(store_otp_issue(s, &q, &r) == S_OK, "global 2/2");
	q.addr = "g3@example.org";
	is_int(store_otp_issue(s, &q, &r), S_RATE_LIMITED, "3rd in the second refused");
	is_str(r.limit, "global_rate", "limit named global_rate");
	is_int(r.retry_after, 1, "retry_after 1 s");
	q.now = T0 + 1;
	is_int(store_otp_issue(s, &q, &r), S_OK, "next second allowed");
	store_close(s);
}

static void
test_resend_and_failures(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char c[4][16], addr[32];
	int i, try, issued = 0;

	wipe();
	s = open_default(&p);
	/* The 1st code must differ from the 3 others (they collide 3 times
	 * in 10^6: then another address), or there is nothing to check. */
	for (try = 0; try < 5; try++) {
		snprintf(addr, sizeof(addr), "gina%d@example.org", try);
		for (i = 0, issued = 0; i < 4; i++) {
			req(&q, addr, NULL, NULL, T0 + i * 30);
			issued += issue_sent(s, &q, c[i]) == S_OK;
		}
		if (strcmp(c[0], c[1]) && strcmp(c[0], c[2]) && strcmp(c[0], c[3]))
			break;
	}
	is_int(issued, 4, "4 codes issued 30 s apart (resend)");
	req(&q, addr, NULL, NULL, T0 + 100);
	is_int(store_otp_verify(s, &q, c[0], &r), S_INVALID,
	    "4th code pushed out the 1st (keep 3)");
	is_int(r.attempts_left, 4, "attempts_left after one failure");
	is_int(store_otp_verify(s, &q, c[1], &r), S_OK, "2nd of 4 codes still verifies");
	is_int(store_otp_verify(s, &q, c[3], &r), S_NOTFOUND, "success consumed them all");

	/* per-code failure limit: 5 */
	req(&q, "hank@example.org", NULL, NULL, T0);
	issue_sent(s, &q, c[0]);
	strcpy(c[1], c[0]);
	c[1][0] = c[0][0] == '9' ? '0' : c[0][0] + 1;
	for (i = 1; i <= 5; i++) {
		q.now = T0 + i;
		is_int(store_otp_verify(s, &q, c[1], &r), S_INVALID, "wrong code");
		is_int(r.attempts_left, 5 - i, "attempts_left counts down");
		if (i < 5)
			ok(r.limit == NULL, "no limit named while attempts are left");
	}
	is_str(r.limit, "code_attempts", "5th failure: limit code_attempts");
	is_int(r.retry_after, 25, "retry_after = cooldown left for a new code");
	is_int(store_otp_verify(s, &q, c[0], &r), S_NOTFOUND,
	    "after 5 failures the right code is dead");
	store_close(s);
}

static void
test_lockout(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	enum s_status st;
	char code[16], wrong[16], ctx[32];
	int i;
	time_t now;
	int want[] = {60, 120, 240, 240};

	wipe();
	params(&p, 0);
	p.lockout_after = 3;
	p.lockout_base = 60;
	p.lockout_max = 240;
	p.max_failures_per_code = 1000;
	p.max_consecutive_failures = 8;
	p.ttl = 3600;
	s = open_with(&p);
	req(&q, "ivan@example.org", NULL, "s1", T0);
	issue_sent(s, &q, code);
	q.ttl = 0;
	strcpy(wrong, code);
	wrong[0] = code[0] == '9' ? '0' : code[0] + 1;
	is_int(store_otp_verify(s, &q, wrong, &r), S_INVALID, "failure 1");
	is_int(store_otp_verify(s, &q, wrong, &r), S_INVALID, "failure 2");
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "success resets the count");
	q.now = T0 + 30;
	issue_sent(s, &q, code);
	now = T0 + 30;
	for (i = 1; i <= 2; i++)
		store_otp_verify(s, &q, wrong, &r);
	is_int(store_otp_verify(s, &q, wrong, &r), S_INVALID, "3rd failure still answered");
	is_str(r.limit, "context_lockout", "3rd failure locks the context");
	for (i = 0; i < 4; i++) {
		char msg[80];

		snprintf(msg, sizeof(msg), "lock-out %d s", want[i]);
		is_int(r.retry_after, want[i], msg);
		q.now = now + 1;
		st = store_otp_verify(s, &q, code, &r);
		is_int(st, S_LOCKED, "verify during lock-out refused, even the right code");
		is_int(r.retry_after, want[i] - 1, "its retry_after");
		now += want[i];
		q.now = now;
		store_otp_verify(s, &q, wrong, &r);
	}
	/* 7 failures so far; the 8th reaches the cap: no permanent lock */
	now += 240;
	q.now = now;
	is_int(store_otp_verify(s, &q, wrong, &r), S_INVALID, "8th failure");
	is_int(r.retry_after, 240, "at the cap: lockout_max, a true retry_after");
	q.now = now + 1;
	is_int(store_otp_verify(s, &q, code, &r), S_LOCKED, "locked meanwhile");
	ok(r.retry_after > 0 && r.retry_after <= 240, "retry_after true at the cap");
	/* the owner in another context is not locked out */
	req(&q, "ivan@example.org", NULL, "s2", now + 2);
	is_int(issue_sent(s, &q, code), S_OK, "a fresh code in another context");
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "... verifies");
	/* nor in the locked context: a fresh code clears its lock */
	req(&q, "ivan@example.org", NULL, "s1", now + 40);
	is_int(issue_sent(s, &q, code), S_OK, "a fresh code in the locked context");
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "... verifies: a new code, a new count");
	store_close(s);

	/* permanent only when the admin says so */
	wipe();
	p.permanent_lockout = 1;
	s = open_with(&p);
	req(&q, "judy@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	strcpy(wrong, code);
	wrong[0] = code[0] == '9' ? '0' : code[0] + 1;
	for (i = 0, now = T0; i < 8; i++) {
		q.now = now;
		st = store_otp_verify(s, &q, wrong, &r);
		now += r.retry_after > 0 ? r.retry_after : 0;
	}
	q.now = now + 100000;
	is_int(store_otp_verify(s, &q, code, &r), S_LOCKED, "permanent_lockout: locked for good");
	is_int(r.retry_after, 240, "... with retry_after lockout_max");
	is_int(store_otp_unlock(s, &q), S_OK, "admin unlock");
	q.now = now + 100001;
	is_int(issue_sent(s, &q, code), S_OK, "issue after unlock");
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "verify after unlock");
	store_close(s);
	p.permanent_lockout = 0;

	/* a client's failures over any addresses and contexts lock that
	 * client only */
	wipe();
	s = open_with(&p);
	for (i = 0; i < 5; i++) {
		snprintf(ctx, sizeof(ctx), "c%d", i);
		req(&q, i % 2 ? "ken@example.org" : "lea@example.org", NULL, ctx, T0);
		q.client_id = "203.0.113.7";
		st = store_otp_verify(s, &q, "123456", &r);
	}
	is_int(st, S_LOCKED, "client X locked after its failures");
	is_str(r.limit, "client_lockout", "limit named client_lockout");
	req(&q, "ken@example.org", NULL, "own", T0 + 1);
	q.client_id = "198.51.100.1";
	is_int(issue_sent(s, &q, code), S_OK, "ken as client Y gets a code");
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "... and verifies it");
	q.app = "other";
	q.client_id = "203.0.113.7";
	is_int(store_otp_verify(s, &q, "123456", &r), S_NOTFOUND,
	    "the same client id in another app is not locked");
	store_close(s);

	p.max_consecutive_failures = 101;
	ok(open_with(&p) == NULL, "max_consecutive_failures > 100 refused");
}

static void
test_rotation_pending(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16], code2[16];

	wipe();
	s = open_default(&p);
	req(&q, "kim@example.org", NULL, "ctx", T0);
	issue_sent(s, &q, code);
	store_close(s);
	chmod(secret, 0640);
	ok(open_with(&p) == NULL, "secret readable by the group: refused");
	chmod(secret, 0600);
	if (rename(secret, oldsecret) != 0)
		diag("rename: %s", strerror(errno));
	s = open_with(&p);
	q.now = T0 + 5;
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND,
	    "new secret without the old one: code unknown");
	store_close(s);
	p.old_secret_file = oldsecret;
	s = open_with(&p);
	req(&q, "kim@example.org", NULL, "ctx", T0 + 40);
	is_int(issue_sent(s, &q, code2), S_OK, "issue under the new secret");
	q.now = T0 + 41;
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "old-secret code verifies after rotation");
	is_int(store_otp_verify(s, &q, code2, &r), S_NOTFOUND,
	    "and consumed the new-secret code too");
	store_close(s);
	p.old_secret_file = NULL;

	/* pending / cancel give back */
	wipe();
	params(&p, 0);
	p.max_per_address_hour = 1;
	p.max_per_client_minute = 1;
	s = open_with(&p);
	req(&q, "lee@example.org", NULL, NULL, T0);
	is_int(store_otp_issue(s, &q, &r), S_OK, "issue (pending)");
	strcpy(code, r.code);
	is_int(store_otp_cancel(s, &q, "00000000000000000000000000000000"), S_NOTFOUND,
	    "cancel of an unknown id");
	is_int(store_otp_cancel(s, &q, r.issue_id), S_OK, "cancel");
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "cancelled code is gone");
	is_int(store_otp_issue(s, &q, &r), S_OK, "cancel gave back the hourly and client limits");
	strcpy(code, r.code);
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "a pending code verifies");
	store_close(s);
}

/*
 * Every context with a live code keeps a failure record, empty until a
 * wrong guess: if only contexts with failures had one, those few records
 * would share one page of otp.db, and every issue and verify write-locks
 * the page of its context's record (they all waited on each other there).
 * The records behave as before: a success ends both, the sweep ends an
 * expired context's, and a wrong guess still counts.
 */
static void
test_failure_records(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16], addr[64];
	size_t swept = 0;
	int i;

	wipe();
	s = open_default(&p);
	for (i = 0; i < 20; i++) {
		snprintf(addr, sizeof(addr), "fr%02d@example.org", i);
		req(&q, addr, NULL, NULL, T0);
		issue_sent(s, &q, code);
	}
	is_int((long)count_type(s, REC_CFAIL), 20, "a failure record per context with a code");
	is_int((long)count_type(s, REC_OTP), 20, "as many as code records");
	req(&q, "fr00@example.org", NULL, NULL, T0 + 1);
	is_int(store_otp_verify(s, &q, "x", &r), S_INVALID, "a wrong guess still counts");
	ok(r.attempts_left > 0 && r.attempts_left < p.max_failures_per_code,
	    "attempts left went down");
	/* code is the last one issued, fr19's */
	req(&q, "fr19@example.org", NULL, NULL, T0 + 1);
	store_otp_verify(s, &q, "x", &r);
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "after a wrong guess the code verifies");
	is_int((long)count_type(s, REC_CFAIL), 19, "a success ends the context's record");
	is_int(store_sweep(s, T0 + 3700, &swept), S_OK, "sweep after the hour");
	is_int((long)count_type(s, REC_CFAIL), 0, "expired contexts' records are swept");
	store_close(s);
}

static void
test_revoke_sweep_reopen(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16], qid[40];
	int n = -1;
	size_t swept = 0, before;

	wipe();
	s = open_default(&p);
	req(&q, "mia@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	q.now = T0 + 30;
	issue_sent(s, &q, code);
	is_int(store_otp_last_mail(s, &q, qid, sizeof(qid)), S_OK, "last_mail");
	is_str(qid, "0123456789abcdef01234567", "last_mail gives the queue id");
	is_int(store_otp_revoke(s, &q, &n), S_OK, "revoke");
	is_int(n, 2, "revoke killed 2 codes");
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "revoked code gone");
	q.now = T0 + 31;
	is_int(store_otp_issue(s, &q, &r), S_RATE_LIMITED, "revoke keeps the cooldown");

	/* sweep */
	req(&q, "ned@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	req(&q, "olga@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	q.now = T0 + 1;
	store_otp_verify(s, &q, "x", &r);	/* a failure: olga's count is kept */
	before = count_records(s);
	ok(before >= 5, "records present before the sweep");
	is_int(store_sweep(s, T0 + 50, &swept), S_OK, "sweep early");
	is_int((long)swept, 0, "nothing dead yet");
	is_int(store_sweep(s, T0 + 3700, &swept), S_OK, "sweep after the hour");
	is_int((long)count_records(s), 0, "failure counts are forgotten after lockout_max");
	is_int((long)swept, (long)before, "sweep reports the count");
	req(&q, "ned@example.org", NULL, NULL, T0 + 3602);
	is_int(store_otp_verify(s, &q, code, &r), S_NOTFOUND, "swept code: not found");
	is_int(store_checkpoint(s), S_OK, "checkpoint");

	/* reopen keeps data */
	req(&q, "pat@example.org", NULL, NULL, T0);
	issue_sent(s, &q, code);
	store_close(s);
	s = open_default(&p);
	q.now = T0 + 2;
	is_int(store_otp_verify(s, &q, code, &r), S_OK, "code survives close and reopen");
	store_close(s);
}

static void
test_cleartext(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16], codes[10][16];
	int i, hit = 0;

	wipe();
	params(&p, 1);
	p.alphabet = OTP_ALPHA_ALNUM;
	p.code_length = 10;
	s = open_with(&p);
	req(&q, "Quinn.Secret-Needle@Example.org", "login", "ctx-needle-42", T0);
	for (i = 0; i < 10; i++) {
		q.now = T0 + i * 31;
		if (issue_sent(s, &q, codes[i]) != S_OK)
			break;
	}
	is_int(i, 10, "10 codes issued");
	strcpy(code, codes[0]);
	store_otp_verify(s, &q, "2222222222", &r);
	store_checkpoint(s);
	store_close(s);
	ok(grep_dir(dbdir, "Quinn.Secret-Needle@Example.org") == 0 &&
	    grep_dir(dbdir, "quinn.secret-needle@example.org") == 0 &&
	    grep_dir(dbdir, "Secret-Needle") == 0 && grep_dir(dbdir, "secret-needle") == 0,
	    "no address in the db files (logs included)");
	ok(grep_dir(dbdir, "ctx-needle-42") == 0, "no context in the db files");
	for (i = 0; i < 10; i++)
		if (grep_dir(dbdir, codes[i]) == 1)
			hit++;
	is_int(hit, 0, "no code in the db files");
}

/* A child issues codes until it is killed with SIGKILL mid-stream; every
 * code it reported (its issue had returned) must verify after a reopen. */
static void
test_crash(void)
{
	static char codes[4096][16];
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char addr[64], line[128];
	int fds[2], i, n = 0, good = 0, status, idx;
	FILE *in;
	pid_t pid;

	wipe();
	if (pipe(fds) == -1)
		return;
	if ((pid = fork()) == 0) {
		close(fds[0]);
		params(&p, 1);
		if ((s = store_open(&p, line, sizeof(line))) == NULL)
			_exit(1);
		for (i = 0; i < 4096; i++) {
			snprintf(addr, sizeof(addr), "crash%d@example.org", i);
			req(&q, addr, NULL, NULL, T0);
			if (store_otp_issue(s, &q, &r) != S_OK)
				_exit(1);
			snprintf(line, sizeof(line), "%d %s\n", i, r.code);
			if (write(fds[1], line, strlen(line)) < 0)
				_exit(1);
		}
		_exit(0);
	}
	close(fds[1]);
	in = fdopen(fds[0], "r");
	while (fgets(line, sizeof(line), in) != NULL) {
		if (sscanf(line, "%d %15s", &idx, codes[n]) != 2 || idx != n)
			break;
		if (++n == 200)
			kill(pid, SIGKILL);	/* mid-stream, maybe mid-transaction */
	}
	fclose(in);
	waitpid(pid, &status, 0);
	ok(WIFSIGNALED(status), "writer killed with SIGKILL");
	s = open_default(&p);
	ok(s != NULL, "reopen after the crash (recovery at open)");
	if (s == NULL)
		return;
	for (i = 0; i < n; i++) {
		snprintf(addr, sizeof(addr), "crash%d@example.org", i);
		req(&q, addr, NULL, NULL, T0 + 1);
		if (store_otp_verify(s, &q, codes[i], &r) == S_OK)
			good++;
	}
	ok(n >= 200, "the writer acknowledged at least 200 codes");
	is_int(good, n, "every acknowledged code verifies after the crash");
	store_close(s);
}

/* 1 once the log is on disk up to its end (within 2 s), 0 if not. */
static int
log_on_disk(struct store *s, long *ms)
{
	DB_LOG_STAT *st;
	int i, done = 0;

	for (i = 0; i < 2000 && !done; i++) {
		if (s->env->log_stat(s->env, &st, 0) != 0)
			return 0;
		done = st->st_disk_file == st->st_cur_file &&
		    st->st_disk_offset == st->st_cur_offset;
		free(st);
		if (!done)
			usleep(1000);
	}
	*ms = i;
	return done;
}

/*
 * A commit nobody waits for (a wrong guess's count) stays in the log
 * buffer until a flush: the flusher flushes it within STORE_FLUSH_LATER_MS
 * without being asked, so a kill -9 after that loses nothing.
 */
static void
test_lazy_flush(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char line[128], code[16] = "";
	int fds[2], status;
	long ms = 0;
	FILE *in;
	pid_t pid;

	wipe();
	params(&p, 1);
	p.max_failures_per_code = 1;	/* one wrong guess ends the code */
	if ((s = store_open(&p, line, sizeof(line))) != NULL) {
		req(&q, "lazy@example.org", NULL, NULL, T0);
		(void)store_otp_issue(s, &q, &r);
		(void)store_otp_mark_sent(s, &q, r.issue_id, "0123456789abcdef01234567");
		ok(log_on_disk(s, &ms), "a commit nobody waits for is on disk soon after, "
		    "unasked (the flusher's delay)");
		diag("on disk after %ld ms (STORE_FLUSH_LATER_MS %d)", ms,
		    STORE_FLUSH_LATER_MS);
		store_close(s);
	}
	wipe();
	if (pipe(fds) == -1)
		return;
	if ((pid = fork()) == 0) {
		close(fds[0]);
		if ((s = store_open(&p, line, sizeof(line))) == NULL)
			_exit(1);
		req(&q, "lazy@example.org", NULL, NULL, T0);
		if (store_otp_issue(s, &q, &r) != S_OK)
			_exit(1);
		snprintf(line, sizeof(line), "%s\n", r.code);
		req(&q, "lazy@example.org", NULL, NULL, T0 + 1);
		/* the wrong guess: not durable, answered at once */
		if (store_otp_verify(s, &q, strcmp(r.code, "000000") ? "000000" : "111111",
		    &r) != S_INVALID)
			_exit(1);
		if (write(fds[1], line, strlen(line)) < 0)
			_exit(1);
		for (;;)
			pause();	/* until killed: no close, no checkpoint */
	}
	close(fds[1]);
	in = fdopen(fds[0], "r");
	if (fgets(line, sizeof(line), in) != NULL)
		sscanf(line, "%15s", code);
	fclose(in);
	usleep(STORE_FLUSH_LATER_MS * 1000 * 10);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	ok(WIFSIGNALED(status) && code[0] != '\0', "the guesser answered, then was killed");
	if ((s = store_open(&p, line, sizeof(line))) == NULL) {
		ok(0, "reopen after the kill");
		diag("%s", line);
		return;
	}
	req(&q, "lazy@example.org", NULL, NULL, T0 + 2);
	ok(store_otp_verify(s, &q, code, &r) != S_OK,
	    "a wrong guess answered 10 flush delays before a kill -9 still counts: "
	    "the code it ended does not verify");
	store_close(s);
}

struct race {
	struct store	*s;
	const char	*code;
	time_t		 now;
	int		 ok;
	pthread_mutex_t	 mu;
};

static void *race_thread(void *);

static void *
race_thread(void *arg)
{
	struct race *rc = arg;
	struct otp_request q;
	struct otp_result r;

	req(&q, "race@example.org", NULL, NULL, rc->now);
	enum s_status st = store_otp_verify(rc->s, &q, rc->code, &r);

	if (getenv("RACE_DEBUG"))
		diag("race: %d", st);
	if (st == S_OK) {
		pthread_mutex_lock(&rc->mu);
		rc->ok++;
		pthread_mutex_unlock(&rc->mu);
	}
	return NULL;
}

static void
test_race(void)
{
	struct store_params p;
	struct otp_request q;
	struct race rc;
	pthread_t th[16];
	char code[16];
	int i, round, fails = 0;

	struct store *s;

	wipe();
	s = open_default(&p);
	for (round = 0; round < 20; round++) {
		req(&q, "race@example.org", NULL, NULL, T0 + round * 3700);
		if (issue_sent(s, &q, code) != S_OK) {
			fails++;
			continue;
		}
		memset(&rc, 0, sizeof(rc));
		rc.s = s;
		rc.code = code;
		rc.now = q.now + 5;
		pthread_mutex_init(&rc.mu, NULL);
		for (i = 0; i < 16; i++)
			pthread_create(&th[i], NULL, race_thread, &rc);
		for (i = 0; i < 16; i++)
			pthread_join(th[i], NULL);
		if (rc.ok != 1)
			fails++;
		pthread_mutex_destroy(&rc.mu);
	}
	is_int(fails, 0, "16 threads, one code, 20 rounds: exactly one success each");
	store_close(s);
}

/* Linked with -Wl,--wrap=CRYPTO_memcmp: counts the store's comparisons. */
int	__real_CRYPTO_memcmp(const void *, const void *, size_t);
int	__wrap_CRYPTO_memcmp(const void *, const void *, size_t);

int
__wrap_CRYPTO_memcmp(const void *a, const void *b, size_t n)
{
	memcmp_calls++;
	return __real_CRYPTO_memcmp(a, b, n);
}

static void
test_constant_time(void)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char c[3][16], wrongc[16], addr[32];
	int i, try;

	wipe();
	s = open_default(&p);
	/* wrongc must match none of the 3 codes (else another address) */
	for (try = 0; try < 5; try++) {
		snprintf(addr, sizeof(addr), "ct%d@example.org", try);
		for (i = 0; i < 3; i++) {
			req(&q, addr, NULL, NULL, T0 + i * 30);
			issue_sent(s, &q, c[i]);
		}
		snprintf(wrongc, sizeof(wrongc), "%06d", (atoi(c[0]) + 1) % 1000000);
		if (strcmp(wrongc, c[1]) && strcmp(wrongc, c[2]))
			break;
	}
	q.now = T0 + 61;
	memcmp_calls = 0;
	is_int(store_otp_verify(s, &q, wrongc, &r), S_INVALID, "wrong code");
	is_int(memcmp_calls, 3, "CRYPTO_memcmp against each of the 3 outstanding codes");
	memcmp_calls = 0;
	is_int(store_otp_verify(s, &q, c[0], &r), S_OK, "oldest code verifies");
	is_int(memcmp_calls, 3, "a match on the first code still compares all 3 (no early exit)");
	store_close(s);
}

/*
 * The README's ceiling: at the defaults a stranger who asks for codes as
 * fast as the limits allow (every purpose, a fresh context each time) and
 * guesses at each until it dies gets at most max_per_address_hour * 24 *
 * max_failures_per_code = 1,200 comparisons with a live code a day, for a
 * 6-digit code a success chance of at most 1,200 / 10^6 = 0.12 %.
 */
static void
test_ceiling(void)
{
	static const char *purposes[] = { "login", "reset", "pay" };
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char codes[64][16], ctxs[64][24];
	const char *cpurp[64];
	time_t now, born[64];
	int n = 0, i, k, g, issued = 0, calls = 0, wins = 0, step = 0;

	wipe();
	s = open_default(&p);
	for (now = T0; now < T0 + 86400; now += 30, step++) {
		for (k = 0; k < 3; k++) {
			i = n % 64;
			snprintf(ctxs[i], sizeof(ctxs[i]), "attacker-%d-%d", step, k);
			req(&q, "alice@example.org", purposes[k], ctxs[i], now);
			if (issue_sent(s, &q, codes[i]) != S_OK)
				continue;
			cpurp[i] = purposes[k];
			born[i] = now;
			issued++;
			n++;
		}
		for (i = 0; i < (n < 64 ? n : 64); i++) {
			if (born[i] + 300 <= now)
				continue;
			for (g = 0; g < 7; g++) {
				char guess[16];

				snprintf(guess, sizeof(guess), "%06d", (step * 7 + g) % 1000000);
				if (strcmp(guess, codes[i]) == 0)
					continue;	/* a lucky guess: counted, not played */
				req(&q, "alice@example.org", cpurp[i], ctxs[i], now);
				memcmp_calls = 0;
				if (store_otp_verify(s, &q, guess, &r) == S_OK)
					wins++;
				calls += memcmp_calls;
			}
		}
	}
	diag("a day of guessing: %d codes issued, %d comparisons with a live code",
	    issued, calls);
	is_int(issued, 240, "at most 10 codes an hour: 240 a day");
	ok(calls <= 1200, "at most 1,200 guesses met a live code in a day");
	is_int(wins, 0, "no wrong guess verified");
	store_close(s);
}

static void
test_mac(void)
{
	uint8_t secret[STORE_SECRET_LEN], a[100], b[40], want[32], got[32];
	unsigned char buf[140];
	unsigned int len;
	struct store_key k;
	int i, bad = 0;

	for (i = 0; i < 200; i++) {
		RAND_bytes(secret, sizeof(secret));
		RAND_bytes(a, sizeof(a));
		RAND_bytes(b, sizeof(b));
		memcpy(buf, a, (size_t)(i % 100));
		memcpy(buf + i % 100, b, (size_t)(i % 40));
		HMAC(EVP_sha256(), secret, sizeof(secret), buf, (size_t)(i % 100 + i % 40),
		    want, &len);
		store_key_init(&k, secret);
		store_mac(&k, a, (size_t)(i % 100), b, (size_t)(i % 40), got);
		store_key_free(&k);
		if (memcmp(want, got, 32) != 0)
			bad++;
	}
	is_int(bad, 0, "store_mac equals OpenSSL HMAC-SHA256 (200 random inputs)");
}

/* Damages dir/file: truncated to off, or the byte at off flipped (off < 0: -off). */
static void
damage_file(const char *file, long off)
{
	char path[400];
	unsigned char b;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dbdir, file);
	if (off >= 0) {
		if (truncate(path, off) == -1)
			diag("truncate %s: %s", path, strerror(errno));
		return;
	}
	if ((fd = open(path, O_RDWR)) == -1 || pread(fd, &b, 1, -off) != 1) {
		diag("open %s: %s", path, strerror(errno));
		if (fd != -1)
			close(fd);
		return;
	}
	b ^= 0x10;
	if (pwrite(fd, &b, 1, -off) != 1)
		diag("pwrite %s: %s", path, strerror(errno));
	close(fd);
}

static void
test_quarantine(void)
{
	const struct store_quarantine *qs;
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char code[16], code2[16], path[400], err[512];
	time_t now = time(NULL);
	size_t n, swept = 0;
	int fd;

	wipe();
	s = open_default(&p);
	ok(s != NULL && store_quarantined(s, &qs) == 0, "a new store: nothing quarantined");
	req(&q, "quinn@example.org", NULL, NULL, now);
	issue_sent(s, &q, code);
	store_close(s);

	/* a damaged index: moved aside, rebuilt from otp.db, nothing lost */
	damage_file("expiry.db", 100);
	s = open_default(&p);
	ok(s != NULL, "a truncated expiry.db: the store opens");
	if (s == NULL)
		return;
	n = store_quarantined(s, &qs);
	ok(n == 1 && strcmp(qs[0].file, "expiry.db") == 0 && qs[0].when >= now &&
	    strncmp(qs[0].moved_to, "quarantine/expiry.db.", 21) == 0 &&
	    strstr(qs[0].reason, "verify") != NULL, "expiry.db quarantined, with when and why");
	snprintf(path, sizeof(path), "%s/%s", root, qs[0].moved_to);
	ok(access(path, F_OK) == 0, "the damaged file is in the quarantine folder");
	is_int(store_sweep(s, now + 3700, &swept), S_OK, "sweep with the rebuilt index");
	ok(swept >= 1, "the rebuilt index finds the records");
	store_close(s);

	/* otp.db with a flipped bit (page checksums): lost, and said so */
	wipe();
	s = open_default(&p);
	issue_sent(s, &q, code);
	store_close(s);
	damage_file("otp.db", -100);
	s = open_default(&p);
	ok(s != NULL, "otp.db with a flipped bit: the store opens");
	if (s == NULL)
		return;
	n = store_quarantined(s, &qs);
	ok(n == 2 && strcmp(qs[0].file, "otp.db") == 0 && strcmp(qs[1].file, "expiry.db") == 0,
	    "otp.db quarantined, its index with it");
	is_int(store_otp_verify(s, &q, code, &r), S_TEMPFAIL,
	    "a code of the lost otp.db: unavailable, not invalid");
	req(&q, "rex@example.org", NULL, NULL, now);
	is_int(store_otp_verify(s, &q, "123456", &r), S_TEMPFAIL,
	    "a guess at an address without a code: the same answer");
	is_int(issue_sent(s, &q, code2), S_OK, "the new otp.db issues");
	is_int(store_otp_verify(s, &q, code2, &r), S_OK, "and verifies");
	q.now = time(NULL) + p.max_ttl + 1;
	is_int(store_otp_verify(s, &q, "123456", &r), S_NOTFOUND,
	    "after max_ttl a wrong code is an ordinary failure again");
	store_close(s);
	s = open_default(&p);
	n = s != NULL ? store_quarantined(s, &qs) : 0;
	ok(n == 2 && strstr(qs[0].reason, "earlier") != NULL,
	    "a later start still lists the quarantined files");
	if (s != NULL)
		store_close(s);

	/* no quarantine possible: refused, naming the file */
	wipe();
	s = open_default(&p);
	store_close(s);
	damage_file("otp.db", 0);
	snprintf(path, sizeof(path), "%s/quarantine", root);
	if ((fd = open(path, O_CREAT | O_WRONLY, 0600)) != -1)
		close(fd);
	p.dir = dbdir;
	s = store_open(&p, err, sizeof(err));
	ok(s == NULL && strstr(err, "otp.db is damaged") != NULL &&
	    strstr(err, "cannot be moved aside") != NULL, "cannot move it aside: refused");
	if (s == NULL)
		diag("%s", err);
	if (s != NULL)
		store_close(s);
	unlink(path);
}

static int kept_lines;

static void
count_kept(int prio, const char *line)
{
	(void)prio;
	if (strstr(line, "event=store.verify") && strstr(line, "sound after it: kept"))
		kept_lines++;
}

/*
 * A crash after pages reached otp.db but before a checkpoint, then the
 * file cut back to its size at the last checkpoint: DB->verify fails
 * before recovery, passes after it (the log redoes the pages): kept.
 */
static void
test_quarantine_recoverable(void)
{
	const struct store_quarantine *qs;
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char path[400], addr[64];
	struct stat st0, st1;
	time_t now = time(NULL);
	int i, good = 0, status = 0;
	pid_t pid;

	wipe();
	s = open_default(&p);
	store_close(s);
	snprintf(path, sizeof(path), "%s/otp.db", dbdir);
	stat(path, &st0);
	if ((pid = fork()) == 0) {
		s = open_default(&p);
		for (i = 0; s != NULL && i < 300; i++) {
			snprintf(addr, sizeof(addr), "crash%d@example.org", i);
			req(&q, addr, NULL, NULL, now);
			issue_sent(s, &q, NULL);
		}
		if (s != NULL) {
			s->env->log_flush(s->env, NULL);
			s->env->memp_sync(s->env, NULL);
		}
		_exit(0);	/* a crash: no close, no checkpoint */
	}
	waitpid(pid, &status, 0);
	stat(path, &st1);
	ok(st1.st_size > st0.st_size, "pages reached otp.db after the last checkpoint");
	if (truncate(path, st0.st_size) == -1)
		diag("truncate: %s", strerror(errno));
	params(&p, 0);
	p.log = count_kept;
	s = open_with(&p);
	ok(s != NULL && store_quarantined(s, &qs) == 0 && kept_lines == 1,
	    "cut back to its size at the checkpoint: damaged before recovery, sound "
	    "after it: kept (logged), not quarantined");
	for (i = 0; s != NULL && i < 300; i++) {
		snprintf(addr, sizeof(addr), "crash%d@example.org", i);
		req(&q, addr, NULL, NULL, now);
		if (store_otp_verify(s, &q, "000000", &r) == S_INVALID)
			good++;
	}
	is_int(good, 300, "every code the crashed run issued is there (a wrong guess: invalid)");
	if (s != NULL)
		store_close(s);
}

int
main(void)
{
	char tmpl[] = "/tmp/test_store.XXXXXX";

	if (mkdtemp(tmpl) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(root, sizeof(root), "%s", tmpl);
	snprintf(dbdir, sizeof(dbdir), "%s/db", root);
	snprintf(secret, sizeof(secret), "%s/secret", root);
	snprintf(oldsecret, sizeof(oldsecret), "%s/secret.old", root);

	test_mac();
	test_constant_time();
	test_basic();
	test_expiry_binding();
	test_limits();
	test_resend_and_failures();
	test_lockout();
	test_ceiling();
	test_rotation_pending();
	test_failure_records();
	test_revoke_sweep_reopen();
	test_cleartext();
	test_race();
	test_crash();
	test_lazy_flush();
	test_quarantine();
	test_quarantine_recoverable();

	wipe();
	rmdir(root);
	return done_testing();
}
