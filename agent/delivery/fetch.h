/*
 * fetch.h - the fetch process: what otpmaild asks of other hosts outside
 * SMTP -- every DNS lookup of the main process (MTA-STS and TLS-RPT
 * records, the submission check, domain.check, dkim.check, tls.policy),
 * MTA-STS policies over HTTPS, webhook POSTs -- is done by a process of
 * its own (fetch.c), so that no DNS answer, TLS record or HTTP body from a
 * remote host is parsed where the DKIM keys, the OTP secret and the
 * database are.  The main
 * process asks over a few standing connections (one request at a time on
 * each) and gets a small checked answer (dlproto.h); a lost process is
 * restarted at the next request (at most once a second) and the request
 * fails like a network error.
 */
#ifndef OTPMAIL_FETCH_H
#define OTPMAIL_FETCH_H

#include <stddef.h>
#include <sys/types.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"

#define FETCH_ARG		"--fetch-child"
/* A test hook: the fetch process answers requests for this name twice
 * (the second 100 ms later), as a reply after its request timed out. */
#define FETCH_LATE_ENV		"OTPMAIL_TEST_FETCH_LATE"
/* Test hooks: the fetch process never answers requests for this name (a
 * process stuck in a library), and the seconds the main process allows a
 * request over the HTTP timeouts (default FETCH_DNS_SLACK), so a test sees
 * the request timeout in seconds, not in a quarter of a minute. */
#define FETCH_HANG_ENV		"OTPMAIL_TEST_FETCH_HANG"
#define FETCH_SLACK_ENV		"OTPMAIL_TEST_FETCH_SLACK"

/* Remembers how to start the process and starts it if the config will use
 * it (outside the sandbox, or webhooks); else the first request starts it.
 * 0 or -1 with err. */
int		 fetch_start(struct otpmaild *, char *err, size_t errlen);
/* Ends the process (the main process is stopping). */
void		 fetch_stop(void);
/* The process's pid, or -1. */
pid_t		 fetch_pid(void);

/*
 * DNS through the process, as mx.h's functions do it (statuses, lists to
 * free the same way); MX_TEMPFAIL with why when the process gave no answer.
 */
/* TXT records of name: MX_OK with *txt (NULL-terminated, mx_txt_free). */
enum mx_status	 fetch_txt(const char *name, char ***txt, char *why, size_t whylen);
/* PTR names of an address (printable; mx_txt_free). */
enum mx_status	 fetch_ptr(const struct mx_addr *, char ***names, char *why, size_t whylen);
/* MX hosts of a domain, addresses of one host (mx_lookup, mx_host). */
enum mx_status	 fetch_mx_lookup(const char *domain, int port, struct mx_list **out,
		    char *why, size_t whylen);
enum mx_status	 fetch_mx_host(const char *host, int port, struct mx_list **out,
		    char *why, size_t whylen);
/* How many TLSA records _port._tcp.host has, and whether DNSSEC validated them. */
enum mx_status	 fetch_tlsa(const char *host, int port, size_t *n, int *secure,
		    char *why, size_t whylen);
/* 1 when the calling thread's last request got no answer from the process
 * (gone, restarting, cannot start), not a DNS failure. */
int		 fetch_failed(void);
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
