/*
 * metrics.c - the daemon's own counters and histograms, kept in memory
 * since start.  Label sets are bounded: ops come from the dispatch table,
 * reasons are reduced to an enhanced status code or "other", and a full
 * table folds new label sets into "other".
 */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "agent/core/metrics.h"

#define METRICS_MAX_SERIES	256
#define METRICS_LABEL_MAX	96

struct metrics_counter {
	char		 labels[METRICS_LABEL_MAX];
	unsigned long long value;
};

struct metrics_family {
	const char	*name, *help;
	struct metrics_counter s[METRICS_MAX_SERIES];
	size_t		 n;
};

struct metrics_hist {
	const char	*name, *help;
	const double	*bounds;
	size_t		 nb;
	unsigned long long counts[16];	/* per bucket, not cumulative; last = +Inf */
	double		 sum;
	unsigned long long total;
};

static const double metrics_latency_bounds[] =
    { 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600 };
static const double metrics_sign_bounds[] =
    { 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05 };

static pthread_mutex_t metrics_mu = PTHREAD_MUTEX_INITIALIZER;
static struct metrics_family metrics_requests = { "otpmail_requests_total",
    "Control requests answered, by op and result (ok or the error code).", {{ "", 0 }}, 0 };
static struct metrics_family metrics_deliveries = { "otpmail_delivery_attempts_total",
    "Recipient delivery attempts by class, result and reason.", {{ "", 0 }}, 0 };
static struct metrics_family metrics_events = { "otpmail_policy_events_total",
    "MTA-STS policy fetches and TLS-RPT reports, by what and result.", {{ "", 0 }}, 0 };
static struct metrics_hist metrics_latency = { "otpmail_delivery_latency_seconds",
    "Seconds from submission to acceptance by the receiving server, per recipient.",
    metrics_latency_bounds, sizeof(metrics_latency_bounds) / sizeof(double), { 0 }, 0, 0 };
static struct metrics_hist metrics_sign = { "otpmail_dkim_sign_seconds",
    "Seconds spent DKIM-signing one message (all its signatures).",
    metrics_sign_bounds, sizeof(metrics_sign_bounds) / sizeof(double), { 0 }, 0, 0 };

/* Adds 1 to the series with these labels (caller holds metrics_mu). */
static void
metrics_inc(struct metrics_family *f, const char *labels)
{
	size_t i;

	for (i = 0; i < f->n; i++)
		if (strcmp(f->s[i].labels, labels) == 0) {
			f->s[i].value++;
			return;
		}
	if (f->n == METRICS_MAX_SERIES) {
		f->s[f->n - 1].value++;		/* the last slot is "other" */
		return;
	}
	if (f->n == METRICS_MAX_SERIES - 1)
		labels = "other=\"true\"";
	snprintf(f->s[f->n].labels, METRICS_LABEL_MAX, "%s", labels);
	f->s[f->n++].value = 1;
}

/* A label value from our own strings: [a-z0-9._-], else '_'. */
static void
metrics_clean(char *out, size_t len, const char *in)
{
	size_t i;

	for (i = 0; in[i] != '\0' && i + 1 < len; i++)
		out[i] = (isalnum((unsigned char)in[i]) || strchr("._-", in[i])) ?
		    in[i] : '_';
	out[i] = '\0';
}

/* Adds 1 to f's series {k1="v1",result="v2"}, both values cleaned. */
static void
metrics_inc2(struct metrics_family *f, const char *k1, const char *v1,
    const char *v2)
{
	char a[32], b[32], labels[METRICS_LABEL_MAX];

	metrics_clean(a, sizeof(a), v1);
	metrics_clean(b, sizeof(b), v2);
	snprintf(labels, sizeof(labels), "%s=\"%s\",result=\"%s\"", k1, a, b);
	pthread_mutex_lock(&metrics_mu);
	metrics_inc(f, labels);
	pthread_mutex_unlock(&metrics_mu);
}

void
metrics_request(const char *op, const char *result)
{
	metrics_inc2(&metrics_requests, "op", op, result);
}

/* The enhanced status code at the start of a reply ("4.4.1"), or the basic
 * code ("421"), or "other". */
static void
metrics_reason(const char *reply, char *out, size_t len)
{
	const char *p = reply;

	snprintf(out, len, "other");
	if (p == NULL)
		return;
	if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
	    isdigit((unsigned char)p[2]) && (p[3] == ' ' || p[3] == '-'))
		p += 4;
	if ((p[0] == '2' || p[0] == '4' || p[0] == '5') && p[1] == '.' &&
	    isdigit((unsigned char)p[2])) {
		size_t n = 3;
		while (isdigit((unsigned char)p[n]) && n < 5)
			n++;
		if (p[n] == '.' && isdigit((unsigned char)p[n + 1])) {
			n++;
			while (isdigit((unsigned char)p[n]) && n < 9)
				n++;
			snprintf(out, len, "%.*s", (int)n, p);
			return;
		}
	}
	if (isdigit((unsigned char)reply[0]) && isdigit((unsigned char)reply[1]) &&
	    isdigit((unsigned char)reply[2]))
		snprintf(out, len, "%.3s", reply);
}

void
metrics_delivery(const char *klass, const char *result, const char *reply)
{
	char reason[16], labels[METRICS_LABEL_MAX];

	metrics_reason(reply, reason, sizeof(reason));
	snprintf(labels, sizeof(labels), "class=\"%s\",result=\"%s\",reason=\"%s\"",
	    klass, result, reason);
	pthread_mutex_lock(&metrics_mu);
	metrics_inc(&metrics_deliveries, labels);
	pthread_mutex_unlock(&metrics_mu);
}

void
metrics_event(const char *what, const char *result)
{
	metrics_inc2(&metrics_events, "what", what, result);
}

static void
metrics_observe(struct metrics_hist *h, double v)
{
	size_t i;

	pthread_mutex_lock(&metrics_mu);
	for (i = 0; i < h->nb && v > h->bounds[i]; i++)
		;
	h->counts[i]++;
	h->sum += v;
	h->total++;
	pthread_mutex_unlock(&metrics_mu);
}

void
metrics_delivery_latency(double seconds)
{
	metrics_observe(&metrics_latency, seconds);
}

void
metrics_dkim_sign(double seconds)
{
	metrics_observe(&metrics_sign, seconds);
}

static void
metrics_render_family(struct buf *b, const struct metrics_family *f)
{
	size_t i;

	buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", f->name, f->help, f->name);
	for (i = 0; i < f->n; i++)
		buf_printf(b, "%s{%s} %llu\n", f->name, f->s[i].labels, f->s[i].value);
}

static void
metrics_render_hist(struct buf *b, const struct metrics_hist *h)
{
	unsigned long long cum = 0;
	size_t i;

	buf_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", h->name, h->help, h->name);
	for (i = 0; i < h->nb; i++) {
		cum += h->counts[i];
		buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", h->name, h->bounds[i], cum);
	}
	buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n",
	    h->name, h->total, h->name, h->sum, h->name, h->total);
}

void
metrics_render(struct buf *b)
{
	pthread_mutex_lock(&metrics_mu);
	metrics_render_family(b, &metrics_requests);
	metrics_render_family(b, &metrics_deliveries);
	metrics_render_family(b, &metrics_events);
	metrics_render_hist(b, &metrics_latency);
	metrics_render_hist(b, &metrics_sign);
	pthread_mutex_unlock(&metrics_mu);
}
