/*
 * address.h - the one address validator.  Every address that reaches a
 * header, an SMTP command or the store passes here first.
 */
#ifndef OTPMAIL_ADDRESS_H
#define OTPMAIL_ADDRESS_H

#include <stddef.h>

#define ADDR_LOCAL_MAX	64	/* RFC 5321 4.5.3.1.1 */
#define ADDR_DOMAIN_MAX	255	/* RFC 5321 4.5.3.1.2 */
#define ADDR_PATH_MAX	256	/* RFC 5321 4.5.3.1.3, without the <> */

/*
 * Checks a bare mailbox (local@domain): lengths, dot-atom or quoted local
 * part, a domain of LDH labels with at least one dot, or an address literal.
 * No CR, LF, NUL, spaces or non-ASCII (internationalised addresses are
 * refused for now).  Returns 0, or -1 with a reason in err.
 */
int		 addr_validate(const char *addr, char *err, size_t errlen);
/*
 * addr_validate with flags: ADDR_ALLOW_UTF8 also takes a local part of
 * UTF-8 (RFC 6531 3.3: atext or any non-ASCII character; well-formed
 * UTF-8, no overlong forms, surrogates or C1 controls; the limits in
 * octets).  The domain stays ASCII (its A-label).
 */
int		 addr_validate_flags(const char *addr, int flags, char *err, size_t errlen);
/* 1 if the address holds a non-ASCII byte (it needs SMTPUTF8), else 0. */
int		 addr_is_utf8(const char *addr);
/* The domain part (after the last '@'), or "" if none. */
const char	*addr_domain(const char *addr);
/* Lower-cased copy of the domain part into out; -1 if it does not fit. */
int		 addr_domain_lower(const char *addr, char *out, size_t len);

/* addr_canonical: outcomes besides 0 */
#define ADDR_BAD	(-1)	/* not an address: bad_request */
#define ADDR_REFUSED	(-2)	/* an address otpmail will not send to: bad_address */
/* addr_canonical flags */
#define ADDR_ALLOW_LITERAL	0x01	/* user@[192.0.2.1], user@[IPv6:...] */
#define ADDR_ALLOW_UTF8		0x02	/* a UTF-8 local part (SMTPUTF8, RFC 6531) */

/*
 * The one form of an address that reaches the store, the queue and SMTP:
 * the domain lower-cased and IDNA-normalised to its A-label (libidn2,
 * IDNA2008 with UTS #46 mapping, so "B\xc3\x9cCHER.example" and
 * "xn--bcher-kva.example" are one domain), a quoted local part unquoted
 * when it needs no quotes ("alice"@ is alice@), an address literal
 * rewritten in its one printed form.  Refused (ADDR_REFUSED, with why):
 * address literals without ADDR_ALLOW_LITERAL, a domain whose last label
 * is numeric (user@127.0.0.1), local parts that need quotes, and local
 * parts that are not ASCII unless ADDR_ALLOW_UTF8 (then in Unicode NFC,
 * RFC 6530 10.1).  The local part keeps its case and +tag: it names the
 * mailbox.
 */
int		 addr_canonical(const char *in, int flags, char *out, size_t outlen,
		    char *why, size_t whylen);
/*
 * The key a person's limits and lock-outs are counted under, from a
 * canonical address: the local part lower-cased (a UTF-8 one NFKC
 * case-folded: "J\xc3\x96RG" counts as "j\xc3\xb6rg") and, when tag_seps is not
 * empty, cut at the first of those characters that is not its first
 * ("alice+news" -> "alice").  -1 if out is too small.
 */
int		 addr_limit_key(const char *canonical, const char *tag_seps, char *out,
		    size_t outlen);

#endif
