/*
 * test_dkim.c - dkim/: keys made by dkim_keygen sign test messages (RSA and
 * Ed25519, both canonicalizations) and python3-dkim verifies them from the
 * printed TXT records (tests/dkim/verify.py); altered messages must fail;
 * bad key files must be refused with their name.  DKIM_BENCH=N also prints
 * signatures per second.
 */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "dkim/dkim_sign.h"
#include "dkim/dkim_int.h"
#include "tests/unit/tap.h"

#define VERIFY	"/usr/bin/python3 " SRCDIR "/tests/dkim/verify.py"

static char dir[] = "/tmp/test_dkim.XXXXXX";
static char rsa_file[256], ed_file[256], other_file[256];
static char *rsa_txt, *ed_txt, *other_txt;
static int have_verifier;

static void
path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
}

static int
write_file(const char *p, const char *data, size_t len, mode_t mode)
{
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd == -1)
		return -1;
	if (write(fd, data, len) != (ssize_t)len) {
		close(fd);
		return -1;
	}
	fchmod(fd, mode);
	return close(fd);
}

/* Writes sig + msg to a file and runs verify.py; returns its exit code. */
static int
verify(const char *sig, const char *msg, size_t len, int nsig,
    const char *extra_records)
{
	char file[300], cmd[4096], line[512];
	char *all;
	FILE *out;
	size_t slen = sig ? strlen(sig) : 0;
	int rc;

	path(file, sizeof(file), "msg.eml");
	if ((all = malloc(slen + len + 1)) == NULL)
		return -1;
	memcpy(all, sig, slen);
	memcpy(all + slen, msg, len);
	if (write_file(file, all, slen + len, 0600) == -1) {
		free(all);
		return -1;
	}
	free(all);
	snprintf(cmd, sizeof(cmd), VERIFY " -n %d"
	    " -r 'rsa1._domainkey.example.org=%s'"
	    " -r 'ed1._domainkey.example.org=%s'"
	    " -r 'sel._domainkey.other.example=%s' %s %s >%s.out 2>&1",
	    nsig, rsa_txt, ed_txt, other_txt, extra_records ? extra_records : "",
	    file, file);
	rc = system(cmd);
	snprintf(cmd, sizeof(cmd), "%s.out", file);
	if ((out = fopen(cmd, "r")) != NULL) {
		while (fgets(line, sizeof(line), out) != NULL)
			printf("#   %s", line);
		fclose(out);
	}
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

struct testmsg {
	const char	*name;
	const char	*text;
};

static const struct testmsg msgs[] = {
	{ "plain text",
	  "From: Example <noreply@example.org>\r\n"
	  "To: user@recipient.example\r\n"
	  "Subject: Your login code\r\n"
	  "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
	  "Message-ID: <1@example.org>\r\n"
	  "MIME-Version: 1.0\r\n"
	  "Content-Type: text/plain; charset=us-ascii\r\n"
	  "\r\n"
	  "Your code is 493817.\r\n"
	  ".leading dot line\r\n"
	  "\r\n"
	  "trailing spaces   \r\n" },
	{ "multipart OTP mail",
	  "From: \"Example App\" <noreply@example.org>\r\n"
	  "To: \"A. User\" <user@recipient.example>\r\n"
	  "Subject: Your login code\r\n"
	  "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n"
	  "Message-ID: <2@example.org>\r\n"
	  "MIME-Version: 1.0\r\n"
	  "Auto-Submitted: auto-generated\r\n"
	  "Content-Type: multipart/alternative; boundary=\"b1\"\r\n"
	  "\r\n"
	  "--b1\r\n"
	  "Content-Type: text/plain; charset=utf-8\r\n"
	  "Content-Transfer-Encoding: quoted-printable\r\n"
	  "\r\n"
	  "Your code is 493817. It expires in 10 minutes.=0D=0A\r\n"
	  "--b1\r\n"
	  "Content-Type: text/html; charset=utf-8\r\n"
	  "Content-Transfer-Encoding: base64\r\n"
	  "\r\n"
	  "PGh0bWw+PGJvZHk+PHA+WW91ciBjb2RlIGlzIDxiPjQ5MzgxNzwvYj48L3A+PC9ib2R5PjwvaHRt\r\n"
	  "bD4=\r\n"
	  "--b1--\r\n" },
	{ "8-bit UTF-8 body",
	  "From: =?utf-8?q?B=C3=A9b=C3=A9?= <noreply@example.org>\r\n"
	  "To: user@recipient.example\r\n"
	  "Subject: =?utf-8?q?Votre_code_de_connexion?=\r\n"
	  "MIME-Version: 1.0\r\n"
	  "Content-Type: text/plain; charset=utf-8\r\n"
	  "Content-Transfer-Encoding: 8bit\r\n"
	  "\r\n"
	  "Votre code est 493817. \xc3\x89t\xc3\xa9, na\xc3\xafve, \xe6\x97\xa5\xe6\x9c\xac, \xf0\x9f\x94\x91\r\n" },
	{ "long folded headers",
	  "From: noreply@example.org\r\n"
	  "To: first.recipient@recipient.example, second.recipient@recipient.example,\r\n"
	  "\tthird.recipient@recipient.example,\r\n"
	  "    fourth.recipient@recipient.example\r\n"
	  "Subject: A very long subject line that goes on and on and on and on and\r\n"
	  " on and on past the seventy-eight character recommendation of RFC 5322\r\n"
	  "References: <aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org>\r\n"
	  " <bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb@example.org>\r\n"
	  " <cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc@example.org>\r\n"
	  "\r\n"
	  "body\r\n" },
	{ "body without final newline",
	  "From: noreply@example.org\r\n"
	  "To: user@recipient.example\r\n"
	  "Subject: no newline\r\n"
	  "\r\n"
	  "line one\r\n"
	  "last line without newline" },
	{ "empty body",
	  "From: noreply@example.org\r\n"
	  "To: user@recipient.example\r\n"
	  "Subject: empty\r\n"
	  "\r\n" },
	{ "headers only, no separator",
	  "From: noreply@example.org\r\n"
	  "To: user@recipient.example\r\n"
	  "Subject: no body at all\r\n" },
};

static struct dkim_signer *
signer(const struct dkim_key_conf *keys, size_t n, int relaxed, char *err,
    size_t errlen)
{
	struct dkim_params p;

	memset(&p, 0, sizeof(p));
	p.keys = keys;
	p.nkeys = n;
	p.relaxed_header = relaxed;
	p.relaxed_body = relaxed;
	p.check_key_modes = 1;
	return dkim_signer_new(&p, err, errlen);
}

/* Signs msg, checks the status; returns the signature block. */
static char *
sign(struct dkim_signer *s, const char *msg, enum dkim_status want,
    const char **dom, const char *name)
{
	char err[512], tname[256], *sig = NULL;
	enum dkim_status st;

	st = dkim_sign_message(s, msg, strlen(msg), &sig, dom, err, sizeof(err));
	snprintf(tname, sizeof(tname), "%s: sign status %d", name, want);
	is_int(st, want, tname);
	if (st != want)
		diag("error: %s", err);
	return sig;
}

static void
test_messages(struct dkim_signer *s, const char *canon, int nsig)
{
	char name[256];
	const char *dom;
	size_t i;

	for (i = 0; i < sizeof(msgs) / sizeof(msgs[0]); i++) {
		char *sig;

		snprintf(name, sizeof(name), "%s, %s", msgs[i].name, canon);
		sig = sign(s, msgs[i].text, DKIM_SIGN_OK, &dom, name);
		if (sig == NULL) {
			ok(0, name);
			continue;
		}
		is_str(dom, "example.org", "signing domain is the From domain");
		ok(strncmp(sig, "DKIM-Signature: ", 16) == 0 &&
		    strcmp(sig + strlen(sig) - 2, "\r\n") == 0,
		    "signature block is whole header fields ending in CRLF");
		ok(strstr(sig, "\n") == NULL || strstr(sig, "\r\n") != NULL,
		    "no bare LF in the signature block");
		snprintf(name, sizeof(name), "%s, %s: python3-dkim verifies %d "
		    "signature(s)", msgs[i].name, canon, nsig);
		if (have_verifier)
			is_int(verify(sig, msgs[i].text, strlen(msgs[i].text),
			    nsig, NULL), 0, name);
		free(sig);
	}
}

static void
test_alterations(struct dkim_signer *s)
{
	const char *m = msgs[0].text;
	char *sig, *alt;
	size_t len = strlen(m);
	const char *p;

	sig = sign(s, m, DKIM_SIGN_OK, NULL, "alteration base");
	if (sig == NULL || !have_verifier)
		goto out;
	is_int(verify(sig, m, len, 2, NULL), 0, "unaltered message verifies");

	alt = strdup(m);
	p = strstr(alt, "493817");
	alt[p - alt] = '5';
	is_int(verify(sig, alt, len, 2, NULL), 1, "one body byte changed: fails");
	free(alt);

	alt = strdup(m);
	p = strstr(alt, "Your login code");
	alt[p - alt] = 'y';
	is_int(verify(sig, alt, len, 2, NULL), 1, "Subject changed: fails");
	free(alt);

	if (asprintf(&alt, "From: attacker@example.org\r\n%s", m) != -1) {
		is_int(verify(sig, alt, strlen(alt), 2, NULL), 1,
		    "added From header (top): fails (oversigned)");
		free(alt);
	}
	if (asprintf(&alt, "%.*sFrom: attacker@example.org\r\n%s",
	    (int)(strstr(m, "\r\n\r\n") + 2 - m), m,
	    strstr(m, "\r\n\r\n") + 2) != -1) {
		is_int(verify(sig, alt, strlen(alt), 2, NULL), 1,
		    "added From header (bottom): fails");
		free(alt);
	}
	if (asprintf(&alt, "Subject: other\r\n%s", m) != -1) {
		is_int(verify(sig, alt, strlen(alt), 2, NULL), 1,
		    "added Subject header: fails (oversigned)");
		free(alt);
	}
	if (asprintf(&alt, "X-Added: harmless\r\n%s", m) != -1) {
		is_int(verify(sig, alt, strlen(alt), 2, NULL), 0,
		    "added unsigned header: still verifies");
		free(alt);
	}
out:
	free(sig);
}

static void
test_domains(struct dkim_signer *s)
{
	static const struct { const char *from; int st; const char *dom; } t[] = {
		{ "From: a@example.org\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@EXAMPLE.ORG.\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@mail.example.org\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@x.y.mail.example.org\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@other.example\r\n", DKIM_SIGN_OK, "other.example" },
		{ "From: \"Evil <x@nokey.example>\" <a@example.org>\r\n",
		  DKIM_SIGN_OK, "example.org" },
		{ "From: \"x@nokey.example\" <a@example.org> (c@nokey.example)\r\n",
		  DKIM_SIGN_OK, "example.org" },
		{ "From: a@nokey.example (Example <b@example.org>)\r\n",
		  DKIM_SIGN_NOKEY, NULL },
		{ "From: Name\r\n <a@example.org>\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@(comment)example.org\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: \"quoted@nokey.example\"@example.org\r\n", DKIM_SIGN_OK,
		  "example.org" },
		{ "From: a@example.org, b@nokey.example\r\nSender: a@example.org\r\n",
		  DKIM_SIGN_OK, "example.org" },
		{ "From: Team: a@example.org;\r\n", DKIM_SIGN_OK, "example.org" },
		{ "From: a@notexample.org\r\n", DKIM_SIGN_NOKEY, NULL },
		{ "From: a@org\r\n", DKIM_SIGN_NOKEY, NULL },
		{ "From: a@[192.0.2.1]\r\n", DKIM_SIGN_BADMSG, NULL },
		{ "From: nobody\r\n", DKIM_SIGN_BADMSG, NULL },
		{ "To: a@example.org\r\n", DKIM_SIGN_BADMSG, NULL },
		{ "From: a@example.org\r\nFROM: b@example.org\r\n", DKIM_SIGN_BADMSG,
		  NULL },
		{ " folded first\r\nFrom: a@example.org\r\n", DKIM_SIGN_BADMSG, NULL },
		{ "From: a@example.org\r\nno colon here\r\n", DKIM_SIGN_BADMSG, NULL },
		{ "From: a@example.org\r\nBad\001Name: y\r\n", DKIM_SIGN_BADMSG, NULL },
	};
	char name[300], msg[512];
	const char *dom;
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char *sig;

		snprintf(msg, sizeof(msg), "%sSubject: s\r\n\r\nbody\r\n", t[i].from);
		snprintf(name, sizeof(name), "From case %zu", i + 1);
		dom = NULL;
		sig = sign(s, msg, t[i].st, &dom, name);
		if (t[i].dom != NULL) {
			is_str(dom, t[i].dom, "signing domain");
		} else
			ok(sig == NULL && dom == NULL, "no signature, no domain");
		if (sig != NULL && t[i].st == DKIM_SIGN_OK && have_verifier &&
		    strstr(t[i].from, "(c@") != NULL) {
			is_int(verify(sig, msg, strlen(msg),
			    strcmp(t[i].dom, "example.org") == 0 ? 2 : 1, NULL), 0,
			    "verifies");
		}
		free(sig);
	}

	/* subdomain signed with the parent's keys verifies */
	{
		const char *m = "From: App <a@mail.example.org>\r\nTo: b@c.example\r\n"
		    "Subject: sub\r\n\r\nhello\r\n";
		char *sig = sign(s, m, DKIM_SIGN_OK, &dom, "subdomain");

		ok(sig && strstr(sig, "d=example.org;"), "subdomain: d= is the parent");
		if (sig && have_verifier)
			is_int(verify(sig, m, strlen(m), 2, NULL), 0,
			    "subdomain signature verifies");
		free(sig);
	}
	/* other.example has one RSA key only: one signature */
	{
		const char *m = "From: a@other.example\r\nSubject: x\r\n\r\nhi\r\n";
		char *sig = sign(s, m, DKIM_SIGN_OK, &dom, "one-key domain");

		if (sig && have_verifier)
			is_int(verify(sig, m, strlen(m), 1, NULL), 0,
			    "one-key domain: one signature verifies");
		free(sig);
	}
}

static void
test_bad_keys(void)
{
	struct dkim_key_conf kc = { "example.org", "bad", DKIM_ALG_RSA_SHA256, NULL };
	struct dkim_signer *s;
	char f[300], err[512], cmd[1200];
	int fd;

	/* 0644 */
	path(f, sizeof(f), "world.key");
	snprintf(cmd, sizeof(cmd), "cp %s %s && chmod 644 %s", rsa_file, f, f);
	ok(system(cmd) == 0, "copy key");
	kc.keyfile = f;
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f) && strstr(err, "0644"),
	    "mode 0644 key refused, error names file and mode");
	diag("%s", err);
	ok(strstr(err, "BEGIN") == NULL, "no key material in the error");
	dkim_signer_free(s);
	chmod(f, 0640);
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f), "mode 0640 key refused");
	dkim_signer_free(s);

	/* garbage */
	path(f, sizeof(f), "garbage.key");
	write_file(f, "-----BEGIN PRIVATE KEY-----\nnot base64 at all!\n"
	    "-----END PRIVATE KEY-----\n", 73, 0600);
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f) && strstr(err, "not a PEM private key"),
	    "garbage key refused, error names file");
	diag("%s", err);
	dkim_signer_free(s);

	/* empty */
	path(f, sizeof(f), "empty.key");
	write_file(f, "", 0, 0600);
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f), "empty key file refused");
	dkim_signer_free(s);

	/* Ed25519 key declared RSA, RSA key declared Ed25519 */
	kc.keyfile = ed_file;
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, ed_file) && strstr(err, "Ed25519"),
	    "Ed25519 file declared rsa-sha256 refused");
	diag("%s", err);
	dkim_signer_free(s);
	kc.keyfile = rsa_file;
	kc.alg = DKIM_ALG_ED25519_SHA256;
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, rsa_file) && strstr(err, "RSA"),
	    "RSA file declared ed25519-sha256 refused");
	diag("%s", err);
	dkim_signer_free(s);

	/* missing, unreadable */
	path(f, sizeof(f), "missing.key");
	kc.keyfile = f;
	kc.alg = DKIM_ALG_RSA_SHA256;
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f) && strstr(err, "No such file"),
	    "missing key file refused, error names file");
	diag("%s", err);
	dkim_signer_free(s);
	path(f, sizeof(f), "adir.key");
	mkdir(f, 0700);
	s = signer(&kc, 1, 1, err, sizeof(err));
	ok(s == NULL && strstr(err, f), "a directory as key file refused");
	dkim_signer_free(s);
	if (geteuid() != 0) {
		path(f, sizeof(f), "unreadable.key");
		snprintf(cmd, sizeof(cmd), "cp %s %s && chmod 000 %s", rsa_file, f, f);
		system(cmd);
		s = signer(&kc, 1, 1, err, sizeof(err));
		ok(s == NULL && strstr(err, f) && strstr(err, "Permission denied"),
		    "unreadable key refused");
		dkim_signer_free(s);
	}

	/* small RSA key */
	path(f, sizeof(f), "small.key");
	snprintf(cmd, sizeof(cmd), "openssl genpkey -algorithm rsa -pkeyopt "
	    "rsa_keygen_bits:768 -out %s 2>/dev/null && chmod 600 %s", f, f);
	if (system(cmd) == 0) {
		s = signer(&kc, 1, 1, err, sizeof(err));
		ok(s == NULL && strstr(err, f) && strstr(err, "768"),
		    "768-bit RSA key refused");
		dkim_signer_free(s);
	}

	/* a PKCS#1 ("BEGIN RSA PRIVATE KEY") key from openssl is accepted */
	path(f, sizeof(f), "pkcs1.key");
	snprintf(cmd, sizeof(cmd), "openssl genrsa -traditional -out %s 1024 "
	    "2>/dev/null && chmod 600 %s", f, f);
	if (system(cmd) == 0) {
		s = signer(&kc, 1, 1, err, sizeof(err));
		ok(s != NULL, "PKCS#1 RSA key accepted");
		dkim_signer_free(s);
	}

	/* bad domain / selector / duplicate */
	{
		struct dkim_key_conf two[2] = {
			{ "example.org", "s1", DKIM_ALG_RSA_SHA256, rsa_file },
			{ "example.org", "s1", DKIM_ALG_ED25519_SHA256, ed_file },
		};
		s = signer(two, 2, 1, err, sizeof(err));
		ok(s == NULL && strstr(err, "twice"), "duplicate selector refused");
		dkim_signer_free(s);
		two[0].domain = "bad domain";
		s = signer(two, 1, 1, err, sizeof(err));
		ok(s == NULL && strstr(err, "bad domain"), "bad domain refused");
		dkim_signer_free(s);
		two[0].domain = "example.org";
		two[0].selector = "a;b";
		s = signer(two, 1, 1, err, sizeof(err));
		ok(s == NULL && strstr(err, "bad selector"), "bad selector refused");
		dkim_signer_free(s);
	}
	(void)fd;
}

/* Configured lists (as the config gives them: any case), no oversigning. */
static void
test_header_lists(void)
{
	static const char *const sh[] = { "Subject", "To", NULL };
	static const char *const none[] = { NULL };
	static const char *const over[] = { "Subject", NULL };
	struct dkim_key_conf kc = { "example.org", "rsa1", DKIM_ALG_RSA_SHA256,
	    rsa_file };
	struct dkim_params p;
	struct dkim_signer *s;
	char err[256], *sig;
	const char *m = "From: a@example.org\r\nTo: b@c.example\r\nSubject: s\r\n"
	    "Date: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n";

	memset(&p, 0, sizeof(p));
	p.keys = &kc;
	p.nkeys = 1;
	p.relaxed_header = p.relaxed_body = 1;
	p.sign_headers = sh;
	p.oversign_headers = none;
	s = dkim_signer_new(&p, err, sizeof(err));
	ok(s != NULL, "signer with a configured header list");
	sig = s ? sign(s, m, DKIM_SIGN_OK, NULL, "configured list") : NULL;
	ok(sig && strstr(sig, "h=From:To:Subject;"),
	    "From is always signed; Date is not in the list; no oversigning");
	free(sig);
	dkim_signer_free(s);

	p.oversign_headers = over;
	s = dkim_signer_new(&p, err, sizeof(err));
	sig = s ? sign(s, m, DKIM_SIGN_OK, NULL, "oversign Subject") : NULL;
	if (!ok(sig && strcasestr(sig, "h=From:To:Subject:subject;"),
	    "oversigning only Subject"))
		diag("%s", sig ? sig : "(none)");
	free(sig);
	dkim_signer_free(s);
}

static void
test_keygen(void)
{
	char f[300], err[512], *txt = NULL, *rec;
	struct stat st;
	mode_t old;

	ok(rsa_txt && strncmp(rsa_txt, "v=DKIM1; k=rsa; p=MII", 21) == 0,
	    "RSA record: v=DKIM1; k=rsa; p=<SPKI>");
	ok(ed_txt && strncmp(ed_txt, "v=DKIM1; k=ed25519; p=", 22) == 0 &&
	    strlen(ed_txt) == 22 + 44, "Ed25519 record: p= is 32 raw bytes");
	ok(stat(rsa_file, &st) == 0 && (st.st_mode & 0777) == 0600,
	    "RSA key written mode 0600");
	ok(stat(ed_file, &st) == 0 && (st.st_mode & 0777) == 0600,
	    "Ed25519 key written mode 0600");

	rec = dkim_key_record(rsa_file, DKIM_ALG_RSA_SHA256, err, sizeof(err));
	is_str(rec, rsa_txt, "dkim_key_record matches the keygen record (RSA)");
	free(rec);
	rec = dkim_key_record(ed_file, DKIM_ALG_ED25519_SHA256, err, sizeof(err));
	is_str(rec, ed_txt, "dkim_key_record matches the keygen record (Ed25519)");
	free(rec);

	ok(dkim_keygen(DKIM_ALG_RSA_SHA256, 2048, rsa_file, &txt, err,
	    sizeof(err)) == -1 && txt == NULL && strstr(err, "exists"),
	    "keygen never overwrites a key");
	diag("%s", err);
	path(f, sizeof(f), "k512.key");
	ok(dkim_keygen(DKIM_ALG_RSA_SHA256, 512, f, &txt, err, sizeof(err)) == -1 &&
	    strstr(err, "1024"), "keygen refuses 512-bit RSA");
	ok(access(f, F_OK) == -1, "nothing written");
	path(f, sizeof(f), "nodir/x.key");
	ok(dkim_keygen(DKIM_ALG_ED25519_SHA256, 0, f, &txt, err, sizeof(err)) == -1 &&
	    strstr(err, f), "keygen into a missing directory fails naming it");
	old = umask(0);
	path(f, sizeof(f), "umask.key");
	ok(dkim_keygen(DKIM_ALG_ED25519_SHA256, 0, f, &txt, err, sizeof(err)) == 0 &&
	    stat(f, &st) == 0 && (st.st_mode & 0777) == 0600,
	    "key is 0600 even with umask 0");
	umask(old);
	free(txt);

	is_str(dkim_alg_name(DKIM_ALG_RSA_SHA256), "rsa-sha256", "alg name rsa");
	is_str(dkim_alg_name(DKIM_ALG_ED25519_SHA256), "ed25519-sha256",
	    "alg name ed25519");
	is_int(dkim_alg_parse("ed25519"), DKIM_ALG_ED25519_SHA256, "parse ed25519");
	is_int(dkim_alg_parse("RSA-SHA256"), DKIM_ALG_RSA_SHA256, "parse rsa-sha256");
	is_int(dkim_alg_parse("rsa-sha1"), -1, "rsa-sha1 unknown");
}

static void
test_info(struct dkim_signer *s)
{
	struct dkim_key_info ki;

	is_int(dkim_signer_nkeys(s), 3, "three keys loaded");
	ok(dkim_signer_key(s, 1, &ki) == 0 && strcmp(ki.selector, "ed1") == 0 &&
	    ki.alg == DKIM_ALG_ED25519_SHA256 && strcmp(ki.txt, ed_txt) == 0,
	    "key info: selector, algorithm and record");
	ok(dkim_signer_key(s, 0, &ki) == 0 && ki.bits == 2048, "RSA bits");
	ok(dkim_signer_key(s, 3, &ki) == -1, "out of range");
}

#define THREADS	4
#define PER_THREAD	40

struct thr {
	struct dkim_signer	*s;
	int			 failures;
	char			*last;
};

static void *
thr_main(void *arg)
{
	struct thr *t = arg;
	char err[256], *sig;
	int i;

	for (i = 0; i < PER_THREAD; i++) {
		if (dkim_sign_message(t->s, msgs[i % 7].text, strlen(msgs[i % 7].text),
		    &sig, NULL, err, sizeof(err)) != DKIM_SIGN_OK) {
			t->failures++;
			continue;
		}
		free(t->last);
		t->last = sig;
	}
	return NULL;
}

/* One signer, one DKIM_LIB, the cached keys: shared by threads. */
static void
test_threads(struct dkim_signer *s)
{
	pthread_t th[THREADS];
	struct thr t[THREADS];
	int i, fails = 0, verified = 0;
	size_t last = (PER_THREAD - 1) % 7;

	for (i = 0; i < THREADS; i++) {
		t[i] = (struct thr){ s, 0, NULL };
		pthread_create(&th[i], NULL, thr_main, &t[i]);
	}
	for (i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		fails += t[i].failures;
		if (t[i].last && have_verifier &&
		    verify(t[i].last, msgs[last].text, strlen(msgs[last].text), 2,
		    NULL) == 0)
			verified++;
		free(t[i].last);
	}
	is_int(fails, 0, "threads: every signature made");
	if (have_verifier)
		is_int(verified, THREADS, "threads: each thread's last message verifies");
}

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
bench(int n)
{
	struct dkim_key_conf rsa = { "example.org", "rsa1", DKIM_ALG_RSA_SHA256,
	    rsa_file };
	struct dkim_key_conf ed = { "example.org", "ed1", DKIM_ALG_ED25519_SHA256,
	    ed_file };
	struct dkim_signer *s;
	char err[256], *sig;
	double t;
	int i;

	s = signer(&rsa, 1, 1, err, sizeof(err));
	t = now();
	for (i = 0; i < n; i++) {
		dkim_sign_message(s, msgs[1].text, strlen(msgs[1].text), &sig, NULL,
		    err, sizeof(err));
		free(sig);
	}
	diag("bench: RSA-2048 %.0f signatures/s", n / (now() - t));
	dkim_signer_free(s);
	s = signer(&ed, 1, 1, err, sizeof(err));
	t = now();
	for (i = 0; i < n; i++) {
		dkim_sign_message(s, msgs[1].text, strlen(msgs[1].text), &sig, NULL,
		    err, sizeof(err));
		free(sig);
	}
	diag("bench: Ed25519 %.0f signatures/s", n / (now() - t));
	dkim_signer_free(s);
}

int
main(void)
{
	struct dkim_key_conf keys[3];
	struct dkim_signer *s;
	char err[512];
	const char *b;

	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		return 1;
	}
	have_verifier = system("/usr/bin/python3 -c 'import dkim, nacl.signing' "
	    "2>/dev/null") == 0;
	if (!have_verifier)
		diag("python3-dkim or python3-nacl missing: verification skipped");
	ok(have_verifier, "python3-dkim with Ed25519 support is available");

	path(rsa_file, sizeof(rsa_file), "example.org.rsa1.key");
	path(ed_file, sizeof(ed_file), "example.org.ed1.key");
	path(other_file, sizeof(other_file), "other.example.sel.key");
	ok(dkim_keygen(DKIM_ALG_RSA_SHA256, 0, rsa_file, &rsa_txt, err,
	    sizeof(err)) == 0, "keygen RSA 2048");
	ok(dkim_keygen(DKIM_ALG_ED25519_SHA256, 0, ed_file, &ed_txt, err,
	    sizeof(err)) == 0, "keygen Ed25519");
	ok(dkim_keygen(DKIM_ALG_RSA_SHA256, 1024, other_file, &other_txt, err,
	    sizeof(err)) == 0, "keygen RSA 1024");
	if (!rsa_txt || !ed_txt || !other_txt) {
		diag("keygen failed: %s", err);
		return done_testing();
	}

	keys[0] = (struct dkim_key_conf){ "example.org", "rsa1",
	    DKIM_ALG_RSA_SHA256, rsa_file };
	keys[1] = (struct dkim_key_conf){ "Example.ORG", "ed1",
	    DKIM_ALG_ED25519_SHA256, ed_file };
	keys[2] = (struct dkim_key_conf){ "other.example", "sel",
	    DKIM_ALG_RSA_SHA256, other_file };

	s = signer(keys, 3, 1, err, sizeof(err));
	ok(s != NULL, "signer with RSA + Ed25519 keys (relaxed/relaxed)");
	if (s == NULL) {
		diag("%s", err);
		return done_testing();
	}
	test_info(s);
	{
		unsigned long h0 = dkim_keycache_hits();
		char *sig = sign(s, msgs[0].text, DKIM_SIGN_OK, NULL, "key cache");

		ok(dkim_keycache_hits() == h0 + 2, "libopendkim got both parsed "
		    "keys from the cache (no PEM parsing per message)");
		free(sig);
	}
	test_messages(s, "relaxed/relaxed", 2);
	test_threads(s);
	test_alterations(s);
	test_domains(s);
	dkim_signer_free(s);

	s = signer(keys, 3, 0, err, sizeof(err));
	ok(s != NULL, "signer with simple/simple");
	if (s != NULL) {
		test_messages(s, "simple/simple", 2);
		dkim_signer_free(s);
	}

	/* what libopendkim leaves behind is reclaimed, and only for Ed25519 */
	{
		struct dkim_signer *r1 = signer(&keys[0], 1, 1, err, sizeof(err));
		struct dkim_signer *e1 = signer(&keys[1], 1, 1, err, sizeof(err));
		unsigned long c0;
		char *sig;

		c0 = dkim_sign_reclaimed();
		sig = r1 ? sign(r1, msgs[0].text, DKIM_SIGN_OK, NULL, "RSA only") : NULL;
		free(sig);
		is_int(dkim_sign_reclaimed() - c0, 0, "RSA: libopendkim frees everything");
		c0 = dkim_sign_reclaimed();
		sig = e1 ? sign(e1, msgs[0].text, DKIM_SIGN_OK, NULL, "Ed25519 only") : NULL;
		ok(dkim_sign_reclaimed() - c0 >= 1,
		    "Ed25519: the key context libopendkim leaves is freed by us");
		if (sig && have_verifier)
			is_int(verify(sig, msgs[0].text, strlen(msgs[0].text), 1, NULL),
			    0, "Ed25519-only signature verifies");
		free(sig);
		dkim_signer_free(r1);
		dkim_signer_free(e1);
	}

	/* reload: a new signer with the same keys, then the old one freed */
	{
		struct dkim_signer *a = signer(keys, 3, 1, err, sizeof(err));
		struct dkim_signer *b = signer(keys, 3, 1, err, sizeof(err));
		unsigned long h0;
		char *sig;

		ok(a && b, "two signers with the same keys (reload)");
		dkim_signer_free(a);
		h0 = dkim_keycache_hits();
		sig = b ? sign(b, msgs[0].text, DKIM_SIGN_OK, NULL, "after reload") : NULL;
		ok(dkim_keycache_hits() == h0 + 2, "the new signer's keys are cached");
		if (sig && have_verifier)
			is_int(verify(sig, msgs[0].text, strlen(msgs[0].text), 2, NULL),
			    0, "after the old signer is freed, signatures verify");
		free(sig);
		dkim_signer_free(b);
	}

	/* a signer with no keys signs nothing */
	s = signer(NULL, 0, 1, err, sizeof(err));
	ok(s != NULL, "signer without keys");
	{
		char *sig = sign(s, msgs[0].text, DKIM_SIGN_NOKEY, NULL, "no keys");
		ok(sig == NULL, "no keys: no signature");
	}
	dkim_signer_free(s);

	test_keygen();
	test_header_lists();
	test_bad_keys();
	if ((b = getenv("DKIM_BENCH")) != NULL)
		bench(atoi(b));

	{
		char cmd[300];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		system(cmd);
	}
	free(rsa_txt);
	free(ed_txt);
	free(other_txt);
	return done_testing();
}
