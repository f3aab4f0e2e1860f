/*
 * delivery.h - the interface of agent/delivery/, the side of the daemon
 * that talks to other hosts: delivery workers that lease due messages from
 * the queue, route them (sandbox Maildir, route override, smarthost, or MX
 * via libunbound), speak SMTP through libetpan over an OpenSSL stream under
 * the TLS policy, and report per-recipient outcomes back to the queue.
 *
 * May call: queue/ (lease, outcomes), agent/core/ (config, log, metrics)
 * and agent/mail/ (address checks).  Must not touch: store/ (codes and
 * secrets), dkim/ (messages arrive signed), the control socket.  Other
 * folders include only this header, which brings in the parts others may
 * use: bounce classification of a reply (bounce.h), DNS answers' types and checks (mx.h), the
 * MTA-STS policy cache and TLS-RPT counts (mtasts.h, tlsrpt.h) and the
 * sandbox Maildir (sandbox.h), the entry of the delivery process that
 * main() hands over to (privsep.h), the root spawner main() starts before
 * it drops privileges (spawner.h), and the fetch process (fetch.h: every
 * DNS lookup of the main process -- MX, host, TXT, PTR, TLSA --, MTA-STS
 * fetches and webhook POSTs, done outside it); smtp.h, tlsstream.h and
 * dlproto.h are internal.
 */
#ifndef OTPMAIL_DELIVERY_H
#define OTPMAIL_DELIVERY_H

#include <stddef.h>
#include "agent/core/otpmaild.h"
#include "agent/delivery/bounce.h"
#include "agent/delivery/fetch.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"
#include "agent/delivery/privsep.h"
#include "agent/delivery/sandbox.h"
#include "agent/delivery/spawner.h"
#include "agent/delivery/tlsrpt.h"

struct delivery	*delivery_start(struct otpmaild *, char *err, size_t errlen);
/* At the start: until the delivery processes have started (10 s at most). */
void		 delivery_wait_ready(struct delivery *);
/* Stops taking work, lets in-flight sessions end within their timeouts. */
void		 delivery_stop(struct delivery *);
/* The delivery process's main (privsep.c): workers on fds fd0..fd0+n. */
int		 delivery_child_run(struct otpmaild *, int fd0, int n, char *err,
		    size_t errlen);

/*
 * Submission-time deliverability check of a recipient domain: returns 0 if
 * the domain may receive mail (or DNS could not tell: timeouts never refuse),
 * -1 with a reason in detail if it does not exist or has a null MX.  The
 * lookup is the fetch process's (fetch.c).
 */
int		 delivery_domain_check(struct otpmaild *, const char *domain,
		    char *detail, size_t len);

/*
 * The resolver of a process, made from cfg on first use (thread-safe),
 * with lookups bounded to 3 s: the delivery process takes a handle on it
 * (mx_resolver_dup), the fetch process answers the main process's lookups
 * with it (fetch.h).  The main process never holds one: at start it only
 * makes one and frees it (mx_resolver_check), so a bad resolver or trust
 * anchor fails the start.  NULL with err set if it cannot be made.
 */
struct mx_resolver;
struct mx_resolver *mx_resolver_shared(const struct config *, char *err, size_t errlen);
void		 mx_resolver_shared_free(void);
int		 mx_resolver_check(const struct config *, char *err, size_t errlen);

#endif
