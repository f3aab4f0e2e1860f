/*
 * otpmaild.h - the interface of agent/core/, the daemon's core: the shared
 * context (struct otpmaild) every part receives, the configuration
 * (config.h), logging (log.h), metrics (metrics.h), the submission guard
 * (guard.h) and privilege dropping (privs.h); main.c wires store/, queue/,
 * dkim/ and the other agent/ folders together and owns start and stop.
 * It also carries the control protocol's handler interface: every op is one
 * entry in ctl_ops[] (agent/control/ops.c) plus its handler, which gets the
 * parsed request and returns the reply object.
 *
 * May call: everything (it is the wiring).  The other agent/ folders
 * include only this header of core's.
 */
#ifndef OTPMAIL_OTPMAILD_H
#define OTPMAIL_OTPMAILD_H

#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <jansson.h>

#include "agent/core/cluster.h"
#include "agent/core/config.h"
#include "agent/core/guard.h"
#include "agent/core/log.h"
#include "agent/core/metrics.h"
#include "agent/core/privs.h"
#include "agent/core/suppress.h"

struct store;
struct queue;
struct dkim_signer;
struct delivery;
struct otp_templates;

struct otpmaild {
	struct config		*cfg;
	struct store		*store;
	struct cluster		*cluster;	/* NULL: alone (cluster.c) */
	struct queue		*queue;
	struct dkim_signer	*dkim;
	struct delivery		*delivery;
	struct otp_templates	*templates;	/* OTP mail templates (otp_mail.c) */
	pthread_rwlock_t	 reload_lock;	/* held for reading around dkim/templates use */
	char			*state_dir;	/* absolute */
	char			*hostname;	/* effective EHLO / Message-ID name */
	time_t			 started;
	volatile sig_atomic_t	 stopping;
	/* set by main(): SMTP delivery runs in its own process (privsep.c) */
	int			 delivery_privsep;
	const char		*config_path;	/* for that process, NULL = default */
};

/* Roles, from SO_PEERCRED against the config's app_* / admin_* lists. */
#define ROLE_APP	0x01
#define ROLE_ADMIN	0x02
#define ROLE_ANY	0x04	/* any local user (ping, version) */

struct ctl_peer {
	uid_t		 uid;
	gid_t		 gid;
	pid_t		 pid;
	int		 roles;		/* ROLE_* bits this peer has */
	/* Its app (namespace): a configured app line, or "uid:N" (ops.c). */
	char		 app[CONFIG_APP_NAME_MAX + 1];
	const struct app_conf *appc;	/* NULL for an implicit app */
};

/* Sets peer->app/appc from its uid and groups; an app line gives ROLE_APP. */
void	ctl_peer_set_app(const struct config *, struct ctl_peer *, const gid_t *groups,
	    size_t ngroups);
/* idempotency_key: 0 to go on (*key set if one was given), 1 with *reply
 * (the first answer, or an error); ctl_idem_end records an ok answer. */
int	ctl_idem_begin(struct otpmaild *, const char *app, json_t *req, const char **key,
	    json_t **reply);
void	ctl_idem_end(struct otpmaild *, const char *app, const char *key, json_t *reply);
/*
 * The enqueue barrier of a request with an idempotency key: runs inner
 * (if any), then stores the answer, its "id" set to the message's, durably
 * before the mail is named, so a retry after a crash finds it (a key of
 * NULL: only inner).
 */
struct ctl_idem_barrier {
	struct otpmaild	*d;
	const char	*app, *key;
	const char	*qid;		/* the enqueue's id_out */
	json_t		*answer;
	int		(*inner)(void *);
	void		*inner_arg;
};
int	ctl_idem_barrier(void *);
/* The namespace a request acts in: the peer's app, or for an admin the
 * request's "as_app"; NULL and *err if an app asks for another's. */
const char *ctl_req_app(const struct otpmaild *, const struct ctl_peer *, json_t *req,
	    json_t **err);

/*
 * A handler returns a new reply object ({"ok":true,...} or an error from
 * reply_error); it never returns NULL.  req is the whole request object.
 */
typedef json_t *(*ctl_handler)(struct otpmaild *, const struct ctl_peer *, json_t *req);

struct ctl_op {
	const char	*name;		/* "queue.list" */
	int		 roles;		/* who may call it */
	ctl_handler	 fn;
	const char	*summary;	/* one line for help */
};

extern const struct ctl_op ctl_ops[];	/* ends with a NULL name */
const struct ctl_op *ctl_op_find(const char *name);

/* One reply builder (reply.c). */
json_t	*reply_ok(void);
json_t	*reply_error(const char *code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* bad_request naming the field: {"ok":false,"error":"bad_request","field":f,...} */
json_t	*reply_bad_field(const char *field, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* any error code naming the field (bad_address for a refused address) */
json_t	*reply_field_error(const char *code, const char *field, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
/* rate_limited / locked with "limit" and "retry_after". */
json_t	*reply_limited(const char *code, const char *limit, int retry_after, const char *detail);

/*
 * Request field access: each returns 0 and sets *out, or -1 and sets *err to
 * a bad_request reply naming the field.  Absent optional fields leave *out
 * untouched.  Strings are refused if longer than maxlen or if they hold a
 * control character (CR, LF, NUL, ...), unless allow_ctl.
 */
int	req_str(json_t *req, const char *field, int required, size_t maxlen,
	    const char **out, json_t **err);
int	req_text(json_t *req, const char *field, int required, size_t maxlen,
	    const char **out, size_t *len, json_t **err);	/* any bytes but NUL */
int	req_int(json_t *req, const char *field, int required, long min, long max,
	    long *out, json_t **err);
int	req_bool(json_t *req, const char *field, int *out, json_t **err);
/* A string or an array of strings; *out is a NULL-terminated malloc'd array
 * of borrowed pointers (free only the array). */
int	req_str_list(json_t *req, const char *field, int required, size_t maxn,
	    size_t maxlen, const char ***out, size_t *n, json_t **err);

/* The one daemon instance (for signal handlers and the log sink). */
extern struct otpmaild *otpmaild_ctx;

#endif
