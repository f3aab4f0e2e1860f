/*
 * fetch.h - the fetch process: what otpmaild asks of other hosts outside
 * SMTP -- the TXT records of MTA-STS and TLS-RPT, MTA-STS policies over
 * HTTPS, webhook POSTs -- is done by a process of its own (fetch.c), so
 * that no DNS answer, TLS record or HTTP body from a remote host is parsed
 * where the DKIM keys, the OTP secret and the database are.  The main
 * process asks, one request per connection, and gets a small checked
 * answer (dlproto.h); a lost process is restarted at the next request
 * (at most once a second) and the request fails like a network error.
 */
#ifndef OTPMAIL_FETCH_H
#define OTPMAIL_FETCH_H

#include <stddef.h>
#include <sys/types.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"

#define FETCH_ARG		"--fetch-child"

/* Remembers how to start the process and starts it if the config will use
 * it (MTA-STS or TLS-RPT outside the sandbox, webhooks).  0 or -1 with err. */
int		 fetch_start(struct otpmaild *, char *err, size_t errlen);
/* Ends the process (the main process is stopping). */
void		 fetch_stop(void);
/* The process's pid, or -1. */
pid_t		 fetch_pid(void);

/* TXT records of name: MX_OK with *txt (NULL-terminated, mx_txt_free). */
enum mx_status	 fetch_txt(const char *name, char ***txt, char *why, size_t whylen);
/* The MTA-STS policy of domain (mode, max_age, mx only): 0, or -1 with
 * rtype (an RFC 8460 result type) and why. */
int		 fetch_sts(const char *domain, struct mtasts_policy *pol,
		    const char **rtype, char *why, size_t whylen);
/* POSTs body to url (https only) with the header lines hdr: 0 with *code
 * (the HTTP status), or -1 with why when no status came. */
int		 fetch_post(const char *url, const char *const *hdr, size_t nhdr,
		    const char *body, size_t len, long *code, char *why, size_t whylen);

/* main() of the fetch process (argv as privsep_spawn_role makes it). */
int		 fetch_child_main(int argc, char **argv);

#endif
