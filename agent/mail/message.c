/*
 * message.c - building RFC 5322 messages: the growable buffer, Date and
 * Message-ID, header checks, RFC 2047 encoded words, quoted-printable,
 * CRLF line ends.  The only place that writes header syntax.
 */
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "agent/mail/message.h"

#define MSG_FOLD	76
#define MSG_LINE_MAX	900	/* well inside RFC 5322's 998 */

/* Length of the longest run without a space. */
static size_t
msg_longest_word(const char *v)
{
	size_t run = 0, max = 0;

	for (; *v; v++) {
		run = (*v == ' ' || *v == '\t') ? 0 : run + 1;
		if (run > max)
			max = run;
	}
	return max;
}

void
buf_init(struct buf *b)
{
	memset(b, 0, sizeof(*b));
}

void
buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b);
}

static void
buf_grow(struct buf *b, size_t need)
{
	size_t cap;
	char *p;

	if (b->len + need + 1 <= b->cap)
		return;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + need + 1)
		cap *= 2;
	if ((p = realloc(b->data, cap)) == NULL)
		abort();	/* out of memory: nothing sane to do mid-message */
	b->data = p;
	b->cap = cap;
}

void
buf_add(struct buf *b, const void *p, size_t n)
{
	buf_grow(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void
buf_adds(struct buf *b, const char *s)
{
	buf_add(b, s, strlen(s));
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	buf_grow(b, n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, n + 1, fmt, ap);
	va_end(ap);
	b->len += n;
}

char *
buf_take(struct buf *b, size_t *len)
{
	char *p;

	buf_grow(b, 0);
	b->data[b->len] = '\0';	/* an empty buffer was never terminated */
	p = b->data;
	if (len != NULL)
		*len = b->len;
	buf_init(b);
	return p;
}

void
msg_date(time_t t, char *out, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, len, "%a, %d %b %Y %H:%M:%S +0000", &tm);
}

void
msg_message_id(const char *hostname, char *out, size_t len)
{
	unsigned char r[12];
	struct timespec ts;
	size_t i;
	char hex[25];

	if (RAND_bytes(r, sizeof(r)) != 1)
		memset(r, 0, sizeof(r));
	for (i = 0; i < sizeof(r); i++)
		snprintf(hex + 2 * i, 3, "%02x", r[i]);
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(out, len, "<%lx.%s@%s>", (unsigned long)ts.tv_sec, hex, hostname);
}

int
msg_header_name_ok(const char *n)
{
	if (*n == '\0' || strlen(n) > 76)
		return 0;
	for (; *n; n++)
		if (*n <= ' ' || *n > '~' || *n == ':')
			return 0;
	return 1;
}

int
msg_header_trace(const char *n, size_t len)
{
	static const char *const exact[] = { "Sender", "Return-Path", "Received",
	    "Received-SPF", "Authentication-Results", "DKIM-Signature", "Feedback-ID",
	    NULL };
	static const char *const prefix[] = { "ARC-", "Resent-", NULL };
	size_t i;

	for (i = 0; exact[i] != NULL; i++)
		if (strlen(exact[i]) == len && strncasecmp(n, exact[i], len) == 0)
			return 1;
	for (i = 0; prefix[i] != NULL; i++)
		if (len > strlen(prefix[i]) && strncasecmp(n, prefix[i], strlen(prefix[i])) == 0)
			return 1;
	return 0;
}

int
msg_header_value_ok(const char *v, size_t maxlen)
{
	size_t i;

	for (i = 0; v[i] != '\0'; i++) {
		if (i >= maxlen)
			return 0;
		if (v[i] == '\r' || v[i] == '\n')
			return 0;
	}
	return 1;
}

static int
msg_needs_encoding(const char *v)
{
	for (; *v; v++)
		if ((unsigned char)*v >= 0x80 || (unsigned char)*v < 0x20 || *v == 0x7f)
			return 1;
	return 0;
}

/* Length of the UTF-8 sequence starting at p (1 if invalid). */
static size_t
msg_utf8_len(const unsigned char *p)
{
	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0 && p[1])
		return 2;
	if ((p[0] & 0xf0) == 0xe0 && p[1] && p[2])
		return 3;
	if ((p[0] & 0xf8) == 0xf0 && p[1] && p[2] && p[3])
		return 4;
	return 1;
}

/* Base64 RFC 2047 words, each holding whole UTF-8 characters. */
static void
msg_add_encoded_words(struct buf *b, const char *v, size_t col)
{
	static const char b64[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = (const unsigned char *)v;
	unsigned char chunk[45];
	size_t n, i, cl;

	while (*p) {
		n = 0;
		while (*p && n + (cl = msg_utf8_len(p)) <= sizeof(chunk)) {
			memcpy(chunk + n, p, cl);
			n += cl;
			p += cl;
		}
		if (col > 1) {
			buf_adds(b, "\r\n ");
			col = 1;
		}
		buf_adds(b, "=?UTF-8?B?");
		for (i = 0; i < n; i += 3) {
			unsigned v3 = chunk[i] << 16;
			if (i + 1 < n) v3 |= chunk[i + 1] << 8;
			if (i + 2 < n) v3 |= chunk[i + 2];
			char o[4] = { b64[(v3 >> 18) & 63], b64[(v3 >> 12) & 63],
			    i + 1 < n ? b64[(v3 >> 6) & 63] : '=',
			    i + 2 < n ? b64[v3 & 63] : '=' };
			buf_add(b, o, 4);
		}
		buf_adds(b, "?=");
		col += 12 + (n + 2) / 3 * 4;
	}
}

static void
msg_feedback_field(struct buf *b, const char *s)
{
	size_t i;
	char c;

	for (i = 0; s[i] != '\0' && i < MSG_FEEDBACK_FIELD_MAX; i++) {
		c = s[i] >= 'A' && s[i] <= 'Z' ? (char)(s[i] + ('a' - 'A')) : s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
		    c == '_' || c == '-'))
			c = '-';
		buf_add(b, &c, 1);
	}
	if (i == 0)
		buf_adds(b, "none");
}

void
msg_add_feedback_id(struct buf *b, const char *purpose, const char *klass, const char *app)
{
	buf_adds(b, "Feedback-ID: ");
	msg_feedback_field(b, purpose ? purpose : "");
	buf_adds(b, ":");
	msg_feedback_field(b, klass ? klass : "");
	buf_adds(b, ":");
	msg_feedback_field(b, app ? app : "");
	buf_adds(b, ":otpmail\r\n");
}

void
msg_add_header(struct buf *b, const char *name, const char *value)
{
	size_t col, wl;
	const char *w, *sp;

	buf_printf(b, "%s:", name);
	col = strlen(name) + 1;
	/*
	 * Non-ASCII, or a run without white space too long to fold within
	 * RFC 5322's 998 bytes a line: encoded words, which split anywhere.
	 */
	if (msg_needs_encoding(value) || col + 1 + msg_longest_word(value) > MSG_LINE_MAX) {
		buf_adds(b, " ");
		/* no fold before the first word: it would decode as a space */
		msg_add_encoded_words(b, value, 1);
		buf_adds(b, "\r\n");
		return;
	}
	/* Fold at white space so no line passes MSG_FOLD where avoidable. */
	w = value;
	while (*w) {
		sp = strchr(w + 1, ' ');
		wl = sp ? (size_t)(sp - w) : strlen(w);
		if (w == value) {
			buf_adds(b, " ");
			col++;
			if (*w == ' ') {
				w++;
				wl--;
			}
		} else if (col + wl > MSG_FOLD) {
			buf_adds(b, "\r\n");
			col = 0;
		}
		buf_add(b, w, wl);
		col += wl;
		w += wl;
	}
	buf_adds(b, "\r\n");
}

void
msg_add_crlf_text(struct buf *b, const char *t, size_t len)
{
	size_t i, start = 0;

	for (i = 0; i < len; i++) {
		if (t[i] == '\r' || t[i] == '\n') {
			buf_add(b, t + start, i - start);
			buf_adds(b, "\r\n");
			if (t[i] == '\r' && i + 1 < len && t[i + 1] == '\n')
				i++;
			start = i + 1;
		}
	}
	if (start < len) {
		buf_add(b, t + start, len - start);
		buf_adds(b, "\r\n");
	}
}

int
msg_is_8bit(const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)p[i] >= 0x80)
			return 1;
	return 0;
}

char *
msg_find_header(const char *m, size_t len, const char *name)
{
	size_t nl = strlen(name), i = 0, j;
	struct buf v;

	while (i < len) {
		if (m[i] == '\r' || m[i] == '\n')
			return NULL;	/* end of the header section */
		if (i + nl < len && strncasecmp(m + i, name, nl) == 0 &&
		    m[i + nl] == ':') {
			buf_init(&v);
			j = i + nl + 1;
			while (j < len && (m[j] == ' ' || m[j] == '\t'))
				j++;
			for (; j < len; j++) {
				if (m[j] == '\r' || m[j] == '\n') {
					size_t k = j + (m[j] == '\r' && j + 1 < len && m[j + 1] == '\n');
					if (k + 1 < len && (m[k + 1] == ' ' || m[k + 1] == '\t')) {
						j = k;
						continue;	/* unfold */
					}
					break;
				}
				buf_add(&v, m + j, 1);
			}
			return buf_take(&v, NULL);
		}
		/* skip to the next line */
		while (i < len && m[i] != '\n')
			i++;
		i++;
	}
	return NULL;
}

void
msg_add_qp(struct buf *b, const char *t, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t i, col = 0;

	for (i = 0; i < len; i++) {
		unsigned char c = t[i];
		char enc[3];
		size_t n;

		if (c == '\r' && i + 1 < len && t[i + 1] == '\n')
			continue;
		if (c == '\n') {
			buf_adds(b, "\r\n");
			col = 0;
			continue;
		}
		if ((c == ' ' || c == '\t') && (i + 1 == len || t[i + 1] == '\n' ||
		    t[i + 1] == '\r'))
			goto encode;	/* trailing white space */
		if ((c >= 33 && c <= 126 && c != '=') || c == ' ' || c == '\t') {
			/* a lone "." at line start survives SMTP, but keep it safe */
			if (col == 0 && c == '.')
				goto encode;
			enc[0] = c;
			n = 1;
		} else {
encode:
			enc[0] = '=';
			enc[1] = hex[c >> 4];
			enc[2] = hex[c & 15];
			n = 3;
		}
		if (col + n > 75) {
			buf_adds(b, "=\r\n");
			col = 0;
		}
		buf_add(b, enc, n);
		col += n;
	}
	if (col > 0)
		buf_adds(b, "\r\n");
}

void
msg_add_html_escaped(struct buf *b, const char *t)
{
	for (; *t; t++) {
		switch (*t) {
		case '&':	buf_adds(b, "&amp;"); break;
		case '<':	buf_adds(b, "&lt;"); break;
		case '>':	buf_adds(b, "&gt;"); break;
		case '"':	buf_adds(b, "&quot;"); break;
		case '\'':	buf_adds(b, "&#39;"); break;
		default:	buf_add(b, t, 1);
		}
	}
}

int
msg_parse_mailbox(const char *in, char *name, size_t namelen, char *addr,
    size_t addrlen)
{
	const char *lt = strrchr(in, '<'), *gt, *s, *e;
	size_t l;

	name[0] = '\0';
	if (lt == NULL) {
		if (strchr(in, '>') != NULL || strlen(in) >= addrlen)
			return -1;
		snprintf(addr, addrlen, "%s", in);
		return 0;
	}
	gt = strchr(lt, '>');
	if (gt == NULL || gt[1] != '\0' || (size_t)(gt - lt - 1) >= addrlen)
		return -1;
	memcpy(addr, lt + 1, (size_t)(gt - lt - 1));
	addr[gt - lt - 1] = '\0';
	for (s = in; *s == ' ' || *s == '\t'; s++)
		;
	for (e = lt; e > s && (e[-1] == ' ' || e[-1] == '\t'); e--)
		;
	/* "Quoted Name": the quotes go, the text stays (re-quoted on output) */
	if (e - s >= 2 && *s == '"' && e[-1] == '"') {
		s++;
		e--;
	}
	l = (size_t)(e - s);
	if (l >= namelen || memchr(s, '<', l) != NULL || memchr(s, '>', l) != NULL)
		return -1;
	memcpy(name, s, l);
	name[l] = '\0';
	return 0;
}

void
msg_add_mailboxes(struct buf *b, const char *name, const char *const *names,
    const char *const *addrs, size_t n)
{
	size_t i, col;
	const char *p;

	buf_printf(b, "%s:", name);
	col = strlen(name) + 1;
	for (i = 0; i < n; i++) {
		if (i > 0) {
			buf_adds(b, ",\r\n");
			col = 0;
		}
		buf_adds(b, " ");
		col++;
		if (names[i] != NULL && names[i][0] != '\0') {
			if (msg_needs_encoding(names[i]))
				msg_add_encoded_words(b, names[i], 1);
			else if (strpbrk(names[i], "()<>[]:;@\\,.\"") != NULL) {
				buf_adds(b, "\"");
				for (p = names[i]; *p; p++) {
					if (*p == '"' || *p == '\\')
						buf_adds(b, "\\");
					buf_add(b, p, 1);
				}
				buf_adds(b, "\"");
			} else
				buf_adds(b, names[i]);
			buf_printf(b, " <%s>", addrs[i]);
		} else
			buf_adds(b, addrs[i]);
	}
	buf_adds(b, "\r\n");
}
