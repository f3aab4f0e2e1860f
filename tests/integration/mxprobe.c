/*
 * mxprobe.c - prints what agent/delivery/mx.c finds, for the integration tests
 * (test_mx.py, test_dane.py) run against a real DNS server on loopback.
 *   mxprobe [-r resolver] [-a trust_anchor] [-T timeout_ms] mx DOMAIN [port]
 *   mxprobe ... host HOST [port] | tlsa HOST [port] | check DOMAIN
 * Output: "status=<name>" first, then "host ..." or "tlsa ..." lines,
 * "reason=..." and "elapsed_ms=N".  Exit 0 unless the usage is wrong.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/config.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/mx.h"
#include "agent/core/otpmaild.h"

static void	 mxprobe_list(const struct mx_list *);
static void	 mxprobe_usage(void);

static void
mxprobe_usage(void)
{
	fprintf(stderr, "usage: mxprobe [-r resolver] [-a trust_anchor] "
	    "[-T timeout_ms] mx|host|tlsa|check NAME [port]\n");
}

static void
mxprobe_list(const struct mx_list *l)
{
	char buf[INET6_ADDRSTRLEN];
	size_t i, j;

	printf("implicit=%d nhosts=%zu\n", l->implicit, l->nhosts);
	for (i = 0; i < l->nhosts; i++) {
		const struct mx_host *h = &l->hosts[i];
		printf("host name=%s pref=%d secure=%d addrs=", h->name, h->pref,
		    h->secure);
		for (j = 0; j < h->naddr; j++) {
			const struct sockaddr_storage *ss = &h->addrs[j].ss;
			int port;
			if (ss->ss_family == AF_INET6) {
				const struct sockaddr_in6 *s6 = (const void *)ss;
				inet_ntop(AF_INET6, &s6->sin6_addr, buf, sizeof(buf));
				port = ntohs(s6->sin6_port);
				printf("%s[%s]:%d", j ? "," : "", buf, port);
			} else {
				const struct sockaddr_in *s4 = (const void *)ss;
				inet_ntop(AF_INET, &s4->sin_addr, buf, sizeof(buf));
				port = ntohs(s4->sin_port);
				printf("%s%s:%d", j ? "," : "", buf, port);
			}
		}
		printf("\n");
	}
}

int
main(int argc, char **argv)
{
	struct config cfg;
	struct mx_resolver *r;
	struct mx_list *l = NULL;
	struct tlsa_set *t = NULL;
	struct timespec t0, t1;
	enum mx_status st = MX_OK;
	char err[512], reason[512] = "";
	const char *cmd, *name;
	int ch, port = 25, timeout = 0;
	size_t i, j;

	memset(&cfg, 0, sizeof(cfg));
	cfg.resolver = "";
	cfg.dns_trust_anchor = "";
	while ((ch = getopt(argc, argv, "r:a:T:")) != -1) {
		switch (ch) {
		case 'r': cfg.resolver = optarg; break;
		case 'a': cfg.dns_trust_anchor = optarg; break;
		case 'T': timeout = atoi(optarg); break;
		default: mxprobe_usage(); return 2;
		}
	}
	if (argc - optind < 2) {
		mxprobe_usage();
		return 2;
	}
	cmd = argv[optind];
	name = argv[optind + 1];
	if (argc - optind > 2)
		port = atoi(argv[optind + 2]);
	if ((r = mx_resolver_new(&cfg, err, sizeof(err))) == NULL) {
		printf("status=resolver_error\nreason=%s\n", err);
		return 1;
	}
	if (timeout > 0)
		mx_resolver_set_timeout(r, timeout);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (strcmp(cmd, "mx") == 0) {
		st = mx_lookup(r, name, port, &l, reason, sizeof(reason));
	} else if (strcmp(cmd, "host") == 0) {
		st = mx_host(r, name, port, &l, reason, sizeof(reason));
	} else if (strcmp(cmd, "tlsa") == 0) {
		st = mx_tlsa(r, name, port, &t, reason, sizeof(reason));
	} else if (strcmp(cmd, "check") == 0) {
		/* delivery_domain_check with the shared resolver (3 s), as the
		 * daemon's fetch process answers it */
		/* the test zones' MX hosts live on loopback */
		cfg.mx_allow_internal = 1;
		if ((ch = mx_check_local(&cfg, name, reason, sizeof(reason))) == 1) {
			struct mx_resolver *sr = mx_resolver_shared(&cfg, err, sizeof(err));
			char why[512] = "resolver";

			st = sr != NULL ? mx_lookup(sr, name, 25, &l, why, sizeof(why)) :
			    MX_TEMPFAIL;
			ch = mx_check_answer(&cfg, name, st, l, why, reason, sizeof(reason));
		}
		printf("status=%s\n", ch == 0 ? "accept" : "refuse");
		goto out;
	} else {
		mxprobe_usage();
		mx_resolver_free(r);
		return 2;
	}
	printf("status=%s\n", mx_status_name(st));
	if (l != NULL)
		mxprobe_list(l);
	if (t != NULL) {
		printf("tlsa secure=%d n=%zu\n", t->secure, t->n);
		for (i = 0; i < t->n; i++) {
			printf("rr %u %u %u ", t->rrs[i].usage, t->rrs[i].selector,
			    t->rrs[i].mtype);
			for (j = 0; j < t->rrs[i].len; j++)
				printf("%02x", t->rrs[i].data[j]);
			printf("\n");
		}
	}
out:
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("reason=%s\n", reason);
	printf("elapsed_ms=%ld\n", (long)((t1.tv_sec - t0.tv_sec) * 1000 +
	    (t1.tv_nsec - t0.tv_nsec) / 1000000));
	mx_list_free(l);
	tlsa_set_free(t);
	mx_resolver_free(r);
	mx_resolver_shared_free();
	return 0;
}
