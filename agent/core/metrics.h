/*
 * metrics.h - counters and histograms for the "metrics" op (Prometheus text
 * exposition): requests by op and result, delivery outcomes by class,
 * result and reason, delivery latency, DKIM signing time.
 */
#ifndef OTPMAIL_METRICS_H
#define OTPMAIL_METRICS_H

struct buf;

/* One answered request: result is "ok" or the error code. */
void	metrics_request(const char *op, const char *result);
/* The OTP view of an answered request: codes issued, verifications by
 * result, lock-outs, rate limits by name (limit may be NULL). */
void	metrics_otp(const char *op, const char *result, const char *limit);
/* One recipient's attempt: result delivered|deferred|failed|expired; reply
 * gives the reason (its enhanced status code, e.g. 4.4.1), bounce its class
 * (hard, policy, ...; "none" when delivered). */
void	metrics_delivery(const char *klass, const char *result, const char *reply,
	    const char *bounce);
/* Seconds from submission to a 2xx, per recipient. */
void	metrics_delivery_latency(double seconds);
void	metrics_dkim_sign(double seconds);
/* Deliverability machinery (MTA-STS fetches, TLS-RPT reports...): what, result. */
void	metrics_event(const char *what, const char *result);
/* Appends the exposition of everything above, and the process_* metrics. */
void	metrics_render(struct buf *);

#endif
