/*
 * sm_rewrite.c - otpmail-sendmail's address and message rewriting: the
 * address-list walker every other function here uses, aliases, origin
 * qualification of local names, and re-encoding of 8-bit non-UTF-8 mail
 * (cron's -B8BITMIME output in a Latin-1 locale) as quoted-printable.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/mail/mail.h"
#include "agent/tools/sm.h"

struct sm_alias {
	char	*name;
	char	*value;		/* the address list after the colon */
};

struct sm_aliases {
	struct sm_alias	*v;
	size_t		 n;
};

typedef void (*sm_addr_fn)(void *arg, const char *s, size_t start, size_t end);

static void	sm_addr_walk(const char *s, size_t len, sm_addr_fn, void *);
static void	*sm_xrealloc(void *, size_t);
static void	 sm_oom(void);

static void
sm_oom(void)
{
	fprintf(stderr, "otpmail-sendmail: out of memory\n");
	exit(71);	/* EX_OSERR; a one-shot tool has nothing to unwind */
}

static void *
sm_xrealloc(void *p, size_t n)
{
	if ((p = realloc(p, n)) == NULL)
		sm_oom();
	return p;
}

void
sm_list_add(struct sm_list *l, const char *a, size_t len)
{
	size_t i;

	while (len && isspace((unsigned char)*a)) {
		a++;
		len--;
	}
	while (len && isspace((unsigned char)a[len - 1]))
		len--;
	if (len == 0 || l->n >= SM_MAX_RCPT)
		return;
	for (i = 0; i < l->n; i++)
		if (strlen(l->v[i]) == len && strncasecmp(l->v[i], a, len) == 0)
			return;
	l->v = sm_xrealloc(l->v, (l->n + 1) * sizeof(char *));
	l->v[l->n] = sm_xrealloc(NULL, len + 1);
	memcpy(l->v[l->n], a, len);
	l->v[l->n][len] = '\0';
	l->n++;
}

void
sm_list_free(struct sm_list *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/*
 * Calls fn with the span of each addr-spec: the text in <...> when there is
 * one, else the element's text outside comments ("root (Cron Daemon)" ->
 * "root").  Group names ("team: a, b;") are skipped, so are empty groups.
 */
static void
sm_addr_walk(const char *s, size_t len, sm_addr_fn fn, void *arg)
{
	size_t i, astart = 0, tstart = 0, tend = 0;
	int quote = 0, paren = 0, angle = 0, got_angle = 0, have = 0;

	for (i = 0; i <= len; i++) {
		char c = i < len ? s[i] : '\0';

		if (quote) {
			if (c == '\\' && i + 1 < len)
				i++;
			else if (c == '"')
				quote = 0;
			if (!angle)
				tend = i;
			if (c != '\0')
				continue;
		}
		if (paren) {
			if (c == '\\' && i + 1 < len)
				i++;
			else if (c == '(')
				paren++;
			else if (c == ')')
				paren--;
			if (c != '\0')
				continue;
		}
		switch (c) {
		case '"':
			quote = 1;
			if (!angle) {
				if (!have)
					tstart = i;
				have = 1;
				tend = i;
			}
			break;
		case '(':
			paren = 1;
			break;
		case '<':
			if (!angle) {
				angle = 1;
				astart = i + 1;
			}
			break;
		case '>':
			if (angle) {
				size_t a = astart, e = i;
				while (a < e && isspace((unsigned char)s[a]))
					a++;
				while (e > a && isspace((unsigned char)s[e - 1]))
					e--;
				if (e > a)
					fn(arg, s, a, e);
				angle = 0;
				got_angle = 1;
			}
			break;
		case ':':
			if (!angle)
				have = got_angle = 0;	/* a group's name */
			break;
		case ',':
		case ';':
		case '\0':
			if (angle && c != '\0')
				break;
			if (have && !got_angle)
				fn(arg, s, tstart, tend + 1);
			have = got_angle = angle = 0;
			break;
		default:
			if (!angle && !isspace((unsigned char)c)) {
				if (!have)
					tstart = i;
				have = 1;
				tend = i;
			}
			break;
		}
	}
}

static void
sm_addr_add(void *arg, const char *s, size_t a, size_t e)
{
	sm_list_add(arg, s + a, e - a);
}

void
sm_addr_list(struct sm_list *l, const char *s, size_t len)
{
	sm_addr_walk(s, len, sm_addr_add, l);
}

size_t
sm_header_len(const char *m, size_t len)
{
	size_t i;

	if (len > 0 && m[0] == '\n')
		return 1;
	if (len > 1 && m[0] == '\r' && m[1] == '\n')
		return 2;
	for (i = 0; i < len; i++) {
		if (m[i] == '\n' && i + 1 < len && m[i + 1] == '\n')
			return i + 2;
		if (m[i] == '\n' && i + 2 < len && m[i + 1] == '\r' && m[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

/* End of the header field starting at i (after its last line's LF). */
static size_t
sm_field_end(const char *m, size_t i, size_t hdrlen)
{
	while (i < hdrlen) {
		while (i < hdrlen && m[i] != '\n')
			i++;
		if (i < hdrlen)
			i++;
		if (i >= hdrlen || (m[i] != ' ' && m[i] != '\t'))
			break;
	}
	return i;
}

/* 1 if the field at m[i..] is called name (followed by a colon). */
static int
sm_field_is(const char *m, size_t i, size_t end, const char *name)
{
	size_t nl = strlen(name);

	return end - i > nl && strncasecmp(m + i, name, nl) == 0 && m[i + nl] == ':';
}

void
sm_header_addrs(const char *m, size_t hdrlen, const char *name, struct sm_list *r)
{
	size_t i = 0, end, nl = strlen(name);

	while (i < hdrlen) {
		end = sm_field_end(m, i, hdrlen);
		if (sm_field_is(m, i, end, name))
			sm_addr_list(r, m + i + nl + 1, end - i - nl - 1);
		if (end == i)
			break;
		i = end;
	}
}

size_t
sm_strip_bcc(char *m, size_t len, size_t hdrlen)
{
	size_t i = 0, end;

	while (i < hdrlen) {
		end = sm_field_end(m, i, hdrlen);
		if (end == i)
			break;
		if (sm_field_is(m, i, end, "Bcc")) {
			memmove(m + i, m + end, len - end);
			len -= end - i;
			hdrlen -= end - i;
			continue;
		}
		i = end;
	}
	return len;
}

char *
sm_qualify(const char *addr, const char *origin)
{
	char *r;
	size_t n = strlen(addr);

	r = sm_xrealloc(NULL, n + strlen(origin) + 2);
	if (strchr(addr, '@') != NULL || *origin == '\0')
		memcpy(r, addr, n + 1);
	else
		sprintf(r, "%s@%s", addr, origin);
	return r;
}

struct sm_ins {
	size_t	*at;
	size_t	 n;
};

static void
sm_note_unqualified(void *arg, const char *s, size_t a, size_t e)
{
	struct sm_ins *ins = arg;

	if (memchr(s + a, '@', e - a) != NULL || s[a] == '"')
		return;
	ins->at = sm_xrealloc(ins->at, (ins->n + 1) * sizeof(size_t));
	ins->at[ins->n++] = e;
}

char *
sm_rewrite_headers(const char *m, size_t len, const char *origin, size_t *outlen)
{
	static const char *const fields[] = { "From", "Sender", "Reply-To", "To", "Cc",
	    "Bcc", "Resent-From", "Resent-Sender", "Resent-To", "Resent-Cc", NULL };
	size_t hdrlen = sm_header_len(m, len), i = 0, end, k, ol = strlen(origin);
	struct buf b;

	buf_init(&b);
	while (i < hdrlen) {
		struct sm_ins ins = { NULL, 0 };
		size_t from = i, j;

		end = sm_field_end(m, i, hdrlen);
		if (end == i)
			break;
		for (k = 0; fields[k] != NULL && ol > 0; k++)
			if (sm_field_is(m, i, end, fields[k])) {
				size_t v = i + strlen(fields[k]) + 1;
				sm_addr_walk(m + v, end - v, sm_note_unqualified, &ins);
				for (j = 0; j < ins.n; j++) {
					buf_add(&b, m + from, v + ins.at[j] - from);
					buf_printf(&b, "@%s", origin);
					from = v + ins.at[j];
				}
				break;
			}
		buf_add(&b, m + from, end - from);
		free(ins.at);
		i = end;
	}
	buf_add(&b, m + i, len - i);
	return buf_take(&b, outlen);
}

/* --- aliases -------------------------------------------------------- */

static void
sm_alias_line(struct sm_aliases *a, char *line, const char *path, unsigned lineno,
    FILE *warn)
{
	char *colon = strchr(line, ':'), *name = line, *e;

	if (colon == NULL) {
		if (warn)
			fprintf(warn, "otpmail-sendmail: %s:%u: no colon, line ignored\n",
			    path, lineno);
		return;
	}
	*colon = '\0';
	e = colon;
	while (e > name && isspace((unsigned char)e[-1]))
		*--e = '\0';
	if (*name == '\0')
		return;
	a->v = sm_xrealloc(a->v, (a->n + 1) * sizeof(*a->v));
	a->v[a->n].name = strdup(name);
	a->v[a->n].value = strdup(colon + 1);
	if (a->v[a->n].name == NULL || a->v[a->n].value == NULL)
		sm_oom();
	a->n++;
	if (warn) {
		struct sm_list l = { NULL, 0 };
		size_t i;
		sm_addr_list(&l, colon + 1, strlen(colon + 1));
		for (i = 0; i < l.n; i++)
			if (l.v[i][0] == '|' || l.v[i][0] == '/' ||
			    strncasecmp(l.v[i], ":include:", 9) == 0)
				fprintf(warn, "otpmail-sendmail: %s:%u: %s: \"%s\" is not "
				    "supported (only addresses and names), skipped\n", path,
				    lineno, name, l.v[i]);
		sm_list_free(&l);
	}
}

struct sm_aliases *
sm_aliases_load(const char *path, FILE *warn, char *err, size_t errlen)
{
	struct sm_aliases *a = sm_xrealloc(NULL, sizeof(*a));
	char *line = NULL, *cur = NULL;
	size_t cap = 0, curlen = 0;
	unsigned lineno = 0, curline = 0;
	ssize_t n;
	FILE *f;

	memset(a, 0, sizeof(*a));
	if (path == NULL || *path == '\0')
		return a;
	if ((f = fopen(path, "r")) == NULL) {
		if (errno == ENOENT)
			return a;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		free(a);
		return NULL;
	}
	for (;;) {
		n = getline(&line, &cap, f);
		lineno++;
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		if (n > 0 && (line[0] == ' ' || line[0] == '\t') && cur != NULL) {
			/* a continuation of the entry above */
			cur = sm_xrealloc(cur, curlen + n + 2);
			curlen += (size_t)sprintf(cur + curlen, " %s", line);
			continue;
		}
		if (cur != NULL) {
			sm_alias_line(a, cur, path, curline, warn);
			free(cur);
			cur = NULL;
		}
		if (n < 0)
			break;
		if (n == 0 || line[0] == '#' || line[strspn(line, " \t")] == '\0')
			continue;
		cur = strdup(line);
		curlen = (size_t)n;
		curline = lineno;
	}
	free(line);
	fclose(f);
	return a;
}

size_t
sm_aliases_count(const struct sm_aliases *a)
{
	return a ? a->n : 0;
}

void
sm_aliases_free(struct sm_aliases *a)
{
	size_t i;

	if (a == NULL)
		return;
	for (i = 0; i < a->n; i++) {
		free(a->v[i].name);
		free(a->v[i].value);
	}
	free(a->v);
	free(a);
}

static const char *
sm_alias_find(const struct sm_aliases *a, const char *name)
{
	size_t i;

	for (i = 0; a && i < a->n; i++)
		if (strcasecmp(a->v[i].name, name) == 0)
			return a->v[i].value;
	return NULL;
}

static void
sm_resolve_depth(const struct sm_aliases *a, const char *origin, const char *addr,
    struct sm_list *out, int depth)
{
	const char *at = strchr(addr, '@'), *value;
	char *name, *q;
	struct sm_list l = { NULL, 0 };
	size_t i;

	if (*addr == '\0')
		return;
	if (at != NULL && strcasecmp(at + 1, "localhost") != 0 &&
	    strcasecmp(at + 1, "localhost.localdomain") != 0) {
		sm_list_add(out, addr, strlen(addr));
		return;
	}
	name = at ? strndup(addr, (size_t)(at - addr)) : strdup(addr);
	if (name == NULL)
		sm_oom();
	/* "\name" is the name itself, never its alias (sendmail's rule) */
	if (name[0] != '\\' && depth < SM_ALIAS_DEPTH &&
	    (value = sm_alias_find(a, name)) != NULL) {
		size_t deliverable = 0;
		sm_addr_list(&l, value, strlen(value));
		for (i = 0; i < l.n; i++) {
			const char *v = l.v[i];
			if (v[0] == '|' || v[0] == '/' || strncasecmp(v, ":include:", 9) == 0)
				continue;
			deliverable++;
			if (strcasecmp(v, name) == 0) {
				q = sm_qualify(name, origin);
				sm_list_add(out, q, strlen(q));
				free(q);
			} else
				sm_resolve_depth(a, origin, v, out, depth + 1);
		}
		sm_list_free(&l);
		if (deliverable > 0) {
			free(name);
			return;
		}
		/* nothing deliverable there (only |cmd or /file): the name itself */
	}
	q = sm_qualify(name[0] == '\\' ? name + 1 : name, origin);
	sm_list_add(out, q, strlen(q));
	free(q);
	free(name);
}

void
sm_resolve(const struct sm_aliases *a, const char *origin, const char *addr,
    struct sm_list *out)
{
	sm_resolve_depth(a, origin, addr, out, 0);
}

/* --- 8-bit data ------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (0 if invalid). */
static size_t
sm_utf8_seq(const unsigned char *s, size_t len)
{
	size_t n, i;
	unsigned cp;

	if (s[0] < 0x80)
		return 1;
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2, cp = s[0] & 0x1f;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3, cp = s[0] & 0x0f;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4, cp = s[0] & 0x07;
	else
		return 0;
	if (n > len)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return n;
}

int
sm_utf8_valid(const char *s, size_t len)
{
	size_t i = 0, n;

	while (i < len) {
		if ((n = sm_utf8_seq((const unsigned char *)s + i, len - i)) == 0)
			return 0;
		i += n;
	}
	return 1;
}

/* Copies s, every byte that is not part of valid UTF-8 read as Latin-1. */
static void
sm_add_latin1(struct buf *b, const char *s, size_t len)
{
	size_t i = 0, n;

	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		if ((n = sm_utf8_seq((const unsigned char *)s + i, len - i)) > 0) {
			buf_add(b, s + i, n);
			i += n;
			continue;
		}
		buf_printf(b, "%c%c", 0xc0 | (c >> 6), 0x80 | (c & 0x3f));
		i++;
	}
}

/* The boundary parameter of a Content-Type value, malloc'd, or NULL. */
static char *
sm_boundary(const char *ct)
{
	const char *p = ct;
	size_t n;

	while ((p = strcasestr(p, "boundary=")) != NULL) {
		if (p > ct && !(p[-1] == ';' || isspace((unsigned char)p[-1]))) {
			p++;
			continue;
		}
		p += 9;
		if (*p == '"') {
			p++;
			n = strcspn(p, "\"");
		} else
			n = strcspn(p, "; \t");
		return n > 0 && n <= 70 ? strndup(p, n) : NULL;
	}
	return NULL;
}

static void sm_entity(struct buf *, const char *, size_t, int);

/* Line starting at i is "--b" or "--b--" (with optional trailing blanks). */
static int
sm_is_delim(const char *m, size_t i, size_t len, const char *b, size_t bl)
{
	size_t j;

	if (len - i < bl + 2 || m[i] != '-' || m[i + 1] != '-' ||
	    memcmp(m + i + 2, b, bl) != 0)
		return 0;
	j = i + 2 + bl;
	if (j + 1 < len && m[j] == '-' && m[j + 1] == '-')
		j += 2;
	while (j < len && (m[j] == ' ' || m[j] == '\t' || m[j] == '\r'))
		j++;
	return j >= len || m[j] == '\n';
}

static void
sm_multipart(struct buf *out, const char *m, size_t len, const char *b, int depth)
{
	size_t bl = strlen(b), i = 0, part = 0, line_end;
	int in_part = 0;

	while (i < len) {
		line_end = i;
		while (line_end < len && m[line_end] != '\n')
			line_end++;
		if (line_end < len)
			line_end++;
		if (sm_is_delim(m, i, len, b, bl)) {
			if (in_part) {
				/* the CRLF before a delimiter belongs to it */
				size_t pe = i;
				if (pe > part && m[pe - 1] == '\n')
					pe--;
				if (pe > part && m[pe - 1] == '\r')
					pe--;
				sm_entity(out, m + part, pe - part, depth + 1);
				buf_add(out, m + pe, i - pe);
			}
			buf_add(out, m + i, line_end - i);
			in_part = 1;
			part = line_end;
		} else if (!in_part)
			sm_add_latin1(out, m + i, line_end - i);	/* preamble */
		i = line_end;
	}
	if (in_part && part < len)
		sm_add_latin1(out, m + part, len - part);	/* epilogue */
}

static void
sm_entity(struct buf *out, const char *m, size_t len, int depth)
{
	size_t hdrlen = sm_header_len(m, len), i, end, fields_end;
	char *ct, *cte, *b, *mv = NULL;

	if (sm_utf8_valid(m, len)) {
		buf_add(out, m, len);
		return;
	}
	ct = msg_find_header(m, hdrlen, "Content-Type");
	if (ct && strncasecmp(ct, "multipart/", 10) == 0 && depth < 10 &&
	    (b = sm_boundary(ct)) != NULL) {
		sm_add_latin1(out, m, hdrlen);
		sm_multipart(out, m + hdrlen, len - hdrlen, b, depth);
		free(b);
		free(ct);
		return;
	}
	cte = msg_find_header(m, hdrlen, "Content-Transfer-Encoding");
	if (sm_utf8_valid(m + hdrlen, len - hdrlen) || (cte && (strcasecmp(cte, "base64") == 0 ||
	    strcasecmp(cte, "quoted-printable") == 0))) {
		/* only the header section has stray bytes */
		sm_add_latin1(out, m, len);
		free(cte);
		free(ct);
		return;
	}
	/* the fields but the blank line and any Content-Transfer-Encoding */
	fields_end = hdrlen;
	if (fields_end > 0 && m[fields_end - 1] == '\n' && fields_end < len + 1) {
		size_t k = fields_end - 1;
		if (k > 0 && m[k - 1] == '\r')
			k--;
		if (k == 0 || m[k - 1] == '\n')
			fields_end = k;
	}
	for (i = 0; i < fields_end; i = end) {
		end = sm_field_end(m, i, fields_end);
		if (end == i)
			break;
		if (!sm_field_is(m, i, end, "Content-Transfer-Encoding"))
			sm_add_latin1(out, m + i, end - i);
	}
	if (depth == 0 && (mv = msg_find_header(m, hdrlen, "MIME-Version")) == NULL)
		buf_adds(out, "MIME-Version: 1.0\n");
	free(mv);
	if (ct == NULL)
		buf_adds(out, "Content-Type: text/plain; charset=unknown-8bit\n");
	buf_adds(out, "Content-Transfer-Encoding: quoted-printable\n\n");
	msg_add_qp(out, m + hdrlen, len - hdrlen);
	free(cte);
	free(ct);
}

char *
sm_make_utf8(const char *m, size_t len, size_t *outlen)
{
	struct buf b, c;

	buf_init(&b);
	sm_entity(&b, m, len, 0);
	if (b.len > 0 && !sm_utf8_valid(b.data, b.len)) {
		/* cannot happen by construction; never hand JSON bad bytes */
		buf_init(&c);
		sm_add_latin1(&c, b.data, b.len);
		buf_free(&b);
		b = c;
	}
	return buf_take(&b, outlen);
}
