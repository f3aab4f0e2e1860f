/*
 * delivery.h - the delivery workers: lease due messages from the queue,
 * route them (sandbox Maildir, route override, smarthost, or MX), speak SMTP
 * and report per-recipient outcomes back to the queue.
 */
#ifndef OTPMAIL_DELIVERY_H
#define OTPMAIL_DELIVERY_H

#include <stddef.h>
#include "agent/core/otpmaild.h"

struct delivery	*delivery_start(struct otpmaild *, char *err, size_t errlen);
/* Stops taking work, lets in-flight sessions end within their timeouts. */
void		 delivery_stop(struct delivery *);

/*
 * Submission-time deliverability check of a recipient domain: returns 0 if
 * the domain may receive mail (or DNS could not tell: timeouts never refuse),
 * -1 with a reason in detail if it does not exist or has a null MX.
 */
int		 delivery_domain_check(struct otpmaild *, const char *domain,
		    char *detail, size_t len);

#endif
