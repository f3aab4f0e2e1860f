/*
 * test_otp_mail.c - the OTP mail (agent/mail/otp_mail.c): the shipped templates
 * load (en, de, fr) and carry no links, the locale fallback, the composed
 * message's headers and parts, HTML escaping, refusal of values that could
 * inject headers, template validation errors, and the store parameters
 * taken from the configuration.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/core/config.h"
#include "agent/mail/message.h"
#include "agent/mail/otp_mail.h"
#include "tests/unit/tap.h"

static char *compose(const struct otp_templates *, const char *locale, const char *app,
		    size_t *len);
static void	write_file(const char *dir, const char *loc, const char *name,
		    const char *text);
static char	*qp_decode(const char *in);

static char *
compose(const struct otp_templates *t, const char *locale, const char *app, size_t *len)
{
	struct otp_mail_vars v;
	char err[256];
	char *m;

	memset(&v, 0, sizeof(v));
	v.code = "492817";
	v.ttl = 300;
	v.app = app;
	v.purpose = "login";
	v.locale = locale;
	v.from = "noreply@example.org";
	v.to = "alice@example.org";
	v.hostname = "mx.example.org";
	v.now = 1800000000;
	m = otp_mail_compose(t, &v, len, err, sizeof(err));
	if (m == NULL)
		diag("compose: %s", err);
	return m;
}

/* Quoted-printable to bytes (soft breaks removed), for content checks. */
static char *
qp_decode(const char *in)
{
	char *out = malloc(strlen(in) + 1), *o = out;
	unsigned v;

	while (*in) {
		if (in[0] == '=' && in[1] == '\r' && in[2] == '\n')
			in += 3;
		else if (in[0] == '=' && in[1] && in[2] && sscanf(in + 1, "%2x", &v) == 1) {
			*o++ = (char)v;
			in += 3;
		} else
			*o++ = *in++;
	}
	*o = '\0';
	return out;
}

static void
write_file(const char *dir, const char *loc, const char *name, const char *text)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, loc);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/%s/%s", dir, loc, name);
	if ((f = fopen(path, "w")) == NULL)
		return;
	fputs(text, f);
	fclose(f);
}

int
main(void)
{
	const char *locs[] = { "en", "de", "fr" }, *files[] = { "subject.txt", "body.txt",
	    "body.html" };
	struct otp_templates *t;
	struct store_params sp;
	struct config *c;
	char err[512], tdir[] = "/tmp/test_otp_mail.XXXXXX", path[600], *m, *body, *dec;
	size_t len, i, j;
	int links = 0;

	t = otp_templates_load(SRCDIR "/etc/templates", "en", err, sizeof(err));
	ok(t != NULL, "shipped templates load");
	if (t == NULL) {
		diag("%s", err);
		return done_testing();
	}
	is_str(otp_templates_pick(t, "de"), "de", "de present");
	is_str(otp_templates_pick(t, "fr-CA"), "fr", "fr-CA falls back to fr");
	is_str(otp_templates_pick(t, "DE"), "de", "locale match ignores case");
	is_str(otp_templates_pick(t, "pt-BR"), "en", "unknown locale: the default");
	is_str(otp_templates_pick(t, NULL), "en", "no locale: the default");

	/* No links in any shipped template. */
	for (i = 0; i < 3; i++)
		for (j = 0; j < 3; j++) {
			FILE *f;
			char buf[8192];
			size_t n;

			snprintf(path, sizeof(path), "%s/etc/templates/%s/%s", SRCDIR, locs[i],
			    files[j]);
			if ((f = fopen(path, "r")) == NULL)
				continue;
			n = fread(buf, 1, sizeof(buf) - 1, f);
			buf[n] = '\0';
			fclose(f);
			if (strstr(buf, "http") || strstr(buf, "<a ") || strstr(buf, "www."))
				links++;
		}
	is_int(links, 0, "no links in the shipped templates");

	m = compose(t, "en", "Shop", &len);
	ok(m != NULL, "compose");
	if (m != NULL) {
		body = strstr(m, "\r\n\r\n");
		ok(body != NULL, "header and body separated by an empty line");
		ok(strstr(m, "Date: ") && strstr(m, "Message-ID: <") &&
		    strstr(m, "From: noreply@example.org\r\n") &&
		    strstr(m, "To: alice@example.org\r\n") && strstr(m, "MIME-Version: 1.0\r\n") &&
		    strstr(m, "Auto-Submitted: auto-generated\r\n"),
		    "Date, Message-ID, From, To, MIME-Version, Auto-Submitted");
		ok(strstr(m, "Subject: 492817 is your Shop code\r\n") != NULL,
		    "subject filled in");
		ok(strstr(m, "Content-Type: multipart/alternative;") != NULL, "multipart/alternative");
		ok(strstr(m, "Content-Type: text/plain; charset=utf-8") &&
		    strstr(m, "Content-Type: text/html; charset=utf-8"), "text and HTML parts");
		ok(strstr(m, "Content-Transfer-Encoding: quoted-printable") != NULL, "quoted-printable");
		dec = qp_decode(body);
		ok(strstr(dec, "valid for 5 minutes") != NULL, "minutes in the text");
		ok(strstr(dec, "Never share this code") != NULL, "never-share warning");
		ok(strstr(dec, "did not ask for this code") != NULL, "what to do if not asked");
		/* v.now = 1800000000 */
		ok(strstr(dec, "Shop was asked for a code (login) for this address") != NULL &&
		    strstr(dec, "on 2027-01-15 08:00 UTC. Your code") != NULL,
		    "which site asked and when; no client line without client_info");
		ok(strstr(dec, "from") == NULL || strstr(dec, ", from") == NULL,
		    "no client section without client_info");
		free(dec);
		for (i = 0; i < len; i++)
			if (m[i] == '\n' && (i == 0 || m[i - 1] != '\r'))
				break;
		is_int((long)i, (long)len, "every line ends in CRLF");
		free(m);
	}

	m = compose(t, "de", "Shop", &len);
	ok(m != NULL && strstr(m, "Subject:") != NULL &&
	    strncmp(strstr(m, "Subject:") + strspn(strstr(m, "Subject:") + 8, " \r\n") + 8,
	    "=?UTF-8?B?", 10) == 0,
	    "German subject (non-ASCII) as RFC 2047 encoded words");
	ok(m != NULL && strstr(m, "Content-Language: de") != NULL, "Content-Language de");
	free(m);

	{
		struct otp_mail_vars v;

		memset(&v, 0, sizeof(v));
		v.code = "492817";
		v.ttl = 300;
		v.app = "Shop";
		v.from = "noreply@example.org";
		v.to = "alice@example.org";
		v.now = 1800000000;
		v.client = "Firefox on Linux <b> (203.0.113.7)";
		m = otp_mail_compose(t, &v, &len, err, sizeof(err));
		dec = m ? qp_decode(strstr(m, "\r\n\r\n")) : NULL;
		ok(dec != NULL && strstr(dec, "2027-01-15 08:00 UTC, from Firefox on Linux "
		    "<b> (203.0.113.7). Your code") != NULL &&
		    strstr(dec, "from Firefox on Linux &lt;b&gt; (203.0.113.7)") != NULL,
		    "client_info in both parts, escaped in the HTML part");
		free(dec);
		free(m);
	}
	{
		char why[200];
		static const char *const good_app[] = { "Evil Bank", "Caf\xc3\xa9 M\xc3\xbcller",
		    "AT&T", "O'Brien (EU)", "\xe6\x9d\xb1\xe4\xba\xac", NULL };
		static const char *const bad_app[] = { "<a href='http://evil.test'>click</a>",
		    "evil.test", "http:x", "a@b", "two  spaces", " lead", "x/y",
		    "evil\xe3\x80\x82test", "evil\xef\xbc\x8etest", "rtl\xe2\x80\xae",
		    "zero\xe2\x80\x8bwidth", "", "x\ty", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
		    NULL };
		int okc = 0, badc = 0, n_bad = 0;

		for (i = 0; good_app[i] != NULL; i++)
			if (otp_display_text_ok(good_app[i], OTP_APP_CHARS, 0, why, sizeof(why)))
				okc++;
			else
				diag("refused \"%s\": %s", good_app[i], why);
		is_int(okc, (long)i, "plain app names accepted");
		for (i = 0; bad_app[i] != NULL; i++, n_bad++)
			if (!otp_display_text_ok(bad_app[i], OTP_APP_CHARS, 0, why, sizeof(why)))
				badc++;
			else
				diag("accepted \"%s\"", bad_app[i]);
		is_int(badc, n_bad, "markup, URLs, domains, lookalikes, bidi refused in app");
		ok(otp_display_text_ok("Firefox on Linux (203.0.113.7, 2001:db8::1)",
		    OTP_CLIENT_CHARS, 1, why, sizeof(why)), "client_info: IP addresses allowed");
		ok(!otp_display_text_ok("Chrome, see evil.test", OTP_CLIENT_CHARS, 1, why,
		    sizeof(why)), "client_info: a domain refused");
		ok(!otp_display_text_ok("https://1.2.3.4", OTP_CLIENT_CHARS, 1, why,
		    sizeof(why)), "client_info: a URL refused");
		ok(!otp_display_text_ok("203.0.113.7", OTP_APP_CHARS, 0, why, sizeof(why)),
		    "app: no dots at all");
	}

	m = compose(t, "en", "<script>x</script> & \"Co\"", &len);
	dec = m ? qp_decode(strstr(m, "text/html")) : NULL;
	ok(dec != NULL && strstr(dec, "&lt;script&gt;x&lt;/script&gt; &amp; &quot;Co&quot;") &&
	    strstr(dec, "<script>") == NULL, "app name HTML-escaped in the HTML part");
	free(dec);
	free(m);

	ok(compose(t, "en", "X\r\nBcc: victim@example.net", &len) == NULL,
	    "CR/LF in a value refused: no header injection");
	{
		struct otp_mail_vars v;

		memset(&v, 0, sizeof(v));
		v.code = "1";
		v.from = "a@b.example";
		v.to = "x@y.example\nBcc: z@example.net";
		ok(otp_mail_compose(t, &v, &len, err, sizeof(err)) == NULL,
		    "LF in the address refused");
	}
	otp_templates_free(t);

	/* Validation of custom templates. */
	if (mkdtemp(tdir) == NULL)
		return done_testing();
	write_file(tdir, "en", "subject.txt", "Code {{code}}\n");
	write_file(tdir, "en", "body.txt", "Your code: {{code}} ({{minutes}} min)\n");
	write_file(tdir, "en", "body.html", "<p>{{code}}</p>\n");
	t = otp_templates_load(tdir, "en", err, sizeof(err));
	ok(t != NULL, "minimal custom templates load");
	otp_templates_free(t);
	ok(otp_templates_load(tdir, "de", err, sizeof(err)) == NULL &&
	    strstr(err, "default locale") != NULL, "missing default locale refused");
	write_file(tdir, "en", "body.txt", "Your code: {{kode}}\n");
	ok(otp_templates_load(tdir, "en", err, sizeof(err)) == NULL &&
	    strstr(err, "unknown placeholder") != NULL, "unknown placeholder refused");
	write_file(tdir, "en", "body.txt", "No code here\n");
	ok(otp_templates_load(tdir, "en", err, sizeof(err)) == NULL &&
	    strstr(err, "no {{code}}") != NULL, "body without {{code}} refused");
	write_file(tdir, "en", "body.txt", "{{code}}\n");
	write_file(tdir, "en", "subject.txt", "two\nlines\n");
	ok(otp_templates_load(tdir, "en", err, sizeof(err)) == NULL,
	    "multi-line subject refused");
	write_file(tdir, "en", "subject.txt", "bad \xff utf-8\n");
	ok(otp_templates_load(tdir, "en", err, sizeof(err)) == NULL &&
	    strstr(err, "UTF-8") != NULL, "non-UTF-8 template refused");
	snprintf(path, sizeof(path), "rm -rf '%s'", tdir);
	if (system(path) != 0)
		diag("cleanup failed");

	/* Store parameters from the configuration defaults. */
	if ((c = config_load(NULL, err, sizeof(err))) == NULL) {
		diag("config_load: %s", err);
		return done_testing();
	}
	is_int(otp_store_params_from_config(c, "/var/lib/otpmail", &sp), 0,
	    "store params from config");
	is_str(sp.dir, "/var/lib/otpmail/db", "db under the state dir");
	is_str(sp.secret_file, "/var/lib/otpmail/otp.secret", "secret under the state dir");
	ok(sp.code_length == 6 && sp.ttl == 300 && sp.keep_codes == 3 &&
	    sp.max_failures_per_code == 5 && sp.max_consecutive_failures == 100 &&
	    sp.durable == 1, "defaults carried over");
	config_free(c);
	return done_testing();
}
