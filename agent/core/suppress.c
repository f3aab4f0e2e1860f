/*
 * suppress.c - hard bounces feed the app's suppression list, and requests
 * to a suppressed address are refused before any code, rate budget or
 * queue space is spent.  The list itself is store/suppress.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#include "agent/core/otpmaild.h"
#include "agent/core/suppress.h"
#include "agent/delivery/delivery.h"
#include "queue/queue.h"
#include "store/store.h"

void
suppress_env_app(const struct q_envelope *e, char *out, size_t len)
{
	const char *a = e->tag ? strstr(e->tag, " app=") : NULL;

	if (a != NULL)
		snprintf(out, len, "%s", a + 5);
	else
		snprintf(out, len, "uid:%u", (unsigned)e->client_uid);
}

int
suppress_add(struct otpmaild *d, const char *app, const char *addr, const char *reason,
    const char *reply, const char *queue_id)
{
	char who[17];
	enum s_status st;

	if (d->store == NULL)
		return -1;	/* a delivery without the store (unit tests) */
	st = store_supp_add(d->store, app, addr, reason, reply, d->cfg->suppress_ttl,
	    time(NULL), NULL);
	store_pseudonym(d->store, addr, who);
	log_msg(st == S_OK ? LOG_NOTICE : LOG_ERR, "event=suppress.add result=%s "
	    "rcpt=%s app=%s reason=%s id=%s", s_status_error(st), who, app, reason, queue_id ? queue_id : "-");
	return st == S_OK ? 0 : -1;
}

void
suppress_note_outcome(struct otpmaild *d, struct q_envelope *env)
{
	struct bounce_result b;
	char app[CONFIG_APP_NAME_MAX + 8];
	const char *name;
	size_t i;
	int was_hard;

	suppress_env_app(env, app, sizeof(app));
	for (i = 0; i < env->nrcpt; i++) {
		struct q_rcpt *r = &env->rcpts[i];
		char *dup;

		if ((r->state != Q_RCPT_FAILED && r->state != Q_RCPT_DEFERRED) ||
		    r->reply == NULL)
			continue;
		bounce_classify(r->reply, &b);
		if (b.klass == BOUNCE_NONE)
			continue;
		name = bounce_class_name(b.klass);
		was_hard = r->err_class != NULL && strcmp(r->err_class, "hard") == 0;
		if ((dup = strdup(name)) != NULL) {
			free(r->err_class);
			r->err_class = dup;
		}
		/* once per recipient: a later release sees its class already hard */
		if (r->state == Q_RCPT_FAILED && b.klass == BOUNCE_HARD && !was_hard &&
		    d->cfg->suppress_hard_bounces && !(env->flags & Q_F_BOUNCE))
			(void)suppress_add(d, app, r->addr, "hard_bounce", r->reply, env->id);
	}
}

json_t *
suppress_refuse(struct otpmaild *d, const char *app, const char *const *addrs, size_t n)
{
	struct store_supp e;
	enum s_status st;
	json_t *r;
	size_t i;

	for (i = 0; i < n; i++) {
		st = store_supp_check(d->store, app, addrs[i], time(NULL), &e);
		if (st == S_NOTFOUND || st == S_BADINPUT)
			continue;
		if (st != S_OK)
			return reply_error("unavailable", "the store failed; try again later");
		r = reply_error("suppressed", "%s is on the suppression list of app %s "
		    "(%s, since %lld)", addrs[i], app, e.reason, (long long)e.created);
		json_object_set_new(r, "address", json_string(addrs[i]));
		json_object_set_new(r, "reason", json_string(e.reason));
		json_object_set_new(r, "suppressed_at", json_integer((json_int_t)e.created));
		json_object_set_new(r, "expires", e.expires ?
		    json_integer((json_int_t)e.expires) : json_null());
		json_object_set_new(r, "reply", json_string(e.reply));
		return r;
	}
	return NULL;
}
