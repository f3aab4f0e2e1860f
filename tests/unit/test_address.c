/*
 * test_address.c - the address validator: RFC 5321 lengths, syntax, and
 * refusal of CR, LF, NUL, spaces and non-ASCII; UTF-8 local parts
 * (SMTPUTF8, RFC 6531) only with ADDR_ALLOW_UTF8.
 */
#include <string.h>

#include "agent/mail/address.h"
#include "tests/unit/tap.h"

static void
good(const char *a)
{
	char err[128] = "", name[400];

	snprintf(name, sizeof(name), "accepts %s", a);
	if (!ok(addr_validate(a, err, sizeof(err)) == 0, name))
		diag("%s", err);
}

/* addr_canonical(in) gives want (rc 0), or fails with rc and why. */
static void
canon(const char *in, int flags, int rc_want, const char *want)
{
	char out[300] = "", why[256] = "", name[600];
	int rc = addr_canonical(in, flags, out, sizeof(out), why, sizeof(why));

	snprintf(name, sizeof(name), "canonical %s -> %s", in, want);
	if (rc_want == 0) {
		if (!ok(rc == 0 && strcmp(out, want) == 0, name))
			diag("rc %d out \"%s\" why \"%s\"", rc, out, why);
	} else if (!ok(rc == rc_want && strstr(why, want) != NULL, name))
		diag("rc %d (want %d) why \"%s\"", rc, rc_want, why);
}

/* addr_validate_flags with ADDR_ALLOW_UTF8: 0 or -1 with why in err */
static void
utf8(const char *a, int want, const char *why, const char *name)
{
	char err[128] = "";
	int rc = addr_validate_flags(a, ADDR_ALLOW_UTF8, err, sizeof(err));

	if (!ok(rc == want && (want == 0 || strstr(err, why) != NULL), name))
		diag("rc %d err \"%s\"", rc, err);
}

static void
limit_key(const char *in, const char *seps, const char *want)
{
	char out[300] = "", name[600];

	snprintf(name, sizeof(name), "limit key %s [%s] -> %s", in, seps, want);
	ok(addr_limit_key(in, seps, out, sizeof(out)) == 0 && strcmp(out, want) == 0, name);
}

static void
bad(const char *a, const char *why, const char *name)
{
	char err[128] = "";

	ok(addr_validate(a, err, sizeof(err)) == -1, name);
	if (!ok(strstr(err, why) != NULL, "  ...and says why"))
		diag("error \"%s\", want \"%s\"", err, why);
}

int
main(void)
{
	char buf[600], d[16];

	good("user@example.org");
	good("first.last+tag@sub.example.co.uk");
	good("\"quoted local\"@example.org");
	good("x@[127.0.0.1]");
	good("x@[IPv6:::1]");
	good("o'brien@example.org");

	bad("", "empty", "empty address");
	bad("userexample.org", "no @", "no @");
	bad("@example.org", "empty local", "empty local part");
	bad("user@", "empty domain", "empty domain");
	bad("user@localhost", "no dot", "domain without a dot");
	bad("user@exa mple.org", "character", "space in domain");
	bad("us er@example.org", "not allowed", "space in local part");
	bad("user@example.org\r\nRCPT TO:<x@y.z>", "control", "CR LF injection");
	bad("user@example.org\n", "control", "bare LF");
	bad("us\ter@example.org", "control", "tab");
	bad("j\xc3\xb6rg@example.org", "internationalised", "non-ASCII");
	bad(".user@example.org", "dot", "leading dot");
	bad("us..er@example.org", "two dots", "double dot");
	bad("user@-example.org", "hyphen", "label starts with hyphen");
	bad("user@example-.org", "hyphen", "label ends with hyphen");
	bad("user@example..org", "empty label", "empty label");
	bad("user@[999.1.1.1]", "literal", "bad address literal");
	bad("\"unterminated@example.org", "quoted", "unterminated quote");

	memset(buf, 'a', 65);
	strcpy(buf + 65, "@example.org");
	bad(buf, "local part longer than 64", "local part of 65 bytes");
	memset(buf, 'a', 64);
	strcpy(buf + 64, "@example.org");
	good(buf);

	/* a 256-byte domain; labels of 63 */
	strcpy(buf, "u@");
	while (strlen(buf) < 2 + 252)
		strcat(buf, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.");
	buf[2 + 256] = '\0';
	bad(buf, "longer", "domain over 255 bytes");
	memset(buf, 'a', 300);
	buf[300] = '\0';
	buf[10] = '@';
	bad(buf, "longer", "address over 256 bytes");

	/* one mailbox, one form */
	canon("alice@example.org", 0, 0, "alice@example.org");
	canon("Alice@EXAMPLE.Org", 0, 0, "Alice@example.org");
	canon("\"alice\"@example.org", 0, 0, "alice@example.org");
	canon("\"al\\ice\"@example.org", 0, 0, "alice@example.org");
	canon("\"first.last\"@example.org", 0, 0, "first.last@example.org");
	canon("alice+1@example.org", 0, 0, "alice+1@example.org");
	canon("bob@b\xc3\xbc""cher.example", 0, 0, "bob@xn--bcher-kva.example");
	canon("bob@B\xc3\x9c""CHER.example", 0, 0, "bob@xn--bcher-kva.example");
	canon("bob@XN--BCHER-KVA.example", 0, 0, "bob@xn--bcher-kva.example");
	/* fullwidth letters map to ASCII (UTS #46) */
	canon("bob@\xef\xbd\x85xample.org", 0, 0, "bob@example.org");
	canon("bob@xn--zz-zzzz.example", 0, ADDR_BAD, "internationalised");
	canon("bob@exa mple.org", 0, ADDR_BAD, "");
	/* quotes that are needed: a clear refusal, not a queue error */
	canon("\"q p\"@example.org", 0, ADDR_REFUSED, "needs its quotes");
	canon("\"a@b\"@example.org", 0, ADDR_REFUSED, "needs its quotes");
	canon("\"..\"@example.org", 0, ADDR_REFUSED, "needs its quotes");
	canon("\"\"@example.org", 0, ADDR_BAD, "empty local");
	/* found by fuzz_addr: the unquoted text is itself a quoted string */
	canon("\"\\\"x\\\"\"@example.org", 0, ADDR_REFUSED, "needs its quotes");
	canon("\"j\xc3\xb6rg\"@example.org", 0, ADDR_REFUSED, "SMTPUTF8");
	canon("j\xc3\xb6rg@example.org", 0, ADDR_REFUSED, "SMTPUTF8");
	/* no mail to the inside */
	canon("user@[127.0.0.1]", 0, ADDR_REFUSED, "address literals");
	canon("user@[IPv6:::1]", 0, ADDR_REFUSED, "address literals");
	canon("user@[169.254.169.254]", 0, ADDR_REFUSED, "address literals");
	canon("user@127.0.0.1", 0, ADDR_REFUSED, "IP address");
	canon("user@127.0.0.1", ADDR_ALLOW_LITERAL, ADDR_REFUSED, "IP address");
	canon("user@[192.0.2.1]", ADDR_ALLOW_LITERAL, 0, "user@[192.0.2.1]");
	canon("user@[ipv6:2001:DB8:0::1]", ADDR_ALLOW_LITERAL, 0, "user@[IPv6:2001:db8::1]");
	canon("user@[999.0.0.1]", ADDR_ALLOW_LITERAL, ADDR_BAD, "literal");
	canon("user@[127.0.0.1", ADDR_ALLOW_LITERAL, ADDR_BAD, "literal");
	canon("user@example.org\r\nRCPT TO:<x@y.z>", 0, ADDR_BAD, "control");
	canon("userexample.org", 0, ADDR_BAD, "no @");
	canon("user@", 0, ADDR_BAD, "empty domain");
	canon("user@localhost", 0, ADDR_BAD, "no dot");

	/* SMTPUTF8: a UTF-8 local part, the domain as its A-label */
	canon("j\xc3\xb6rg@example.org", ADDR_ALLOW_UTF8, 0, "j\xc3\xb6rg@example.org");
	canon("J\xc3\x96rg@B\xc3\x9c""CHER.example", ADDR_ALLOW_UTF8, 0,
	    "J\xc3\x96rg@xn--bcher-kva.example");
	canon("\"j\xc3\xb6rg\"@example.org", ADDR_ALLOW_UTF8, 0, "j\xc3\xb6rg@example.org");
	canon("\xe7\x94\xa8\xe6\x88\xb7@example.org", ADDR_ALLOW_UTF8, 0,
	    "\xe7\x94\xa8\xe6\x88\xb7@example.org");
	canon("\xf0\x9f\x98\x80.x@example.org", ADDR_ALLOW_UTF8, 0,
	    "\xf0\x9f\x98\x80.x@example.org");
	canon("j\xc3\xb6rg@example.org", ADDR_ALLOW_LITERAL, ADDR_REFUSED, "smtputf8 = yes");
	/* NFC: o + U+0308 is U+00F6 */
	canon("jo\xcc\x88rg@example.org", ADDR_ALLOW_UTF8, 0, "j\xc3\xb6rg@example.org");
	canon("\"jo\xcc\x88rg\"@example.org", ADDR_ALLOW_UTF8, 0, "j\xc3\xb6rg@example.org");
	canon("j\xc3@example.org", ADDR_ALLOW_UTF8, ADDR_BAD, "UTF-8");
	canon("j\xc2\x85rg@example.org", ADDR_ALLOW_UTF8, ADDR_BAD, "control");
	canon("j\xc3\xb6 rg@example.org", ADDR_ALLOW_UTF8, ADDR_BAD, "not allowed");
	canon("\"j\xc3\xb6 rg\"@example.org", ADDR_ALLOW_UTF8, ADDR_REFUSED, "needs its quotes");
	canon("j\xc3\xb6rg@example.org\r\nRCPT TO:<x@y.z>", ADDR_ALLOW_UTF8, ADDR_BAD,
	    "control");
	utf8("j\xc3\xb6rg@example.org", 0, "", "UTF-8 local part with the flag");
	utf8("j\xc3\xb6rg.m\xc3\xbcller+tag@example.org", 0, "", "dots and a tag");
	utf8("\"j\xc3\xb6rg x\"@example.org", 0, "", "UTF-8 in a quoted local part");
	utf8("j\xc3\xb6rg@b\xc3\xbc""cher.example", -1, "domain holds",
	    "a U-label domain is not the A-label");
	utf8("j\xc0\xb6rg@example.org", -1, "UTF-8", "overlong form");
	utf8("j\xe0\x80\xafrg@example.org", -1, "UTF-8", "overlong 3-byte slash");
	utf8("j\xed\xa0\x80rg@example.org", -1, "UTF-8", "surrogate");
	utf8("j\xf4\x90\x80\x80@example.org", -1, "UTF-8", "above U+10FFFF");
	utf8("j\xff@example.org", -1, "UTF-8", "0xff byte");
	utf8("j\xc3\xb6\xc3@example.org", -1, "UTF-8", "truncated sequence");
	utf8("j\xc2\x9b@example.org", -1, "control", "C1 control (CSI)");
	utf8("j\xc3\xb6\r\n@example.org", -1, "control", "CR LF after UTF-8");
	utf8(".j\xc3\xb6rg@example.org", -1, "dot", "leading dot");
	ok(addr_is_utf8("j\xc3\xb6rg@example.org") && !addr_is_utf8("jorg@example.org"),
	    "addr_is_utf8");
	/* the limits are in octets: 32 x U+00F6 is 64, 33 is 66 */
	for (buf[0] = '\0'; strlen(buf) < 64; )
		strcat(buf, "\xc3\xb6");
	strcat(buf, "@example.org");
	utf8(buf, 0, "", "64-octet UTF-8 local part");
	canon(buf, ADDR_ALLOW_UTF8, 0, buf);
	memmove(buf + 2, buf, strlen(buf) + 1);
	memcpy(buf, "\xc3\xb6", 2);
	utf8(buf, -1, "longer than 64", "66-octet UTF-8 local part");
	canon(buf, ADDR_ALLOW_UTF8, ADDR_BAD, "longer than 64");

	limit_key("Alice+news@example.org", "+", "alice@example.org");
	limit_key("alice+a+b@example.org", "+", "alice@example.org");
	limit_key("+alice@example.org", "+", "+alice@example.org");
	limit_key("alice+news@example.org", "", "alice+news@example.org");
	limit_key("alice-news@example.org", "+-", "alice@example.org");
	limit_key("user@[IPv6:::1]", "+", "user@[IPv6:::1]");
	/* UTF-8: NFKC case folding, so case, width and composition variants of
	 * one mailbox spend one budget */
	limit_key("J\xc3\x96RG+x@example.org", "+", "j\xc3\xb6rg@example.org");
	limit_key("jo\xcc\x88rg@example.org", "+", "j\xc3\xb6rg@example.org");
	limit_key("\xef\xbc\xaa\xc3\xb6rg@example.org", "", "j\xc3\xb6rg@example.org");
	limit_key("stra\xc3\x9f""e@example.org", "", "strasse@example.org");
	ok(addr_limit_key("J\xc3\x96RG@example.org", "", buf, 12) == -1,
	    "limit key of a UTF-8 local part refuses a short buffer");

	is_str(addr_domain("a@b.example"), "b.example", "domain part");
	ok(addr_domain_lower("a@B.Example.ORG", d, sizeof(d)) == 0 &&
	    strcmp(d, "b.example.org") == 0, "lower-cased domain");
	ok(addr_domain_lower("a@bbbbbbbbbbbbbbbbbbbbbb.org", d, sizeof(d)) == -1,
	    "lower-cased domain refuses a short buffer");
	return done_testing();
}
