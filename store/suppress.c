/*
 * suppress.c - each app's suppression list: addresses that bounced hard or
 * complained, kept in the store's database next to the OTP records, keyed
 * by HMAC(secret, "suppress" 0 app 0 lower(addr)) like them, so the
 * database holds no address in clear; the reply is stored with the address
 * cut out.  A record starts with its purge time (the entry's expiry), so
 * the sweep deletes expired entries; a lookup ignores them before that.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>

#include <openssl/crypto.h>

#include "store/store_int.h"

/* purge, created, then three length-prefixed strings: app, reason, reply */
#define SUPP_REC_HDR	(8 + 8)
#define SUPP_REC_MAX	(SUPP_REC_HDR + 3 * 2 + STORE_APP_MAX + STORE_SUPP_REASON_MAX + \
			    STORE_SUPP_REPLY_MAX)

typedef char supp_fits_sweep[SUPP_REC_MAX <= REC_MAX ? 1 : -1];

static int	supp_key(const struct store_key *, const char *app, const char *addr,
		    uint8_t out[KEY_MAX]);
static int	supp_decode(const uint8_t *key, const uint8_t *buf, size_t len,
		    struct store_supp *);
static size_t	supp_encode(const struct store_supp *, uint8_t *out);
static void	supp_redact(const char *reply, const char *addr, char *out, size_t len);
static int	supp_id_decode(const char *id, uint8_t out[KEY_MAX]);

static int
supp_key(const struct store_key *key, const char *app, const char *addr, uint8_t out[KEY_MAX])
{
	uint8_t buf[9 + STORE_APP_MAX + 1 + STORE_ADDR_MAX];
	size_t nlen = strnlen(app, STORE_APP_MAX + 1), alen = strnlen(addr, STORE_ADDR_MAX + 1);
	size_t i, o;

	if (nlen > STORE_APP_MAX || alen == 0 || alen > STORE_ADDR_MAX)
		return -1;
	memcpy(buf, "suppress", 9);
	memcpy(buf + 9, app, nlen);
	o = 9 + nlen;
	buf[o++] = 0;
	for (i = 0; i < alen; i++) {
		unsigned char ch = (unsigned char)addr[i];

		if (ch <= ' ' || ch == 0x7f)
			return -1;
		buf[o++] = (uint8_t)tolower(ch);
	}
	out[0] = REC_SUPPRESS;
	store_mac(key, buf, o, NULL, 0, out + 1);
	return 0;
}

static int
supp_get_str(const uint8_t **p, const uint8_t *end, char *out, size_t max)
{
	size_t n;

	if (end - *p < 2)
		return -1;
	n = (size_t)(*p)[0] << 8 | (*p)[1];
	*p += 2;
	if (n > max || (size_t)(end - *p) < n || memchr(*p, 0, n) != NULL)
		return -1;
	memcpy(out, *p, n);
	out[n] = '\0';
	*p += n;
	return 0;
}

static int
supp_decode(const uint8_t *key, const uint8_t *buf, size_t len, struct store_supp *e)
{
	const uint8_t *p = buf + SUPP_REC_HDR, *end = buf + len;
	uint64_t purge;

	memset(e, 0, sizeof(*e));
	if (len < SUPP_REC_HDR || len > SUPP_REC_MAX)
		return -1;
	purge = get_be64(buf);
	e->expires = purge == STORE_FOREVER ? 0 : (time_t)purge;
	e->created = (time_t)get_be64(buf + 8);
	if (supp_get_str(&p, end, e->app, STORE_APP_MAX) == -1 ||
	    supp_get_str(&p, end, e->reason, STORE_SUPP_REASON_MAX) == -1 ||
	    supp_get_str(&p, end, e->reply, STORE_SUPP_REPLY_MAX) == -1 || p != end)
		return -1;
	hex_encode(key + 1, STORE_MAC_LEN, e->id);
	return 0;
}

static size_t
supp_put_str(uint8_t *p, const char *s, size_t max)
{
	size_t n = strnlen(s, max);

	p[0] = (uint8_t)(n >> 8);
	p[1] = (uint8_t)n;
	memcpy(p + 2, s, n);
	return 2 + n;
}

static size_t
supp_encode(const struct store_supp *e, uint8_t *out)
{
	size_t o = SUPP_REC_HDR;

	put_be64(out, e->expires == 0 ? STORE_FOREVER : (uint64_t)e->expires);
	put_be64(out + 8, (uint64_t)e->created);
	o += supp_put_str(out + o, e->app, STORE_APP_MAX);
	o += supp_put_str(out + o, e->reason, STORE_SUPP_REASON_MAX);
	o += supp_put_str(out + o, e->reply, STORE_SUPP_REPLY_MAX);
	return o;
}

/*
 * The reply without the address (whole, then its local part if it is not
 * too short to be mistaken for ordinary text): a reply like "550 5.1.1
 * <bob@example.org>: user unknown" must not put the address back in clear.
 */
static void
supp_redact(const char *reply, const char *addr, char *out, size_t len)
{
	const char *at = strrchr(addr, '@');
	size_t alen = strlen(addr), llen = at ? (size_t)(at - addr) : 0, o = 0;
	const char *p = reply;

	while (*p != '\0' && o + 1 < len) {
		size_t cut = 0;

		if (alen > 0 && strncasecmp(p, addr, alen) == 0)
			cut = alen;
		else if (llen >= 3 && strncasecmp(p, addr, llen) == 0)
			cut = llen;
		if (cut > 0) {
			if (o + 3 >= len)
				break;
			memcpy(out + o, "***", 3);
			o += 3;
			p += cut;
			continue;
		}
		/* the reply is stored as text: control bytes become spaces */
		out[o++] = (unsigned char)*p < ' ' || *p == 0x7f ? ' ' : *p;
		p++;
	}
	out[o] = '\0';
}

static int
supp_id_decode(const char *id, uint8_t out[KEY_MAX])
{
	size_t i;
	int hi, lo;

	if (id == NULL || strlen(id) != 2 * STORE_MAC_LEN)
		return -1;
	out[0] = REC_SUPPRESS;
	for (i = 0; i < STORE_MAC_LEN; i++) {
		hi = OPENSSL_hexchar2int((unsigned char)id[2 * i]);
		lo = OPENSSL_hexchar2int((unsigned char)id[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[1 + i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* Reads the live entry under key; 0, DB_NOTFOUND (also: expired, corrupt) or
 * a database error. */
static int
supp_read(struct store *s, DB_TXN *txn, const uint8_t *key, time_t now,
    struct store_supp *e, int rmw)
{
	uint8_t buf[SUPP_REC_MAX];
	uint32_t got;
	int r;

	if ((r = store_rec_get(s, txn, key, buf, sizeof(buf), &got, rmw)) != 0)
		return r == DB_BUFFER_SMALL ? DB_NOTFOUND : r;
	if (supp_decode(key, buf, got, e) == -1 || (e->expires != 0 && e->expires <= now))
		return DB_NOTFOUND;
	return 0;
}

/* One write transaction (durable), retried on lock conflicts. */
typedef int (*supp_fn)(struct store *, DB_TXN *, void *arg);

static enum s_status
supp_run(struct store *s, supp_fn fn, void *arg)
{
	DB_TXN *txn;
	int attempt, r = 0;

	for (attempt = 0; attempt < STORE_RETRIES; attempt++) {
		if ((r = store_txn_begin(s, &txn)) != 0)
			break;
		if ((r = fn(s, txn, arg)) == 0) {
			if ((r = store_commit(s, txn, 1)) == 0)
				return S_OK;
			break;
		}
		txn->abort(txn);
		if (!store_retry(s, r))
			break;
		store_backoff(attempt);
	}
	store_logf(s, LOG_ERR, "event=store.suppress error=\"%s\"", db_strerror(r));
	return S_TEMPFAIL;
}

struct supp_put {
	uint8_t		 key[KEY_MAX];
	uint8_t		 buf[SUPP_REC_MAX];
	size_t		 len;
};

static int
supp_put_txn(struct store *s, DB_TXN *txn, void *arg)
{
	struct supp_put *p = arg;

	return store_rec_put(s, txn, p->key, p->buf, p->len);
}

enum s_status
store_supp_add(struct store *s, const char *app, const char *addr, const char *reason,
    const char *reply, int ttl, time_t now, struct store_supp *out)
{
	struct otp_request q = { .app = app, .addr = addr, .ttl = ttl, .now = now };
	struct supp_put p;
	struct store_supp e;
	enum s_status st;
	int64_t fw;

	app = app ? app : "";
	if (reason == NULL || *reason == '\0' || strlen(reason) > STORE_SUPP_REASON_MAX ||
	    ttl < 0 || supp_key(&s->key, app, addr, p.key) == -1)
		return S_BADINPUT;
	memset(&e, 0, sizeof(e));
	snprintf(e.app, sizeof(e.app), "%s", app);
	snprintf(e.reason, sizeof(e.reason), "%s", reason);
	supp_redact(reply ? reply : "", addr, e.reply, sizeof(e.reply));
	e.created = now;
	e.expires = ttl > 0 ? now + ttl : 0;
	hex_encode(p.key + 1, STORE_MAC_LEN, e.id);
	p.len = supp_encode(&e, p.buf);
	/* several hosts: written on the master (the entry is the same there) */
	if ((fw = repl_write(s, RO_SUPP_ADD, &q, reason, reply, NULL, NULL, NULL, NULL,
	    0, S_TEMPFAIL)) >= 0)
		st = (enum s_status)fw;
	else
		st = supp_run(s, supp_put_txn, &p);
	if (st == S_OK && out != NULL)
		*out = e;
	return st;
}

enum s_status
store_supp_check(struct store *s, const char *app, const char *addr, time_t now,
    struct store_supp *out)
{
	uint8_t key[KEY_MAX];
	struct store_supp e;
	int r, k;

	app = app ? app : "";
	/* the previous secret's entries stay valid through a rotation */
	for (k = 0; k < (s->has_old ? 2 : 1); k++) {
		if (supp_key(k == 0 ? &s->key : &s->old_key, app, addr, key) == -1)
			return S_BADINPUT;
		r = supp_read(s, NULL, key, now, &e, 0);
		if (r == 0 && strcmp(e.app, app) == 0) {
			if (out != NULL)
				*out = e;
			return S_OK;
		}
		if (r != 0 && r != DB_NOTFOUND) {
			store_logf(s, LOG_ERR, "event=store.suppress error=\"%s\"",
			    db_strerror(r));
			return S_TEMPFAIL;
		}
	}
	return S_NOTFOUND;
}

struct supp_del {
	uint8_t		 keys[2][KEY_MAX];	/* under the secret, the previous one */
	int		 nkeys;
	const char	*app;			/* NULL: any app's (by id) */
	time_t		 now;
	int		 found;
	struct store_supp e;
};

static int
supp_del_txn(struct store *s, DB_TXN *txn, void *arg)
{
	struct supp_del *d = arg;
	struct store_supp e;
	int k, r;

	d->found = 0;
	for (k = 0; k < d->nkeys; k++) {
		r = supp_read(s, txn, d->keys[k], d->now, &e, 1);
		/* another app's entry is not there for this one */
		if (r == DB_NOTFOUND || (r == 0 && d->app != NULL && strcmp(e.app, d->app) != 0))
			continue;
		if (r != 0 || (r = store_rec_del(s, txn, d->keys[k])) != 0)
			return r;
		if (!d->found)
			d->e = e;
		d->found = 1;
	}
	return 0;
}

enum s_status
store_supp_remove(struct store *s, const char *app, const char *addr, const char *id,
    time_t now, struct store_supp *out)
{
	struct supp_del d;
	enum s_status st;

	memset(&d, 0, sizeof(d));
	d.app = app;
	d.now = now;
	if (id != NULL) {
		if (supp_id_decode(id, d.keys[0]) == -1)
			return S_BADINPUT;
		d.nkeys = 1;
	} else {
		if (app == NULL || addr == NULL || supp_key(&s->key, app, addr, d.keys[0]) == -1)
			return S_BADINPUT;
		d.nkeys = 1;
		if (s->has_old && supp_key(&s->old_key, app, addr, d.keys[1]) == 0)
			d.nkeys = 2;
	}
	if (repl_forward_needed(s)) {
		/* on the master; the entry as this replica's copy has it */
		struct otp_request q = { .app = app, .addr = addr, .now = now };
		int k;

		for (k = 0; k < d.nkeys && !d.found; k++)
			if (supp_read(s, NULL, d.keys[k], now, &d.e, 0) == 0 &&
			    (app == NULL || strcmp(d.e.app, app) == 0))
				d.found = 1;
		st = (enum s_status)repl_write(s, RO_SUPP_REMOVE, &q, id, NULL, NULL,
		    NULL, NULL, NULL, 0, S_TEMPFAIL);
		if (st != S_OK)
			return st;
		if (!d.found)
			snprintf(d.e.id, sizeof(d.e.id), "%s", id != NULL ? id : "");
		d.found = 1;
	} else if ((st = supp_run(s, supp_del_txn, &d)) != S_OK)
		return st;
	if (!d.found)
		return S_NOTFOUND;
	if (out != NULL)
		*out = d.e;
	return S_OK;
}

enum s_status
store_supp_list(struct store *s, const char *app, const char *after, time_t now,
    struct store_supp *out, size_t max, size_t *n, int *more)
{
	uint8_t kbuf[KEY_MAX], vbuf[REC_MAX];
	struct store_supp e;
	DBC *c = NULL;
	DBT k, v;
	int r;

	*n = 0;
	*more = 0;
	memset(kbuf, 0, sizeof(kbuf));
	kbuf[0] = REC_SUPPRESS;
	if (after != NULL && supp_id_decode(after, kbuf) == -1)
		return S_BADINPUT;
	if ((r = s->db->cursor(s->db, NULL, &c, DB_READ_COMMITTED)) != 0)
		goto fail;
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = kbuf;
	k.size = KEY_MAX;
	k.ulen = sizeof(kbuf);
	k.flags = DB_DBT_USERMEM;
	v.data = vbuf;
	v.ulen = sizeof(vbuf);
	v.flags = DB_DBT_USERMEM;
	r = c->get(c, &k, &v, DB_SET_RANGE);
	/* the keys sort by prefix byte: the 'S' records are one run */
	while (r == 0) {
		if (k.size < 1 || kbuf[0] != REC_SUPPRESS)
			break;
		if (k.size == KEY_MAX && supp_decode(kbuf, vbuf, v.size, &e) == 0 &&
		    (e.expires == 0 || e.expires > now) &&
		    (app == NULL || strcmp(e.app, app) == 0) &&
		    (after == NULL || strcmp(e.id, after) > 0)) {
			if (*n == max) {
				*more = 1;
				break;
			}
			out[(*n)++] = e;
		}
		r = c->get(c, &k, &v, DB_NEXT);
	}
	if (r == DB_NOTFOUND)
		r = 0;
	c->close(c);
	if (r == 0)
		return S_OK;
fail:
	store_logf(s, LOG_ERR, "event=store.suppress error=\"%s\"", db_strerror(r));
	return S_TEMPFAIL;
}
