/*
 * ops_suppress.c - suppress.list, suppress.add, suppress.remove (an app on
 * its own list, an admin on any app's with "as_app"; a complaint is an
 * add), and dsn.report: a delivery status notification (RFC 3464) that came
 * back to our return path, fed by an admin or an MTA pipe, is parsed per
 * recipient, classified with the bounce rules, noted on the message's
 * recipient, and a hard failure suppresses the address.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "agent/mail/mail.h"
#include "agent/core/otpmaild.h"
#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"
#include "queue/queue.h"
#include "store/store.h"

#define OPS_SUPP_LIST_MAX	1000	/* entries in one page */
#define OPS_DSN_MAX		(256 * 1024)	/* bytes of a DSN we read */
#define OPS_DSN_RCPTS_MAX	100	/* per-recipient groups we read */
#define OPS_DSN_FIELD_MAX	400

struct dsn_rcpt {
	char	 orig[OPS_DSN_FIELD_MAX + 1];	/* Original-Recipient address */
	char	 final[OPS_DSN_FIELD_MAX + 1];	/* Final-Recipient address */
	char	 action[32];
	char	 status[32];
	char	 diag[OPS_DSN_FIELD_MAX + 1];	/* Diagnostic-Code text */
};

static json_t	*ops_supp_entry(const struct store_supp *);
static json_t	*ops_supp_error(enum s_status);
static const char *ops_supp_app(struct otpmaild *, const struct ctl_peer *, json_t *req,
		    int any_for_admin, json_t **err);
static size_t	 dsn_parse(const char *text, size_t len, struct dsn_rcpt *, size_t max);
static void	 dsn_reply(const struct dsn_rcpt *, char *out, size_t len);
static const char *dsn_rcpt_of(const struct q_envelope *, const struct dsn_rcpt *);

static json_t *
ops_supp_entry(const struct store_supp *e)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:I, s:o}", "id", e->id, "app", e->app,
	    "reason", e->reason, "reply", e->reply, "created", (json_int_t)e->created,
	    "expires", e->expires ? json_integer((json_int_t)e->expires) : json_null());
}

static json_t *
ops_supp_error(enum s_status st)
{
	if (st == S_NOTFOUND)
		return reply_error("not_found", "no such entry on the suppression list");
	if (st == S_BADINPUT)
		return reply_error("bad_request", "bad address, id or reason");
	return reply_error("unavailable", "the store failed; try again later");
}

/* The app acted on; an admin with no as_app means every app (NULL) where
 * any_for_admin. */
static const char *
ops_supp_app(struct otpmaild *d, const struct ctl_peer *p, json_t *req, int any_for_admin,
    json_t **err)
{
	if (any_for_admin && (p->roles & ROLE_ADMIN) && json_object_get(req, "as_app") == NULL) {
		*err = NULL;
		return NULL;
	}
	return ctl_req_app(d, p, req, err);
}

/* The address of a request, in the canonical form the queue holds. */
static int
ops_supp_addr(struct otpmaild *d, json_t *req, int required, char *out, size_t len,
    json_t **err)
{
	const char *a = NULL;

	if (req_str(req, "address", required, ADDR_PATH_MAX, &a, err) == -1)
		return -1;
	if (a == NULL)
		return 0;
	if (opq_addr(d, "address", a, out, len, err) == -1)
		return -1;
	return 1;
}

json_t *
op_suppress_list(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct store_supp *v;
	const char *app, *after = NULL;
	json_t *err = NULL, *arr, *r;
	enum s_status st;
	size_t n, i;
	long limit = 100;
	int more;

	app = ops_supp_app(d, p, req, 1, &err);
	if (err != NULL)
		return err;
	if (req_str(req, "after", 0, STORE_SUPP_ID_LEN, &after, &err) == -1 ||
	    req_int(req, "limit", 0, 1, OPS_SUPP_LIST_MAX, &limit, &err) == -1)
		return err;
	if ((v = calloc((size_t)limit, sizeof(*v))) == NULL)
		return reply_error("unavailable", "out of memory");
	st = store_supp_list(d->store, app, after, time(NULL), v, (size_t)limit, &n, &more);
	if (st != S_OK) {
		free(v);
		return ops_supp_error(st);
	}
	arr = json_array();
	for (i = 0; i < n; i++)
		json_array_append_new(arr, ops_supp_entry(&v[i]));
	free(v);
	r = json_pack("{s:b, s:o, s:b}", "ok", 1, "entries", arr, "more", more);
	return r ? r : reply_error("unavailable", "out of memory");
}

json_t *
op_suppress_add(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	char addr[ADDR_PATH_MAX + 1];
	const char *app, *reason = "complaint", *reply = "";
	struct store_supp e;
	enum s_status st;
	json_t *err = NULL, *r;
	size_t i;

	if ((app = ctl_req_app(d, p, req, &err)) == NULL)
		return err;
	if (ops_supp_addr(d, req, 1, addr, sizeof(addr), &err) == -1 ||
	    req_str(req, "reason", 0, STORE_SUPP_REASON_MAX, &reason, &err) == -1 ||
	    req_str(req, "reply", 0, STORE_SUPP_REPLY_MAX, &reply, &err) == -1)
		return err;
	for (i = 0; reason[i] != '\0'; i++)
		if (!islower((unsigned char)reason[i]) && reason[i] != '_')
			return reply_bad_field("reason", "reason is a word: a-z and _");
	if (i == 0)
		return reply_bad_field("reason", "empty reason");
	st = store_supp_add(d->store, app, addr, reason, reply, d->cfg->suppress_ttl,
	    time(NULL), &e);
	log_msg(st == S_OK ? LOG_NOTICE : LOG_ERR, "event=suppress.add result=%s app=%s "
	    "reason=%s uid=%u", s_status_error(st), app, reason, (unsigned)p->uid);
	if (st != S_OK)
		return ops_supp_error(st);
	r = ops_supp_entry(&e);
	json_object_set_new(r, "ok", json_true());
	return r;
}

json_t *
op_suppress_remove(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	char addr[ADDR_PATH_MAX + 1];
	const char *app, *id = NULL;
	struct store_supp e;
	enum s_status st;
	json_t *err = NULL;
	int has;

	if ((has = ops_supp_addr(d, req, 0, addr, sizeof(addr), &err)) == -1 ||
	    req_str(req, "id", 0, STORE_SUPP_ID_LEN, &id, &err) == -1)
		return err;
	if ((has != 0) == (id != NULL))
		return reply_bad_field("address", "give an address or an id");
	/* by id an admin reaches every app's entries; by address, one app's */
	app = ops_supp_app(d, p, req, id != NULL, &err);
	if (err != NULL)
		return err;
	if (app == NULL && id == NULL)
		return reply_bad_field("as_app", "an address needs an app");
	st = store_supp_remove(d->store, app, id ? NULL : addr, id, time(NULL), &e);
	log_msg(st == S_OK ? LOG_NOTICE : LOG_INFO, "event=suppress.remove result=%s "
	    "app=%s uid=%u", s_status_error(st), st == S_OK ? e.app : app ? app : "*",
	    (unsigned)p->uid);
	if (st != S_OK)
		return ops_supp_error(st);
	return json_pack("{s:b, s:s, s:s}", "ok", 1, "id", e.id, "app", e.app);
}

/* --- dsn.report ------------------------------------------------------ */

/* The address of "rfc822; bob@example.org" (or "rfc822;<bob@...>"). */
static void
dsn_addr(const char *v, char *out, size_t len)
{
	const char *s = strchr(v, ';');
	size_t n;

	s = s ? s + 1 : v;
	while (*s == ' ' || *s == '\t' || *s == '<')
		s++;
	n = strcspn(s, " \t>");
	snprintf(out, len, "%.*s", (int)n, s);
}

/*
 * The per-recipient groups of the message/delivery-status part (RFC 3464
 * section 2.3): from the part's header (or the start if there is none),
 * fields unfolded, a new group at each Final-Recipient.  Only what we read
 * is bounded: longer values are cut.
 */
static size_t
dsn_parse(const char *text, size_t len, struct dsn_rcpt *v, size_t max)
{
	const char *p = text, *end = text + len, *part;
	char line[OPS_DSN_FIELD_MAX + 64], *val, orig[OPS_DSN_FIELD_MAX + 1] = "";
	struct dsn_rcpt *cur = NULL;
	size_t n = 0, o;

	part = strcasestr(text, "message/delivery-status");
	if (part != NULL && part < end)
		p = part;
	while (p < end) {
		/* one unfolded field line */
		o = 0;
		for (;;) {
			while (p < end && *p != '\n') {
				if (*p != '\r' && o + 1 < sizeof(line))
					line[o++] = *p == '\t' ? ' ' : *p;
				p++;
			}
			if (p < end)
				p++;
			if (p < end && (*p == ' ' || *p == '\t'))
				continue;
			break;
		}
		line[o] = '\0';
		/* the part ends at the next boundary: the returned message's
		 * headers after it (a "Status: RO") are not the report's */
		if (cur != NULL && line[0] == '-' && line[1] == '-')
			break;
		if ((val = strchr(line, ':')) == NULL)
			continue;
		*val++ = '\0';
		while (*val == ' ')
			val++;
		if (strcasecmp(line, "Original-Recipient") == 0) {
			/* it precedes its Final-Recipient */
			dsn_addr(val, orig, sizeof(orig));
		} else if (strcasecmp(line, "Final-Recipient") == 0) {
			if (n == max)
				break;
			cur = &v[n++];
			memset(cur, 0, sizeof(*cur));
			dsn_addr(val, cur->final, sizeof(cur->final));
			snprintf(cur->orig, sizeof(cur->orig), "%s", orig);
			orig[0] = '\0';
		} else if (cur == NULL)
			continue;
		else if (strcasecmp(line, "Action") == 0)
			snprintf(cur->action, sizeof(cur->action), "%.*s",
			    (int)strcspn(val, " ;("), val);
		else if (strcasecmp(line, "Status") == 0)
			snprintf(cur->status, sizeof(cur->status), "%.*s",
			    (int)strcspn(val, " ;("), val);
		else if (strcasecmp(line, "Diagnostic-Code") == 0) {
			const char *s = strchr(val, ';');

			s = s ? s + 1 : val;
			while (*s == ' ')
				s++;
			snprintf(cur->diag, sizeof(cur->diag), "%s", s);
		}
	}
	return n;
}

/*
 * The text the bounce rules read: the diagnostic's reply code, the Status
 * field (authoritative, RFC 3464 2.3.4) and the diagnostic's text.
 */
static void
dsn_reply(const struct dsn_rcpt *r, char *out, size_t len)
{
	const char *d = r->diag;
	char code[4] = "";

	if (isdigit((unsigned char)d[0]) && isdigit((unsigned char)d[1]) &&
	    isdigit((unsigned char)d[2]) && (d[3] == ' ' || d[3] == '-' || d[3] == '\0')) {
		memcpy(code, d, 3);
		d += 3;
		while (*d == ' ' || *d == '-')
			d++;
		/* its own enhanced code gives way to the Status field */
		if (isdigit((unsigned char)d[0]) && d[1] == '.')
			d += strcspn(d, " ");
		while (*d == ' ')
			d++;
	} else
		snprintf(code, sizeof(code), "%c50", r->status[0] == '4' ? '4' : '5');
	snprintf(out, len, "%s %s %s", code, r->status, d);
}

/* The message's recipient a DSN group reports on (its Original-Recipient,
 * else its Final-Recipient), NULL if it has none of them. */
static const char *
dsn_rcpt_of(const struct q_envelope *e, const struct dsn_rcpt *r)
{
	size_t j;

	for (j = 0; j < e->nrcpt; j++)
		if ((r->orig[0] && strcasecmp(e->rcpts[j].addr, r->orig) == 0) ||
		    strcasecmp(e->rcpts[j].addr, r->final) == 0)
			return e->rcpts[j].addr;
	return NULL;
}

json_t *
op_dsn_report(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct dsn_rcpt *v;
	struct bounce_result b;
	struct q_envelope *e = NULL;
	const char *dsn = NULL, *id = NULL, *app = NULL;
	char app_buf[CONFIG_APP_NAME_MAX + 8], reply[OPS_DSN_FIELD_MAX + 64], why[256];
	json_t *err = NULL, *arr, *o;
	size_t dlen = 0, n, i;
	enum q_status qs;

	if (req_text(req, "dsn", 1, OPS_DSN_MAX, &dsn, &dlen, &err) == -1 ||
	    req_str(req, "id", 0, 64, &id, &err) == -1)
		return err;
	if (id != NULL) {
		/* the message names the app; as_app cannot point elsewhere */
		if ((qs = queue_get(d->queue, id, &e)) != Q_OK)
			return reply_error("not_found", "no message with id %s", id);
		suppress_env_app(e, app_buf, sizeof(app_buf));
		app = app_buf;
	} else if (json_object_get(req, "as_app") == NULL)
		return reply_bad_field("id", "give the message's id, or as_app");
	else if ((app = ctl_req_app(d, p, req, &err)) == NULL)
		return err;
	if ((v = calloc(OPS_DSN_RCPTS_MAX, sizeof(*v))) == NULL) {
		q_envelope_free(e);
		return reply_error("unavailable", "out of memory");
	}
	n = dsn_parse(dsn, dlen, v, OPS_DSN_RCPTS_MAX);
	arr = json_array();
	for (i = 0; i < n; i++) {
		const char *addr = v[i].orig[0] ? v[i].orig : v[i].final;
		const char *noted = "no";
		int failed = strcasecmp(v[i].action, "failed") == 0;

		if (!failed && strcasecmp(v[i].action, "delayed") != 0)
			b.klass = BOUNCE_NONE;	/* delivered, relayed, expanded */
		else {
			dsn_reply(&v[i], reply, sizeof(reply));
			bounce_classify(reply, &b);
		}
		o = json_pack("{s:s, s:s, s:s, s:o}", "recipient", addr, "action", v[i].action,
		    "status", v[i].status, "class", b.klass != BOUNCE_NONE ?
		    json_string(bounce_class_name(b.klass)) : json_null());
		if (b.klass != BOUNCE_NONE && id != NULL) {
			/* only a recipient of the message can be noted or
			 * suppressed through it: the one it was sent to */
			if ((addr = dsn_rcpt_of(e, &v[i])) == NULL) {
				noted = "not_a_recipient";
				b.klass = BOUNCE_NONE;
			} else {
				qs = queue_note_rcpt(d->queue, id, addr,
				    bounce_class_name(b.klass), reply);
				noted = qs == Q_OK ? "yes" : qs == Q_BUSY ? "busy" : "no";
			}
			if (addr == NULL)
				addr = v[i].orig[0] ? v[i].orig : v[i].final;
		}
		json_object_set_new(o, "noted", json_string(noted));
		json_object_set_new(o, "suppressed", json_boolean(failed &&
		    b.klass == BOUNCE_HARD && d->cfg->suppress_hard_bounces &&
		    addr_validate(addr, why, sizeof(why)) == 0 &&
		    suppress_add(d, app, addr, "hard_bounce", reply, id) == 0));
		json_array_append_new(arr, o);
	}
	free(v);
	q_envelope_free(e);
	log_msg(LOG_NOTICE, "event=dsn.report id=%s app=%s recipients=%zu uid=%u",
	    id ? id : "-", app, n, (unsigned)p->uid);
	return json_pack("{s:b, s:s, s:o}", "ok", 1, "app", app, "recipients", arr);
}
