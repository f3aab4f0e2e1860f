/*
 * store_int.h - internals shared by the files of store/: the handle, the
 * record layouts and the helpers each file provides.  Not for other folders.
 */
#ifndef OTPMAIL_STORE_INT_H
#define OTPMAIL_STORE_INT_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <db.h>
#include <openssl/evp.h>

#include "store/store.h"

#define STORE_SECRET_LEN	32
#define STORE_MAC_LEN		32
#define STORE_KEEP_MAX		16	/* hard bound on keep_codes */
#define STORE_PURPOSE_MAX	32
#define STORE_CONTEXT_MAX	1024
#define STORE_ADDR_MAX		320
#define STORE_QID_MAX		24	/* queue ids are 24 hex chars */
#define STORE_RETRIES		50	/* deadlock retries per operation */
#define STORE_FOREVER		UINT64_MAX	/* purge time of a record kept for good */

/* One-byte prefixes of the primary keys; every HMAC input starts with the
 * app's name and a 0 byte: one app's keys are another's noise. */
#define REC_OTP		'O'	/* HMAC(app 0 lower(addr) 0 purpose 0 H(context)) */
#define REC_PURPOSE	'P'	/* HMAC(app 0 lower(addr) 0 purpose): cooldown */
#define REC_ADDR	'A'	/* HMAC(app 0 lower(addr) 0): hourly window */
#define REC_CLIENT	'K'	/* HMAC(app 0 client_id): failures of one client */
#define REC_CFAIL	'F'	/* as REC_OTP: the failures of its context */
#define REC_CLIENT_ISSUE 'C'	/* HMAC(app 0 client_id): its issues in the hour */
#define REC_IDEM	'I'	/* HMAC(app 0 idempotency key) */
#define REC_SUPPRESS	'S'	/* HMAC("suppress" 0 app 0 lower(addr)) (suppress.c) */
#define KEY_MAX		(1 + STORE_MAC_LEN)
#define STORE_DB_FILES	3	/* otp.db, expiry.db, rate.db (verify.c) */
#define STORE_QUARANTINE_MAX	32	/* files of the folder reported (stats) */
#define STORE_RETIRED_MAX	8	/* dead handle sets kept (env.c) */
#define STORE_RETIRE_SECS	30	/* ...this long, then closed */

/* A failure count with its lock-out (contexts and clients). */
struct fail_state {
	uint64_t	 last;		/* time of the last failure */
	uint32_t	 failures;	/* consecutive */
	uint64_t	 until;		/* lock-out end, STORE_FOREVER if permanent */
};
#define FAIL_SZ		(8 + 4 + 8)

/* A code as stored: only its MAC. */
struct otp_code_rec {
	uint8_t		 mac[STORE_MAC_LEN];	/* HMAC(secret, code 0 H(context)) */
	uint8_t		 issue_id[16];
	uint64_t	 issued;
	uint64_t	 expires;
	uint32_t	 failures;
	uint8_t		 sent;			/* 0 = pending, 1 = mail enqueued */
	char		 queue_id[STORE_QID_MAX + 1];
};

/*
 * Outstanding codes of an app+address+purpose+context.  A code's failures
 * are its own count plus the context's failure record's total (struct
 * cfail, which an issue folds into the codes and deletes): a failed verify
 * writes only that record, created by the first failure after an issue
 * whether the context has a code or not, so the write is the same either
 * way.  fail is no longer used (records of older versions).
 */
struct otp_rec {
	uint64_t	 purge;		/* sweep may delete the record after this */
	struct fail_state fail;
	int		 ncodes;
	struct otp_code_rec codes[STORE_KEEP_MAX];
};

/* Cooldown of an app+address+purpose: the last mail, an issue in flight. */
struct purpose_rec {
	uint64_t	 purge;
	uint64_t	 last_sent;	/* cooldown starts here (mark_sent) */
	uint64_t	 pend_at;	/* an issue of this run is composing its mail */
	uint64_t	 pend_run;	/* the store run (struct store.run) that began it */
	char		 queue_id[STORE_QID_MAX + 1];	/* newest code's mail */
};

/* App+address state: the hourly issue window.  (failures and lockout_until
 * are no longer used: there is no address-wide lock-out.) */
struct addr_rec {
	uint64_t	 purge;
	uint64_t	 hour_start;
	uint32_t	 hour_count;
	uint32_t	 failures;
	uint64_t	 lockout_until;
};

/* Per client uid issue window (rate.db). */
struct client_rec {
	uint64_t	 purge;
	uint64_t	 win_start;
	uint32_t	 count;
};

#define OTP_REC_HDR	(8 + FAIL_SZ + 1)
#define OTP_CODE_SZ	(STORE_MAC_LEN + 16 + 8 + 8 + 4 + 1 + STORE_QID_MAX)
#define OTP_REC_MAX	(OTP_REC_HDR + STORE_KEEP_MAX * OTP_CODE_SZ)
#define PURPOSE_REC_SZ	(8 + 8 + 8 + 8 + STORE_QID_MAX)
#define ADDR_REC_SZ	(8 + 8 + 4 + 4 + 8)
#define KFAIL_REC_SZ	(8 + FAIL_SZ)
#define CFAIL_REC_SZ	(8 + FAIL_SZ + 4 + 8)
#define CLIENT_REC_SZ	(8 + 8 + 4)
/* idempotency record: purge, created, run, state, hash, answer length, answer */
#define IDEM_REC_HDR	(8 + 8 + 8 + 1 + 32 + 2)
#define IDEM_REC_MAX	(IDEM_REC_HDR + STORE_IDEM_ANSWER_MAX)
#define REC_MAX		OTP_REC_MAX

/* HMAC-SHA256 under one secret, with the padded key blocks pre-hashed. */
struct store_key {
	EVP_MD_CTX	*in;
	EVP_MD_CTX	*out;
};

struct store {
	struct store_params p;
	DB_ENV		*env;
	DB		*db;		/* primary: every record */
	DB		*exp;		/* secondary: purge time -> record */
	DB		*rate;		/* client uid (4 bytes BE) -> issue window */
	struct store_key key;		/* the current secret */
	struct store_key old_key;	/* the previous one (rotation) */
	int		 has_old;
	uint64_t	 run;		/* random per open: names issues in flight */
	pthread_mutex_t	 glock;		/* the global rate window */
	uint64_t	 g_sec;
	uint32_t	 g_count;
	/* the log flusher (env.c): tickets asked (flock), flushed, failed;
	 * waiters sleep on f_gen, bumped after each flush, not on flock */
	pthread_t	 flusher;
	pthread_mutex_t	 flock;
	pthread_cond_t	 fwant;
	uint64_t	 f_asked;
	_Atomic uint64_t f_done, f_failed;
	_Atomic uint32_t f_gen, f_nwait;
	_Atomic int	 f_later;	/* commits in the log buffer, no flush asked */
	_Atomic int	 f_idle;	/* the flusher sleeps without a deadline */
	int		 f_running, f_stop;
	/* files quarantined at open (verify.c) */
	struct store_quarantine quarantined[STORE_QUARANTINE_MAX];
	size_t		 nquarantined;
	uint64_t	 lost_until;	/* a quarantined otp.db's codes could live */
	/* the newest log file whose name is known durable (env.c) */
	_Atomic uint32_t log_dir_synced;
	struct repl	*repl;		/* NULL: alone (repl.c) */
	/* handles a replication rollback killed, opened again (env.c) */
	pthread_mutex_t	 reopen_lock;
	_Atomic int	 handles_dead;
	_Atomic uint64_t reopened;
	struct {
		DB	*db, *exp, *rate;
		time_t	 at;
	}		 retired[STORE_RETIRED_MAX];
	size_t		 nretired;
};

/* env.c */
int	store_env_open(struct store *, char *err, size_t errlen);
int	store_fsync_dir(const char *dir);
void	store_env_close(struct store *);
void	store_logf(struct store *, int prio, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
/* 1 if err is a lock conflict worth a retry. */
int	store_retryable(int err);
/* store_retryable, and DB_REP_HANDLE_DEAD: the handles are opened again at
 * the next store_txn_begin (a replica after a rollback). */
int	store_retry(struct store *, int err);
int	store_txn_begin(struct store *, DB_TXN **);
/* Opens the handles again if they died (store_txn_begin does it first). */
void	store_handles_check(struct store *);
void	store_backoff(int attempt);
/* A commit nobody waits for is on disk within this (env.c). */
#define STORE_FLUSH_LATER_MS	20

/* Commits txn; durable: returns once the log is on disk.  Otherwise the
 * commit is on disk after the flush *ticket names (0: none asked). */
int	store_commit(struct store *, DB_TXN *, int durable);
int	store_commit_ticket(struct store *, DB_TXN *, int durable, uint64_t *ticket);
/* Commits the store's own bookkeeping (no quorum asked), on disk within a flush. */
int	store_commit_lazy(struct store *, DB_TXN *);
/* The log flusher thread: started after the environment opens, stopped
 * before it closes. */
int	store_flusher_start(struct store *, char *err, size_t errlen);
void	store_flusher_stop(struct store *);

/* verify.c: each file in a forked child; quarantines what fails */
int	store_verify_files(struct store *, char *err, size_t errlen);

/* secret.c */
int	store_secret_load(const char *path, int create, uint8_t out[STORE_SECRET_LEN],
	    char *err, size_t errlen);
int	store_key_init(struct store_key *, const uint8_t secret[STORE_SECRET_LEN]);
void	store_key_free(struct store_key *);
void	store_mac(const struct store_key *, const void *a, size_t alen,
	    const void *b, size_t blen, uint8_t out[STORE_MAC_LEN]);

/* otp.c: record (de)serialisation, shared with sweep.c */
int	otp_rec_decode(const void *, size_t, struct otp_rec *);
size_t	otp_rec_encode(const struct otp_rec *, uint8_t *out);
void	addr_rec_decode(const void *, size_t, struct addr_rec *);
size_t	addr_rec_encode(const struct addr_rec *, uint8_t *out);
uint64_t get_be64(const uint8_t *);
void	hex_encode(const uint8_t *, size_t n, char *out);	/* 2n chars and a NUL */
void	put_be64(uint8_t *, uint64_t);

/* ratelimit.c */
/* 0 if allowed, else retry_after (s) of the window. */
int	rl_window_check(uint64_t start, uint32_t count, uint32_t max, uint64_t window,
	    uint64_t now);
void	rl_window_take(uint64_t *start, uint32_t *count, uint64_t window, uint64_t now);
void	rl_window_give(uint64_t start, uint32_t *count, uint64_t window, uint64_t now);
/* Client windows: each call is its own short transaction (see ratelimit.c). */
int	rl_client_take(struct store *, uint32_t uid, uint64_t now, int *retry_after);
void	rl_client_give(struct store *, uint32_t uid, uint64_t now);
int	rl_client_sweep(struct store *, uint64_t now, size_t *n);
int	rl_global_take(struct store *, uint64_t now, int *retry_after);
void	rl_global_give(struct store *, uint64_t now);
void	client_rec_decode(const void *, size_t, struct client_rec *);
size_t	client_rec_encode(const struct client_rec *, uint8_t *out);

/* sweep.c */
int	store_exp_callback(DB *, const DBT *, const DBT *, DBT *);

/* One record of the store's database by its KEY_MAX-byte key (otp.c):
 * get (DB_RMW with rmw, else read committed; *got = its size), put, and
 * delete (a missing record is no error).  idem.c uses them too. */
int	store_rec_get(struct store *, DB_TXN *, const uint8_t *key, uint8_t *buf,
	    size_t len, uint32_t *got, int rmw);
int	store_rec_put(struct store *, DB_TXN *, const uint8_t *key, const uint8_t *val,
	    size_t len);
int	store_rec_del(struct store *, DB_TXN *, const uint8_t *key);

/* repl.c: replication (NULL s->repl: alone, and every call is a no-op) */
enum repl_op {
	RO_ISSUE = 'i', RO_MARK = 'm', RO_CANCEL = 'c', RO_VERIFY = 'v',
	RO_REVOKE = 'r', RO_UNLOCK = 'u', RO_IDEM_BEGIN = 'b', RO_IDEM_FINISH = 'f',
	RO_IDEM_ABANDON = 'a', RO_IDEM_PREPARE = 'p', RO_IDEM_UNCLAIM = 'n', RO_LSN = 'l',
	RO_SUPP_ADD = 's', RO_SUPP_REMOVE = 'd',
};
int	repl_env_config(struct store *, uint32_t *open_flags, char *err, size_t errlen);
int	repl_env_start(struct store *, char *err, size_t errlen);
void	repl_close(struct store *);
/* Stops the watch thread: before the environment closes. */
void	repl_stop(struct store *);
/* The run owning a reservation made now: a forwarded write's asker's. */
uint64_t repl_owner(const struct store *);
/* The channel's messages: a request is the version, the op, the request's
 * fields, a, b, the hash (hex) and the asker's run; an answer is the
 * status, a count, a string, then the result.  Strings: u16 length (0xffff
 * NULL), integers big-endian.  Encoders return the length, 0 if it does
 * not fit; decoders -1 on anything but one whole message. */
#define REPL_MSG_MAX	4096
#define REPL_MSG_STRS	9	/* strings of a request: 6, a, b, hash */
struct repl_rbuf {
	const uint8_t	*b;
	size_t		 n, o;
	int		 bad;
	char		 str[REPL_MSG_STRS][STORE_IDEM_ANSWER_MAX + 1];	/* decoded */
	int		 nstr;
};
struct repl_req {
	int		 op;
	struct otp_request q;
	const char	*a, *b, *hx;	/* in r */
	uint64_t	 owner;
	struct repl_rbuf r;
};
size_t	repl_req_encode(uint8_t out[REPL_MSG_MAX], int op, const struct otp_request *,
	    const char *a, const char *b, const char *hx, uint64_t owner);
int	repl_req_decode(const uint8_t *, size_t, struct repl_req *);
size_t	repl_ans_encode(uint8_t out[REPL_MSG_MAX], uint64_t st, const struct otp_result *,
	    uint64_t count, const char *extra);
/* res NULL: the answer has no result (it may still carry one) */
int	repl_ans_decode(const uint8_t *, size_t, uint64_t *st, uint64_t *count,
	    char *extra, size_t extralen, struct otp_result *res);
/* st; a cluster's S_TEMPFAIL gets res->retry_after. */
enum s_status repl_tempfail(struct store *, enum s_status st, struct otp_result *res);
int	repl_is_master(const struct store *);
int	repl_forward_needed(const struct store *);
int	repl_write_allowed(struct store *);
void	repl_commit_begin(struct store *);
int	repl_commit_failed(struct store *);
int64_t	repl_write(struct store *, int op, const struct otp_request *, const char *a,
	    const char *b, const uint8_t *hash, struct otp_result *, int *count,
	    char *extra, size_t extralen, uint64_t fail);

#endif
