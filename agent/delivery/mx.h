/*
 * mx.h - DNS for delivery through libunbound: MX lookup with preference
 * order (equal preferences shuffled), implicit MX, null MX, addresses of
 * hosts, TLSA records with their DNSSEC status.  One resolver per process
 * that looks up (the delivery and fetch processes; the main process asks
 * the fetch process, fetch.h), thread-safe.
 */
#ifndef OTPMAIL_MX_H
#define OTPMAIL_MX_H

#include <stddef.h>
#include <sys/socket.h>

#include "agent/core/otpmaild.h"

enum mx_status {
	MX_OK = 0,
	MX_TEMPFAIL,	/* SERVFAIL, timeout, resolver trouble: defer */
	MX_NXDOMAIN,	/* the domain does not exist: permanent (5.1.2) */
	MX_NULLMX,	/* RFC 7505 null MX: permanent (5.1.10) */
	MX_NOHOST,	/* no MX and no address: permanent */
	MX_BADANSWER,	/* malformed answer: defer */
	MX_INTERNAL,	/* every address is internal (mx_addr_internal): permanent (5.4.4) */
};

struct mx_addr {
	struct sockaddr_storage	 ss;	/* port set to the destination port */
	socklen_t		 sslen;
};

struct mx_host {
	char		*name;		/* without the trailing dot */
	int		 pref;
	int		 secure;	/* the lookup that found it was DNSSEC-validated */
	size_t		 naddr;
	struct mx_addr	*addrs;		/* IPv6 and IPv4 */
};

struct mx_list {
	size_t		 nhosts;
	struct mx_host	*hosts;		/* in the order to try */
	int		 implicit;	/* no MX: the domain itself */
};

struct tlsa_rr {
	unsigned char	 usage, selector, mtype;
	unsigned char	*data;
	size_t		 len;
};

struct tlsa_set {
	int		 secure;	/* answer validated by DNSSEC */
	size_t		 n;
	struct tlsa_rr	*rrs;
};

struct mx_resolver;

struct mx_resolver *mx_resolver_new(const struct config *, char *err, size_t errlen);
/*
 * Another handle on the same libunbound context (its thread and caches,
 * about 1 MiB), with its own timeout (default 8000 ms).  The context goes
 * with the last handle freed.
 */
struct mx_resolver *mx_resolver_dup(struct mx_resolver *);
void		 mx_resolver_free(struct mx_resolver *);

/* MX hosts of a domain with their addresses (port = port). */
enum mx_status	 mx_lookup(struct mx_resolver *, const char *domain, int port,
		    struct mx_list **out, char *reason, size_t len);
/* Addresses of one host name or "[literal]" (routes, relays). */
enum mx_status	 mx_host(struct mx_resolver *, const char *host, int port,
		    struct mx_list **out, char *reason, size_t len);
void		 mx_list_free(struct mx_list *);
/* TLSA records at _port._tcp.host; MX_OK with set->n == 0 when none. */
enum mx_status	 mx_tlsa(struct mx_resolver *, const char *host, int port,
		    struct tlsa_set **out, char *reason, size_t len);
void		 tlsa_set_free(struct tlsa_set *);

/*
 * 1 if delivery found through DNS must not connect to a: unspecified,
 * loopback, private (RFC 1918, ULA), shared (100.64/10), link-local (and so
 * cloud metadata, 169.254.169.254), site-local, multicast, reserved,
 * benchmarking; IPv4-mapped, NAT64 and 6to4 addresses by their IPv4 part.
 */
int		 mx_addr_internal(const struct mx_addr *a);
/*
 * Drops the internal addresses of every host and the hosts left without
 * one (order kept); returns how many addresses went, and names the first
 * in first (may be NULL).
 */
size_t		 mx_list_drop_internal(struct mx_list *, char *first, size_t len);
/* TXT records at name, each record's strings joined, NULL-terminated
 * (empty when the name has none). */
enum mx_status	 mx_txt(struct mx_resolver *, const char *name, char ***out,
		    char *reason, size_t len);
/* PTR names of an address (NULL-terminated, free with mx_txt_free). */
enum mx_status	 mx_ptr(struct mx_resolver *, const struct mx_addr *, char ***out,
		    char *reason, size_t len);
void		 mx_txt_free(char **);

/*
 * The submission-time check (delivery_domain_check) without its lookup:
 * mx_check_local decides what needs no DNS (0 accept, -1 refuse with
 * detail, 1 ask DNS); mx_check_answer decides on the MX lookup's outcome
 * (st, l, why), dropping internal addresses from l: 0 or -1 with detail.
 */
int		 mx_check_local(const struct config *, const char *domain, char *detail,
		    size_t len);
int		 mx_check_answer(const struct config *, const char *domain, enum mx_status st,
		    struct mx_list *l, const char *why, char *detail, size_t len);

/* Short name of a status for logs ("tempfail", "nullmx", ...). */
const char	*mx_status_name(enum mx_status);

/* Bound of one lookup round in milliseconds (default 8000; tests lower it). */
void		 mx_resolver_set_timeout(struct mx_resolver *, int ms);

/* Answer parsing, exposed for the unit tests (tests/unit/test_mx.c). */
int		 mx_domain_valid(const char *);
/* Uncompressed wire name -> text without the trailing dot ("" = root). */
int		 mx_parse_name(const unsigned char *, size_t len, size_t *used,
		    char *out, size_t outlen);
int		 mx_parse_mx_rdata(const unsigned char *, size_t len, int *pref,
		    char *name, size_t namelen);
/* Fills rr (rr->data malloc'd) or returns -1. */
int		 mx_parse_tlsa_rdata(const unsigned char *, size_t len, struct tlsa_rr *);
/* MX rdata set -> hosts in the order to try (no addresses yet); MX_NULLMX,
 * MX_BADANSWER.  The hosts array and names are malloc'd. */
enum mx_status	 mx_hosts_from_rdata(char **data, const int *lens, size_t n,
		    struct mx_host **hosts, size_t *nhosts, char *reason, size_t len);
/* Sort by preference, shuffle equal preferences. */
void		 mx_order(struct mx_host *, size_t);
/* "[1.2.3.4]", "[IPv6:...]", "[::1]" or a bare address: 0; 1 = not a
 * literal; -1 = malformed literal. */
int		 mx_parse_literal(const char *host, int port, struct mx_addr *);

#endif
