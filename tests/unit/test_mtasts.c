/*
 * test_mtasts.c - agent/delivery/mtasts.c without the network: the policy
 * parser (valid, hostile and malformed files), the TXT record parser, MX
 * pattern matching (wildcards cover one label only), and the TLS-RPT
 * counters.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/delivery/dlproto.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/tlsrpt.h"
#include "tests/unit/tap.h"

static int
parse(const char *text, struct mtasts_policy *p, char *err, size_t errlen)
{
	return mtasts_parse(text, strlen(text), p, err, errlen);
}

static void
test_policy(void)
{
	struct mtasts_policy p;
	char err[128], *big;
	int r;

	r = parse("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
	    "mx: *.example.net\r\nmax_age: 604800\r\n", &p, err, sizeof(err));
	ok(r == 0, "RFC 8461 example policy parses");
	is_int(p.mode, MTASTS_ENFORCE, "mode enforce");
	is_int(p.max_age, 604800, "max_age");
	is_int(p.nmx, 2, "two mx patterns");
	is_str(p.mx[1], "*.example.net", "wildcard pattern kept");

	r = parse("version: STSv1\nmode: testing\nmx: MX.Example.COM.\nmax_age:86400\n"
	    "extension: whatever\n", &p, err, sizeof(err));
	ok(r == 0 && p.mode == MTASTS_TESTING, "LF lines, unknown field ignored, testing");
	is_str(p.mx[0], "mx.example.com", "pattern lower-cased, trailing dot dropped");
	ok(parse("version: STSv1\nmode: none\nmax_age: 0\n", &p, err, sizeof(err)) == 0 &&
	    p.mode == MTASTS_NONE, "mode none needs no mx");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 99999999999\nmx: a.b\n", &p,
	    err, sizeof(err)) == -1, "max_age of 11 digits refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 9999999999\nmx: a.b\n", &p,
	    err, sizeof(err)) == 0 && p.max_age == MTASTS_MAX_AGE_MAX,
	    "max_age capped at a year");
	ok(parse("version: STSv2\nmode: enforce\nmax_age: 1\nmx: a.b\n", &p, err,
	    sizeof(err)) == -1, "unknown version refused");
	ok(parse("mode: enforce\nmax_age: 1\nmx: a.b\n", &p, err, sizeof(err)) == -1,
	    "missing version refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 1\n", &p, err, sizeof(err)) == -1,
	    "enforce without mx refused");
	ok(parse("version: STSv1\nmode: enforcing\nmax_age: 1\nmx: a.b\n", &p, err,
	    sizeof(err)) == -1, "unknown mode refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: -1\nmx: a.b\n", &p, err,
	    sizeof(err)) == -1, "negative max_age refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 1\nmx: a.*.b\n", &p, err,
	    sizeof(err)) == -1, "inner wildcard refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 1\nmx: *\n", &p, err,
	    sizeof(err)) == -1, "bare * refused");
	ok(parse("version: STSv1\nmode: enforce\nmax_age: 1\nmx: a b\n", &p, err,
	    sizeof(err)) == -1, "space in pattern refused");
	ok(parse("<html>not found</html>", &p, err, sizeof(err)) == -1,
	    "an HTML page is not a policy");
	ok(mtasts_parse("version: STSv1\n\0mode: enforce\n", 24, &p, err,
	    sizeof(err)) == -1, "NUL byte refused");
	big = malloc(MTASTS_POLICY_MAX + 2);
	memset(big, 'a', MTASTS_POLICY_MAX + 1);
	big[MTASTS_POLICY_MAX + 1] = '\0';
	ok(parse(big, &p, err, sizeof(err)) == -1, "oversized policy refused");
	free(big);
}

static void
test_txt(void)
{
	char id[MTASTS_ID_MAX + 1];

	ok(mtasts_txt_id("v=STSv1; id=20160831085700Z;", id, sizeof(id)) == 0 &&
	    strcmp(id, "20160831085700Z") == 0, "TXT record id");
	ok(mtasts_txt_id("v=STSv1;id=abc", id, sizeof(id)) == 0 && strcmp(id, "abc") == 0,
	    "TXT without spaces");
	is_int(mtasts_txt_id("v=spf1 -all", id, sizeof(id)), 1, "SPF record is not STS");
	is_int(mtasts_txt_id("v=STSv1;", id, sizeof(id)), -1, "no id: malformed");
	is_int(mtasts_txt_id("v=STSv1; id=a-b", id, sizeof(id)), -1, "id not alnum");
	is_int(mtasts_txt_id("v=STSv1; id=123456789012345678901234567890123", id,
	    sizeof(id)), -1, "id of 33 chars refused");
	is_int(mtasts_txt_id("v=STSv1; id=a; id=b", id, sizeof(id)), -1, "two ids refused");
	is_int(mtasts_txt_id("v=STSv10; id=a", id, sizeof(id)), 1, "v=STSv10 is not STSv1");
}

static void
test_match(void)
{
	struct mtasts_policy p;
	char err[128];

	parse("version: STSv1\nmode: enforce\nmax_age: 1\nmx: mail.example.com\n"
	    "mx: *.example.net\n", &p, err, sizeof(err));
	ok(mtasts_mx_match(&p, "mail.example.com"), "exact match");
	ok(mtasts_mx_match(&p, "MAIL.example.com."), "case and trailing dot");
	ok(!mtasts_mx_match(&p, "evil.example.com"), "other host refused");
	ok(mtasts_mx_match(&p, "mx1.example.net"), "wildcard: one label");
	ok(!mtasts_mx_match(&p, "a.mx1.example.net"), "wildcard: not two labels");
	ok(!mtasts_mx_match(&p, "example.net"), "wildcard: not the parent");
	ok(!mtasts_mx_match(&p, "mail.example.com.evil.org"), "suffix trick refused");
}

static void
test_tlsrpt(void)
{
	struct mtasts_policy p;
	unsigned long okc, fail;
	char err[128];

	parse("version: STSv1\nmode: enforce\nmax_age: 100\nmx: mail.example.com\n",
	    &p, err, sizeof(err));
	snprintf(p.id, sizeof(p.id), "x1");
	tlsrpt_record("example.com", TLSRPT_STS, &p, "mail.example.com", "127.0.0.1", NULL);
	tlsrpt_record("example.com", TLSRPT_STS, &p, "mail.example.com", "127.0.0.1", NULL);
	tlsrpt_record("example.com", TLSRPT_STS, &p, "mail.example.com", "127.0.0.1",
	    "certificate-host-mismatch");
	tlsrpt_record("example.org", TLSRPT_NOPOLICY, NULL, "mx.example.org", NULL,
	    "starttls-not-supported");
	tlsrpt_counts("example.com", &okc, &fail);
	ok(okc == 2 && fail == 1, "TLS-RPT: 2 successes, 1 failure for example.com");
	tlsrpt_counts("example.org", &okc, &fail);
	ok(okc == 0 && fail == 1, "TLS-RPT: domains counted apart");
}

/* What the main process takes from the fetch process (fetch.c, dlproto.c). */
static void
test_fetch_frames(void)
{
	struct mtasts_policy p, q;
	struct dlp_frep f, g;
	struct dlp_buf b;
	char err[128], *text;

	parse("version: STSv1\r\nmode: testing\r\nmx: *.Example.com.\r\nmx: b.example.com\r\n"
	    "max_age: 600\r\nextra: x\r\n", &p, err, sizeof(err));
	text = mtasts_policy_text(&p);
	ok(text != NULL && strcmp(text, "version: STSv1\nmode: testing\nmax_age: 600\n"
	    "mx: *.example.com\nmx: b.example.com\n") == 0, "canonical text of a policy");
	ok(text != NULL && parse(text, &q, err, sizeof(err)) == 0 && q.mode == p.mode &&
	    q.max_age == 600 && q.nmx == 2, "which parses back to the same policy");
	free(text);
	memset(&f, 0, sizeof(f));
	f.kind = DLP_FETCH_STS;
	f.why = "";
	f.rtype = "";
	f.pol = p;
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == 0 && dlp_frep_decode(b.p + 4, b.len - 4, &g) == 0 &&
	    g.pol.nmx == 2 && strcmp(g.pol.mx[0], "*.example.com") == 0 &&
	    g.pol.max_age == 600, "an STS reply goes through the frame");
	dlp_frep_free(&g);
	/* a hostile reply: max_age out of range, a mode that does not exist */
	b.p[4 + 5 * 4 + 4 + 3] = 9;	/* kind, id, status, why, rtype, ntxt: the mode */
	ok(dlp_frep_decode(b.p + 4, b.len - 4, &g) == -1, "an unknown mode is refused");
	dlp_buf_free(&b);
	/* an mx pattern the parser refuses does not survive the main process's check */
	snprintf(p.mx[0], sizeof(p.mx[0]), "a.*.b");
	text = mtasts_policy_text(&p);
	ok(text != NULL && parse(text, &q, err, sizeof(err)) == -1,
	    "a bad pattern from the fetch process is refused by the re-parse");
	free(text);
}

int
main(void)
{
	test_policy();
	test_txt();
	test_match();
	test_tlsrpt();
	test_fetch_frames();
	return done_testing();
}
