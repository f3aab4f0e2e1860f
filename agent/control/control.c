/*
 * control.c - the control socket server.  The event thread accepts
 * (refusing past control_max_connections with a JSON error), writes
 * answers that did not go out at once and event streams, and closes idle
 * connections.  Each connection waits for input in the workers' epoll set
 * with EPOLLONESHOT: the request worker the kernel wakes owns the
 * connection until it lets go, reads its lines (refusing lines over
 * control_max_line and more than control_max_pipeline pending requests),
 * answers them in order and arms the connection again.  So a request costs
 * one wake-up, not a hand-off from a reading thread to a worker.
 * Connections are counted per uid: peers with no role get a few (together
 * a small share), each app uid its own share, and the last slots are kept
 * for admins.
 */
#include <sys/epoll.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/control/control.h"
#include "agent/core/otpmaild.h"
#include "agent/events/events.h"

#define CTL_READ_CHUNK	65536
#define CTL_MAX_GROUPS	256
#define CTL_OUT_HIGH	(4 * 1024 * 1024)	/* stop reading a peer that does not read */
#define CTL_ANON_LINE	8192		/* line limit for peers with no role */
#define CTL_MAX_TOKENS	50000		/* JSON values in one request */

struct ctl_req {
	struct ctl_req	*next;
	size_t		 len;
	char		 line[];
};

struct ctl_conn {
	int		 fd;
	struct ctl_peer	 peer;
	/* the owning worker only */
	char		*in;
	size_t		 inlen, incap;
	/* the event thread only */
	int		 outwatch;	/* registered in ctl->efd for EPOLLOUT */
	int		 counted;	/* holds a slot in nconns and the uid counts */
	/* under mu */
	pthread_mutex_t	 mu;
	time_t		 last_active;
	struct ctl_req	*head, *tail;
	size_t		 npending;
	/*
	 * armed: waiting in ctl->wfd (EPOLLONESHOT); cleared by the worker the
	 * event goes to.  owned: that worker has it.  Only a connection that
	 * is neither can be torn down, so no worker holds a stale pointer.
	 */
	int		 armed;
	int		 owned;
	int		 kill;		/* tear down as soon as no worker has it */
	int		 closing;	/* close once the output is flushed */
	int		 dead;		/* torn down: free when no list names it */
	json_t		*final;		/* error to send after the pending answers */
	int		 subscriber;	/* gets the live event stream (events.tail) */
	int		 draining;	/* answered and shut down for writing: discard input */
	unsigned	 dirty_refs;	/* entries in the dirty list, under ctl->dmu */
	struct ctl_conn	*sub_next;
	/* events.subscribe, under ctl_sub_mu (and mu) */
	int		 ev_sub;	/* on ctl->ev_subs */
	unsigned	 ev_mask;	/* 1 << enum event_type */
	char		 ev_app[CONFIG_APP_NAME_MAX + 16];	/* "" = every app */
	uint64_t	 ev_last;	/* newest event id queued to it */
	struct ctl_conn	*ev_next;
	char		*out;
	size_t		 outlen, outcap;
	struct ctl_conn	*all_next, *all_prev;
};

struct ctl_acl {
	uid_t		*app_uids, *admin_uids;
	gid_t		*app_gids, *admin_gids;
	size_t		 napp_uids, nadmin_uids, napp_gids, nadmin_gids;
	uid_t		 self;
};

struct ctl_uid_count {
	uid_t		 uid;
	int		 n;
};

/* At most one log line a second for a kind of refusal, with the count of
 * those not logged since (any thread). */
struct ctl_log_limit {
	_Atomic time_t	 last;
	atomic_uint	 quiet;
};

/* 1 if this one is logged (*quiet: how many were not, since), else 0. */
static int
ctl_log_limit_take(struct ctl_log_limit *l, unsigned *quiet)
{
	time_t now = time(NULL), was = atomic_load(&l->last);

	if (was == now || !atomic_compare_exchange_strong(&l->last, &was, now)) {
		atomic_fetch_add(&l->quiet, 1);
		return 0;
	}
	*quiet = atomic_exchange(&l->quiet, 0);
	return 1;
}

struct control {
	struct otpmaild	*d;
	struct ctl_acl	*acl;
	int		 lfd, efd, evfd;
	int		 wfd;		/* connections waiting for input (workers) */
	int		 stopfd;		/* in wfd: readable once stopping */
	int		 spare;		/* kept open to refuse clients when out of fds */
	time_t		 last_fd_warn;
	char		*path;
	pthread_t	 thread;
	pthread_t	*workers;
	int		 nworkers;
	int		 running;
	atomic_int	 stopping;
	size_t		 nconns;
	size_t		 nanon;		/* connections of peers with no role */
	struct ctl_uid_count *uids;	/* open connections per uid (event thread) */
	size_t		 nuids;
	struct ctl_log_limit refuse_log;	/* control_refused lines */
	struct ctl_conn	*all;
	/* connections with output to flush, signalled through evfd */
	pthread_mutex_t	 dmu;
	struct ctl_conn	**dirty;
	size_t		 ndirty, capdirty;
	struct ctl_conn	*subs;		/* events.tail subscribers, under ctl_sub_mu */
	struct ctl_conn	*ev_subs;	/* events.subscribe subscribers, under ctl_sub_mu */
};

#define CTL_TAIL_BACKLOG	(1024 * 1024)	/* a slow subscriber loses events */
#define CTL_REPLAY_WAIT		10	/* s an events.subscribe replay waits for its reader */

/* Guards ctl_tap_owner and every subscriber list: log lines come from any thread. */
static pthread_mutex_t ctl_sub_mu = PTHREAD_MUTEX_INITIALIZER;
static struct control *ctl_tap_owner;

static void	*ctl_event_loop(void *);
static void	*ctl_worker(void *);
static void	 ctl_conn_close(struct control *, struct ctl_conn *);
static void	 ctl_conn_kill(struct control *, struct ctl_conn *);
static void	 ctl_conn_uncount(struct control *, struct ctl_conn *);
static void	 ctl_conn_flush(struct control *, struct ctl_conn *);
static json_t	*ctl_events_subscribe(struct control *, struct ctl_conn *, json_t *reply,
		    json_t *params);
static void	 ctl_events_unlink(struct control *, struct ctl_conn *);

/* ---- access ---------------------------------------------------------- */

static void
ctl_acl_add_ids(char **names, int groups, void **arr, size_t *n)
{
	size_t i;
	char *end;
	unsigned long id;

	for (i = 0; names && names[i]; i++) {
		id = strtoul(names[i], &end, 10);
		if (*end != '\0') {
			if (groups) {
				struct group *g = getgrnam(names[i]);
				if (g == NULL)
					continue;
				id = g->gr_gid;
			} else {
				struct passwd *p = getpwnam(names[i]);
				if (p == NULL)
					continue;
				id = p->pw_uid;
			}
		}
		*arr = realloc(*arr, (*n + 1) * sizeof(uid_t));
		if (*arr == NULL)
			abort();
		((uid_t *)*arr)[(*n)++] = (uid_t)id;
	}
}

struct ctl_acl *
ctl_acl_new(const struct config *c, uid_t self)
{
	struct ctl_acl *a = calloc(1, sizeof(*a));

	if (a == NULL)
		abort();
	a->self = self;
	ctl_acl_add_ids(c->app_users, 0, (void **)&a->app_uids, &a->napp_uids);
	ctl_acl_add_ids(c->admin_users, 0, (void **)&a->admin_uids, &a->nadmin_uids);
	ctl_acl_add_ids(c->app_groups, 1, (void **)&a->app_gids, &a->napp_gids);
	ctl_acl_add_ids(c->admin_groups, 1, (void **)&a->admin_gids, &a->nadmin_gids);
	return a;
}

void
ctl_acl_free(struct ctl_acl *a)
{
	if (a == NULL)
		return;
	free(a->app_uids);
	free(a->admin_uids);
	free(a->app_gids);
	free(a->admin_gids);
	free(a);
}

static int
ctl_id_in(const uid_t *ids, size_t n, uid_t id)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (ids[i] == id)
			return 1;
	return 0;
}

static int
ctl_any_group(const gid_t *list, size_t n, const gid_t *groups, size_t ng)
{
	size_t i;

	for (i = 0; i < ng; i++)
		if (ctl_id_in(list, n, groups[i]))
			return 1;
	return 0;
}

int
ctl_acl_roles(const struct ctl_acl *a, uid_t uid, const gid_t *groups, size_t ng)
{
	int roles = ROLE_ANY;

	if (uid == 0 || uid == a->self ||
	    ctl_id_in(a->admin_uids, a->nadmin_uids, uid) ||
	    ctl_any_group(a->admin_gids, a->nadmin_gids, groups, ng))
		roles |= ROLE_ADMIN | ROLE_APP;
	if (ctl_id_in(a->app_uids, a->napp_uids, uid) ||
	    ctl_any_group(a->app_gids, a->napp_gids, groups, ng))
		roles |= ROLE_APP;
	return roles;
}

/* Primary and supplementary groups of a peer process, from /proc. */
static size_t
ctl_peer_groups(pid_t pid, gid_t primary, gid_t *out, size_t max)
{
	char path[64], line[4096], *p, *end;
	size_t n = 0;
	FILE *f;

	out[n++] = primary;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return n;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, "Groups:", 7) != 0)
			continue;
		for (p = line + 7; n < max; p = end) {
			unsigned long g = strtoul(p, &end, 10);
			if (end == p)
				break;
			out[n++] = (gid_t)g;
		}
		break;
	}
	fclose(f);
	return n;
}

/* ---- connection shares ------------------------------------------------ */

static int
ctl_is_anon(const struct ctl_peer *p)
{
	return (p->roles & (ROLE_APP | ROLE_ADMIN)) == 0;
}

/* The count of uid's open connections (event thread). */
static int *
ctl_uid_slot(struct control *ctl, uid_t uid, int add)
{
	size_t i;

	for (i = 0; i < ctl->nuids; i++)
		if (ctl->uids[i].uid == uid)
			return &ctl->uids[i].n;
	if (!add)
		return NULL;
	ctl->uids = realloc(ctl->uids, (ctl->nuids + 1) * sizeof(*ctl->uids));
	if (ctl->uids == NULL)
		abort();
	ctl->uids[ctl->nuids].uid = uid;
	ctl->uids[ctl->nuids].n = 0;
	return &ctl->uids[ctl->nuids++].n;
}

/* A connection of p closed; the table keeps only uids with connections. */
static void
ctl_uid_put(struct control *ctl, const struct ctl_peer *p)
{
	size_t i;

	if (ctl_is_anon(p))
		ctl->nanon--;
	for (i = 0; i < ctl->nuids; i++)
		if (ctl->uids[i].uid == p->uid) {
			if (--ctl->uids[i].n <= 0)
				ctl->uids[i] = ctl->uids[--ctl->nuids];
			return;
		}
}

/*
 * May this peer open one more connection?  Returns NULL, or the name of
 * the limit in the way with a sentence in detail.  Admins may use every
 * slot; apps all but control_admin_reserve, up to their own share; peers
 * with no role (who may only ping) a few each and never more than half
 * of what apps may use, so they can never starve an app or an admin.
 */
static const char *
ctl_admit(struct control *ctl, const struct ctl_peer *p, char *detail, size_t len)
{
	const struct config *cfg = ctl->d->cfg;
	size_t max = (size_t)cfg->control_max_connections;
	size_t shared = max - (size_t)cfg->control_admin_reserve;
	int *mine = ctl_uid_slot(ctl, p->uid, 0), n = mine ? *mine : 0;

	if (p->roles & ROLE_ADMIN) {
		if (ctl->nconns < max)
			return NULL;
		snprintf(detail, len, "too many connections (control_max_connections)");
		return "control_max_connections";
	}
	if (ctl->nconns >= shared) {
		snprintf(detail, len, "too many connections (control_max_connections; "
		    "the last %d are kept for admins)", cfg->control_admin_reserve);
		return "control_max_connections";
	}
	if (p->roles & ROLE_APP) {
		if (n < cfg->control_max_connections_per_uid)
			return NULL;
		snprintf(detail, len, "too many connections from uid %u "
		    "(control_max_connections_per_uid)", (unsigned)p->uid);
		return "control_max_connections_per_uid";
	}
	if (n >= cfg->control_anon_max_connections_per_uid) {
		snprintf(detail, len, "too many connections from uid %u, which has no "
		    "role (control_anon_max_connections_per_uid)", (unsigned)p->uid);
		return "control_anon_max_connections_per_uid";
	}
	if (ctl->nanon >= (size_t)cfg->control_anon_max_connections ||
	    ctl->nanon >= shared / 2) {
		snprintf(detail, len, "too many connections from users with no role "
		    "(control_anon_max_connections)");
		return "control_anon_max_connections";
	}
	return NULL;
}

/* Answers a refused client and logs it, at most once a second. */
static void
ctl_refuse(struct control *ctl, int fd, const struct ctl_peer *p, const char *limit,
    const char *detail)
{
	json_t *r = reply_limited("unavailable", limit, 1, detail);
	char *s = json_dumps(r, JSON_COMPACT | JSON_ENSURE_ASCII);
	unsigned quiet;

	if (s != NULL) {
		size_t l = strlen(s);
		s[l] = '\n';	/* json_dumps leaves room: replace the NUL */
		/* best effort: the client may have left already */
		(void)!send(fd, s, l + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	free(s);
	json_decref(r);
	close(fd);
	if (!ctl_log_limit_take(&ctl->refuse_log, &quiet))
		return;
	log_msg(LOG_WARNING, "event=control_refused reason=%s uid=%u role=%s "
	    "connections=%zu not_logged=%u", limit, (unsigned)p->uid,
	    p->roles & ROLE_ADMIN ? "admin" : p->roles & ROLE_APP ? "app" : "none",
	    ctl->nconns, quiet);
}

/* ---- dispatch -------------------------------------------------------- */

/*
 * Counts the values a JSON text would make (separators and openers outside
 * strings), so a line of "[1,1,1,..." is refused before jansson spends
 * tens of bytes on each value.
 */
static size_t
ctl_json_tokens(const char *p, size_t len)
{
	size_t i, n = 0;
	int in_str = 0;

	for (i = 0; i < len; i++) {
		char ch = p[i];
		if (in_str) {
			if (ch == '\\')
				i++;
			else if (ch == '"')
				in_str = 0;
		} else if (ch == '"')
			in_str = 1;
		else if (ch == ',' || ch == '[' || ch == '{' || ch == ':')
			n++;
	}
	return n;
}

/*
 * A peer with no role may ask for every op it may not use, as fast as it
 * can write: at most one line a second, with the count of those not logged.
 */
static void
ctl_log_forbidden(const struct ctl_op *op, const struct ctl_peer *peer)
{
	static struct ctl_log_limit limit;
	unsigned quiet;

	if (ctl_log_limit_take(&limit, &quiet))
		log_msg(LOG_NOTICE, "event=forbidden op=%s uid=%u pid=%d not_logged=%u",
		    op->name, (unsigned)peer->uid, (int)peer->pid, quiet);
}

json_t *
ctl_dispatch(struct otpmaild *d, const struct ctl_peer *peer, const char *line, size_t len)
{
	const struct ctl_op *op = NULL;
	json_error_t jerr;
	json_t *req, *reply, *id = NULL, *opv;

	if (ctl_json_tokens(line, len) > CTL_MAX_TOKENS) {
		metrics_request("invalid", "bad_request");
		return reply_bad_field("", "a request holds more than %d JSON values",
		    CTL_MAX_TOKENS);
	}
	req = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
	if (req == NULL) {
		metrics_request("invalid", "bad_request");
		return reply_bad_field("", "malformed JSON at column %d: %s",
		    jerr.column, jerr.text);
	}
	if (!json_is_object(req)) {
		json_decref(req);
		metrics_request("invalid", "bad_request");
		return reply_bad_field("", "a request must be a JSON object");
	}
	/* "req_id" is the client's tag; "id" is taken: it names queue entries */
	id = json_object_get(req, "req_id");
	if (id != NULL && (json_is_object(id) || json_is_array(id))) {
		reply = reply_bad_field("req_id", "\"req_id\" must be a string or a number");
		id = NULL;
		goto done;
	}
	opv = json_object_get(req, "op");
	if (opv == NULL) {
		reply = reply_bad_field("op", "missing field \"op\"");
		goto done;
	}
	if (!json_is_string(opv)) {
		reply = reply_bad_field("op", "field \"op\" must be a string");
		goto done;
	}
	if ((op = ctl_op_find(json_string_value(opv))) == NULL) {
		reply = reply_bad_field("op", "unknown op \"%.64s\"", json_string_value(opv));
		goto done;
	}
	if ((op->roles & peer->roles) == 0) {
		reply = reply_error("forbidden", "uid %u may not use \"%s\"",
		    (unsigned)peer->uid, op->name);
		ctl_log_forbidden(op, peer);
		goto done;
	}
	events_request_begin();
	reply = op->fn(d, peer, req);
	if (reply == NULL)
		reply = reply_error("unavailable", "internal error");
	events_request_end(json_string_value(json_object_get(req, "as_app")) &&
	    (peer->roles & ROLE_ADMIN) ? json_string_value(json_object_get(req, "as_app")) :
	    peer->app, req, reply);
done:
	metrics_request(op != NULL ? op->name : "invalid",
	    json_is_true(json_object_get(reply, "ok")) ? "ok" :
	    json_string_value(json_object_get(reply, "error")) ?: "error");
	metrics_otp(op != NULL ? op->name : "invalid",
	    json_is_true(json_object_get(reply, "ok")) ? "ok" :
	    json_string_value(json_object_get(reply, "error")) ?: "error",
	    json_string_value(json_object_get(reply, "limit")));
	if (id != NULL)
		json_object_set(reply, "req_id", id);
	json_decref(req);
	return reply;
}

/* ---- connections ----------------------------------------------------- */

static void
ctl_out_append(struct ctl_conn *c, const char *s, size_t len)
{
	if (c->outlen + len > c->outcap) {
		size_t cap = c->outcap ? c->outcap : 4096;
		while (cap < c->outlen + len)
			cap *= 2;
		if ((c->out = realloc(c->out, cap)) == NULL)
			abort();
		c->outcap = cap;
	}
	memcpy(c->out + c->outlen, s, len);
	c->outlen += len;
}

/* Appends one reply object as a line (caller holds c->mu). */
static void
ctl_out_reply(struct ctl_conn *c, json_t *reply)
{
	char *s = json_dumps(reply, JSON_COMPACT | JSON_ENSURE_ASCII);

	if (s == NULL)
		s = strdup("{\"ok\":false,\"error\":\"unavailable\",\"detail\":\"reply encoding failed\"}");
	if (s == NULL)
		abort();
	ctl_out_append(c, s, strlen(s));
	ctl_out_append(c, "\n", 1);
	free(s);
}

/*
 * Sends what c has to say (caller holds c->mu and c is not dead, so its
 * socket stays open; the event thread, or a worker for its answer): 1 if
 * all of it went out, 0 if the peer's buffer is full, -1 on an error.
 */
static int
ctl_out_send(struct ctl_conn *c)
{
	size_t off = 0;
	ssize_t n;
	int r = 1;

	while (off < c->outlen) {
		n = send(c->fd, c->out + off, c->outlen - off, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n == -1 && errno == EAGAIN ? 0 : -1;
			break;
		}
		off += (size_t)n;
	}
	if (off > 0)
		memmove(c->out, c->out + off, c->outlen - off);
	c->outlen -= off;
	return r;
}

/* Tells the event thread that c has output (from a worker). */
static void
ctl_mark_dirty(struct control *ctl, struct ctl_conn *c)
{
	uint64_t one = 1;

	pthread_mutex_lock(&ctl->dmu);
	if (ctl->ndirty == ctl->capdirty) {
		ctl->capdirty = ctl->capdirty ? ctl->capdirty * 2 : 64;
		ctl->dirty = realloc(ctl->dirty, ctl->capdirty * sizeof(*ctl->dirty));
		if (ctl->dirty == NULL)
			abort();
	}
	ctl->dirty[ctl->ndirty++] = c;
	c->dirty_refs++;
	pthread_mutex_unlock(&ctl->dmu);
	if (write(ctl->evfd, &one, sizeof(one)) == -1 && errno != EAGAIN)
		log_msg(LOG_ERR, "event=control_error detail=\"eventfd write: %s\"",
		    strerror(errno));
}

/* Arms c for its next input (c->mu held; c neither armed nor owned). */
static void
ctl_arm(struct control *ctl, struct ctl_conn *c)
{
	struct epoll_event ev;

	ev.events = EPOLLIN | EPOLLONESHOT;
	ev.data.ptr = c;
	c->armed = 1;
	if (epoll_ctl(ctl->wfd, EPOLL_CTL_MOD, c->fd, &ev) == -1) {
		log_msg(LOG_ERR, "event=control_error detail=\"epoll_ctl: %s\"",
		    strerror(errno));
		c->armed = 0;
		c->kill = 1;
	}
}

/*
 * Sends what c has now (c->mu held): a peer that took some is active; one
 * that is gone marks c for teardown.  Returns -1 if the peer is gone.
 */
static int
ctl_send_now(struct ctl_conn *c)
{
	size_t before = c->outlen;

	if (before == 0 || c->kill)
		return c->kill ? -1 : 0;
	if (ctl_out_send(c) == -1) {
		c->outlen = 0;
		c->kill = 1;
		return -1;
	}
	if (c->outlen < before)
		c->last_active = time(NULL);
	return 0;
}

/*
 * What c waits for next, once no worker has it (c->mu held; c not dead):
 * the final error after the last answer, what can be sent now, then the
 * next input, or the lingering close.  *out: output is left for the event
 * thread's EPOLLOUT watch.  Returns 1 if c is to be torn down.
 */
static int
ctl_settle(struct control *ctl, struct ctl_conn *c, int *out)
{
	*out = 0;
	if (c->kill)
		return 1;
	if (c->closing && c->head == NULL && c->final != NULL) {
		ctl_out_reply(c, c->final);
		json_decref(c->final);
		c->final = NULL;
	}
	if (ctl_send_now(c) == -1)
		return 1;
	if (c->outlen > 0) {
		*out = 1;
		/* a peer that does not read is not read either */
		if (!c->closing && !c->armed && c->outlen < CTL_OUT_HIGH)
			ctl_arm(ctl, c);
		return c->kill;
	}
	if (c->closing && !c->draining) {
		/*
		 * A lingering close: shut our side, then read and discard
		 * until the peer closes (or the idle sweep gives up), so the
		 * error we just sent is not destroyed by a reset.
		 */
		if (shutdown(c->fd, SHUT_WR) == -1)
			return c->kill = 1;
		c->draining = 1;
		c->last_active = time(NULL);
	}
	if (!c->armed)
		ctl_arm(ctl, c);
	return c->kill;
}

/* Answers c's pending requests in order (the worker that owns c). */
static void
ctl_conn_run(struct control *ctl, struct ctl_conn *c)
{
	struct ctl_req *r;
	json_t *reply;
	int backlog;

	for (;;) {
		pthread_mutex_lock(&c->mu);
		/* Stopping: the request in hand is finished, the rest dropped. */
		if ((r = c->head) == NULL || c->kill || ctl->stopping) {
			pthread_mutex_unlock(&c->mu);
			return;
		}
		c->head = r->next;
		if (c->head == NULL)
			c->tail = NULL;
		c->npending--;
		pthread_mutex_unlock(&c->mu);

		reply = ctl_dispatch(ctl->d, &c->peer, r->line, r->len);
		free(r);
		if (json_object_get(reply, "_events") != NULL) {
			json_t *params = json_incref(json_object_get(reply, "_events"));

			json_object_del(reply, "_events");
			/* answers, replays and registers; NULL once the answer is out */
			reply = ctl_events_subscribe(ctl, c, reply, params);
			json_decref(params);
		} else if (json_is_true(json_object_get(reply, "_subscribe"))) {
			json_object_del(reply, "_subscribe");
			pthread_mutex_lock(&ctl_sub_mu);
			pthread_mutex_lock(&c->mu);
			if (!c->subscriber) {
				c->subscriber = 1;
				c->sub_next = ctl->subs;
				ctl->subs = c;
			}
			pthread_mutex_unlock(&c->mu);
			pthread_mutex_unlock(&ctl_sub_mu);
		}

		pthread_mutex_lock(&c->mu);
		if (reply != NULL && !c->kill) {
			/* behind older output (a slow reader, an event stream):
			 * the event thread sends it in order */
			backlog = c->outlen > 0;
			ctl_out_reply(c, reply);
			if (!backlog)
				(void)ctl_send_now(c);	/* gone: c->kill */
		}
		pthread_mutex_unlock(&c->mu);
		json_decref(reply);
	}
}

/* Queues one complete line of c (its worker). */
static void
ctl_conn_line(struct control *ctl, struct ctl_conn *c, const char *line, size_t len)
{
	struct ctl_req *r;
	json_t *err;

	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
		len--;
	if (len == 0)
		return;		/* blank lines are keep-alives */
	pthread_mutex_lock(&c->mu);
	if (c->closing) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (c->npending >= (size_t)ctl->d->cfg->control_max_pipeline) {
		err = reply_error("bad_request", "more than %d pipelined requests "
		    "waiting; closing", ctl->d->cfg->control_max_pipeline);
		c->final = err;
		c->closing = 1;
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if ((r = malloc(sizeof(*r) + len + 1)) == NULL)
		abort();
	r->next = NULL;
	r->len = len;
	memcpy(r->line, line, len);
	r->line[len] = '\0';
	if (c->tail)
		c->tail->next = r;
	else
		c->head = r;
	c->tail = r;
	c->npending++;
	c->last_active = time(NULL);
	pthread_mutex_unlock(&c->mu);
}

static void
ctl_conn_error_close(struct ctl_conn *c, const char *code, const char *detail)
{
	json_t *err = reply_error(code, "%s", detail);

	pthread_mutex_lock(&c->mu);
	/* Requests already queued still get their answers first. */
	if (!c->closing) {
		c->closing = 1;
		c->final = err;
		err = NULL;
	}
	pthread_mutex_unlock(&c->mu);
	json_decref(err);
}

/*
 * End of input, the peer still reading (socat, nc -N, shutdown(SHUT_WR),
 * Node's end()): a last line without its newline is a request like any
 * other; every request gets its answer, in order, and then we close.
 */
static void
ctl_conn_eof(struct control *ctl, struct ctl_conn *c, size_t max)
{
	if (c->inlen > max)
		ctl_conn_error_close(c, "bad_request",
		    "request line longer than control_max_line; closing");
	else if (c->inlen > 0)
		ctl_conn_line(ctl, c, c->in, c->inlen);
	c->inlen = 0;
	pthread_mutex_lock(&c->mu);
	c->closing = 1;		/* read no more; close once all is answered */
	pthread_mutex_unlock(&c->mu);
}

/*
 * Reads what c sent and queues its complete lines (the worker that owns
 * c).  hup: the peer closed both ways, so nothing we write can reach it.
 * Returns -1 if c is to be closed now.
 */
static int
ctl_conn_read(struct control *ctl, struct ctl_conn *c, int hup)
{
	size_t max = ctl->d->cfg->control_max_line, start, i, outlen, want;
	int closing, busy = 0;
	ssize_t n;

	/* A peer with no role may only ping: it gets no room for big requests. */
	if ((c->peer.roles & (ROLE_APP | ROLE_ADMIN)) == 0 && max > CTL_ANON_LINE)
		max = CTL_ANON_LINE;

	for (;;) {
		if (c->incap - c->inlen < CTL_READ_CHUNK) {
			size_t cap = c->incap ? c->incap * 2 : CTL_READ_CHUNK * 2;
			if (cap > max + CTL_READ_CHUNK * 2)
				cap = max + CTL_READ_CHUNK * 2;
			if (cap > c->incap) {
				if ((c->in = realloc(c->in, cap)) == NULL)
					abort();
				c->incap = cap;
			}
		}
		want = c->incap - c->inlen;
		n = read(c->fd, c->in + c->inlen, want);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			break;
		if (n == 0 && !hup) {
			ctl_conn_eof(ctl, c, max);
			return 0;
		}
		if (n <= 0)
			return -1;
		/* A peer with no role is busy only when it completes a request
		 * (ctl_conn_line): dribbling bytes keeps no slot. */
		busy = !ctl_is_anon(&c->peer);
		/* Split complete lines; scan only the new bytes. */
		start = 0;
		for (i = c->inlen; i < c->inlen + (size_t)n; i++) {
			if (c->in[i] != '\n')
				continue;
			if (i - start > max) {
				ctl_conn_error_close(c, "bad_request",
				    "request line longer than control_max_line; closing");
				goto out;
			}
			ctl_conn_line(ctl, c, c->in + start, i - start);
			start = i + 1;
		}
		c->inlen += n;
		memmove(c->in, c->in + start, c->inlen - start);
		c->inlen -= start;
		if (c->inlen > max) {
			ctl_conn_error_close(c, "bad_request",
			    "request line longer than control_max_line; closing");
			goto out;
		}
		pthread_mutex_lock(&c->mu);
		closing = c->closing;
		outlen = c->outlen;
		if (busy)
			c->last_active = time(NULL);
		busy = 0;
		pthread_mutex_unlock(&c->mu);
		if (closing)
			goto out;
		if (outlen >= CTL_OUT_HIGH)
			break;		/* the peer does not read: stop reading it */
		if (c->incap - c->inlen < CTL_READ_CHUNK && c->incap >= max + CTL_READ_CHUNK * 2)
			break;
		/* A short read emptied the socket's queue: epoll (level-
		 * triggered) says when more comes, without the read that
		 * would only find EAGAIN (one system call per request). */
		if ((size_t)n < want)
			break;
	}
	return 0;
out:
	/* Read no more; answer what is pending, then the error, then close. */
	c->inlen = 0;
	return 0;
}

/* A worker's turn with c: read, answer, or discard after the last answer. */
static void
ctl_conn_serve(struct control *ctl, struct ctl_conn *c, uint32_t events)
{
	char junk[4096];
	int draining, gone = 0;
	ssize_t n;

	pthread_mutex_lock(&c->mu);
	draining = c->draining;
	gone = c->kill;
	pthread_mutex_unlock(&c->mu);
	if (gone)
		return;
	if (draining) {
		/* The peer still sends; swallow it so close sends no RST over
		 * our last answer.  EOF or error: done. */
		while ((n = read(c->fd, junk, sizeof(junk))) > 0)
			;
		gone = n == 0 || errno != EAGAIN;
	} else if (ctl_conn_read(ctl, c, (events & (EPOLLHUP | EPOLLERR)) != 0) == -1)
		gone = 1;
	else
		ctl_conn_run(ctl, c);
	if (gone) {
		pthread_mutex_lock(&c->mu);
		c->kill = 1;
		pthread_mutex_unlock(&c->mu);
	}
}

static void *
ctl_worker(void *arg)
{
	struct control *ctl = arg;
	struct epoll_event ev;
	struct ctl_conn *c;
	int n, down, out;

	for (;;) {
		n = epoll_wait(ctl->wfd, &ev, 1, -1);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			log_msg(LOG_ERR, "event=control_error detail=\"epoll_wait: %s\"",
			    strerror(errno));
			return NULL;
		}
		if (n == 0)
			continue;
		if (ev.data.ptr == &ctl->stopfd || ctl->stopping)
			return NULL;
		c = ev.data.ptr;
		pthread_mutex_lock(&c->mu);
		c->armed = 0;
		c->owned = 1;
		pthread_mutex_unlock(&c->mu);

		ctl_conn_serve(ctl, c, ev.events);

		pthread_mutex_lock(&c->mu);
		c->owned = 0;
		down = ctl_settle(ctl, c, &out);
		/* Marked before the lock goes: the event thread cannot tear c
		 * down (and free it) while the mark is in its list. */
		if (down || out)
			ctl_mark_dirty(ctl, c);
		pthread_mutex_unlock(&c->mu);
	}
}

/* Watches c for room to write (the event thread). */
static void
ctl_out_watch(struct control *ctl, struct ctl_conn *c, int on)
{
	struct epoll_event ev;

	if (on == c->outwatch)
		return;
	ev.events = EPOLLOUT;
	ev.data.ptr = c;
	if (epoll_ctl(ctl->efd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, c->fd, &ev) == 0 || !on)
		c->outwatch = on;
}

/*
 * Writes what c has to say (the event thread: on EPOLLOUT, or marked by a
 * worker or an event stream).  A connection no worker has is settled here;
 * one its worker has is settled by the worker when it lets go.
 */
static void
ctl_conn_flush(struct control *ctl, struct ctl_conn *c)
{
	int out = 0, down = 0;

	pthread_mutex_lock(&c->mu);
	if (c->dead) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (c->owned) {
		(void)ctl_send_now(c);		/* its worker sees c->kill */
		out = c->outlen > 0;
	} else if ((down = ctl_settle(ctl, c, &out)) && c->armed) {
		/* A worker may have its event in hand already: have it come
		 * (the socket reads EOF) and let go; then it is torn down. */
		c->kill = 1;
		shutdown(c->fd, SHUT_RDWR);
		down = 0;
	}
	pthread_mutex_unlock(&c->mu);
	ctl_out_watch(ctl, c, out && !down);
	if (down)
		ctl_conn_close(ctl, c);
}

static void
ctl_conn_free(struct ctl_conn *c)
{
	struct ctl_req *r;

	while ((r = c->head) != NULL) {
		c->head = r->next;
		free(r);
	}
	pthread_mutex_destroy(&c->mu);
	json_decref(c->final);
	free(c->in);
	free(c->out);
	free(c);
}

/*
 * Event thread: forget c (no worker has it and none can get it: neither
 * owned nor armed); free it now, or once no dirty mark names it.
 */
static void
ctl_conn_close(struct control *ctl, struct ctl_conn *c)
{
	unsigned refs;

	pthread_mutex_lock(&c->mu);
	if (c->dead) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	c->dead = 1;
	pthread_mutex_unlock(&c->mu);
	if (c->subscriber) {
		struct ctl_conn **pp;
		pthread_mutex_lock(&ctl_sub_mu);
		for (pp = &ctl->subs; *pp != NULL; pp = &(*pp)->sub_next)
			if (*pp == c) {
				*pp = c->sub_next;
				break;
			}
		pthread_mutex_unlock(&ctl_sub_mu);
	}
	pthread_mutex_lock(&ctl_sub_mu);
	ctl_events_unlink(ctl, c);
	pthread_mutex_unlock(&ctl_sub_mu);
	ctl_out_watch(ctl, c, 0);
	epoll_ctl(ctl->wfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	ctl_conn_uncount(ctl, c);
	if (c->all_prev)
		c->all_prev->all_next = c->all_next;
	else
		ctl->all = c->all_next;
	if (c->all_next)
		c->all_next->all_prev = c->all_prev;
	c->all_next = c->all_prev = NULL;
	pthread_mutex_lock(&ctl->dmu);
	refs = c->dirty_refs;
	pthread_mutex_unlock(&ctl->dmu);
	if (refs == 0)
		ctl_conn_free(c);
	/* else: freed in ctl_drain_dirty once the list lets go */
}

/* Event thread: c's slot is free (its peer is gone, or c is closed). */
static void
ctl_conn_uncount(struct control *ctl, struct ctl_conn *c)
{
	if (!c->counted)
		return;
	c->counted = 0;
	ctl->nconns--;
	ctl_uid_put(ctl, &c->peer);
}

/*
 * Event thread, at a limit: frees the slots of connections whose peer has
 * closed (the socket hangs up) but whose worker has not yet let go, so a
 * client that closes and connects again is not refused for its own
 * closed connection.  Only for peers with a role: one poll over every
 * connection is too much to spend on each refusal of a stranger.
 * Returns how many slots it freed.
 */
static int
ctl_reap_gone(struct control *ctl)
{
	struct ctl_conn **cs, *c;
	struct pollfd *pfd;
	size_t n = 0, i;
	int freed = 0;

	if (ctl->nconns == 0)
		return 0;
	if ((pfd = calloc(ctl->nconns, sizeof(*pfd))) == NULL ||
	    (cs = calloc(ctl->nconns, sizeof(*cs))) == NULL) {
		free(pfd);
		return 0;
	}
	for (c = ctl->all; c != NULL && n < ctl->nconns; c = c->all_next) {
		if (!c->counted)
			continue;
		pfd[n].fd = c->fd;
		pfd[n].events = 0;	/* POLLHUP and POLLERR come anyway */
		cs[n++] = c;
	}
	if (poll(pfd, n, 0) > 0)
		for (i = 0; i < n; i++)
			if (pfd[i].revents & (POLLHUP | POLLERR)) {
				ctl_conn_uncount(ctl, cs[i]);
				ctl_conn_kill(ctl, cs[i]);	/* may free it */
				freed++;
			}
	free(pfd);
	free(cs);
	return freed;
}

/* Event thread: close c now if no worker can have it, else as soon as its
 * worker lets go (an armed one is woken by the shutdown). */
static void
ctl_conn_kill(struct control *ctl, struct ctl_conn *c)
{
	int now;

	pthread_mutex_lock(&c->mu);
	c->kill = 1;
	now = !c->owned && !c->armed && !c->dead;
	if (c->armed)
		shutdown(c->fd, SHUT_RDWR);
	pthread_mutex_unlock(&c->mu);
	if (now)
		ctl_conn_close(ctl, c);
}

static void
ctl_accept(struct control *ctl)
{
	struct ctl_peer peer;
	struct epoll_event ev;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	gid_t groups[CTL_MAX_GROUPS];
	char detail[256];
	const char *limit;
	struct ctl_conn *c;
	size_t ng;
	int fd;

	for (;;) {
		fd = accept4(ctl->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1 && (errno == EMFILE || errno == ENFILE) && ctl->spare != -1) {
			/*
			 * Out of descriptors: the listener stays readable, so
			 * free the spare one, take the client, tell it, close,
			 * instead of spinning or leaving it hanging.
			 */
			static const char nofd[] = "{\"ok\":false,\"error\":\"unavailable\","
			    "\"detail\":\"the daemon is out of file descriptors\"}\n";
			close(ctl->spare);
			fd = accept4(ctl->lfd, NULL, NULL, SOCK_CLOEXEC);
			if (fd != -1) {
				(void)!send(fd, nofd, sizeof(nofd) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
				close(fd);
			}
			ctl->spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
			if (time(NULL) != ctl->last_fd_warn) {
				ctl->last_fd_warn = time(NULL);
				log_msg(LOG_WARNING, "event=control_refused reason=out_of_fds");
			}
			/* accept() fails EMFILE before it looks at the queue:
			 * only a client taken means there may be more. */
			if (fd == -1)
				return;
			continue;
		}
		if (fd == -1)
			return;
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == -1) {
			close(fd);
			continue;
		}
		memset(&peer, 0, sizeof(peer));
		peer.uid = cred.uid;
		peer.gid = cred.gid;
		peer.pid = cred.pid;
		ng = ctl_peer_groups(cred.pid, cred.gid, groups, CTL_MAX_GROUPS);
		peer.roles = ctl_acl_roles(ctl->acl, cred.uid, groups, ng);
		ctl_peer_set_app(ctl->d->cfg, &peer, groups, ng);
		if ((limit = ctl_admit(ctl, &peer, detail, sizeof(detail))) != NULL &&
		    (peer.roles & (ROLE_APP | ROLE_ADMIN)) && ctl_reap_gone(ctl) > 0)
			limit = ctl_admit(ctl, &peer, detail, sizeof(detail));
		if (limit != NULL) {
			ctl_refuse(ctl, fd, &peer, limit, detail);
			continue;
		}
		if ((c = calloc(1, sizeof(*c))) == NULL)
			abort();
		c->fd = fd;
		c->peer = peer;
		c->last_active = time(NULL);
		pthread_mutex_init(&c->mu, NULL);
		/* armed before a worker can see it (it never sees it unarmed) */
		c->armed = 1;
		ev.events = EPOLLIN | EPOLLONESHOT;
		ev.data.ptr = c;
		if (epoll_ctl(ctl->wfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
			close(fd);
			ctl_conn_free(c);
			continue;
		}
		c->all_next = ctl->all;
		if (ctl->all)
			ctl->all->all_prev = c;
		ctl->all = c;
		ctl->nconns++;
		(*ctl_uid_slot(ctl, peer.uid, 1))++;
		if (ctl_is_anon(&peer))
			ctl->nanon++;
		c->counted = 1;
	}
}

static void
ctl_drain_dirty(struct control *ctl)
{
	struct ctl_conn **list;
	size_t n, i;
	uint64_t v;
	int dead;

	if (read(ctl->evfd, &v, sizeof(v)) == -1 && errno != EAGAIN)
		return;
	pthread_mutex_lock(&ctl->dmu);
	list = ctl->dirty;
	n = ctl->ndirty;
	ctl->dirty = NULL;
	ctl->ndirty = ctl->capdirty = 0;
	pthread_mutex_unlock(&ctl->dmu);
	for (i = 0; i < n; i++) {
		struct ctl_conn *c = list[i];
		unsigned refs;

		pthread_mutex_lock(&ctl->dmu);
		refs = --c->dirty_refs;
		pthread_mutex_unlock(&ctl->dmu);
		pthread_mutex_lock(&c->mu);
		dead = c->dead;
		pthread_mutex_unlock(&c->mu);
		/*
		 * A closed connection is freed by whoever lets go of it last:
		 * no later list entry names it.
		 */
		if (dead) {
			if (refs == 0)
				ctl_conn_free(c);
			continue;
		}
		ctl_conn_flush(ctl, c);		/* may close; frees if refs == 0 */
	}
	free(list);
}

static void
ctl_idle_sweep(struct control *ctl)
{
	struct ctl_conn *c, *next;
	time_t now = time(NULL);
	int idle;

	for (c = ctl->all; c != NULL; c = next) {
		int anon = ctl_is_anon(&c->peer);
		next = c->all_next;
		pthread_mutex_lock(&c->mu);
		/* A peer with no role holds a slot only while it asks something. */
		idle = !c->owned && !c->kill && !c->subscriber && !c->ev_sub &&
		    (c->outlen == 0 || anon) &&
		    now - c->last_active > (c->draining ? 2 : anon ?
		    ctl->d->cfg->control_anon_idle_timeout :
		    ctl->d->cfg->control_idle_timeout);
		pthread_mutex_unlock(&c->mu);
		if (idle)
			ctl_conn_kill(ctl, c);
	}
}

static void *
ctl_event_loop(void *arg)
{
	struct control *ctl = arg;
	struct epoll_event evs[64];
	time_t last_sweep = time(NULL);
	int n, i, dirty;

	while (!ctl->stopping) {
		n = epoll_wait(ctl->efd, evs, 64, 1000);
		dirty = 0;
		/*
		 * Each connection's event may close only that connection; the
		 * dirty list (which may close and free any of them) is handled
		 * after the batch, so no event here is stale.
		 */
		for (i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &ctl->lfd)
				ctl_accept(ctl);
			else if (p == &ctl->evfd)
				dirty = 1;
			else
				ctl_conn_flush(ctl, p);	/* room to write, or an error */
		}
		if (dirty)
			ctl_drain_dirty(ctl);
		if (time(NULL) != last_sweep) {
			last_sweep = time(NULL);
			ctl_idle_sweep(ctl);
		}
	}
	return NULL;
}

/* ---- live event stream ------------------------------------------------ */

/* Log tap: every event line goes to each subscriber as {"event": line}. */
static void
ctl_tap(int prio, const char *line)
{
	struct control *ctl;
	struct ctl_conn *c;
	json_t *ev;
	char *s;

	pthread_mutex_lock(&ctl_sub_mu);
	ctl = ctl_tap_owner;
	if (ctl == NULL || ctl->subs == NULL) {
		pthread_mutex_unlock(&ctl_sub_mu);
		return;
	}
	ev = json_pack("{s:s, s:I}", "event", line, "time", (json_int_t)time(NULL));
	s = ev ? json_dumps(ev, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
	json_decref(ev);
	for (c = ctl->subs; s != NULL && c != NULL; c = c->sub_next) {
		pthread_mutex_lock(&c->mu);
		if (!c->dead && c->outlen < CTL_TAIL_BACKLOG) {
			ctl_out_append(c, s, strlen(s));
			ctl_out_append(c, "\n", 1);
		}
		pthread_mutex_unlock(&c->mu);
		ctl_mark_dirty(ctl, c);
	}
	pthread_mutex_unlock(&ctl_sub_mu);
	free(s);
}

/* ---- delivery events (events.subscribe) ------------------------------ */

/*
 * Queues one event line to c, or, past events_subscriber_buffer, a
 * "missed" line saying where to resume; c->mu held.  Returns 0 if queued.
 */
static int
ctl_events_put(struct control *ctl, struct ctl_conn *c, uint64_t id, const char *line,
    size_t len, uint64_t last)
{
	char miss[256];
	int n;

	if (c->outlen + len + 1 <= ctl->d->cfg->events_subscriber_buffer) {
		ctl_out_append(c, line, len);
		ctl_out_append(c, "\n", 1);
		return 0;
	}
	n = snprintf(miss, sizeof(miss), "{\"type\":\"missed\",\"resume_from\":%llu,"
	    "\"since\":%llu,\"detail\":\"this subscriber fell behind "
	    "(events_subscriber_buffer); subscribe again with since\"}\n",
	    (unsigned long long)id, (unsigned long long)last);
	ctl_out_append(c, miss, (size_t)n);
	return -1;
}

/* c leaves the subscriber list (ctl_sub_mu held). */
static void
ctl_events_unlink(struct control *ctl, struct ctl_conn *c)
{
	struct ctl_conn **pp;

	if (!c->ev_sub)
		return;
	for (pp = &ctl->ev_subs; *pp != NULL; pp = &(*pp)->ev_next)
		if (*pp == c) {
			*pp = c->ev_next;
			break;
		}
	c->ev_sub = 0;
}

/* The events tap: each new event to every subscriber that wants it. */
static void
ctl_events_tap(uint64_t id, const char *app, enum event_type type, const char *line,
    size_t len)
{
	struct ctl_conn *c, **pp;
	struct control *ctl;
	int behind;

	pthread_mutex_lock(&ctl_sub_mu);
	ctl = ctl_tap_owner;
	for (pp = ctl ? &ctl->ev_subs : NULL; pp != NULL && (c = *pp) != NULL; ) {
		if (!(c->ev_mask & (1u << type)) ||
		    (c->ev_app[0] != '\0' && strcmp(c->ev_app, app) != 0)) {
			pp = &c->ev_next;
			continue;
		}
		pthread_mutex_lock(&c->mu);
		behind = !c->dead && ctl_events_put(ctl, c, id, line, len, c->ev_last) == -1;
		if (!c->dead && !behind)
			c->ev_last = id;
		pthread_mutex_unlock(&c->mu);
		ctl_mark_dirty(ctl, c);
		if (behind) {
			*pp = c->ev_next;	/* unsubscribed: it resumes by id */
			c->ev_sub = 0;
		} else
			pp = &c->ev_next;
	}
	pthread_mutex_unlock(&ctl_sub_mu);
}

struct ctl_replay {
	struct control	*ctl;
	struct ctl_conn	*c;
	uint64_t	 last;
	int		 missed;
	int		 may_wait;	/* not under the emit lock: wait for the reader */
};

static int
ctl_events_replay_line(void *arg, uint64_t id, const char *line, size_t len)
{
	struct ctl_replay *r = arg;
	size_t bound = r->ctl->d->cfg->events_subscriber_buffer;
	int stop, waited = 0;

	pthread_mutex_lock(&r->c->mu);
	/*
	 * The replay is paced by the reader: a worker thread waits (never the
	 * emitters) while the backlog is full, up to CTL_REPLAY_WAIT seconds of
	 * a reader that takes nothing; then it misses like a live subscriber.
	 */
	while (r->may_wait && !r->c->dead && !r->c->kill && r->c->outlen + len + 1 > bound &&
	    waited < CTL_REPLAY_WAIT * 100) {
		size_t before = r->c->outlen;

		pthread_mutex_unlock(&r->c->mu);
		usleep(10 * 1000);
		pthread_mutex_lock(&r->c->mu);
		waited = r->c->outlen < before ? 0 : waited + 1;
	}
	stop = r->c->dead || r->c->kill;
	if (!stop && ctl_events_put(r->ctl, r->c, id, line, len, r->last) == -1)
		stop = r->missed = 1;
	else if (!stop)
		r->last = id;
	pthread_mutex_unlock(&r->c->mu);
	ctl_mark_dirty(r->ctl, r->c);
	return stop;
}

/*
 * events.subscribe's second half (worker): the answer, the events after
 * "since" read from the log, then the rest under the emit lock, and c joins
 * the subscribers before the lock goes: no event lost or doubled.
 */
static json_t *
ctl_events_subscribe(struct control *ctl, struct ctl_conn *c, json_t *reply, json_t *params)
{
	struct ctl_replay r = { ctl, c, 0, 0, 1 };
	const char *app = json_string_value(json_object_get(params, "app"));
	unsigned mask = (unsigned)json_integer_value(json_object_get(params, "mask"));
	int already;

	r.last = (uint64_t)json_integer_value(json_object_get(params, "since"));
	pthread_mutex_lock(&ctl_sub_mu);
	already = c->ev_sub;
	pthread_mutex_unlock(&ctl_sub_mu);
	if (already) {
		json_decref(reply);
		return reply_error("bad_request", "this connection is subscribed already");
	}
	pthread_mutex_lock(&c->mu);
	if (!c->dead)
		ctl_out_reply(c, reply);
	pthread_mutex_unlock(&c->mu);
	json_decref(reply);
	if (events_replay(r.last, app, mask, ctl_events_replay_line, &r) == -1)
		log_msg(LOG_ERR, "event=events_error detail=\"cannot read the event log\"");
	if (r.missed)
		return NULL;
	events_lock();
	r.may_wait = 0;
	events_replay(r.last, app, mask, ctl_events_replay_line, &r);
	if (!r.missed) {
		pthread_mutex_lock(&ctl_sub_mu);
		pthread_mutex_lock(&c->mu);
		if (!c->dead && !c->ev_sub) {
			c->ev_sub = 1;
			c->ev_mask = mask;
			snprintf(c->ev_app, sizeof(c->ev_app), "%s", app ? app : "");
			c->ev_last = r.last;
			c->ev_next = ctl->ev_subs;
			ctl->ev_subs = c;
		}
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_unlock(&ctl_sub_mu);
	}
	events_unlock();
	return NULL;
}

/* ---- start and stop -------------------------------------------------- */

struct control *
control_listen(struct otpmaild *d, char *err, size_t errlen)
{
	struct sockaddr_un sun;
	struct control *ctl;
	struct group *g;
	mode_t old;

	if ((ctl = calloc(1, sizeof(*ctl))) == NULL)
		abort();
	ctl->d = d;
	ctl->lfd = ctl->efd = ctl->evfd = ctl->wfd = ctl->stopfd = -1;
	ctl->spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
	ctl->path = strdup(d->cfg->control_socket);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(ctl->path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "control socket path too long: %s", ctl->path);
		goto fail;
	}
	strcpy(sun.sun_path, ctl->path);
	if ((ctl->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		goto fail;
	}
	/* The state directory lock is held: a socket file left here is stale. */
	unlink(ctl->path);
	old = umask(0777 & ~d->cfg->control_socket_mode);
	if (bind(ctl->lfd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		umask(old);
		snprintf(err, errlen, "bind %s: %s", ctl->path, strerror(errno));
		goto fail;
	}
	umask(old);
	if (chmod(ctl->path, d->cfg->control_socket_mode) == -1) {
		snprintf(err, errlen, "chmod %s: %s", ctl->path, strerror(errno));
		goto fail;
	}
	if (d->cfg->control_socket_group[0] != '\0') {
		if ((g = getgrnam(d->cfg->control_socket_group)) == NULL ||
		    chown(ctl->path, (uid_t)-1, g->gr_gid) == -1) {
			snprintf(err, errlen, "chgrp %s to %s failed", ctl->path,
			    d->cfg->control_socket_group);
			goto fail;
		}
	}
	if (listen(ctl->lfd, 512) == -1) {
		snprintf(err, errlen, "listen: %s", strerror(errno));
		goto fail;
	}
	return ctl;
fail:
	if (ctl->lfd != -1)
		close(ctl->lfd);
	if (ctl->spare != -1)
		close(ctl->spare);
	free(ctl->path);
	free(ctl);
	return NULL;
}

int
control_run(struct control *ctl, char *err, size_t errlen)
{
	struct epoll_event ev;
	int i;

	ctl->acl = ctl_acl_new(ctl->d->cfg, geteuid());
	pthread_mutex_init(&ctl->dmu, NULL);
	pthread_mutex_lock(&ctl_sub_mu);
	ctl_tap_owner = ctl;
	pthread_mutex_unlock(&ctl_sub_mu);
	log_set_tap(ctl_tap);
	events_set_tap(ctl_events_tap);
	if ((ctl->efd = epoll_create1(EPOLL_CLOEXEC)) == -1 ||
	    (ctl->wfd = epoll_create1(EPOLL_CLOEXEC)) == -1 ||
	    (ctl->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1 ||
	    (ctl->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1) {
		snprintf(err, errlen, "epoll/eventfd: %s", strerror(errno));
		return -1;
	}
	ev.events = EPOLLIN;
	ev.data.ptr = &ctl->lfd;
	epoll_ctl(ctl->efd, EPOLL_CTL_ADD, ctl->lfd, &ev);
	ev.data.ptr = &ctl->evfd;
	epoll_ctl(ctl->efd, EPOLL_CTL_ADD, ctl->evfd, &ev);
	ev.data.ptr = &ctl->stopfd;	/* level-triggered: wakes every worker */
	epoll_ctl(ctl->wfd, EPOLL_CTL_ADD, ctl->stopfd, &ev);
	ctl->nworkers = ctl->d->cfg->request_workers;
	ctl->workers = calloc(ctl->nworkers, sizeof(pthread_t));
	for (i = 0; i < ctl->nworkers; i++) {
		if (pthread_create(&ctl->workers[i], NULL, ctl_worker, ctl) != 0) {
			snprintf(err, errlen, "pthread_create failed");
			ctl->nworkers = i;
			return -1;
		}
		(void)pthread_setname_np(ctl->workers[i], "request");
	}
	if (pthread_create(&ctl->thread, NULL, ctl_event_loop, ctl) != 0) {
		snprintf(err, errlen, "pthread_create failed");
		return -1;
	}
	(void)pthread_setname_np(ctl->thread, "control");
	ctl->running = 1;
	return 0;
}

void
control_stop(struct control *ctl)
{
	struct ctl_conn *c, *next;
	uint64_t one = 1;
	int i;

	if (ctl == NULL)
		return;
	events_set_tap(NULL);
	pthread_mutex_lock(&ctl_sub_mu);
	ctl_tap_owner = NULL;
	pthread_mutex_unlock(&ctl_sub_mu);
	if (ctl->lfd != -1) {
		close(ctl->lfd);
		unlink(ctl->path);
	}
	ctl->stopping = 1;
	if (ctl->stopfd != -1)
		(void)!write(ctl->stopfd, &one, sizeof(one));	/* the workers */
	if (ctl->evfd != -1)
		(void)!write(ctl->evfd, &one, sizeof(one));	/* the event thread */
	if (ctl->running)
		pthread_join(ctl->thread, NULL);
	/* Workers finish the request in hand; the rest are dropped. */
	for (i = 0; i < ctl->nworkers; i++)
		pthread_join(ctl->workers[i], NULL);
	/* Connections closed while a worker or the dirty list held them. */
	if (ctl->running) {
		pthread_mutex_lock(&ctl->dmu);
		for (size_t j = 0; j < ctl->ndirty; j++) {
			struct ctl_conn *x = ctl->dirty[j];
			if (--x->dirty_refs == 0 && x->dead)
				ctl_conn_free(x);	/* the workers are gone */
		}
		ctl->ndirty = 0;
		pthread_mutex_unlock(&ctl->dmu);
	}
	/* The live ones: what is answered goes out if the peer takes it now. */
	for (c = ctl->all; c != NULL; c = next) {
		next = c->all_next;
		if (c->outlen > 0)
			(void)!send(c->fd, c->out, c->outlen, MSG_NOSIGNAL | MSG_DONTWAIT);
		close(c->fd);
		ctl_conn_free(c);
	}
	ctl->all = NULL;
	free(ctl->dirty);
	if (ctl->efd != -1)
		close(ctl->efd);
	if (ctl->evfd != -1)
		close(ctl->evfd);
	if (ctl->wfd != -1)
		close(ctl->wfd);
	if (ctl->stopfd != -1)
		close(ctl->stopfd);
	ctl_acl_free(ctl->acl);
	free(ctl->uids);
	if (ctl->spare != -1)
		close(ctl->spare);
	free(ctl->workers);
	free(ctl->path);
	free(ctl);
}
