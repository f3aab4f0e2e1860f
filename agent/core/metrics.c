/*
 * metrics.c - the daemon's own counters and histograms, kept in memory
 * since start.  Label sets are bounded: ops come from the dispatch table,
 * reasons are reduced to an enhanced status code or "other", and a full
 * table folds new label sets into "other".
 */
#include <sys/resource.h>

#include <ctype.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/core/metrics.h"
#include "agent/mail/mail.h"

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
static struct metrics_family metrics_otp_issued = { "otpmail_otp_issued_total",
    "One-time codes issued (and mailed).", {{ "", 0 }}, 0 };
static struct metrics_family metrics_otp_verify = { "otpmail_otp_verifications_total",
    "Code verifications by result: ok, or the error (invalid_code, expired, locked, ...).",
    {{ "", 0 }}, 0 };
static struct metrics_family metrics_otp_locked = { "otpmail_otp_locked_total",
    "OTP requests refused because the address is locked out.", {{ "", 0 }}, 0 };
static struct metrics_family metrics_rate_limited = { "otpmail_rate_limited_total",
    "Requests refused by a named rate limit, by op and limit.", {{ "", 0 }}, 0 };
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

void
metrics_otp(const char *op, const char *result, const char *limit)
{
	char r[32], o[32], l[48], labels[METRICS_LABEL_MAX];

	metrics_clean(o, sizeof(o), op);
	metrics_clean(r, sizeof(r), result);
	pthread_mutex_lock(&metrics_mu);
	if (strcmp(op, "otp.issue") == 0 && strcmp(result, "ok") == 0)
		metrics_inc(&metrics_otp_issued, "");
	if (strcmp(op, "otp.verify") == 0) {
		snprintf(labels, sizeof(labels), "result=\"%s\"", r);
		metrics_inc(&metrics_otp_verify, labels);
	}
	if (strncmp(op, "otp.", 4) == 0 && strcmp(result, "locked") == 0)
		metrics_inc(&metrics_otp_locked, "");
	if (strcmp(result, "rate_limited") == 0) {
		metrics_clean(l, sizeof(l), limit ? limit : "unnamed");
		snprintf(labels, sizeof(labels), "op=\"%s\",limit=\"%s\"", o, l);
		metrics_inc(&metrics_rate_limited, labels);
	}
	pthread_mutex_unlock(&metrics_mu);
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
metrics_delivery(const char *klass, const char *result, const char *reply,
    const char *bounce)
{
	char reason[16], labels[METRICS_LABEL_MAX];

	metrics_reason(reply, reason, sizeof(reason));
	snprintf(labels, sizeof(labels), "class=\"%s\",result=\"%s\",reason=\"%s\","
	    "bounce=\"%s\"", klass, result, reason, bounce);
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
		buf_printf(b, f->s[i].labels[0] ? "%s{%s} %llu\n" : "%s%s %llu\n", f->name,
		    f->s[i].labels, f->s[i].value);
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

/* An unlabelled counter shows 0 before its first event. */
static void
metrics_render_plain(struct buf *b, const struct metrics_family *f)
{
	if (f->n == 0)
		buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s 0\n", f->name, f->help,
		    f->name, f->name);
	else
		metrics_render_family(b, f);
}

/* The standard process_* metrics, from /proc and getrusage. */
static void
metrics_render_process(struct buf *b)
{
	struct rusage ru;
	struct rlimit rl;
	unsigned long long start = 0, btime = 0, vsize = 0, rss = 0;
	long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	char line[1024], *p;
	struct dirent *de;
	DIR *dir;
	FILE *f;
	int fds = 0, i;

	if (getrusage(RUSAGE_SELF, &ru) == 0)
		buf_printf(b, "# HELP process_cpu_seconds_total Total user and system CPU time "
		    "spent in seconds.\n# TYPE process_cpu_seconds_total counter\n"
		    "process_cpu_seconds_total %.6f\n",
		    (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
		    (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	if ((f = fopen("/proc/self/stat", "r")) != NULL) {
		/* after "(comm)": field 3 onwards; starttime is 22, vsize 23, rss 24 */
		if (fgets(line, sizeof(line), f) != NULL && (p = strrchr(line, ')')) != NULL) {
			for (i = 3, p += 2; *p && i < 22; p++)
				if (*p == ' ')
					i++;
			if (sscanf(p, "%llu %llu %llu", &start, &vsize, &rss) != 3)
				start = vsize = rss = 0;
		}
		fclose(f);
	}
	if ((f = fopen("/proc/stat", "r")) != NULL) {
		while (fgets(line, sizeof(line), f) != NULL)
			if (sscanf(line, "btime %llu", &btime) == 1)
				break;
		fclose(f);
	}
	buf_printf(b, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
	    "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n",
	    rss * (unsigned long long)(page > 0 ? page : 4096));
	buf_printf(b, "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
	    "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes %llu\n",
	    vsize);
	if (btime > 0 && tick > 0)
		buf_printf(b, "# HELP process_start_time_seconds Start time of the process since "
		    "unix epoch in seconds.\n# TYPE process_start_time_seconds gauge\n"
		    "process_start_time_seconds %.2f\n", (double)btime + (double)start / tick);
	if ((dir = opendir("/proc/self/fd")) != NULL) {
		while ((de = readdir(dir)) != NULL)
			if (de->d_name[0] != '.')
				fds++;
		closedir(dir);
		buf_printf(b, "# HELP process_open_fds Number of open file descriptors.\n"
		    "# TYPE process_open_fds gauge\nprocess_open_fds %d\n", fds - 1);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		buf_printf(b, "# HELP process_max_fds Maximum number of open file descriptors.\n"
		    "# TYPE process_max_fds gauge\nprocess_max_fds %llu\n",
		    (unsigned long long)rl.rlim_cur);
}

void
metrics_render(struct buf *b)
{
	pthread_mutex_lock(&metrics_mu);
	metrics_render_family(b, &metrics_requests);
	metrics_render_plain(b, &metrics_otp_issued);
	metrics_render_family(b, &metrics_otp_verify);
	metrics_render_plain(b, &metrics_otp_locked);
	metrics_render_family(b, &metrics_rate_limited);
	metrics_render_family(b, &metrics_deliveries);
	metrics_render_family(b, &metrics_events);
	metrics_render_hist(b, &metrics_latency);
	metrics_render_hist(b, &metrics_sign);
	pthread_mutex_unlock(&metrics_mu);
	metrics_render_process(b);
}
