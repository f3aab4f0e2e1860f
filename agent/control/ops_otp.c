/*
 * ops_otp.c - otp.issue, otp.verify, otp.revoke.  An issue stores the code
 * as pending (durable), composes and durably enqueues the mail, and only
 * then starts the cooldown (store_otp_mark_sent); if the enqueue fails the
 * code is cancelled and the limits are given back.  Logs never hold a code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "agent/mail/mail.h"
#include "agent/delivery/delivery.h"
#include "agent/core/otpmaild.h"
#include "agent/control/ops.h"
#include "queue/queue.h"
#include "store/store.h"

#define OTP_PURPOSE_MAX	32
#define OTP_CONTEXT_MAX	1024
#define OTP_ADDR_MAX	(ADDR_PATH_MAX + 64)

struct otp_args {
	const char	*app;		/* the namespace: the peer's app */
	const char	*client_id;	/* the end user's IP or device, opaque */
	const char	*to;
	const char	*purpose;
	const char	*context;
	char		 canon[ADDR_PATH_MAX + 1];	/* to, canonical: the code's key */
	char		 limit_key[ADDR_PATH_MAX + 1];	/* limits and lock-outs */
	char		 who[1400];	/* "to=addr" or "to_pseudonym=..." for logs */
};

static int	otp_args(struct otpmaild *, const struct ctl_peer *, json_t *,
		    struct otp_args *, json_t **);
static json_t	*otp_store_error(enum s_status, const struct otp_result *);
static char	*otp_stream_tag(char *msg, size_t *len, const char *purpose, const char *app);
static json_t	*otp_verify_error(struct otpmaild *, enum s_status, const struct otp_result *);
static void	otp_request_init(struct otp_request *, const struct otp_args *,
		    const struct ctl_peer *);
static json_t	*otp_issue(struct otpmaild *, const struct ctl_peer *, json_t *,
		    struct otp_args *, const char *key);
static int	otp_display_fields(struct otpmaild *, const char *, const char *, json_t **);

/*
 * What the mail shows a person from the request: "app" only if the admin
 * lets requests name the app (otp_app_from_request), and like client_info
 * only as plain text, so no app can write markup or a link into a mail.
 */
static int
otp_display_fields(struct otpmaild *d, const char *app, const char *client, json_t **err)
{
	char why[160];

	if (app != NULL && !d->cfg->otp_app_from_request) {
		*err = reply_bad_field("app", "the app name is set by the configuration "
		    "(otp_app_name); otp_app_from_request is off");
		return -1;
	}
	if (app != NULL && !otp_display_text_ok(app, OTP_APP_CHARS, 0, why, sizeof(why))) {
		*err = reply_bad_field("app", "app name: %s", why);
		return -1;
	}
	if (client != NULL && !otp_display_text_ok(client, OTP_CLIENT_CHARS, 1, why,
	    sizeof(why))) {
		*err = reply_bad_field("client_info", "client_info: %s", why);
		return -1;
	}
	return 0;
}

/* The fields every otp op takes: to, purpose?, context?, client_id?, and
 * as_app? (admins only). */
static int
otp_args(struct otpmaild *d, const struct ctl_peer *p, json_t *req, struct otp_args *a,
    json_t **err)
{
	char why[256], pn[17];
	const char *c;
	int rc;

	memset(a, 0, sizeof(*a));
	a->purpose = "login";
	if ((a->app = ctl_req_app(d, p, req, err)) == NULL ||
	    req_str(req, "client_id", 0, STORE_CLIENT_MAX, &a->client_id, err) == -1 ||
	    req_str(req, "to", 1, OTP_ADDR_MAX, &a->to, err) == -1 ||
	    req_str(req, "purpose", 0, OTP_PURPOSE_MAX, &a->purpose, err) == -1 ||
	    req_str(req, "context", 0, OTP_CONTEXT_MAX, &a->context, err) == -1)
		return -1;
	if ((rc = addr_canonical(a->to, (d->cfg->allow_address_literals ?
	    ADDR_ALLOW_LITERAL : 0) | (d->cfg->smtputf8 ? ADDR_ALLOW_UTF8 : 0), a->canon, sizeof(a->canon), why, sizeof(why))) != 0) {
		*err = rc == ADDR_REFUSED ? reply_field_error("bad_address", "to", "%s", why) :
		    reply_bad_field("to", "%s", why);
		return -1;
	}
	a->to = a->canon;
	if (addr_limit_key(a->canon, d->cfg->otp_limit_tag_separators, a->limit_key,
	    sizeof(a->limit_key)) == -1) {
		*err = reply_bad_field("to", "address too long");
		return -1;
	}
	if (a->purpose[0] == '\0') {
		*err = reply_bad_field("purpose", "empty purpose");
		return -1;
	}
	for (c = a->purpose; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
		    *c == '-' || *c == '_' || *c == '.')) {
			*err = reply_bad_field("purpose", "purpose is lower-case letters, "
			    "digits, '-', '_', '.'");
			return -1;
		}
	if (d->cfg->log_pseudonymize) {
		store_pseudonym(d->store, a->to, pn);
		log_pair(a->who, sizeof(a->who), "to_pseudonym", pn);
	} else
		log_pair(a->who, sizeof(a->who), "to", a->to);
	return 0;
}

static json_t *
otp_store_error(enum s_status st, const struct otp_result *res)
{
	json_t *r;

	switch (st) {
	case S_RATE_LIMITED:
		return reply_limited("rate_limited", res->limit, res->retry_after,
		    "too many codes requested; try again later");
	case S_LOCKED:
		return reply_limited("locked", res->limit ? res->limit : "context_lockout",
		    res->retry_after, "too many failed attempts; try again later");
	case S_INVALID:
		r = reply_error("invalid_code", "the code is not valid");
		json_object_set_new(r, "attempts_left",
		    json_integer(res->attempts_left > 0 ? res->attempts_left : 0));
		if (res->limit != NULL) {
			json_object_set_new(r, "limit", json_string(res->limit));
			json_object_set_new(r, "retry_after", json_integer(res->retry_after));
		}
		return r;
	case S_EXPIRED:
		return reply_error("expired", "the code has expired; request a new one");
	case S_NOTFOUND:
		return reply_error("not_found", "no outstanding code for this address and purpose");
	case S_BADINPUT:
		return reply_error("bad_request", "bad address, purpose, context, client_id "
		    "or ttl");
	default:
		r = reply_error("unavailable", "the code store failed; try again later");
		/* several hosts: no master now (an election, a partition) */
		if (res != NULL && res->retry_after > 0)
			json_object_set_new(r, "retry_after", json_integer(res->retry_after));
		return r;
	}
}

/*
 * By default a wrong, expired or never issued code get one answer, with the
 * same fields: whether an address has a live code is not for a guesser to
 * learn.  A lock-out (of the guesser's own context or client) is said, with
 * retry_after.  otp_verify_detail = yes restores the detailed answers.
 */
static json_t *
otp_verify_error(struct otpmaild *d, enum s_status st, const struct otp_result *res)
{
	if (d->cfg->otp_verify_detail ||
	    (st != S_INVALID && st != S_EXPIRED && st != S_NOTFOUND))
		return otp_store_error(st, res);
	if (res->limit != NULL && strcmp(res->limit, "code_attempts") != 0)
		return reply_limited("invalid_code", res->limit, res->retry_after,
		    "the code is not valid, and too many failed attempts");
	return reply_error("invalid_code", "the code is not valid");
}

static void
otp_request_init(struct otp_request *q, const struct otp_args *a, const struct ctl_peer *p)
{
	memset(q, 0, sizeof(*q));
	q->app = a->app;
	q->client_id = a->client_id;
	q->addr = a->to;
	q->limit_addr = a->limit_key;
	q->purpose = a->purpose;
	q->context = a->context;
	q->client_uid = (uint32_t)p->uid;
	q->now = time(NULL);
}

struct otp_barrier {
	struct store	*store;
	uint64_t	 ticket;
};

/* Runs in the enqueue between the mail's fsync and its naming: the code's
 * commit must be on disk first, so a mail never exists without its code. */
static int
otp_issue_barrier(void *arg)
{
	struct otp_barrier *b = arg;

	if (store_flush_wait(b->store, b->ticket) == -1) {
		log_msg(LOG_ERR, "event=otp.issue result=failed reason=store_log_flush");
		return -1;
	}
	return 0;
}

/* The mail with the Feedback-ID stream tag in front (the old copy, which
 * holds the code, is wiped); the mail as it was if memory runs out. */
static char *
otp_stream_tag(char *msg, size_t *len, const char *purpose, const char *app)
{
	struct buf b;
	char *out;
	size_t n;

	buf_init(&b);
	msg_add_feedback_id(&b, purpose, "otp", app);
	buf_add(&b, msg, *len);
	if ((out = buf_take(&b, &n)) == NULL) {
		buf_free(&b);
		return msg;
	}
	OPENSSL_cleanse(msg, *len);
	free(msg);
	*len = n;
	return out;
}

json_t *
op_otp_issue(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct otp_args a;
	const char *key;
	json_t *err = NULL, *r;

	if (otp_args(d, p, req, &a, &err) == -1)
		return err;
	if (ctl_idem_begin(d, a.app, req, &key, &r) == 1)
		return r;
	r = otp_issue(d, p, req, &a, key);
	ctl_idem_end(d, a.app, key, r);
	return r;
}

static json_t *
otp_issue(struct otpmaild *d, const struct ctl_peer *p, json_t *req, struct otp_args *ap,
    const char *key)
{
	struct otp_barrier bar = { NULL, 0 };
	struct ctl_idem_barrier ib;
	struct otp_args a = *ap;
	struct otp_request q;
	struct otp_result res;
	struct otp_mail_vars v;
	struct q_envelope env;
	struct q_rcpt rcpt;
	const char *locale = NULL, *app = NULL, *client = NULL, *used_locale;
	char qid[QUEUE_ID_LEN + 1], why[512], *msg = NULL, tag[CONFIG_APP_NAME_MAX + 16];
	json_t *err = NULL, *r;
	enum s_status st;
	size_t len = 0;
	long ttl = 0;

	if (req_str(req, "locale", 0, OTP_LOCALE_MAX, &locale, &err) == -1 ||
	    req_str(req, "app", 0, OTP_APP_MAX, &app, &err) == -1 ||
	    req_str(req, "client_info", 0, OTP_CLIENT_MAX, &client, &err) == -1 ||
	    req_int(req, "ttl", 0, 10, d->cfg->otp_max_ttl, &ttl, &err) == -1 ||
	    otp_display_fields(d, app, client, &err) == -1)
		return err;
	/* before any limit is counted or code made */
	if ((err = suppress_refuse(d, a.app, &a.to, 1)) != NULL) {
		log_msg(LOG_INFO, "event=otp.issue result=refused reason=suppressed %s "
		    "purpose=%s app=%s uid=%u", a.who, a.purpose, a.app, (unsigned)p->uid);
		return err;
	}
	if (d->cfg->otp_check_deliverability &&
	    delivery_domain_check(d, addr_domain(a.to), why, sizeof(why)) == -1) {
		log_msg(LOG_INFO, "event=otp.issue result=refused reason=bad_address %s "
		    "purpose=%s uid=%u", a.who, a.purpose, (unsigned)p->uid);
		return reply_error("bad_address", "%s", why);
	}

	otp_request_init(&q, &a, p);
	q.ttl = (int)ttl;
	/* committed without a sync: the log flush runs while the mail is
	 * composed, signed and written; the mail gets its name only after it */
	st = store_otp_issue_async(d->store, &q, &res, &bar.ticket);
	/* Crash injection for tests/integration/test_crash_points.py only. */
	if (st == S_OK && getenv("OTPMAIL_FAULT") != NULL &&
	    strcmp(getenv("OTPMAIL_FAULT"), "after_db_commit") == 0)
		abort();
	if (st != S_OK) {
		log_msg(st == S_TEMPFAIL ? LOG_ERR : LOG_INFO, "event=otp.issue result=refused "
		    "reason=%s limit=%s retry_after=%d %s purpose=%s app=%s uid=%u",
		    s_status_error(st), res.limit ? res.limit : "-", res.retry_after,
		    a.who, a.purpose, a.app, (unsigned)p->uid);
		return otp_store_error(st, &res);
	}

	memset(&v, 0, sizeof(v));
	v.code = res.code;
	v.ttl = res.ttl;
	v.app = app ? app : d->cfg->otp_app_name;
	v.client = client;
	v.purpose = a.purpose;
	v.locale = locale ? locale : d->cfg->otp_default_locale;
	v.from = d->cfg->otp_from;
	v.to = a.to;
	v.hostname = d->hostname;
	v.now = q.now;
	pthread_rwlock_rdlock(&d->reload_lock);
	used_locale = otp_templates_pick(d->templates, v.locale);
	msg = otp_mail_compose(d->templates, &v, &len, why, sizeof(why));
	pthread_rwlock_unlock(&d->reload_lock);
	OPENSSL_cleanse(res.code, sizeof(res.code));
	if (msg == NULL) {
		store_otp_cancel(d->store, &q, res.issue_id);
		log_msg(LOG_ERR, "event=otp.issue result=failed reason=compose detail=\"%s\" "
		    "%s purpose=%s", why, a.who, a.purpose);
		return reply_error("unavailable", "cannot compose the mail");
	}

	msg = otp_stream_tag(msg, &len, a.purpose, a.app);

	memset(&env, 0, sizeof(env));
	memset(&rcpt, 0, sizeof(rcpt));
	rcpt.addr = (char *)a.to;
	env.klass = Q_CLASS_OTP;
	env.sender = d->cfg->otp_from;
	env.nrcpt = 1;
	env.rcpts = &rcpt;
	env.expires = res.expires_at;
	snprintf(tag, sizeof(tag), "otp app=%s", a.app);
	env.tag = tag;
	env.client_uid = (uint32_t)p->uid;
	bar.store = d->store;
	/* the answer, but its id: a retry after a crash may need it */
	r = reply_ok();
	json_object_set_new(r, "expires_at", json_integer((json_int_t)res.expires_at));
	json_object_set_new(r, "ttl", json_integer(res.ttl));
	json_object_set_new(r, "resend_after", json_integer(res.resend_after));
	memset(&ib, 0, sizeof(ib));
	ib.d = d;
	ib.app = a.app;
	ib.key = key;
	ib.qid = qid;
	ib.answer = r;
	ib.inner = otp_issue_barrier;
	ib.inner_arg = &bar;
	if (submit_message(d, &env, msg, len, qid, &err, ctl_idem_barrier, &ib) == -1) {
		json_decref(r);
		OPENSSL_cleanse(msg, len);
		free(msg);
		/* No mail: the code goes and the limits are given back. */
		st = store_otp_cancel(d->store, &q, res.issue_id);
		log_msg(LOG_ERR, "event=otp.issue result=failed reason=enqueue cancel=%s "
		    "%s purpose=%s", s_status_error(st), a.who, a.purpose);
		return err;
	}
	OPENSSL_cleanse(msg, len);
	free(msg);
	/* The mail is on disk: now the cooldown starts. */
	if ((st = store_otp_mark_sent(d->store, &q, res.issue_id, qid)) != S_OK)
		log_msg(LOG_WARNING, "event=otp.mark_sent_failed id=%s error=%s", qid,
		    s_status_error(st));
	log_msg(LOG_INFO, "event=otp.issue result=ok id=%s %s purpose=%s ttl=%d "
	    "locale=%s app=%s uid=%u", qid, a.who, a.purpose, res.ttl, used_locale,
	    a.app, (unsigned)p->uid);

	json_object_set_new(r, "id", json_string(qid));
	return r;
}

json_t *
op_otp_verify(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct otp_args a;
	struct otp_request q;
	struct otp_result res;
	const char *code, *limit = NULL;
	json_t *err = NULL;
	enum s_status st;
	int wait;

	if (otp_args(d, p, req, &a, &err) == -1 ||
	    req_str(req, "code", 1, 64, &code, &err) == -1)
		return err;
	otp_request_init(&q, &a, p);
	wait = guard_verify_begin(d->cfg, p->uid, q.now, &limit);
	if (wait > 0) {
		log_msg(LOG_WARNING, "event=otp.verify result=refused limit=%s "
		    "retry_after=%d app=%s uid=%u", limit, wait, a.app, (unsigned)p->uid);
		return reply_limited("rate_limited", limit, wait,
		    "too many failed code checks; try again later");
	}
	st = store_otp_verify(d->store, &q, code, &res);
	if (st == S_OK || st == S_TEMPFAIL || st == S_BADINPUT)
		guard_verify_success(p->uid, q.now);	/* not a failed guess */
	switch (st) {
	case S_OK:
		log_msg(LOG_INFO, "event=otp.verify result=ok id=%s %s purpose=%s app=%s "
		    "uid=%u", res.queue_id[0] ? res.queue_id : "-", a.who, a.purpose, a.app,
		    (unsigned)p->uid);
		return reply_ok();
	case S_INVALID:
		log_msg(LOG_NOTICE, "event=otp.verify result=failed reason=invalid_code "
		    "id=%s attempts_left=%d limit=%s %s purpose=%s app=%s uid=%u",
		    res.queue_id[0] ? res.queue_id : "-", res.attempts_left > 0 ?
		    res.attempts_left : 0, res.limit ? res.limit : "-", a.who, a.purpose,
		    a.app, (unsigned)p->uid);
		break;
	default:
		log_msg(st == S_TEMPFAIL ? LOG_ERR : LOG_NOTICE, "event=otp.verify "
		    "result=failed reason=%s id=%s limit=%s retry_after=%d %s purpose=%s "
		    "app=%s uid=%u", s_status_error(st), res.queue_id[0] ? res.queue_id : "-",
		    res.limit ? res.limit : "-", res.retry_after, a.who, a.purpose, a.app,
		    (unsigned)p->uid);
		break;
	}
	if (res.limit != NULL && (strcmp(res.limit, "context_lockout") == 0 ||
	    strcmp(res.limit, "client_lockout") == 0) && st != S_LOCKED)
		log_msg(LOG_WARNING, "event=otp.lockout limit=%s %s purpose=%s app=%s "
		    "retry_after=%d", res.limit, a.who, a.purpose, a.app, res.retry_after);
	return otp_verify_error(d, st, &res);
}

json_t *
op_otp_revoke(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct otp_args a;
	struct otp_request q;
	json_t *err = NULL, *r;
	enum s_status st;
	int n = 0;

	if (otp_args(d, p, req, &a, &err) == -1)
		return err;
	otp_request_init(&q, &a, p);
	st = store_otp_revoke(d->store, &q, &n);
	log_msg(st == S_OK ? LOG_INFO : LOG_ERR, "event=otp.revoke result=%s count=%d "
	    "%s purpose=%s app=%s uid=%u", s_status_error(st), n, a.who, a.purpose, a.app,
	    (unsigned)p->uid);
	if (st != S_OK)
		return otp_store_error(st, NULL);
	r = reply_ok();
	json_object_set_new(r, "revoked", json_integer(n));
	return r;
}

/* Admin: clears the failures and lock-out of a context (to, purpose,
 * context, as_app) and of a client_id if given; with otp_permanent_lockout
 * a lock at the cap lasts until this. */
json_t *
op_otp_unlock(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct otp_args a;
	struct otp_request q;
	json_t *err = NULL;
	enum s_status st;

	if (otp_args(d, p, req, &a, &err) == -1)
		return err;
	otp_request_init(&q, &a, p);
	st = store_otp_unlock(d->store, &q);
	log_msg(st == S_OK ? LOG_NOTICE : LOG_ERR, "event=otp.unlock result=%s %s app=%s "
	    "uid=%u", s_status_error(st), a.who, a.app, (unsigned)p->uid);
	if (st != S_OK)
		return otp_store_error(st, NULL);
	return reply_ok();
}
