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

	is_str(addr_domain("a@b.example"), "b.example", "domain part");
	ok(addr_domain_lower("a@B.Example.ORG", d, sizeof(d)) == 0 &&
	    strcmp(d, "b.example.org") == 0, "lower-cased domain");
	ok(addr_domain_lower("a@bbbbbbbbbbbbbbbbbbbbbb.org", d, sizeof(d)) == -1,
	    "lower-cased domain refuses a short buffer");
	return done_testing();
}
