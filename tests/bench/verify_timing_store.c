/*
 * verify_timing_store.c - the store's otp.verify time with and without a
 * live code, in process (no socket, no scheduler hop between processes):
 *   tests/bench/verify_timing_store DIR [n]
 * Issues a code to each of n/PER addresses, then times n wrong verifies
 * against live codes (PER per code, $VT_PER, 1 to 4, default 1: the
 * probe of an attacker who asks whether an address has a code) and n
 * verifies for n/PER addresses that never had a code (PER each too),
 * interleaved; prints medians, 90th percentiles and their differences in
 * microseconds.  Built by make check, never run by it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store.h"

static double	vt_now_us(void);
static int	vt_cmp(const void *, const void *);

static double
vt_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
vt_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
	struct store_params p;
	struct otp_request q;
	struct otp_result r;
	struct store *s;
	char err[512], secret[1024], addr[64], guess[16];
	int n = argc > 2 ? atoi(argv[2]) : 1000, i, k, nl = 0, nn = 0, per;
	double *live, *none, t0, d, lm, nm, l9, n9;
	time_t now = time(NULL);

	if (argc < 2 || n < 4) {
		fprintf(stderr, "usage: %s DIR [n]\n", argv[0]);
		return 2;
	}
	snprintf(secret, sizeof(secret), "%s/secret", argv[1]);
	store_params_defaults(&p);
	p.dir = argv[1];
	p.secret_file = secret;
	p.resend_cooldown = 0;
	if ((s = store_open(&p, err, sizeof(err))) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	live = calloc((size_t)n, sizeof(*live));
	none = calloc((size_t)n, sizeof(*none));
	per = getenv("VT_PER") != NULL ? atoi(getenv("VT_PER")) : 1;
	if (per < 1 || per > 4)
		per = 1;
	for (i = 0; i < n / per; i++) {
		memset(&q, 0, sizeof(q));
		snprintf(addr, sizeof(addr), "live%d@example.org", i);
		q.app = "bench";
		q.addr = addr;
		q.context = "s";
		q.now = now;
		if (store_otp_issue(s, &q, &r) != S_OK) {
			fprintf(stderr, "issue failed\n");
			return 1;
		}
	}
	for (i = 0; i < n; i++)
		for (k = 0; k < 2; k++) {
			int is_live = (k + i) % 2 == 0;

			memset(&q, 0, sizeof(q));
			if (is_live)
				snprintf(addr, sizeof(addr), "live%d@example.org", i / per);
			else
				snprintf(addr, sizeof(addr), "none%d@example.org", i / per);
			q.app = "bench";
			q.addr = addr;
			q.context = "s";
			q.now = now;
			snprintf(guess, sizeof(guess), "%06d", i);
			t0 = vt_now_us();
			if (store_otp_verify(s, &q, guess, &r) == S_OK)
				continue;	/* a lucky guess */
			d = vt_now_us() - t0;
			if (is_live)
				live[nl++] = d;
			else
				none[nn++] = d;
		}
	qsort(live, (size_t)nl, sizeof(*live), vt_cmp);
	qsort(none, (size_t)nn, sizeof(*none), vt_cmp);
	lm = live[nl / 2];
	nm = none[nn / 2];
	l9 = live[nl * 9 / 10];
	n9 = none[nn * 9 / 10];
	printf("store_otp_verify over %d and %d tries (us):\n", nl, nn);
	printf("  wrong code, live code:   median %7.1f  p90 %7.1f\n", lm, l9);
	printf("  no code for the address: median %7.1f  p90 %7.1f\n", nm, n9);
	printf("  difference:              median %7.1f  p90 %7.1f\n", lm - nm, l9 - n9);
	store_close(s);
	free(live);
	free(none);
	return 0;
}
