/*
 * address.c - the one mailbox validator (RFC 5321 syntax and lengths).
 * Nothing that fails here reaches a header, an SMTP command or the store.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <idn2.h>
#include <unicase.h>
#include <uninorm.h>

#include "agent/mail/address.h"

static int	addr_local_ok(const char *, size_t, int, char *, size_t);
static size_t	addr_utf8_seq(const unsigned char *, size_t);
static int	addr_domain_ok(const char *, size_t, char *, size_t);
static int	addr_unquote(const char *, size_t, int, char *, size_t, char *, size_t);
#define ADDR_NO_UTF8_WHY	"internationalised local parts (SMTPUTF8, RFC 6531) " \
	"are off: the admin may turn them on with smtputf8 = yes"

static int	addr_canon_domain(const char *, int, char *, size_t, char *, size_t);
static int	addr_nfc(char *, size_t, char *, size_t);
static int	addr_limit_fold(const char *, size_t, const char *, char *, size_t);

/* RFC 5322 atext */
static int
addr_atext(int c)
{
	return isalnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/*
 * The length of the well-formed UTF-8 sequence of a non-ASCII character
 * at s (RFC 3629: no overlong forms, no surrogates, nothing above
 * U+10FFFF), 0 if there is none.  The C1 controls (U+0080-U+009F) count
 * as none: RFC 6532 3.2 keeps control characters out of addresses.
 */
static size_t
addr_utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 0;
	if (s[0] == 0xc2)
		lo = 0xa0;		/* U+0080-U+009F: C1 controls */
	else if (s[0] == 0xe0)
		lo = 0xa0;		/* overlong */
	else if (s[0] == 0xed)
		hi = 0x9f;		/* surrogates */
	else if (s[0] == 0xf0)
		lo = 0x90;		/* overlong */
	else if (s[0] == 0xf4)
		hi = 0x8f;		/* above U+10FFFF */
	if (len > n || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	return len;
}

int
addr_is_utf8(const char *addr)
{
	for (; *addr != '\0'; addr++)
		if ((unsigned char)*addr >= 0x80)
			return 1;
	return 0;
}

static int
addr_local_ok(const char *s, size_t len, int utf8, char *err, size_t errlen)
{
	size_t i, k;

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
			if (utf8 && (unsigned char)s[i] >= 0x80) {
				if ((k = addr_utf8_seq((const unsigned char *)s + i,
				    len - 1 - i)) == 0)
					goto badutf8;
				i += k - 1;
			} else if (s[i] == '\\') {
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
		if (utf8 && (unsigned char)s[i] >= 0x80) {
			/* RFC 6531 3.3: atext =/ UTF8-non-ascii */
			if ((k = addr_utf8_seq((const unsigned char *)s + i, len - i)) == 0)
				goto badutf8;
			i += k - 1;
			continue;
		}
		if (!addr_atext((unsigned char)s[i]))
			goto bad;
	}
	return 0;
badutf8:
	snprintf(err, errlen, "local part is not well-formed UTF-8 or holds a "
	    "control character");
	return -1;
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
	return addr_validate_flags(addr, 0, err, errlen);
}

int
addr_validate_flags(const char *addr, int flags, char *err, size_t errlen)
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
		if (c >= 0x80 && !(flags & ADDR_ALLOW_UTF8)) {
			snprintf(err, errlen, "internationalised addresses (SMTPUTF8) "
			    "are not allowed here");
			return -1;
		}
	}
	at = strrchr(addr, '@');
	if (at == NULL) {
		snprintf(err, errlen, "address has no @");
		return -1;
	}
	if (addr_local_ok(addr, at - addr, (flags & ADDR_ALLOW_UTF8) != 0, err,
	    errlen) == -1)
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

/*
 * A quoted local part without its quotes and escapes, if the result is a
 * dot-atom; ADDR_REFUSED if it needs the quotes (the queue and the SMTP
 * client carry only dot-atoms), ADDR_BAD if it is malformed.
 */
static int
addr_unquote(const char *s, size_t len, int utf8, char *out, size_t outlen, char *why,
    size_t wl)
{
	char err[128];
	size_t i, n = 0;

	if (len < 2 || s[len - 1] != '"') {
		snprintf(why, wl, "unterminated quoted local part");
		return ADDR_BAD;
	}
	for (i = 1; i < len - 1; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '\\' && i + 1 < len - 1)
			c = (unsigned char)s[++i];
		else if (c == '\\' || c == '"') {
			snprintf(why, wl, "malformed quoted local part");
			return ADDR_BAD;
		}
		if (c >= 0x80 && !utf8) {
			snprintf(why, wl, ADDR_NO_UTF8_WHY);
			return ADDR_REFUSED;
		}
		if (n + 1 >= outlen) {
			snprintf(why, wl, "local part longer than %d bytes", ADDR_LOCAL_MAX);
			return ADDR_BAD;
		}
		out[n++] = (char)c;
	}
	out[n] = '\0';
	if (n == 0) {
		snprintf(why, wl, "empty local part");
		return ADDR_BAD;
	}
	/* a dot-atom: addr_local_ok would take a leading quote as a new
	 * quoted string */
	if (out[0] == '"' || addr_local_ok(out, n, utf8, err, sizeof(err)) == -1) {
		snprintf(why, wl, "a quoted local part that needs its quotes (spaces, "
		    "quotes, backslashes, \"(),:;<>@[]\" or dots out of place) is not "
		    "supported: use a plain local part such as user.name");
		return ADDR_REFUSED;
	}
	return 0;
}

/* The domain as a lower-case A-label name or the one printed form of an
 * address literal. */
static int
addr_canon_domain(const char *d, int flags, char *out, size_t outlen, char *why, size_t wl)
{
	unsigned char bin[16];
	char lit[ADDR_DOMAIN_MAX + 1], txt[INET6_ADDRSTRLEN], *a = NULL;
	const char *last;
	size_t n = strlen(d), i;
	int rc, idn = 0, v6;

	if (d[0] == '[') {
		if (n < 3 || d[n - 1] != ']' || n - 2 >= sizeof(lit))
			goto badlit;
		memcpy(lit, d + 1, n - 2);
		lit[n - 2] = '\0';
		v6 = strncasecmp(lit, "IPv6:", 5) == 0;
		if (inet_pton(v6 ? AF_INET6 : AF_INET, v6 ? lit + 5 : lit, bin) != 1 ||
		    inet_ntop(v6 ? AF_INET6 : AF_INET, bin, txt, sizeof(txt)) == NULL)
			goto badlit;
		if (!(flags & ADDR_ALLOW_LITERAL)) {
			snprintf(why, wl, "address literals (user@[192.0.2.1]) are refused; "
			    "the admin may allow them with allow_address_literals");
			return ADDR_REFUSED;
		}
		if ((size_t)snprintf(out, outlen, "[%s%s]", v6 ? "IPv6:" : "", txt) >= outlen)
			goto badlit;
		return 0;
badlit:
		snprintf(why, wl, "bad address literal");
		return ADDR_BAD;
	}
	for (i = 0; i < n; i++)
		if ((unsigned char)d[i] >= 0x80 || ((i == 0 || d[i - 1] == '.') &&
		    strncasecmp(d + i, "xn--", 4) == 0))
			idn = 1;
	if (idn) {
		rc = idn2_to_ascii_8z(d, &a, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
		if (rc != IDN2_OK) {
			snprintf(why, wl, "the domain is not a valid internationalised "
			    "name: %s", idn2_strerror(rc));
			return ADDR_BAD;
		}
		d = a;
		n = strlen(d);
	}
	if (n + 1 > outlen) {
		idn2_free(a);
		snprintf(why, wl, "domain longer than %d bytes", ADDR_DOMAIN_MAX);
		return ADDR_BAD;
	}
	for (i = 0; i <= n; i++)
		out[i] = (char)tolower((unsigned char)d[i]);
	idn2_free(a);
	/* RFC 1123 2.1: a top-level label is never all digits. */
	last = strrchr(out, '.');
	last = last ? last + 1 : out;
	if (*last != '\0' && strspn(last, "0123456789") == strlen(last)) {
		snprintf(why, wl, "%s is an IP address, not a domain: address literals "
		    "(user@[192.0.2.1]) are refused unless the admin allows them with "
		    "allow_address_literals", out);
		return ADDR_REFUSED;
	}
	return 0;
}

/*
 * A UTF-8 local part in Unicode Normalization Form C, in place (RFC 6530
 * 10.1: one form of a mailbox name, "j\xc3\xb6rg" whether the app sent
 * U+00F6 or o + U+0308).  -1 if it is not UTF-8 or does not fit.
 */
static int
addr_nfc(char *local, size_t size, char *why, size_t wl)
{
	uint8_t buf[ADDR_LOCAL_MAX * 2 + 8], *r;
	size_t n = sizeof(buf) - 1, i, k;

	/* libunistring turns what is not UTF-8 into U+FFFD: check first */
	for (i = 0; local[i] != '\0'; i += k)
		if ((k = (unsigned char)local[i] < 0x80 ? 1 : addr_utf8_seq(
		    (const unsigned char *)local + i, strlen(local + i))) == 0) {
			snprintf(why, wl, "local part is not well-formed UTF-8 or "
			    "holds a control character");
			return -1;
		}
	r = u8_normalize(UNINORM_NFC, (const uint8_t *)local, strlen(local), buf, &n);
	if (r == NULL || r != buf || n >= size) {
		if (r != buf)
			free(r);
		snprintf(why, wl, "local part longer than %d bytes", ADDR_LOCAL_MAX);
		return -1;
	}
	memcpy(local, buf, n);
	local[n] = '\0';
	return 0;
}

int
addr_canonical(const char *in, int flags, char *out, size_t outlen, char *why, size_t wl)
{
	char local[ADDR_LOCAL_MAX * 2 + 8], domain[ADDR_DOMAIN_MAX + 1];
	const char *at;
	size_t len, i, ll;
	int rc;

	if (in == NULL || *in == '\0') {
		snprintf(why, wl, "empty address");
		return ADDR_BAD;
	}
	/* a U-label domain may be longer than its A-label: bounded at 4x */
	if ((len = strnlen(in, 4 * ADDR_PATH_MAX + 1)) > 4 * ADDR_PATH_MAX) {
		snprintf(why, wl, "address longer than %d bytes", ADDR_PATH_MAX);
		return ADDR_BAD;
	}
	for (i = 0; i < len; i++)
		if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f) {
			snprintf(why, wl, "address holds a control character");
			return ADDR_BAD;
		}
	if ((at = strrchr(in, '@')) == NULL) {
		snprintf(why, wl, "address has no @");
		return ADDR_BAD;
	}
	ll = (size_t)(at - in);
	if (ll > 0 && in[0] == '"') {
		if ((rc = addr_unquote(in, ll, (flags & ADDR_ALLOW_UTF8) != 0, local,
		    sizeof(local), why, wl)) != 0)
			return rc;
	} else {
		if (ll >= sizeof(local)) {
			snprintf(why, wl, "local part longer than %d bytes", ADDR_LOCAL_MAX);
			return ADDR_BAD;
		}
		for (i = 0; i < ll && !(flags & ADDR_ALLOW_UTF8); i++)
			if ((unsigned char)in[i] >= 0x80) {
				snprintf(why, wl, ADDR_NO_UTF8_WHY);
				return ADDR_REFUSED;
			}
		memcpy(local, in, ll);
		local[ll] = '\0';
	}
	if (addr_is_utf8(local) && addr_nfc(local, sizeof(local), why, wl) == -1)
		return ADDR_BAD;
	if (at[1] == '\0') {
		snprintf(why, wl, "empty domain");
		return ADDR_BAD;
	}
	if ((rc = addr_canon_domain(at + 1, flags, domain, sizeof(domain), why, wl)) != 0)
		return rc;
	if ((size_t)snprintf(out, outlen, "%s@%s", local, domain) >= outlen) {
		snprintf(why, wl, "address longer than %d bytes", ADDR_PATH_MAX);
		return ADDR_BAD;
	}
	return addr_validate_flags(out, flags & ADDR_ALLOW_UTF8, why, wl) == 0 ? 0 : ADDR_BAD;
}

/*
 * The limit key of a UTF-8 local part: NFKC case folding (Unicode
 * toNFKC_Casefold), so "J\xc3\x96RG", "j\xc3\xb6rg" and their fullwidth or
 * decomposed forms spend one budget, as ASCII case variants do.
 */
static int
addr_limit_fold(const char *local, size_t n, const char *at, char *out, size_t outlen)
{
	uint8_t *r;
	size_t len = outlen;

	r = u8_casefold((const uint8_t *)local, n, NULL, UNINORM_NFKC, (uint8_t *)out, &len);
	if (r == NULL || r != (uint8_t *)out || len + strlen(at) + 1 > outlen) {
		if (r != (uint8_t *)out)
			free(r);
		return -1;
	}
	snprintf(out + len, outlen - len, "%s", at);
	return 0;
}

int
addr_limit_key(const char *canonical, const char *tag_seps, char *out, size_t outlen)
{
	const char *at = strrchr(canonical, '@');
	size_t ll, i, cut;

	if (at == NULL || strlen(canonical) + 1 > outlen)
		return -1;
	ll = (size_t)(at - canonical);
	cut = ll;
	if (tag_seps != NULL && *tag_seps != '\0')
		for (i = 1; i < ll; i++)
			if (strchr(tag_seps, canonical[i]) != NULL) {
				cut = i;
				break;
			}
	for (i = 0; i < cut; i++)
		if ((unsigned char)canonical[i] >= 0x80)
			return addr_limit_fold(canonical, cut, at, out, outlen);
	for (i = 0; i < cut; i++)
		out[i] = (char)tolower((unsigned char)canonical[i]);
	snprintf(out + cut, outlen - cut, "%s", at);
	return 0;
}
