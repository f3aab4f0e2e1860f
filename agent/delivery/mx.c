/*
 * mx.c - DNS for delivery through libunbound: MX hosts in the order to try
 * (RFC 5321 5.1, null MX of RFC 7505), host addresses for routes and relays,
 * TLSA records with their DNSSEC status for DANE, and the submission-time
 * deliverability check.  Every lookup is bounded: queries run on libunbound's
 * async thread and are cancelled at a deadline, so a dead DNS server gives
 * MX_TEMPFAIL in seconds.  Answers are parsed here, bounded and validated.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unbound.h>

#include <openssl/rand.h>

#include "agent/delivery/delivery.h"
#include "agent/delivery/mx.h"
#include "agent/core/otpmaild.h"

#define MX_TIMEOUT_MS		8000	/* one lookup round, all its queries */
#define MX_CHECK_TIMEOUT_MS	3000	/* submission check: an app is waiting */
#define MX_MAX_HOSTS		16	/* MX records used, most preferred first */
#define MX_MAX_ADDRS		8	/* addresses per family per host */
#define MX_MAX_TLSA		32
#define MX_MAX_TLSA_DATA	4096	/* a full certificate (usage x 0 0) fits */
#define MX_TA_FILE_MAX		(64 * 1024)
#define MX_NAME_MAX		253	/* text form, without the trailing dot */

#define RR_A		1
#define RR_MX		15
#define RR_AAAA		28
#define RR_TLSA		52
#define RR_TXT		16
#define RR_PTR		12
#define MX_MAX_TXT	16
#define RCODE_SERVFAIL	2
#define RCODE_NXDOMAIN	3

/*
 * One libunbound context: its async thread, caches and answer pipe.  It
 * costs about 1 MiB, so the daemon has one, shared by the handles of
 * delivery and of the submission check, each with its own lookup bound.
 */
struct mx_ub {
	struct ub_ctx	*ctx;
	pthread_mutex_t	 lock;		/* every ub_* call on ctx; refs */
	pthread_cond_t	 cond;		/* a processing round ended */
	int		 processing;	/* a thread is waiting on ub_fd */
	int		 refs;		/* handles on this context */
};

struct mx_resolver {
	struct mx_ub	*ub;
	int		 timeout_ms;
};

/* One async query.  Owned by the caller unless abandoned (then by the callback). */
struct mx_query {
	char		 name[MX_NAME_MAX + 32];
	int		 type;
	int		 id;
	int		 done;
	int		 err;		/* libunbound error, or -1 for timeout */
	int		 abandoned;
	struct ub_result *res;
};

static void	 mx_query_cb(void *, int, struct ub_result *);
static struct mx_query *mx_query_new(const char *, int);
static void	 mx_query_free(struct mx_query *);
static void	 mx_resolve(struct mx_resolver *, struct mx_query **, size_t);
static enum mx_status mx_query_status(const struct mx_query *, char *, size_t);
static int	 mx_ta_load(struct ub_ctx *, const char *, char *, size_t);
static int	 mx_set_fwd(struct ub_ctx *, const char *, char *, size_t);
static size_t	 mx_addrs_from(const struct ub_result *, int, int,
		    struct mx_addr *, size_t);
static enum mx_status mx_fill_addrs(struct mx_resolver *, struct mx_host *,
		    size_t, int, int, char *, size_t);
static struct mx_list *mx_list_new(size_t);
static void	 mx_list_compact(struct mx_list *);
static void	 mx_host_clear(struct mx_host *);
static uint32_t	 mx_random(uint32_t);
static ssize_t	 mx_ublog_write(void *, const char *, size_t);
static void	 mx_ublog_init(void);
static int	 mx_pref_cmp(const void *, const void *);

/* ------------------------------------------------------------ parsing */

int
mx_domain_valid(const char *name)
{
	size_t len, label = 0;
	const char *p;

	if (name == NULL || (len = strlen(name)) == 0 || len > MX_NAME_MAX)
		return 0;
	for (p = name; *p; p++) {
		if (*p == '.') {
			if (label == 0)
				return 0;
			label = 0;
			continue;
		}
		if (++label > 63)
			return 0;
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_'))
			return 0;
	}
	/* one trailing dot is tolerated, an empty last label otherwise not */
	return label > 0 || (len > 1 && name[len - 1] == '.' && name[len - 2] != '.');
}

/*
 * A wire-format name at rd[0..len): uncompressed (libunbound hands rdata
 * decompressed), labels of host-name characters.  Writes the text form
 * without trailing dot ("" for the root) and the bytes used.
 */
int
mx_parse_name(const unsigned char *rd, size_t len, size_t *used, char *out,
    size_t outlen)
{
	size_t i = 0, o = 0, j;
	unsigned char l;

	if (outlen == 0)
		return -1;
	for (;;) {
		if (i >= len)
			return -1;
		l = rd[i++];
		if (l == 0)
			break;
		if (l > 63 || i + l > len)	/* compression pointers too */
			return -1;
		if (o != 0) {
			if (o + 1 >= outlen)
				return -1;
			out[o++] = '.';
		}
		if (o + l >= outlen || o + l > MX_NAME_MAX)
			return -1;
		for (j = 0; j < l; j++) {
			unsigned char c = rd[i + j];
			if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			    (c >= '0' && c <= '9') || c == '-' || c == '_'))
				return -1;
			out[o++] = (char)c;
		}
		i += l;
	}
	out[o] = '\0';
	if (used)
		*used = i;
	return 0;
}

int
mx_parse_mx_rdata(const unsigned char *rd, size_t len, int *pref, char *name,
    size_t namelen)
{
	size_t used;

	if (rd == NULL || len < 3)
		return -1;
	*pref = (rd[0] << 8) | rd[1];
	if (mx_parse_name(rd + 2, len - 2, &used, name, namelen) == -1)
		return -1;
	return used == len - 2 ? 0 : -1;
}

int
mx_parse_tlsa_rdata(const unsigned char *rd, size_t len, struct tlsa_rr *rr)
{
	memset(rr, 0, sizeof(*rr));
	if (rd == NULL || len < 4 || len - 3 > MX_MAX_TLSA_DATA)
		return -1;
	rr->usage = rd[0];
	rr->selector = rd[1];
	rr->mtype = rd[2];
	rr->len = len - 3;
	if ((rr->mtype == 1 && rr->len != 32) || (rr->mtype == 2 && rr->len != 64))
		return -1;
	if ((rr->data = malloc(rr->len)) == NULL)
		return -1;
	memcpy(rr->data, rd + 3, rr->len);
	return 0;
}

/*
 * MX rdata of one answer -> hosts in the order to try.  A single "." target
 * is a null MX; "." among other records is skipped.  Malformed records make
 * the whole answer MX_BADANSWER: a half-read RRset could hide the preferred
 * host.
 */
enum mx_status
mx_hosts_from_rdata(char **data, const int *lens, size_t n,
    struct mx_host **hosts, size_t *nhosts, char *reason, size_t rlen)
{
	struct mx_host *h = NULL;
	size_t i, k, nh = 0;
	char name[MX_NAME_MAX + 2];
	int pref, nulls = 0;

	*hosts = NULL;
	*nhosts = 0;
	if (n == 0) {
		snprintf(reason, rlen, "empty MX answer");
		return MX_BADANSWER;
	}
	if ((h = calloc(n, sizeof(*h))) == NULL) {
		snprintf(reason, rlen, "out of memory");
		return MX_TEMPFAIL;
	}
	for (i = 0; i < n; i++) {
		if (lens[i] < 0 || mx_parse_mx_rdata((const unsigned char *)data[i],
		    (size_t)lens[i], &pref, name, sizeof(name)) == -1) {
			snprintf(reason, rlen, "malformed MX record");
			goto bad;
		}
		if (name[0] == '\0') {
			nulls++;
			continue;
		}
		for (k = 0; k < nh; k++)
			if (strcasecmp(h[k].name, name) == 0)
				break;
		if (k < nh) {		/* same host twice: keep the best preference */
			if (pref < h[k].pref)
				h[k].pref = pref;
			continue;
		}
		if ((h[nh].name = strdup(name)) == NULL) {
			snprintf(reason, rlen, "out of memory");
			goto tempfail;
		}
		h[nh++].pref = pref;
	}
	if (nh == 0) {
		if (nulls == 1 && n == 1) {
			snprintf(reason, rlen, "null MX: the domain accepts no mail");
			free(h);
			return MX_NULLMX;
		}
		snprintf(reason, rlen, "MX answer without a usable host");
		goto bad;
	}
	mx_order(h, nh);
	while (nh > MX_MAX_HOSTS)
		mx_host_clear(&h[--nh]);
	*hosts = h;
	*nhosts = nh;
	return MX_OK;
bad:
	for (k = 0; k < nh; k++)
		mx_host_clear(&h[k]);
	free(h);
	return MX_BADANSWER;
tempfail:
	for (k = 0; k < nh; k++)
		mx_host_clear(&h[k]);
	free(h);
	return MX_TEMPFAIL;
}

/* Sorts by preference and shuffles each run of equal preferences. */
void
mx_order(struct mx_host *h, size_t n)
{
	size_t i, j, k;
	struct mx_host t;

	if (n < 2)
		return;
	qsort(h, n, sizeof(*h), mx_pref_cmp);
	for (i = 0; i < n; i = j) {
		for (j = i + 1; j < n && h[j].pref == h[i].pref; j++)
			;
		for (k = j - 1; k > i; k--) {	/* Fisher-Yates on [i, j) */
			size_t r = i + mx_random((uint32_t)(k - i + 1));
			t = h[k];
			h[k] = h[r];
			h[r] = t;
		}
	}
}

/*
 * "[192.0.2.1]", "[IPv6:2001:db8::1]", "[2001:db8::1]" or a bare address:
 * 0 and *a set, 1 if host is not an address literal, -1 if it is a malformed
 * literal.
 */
int
mx_parse_literal(const char *host, int port, struct mx_addr *a)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *s = host;
	size_t len = strlen(host);
	struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
	int bracket = 0;

	if (len > 0 && host[0] == '[') {
		if (len < 3 || host[len - 1] != ']')
			return -1;
		s = host + 1;
		len -= 2;
		bracket = 1;
		if (len > 5 && strncasecmp(s, "IPv6:", 5) == 0) {
			s += 5;
			len -= 5;
		}
	}
	if (len == 0 || len >= sizeof(buf))
		return bracket ? -1 : 1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	memset(a, 0, sizeof(*a));
	if (inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		a->sslen = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		a->sslen = sizeof(*sin6);
		return 0;
	}
	return bracket ? -1 : 1;
}

static int
mx_pref_cmp(const void *a, const void *b)
{
	const struct mx_host *x = a, *y = b;

	return (x->pref > y->pref) - (x->pref < y->pref);
}

static uint32_t
mx_random(uint32_t n)
{
	uint32_t v, lim;

	if (n <= 1)
		return 0;
	lim = UINT32_MAX - UINT32_MAX % n;	/* no modulo bias */
	do {
		if (RAND_bytes((unsigned char *)&v, sizeof(v)) != 1)
			v = (uint32_t)random();
	} while (v >= lim);
	return v % n;
}

/* ------------------------------------------------------------ resolver */

/*
 * libunbound logs through one process-wide FILE: route it to the daemon's
 * log (one event per line) so its errors reach syslog too.
 */
static FILE		*mx_ublog;
static pthread_once_t	 mx_ublog_once = PTHREAD_ONCE_INIT;

static ssize_t
mx_ublog_write(void *cookie, const char *buf, size_t len)
{
	char line[512];
	size_t n = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
	const char *p;

	(void)cookie;
	memcpy(line, buf, n);
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	/* drop libunbound's "[time] libunbound[pid:tid] " prefix */
	if ((p = strstr(line, "] ")) != NULL && (p = strstr(p + 2, "] ")) != NULL)
		p += 2;
	else
		p = line;
	if (*p != '\0')
		log_msg(LOG_WARNING, "event=dns_library detail=%s",
		    p);
	return (ssize_t)len;
}

static void
mx_ublog_init(void)
{
	cookie_io_functions_t io = { .write = mx_ublog_write };

	if ((mx_ublog = fopencookie(NULL, "w", io)) != NULL)
		setvbuf(mx_ublog, NULL, _IOLBF, 0);
}

struct mx_resolver *
mx_resolver_new(const struct config *cfg, char *err, size_t errlen)
{
	struct mx_resolver *r;
	struct mx_ub *ub;
	struct ub_result *res = NULL;
	pthread_condattr_t ca;
	int rc;

	if ((r = calloc(1, sizeof(*r))) == NULL ||
	    (ub = r->ub = calloc(1, sizeof(*ub))) == NULL) {
		free(r);
		snprintf(err, errlen, "mx: out of memory");
		return NULL;
	}
	r->timeout_ms = MX_TIMEOUT_MS;
	ub->refs = 1;
	pthread_mutex_init(&ub->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ub->cond, &ca);
	pthread_condattr_destroy(&ca);
	if ((ub->ctx = ub_ctx_create()) == NULL) {
		snprintf(err, errlen, "mx: cannot create the libunbound context");
		goto fail;
	}
	pthread_once(&mx_ublog_once, mx_ublog_init);
	if (mx_ublog != NULL)
		(void)ub_ctx_debugout(ub->ctx, mx_ublog);
	/* keep probing a forwarder that timed out once instead of 15 min down */
	(void)ub_ctx_set_option(ub->ctx, "infra-keep-probing:", "yes");
	(void)ub_ctx_set_option(ub->ctx, "infra-host-ttl:", "60");
	if (cfg != NULL && cfg->resolver != NULL && cfg->resolver[0] != '\0') {
		if (mx_set_fwd(ub->ctx, cfg->resolver, err, errlen) == -1)
			goto fail;
	} else if ((rc = ub_ctx_resolvconf(ub->ctx, NULL)) != 0) {
		/* no resolv.conf: libunbound recurses from the root itself */
		log_msg(LOG_WARNING, "event=dns_setup detail=\"/etc/resolv.conf: %s; "
		    "resolving from the root servers\"", ub_strerror(rc));
	}
	if (cfg != NULL && cfg->dns_trust_anchor != NULL &&
	    cfg->dns_trust_anchor[0] != '\0' &&
	    mx_ta_load(ub->ctx, cfg->dns_trust_anchor, err, errlen) == -1)
		goto fail;
	if ((rc = ub_ctx_async(ub->ctx, 1)) != 0) {
		snprintf(err, errlen, "mx: threaded resolver: %s", ub_strerror(rc));
		goto fail;
	}
	/*
	 * Finalize now (trust anchors parsed, files read while still
	 * privileged): "localhost" is answered locally, without a query.
	 */
	if ((rc = ub_resolve(ub->ctx, "localhost.", RR_A, 1, &res)) != 0) {
		snprintf(err, errlen, "mx: resolver setup%s: %s",
		    cfg != NULL && cfg->dns_trust_anchor != NULL &&
		    cfg->dns_trust_anchor[0] != '\0' ? " (dns_trust_anchor?)" : "",
		    ub_strerror(rc));
		goto fail;
	}
	ub_resolve_free(res);
	return r;
fail:
	mx_resolver_free(r);
	return NULL;
}

struct mx_resolver *
mx_resolver_dup(struct mx_resolver *base)
{
	struct mx_resolver *r;

	if (base == NULL || (r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	r->ub = base->ub;
	r->timeout_ms = MX_TIMEOUT_MS;
	pthread_mutex_lock(&r->ub->lock);
	r->ub->refs++;
	pthread_mutex_unlock(&r->ub->lock);
	return r;
}

void
mx_resolver_free(struct mx_resolver *r)
{
	struct mx_ub *ub;
	int last;

	if (r == NULL)
		return;
	ub = r->ub;
	free(r);
	pthread_mutex_lock(&ub->lock);
	last = --ub->refs == 0;
	pthread_mutex_unlock(&ub->lock);
	if (!last)
		return;
	if (ub->ctx != NULL)
		ub_ctx_delete(ub->ctx);	/* also drops abandoned queries */
	pthread_cond_destroy(&ub->cond);
	pthread_mutex_destroy(&ub->lock);
	free(ub);
}

void
mx_resolver_set_timeout(struct mx_resolver *r, int ms)
{
	if (r != NULL && ms > 0)
		r->timeout_ms = ms;
}

/* "addr[@port]", several separated by commas or spaces. */
static int
mx_set_fwd(struct ub_ctx *ctx, const char *spec, char *err, size_t errlen)
{
	char buf[128];
	const char *p = spec, *e;
	size_t len;
	int rc, n = 0;

	while (*p) {
		while (*p == ',' || *p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		for (e = p; *e && *e != ',' && *e != ' ' && *e != '\t'; e++)
			;
		len = (size_t)(e - p);
		if (len >= sizeof(buf)) {
			snprintf(err, errlen, "mx: resolver address too long");
			return -1;
		}
		memcpy(buf, p, len);
		buf[len] = '\0';
		if ((rc = ub_ctx_set_fwd(ctx, buf)) != 0) {
			snprintf(err, errlen, "mx: resolver \"%s\": %s", buf,
			    ub_strerror(rc));
			return -1;
		}
		n++;
		p = e;
	}
	if (n == 0) {
		snprintf(err, errlen, "mx: resolver: no address");
		return -1;
	}
	return 0;
}

/*
 * Reads the trust anchors now (DS or DNSKEY records in zone-file syntax,
 * parentheses joined) rather than letting libunbound read the file at its
 * first query, after the daemon dropped privileges.
 */
static int
mx_ta_load(struct ub_ctx *ctx, const char *file, char *err, size_t errlen)
{
	FILE *fp;
	char line[4096], rr[MX_TA_FILE_MAX / 4];
	size_t rrlen = 0, total = 0, n = 0;
	int depth = 0, rc, ret = -1;
	char *p, *c;

	if ((fp = fopen(file, "r")) == NULL) {
		snprintf(err, errlen, "mx: dns_trust_anchor %s: %s", file,
		    strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), fp) != NULL) {
		if ((total += strlen(line)) > MX_TA_FILE_MAX) {
			snprintf(err, errlen, "mx: dns_trust_anchor %s: too large", file);
			goto done;
		}
		if ((c = strchr(line, ';')) != NULL)
			*c = '\0';
		for (p = line; *p; p++) {
			if (*p == '(' || *p == ')') {
				depth += *p == '(' ? 1 : -1;
				*p = ' ';
			} else if (*p == '\n' || *p == '\r' || *p == '\t')
				*p = ' ';
		}
		if (depth < 0 || rrlen + strlen(line) + 1 >= sizeof(rr)) {
			snprintf(err, errlen, "mx: dns_trust_anchor %s: malformed", file);
			goto done;
		}
		memcpy(rr + rrlen, line, strlen(line) + 1);
		rrlen += strlen(line);
		if (depth > 0)
			continue;
		for (p = rr; *p == ' '; p++)
			;
		if (*p != '\0') {
			if ((rc = ub_ctx_add_ta(ctx, p)) != 0) {
				snprintf(err, errlen, "mx: dns_trust_anchor %s: %s",
				    file, ub_strerror(rc));
				goto done;
			}
			n++;
		}
		rrlen = 0;
		rr[0] = '\0';
	}
	if (depth != 0 || n == 0) {
		snprintf(err, errlen, "mx: dns_trust_anchor %s: no complete record",
		    file);
		goto done;
	}
	ret = 0;
done:
	fclose(fp);
	return ret;
}

static struct mx_query *
mx_query_new(const char *name, int type)
{
	struct mx_query *q;

	if ((q = calloc(1, sizeof(*q))) == NULL)
		return NULL;
	snprintf(q->name, sizeof(q->name), "%s", name);
	q->type = type;
	return q;
}

static void
mx_query_free(struct mx_query *q)
{
	if (q == NULL)
		return;
	if (q->res != NULL)
		ub_resolve_free(q->res);
	free(q);
}

/* Runs inside ub_process(), under the context's lock. */
static void
mx_query_cb(void *arg, int err, struct ub_result *res)
{
	struct mx_query *q = arg;

	if (q->abandoned) {
		if (res != NULL)
			ub_resolve_free(res);
		free(q);
		return;
	}
	q->done = 1;
	q->err = err;
	q->res = res;
	if (err == 0 && res == NULL)
		q->err = UB_NOMEM;
}

static long
mx_ms_left(const struct timespec *deadline)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (deadline->tv_sec - now.tv_sec) * 1000 +
	    (deadline->tv_nsec - now.tv_nsec) / 1000000;
}

/*
 * Runs the queries together and waits for all of them, at most the
 * resolver's timeout.  One waiting thread at a time polls libunbound's pipe
 * and runs the callbacks for everyone; the others wait on the condition.
 * Queries still open at the deadline are cancelled (err = -1); one whose
 * cancel fails is left to the callback to free and set to NULL in qs.
 */
static void
mx_resolve(struct mx_resolver *r, struct mx_query **qs, size_t n)
{
	struct mx_ub *ub = r->ub;
	struct timespec deadline;
	struct pollfd pfd;
	size_t i, open;
	long left;
	int rc;

	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += r->timeout_ms / 1000;
	deadline.tv_nsec += (long)(r->timeout_ms % 1000) * 1000000;
	if (deadline.tv_nsec >= 1000000000) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&ub->lock);
	for (i = 0; i < n; i++) {
		if (qs[i] == NULL)
			continue;
		rc = ub_resolve_async(ub->ctx, qs[i]->name, qs[i]->type, 1, qs[i],
		    mx_query_cb, &qs[i]->id);
		if (rc != 0) {
			qs[i]->done = 1;
			qs[i]->err = rc;
		}
	}
	for (;;) {
		for (open = 0, i = 0; i < n; i++)
			if (qs[i] != NULL && !qs[i]->done)
				open++;
		if (open == 0 || (left = mx_ms_left(&deadline)) <= 0)
			break;
		if (ub->processing) {
			pthread_cond_timedwait(&ub->cond, &ub->lock, &deadline);
			continue;
		}
		ub->processing = 1;
		pthread_mutex_unlock(&ub->lock);
		pfd.fd = ub_fd(ub->ctx);
		pfd.events = POLLIN;
		pfd.revents = 0;
		rc = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
		pthread_mutex_lock(&ub->lock);
		if (rc > 0)
			(void)ub_process(ub->ctx);
		ub->processing = 0;
		pthread_cond_broadcast(&ub->cond);
	}
	for (i = 0; i < n; i++) {
		if (qs[i] == NULL || qs[i]->done)
			continue;
		if (ub_cancel(ub->ctx, qs[i]->id) == 0) {
			qs[i]->done = 1;
			qs[i]->err = -1;
		} else {
			qs[i]->abandoned = 1;
			qs[i] = NULL;
		}
	}
	pthread_mutex_unlock(&ub->lock);
}

/* MX_OK for an answer with or without data; the failure kinds otherwise. */
static enum mx_status
mx_query_status(const struct mx_query *q, char *reason, size_t len)
{
	const char *what = q == NULL ? "?" : q->name;

	if (q == NULL || q->err == -1) {
		snprintf(reason, len, "DNS timeout looking up %s", what);
		return MX_TEMPFAIL;
	}
	if (q->err != 0) {
		snprintf(reason, len, "DNS error looking up %s: %s", what,
		    ub_strerror(q->err));
		return MX_TEMPFAIL;
	}
	if (q->res->bogus) {
		snprintf(reason, len, "DNSSEC validation failed for %s: %s", what,
		    q->res->why_bogus ? q->res->why_bogus : "bogus");
		return MX_TEMPFAIL;
	}
	if (q->res->rcode == RCODE_NXDOMAIN) {
		snprintf(reason, len, "%s does not exist (NXDOMAIN)", what);
		return MX_NXDOMAIN;
	}
	if (q->res->rcode != 0) {
		snprintf(reason, len, "DNS %s for %s",
		    q->res->rcode == RCODE_SERVFAIL ? "SERVFAIL" : "failure", what);
		return MX_TEMPFAIL;
	}
	return MX_OK;
}

static size_t
mx_addrs_from(const struct ub_result *res, int type, int port,
    struct mx_addr *out, size_t max)
{
	size_t n = 0;
	int i;

	if (res == NULL || !res->havedata || res->data == NULL)
		return 0;
	for (i = 0; res->data[i] != NULL && n < max && n < MX_MAX_ADDRS; i++) {
		struct mx_addr *a = &out[n];
		memset(a, 0, sizeof(*a));
		if (type == RR_A && res->len[i] == 4) {
			struct sockaddr_in *sin = (struct sockaddr_in *)&a->ss;
			sin->sin_family = AF_INET;
			sin->sin_port = htons((uint16_t)port);
			memcpy(&sin->sin_addr, res->data[i], 4);
			a->sslen = sizeof(*sin);
			n++;
		} else if (type == RR_AAAA && res->len[i] == 16) {
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a->ss;
			sin6->sin6_family = AF_INET6;
			sin6->sin6_port = htons((uint16_t)port);
			memcpy(&sin6->sin6_addr, res->data[i], 16);
			a->sslen = sizeof(*sin6);
			n++;
		}
	}
	return n;
}

/*
 * A and AAAA of every host, all queries at once.  Hosts without an address
 * keep naddr 0.  Returns MX_OK if at least one host has an address, else
 * MX_TEMPFAIL if some query failed temporarily, else MX_NXDOMAIN if every
 * host was NXDOMAIN, else MX_NOHOST.  secure: the hosts' names came from a
 * validated answer; a host stays secure only if its addresses are too.
 */
static enum mx_status
mx_fill_addrs(struct mx_resolver *r, struct mx_host *h, size_t nh, int port,
    int secure, char *reason, size_t rlen)
{
	struct mx_query **qs;
	size_t i, usable = 0, nx = 0;
	int temp = 0;
	char why[512] = "";

	if ((qs = calloc(nh * 2, sizeof(*qs))) == NULL) {
		snprintf(reason, rlen, "out of memory");
		return MX_TEMPFAIL;
	}
	for (i = 0; i < nh; i++) {
		qs[2 * i] = mx_query_new(h[i].name, RR_AAAA);
		qs[2 * i + 1] = mx_query_new(h[i].name, RR_A);
		if (qs[2 * i] == NULL || qs[2 * i + 1] == NULL) {
			snprintf(reason, rlen, "out of memory");
			temp = 1;
			goto done;
		}
	}
	mx_resolve(r, qs, nh * 2);
	for (i = 0; i < nh; i++) {
		struct mx_query *q6 = qs[2 * i], *q4 = qs[2 * i + 1];
		enum mx_status s6 = mx_query_status(q6, why, sizeof(why));
		enum mx_status s4 = mx_query_status(q4, why, sizeof(why));
		size_t n = 0;

		if ((h[i].addrs = calloc(2 * MX_MAX_ADDRS, sizeof(*h[i].addrs))) == NULL) {
			temp = 1;
			continue;
		}
		if (s6 == MX_OK)
			n += mx_addrs_from(q6->res, RR_AAAA, port, h[i].addrs, 2 * MX_MAX_ADDRS);
		if (s4 == MX_OK)
			n += mx_addrs_from(q4->res, RR_A, port, h[i].addrs + n,
			    2 * MX_MAX_ADDRS - n);
		h[i].naddr = n;
		h[i].secure = secure && s6 == MX_OK && s4 == MX_OK &&
		    q6->res->secure && q4->res->secure;
		if (n > 0)
			usable++;
		else if (s6 == MX_TEMPFAIL || s4 == MX_TEMPFAIL)
			temp = 1;
		else if (s6 == MX_NXDOMAIN && s4 == MX_NXDOMAIN)
			nx++;
		if (n == 0 && s6 != MX_OK && s4 != MX_OK)
			snprintf(reason, rlen, "%s", why);
	}
done:
	for (i = 0; i < nh * 2; i++)
		mx_query_free(qs[i]);
	free(qs);
	if (usable > 0)
		return MX_OK;
	if (temp) {
		if (reason[0] == '\0')
			snprintf(reason, rlen, "DNS lookup of the hosts' addresses failed");
		return MX_TEMPFAIL;
	}
	if (nx == nh)
		return MX_NXDOMAIN;
	return MX_NOHOST;
}

static struct mx_list *
mx_list_new(size_t n)
{
	struct mx_list *l;

	if ((l = calloc(1, sizeof(*l))) == NULL)
		return NULL;
	if (n > 0 && (l->hosts = calloc(n, sizeof(*l->hosts))) == NULL) {
		free(l);
		return NULL;
	}
	l->nhosts = n;
	return l;
}

/* Drops hosts without addresses, keeping the order. */
static void
mx_list_compact(struct mx_list *l)
{
	size_t i, k = 0;

	for (i = 0; i < l->nhosts; i++) {
		if (l->hosts[i].naddr == 0)
			mx_host_clear(&l->hosts[i]);
		else
			l->hosts[k++] = l->hosts[i];
	}
	l->nhosts = k;
}

static void
mx_host_clear(struct mx_host *h)
{
	free(h->name);
	free(h->addrs);
	memset(h, 0, sizeof(*h));
}

void
mx_list_free(struct mx_list *l)
{
	size_t i;

	if (l == NULL)
		return;
	for (i = 0; i < l->nhosts; i++)
		mx_host_clear(&l->hosts[i]);
	free(l->hosts);
	free(l);
}

/* ------------------------------------------------------------ internal */

static int
mx_v4_internal(const unsigned char *b)
{
	uint32_t a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
	static const struct { uint32_t net; int bits; } nets[] = {
		{ 0x00000000, 8 },	/* "this network" */
		{ 0x0a000000, 8 },	/* RFC 1918 */
		{ 0x64400000, 10 },	/* shared address space (CGN; some metadata) */
		{ 0x7f000000, 8 },	/* loopback */
		{ 0xa9fe0000, 16 },	/* link-local: 169.254.169.254 metadata */
		{ 0xac100000, 12 },	/* RFC 1918 */
		{ 0xc0000000, 24 },	/* IETF protocol assignments */
		{ 0xc0a80000, 16 },	/* RFC 1918 */
		{ 0xc6120000, 15 },	/* benchmarking */
		{ 0xe0000000, 4 },	/* multicast */
		{ 0xf0000000, 4 },	/* reserved, broadcast */
	};
	size_t i;

	for (i = 0; i < sizeof(nets) / sizeof(nets[0]); i++)
		if ((a >> (32 - nets[i].bits)) == (nets[i].net >> (32 - nets[i].bits)))
			return 1;
	return 0;
}

int
mx_addr_internal(const struct mx_addr *a)
{
	static const unsigned char nat64[12] = { 0, 0x64, 0xff, 0x9b };
	const unsigned char *b;

	if (a->ss.ss_family == AF_INET)
		return mx_v4_internal((const unsigned char *)
		    &((const struct sockaddr_in *)&a->ss)->sin_addr);
	if (a->ss.ss_family != AF_INET6)
		return 1;
	b = ((const struct sockaddr_in6 *)&a->ss)->sin6_addr.s6_addr;
	if (IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)b) ||
	    IN6_IS_ADDR_V4COMPAT((const struct in6_addr *)b) ||
	    memcmp(b, nat64, sizeof(nat64)) == 0)
		return mx_v4_internal(b + 12);
	if (b[0] == 0x20 && b[1] == 0x02)	/* 6to4 */
		return mx_v4_internal(b + 2);
	return IN6_IS_ADDR_UNSPECIFIED((const struct in6_addr *)b) ||
	    IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)b) ||
	    (b[0] & 0xfe) == 0xfc ||			/* ULA fc00::/7 */
	    (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) ||	/* link-local */
	    (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) ||	/* site-local */
	    b[0] == 0xff ||				/* multicast */
	    (b[0] == 0x01 && b[1] == 0x00 && !b[2] && !b[3] && !b[4] && !b[5] &&
	    !b[6] && !b[7]);				/* discard 100::/64 */
}

size_t
mx_list_drop_internal(struct mx_list *l, char *first, size_t len)
{
	char txt[INET6_ADDRSTRLEN];
	size_t h, i, k, dropped = 0;

	for (h = 0; h < l->nhosts; h++) {
		struct mx_host *mh = &l->hosts[h];

		for (i = k = 0; i < mh->naddr; i++) {
			if (!mx_addr_internal(&mh->addrs[i])) {
				mh->addrs[k++] = mh->addrs[i];
				continue;
			}
			if (dropped++ == 0 && first != NULL) {
				const struct sockaddr_storage *ss = &mh->addrs[i].ss;
				inet_ntop(ss->ss_family, ss->ss_family == AF_INET ?
				    (const void *)&((const struct sockaddr_in *)ss)->sin_addr :
				    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr,
				    txt, sizeof(txt));
				snprintf(first, len, "%s (%s)", mh->name, txt);
			}
		}
		mh->naddr = k;
	}
	mx_list_compact(l);
	return dropped;
}

/* ------------------------------------------------------------ lookups */

enum mx_status
mx_lookup(struct mx_resolver *r, const char *domain, int port,
    struct mx_list **out, char *reason, size_t len)
{
	struct mx_query *q = NULL;
	struct mx_list *l = NULL;
	struct mx_host *hosts = NULL;
	size_t nhosts = 0;
	enum mx_status st;
	char name[MX_NAME_MAX + 2];
	int secure;

	*out = NULL;
	reason[0] = '\0';
	if (domain != NULL && domain[0] == '[')
		return mx_host(r, domain, port, out, reason, len);
	if (!mx_domain_valid(domain)) {
		snprintf(reason, len, "invalid domain name");
		return MX_NXDOMAIN;
	}
	snprintf(name, sizeof(name), "%s", domain);
	if (name[strlen(name) - 1] == '.')
		name[strlen(name) - 1] = '\0';
	if ((q = mx_query_new(name, RR_MX)) == NULL) {
		snprintf(reason, len, "out of memory");
		return MX_TEMPFAIL;
	}
	mx_resolve(r, &q, 1);
	if ((st = mx_query_status(q, reason, len)) != MX_OK)
		goto done;
	secure = q->res->secure;
	if (q->res->havedata) {
		int n = 0;
		while (q->res->data[n] != NULL && n < 1024)
			n++;
		st = mx_hosts_from_rdata(q->res->data, q->res->len, (size_t)n,
		    &hosts, &nhosts, reason, len);
		if (st != MX_OK)
			goto done;
		if ((l = mx_list_new(0)) == NULL) {
			st = MX_TEMPFAIL;
			goto done;
		}
		l->hosts = hosts;
		l->nhosts = nhosts;
		hosts = NULL;
	} else {
		/* RFC 5321 5.1: no MX, the domain itself is the host */
		if ((l = mx_list_new(1)) == NULL ||
		    (l->hosts[0].name = strdup(name)) == NULL) {
			snprintf(reason, len, "out of memory");
			st = MX_TEMPFAIL;
			goto done;
		}
		l->implicit = 1;
	}
	st = mx_fill_addrs(r, l->hosts, l->nhosts, port, secure, reason, len);
	if (st == MX_NXDOMAIN || st == MX_NOHOST) {
		if (l->implicit)
			snprintf(reason, len, "%s has no MX and no address", name);
		else
			snprintf(reason, len, "no MX host of %s has an address", name);
		st = MX_NOHOST;
	}
	if (st != MX_OK)
		goto done;
	mx_list_compact(l);
	*out = l;
	l = NULL;
done:
	mx_list_free(l);
	mx_query_free(q);
	return st;
}

enum mx_status
mx_host(struct mx_resolver *r, const char *host, int port,
    struct mx_list **out, char *reason, size_t len)
{
	struct mx_list *l = NULL;
	struct mx_addr a;
	char name[MX_NAME_MAX + 2];
	enum mx_status st;
	int lit;

	*out = NULL;
	reason[0] = '\0';
	if (host == NULL || (lit = mx_parse_literal(host, port, &a)) == -1) {
		snprintf(reason, len, "malformed address literal");
		return MX_NOHOST;
	}
	if (lit == 0) {
		if ((l = mx_list_new(1)) == NULL ||
		    (l->hosts[0].name = strdup(host)) == NULL ||
		    (l->hosts[0].addrs = malloc(sizeof(a))) == NULL) {
			mx_list_free(l);
			snprintf(reason, len, "out of memory");
			return MX_TEMPFAIL;
		}
		l->hosts[0].addrs[0] = a;
		l->hosts[0].naddr = 1;
		*out = l;
		return MX_OK;
	}
	if (!mx_domain_valid(host)) {
		snprintf(reason, len, "invalid host name");
		return MX_NOHOST;
	}
	snprintf(name, sizeof(name), "%s", host);
	if (name[strlen(name) - 1] == '.')
		name[strlen(name) - 1] = '\0';
	if ((l = mx_list_new(1)) == NULL ||
	    (l->hosts[0].name = strdup(name)) == NULL) {
		mx_list_free(l);
		snprintf(reason, len, "out of memory");
		return MX_TEMPFAIL;
	}
	st = mx_fill_addrs(r, l->hosts, 1, port, 0, reason, len);
	if (st == MX_NOHOST)
		snprintf(reason, len, "%s has no address", name);
	if (st != MX_OK) {
		mx_list_free(l);
		return st;
	}
	*out = l;
	return MX_OK;
}

enum mx_status
mx_tlsa(struct mx_resolver *r, const char *host, int port,
    struct tlsa_set **out, char *reason, size_t len)
{
	struct mx_query *q = NULL;
	struct tlsa_set *set = NULL;
	char name[MX_NAME_MAX + 32];
	enum mx_status st;
	size_t n = 0;

	*out = NULL;
	reason[0] = '\0';
	if (!mx_domain_valid(host) || port <= 0 || port > 65535) {
		snprintf(reason, len, "invalid host name for TLSA");
		return MX_BADANSWER;
	}
	snprintf(name, sizeof(name), "_%d._tcp.%s", port, host);
	if (name[strlen(name) - 1] == '.')
		name[strlen(name) - 1] = '\0';
	if ((q = mx_query_new(name, RR_TLSA)) == NULL ||
	    (set = calloc(1, sizeof(*set))) == NULL) {
		snprintf(reason, len, "out of memory");
		st = MX_TEMPFAIL;
		goto done;
	}
	mx_resolve(r, &q, 1);
	st = mx_query_status(q, reason, len);
	if (st == MX_NXDOMAIN) {	/* no TLSA: not an error */
		reason[0] = '\0';
		st = MX_OK;
	}
	if (st != MX_OK)
		goto done;
	set->secure = q->res->secure;
	if (q->res->havedata) {
		while (q->res->data[n] != NULL && n < MX_MAX_TLSA)
			n++;
		if ((set->rrs = calloc(n, sizeof(*set->rrs))) == NULL) {
			snprintf(reason, len, "out of memory");
			st = MX_TEMPFAIL;
			goto done;
		}
		for (set->n = 0; set->n < n; set->n++) {
			if (q->res->len[set->n] < 0 || mx_parse_tlsa_rdata(
			    (unsigned char *)q->res->data[set->n],
			    (size_t)q->res->len[set->n], &set->rrs[set->n]) == -1) {
				snprintf(reason, len, "malformed TLSA record at %s", name);
				st = MX_BADANSWER;
				goto done;
			}
		}
	}
	*out = set;
	set = NULL;
done:
	tlsa_set_free(set);
	mx_query_free(q);
	return st;
}

void
tlsa_set_free(struct tlsa_set *set)
{
	size_t i;

	if (set == NULL)
		return;
	for (i = 0; i < set->n; i++)
		free(set->rrs[i].data);
	free(set->rrs);
	free(set);
}

/* TXT rdata -> its strings joined; -1 if malformed. */
static int
mx_txt_text(const unsigned char *d, size_t dl, char *out, size_t outlen)
{
	size_t k, l = 0, c;

	for (k = 0; k < dl; k += 1 + c) {
		c = d[k];
		if (k + 1 + c > dl || l + c >= outlen)
			return -1;
		memcpy(out + l, d + k + 1, c);
		l += c;
	}
	out[l] = '\0';
	return 0;
}

/* PTR rdata -> the name. */
static int
mx_ptr_text(const unsigned char *d, size_t dl, char *out, size_t outlen)
{
	size_t used;

	return mx_parse_name(d, dl, &used, out, outlen);
}

/*
 * The records of one type at name as text (conv turns one rdata into it),
 * NULL-terminated; an empty list when there are none.
 */
static enum mx_status
mx_text_records(struct mx_resolver *r, const char *name, int type,
    int (*conv)(const unsigned char *, size_t, char *, size_t), char ***out,
    char *reason, size_t len)
{
	struct mx_query *q = NULL;
	enum mx_status st;
	char **v = NULL;
	size_t n = 0, i, dl;

	*out = NULL;
	reason[0] = '\0';
	if ((q = mx_query_new(name, type)) == NULL) {
		snprintf(reason, len, "out of memory");
		return MX_TEMPFAIL;
	}
	mx_resolve(r, &q, 1);
	if ((st = mx_query_status(q, reason, len)) != MX_OK)
		goto done;
	while (q->res->havedata && q->res->data[n] != NULL && n < MX_MAX_TXT)
		n++;
	if ((v = calloc(n + 1, sizeof(*v))) == NULL) {
		st = MX_TEMPFAIL;
		goto done;
	}
	for (i = 0; i < n; i++) {
		dl = q->res->len[i] > 0 ? (size_t)q->res->len[i] : 0;
		if ((v[i] = malloc(dl + MX_NAME_MAX + 2)) == NULL) {
			st = MX_TEMPFAIL;
			goto done;
		}
		if (conv((const unsigned char *)q->res->data[i], dl, v[i],
		    dl + MX_NAME_MAX + 2) == -1) {
			snprintf(reason, len, "malformed record at %s", name);
			st = MX_BADANSWER;
			goto done;
		}
	}
	*out = v;
	v = NULL;
done:
	if (st != MX_OK && reason[0] == '\0')
		snprintf(reason, len, "out of memory");
	mx_txt_free(v);
	mx_query_free(q);
	return st;
}

/* TXT records of name (MTA-STS, TLS-RPT, SPF, DMARC). */
enum mx_status
mx_txt(struct mx_resolver *r, const char *name, char ***out, char *reason,
    size_t len)
{
	*out = NULL;
	if (!mx_domain_valid(name)) {
		snprintf(reason, len, "invalid name for TXT");
		return MX_BADANSWER;
	}
	return mx_text_records(r, name, RR_TXT, mx_txt_text, out, reason, len);
}

/* PTR names of an address (FCrDNS checks), without trailing dots. */
enum mx_status
mx_ptr(struct mx_resolver *r, const struct mx_addr *a, char ***out, char *reason,
    size_t len)
{
	const unsigned char *ip;
	char name[80];
	size_t i, o = 0;

	if (a->ss.ss_family == AF_INET) {
		ip = (const unsigned char *)&((const struct sockaddr_in *)&a->ss)->sin_addr;
		snprintf(name, sizeof(name), "%u.%u.%u.%u.in-addr.arpa", ip[3], ip[2],
		    ip[1], ip[0]);
	} else {
		ip = (const unsigned char *)&((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
		for (i = 16; i-- > 0; )
			o += (size_t)snprintf(name + o, sizeof(name) - o, "%x.%x.",
			    ip[i] & 15, ip[i] >> 4);
		snprintf(name + o, sizeof(name) - o, "ip6.arpa");
	}
	return mx_text_records(r, name, RR_PTR, mx_ptr_text, out, reason, len);
}

void
mx_txt_free(char **v)
{
	size_t i;

	for (i = 0; v != NULL && v[i] != NULL; i++)
		free(v[i]);
	free(v);
}

const char *
mx_status_name(enum mx_status st)
{
	switch (st) {
	case MX_OK:		return "ok";
	case MX_TEMPFAIL:	return "tempfail";
	case MX_NXDOMAIN:	return "nxdomain";
	case MX_NULLMX:		return "nullmx";
	case MX_NOHOST:		return "nohost";
	case MX_BADANSWER:	return "badanswer";
	case MX_INTERNAL:	return "internal";
	}
	return "?";
}

/* ------------------------------------------------------------ shared */

static pthread_mutex_t	 mx_shared_lock = PTHREAD_MUTEX_INITIALIZER;
static struct mx_resolver *mx_shared;

struct mx_resolver *
mx_resolver_shared(const struct config *cfg, char *err, size_t errlen)
{
	struct mx_resolver *r;

	pthread_mutex_lock(&mx_shared_lock);
	if (mx_shared == NULL &&
	    (mx_shared = mx_resolver_new(cfg, err, errlen)) != NULL)
		mx_resolver_set_timeout(mx_shared, MX_CHECK_TIMEOUT_MS);
	r = mx_shared;
	pthread_mutex_unlock(&mx_shared_lock);
	return r;
}

void
mx_resolver_shared_free(void)
{
	pthread_mutex_lock(&mx_shared_lock);
	mx_resolver_free(mx_shared);
	mx_shared = NULL;
	pthread_mutex_unlock(&mx_shared_lock);
}

/* The main process's start: the config makes a resolver (it answers only
 * "localhost.", locally), which goes at once. */
int
mx_resolver_check(const struct config *cfg, char *err, size_t errlen)
{
	struct mx_resolver *r;

	if ((r = mx_resolver_new(cfg, err, errlen)) == NULL)
		return -1;
	mx_resolver_free(r);
	return 0;
}

/*
 * Submission-time check (delivery_domain_check, in fetch.c): refuse only
 * what DNS says can never receive mail.  Sandbox mode and routed domains
 * never ask DNS; timeouts never refuse.
 */
int
mx_check_local(const struct config *cfg, const char *domain, char *detail, size_t len)
{
	struct mx_addr a;
	size_t i;

	if (cfg->sandbox)
		return 0;
	for (i = 0; i < cfg->nroutes; i++)
		if (cfg->routes[i].domain != NULL &&
		    strcasecmp(cfg->routes[i].domain, domain) == 0)
			return 0;
	if (domain[0] == '[') {
		if (!cfg->mx_allow_internal && mx_parse_literal(domain, 25, &a) == 0 &&
		    mx_addr_internal(&a)) {
			snprintf(detail, len, "%s is an internal address: otpmail does "
			    "not deliver there", domain);
			return -1;
		}
		return 0;
	}
	return 1;
}

int
mx_check_answer(const struct config *cfg, const char *domain, enum mx_status st,
    struct mx_list *l, const char *why, char *detail, size_t len)
{
	char reason[512];

	snprintf(reason, sizeof(reason), "%s", why);
	if (st == MX_OK && l != NULL && !cfg->mx_allow_internal &&
	    mx_list_drop_internal(l, reason, sizeof(reason)) > 0 && l->nhosts == 0)
		st = MX_INTERNAL;
	switch (st) {
	case MX_NXDOMAIN:
		snprintf(detail, len, "domain %s does not exist", domain);
		return -1;
	case MX_NULLMX:
		snprintf(detail, len, "domain %s accepts no mail (null MX)", domain);
		return -1;
	case MX_NOHOST:
		snprintf(detail, len, "domain %s has no mail server (%s)", domain,
		    reason);
		return -1;
	case MX_INTERNAL:
		snprintf(detail, len, "every mail server of %s is at an internal "
		    "address, such as %s: otpmail does not deliver there", domain, reason);
		return -1;
	default:
		return 0;
	}
}
