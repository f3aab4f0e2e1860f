/*
 * code.c - one-time codes: drawn from OpenSSL's CSPRNG with rejection
 * sampling (no modulo bias) over the digits or an unambiguous upper-case
 * alphabet, and normalisation of what a person typed.
 */
#include <string.h>

#include <openssl/rand.h>

#include "store/store_int.h"

static const char *code_alphabet(enum otp_alphabet, size_t *n);

/* No 0/O, 1/I/L: nothing a reader can confuse. */
static const char alpha_digits[] = "0123456789";
static const char alpha_alnum[] = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";

static const char *
code_alphabet(enum otp_alphabet a, size_t *n)
{
	switch (a) {
	case OTP_ALPHA_DIGITS:
		*n = sizeof(alpha_digits) - 1;
		return alpha_digits;
	case OTP_ALPHA_ALNUM:
		*n = sizeof(alpha_alnum) - 1;
		return alpha_alnum;
	}
	return NULL;
}

int
otp_code_generate(enum otp_alphabet a, int length, char *out)
{
	unsigned char rnd[64];
	const char *alpha;
	size_t n, i, limit;
	int got = 0;

	if ((alpha = code_alphabet(a, &n)) == NULL || length < 4 ||
	    length > OTP_CODE_MAX)
		return -1;
	/* Bytes >= limit would favour the first 256 % n symbols: drop them. */
	limit = 256 - (256 % n);
	while (got < length) {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return -1;
		for (i = 0; i < sizeof(rnd) && got < length; i++)
			if (rnd[i] < limit)
				out[got++] = alpha[rnd[i] % n];
	}
	out[length] = '\0';
	OPENSSL_cleanse(rnd, sizeof(rnd));
	return 0;
}

int
otp_code_normalise(enum otp_alphabet a, int length, const char *in, char *out)
{
	const char *alpha;
	size_t n;
	int got = 0;
	int c;

	if ((alpha = code_alphabet(a, &n)) == NULL || in == NULL ||
	    strnlen(in, 64) >= 64)
		return -1;
	/* Spaces and dashes people use to group digits are ignored. */
	for (; *in != '\0'; in++) {
		c = (unsigned char)*in;
		if (c == ' ' || c == '\t' || c == '-')
			continue;
		if (a == OTP_ALPHA_ALNUM && c >= 'a' && c <= 'z')
			c -= 'a' - 'A';
		if (c == 0 || strchr(alpha, c) == NULL || got >= length)
			return -1;
		out[got++] = (char)c;
	}
	if (got != length)
		return -1;
	out[got] = '\0';
	return 0;
}
