/*
 * ops_events.c - events.subscribe: this connection gets the delivery
 * events of the peer's app (an admin's: every app's, or one app's) as JSON
 * lines, first those after "since", then live ones.  The handler checks the
 * request; the control worker (control.c) replays and registers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/control/ops.h"
#include "agent/events/events.h"

json_t *
op_events_subscribe(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	const char **types = NULL, *app = NULL;
	unsigned mask = 0;
	json_t *err = NULL, *r, *names;
	long since = -1;
	size_t n = 0, i;
	int t;

	(void)d;
	if (req_str_list(req, "types", 0, EV_TYPE_COUNT, 16, &types, &n, &err) == -1 ||
	    req_int(req, "since", 0, 0, 0x7fffffffffffffffL, &since, &err) == -1 ||
	    req_str(req, "app", 0, CONFIG_APP_NAME_MAX + 16, &app, &err) == -1) {
		free(types);
		return err;
	}
	for (i = 0; i < n; i++) {
		if ((t = event_type_parse(types[i])) < 0) {
			err = reply_bad_field("types", "unknown event type \"%s\" (accepted, "
			    "delivered, deferred, bounced, expired, suppressed)", types[i]);
			free(types);
			return err;
		}
		mask |= 1u << t;
	}
	free(types);
	if (n == 0)
		mask = EV_MASK_ALL;
	/* an app sees its own events only; an admin every app's, or one's */
	if (app != NULL && strpbrk(app, "\"\\") != NULL)
		return reply_bad_field("app", "not an app name");
	if (!(p->roles & ROLE_ADMIN)) {
		if (app != NULL && strcmp(app, p->app) != 0) {
			log_msg(LOG_NOTICE, "event=forbidden op=events.subscribe uid=%u app=%s "
			    "asked_app=%s", (unsigned)p->uid, p->app, app);
			return reply_error("forbidden", "an app may subscribe to its own "
			    "events only");
		}
		app = p->app;
	}
	if (since < 0)
		since = (long)events_last_id();
	names = json_array();
	for (t = 0; t < EV_TYPE_COUNT; t++)
		if (mask & (1u << t))
			json_array_append_new(names, json_string(event_type_name(t)));
	r = json_pack("{s:b, s:b, s:I, s:I, s:o, s:s?}", "ok", 1, "streaming", 1,
	    "since", (json_int_t)since, "last_id", (json_int_t)events_last_id(),
	    "types", names, "app", app);
	if (r != NULL)
		json_object_set_new(r, "_events", json_pack("{s:i, s:s?, s:I}", "mask",
		    (int)mask, "app", app, "since", (json_int_t)since));
	return r ? r : reply_error("unavailable", "out of memory");
}
