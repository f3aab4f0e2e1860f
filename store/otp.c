/*
 * otp.c - one-time code records: open/close of the store, issue (two steps:
 * pending, then mark_sent or cancel), verify, revoke, unlock.  Records are
 * keyed by HMACs and hold only HMACs of codes; each operation is one short
 * transaction, retried on deadlock.
 *
 * Every key starts with the app's name.  Codes live per (app, address,
 * purpose, context), with that context's failure count and lock-out; the
 * resend cooldown per (app, address, purpose); the hourly window per (app,
 * address); failures of an end user per (app, client_id).  A stranger's
 * wrong guesses in his own context or from his own client never lock the
 * owner out of a fresh code in hers.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "store/store_int.h"

/* Everything an operation needs, derived before its transaction. */
struct op {
	const struct otp_request *q;
	struct otp_result *res;
	const char	*purpose;
	uint8_t		 okey[2][KEY_MAX];	/* [0] current secret, [1] old */
	uint8_t		 pkey[KEY_MAX];
	uint8_t		 akey[KEY_MAX];
	uint8_t		 ckey[KEY_MAX];		/* with has_client */
	uint8_t		 cikey[KEY_MAX];	/* with has_client: issues */
	uint8_t		 fkey[KEY_MAX];		/* the context's failures */
	uint8_t		 ctxh[1 + SHA256_DIGEST_LENGTH];
	int		 nkeys;
	int		 has_client;
	uint64_t	 now;
	int		 ttl;
	uint8_t		 issue_id[16];	/* mark_sent, cancel */
	const char	*queue_id;
	const char	*code;		/* verify: as typed */
	/* outcome */
	enum s_status	 st;
	int		 abort;		/* roll the transaction back */
	int		 took_global;
	int		 count;
	int		 lockout;	/* verify: this failure started a lock-out */
	int		 unlock_client;	/* unlock: the client_id too */
	uint64_t	 ticket;	/* a commit not durable: the flush it asked */
};

typedef int (*op_fn)(struct store *, DB_TXN *, struct op *);

static int	op_prepare(struct store *, const struct otp_request *, struct otp_result *,
		    struct op *);
static enum s_status op_run(struct store *, op_fn, struct op *, int durable, const char *);
#define OP_DURABLE_ON_SUCCESS	2	/* op_run: sync only if op->st == S_OK */
#define OP_FLUSH_BEGIN		3	/* op_run: start the flush, op->ticket names it */
struct otp_rec;
static int	otp_find_issue(const struct otp_rec *, const unsigned char *);
static int	otp_load(struct store *, DB_TXN *, const uint8_t *key, struct otp_rec *,
		    int *found);
static int	otp_save(struct store *, DB_TXN *, const uint8_t *key, struct otp_rec *);
static int	purpose_load(struct store *, DB_TXN *, const uint8_t *key,
		    struct purpose_rec *);
static int	purpose_save(struct store *, DB_TXN *, const uint8_t *key,
		    struct purpose_rec *);
static int	addr_load(struct store *, DB_TXN *, const uint8_t *key, struct addr_rec *,
		    int rmw);
static int	addr_save(struct store *, DB_TXN *, const uint8_t *key, struct addr_rec *);
static int	kfail_load(struct store *, DB_TXN *, const uint8_t *key, struct fail_state *);
static int	kfail_save(struct store *, DB_TXN *, const uint8_t *key,
		    const struct fail_state *);
static void	otp_drop(struct otp_rec *, int i);
static void	code_mac(const struct store_key *, const char *code, const uint8_t *ctxh,
		    uint8_t out[STORE_MAC_LEN]);
static int	fail_retry(struct store *, const struct fail_state *, uint64_t now);
static int	fail_note(struct store *, struct fail_state *, uint64_t now);
static uint64_t	fail_purge(struct store *, const struct fail_state *);
static void	fail_decode(const uint8_t *, struct fail_state *);
static void	fail_encode(const struct fail_state *, uint8_t *);
static int	cooldown_left(struct store *, const struct purpose_rec *, uint64_t now);
static int	issue_txn(struct store *, DB_TXN *, struct op *);
static int	mark_txn(struct store *, DB_TXN *, struct op *);
static int	cancel_txn(struct store *, DB_TXN *, struct op *);
static int	verify_txn(struct store *, DB_TXN *, struct op *);
static int	revoke_txn(struct store *, DB_TXN *, struct op *);
static int	unlock_txn(struct store *, DB_TXN *, struct op *);
static int	last_txn(struct store *, DB_TXN *, struct op *);
static int	hex_decode16(const char *, uint8_t out[16]);
static uint32_t	get_be32(const uint8_t *);
static void	put_be32(uint8_t *, uint32_t);

/* ---- encoding ---- */

uint64_t
get_be64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

void
put_be64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = v & 0xff;
		v >>= 8;
	}
}

static uint32_t
get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void
fail_decode(const uint8_t *p, struct fail_state *f)
{
	f->last = get_be64(p);
	f->failures = get_be32(p + 8);
	f->until = get_be64(p + 12);
}

static void
fail_encode(const struct fail_state *f, uint8_t *p)
{
	put_be64(p, f->last);
	put_be32(p + 8, f->failures);
	put_be64(p + 12, f->until);
}

int
otp_rec_decode(const void *v, size_t len, struct otp_rec *o)
{
	const uint8_t *p = v;
	int i;

	memset(o, 0, sizeof(*o));
	if (len < OTP_REC_HDR)
		return -1;
	o->purge = get_be64(p);
	fail_decode(p + 8, &o->fail);
	o->ncodes = p[8 + FAIL_SZ];
	if (o->ncodes > STORE_KEEP_MAX ||
	    len != OTP_REC_HDR + (size_t)o->ncodes * OTP_CODE_SZ) {
		memset(o, 0, sizeof(*o));
		return -1;
	}
	p += OTP_REC_HDR;
	for (i = 0; i < o->ncodes; i++, p += OTP_CODE_SZ) {
		struct otp_code_rec *c = &o->codes[i];

		memcpy(c->mac, p, STORE_MAC_LEN);
		memcpy(c->issue_id, p + 32, 16);
		c->issued = get_be64(p + 48);
		c->expires = get_be64(p + 56);
		c->failures = get_be32(p + 64);
		c->sent = p[68];
		memcpy(c->queue_id, p + 69, STORE_QID_MAX);
		c->queue_id[STORE_QID_MAX] = '\0';
	}
	return 0;
}

size_t
otp_rec_encode(const struct otp_rec *o, uint8_t *out)
{
	uint8_t *p = out;
	int i;

	put_be64(p, o->purge);
	fail_encode(&o->fail, p + 8);
	p[8 + FAIL_SZ] = (uint8_t)o->ncodes;
	p += OTP_REC_HDR;
	for (i = 0; i < o->ncodes; i++, p += OTP_CODE_SZ) {
		const struct otp_code_rec *c = &o->codes[i];

		memcpy(p, c->mac, STORE_MAC_LEN);
		memcpy(p + 32, c->issue_id, 16);
		put_be64(p + 48, c->issued);
		put_be64(p + 56, c->expires);
		put_be32(p + 64, c->failures);
		p[68] = c->sent;
		memset(p + 69, 0, STORE_QID_MAX);
		memcpy(p + 69, c->queue_id, strnlen(c->queue_id, STORE_QID_MAX));
	}
	return (size_t)(p - out);
}

void
addr_rec_decode(const void *v, size_t len, struct addr_rec *a)
{
	const uint8_t *p = v;

	memset(a, 0, sizeof(*a));
	if (len != ADDR_REC_SZ)
		return;
	a->purge = get_be64(p);
	a->hour_start = get_be64(p + 8);
	a->hour_count = get_be32(p + 16);
	a->failures = get_be32(p + 20);
	a->lockout_until = get_be64(p + 24);
}

size_t
addr_rec_encode(const struct addr_rec *a, uint8_t *p)
{
	put_be64(p, a->purge);
	put_be64(p + 8, a->hour_start);
	put_be32(p + 16, a->hour_count);
	put_be32(p + 20, a->failures);
	put_be64(p + 24, a->lockout_until);
	return ADDR_REC_SZ;
}

void
hex_encode(const uint8_t *in, size_t n, char *out)
{
	static const char hx[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		out[2 * i] = hx[in[i] >> 4];
		out[2 * i + 1] = hx[in[i] & 15];
	}
	out[2 * n] = '\0';
}

static int
hex_decode16(const char *s, uint8_t out[16])
{
	int i, hi, lo;

	if (s == NULL || strlen(s) != 32)
		return -1;
	for (i = 0; i < 16; i++) {
		hi = OPENSSL_hexchar2int((unsigned char)s[2 * i]);
		lo = OPENSSL_hexchar2int((unsigned char)s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* ---- database access ---- */

int
store_rec_get(struct store *s, DB_TXN *txn, const uint8_t *key, uint8_t *buf, size_t len,
    uint32_t *got, int rmw)
{
	DBT k, v;
	int r;

	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = (void *)key;
	k.size = KEY_MAX;
	v.data = buf;
	v.ulen = (uint32_t)len;
	v.flags = DB_DBT_USERMEM;
	/* Plain reads keep no lock to commit: they are re-read with DB_RMW
	 * before anything is written from them. */
	if (txn == NULL)
		store_handles_check(s);
	r = s->db->get(s->db, txn, &k, &v, rmw ? DB_RMW : DB_READ_COMMITTED);
	if (r == DB_REP_HANDLE_DEAD && txn == NULL) {
		/* no transaction to retry: open them again and read once more */
		store_retry(s, r);
		store_handles_check(s);
		r = s->db->get(s->db, txn, &k, &v, DB_READ_COMMITTED);
	}
	if (r == DB_REP_HANDLE_DEAD)
		store_retry(s, r);
	*got = r == 0 ? v.size : 0;
	return r;
}

int
store_rec_put(struct store *s, DB_TXN *txn, const uint8_t *key, const uint8_t *val, size_t len)
{
	DBT k, v;

	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = (void *)key;
	k.size = KEY_MAX;
	v.data = (void *)val;
	v.size = (uint32_t)len;
	return s->db->put(s->db, txn, &k, &v, 0);
}

int
store_rec_del(struct store *s, DB_TXN *txn, const uint8_t *key)
{
	DBT k;
	int r;

	memset(&k, 0, sizeof(k));
	k.data = (void *)key;
	k.size = KEY_MAX;
	r = s->db->del(s->db, txn, &k, 0);
	return r == DB_NOTFOUND ? 0 : r;
}

static int
otp_load(struct store *s, DB_TXN *txn, const uint8_t *key, struct otp_rec *o, int *found)
{
	uint8_t buf[REC_MAX];
	uint32_t n;
	int r;

	*found = 0;
	memset(o, 0, sizeof(*o));
	r = store_rec_get(s, txn, key, buf, sizeof(buf), &n, 1);
	if (r == DB_NOTFOUND)
		return 0;
	if (r != 0)
		return r;
	*found = 1;
	if (otp_rec_decode(buf, n, o) == -1)
		store_logf(s, LOG_WARNING, "event=store.corrupt_record action=reset");
	return 0;
}

/* Recomputes the purge time; deletes the record once nothing in it matters. */
static int
otp_save(struct store *s, DB_TXN *txn, const uint8_t *key, struct otp_rec *o)
{
	uint8_t buf[REC_MAX];
	uint64_t purge = fail_purge(s, &o->fail);
	int i;

	for (i = 0; i < o->ncodes; i++)
		if (o->codes[i].expires > purge)
			purge = o->codes[i].expires;
	if (purge == 0)
		return store_rec_del(s, txn, key);
	o->purge = purge;
	return store_rec_put(s, txn, key, buf, otp_rec_encode(o, buf));
}

static int
purpose_load(struct store *s, DB_TXN *txn, const uint8_t *key, struct purpose_rec *pr)
{
	uint8_t buf[PURPOSE_REC_SZ + 8];
	uint32_t n;
	int r;

	memset(pr, 0, sizeof(*pr));
	r = store_rec_get(s, txn, key, buf, sizeof(buf), &n, 1);
	if (r == DB_NOTFOUND)
		return 0;
	if (r != 0)
		return r;
	if (n != PURPOSE_REC_SZ)
		return 0;
	pr->purge = get_be64(buf);
	pr->last_sent = get_be64(buf + 8);
	pr->pend_at = get_be64(buf + 16);
	pr->pend_run = get_be64(buf + 24);
	memcpy(pr->queue_id, buf + 32, STORE_QID_MAX);
	pr->queue_id[STORE_QID_MAX] = '\0';
	return 0;
}

/* Kept while a cooldown runs or an issue is in flight, and as long as the
 * newest mail's code may live (message.status finds it). */
static int
purpose_save(struct store *s, DB_TXN *txn, const uint8_t *key, struct purpose_rec *pr)
{
	uint8_t buf[PURPOSE_REC_SZ];
	uint64_t purge = 0, t;

	if (pr->last_sent)
		purge = pr->last_sent + (uint64_t)(s->p.resend_cooldown > s->p.max_ttl ?
		    s->p.resend_cooldown : s->p.max_ttl);
	if (pr->pend_at && (t = pr->pend_at + (uint64_t)s->p.max_ttl) > purge)
		purge = t;
	if (purge == 0)
		return store_rec_del(s, txn, key);
	pr->purge = purge;
	put_be64(buf, pr->purge);
	put_be64(buf + 8, pr->last_sent);
	put_be64(buf + 16, pr->pend_at);
	put_be64(buf + 24, pr->pend_run);
	memset(buf + 32, 0, STORE_QID_MAX);
	memcpy(buf + 32, pr->queue_id, strnlen(pr->queue_id, STORE_QID_MAX));
	return store_rec_put(s, txn, key, buf, sizeof(buf));
}

static int
addr_load(struct store *s, DB_TXN *txn, const uint8_t *key, struct addr_rec *a, int rmw)
{
	uint8_t buf[ADDR_REC_SZ + 8];
	uint32_t n;
	int r;

	memset(a, 0, sizeof(*a));
	r = store_rec_get(s, txn, key, buf, sizeof(buf), &n, rmw);
	if (r == DB_NOTFOUND)
		return 0;
	if (r != 0)
		return r;
	addr_rec_decode(buf, n, a);
	return 0;
}

static int
addr_save(struct store *s, DB_TXN *txn, const uint8_t *key, struct addr_rec *a)
{
	uint8_t buf[ADDR_REC_SZ];

	(void)s;
	a->failures = 0;
	a->lockout_until = 0;
	if (a->hour_count == 0)
		return store_rec_del(s, txn, key);
	a->purge = a->hour_start + 3600;
	return store_rec_put(s, txn, key, buf, addr_rec_encode(a, buf));
}

static int
kfail_load(struct store *s, DB_TXN *txn, const uint8_t *key, struct fail_state *f)
{
	uint8_t buf[KFAIL_REC_SZ + 8];
	uint32_t n;
	int r;

	memset(f, 0, sizeof(*f));
	r = store_rec_get(s, txn, key, buf, sizeof(buf), &n, 1);
	if (r == DB_NOTFOUND)
		return 0;
	if (r != 0)
		return r;
	if (n == KFAIL_REC_SZ)
		fail_decode(buf + 8, f);
	return 0;
}

static int
kfail_save(struct store *s, DB_TXN *txn, const uint8_t *key, const struct fail_state *f)
{
	uint8_t buf[KFAIL_REC_SZ];
	uint64_t purge = fail_purge(s, f);

	if (purge == 0)
		return store_rec_del(s, txn, key);
	put_be64(buf, purge);
	fail_encode(f, buf + 8);
	return store_rec_put(s, txn, key, buf, sizeof(buf));
}

/* The failures of a context since its last issue (see struct otp_rec). */
struct cfail {
	struct fail_state f;		/* lock-outs; forgotten after quiet */
	uint32_t	 total;		/* every code's count grows by this */
	uint64_t	 codes_until;	/* kept while a code it counts may live */
};

static int
cfail_load(struct store *s, DB_TXN *txn, const uint8_t *key, struct cfail *c, uint64_t now)
{
	uint8_t buf[CFAIL_REC_SZ + 8];
	uint32_t n;
	int r;

	memset(c, 0, sizeof(*c));
	r = store_rec_get(s, txn, key, buf, sizeof(buf), &n, 1);
	if (r == DB_NOTFOUND)
		return 0;
	if (r != 0)
		return r;
	if (n != CFAIL_REC_SZ)
		return 0;
	fail_decode(buf + 8, &c->f);
	c->total = get_be32(buf + 8 + FAIL_SZ);
	c->codes_until = get_be64(buf + 8 + FAIL_SZ + 4);
	if (fail_purge(s, &c->f) <= now)
		memset(&c->f, 0, sizeof(c->f));
	if (c->codes_until <= now)
		c->total = 0;
	return 0;
}

static int
cfail_save(struct store *s, DB_TXN *txn, const uint8_t *key, const struct cfail *c)
{
	uint8_t buf[CFAIL_REC_SZ];
	uint64_t purge = fail_purge(s, &c->f);

	if (c->codes_until > purge)
		purge = c->codes_until;
	if (purge == 0)
		return store_rec_del(s, txn, key);
	put_be64(buf, purge);
	fail_encode(&c->f, buf + 8);
	put_be32(buf + 8 + FAIL_SZ, c->total);
	put_be64(buf + 8 + FAIL_SZ + 4, c->codes_until);
	return store_rec_put(s, txn, key, buf, sizeof(buf));
}

/* An issue: the context's failures go into its codes' own counts. */
static void
cfail_fold(struct otp_rec *o, uint32_t total, uint32_t maxf)
{
	int i;

	for (i = 0; i < o->ncodes; i++)
		o->codes[i].failures = o->codes[i].failures + total >= maxf ? maxf :
		    o->codes[i].failures + total;
}

static void
otp_drop(struct otp_rec *o, int i)
{
	memmove(&o->codes[i], &o->codes[i + 1],
	    (size_t)(o->ncodes - i - 1) * sizeof(o->codes[0]));
	o->ncodes--;
}

/* HMAC(secret, code 0 flag H(context)): the code is bound to its context. */
static void
code_mac(const struct store_key *key, const char *code, const uint8_t *ctxh,
    uint8_t out[STORE_MAC_LEN])
{
	uint8_t b[2 + SHA256_DIGEST_LENGTH];

	b[0] = 0;
	memcpy(b + 1, ctxh, 1 + SHA256_DIGEST_LENGTH);
	store_mac(key, code, strlen(code), b, sizeof(b), out);
}

/* Seconds left of a lock-out, 0 if none; a permanent one says lockout_max
 * (the earliest an admin's unlock could matter is unknown). */
static int
fail_retry(struct store *s, const struct fail_state *f, uint64_t now)
{
	if (f->until == STORE_FOREVER)
		return s->p.lockout_max;
	if (f->until > now)
		return (int)(f->until - now);
	return 0;
}

/*
 * Counts a failure: after lockout_after consecutive ones, each further one
 * locks for lockout_base doubling up to lockout_max.  At the cap the lock
 * is permanent only if the admin said so (permanent_lockout); otherwise it
 * is lockout_max, and retry_after stays true.  1 if a lock-out started.
 */
static int
fail_note(struct store *s, struct fail_state *f, uint64_t now)
{
	unsigned shift;
	uint64_t until;

	f->last = now;
	if (f->failures < UINT32_MAX)
		f->failures++;
	if (s->p.permanent_lockout &&
	    f->failures >= (uint32_t)s->p.max_consecutive_failures) {
		f->until = STORE_FOREVER;
		return 1;
	}
	if (f->failures < (uint32_t)s->p.lockout_after)
		return 0;
	shift = f->failures - (uint32_t)s->p.lockout_after;
	until = (uint64_t)s->p.lockout_base << (shift > 20 ? 20 : shift);
	if (until > (uint64_t)s->p.lockout_max)
		until = (uint64_t)s->p.lockout_max;
	f->until = now + until;
	return 1;
}

/* Failures are forgotten after lockout_max of quiet past the last one and
 * the lock-out's end; a permanent lock-out stays. */
static uint64_t
fail_purge(struct store *s, const struct fail_state *f)
{
	if (f->failures == 0)
		return 0;
	if (f->until == STORE_FOREVER)
		return STORE_FOREVER;
	return (f->until > f->last ? f->until : f->last) + (uint64_t)s->p.lockout_max;
}

/* Seconds left of the resend cooldown: the last mail, or an issue of this
 * run still composing its mail (a crashed run's never blocks). */
static int
cooldown_left(struct store *s, const struct purpose_rec *pr, uint64_t now)
{
	uint64_t cd = (uint64_t)s->p.resend_cooldown, t = 0;

	if (pr->last_sent && now < pr->last_sent + cd)
		t = pr->last_sent + cd;
	if (pr->pend_at && pr->pend_run == s->run && now < pr->pend_at + cd &&
	    pr->pend_at + cd > t)
		t = pr->pend_at + cd;
	return t ? (int)(t - now) : 0;
}

/* ---- the operation runner ---- */

static int
op_prepare(struct store *s, const struct otp_request *q, struct otp_result *res,
    struct op *op)
{
	/* app 0 addr 0 purpose 0 context-hash */
	uint8_t buf[STORE_APP_MAX + 1 + STORE_ADDR_MAX + 1 + STORE_PURPOSE_MAX + 1 +
	    1 + SHA256_DIGEST_LENGTH];
	size_t alen, plen, clen, nlen, i, o;
	const char *c, *app;

	memset(op, 0, sizeof(*op));
	op->q = q;
	op->res = res;
	if (res != NULL) {
		memset(res, 0, sizeof(*res));
		res->attempts_left = -1;
	}
	if (q == NULL || q->addr == NULL)
		return -1;
	app = q->app != NULL ? q->app : "";
	op->purpose = q->purpose != NULL ? q->purpose : "login";
	nlen = strnlen(app, STORE_APP_MAX + 1);
	alen = strnlen(q->addr, STORE_ADDR_MAX + 1);
	plen = strnlen(op->purpose, STORE_PURPOSE_MAX + 1);
	if (nlen > STORE_APP_MAX || alen == 0 || alen > STORE_ADDR_MAX || plen == 0 ||
	    plen > STORE_PURPOSE_MAX)
		return -1;
	for (c = op->purpose; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
		    *c == '-' || *c == '_' || *c == '.'))
			return -1;
	memcpy(buf, app, nlen);
	buf[nlen] = 0;
	o = nlen + 1;
	for (i = 0; i < alen; i++) {
		unsigned char ch = (unsigned char)q->addr[i];

		if (ch <= ' ' || ch == 0x7f)
			return -1;
		buf[o + i] = (uint8_t)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
	}
	o += alen;
	buf[o++] = 0;
	op->akey[0] = REC_ADDR;
	store_mac(&s->key, buf, o, NULL, 0, op->akey + 1);
	memcpy(buf + o, op->purpose, plen);
	o += plen;
	op->pkey[0] = REC_PURPOSE;
	store_mac(&s->key, buf, o, NULL, 0, op->pkey + 1);

	/* Context: 0 for none, 1 | SHA-256 of it otherwise. */
	if (q->context != NULL) {
		clen = strnlen(q->context, STORE_CONTEXT_MAX + 1);
		if (clen > STORE_CONTEXT_MAX)
			return -1;
		op->ctxh[0] = 1;
		SHA256((const unsigned char *)q->context, clen, op->ctxh + 1);
	}
	buf[o++] = 0;
	memcpy(buf + o, op->ctxh, sizeof(op->ctxh));
	o += sizeof(op->ctxh);
	op->nkeys = s->has_old ? 2 : 1;
	op->okey[0][0] = op->okey[1][0] = REC_OTP;
	store_mac(&s->key, buf, o, NULL, 0, op->okey[0] + 1);
	memcpy(op->fkey, op->okey[0], sizeof(op->fkey));
	op->fkey[0] = REC_CFAIL;
	if (s->has_old)
		store_mac(&s->old_key, buf, o, NULL, 0, op->okey[1] + 1);

	if (q->client_id != NULL && q->client_id[0] != '\0') {
		clen = strnlen(q->client_id, STORE_CLIENT_MAX + 1);
		if (clen > STORE_CLIENT_MAX)
			return -1;
		memcpy(buf + nlen + 1, q->client_id, clen);
		op->ckey[0] = REC_CLIENT;
		store_mac(&s->key, buf, nlen + 1 + clen, NULL, 0, op->ckey + 1);
		memcpy(op->cikey, op->ckey, sizeof(op->cikey));
		op->cikey[0] = REC_CLIENT_ISSUE;
		op->has_client = 1;
	}
	if (q->limit_addr != NULL) {
		/* one person's budget: the caller's canonical limit key
		 * (alice+x@ and alice@ share it) for the per-address limits */
		alen = strnlen(q->limit_addr, STORE_ADDR_MAX + 1);
		if (alen == 0 || alen > STORE_ADDR_MAX)
			return -1;
		for (i = 0; i < alen; i++) {
			unsigned char ch = (unsigned char)q->limit_addr[i];

			buf[nlen + 1 + i] = (uint8_t)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
		}
		buf[nlen + 1 + alen] = 0;
		store_mac(&s->key, buf, nlen + 1 + alen + 1, NULL, 0, op->akey + 1);
		/* the resend cooldown (and the in-flight issue it counts) is
		 * the person's too: alice+1@ waits for alice@'s mail */
		memcpy(buf + nlen + 1 + alen + 1, op->purpose, plen);
		store_mac(&s->key, buf, nlen + 1 + alen + 1 + plen, NULL, 0, op->pkey + 1);
	}
	op->now = q->now > 0 ? (uint64_t)q->now : 0;
	return 0;
}

static enum s_status
op_run(struct store *s, op_fn fn, struct op *op, int durable, const char *what)
{
	DB_TXN *txn;
	int attempt, r = 0;

	for (attempt = 0; attempt < STORE_RETRIES; attempt++) {
		op->st = S_OK;
		op->abort = 0;
		op->count = 0;
		op->lockout = 0;
		if ((r = store_txn_begin(s, &txn)) != 0)
			break;
		r = fn(s, txn, op);
		if (r == 0 && !op->abort) {
			/* OP_DURABLE_ON_SUCCESS: see store_otp_verify */
			r = store_commit_ticket(s, txn, durable == OP_DURABLE_ON_SUCCESS ?
			    op->st == S_OK : durable == 1,
			    durable == OP_FLUSH_BEGIN ? &op->ticket : NULL);
			if (r == 0)
				return op->st;
			/* A failed log flush leaves the outcome unknown. */
			break;
		}
		txn->abort(txn);
		if (op->took_global) {
			rl_global_give(s, op->now);
			op->took_global = 0;
		}
		if (r == 0)
			return op->st;
		if (!store_retry(s, r))
			break;
		store_backoff(attempt);
	}
	if (op->took_global) {
		rl_global_give(s, op->now);
		op->took_global = 0;
	}
	store_logf(s, LOG_ERR, "event=store.%s error=\"%s\"", what, db_strerror(r));
	return S_TEMPFAIL;
}

/* ---- open / close ---- */

void
store_params_defaults(struct store_params *p)
{
	memset(p, 0, sizeof(*p));
	p->code_length = 6;
	p->alphabet = OTP_ALPHA_DIGITS;
	p->ttl = 300;
	p->max_ttl = 3600;
	p->keep_codes = 3;
	p->resend_cooldown = 30;
	p->max_per_address_hour = 10;
	p->max_per_client_minute = 0;
	p->max_global_per_second = 0;
	p->max_failures_per_code = 5;
	p->lockout_after = 10;
	p->lockout_base = 60;
	p->lockout_max = 3600;
	p->max_consecutive_failures = 100;
	p->durable = 1;
}

struct store *
store_open(const struct store_params *p, char *err, size_t errlen)
{
	uint8_t secret[STORE_SECRET_LEN];
	struct store *s;

	if (p->dir == NULL || p->secret_file == NULL) {
		snprintf(err, errlen, "store: dir and secret_file are required");
		return NULL;
	}
	if (p->code_length < 4 || p->code_length > OTP_CODE_MAX ||
	    (p->alphabet != OTP_ALPHA_DIGITS && p->alphabet != OTP_ALPHA_ALNUM) ||
	    p->ttl < 1 || p->max_ttl < p->ttl || p->keep_codes < 1 ||
	    p->keep_codes > STORE_KEEP_MAX || p->max_failures_per_code < 1 ||
	    p->max_consecutive_failures < 1 || p->max_consecutive_failures > 100 ||
	    p->lockout_after < 1 || p->lockout_base < 1 ||
	    p->lockout_max < p->lockout_base || p->resend_cooldown < 0 ||
	    p->max_per_address_hour < 0 || p->max_per_client_minute < 0 ||
	    p->max_per_client_id_hour < 0 ||
	    p->max_global_per_second < 0) {
		snprintf(err, errlen, "store: parameter out of range (code length 4-12, "
		    "keep_codes 1-%d, max_consecutive_failures 1-100, ttl <= max_ttl, "
		    "lockout_base <= lockout_max)", STORE_KEEP_MAX);
		return NULL;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "store: out of memory");
		return NULL;
	}
	s->p = *p;
	if (RAND_bytes((unsigned char *)&s->run, sizeof(s->run)) != 1 || s->run == 0)
		s->run = (uint64_t)time(NULL) | 1;
	pthread_mutex_init(&s->glock, NULL);
	pthread_mutex_init(&s->reopen_lock, NULL);
	/* on several hosts the secret is the cluster's: one for every site */
	if (p->cluster != NULL)
		memcpy(secret, p->cluster->secret, sizeof(secret));
	else if (store_secret_load(p->secret_file, 1, secret, err, errlen) == -1)
		goto fail;
	if (store_key_init(&s->key, secret) == -1)
		goto nomem;
	if (p->cluster == NULL && p->old_secret_file != NULL &&
	    p->old_secret_file[0] != '\0') {
		if (store_secret_load(p->old_secret_file, 0, secret, err,
		    errlen) == -1)
			goto fail;
		if (store_key_init(&s->old_key, secret) == -1)
			goto nomem;
		s->has_old = 1;
	}
	OPENSSL_cleanse(secret, sizeof(secret));
	if (store_env_open(s, err, errlen) == -1)
		goto fail;
	if (store_flusher_start(s, err, errlen) == -1) {
		store_env_close(s);
		goto fail;
	}
	return s;
nomem:
	snprintf(err, errlen, "store: cannot set up HMAC-SHA256");
fail:
	OPENSSL_cleanse(secret, sizeof(secret));
	store_key_free(&s->key);
	store_key_free(&s->old_key);
	pthread_mutex_destroy(&s->glock);
	pthread_mutex_destroy(&s->reopen_lock);
	free(s);
	return NULL;
}

void
store_close(struct store *s)
{
	if (s == NULL)
		return;
	store_flusher_stop(s);
	store_env_close(s);
	store_key_free(&s->key);
	store_key_free(&s->old_key);
	pthread_mutex_destroy(&s->glock);
	pthread_mutex_destroy(&s->reopen_lock);
	free(s);
}

const char *
s_status_error(enum s_status st)
{
	switch (st) {
	case S_OK:		return "ok";
	case S_TEMPFAIL:	return "unavailable";
	case S_BADINPUT:	return "bad_request";
	case S_RATE_LIMITED:	return "rate_limited";
	case S_INVALID:		return "invalid_code";
	case S_EXPIRED:		return "expired";
	case S_LOCKED:		return "locked";
	case S_NOTFOUND:	return "not_found";
	}
	return "unavailable";
}

void
store_pseudonym(struct store *s, const char *addr, char out[17])
{
	char buf[16 + STORE_ADDR_MAX];
	uint8_t mac[STORE_MAC_LEN];
	size_t n = strnlen(addr, STORE_ADDR_MAX), i;

	memcpy(buf, "pseudonym", 10);
	for (i = 0; i < n; i++)
		buf[10 + i] = (char)(addr[i] >= 'A' && addr[i] <= 'Z' ?
		    addr[i] + ('a' - 'A') : addr[i]);
	store_mac(&s->key, buf, 10 + n, NULL, 0, mac);
	hex_encode(mac, 8, out);
}

/* ---- issue ---- */

static int
issue_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct otp_result *res = op->res;
	struct purpose_rec pr;
	struct otp_rec o;
	struct otp_code_rec *c;
	struct addr_rec a, ca;
	struct otp_rec old;
	struct cfail cfx;
	uint64_t now = op->now;
	uint32_t maxf = (uint32_t)s->p.max_failures_per_code;
	int r, found, ofound = 0, retry, i, climit;

	/* Every record read for update, in one order (A, P, O, C): concurrent
	 * issues for one address run one after the other, and each sees the
	 * one before it (the pending issue holds the cooldown). */
	if ((r = addr_load(s, txn, op->akey, &a, 1)) != 0)
		return r;
	if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
		return r;
	if ((r = otp_load(s, txn, op->okey[0], &o, &found)) != 0)
		return r;
	if (op->nkeys == 2 && (r = otp_load(s, txn, op->okey[1], &old, &ofound)) != 0)
		return r;
	if ((r = cfail_load(s, txn, op->fkey, &cfx, now)) != 0)
		return r;
	/* one client (the app's end user) may spend only so many addresses'
	 * budgets: a stranger at one IP cannot hold many owners off */
	climit = op->has_client && s->p.max_per_client_id_hour > 0;
	memset(&ca, 0, sizeof(ca));
	if (climit && (r = addr_load(s, txn, op->cikey, &ca, 1)) != 0)
		return r;
	if ((retry = cooldown_left(s, &pr, now)) > 0) {
		op->st = S_RATE_LIMITED;
		res->limit = "resend_cooldown";
		res->retry_after = retry;
		return 0;
	}
	if ((retry = rl_window_check(a.hour_start, a.hour_count,
	    (uint32_t)s->p.max_per_address_hour, 3600, now)) > 0) {
		op->st = S_RATE_LIMITED;
		res->limit = "address_hourly";
		res->retry_after = retry;
		return 0;
	}
	if (climit && (retry = rl_window_check(ca.hour_start, ca.hour_count,
	    (uint32_t)s->p.max_per_client_id_hour, 3600, now)) > 0) {
		op->st = S_RATE_LIMITED;
		res->limit = "client_id_hourly";
		res->retry_after = retry;
		return 0;
	}
	if (rl_global_take(s, now, &retry) == -1) {
		op->st = S_RATE_LIMITED;
		res->limit = "global_rate";
		res->retry_after = retry;
		return 0;
	}
	op->took_global = 1;

	/* The context's failures become the codes' own; expired and dead
	 * codes go; the oldest goes if the record is full. */
	cfail_fold(&o, cfx.total, maxf);
	for (i = 0; i < o.ncodes; )
		if (o.codes[i].expires <= now ||
		    o.codes[i].failures >= (uint32_t)s->p.max_failures_per_code)
			otp_drop(&o, i);
		else
			i++;
	while (o.ncodes >= s->p.keep_codes)
		otp_drop(&o, 0);
	/* A fresh code is a fresh secret: guesses at the old ones do not
	 * count against it, so a lock-out never keeps the owner from a new
	 * code and its use (the client's own lock-out stays). */
	memset(&o.fail, 0, sizeof(o.fail));
	c = &o.codes[o.ncodes++];
	memset(c, 0, sizeof(*c));
	if (otp_code_generate(s->p.alphabet, s->p.code_length, res->code) == -1 ||
	    RAND_bytes(c->issue_id, sizeof(c->issue_id)) != 1) {
		op->abort = 1;
		op->st = S_TEMPFAIL;
		return 0;
	}
	code_mac(&s->key, res->code, op->ctxh, c->mac);
	c->issued = now;
	c->expires = now + (uint64_t)op->ttl;
	if ((r = otp_save(s, txn, op->okey[0], &o)) != 0)
		return r;
	if (ofound && cfx.total > 0) {
		cfail_fold(&old, cfx.total, maxf);
		if ((r = otp_save(s, txn, op->okey[1], &old)) != 0)
			return r;
	}
	/*
	 * A fresh code, fresh failures: the context's lock-out goes too.  The
	 * record stays, empty, while the context's codes live (the sweep ends
	 * it): every issue and verify write-locks the page of its context's
	 * record, and if only contexts with failures had one, the few records
	 * would share one page, which every request in the store would lock
	 * in turn.  Kept, they spread as the codes' records do.
	 */
	memset(&cfx, 0, sizeof(cfx));
	for (i = 0; i < o.ncodes; i++)
		if (o.codes[i].expires > cfx.codes_until)
			cfx.codes_until = o.codes[i].expires;
	if ((r = cfail_save(s, txn, op->fkey, &cfx)) != 0)
		return r;
	pr.pend_at = now;
	pr.pend_run = s->run;
	if ((r = purpose_save(s, txn, op->pkey, &pr)) != 0)
		return r;
	rl_window_take(&a.hour_start, &a.hour_count, 3600, now);
	if ((r = addr_save(s, txn, op->akey, &a)) != 0)
		return r;
	if (climit) {
		rl_window_take(&ca.hour_start, &ca.hour_count, 3600, now);
		if ((r = addr_save(s, txn, op->cikey, &ca)) != 0)
			return r;
	}

	hex_encode(c->issue_id, sizeof(c->issue_id), res->issue_id);
	res->expires_at = (time_t)c->expires;
	res->ttl = op->ttl;
	res->resend_after = s->p.resend_cooldown;
	retry = rl_window_check(a.hour_start, a.hour_count,
	    (uint32_t)s->p.max_per_address_hour, 3600, now);
	if (retry > res->resend_after)
		res->resend_after = retry;
	return 0;
}

enum s_status
store_otp_issue(struct store *s, const struct otp_request *q, struct otp_result *res)
{
	enum s_status st;
	uint64_t ticket;

	st = store_otp_issue_async(s, q, res, &ticket);
	if (st == S_OK && store_flush_wait(s, ticket) == -1) {
		OPENSSL_cleanse(res->code, sizeof(res->code));
		return S_TEMPFAIL;
	}
	return st;
}

enum s_status
store_otp_issue_async(struct store *s, const struct otp_request *q, struct otp_result *res,
    uint64_t *ticket)
{
	struct op op;
	enum s_status st;
	int64_t fw;
	int retry;

	*ticket = 0;
	if ((fw = repl_write(s, RO_ISSUE, q, NULL, NULL, NULL, res, NULL, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;
	if (op_prepare(s, q, res, &op) == -1)
		return S_BADINPUT;
	op.ttl = q->ttl > 0 ? q->ttl : s->p.ttl;
	if (op.ttl > s->p.max_ttl)
		return S_BADINPUT;
	/* The client window first, in its own short transaction. */
	if (rl_client_take(s, q->client_uid, op.now, &retry) != 0)
		return S_TEMPFAIL;
	if (retry > 0) {
		res->limit = "client_minute";
		res->retry_after = retry;
		return S_RATE_LIMITED;
	}
	/* committed without a sync; the flush runs while the caller works */
	st = op_run(s, issue_txn, &op, OP_FLUSH_BEGIN, "issue");
	if (st != S_OK) {
		rl_client_give(s, q->client_uid, op.now);
		OPENSSL_cleanse(res->code, sizeof(res->code));
	} else
		/* the flush the commit asked: the code is durable once it ends */
		*ticket = op.ticket;
	return repl_tempfail(s, st, res);
}

/* ---- mark_sent / cancel ---- */

/* Index of the code with this issue id, or -1. */
static int
otp_find_issue(const struct otp_rec *o, const unsigned char *issue_id)
{
	int i;

	for (i = 0; i < o->ncodes; i++)
		if (memcmp(o->codes[i].issue_id, issue_id, 16) == 0)
			return i;
	return -1;
}

static int
mark_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct purpose_rec pr;
	struct otp_rec o;
	int r, found, i;

	if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
		return r;
	if ((r = otp_load(s, txn, op->okey[0], &o, &found)) != 0)
		return r;
	if ((i = otp_find_issue(&o, op->issue_id)) == -1) {
		op->st = S_NOTFOUND;
		return 0;
	}
	o.codes[i].sent = 1;
	snprintf(o.codes[i].queue_id, sizeof(o.codes[i].queue_id), "%s",
	    op->queue_id ? op->queue_id : "");
	pr.last_sent = op->now;
	pr.pend_at = pr.pend_run = 0;
	snprintf(pr.queue_id, sizeof(pr.queue_id), "%s", op->queue_id ? op->queue_id : "");
	if ((r = purpose_save(s, txn, op->pkey, &pr)) != 0)
		return r;
	return otp_save(s, txn, op->okey[0], &o);
}

enum s_status
store_otp_mark_sent(struct store *s, const struct otp_request *q, const char *issue_id,
    const char *queue_id)
{
	struct op op;
	int64_t fw;

	if ((fw = repl_write(s, RO_MARK, q, issue_id, queue_id, NULL, NULL, NULL, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;
	if (op_prepare(s, q, NULL, &op) == -1 || hex_decode16(issue_id, op.issue_id) == -1 ||
	    (queue_id != NULL && strlen(queue_id) > STORE_QID_MAX))
		return S_BADINPUT;
	op.queue_id = queue_id;
	/* Losing this to an OS crash only loses the cooldown: no sync. */
	return op_run(s, mark_txn, &op, 0, "mark_sent");
}

static int
cancel_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct purpose_rec pr;
	struct otp_rec o;
	struct addr_rec a;
	int r, found, i;

	if ((r = addr_load(s, txn, op->akey, &a, 1)) != 0)
		return r;
	if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
		return r;
	if ((r = otp_load(s, txn, op->okey[0], &o, &found)) != 0)
		return r;
	if ((i = otp_find_issue(&o, op->issue_id)) == -1) {
		op->st = S_NOTFOUND;
		return 0;
	}
	otp_drop(&o, i);
	if ((r = otp_save(s, txn, op->okey[0], &o)) != 0)
		return r;
	pr.pend_at = pr.pend_run = 0;
	if ((r = purpose_save(s, txn, op->pkey, &pr)) != 0)
		return r;
	rl_window_give(a.hour_start, &a.hour_count, 3600, op->now);
	op->count = 1;
	if ((r = addr_save(s, txn, op->akey, &a)) != 0)
		return r;
	if (op->has_client && s->p.max_per_client_id_hour > 0) {
		if ((r = addr_load(s, txn, op->cikey, &a, 1)) != 0)
			return r;
		rl_window_give(a.hour_start, &a.hour_count, 3600, op->now);
		return addr_save(s, txn, op->cikey, &a);
	}
	return 0;
}

enum s_status
store_otp_cancel(struct store *s, const struct otp_request *q, const char *issue_id)
{
	struct op op;
	enum s_status st;
	int64_t fw;

	if ((fw = repl_write(s, RO_CANCEL, q, issue_id, NULL, NULL, NULL, NULL, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;

	if (op_prepare(s, q, NULL, &op) == -1 || hex_decode16(issue_id, op.issue_id) == -1)
		return S_BADINPUT;
	st = op_run(s, cancel_txn, &op, 1, "cancel");
	if (st == S_OK) {
		rl_client_give(s, q->client_uid, op.now);
		rl_global_give(s, op.now);
	}
	return st;
}

/* ---- verify ---- */

/*
 * One path for every failure, whether a code was there or not: the same
 * records are read and written (the context's failure count, the client's),
 * so neither the answer nor its time says whether the address has a code.
 */
static int
verify_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct otp_result *res = op->res;
	struct otp_rec o[2];
	struct fail_state cf;
	struct cfail cfx;
	uint8_t mac[2][STORE_MAC_LEN];
	char code[OTP_CODE_MAX + 1];
	const struct otp_code_rec *newest = NULL, *matched = NULL;
	uint32_t maxf = (uint32_t)s->p.max_failures_per_code, ef;
	int r, found, k, i, live = 0, expired = 0, wellformed, left, lock;
	uint64_t now = op->now;

	memset(&cf, 0, sizeof(cf));
	if (op->has_client) {
		if ((r = kfail_load(s, txn, op->ckey, &cf)) != 0)
			return r;
		if (fail_purge(s, &cf) <= now)
			memset(&cf, 0, sizeof(cf));
		if ((lock = fail_retry(s, &cf, now)) > 0) {
			op->st = S_LOCKED;
			res->limit = "client_lockout";
			res->retry_after = lock;
			return 0;
		}
	}
	for (k = 0; k < op->nkeys; k++)
		if ((r = otp_load(s, txn, op->okey[k], &o[k], &found)) != 0)
			return r;
	if ((r = cfail_load(s, txn, op->fkey, &cfx, now)) != 0)
		return r;
	if ((lock = fail_retry(s, &cfx.f, now)) > 0) {
		op->st = S_LOCKED;
		res->limit = "context_lockout";
		res->retry_after = lock;
		return 0;
	}
	wellformed = otp_code_normalise(s->p.alphabet, s->p.code_length, op->code,
	    code) == 0;
	if (!wellformed)
		snprintf(code, sizeof(code), "-");	/* the same work, no match */
	code_mac(&s->key, code, op->ctxh, mac[0]);
	if (op->nkeys == 2)
		code_mac(&s->old_key, code, op->ctxh, mac[1]);
	/* Every live code is compared, in constant time, whatever matches. */
	for (k = 0; k < op->nkeys; k++)
		for (i = 0; i < o[k].ncodes; i++) {
			const struct otp_code_rec *c = &o[k].codes[i];

			if (c->expires <= now) {
				expired++;
				continue;
			}
			if (c->failures + cfx.total >= maxf)
				continue;
			live++;
			if (newest == NULL || c->issued >= newest->issued)
				newest = c;
			if (CRYPTO_memcmp(c->mac, mac[k], STORE_MAC_LEN) == 0 && wellformed)
				matched = c;
		}
	if (matched != NULL) {
		snprintf(res->queue_id, sizeof(res->queue_id), "%s", matched->queue_id);
		hex_encode(matched->issue_id, 16, res->issue_id);
		res->expires_at = (time_t)matched->expires;
		/* Success consumes every code of the context, and its failures. */
		for (k = 0; k < op->nkeys; k++)
			if ((r = store_rec_del(s, txn, op->okey[k])) != 0)
				return r;
		if ((r = store_rec_del(s, txn, op->fkey)) != 0)
			return r;
		if (op->has_client && cf.failures) {
			memset(&cf, 0, sizeof(cf));
			if ((r = kfail_save(s, txn, op->ckey, &cf)) != 0)
				return r;
		}
		/* The owner proved herself: her next code need not wait. */
		{
			struct purpose_rec pr;

			if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
				return r;
			if (pr.last_sent) {
				pr.last_sent = 0;
				if ((r = purpose_save(s, txn, op->pkey, &pr)) != 0)
					return r;
			}
		}
		op->st = S_OK;
		return 0;
	}

	/*
	 * A failure writes the context's failure record only, code or none
	 * (the first failure after an issue creates it either way): every
	 * live code's count grows by one through its total.
	 */
	if (cfx.total < UINT32_MAX)
		cfx.total++;
	left = 0;
	for (k = 0; k < op->nkeys; k++)
		for (i = 0; i < o[k].ncodes; i++) {
			const struct otp_code_rec *c = &o[k].codes[i];

			if (c->expires <= now)
				continue;
			if (c->expires > cfx.codes_until)
				cfx.codes_until = c->expires;
			ef = c->failures + cfx.total;
			if (ef < maxf && (int)(maxf - ef) > left)
				left = (int)(maxf - ef);
		}
	if (fail_note(s, &cfx.f, now)) {
		op->lockout = 1;
		res->limit = "context_lockout";
		res->retry_after = fail_retry(s, &cfx.f, now);
	}
	if ((r = cfail_save(s, txn, op->fkey, &cfx)) != 0)
		return r;
	if (op->has_client) {
		if (fail_note(s, &cf, now) && !op->lockout) {
			op->lockout = 1;
			res->limit = "client_lockout";
			res->retry_after = fail_retry(s, &cf, now);
		}
		if ((r = kfail_save(s, txn, op->ckey, &cf)) != 0)
			return r;
	}
	if (newest == NULL)
		for (k = 0; k < op->nkeys; k++)
			for (i = 0; i < o[k].ncodes; i++)
				if (newest == NULL || o[k].codes[i].issued >= newest->issued)
					newest = &o[k].codes[i];
	if (newest != NULL)
		snprintf(res->queue_id, sizeof(res->queue_id), "%s", newest->queue_id);
	if (live == 0) {
		op->st = expired ? S_EXPIRED : S_NOTFOUND;
		return 0;
	}
	if (!op->lockout && left == 0) {
		/* Every code is dead: a new one can come after the cooldown. */
		struct purpose_rec pr;

		res->limit = "code_attempts";
		if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
			return r;
		res->retry_after = cooldown_left(s, &pr, now);
	}
	res->attempts_left = left;
	op->st = S_INVALID;
	return 0;
}

enum s_status
store_otp_verify(struct store *s, const struct otp_request *q, const char *code,
    struct otp_result *res)
{
	enum s_status st;
	struct op op;
	int64_t fw;

	/* the verdict is the master's: a replica may be behind */
	if ((fw = repl_write(s, RO_VERIFY, q, code, NULL, NULL, res, NULL, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;
	if (op_prepare(s, q, res, &op) == -1 || code == NULL)
		return S_BADINPUT;
	op.code = code;
	/*
	 * A success consumes the codes: it must survive an OS crash, or the
	 * code could verify twice.  A failure only counts a guess; it is
	 * logged without a sync, so it survives a daemon crash (kill -9) and
	 * may be lost only with the OS, which no guesser controls.  This is
	 * what lets wrong guesses not queue behind disk syncs.
	 */
	st = repl_tempfail(s, op_run(s, verify_txn, &op, OP_DURABLE_ON_SUCCESS,
	    "verify"), res);
	/*
	 * After a damaged otp.db was quarantined (verify.c), a code issued
	 * before may be right: "unavailable", not "invalid", until every code
	 * it could have held has expired.  Every failure answers so (counted
	 * as before), so the answer tells a guesser nothing.
	 */
	if ((st == S_INVALID || st == S_EXPIRED || st == S_NOTFOUND) && !op.lockout &&
	    (uint64_t)q->now < s->lost_until)
		return S_TEMPFAIL;
	return st;
}

/* ---- revoke, unlock, last mail ---- */

static int
revoke_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct otp_rec o;
	int r, found, k, i;

	for (k = 0; k < op->nkeys; k++) {
		if ((r = otp_load(s, txn, op->okey[k], &o, &found)) != 0)
			return r;
		for (i = 0; i < o.ncodes; i++)
			if (o.codes[i].expires > op->now)
				op->count++;
		if (!found || o.ncodes == 0)
			continue;
		/* The cooldown stays: a revoke is no way around it. */
		o.ncodes = 0;
		if ((r = otp_save(s, txn, op->okey[k], &o)) != 0)
			return r;
	}
	op->st = S_OK;
	return 0;
}

enum s_status
store_otp_revoke(struct store *s, const struct otp_request *q, int *count)
{
	struct op op;
	enum s_status st;
	int64_t fw;

	if ((fw = repl_write(s, RO_REVOKE, q, NULL, NULL, NULL, NULL, count, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;

	if (op_prepare(s, q, NULL, &op) == -1)
		return S_BADINPUT;
	st = op_run(s, revoke_txn, &op, 1, "revoke");
	if (count)
		*count = st == S_OK ? op.count : 0;
	return st;
}

static int
unlock_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct fail_state f;
	struct cfail cfx;
	struct otp_rec o;
	int r, found;

	if ((r = otp_load(s, txn, op->okey[0], &o, &found)) != 0)
		return r;
	if (found) {
		memset(&o.fail, 0, sizeof(o.fail));	/* an older version's */
		if ((r = otp_save(s, txn, op->okey[0], &o)) != 0)
			return r;
	}
	/* the lock-out goes; what the codes have spent stays */
	if ((r = cfail_load(s, txn, op->fkey, &cfx, op->now)) != 0)
		return r;
	memset(&cfx.f, 0, sizeof(cfx.f));
	if ((r = cfail_save(s, txn, op->fkey, &cfx)) != 0)
		return r;
	if (op->has_client) {
		memset(&f, 0, sizeof(f));
		if ((r = kfail_save(s, txn, op->ckey, &f)) != 0)
			return r;
	}
	op->st = S_OK;
	return 0;
}

enum s_status
store_otp_unlock(struct store *s, const struct otp_request *q)
{
	struct op op;
	int64_t fw;

	if ((fw = repl_write(s, RO_UNLOCK, q, NULL, NULL, NULL, NULL, NULL, NULL, 0,
	    S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;

	if (op_prepare(s, q, NULL, &op) == -1)
		return S_BADINPUT;
	return op_run(s, unlock_txn, &op, 1, "unlock");
}

static int
last_txn(struct store *s, DB_TXN *txn, struct op *op)
{
	struct purpose_rec pr;
	int r;

	if ((r = purpose_load(s, txn, op->pkey, &pr)) != 0)
		return r;
	snprintf(op->res->queue_id, sizeof(op->res->queue_id), "%s", pr.queue_id);
	op->st = pr.queue_id[0] ? S_OK : S_NOTFOUND;
	return 0;
}

enum s_status
store_otp_last_mail(struct store *s, const struct otp_request *q, char *queue_id,
    size_t len)
{
	struct otp_result res;
	struct op op;
	enum s_status st;

	if (op_prepare(s, q, &res, &op) == -1 || len == 0)
		return S_BADINPUT;
	st = op_run(s, last_txn, &op, 0, "last_mail");
	if (st == S_OK)
		snprintf(queue_id, len, "%s", res.queue_id);
	return st;
}
