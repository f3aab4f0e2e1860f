/*
 * dsn.c - RFC 3464 delivery status notifications: a multipart/report with
 * a human part, a message/delivery-status part (one block per failed or
 * expired recipient) and the original header section (text/rfc822-headers).
 * The caller decides whether a DSN is due (never for a null sender, never
 * for a bounce); this file only builds the bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_int.h"

#define DSN_HEADERS_MAX	(64 * 1024)	/* original headers returned */
#define DSN_DIAG_MAX	400		/* bytes of a remote reply quoted */

struct dsn_buf {
	char	*p;
	size_t	 len, cap;
	int	 oom;
};

static void	dsn_add(struct dsn_buf *, const char *, size_t);
static void	dsn_adds(struct dsn_buf *, const char *);
static void	dsn_printf(struct dsn_buf *, const char *, ...)
		    __attribute__((format(printf, 2, 3)));
static void	dsn_clean(const char *in, char *out, size_t outlen);
static void	dsn_status(const struct q_rcpt *, char *out, size_t len);
static void	dsn_addr(struct dsn_buf *, const char *, int typed);

static void
dsn_add(struct dsn_buf *b, const char *s, size_t n)
{
	size_t ncap;
	char *np;

	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		ncap = b->cap ? b->cap : 4096;
		while (ncap < b->len + n + 1)
			ncap *= 2;
		if ((np = realloc(b->p, ncap)) == NULL) {
			b->oom = 1;
			return;
		}
		b->p = np;
		b->cap = ncap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
dsn_adds(struct dsn_buf *b, const char *s)
{
	dsn_add(b, s, strlen(s));
}

static void
dsn_printf(struct dsn_buf *b, const char *fmt, ...)
{
	char tmp[2048];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	dsn_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

void
dsn_date(time_t t, char *out, size_t len)
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const mons[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
	    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;

	gmtime_r(&t, &tm);
	snprintf(out, len, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
	    tm.tm_mday, mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	    tm.tm_sec);
}

/* Printable ASCII only, one line, bounded: replies come from the network. */
static void
dsn_clean(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	int sp = 0;

	for (; in != NULL && *in != '\0' && o + 1 < outlen; in++) {
		unsigned char c = (unsigned char)*in;

		if (c < 0x20 || c >= 0x7f) {
			if (!sp && o > 0)
				out[o++] = ' ';
			sp = 1;
			continue;
		}
		out[o++] = (char)c;
		sp = c == ' ';
	}
	while (o > 0 && out[o - 1] == ' ')
		o--;
	out[o] = '\0';
}

/* The enhanced status code: from the reply ("550 5.1.1 ...") if it has
 * one, else 5.0.0 for a failure and 4.4.7 for an expiry. */
static void
dsn_status(const struct q_rcpt *r, char *out, size_t len)
{
	const char *s = r->reply;
	int a, b, c, n = 0;

	if (s != NULL && strlen(s) > 4 && (s[0] == '4' || s[0] == '5') &&
	    sscanf(s + 4, "%1d.%3d.%3d%n", &a, &b, &c, &n) == 3 && n > 0 &&
	    (a == 4 || a == 5)) {
		snprintf(out, len, "%d.%d.%d", r->state == Q_RCPT_FAILED ? a : 4, b, c);
		if (r->state == Q_RCPT_FAILED && a == 4)
			snprintf(out, len, "5.%d.%d", b, c);
		return;
	}
	snprintf(out, len, "%s", r->state == Q_RCPT_EXPIRED ? "4.4.7" : "5.0.0");
}

/*
 * An address in the 7-bit report (typed: with its type, "rfc822; a@b"), a
 * UTF-8 one (SMTPUTF8) of type "utf-8" with each non-ASCII character as \x{HEX} (RFC 6533 3.3,
 * utf-8-addr-xtext).  The address was checked to be well-formed UTF-8.
 */
static void
dsn_addr(struct dsn_buf *b, const char *a, int typed)
{
	const unsigned char *p = (const unsigned char *)a;
	unsigned cp;
	int n, k;

	for (; *p != '\0' && *p < 0x80; p++)
		;
	if (*p == '\0') {
		dsn_printf(b, "%s%s", typed ? "rfc822; " : "", a);
		return;
	}
	if (typed)
		dsn_adds(b, "utf-8; ");
	for (p = (const unsigned char *)a; *p != '\0'; p += n) {
		n = *p < 0x80 ? 1 : *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : 2;
		if (n == 1) {
			dsn_add(b, (const char *)p, 1);
			continue;
		}
		cp = *p & (0xff >> (n + 1));
		for (k = 1; k < n; k++) {
			if ((p[k] & 0xc0) != 0x80) {
				n = k;	/* not UTF-8: never here, but stay in bounds */
				break;
			}
			cp = (cp << 6) | (p[k] & 0x3f);
		}
		dsn_printf(b, "\\x{%X}", cp);
	}
}

char *
dsn_build(const struct q_envelope *env, const char *body, size_t bodylen,
    const char *bounce_from, const char *hostname, time_t now, size_t *len)
{
	struct dsn_buf b = { 0 };
	char date[64], arr[64], last[64], boundary[96], diag[DSN_DIAG_MAX], status[32];
	const char *host = hostname && *hostname ? hostname : "localhost";
	size_t i, hl, nfail = 0;
	const char *p, *eoh;

	dsn_date(now, date, sizeof(date));
	dsn_date(env->created, arr, sizeof(arr));
	snprintf(boundary, sizeof(boundary), "%s.%lld/%s", env->id, (long long)now, host);
	dsn_printf(&b, "From: Mail Delivery System <%s>\r\n",
	    bounce_from && *bounce_from ? bounce_from : "MAILER-DAEMON");
	dsn_printf(&b, "To: <%s>\r\n", env->sender);
	dsn_adds(&b, "Subject: Undelivered Mail Returned to Sender\r\n");
	dsn_printf(&b, "Date: %s\r\n", date);
	dsn_printf(&b, "Message-ID: <%s.dsn@%s>\r\n", env->id, host);
	dsn_adds(&b, "Auto-Submitted: auto-replied\r\n");
	dsn_adds(&b, "MIME-Version: 1.0\r\n");
	dsn_printf(&b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	    "\tboundary=\"%s\"\r\n", boundary);
	dsn_adds(&b, "\r\nThis is a MIME-encapsulated message.\r\n\r\n");

	/* 1: for humans */
	dsn_printf(&b, "--%s\r\n", boundary);
	dsn_adds(&b, "Content-Description: Notification\r\n"
	    "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
	dsn_printf(&b, "This is the mail system at host %s.\r\n\r\n", host);
	dsn_adds(&b, "Your message could not be delivered to one or more recipients.\r\n"
	    "It is attached below.\r\n\r\n");
	for (i = 0; i < env->nrcpt; i++) {
		const struct q_rcpt *r = &env->rcpts[i];

		if (r->state != Q_RCPT_FAILED && r->state != Q_RCPT_EXPIRED)
			continue;
		nfail++;
		dsn_clean(r->reply, diag, sizeof(diag));
		dsn_adds(&b, "<");
		dsn_addr(&b, r->addr, 0);
		dsn_printf(&b, ">: %s\r\n",
		    *diag ? diag : r->state == Q_RCPT_EXPIRED ?
		    "message lifetime expired before delivery" : "delivery failed");
	}
	if (env->last_error != NULL && *env->last_error != '\0') {
		dsn_clean(env->last_error, diag, sizeof(diag));
		dsn_printf(&b, "\r\nLast error: %s\r\n", diag);
	}
	dsn_adds(&b, "\r\n");

	/* 2: for machines (RFC 3464 section 2) */
	dsn_printf(&b, "--%s\r\n", boundary);
	dsn_adds(&b, "Content-Description: Delivery report\r\n"
	    "Content-Type: message/delivery-status\r\n\r\n");
	dsn_printf(&b, "Reporting-MTA: dns; %s\r\n", host);
	dsn_printf(&b, "X-Otpmail-Queue-ID: %s\r\n", env->id);
	if (env->sender != NULL && *env->sender != '\0')
	{
		dsn_adds(&b, "X-Original-Envelope-From: ");
		dsn_addr(&b, env->sender, 1);
		dsn_adds(&b, "\r\n");
	}
	dsn_printf(&b, "Arrival-Date: %s\r\n", arr);
	for (i = 0; i < env->nrcpt; i++) {
		const struct q_rcpt *r = &env->rcpts[i];

		if (r->state != Q_RCPT_FAILED && r->state != Q_RCPT_EXPIRED)
			continue;
		dsn_status(r, status, sizeof(status));
		dsn_adds(&b, "\r\nFinal-Recipient: ");
		dsn_addr(&b, r->addr, 1);
		dsn_adds(&b, "\r\n");
		dsn_adds(&b, "Action: failed\r\n");
		dsn_printf(&b, "Status: %s\r\n", status);
		dsn_clean(r->reply, diag, sizeof(diag));
		if (*diag != '\0')
			dsn_printf(&b, "Diagnostic-Code: smtp; %s\r\n", diag);
		if (r->last_attempt > 0) {
			dsn_date(r->last_attempt, last, sizeof(last));
			dsn_printf(&b, "Last-Attempt-Date: %s\r\n", last);
		}
		if (r->state == Q_RCPT_EXPIRED) {
			dsn_date(env->expires, last, sizeof(last));
			dsn_printf(&b, "Will-Retry-Until: %s\r\n", last);
		}
	}
	dsn_adds(&b, "\r\n");

	/* 3: the original header section */
	dsn_printf(&b, "--%s\r\n", boundary);
	dsn_adds(&b, "Content-Description: Undelivered Message Headers\r\n"
	    "Content-Type: text/rfc822-headers\r\n\r\n");
	if (body != NULL && bodylen > 0) {
		hl = bodylen < DSN_HEADERS_MAX ? bodylen : DSN_HEADERS_MAX;
		eoh = NULL;
		for (p = body; p + 3 < body + hl; p++)
			if (memcmp(p, "\r\n\r\n", 4) == 0) {
				eoh = p + 2;
				break;
			}
		hl = eoh ? (size_t)(eoh - body) : hl;
		/* cut at the last whole line */
		while (hl > 0 && body[hl - 1] != '\n')
			hl--;
		dsn_add(&b, body, hl);
	}
	dsn_printf(&b, "\r\n--%s--\r\n", boundary);
	(void)nfail;
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}
