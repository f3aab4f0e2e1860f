/*
 * cluster.h - otpmaild on several hosts: the cluster_* settings, the keys
 * derived from the cluster secret, and the TLS relay that carries the
 * Replication Manager's streams between hosts (cluster.c, cluster_relay.c).
 */
#ifndef OTPMAIL_CLUSTER_H
#define OTPMAIL_CLUSTER_H

#include <stdint.h>

#include "agent/core/config.h"
#include "store/store.h"

#define CLUSTER_ADDR_MAX	300

struct cluster;

/* NULL with err[0] == 0: no cluster configured (alone). */
struct cluster	*cluster_open(const struct config *, const char *state_dir,
		    struct store_cluster *out, char *err, size_t errlen);
/* Starts the relay: before store_open, which waits for a master through it. */
int		 cluster_relay_start(struct cluster *, char *err, size_t errlen);
void		 cluster_close(struct cluster *);

int		 cluster_nsites(const struct cluster *);
int		 cluster_self(const struct cluster *);	/* this site's index */
const char	*cluster_site_addr(const struct cluster *, int j);	/* host:port */
int		 cluster_base_port(const struct cluster *);
/* TLS handshakes that failed (a stranger, or a site without the secret). */
uint64_t	 cluster_relay_refused(const struct cluster *);
uint64_t	 cluster_relay_streams(const struct cluster *);

#endif
