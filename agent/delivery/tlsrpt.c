/*
 * tlsrpt.c - the TLS-RPT aggregate (see tlsrpt.h): counters in memory per
 * (domain, policy type, policy id), bounded in domains and in failure
 * detail rows; what does not fit is counted, not detailed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/delivery/mtasts.h"
#include "agent/delivery/tlsrpt.h"

#define TLSRPT_POLICIES_MAX	1000
#define TLSRPT_DETAILS_MAX	32

struct tlsrpt_detail {
	char		 rtype[40];
	char		 mx[MTASTS_NAME_MAX + 1];
	char		 ip[64];
	unsigned long	 n;
};

struct tlsrpt_policy {
	char			 domain[MTASTS_NAME_MAX + 1];
	enum tlsrpt_ptype	 ptype;
	char			 id[MTASTS_ID_MAX + 1];
	struct mtasts_policy	 sts;		/* ptype sts */
	unsigned long		 ok, fail;
	struct tlsrpt_detail	 d[TLSRPT_DETAILS_MAX];
	size_t			 nd;
	struct tlsrpt_policy	*next;
};

static pthread_mutex_t		 tlsrpt_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tlsrpt_policy	*tlsrpt_list;
static size_t			 tlsrpt_n;

void
tlsrpt_record(const char *domain, enum tlsrpt_ptype ptype,
    const struct mtasts_policy *sts, const char *mx, const char *ip,
    const char *rtype)
{
	const char *id = ptype == TLSRPT_STS && sts != NULL ? sts->id : "";
	struct tlsrpt_policy *p;
	size_t i;

	pthread_mutex_lock(&tlsrpt_mu);
	for (p = tlsrpt_list; p != NULL; p = p->next)
		if (p->ptype == ptype && strcmp(p->domain, domain) == 0 &&
		    strcmp(p->id, id) == 0)
			break;
	if (p == NULL) {
		if (tlsrpt_n >= TLSRPT_POLICIES_MAX || (p = calloc(1, sizeof(*p))) == NULL)
			goto out;
		snprintf(p->domain, sizeof(p->domain), "%s", domain);
		snprintf(p->id, sizeof(p->id), "%s", id);
		p->ptype = ptype;
		if (ptype == TLSRPT_STS && sts != NULL)
			p->sts = *sts;
		p->next = tlsrpt_list;
		tlsrpt_list = p;
		tlsrpt_n++;
	}
	if (rtype == NULL) {
		p->ok++;
		goto out;
	}
	p->fail++;
	for (i = 0; i < p->nd; i++)
		if (strcmp(p->d[i].rtype, rtype) == 0 &&
		    strcmp(p->d[i].mx, mx ? mx : "") == 0 &&
		    strcmp(p->d[i].ip, ip ? ip : "") == 0)
			break;
	if (i == p->nd) {
		if (p->nd == TLSRPT_DETAILS_MAX)
			goto out;
		snprintf(p->d[i].rtype, sizeof(p->d[i].rtype), "%s", rtype);
		snprintf(p->d[i].mx, sizeof(p->d[i].mx), "%s", mx ? mx : "");
		snprintf(p->d[i].ip, sizeof(p->d[i].ip), "%s", ip ? ip : "");
		p->nd++;
	}
	p->d[i].n++;
out:
	pthread_mutex_unlock(&tlsrpt_mu);
}

void
tlsrpt_counts(const char *domain, unsigned long *ok, unsigned long *fail)
{
	struct tlsrpt_policy *p;

	*ok = *fail = 0;
	pthread_mutex_lock(&tlsrpt_mu);
	for (p = tlsrpt_list; p != NULL; p = p->next)
		if (strcmp(p->domain, domain) == 0) {
			*ok += p->ok;
			*fail += p->fail;
		}
	pthread_mutex_unlock(&tlsrpt_mu);
}
