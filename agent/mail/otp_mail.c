/*
 * otp_mail.c - the one-time-code mail: loads and checks the per-locale
 * templates once (start and reload), picks a locale per request, fills the
 * placeholders ({{code}}, {{minutes}}, {{app}}, {{purpose}}, {{time}},
 * {{client}}; HTML-escaped in the HTML part; {{#client}}...{{/client}} only
 * when the app passed client_info) and builds a multipart/alternative
 * message.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "agent/mail/message.h"
#include "agent/mail/otp_mail.h"

#define OTP_LOCALES_MAX	64
#define OTP_SUBJECT_MAX	400

struct otp_locale {
	char	 name[OTP_LOCALE_MAX + 1];
	char	*subject;
	char	*text;
	char	*html;
};

struct otp_templates {
	struct otp_locale *loc;
	size_t		 n;
	size_t		 def;
};

static const char *const otp_placeholders[] = { "code", "minutes", "app", "purpose",
	"time", "client", "#client", "/client", NULL };

static int	otp_locale_name_ok(const char *);
static int	otp_utf8_ok(const char *, size_t);
static char	*otp_read_file(const char *dir, const char *loc, const char *file,
		    char *err, size_t errlen);
static int	otp_check_template(const char *tmpl, int need_code, const char *what,
		    char *err, size_t errlen);
static int	otp_load_locale(const char *dir, const char *name, struct otp_locale *,
		    char *err, size_t errlen);
static void	otp_render(struct buf *, const char *tmpl, const struct otp_mail_vars *,
		    int html);
static const char *otp_var(const struct otp_mail_vars *, const char *name, size_t len,
		    char *tmp, size_t tmplen);
static const char *otp_default_dir(const char *default_locale);
static const struct otp_locale *otp_pick(const struct otp_templates *, const char *);
static int	otp_value_ok(const char *, size_t max);
static size_t	otp_utf8_next(const unsigned char *, size_t, unsigned *);
static int	otp_cp_lookalike(unsigned);
static int	otp_hex(int);

static int
otp_locale_name_ok(const char *s)
{
	size_t i, n = strlen(s), lang = 0;

	if (n < 2 || n > OTP_LOCALE_MAX)
		return 0;
	while (lang < n && ((s[lang] >= 'a' && s[lang] <= 'z') ||
	    (s[lang] >= 'A' && s[lang] <= 'Z')))
		lang++;
	if (lang < 2 || lang > 3)
		return 0;
	for (i = lang; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		    (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '_'))
			return 0;
	return lang == n || s[lang] == '-' || s[lang] == '_';
}

/* Well-formed UTF-8 without NUL or control characters but tab and newlines. */
static int
otp_utf8_ok(const char *p, size_t len)
{
	const unsigned char *s = (const unsigned char *)p;
	size_t i = 0, k, n;
	unsigned cp;

	while (i < len) {
		if (s[i] < 0x80) {
			if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') ||
			    s[i] == 0x7f)
				return 0;
			i++;
			continue;
		}
		if ((s[i] & 0xe0) == 0xc0) {
			n = 1;
			cp = s[i] & 0x1f;
		} else if ((s[i] & 0xf0) == 0xe0) {
			n = 2;
			cp = s[i] & 0x0f;
		} else if ((s[i] & 0xf8) == 0xf0) {
			n = 3;
			cp = s[i] & 0x07;
		} else
			return 0;
		for (k = 1; k <= n; k++) {
			if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) ||
		    (n == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		i += n + 1;
	}
	return 1;
}

static char *
otp_read_file(const char *dir, const char *loc, const char *file, char *err, size_t errlen)
{
	char path[4096], *data = NULL;
	struct stat st;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/%s/%s", dir, loc, file);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "templates: %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size > OTP_TEMPLATE_MAX) {
		snprintf(err, errlen, "templates: %s: not a regular file of at most %d bytes",
		    path, OTP_TEMPLATE_MAX);
		goto fail;
	}
	if ((data = malloc((size_t)st.st_size + 1)) == NULL) {
		snprintf(err, errlen, "templates: out of memory");
		goto fail;
	}
	n = read(fd, data, (size_t)st.st_size);
	if (n != st.st_size) {
		snprintf(err, errlen, "templates: %s: short read", path);
		goto fail;
	}
	data[n] = '\0';
	if (!otp_utf8_ok(data, (size_t)n)) {
		snprintf(err, errlen, "templates: %s: not UTF-8 text", path);
		goto fail;
	}
	close(fd);
	return data;
fail:
	free(data);
	close(fd);
	return NULL;
}

static int
otp_check_template(const char *t, int need_code, const char *what, char *err, size_t errlen)
{
	const char *p = t, *end;
	int i, has_code = 0, section = 0;

	while ((p = strstr(p, "{{")) != NULL) {
		if ((end = strstr(p + 2, "}}")) == NULL) {
			snprintf(err, errlen, "templates: %s: \"{{\" without \"}}\"", what);
			return -1;
		}
		for (i = 0; otp_placeholders[i] != NULL; i++)
			if (strlen(otp_placeholders[i]) == (size_t)(end - p - 2) &&
			    strncmp(p + 2, otp_placeholders[i], (size_t)(end - p - 2)) == 0)
				break;
		if (otp_placeholders[i] == NULL) {
			snprintf(err, errlen, "templates: %s: unknown placeholder \"%.*s\" "
			    "(known: code, minutes, app, purpose, time, client, "
			    "#client, /client)", what,
			    (int)(end - p + 2 > 40 ? 40 : end - p + 2), p);
			return -1;
		}
		if (i == 0)
			has_code = 1;
		if (p[2] == '#' || p[2] == '/') {
			if ((p[2] == '#') == section) {
				snprintf(err, errlen, "templates: %s: {{#client}} and "
				    "{{/client}} must pair, unnested", what);
				return -1;
			}
			section = !section;
		}
		p = end + 2;
	}
	if (section) {
		snprintf(err, errlen, "templates: %s: {{#client}} without {{/client}}", what);
		return -1;
	}
	if (need_code && !has_code) {
		snprintf(err, errlen, "templates: %s: no {{code}}", what);
		return -1;
	}
	return 0;
}

static int
otp_load_locale(const char *dir, const char *name, struct otp_locale *l, char *err,
    size_t errlen)
{
	char what[128];
	size_t n;

	memset(l, 0, sizeof(*l));
	snprintf(l->name, sizeof(l->name), "%.16s", name);
	if ((l->subject = otp_read_file(dir, name, "subject.txt", err, errlen)) == NULL ||
	    (l->text = otp_read_file(dir, name, "body.txt", err, errlen)) == NULL ||
	    (l->html = otp_read_file(dir, name, "body.html", err, errlen)) == NULL)
		return -1;
	/* The subject is one line: drop the file's final newline. */
	n = strlen(l->subject);
	while (n > 0 && (l->subject[n - 1] == '\n' || l->subject[n - 1] == '\r'))
		l->subject[--n] = '\0';
	snprintf(what, sizeof(what), "%.16s/subject.txt", name);
	if (n == 0 || strpbrk(l->subject, "\r\n\t") != NULL || n > OTP_SUBJECT_MAX) {
		snprintf(err, errlen, "templates: %s: must be one non-empty line", what);
		return -1;
	}
	if (otp_check_template(l->subject, 0, what, err, errlen) == -1)
		return -1;
	snprintf(what, sizeof(what), "%.16s/body.txt", name);
	if (otp_check_template(l->text, 1, what, err, errlen) == -1)
		return -1;
	snprintf(what, sizeof(what), "%.16s/body.html", name);
	if (otp_check_template(l->html, 1, what, err, errlen) == -1)
		return -1;
	return 0;
}

static const char *
otp_default_dir(const char *default_locale)
{
	static const char installed[] = DATADIR "/templates";
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", installed, default_locale);
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		return installed;
	return SRCDIR "/etc/templates";
}

struct otp_templates *
otp_templates_load(const char *dir, const char *default_locale, char *err, size_t errlen)
{
	struct otp_templates *t;
	struct dirent *e;
	struct stat st;
	char path[4096];
	DIR *d = NULL;
	size_t i;

	if (default_locale == NULL || !otp_locale_name_ok(default_locale)) {
		snprintf(err, errlen, "templates: bad default locale \"%s\"",
		    default_locale ? default_locale : "");
		return NULL;
	}
	if (dir == NULL || dir[0] == '\0')
		dir = otp_default_dir(default_locale);
	if ((t = calloc(1, sizeof(*t))) == NULL ||
	    (t->loc = calloc(OTP_LOCALES_MAX, sizeof(*t->loc))) == NULL) {
		snprintf(err, errlen, "templates: out of memory");
		goto fail;
	}
	if ((d = opendir(dir)) == NULL) {
		snprintf(err, errlen, "templates: %s: %s", dir, strerror(errno));
		goto fail;
	}
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) == -1 || !S_ISDIR(st.st_mode))
			continue;
		if (!otp_locale_name_ok(e->d_name)) {
			snprintf(err, errlen, "templates: %s: not a locale name", path);
			goto fail;
		}
		if (t->n == OTP_LOCALES_MAX) {
			snprintf(err, errlen, "templates: %s: more than %d locales", dir,
			    OTP_LOCALES_MAX);
			goto fail;
		}
		if (otp_load_locale(dir, e->d_name, &t->loc[t->n++], err, errlen) == -1)
			goto fail;
	}
	closedir(d);
	d = NULL;
	for (i = 0; i < t->n; i++)
		if (strcasecmp(t->loc[i].name, default_locale) == 0)
			break;
	if (i == t->n) {
		snprintf(err, errlen, "templates: %s: no templates for the default locale "
		    "\"%s\"", dir, default_locale);
		goto fail;
	}
	t->def = i;
	return t;
fail:
	if (d != NULL)
		closedir(d);
	otp_templates_free(t);
	return NULL;
}

void
otp_templates_free(struct otp_templates *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; t->loc != NULL && i < OTP_LOCALES_MAX; i++) {
		free(t->loc[i].subject);
		free(t->loc[i].text);
		free(t->loc[i].html);
	}
	free(t->loc);
	free(t);
}

static const struct otp_locale *
otp_pick(const struct otp_templates *t, const char *want)
{
	size_t i, lang;

	if (want == NULL || *want == '\0')
		return &t->loc[t->def];
	for (i = 0; i < t->n; i++)
		if (strcasecmp(t->loc[i].name, want) == 0)
			return &t->loc[i];
	lang = strcspn(want, "-_");
	for (i = 0; i < t->n; i++)
		if (strlen(t->loc[i].name) == lang &&
		    strncasecmp(t->loc[i].name, want, lang) == 0)
			return &t->loc[i];
	return &t->loc[t->def];
}

const char *
otp_templates_pick(const struct otp_templates *t, const char *want)
{
	return otp_pick(t, want)->name;
}

static const char *
otp_var(const struct otp_mail_vars *v, const char *name, size_t len, char *tmp,
    size_t tmplen)
{
	if (len == 4 && strncmp(name, "code", 4) == 0)
		return v->code;
	if (len == 7 && strncmp(name, "minutes", 7) == 0) {
		snprintf(tmp, tmplen, "%d", (v->ttl + 59) / 60);
		return tmp;
	}
	if (len == 3 && strncmp(name, "app", 3) == 0)
		return v->app ? v->app : "";
	if (len == 7 && strncmp(name, "purpose", 7) == 0)
		return v->purpose ? v->purpose : "login";
	if (len == 4 && strncmp(name, "time", 4) == 0) {
		struct tm tm;
		time_t t = v->now;

		gmtime_r(&t, &tm);
		strftime(tmp, tmplen, "%Y-%m-%d %H:%M UTC", &tm);
		return tmp;
	}
	if (len == 6 && strncmp(name, "client", 6) == 0)
		return v->client ? v->client : "";
	return NULL;
}

static void
otp_render(struct buf *b, const char *t, const struct otp_mail_vars *v, int html)
{
	const char *p, *end, *val;
	char tmp[32];

	while ((p = strstr(t, "{{")) != NULL && (end = strstr(p + 2, "}}")) != NULL) {
		buf_add(b, t, (size_t)(p - t));
		if (strncmp(p, "{{#client}}", 11) == 0 || strncmp(p, "{{/client}}", 11) == 0) {
			/* a section shown only with client_info */
			t = end + 2;
			if (p[2] == '#' && (v->client == NULL || v->client[0] == '\0') &&
			    (end = strstr(t, "{{/client}}")) != NULL)
				t = end + 11;
			continue;
		}
		val = otp_var(v, p + 2, (size_t)(end - p - 2), tmp, sizeof(tmp));
		if (val == NULL)
			buf_add(b, p, (size_t)(end + 2 - p));
		else if (html)
			msg_add_html_escaped(b, val);
		else
			buf_adds(b, val);
		t = end + 2;
	}
	buf_adds(b, t);
}

/* One UTF-8 character at s (n bytes left): its code point and length, or
 * length 0 if malformed. */
static size_t
otp_utf8_next(const unsigned char *s, size_t n, unsigned *cp)
{
	size_t k, len;

	if (s[0] < 0x80) {
		*cp = s[0];
		return 1;
	}
	len = (s[0] & 0xe0) == 0xc0 ? 2 : (s[0] & 0xf0) == 0xe0 ? 3 :
	    (s[0] & 0xf8) == 0xf0 ? 4 : 0;
	if (len == 0 || len > n || !otp_utf8_ok((const char *)s, len))
		return 0;
	*cp = s[0] & (0x7f >> len);
	for (k = 1; k < len; k++)
		*cp = *cp << 6 | (s[k] & 0x3f);
	return len;
}

/* Characters that read as a dot, slash, colon, @ or bracket, or are
 * invisible or reorder text (bidi): a link or a disguise in plain text. */
static int
otp_cp_lookalike(unsigned cp)
{
	static const unsigned one[] = { 0x061c, 0x2024, 0x2044, 0x2215, 0x3002,
	    0xfe52, 0xfe55, 0xfe64, 0xfe65, 0xfe6b, 0xfeff, 0xff0e, 0xff0f, 0xff1a,
	    0xff1c, 0xff1e, 0xff20, 0xff61, 0 };
	size_t i;

	for (i = 0; one[i] != 0; i++)
		if (cp == one[i])
			return 1;
	return (cp >= 0x80 && cp <= 0xa0) || cp == 0xad ||
	    (cp >= 0x200b && cp <= 0x200f) || (cp >= 0x2028 && cp <= 0x202f) ||
	    (cp >= 0x2060 && cp <= 0x206f) || (cp >= 0xe000 && cp <= 0xf8ff) ||
	    (cp >= 0xfff0 && cp <= 0xffff) || cp >= 0xe0000;
}

static int
otp_hex(int c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

int
otp_display_text_ok(const char *str, size_t maxchars, int ip, char *why, size_t wl)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str), i = 0, chars = 0, len;
	unsigned cp;
	int prev = 0, next;

	if (n == 0 || s[0] == ' ' || s[n - 1] == ' ') {
		snprintf(why, wl, "empty, or starts or ends with a space");
		return 0;
	}
	while (i < n) {
		if ((len = otp_utf8_next(s + i, n - i, &cp)) == 0) {
			snprintf(why, wl, "not UTF-8 text");
			return 0;
		}
		next = i + len < n ? s[i + len] : 0;
		if (++chars > maxchars) {
			snprintf(why, wl, "longer than %zu characters", maxchars);
			return 0;
		}
		if (cp >= 0x80) {
			if (otp_cp_lookalike(cp)) {
				snprintf(why, wl, "holds U+%04X, an invisible, bidi or "
				    "punctuation character that could disguise a link", cp);
				return 0;
			}
		} else if (cp == ' ') {
			if (prev == ' ') {
				snprintf(why, wl, "two spaces in a row");
				return 0;
			}
		} else if (cp == '.' || cp == ':') {
			int fits = cp == '.' ? prev >= '0' && prev <= '9' && next >= '0' &&
			    next <= '9' : (otp_hex(prev) || prev == ':') &&
			    (otp_hex(next) || next == ':' || next == 0);

			if (!ip || !fits) {
				snprintf(why, wl, "plain text only: '%c' %s", cp, ip ?
				    "only inside an IP address" : "is not allowed");
				return 0;
			}
		} else if (!(cp >= 'a' && cp <= 'z') && !(cp >= 'A' && cp <= 'Z') &&
		    !(cp >= '0' && cp <= '9') && strchr("-_&'(),!+", (int)cp) == NULL) {
			snprintf(why, wl, "plain text only: letters, digits, spaces and "
			    "- _ & ' ( ) , ! + (no markup, links or addresses)");
			return 0;
		}
		prev = (int)cp;
		i += len;
	}
	return 1;
}

/* A value from the request may become part of a header: no controls. */
static int
otp_value_ok(const char *s, size_t max)
{
	size_t n;

	if (s == NULL)
		return 1;
	n = strnlen(s, max + 1);
	if (n > max || !otp_utf8_ok(s, n))
		return 0;
	return strpbrk(s, "\r\n\t") == NULL;
}

char *
otp_mail_compose(const struct otp_templates *t, const struct otp_mail_vars *v,
    size_t *len, char *err, size_t errlen)
{
	const struct otp_locale *l;
	struct buf m, part;
	unsigned char rnd[12];
	char date[64], mid[300], boundary[64], ctype[128];
	size_t i;

	if (t == NULL || v->code == NULL || v->to == NULL || v->from == NULL) {
		snprintf(err, errlen, "otp mail: missing templates or values");
		return NULL;
	}
	if (!otp_value_ok(v->app, OTP_APP_MAX) || !otp_value_ok(v->purpose, 64) ||
	    !otp_value_ok(v->client, OTP_CLIENT_MAX) ||
	    !otp_value_ok(v->to, 320) || !otp_value_ok(v->from, 320) ||
	    !otp_value_ok(v->code, OTP_CODE_MAX)) {
		snprintf(err, errlen, "otp mail: a value holds control characters or is too long");
		return NULL;
	}
	l = otp_pick(t, v->locale);
	if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
		snprintf(err, errlen, "otp mail: RAND_bytes failed");
		return NULL;
	}
	/* "=_" never occurs in quoted-printable text: a safe boundary. */
	memcpy(boundary, "=_otp_", 6);
	for (i = 0; i < sizeof(rnd); i++)
		snprintf(boundary + 6 + 2 * i, 3, "%02x", rnd[i]);
	msg_date(v->now, date, sizeof(date));
	msg_message_id(v->hostname ? v->hostname : "localhost", mid, sizeof(mid));

	buf_init(&m);
	buf_init(&part);
	otp_render(&part, l->subject, v, 0);
	if (!msg_header_value_ok(part.data, OTP_SUBJECT_MAX + 200)) {
		snprintf(err, errlen, "otp mail: subject would not be a valid header");
		buf_free(&part);
		return NULL;
	}
	msg_add_header(&m, "Date", date);
	msg_add_header(&m, "From", v->from);
	msg_add_header(&m, "To", v->to);
	msg_add_header(&m, "Subject", part.data);
	msg_add_header(&m, "Message-ID", mid);
	msg_add_header(&m, "MIME-Version", "1.0");
	msg_add_header(&m, "Auto-Submitted", "auto-generated");
	msg_add_header(&m, "X-Auto-Response-Suppress", "All");
	msg_add_header(&m, "Content-Language", l->name);
	snprintf(ctype, sizeof(ctype), "multipart/alternative; boundary=\"%s\"", boundary);
	msg_add_header(&m, "Content-Type", ctype);
	buf_adds(&m, "\r\n");

	buf_printf(&m, "--%s\r\n", boundary);
	buf_adds(&m, "Content-Type: text/plain; charset=utf-8\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
	part.len = 0;
	otp_render(&part, l->text, v, 0);
	msg_add_qp(&m, part.data, part.len);

	buf_printf(&m, "--%s\r\n", boundary);
	buf_adds(&m, "Content-Type: text/html; charset=utf-8\r\n"
	    "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
	part.len = 0;
	otp_render(&part, l->html, v, 1);
	msg_add_qp(&m, part.data, part.len);
	buf_printf(&m, "--%s--\r\n", boundary);

	OPENSSL_cleanse(part.data, part.cap);
	buf_free(&part);
	return buf_take(&m, len);
}

int
otp_store_params_from_config(const struct config *c, const char *state_dir,
    struct store_params *p)
{
	static char dir[4096], secret[4096];

	store_params_defaults(p);
	if (snprintf(dir, sizeof(dir), "%s/db", state_dir) >= (int)sizeof(dir) ||
	    snprintf(secret, sizeof(secret), "%s/otp.secret", state_dir) >=
	    (int)sizeof(secret))
		return -1;
	p->dir = dir;
	p->secret_file = secret;
	p->old_secret_file = c->otp_old_secret_file && c->otp_old_secret_file[0] ?
	    c->otp_old_secret_file : NULL;
	p->code_length = c->otp_length;
	if (strcmp(c->otp_alphabet, "digits") == 0)
		p->alphabet = OTP_ALPHA_DIGITS;
	else if (strcmp(c->otp_alphabet, "alnum") == 0)
		p->alphabet = OTP_ALPHA_ALNUM;
	else
		return -1;
	p->ttl = c->otp_ttl;
	p->max_ttl = c->otp_max_ttl;
	p->keep_codes = c->otp_keep_codes;
	p->resend_cooldown = c->otp_resend_cooldown;
	p->max_per_address_hour = c->otp_max_per_address_hour;
	p->max_per_client_id_hour = c->otp_max_per_client_id_hour;
	p->max_per_client_minute = c->otp_max_per_client_minute;
	p->max_global_per_second = c->otp_max_global_per_second;
	p->max_failures_per_code = c->otp_max_failures_per_code;
	p->lockout_after = c->otp_lockout_after;
	p->lockout_base = c->otp_lockout_base;
	p->lockout_max = c->otp_lockout_max;
	p->max_consecutive_failures = c->otp_max_consecutive_failures;
	p->permanent_lockout = c->otp_permanent_lockout;
	p->durable = 1;
	if (p->code_length < 4 || p->code_length > OTP_CODE_MAX || p->keep_codes < 1 ||
	    p->max_consecutive_failures > 100 || p->ttl > p->max_ttl ||
	    p->lockout_base > p->lockout_max)
		return -1;
	return 0;
}
