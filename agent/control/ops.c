/*
 * ops.c - the dispatch table of the control protocol.  Adding an op is one
 * entry here plus its handler; roles say who may call it.
 */
#include <string.h>

#include "agent/control/ops.h"

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
	{ "sandbox.list",	APP,	op_sandbox_list,	"messages delivered to the sandbox Maildir" },
	{ "sandbox.show",	APP,	op_sandbox_show,	"one sandbox message" },
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
