/*
 * test_address.c - the address validator: RFC 5321 lengths, syntax, and
 * refusal of CR, LF, NUL, spaces and non-ASCII.
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

	limit_key("Alice+news@example.org", "+", "alice@example.org");
	limit_key("alice+a+b@example.org", "+", "alice@example.org");
	limit_key("+alice@example.org", "+", "+alice@example.org");
	limit_key("alice+news@example.org", "", "alice+news@example.org");
	limit_key("alice-news@example.org", "+-", "alice@example.org");
	limit_key("user@[IPv6:::1]", "+", "user@[IPv6:::1]");

	is_str(addr_domain("a@b.example"), "b.example", "domain part");
	ok(addr_domain_lower("a@B.Example.ORG", d, sizeof(d)) == 0 &&
	    strcmp(d, "b.example.org") == 0, "lower-cased domain");
	ok(addr_domain_lower("a@bbbbbbbbbbbbbbbbbbbbbb.org", d, sizeof(d)) == -1,
	    "lower-cased domain refuses a short buffer");
	return done_testing();
}
