/*
 * mtasts.h - MTA-STS (RFC 8461): the _mta-sts TXT record, the policy
 * fetched over HTTPS (libcurl, certificate and host name checked, size and
 * time bounded), its parser and MX matcher, and the cache of policies by
 * domain, kept in <state_dir>/mta-sts.json across restarts.  One cache per
 * daemon (mtasts_shared), thread-safe.
 */
#ifndef OTPMAIL_MTASTS_H
#define OTPMAIL_MTASTS_H

#include <stddef.h>
#include <time.h>

#include "agent/core/otpmaild.h"

#define MTASTS_POLICY_MAX	65536		/* bytes of a policy file */
#define MTASTS_MAX_AGE_MAX	31557600	/* RFC 8461 3.2: about a year */
#define MTASTS_MX_MAX		32		/* mx lines kept */
#define MTASTS_ID_MAX		32
#define MTASTS_NAME_MAX		253

enum mtasts_mode { MTASTS_NONE = 0, MTASTS_TESTING, MTASTS_ENFORCE };

struct mtasts_policy {
	enum mtasts_mode mode;
	long		 max_age;
	size_t		 nmx;
	char		 mx[MTASTS_MX_MAX][MTASTS_NAME_MAX + 1];	/* lower case */
	char		 id[MTASTS_ID_MAX + 1];		/* of the TXT record */
	time_t		 fetched;
	time_t		 expires;			/* fetched + max_age */
	int		 from_cache;	/* this lookup used the stored copy */
};

/* The answer of mtasts_get. */
enum mtasts_status {
	MTASTS_FOUND = 0,	/* a policy in *out (mode may be none) */
	MTASTS_ABSENT,		/* the domain publishes no policy */
	MTASTS_FAILED,		/* it announces one that could not be had:
				 * deliver as without one (RFC 8461 5), report */
};

struct mx_resolver;
struct mtasts;

/* The daemon's cache, made on first use from cfg (thread-safe). */
struct mtasts	*mtasts_shared(const struct config *, const char *state_dir);
void		 mtasts_shared_free(void);

/*
 * The policy in force for domain: from the cache while its TXT id is
 * unchanged (the TXT record is looked at every mta_sts_check_interval),
 * fetched when new, changed or half-way to expiry.  A failed fetch keeps
 * an unexpired cached policy.  On MTASTS_FAILED, rtype is the RFC 8460
 * result type (sts-policy-fetch-error, sts-policy-invalid,
 * sts-webpki-invalid) and why says what went wrong.
 */
enum mtasts_status mtasts_get(struct mtasts *, const char *domain,
		    struct mtasts_policy *out, const char **rtype,
		    char *why, size_t whylen);

/*
 * Refetches the cached policies past half their max_age, so a policy does
 * not lapse while no mail goes to its domain (RFC 8461 5.1).  The daemon
 * calls it every mta_sts_check_interval.
 */
void		 mtasts_refresh(struct mtasts *);
/* 1 if a domain_tls_policy entry names domain (it overrides MTA-STS). */
int		 mtasts_configured(const struct config *, const char *domain);
/*
 * The policy MX delivery to domain follows: 1 with *out in testing or
 * enforce mode; 0 when MTA-STS is off, overridden by domain_tls_policy, or
 * the domain has no usable policy (a failed fetch is reported to TLS-RPT).
 */
int		 mtasts_for_delivery(const struct config *, const char *state_dir,
		    const char *domain, struct mtasts_policy *out);

/*
 * The fetch process's part (fetch.c): looks up mta-sts.<domain> with mx,
 * GETs and parses its policy (cfg: tls_ca_file, mta_sts_fetch_timeout,
 * mx_allow_internal).  0 with *pol, or -1 with rtype and why.
 */
int		 mtasts_fetch_policy(struct mx_resolver *mx, const struct config *cfg,
		    const char *domain, struct mtasts_policy *pol, const char **rtype,
		    char *why, size_t whylen);
/* The policy as a canonical policy file (malloc'd), which mtasts_parse reads. */
char		*mtasts_policy_text(const struct mtasts_policy *);

/* Parsing, exposed for tests/unit/test_mtasts.c. */
int		 mtasts_parse(const char *text, size_t len, struct mtasts_policy *,
		    char *err, size_t errlen);
/* "v=STSv1; id=...": 0 with the id, 1 not an STS record, -1 malformed. */
int		 mtasts_txt_id(const char *txt, char *id, size_t idlen);
/* 1 if host matches one of the policy's mx patterns (RFC 8461 4.1). */
int		 mtasts_mx_match(const struct mtasts_policy *, const char *host);
const char	*mtasts_mode_name(enum mtasts_mode);

#endif
