/*
 * address.c - the one mailbox validator (RFC 5321 syntax and lengths).
 * Nothing that fails here reaches a header, an SMTP command or the store.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "agent/mail/address.h"

static int	addr_local_ok(const char *, size_t, char *, size_t);
static int	addr_domain_ok(const char *, size_t, char *, size_t);

/* RFC 5322 atext */
static int
addr_atext(int c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

static int
addr_local_ok(const char *s, size_t len, char *err, size_t errlen)
{
	size_t i;

	if (len == 0) {
		snprintf(err, errlen, "empty local part");
		return -1;
	}
	if (len > ADDR_LOCAL_MAX) {
		snprintf(err, errlen, "local part longer than %d bytes", ADDR_LOCAL_MAX);
		return -1;
	}
	if (s[0] == '"') {
		/* quoted-string: printable ASCII, \ escapes a printable char */
		if (len < 2 || s[len - 1] != '"') {
			snprintf(err, errlen, "unterminated quoted local part");
			return -1;
		}
		for (i = 1; i < len - 1; i++) {
			if (s[i] == '\\') {
				if (++i >= len - 1 || s[i] < 0x20 || s[i] > 0x7e)
					goto bad;
			} else if (s[i] == '"' || s[i] < 0x20 || s[i] > 0x7e)
				goto bad;
		}
		return 0;
	}
	if (s[0] == '.' || s[len - 1] == '.') {
		snprintf(err, errlen, "local part starts or ends with a dot");
		return -1;
	}
	for (i = 0; i < len; i++) {
		if (s[i] == '.') {
			if (s[i + 1] == '.') {
				snprintf(err, errlen, "local part has two dots in a row");
				return -1;
			}
			continue;
		}
		if (!addr_atext((unsigned char)s[i]))
			goto bad;
	}
	return 0;
bad:
	snprintf(err, errlen, "local part holds a character not allowed in an address");
	return -1;
}

static int
addr_domain_ok(const char *d, size_t len, char *err, size_t errlen)
{
	char lit[ADDR_DOMAIN_MAX + 1], tmp[16];
	size_t i, label = 0, dots = 0;

	if (len == 0) {
		snprintf(err, errlen, "empty domain");
		return -1;
	}
	if (len > ADDR_DOMAIN_MAX) {
		snprintf(err, errlen, "domain longer than %d bytes", ADDR_DOMAIN_MAX);
		return -1;
	}
	if (d[0] == '[') {
		if (d[len - 1] != ']' || len - 2 >= sizeof(lit))
			goto badlit;
		memcpy(lit, d + 1, len - 2);
		lit[len - 2] = '\0';
		if (strncasecmp(lit, "IPv6:", 5) == 0) {
			if (inet_pton(AF_INET6, lit + 5, tmp) == 1)
				return 0;
		} else if (inet_pton(AF_INET, lit, tmp) == 1)
			return 0;
badlit:
		snprintf(err, errlen, "bad address literal");
		return -1;
	}
	for (i = 0; i <= len; i++) {
		if (i == len || d[i] == '.') {
			if (label == 0) {
				snprintf(err, errlen, "domain has an empty label");
				return -1;
			}
			if (label > 63) {
				snprintf(err, errlen, "domain label longer than 63 bytes");
				return -1;
			}
			if (d[i - 1] == '-') {
				snprintf(err, errlen, "domain label ends with a hyphen");
				return -1;
			}
			if (i < len)
				dots++;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)d[i]) && d[i] != '-') {
			snprintf(err, errlen, "domain holds a character other than "
			    "letters, digits, hyphens and dots");
			return -1;
		}
		if (label == 0 && d[i] == '-') {
			snprintf(err, errlen, "domain label starts with a hyphen");
			return -1;
		}
		label++;
	}
	if (dots == 0) {
		snprintf(err, errlen, "domain has no dot");
		return -1;
	}
	return 0;
}

int
addr_validate(const char *addr, char *err, size_t errlen)
{
	const char *at;
	size_t len, i;

	if (addr == NULL || *addr == '\0') {
		snprintf(err, errlen, "empty address");
		return -1;
	}
	len = strnlen(addr, ADDR_PATH_MAX + 1);
	if (len > ADDR_PATH_MAX) {
		snprintf(err, errlen, "address longer than %d bytes", ADDR_PATH_MAX);
		return -1;
	}
	for (i = 0; i < len; i++) {
		unsigned char c = addr[i];
		if (c < 0x20 || c == 0x7f) {
			snprintf(err, errlen, "address holds a control character");
			return -1;
		}
		if (c >= 0x80) {
			snprintf(err, errlen, "internationalised addresses are not "
			    "supported yet");
			return -1;
		}
	}
	at = strrchr(addr, '@');
	if (at == NULL) {
		snprintf(err, errlen, "address has no @");
		return -1;
	}
	if (addr_local_ok(addr, at - addr, err, errlen) == -1)
		return -1;
	return addr_domain_ok(at + 1, len - (at + 1 - addr), err, errlen);
}

const char *
addr_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');

	return at == NULL ? "" : at + 1;
}

int
addr_domain_lower(const char *addr, char *out, size_t len)
{
	const char *d = addr_domain(addr);
	size_t i, n = strlen(d);

	if (n + 1 > len)
		return -1;
	for (i = 0; i <= n; i++)
		out[i] = tolower((unsigned char)d[i]);
	return 0;
}
