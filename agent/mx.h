/*
 * mx.h - DNS for delivery through libunbound: MX lookup with preference
 * order (equal preferences shuffled), implicit MX, null MX, addresses of
 * hosts, TLSA records with their DNSSEC status.  One resolver per daemon,
 * thread-safe.
 */
#ifndef OTPMAIL_MX_H
#define OTPMAIL_MX_H

#include <stddef.h>
#include <sys/socket.h>

#include "agent/config.h"

enum mx_status {
	MX_OK = 0,
	MX_TEMPFAIL,	/* SERVFAIL, timeout, resolver trouble: defer */
	MX_NXDOMAIN,	/* the domain does not exist: permanent (5.1.2) */
	MX_NULLMX,	/* RFC 7505 null MX: permanent (5.1.10) */
	MX_NOHOST,	/* no MX and no address: permanent */
	MX_BADANSWER,	/* malformed answer: defer */
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

#endif
