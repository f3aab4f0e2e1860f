/*
 * test_store_bench.c - micro-benchmark of the store with durable commits
 * (not run by make check):  test_store_bench DIR [threads] [seconds]
 * Phase 1 issues (+ mark_sent) codes to distinct addresses for the given
 * time; phase 2 verifies every issued code once (each a success).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store.h"

#define PER_THREAD_MAX	200000

struct worker {
	struct store	*s;
	int		 id;
	double		 until;
	int		 n;		/* issued */
	int		 ok, bad;	/* verified */
	char		(*codes)[OTP_CODE_MAX + 1];
};

static double	now_s(void);
static void	*issue_thread(void *);
static void	*verify_thread(void *);

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *
issue_thread(void *arg)
{
	struct worker *w = arg;
	struct otp_request q;
	struct otp_result r;
	char addr[64];

	while (w->n < PER_THREAD_MAX && now_s() < w->until) {
		snprintf(addr, sizeof(addr), "user%d.%d@bench.example", w->id, w->n);
		memset(&q, 0, sizeof(q));
		q.addr = addr;
		q.now = time(NULL);
		q.client_uid = 1000;
		if (store_otp_issue(w->s, &q, &r) != S_OK ||
		    store_otp_mark_sent(w->s, &q, r.issue_id, "0123456789abcdef01234567") != S_OK)
			break;
		strcpy(w->codes[w->n++], r.code);
	}
	return NULL;
}

/* Verifiers take work from one shared counter, so none idles at the end. */
static struct worker *all;
static int nall, next_item;
static pthread_mutex_t next_mu = PTHREAD_MUTEX_INITIALIZER;

static void *
verify_thread(void *arg)
{
	struct worker *w = arg, *src;
	struct otp_request q;
	struct otp_result r;
	char addr[64];
	int i, t;

	for (;;) {
		pthread_mutex_lock(&next_mu);
		i = next_item++;
		pthread_mutex_unlock(&next_mu);
		for (t = 0; t < nall && i >= all[t].n; t++)
			i -= all[t].n;
		if (t == nall)
			break;
		src = &all[t];
		snprintf(addr, sizeof(addr), "user%d.%d@bench.example", src->id, i);
		memset(&q, 0, sizeof(q));
		q.addr = addr;
		q.now = time(NULL);
		if (store_otp_verify(w->s, &q, src->codes[i], &r) == S_OK)
			w->ok++;
		else
			w->bad++;
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	struct store_params p;
	struct worker *w;
	pthread_t *th;
	char err[512], secret[1024];
	int nt = argc > 2 ? atoi(argv[2]) : 16, secs = argc > 3 ? atoi(argv[3]) : 5;
	int i, total = 0, ok = 0, bad = 0;
	struct store *s;
	double t0, t1;

	if (argc < 2 || nt < 1 || nt > 256 || secs < 1) {
		fprintf(stderr, "usage: %s DIR [threads] [seconds]\n", argv[0]);
		return 2;
	}
	snprintf(secret, sizeof(secret), "%s/secret", argv[1]);
	store_params_defaults(&p);
	p.dir = argv[1];
	p.secret_file = secret;
	p.durable = getenv("BENCH_NOSYNC") ? 0 : 1;
	/* One client uid for every thread, as one app would be. */
	p.max_per_client_minute = getenv("BENCH_CLIENT_LIMIT") ?
	    atoi(getenv("BENCH_CLIENT_LIMIT")) : 0;
	if ((s = store_open(&p, err, sizeof(err))) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	w = calloc((size_t)nt, sizeof(*w));
	th = calloc((size_t)nt, sizeof(*th));
	t0 = now_s();
	for (i = 0; i < nt; i++) {
		w[i].s = s;
		w[i].id = i;
		w[i].until = t0 + secs;
		w[i].codes = calloc(PER_THREAD_MAX, sizeof(*w[i].codes));
		pthread_create(&th[i], NULL, issue_thread, &w[i]);
	}
	for (i = 0; i < nt; i++) {
		pthread_join(th[i], NULL);
		total += w[i].n;
	}
	t1 = now_s();
	printf("issue+mark_sent: %d in %.2f s = %.0f/s (%d threads, durable=%d, "
	    "client limit %d/min)\n", total, t1 - t0, total / (t1 - t0), nt, p.durable,
	    p.max_per_client_minute);
	all = w;
	nall = nt;
	t0 = now_s();
	for (i = 0; i < nt; i++)
		pthread_create(&th[i], NULL, verify_thread, &w[i]);
	for (i = 0; i < nt; i++) {
		pthread_join(th[i], NULL);
		ok += w[i].ok;
		bad += w[i].bad;
	}
	t1 = now_s();
	printf("verify (success, consumes): %d in %.2f s = %.0f/s, %d failed\n",
	    ok + bad, t1 - t0, (ok + bad) / (t1 - t0), bad);
	for (i = 0; i < nt; i++)
		free(w[i].codes);
	free(w);
	free(th);
	store_close(s);
	return bad ? 1 : 0;
}
