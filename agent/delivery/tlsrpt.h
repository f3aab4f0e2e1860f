/*
 * tlsrpt.h - SMTP TLS reporting (RFC 8460): every TLS outcome of MX
 * delivery is counted per policy domain and policy (sts, tlsa or none) with
 * its result type; once per tls_rpt_interval the aggregate goes, as gzip'd
 * JSON, to the rua=mailto: address of the domain's _smtp._tls TXT record
 * through the normal queue.
 */
#ifndef OTPMAIL_TLSRPT_H
#define OTPMAIL_TLSRPT_H

#include <stddef.h>
#include <time.h>

struct mtasts_policy;

enum tlsrpt_ptype { TLSRPT_NOPOLICY = 0, TLSRPT_STS, TLSRPT_TLSA };

/*
 * One outcome: rtype NULL = a successful TLS session under the policy,
 * else its RFC 8460 result type; mx and ip may be NULL.
 */
void		 tlsrpt_record(const char *domain, enum tlsrpt_ptype,
		    const struct mtasts_policy *, const char *mx, const char *ip,
		    const char *rtype);
/* Set in the delivery process: tlsrpt_record hands its counts to this
 * (sts: under the domain's MTA-STS policy), for the main process. */
extern void	(*tlsrpt_forward)(const char *domain, enum tlsrpt_ptype, int sts,
		    const char *mx, const char *ip, const char *rtype);
struct otpmaild;
/*
 * Sends the reports of everything counted since the last call (one per
 * policy domain that publishes rua=mailto:) and starts a new period.
 */
void		 tlsrpt_send(struct otpmaild *, size_t *nsent, size_t *nfailed);
/* Successes and failures counted for domain since the last report. */
void		 tlsrpt_counts(const char *domain, unsigned long *ok,
		    unsigned long *fail);

#endif
