/*
 * ops_tls.c - tls.policy: the TLS policy delivery to a domain follows and
 * where it comes from — "configured" (domain_tls_policy, a route or the
 * smarthost), "dane" (dane policy and TLSA records under DNSSEC for an MX
 * host), "mta-sts" (a testing or enforce policy, fetched or cached), or
 * "default" (tls_policy) — with the MTA-STS policy and TLS-RPT counters;
 * tls.report: send the TLS-RPT reports now instead of at tls_rpt_interval.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"

static json_t	*tls_ops_sts_json(const struct mtasts_policy *);
static json_t	*tls_ops_dane(struct otpmaild *, const char *domain, int *any);

static json_t *
tls_ops_sts_json(const struct mtasts_policy *p)
{
	json_t *o = json_object(), *mx = json_array();
	size_t i;

	for (i = 0; i < p->nmx; i++)
		json_array_append_new(mx, json_string(p->mx[i]));
	json_object_set_new(o, "mode", json_string(mtasts_mode_name(p->mode)));
	json_object_set_new(o, "mx", mx);
	json_object_set_new(o, "max_age", json_integer(p->max_age));
	json_object_set_new(o, "id", json_string(p->id));
	json_object_set_new(o, "fetched", json_integer((json_int_t)p->fetched));
	json_object_set_new(o, "expires", json_integer((json_int_t)p->expires));
	json_object_set_new(o, "from_cache", json_boolean(p->from_cache));
	return o;
}

/* The MX hosts with their TLSA status; *any = one has secure TLSA records. */
static json_t *
tls_ops_dane(struct otpmaild *d, const char *domain, int *any)
{
	struct mx_list *list = NULL;
	json_t *hosts = json_array(), *h;
	char why[256];
	size_t i, n;
	int secure;

	/* the lookups are the fetch process's */
	*any = 0;
	if (fetch_mx_lookup(domain, d->cfg->smtp_port, &list, why, sizeof(why)) != MX_OK ||
	    list == NULL)
		return hosts;
	for (i = 0; i < list->nhosts; i++) {
		const struct mx_host *mh = &list->hosts[i];

		h = json_pack("{s:s,s:b}", "host", mh->name, "dnssec", mh->secure);
		if (mh->secure && fetch_tlsa(mh->name, d->cfg->smtp_port, &n, &secure, why,
		    sizeof(why)) == MX_OK) {
			json_object_set_new(h, "tlsa", json_integer((json_int_t)n));
			if (secure && n > 0)
				*any = 1;
		}
		json_array_append_new(hosts, h);
	}
	mx_list_free(list);
	return hosts;
}

json_t *
op_tls_report(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	size_t ns, nf;
	json_t *r;

	if (d->cfg->sandbox)
		return reply_error("unavailable", "sandbox mode: no TLS reports");
	tlsrpt_send(d, &ns, &nf);
	r = reply_ok();
	json_object_set_new(r, "reports_queued", json_integer((json_int_t)ns));
	json_object_set_new(r, "reports_failed", json_integer((json_int_t)nf));
	(void)peer;
	(void)req;
	return r;
}

json_t *
op_tls_policy(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	const struct config *cfg = d->cfg;
	struct mtasts_policy pol;
	enum mtasts_status st = MTASTS_ABSENT;
	enum tls_policy policy;
	const char *dom, *rtype = NULL, *source;
	char domain[MTASTS_NAME_MAX + 1], why[512];
	unsigned long nok, nfail;
	json_t *err = NULL, *r, *hosts = NULL;
	int configured, dane = 0, sts = 0;
	size_t i;

	if (req_str(req, "domain", 1, MTASTS_NAME_MAX, &dom, &err) == -1)
		return err;
	for (i = 0; dom[i] != '\0'; i++)
		domain[i] = (char)tolower((unsigned char)dom[i]);
	domain[i] = '\0';
	if (i > 0 && domain[i - 1] == '.')
		domain[i - 1] = '\0';
	if (!mx_domain_valid(domain) || strchr(domain, '.') == NULL)
		return reply_bad_field("domain", "not a domain name");
	policy = config_tls_policy(cfg, domain);
	configured = mtasts_configured(cfg, domain) || config_route(cfg, domain) != NULL ||
	    cfg->smarthost != NULL;
	r = reply_ok();
	json_object_set_new(r, "domain", json_string(domain));
	if (policy == TLS_DANE && config_route(cfg, domain) == NULL && cfg->smarthost == NULL) {
		hosts = tls_ops_dane(d, domain, &dane);
		json_object_set_new(r, "mx", hosts);
	}
	if (!configured && cfg->mta_sts && !cfg->sandbox) {
		st = mtasts_get(mtasts_shared(cfg, d->state_dir), domain, &pol, &rtype,
		    why, sizeof(why));
		if (st == MTASTS_FOUND) {
			json_object_set_new(r, "mta_sts", tls_ops_sts_json(&pol));
			sts = pol.mode != MTASTS_NONE;
		} else if (st == MTASTS_FAILED) {
			json_object_set_new(r, "mta_sts_error", json_pack("{s:s,s:s}",
			    "result_type", rtype ? rtype : "sts-policy-fetch-error",
			    "detail", why));
		}
	}
	/* DANE first (RFC 8461 2), then an explicit setting, then MTA-STS */
	if (dane)
		source = "dane";
	else if (configured)
		source = "configured";
	else if (sts)
		source = "mta-sts";
	else
		source = "default";
	json_object_set_new(r, "source", json_string(source));
	json_object_set_new(r, "policy", json_string(strcmp(source, "mta-sts") == 0 &&
	    pol.mode == MTASTS_ENFORCE ? "verify" : tls_policy_name(policy)));
	if (cfg->sandbox)
		json_object_set_new(r, "note", json_string("sandbox mode: nothing is "
		    "delivered over the network"));
	tlsrpt_counts(domain, &nok, &nfail);
	json_object_set_new(r, "tls_sessions", json_pack("{s:I,s:I}", "ok",
	    (json_int_t)nok, "failed", (json_int_t)nfail));
	(void)peer;
	return r;
}
