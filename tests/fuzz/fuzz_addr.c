/*
 * fuzz_addr.c - libFuzzer target for the one address validator
 * (addr_validate), the canonical form (addr_canonical, addr_limit_key)
 * and its helpers.  Oracles: an accepted address is
 * NUL-terminated within ADDR_PATH_MAX, holds no control, space-less
 * outside quotes, no 8-bit byte, has a local part and a domain within the
 * RFC 5321 limits, and addr_domain/addr_domain_lower agree with it.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mail/address.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *a, err[256], dom[ADDR_DOMAIN_MAX + 1];
	const char *d, *at;
	size_t len, i;

	if ((a = malloc(size + 1)) == NULL)
		return 0;
	memcpy(a, data, size);
	a[size] = '\0';
	err[0] = '\0';
	if (addr_validate(a, err, sizeof(err)) == 0) {
		len = strlen(a);
		if (len == 0 || len > ADDR_PATH_MAX)
			abort();
		for (i = 0; i < len; i++)
			if ((unsigned char)a[i] < 0x20 || (unsigned char)a[i] >= 0x7f)
				abort();	/* CR, LF, NUL, DEL, 8-bit */
		if ((at = strrchr(a, '@')) == NULL || at == a)
			abort();
		if ((size_t)(at - a) > ADDR_LOCAL_MAX)
			abort();
		d = addr_domain(a);
		if (d != at + 1 || *d == '\0' || strlen(d) > ADDR_DOMAIN_MAX)
			abort();
		if (addr_domain_lower(a, dom, sizeof(dom)) != 0)
			abort();
		for (i = 0; d[i] != '\0'; i++)
			if (dom[i] != tolower((unsigned char)d[i]))
				abort();
		/* A domain that is not a literal is LDH labels only. */
		if (d[0] != '[')
			for (i = 0; d[i] != '\0'; i++)
				if (!isalnum((unsigned char)d[i]) && d[i] != '-' && d[i] != '.')
					abort();
	} else if (err[0] == '\0')
		abort();	/* a refusal always says why */
	/*
	 * addr_canonical: what it gives passes the validator, is ASCII, is
	 * its own canonical form, and has a limit key no longer than itself.
	 */
	{
		char c1[ADDR_PATH_MAX + 1], c2[ADDR_PATH_MAX + 1], k[ADDR_PATH_MAX + 1];
		int rc;

		err[0] = '\0';
		rc = addr_canonical(a, ADDR_ALLOW_LITERAL, c1, sizeof(c1), err, sizeof(err));
		if (rc != 0 && (err[0] == '\0' || (rc != ADDR_BAD && rc != ADDR_REFUSED)))
			abort();
		if (rc == 0) {
			if (addr_validate(c1, err, sizeof(err)) != 0)
				abort();
			if (addr_canonical(c1, ADDR_ALLOW_LITERAL, c2, sizeof(c2), err,
			    sizeof(err)) != 0 || strcmp(c1, c2) != 0)
				abort();
			if (addr_limit_key(c1, "+", k, sizeof(k)) != 0 || strlen(k) > strlen(c1))
				abort();
		}
	}
	free(a);
	return 0;
}
