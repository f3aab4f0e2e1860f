/*
 * ops.h - the handlers of the control protocol, one file per family:
 * ops_core.c, ops_queue.c (mail.send, message.status, queue.*, stats,
 * metrics), ops_otp.c, ops_dkim.c, ops_sandbox.c.
 */
#ifndef OTPMAIL_OPS_H
#define OTPMAIL_OPS_H

#include "agent/core/otpmaild.h"

#define OP(name) json_t *name(struct otpmaild *, const struct ctl_peer *, json_t *)
OP(op_ping); OP(op_version); OP(op_config_show); OP(op_help); OP(op_events_tail);
OP(op_mail_send); OP(op_message_status);
OP(op_queue_list); OP(op_queue_show); OP(op_queue_hold); OP(op_queue_release);
OP(op_queue_delete); OP(op_queue_flush); OP(op_queue_pause); OP(op_queue_resume);
OP(op_stats); OP(op_metrics);
OP(op_otp_issue); OP(op_otp_verify); OP(op_otp_revoke); OP(op_otp_unlock);
OP(op_dkim_records); OP(op_dkim_keygen); OP(op_dkim_check);
OP(op_sandbox_list); OP(op_sandbox_show);
OP(op_tls_policy); OP(op_tls_report); OP(op_domain_check);
OP(op_suppress_list); OP(op_suppress_add); OP(op_suppress_remove); OP(op_dsn_report);
OP(op_cluster_status);
OP(op_events_subscribe);
#undef OP

/* 1 if the queued message id is the peer's app's (admins: any). */
int	ops_msg_owned(struct otpmaild *, const struct ctl_peer *, const char *id);
/* A request's address in canonical form (ops_queue.c); -1 with *err. */
int	opq_addr(struct otpmaild *, const char *field, const char *in, char *out,
	    size_t outlen, json_t **err);

#endif
