/*
 * webhook.c - each app_webhook has its own thread that POSTs the app's
 * events, in id order, to its HTTPS URL with the Standard Webhooks headers
 * (webhook-id, webhook-timestamp, webhook-signature "v1,<base64 HMAC-SHA256
 * of id.timestamp.body>").  The log is the queue: the thread keeps only a
 * cursor (<state_dir>/events/webhook-<app>.cursor, the last id the receiver
 * took), so a receiver that is down costs disk, not memory, and a restart
 * resumes where it stopped.  A failed POST is retried with doubling delays
 * (webhook_retry_min .. webhook_retry_max) until the event is
 * webhook_max_age old, then given up (logged, counted).  Delivery never
 * waits on any of this: emitters only bump a counter and signal.  The
 * signature is made here (the secret stays in the main process); the POST
 * itself, DNS, TLS and the receiver's answer, happen in the fetch process
 * (agent/delivery/fetch.h), which returns the HTTP status.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "agent/core/otpmaild.h"
#include "agent/events/events_int.h"
#include "agent/delivery/delivery.h"
#include "agent/mail/mail.h"

#define WH_BATCH	100		/* events read from the log at a time */
#define WH_SECRET_MAX	256
#define WH_ERROR_MAX	320		/* a POST's error text */

struct wh_event {
	uint64_t	 id;
	time_t		 time;
	char		*body;
	size_t		 len;
};

struct wh {
	char		*app;
	char		*url;
	unsigned char	 secret[WH_SECRET_MAX];
	size_t		 secretlen;
	char		 cursor_path[4200];
	pthread_t	 th;
	int		 running;
	/* under mu */
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	uint64_t	 cursor;	/* last id the receiver took (or given up) */
	uint64_t	 backlog;	/* the app's events after cursor */
	uint64_t	 posted, failures, given_up;
	time_t		 last_ok;
	char		 last_error[WH_ERROR_MAX + 64];
	unsigned	 wakeups;
};

static struct {
	struct otpmaild	*d;
	struct eventlog	*log;
	struct wh	*v;
	size_t		 n;
	atomic_int	 stop;
} wh;

static void	*wh_thread(void *);

/* "whsec_<base64>" (the Standard Webhooks form) or the file's bytes. */
static int
wh_secret(struct wh *w, const char *path, char *err, size_t errlen)
{
	char buf[WH_SECRET_MAX * 2];
	ssize_t n;
	size_t len, pad = 0;
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "app_webhook %s: %s: %s", w->app, path, strerror(errno));
		return -1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0) {
		snprintf(err, errlen, "app_webhook %s: %s is empty or unreadable", w->app, path);
		return -1;
	}
	len = (size_t)n;
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
		len--;
	buf[len] = '\0';
	if (strncmp(buf, "whsec_", 6) == 0) {
		if ((len - 6) % 4 != 0 || (len - 6) / 4 * 3 > sizeof(w->secret)) {
			snprintf(err, errlen, "app_webhook %s: bad whsec_ secret in %s", w->app, path);
			return -1;
		}
		r = EVP_DecodeBlock(w->secret, (const unsigned char *)buf + 6, (int)(len - 6));
		while (len > 6 && buf[len - 1 - pad] == '=')
			pad++;
		if (r < 0 || (size_t)r < pad) {
			snprintf(err, errlen, "app_webhook %s: bad whsec_ secret in %s", w->app, path);
			return -1;
		}
		w->secretlen = (size_t)r - pad;
	} else {
		if (len > sizeof(w->secret))
			len = sizeof(w->secret);
		memcpy(w->secret, buf, len);
		w->secretlen = len;
	}
	if (w->secretlen < 16) {
		snprintf(err, errlen, "app_webhook %s: the secret in %s is shorter than 16 bytes",
		    w->app, path);
		return -1;
	}
	return 0;
}

static void
wh_cursor_save(struct wh *w, uint64_t id)
{
	char tmp[4300], line[32];
	int fd, n, ok = 0;

	snprintf(tmp, sizeof(tmp), "%s.tmp", w->cursor_path);
	n = snprintf(line, sizeof(line), "%" PRIu64 "\n", id);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) != -1) {
		ok = write(fd, line, (size_t)n) == n && fdatasync(fd) == 0;
		ok = close(fd) == 0 && ok && rename(tmp, w->cursor_path) == 0;
	}
	if (!ok)
		log_msg(LOG_WARNING, "event=webhook_error app=%s detail=\"cannot save the "
		    "cursor: %s\"", w->app, strerror(errno));
}

static int
wh_count(void *arg, uint64_t id, const char *line, size_t len)
{
	(void)id;
	(void)line;
	(void)len;
	(*(uint64_t *)arg)++;
	return 0;
}

int
webhook_open(struct otpmaild *d, struct eventlog *log, char *err, size_t errlen)
{
	const struct config *c = d->cfg;
	char buf[32];
	size_t i;
	ssize_t n;
	int fd;

	wh.d = d;
	wh.log = log;
	wh.stop = 0;
	if (c->nwebhooks == 0)
		return 0;
	if ((wh.v = calloc(c->nwebhooks, sizeof(*wh.v))) == NULL)
		abort();
	for (i = 0; i < c->nwebhooks; i++) {
		struct wh *w = &wh.v[i];

		wh.n++;
		pthread_mutex_init(&w->mu, NULL);
		pthread_cond_init(&w->cv, NULL);
		if ((w->app = strdup(c->webhooks[i].app)) == NULL ||
		    (w->url = strdup(c->webhooks[i].url)) == NULL)
			abort();
		if (wh_secret(w, c->webhooks[i].secret_file, err, errlen) == -1)
			goto fail;
		snprintf(w->cursor_path, sizeof(w->cursor_path), "%s/events/webhook-%s.cursor",
		    d->state_dir, w->app);
		/* A new webhook starts with the next event, not the whole log. */
		w->cursor = eventlog_last(log);
		if ((fd = open(w->cursor_path, O_RDONLY | O_CLOEXEC)) != -1) {
			n = read(fd, buf, sizeof(buf) - 1);
			close(fd);
			buf[n > 0 ? n : 0] = '\0';
			w->cursor = strtoull(buf, NULL, 10);
		} else
			wh_cursor_save(w, w->cursor);
		events_replay(w->cursor, w->app, EV_MASK_ALL, wh_count, &w->backlog);
	}
	return 0;
fail:
	webhook_close();
	return -1;
}

int
webhook_start(char *err, size_t errlen)
{
	size_t i;

	for (i = 0; i < wh.n; i++) {
		if (pthread_create(&wh.v[i].th, NULL, wh_thread, &wh.v[i]) != 0) {
			snprintf(err, errlen, "webhook: pthread_create failed");
			return -1;
		}
		wh.v[i].running = 1;
	}
	return 0;
}

void
webhook_notify(const char *app)
{
	size_t i;

	for (i = 0; i < wh.n; i++)
		if (strcmp(wh.v[i].app, app) == 0) {
			pthread_mutex_lock(&wh.v[i].mu);
			wh.v[i].backlog++;
			wh.v[i].wakeups++;
			pthread_cond_signal(&wh.v[i].cv);
			pthread_mutex_unlock(&wh.v[i].mu);
			return;
		}
}

void
webhook_close(void)
{
	size_t i;

	wh.stop = 1;
	for (i = 0; i < wh.n; i++) {
		pthread_mutex_lock(&wh.v[i].mu);
		pthread_cond_broadcast(&wh.v[i].cv);
		pthread_mutex_unlock(&wh.v[i].mu);
	}
	for (i = 0; i < wh.n; i++) {
		if (wh.v[i].running)
			pthread_join(wh.v[i].th, NULL);
		pthread_mutex_destroy(&wh.v[i].mu);
		pthread_cond_destroy(&wh.v[i].cv);
		free(wh.v[i].app);
		free(wh.v[i].url);
		OPENSSL_cleanse(wh.v[i].secret, sizeof(wh.v[i].secret));
	}
	free(wh.v);
	wh.v = NULL;
	wh.n = 0;
}

/* ---- the sender ------------------------------------------------------ */

struct wh_batch {
	struct wh_event	 ev[WH_BATCH];
	size_t		 n;
};

static int
wh_collect(void *arg, uint64_t id, const char *line, size_t len)
{
	struct wh_batch *b = arg;
	struct wh_event *e = &b->ev[b->n];
	const char *t = memmem(line, len, ",\"time\":", 8);

	if ((e->body = malloc(len + 1)) == NULL)
		return 1;
	memcpy(e->body, line, len);
	e->body[len] = '\0';
	e->len = len;
	e->id = id;
	e->time = t ? (time_t)strtoll(t + 8, NULL, 10) : time(NULL);
	return ++b->n == WH_BATCH;
}

/* One POST; 0 when the receiver answered 2xx, else -1 with why. */
static int
wh_post(struct wh *w, const struct wh_event *e, char *why, size_t whylen)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	char hdr[3][160], b64[96], ids[24], ts[24];
	const char *h[5];
	long code = 0;
	struct buf sc;

	snprintf(ids, sizeof(ids), "%" PRIu64, e->id);
	snprintf(ts, sizeof(ts), "%lld", (long long)time(NULL));
	/* signed content: id "." timestamp "." body */
	buf_init(&sc);
	buf_printf(&sc, "%s.%s.", ids, ts);
	buf_add(&sc, e->body, e->len);
	if (sc.data == NULL || HMAC(EVP_sha256(), w->secret, (int)w->secretlen,
	    (const unsigned char *)sc.data, sc.len, mac, &maclen) == NULL) {
		buf_free(&sc);
		snprintf(why, whylen, "HMAC failed");
		return -1;
	}
	buf_free(&sc);
	EVP_EncodeBlock((unsigned char *)b64, mac, (int)maclen);
	snprintf(hdr[0], sizeof(hdr[0]), "webhook-id: %s", ids);
	snprintf(hdr[1], sizeof(hdr[1]), "webhook-timestamp: %s", ts);
	snprintf(hdr[2], sizeof(hdr[2]), "webhook-signature: v1,%s", b64);
	h[0] = "Content-Type: application/json";
	h[1] = "Expect:";
	h[2] = hdr[0];
	h[3] = hdr[1];
	h[4] = hdr[2];
	if (fetch_post(w->url, h, 5, e->body, e->len, &code, why, whylen) == -1)
		return -1;
	if (code >= 200 && code < 300)
		return 0;
	snprintf(why, whylen, "HTTP %ld", code);
	return -1;
}

/* Sleeps up to secs, or until stopping. */
static void
wh_sleep(struct wh *w, int secs)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += secs;
	pthread_mutex_lock(&w->mu);
	while (!wh.stop && pthread_cond_timedwait(&w->cv, &w->mu, &ts) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&w->mu);
}

/* Delivers one event: retries until it is taken, too old, or we stop.
 * 0 when done with it (the cursor may move past it), -1 when stopping. */
static int
wh_deliver(struct wh *w, const struct wh_event *e)
{
	const struct config *cfg = wh.d->cfg;
	char why[WH_ERROR_MAX + 32];
	int delay = cfg->webhook_retry_min, tries = 0;

	for (;;) {
		if (wh.stop)
			return -1;
		if (tries == 0 && time(NULL) - e->time >= cfg->webhook_max_age) {
			/* older than its retry window before its turn came */
			snprintf(why, sizeof(why), "older than webhook_max_age before its turn");
			goto give_up;
		}
		tries++;
		if (wh_post(w, e, why, sizeof(why)) == 0) {
			pthread_mutex_lock(&w->mu);
			w->posted++;
			w->last_ok = time(NULL);
			pthread_mutex_unlock(&w->mu);
			metrics_event("webhook_post", "ok");
			return 0;
		}
		metrics_event("webhook_post", "error");
		pthread_mutex_lock(&w->mu);
		w->failures++;
		snprintf(w->last_error, sizeof(w->last_error), "%s", why);
		pthread_mutex_unlock(&w->mu);
		if (time(NULL) - e->time >= cfg->webhook_max_age) {
give_up:
			log_msg(LOG_WARNING, "event=webhook_given_up app=%s event_id=%" PRIu64
			    " tries=%d error=\"%s\"", w->app, e->id, tries, why);
			pthread_mutex_lock(&w->mu);
			w->given_up++;
			pthread_mutex_unlock(&w->mu);
			return 0;
		}
		log_msg(tries == 1 ? LOG_NOTICE : LOG_DEBUG, "event=webhook_retry app=%s "
		    "event_id=%" PRIu64 " tries=%d retry_in=%ds error=\"%s\"", w->app, e->id,
		    tries, delay, why);
		wh_sleep(w, delay);
		delay = delay > cfg->webhook_retry_max / 2 ? cfg->webhook_retry_max : delay * 2;
	}
}

static void *
wh_thread(void *arg)
{
	struct wh *w = arg;
	struct wh_batch *b = calloc(1, sizeof(*b));
	uint64_t cursor;
	unsigned seen;
	size_t i;
	int stop = 0;

	if (b == NULL) {
		log_msg(LOG_ERR, "event=webhook_error app=%s detail=\"cannot start\"", w->app);
		goto out;
	}
	while (!wh.stop && !stop) {
		pthread_mutex_lock(&w->mu);
		cursor = w->cursor;
		seen = w->wakeups;
		pthread_mutex_unlock(&w->mu);
		b->n = 0;
		if (events_replay(cursor, w->app, EV_MASK_ALL, wh_collect, b) == -1)
			log_msg(LOG_ERR, "event=webhook_error app=%s detail=\"cannot read "
			    "the event log\"", w->app);
		for (i = 0; i < b->n && !stop; i++) {
			if (wh_deliver(w, &b->ev[i]) == -1) {
				stop = 1;
				break;
			}
			pthread_mutex_lock(&w->mu);
			w->cursor = b->ev[i].id;
			if (w->backlog > 0)
				w->backlog--;
			pthread_mutex_unlock(&w->mu);
		}
		if (i > 0)
			wh_cursor_save(w, b->ev[i - 1].id);
		for (i = 0; i < b->n; i++)
			free(b->ev[i].body);
		if (b->n == WH_BATCH || stop)
			continue;
		/* caught up: wait for the next event (a second at most) */
		pthread_mutex_lock(&w->mu);
		if (w->wakeups == seen && !wh.stop) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&w->cv, &w->mu, &ts);
		}
		pthread_mutex_unlock(&w->mu);
	}
out:
	free(b);
	return NULL;
}

/* ---- stats ----------------------------------------------------------- */

json_t *
events_webhook_stats(const char *app)
{
	json_t *o = json_object();
	size_t i;

	for (i = 0; o != NULL && i < wh.n; i++) {
		struct wh *w = &wh.v[i];

		if (app != NULL && strcmp(app, w->app) != 0)
			continue;
		pthread_mutex_lock(&w->mu);
		json_object_set_new(o, w->app, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:s}",
		    "backlog", (json_int_t)w->backlog, "cursor", (json_int_t)w->cursor,
		    "posted", (json_int_t)w->posted, "failures", (json_int_t)w->failures,
		    "given_up", (json_int_t)w->given_up, "last_ok", (json_int_t)w->last_ok,
		    "last_error", w->last_error));
		pthread_mutex_unlock(&w->mu);
	}
	return o;
}

void
events_webhook_metrics(struct buf *b)
{
	size_t i;

	buf_printf(b, "# HELP otpmail_events_last_id Id of the newest delivery event.\n"
	    "# TYPE otpmail_events_last_id gauge\notpmail_events_last_id %" PRIu64 "\n",
	    events_last_id());
	if (wh.n == 0)
		return;
	buf_adds(b, "# HELP otpmail_webhook_backlog Events an app's webhook has not "
	    "taken yet.\n# TYPE otpmail_webhook_backlog gauge\n");
	for (i = 0; i < wh.n; i++) {
		pthread_mutex_lock(&wh.v[i].mu);
		buf_printf(b, "otpmail_webhook_backlog{app=\"%s\"} %" PRIu64 "\n", wh.v[i].app,
		    wh.v[i].backlog);
		pthread_mutex_unlock(&wh.v[i].mu);
	}
	buf_adds(b, "# HELP otpmail_webhook_given_up_total Events given up after "
	    "webhook_max_age.\n# TYPE otpmail_webhook_given_up_total counter\n");
	for (i = 0; i < wh.n; i++) {
		pthread_mutex_lock(&wh.v[i].mu);
		buf_printf(b, "otpmail_webhook_given_up_total{app=\"%s\"} %" PRIu64 "\n",
		    wh.v[i].app, wh.v[i].given_up);
		pthread_mutex_unlock(&wh.v[i].mu);
	}
}
