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
/* The domain part (after the last '@'), or "" if none. */
const char	*addr_domain(const char *addr);
/* Lower-cased copy of the domain part into out; -1 if it does not fit. */
int		 addr_domain_lower(const char *addr, char *out, size_t len);

#endif
