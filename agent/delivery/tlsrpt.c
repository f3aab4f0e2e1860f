/*
 * tlsrpt.c - TLS-RPT (see tlsrpt.h): counters in memory per (domain,
 * policy type, policy id), bounded in domains and in failure detail rows
 * (what does not fit is counted, not detailed); the periodic report per
 * policy domain, JSON (RFC 8460 4.4) gzip'd in a multipart/report mail to
 * the rua=mailto: addresses, queued (and DKIM-signed) like any mail (so it
 * leaves through the delivery process; rua=https: is not used, nothing is
 * POSTed).  The _smtp._tls record is looked up by the fetch process.  A
 * report that cannot be queued goes back into the aggregate.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/fetch.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"
#include "agent/delivery/tlsrpt.h"
#include "agent/mail/mail.h"

#define TLSRPT_POLICIES_MAX	1000
#define TLSRPT_DETAILS_MAX	32
#define TLSRPT_RUA_MAX		5	/* report addresses used per domain */

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
	int			 failed_send;	/* its report could not be queued */
	struct tlsrpt_policy	*next;
};

void	(*tlsrpt_forward)(const char *, enum tlsrpt_ptype, int, const char *,
	    const char *, const char *);
static pthread_mutex_t		 tlsrpt_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tlsrpt_policy	*tlsrpt_list;
static size_t			 tlsrpt_n;
static time_t			 tlsrpt_since;	/* start of the current period */

void
tlsrpt_record(const char *domain, enum tlsrpt_ptype ptype,
    const struct mtasts_policy *sts, const char *mx, const char *ip,
    const char *rtype)
{
	const char *id = ptype == TLSRPT_STS && sts != NULL ? sts->id : "";
	struct tlsrpt_policy *p;
	size_t i;

	if (tlsrpt_forward != NULL) {	/* the delivery process: to the main one */
		tlsrpt_forward(domain, ptype, sts != NULL, mx, ip, rtype);
		return;
	}
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

/* ---- reports ---------------------------------------------------------- */

/* Adds p's counts to the live aggregate (a report that could not be
 * queued); takes p. */
static void
tlsrpt_merge(struct tlsrpt_policy *p)
{
	struct tlsrpt_policy *o;
	size_t i, k;

	pthread_mutex_lock(&tlsrpt_mu);
	for (o = tlsrpt_list; o != NULL; o = o->next)
		if (o->ptype == p->ptype && strcmp(o->domain, p->domain) == 0 &&
		    strcmp(o->id, p->id) == 0)
			break;
	if (o == NULL) {
		p->next = tlsrpt_list;
		tlsrpt_list = p;
		tlsrpt_n++;
		pthread_mutex_unlock(&tlsrpt_mu);
		return;
	}
	o->ok += p->ok;
	o->fail += p->fail;
	for (i = 0; i < p->nd; i++) {
		for (k = 0; k < o->nd; k++)
			if (strcmp(o->d[k].rtype, p->d[i].rtype) == 0 &&
			    strcmp(o->d[k].mx, p->d[i].mx) == 0 &&
			    strcmp(o->d[k].ip, p->d[i].ip) == 0)
				break;
		if (k == o->nd && o->nd < TLSRPT_DETAILS_MAX)
			o->d[o->nd++] = p->d[i];
		else if (k < o->nd)
			o->d[k].n += p->d[i].n;
	}
	pthread_mutex_unlock(&tlsrpt_mu);
	free(p);
}

static void
tlsrpt_time(time_t t, char *out, size_t len)
{
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The rua=mailto: addresses of domain's _smtp._tls record (at most max). */
static size_t
tlsrpt_rua(const char *domain, char addrs[][ADDR_PATH_MAX + 1], size_t max)
{
	char name[MTASTS_NAME_MAX + 16], why[256], **v = NULL, *p, *e, reason[128];
	size_t i, n = 0, nrec = 0;
	const char *rec = NULL;

	snprintf(name, sizeof(name), "_smtp._tls.%s", domain);
	/* looked up by the fetch process (fetch.h): no DNS answer is parsed here
	 * but the TXT strings it passes on, bounded */
	if (fetch_txt(name, &v, why, sizeof(why)) != MX_OK)
		return 0;
	for (i = 0; v[i] != NULL; i++)
		if (strncmp(v[i], "v=TLSRPTv1", 10) == 0 && (v[i][10] == ';' ||
		    v[i][10] == ' ' || v[i][10] == '\0')) {
			nrec++;
			rec = v[i];
		}
	/* RFC 8460 3: several records, none is used */
	if (nrec == 1 && (p = strstr(rec, "rua=")) != NULL) {
		p += 4;
		while (*p != '\0' && *p != ';' && n < max) {
			while (*p == ' ' || *p == ',')
				p++;
			e = p + strcspn(p, ",;");
			if (strncasecmp(p, "mailto:", 7) == 0) {
				size_t l = (size_t)(e - p - 7);

				l = strcspn(p + 7, "!,; ") < l ? strcspn(p + 7, "!,; ") : l;
				if (l > 0 && l <= ADDR_PATH_MAX) {
					memcpy(addrs[n], p + 7, l);
					addrs[n][l] = '\0';
					if (addr_validate(addrs[n], reason, sizeof(reason)) == 0)
						n++;
				}
			}
			p = e;
		}
	}
	mx_txt_free(v);
	return n;
}

/* The RFC 8460 4.4 JSON report of one policy domain's entries. */
static char *
tlsrpt_json(struct tlsrpt_policy *list, const char *domain, const char *host,
    const char *from, time_t start, time_t end, const char *report_id)
{
	struct tlsrpt_policy *p;
	json_t *root, *pols, *o, *pol, *fd, *strs, *mx;
	char s[32], e[32], line[300], *out;
	size_t i;

	tlsrpt_time(start, s, sizeof(s));
	tlsrpt_time(end, e, sizeof(e));
	root = json_pack("{s:s,s:{s:s,s:s},s:s,s:s}", "organization-name", host,
	    "date-range", "start-datetime", s, "end-datetime", e,
	    "contact-info", from, "report-id", report_id);
	pols = json_array();
	for (p = list; p != NULL; p = p->next) {
		if (strcmp(p->domain, domain) != 0)
			continue;
		pol = json_pack("{s:s,s:s}", "policy-type", p->ptype == TLSRPT_STS ? "sts" :
		    p->ptype == TLSRPT_TLSA ? "tlsa" : "no-policy-found",
		    "policy-domain", p->domain);
		if (p->ptype == TLSRPT_STS && p->id[0] != '\0') {
			strs = json_array();
			mx = json_array();
			json_array_append_new(strs, json_string("version: STSv1"));
			snprintf(line, sizeof(line), "mode: %s", mtasts_mode_name(p->sts.mode));
			json_array_append_new(strs, json_string(line));
			for (i = 0; i < p->sts.nmx; i++) {
				snprintf(line, sizeof(line), "mx: %s", p->sts.mx[i]);
				json_array_append_new(strs, json_string(line));
				json_array_append_new(mx, json_string(p->sts.mx[i]));
			}
			snprintf(line, sizeof(line), "max_age: %ld", p->sts.max_age);
			json_array_append_new(strs, json_string(line));
			json_object_set_new(pol, "policy-string", strs);
			json_object_set_new(pol, "mx-host", mx);
		}
		o = json_pack("{s:o,s:{s:I,s:I}}", "policy", pol, "summary",
		    "total-successful-session-count", (json_int_t)p->ok,
		    "total-failure-session-count", (json_int_t)p->fail);
		if (p->nd > 0) {
			fd = json_array();
			for (i = 0; i < p->nd; i++) {
				json_t *d = json_pack("{s:s,s:I}", "result-type", p->d[i].rtype,
				    "failed-session-count", (json_int_t)p->d[i].n);

				if (p->d[i].mx[0] != '\0')
					json_object_set_new(d, "receiving-mx-hostname",
					    json_string(p->d[i].mx));
				if (p->d[i].ip[0] != '\0')
					json_object_set_new(d, "receiving-ip",
					    json_string(p->d[i].ip));
				json_array_append_new(fd, d);
			}
			json_object_set_new(o, "failure-details", fd);
		}
		json_array_append_new(pols, o);
	}
	json_object_set_new(root, "policies", pols);
	out = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	return out;
}

/* gzip (RFC 1952) of in; malloc'd, NULL on failure. */
static unsigned char *
tlsrpt_gzip(const char *in, size_t len, size_t *outlen)
{
	z_stream zs;
	unsigned char *out;
	uLong cap;

	memset(&zs, 0, sizeof(zs));
	if (deflateInit2(&zs, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
	    Z_DEFAULT_STRATEGY) != Z_OK)
		return NULL;
	cap = deflateBound(&zs, (uLong)len) + 32;
	if ((out = malloc(cap)) == NULL) {
		deflateEnd(&zs);
		return NULL;
	}
	zs.next_in = (Bytef *)(uintptr_t)in;
	zs.avail_in = (uInt)len;
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
		deflateEnd(&zs);
		free(out);
		return NULL;
	}
	*outlen = zs.total_out;
	deflateEnd(&zs);
	return out;
}

/* Builds and queues one domain's report; 0 if queued or nobody wants it. */
static int
tlsrpt_send_domain(struct otpmaild *d, struct tlsrpt_policy *list, const char *domain, time_t start, time_t end,
    int *sent)
{
	char rua[TLSRPT_RUA_MAX][ADDR_PATH_MAX + 1], from[ADDR_PATH_MAX + 1];
	char rid[400], date[64], mid[300], boundary[80];
	const char *host = d->hostname ? d->hostname : "localhost";
	const char *np[TLSRPT_RUA_MAX], *ap[TLSRPT_RUA_MAX], *fn[1], *fa[1];
	unsigned char *gz = NULL, b64[80];
	struct q_envelope tmpl;
	struct q_rcpt rc[TLSRPT_RUA_MAX];
	char id[QUEUE_ID_LEN + 1], *json = NULL;
	size_t nrua, i, gzlen = 0;
	struct buf b;
	json_t *err = NULL;
	int ret = -1;

	*sent = 0;
	if ((nrua = tlsrpt_rua(domain, rua, TLSRPT_RUA_MAX)) == 0)
		return 0;		/* no rua=mailto: nobody asked */
	if (d->cfg->tls_rpt_from != NULL && d->cfg->tls_rpt_from[0] != '\0')
		snprintf(from, sizeof(from), "%s", d->cfg->tls_rpt_from);
	else
		snprintf(from, sizeof(from), "tlsrpt-noreply@%s", host);
	msg_message_id(host, mid, sizeof(mid));
	snprintf(rid, sizeof(rid), "%.*s", (int)strlen(mid) - 2, mid + 1);
	buf_init(&b);
	if ((json = tlsrpt_json(list, domain, host, from, start, end, rid)) == NULL ||
	    (gz = tlsrpt_gzip(json, strlen(json), &gzlen)) == NULL)
		goto out;
	msg_date(time(NULL), date, sizeof(date));
	msg_add_header(&b, "Date", date);
	msg_add_header(&b, "Message-ID", mid);
	fn[0] = "";
	fa[0] = from;
	msg_add_mailboxes(&b, "From", fn, fa, 1);
	for (i = 0; i < nrua; i++) {
		np[i] = "";
		ap[i] = rua[i];
	}
	msg_add_mailboxes(&b, "To", np, ap, nrua);
	buf_printf(&b, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n",
	    domain, host, rid);
	buf_printf(&b, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n", domain, host);
	snprintf(boundary, sizeof(boundary), "=_tlsrpt_%ld_%s", (long)end,
	    rid + strspn(rid, "0123456789"));
	boundary[strcspn(boundary, "@")] = '\0';
	buf_printf(&b, "MIME-Version: 1.0\r\nContent-Type: multipart/report; "
	    "report-type=\"tlsrpt\"; boundary=\"%s\"\r\n\r\n", boundary);
	buf_printf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
	    "This is an aggregate TLS report (RFC 8460) from %s for %s.\r\n\r\n",
	    boundary, host, domain);
	buf_printf(&b, "--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
	    "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment;\r\n"
	    " filename=\"%s!%s!%ld!%ld.json.gz\"\r\n\r\n", boundary, host, domain,
	    (long)start, (long)end);
	for (i = 0; i < gzlen; i += 57) {
		EVP_EncodeBlock(b64, gz + i, (int)(gzlen - i < 57 ? gzlen - i : 57));
		buf_printf(&b, "%s\r\n", b64);
	}
	buf_printf(&b, "\r\n--%s--\r\n", boundary);
	memset(&tmpl, 0, sizeof(tmpl));
	memset(rc, 0, sizeof(rc));
	for (i = 0; i < nrua; i++)
		rc[i].addr = rua[i];
	tmpl.klass = Q_CLASS_DEFAULT;
	tmpl.sender = from;
	tmpl.rcpts = rc;
	tmpl.nrcpt = nrua;
	tmpl.tag = "tls-rpt";
	if (submit_message(d, &tmpl, b.data, b.len, id, &err, NULL, NULL) == -1) {
		log_msg(LOG_WARNING, "event=tlsrpt_report_failed domain=%s error=%s", domain,
		    json_string_value(json_object_get(err, "detail")));
		json_decref(err);
		goto out;
	}
	log_msg(LOG_INFO, "event=tlsrpt_report id=%s domain=%s rua=%s rcpts=%zu bytes=%zu",
	    id, domain, rua[0], nrua, gzlen);
	*sent = 1;
	ret = 0;
out:
	if (ret == -1 && json == NULL)
		log_msg(LOG_WARNING, "event=tlsrpt_report_failed domain=%s error=\"cannot "
		    "build the report\"", domain);
	free(json);
	free(gz);
	buf_free(&b);
	return ret;
}

void
tlsrpt_send(struct otpmaild *d, size_t *nsent, size_t *nfailed)
{
	struct tlsrpt_policy *snap, *p, *q, *next;
	time_t start, end = time(NULL);
	int sent;

	*nsent = *nfailed = 0;
	pthread_mutex_lock(&tlsrpt_mu);
	snap = tlsrpt_list;
	tlsrpt_list = NULL;
	tlsrpt_n = 0;
	start = tlsrpt_since != 0 ? tlsrpt_since : d->started;
	tlsrpt_since = end;
	pthread_mutex_unlock(&tlsrpt_mu);
	if (snap == NULL)
		return;
	/* one report per policy domain: the first entry of each domain sends */
	for (p = snap; p != NULL; p = p->next) {
		for (q = snap; q != p && strcmp(q->domain, p->domain) != 0; q = q->next)
			;
		if (q != p)
			continue;
		if (tlsrpt_send_domain(d, snap, p->domain, start, end, &sent) == -1) {
			(*nfailed)++;
			metrics_event("tlsrpt_report", "error");
			p->failed_send = 1;
		} else if (sent) {
			(*nsent)++;
			metrics_event("tlsrpt_report", "queued");
		}
	}
	/* what could not be queued counts into the next report: mark every
	 * entry of a failed domain first, then give back or free */
	for (p = snap; p != NULL; p = p->next)
		for (q = snap; q != NULL; q = q->next)
			if (q->failed_send && strcmp(q->domain, p->domain) == 0)
				p->failed_send = 1;
	for (p = snap; p != NULL; p = next) {
		next = p->next;
		if (p->failed_send) {
			p->failed_send = 0;
			tlsrpt_merge(p);
		} else
			free(p);
	}
}
