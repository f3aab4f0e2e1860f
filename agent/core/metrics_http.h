/*
 * metrics_http.h - the optional HTTP scrape endpoint for Prometheus
 * (metrics_listen = host:port; metrics_http.c).
 */
#ifndef OTPMAIL_METRICS_HTTP_H
#define OTPMAIL_METRICS_HTTP_H

#include <stddef.h>

#include "agent/core/otpmaild.h"

struct metrics_http;
/* Binds and listens (before privileges are dropped). */
struct metrics_http	*metrics_http_listen(const char *spec, char *err, size_t errlen);
/* Serves GET /metrics from a thread of its own. */
int			 metrics_http_start(struct metrics_http *, struct otpmaild *,
			    char *err, size_t errlen);
void			 metrics_http_stop(struct metrics_http *);

#endif
