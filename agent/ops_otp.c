/* ops_otp.c - PLACEHOLDER until its owner lands it: every op answers unavailable. */
#include "agent/ops.h"
json_t *
op_otp_issue(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_otp_verify(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_otp_revoke(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
