/*
 * cluster_int.h - the cluster handle, shared by cluster.c (settings, keys)
 * and cluster_relay.c (the TLS relay).  Not for other files.
 */
#ifndef OTPMAIL_CLUSTER_INT_H
#define OTPMAIL_CLUSTER_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <openssl/ssl.h>

#include "agent/core/cluster.h"

struct cluster {
	int		 nsites, self, base_port;
	char		 addr[STORE_CLUSTER_MAX][CLUSTER_ADDR_MAX];
	char		 host[STORE_CLUSTER_MAX][CLUSTER_ADDR_MAX];
	char		 port[STORE_CLUSTER_MAX][8];
	uint8_t		 psk[32];
	/* the relay (cluster_relay.c) */
	SSL_CTX		*cctx, *sctx;
	int		 lfd[STORE_CLUSTER_MAX];	/* [self]: TLS; others: loopback */
	int		 stop_pipe[2];
	pthread_t	 acceptor;
	int		 running;
	_Atomic int	 stop;
	_Atomic int	 streams;		/* open now */
	/* a site whose relay could not be reached: its loopback port stays
	 * closed until then, so repmgr sees it down, not up-then-gone */
	_Atomic long	 down_until[STORE_CLUSTER_MAX];
	_Atomic uint64_t refused, total;
};

void	cluster_derive(const uint8_t *secret, size_t len, const char *label,
	    uint8_t out[32]);

#endif
