/*
 * bounce.c - classifies a delivery failure by ordered rules (etc/bounce-rules,
 * compiled in, after an admin's file): the reply's SMTP code, its RFC 3463
 * enhanced code and its text decide the class, and a rule may name the
 * blocklist the reply cites.  Diagnostics: "file:line: why" at load.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/delivery/bounce.h"

#define BOUNCE_LINE_MAX		1024	/* one rule line */
#define BOUNCE_FILE_MAX		(1024 * 1024)
#define BOUNCE_ANY		(-1)	/* a wildcard part of a code */
#define BOUNCE_NOCODE		(-2)	/* the reply has no such part */

struct bounce_rule {
	enum bounce_class klass;
	char		 list[BOUNCE_LIST_MAX + 1];
	char		 code[4];	/* digits or 'x'; "" = any */
	int		 esc[3];	/* numbers or BOUNCE_ANY */
	char		*sub;		/* substring, or NULL */
	regex_t		 re;
	int		 has_re;
	const char	*file;
	int		 line;
};

struct bounce_rules {
	struct bounce_rule *r;
	size_t		 n;
	char		**names;	/* file names the rules point to */
	size_t		 nnames;
};

/* What a reply says, parsed once. */
struct bounce_reply {
	char		 code[4];	/* "550", "5??" from an enhanced code, "" */
	int		 esc[3];	/* BOUNCE_NOCODE if none */
	const char	*text;
};

static const char *const bounce_names[] = {
	"none", "hard", "mailbox_full", "policy", "auth", "temporary", "transport"
};

static struct bounce_rules *bounce_active;
static struct bounce_rules *bounce_builtin;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static int	 bounce_parse_line(struct bounce_rule *, char *, char *, size_t);
static int	 bounce_parse_esc(const char *, int esc[3], int pattern);
static int	 bounce_match(const struct bounce_rule *, const struct bounce_reply *);
static void	 bounce_reply_parse(const char *, struct bounce_reply *);
static int	 bounce_append(struct bounce_rules *, const char *, const char *,
		    char *, size_t);

const char *
bounce_class_name(enum bounce_class c)
{
	return (size_t)c < sizeof(bounce_names) / sizeof(bounce_names[0]) ?
	    bounce_names[c] : "none";
}

static int
bounce_class_parse(const char *s, size_t len, enum bounce_class *out)
{
	size_t i;

	for (i = 1; i < sizeof(bounce_names) / sizeof(bounce_names[0]); i++)
		if (strlen(bounce_names[i]) == len && strncmp(bounce_names[i], s, len) == 0) {
			*out = (enum bounce_class)i;
			return 0;
		}
	return -1;
}

/* "5.1.1", "*.7.26", "5.7.*" (pattern) or a reply's code: -1 if malformed. */
static int
bounce_parse_esc(const char *s, int esc[3], int pattern)
{
	int i, v, nd;

	for (i = 0; i < 3; i++) {
		if (i > 0 && *s++ != '.')
			return -1;
		if (pattern && *s == '*') {
			esc[i] = BOUNCE_ANY;
			s++;
			continue;
		}
		for (v = 0, nd = 0; isdigit((unsigned char)*s) && nd < 4; s++, nd++)
			v = v * 10 + (*s - '0');
		if (nd == 0 || nd > (i == 0 ? 1 : 3))
			return -1;
		esc[i] = v;
	}
	if (!pattern && esc[0] != 2 && esc[0] != 4 && esc[0] != 5)
		return -1;
	return *s == '\0' || (!pattern && !isdigit((unsigned char)*s) && *s != '.') ? 0 : -1;
}

static int
bounce_parse_line(struct bounce_rule *r, char *p, char *why, size_t whylen)
{
	char *f[3], *colon;
	size_t i, len;
	int e;

	for (i = 0; i < 3; i++) {
		p += strspn(p, " \t");
		if (*p == '\0') {
			snprintf(why, whylen, "want class, code and enhanced code");
			return -1;
		}
		f[i] = p;
		p += strcspn(p, " \t");
		if (*p != '\0')
			*p++ = '\0';
	}
	if ((colon = strchr(f[0], ':')) != NULL) {
		len = strlen(colon + 1);
		if (len == 0 || len > BOUNCE_LIST_MAX ||
		    strspn(colon + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
		    "0123456789._-") != len) {
			snprintf(why, whylen, "bad list name (letters, digits, ._-; at most %d)",
			    BOUNCE_LIST_MAX);
			return -1;
		}
		memcpy(r->list, colon + 1, len + 1);
		*colon = '\0';
	}
	if (bounce_class_parse(f[0], strlen(f[0]), &r->klass) == -1) {
		snprintf(why, whylen, "unknown class \"%.32s\"", f[0]);
		return -1;
	}
	if (strcmp(f[1], "*") != 0) {
		if (strlen(f[1]) != 3 || strspn(f[1], "0123456789x") != 3 ||
		    (f[1][0] != '2' && f[1][0] != '4' && f[1][0] != '5')) {
			snprintf(why, whylen, "bad reply code \"%.16s\" (550, 55x, 5xx or *)", f[1]);
			return -1;
		}
		memcpy(r->code, f[1], 4);
	}
	if (strcmp(f[2], "*") == 0)
		r->esc[0] = r->esc[1] = r->esc[2] = BOUNCE_ANY;
	else if (bounce_parse_esc(f[2], r->esc, 1) == -1) {
		snprintf(why, whylen, "bad enhanced code \"%.16s\" (5.1.1, 5.7.*, *.7.26 or *)",
		    f[2]);
		return -1;
	}
	p += strspn(p, " \t");
	len = strlen(p);
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
		p[--len] = '\0';
	if (len == 0)
		return 0;
	if (len < 3 || (p[0] != '"' && p[0] != '/') || p[len - 1] != p[0]) {
		snprintf(why, whylen, "text must be \"substring\" or /regex/");
		return -1;
	}
	p[len - 1] = '\0';
	if (p[0] == '"') {
		if ((r->sub = strdup(p + 1)) == NULL) {
			snprintf(why, whylen, "out of memory");
			return -1;
		}
		return 0;
	}
	if ((e = regcomp(&r->re, p + 1, REG_EXTENDED | REG_ICASE | REG_NOSUB)) != 0) {
		char msg[128];

		regerror(e, &r->re, msg, sizeof(msg));
		snprintf(why, whylen, "bad regex: %s", msg);
		return -1;
	}
	r->has_re = 1;
	return 0;
}

static void
bounce_rule_free(struct bounce_rule *r)
{
	free(r->sub);
	if (r->has_re)
		regfree(&r->re);
}

/* Parses text and appends its rules to rs (all or none). */
static int
bounce_append(struct bounce_rules *rs, const char *text, const char *name,
    char *err, size_t errlen)
{
	char line[BOUNCE_LINE_MAX + 1], why[256], **nn, *fname;
	struct bounce_rule r, *nr;
	size_t old = rs->n, len;
	const char *p = text, *eol;
	int lineno = 0;

	if ((nn = realloc(rs->names, (rs->nnames + 1) * sizeof(*nn))) == NULL ||
	    (rs->names = nn, (fname = strdup(name)) == NULL)) {
		snprintf(err, errlen, "%s: out of memory", name);
		return -1;
	}
	rs->names[rs->nnames++] = fname;
	while (*p != '\0') {
		lineno++;
		eol = strchr(p, '\n');
		len = eol ? (size_t)(eol - p) : strlen(p);
		if (len > BOUNCE_LINE_MAX) {
			snprintf(err, errlen, "%s:%d: line longer than %d bytes", name, lineno,
			    BOUNCE_LINE_MAX);
			goto fail;
		}
		memcpy(line, p, len);
		line[len] = '\0';
		p += len + (eol != NULL);
		len = strspn(line, " \t");
		if (line[len] == '\0' || line[len] == '#')
			continue;
		memset(&r, 0, sizeof(r));
		if (bounce_parse_line(&r, line, why, sizeof(why)) == -1) {
			bounce_rule_free(&r);
			snprintf(err, errlen, "%s:%d: %s", name, lineno, why);
			goto fail;
		}
		r.file = fname;
		r.line = lineno;
		if ((nr = realloc(rs->r, (rs->n + 1) * sizeof(*nr))) == NULL) {
			bounce_rule_free(&r);
			snprintf(err, errlen, "%s: out of memory", name);
			goto fail;
		}
		rs->r = nr;
		rs->r[rs->n++] = r;
	}
	return 0;
fail:
	while (rs->n > old)
		bounce_rule_free(&rs->r[--rs->n]);
	return -1;
}

struct bounce_rules *
bounce_rules_parse(const char *text, const char *name, char *err, size_t errlen)
{
	struct bounce_rules *rs;

	if ((rs = calloc(1, sizeof(*rs))) == NULL) {
		snprintf(err, errlen, "%s: out of memory", name);
		return NULL;
	}
	if (bounce_append(rs, text, name, err, errlen) == -1) {
		bounce_rules_free(rs);
		return NULL;
	}
	return rs;
}

void
bounce_rules_free(struct bounce_rules *rs)
{
	size_t i;

	if (rs == NULL)
		return;
	for (i = 0; i < rs->n; i++)
		bounce_rule_free(&rs->r[i]);
	for (i = 0; i < rs->nnames; i++)
		free(rs->names[i]);
	free(rs->names);
	free(rs->r);
	free(rs);
}

size_t
bounce_rules_count(const struct bounce_rules *rs)
{
	return rs->n;
}

int
bounce_rules_line(const struct bounce_rules *rs, size_t i)
{
	return i < rs->n ? rs->r[i].line : 0;
}

/* Reads the admin's file whole (bounded), then the built-in rules after it. */
struct bounce_rules *
bounce_rules_load(const char *path, char *err, size_t errlen)
{
	struct bounce_rules *rs;
	char *text = NULL;
	size_t len = 0;
	FILE *fp;
	int c;

	if (path == NULL || *path == '\0')
		return bounce_rules_parse(bounce_builtin_rules, "built-in", err, errlen);
	if ((fp = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return NULL;
	}
	if ((text = malloc(BOUNCE_FILE_MAX + 1)) == NULL) {
		fclose(fp);
		snprintf(err, errlen, "%s: out of memory", path);
		return NULL;
	}
	while ((c = getc(fp)) != EOF && len < BOUNCE_FILE_MAX) {
		if (c == '\0')
			break;
		text[len++] = (char)c;
	}
	text[len] = '\0';
	if (c != EOF || ferror(fp)) {
		snprintf(err, errlen, "%s: %s", path, ferror(fp) ? "read error" :
		    c == '\0' ? "NUL byte in the file" : "file too large");
		fclose(fp);
		free(text);
		return NULL;
	}
	fclose(fp);
	rs = bounce_rules_parse(text, path, err, errlen);
	free(text);
	if (rs != NULL && bounce_append(rs, bounce_builtin_rules, "built-in", err,
	    errlen) == -1) {
		bounce_rules_free(rs);
		return NULL;
	}
	return rs;
}

/* "550 5.1.1 text", "550-5.1.1 text", "4.4.3 text", "connect: ..." */
static void
bounce_reply_parse(const char *s, struct bounce_reply *out)
{
	char esc[16];
	size_t n;

	memset(out, 0, sizeof(*out));
	out->esc[0] = out->esc[1] = out->esc[2] = BOUNCE_NOCODE;
	s += strspn(s, " \t");
	if (isdigit((unsigned char)s[0]) && isdigit((unsigned char)s[1]) &&
	    isdigit((unsigned char)s[2]) && (s[3] == '\0' || s[3] == ' ' || s[3] == '-')) {
		memcpy(out->code, s, 3);
		s += 3;
		s += strspn(s, " -");
	}
	n = strspn(s, "0123456789.");
	if (n > 0 && n < sizeof(esc)) {
		memcpy(esc, s, n);
		esc[n] = '\0';
		if (bounce_parse_esc(esc, out->esc, 0) == 0) {
			if (out->code[0] == '\0') {
				out->code[0] = (char)('0' + out->esc[0]);
				out->code[1] = out->code[2] = '?';
			}
		} else
			out->esc[0] = out->esc[1] = out->esc[2] = BOUNCE_NOCODE;
	}
	out->text = s;
}

static int
bounce_match(const struct bounce_rule *r, const struct bounce_reply *rp)
{
	int i;

	if (r->code[0] != '\0') {
		if (rp->code[0] == '\0')
			return 0;
		for (i = 0; i < 3; i++)
			if (r->code[i] != 'x' && r->code[i] != rp->code[i])
				return 0;
	}
	for (i = 0; i < 3; i++)
		if (r->esc[i] != BOUNCE_ANY && r->esc[i] != rp->esc[i])
			return 0;
	if (r->sub != NULL && strcasestr(rp->text, r->sub) == NULL)
		return 0;
	if (r->has_re && regexec(&r->re, rp->text, 0, NULL, 0) != 0)
		return 0;
	return 1;
}

void
bounce_classify_with(const struct bounce_rules *rs, const char *reply,
    struct bounce_result *res)
{
	struct bounce_reply rp;
	size_t i;

	memset(res, 0, sizeof(*res));
	if (rs == NULL || reply == NULL || *reply == '\0')
		return;
	bounce_reply_parse(reply, &rp);
	for (i = 0; i < rs->n; i++)
		if (bounce_match(&rs->r[i], &rp)) {
			res->klass = rs->r[i].klass;
			memcpy(res->list, rs->r[i].list, sizeof(res->list));
			res->file = rs->r[i].file;
			res->line = rs->r[i].line;
			return;
		}
}

static void
bounce_builtin_init(void)
{
	char err[256];

	bounce_builtin = bounce_rules_parse(bounce_builtin_rules, "built-in", err,
	    sizeof(err));
}

int
bounce_init(const char *path, char *err, size_t errlen)
{
	struct bounce_rules *rs;

	if ((rs = bounce_rules_load(path, err, errlen)) == NULL)
		return -1;
	bounce_rules_free(bounce_active);
	bounce_active = rs;
	return 0;
}

void
bounce_classify(const char *reply, struct bounce_result *res)
{
	if (bounce_active != NULL) {
		bounce_classify_with(bounce_active, reply, res);
		return;
	}
	pthread_once(&bounce_once, bounce_builtin_init);
	bounce_classify_with(bounce_builtin, reply, res);
}

void
bounce_shutdown(void)
{
	bounce_rules_free(bounce_active);
	bounce_rules_free(bounce_builtin);
	bounce_active = bounce_builtin = NULL;
}
