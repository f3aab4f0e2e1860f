/*
 * ops.c - the dispatch table of the control protocol.  Adding an op is one
 * entry here plus its handler; roles say who may call it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/sha.h>

#include "agent/control/ops.h"
#include "queue/queue.h"
#include "store/store.h"

#define APP	(ROLE_APP | ROLE_ADMIN)
#define ADMIN	ROLE_ADMIN
#define ANY	(ROLE_ANY | ROLE_APP | ROLE_ADMIN)

const struct ctl_op ctl_ops[] = {
	{ "ping",		ANY,	op_ping,		"check the daemon answers" },
	{ "version",		ANY,	op_version,		"daemon version" },
	{ "help",		ANY,	op_help,		"list the operations" },
	{ "config.show",	ADMIN,	op_config_show,		"effective configuration (secrets elided)" },
	{ "events.tail",	ADMIN,	op_events_tail,		"live stream of events on this connection" },
	{ "otp.issue",		APP,	op_otp_issue,		"mail a one-time code to an address" },
	{ "otp.verify",		APP,	op_otp_verify,		"check a code a person typed" },
	{ "otp.revoke",		APP,	op_otp_revoke,		"kill the outstanding codes of an address" },
	{ "otp.unlock",		ADMIN,	op_otp_unlock,		"clear an address's failure count and lock-out" },
	{ "mail.send",		APP,	op_mail_send,		"queue a message" },
	{ "events.subscribe",	APP,	op_events_subscribe,	"stream this app's delivery events (resumable by id)" },
	{ "message.status",	APP,	op_message_status,	"delivery state of a queued message" },
	{ "queue.list",		ADMIN,	op_queue_list,		"list queued messages (filters, paging)" },
	{ "queue.show",		ADMIN,	op_queue_show,		"one message: envelope, history, body" },
	{ "queue.hold",		ADMIN,	op_queue_hold,		"stop delivering messages" },
	{ "queue.release",	ADMIN,	op_queue_release,	"release held messages" },
	{ "queue.delete",	ADMIN,	op_queue_delete,	"delete messages" },
	{ "queue.flush",	ADMIN,	op_queue_flush,		"retry now: ids, a domain, or all" },
	{ "queue.pause",	ADMIN,	op_queue_pause,		"pause all delivery" },
	{ "queue.resume",	ADMIN,	op_queue_resume,	"resume delivery" },
	{ "stats",		APP,	op_stats,		"queue and delivery counters" },
	{ "metrics",		APP,	op_metrics,		"Prometheus text exposition" },
	{ "dkim.records",	ADMIN,	op_dkim_records,	"DNS records to publish (DKIM, SPF, DMARC)" },
	{ "dkim.keygen",	ADMIN,	op_dkim_keygen,		"make a signing key and print its record" },
	{ "dkim.check",		ADMIN,	op_dkim_check,		"compare published DKIM records with the keys" },
	{ "tls.policy",		ADMIN,	op_tls_policy,		"TLS policy in force for a domain and its source" },
	{ "tls.report",		ADMIN,	op_tls_report,		"send the TLS-RPT reports now" },
	{ "domain.check",	ADMIN,	op_domain_check,	"what receivers see of a sending domain: DKIM, SPF, DMARC, FCrDNS, MTA-STS, TLS-RPT" },
	{ "cluster.status",	ADMIN,	op_cluster_status,	"sites, master, log lag, last election (several hosts)" },
	{ "sandbox.list",	APP,	op_sandbox_list,	"messages delivered to the sandbox Maildir" },
	{ "sandbox.show",	APP,	op_sandbox_show,	"one sandbox message" },
	{ "suppress.list",	APP,	op_suppress_list,	"the app's suppression list (admins: every app's)" },
	{ "suppress.add",	APP,	op_suppress_add,	"suppress an address (a complaint, an admin's word)" },
	{ "suppress.remove",	APP,	op_suppress_remove,	"take an address off the suppression list" },
	{ "dsn.report",		ADMIN,	op_dsn_report,		"feed a DSN received back: classify, note, suppress" },
	{ NULL, 0, NULL, NULL }
};

const struct ctl_op *
ctl_op_find(const char *name)
{
	const struct ctl_op *op;

	for (op = ctl_ops; op->name != NULL; op++)
		if (strcmp(op->name, name) == 0)
			return op;
	return NULL;
}

void
ctl_peer_set_app(const struct config *cfg, struct ctl_peer *p, const gid_t *groups,
    size_t ng)
{
	p->appc = config_app_for(cfg, p->uid, groups, ng);
	if (p->appc != NULL) {
		snprintf(p->app, sizeof(p->app), "%s", p->appc->name);
		p->roles |= ROLE_APP;
	} else
		snprintf(p->app, sizeof(p->app), "uid:%u", (unsigned)p->uid);
}

const char *
ctl_req_app(const struct otpmaild *d, const struct ctl_peer *p, json_t *req, json_t **err)
{
	const char *as = NULL;

	if (req_str(req, "as_app", 0, CONFIG_APP_NAME_MAX, &as, err) == -1)
		return NULL;
	if (as == NULL || strcmp(as, p->app) == 0)
		return p->app;
	if (!(p->roles & ROLE_ADMIN)) {
		*err = reply_error("forbidden", "only an admin may act as another app");
		return NULL;
	}
	if (strncmp(as, "uid:", 4) == 0 ? as[4] == '\0' || strspn(as + 4, "0123456789") !=
	    strlen(as + 4) : config_app_named(d->cfg, as) == NULL) {
		*err = reply_bad_field("as_app", "no app \"%s\" in the configuration", as);
		return NULL;
	}
	return as;
}

/*
 * Idempotency keys (otp.issue, mail.send): the same key from the same app
 * within 24 h gets the first answer back, across restarts; another body
 * under a used key is an error.  The body is the request without req_id,
 * as canonical JSON.
 */
/* Is the message of a prepared answer in the queue (it was named)?  1 yes,
 * 0 no, -1 the queue cannot say yet (a large spool still loading). */
static int
idem_named(struct otpmaild *d, const char *answer)
{
	struct q_envelope *env = NULL;
	json_t *a = json_loads(answer, 0, NULL);
	const char *id = json_string_value(json_object_get(a, "id"));
	enum q_status st = id != NULL ? queue_get(d->queue, id, &env) : Q_NOTFOUND;

	q_envelope_free(env);
	json_decref(a);
	return st == Q_OK ? 1 : st == Q_NOTFOUND ? 0 : -1;
}

int
ctl_idem_begin(struct otpmaild *d, const char *app, json_t *req, const char **key,
    json_t **reply)
{
	unsigned char hash[SHA256_DIGEST_LENGTH];
	char answer[STORE_IDEM_ANSWER_MAX + 1], *body;
	json_t *copy, *err = NULL;

	*key = NULL;
	*reply = NULL;
	if (req_str(req, "idempotency_key", 0, STORE_IDEM_KEY_MAX, key, &err) == -1) {
		*reply = err;
		return 1;
	}
	if (*key == NULL)
		return 0;
	if ((*key)[0] == '\0') {
		*key = NULL;
		*reply = reply_bad_field("idempotency_key", "empty idempotency_key");
		return 1;
	}
	copy = json_copy(req);
	json_object_del(copy, "req_id");
	body = json_dumps(copy, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(copy);
	if (body == NULL) {
		*key = NULL;
		*reply = reply_error("unavailable", "out of memory");
		return 1;
	}
	SHA256((unsigned char *)body, strlen(body), hash);
	free(body);
	switch (store_idem_begin(d->store, app, *key, hash, time(NULL), answer,
	    sizeof(answer))) {
	case IDEM_NEW:
		/* Crash injection for tests/integration/test_cluster.py only. */
		if (getenv("OTPMAIL_FAULT") != NULL &&
		    strcmp(getenv("OTPMAIL_FAULT"), "after_idem_claim") == 0)
			abort();
		return 0;
	case IDEM_DONE:
		*reply = json_loads(answer, 0, NULL);
		if (*reply == NULL)
			*reply = reply_error("unavailable", "the stored answer is unreadable");
		else
			json_object_set_new(*reply, "replayed", json_true());
		break;
	case IDEM_MISMATCH:
		*reply = reply_bad_field("idempotency_key", "this idempotency_key was used "
		    "within 24 h for a different request");
		json_object_set_new(*reply, "error", json_string("idempotency_mismatch"));
		break;
	case IDEM_BUSY:
		*reply = reply_limited("rate_limited", "idempotency_in_progress", 1,
		    "a request with this idempotency_key is still running");
		break;
	case IDEM_ELSEWHERE:
		/* several hosts: another site's request holds it (its lease) */
		*reply = reply_limited("unavailable", "idempotency_in_progress",
		    atoi(answer) > 0 ? atoi(answer) : 1, "a request with this "
		    "idempotency_key is running on another host");
		break;
	case IDEM_UNSURE:
		/* A crashed run prepared this answer: was its mail named? */
		switch (idem_named(d, answer)) {
		case -1:
			store_idem_unclaim(d->store, app, *key);
			*reply = reply_limited("unavailable", "queue_loading", 2,
			    "the queue is still loading; try again");
			break;
		case 1:
			if (store_idem_finish(d->store, app, *key, time(NULL), answer) != S_OK)
				log_msg(LOG_ERR, "event=idempotency error=\"cannot record "
				    "the answer of a crashed run\" app=%s", app);
			if ((*reply = json_loads(answer, 0, NULL)) == NULL)
				*reply = reply_error("unavailable", "the stored answer is "
				    "unreadable");
			else
				json_object_set_new(*reply, "replayed", json_true());
			break;
		default:
			return 0;	/* never named: go ahead, the key is this run's */
		}
		break;
	default:
		*reply = reply_error("unavailable", "the store failed; try again later");
		break;
	}
	*key = NULL;
	return 1;
}

int
ctl_idem_barrier(void *arg)
{
	struct ctl_idem_barrier *b = arg;
	enum s_status st;
	char *s;

	if (b->inner != NULL && b->inner(b->inner_arg) == -1)
		return -1;
	if (b->key == NULL)
		return 0;
	json_object_set_new(b->answer, "id", json_string(b->qid));
	if ((s = json_dumps(b->answer, JSON_COMPACT)) == NULL)
		return -1;
	/* too long to keep: no replay, as in ctl_idem_end */
	st = strlen(s) > STORE_IDEM_ANSWER_MAX ? S_OK :
	    store_idem_prepare(b->d->store, b->app, b->key, time(NULL), s);
	free(s);
	if (st != S_OK) {
		log_msg(LOG_ERR, "event=idempotency error=\"cannot prepare the answer\" "
		    "status=%s app=%s", s_status_error(st), b->app);
		return -1;
	}
	return 0;
}

void
ctl_idem_end(struct otpmaild *d, const char *app, const char *key, json_t *reply)
{
	char *s;

	if (key == NULL)
		return;
	if (json_is_true(json_object_get(reply, "ok")) &&
	    (s = json_dumps(reply, JSON_COMPACT)) != NULL) {
		if (strlen(s) > STORE_IDEM_ANSWER_MAX ||
		    store_idem_finish(d->store, app, key, time(NULL), s) != S_OK)
			store_idem_abandon(d->store, app, key);
		free(s);
	} else
		store_idem_abandon(d->store, app, key);
}
