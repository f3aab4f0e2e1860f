/*
 * repl.c - the store on several hosts: Berkeley DB's Replication Manager.
 * Site j's repmgr listens on 127.0.0.1:base+j (the agent's TLS relay carries
 * the streams between hosts); a write on a replica is sent to the master over
 * a repmgr channel and runs there, answered once a quorum has its commit.
 * Entry points: repl_env_config (before the environment opens),
 * repl_env_start (after: joins and waits for a master), repl_forward_needed
 * and repl_fwd (the public write calls of otp.c and idem.c), repl_commit_*
 * (quorum acks), store_cluster_status.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "store/store_int.h"

#define REPL_MSG_THREADS	8
#define REPL_FWD_TIMEOUT	5000000		/* µs a forwarded write may take */
#define REPL_LSN_TIMEOUT	1000000		/* µs for a site's LSN (status) */
#define REPL_RETRY_AFTER	2		/* s a client waits without a master */
#define REPL_VERSION		1

struct repl {
	struct store_cluster c;
	pthread_mutex_t	 lock;
	pthread_cond_t	 cond;
	int		 ready;		/* master, or a client done starting */
	_Atomic int	 is_master;
	_Atomic int	 master_eid;	/* DB_EID_INVALID if none known */
	time_t		 last_election;	/* when this site last saw a new master */
	uint64_t	 elections;	/* new masters seen */
	_Atomic uint64_t perm_failed;	/* commits without a quorum */
	_Atomic uint64_t forwarded;	/* writes sent to the master */
	_Atomic uint64_t served;	/* writes run for a replica */
	_Atomic uint64_t kicks;		/* elections the watch started */
	pthread_t	 watch;		/* repl_watch_run */
	int		 watching;
	_Atomic int	 stop;
};

static _Thread_local int repl_in_dispatch;	/* no forwarding from a forwarded write */
static _Thread_local int repl_perm_failed;	/* this thread's commit lacked a quorum */
static _Thread_local uint64_t repl_fwd_owner;	/* the asking site's run (dispatch) */

static void	repl_event(DB_ENV *, u_int32_t, void *);
static void	repl_dispatch(DB_ENV *, DB_CHANNEL *, DBT *, u_int32_t, u_int32_t);
static int	repl_connected(struct store *, int *total);

/* ---- a tiny encoding: strings (u16 length, 0xffff = NULL), integers BE ---- */

struct wbuf {
	uint8_t		 b[REPL_MSG_MAX];
	size_t		 n;
	int		 bad;
};


static void
w_u64(struct wbuf *w, uint64_t v)
{
	if (w->n + 8 > sizeof(w->b)) {
		w->bad = 1;
		return;
	}
	put_be64(w->b + w->n, v);
	w->n += 8;
}

/* Copies what w holds to out (0 if it overflowed) and wipes and frees w. */
static size_t
w_finish(struct wbuf *w, uint8_t out[REPL_MSG_MAX])
{
	size_t n = w->bad ? 0 : w->n;

	if (n > 0)
		memcpy(out, w->b, n);
	OPENSSL_cleanse(w, sizeof(*w));
	free(w);
	return n;
}

static void
w_str(struct wbuf *w, const char *s)
{
	size_t len = s != NULL ? strlen(s) : 0;

	if (len >= 0xffff || w->n + 2 + len > sizeof(w->b)) {
		w->bad = 1;
		return;
	}
	if (s == NULL)
		len = 0xffff;
	w->b[w->n++] = (uint8_t)(len >> 8);
	w->b[w->n++] = (uint8_t)len;
	if (s != NULL) {
		memcpy(w->b + w->n, s, len);
		w->n += len;
	}
}

static uint64_t
r_u64(struct repl_rbuf *r)
{
	uint64_t v;

	if (r->o + 8 > r->n) {
		r->bad = 1;
		return 0;
	}
	v = get_be64(r->b + r->o);
	r->o += 8;
	return v;
}

/* Decoded strings live in r until it goes: at most REPL_MSG_STRS a message. */
static const char *
r_str(struct repl_rbuf *r)
{
	size_t len;
	char *out;

	if (r->o + 2 > r->n || r->nstr >= REPL_MSG_STRS) {
		r->bad = 1;
		return NULL;
	}
	len = (size_t)r->b[r->o] << 8 | r->b[r->o + 1];
	r->o += 2;
	if (len == 0xffff)
		return NULL;
	if (len > STORE_IDEM_ANSWER_MAX || r->o + len > r->n ||
	    memchr(r->b + r->o, 0, len) != NULL) {
		r->bad = 1;
		return NULL;
	}
	out = r->str[r->nstr++];
	memcpy(out, r->b + r->o, len);
	out[len] = '\0';
	r->o += len;
	return out;
}

static void
w_request(struct wbuf *w, const struct otp_request *q)
{
	w_str(w, q->app);
	w_str(w, q->client_id);
	w_str(w, q->addr);
	w_str(w, q->limit_addr);
	w_str(w, q->purpose);
	w_str(w, q->context);
	w_u64(w, (uint64_t)(int64_t)q->ttl);
	w_u64(w, q->client_uid);
	w_u64(w, (uint64_t)(int64_t)q->now);
}

static void
r_request(struct repl_rbuf *r, struct otp_request *q)
{
	int64_t ttl;
	uint64_t uid;

	memset(q, 0, sizeof(*q));
	q->app = r_str(r);
	q->client_id = r_str(r);
	q->addr = r_str(r);
	q->limit_addr = r_str(r);
	q->purpose = r_str(r);
	q->context = r_str(r);
	ttl = (int64_t)r_u64(r);
	uid = r_u64(r);
	q->now = (time_t)(int64_t)r_u64(r);
	/* one encoding a request: out-of-range numbers are refused */
	if (ttl < INT_MIN || ttl > INT_MAX || uid > UINT32_MAX)
		r->bad = 1;
	q->ttl = (int)ttl;
	q->client_uid = (uint32_t)uid;
}

/* The limit names the store sets are static strings: map one back. */
static const char *
repl_limit_name(const char *s)
{
	static const char *const names[] = { "address_hourly", "client_lockout",
	    "client_minute", "code_attempts", "context_lockout", "global_rate",
	    "resend_cooldown", "cluster" };
	size_t i;

	if (s == NULL)
		return NULL;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(s, names[i]) == 0)
			return names[i];
	return "unknown";
}

static void
w_result(struct wbuf *w, uint64_t st, const struct otp_result *res, uint64_t count,
    const char *extra)
{
	w_u64(w, st);
	w_u64(w, count);
	w_str(w, extra);
	if (res == NULL)
		return;
	w_str(w, res->code);
	w_str(w, res->issue_id);
	w_u64(w, (uint64_t)(int64_t)res->expires_at);
	w_u64(w, (uint64_t)(int64_t)res->ttl);
	w_u64(w, (uint64_t)(int64_t)res->resend_after);
	w_str(w, res->limit);
	w_u64(w, (uint64_t)(int64_t)res->retry_after);
	w_u64(w, (uint64_t)(int64_t)res->attempts_left);
	w_str(w, res->queue_id);
}

static void
r_result(struct repl_rbuf *r, struct otp_result *res)
{
	const char *s;

	if ((s = r_str(r)) != NULL)
		snprintf(res->code, sizeof(res->code), "%s", s);
	if ((s = r_str(r)) != NULL)
		snprintf(res->issue_id, sizeof(res->issue_id), "%s", s);
	res->expires_at = (time_t)(int64_t)r_u64(r);
	res->ttl = (int)(int64_t)r_u64(r);
	res->resend_after = (int)(int64_t)r_u64(r);
	res->limit = repl_limit_name(r_str(r));
	res->retry_after = (int)(int64_t)r_u64(r);
	res->attempts_left = (int)(int64_t)r_u64(r);
	if ((s = r_str(r)) != NULL)
		snprintf(res->queue_id, sizeof(res->queue_id), "%s", s);
}

/* ---- the channel's messages (tests/unit/test_repl_wire.c) ---- */

static int
repl_op_known(int op)
{
	return op != 0 && strchr("imcvrubfapnlsd", op) != NULL;
}

size_t
repl_req_encode(uint8_t out[REPL_MSG_MAX], int op, const struct otp_request *q,
    const char *a, const char *b, const char *hx, uint64_t owner)
{
	struct otp_request empty;
	struct wbuf *w;

	if (!repl_op_known(op) || (w = calloc(1, sizeof(*w))) == NULL)
		return 0;
	memset(&empty, 0, sizeof(empty));
	w->b[w->n++] = REPL_VERSION;
	w->b[w->n++] = (uint8_t)op;
	if (op != RO_LSN) {
		w_request(w, q != NULL ? q : &empty);
		w_str(w, a);
		w_str(w, b);
		w_str(w, hx);
		w_u64(w, owner);
	}
	return w_finish(w, out);
}

int
repl_req_decode(const uint8_t *m, size_t n, struct repl_req *rq)
{
	struct repl_rbuf *r = &rq->r;

	memset(rq, 0, sizeof(*rq));
	r->b = m;
	r->n = n;
	if (n < 2 || n > REPL_MSG_MAX || m[0] != REPL_VERSION || !repl_op_known(m[1]))
		return -1;
	rq->op = m[1];
	r->o = 2;
	if (rq->op == RO_LSN)
		return n == 2 ? 0 : -1;
	r_request(r, &rq->q);
	rq->a = r_str(r);
	rq->b = r_str(r);
	rq->hx = r_str(r);
	/* the asking site's run; absent (an older site): 0 */
	rq->owner = r->o < r->n ? r_u64(r) : 0;
	return r->bad || r->o != r->n ? -1 : 0;
}

size_t
repl_ans_encode(uint8_t out[REPL_MSG_MAX], uint64_t st, const struct otp_result *res,
    uint64_t count, const char *extra)
{
	struct wbuf *w;

	if ((w = calloc(1, sizeof(*w))) == NULL)
		return 0;
	w_result(w, st, res, count, extra);
	return w_finish(w, out);
}

int
repl_ans_decode(const uint8_t *m, size_t n, uint64_t *st, uint64_t *count, char *extra,
    size_t extralen, struct otp_result *res)
{
	struct repl_rbuf *r;
	const char *x;
	int bad;

	if (n > REPL_MSG_MAX || (r = calloc(1, sizeof(*r))) == NULL)
		return -1;
	r->b = m;
	r->n = n;
	*st = r_u64(r);
	*count = r_u64(r);
	x = r_str(r);
	if (extra != NULL && extralen > 0)
		snprintf(extra, extralen, "%s", x != NULL ? x : "");
	if (res != NULL && !r->bad)
		r_result(r, res);
	bad = r->bad || (res != NULL && r->o != r->n);
	OPENSSL_cleanse(r, sizeof(*r));
	free(r);
	return bad ? -1 : 0;
}

/* ---- events ---- */

static void
repl_event(DB_ENV *env, u_int32_t event, void *info)
{
	struct store *s = env->app_private;
	struct repl *rp = s->repl;

	switch (event) {
	case DB_EVENT_REP_MASTER:
		atomic_store(&rp->is_master, 1);
		pthread_mutex_lock(&rp->lock);
		rp->ready = 1;
		rp->last_election = time(NULL);
		rp->elections++;
		pthread_cond_broadcast(&rp->cond);
		pthread_mutex_unlock(&rp->lock);
		store_logf(s, LOG_NOTICE, "event=cluster.master site=%d", rp->c.self);
		break;
	case DB_EVENT_REP_CLIENT:
		atomic_store(&rp->is_master, 0);
		break;
	case DB_EVENT_REP_NEWMASTER:
		atomic_store(&rp->master_eid, *(int *)info);
		pthread_mutex_lock(&rp->lock);
		rp->last_election = time(NULL);
		rp->elections++;
		pthread_mutex_unlock(&rp->lock);
		store_logf(s, LOG_NOTICE, "event=cluster.new_master eid=%d", *(int *)info);
		break;
	case DB_EVENT_REP_STARTUPDONE:
		pthread_mutex_lock(&rp->lock);
		rp->ready = 1;
		pthread_cond_broadcast(&rp->cond);
		pthread_mutex_unlock(&rp->lock);
		store_logf(s, LOG_NOTICE, "event=cluster.caught_up site=%d", rp->c.self);
		break;
	case DB_EVENT_REP_MASTER_FAILURE:
		atomic_store(&rp->master_eid, DB_EID_INVALID);
		store_logf(s, LOG_WARNING, "event=cluster.master_failure");
		break;
	case DB_EVENT_REP_CONNECT_ESTD:
		store_logf(s, LOG_DEBUG, "event=cluster.connected eid=%d", *(int *)info);
		break;
	case DB_EVENT_REP_CONNECT_BROKEN:
		store_logf(s, LOG_DEBUG, "event=cluster.disconnected eid=%d",
		    info != NULL ? *(int *)info : -1);
		break;
	case DB_EVENT_REP_PERM_FAILED:
		/* fired in the committing thread: a master cut off alone
		 * answers its writes "unavailable" (test_cluster.py) */
		repl_perm_failed = 1;
		atomic_fetch_add(&rp->perm_failed, 1);
		break;
	case DB_EVENT_REP_ELECTION_FAILED:
		store_logf(s, LOG_WARNING, "event=cluster.election_failed");
		break;
	case DB_EVENT_REP_DUPMASTER:
		atomic_store(&rp->is_master, 0);
		store_logf(s, LOG_WARNING, "event=cluster.dupmaster");
		break;
	case DB_EVENT_PANIC:
		store_logf(s, LOG_CRIT, "event=cluster.panic");
		break;
	default:
		break;
	}
}

/* Remote sites repmgr has a connection to: site eid, or any (-1). */
static int
repl_sites_up(struct store *s, int eid)
{
	DB_REPMGR_SITE *list = NULL;
	u_int n = 0, i;
	int up = 0;

	if (s->env->repmgr_site_list(s->env, &n, &list) != 0)
		return 0;
	for (i = 0; i < n; i++)
		if ((eid == -1 || list[i].eid == eid) &&
		    list[i].status == DB_REPMGR_CONNECTED)
			up++;
	free(list);
	return up;
}

/*
 * The master's eid: the one the last NEWMASTER named, else repmgr's own.
 * After a MASTER_FAILURE repmgr may find the same master again (same
 * generation) without a NEWMASTER event, so the cache alone could say
 * "none" for good (seen after a partition healed: 1 run in 3).
 */
static int
repl_master_eid(struct store *s)
{
	struct repl *rp = s->repl;
	DB_REP_STAT *rs;
	int eid = atomic_load(&rp->master_eid);

	if (eid != DB_EID_INVALID || atomic_load(&rp->is_master))
		return eid;
	if (s->env->rep_stat(s->env, &rs, 0) != 0)
		return DB_EID_INVALID;
	eid = rs->st_master;
	free(rs);
	/* repmgr keeps naming a master it lost until an election ends */
	if (eid != DB_EID_INVALID && repl_sites_up(s, eid) == 0)
		eid = DB_EID_INVALID;
	if (eid != DB_EID_INVALID) {
		atomic_store(&rp->master_eid, eid);
		store_logf(s, LOG_NOTICE, "event=cluster.master_known eid=%d", eid);
	}
	return eid;
}

/* ---- set-up ---- */

int
repl_env_config(struct store *s, uint32_t *flags, char *err, size_t errlen)
{
	const struct store_cluster *c = s->p.cluster;
	DB_ENV *env = s->env;
	struct repl *rp;
	DB_SITE *site;
	int r, j;

	if (c->nsites < 1 || c->nsites > STORE_CLUSTER_MAX || c->self < 0 ||
	    c->self >= c->nsites || c->base_port < 1 ||
	    c->base_port + c->nsites > 65535) {
		snprintf(err, errlen, "store: bad cluster parameters");
		return -1;
	}
	if ((rp = calloc(1, sizeof(*rp))) == NULL) {
		snprintf(err, errlen, "store: out of memory");
		return -1;
	}
	rp->c = *c;
	pthread_mutex_init(&rp->lock, NULL);
	pthread_cond_init(&rp->cond, NULL);
	atomic_store(&rp->master_eid, DB_EID_INVALID);
	s->repl = rp;
	*flags |= DB_INIT_REP;
	if ((r = env->set_event_notify(env, repl_event)) != 0 ||
	    (r = env->set_encrypt(env, c->env_password, DB_ENCRYPT_AES)) != 0)
		goto dberr;
	for (j = 0; j < c->nsites; j++) {
		if ((r = env->repmgr_site(env, "127.0.0.1", (u_int)(c->base_port + j),
		    &site, 0)) != 0)
			goto dberr;
		if (j == c->self) {
			site->set_config(site, DB_LOCAL_SITE, 1);
			/* the first site of the list starts the group */
			if (j == 0)
				site->set_config(site, DB_GROUP_CREATOR, 1);
		} else
			site->set_config(site, DB_BOOTSTRAP_HELPER, 1);
		site->close(site);
	}
	if ((r = env->rep_set_priority(env, (u_int32_t)c->priority)) != 0 ||
	    (r = env->repmgr_set_ack_policy(env, DB_REPMGR_ACKS_QUORUM)) != 0 ||
	    (r = env->repmgr_msg_dispatch(env, repl_dispatch, 0)) != 0)
		goto dberr;
	/* a write during a site's sync answers "unavailable", not a 5 s stall */
	env->rep_set_config(env, DB_REP_CONF_NOWAIT, 1);
	/* a master that hangs with its connections open is noticed too */
	env->rep_set_timeout(env, DB_REP_HEARTBEAT_SEND, 1000000);
	env->rep_set_timeout(env, DB_REP_HEARTBEAT_MONITOR, 3000000);
	env->rep_set_timeout(env, DB_REP_CONNECTION_RETRY, 1000000);
	env->rep_set_timeout(env, DB_REP_ELECTION_RETRY, 2000000);
	env->rep_set_timeout(env, DB_REP_ACK_TIMEOUT, 2000000);
	/* a master's first checkpoint would wait 30 s (the open checks the files) */
	env->rep_set_timeout(env, DB_REP_CHECKPOINT_DELAY, 0);
	return 0;
dberr:
	snprintf(err, errlen, "store: cluster set-up: %s", db_strerror(r));
	return -1;
}

/*
 * The watch.  A replica cut off for a while and reconnected could stay
 * without a master for good: its last election failed ("1 of 2 votes")
 * while the links were down, repmgr starts no other one once it is
 * connected again, and the master's heartbeats do not name it to a site
 * that lost it (seen in 5 of 7 runs of test_cluster.py).  So: a client that
 * knows no master for REPL_KICK_AFTER s while it reaches a majority turns
 * repmgr's elections off and on, which holds one at once
 * (__repmgr_turn_on_elections); the master answers its vote with
 * NEWMASTER.
 */
#define REPL_KICK_AFTER	3

static void *
repl_watch_run(void *arg)
{
	struct store *s = arg;
	struct repl *rp = s->repl;
	int lost = 0, master, total, up;

	while (!atomic_load(&rp->stop)) {
		sleep(1);
		if (atomic_load(&rp->stop))
			break;
		if (atomic_load(&rp->is_master)) {
			lost = 0;
			continue;
		}
		master = repl_master_eid(s);
		up = repl_connected(s, &total);
		if (master != DB_EID_INVALID || up * 2 <= total) {
			lost = 0;
			continue;
		}
		if (++lost < REPL_KICK_AFTER)
			continue;
		lost = 0;
		atomic_fetch_add(&rp->kicks, 1);
		store_logf(s, LOG_WARNING, "event=cluster.kick detail=\"no master known "
		    "while %d of %d sites are reached: an election\"", up, total);
		s->env->rep_set_config(s->env, DB_REPMGR_CONF_ELECTIONS, 0);
		s->env->rep_set_config(s->env, DB_REPMGR_CONF_ELECTIONS, 1);
	}
	return NULL;
}

void
repl_stop(struct store *s)
{
	if (s->repl == NULL || !s->repl->watching)
		return;
	atomic_store(&s->repl->stop, 1);
	pthread_join(s->repl->watch, NULL);
	s->repl->watching = 0;
}

/* Joins the group; returns once this site is master or a caught-up client. */
int
repl_env_start(struct store *s, char *err, size_t errlen)
{
	struct repl *rp = s->repl;
	struct timespec dl;
	time_t end = time(NULL) + rp->c.start_timeout;
	int r;

	for (;;) {
		r = s->env->repmgr_start(s->env, REPL_MSG_THREADS, DB_REP_ELECTION);
		if (r == 0 || r == DB_REP_IGNORE)
			break;
		/* another site is joining: one at a time (LIBNOTES) */
		if (r != DB_REP_UNAVAIL || time(NULL) >= end) {
			snprintf(err, errlen, "store: cluster: repmgr_start: %s",
			    db_strerror(r));
			return -1;
		}
		sleep(1);
	}
	pthread_mutex_lock(&rp->lock);
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec = end > dl.tv_sec ? end : dl.tv_sec + 1;
	while (!rp->ready)
		if (pthread_cond_timedwait(&rp->cond, &rp->lock, &dl) == ETIMEDOUT)
			break;
	r = rp->ready;
	pthread_mutex_unlock(&rp->lock);
	if (!r) {
		snprintf(err, errlen, "store: cluster: no master within %d s (a majority "
		    "of the sites must be up, and the first start is the first site's)",
		    rp->c.start_timeout);
		return -1;
	}
	if (pthread_create(&rp->watch, NULL, repl_watch_run, s) == 0)
		rp->watching = 1;
	return 0;
}

int
repl_is_master(const struct store *s)
{
	return s->repl == NULL || atomic_load(&s->repl->is_master);
}

void
repl_close(struct store *s)
{
	if (s->repl == NULL)
		return;
	pthread_cond_destroy(&s->repl->cond);
	pthread_mutex_destroy(&s->repl->lock);
	OPENSSL_cleanse(&s->repl->c, sizeof(s->repl->c));
	free(s->repl);
	s->repl = NULL;
}

/* ---- quorum ---- */

/* Connected sites, this one included, and the group's size. */
static int
repl_connected(struct store *s, int *total)
{
	*total = s->repl->c.nsites;
	return 1 + repl_sites_up(s, -1);
}

/*
 * 0 if this master may write: a majority of the group is connected.  A
 * master cut off alone still sees its loopback relays connected, so the
 * commit's acks (repl_commit_failed) are the real test; this only spares
 * the write when the loss is already known.
 */
int
repl_write_allowed(struct store *s)
{
	int total, up;

	if (s->repl == NULL)
		return 0;
	if (!atomic_load(&s->repl->is_master))
		return -1;
	up = repl_connected(s, &total);
	return up * 2 > total ? 0 : -1;
}

void
repl_commit_begin(struct store *s)
{
	(void)s;
	repl_perm_failed = 0;
}

int
repl_commit_failed(struct store *s)
{
	return s->repl != NULL && repl_perm_failed;
}

/* ---- forwarding ---- */

int
repl_forward_needed(const struct store *s)
{
	return s->repl != NULL && !repl_in_dispatch && !atomic_load(&s->repl->is_master);
}

/* Sends the n-byte request to site eid; *resp (malloc'd) gets the answer. */
static int
repl_send(struct store *s, int eid, const uint8_t *m, size_t n, DBT *resp,
    uint32_t timeout)
{
	DB_CHANNEL *ch = NULL;
	DBT req;
	int rc;

	memset(resp, 0, sizeof(*resp));
	if (n == 0)
		return -1;
	if (eid == DB_EID_MASTER && repl_master_eid(s) == DB_EID_INVALID)
		return -1;
	if ((rc = s->env->repmgr_channel(s->env, eid, &ch, 0)) != 0) {
		store_logf(s, LOG_WARNING, "event=cluster.channel error=\"%s\"",
		    db_strerror(rc));
		return -1;
	}
	memset(&req, 0, sizeof(req));
	req.data = (void *)m;
	req.size = (u_int32_t)n;
	resp->flags = DB_DBT_MALLOC;
	rc = ch->send_request(ch, &req, 1, resp, timeout, 0);
	ch->close(ch, 0);
	if (rc != 0) {
		store_logf(s, LOG_WARNING, "event=cluster.forward error=\"%s\"",
		    db_strerror(rc));
		free(resp->data);
		resp->data = NULL;
		return -1;
	}
	return 0;
}

/*
 * Runs one write on the master.  a, b: the call's strings (code, issue id,
 * queue id, idempotency key, answer), hash: 32 bytes or NULL.  The status
 * comes back; with res, the result; *count and extra (idempotency answer,
 * extralen bytes) if asked.
 */
static uint64_t
repl_fwd(struct store *s, int op, const struct otp_request *q, const char *a,
    const char *b, const uint8_t *hash, struct otp_result *res, int *count,
    char *extra, size_t extralen, uint64_t fail)
{
	uint8_t m[REPL_MSG_MAX];
	char hx[65];
	uint64_t st, n;
	DBT resp;
	size_t len;
	int i, bad;

	if (res != NULL) {
		memset(res, 0, sizeof(*res));
		res->attempts_left = -1;
		res->retry_after = REPL_RETRY_AFTER;
	}
	if (hash != NULL)
		for (i = 0; i < 32; i++)
			snprintf(hx + 2 * i, 3, "%02x", hash[i]);
	/* owner: this site's run owns what it reserves (idem.c) */
	len = repl_req_encode(m, op, q, a, b, hash != NULL ? hx : NULL, s->run);
	atomic_fetch_add(&s->repl->forwarded, 1);
	i = repl_send(s, DB_EID_MASTER, m, len, &resp, REPL_FWD_TIMEOUT);
	OPENSSL_cleanse(m, sizeof(m));
	if (i == -1)
		return fail;
	bad = repl_ans_decode(resp.data, resp.size, &st, &n, extra, extralen, res);
	OPENSSL_cleanse(resp.data, resp.size);
	free(resp.data);
	if (bad) {
		store_logf(s, LOG_ERR, "event=cluster.forward error=\"bad answer\"");
		if (res != NULL) {
			OPENSSL_cleanse(res, sizeof(*res));
			res->attempts_left = -1;
			res->retry_after = REPL_RETRY_AFTER;
		}
		return fail;
	}
	if (count != NULL)
		*count = (int)n;
	return st;
}

/*
 * Where a write runs: -1 here (alone, or this master has a majority);
 * otherwise the status of the write as the master ran it, or fail if no
 * master answered (res->retry_after set).
 */
int64_t
repl_write(struct store *s, int op, const struct otp_request *q, const char *a,
    const char *b, const uint8_t *hash, struct otp_result *res, int *count,
    char *extra, size_t extralen, uint64_t fail)
{
	if (s->repl == NULL || repl_in_dispatch)
		return -1;
	if (repl_forward_needed(s))
		return (int64_t)repl_fwd(s, op, q, a, b, hash, res, count, extra,
		    extralen, fail);
	if (repl_write_allowed(s) == 0)
		return -1;
	if (res != NULL) {
		memset(res, 0, sizeof(*res));
		res->attempts_left = -1;
		res->retry_after = REPL_RETRY_AFTER;
	}
	return (int64_t)fail;
}

/* Who owns a reservation made now: the site that asked for it. */
uint64_t
repl_owner(const struct store *s)
{
	return repl_in_dispatch && repl_fwd_owner != 0 ? repl_fwd_owner : s->run;
}

/* A master's failed write (no quorum, a sync under way) says when to retry. */
enum s_status
repl_tempfail(struct store *s, enum s_status st, struct otp_result *res)
{
	if (s->repl != NULL && st == S_TEMPFAIL && res != NULL && res->retry_after <= 0)
		res->retry_after = REPL_RETRY_AFTER;
	return st;
}

static int
repl_unhex(const char *h, uint8_t out[32])
{
	int i;
	unsigned v;

	if (h == NULL || strlen(h) != 64)
		return -1;
	for (i = 0; i < 32; i++) {
		if (sscanf(h + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return 0;
}

/* The master's side: a replica's write, run here and answered. */
static void
repl_dispatch(DB_ENV *env, DB_CHANNEL *ch, DBT *msg, u_int32_t n, u_int32_t flags)
{
	struct store *s = env->app_private;
	struct otp_result res;
	struct repl_req *rq;
	struct otp_request q;
	uint8_t *out = NULL;
	const char *a, *b, *hx;
	uint8_t hash[32];
	char answer[STORE_IDEM_ANSWER_MAX + 1];
	uint64_t ticket;
	int count = 0, op, has_res = 1;
	uint64_t st = S_TEMPFAIL;
	DBT reply;

	if (!(flags & DB_REPMGR_NEED_RESPONSE) || n != 1)
		return;
	rq = calloc(1, sizeof(*rq));
	out = calloc(1, REPL_MSG_MAX);
	if (rq == NULL || out == NULL)
		goto out;
	answer[0] = '\0';
	memset(&res, 0, sizeof(res));
	memset(&reply, 0, sizeof(reply));
	if (repl_req_decode(msg[0].data, msg[0].size, rq) == -1) {
		/* another version (an upgrade under way: unavailable), a bad
		 * op, a cut or padded message */
		reply.size = (u_int32_t)repl_ans_encode(out, msg[0].size > 0 &&
		    *(uint8_t *)msg[0].data != REPL_VERSION ? S_TEMPFAIL : S_BADINPUT,
		    NULL, 0, NULL);
		goto send;
	}
	op = rq->op;
	if (op == RO_LSN) {
		DB_LOG_STAT *ls;

		if (s->env->log_stat(s->env, &ls, 0) == 0) {
			reply.size = (u_int32_t)repl_ans_encode(out, S_OK, NULL,
			    (uint64_t)ls->st_cur_file << 32 | ls->st_cur_offset, NULL);
			free(ls);
		} else
			reply.size = (u_int32_t)repl_ans_encode(out, S_TEMPFAIL, NULL, 0,
			    NULL);
		goto send;
	}
	q = rq->q;
	a = rq->a;
	b = rq->b;
	hx = rq->hx;
	repl_fwd_owner = rq->owner;
	repl_in_dispatch = 1;
	atomic_fetch_add(&s->repl->served, 1);
	if (!atomic_load(&s->repl->is_master)) {
		st = S_TEMPFAIL;	/* no longer master: the replica says so */
		res.retry_after = REPL_RETRY_AFTER;
	} else switch (op) {
	case RO_ISSUE:
		st = store_otp_issue_async(s, &q, &res, &ticket);
		if (st == S_OK && store_flush_wait(s, ticket) == -1) {
			st = S_TEMPFAIL;
			OPENSSL_cleanse(res.code, sizeof(res.code));
		}
		break;
	case RO_MARK:
		st = store_otp_mark_sent(s, &q, a, b);
		break;
	case RO_CANCEL:
		st = store_otp_cancel(s, &q, a);
		break;
	case RO_VERIFY:
		st = store_otp_verify(s, &q, a, &res);
		break;
	case RO_REVOKE:
		st = store_otp_revoke(s, &q, &count);
		break;
	case RO_UNLOCK:
		st = store_otp_unlock(s, &q);
		break;
	case RO_IDEM_BEGIN:
		if (repl_unhex(hx, hash) == -1)
			st = IDEM_FAIL;
		else
			st = store_idem_begin(s, q.app, a, hash, q.now, answer,
			    sizeof(answer));
		has_res = 0;
		break;
	case RO_IDEM_FINISH:
		st = store_idem_finish(s, q.app, a, q.now, b != NULL ? b : "");
		has_res = 0;
		break;
	case RO_IDEM_PREPARE:
		st = store_idem_prepare(s, q.app, a, q.now, b != NULL ? b : "");
		has_res = 0;
		break;
	case RO_SUPP_ADD:
		st = store_supp_add(s, q.app, q.addr, a, b, q.ttl, q.now, NULL);
		has_res = 0;
		break;
	case RO_SUPP_REMOVE:
		st = store_supp_remove(s, q.app, q.addr, a, q.now, NULL);
		has_res = 0;
		break;
	case RO_IDEM_UNCLAIM:
		store_idem_unclaim(s, q.app, a);
		st = S_OK;
		has_res = 0;
		break;
	case RO_IDEM_ABANDON:
		store_idem_abandon(s, q.app, a);
		st = S_OK;
		has_res = 0;
		break;
	default:
		st = S_BADINPUT;
		break;
	}
	repl_in_dispatch = 0;
	repl_fwd_owner = 0;
	reply.size = (u_int32_t)repl_ans_encode(out, st, has_res ? &res : NULL,
	    (uint64_t)count, answer);
	OPENSSL_cleanse(&res, sizeof(res));
send:
	reply.data = out;
	ch->send_msg(ch, &reply, 1, 0);
	OPENSSL_cleanse(out, REPL_MSG_MAX);
	OPENSSL_cleanse(rq, sizeof(*rq));
out:
	free(rq);
	free(out);
}

/* ---- status ---- */

static int
repl_site_lsn(struct store *s, int eid, uint32_t *file, uint32_t *off)
{
	uint8_t m[REPL_MSG_MAX];
	uint64_t st, v;
	DBT resp;
	int bad;

	if (repl_send(s, eid, m, repl_req_encode(m, RO_LSN, NULL, NULL, NULL, NULL, 0),
	    &resp, REPL_LSN_TIMEOUT) == -1)
		return -1;
	bad = repl_ans_decode(resp.data, resp.size, &st, &v, NULL, 0, NULL);
	free(resp.data);
	if (bad || st != S_OK)
		return -1;
	*file = (uint32_t)(v >> 32);
	*off = (uint32_t)v;
	return 0;
}

int
store_cluster_status(struct store *s, struct store_cluster_status *cs)
{
	struct repl *rp = s->repl;
	DB_REPMGR_SITE *list = NULL;
	DB_LOG_STAT *ls;
	DB_REP_STAT *rs;
	u_int n = 0, i;
	int j, meid;

	memset(cs, 0, sizeof(*cs));
	if (rp == NULL)
		return -1;
	cs->nsites = rp->c.nsites;
	cs->self = rp->c.self;
	cs->is_master = atomic_load(&rp->is_master);
	cs->master = cs->is_master ? rp->c.self : -1;
	pthread_mutex_lock(&rp->lock);
	cs->last_election = rp->last_election;
	cs->elections = rp->elections;
	pthread_mutex_unlock(&rp->lock);
	cs->perm_failed = atomic_load(&rp->perm_failed);
	cs->forwarded = atomic_load(&rp->forwarded);
	cs->served = atomic_load(&rp->served);
	for (j = 0; j < cs->nsites; j++)
		cs->sites[j].lsn_known = 0;
	if (s->env->log_stat(s->env, &ls, 0) == 0) {
		cs->sites[cs->self].lsn_file = ls->st_cur_file;
		cs->sites[cs->self].lsn_offset = ls->st_cur_offset;
		cs->sites[cs->self].lsn_known = 1;
		free(ls);
	}
	cs->sites[cs->self].connected = 1;
	if (s->env->rep_stat(s->env, &rs, 0) == 0) {
		cs->generation = rs->st_gen;
		free(rs);
	}
	meid = repl_master_eid(s);
	if (s->env->repmgr_site_list(s->env, &n, &list) != 0)
		return 0;
	for (i = 0; i < n; i++) {
		j = (int)list[i].port - rp->c.base_port;
		if (j < 0 || j >= cs->nsites || j == cs->self)
			continue;
		cs->sites[j].connected = list[i].status == DB_REPMGR_CONNECTED;
		if (!cs->is_master && list[i].eid == meid)
			cs->master = j;
		if (cs->sites[j].connected && repl_site_lsn(s, list[i].eid,
		    &cs->sites[j].lsn_file, &cs->sites[j].lsn_offset) == 0)
			cs->sites[j].lsn_known = 1;
	}
	free(list);
	return 0;
}
