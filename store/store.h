/*
 * store.h - one-time codes and rate limits in Berkeley DB (public interface
 * of store/).
 *
 * The database never holds an address or a code in clear: records are keyed
 * by HMAC(secret, normalised address | purpose) and hold HMACs of codes.
 * Every call takes the current time so tests can inject a clock.  All calls
 * are thread-safe (one environment, DB_THREAD).
 */
#ifndef OTPMAIL_STORE_H
#define OTPMAIL_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define OTP_CODE_MAX	12
#define OTP_ID_LEN	32	/* hex of a random 16-byte issue id */
#define STORE_APP_MAX	64	/* an app's name (its namespace) */
#define STORE_CLIENT_MAX 256	/* an opaque client identifier */

enum s_status {
	S_OK = 0,
	S_TEMPFAIL,		/* database trouble ("unavailable") */
	S_BADINPUT,		/* ("bad_request") */
	S_RATE_LIMITED,		/* res.limit names it, res.retry_after set */
	S_INVALID,		/* wrong code ("invalid_code"), attempts_left set */
	S_EXPIRED,		/* codes existed but all expired ("expired") */
	S_LOCKED,		/* address locked out ("locked"), retry_after set */
	S_NOTFOUND,		/* no outstanding code ("not_found") */
};

enum otp_alphabet {
	OTP_ALPHA_DIGITS = 0,	/* 0-9 */
	OTP_ALPHA_ALNUM,	/* unambiguous upper-case: no 0 O 1 I L */
};

struct store_params {
	const char	*dir;		/* <state_dir>/db: the BDB environment */
	const char	*secret_file;	/* 32 random bytes, mode 0600, created if absent */
	const char	*old_secret_file; /* optional previous secret (rotation), NULL */
	int		 code_length;	/* 4..12, default 6 */
	enum otp_alphabet alphabet;
	int		 ttl;		/* default 300 s */
	int		 max_ttl;	/* a request's ttl may not exceed this */
	int		 keep_codes;	/* outstanding codes per address+purpose, default 3 */
	int		 resend_cooldown;	/* s between issues per address+purpose, 30 */
	int		 max_per_address_hour;	/* 10 */
	int		 max_per_client_id_hour; /* issues per app+client_id, 0 = none */
	int		 max_per_client_minute;	/* per client uid */
	int		 max_global_per_second;	/* 0 = no cap */
	int		 max_failures_per_code;	/* 5 */
	int		 lockout_after;		/* consecutive failures before lock-out starts, 10 */
	int		 lockout_base;		/* first lock-out (s), doubling, 60 */
	int		 lockout_max;		/* longest lock-out (s), 3600 */
	int		 max_consecutive_failures;	/* hard cap, <= 100 (NIST) */
	int		 permanent_lockout;	/* 1: at the cap, locked until an admin
						 * unlocks; 0 (default): lockout_max */
	int		 durable;	/* 1: commits sync the log (default) */
	const struct store_cluster *cluster;	/* NULL: alone (repl.c) */
	void		(*log)(int prio, const char *line);	/* may be NULL */
};

/*
 * Several hosts (repl.c): site j's Replication Manager is 127.0.0.1:base_port+j
 * on every host; the caller carries those streams between hosts.  The
 * environment is encrypted with env_password and the HMAC secret is secret
 * (secret_file and old_secret_file are then unused).  store_open returns once
 * this site is master or a caught-up replica (start_timeout s at most).
 */
#define STORE_CLUSTER_MAX	9
struct store_cluster {
	int		 nsites;
	int		 self;		/* this site's index */
	int		 base_port;
	int		 priority;	/* election priority, 0 = never master */
	int		 start_timeout;
	uint8_t		 secret[32];
	char		 env_password[65];
};

struct store_cluster_status {
	int		 nsites, self, master;	/* master: index or -1 */
	int		 is_master;
	time_t		 last_election;		/* 0: none seen */
	uint64_t	 elections;		/* masters seen since start */
	uint64_t	 perm_failed;		/* commits without a quorum */
	uint64_t	 forwarded, served;	/* writes sent to / run for others */
	uint32_t	 generation;
	struct {
		int		 connected;
		int		 lsn_known;
		uint32_t	 lsn_file, lsn_offset;
	} sites[STORE_CLUSTER_MAX];
};

struct store;

/* -1 if alone. */
int		 store_cluster_status(struct store *, struct store_cluster_status *);

/* Fills every field with its default (dir and secret_file stay NULL). */
void		 store_params_defaults(struct store_params *);
struct store	*store_open(const struct store_params *, char *err, size_t errlen);
void		 store_close(struct store *);

/*
 * Every record is in the namespace of one app: codes, failure counts,
 * lock-outs and limits of one app are invisible to another.  Failures count
 * per code, per (app, address, purpose, context) and per (app, client_id):
 * no address-wide lock-out, so a stranger cannot lock the owner out.
 */
struct otp_request {
	const char	*app;		/* namespace, "" if NULL */
	const char	*client_id;	/* the end user's IP or device, NULL = none */
	const char	*addr;		/* validated by the caller */
	const char	*limit_addr;	/* key of the address limits and lock-outs
					 * (agent: addr_limit_key); NULL = addr */
	const char	*purpose;	/* "login" if NULL */
	const char	*context;	/* opaque binding, NULL = none */
	int		 ttl;		/* 0 = default */
	uint32_t	 client_uid;
	time_t		 now;
};

struct otp_result {
	char		 code[OTP_CODE_MAX + 1];	/* only from store_otp_issue */
	char		 issue_id[OTP_ID_LEN + 1];	/* names this code in later calls */
	time_t		 expires_at;
	int		 ttl;
	int		 resend_after;	/* seconds until another issue is allowed */
	const char	*limit;		/* name of the limit hit (static string) */
	int		 retry_after;	/* seconds, with S_RATE_LIMITED / S_LOCKED */
	int		 attempts_left;	/* with S_INVALID */
	/* Added by the store work: queue id of the code's mail (matched code on
	 * verify, newest code otherwise), "" if unknown; for logs. */
	char		 queue_id[33];
};

/*
 * Issuing is two steps so that a crash can never leave a stored code without
 * its mail under a cooldown, nor a mail whose code does not verify:
 *  1. store_otp_issue checks every limit, creates the code and commits it
 *     durably as "pending": it verifies, but does not start the cooldown.
 *  2. the caller composes and durably enqueues the mail, then calls
 *     store_otp_mark_sent (the cooldown starts), or store_otp_cancel if the
 *     enqueue failed (the code is removed and the limits given back).
 */
enum s_status	 store_otp_issue(struct store *, const struct otp_request *, struct otp_result *);
/*
 * Step 1 with its commit not yet on disk: the log flush is started and
 * *ticket names it.  The caller must see store_flush_wait(ticket) return 0
 * before its mail can become visible (the queue's enqueue barrier), so a
 * mail is never on disk without its code; -1 means the flush failed (then
 * cancel).  store_otp_issue is this plus the wait.
 */
enum s_status	 store_otp_issue_async(struct store *, const struct otp_request *,
		    struct otp_result *, uint64_t *ticket);
int		 store_flush_wait(struct store *, uint64_t ticket);
uint64_t	 store_flush_begin(struct store *);
enum s_status	 store_otp_mark_sent(struct store *, const struct otp_request *,
		    const char *issue_id, const char *queue_id);
enum s_status	 store_otp_cancel(struct store *, const struct otp_request *, const char *issue_id);

/* A success consumes every outstanding code of the address+purpose. */
enum s_status	 store_otp_verify(struct store *, const struct otp_request *,
		    const char *code, struct otp_result *);
/* Kills the outstanding codes; *count says how many. */
enum s_status	 store_otp_revoke(struct store *, const struct otp_request *, int *count);
/* Clears the failure count and lock-out of a context (and of the client_id
 * if given): an admin action; with permanent_lockout the cap lasts until this. */
enum s_status	 store_otp_unlock(struct store *, const struct otp_request *);
/* Queue id of the newest code's mail for an app+address+purpose. */
enum s_status	 store_otp_last_mail(struct store *, const struct otp_request *,
		    char *queue_id, size_t len);

/*
 * Idempotency keys (per app, kept 24 h, durable): begin reserves a key for a
 * request whose canonical body hashes to hash.  IDEM_NEW: go ahead, then
 * finish (with the answer to replay) or abandon; IDEM_DONE: answer holds the
 * first answer; IDEM_MISMATCH: the key was used with another body;
 * IDEM_BUSY: the first request is still running.
 *
 * prepare, called while the request's mail is on disk but not yet named
 * (the enqueue barrier), stores the answer it will give, durably.  A run
 * that crashed after it leaves a prepared record: the next begin claims it
 * for this run and answers IDEM_UNSURE with that answer; the caller looks
 * for the answer's message in the queue: there, it finishes with the
 * answer and replays it; not there (never named), it goes ahead as new.
 */
#define STORE_IDEM_KEY_MAX	128
#define STORE_IDEM_ANSWER_MAX	1024
#define STORE_IDEM_TTL		86400
/* Several hosts: a reservation of another site's run is that site's for
 * this long from its claim (IDEM_ELSEWHERE, answer = the seconds left);
 * then the owner counts as gone (crashed) and a retry anywhere claims it. */
#define STORE_IDEM_LEASE	10
enum idem_state { IDEM_NEW, IDEM_DONE, IDEM_MISMATCH, IDEM_BUSY, IDEM_FAIL, IDEM_UNSURE,
	IDEM_ELSEWHERE };
enum idem_state	 store_idem_begin(struct store *, const char *app, const char *key,
		    const uint8_t hash[32], time_t now, char *answer, size_t len);
enum s_status	 store_idem_prepare(struct store *, const char *app, const char *key,
		    time_t now, const char *answer);
/* Gives an IDEM_UNSURE key back unclaimed (the queue could not say yet
 * whether its mail was named): the next begin is IDEM_UNSURE again. */
void		 store_idem_unclaim(struct store *, const char *app, const char *key);
enum s_status	 store_idem_finish(struct store *, const char *app, const char *key,
		    time_t now, const char *answer);
void		 store_idem_abandon(struct store *, const char *app, const char *key);

/*
 * Suppression lists (suppress.c): per app, addresses that must get no mail
 * (a hard bounce, a complaint, an admin's word), keyed like the OTP records
 * (no address in clear; the stored reply has the address cut out).  ttl 0
 * keeps an entry until it is removed.  check: S_OK (in *out) or
 * S_NOTFOUND.  remove: by address, or by id (the entry's key in hex, from
 * list), only within app (NULL with an id: any app's).  list: app NULL = every app's; paging after an id.
 */
#define STORE_SUPP_REASON_MAX	64
#define STORE_SUPP_REPLY_MAX	400
#define STORE_SUPP_ID_LEN	64
struct store_supp {
	char		 id[STORE_SUPP_ID_LEN + 1];
	char		 app[STORE_APP_MAX + 1];
	char		 reason[STORE_SUPP_REASON_MAX + 1];
	char		 reply[STORE_SUPP_REPLY_MAX + 1];
	time_t		 created;
	time_t		 expires;	/* 0 = never */
};
enum s_status	 store_supp_add(struct store *, const char *app, const char *addr,
		    const char *reason, const char *reply, int ttl, time_t now,
		    struct store_supp *out);
enum s_status	 store_supp_check(struct store *, const char *app, const char *addr,
		    time_t now, struct store_supp *out);
enum s_status	 store_supp_remove(struct store *, const char *app, const char *addr,
		    const char *id, time_t now, struct store_supp *out);
enum s_status	 store_supp_list(struct store *, const char *app, const char *after,
		    time_t now, struct store_supp *out, size_t max, size_t *n, int *more);

/*
 * Database files found damaged at open (DB->verify in a forked child) and
 * moved into <state_dir>/quarantine/ (verify.c), by this start (reason says
 * what failed) or an earlier one, still in the folder (the first 32): the
 * store started with new empty ones.  Valid until store_close.
 */
#define STORE_QREASON_MAX	160
struct store_quarantine {
	char		 file[16];		/* "otp.db" */
	char		 moved_to[96];		/* "quarantine/otp.db.<UTC>.<pid>" */
	char		 reason[STORE_QREASON_MAX];	/* what failed */
	char		 lost[160];		/* what the new empty file lacks */
	time_t		 when;
};
size_t		 store_quarantined(const struct store *, const struct store_quarantine **);

/* Deletes expired records and counters; *count says how many. */
enum s_status	 store_sweep(struct store *, time_t now, size_t *count);
/* Checkpoint and log removal; call every minute or so. */
enum s_status	 store_checkpoint(struct store *);

/* Keyed pseudonym of an address for logs: 16 hex chars. */
void		 store_pseudonym(struct store *, const char *addr, char out[17]);

/* Random code of the configured shape (exposed for tests). */
int		 otp_code_generate(enum otp_alphabet, int length, char *out);
/* Normalises a code a person typed: trims spaces, upper-cases; -1 if bad. */
int		 otp_code_normalise(enum otp_alphabet, int length, const char *in, char *out);

const char	*s_status_error(enum s_status);	/* protocol error code */

#endif
