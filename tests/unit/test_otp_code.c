/*
 * test_otp_code.c - the code generator (store/code.c): length and alphabet
 * honoured, no bias beyond chance over 10^6 symbols (chi-square, with a
 * check that the same test does catch modulo bias), normalisation.
 */
#include <stdlib.h>
#include <string.h>

#include "store/store.h"
#include "tests/unit/tap.h"

#define DRAWS	1000000

static double	chi2(const long *counts, int n, long total);
static void	test_shape(enum otp_alphabet, const char *alpha, const char *name);
static void	test_distribution(enum otp_alphabet, const char *alpha, double crit,
		    const char *name);

static double
chi2(const long *counts, int n, long total)
{
	double e = (double)total / n, x = 0;
	int i;

	for (i = 0; i < n; i++)
		x += (counts[i] - e) * (counts[i] - e) / e;
	return x;
}

static void
test_shape(enum otp_alphabet a, const char *alpha, const char *name)
{
	char code[OTP_CODE_MAX + 1], msg[128];
	int len, i, bad = 0, badlen = 0;

	for (len = 4; len <= 12; len++)
		for (i = 0; i < 200; i++) {
			if (otp_code_generate(a, len, code) != 0 ||
			    (int)strlen(code) != len)
				badlen++;
			else if (strspn(code, alpha) != (size_t)len)
				bad++;
		}
	snprintf(msg, sizeof(msg), "%s: lengths 4-12 honoured", name);
	is_int(badlen, 0, msg);
	snprintf(msg, sizeof(msg), "%s: only alphabet symbols", name);
	is_int(bad, 0, msg);
	snprintf(msg, sizeof(msg), "%s: length 3 and 13 refused", name);
	ok(otp_code_generate(a, 3, code) == -1 && otp_code_generate(a, 13, code) == -1, msg);
}

/*
 * Critical values are chi-square quantiles at p = 1e-4, so a correct
 * generator fails about once in 10^4 runs.
 */
static void
test_distribution(enum otp_alphabet a, const char *alpha, double crit, const char *name)
{
	long counts[64] = {0}, pos[12][64], biased[64] = {0};
	int n = (int)strlen(alpha), i, p, worst = 0;
	char code[OTP_CODE_MAX + 1], msg[160];
	long total = 0;
	double x, xp, xb;

	memset(pos, 0, sizeof(pos));
	while (total < DRAWS) {
		if (otp_code_generate(a, 10, code) != 0)
			break;
		for (p = 0; p < 10; p++) {
			i = (int)(strchr(alpha, code[p]) - alpha);
			counts[i]++;
			pos[p][i]++;
		}
		total += 10;
	}
	x = chi2(counts, n, total);
	snprintf(msg, sizeof(msg), "%s: chi-square %.1f < %.1f over %ld symbols",
	    name, x, crit, total);
	ok(x < crit, msg);
	/* Each position on its own, too (with a correction for 10 tests). */
	for (p = 0; p < 10; p++) {
		xp = chi2(pos[p], n, total / 10);
		if (xp > crit * 1.15)
			worst++;
	}
	snprintf(msg, sizeof(msg), "%s: every position uniform", name);
	is_int(worst, 0, msg);

	/* The same statistic catches plain modulo reduction of random bytes. */
	srand(1);
	for (i = 0; i < DRAWS; i++)
		biased[(rand() & 0xff) % n]++;
	xb = chi2(biased, n, DRAWS);
	snprintf(msg, sizeof(msg), "%s: the test detects modulo bias (%.1f)", name, xb);
	ok(xb > crit, msg);
}

int
main(void)
{
	char out[OTP_CODE_MAX + 1];

	test_shape(OTP_ALPHA_DIGITS, "0123456789", "digits");
	test_shape(OTP_ALPHA_ALNUM, "23456789ABCDEFGHJKMNPQRSTUVWXYZ", "alnum");
	test_distribution(OTP_ALPHA_DIGITS, "0123456789", 34.15, "digits");
	test_distribution(OTP_ALPHA_ALNUM, "23456789ABCDEFGHJKMNPQRSTUVWXYZ", 67.86,
	    "alnum");

	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, " 123 456 ", out) == 0 &&
	    strcmp(out, "123456") == 0, "normalise: spaces trimmed and removed");
	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, "123-456", out) == 0 &&
	    strcmp(out, "123456") == 0, "normalise: dash grouping accepted");
	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, "12345", out) == -1,
	    "normalise: short code refused");
	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, "1234567", out) == -1,
	    "normalise: long code refused");
	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, "12a456", out) == -1,
	    "normalise: letter in a digit code refused");
	ok(otp_code_normalise(OTP_ALPHA_ALNUM, 6, "ab2cd3", out) == 0 &&
	    strcmp(out, "AB2CD3") == 0, "normalise: alnum case-folded");
	ok(otp_code_normalise(OTP_ALPHA_ALNUM, 6, "AB0CD3", out) == -1,
	    "normalise: ambiguous 0 not in the alnum alphabet");
	ok(otp_code_normalise(OTP_ALPHA_DIGITS, 6, "12\n3456", out) == -1,
	    "normalise: control character refused");
	return done_testing();
}
