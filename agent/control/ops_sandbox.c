/*
 * ops_sandbox.c - sandbox.list and sandbox.show: what the sandbox transport
 * delivered into its Maildir, so a developer can read the code from the mail
 * (otpmailctl sandbox list|show).  An app sees the mail of its own queued
 * messages only (the file name carries the queue id); admins see all.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"

#define SANDBOX_LIST_DEFAULT	50
#define SANDBOX_LIST_MAX	1000
#define SANDBOX_SHOW_MAX	(10 * 1024 * 1024)
#define SANDBOX_SCAN_MAX	20000	/* files looked at for an app's list */

static json_t	*ops_sandbox_str(const char *s, size_t len);
static int	ops_sandbox_mine(struct otpmaild *, const struct ctl_peer *, const char *file);
static int	ops_sandbox_scan(struct otpmaild *, const struct ctl_peer *, const char *dir,
		    size_t limit, struct sandbox_entry **, size_t *, char *err, size_t errlen);

/* The file name ends in "_<queue id>.otpmail": is that message the peer's? */
static int
ops_sandbox_mine(struct otpmaild *d, const struct ctl_peer *p, const char *file)
{
	const char *us = strrchr(file, '_'), *dot;
	char id[64];

	if (p->roles & ROLE_ADMIN)
		return 1;
	if (us == NULL || (dot = strstr(us, ".otpmail")) == NULL ||
	    (size_t)(dot - us - 1) >= sizeof(id))
		return 0;
	snprintf(id, sizeof(id), "%.*s", (int)(dot - us - 1), us + 1);
	return ops_msg_owned(d, p, id);
}

/* The newest messages the peer may see, at most limit. */
static int
ops_sandbox_scan(struct otpmaild *d, const struct ctl_peer *p, const char *dir,
    size_t limit, struct sandbox_entry **v, size_t *n, char *err, size_t errlen)
{
	size_t i, k = 0;

	if (sandbox_list(dir, (p->roles & ROLE_ADMIN) ? limit : SANDBOX_SCAN_MAX, v, n,
	    err, errlen) == -1)
		return -1;
	for (i = 0; i < *n && k < limit; i++)
		if (ops_sandbox_mine(d, p, (*v)[i].file))
			(*v)[k++] = (*v)[i];
	*n = k;
	return 0;
}

/* A JSON string of arbitrary bytes: invalid UTF-8 becomes U+FFFD. */
static json_t *
ops_sandbox_str(const char *s, size_t len)
{
	json_t *j;
	char *o;
	size_t i = 0, k = 0;

	if ((j = json_stringn(s, len)) != NULL)
		return j;
	if ((o = malloc(len * 3 + 1)) == NULL)
		return json_string("");
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 :
		    (c & 0xf8) == 0xf0 ? 4 : 0;
		size_t m;

		if (c == 0)
			n = 0;
		for (m = 1; n > 1 && m < n; m++)
			if (i + m >= len || ((unsigned char)s[i + m] & 0xc0) != 0x80)
				break;
		if (n > 1 && m == n) {
			unsigned char c1 = (unsigned char)s[i + 1];

			if ((n == 2 && c < 0xc2) || (n == 3 && c == 0xe0 && c1 < 0xa0) ||
			    (n == 3 && c == 0xed && c1 >= 0xa0) ||
			    (n == 4 && (c > 0xf4 || (c == 0xf0 && c1 < 0x90) ||
			    (c == 0xf4 && c1 >= 0x90))))
				n = 0;	/* overlong, surrogate or beyond U+10FFFF */
		}
		if (n == 0 || m < n) {
			memcpy(o + k, "\xef\xbf\xbd", 3);
			k += 3;
			i++;
			continue;
		}
		memcpy(o + k, s + i, n);
		k += n;
		i += n;
	}
	j = json_stringn(o, k);
	free(o);
	return j != NULL ? j : json_string("");
}

json_t *
op_sandbox_list(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct sandbox_entry *v = NULL;
	char dir[4096], err[512];
	json_t *reply, *arr, *e, *bad = NULL;
	long limit = SANDBOX_LIST_DEFAULT;
	size_t i, n;

	if (req_int(req, "limit", 0, 1, SANDBOX_LIST_MAX, &limit, &bad) == -1)
		return bad;
	sandbox_dir(d->cfg, d->state_dir, dir, sizeof(dir));
	if (ops_sandbox_scan(d, p, dir, (size_t)limit, &v, &n, err, sizeof(err)) == -1)
		return reply_error("unavailable", "%s", err);
	arr = json_array();
	for (i = 0; i < n; i++) {
		e = json_object();
		json_object_set_new(e, "file", json_string(v[i].file));
		json_object_set_new(e, "from", ops_sandbox_str(v[i].from, strlen(v[i].from)));
		json_object_set_new(e, "to", ops_sandbox_str(v[i].to, strlen(v[i].to)));
		json_object_set_new(e, "subject", ops_sandbox_str(v[i].subject,
		    strlen(v[i].subject)));
		json_object_set_new(e, "date", ops_sandbox_str(v[i].date, strlen(v[i].date)));
		json_object_set_new(e, "size", json_integer((json_int_t)v[i].size));
		json_array_append_new(arr, e);
	}
	free(v);
	reply = reply_ok();
	json_object_set_new(reply, "sandbox", json_boolean(d->cfg->sandbox));
	json_object_set_new(reply, "maildir", json_string(dir));
	json_object_set_new(reply, "messages", arr);
	return reply;
}

json_t *
op_sandbox_show(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	const char *file = NULL;
	char dir[4096], err[512], name[SANDBOX_NAME_MAX + 1], pick[SANDBOX_NAME_MAX + 1];
	json_t *reply, *bad = NULL;
	char *data = NULL;
	size_t len = 0;
	int latest = 0, r;

	if (req_str(req, "file", 0, SANDBOX_NAME_MAX, &file, &bad) == -1 ||
	    req_bool(req, "latest", &latest, &bad) == -1)
		return bad;
	if (file == NULL && !latest)
		return reply_bad_field("file", "give a file name from sandbox.list, "
		    "or \"latest\": true");
	if (file != NULL && !sandbox_name_ok(file))
		return reply_bad_field("file", "not a sandbox message name");
	sandbox_dir(d->cfg, d->state_dir, dir, sizeof(dir));
	if (file == NULL && !(p->roles & ROLE_ADMIN)) {
		/* the newest of the app's own */
		struct sandbox_entry *v = NULL;
		size_t n = 0;

		if (ops_sandbox_scan(d, p, dir, 1, &v, &n, err, sizeof(err)) == -1)
			return reply_error("unavailable", "%s", err);
		if (n == 0) {
			free(v);
			return reply_error("not_found", "the sandbox holds no mail of yours");
		}
		snprintf(pick, sizeof(pick), "%s", v[0].file);
		free(v);
		file = pick;
	}
	/* another app's mail is "not found", as if it were not there */
	if (file != NULL && !ops_sandbox_mine(d, p, file))
		return reply_error("not_found", "no sandbox message %s", file);
	r = sandbox_read(dir, file, SANDBOX_SHOW_MAX, &data, &len, name, sizeof(name),
	    err, sizeof(err));
	if (r == 1)
		return reply_error("not_found", "%s", err);
	if (r == -1)
		return reply_error("unavailable", "%s", err);
	reply = reply_ok();
	json_object_set_new(reply, "file", json_string(name));
	json_object_set_new(reply, "size", json_integer((json_int_t)len));
	json_object_set_new(reply, "text", ops_sandbox_str(data, len));
	free(data);
	return reply;
}
