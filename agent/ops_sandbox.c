/* ops_sandbox.c - PLACEHOLDER until its owner lands it: every op answers unavailable. */
#include "agent/ops.h"
json_t *
op_sandbox_list(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
json_t *
op_sandbox_show(struct otpmaild *d, const struct ctl_peer *p, json_t *r)
{
	return reply_error("unavailable", "not built yet");
}
