/*
 * idem.c - idempotency keys of otp.issue and mail.send: per app, kept
 * 24 h in the store's database (durable across restarts), with the hash of
 * the request body and the first answer.  A key is reserved by the first
 * request ("pending", named by the store's run), holds the answer it will
 * give from the enqueue barrier on ("prepared", synced before the mail is
 * named), then its answer ("answered").  A request of a crashed run never
 * keeps a key busy; its prepared answer is handed to the next begin.
 * Several hosts: the records live on the master; a reservation is owned by
 * the run of the site that asked (repl_owner), and another site's run holds
 * it for STORE_IDEM_LEASE s from its claim (created), then counts as gone.
 */
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include <openssl/crypto.h>

#include "store/store_int.h"

#define IDEM_PENDING	0
#define IDEM_ANSWERED	1
#define IDEM_PREPARED	2	/* the mail may be named: its answer is here */

struct idem_rec {
	uint64_t	 purge;
	uint64_t	 created;
	uint64_t	 run;
	uint8_t		 state;
	uint8_t		 hash[32];
	size_t		 anslen;
	char		 answer[STORE_IDEM_ANSWER_MAX + 1];
};

typedef char idem_fits_sweep[IDEM_REC_MAX <= REC_MAX ? 1 : -1];

static int	idem_key(struct store *, const char *app, const char *key, uint8_t out[KEY_MAX]);
static int	idem_get(struct store *, DB_TXN *, const uint8_t *k, struct idem_rec *);
static int	idem_put(struct store *, DB_TXN *, const uint8_t *k, const struct idem_rec *);

static int
idem_key(struct store *s, const char *app, const char *key, uint8_t out[KEY_MAX])
{
	size_t alen = strnlen(app ? app : "", STORE_APP_MAX + 1);
	size_t klen = strnlen(key, STORE_IDEM_KEY_MAX + 1);
	uint8_t z = 0;

	if (alen > STORE_APP_MAX || klen == 0 || klen > STORE_IDEM_KEY_MAX)
		return -1;
	out[0] = REC_IDEM;
	/* app 0 key: HMAC over the two parts joined */
	{
		uint8_t buf[STORE_APP_MAX + 1 + STORE_IDEM_KEY_MAX];

		memcpy(buf, app ? app : "", alen);
		buf[alen] = z;
		memcpy(buf + alen + 1, key, klen);
		store_mac(&s->key, buf, alen + 1 + klen, NULL, 0, out + 1);
	}
	return 0;
}

static int
idem_get(struct store *s, DB_TXN *txn, const uint8_t *key, struct idem_rec *e)
{
	uint8_t buf[IDEM_REC_MAX];
	uint32_t got;
	int r;

	memset(e, 0, sizeof(*e));
	if ((r = store_rec_get(s, txn, key, buf, sizeof(buf), &got, 1)) != 0)
		return r;
	if (got < IDEM_REC_HDR)
		return DB_NOTFOUND;
	e->purge = get_be64(buf);
	e->created = get_be64(buf + 8);
	e->run = get_be64(buf + 16);
	e->state = buf[24];
	memcpy(e->hash, buf + 25, 32);
	e->anslen = (size_t)buf[57] << 8 | buf[58];
	if (e->anslen > STORE_IDEM_ANSWER_MAX || IDEM_REC_HDR + e->anslen != got)
		return DB_NOTFOUND;
	memcpy(e->answer, buf + IDEM_REC_HDR, e->anslen);
	e->answer[e->anslen] = '\0';
	return 0;
}

static int
idem_put(struct store *s, DB_TXN *txn, const uint8_t *key, const struct idem_rec *e)
{
	uint8_t buf[IDEM_REC_MAX];

	put_be64(buf, e->purge);
	put_be64(buf + 8, e->created);
	put_be64(buf + 16, e->run);
	buf[24] = e->state;
	memcpy(buf + 25, e->hash, 32);
	buf[57] = (uint8_t)(e->anslen >> 8);
	buf[58] = (uint8_t)e->anslen;
	memcpy(buf + IDEM_REC_HDR, e->answer, e->anslen);
	return store_rec_put(s, txn, key, buf, IDEM_REC_HDR + e->anslen);
}

/* mode 0 begin, 1 finish, 2 abandon, 3 prepare, 4 unclaim; one transaction,
 * retried. */
static int
idem_txn(struct store *s, const uint8_t *key, int mode, const uint8_t *hash,
    uint64_t now, const char *answer, char *out, size_t outlen, enum idem_state *st)
{
	struct idem_rec e;
	DB_TXN *txn;
	uint64_t owner = repl_owner(s);
	int attempt, r = 0, have;

	for (attempt = 0; attempt < STORE_RETRIES; attempt++) {
		if ((r = store_txn_begin(s, &txn)) != 0)
			break;
		r = idem_get(s, txn, key, &e);
		have = r == 0 && e.created + STORE_IDEM_TTL > now;
		if (r == DB_NOTFOUND)
			r = 0;
		if (r != 0)
			goto retry;
		*st = IDEM_NEW;
		if (mode == 0) {
			if (have && CRYPTO_memcmp(e.hash, hash, 32) != 0)
				*st = IDEM_MISMATCH;
			else if (have && e.state == IDEM_ANSWERED) {
				*st = IDEM_DONE;
				snprintf(out, outlen, "%s", e.answer);
			} else if (have && e.run == owner)
				*st = IDEM_BUSY;
			else if (have && e.run != 0 && s->repl != NULL &&
			    now < e.created + STORE_IDEM_LEASE) {
				/* another site's, in progress (or not yet known gone) */
				*st = IDEM_ELSEWHERE;
				snprintf(out, outlen, "%d",
				    (int)(e.created + STORE_IDEM_LEASE - now));
			} else if (have && e.state == IDEM_PREPARED) {
				/* a crashed run's: this run's now, answer kept */
				*st = IDEM_UNSURE;
				snprintf(out, outlen, "%s", e.answer);
				e.run = owner;
				e.created = now;	/* its lease */
				r = idem_put(s, txn, key, &e);
			} else {
				memset(&e, 0, sizeof(e));
				e.created = now;
				e.purge = now + STORE_IDEM_TTL;
				e.run = owner;
				e.state = IDEM_PENDING;
				memcpy(e.hash, hash, 32);
				r = idem_put(s, txn, key, &e);
			}
		} else if ((mode == 1 && have) || (mode == 3 && have && e.run == owner &&
		    e.state != IDEM_ANSWERED)) {
			e.state = mode == 1 ? IDEM_ANSWERED : IDEM_PREPARED;
			e.anslen = strnlen(answer, STORE_IDEM_ANSWER_MAX);
			memcpy(e.answer, answer, e.anslen);
			r = idem_put(s, txn, key, &e);
		} else if (mode == 3)
			*st = IDEM_FAIL;	/* not this run's reservation */
		else if (mode == 4 && have && e.state == IDEM_PREPARED && e.run == owner) {
			e.run = 0;	/* no run's: the next begin claims it again */
			r = idem_put(s, txn, key, &e);
		}
		else if (mode == 2 && have && e.state != IDEM_ANSWERED && e.run == owner)
			r = store_rec_del(s, txn, key);
		if (r == 0) {
			/* the reservation need not survive an OS crash; the
			 * answer, prepared or given, must */
			r = store_commit(s, txn, mode == 1 || mode == 3);
			if (r == 0)
				return 0;
			break;
		}
retry:
		txn->abort(txn);
		if (!store_retry(s, r))
			break;
		store_backoff(attempt);
	}
	store_logf(s, LOG_ERR, "event=store.idempotency error=\"%s\"", db_strerror(r));
	return -1;
}

enum idem_state
store_idem_begin(struct store *s, const char *app, const char *key, const uint8_t hash[32],
    time_t now, char *answer, size_t len)
{
	uint8_t k[KEY_MAX];
	enum idem_state st = IDEM_FAIL;
	struct otp_request q = { .app = app, .now = now };
	int64_t fw;

	if ((fw = repl_write(s, RO_IDEM_BEGIN, &q, key, NULL, hash, NULL, NULL, answer,
	    len, IDEM_FAIL)) >= 0)
		return (enum idem_state)fw;
	if (idem_key(s, app, key, k) == -1)
		return IDEM_FAIL;
	if (idem_txn(s, k, 0, hash, (uint64_t)now, NULL, answer, len, &st) == -1)
		return IDEM_FAIL;
	return st;
}

enum s_status
store_idem_finish(struct store *s, const char *app, const char *key, time_t now,
    const char *answer)
{
	uint8_t k[KEY_MAX];
	enum idem_state st;
	struct otp_request q = { .app = app, .now = now };
	int64_t fw;

	if ((fw = repl_write(s, RO_IDEM_FINISH, &q, key, answer, NULL, NULL, NULL, NULL,
	    0, S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;
	if (idem_key(s, app, key, k) == -1 || strlen(answer) > STORE_IDEM_ANSWER_MAX)
		return S_BADINPUT;
	return idem_txn(s, k, 1, NULL, (uint64_t)now, answer, NULL, 0, &st) == -1 ?
	    S_TEMPFAIL : S_OK;
}

enum s_status
store_idem_prepare(struct store *s, const char *app, const char *key, time_t now,
    const char *answer)
{
	uint8_t k[KEY_MAX];
	enum idem_state st = IDEM_NEW;
	struct otp_request q = { .app = app, .now = now };
	int64_t fw;

	if ((fw = repl_write(s, RO_IDEM_PREPARE, &q, key, answer, NULL, NULL, NULL, NULL,
	    0, S_TEMPFAIL)) >= 0)
		return (enum s_status)fw;
	if (idem_key(s, app, key, k) == -1 || strlen(answer) > STORE_IDEM_ANSWER_MAX)
		return S_BADINPUT;
	if (idem_txn(s, k, 3, NULL, (uint64_t)now, answer, NULL, 0, &st) == -1)
		return S_TEMPFAIL;
	return st == IDEM_FAIL ? S_NOTFOUND : S_OK;
}

/* abandon (mode 2) and unclaim (mode 4): on the master in a cluster. */
static void
idem_drop(struct store *s, const char *app, const char *key, enum repl_op op, int mode)
{
	uint8_t k[KEY_MAX];
	enum idem_state st;
	struct otp_request q = { .app = app };

	if (repl_write(s, op, &q, key, NULL, NULL, NULL, NULL, NULL, 0, S_TEMPFAIL) >= 0)
		return;
	if (idem_key(s, app, key, k) == 0)
		(void)idem_txn(s, k, mode, NULL, 0, NULL, NULL, 0, &st);
}

void
store_idem_unclaim(struct store *s, const char *app, const char *key)
{
	idem_drop(s, app, key, RO_IDEM_UNCLAIM, 4);
}

void
store_idem_abandon(struct store *s, const char *app, const char *key)
{
	idem_drop(s, app, key, RO_IDEM_ABANDON, 2);
}
