/*
 * ops_core.c - ping, version, help and config.show.
 */
#include "agent/control/ops.h"

json_t *
op_ping(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	json_t *r = reply_ok();

	json_object_set_new(r, "pong", json_true());
	json_object_set_new(r, "version", json_string(PACKAGE_VERSION));
	json_object_set_new(r, "sandbox", json_boolean(d->cfg->sandbox));
	return r;
}

json_t *
op_version(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	json_t *r = reply_ok();

	json_object_set_new(r, "version", json_string(PACKAGE_VERSION));
	json_object_set_new(r, "uptime", json_integer(time(NULL) - d->started));
	return r;
}

json_t *
op_help(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	const struct ctl_op *op;
	json_t *r = reply_ok(), *ops = json_array();

	for (op = ctl_ops; op->name != NULL; op++)
		if (op->roles & p->roles)
			json_array_append_new(ops, json_pack("{s:s, s:s}", "op", op->name,
			    "summary", op->summary));
	json_object_set_new(r, "ops", ops);
	json_object_set_new(r, "roles", json_pack("{s:b, s:b}", "app",
	    (p->roles & ROLE_APP) != 0, "admin", (p->roles & ROLE_ADMIN) != 0));
	return r;
}

json_t *
op_config_show(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	json_t *r = reply_ok();

	json_object_set_new(r, "file", d->cfg->file ? json_string(d->cfg->file) : json_null());
	json_object_set_new(r, "config", config_to_json(d->cfg));
	return r;
}

/* The control layer turns this connection into a subscriber (control.c). */
json_t *
op_events_tail(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	json_t *r = reply_ok();

	json_object_set_new(r, "streaming", json_true());
	json_object_set_new(r, "_subscribe", json_true());
	return r;
}
