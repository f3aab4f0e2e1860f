/* ops_queue.c - PLACEHOLDER until its owner lands it: every op answers unavailable. */
#include "agent/ops.h"
json_t *
op_mail_send(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_message_status(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_list(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_show(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_hold(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_release(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_delete(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_flush(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_pause(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_queue_resume(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_stats(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_metrics(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
