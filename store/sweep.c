/*
 * sweep.c - data minimisation: every record starts with its purge time,
 * indexed by a secondary database (8-byte big-endian time, sorted
 * duplicates); the sweep walks that index from the start up to now and
 * deletes the dead records, a short transaction per batch.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "store/store_int.h"

#define SWEEP_BATCH	200
#define EXP_SHARDS	64
#define EXP_KEY_LEN	9

static int	sweep_batch(struct store *, int shard, uint64_t now, size_t *n, int *more);

/*
 * Index key: shard (1 byte, from the record's random key) | purge time.
 * Purge times of new records are all "about now": without shards every
 * issue and verify would lock the same last page of the index.
 */
int
store_exp_callback(DB *sec, const DBT *key, const DBT *val, DBT *out)
{
	uint8_t *k;

	if (val->size < 8 || key->size < 2)
		return DB_DONOTINDEX;
	/* Records kept for good (a capped lockout) stay out of the index. */
	if (get_be64(val->data) == STORE_FOREVER)
		return DB_DONOTINDEX;
	if ((k = malloc(EXP_KEY_LEN)) == NULL)
		return ENOMEM;
	k[0] = ((const uint8_t *)key->data)[key->size - 1] % EXP_SHARDS;
	memcpy(k + 1, val->data, 8);
	memset(out, 0, sizeof(*out));
	out->data = k;
	out->size = EXP_KEY_LEN;
	out->flags = DB_DBT_APPMALLOC;
	return 0;
}

static int
sweep_batch(struct store *s, int shard, uint64_t now, size_t *n, int *more)
{
	uint8_t kbuf[EXP_KEY_LEN], pkbuf[KEY_MAX], vbuf[REC_MAX];
	DB_TXN *txn = NULL;
	DBC *c = NULL;
	DBT k, pk, v;
	size_t done = 0;
	int r;

	*more = 0;
	if ((r = store_txn_begin(s, &txn)) != 0)
		return r;
	if ((r = s->exp->cursor(s->exp, txn, &c, 0)) != 0)
		goto out;
	memset(&k, 0, sizeof(k));
	memset(&pk, 0, sizeof(pk));
	memset(&v, 0, sizeof(v));
	kbuf[0] = (uint8_t)shard;
	put_be64(kbuf + 1, 0);
	k.data = kbuf;
	k.size = EXP_KEY_LEN;
	k.ulen = sizeof(kbuf);
	k.flags = DB_DBT_USERMEM;
	pk.data = pkbuf;
	pk.ulen = sizeof(pkbuf);
	pk.flags = DB_DBT_USERMEM;
	v.data = vbuf;
	v.ulen = sizeof(vbuf);
	v.flags = DB_DBT_USERMEM;
	r = c->pget(c, &k, &pk, &v, DB_SET_RANGE | DB_RMW);
	while (r == 0) {
		if (k.size != EXP_KEY_LEN || kbuf[0] != shard || get_be64(kbuf + 1) > now)
			break;
		if (done == SWEEP_BATCH) {
			*more = 1;
			break;
		}
		/* Deleting through the secondary removes the primary too. */
		if ((r = c->del(c, 0)) != 0)
			goto out;
		done++;
		r = c->pget(c, &k, &pk, &v, DB_NEXT | DB_RMW);
	}
	if (r == DB_NOTFOUND)
		r = 0;
out:
	if (c != NULL)
		c->close(c);
	if (r == 0) {
		r = txn->commit(txn, DB_TXN_WRITE_NOSYNC);
		if (r == 0)
			*n += done;
	} else
		txn->abort(txn);
	return r;
}

enum s_status
store_sweep(struct store *s, time_t now, size_t *count)
{
	int attempt = 0, more = 1, shard = 0, r;
	size_t n = 0;

	/* the master sweeps for every site: its deletes replicate */
	if (!repl_is_master(s)) {
		if (count)
			*count = 0;
		return S_OK;
	}
	while (shard < EXP_SHARDS) {
		r = sweep_batch(s, shard, (uint64_t)now, &n, &more);
		if (r != 0 && store_retry(s, r) && ++attempt < STORE_RETRIES) {
			store_backoff(attempt);
			more = 1;
			continue;
		}
		if (r != 0) {
			store_logf(s, LOG_ERR, "event=store.sweep error=\"%s\"",
			    db_strerror(r));
			if (count)
				*count = n;
			return S_TEMPFAIL;
		}
		if (!more)
			shard++;
	}
	for (attempt = 0; (r = rl_client_sweep(s, (uint64_t)now, &n)) != 0 &&
	    store_retry(s, r) && attempt < STORE_RETRIES; attempt++)
		store_backoff(attempt);
	if (count)
		*count = n;
	return r == 0 ? S_OK : S_TEMPFAIL;
}
