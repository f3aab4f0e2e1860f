/*
 * dlproto.c - the frames between otpmaild and its delivery process (see
 * dlproto.h).  Fields are big-endian integers and length-prefixed strings
 * (no NUL inside); a decoder reads through a cursor that fails once and
 * stays failed, so one check at the end covers every field.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "agent/delivery/dlproto.h"

#define DLP_RECV_FIRST	(16u * 1024)	/* the first read of a frame (stack) */

struct dlp_rd {
	const unsigned char	*p;
	size_t			 len, off;
	int			 err;
};

static void	 dlp_put(struct dlp_buf *, const void *, size_t);
static void	 dlp_put_u32(struct dlp_buf *, uint32_t);
static void	 dlp_put_u64(struct dlp_buf *, uint64_t);
static void	 dlp_put_str(struct dlp_buf *, const char *);
static uint32_t	 dlp_get_u32(struct dlp_rd *);
static uint64_t	 dlp_get_u64(struct dlp_rd *);
static char	*dlp_get_str(struct dlp_rd *);
static void	 dlp_get_fixed(struct dlp_rd *, char *out, size_t outlen);
static char	*dlp_get_name(struct dlp_rd *);
static void	 dlp_get_hosts(struct dlp_rd *, struct dlp_frep *);
static int	 dlp_io(int fd, void *p, size_t len, int wr);

void
dlp_buf_init(struct dlp_buf *b)
{
	memset(b, 0, sizeof(*b));
	dlp_put_u32(b, 0);		/* the length, filled by dlp_send */
}

void
dlp_buf_free(struct dlp_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void
dlp_put(struct dlp_buf *b, const void *p, size_t n)
{
	char *np;
	size_t cap;

	if (b->err || n == 0)		/* an empty field may come as NULL */
		return;
	if (n > DLP_FRAME_MAX || b->len + n > DLP_FRAME_MAX + 4) {
		b->err = 1;
		return;
	}
	if (b->len + n > b->cap) {
		cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		if ((np = realloc(b->p, cap)) == NULL) {
			b->err = 1;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void
dlp_put_u32(struct dlp_buf *b, uint32_t v)
{
	unsigned char x[4] = { v >> 24, v >> 16, v >> 8, v };

	dlp_put(b, x, 4);
}

static void
dlp_put_u64(struct dlp_buf *b, uint64_t v)
{
	dlp_put_u32(b, (uint32_t)(v >> 32));
	dlp_put_u32(b, (uint32_t)v);
}

static void
dlp_put_str(struct dlp_buf *b, const char *s)
{
	size_t l = s != NULL ? strlen(s) : 0;

	if (l > DLP_STR_MAX) {
		b->err = 1;
		return;
	}
	dlp_put_u32(b, (uint32_t)l);
	dlp_put(b, s, l);
}

static uint32_t
dlp_get_u32(struct dlp_rd *r)
{
	const unsigned char *p;

	if (r->err || r->len - r->off < 4) {
		r->err = 1;
		return 0;
	}
	p = r->p + r->off;
	r->off += 4;
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t
dlp_get_u64(struct dlp_rd *r)
{
	uint64_t hi = dlp_get_u32(r);

	return hi << 32 | dlp_get_u32(r);
}

/* A string field, malloc'd (NULL and r->err on a bad one). */
static char *
dlp_get_str(struct dlp_rd *r)
{
	uint32_t l = dlp_get_u32(r);
	char *s;

	if (r->err || l > DLP_STR_MAX || r->len - r->off < l ||
	    memchr(r->p + r->off, '\0', l) != NULL || (s = malloc(l + 1)) == NULL) {
		r->err = 1;
		return NULL;
	}
	memcpy(s, r->p + r->off, l);
	s[l] = '\0';
	r->off += l;
	return s;
}

static void
dlp_get_fixed(struct dlp_rd *r, char *out, size_t outlen)
{
	char *s = dlp_get_str(r);

	if (s != NULL && strlen(s) < outlen)
		memcpy(out, s, strlen(s) + 1);
	else
		r->err = 1;
	free(s);
}

int
dlp_job_encode(struct dlp_buf *b, const struct dlp_job *j)
{
	size_t i, k;

	dlp_put_str(b, j->id);
	dlp_put_str(b, j->sender);
	dlp_put_u32(b, j->flags);
	dlp_put_u32(b, j->klass);
	dlp_put_u64(b, (uint64_t)j->created);
	dlp_put_u32(b, (uint32_t)j->nrcpt);
	for (i = 0; i < j->nrcpt; i++) {
		dlp_put_u32(b, j->idx[i]);
		dlp_put_str(b, j->rcpts[i]);
	}
	dlp_put_u32(b, (uint32_t)j->ndom);
	for (i = 0; i < j->ndom; i++) {
		const struct mtasts_policy *p = &j->doms[i].sts;

		dlp_put_str(b, j->doms[i].name);
		dlp_put_u32(b, (uint32_t)j->doms[i].sts_on);
		if (!j->doms[i].sts_on)
			continue;
		dlp_put_u32(b, (uint32_t)p->mode);
		dlp_put_u64(b, (uint64_t)p->max_age);
		dlp_put_u32(b, (uint32_t)p->nmx);
		for (k = 0; k < p->nmx && k < MTASTS_MX_MAX; k++)
			dlp_put_str(b, p->mx[k]);
		dlp_put_str(b, p->id);
		dlp_put_u64(b, (uint64_t)p->fetched);
		dlp_put_u64(b, (uint64_t)p->expires);
	}
	dlp_put_u32(b, (uint32_t)j->len);
	dlp_put(b, j->data, j->len);
	return b->err ? -1 : 0;
}

int
dlp_job_decode(const char *buf, size_t len, struct dlp_job *j)
{
	struct dlp_rd r = { (const unsigned char *)buf, len, 0, 0 };
	uint32_t n, i, k, dl;

	memset(j, 0, sizeof(*j));
	j->id = dlp_get_str(&r);
	j->sender = dlp_get_str(&r);
	j->flags = dlp_get_u32(&r);
	j->klass = dlp_get_u32(&r);
	j->created = (int64_t)dlp_get_u64(&r);
	n = dlp_get_u32(&r);
	if (r.err || n == 0 || n > DLP_RCPT_MAX ||
	    (j->rcpts = calloc(n, sizeof(*j->rcpts))) == NULL ||
	    (j->idx = calloc(n, sizeof(*j->idx))) == NULL)
		goto bad;
	for (i = 0; i < n && !r.err; i++, j->nrcpt++) {
		j->idx[i] = dlp_get_u32(&r);
		j->rcpts[i] = dlp_get_str(&r);
	}
	n = dlp_get_u32(&r);
	if (r.err || n > DLP_RCPT_MAX ||
	    (n > 0 && (j->doms = calloc(n, sizeof(*j->doms))) == NULL))
		goto bad;
	for (i = 0; i < n && !r.err; i++, j->ndom++) {
		struct mtasts_policy *p = &j->doms[i].sts;

		j->doms[i].name = dlp_get_str(&r);
		j->doms[i].sts_on = dlp_get_u32(&r) != 0;
		if (!j->doms[i].sts_on)
			continue;
		p->mode = (enum mtasts_mode)dlp_get_u32(&r);
		p->max_age = (long)dlp_get_u64(&r);
		p->nmx = dlp_get_u32(&r);
		if (p->mode > MTASTS_ENFORCE || p->nmx > MTASTS_MX_MAX)
			r.err = 1;
		for (k = 0; k < p->nmx && !r.err; k++)
			dlp_get_fixed(&r, p->mx[k], sizeof(p->mx[k]));
		dlp_get_fixed(&r, p->id, sizeof(p->id));
		p->fetched = (time_t)dlp_get_u64(&r);
		p->expires = (time_t)dlp_get_u64(&r);
	}
	dl = dlp_get_u32(&r);
	if (r.err || r.len - r.off != dl)
		goto bad;
	j->data = buf + r.off;
	j->len = dl;
	return 0;
bad:
	dlp_job_free(j);
	return -1;
}

void
dlp_job_free(struct dlp_job *j)
{
	size_t i;

	free(j->id);
	free(j->sender);
	for (i = 0; i < j->nrcpt; i++)
		free(j->rcpts[i]);
	free(j->rcpts);
	free(j->idx);
	for (i = 0; i < j->ndom; i++)
		free(j->doms[i].name);
	free(j->doms);
	memset(j, 0, sizeof(*j));
}

int
dlp_job_sts(const struct dlp_job *j, const char *domain, struct mtasts_policy *out)
{
	size_t i;

	for (i = 0; i < j->ndom; i++)
		if (j->doms[i].name != NULL && strcmp(j->doms[i].name, domain) == 0) {
			if (!j->doms[i].sts_on)
				return 0;
			*out = j->doms[i].sts;
			return 1;
		}
	return 0;
}

int
dlp_result_add(struct dlp_result *res, uint32_t idx, int state, const char *reply,
    const char *mx, const char *ip, const char *tls)
{
	struct dlp_outcome *o;

	if (res->n >= DLP_RCPT_MAX ||
	    (o = realloc(res->o, (res->n + 1) * sizeof(*o))) == NULL)
		return -1;
	res->o = o;
	o[res->n].idx = idx;
	o[res->n].state = (uint8_t)state;
	o[res->n].reply = strndup(reply != NULL ? reply : "", DLP_STR_MAX);
	o[res->n].mx = strndup(mx != NULL ? mx : "", DLP_STR_MAX);
	o[res->n].ip = strndup(ip != NULL ? ip : "", DLP_STR_MAX);
	o[res->n].tls = strndup(tls != NULL ? tls : "", DLP_STR_MAX);
	res->n++;	/* counted before the check: freed as a whole on error */
	if (!o[res->n - 1].reply || !o[res->n - 1].mx || !o[res->n - 1].ip ||
	    !o[res->n - 1].tls)
		return -1;
	return 0;
}

int
dlp_result_add_tls(struct dlp_result *res, const char *domain, int ptype, int sts,
    const char *mx, const char *ip, const char *rtype)
{
	struct dlp_tls *t;

	if (res->ntls >= DLP_TLS_MAX ||
	    (t = realloc(res->tls, (res->ntls + 1) * sizeof(*t))) == NULL)
		return -1;
	res->tls = t;
	t += res->ntls;
	memset(t, 0, sizeof(*t));
	t->ptype = (uint8_t)ptype;
	t->sts = sts != 0;
	t->domain = strndup(domain ? domain : "", DLP_STR_MAX);
	t->mx = strndup(mx ? mx : "", DLP_STR_MAX);
	t->ip = strndup(ip ? ip : "", DLP_STR_MAX);
	t->rtype = strndup(rtype ? rtype : "", DLP_STR_MAX);
	res->ntls++;
	if (!t->domain || !t->mx || !t->ip || !t->rtype)
		return -1;
	return 0;
}

int
dlp_result_encode(struct dlp_buf *b, const struct dlp_result *res)
{
	size_t i;

	dlp_put_u32(b, (uint32_t)res->n);
	for (i = 0; i < res->n; i++) {
		dlp_put_u32(b, res->o[i].idx);
		dlp_put(b, &res->o[i].state, 1);
		dlp_put_str(b, res->o[i].reply);
		dlp_put_str(b, res->o[i].mx);
		dlp_put_str(b, res->o[i].ip);
		dlp_put_str(b, res->o[i].tls);
	}
	dlp_put_u32(b, (uint32_t)res->ntls);
	for (i = 0; i < res->ntls; i++) {
		const struct dlp_tls *t = &res->tls[i];
		unsigned char x[2] = { t->ptype, t->sts };

		dlp_put_str(b, t->domain);
		dlp_put(b, x, 2);
		dlp_put_str(b, t->mx);
		dlp_put_str(b, t->ip);
		dlp_put_str(b, t->rtype);
	}
	return b->err ? -1 : 0;
}

int
dlp_result_decode(const char *buf, size_t len, struct dlp_result *res)
{
	struct dlp_rd r = { (const unsigned char *)buf, len, 0, 0 };
	uint32_t n, i;

	memset(res, 0, sizeof(*res));
	n = dlp_get_u32(&r);
	if (r.err || n > DLP_RCPT_MAX ||
	    (n > 0 && (res->o = calloc(n, sizeof(*res->o))) == NULL))
		goto bad;
	for (i = 0; i < n && !r.err; i++) {
		res->n++;
		res->o[i].idx = dlp_get_u32(&r);
		if (r.len - r.off < 1) {
			r.err = 1;
			break;
		}
		res->o[i].state = r.p[r.off++];
		res->o[i].reply = dlp_get_str(&r);
		res->o[i].mx = dlp_get_str(&r);
		res->o[i].ip = dlp_get_str(&r);
		res->o[i].tls = dlp_get_str(&r);
	}
	n = dlp_get_u32(&r);
	if (r.err || n > DLP_TLS_MAX ||
	    (n > 0 && (res->tls = calloc(n, sizeof(*res->tls))) == NULL))
		goto bad;
	for (i = 0; i < n && !r.err; i++) {
		struct dlp_tls *t = &res->tls[i];

		res->ntls++;		/* counted before anything is in it: freed on error */
		t->domain = dlp_get_str(&r);
		if (r.err || r.len - r.off < 2) {
			r.err = 1;
			break;
		}
		t->ptype = r.p[r.off++];
		t->sts = r.p[r.off++];
		t->mx = dlp_get_str(&r);
		t->ip = dlp_get_str(&r);
		t->rtype = dlp_get_str(&r);
		if (t->ptype > 2 || t->sts > 1)
			r.err = 1;
	}
	if (r.err || r.off != r.len)
		goto bad;
	return 0;
bad:
	dlp_result_free(res);
	return -1;
}

int
dlp_result_check(const struct dlp_result *res, const struct dlp_job *j)
{
	size_t i, k, seen;

	for (i = 0; i < res->n; i++) {
		if (res->o[i].state < DLP_DELIVERED || res->o[i].state > DLP_DEFERRED)
			return -1;
		for (k = 0, seen = 0; k < j->nrcpt; k++)
			seen += j->idx[k] == res->o[i].idx;
		if (seen != 1)
			return -1;
		for (k = 0; k < i; k++)
			if (res->o[k].idx == res->o[i].idx)
				return -1;
	}
	return 0;
}

void
dlp_result_free(struct dlp_result *res)
{
	size_t i;

	for (i = 0; i < res->n; i++) {
		free(res->o[i].reply);
		free(res->o[i].mx);
		free(res->o[i].ip);
		free(res->o[i].tls);
	}
	free(res->o);
	for (i = 0; i < res->ntls; i++) {
		free(res->tls[i].domain);
		free(res->tls[i].mx);
		free(res->tls[i].ip);
		free(res->tls[i].rtype);
	}
	free(res->tls);
	memset(res, 0, sizeof(*res));
}

int
dlp_freq_encode(struct dlp_buf *b, const struct dlp_freq *q)
{
	size_t i;

	if (q->nhdr > DLP_FETCH_HDR_MAX || q->len > DLP_FETCH_REQ_MAX / 2)
		return -1;
	dlp_put_u32(b, q->kind);
	dlp_put_u32(b, q->id);
	dlp_put_str(b, q->name);
	dlp_put_u32(b, q->port);
	dlp_put_u32(b, (uint32_t)q->nhdr);
	for (i = 0; i < q->nhdr; i++)
		dlp_put_str(b, q->hdr[i]);
	dlp_put_u32(b, (uint32_t)q->len);
	dlp_put(b, q->body, q->len);
	return b->err ? -1 : 0;
}

int
dlp_freq_decode(const char *buf, size_t len, struct dlp_freq *q)
{
	struct dlp_rd r = { (const unsigned char *)buf, len, 0, 0 };
	uint32_t n, i, bl;

	memset(q, 0, sizeof(*q));
	q->kind = dlp_get_u32(&r);
	q->id = dlp_get_u32(&r);
	q->name = dlp_get_str(&r);
	q->port = dlp_get_u32(&r);
	n = dlp_get_u32(&r);
	if (r.err || q->kind < DLP_FETCH_TXT || q->kind > DLP_FETCH_TLSA || q->port > 65535 ||
	    n > DLP_FETCH_HDR_MAX || (n > 0 && (q->hdr = calloc(n, sizeof(*q->hdr))) == NULL))
		goto bad;
	for (i = 0; i < n && !r.err; i++, q->nhdr++)
		q->hdr[i] = dlp_get_str(&r);
	bl = dlp_get_u32(&r);
	if (r.err || r.len - r.off != bl || bl > DLP_FETCH_REQ_MAX / 2)
		goto bad;
	q->body = buf + r.off;
	q->len = bl;
	return 0;
bad:
	dlp_freq_free(q);
	return -1;
}

void
dlp_freq_free(struct dlp_freq *q)
{
	size_t i;

	free(q->name);
	for (i = 0; i < q->nhdr; i++)
		free(q->hdr[i]);
	free(q->hdr);
	memset(q, 0, sizeof(*q));
}

int
dlp_frep_encode(struct dlp_buf *b, const struct dlp_frep *f)
{
	size_t i, k;

	if (f->ntxt > DLP_FETCH_TXT_MAX || f->pol.nmx > MTASTS_MX_MAX ||
	    f->nhost > DLP_FETCH_HOST_MAX)
		return -1;
	dlp_put_u32(b, f->kind);
	dlp_put_u32(b, f->id);
	dlp_put_u32(b, (uint32_t)f->status);
	dlp_put_str(b, f->why);
	dlp_put_str(b, f->rtype);
	dlp_put_u32(b, (uint32_t)f->ntxt);
	for (i = 0; i < f->ntxt; i++)
		dlp_put_str(b, f->txt[i]);
	if (f->kind == DLP_FETCH_STS && f->status == 0) {
		dlp_put_u32(b, (uint32_t)f->pol.mode);
		dlp_put_u64(b, (uint64_t)f->pol.max_age);
		dlp_put_u32(b, (uint32_t)f->pol.nmx);
		for (i = 0; i < f->pol.nmx; i++)
			dlp_put_str(b, f->pol.mx[i]);
	}
	if ((f->kind == DLP_FETCH_MX || f->kind == DLP_FETCH_HOST) && f->status == 0) {
		dlp_put_u32(b, f->implicit);
		dlp_put_u32(b, (uint32_t)f->nhost);
		for (i = 0; i < f->nhost; i++) {
			const struct dlp_fhost *h = &f->host[i];

			if (h->naddr > DLP_FETCH_ADDR_MAX)
				return -1;
			dlp_put_str(b, h->name);
			dlp_put_u32(b, h->pref);
			dlp_put_u32(b, h->secure);
			dlp_put_u32(b, (uint32_t)h->naddr);
			for (k = 0; k < h->naddr; k++)
				dlp_put_str(b, h->addr[k]);
		}
	}
	if (f->kind == DLP_FETCH_TLSA && f->status == 0) {
		dlp_put_u32(b, f->ntlsa);
		dlp_put_u32(b, f->secure);
	}
	return b->err ? -1 : 0;
}

/* A host name or address of a reply: bounded, not empty. */
static char *
dlp_get_name(struct dlp_rd *r)
{
	char *s = dlp_get_str(r);

	if (s != NULL && (s[0] == '\0' || strlen(s) > DLP_FETCH_NAME_MAX)) {
		free(s);
		s = NULL;
		r->err = 1;
	}
	return s;
}

/* The hosts of an MX or HOST reply. */
static void
dlp_get_hosts(struct dlp_rd *r, struct dlp_frep *f)
{
	uint32_t n, i, k;

	f->implicit = dlp_get_u32(r);
	n = dlp_get_u32(r);
	if (r->err || f->implicit > 1 || n > DLP_FETCH_HOST_MAX ||
	    (n > 0 && (f->host = calloc(n, sizeof(*f->host))) == NULL)) {
		r->err = 1;
		return;
	}
	for (i = 0; i < n && !r->err; i++) {
		struct dlp_fhost *h = &f->host[i];

		f->nhost++;		/* counted before anything is in it: freed on error */
		h->name = dlp_get_name(r);
		h->pref = dlp_get_u32(r);
		h->secure = dlp_get_u32(r);
		k = dlp_get_u32(r);
		if (r->err || h->pref > 65535 || h->secure > 1 || k > DLP_FETCH_ADDR_MAX ||
		    (k > 0 && (h->addr = calloc(k, sizeof(*h->addr))) == NULL)) {
			r->err = 1;
			return;
		}
		for (; h->naddr < k && !r->err; h->naddr++)
			h->addr[h->naddr] = dlp_get_name(r);
	}
}

int
dlp_frep_decode(const char *buf, size_t len, struct dlp_frep *f)
{
	struct dlp_rd r = { (const unsigned char *)buf, len, 0, 0 };
	uint32_t n, i;

	memset(f, 0, sizeof(*f));
	f->kind = dlp_get_u32(&r);
	f->id = dlp_get_u32(&r);
	f->status = (int32_t)dlp_get_u32(&r);
	f->why = dlp_get_str(&r);
	f->rtype = dlp_get_str(&r);
	n = dlp_get_u32(&r);
	if (r.err || f->kind < DLP_FETCH_TXT || f->kind > DLP_FETCH_TLSA ||
	    n > DLP_FETCH_TXT_MAX || (f->txt = calloc(n + 1, sizeof(*f->txt))) == NULL)
		goto bad;
	for (i = 0; i < n && !r.err; i++, f->ntxt++)
		f->txt[i] = dlp_get_str(&r);
	if (!r.err && f->kind == DLP_FETCH_STS && f->status == 0) {
		f->pol.mode = (enum mtasts_mode)dlp_get_u32(&r);
		f->pol.max_age = (long)dlp_get_u64(&r);
		f->pol.nmx = dlp_get_u32(&r);
		if (f->pol.mode > MTASTS_ENFORCE || f->pol.max_age < 0 ||
		    f->pol.max_age > MTASTS_MAX_AGE_MAX || f->pol.nmx > MTASTS_MX_MAX)
			r.err = 1;
		for (i = 0; i < f->pol.nmx && !r.err; i++)
			dlp_get_fixed(&r, f->pol.mx[i], sizeof(f->pol.mx[i]));
	}
	if (!r.err && (f->kind == DLP_FETCH_MX || f->kind == DLP_FETCH_HOST) && f->status == 0)
		dlp_get_hosts(&r, f);
	if (!r.err && f->kind == DLP_FETCH_TLSA && f->status == 0) {
		f->ntlsa = dlp_get_u32(&r);
		f->secure = dlp_get_u32(&r);
		if (f->ntlsa > DLP_FETCH_TLSA_MAX || f->secure > 1)
			r.err = 1;
	}
	if (r.err || r.off != r.len)
		goto bad;
	return 0;
bad:
	dlp_frep_free(f);
	return -1;
}

void
dlp_frep_free(struct dlp_frep *f)
{
	size_t i;

	free(f->why);
	free(f->rtype);
	for (i = 0; f->txt != NULL && i < f->ntxt; i++)
		free(f->txt[i]);
	free(f->txt);
	dlp_fhost_free(f->host, f->nhost);
	memset(f, 0, sizeof(*f));
}

void
dlp_fhost_free(struct dlp_fhost *h, size_t n)
{
	size_t i, k;

	for (i = 0; h != NULL && i < n; i++) {
		free(h[i].name);
		for (k = 0; h[i].addr != NULL && k < h[i].naddr; k++)
			free(h[i].addr[k]);
		free(h[i].addr);
	}
	free(h);
}

static int
dlp_io(int fd, void *p, size_t len, int wr)
{
	char *c = p;
	ssize_t n;

	while (len > 0) {
		n = wr ? send(fd, c, len, MSG_NOSIGNAL) : read(fd, c, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = 0;
			return -1;
		}
		c += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes the frame's length into its first four bytes: 0, or -1. */
static int
dlp_seal(const struct dlp_buf *b)
{
	uint32_t l;

	if (b->err || b->len < 4)
		return -1;
	l = (uint32_t)(b->len - 4);
	b->p[0] = (char)(l >> 24);
	b->p[1] = (char)(l >> 16);
	b->p[2] = (char)(l >> 8);
	b->p[3] = (char)l;
	return 0;
}

int
dlp_send(int fd, const struct dlp_buf *b)
{
	if (dlp_seal(b) == -1)
		return -1;
	return dlp_io(fd, b->p, b->len, 1);
}

int
dlp_sendv(int fd, const struct dlp_buf *b, size_t n)
{
	struct iovec iov[DLP_SENDV_MAX];
	struct msghdr mh;
	size_t i, k = 0;
	ssize_t w;

	if (n > DLP_SENDV_MAX) {
		errno = EINVAL;
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (dlp_seal(&b[i]) == -1) {
			errno = EINVAL;
			return -1;
		}
		iov[i].iov_base = b[i].p;
		iov[i].iov_len = b[i].len;
	}
	while (k < n) {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = iov + k;
		mh.msg_iovlen = n - k;
		if ((w = sendmsg(fd, &mh, MSG_NOSIGNAL)) == -1) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		/* a short write: skip what went, go on from there */
		while (k < n && (size_t)w >= iov[k].iov_len)
			w -= (ssize_t)iov[k++].iov_len;
		if (k < n) {
			iov[k].iov_base = (char *)iov[k].iov_base + w;
			iov[k].iov_len -= (size_t)w;
		}
	}
	return 0;
}

void
dlp_rbuf_init(struct dlp_rbuf *rd)
{
	memset(rd, 0, sizeof(*rd));
}

void
dlp_rbuf_free(struct dlp_rbuf *rd)
{
	free(rd->p);
	memset(rd, 0, sizeof(*rd));
}

/* The length of the frame at the start of what rd holds; -1: no header yet. */
static long long
dlp_rbuf_head(const struct dlp_rbuf *rd)
{
	const unsigned char *h = (const unsigned char *)rd->p + rd->off;

	if (rd->len - rd->off < 4)
		return -1;
	return (long long)((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 |
	    (uint32_t)h[2] << 8 | h[3]);
}

int
dlp_rbuf_ready(const struct dlp_rbuf *rd)
{
	long long l = dlp_rbuf_head(rd);

	return l >= 0 && rd->len - rd->off - 4 >= (size_t)l;
}

/*
 * Reads up to DLP_RD_CHUNK bytes at a time, which may hold several frames
 * (a batch of jobs, or of results) and the start of the next; a frame
 * larger than that is read into its own allocation past what was held.
 */
int
dlp_recv_rbuf(int fd, struct dlp_rbuf *rd, size_t max, char **buf, size_t *len)
{
	long long l;
	size_t have;
	ssize_t n;
	char *q;

	*buf = NULL;
	*len = 0;
	for (;;) {
		l = dlp_rbuf_head(rd);
		if (l > (long long)max) {
			errno = EMSGSIZE;
			return -1;
		}
		have = rd->len - rd->off;
		if (l >= 0 && (have - 4 >= (size_t)l || (size_t)l + 4 > DLP_RD_CHUNK)) {
			if ((q = malloc((size_t)l + 1)) == NULL) {
				errno = EMSGSIZE;
				return -1;
			}
			if (have - 4 >= (size_t)l) {
				memcpy(q, rd->p + rd->off + 4, (size_t)l);
				rd->off += 4 + (size_t)l;
			} else {
				/* a big one: what is held, then the rest straight in */
				memcpy(q, rd->p + rd->off + 4, have - 4);
				rd->off = rd->len;
				if (dlp_io(fd, q + (have - 4), (size_t)l - (have - 4), 0) == -1) {
					free(q);
					return -1;
				}
			}
			if (rd->off == rd->len)
				rd->off = rd->len = 0;
			q[l] = '\0';
			*buf = q;
			*len = (size_t)l;
			return 0;
		}
		if (rd->off > 0) {
			memmove(rd->p, rd->p + rd->off, have);
			rd->off = 0;
			rd->len = have;
		}
		if (rd->p == NULL && (rd->p = malloc(DLP_RD_CHUNK)) == NULL) {
			errno = ENOMEM;
			return -1;
		}
		n = read(fd, rd->p + rd->len, DLP_RD_CHUNK - rd->len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = have > 0 ? EPROTO : 0;	/* cut inside a frame */
			return -1;
		}
		rd->len += (size_t)n;
	}
}

/*
 * One read brings the header and, for a frame that fits in DLP_RECV_FIRST,
 * the whole frame: the sides speak in turns (one job, one result; one
 * request, one reply), so what is in the socket is one frame at most and
 * bytes beyond it are a protocol error.  The first read goes to the stack:
 * the frame gets an allocation of its own size.
 */
int
dlp_recv(int fd, size_t max, char **buf, size_t *len)
{
	char first[DLP_RECV_FIRST], *q;
	size_t got = 0, l;
	ssize_t n;

	*buf = NULL;
	*len = 0;
	while (got < 4) {
		n = read(fd, first + got, sizeof(first) - got);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = 0;
			return -1;
		}
		got += (size_t)n;
	}
	l = (size_t)((uint32_t)(unsigned char)first[0] << 24 |
	    (uint32_t)(unsigned char)first[1] << 16 |
	    (uint32_t)(unsigned char)first[2] << 8 | (unsigned char)first[3]);
	if (l > max || got - 4 > l) {
		errno = l > max ? EMSGSIZE : EPROTO;
		return -1;
	}
	if ((q = malloc(l + 1)) == NULL) {
		errno = EMSGSIZE;
		return -1;
	}
	memcpy(q, first + 4, got - 4);
	if (l > got - 4 && dlp_io(fd, q + (got - 4), l - (got - 4), 0) == -1) {
		free(q);
		return -1;
	}
	q[l] = '\0';
	*buf = q;
	*len = l;
	return 0;
}
