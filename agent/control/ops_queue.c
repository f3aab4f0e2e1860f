/*
 * ops_queue.c - the queue's face on the control socket: mail.send (compose
 * or take a raw message, validate, submit), message.status, the admin
 * queue.* operations (list with filters and paging, show, hold, release,
 * delete, flush, pause, resume), stats and Prometheus metrics.  Every admin
 * action is logged with the caller's uid.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "agent/mail/mail.h"
#include "agent/core/otpmaild.h"
#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"
#include "agent/events/events.h"
#include "queue/queue.h"
#include "store/store.h"

#define OPQ_SUBJECT_MAX		998
#define OPQ_HEADER_MAX		998	/* bytes of a header value we accept */
#define OPQ_HEADERS_MAX		50	/* extra headers in one mail.send */
#define OPQ_NAME_MAX		255	/* bytes of a display name */
#define OPQ_ADDR_HDR_MAX	20	/* mailboxes in a Reply-To or Sender header */
#define OPQ_LINE_MAX		998	/* RFC 5322 2.1.1 */
#define OPQ_LIST_MAX		1000	/* queue.list page size cap */
#define OPQ_IDS_MAX		1000	/* ids in one admin request */
#define OPQ_URI_MAX		900	/* bytes of a List-Unsubscribe URI */

enum opq_action { OPQ_HOLD, OPQ_RELEASE, OPQ_DELETE, OPQ_FLUSH };

static json_t	*opq_status_error(enum q_status, const char *id);
static const char *opq_public_state(const struct q_envelope *);
static json_t	*opq_rcpts(const struct q_envelope *, int full);
static json_t	*opq_entry(const struct q_envelope *, time_t now);
static void	 opq_bounce(json_t *, const char *kclass, const char *klist,
		    const char *reply);
static int	 opq_from(struct otpmaild *, const char *field, const char *from, char *addr,
		    size_t alen, char *name, size_t nlen, json_t **err);
static int	 opq_addr_header(struct buf *, const char *name, const char *value,
		    json_t **err);
static int	 opq_headers(json_t *req, struct buf *b, int *has_date, int *has_mid,
		    json_t **err);
static int	 opq_raw(struct otpmaild *, const char *raw, size_t len, struct buf *b,
		    json_t *removed, json_t **err);
static void	 opq_base64(struct buf *, const unsigned char *, size_t);
static int	 opq_list_headers(json_t *req, int raw, struct buf *b, json_t **err);
static json_t	*opq_ids_action(struct otpmaild *, const struct ctl_peer *, json_t *,
		    enum opq_action);

/* --- shared --------------------------------------------------------- */

static json_t *
opq_status_error(enum q_status st, const char *id)
{
	switch (st) {
	case Q_NOTFOUND:
		return reply_error("not_found", "no message with id %s", id ? id : "?");
	case Q_BADINPUT:
		return reply_error("bad_request", "the queue refused the request");
	case Q_BUSY:
		return reply_error("unavailable", "message %s is being delivered; retry",
		    id ? id : "?");
	case Q_NOSPACE:
		return reply_error("unavailable", "%s; try again later", queue_nospace_why);
	case Q_LOADING:
		return reply_error("unavailable", "the queue is still loading after the start; "
		    "try again later");
	default:
		return reply_error("unavailable", "queue I/O error; try again later");
	}
}

/* The state an app understands: queued, delivering, deferred, held, or for
 * a finished message delivered / failed / expired. */
static const char *
opq_public_state(const struct q_envelope *e)
{
	size_t i;
	int failed = 0, expired = 0;

	if (e->state != Q_MSG_DONE)
		return q_msg_state_name(e->state);
	for (i = 0; i < e->nrcpt; i++) {
		if (e->rcpts[i].state == Q_RCPT_FAILED)
			failed = 1;
		if (e->rcpts[i].state == Q_RCPT_EXPIRED)
			expired = 1;
	}
	return failed ? "failed" : expired ? "expired" : "delivered";
}

static json_t *
opq_rcpts(const struct q_envelope *e, int full)
{
	json_t *a = json_array(), *o;
	size_t i;

	for (i = 0; i < e->nrcpt; i++) {
		const struct q_rcpt *r = &e->rcpts[i];

		o = json_pack("{s:s, s:s}", "to", r->addr, "state", q_rcpt_state_name(r->state));
		if (o == NULL)
			continue;
		if (full) {
			json_object_set_new(o, "attempts", json_integer(r->attempts));
			json_object_set_new(o, "last_attempt", json_integer((json_int_t)r->last_attempt));
			json_object_set_new(o, "reply", r->reply ? json_string(r->reply) : json_null());
			if (r->state != Q_RCPT_DELIVERED)
				opq_bounce(o, "reply_class", "reply_blocklist", r->reply);
			/* the class recorded on the recipient: its last failure or a DSN */
			json_object_set_new(o, "last_error_class", r->err_class ?
			    json_string(r->err_class) : json_null());
		}
		json_array_append_new(a, o);
	}
	return a;
}

/* The class of a failure's reply (etc/bounce-rules), and the blocklist it names. */
static void
opq_bounce(json_t *o, const char *kclass, const char *klist, const char *reply)
{
	struct bounce_result b;

	bounce_classify(reply, &b);
	json_object_set_new(o, kclass, b.klass != BOUNCE_NONE ?
	    json_string(bounce_class_name(b.klass)) : json_null());
	if (b.list[0] != '\0')
		json_object_set_new(o, klist, json_string(b.list));
}

static json_t *
opq_entry(const struct q_envelope *e, time_t now)
{
	json_t *o;

	o = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:i, s:I}",
	    "id", e->id, "class", q_class_name(e->klass), "state", q_msg_state_name(e->state),
	    "sender", e->sender, "recipients", opq_rcpts(e, 0),
	    "created", (json_int_t)e->created, "age", (json_int_t)(now - e->created),
	    "attempts", e->attempts, "size", (json_int_t)e->size);
	if (o == NULL)
		return NULL;
	json_object_set_new(o, "next_attempt", e->state == Q_MSG_DONE || e->held ?
	    json_null() : json_integer((json_int_t)e->next_attempt));
	json_object_set_new(o, "expires", json_integer((json_int_t)e->expires));
	json_object_set_new(o, "last_error", e->last_error ? json_string(e->last_error) :
	    json_null());
	opq_bounce(o, "last_error_class", "last_error_blocklist", e->last_error);
	return o;
}

static void
opq_base64(struct buf *b, const unsigned char *p, size_t n)
{
	static const char t[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	char q[4];
	size_t i;

	for (i = 0; i + 2 < n; i += 3) {
		q[0] = t[p[i] >> 2];
		q[1] = t[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		q[2] = t[((p[i + 1] & 15) << 2) | (p[i + 2] >> 6)];
		q[3] = t[p[i + 2] & 63];
		buf_add(b, q, 4);
	}
	if (n - i == 1) {
		q[0] = t[p[i] >> 2];
		q[1] = t[(p[i] & 3) << 4];
		q[2] = q[3] = '=';
		buf_add(b, q, 4);
	} else if (n - i == 2) {
		q[0] = t[p[i] >> 2];
		q[1] = t[((p[i] & 3) << 4) | (p[i + 1] >> 4)];
		q[2] = t[(p[i + 1] & 15) << 2];
		q[3] = '=';
		buf_add(b, q, 4);
	}
}

/* --- mail.send ------------------------------------------------------ */

/* An address of the request in its canonical form (agent/mail/address.c):
 * bad_request if it is not an address, bad_address if otpmail refuses it. */
int
opq_addr(struct otpmaild *d, const char *field, const char *in, char *out, size_t outlen,
    json_t **err)
{
	char reason[256];
	int rc;

	rc = addr_canonical(in, (d->cfg->allow_address_literals ? ADDR_ALLOW_LITERAL : 0) |
	    (d->cfg->smtputf8 ? ADDR_ALLOW_UTF8 : 0), out, outlen, reason, sizeof(reason));
	if (rc == 0)
		return 0;
	*err = reply_field_error(rc == ADDR_REFUSED ? "bad_address" : "bad_request", field,
	    "%.80s: %s", in, reason);
	return -1;
}

/* "addr" or "Display Name <addr>" (the name any UTF-8): the bare address
 * for the envelope, in its canonical form when d is given (from, to), and
 * the display name for the header. */
static int
opq_from(struct otpmaild *d, const char *field, const char *from, char *addr, size_t alen,
    char *name, size_t nlen, json_t **err)
{
	char reason[128], in[ADDR_PATH_MAX + 1];

	if (msg_parse_mailbox(from, name, nlen, addr, alen) == -1) {
		*err = reply_bad_field(field, "use \"address\" or \"Name <address>\" "
		    "(a name of at most %zu bytes)", nlen - 1);
		return -1;
	}
	if (d != NULL) {
		snprintf(in, sizeof(in), "%s", addr);
		return opq_addr(d, field, in, addr, alen, err);
	}
	if (addr_validate(addr, reason, sizeof(reason)) == -1) {
		if (addr_is_utf8(addr))
			/* only the envelope fields mark a message SMTPUTF8 */
			*err = reply_field_error("bad_address", field, "%.80s: a UTF-8 "
			    "address (SMTPUTF8) is taken only in from and to, not in "
			    "this header", addr);
		else
			*err = reply_bad_field(field, "bad address %.80s: %s", addr,
			    reason);
		return -1;
	}
	return 0;
}

/*
 * An address header from the app ("a@b, Name <c@d>"): split at commas
 * outside quotes, each mailbox checked, display names encoded, the
 * addresses never.
 */
static int
opq_addr_header(struct buf *b, const char *hname, const char *value, json_t **err)
{
	char item[ADDR_PATH_MAX + OPQ_NAME_MAX + 8];
	char names[OPQ_ADDR_HDR_MAX][OPQ_NAME_MAX + 1], addrs[OPQ_ADDR_HDR_MAX][ADDR_PATH_MAX + 1];
	const char *np[OPQ_ADDR_HDR_MAX], *ap[OPQ_ADDR_HDR_MAX], *p = value, *st;
	size_t n = 0, l;
	int inq;

	while (*p != '\0') {
		for (st = p, inq = 0; *p != '\0' && (inq || *p != ','); p++)
			if (*p == '"')
				inq = !inq;
		l = (size_t)(p - st);
		if (*p == ',')
			p++;
		while (l > 0 && (*st == ' ' || *st == '\t')) {
			st++;
			l--;
		}
		if (l == 0)
			continue;
		if (n == OPQ_ADDR_HDR_MAX || l >= sizeof(item)) {
			*err = reply_bad_field("headers", "header %s: at most %d addresses",
			    hname, OPQ_ADDR_HDR_MAX);
			return -1;
		}
		memcpy(item, st, l);
		item[l] = '\0';
		if (opq_from(NULL, "headers", item, addrs[n], sizeof(addrs[n]), names[n],
		    sizeof(names[n]), err) == -1)
			return -1;
		np[n] = names[n];
		ap[n] = addrs[n];
		n++;
	}
	if (n == 0) {
		*err = reply_bad_field("headers", "header %s: no address", hname);
		return -1;
	}
	msg_add_mailboxes(b, hname, np, ap, n);
	return 0;
}

/* Extra headers of a composed message: {"Reply-To": "...", ...}. */
static int
opq_headers(json_t *req, struct buf *b, int *has_date, int *has_mid, json_t **err)
{
	static const char *const reserved[] = { "From", "To", "Cc", "Bcc", "Subject",
	    "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	    "DKIM-Signature", "Return-Path", "Received", NULL };
	json_t *h = json_object_get(req, "headers"), *v;
	const char *name;
	int i;

	if (h == NULL || json_is_null(h))
		return 0;
	if (!json_is_object(h)) {
		*err = reply_bad_field("headers", "headers must be an object {name: value}");
		return -1;
	}
	if (json_object_size(h) > OPQ_HEADERS_MAX) {
		*err = reply_bad_field("headers", "more than %d headers", OPQ_HEADERS_MAX);
		return -1;
	}
	json_object_foreach(h, name, v) {
		if (!msg_header_name_ok(name)) {
			*err = reply_bad_field("headers", "bad header name");
			return -1;
		}
		if (msg_header_trace(name, strlen(name))) {
			*err = reply_bad_field("headers", "header %s is written by mail "
			    "systems only (sender, path and authentication results); a "
			    "request cannot set it", name);
			return -1;
		}
		for (i = 0; reserved[i] != NULL; i++)
			if (strcasecmp(name, reserved[i]) == 0) {
				*err = reply_bad_field("headers", "header %s is set by otpmail "
				    "(use the from/to/subject fields)", reserved[i]);
				return -1;
			}
		if (!json_is_string(v) || json_string_length(v) > OPQ_HEADER_MAX ||
		    memchr(json_string_value(v), '\0', json_string_length(v)) != NULL ||
		    !msg_header_value_ok(json_string_value(v), OPQ_HEADER_MAX)) {
			*err = reply_bad_field("headers", "header %s: value must be a string "
			    "without CR, LF or NUL, at most %d bytes", name, OPQ_HEADER_MAX);
			return -1;
		}
		if (strcasecmp(name, "Date") == 0)
			*has_date = 1;
		if (strcasecmp(name, "Message-ID") == 0)
			*has_mid = 1;
		if (strcasecmp(name, "Reply-To") == 0 || strcasecmp(name, "Sender") == 0) {
			if (opq_addr_header(b, name, json_string_value(v), err) == -1)
				return -1;
			continue;
		}
		msg_add_header(b, name, json_string_value(v));
	}
	return 0;
}

/* A raw RFC 5322 message: CRLF line ends, a From header, header lines of at
 * most 998 bytes, Date and Message-ID added when missing, Bcc and the
 * headers only mail systems write (msg_header_trace) removed; the names of
 * those removed are appended to removed. */
static int
opq_raw(struct otpmaild *d, const char *raw, size_t len, struct buf *out,
    json_t *removed, json_t **err)
{
	struct buf n;
	size_t i, line = 0, hdr_end = 0;
	char *v, date[64], mid[300];
	int in_hdr = 1, saw_hdr = 0;

	/*
	 * The header section as sent: a bare CR would become a line end below
	 * and could start a header of its own, so it is refused; so is a line
	 * that is neither a field ("Name: value") nor a continuation.
	 */
	for (i = 0; i < len; i = line) {
		size_t e = i, k;
		while (e < len && raw[e] != '\n')
			e++;
		line = e + 1;
		if (e > i && raw[e - 1] == '\r')
			e--;
		if (e == i)
			break;		/* the empty line: the body starts */
		for (k = i; k < e; k++)
			if (raw[k] == '\r') {
				*err = reply_bad_field("raw", "a bare CR in the header section");
				return -1;
			}
		if (raw[i] != ' ' && raw[i] != '\t') {
			for (k = i; k < e && raw[k] != ':' && raw[k] > ' ' && raw[k] < 0x7f; k++)
				;
			if (k == i || k == e || raw[k] != ':') {
				*err = reply_bad_field("raw", "header line %.40s... is not "
				    "\"Name: value\"", raw + i);
				return -1;
			}
		}
	}
	line = 0;
	buf_init(&n);
	msg_add_crlf_text(&n, raw, len);
	for (i = 0; i < n.len && in_hdr; i++) {
		if (n.data[i] == '\r') {
			if (line == 0) {
				in_hdr = 0;
				hdr_end = i;
				break;
			}
			if (line > OPQ_LINE_MAX) {
				buf_free(&n);
				*err = reply_bad_field("raw", "a header line is longer than %d bytes",
				    OPQ_LINE_MAX);
				return -1;
			}
			saw_hdr = 1;
			line = 0;
			i++;	/* the LF */
			continue;
		}
		line++;
	}
	if (in_hdr)
		hdr_end = n.len;
	if (!saw_hdr || (v = msg_find_header(n.data, n.len, "From")) == NULL) {
		buf_free(&n);
		*err = reply_bad_field("raw", "the message has no From header");
		return -1;
	}
	free(v);
	if ((v = msg_find_header(n.data, n.len, "Date")) == NULL) {
		msg_date(time(NULL), date, sizeof(date));
		msg_add_header(out, "Date", date);
	}
	free(v);
	if ((v = msg_find_header(n.data, n.len, "Message-ID")) == NULL) {
		msg_message_id(d->hostname ? d->hostname : "localhost", mid, sizeof(mid));
		msg_add_header(out, "Message-ID", mid);
	}
	free(v);
	/* Bcc is for the envelope only: never show it to the recipients.  A
	 * Received or Authentication-Results from the app would vouch for a
	 * path the message never took. */
	for (i = 0; i < hdr_end; ) {
		size_t e = i, nl = 0;

		while (e < hdr_end && n.data[e] != '\n')
			e++;
		e = e < hdr_end ? e + 1 : hdr_end;
		while (e < hdr_end && (n.data[e] == ' ' || n.data[e] == '\t')) {
			while (e < hdr_end && n.data[e] != '\n')
				e++;
			e = e < hdr_end ? e + 1 : hdr_end;
		}
		while (i + nl < e && n.data[i + nl] != ':')
			nl++;
		if (nl == 3 && strncasecmp(n.data + i, "Bcc", 3) == 0)
			;
		else if (msg_header_trace(n.data + i, nl))
			json_array_append_new(removed, json_stringn(n.data + i, nl));
		else
			buf_add(out, n.data + i, e - i);
		i = e;
	}
	buf_add(out, n.data + hdr_end, n.len - hdr_end);
	buf_free(&n);
	return 0;
}

/*
 * Every address in every From field of the header section must be one the
 * app may send as (app's senders=): an app cannot sign or send as another's
 * domain.  The body is not looked at.
 */
static int
opq_from_fields_ok(const struct app_conf *app, const char *m, size_t len, char *bad,
    size_t badlen)
{
	size_t i = 0, e, k, a, z;
	char addr[ADDR_PATH_MAX + 1];
	int seen;

	if (app == NULL)
		return 1;
	while (i < len && !(m[i] == '\r' || m[i] == '\n')) {
		for (e = i; e < len && m[e] != '\n'; e++)
			;
		while (e + 1 < len && (m[e + 1] == ' ' || m[e + 1] == '\t'))
			for (e++; e < len && m[e] != '\n'; e++)
				;
		if (e - i >= 5 && strncasecmp(m + i, "From:", 5) == 0) {
			seen = 0;
			for (k = i + 5; k < e; k++) {
				if (m[k] != '@')
					continue;
				for (a = k; a > i + 5 && !strchr(" \t\r\n<>,;:\"()", m[a - 1]); a--)
					;
				for (z = k + 1; z < e && !strchr(" \t\r\n<>,;:\"()", m[z]); z++)
					;
				snprintf(addr, sizeof(addr), "%.*s", (int)(z - a), m + a);
				if (!config_app_sender_ok(app, addr)) {
					snprintf(bad, badlen, "%s", addr);
					return 0;
				}
				seen = 1;
			}
			if (!seen) {
				snprintf(bad, badlen, "a From field with no address");
				return 0;
			}
		}
		i = e + 1;
	}
	return 1;
}

static json_t	*opq_mail_send(struct otpmaild *, const struct ctl_peer *, json_t *,
		    const char *app, const char *key);

/* A URI fit for List-Unsubscribe: the scheme asked for, then printable
 * ASCII without the list's delimiters. */
static int
opq_uri_ok(const char *u, const char *scheme)
{
	size_t n = strlen(scheme), i;

	if (strncasecmp(u, scheme, n) != 0 || u[n] == '\0')
		return 0;
	for (i = n; u[i] != '\0'; i++)
		if (u[i] <= ' ' || u[i] >= 0x7f || strchr("<>\",", u[i]) != NULL)
			return 0;
	return 1;
}

/*
 * List-Unsubscribe with one-click (RFC 8058): "list_unsubscribe" is the
 * HTTPS URI the receiver POSTs to, "list_unsubscribe_mailto" an optional
 * mailto: URI beside it.  Both headers are in dkim_sign_headers' default,
 * as RFC 8058 section 4 requires.
 */
static int
opq_list_headers(json_t *req, int raw, struct buf *b, json_t **err)
{
	const char *https = NULL, *mailto = NULL;

	if (req_str(req, "list_unsubscribe", 0, OPQ_URI_MAX, &https, err) == -1 ||
	    req_str(req, "list_unsubscribe_mailto", 0, OPQ_URI_MAX, &mailto, err) == -1)
		return -1;
	if (https == NULL && mailto == NULL)
		return 0;
	if (raw) {
		*err = reply_bad_field("list_unsubscribe", "a raw message carries its own "
		    "List-Unsubscribe");
		return -1;
	}
	if (https == NULL || !opq_uri_ok(https, "https://")) {
		*err = reply_bad_field("list_unsubscribe", "one-click unsubscribe needs an "
		    "https:// URI (RFC 8058)");
		return -1;
	}
	if (mailto != NULL && !opq_uri_ok(mailto, "mailto:")) {
		*err = reply_bad_field("list_unsubscribe_mailto", "not a mailto: URI");
		return -1;
	}
	buf_printf(b, "List-Unsubscribe: <%s>%s%s%s\r\n", https, mailto ? ",\r\n <" : "",
	    mailto ? mailto : "", mailto ? ">" : "");
	buf_adds(b, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
	return 0;
}

json_t *
op_mail_send(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	const char *app, *key;
	json_t *err = NULL, *r;

	if ((app = ctl_req_app(d, peer, req, &err)) == NULL)
		return err;
	if (ctl_idem_begin(d, app, req, &key, &r) == 1)
		return r;
	r = opq_mail_send(d, peer, req, app, key);
	ctl_idem_end(d, app, key, r);
	return r;
}

static json_t *
opq_mail_send(struct otpmaild *d, const struct ctl_peer *peer, json_t *req, const char *app,
    const char *key)
{
	struct ctl_idem_barrier ib;
	json_t *answer;
	const char *from = NULL, *subject = NULL, *text = NULL, *html = NULL, *raw = NULL;
	const char *cls = NULL, **to = NULL, *purpose = "mail";
	char fromaddr[ADDR_PATH_MAX + 1], fromname[OPQ_NAME_MAX + 1];
	char (*toaddr)[ADDR_PATH_MAX + 1] = NULL, (*toname)[OPQ_NAME_MAX + 1] = NULL;
	const char **tonp = NULL, **toap = NULL, *fp[1], *fa[1];
	char date[64], mid[300], boundary[80], id[QUEUE_ID_LEN + 1];
	char tag[CONFIG_APP_NAME_MAX + 32], bad[ADDR_PATH_MAX + 64];
	const struct app_conf *appc = strcmp(app, peer->app) == 0 ? peer->appc :
	    config_app_named(d->cfg, app);
	size_t nto = 0, textlen = 0, htmllen = 0, rawlen = 0, i, limit;
	struct q_envelope tmpl;
	struct q_rcpt *rc = NULL;
	struct buf b;
	json_t *err = NULL, *removed = NULL;
	long ttl = 0;
	int klass = Q_CLASS_DEFAULT, has_date = 0, has_mid = 0;

	buf_init(&b);
	limit = d->cfg->message_size_limit;
	if (req_str(req, "from", 1, ADDR_PATH_MAX + 256, &from, &err) == -1 ||
	    req_str_list(req, "to", 1, (size_t)d->cfg->max_recipients,
	    ADDR_PATH_MAX + OPQ_NAME_MAX + 8,
	    &to, &nto, &err) == -1 ||
	    req_str(req, "class", 0, 16, &cls, &err) == -1 ||
	    req_int(req, "ttl", 0, 1, 30L * 86400, &ttl, &err) == -1 ||
	    req_text(req, "raw", 0, limit, &raw, &rawlen, &err) == -1 ||
	    req_str(req, "purpose", 0, MSG_FEEDBACK_FIELD_MAX, &purpose, &err) == -1)
		goto fail;
	if (nto == 0) {
		err = reply_bad_field("to", "at least one recipient");
		goto fail;
	}
	if (cls != NULL && (klass = q_class_parse(cls)) < 0) {
		err = reply_bad_field("class", "class must be \"default\" or \"otp\"");
		goto fail;
	}
	/* the null sender (sendmail -f '<>'): a raw message has its own From */
	if (strcmp(from, "<>") == 0 && raw != NULL)
		fromaddr[0] = fromname[0] = '\0';
	else if (opq_from(d, "from", from, fromaddr, sizeof(fromaddr), fromname,
	    sizeof(fromname), &err) == -1)
		goto fail;
	if (fromaddr[0] != '\0' && !config_app_sender_ok(appc, fromaddr)) {
		err = reply_error("forbidden", "app %s may not send as %s (its senders=)",
		    app, fromaddr);
		json_object_set_new(err, "field", json_string("from"));
		goto fail;
	}
	if ((toaddr = calloc(nto, sizeof(*toaddr))) == NULL ||
	    (toname = calloc(nto, sizeof(*toname))) == NULL ||
	    (tonp = calloc(nto, sizeof(*tonp))) == NULL ||
	    (toap = calloc(nto, sizeof(*toap))) == NULL) {
		err = reply_error("unavailable", "out of memory");
		goto fail;
	}
	for (i = 0; i < nto; i++) {
		if (opq_from(d, "to", to[i], toaddr[i], sizeof(toaddr[i]), toname[i],
		    sizeof(toname[i]), &err) == -1)
			goto fail;
		tonp[i] = toname[i];
		toap[i] = toaddr[i];
	}
	if ((err = suppress_refuse(d, app, toap, nto)) != NULL) {
		log_msg(LOG_INFO, "event=mail.send result=refused reason=suppressed app=%s "
		    "uid=%u", app, (unsigned)peer->uid);
		goto fail;
	}

	/* our stream tag first; an app's own Feedback-ID was refused or removed */
	msg_add_feedback_id(&b, purpose, klass == Q_CLASS_OTP ? "otp" : "mail", app);
	if (opq_list_headers(req, raw != NULL, &b, &err) == -1)
		goto fail;
	if (raw != NULL) {
		if (json_object_get(req, "subject") || json_object_get(req, "text") ||
		    json_object_get(req, "html") || json_object_get(req, "headers")) {
			err = reply_bad_field("raw", "raw excludes subject/text/html/headers");
			goto fail;
		}
		if ((removed = json_array()) == NULL ||
		    opq_raw(d, raw, rawlen, &b, removed, &err) == -1)
			goto fail;
	} else {
		if (req_str(req, "subject", 1, OPQ_SUBJECT_MAX, &subject, &err) == -1 ||
		    req_text(req, "text", 1, limit, &text, &textlen, &err) == -1 ||
		    req_text(req, "html", 0, limit, &html, &htmllen, &err) == -1)
			goto fail;
		if (textlen + htmllen > limit) {
			err = reply_bad_field("text", "text and html exceed message_size_limit");
			goto fail;
		}
		if (opq_headers(req, &b, &has_date, &has_mid, &err) == -1)
			goto fail;
		if (!has_date) {
			msg_date(time(NULL), date, sizeof(date));
			msg_add_header(&b, "Date", date);
		}
		if (!has_mid) {
			msg_message_id(d->hostname ? d->hostname : "localhost", mid, sizeof(mid));
			msg_add_header(&b, "Message-ID", mid);
		}
		fp[0] = fromname;
		fa[0] = fromaddr;
		msg_add_mailboxes(&b, "From", fp, fa, 1);
		msg_add_mailboxes(&b, "To", tonp, toap, nto);
		msg_add_header(&b, "Subject", subject);
		buf_adds(&b, "MIME-Version: 1.0\r\n");
		if (html == NULL) {
			buf_adds(&b, "Content-Type: text/plain; charset=utf-8\r\n"
			    "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
			msg_add_qp(&b, text, textlen);
		} else {
			/* "=_" never starts a quoted-printable line: the boundary
			 * cannot occur in the parts */
			msg_message_id("b", mid, sizeof(mid));
			mid[strcspn(mid, "@")] = '\0';
			snprintf(boundary, sizeof(boundary), "=_otpmail_%.60s", mid + 1);
			buf_printf(&b, "Content-Type: multipart/alternative; "
			    "boundary=\"%s\"\r\n\r\n", boundary);
			buf_printf(&b, "--%s\r\nContent-Type: text/plain; charset=utf-8\r\n"
			    "Content-Transfer-Encoding: quoted-printable\r\n\r\n", boundary);
			msg_add_qp(&b, text, textlen);
			buf_printf(&b, "\r\n--%s\r\nContent-Type: text/html; charset=utf-8\r\n"
			    "Content-Transfer-Encoding: quoted-printable\r\n\r\n", boundary);
			msg_add_qp(&b, html, htmllen);
			buf_printf(&b, "\r\n--%s--\r\n", boundary);
		}
	}
	if (!opq_from_fields_ok(appc, b.data, b.len, bad, sizeof(bad))) {
		err = reply_error("forbidden", "app %s may not send as %s (its senders=)",
		    app, bad);
		json_object_set_new(err, "field", json_string(raw ? "raw" : "from"));
		goto fail;
	}
	if (b.len > limit) {
		err = reply_bad_field(raw ? "raw" : "text", "message of %zu bytes is larger "
		    "than message_size_limit (%zu)", b.len, limit);
		goto fail;
	}
	if ((rc = calloc(nto, sizeof(*rc))) == NULL) {
		err = reply_error("unavailable", "out of memory");
		goto fail;
	}
	for (i = 0; i < nto; i++)
		rc[i].addr = toaddr[i];
	memset(&tmpl, 0, sizeof(tmpl));
	tmpl.klass = (enum q_class)klass;
	tmpl.sender = fromaddr;
	tmpl.rcpts = rc;
	tmpl.nrcpt = nto;
	for (i = 0; i < nto; i++)
		if (addr_is_utf8(toaddr[i]))
			tmpl.flags |= Q_F_SMTPUTF8;
	if (addr_is_utf8(fromaddr))
		tmpl.flags |= Q_F_SMTPUTF8;
	snprintf(tag, sizeof(tag), "mail.send app=%s", app);
	tmpl.tag = tag;
	tmpl.client_uid = (uint32_t)peer->uid;
	if (ttl > 0)
		tmpl.expires = time(NULL) + ttl;
	/* the answer, but its id: a retry after a crash may need it */
	answer = reply_ok();
	if (removed != NULL && json_array_size(removed) > 0)
		json_object_set(answer, "removed_headers", removed);
	memset(&ib, 0, sizeof(ib));
	ib.d = d;
	ib.app = app;
	ib.key = key;
	ib.qid = id;
	ib.answer = answer;
	if (submit_message(d, &tmpl, b.data, b.len, id, &err, ctl_idem_barrier, &ib) == -1) {
		json_decref(answer);
		goto fail;
	}
	free(rc);
	free(to);
	free(toaddr);
	free(toname);
	free(tonp);
	free(toap);
	buf_free(&b);
	json_object_set_new(answer, "id", json_string(id));
	if (removed != NULL && json_array_size(removed) > 0)
		log_msg(LOG_NOTICE, "event=mail.send id=%s removed_headers=%zu uid=%u", id,
		    json_array_size(removed), (unsigned)peer->uid);
	json_decref(removed);
	return answer;
fail:
	free(rc);
	free(to);
	free(toaddr);
	free(toname);
	free(tonp);
	free(toap);
	json_decref(removed);
	buf_free(&b);
	return err ? err : reply_error("unavailable", "out of memory");
}

/* --- message.status ------------------------------------------------- */

/* Is the message the peer's app's?  Its tag says "app=NAME"; messages
 * queued before apps had names belong to their uid. */
static int
opq_owned(const struct ctl_peer *peer, const struct q_envelope *e)
{
	const char *a = e->tag ? strstr(e->tag, " app=") : NULL;

	if (a == NULL)
		return e->client_uid == (uint32_t)peer->uid;
	return strcmp(a + 5, peer->app) == 0;
}

int
ops_msg_owned(struct otpmaild *d, const struct ctl_peer *peer, const char *id)
{
	struct q_envelope *e = NULL;
	int r;

	if (peer->roles & ROLE_ADMIN)
		return 1;
	if (queue_get(d->queue, id, &e) != Q_OK)
		return 0;
	r = opq_owned(peer, e);
	q_envelope_free(e);
	return r;
}

/*
 * Several hosts: an id not here whose site digit names another site was
 * queued there (each host keeps and delivers what it accepted).  Said from
 * the id alone: nothing about the message, nor whether it exists.
 */
static json_t *
opq_elsewhere(struct otpmaild *d, const char *id)
{
	int j;
	json_t *r;

	if (d->cluster == NULL || (j = queue_id_site_of(id)) < 0 ||
	    j >= cluster_nsites(d->cluster) || j == cluster_self(d->cluster))
		return NULL;
	r = reply_error("other_host", "message %s was queued by another host of the "
	    "cluster (%s): ask its otpmaild", id, cluster_site_addr(d->cluster, j));
	json_object_set_new(r, "host", json_string(cluster_site_addr(d->cluster, j)));
	return r;
}

json_t *
op_message_status(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	struct q_envelope *e = NULL;
	const char *id = NULL;
	enum q_status st;
	json_t *err = NULL, *r;

	if (req_str(req, "id", 1, 64, &id, &err) == -1)
		return err;
	if ((st = queue_get(d->queue, id, &e)) != Q_OK) {
		if (st == Q_NOTFOUND && (r = opq_elsewhere(d, id)) != NULL)
			return r;
		return opq_status_error(st, id);
	}
	/* an app sees its own messages only; admins see all */
	if (!(peer->roles & ROLE_ADMIN) && !opq_owned(peer, e)) {
		q_envelope_free(e);
		return opq_status_error(Q_NOTFOUND, id);
	}
	r = json_pack("{s:b, s:s, s:s, s:s, s:I, s:I, s:i, s:o}", "ok", 1, "id", e->id,
	    "state", opq_public_state(e), "class", q_class_name(e->klass),
	    "created", (json_int_t)e->created, "expires", (json_int_t)e->expires,
	    "attempts", e->attempts, "recipients", opq_rcpts(e, 1));
	if (r != NULL) {
		json_object_set_new(r, "next_attempt", e->state == Q_MSG_DONE || e->held ?
		    json_null() : json_integer((json_int_t)e->next_attempt));
		json_object_set_new(r, "last_error", e->last_error ?
		    json_string(e->last_error) : json_null());
		opq_bounce(r, "last_error_class", "last_error_blocklist", e->last_error);
		if (e->finished)
			json_object_set_new(r, "finished", json_integer((json_int_t)e->finished));
		json_object_set_new(r, "events", events_history(e->id, NULL, e->created) ?:
		    json_null());
	}
	q_envelope_free(e);
	return r ? r : reply_error("unavailable", "out of memory");
}

/* --- queue.list / queue.show ---------------------------------------- */

json_t *
op_queue_list(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	const char *state = NULL, *cls = NULL, *domain = NULL, *sender = NULL, *after = NULL;
	struct q_filter f = { .state = -1, .klass = -1 };
	struct q_envelope **v = NULL;
	long older = 0, younger = 0, limit = 100;
	json_t *err = NULL, *arr, *r;
	time_t now = time(NULL);
	size_t n = 0, i;
	enum q_status st;
	int more = 0;

	if (req_str(req, "state", 0, 16, &state, &err) == -1 ||
	    req_str(req, "class", 0, 16, &cls, &err) == -1 ||
	    req_str(req, "domain", 0, ADDR_DOMAIN_MAX, &domain, &err) == -1 ||
	    req_str(req, "sender", 0, ADDR_PATH_MAX, &sender, &err) == -1 ||
	    req_str(req, "after", 0, 64, &after, &err) == -1 ||
	    req_int(req, "older_than", 0, 0, 100L * 365 * 86400, &older, &err) == -1 ||
	    req_int(req, "younger_than", 0, 0, 100L * 365 * 86400, &younger, &err) == -1 ||
	    req_int(req, "limit", 0, 1, OPQ_LIST_MAX, &limit, &err) == -1)
		return err;
	if (state != NULL && strcmp(state, "pending") == 0)
		f.state = Q_FILTER_PENDING;	/* what mailq shows: all but done */
	else if (state != NULL && (f.state = q_msg_state_parse(state)) < 0)
		return reply_bad_field("state", "state is one of pending, queued, "
		    "delivering, deferred, held, done");
	if (cls != NULL && (f.klass = q_class_parse(cls)) < 0)
		return reply_bad_field("class", "class is \"otp\" or \"default\"");
	f.domain = domain;
	f.sender = sender;
	f.after_id = after;
	f.older_than = older > 0 ? now - older : 0;
	f.younger_than = younger > 0 ? now - younger : 0;
	f.limit = (size_t)limit;
	if ((st = queue_list(d->queue, &f, &v, &n, &more)) != Q_OK)
		return opq_status_error(st, NULL);
	arr = json_array();
	for (i = 0; i < n; i++)
		json_array_append_new(arr, opq_entry(v[i], now));
	q_envelope_list_free(v, n);
	r = json_pack("{s:b, s:o, s:b, s:b}", "ok", 1, "messages", arr, "more", more,
	    "paused", queue_paused(d->queue));
	return r ? r : reply_error("unavailable", "out of memory");
}

json_t *
op_queue_show(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	struct q_envelope *e = NULL;
	const char *id = NULL;
	json_t *err = NULL, *r, *flags;
	enum q_status st;
	int body = 0;
	char *data = NULL;
	size_t len = 0;

	if (req_str(req, "id", 1, 64, &id, &err) == -1 || req_bool(req, "body", &body, &err) == -1)
		return err;
	if ((st = queue_get(d->queue, id, &e)) != Q_OK)
		return opq_status_error(st, id);
	r = opq_entry(e, time(NULL));
	if (r == NULL) {
		q_envelope_free(e);
		return reply_error("unavailable", "out of memory");
	}
	json_object_set_new(r, "ok", json_true());
	json_object_set_new(r, "status", json_string(opq_public_state(e)));
	json_object_set_new(r, "recipients", opq_rcpts(e, 1));
	json_object_set_new(r, "held", json_boolean(e->held));
	json_object_set_new(r, "client_uid", json_integer(e->client_uid));
	json_object_set_new(r, "tag", e->tag ? json_string(e->tag) : json_null());
	json_object_set_new(r, "finished", e->finished ? json_integer((json_int_t)e->finished) :
	    json_null());
	flags = json_array();
	if (e->flags & Q_F_BOUNCE)
		json_array_append_new(flags, json_string("bounce"));
	if (e->flags & Q_F_8BIT)
		json_array_append_new(flags, json_string("8bit"));
	if (e->flags & Q_F_NOTIFIED)
		json_array_append_new(flags, json_string("dsn_sent"));
	if (e->flags & Q_F_SMTPUTF8)
		json_array_append_new(flags, json_string("smtputf8"));
	json_object_set_new(r, "flags", flags);
	if (body) {
		st = queue_body(d->queue, id, &data, &len);
		if (st != Q_OK) {
			json_decref(r);
			q_envelope_free(e);
			return opq_status_error(st, id);
		}
		{
			json_t *s = json_stringn(data, len);

			if (s != NULL)
				json_object_set_new(r, "body", s);
			else {
				struct buf b64;

				buf_init(&b64);
				opq_base64(&b64, (const unsigned char *)data, len);
				json_object_set_new(r, "body_base64", json_stringn(b64.data ?
				    b64.data : "", b64.len));
				buf_free(&b64);
			}
		}
		free(data);
	}
	log_msg(LOG_INFO, "event=admin op=queue.show id=%s uid=%u body=%d", e->id,
	    (unsigned)peer->uid, body);
	q_envelope_free(e);
	return r;
}

/* --- hold / release / delete / flush --------------------------------- */

/* 1 (and the id and its final state added to fin) if the message is done. */
static int
opq_finished(struct otpmaild *d, const char *id, json_t *fin)
{
	struct q_envelope *e = NULL;
	int done;

	if (queue_get(d->queue, id, &e) != Q_OK)
		return 0;
	done = e->state == Q_MSG_DONE;
	if (done)
		json_array_append_new(fin, json_pack("{s:s, s:s}", "id", e->id,
		    "state", opq_public_state(e)));
	q_envelope_free(e);
	return done;
}

static json_t *
opq_ids_action(struct otpmaild *d, const struct ctl_peer *peer, json_t *req,
    enum opq_action act)
{
	static const char *const names[] = { "queue.hold", "queue.release", "queue.delete",
	    "queue.flush" };
	const char **ids = NULL, *domain = NULL;
	json_t *err = NULL, *nf, *fin, *r;
	size_t n = 0, i, done = 0, cnt;
	enum q_status st;
	int all = 0;

	if (json_object_get(req, "id") != NULL && json_object_get(req, "ids") != NULL)
		return reply_bad_field("ids", "give \"id\" or \"ids\", not both");
	if (req_str_list(req, json_object_get(req, "id") ? "id" : "ids", 0, OPQ_IDS_MAX,
	    64, &ids, &n, &err) == -1)
		return err;
	if (act == OPQ_FLUSH && (req_str(req, "domain", 0, ADDR_DOMAIN_MAX, &domain, &err) == -1 ||
	    req_bool(req, "all", &all, &err) == -1)) {
		free(ids);
		return err;
	}
	if (act == OPQ_FLUSH && n == 0) {
		if (domain == NULL && !all) {
			free(ids);
			return reply_bad_field("ids", "give ids, a domain, or all:true");
		}
		queue_flush(d->queue, NULL, domain, &cnt);
		log_msg(LOG_INFO, "event=admin op=queue.flush %s=%s uid=%u count=%zu",
		    domain ? "domain" : "all", domain ? domain : "1", (unsigned)peer->uid, cnt);
		free(ids);
		return json_pack("{s:b, s:I}", "ok", 1, "count", (json_int_t)cnt);
	}
	if (n == 0) {
		free(ids);
		return reply_bad_field("ids", "missing field \"ids\" (or \"id\")");
	}
	nf = json_array();
	fin = json_array();
	for (i = 0; i < n; i++) {
		if ((act == OPQ_HOLD || act == OPQ_RELEASE) && opq_finished(d, ids[i], fin))
			continue;
		switch (act) {
		case OPQ_HOLD:		st = queue_hold(d->queue, ids[i]); break;
		case OPQ_RELEASE:	st = queue_unhold(d->queue, ids[i]); break;
		case OPQ_DELETE:	st = queue_delete(d->queue, ids[i]); break;
		default:		st = queue_flush(d->queue, ids[i], NULL, NULL); break;
		}
		log_msg(LOG_INFO, "event=admin op=%s id=%.64s uid=%u result=%s", names[act],
		    ids[i], (unsigned)peer->uid, st == Q_OK ? "ok" : st == Q_NOTFOUND ?
		    "not_found" : "error");
		if (st == Q_OK)
			done++;
		else if (st == Q_NOTFOUND)
			json_array_append_new(nf, json_string(ids[i]));
		else {
			json_decref(nf);
			r = opq_status_error(st, ids[i]);
			free(ids);
			return r;
		}
	}
	if (done == 0 && json_array_size(fin) > 0 && json_array_size(nf) == 0) {
		/* "hold" on a delivered message: say so, it is not an error of ids */
		json_t *f0 = json_array_get(fin, 0);
		r = reply_error("already_finished", "message %s is already %s%s",
		    json_string_value(json_object_get(f0, "id")),
		    json_string_value(json_object_get(f0, "state")),
		    json_array_size(fin) > 1 ? " (and so are the others)" : "");
		json_object_set(r, "finished", fin);
		json_decref(nf);
		json_decref(fin);
		free(ids);
		return r;
	}
	if (done == 0) {
		json_decref(nf);
		json_decref(fin);
		r = n == 1 ? opq_status_error(Q_NOTFOUND, ids[0]) :
		    reply_error("not_found", "none of the %zu ids is in the queue", n);
		free(ids);
		return r;
	}
	free(ids);
	r = json_pack("{s:b, s:I}", "ok", 1, "count", (json_int_t)done);
	if (json_array_size(nf) > 0)
		json_object_set_new(r, "not_found", nf);
	else
		json_decref(nf);
	if (json_array_size(fin) > 0)
		json_object_set_new(r, "finished", fin);
	else
		json_decref(fin);
	return r;
}

json_t *
op_queue_hold(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return opq_ids_action(d, p, r, OPQ_HOLD);
}

json_t *
op_queue_release(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return opq_ids_action(d, p, r, OPQ_RELEASE);
}

json_t *
op_queue_delete(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return opq_ids_action(d, p, r, OPQ_DELETE);
}

json_t *
op_queue_flush(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return opq_ids_action(d, p, r, OPQ_FLUSH);
}

json_t *
op_queue_pause(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	queue_pause(d->queue, 1);
	log_msg(LOG_INFO, "event=admin op=queue.pause uid=%u", (unsigned)p->uid);
	return json_pack("{s:b, s:b}", "ok", 1, "paused", 1);
}

json_t *
op_queue_resume(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	queue_pause(d->queue, 0);
	log_msg(LOG_INFO, "event=admin op=queue.resume uid=%u", (unsigned)p->uid);
	return json_pack("{s:b, s:b}", "ok", 1, "paused", 0);
}

/* --- stats / metrics ------------------------------------------------- */

/* Database files moved aside at start (store/verify.c): [] normally. */
static json_t *
stats_quarantined(struct otpmaild *d)
{
	const struct store_quarantine *q;
	json_t *a = json_array();
	size_t i, n;

	n = d->store != NULL ? store_quarantined(d->store, &q) : 0;
	for (i = 0; a != NULL && i < n; i++)
		json_array_append_new(a, json_pack("{s:s, s:s, s:s, s:s, s:I}",
		    "file", q[i].file, "moved_to", q[i].moved_to, "reason", q[i].reason,
		    "lost", q[i].lost, "at", (json_int_t)q[i].when));
	return a;
}

json_t *
op_stats(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	json_t *states, *classes, *r;
	struct q_stats s;
	size_t total = 0;
	time_t now = time(NULL);
	int i;

	queue_stats(d->queue, &s);
	states = json_object();
	for (i = 0; i <= Q_MSG_DONE; i++) {
		json_object_set_new(states, q_msg_state_name((enum q_msg_state)i),
		    json_integer((json_int_t)s.by_state[i]));
		total += s.by_state[i];
	}
	classes = json_object();
	for (i = 0; i < Q_CLASS_COUNT; i++)
		json_object_set_new(classes, q_class_name((enum q_class)i),
		    json_integer((json_int_t)s.by_class[i]));
	r = json_pack("{s:b, s:o, s:o, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I}, s:b, s:I}",
	    "ok", 1, "states", states, "classes", classes, "total", (json_int_t)total,
	    "oldest_age", (json_int_t)(s.oldest ? now - s.oldest : 0),
	    "totals", "delivered", (json_int_t)s.delivered, "deferred", (json_int_t)s.deferred,
	    "failed", (json_int_t)s.failed, "expired", (json_int_t)s.expired,
	    "bounces", (json_int_t)s.bounces,
	    "paused", queue_paused(d->queue), "uptime", (json_int_t)(now - d->started));
	if (r != NULL && s.loading)	/* counts of what is loaded so far */
		json_object_set_new(r, "queue_loading", json_true());
	if (r != NULL)
		json_object_set_new(r, "db_quarantined", stats_quarantined(d));
	if (r != NULL)	/* webhook backlogs: an app sees its own */
		json_object_set_new(r, "webhooks", events_webhook_stats(p->roles & ROLE_ADMIN ?
		    NULL : p->app));
	return r ? r : reply_error("unavailable", "out of memory");
}

json_t *
op_metrics(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct q_stats s;
	struct buf b;
	time_t now = time(NULL);
	json_t *r;
	int i;

	queue_stats(d->queue, &s);
	buf_init(&b);
	buf_adds(&b, "# HELP otpmail_queue_messages Messages in the queue by state.\n"
	    "# TYPE otpmail_queue_messages gauge\n");
	for (i = 0; i <= Q_MSG_DONE; i++)
		buf_printf(&b, "otpmail_queue_messages{state=\"%s\"} %zu\n",
		    q_msg_state_name((enum q_msg_state)i), s.by_state[i]);
	buf_adds(&b, "# HELP otpmail_queue_class_messages Messages in the queue by class.\n"
	    "# TYPE otpmail_queue_class_messages gauge\n");
	for (i = 0; i < Q_CLASS_COUNT; i++)
		buf_printf(&b, "otpmail_queue_class_messages{class=\"%s\"} %zu\n",
		    q_class_name((enum q_class)i), s.by_class[i]);
	buf_adds(&b, "# HELP otpmail_deliveries_total Recipient delivery outcomes since start.\n"
	    "# TYPE otpmail_deliveries_total counter\n");
	buf_printf(&b, "otpmail_deliveries_total{result=\"delivered\"} %llu\n"
	    "otpmail_deliveries_total{result=\"deferred\"} %llu\n"
	    "otpmail_deliveries_total{result=\"failed\"} %llu\n"
	    "otpmail_deliveries_total{result=\"expired\"} %llu\n",
	    (unsigned long long)s.delivered, (unsigned long long)s.deferred,
	    (unsigned long long)s.failed, (unsigned long long)s.expired);
	buf_adds(&b, "# HELP otpmail_bounces_total DSNs generated since start.\n"
	    "# TYPE otpmail_bounces_total counter\n");
	buf_printf(&b, "otpmail_bounces_total %llu\n", (unsigned long long)s.bounces);
	buf_adds(&b, "# HELP otpmail_queue_oldest_age_seconds Age of the oldest unfinished message.\n"
	    "# TYPE otpmail_queue_oldest_age_seconds gauge\n");
	buf_printf(&b, "otpmail_queue_oldest_age_seconds %lld\n",
	    (long long)(s.oldest ? now - s.oldest : 0));
	buf_adds(&b, "# HELP otpmail_queue_paused 1 while delivery is paused.\n"
	    "# TYPE otpmail_queue_paused gauge\n");
	buf_printf(&b, "otpmail_queue_paused %d\n", queue_paused(d->queue));
	buf_adds(&b, "# HELP otpmail_uptime_seconds Seconds since the daemon started.\n"
	    "# TYPE otpmail_uptime_seconds gauge\n");
	buf_printf(&b, "otpmail_uptime_seconds %lld\n", (long long)(now - d->started));
	events_webhook_metrics(&b);
	metrics_render(&b);
	r = json_pack("{s:b, s:s%}", "ok", 1, "text", b.data ? b.data : "", b.len);
	buf_free(&b);
	return r ? r : reply_error("unavailable", "out of memory");
}
