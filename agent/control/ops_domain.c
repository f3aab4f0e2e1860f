/*
 * ops_domain.c - domain.check: what receivers will look up about a sending
 * domain, line by line OK / WARN / FAIL — its DKIM records against the
 * loaded keys, SPF evaluated for this host's addresses (ip4, ip6, a, mx,
 * include, redirect, all), DMARC, forward-confirmed reverse DNS of the
 * host, and MTA-STS and TLS-RPT for mail it receives.  Lookups are the
 * fetch process's (fetch.h): no DNS answer is parsed here.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"

#define DOM_SPF_DEPTH	5	/* include/redirect levels followed */

enum dom_spf { SPF_NONE, SPF_PASS, SPF_FAIL, SPF_UNKNOWN };

static void	 dom_line(json_t *, size_t *, const char *check, const char *status,
		    const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static char	*dom_txt(const char *name, const char *prefix, size_t *n);
static int	 dom_cidr(const struct mx_addr *, const char *spec, int is6);
static int	 dom_addr_in(const struct mx_addr *, const char *host, int mx);
static enum dom_spf dom_spf_eval(const char *domain, const struct mx_addr *, int depth);
static void	 dom_check_dkim(struct otpmaild *, const struct ctl_peer *,
		    const char *, json_t *, size_t *);

static void
dom_line(json_t *lines, size_t *fails, const char *check, const char *status,
    const char *fmt, ...)
{
	char detail[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	json_array_append_new(lines, json_pack("{s:s,s:s,s:s}", "check", check,
	    "status", status, "detail", detail));
	if (strcmp(status, "FAIL") == 0)
		(*fails)++;
}

/* The one TXT record at name starting with prefix (malloc'd), *n = how many. */
static char *
dom_txt(const char *name, const char *prefix, size_t *n)
{
	char **v = NULL, why[256], *found = NULL;
	size_t i, pl = strlen(prefix);

	*n = 0;
	if (fetch_txt(name, &v, why, sizeof(why)) != MX_OK)
		return NULL;
	for (i = 0; v[i] != NULL; i++)
		if (strncasecmp(v[i], prefix, pl) == 0 && (v[i][pl] == '\0' ||
		    v[i][pl] == ' ' || v[i][pl] == ';')) {
			(*n)++;
			if (found == NULL)
				found = strdup(v[i]);
		}
	mx_txt_free(v);
	return found;
}

/* Does the address fall in "addr[/bits]"? */
static int
dom_cidr(const struct mx_addr *a, const char *spec, int is6)
{
	unsigned char net[16], mine[16];
	char buf[64], *slash;
	int bits, len = is6 ? 16 : 4, i;

	if ((a->ss.ss_family == AF_INET6) != is6)
		return 0;
	snprintf(buf, sizeof(buf), "%s", spec);
	bits = len * 8;
	if ((slash = strchr(buf, '/')) != NULL) {
		*slash = '\0';
		bits = atoi(slash + 1);
	}
	if (bits < 0 || bits > len * 8 || inet_pton(is6 ? AF_INET6 : AF_INET, buf, net) != 1)
		return 0;
	memcpy(mine, is6 ? (const void *)&((const struct sockaddr_in6 *)&a->ss)->sin6_addr :
	    (const void *)&((const struct sockaddr_in *)&a->ss)->sin_addr, (size_t)len);
	for (i = 0; bits > 0; i++, bits -= 8) {
		unsigned char m = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));

		if ((net[i] & m) != (mine[i] & m))
			return 0;
	}
	return 1;
}

/* Is the address one of host's (a) or of its MX hosts' (mx)? */
static int
dom_addr_in(const struct mx_addr *a, const char *host, int mx)
{
	struct mx_list *l = NULL;
	char why[256], ip[64], other[64];
	size_t i, k;
	int hit = 0;

	if ((mx ? fetch_mx_lookup(host, 25, &l, why, sizeof(why)) :
	    fetch_mx_host(host, 25, &l, why, sizeof(why))) != MX_OK || l == NULL)
		return 0;
	inet_ntop(a->ss.ss_family, a->ss.ss_family == AF_INET ?
	    (const void *)&((const struct sockaddr_in *)&a->ss)->sin_addr :
	    (const void *)&((const struct sockaddr_in6 *)&a->ss)->sin6_addr, ip, sizeof(ip));
	for (i = 0; i < l->nhosts && !hit; i++)
		for (k = 0; k < l->hosts[i].naddr && !hit; k++) {
			const struct sockaddr_storage *ss = &l->hosts[i].addrs[k].ss;

			inet_ntop(ss->ss_family, ss->ss_family == AF_INET ?
			    (const void *)&((const struct sockaddr_in *)ss)->sin_addr :
			    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr,
			    other, sizeof(other));
			hit = strcmp(ip, other) == 0;
		}
	mx_list_free(l);
	return hit;
}

/* RFC 7208 check_host() for one address, the common mechanisms only. */
static enum dom_spf
dom_spf_eval(const char *domain, const struct mx_addr *a, int depth)
{
	char *rec, *tok, *save = NULL, *redirect = NULL, name[300];
	enum dom_spf res = SPF_NONE, sub;
	size_t n;

	if (depth > DOM_SPF_DEPTH || (rec = dom_txt(domain, "v=spf1", &n)) == NULL)
		return SPF_UNKNOWN;
	for (tok = strtok_r(rec + 6, " ", &save); tok != NULL && res == SPF_NONE;
	    tok = strtok_r(NULL, " ", &save)) {
		char q = '+';
		int hit = 0;

		if (strchr("+-~?", *tok) != NULL)
			q = *tok++;
		if (strncasecmp(tok, "redirect=", 9) == 0) {
			free(redirect);
			redirect = strdup(tok + 9);
			continue;
		}
		if (strcasecmp(tok, "all") == 0)
			hit = 1;
		else if (strncasecmp(tok, "ip4:", 4) == 0)
			hit = dom_cidr(a, tok + 4, 0);
		else if (strncasecmp(tok, "ip6:", 4) == 0)
			hit = dom_cidr(a, tok + 4, 1);
		else if (strcasecmp(tok, "a") == 0 || strncasecmp(tok, "a:", 2) == 0)
			hit = dom_addr_in(a, tok[1] == ':' ? tok + 2 : domain, 0);
		else if (strcasecmp(tok, "mx") == 0 || strncasecmp(tok, "mx:", 3) == 0)
			hit = dom_addr_in(a, tok[2] == ':' ? tok + 3 : domain, 1);
		else if (strncasecmp(tok, "include:", 8) == 0) {
			snprintf(name, sizeof(name), "%s", tok + 8);
			if ((sub = dom_spf_eval(name, a, depth + 1)) == SPF_UNKNOWN)
				res = SPF_UNKNOWN;
			hit = sub == SPF_PASS;
		} else if (strchr(tok, '%') != NULL || strncasecmp(tok, "exists:", 7) == 0 ||
		    strncasecmp(tok, "ptr", 3) == 0)
			res = SPF_UNKNOWN;	/* macros, exists, ptr: not evaluated */
		if (hit && res == SPF_NONE)
			res = q == '+' ? SPF_PASS : q == '?' ? SPF_UNKNOWN : SPF_FAIL;
	}
	if (res == SPF_NONE && redirect != NULL)
		res = dom_spf_eval(redirect, a, depth + 1);
	free(redirect);
	free(rec);
	return res == SPF_NONE ? SPF_FAIL : res;	/* no match: neutral, not a pass */
}

static void
dom_check_dkim(struct otpmaild *d, const struct ctl_peer *peer, const char *domain,
    json_t *lines, size_t *fails)
{
	json_t *req = json_pack("{s:s}", "domain", domain), *r, *k;
	size_t i, ned = 0, n;

	r = op_dkim_check(d, peer, req);
	json_decref(req);
	n = json_array_size(json_object_get(r, "keys"));
	if (n == 0)
		dom_line(lines, fails, "dkim", "FAIL", "no DKIM key for %s is loaded: make one "
		    "with otpmailctl dkim keygen and add the dkim_key line", domain);
	json_array_foreach(json_object_get(r, "keys"), i, k) {
		const char *st = json_string_value(json_object_get(k, "status"));
		const char *alg = json_string_value(json_object_get(k, "algorithm"));
		const char *det = json_string_value(json_object_get(k, "detail"));

		if (alg != NULL && strncmp(alg, "ed25519", 7) == 0)
			ned++;
		dom_line(lines, fails, "dkim", st && strcmp(st, "match") == 0 ? "OK" :
		    st && strcmp(st, "error") == 0 ? "WARN" : "FAIL", "%s (%s): %s%s%s",
		    json_string_value(json_object_get(k, "name")), alg ? alg : "?",
		    st ? st : "?", det ? ": " : "", det ? det : "");
	}
	if (n > 0 && ned == n)
		dom_line(lines, fails, "dkim", "WARN", "only Ed25519 keys: many receivers "
		    "do not verify Ed25519 yet; add an RSA key beside it");
	json_decref(r);
}

json_t *
op_domain_check(struct otpmaild *d, const struct ctl_peer *peer, json_t *req)
{
	const char *dom, *host = d->hostname ? d->hostname : "";
	char domain[MTASTS_NAME_MAX + 1], name[MTASTS_NAME_MAX + 16], why[512];
	char ip[64], **ptr = NULL, *rec;
	struct mx_list *hl = NULL;
	enum mx_status hst;
	struct mtasts_policy pol;
	const char *rtype;
	json_t *err = NULL, *lines, *out;
	size_t fails = 0, n, i, k, naddr = 0;

	if (req_str(req, "domain", 1, MTASTS_NAME_MAX, &dom, &err) == -1)
		return err;
	for (i = 0; dom[i] != '\0'; i++)
		domain[i] = (char)tolower((unsigned char)dom[i]);
	domain[i] = '\0';
	if (!mx_domain_valid(domain) || strchr(domain, '.') == NULL)
		return reply_bad_field("domain", "not a domain name");
	/* this host's sending addresses: those of its name; no answer from
	 * the fetch process at all, no check */
	hst = fetch_mx_host(host, 25, &hl, why, sizeof(why));
	if (hst != MX_OK && fetch_failed())
		return reply_error("unavailable", "DNS lookups: %s", why);
	if (hst == MX_OK && hl != NULL)
		for (i = 0; i < hl->nhosts; i++)
			naddr += hl->hosts[i].naddr;
	lines = json_array();

	dom_check_dkim(d, peer, domain, lines, &fails);

	if ((rec = dom_txt(domain, "v=spf1", &n)) == NULL)
		dom_line(lines, &fails, "spf", "FAIL", "no SPF record at %s: publish "
		    "\"v=spf1 mx a:%s -all\" (see otpmailctl dkim records)", domain, host);
	else if (n > 1)
		dom_line(lines, &fails, "spf", "FAIL", "%zu SPF records at %s: receivers "
		    "treat that as an error (permerror); merge them", n, domain);
	else if (naddr == 0)
		dom_line(lines, &fails, "spf", "WARN", "\"%s\"; this host's name %s has no "
		    "address to check it against", rec, host);
	else {
		for (i = 0; i < hl->nhosts; i++)
			for (k = 0; k < hl->hosts[i].naddr; k++) {
				const struct mx_addr *a = &hl->hosts[i].addrs[k];
				enum dom_spf s = dom_spf_eval(domain, a, 0);

				getnameinfo((const struct sockaddr *)&a->ss, a->sslen, ip,
				    sizeof(ip), NULL, 0, NI_NUMERICHOST);
				dom_line(lines, &fails, "spf", s == SPF_PASS ? "OK" :
				    s == SPF_UNKNOWN ? "WARN" : "FAIL", "%s %s this host's "
				    "address %s (\"%s\")", domain, s == SPF_PASS ? "allows" :
				    s == SPF_UNKNOWN ? "may or may not allow" : "does not allow",
				    ip, rec);
			}
	}
	free(rec);

	snprintf(name, sizeof(name), "_dmarc.%s", domain);
	if ((rec = dom_txt(name, "v=DMARC1", &n)) == NULL)
		dom_line(lines, &fails, "dmarc", "WARN", "no DMARC record at %s: start with "
		    "\"v=DMARC1; p=none; rua=mailto:dmarc@%s\", read the reports, then "
		    "tighten", name, domain);
	else if (strstr(rec, "rua=") == NULL)
		dom_line(lines, &fails, "dmarc", "WARN", "\"%s\": no rua= address, so no "
		    "aggregate reports reach you", rec);
	else
		dom_line(lines, &fails, "dmarc", "OK", "\"%s\"%s", rec, strstr(rec, "p=none") ?
		    " (monitoring: move to quarantine once the reports are clean)" : "");
	free(rec);

	if (naddr == 0)
		dom_line(lines, &fails, "fcrdns", "FAIL", "this host's name %s has no "
		    "address in DNS", host);
	for (i = 0; hl != NULL && i < hl->nhosts; i++)
		for (k = 0; k < hl->hosts[i].naddr; k++) {
			const struct mx_addr *a = &hl->hosts[i].addrs[k];
			size_t j;
			int match = 0;

			getnameinfo((const struct sockaddr *)&a->ss, a->sslen, ip, sizeof(ip),
			    NULL, 0, NI_NUMERICHOST);
			if (fetch_ptr(a, &ptr, why, sizeof(why)) == MX_OK)
				for (j = 0; ptr[j] != NULL && !match; j++)
					match = strcasecmp(ptr[j], host) == 0;
			dom_line(lines, &fails, "fcrdns", match ? "OK" : "FAIL", match ?
			    "%s -> %s -> %s" : "%s: reverse DNS is %s, not %s", ip,
			    ptr != NULL && ptr[0] != NULL ? ptr[0] : "missing", host);
			mx_txt_free(ptr);
			ptr = NULL;
		}
	mx_list_free(hl);

	switch (mtasts_get(mtasts_shared(d->cfg, d->state_dir), domain, &pol, &rtype,
	    why, sizeof(why))) {
	case MTASTS_FOUND:
		dom_line(lines, &fails, "mta-sts", pol.mode == MTASTS_NONE ? "WARN" : "OK",
		    "mode %s, %zu mx pattern(s), max_age %ld", mtasts_mode_name(pol.mode),
		    pol.nmx, pol.max_age);
		break;
	case MTASTS_FAILED:
		dom_line(lines, &fails, "mta-sts", "FAIL", "%s: %s", rtype, why);
		break;
	default:
		dom_line(lines, &fails, "mta-sts", "WARN", "no _mta-sts.%s record: mail "
		    "to %s is not protected against TLS downgrade", domain, domain);
	}
	snprintf(name, sizeof(name), "_smtp._tls.%s", domain);
	if ((rec = dom_txt(name, "v=TLSRPTv1", &n)) == NULL)
		dom_line(lines, &fails, "tls-rpt", "WARN", "no TLS-RPT record at %s: "
		    "senders cannot report TLS failures to you", name);
	else
		dom_line(lines, &fails, "tls-rpt", strstr(rec, "rua=") ? "OK" : "FAIL",
		    "\"%s\"", rec);
	free(rec);

	out = reply_ok();
	json_object_set_new(out, "domain", json_string(domain));
	json_object_set_new(out, "checks", lines);
	json_object_set_new(out, "problems", json_integer((json_int_t)fails));
	return out;
}
