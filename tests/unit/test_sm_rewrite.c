/*
 * test_sm_rewrite.c - otpmail-sendmail's address and message rewriting
 * (agent/tools/sm_rewrite.c): address lists with comments, groups and
 * quotes, origin qualification of headers, aliases (nesting, loops,
 * unsupported targets), and 8-bit bodies made UTF-8 (also on random bytes).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/tools/sm.h"
#include "tests/unit/tap.h"

static char *
joined(const struct sm_list *l)
{
	static char out[1024];
	size_t i;

	out[0] = '\0';
	for (i = 0; i < l->n; i++)
		snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s", i ? "|" : "",
		    l->v[i]);
	return out;
}

static void
test_lists(void)
{
	struct sm_list l = { NULL, 0 };
	const char *s = "Alice <alice@example.org>, root (Cron Daemon), \"Last, First\" "
	    "<lf@example.org>, team: a@x.org, b@x.org;, undisclosed-recipients:;, "
	    "(only a comment), c@x.org (C (nested) comment), ALICE@example.org";

	sm_addr_list(&l, s, strlen(s));
	is_str(joined(&l), "alice@example.org|root|lf@example.org|a@x.org|b@x.org|c@x.org",
	    "address list: angles, comments, quotes, groups, duplicates");
	sm_list_free(&l);
	sm_addr_list(&l, "<<<>>>, \"unterminated, (((", 27);
	ok(l.n <= 2, "garbage lists end without crashing");
	sm_list_free(&l);
}

static void
test_headers(void)
{
	const char *m = "From: root (Cron Daemon)\nTo: root, Bob <bob>,\n\tcarol@x.org\n"
	    "Subject: root stays\nX-Cron-Env: <SHELL=/bin/sh>\n\nTo: body is not touched\n";
	size_t len;
	char *r = sm_rewrite_headers(m, strlen(m), "example.com", &len);

	is_str(r, "From: root@example.com (Cron Daemon)\nTo: root@example.com, "
	    "Bob <bob@example.com>,\n\tcarol@x.org\nSubject: root stays\n"
	    "X-Cron-Env: <SHELL=/bin/sh>\n\nTo: body is not touched\n",
	    "From/To qualified, folding kept, other fields and the body untouched");
	is_int(len, strlen(r), "length");
	free(r);
	r = sm_qualify("root", "example.com");
	is_str(r, "root@example.com", "qualify a name");
	free(r);
	r = sm_qualify("a@b.org", "example.com");
	is_str(r, "a@b.org", "a qualified address stays");
	free(r);
}

static void
test_aliases(void)
{
	char path[] = "/tmp/otpmail-aliases-XXXXXX", err[256];
	struct sm_list out = { NULL, 0 };
	struct sm_aliases *a;
	FILE *f;
	int fd = mkstemp(path);

	f = fdopen(fd, "w");
	fputs("# comment\nroot: admin@example.org\npostmaster: root\nops: root,\n"
	    "  oncall@example.net, ops\nloop1: loop2\nloop2: loop1\npipe: |/bin/cat\n"
	    "Mixed: m@example.org\nnocolon line\n", f);
	fclose(f);
	a = sm_aliases_load(path, NULL, err, sizeof(err));
	ok(a != NULL, "aliases load");
	is_int(sm_aliases_count(a), 7, "7 entries (the line without a colon is skipped)");
	sm_resolve(a, "example.com", "postmaster", &out);
	is_str(joined(&out), "admin@example.org", "postmaster -> root -> admin");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "ops", &out);
	is_str(joined(&out), "admin@example.org|oncall@example.net|ops@example.com",
	    "nested, continuation line, self reference");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "loop1", &out);
	ok(out.n <= 1, "an alias loop ends");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "pipe", &out);
	is_str(joined(&out), "pipe@example.com", "|command is not run: the name itself");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "mixed@localhost", &out);
	is_str(joined(&out), "m@example.org", "@localhost is local; names match any case");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "\\root", &out);
	is_str(joined(&out), "root@example.com", "\\root is never aliased");
	sm_list_free(&out);
	sm_resolve(a, "example.com", "user@remote.org", &out);
	is_str(joined(&out), "user@remote.org", "remote addresses pass");
	sm_list_free(&out);
	sm_aliases_free(a);
	unlink(path);
	a = sm_aliases_load("/nonexistent/aliases", NULL, err, sizeof(err));
	ok(a != NULL && sm_aliases_count(a) == 0, "a missing file is an empty table");
	sm_aliases_free(a);
}

static void
test_8bit(void)
{
	const char *latin = "Subject: caf\xe9\nContent-Type: text/plain; charset=latin1\n"
	    "Content-Transfer-Encoding: 8bit\n\ncaf\xe9 cr\xe8me\n";
	const char *mp = "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"XX\"\n\n"
	    "pre\n--XX\nContent-Type: text/plain; charset=utf-8\n\nd\xc3\xa9j\xc3\xa0\n--XX\n"
	    "Content-Type: text/plain; charset=iso-8859-1\n\nd\xe9j\xe0\n--XX--\nepi\n";
	size_t len, i, n;
	char *r, buf[512];

	ok(sm_utf8_valid("d\xc3\xa9j\xc3\xa0", 6), "UTF-8 is valid");
	ok(!sm_utf8_valid("\xe9", 1) && !sm_utf8_valid("\xc0\x80", 2) &&
	    !sm_utf8_valid("\xed\xa0\x80", 3), "Latin-1, overlong, surrogate are not");
	r = sm_make_utf8(latin, strlen(latin), &len);
	ok(sm_utf8_valid(r, len), "result is UTF-8");
	ok(strstr(r, "Subject: caf\xc3\xa9\n") != NULL, "a header's stray byte read as Latin-1");
	ok(strstr(r, "Content-Transfer-Encoding: quoted-printable") != NULL &&
	    strstr(r, "8bit") == NULL, "the CTE is replaced");
	ok(strstr(r, "caf=E9 cr=E8me") != NULL, "the body is quoted-printable, bytes kept");
	ok(strstr(r, "charset=latin1") != NULL, "the charset label is kept");
	free(r);
	r = sm_make_utf8(mp, strlen(mp), &len);
	ok(sm_utf8_valid(r, len), "multipart result is UTF-8");
	ok(strstr(r, "d\xc3\xa9j\xc3\xa0") != NULL, "the UTF-8 part is untouched");
	ok(strstr(r, "d=E9j=E0") != NULL, "the Latin-1 part is quoted-printable");
	ok(strstr(r, "--XX--") != NULL && strstr(r, "epi") != NULL, "delimiters kept");
	free(r);
	srand(17);
	for (i = 0, n = 0; i < 2000; i++) {
		size_t k, l = (size_t)(rand() % (int)sizeof(buf));
		for (k = 0; k < l; k++)
			buf[k] = (char)(rand() % 5 == 0 ? "\n:<>\"(),;-"[rand() % 10] : rand());
		r = sm_make_utf8(buf, l, &len);
		n += sm_utf8_valid(r, len);
		free(r);
		r = sm_rewrite_headers(buf, l, "example.com", &len);
		free(r);
	}
	is_int(n, 2000, "2000 random messages: always valid UTF-8, no crash");
}

int
main(void)
{
	test_lists();
	test_headers();
	test_aliases();
	test_8bit();
	return done_testing();
}
