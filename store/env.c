/*
 * env.c - the Berkeley DB environment of the store: open with recovery
 * (at every open), the primary database and its expiry index, deadlock
 * retry helpers, checkpoints and log removal.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <syslog.h>
#include <time.h>

#include "store/store_int.h"

static void	env_errcall(const DB_ENV *, const char *, const char *);
static int	store_log_flush(struct store *);

void
store_logf(struct store *s, int prio, const char *fmt, ...)
{
	char line[512];
	va_list ap;

	if (s == NULL || s->p.log == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	s->p.log(prio, line);
}

static void
env_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	struct store *s = env->app_private;

	store_logf(s, LOG_ERR, "event=store.db_error msg=\"%s\"", msg);
}

int
store_retryable(int err)
{
	return err == DB_LOCK_DEADLOCK || err == DB_LOCK_NOTGRANTED;
}

void
store_backoff(int attempt)
{
	struct timespec ts;

	if (attempt < 2)
		return;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)(attempt < 10 ? attempt : 10) * 100000L;
	nanosleep(&ts, NULL);
}

int
store_fsync_dir(const char *path)
{
	int fd, r;

	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return -1;
	r = fsync(fd);
	close(fd);
	return r;
}

/*
 * Flushes the log to disk, names included.  BDB fdatasyncs its log files
 * but never its directory, so the name of a log file it has just started
 * is not durable, and a power cut could take every commit in that file
 * (test_powercut.py lost them all): after a flush that finds the log in a
 * newer file than the last one synced, sync the directory too.
 */
static int
store_log_flush(struct store *s)
{
	DB_LOG_STAT *st;
	uint32_t cur;
	int r;

	if ((r = s->env->log_flush(s->env, NULL)) != 0)
		return r;
	if ((r = s->env->log_stat(s->env, &st, 0)) != 0)
		return r;
	cur = st->st_cur_file;
	free(st);
	if (cur <= atomic_load(&s->log_dir_synced))
		return 0;
	if (store_fsync_dir(s->p.dir) == -1)
		return errno;
	atomic_store(&s->log_dir_synced, cur);
	return 0;
}

/*
 * A commit waits in the log buffer: the flusher flushes it within
 * STORE_FLUSH_LATER_MS.  Only the first such commit after a flush, and
 * only if the flusher sleeps without a deadline, wakes it.
 */
static void
store_flush_later(struct store *s)
{
	/* A plain load first: when the flag is already up (the common case
	 * under load) the line stays shared, no write.  It is up only until
	 * the flusher takes it down, just before the flush that covers this
	 * commit, and whoever raised it has woken an idle flusher. */
	if (atomic_load(&s->f_later) == 0 && atomic_exchange(&s->f_later, 1) == 0 &&
	    atomic_load(&s->f_idle)) {
		pthread_mutex_lock(&s->flock);
		pthread_cond_signal(&s->fwant);
		pthread_mutex_unlock(&s->flock);
	}
}

/*
 * Commits; a durable commit returns only once the log is on disk.  The
 * commit record is written without a sync and the log flushed after the
 * locks are released ("early lock release"): no lock is held through an
 * fsync, so a hot page never serialises others behind the disk, while the
 * caller still answers only after its change is durable.  Whoever read the
 * change meanwhile saw a commit that only an OS crash could undo, and then
 * the caller never acknowledged it.
 *
 * With the flusher running, the commit record is not even written: it
 * stays in the log buffer (DB_TXN_NOSYNC), and one flush writes and syncs
 * the buffer for every commit made since.  A write per commit was a system
 * call made under the log region's mutex, which every transaction's begin,
 * log record and commit take: the request threads queued on it.  A
 * durable commit flushes here.  Any other, with a ticket, asks the flusher
 * for a flush and returns (*ticket names it: store_flush_wait); without
 * one, it rides along with the next flush anyone asks, and the flusher
 * flushes it within STORE_FLUSH_LATER_MS if nobody does.  Before, such a
 * commit reached the OS at once and the disk whenever someone flushed: now
 * a kill -9 may take the last few milliseconds of them (a failed guess's
 * count, a rate window's tick, a cooldown's start: nothing acknowledged as
 * durable), and a power cut takes less than before.
 */
int
store_commit_ticket(struct store *s, DB_TXN *txn, int durable, uint64_t *ticket)
{
	int lazy = s->p.durable && s->f_running, r;

	if (ticket != NULL)
		*ticket = 0;
	repl_commit_begin(s);
	if ((r = txn->commit(txn, lazy ? DB_TXN_NOSYNC : DB_TXN_WRITE_NOSYNC)) != 0)
		return r;
	/* committed here but not on a quorum: the caller must not say so */
	if (repl_commit_failed(s))
		return DB_REP_UNAVAIL;
	if (!s->p.durable)
		return 0;
	if (durable)
		return store_log_flush(s);
	if (lazy && ticket != NULL)
		*ticket = store_flush_begin(s);
	else if (lazy)
		store_flush_later(s);
	return 0;
}

int
store_commit(struct store *s, DB_TXN *txn, int durable)
{
	return store_commit_ticket(s, txn, durable, NULL);
}

/*
 * A commit of the store's own bookkeeping (a client's rate window), no
 * quorum asked: in the log buffer, on disk with the next flush, as
 * store_commit_ticket without a ticket.
 */
int
store_commit_lazy(struct store *s, DB_TXN *txn)
{
	int r;

	if (!s->p.durable || !s->f_running)
		return txn->commit(txn, DB_TXN_WRITE_NOSYNC);
	if ((r = txn->commit(txn, DB_TXN_NOSYNC)) != 0)
		return r;
	store_flush_later(s);
	return 0;
}

/*
 * The log flusher: store_flush_begin hands "flush the log as it is now" to
 * one thread and returns a ticket; store_flush_wait blocks until a flush
 * that started after the ticket was taken has finished.  A request commits
 * without a sync, starts the flush, and does its other work (composing,
 * signing, writing its mail) while the disk works; concurrent requests
 * share one flush.
 */
static void *
store_flusher(void *arg)
{
	struct store *s = arg;
	struct timespec due;
	uint64_t want;
	int r, later;

	pthread_mutex_lock(&s->flock);
	for (;;) {
		later = 0;
		while (s->f_asked == s->f_done && !s->f_stop) {
			/* idle, then a look at f_later: a committer sets
			 * f_later, then looks at f_idle (store_flush_later),
			 * and one of the two sees the other */
			atomic_store(&s->f_idle, 1);
			if (!atomic_load(&s->f_later)) {
				pthread_cond_wait(&s->fwant, &s->flock);
				atomic_store(&s->f_idle, 0);
				continue;
			}
			atomic_store(&s->f_idle, 0);
			/* commits nobody waits for are in the log buffer:
			 * on disk within STORE_FLUSH_LATER_MS */
			clock_gettime(CLOCK_REALTIME, &due);
			due.tv_nsec += STORE_FLUSH_LATER_MS * 1000000L;
			if (due.tv_nsec >= 1000000000L) {
				due.tv_sec++;
				due.tv_nsec -= 1000000000L;
			}
			if (pthread_cond_timedwait(&s->fwant, &s->flock, &due) == ETIMEDOUT) {
				later = 1;
				break;
			}
		}
		/* stopping: flush what is owed or waits in the buffer */
		if (s->f_asked == s->f_done && !later && !atomic_load(&s->f_later))
			break;
		want = s->f_asked;
		pthread_mutex_unlock(&s->flock);
		/* a commit after this point sets it again for the next flush */
		atomic_store(&s->f_later, 0);
		r = store_log_flush(s);
		if (r != 0) {
			store_logf(s, LOG_ERR, "store: log flush: %s", db_strerror(r));
			atomic_store(&s->f_failed, want);
		}
		atomic_store(&s->f_done, want);
		atomic_fetch_add(&s->f_gen, 1);
		/* a waiter counts itself, then reads f_gen: one of the two
		 * sees the other (the waiters do not take flock: a broadcast
		 * had each of them fight for it once woken) */
		if (atomic_load(&s->f_nwait) > 0)
			(void)syscall(SYS_futex, &s->f_gen, FUTEX_WAKE_PRIVATE, INT_MAX,
			    NULL, NULL, 0);
		pthread_mutex_lock(&s->flock);
	}
	pthread_mutex_unlock(&s->flock);
	return NULL;
}

int
store_flusher_start(struct store *s, char *err, size_t errlen)
{
	int r;

	pthread_mutex_init(&s->flock, NULL);
	pthread_cond_init(&s->fwant, NULL);
	s->f_asked = 0;
	atomic_store(&s->f_done, 0);
	atomic_store(&s->f_failed, 0);
	atomic_store(&s->f_gen, 0);
	atomic_store(&s->f_nwait, 0);
	atomic_store(&s->f_later, 0);
	atomic_store(&s->f_idle, 0);
	s->f_stop = 0;
	if ((r = pthread_create(&s->flusher, NULL, store_flusher, s)) != 0) {
		snprintf(err, errlen, "store: cannot start the log flusher: %s", strerror(r));
		return -1;
	}
	(void)pthread_setname_np(s->flusher, "db-flush");
	s->f_running = 1;
	return 0;
}

void
store_flusher_stop(struct store *s)
{
	if (!s->f_running)
		return;
	pthread_mutex_lock(&s->flock);
	s->f_stop = 1;
	pthread_cond_signal(&s->fwant);
	pthread_mutex_unlock(&s->flock);
	pthread_join(s->flusher, NULL);
	s->f_running = 0;
	pthread_cond_destroy(&s->fwant);
	pthread_mutex_destroy(&s->flock);
}

uint64_t
store_flush_begin(struct store *s)
{
	uint64_t t;

	if (!s->p.durable || !s->f_running)
		return 0;
	pthread_mutex_lock(&s->flock);
	t = ++s->f_asked;
	pthread_mutex_unlock(&s->flock);
	/* after the unlock: the flusher wakes to take flock */
	pthread_cond_signal(&s->fwant);
	return t;
}

int
store_flush_wait(struct store *s, uint64_t ticket)
{
	int rc;

	uint32_t g;

	if (ticket == 0)
		return 0;
	while (atomic_load(&s->f_done) < ticket) {
		g = atomic_load(&s->f_gen);
		atomic_fetch_add(&s->f_nwait, 1);
		if (atomic_load(&s->f_done) < ticket && atomic_load(&s->f_gen) == g)
			(void)syscall(SYS_futex, &s->f_gen, FUTEX_WAIT_PRIVATE, g, NULL,
			    NULL, 0);
		atomic_fetch_sub(&s->f_nwait, 1);
	}
	/* a failed flush fails every ticket up to it (conservative) */
	rc = ticket <= atomic_load(&s->f_failed) ? -1 : 0;
	return rc;
}

static int	store_check_db(struct store *, DB *, const char *, char *, size_t);
static int	store_env_check(struct store *, char *, size_t);

/*
 * Opens the three databases in one transaction (create: the master's first
 * open).  On failure the handles made are closed and *db.. left alone.
 */
static int
store_db_open(struct store *s, uint32_t create, DB **pdb, DB **pexp, DB **prate)
{
	DB *db = NULL, *exp = NULL, *rate = NULL;
	DB_TXN *txn = NULL;
	int r;

	if ((r = db_create(&db, s->env, 0)) != 0 ||
	    (r = db_create(&exp, s->env, 0)) != 0 ||
	    (r = db_create(&rate, s->env, 0)) != 0)
		goto fail;
	/* Small pages: BDB locks pages, and records are keyed at random. */
	db->set_pagesize(db, 2048);
	/* Page checksums (new files only: ignored for an existing one), so
	 * DB->verify at open sees a flipped bit anywhere (verify.c). */
	db->set_flags(db, DB_CHKSUM);
	exp->set_flags(exp, DB_CHKSUM);
	rate->set_flags(rate, DB_CHKSUM);
	exp->set_flags(exp, DB_DUP | DB_DUPSORT);
	if (s->p.cluster != NULL) {
		db->set_flags(db, DB_ENCRYPT);
		exp->set_flags(exp, DB_ENCRYPT);
		rate->set_flags(rate, DB_ENCRYPT);
	}
	if ((r = s->env->txn_begin(s->env, NULL, &txn, 0)) != 0)
		goto fail;
	if ((r = db->open(db, txn, "otp.db", NULL, DB_BTREE, create | DB_THREAD,
	    0600)) != 0 ||
	    (r = exp->open(exp, txn, "expiry.db", NULL, DB_BTREE, create | DB_THREAD,
	    0600)) != 0 ||
	    /* DB_CREATE: an empty index (new, or quarantined) is rebuilt */
	    (r = db->associate(db, txn, exp, store_exp_callback, create)) != 0 ||
	    (r = rate->open(rate, txn, "rate.db", NULL, DB_BTREE, create | DB_THREAD,
	    0600)) != 0)
		goto fail;
	r = txn->commit(txn, 0);
	txn = NULL;
	if (r != 0)
		goto fail;
	*pdb = db;
	*pexp = exp;
	*prate = rate;
	return 0;
fail:
	if (txn != NULL)
		txn->abort(txn);
	/* the secondary first: it is associated with the primary */
	if (rate != NULL)
		rate->close(rate, 0);
	if (exp != NULL)
		exp->close(exp, 0);
	if (db != NULL)
		db->close(db, 0);
	return r;
}

/*
 * A replica's handles die when a sync rolls back transactions it had
 * (DB_REP_HANDLE_DEAD: an ex-master's commits that no quorum acked, after a
 * partition).  The operation that meets one marks them (store_retry); the
 * next transaction opens new ones.  The dead ones are kept a while, as a
 * thread may still hold one (each meets only errors), then closed.
 */
void
store_handles_check(struct store *s)
{
	DB *db, *exp, *rate;
	time_t now = time(NULL);
	size_t i, k;
	int r;

	if (!atomic_load(&s->handles_dead))
		return;
	pthread_mutex_lock(&s->reopen_lock);
	if (!atomic_load(&s->handles_dead))
		goto out;
	if ((r = store_db_open(s, 0, &db, &exp, &rate)) != 0) {
		store_logf(s, LOG_ERR, "event=store.reopen error=\"%s\"", db_strerror(r));
		goto out;
	}
	for (i = k = 0; i < s->nretired; i++) {
		if (s->retired[i].at + STORE_RETIRE_SECS <= now ||
		    (k == 0 && s->nretired == STORE_RETIRED_MAX)) {
			s->retired[i].rate->close(s->retired[i].rate, 0);
			s->retired[i].exp->close(s->retired[i].exp, 0);
			s->retired[i].db->close(s->retired[i].db, 0);
		} else
			s->retired[k++] = s->retired[i];
	}
	s->nretired = k;
	s->retired[k].db = s->db;
	s->retired[k].exp = s->exp;
	s->retired[k].rate = s->rate;
	s->retired[k].at = now;
	s->nretired++;
	__atomic_store_n(&s->db, db, __ATOMIC_SEQ_CST);
	__atomic_store_n(&s->exp, exp, __ATOMIC_SEQ_CST);
	__atomic_store_n(&s->rate, rate, __ATOMIC_SEQ_CST);
	atomic_store(&s->handles_dead, 0);
	atomic_fetch_add(&s->reopened, 1);
	store_logf(s, LOG_WARNING, "event=store.reopen detail=\"handles dead after a "
	    "replication rollback: opened again\"");
out:
	pthread_mutex_unlock(&s->reopen_lock);
}

int
store_txn_begin(struct store *s, DB_TXN **txn)
{
	store_handles_check(s);
	return s->env->txn_begin(s->env, NULL, txn, 0);
}

int
store_retry(struct store *s, int err)
{
	if (err == DB_REP_HANDLE_DEAD) {
		atomic_store(&s->handles_dead, 1);
		return 1;
	}
	return store_retryable(err);
}

int
store_env_open(struct store *s, char *err, size_t errlen)
{
	/*
	 * Recovery at every open, not DB_REGISTER's "only after a crashed
	 * opener": after a power cut the register file and the region files
	 * (__db.00N) are whatever reached the disk, which can say "clean" while
	 * the database files lack committed transactions that only the log
	 * holds (tests/integration/test_powercut.py lost every code that way).
	 * The daemon is the environment's only opener (the state directory
	 * lock), so nobody's regions are pulled from under them.
	 */
	uint32_t flags = DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK | DB_INIT_LOG |
	    DB_INIT_MPOOL | DB_THREAD | DB_RECOVER;
	DB_TXN *txn = NULL;
	char parent[PATH_MAX];
	uint32_t create = DB_CREATE;
	int r;

	if (mkdir(s->p.dir, 0700) == 0) {
		/* a new directory: its name too must survive a power cut */
		snprintf(parent, sizeof(parent), "%s", s->p.dir);
		if (store_fsync_dir(dirname(parent)) == -1) {
			snprintf(err, errlen, "store: fsync of the parent of %s: %s", s->p.dir,
			    strerror(errno));
			return -1;
		}
	} else if (errno != EEXIST) {
		snprintf(err, errlen, "store: mkdir %s: %s", s->p.dir, strerror(errno));
		return -1;
	}
	if ((r = db_env_create(&s->env, 0)) != 0)
		goto dberr;
	s->env->app_private = s;
	s->env->set_errcall(s->env, env_errcall);
	s->env->set_lk_detect(s->env, DB_LOCK_DEFAULT);
	s->env->set_cachesize(s->env, 0, 8 * 1024 * 1024, 1);
	s->env->set_lg_bsize(s->env, 4 * 1024 * 1024);
	s->env->set_lk_max_locks(s->env, 5000);
	s->env->set_lk_max_objects(s->env, 5000);
	s->env->set_lk_max_lockers(s->env, 5000);
	s->env->set_tx_max(s->env, 1000);
	/*
	 * Those limits stay; what an idle daemon touches is sized to what the
	 * store uses.  BDB initialises, at open, a mutex for everything the
	 * cache and lock limits could ever need (3,689 mutexes, 0.5 MiB; about
	 * 1,100 are in use after start) and grows the region by half when it
	 * runs out: start at 1,280, allow up to 10,000 (the defaults allowed
	 * 3,689 plus about 6,100 of growth; 40,000 issues filling the cache
	 * used 4,200).  The lock object hash table is sized from lk_max_objects
	 * (4,099 buckets, 0.3 MiB) but needs about a bucket per page locked at
	 * once: a few hundred (a sweep batch is 200 records; that load held at
	 * most 128 locks).
	 */
	s->env->mutex_set_init(s->env, 1280);
	s->env->mutex_set_max(s->env, 10000);
	s->env->set_lk_tablesize(s->env, 1031);
	/* Spin a little before sleeping on a BDB mutex: its critical
	 * sections are short and a context switch costs more. */
	s->env->mutex_set_tas_spins(s->env, 200);
	if (!s->p.durable)
		s->env->set_flags(s->env, DB_TXN_WRITE_NOSYNC, 1);
	if (s->p.cluster != NULL && repl_env_config(s, &flags, err, errlen) == -1) {
		store_env_close(s);
		return -1;
	}
	/* (encrypted files: DB->verify in a child cannot read them) */
	if (s->p.cluster == NULL && store_verify_files(s, err, errlen) == -1) {
		s->env->close(s->env, 0);
		s->env = NULL;
		return -1;
	}
	if ((r = s->env->open(s->env, s->p.dir, flags, 0600)) != 0)
		goto dberr;
	s->env->log_set_config(s->env, DB_LOG_AUTO_REMOVE, 1);
	if (s->p.cluster != NULL) {
		if (repl_env_start(s, err, errlen) == -1) {
			store_env_close(s);
			return -1;
		}
		/* a replica opens what the master made, read-only */
		if (!repl_is_master(s))
			create = 0;
	}

	if ((r = store_db_open(s, create, &s->db, &s->exp, &s->rate)) != 0)
		goto dberr;
	if (create != 0 && store_env_check(s, err, errlen) == -1) {
		store_env_close(s);
		return -1;
	}
	/* The files BDB made (a first start, the log after recovery) are
	 * named in a directory it never syncs. */
	atomic_store(&s->log_dir_synced, 0);
	if ((r = store_log_flush(s)) != 0) {
		snprintf(err, errlen, "store: %s: sync: %s", s->p.dir, db_strerror(r));
		store_env_close(s);
		return -1;
	}
	return 0;
dberr:
	snprintf(err, errlen, "store: %s: %s", s->p.dir, db_strerror(r));
	if (txn != NULL)
		txn->abort(txn);
	store_env_close(s);
	return -1;
}

/*
 * Puts and deletes a sentinel (a 1-byte key no record uses, too short to be
 * indexed), so the checkpoint that follows writes a page of the file: a
 * file ahead of its log shows up now, not at the first request.
 */
static int
store_check_db(struct store *s, DB *db, const char *file, char *err, size_t errlen)
{
	unsigned char zero = 0;
	DB_TXN *txn = NULL;
	DBT k, v;
	int r;

	memset(&k, 0, sizeof(k));
	memset(&v, 0, sizeof(v));
	k.data = v.data = &zero;
	k.size = v.size = 1;
	if ((r = s->env->txn_begin(s->env, NULL, &txn, 0)) != 0 ||
	    (r = db->put(db, txn, &k, &v, 0)) != 0 ||
	    (r = db->del(db, txn, &k, 0)) != 0) {
		if (txn != NULL)
			txn->abort(txn);
		goto fail;
	}
	if ((r = txn->commit(txn, 0)) != 0)
		goto fail;
	return 0;
fail:
	snprintf(err, errlen, "store: %s/%s: %s: restore the store from a backup, or "
	    "move %s aside to start with an empty one (codes in flight are then lost)",
	    s->p.dir, file, db_strerror(r), s->p.dir);
	return -1;
}

static int
store_env_check(struct store *s, char *err, size_t errlen)
{
	int r;

	if (store_check_db(s, s->db, "otp.db", err, errlen) == -1 ||
	    store_check_db(s, s->rate, "rate.db", err, errlen) == -1)
		return -1;
	/* Writing the pages back checks them against the end of the log. */
	if ((r = s->env->txn_checkpoint(s->env, 0, 0, DB_FORCE)) != 0) {
		snprintf(err, errlen, "store: %s: checkpoint: %s: the database files and "
		    "their log disagree (a log file removed?): restore the store from a "
		    "backup, or move %s aside to start with an empty one", s->p.dir,
		    db_strerror(r), s->p.dir);
		return -1;
	}
	return 0;
}

void
store_env_close(struct store *s)
{
	size_t i;

	repl_stop(s);
	for (i = 0; i < s->nretired; i++) {
		s->retired[i].rate->close(s->retired[i].rate, 0);
		s->retired[i].exp->close(s->retired[i].exp, 0);
		s->retired[i].db->close(s->retired[i].db, 0);
	}
	s->nretired = 0;
	/* The secondary first: it is associated with the primary. */
	if (s->rate != NULL)
		s->rate->close(s->rate, 0);
	if (s->exp != NULL)
		s->exp->close(s->exp, 0);
	if (s->db != NULL)
		s->db->close(s->db, 0);
	if (s->env != NULL)
		s->env->close(s->env, 0);
	repl_close(s);
	s->rate = NULL;
	s->exp = NULL;
	s->db = NULL;
	s->env = NULL;
}

enum s_status
store_checkpoint(struct store *s)
{
	int r;

	if ((r = s->env->txn_checkpoint(s->env, 0, 0, 0)) != 0) {
		store_logf(s, LOG_ERR, "event=store.checkpoint error=\"%s\"",
		    db_strerror(r));
		return S_TEMPFAIL;
	}
	/* With DB_LOG_AUTO_REMOVE the checkpoint lets BDB drop old logs. */
	s->env->log_archive(s->env, NULL, DB_ARCH_REMOVE);
	return S_OK;
}
