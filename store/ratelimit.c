/*
 * ratelimit.c - the named issue limits: fixed windows anchored at their
 * first event (exact retry_after), per address (kept in the address record
 * by otp.c), per client uid and the global per-second cap.
 *
 * One app uid issues for every address, so its counter is the one hot key:
 * kept in the transaction it would hold its lock through every log
 * flush and serialise all issues (about 1,000/s here).  It lives in its own
 * database of the same environment instead, taken in a short transaction
 * before the issue and given back if the issue does not happen; it
 * survives a crash of the daemon (not of the OS: no sync).  The global
 * per-second cap lives in memory: such a window means nothing across a
 * restart.
 */
#include <string.h>
#include <syslog.h>

#include "store/store_int.h"

static int	rl_client_rw(struct store *, DB_TXN *, uint32_t, uint64_t, int, int *);
static int	rl_client_txn(struct store *, uint32_t, uint64_t, int, int *);

int
rl_window_check(uint64_t start, uint32_t count, uint32_t max, uint64_t window,
    uint64_t now)
{
	if (max == 0 || now >= start + window || now < start)
		return 0;
	if (count < max)
		return 0;
	return (int)(start + window - now);
}

void
rl_window_take(uint64_t *start, uint32_t *count, uint64_t window, uint64_t now)
{
	if (now >= *start + window || now < *start) {
		*start = now;
		*count = 0;
	}
	(*count)++;
}

void
rl_window_give(uint64_t start, uint32_t *count, uint64_t window, uint64_t now)
{
	if (now >= start && now < start + window && *count > 0)
		(*count)--;
}

void
client_rec_decode(const void *v, size_t len, struct client_rec *c)
{
	const uint8_t *p = v;

	memset(c, 0, sizeof(*c));
	if (len < CLIENT_REC_SZ)
		return;
	c->purge = get_be64(p);
	c->win_start = get_be64(p + 8);
	c->count = (uint32_t)p[16] << 24 | (uint32_t)p[17] << 16 |
	    (uint32_t)p[18] << 8 | p[19];
}

size_t
client_rec_encode(const struct client_rec *c, uint8_t *p)
{
	put_be64(p, c->purge);
	put_be64(p + 8, c->win_start);
	p[16] = c->count >> 24;
	p[17] = c->count >> 16;
	p[18] = c->count >> 8;
	p[19] = c->count;
	return CLIENT_REC_SZ;
}

/* mode: 1 check and take, 2 give back. */
static int
rl_client_rw(struct store *s, DB_TXN *txn, uint32_t uid, uint64_t now, int mode,
    int *retry_after)
{
	uint8_t kbuf[4], vbuf[CLIENT_REC_SZ];
	struct client_rec c;
	DBT k, v;
	int r;

	*retry_after = 0;
	kbuf[0] = uid >> 24;
	kbuf[1] = uid >> 16;
	kbuf[2] = uid >> 8;
	kbuf[3] = uid;
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = kbuf;
	k.size = sizeof(kbuf);
	v.data = vbuf;
	v.ulen = sizeof(vbuf);
	v.flags = DB_DBT_USERMEM;
	r = s->rate->get(s->rate, txn, &k, &v, DB_RMW);
	if (r == DB_NOTFOUND)
		memset(&c, 0, sizeof(c));
	else if (r != 0)
		return r;
	else
		client_rec_decode(vbuf, v.size, &c);
	if (mode == 2) {
		rl_window_give(c.win_start, &c.count, 60, now);
	} else {
		*retry_after = rl_window_check(c.win_start, c.count,
		    (uint32_t)s->p.max_per_client_minute, 60, now);
		if (*retry_after)
			return 0;
		rl_window_take(&c.win_start, &c.count, 60, now);
	}
	c.purge = c.win_start + 60;
	v.data = vbuf;
	v.size = (uint32_t)client_rec_encode(&c, vbuf);
	v.flags = 0;
	return s->rate->put(s->rate, txn, &k, &v, 0);
}

static int
rl_client_txn(struct store *s, uint32_t uid, uint64_t now, int mode, int *retry_after)
{
	DB_TXN *txn;
	int attempt, r = 0;

	*retry_after = 0;
	if (s->p.max_per_client_minute <= 0)
		return 0;
	for (attempt = 0; attempt < STORE_RETRIES; attempt++) {
		if ((r = store_txn_begin(s, &txn)) != 0)
			break;
		r = rl_client_rw(s, txn, uid, now, mode, retry_after);
		if (r == 0)
			return store_commit_lazy(s, txn);
		txn->abort(txn);
		if (!store_retry(s, r))
			break;
		store_backoff(attempt);
	}
	store_logf(s, LOG_ERR, "event=store.client_limit error=\"%s\"", db_strerror(r));
	return r;
}

int
rl_client_take(struct store *s, uint32_t uid, uint64_t now, int *retry_after)
{
	return rl_client_txn(s, uid, now, 1, retry_after);
}

void
rl_client_give(struct store *s, uint32_t uid, uint64_t now)
{
	int unused;

	(void)rl_client_txn(s, uid, now, 2, &unused);
}

/* Client windows are few (one per app uid): a walk of them all is cheap. */
int
rl_client_sweep(struct store *s, uint64_t now, size_t *n)
{
	uint8_t kbuf[8], vbuf[CLIENT_REC_SZ];
	struct client_rec c;
	DB_TXN *txn;
	DBC *cur = NULL;
	DBT k, v;
	int r;

	if ((r = store_txn_begin(s, &txn)) != 0)
		return r;
	if ((r = s->rate->cursor(s->rate, txn, &cur, 0)) != 0)
		goto out;
	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = kbuf;
	k.ulen = sizeof(kbuf);
	k.flags = DB_DBT_USERMEM;
	v.data = vbuf;
	v.ulen = sizeof(vbuf);
	v.flags = DB_DBT_USERMEM;
	while ((r = cur->get(cur, &k, &v, DB_NEXT | DB_RMW)) == 0) {
		client_rec_decode(vbuf, v.size, &c);
		if (c.purge <= now) {
			if ((r = cur->del(cur, 0)) != 0)
				goto out;
			(*n)++;
		}
	}
	if (r == DB_NOTFOUND)
		r = 0;
out:
	if (cur != NULL)
		cur->close(cur);
	if (r == 0)
		return store_commit_lazy(s, txn);
	txn->abort(txn);
	return r;
}

int
rl_global_take(struct store *s, uint64_t now, int *retry_after)
{
	*retry_after = 0;
	if (s->p.max_global_per_second <= 0)
		return 0;
	pthread_mutex_lock(&s->glock);
	if (s->g_sec != now) {
		s->g_sec = now;
		s->g_count = 0;
	}
	if (s->g_count >= (uint32_t)s->p.max_global_per_second)
		*retry_after = 1;
	else
		s->g_count++;
	pthread_mutex_unlock(&s->glock);
	return *retry_after ? -1 : 0;
}

void
rl_global_give(struct store *s, uint64_t now)
{
	if (s->p.max_global_per_second <= 0)
		return;
	pthread_mutex_lock(&s->glock);
	if (s->g_sec == now && s->g_count > 0)
		s->g_count--;
	pthread_mutex_unlock(&s->glock);
}
