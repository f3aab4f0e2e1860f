/*
 * fuzz_ctl.c - libFuzzer target for the control-request path: one input is
 * one request line handed to ctl_dispatch (JSON parse, id/op checks, role
 * check, and the ops that need no store or queue), then every field of the
 * request goes through the req_* accessors.  Oracles: a reply is always a
 * JSON object that encodes as ONE line, failures carry error+detail, only
 * ops open to ROLE_ANY succeed for nobody, and accepted strings hold what
 * the accessors promise (length bound, no control characters, no NUL).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/control/control.h"
#include "agent/core/log.h"
#include "agent/core/otpmaild.h"

struct otpmaild *otpmaild_ctx;

static struct otpmaild fz_d;

static void	fz_check_reply(json_t *, int may_succeed);
static void	fz_check_accessors(json_t *req);

int	LLVMFuzzerInitialize(int *argc, char ***argv);
int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	log_init("fuzz_ctl", 0, 0, "error");
	if ((fz_d.cfg = config_load(NULL, err, sizeof(err))) == NULL)
		abort();
	fz_d.started = time(NULL);
	fz_d.state_dir = (char *)"/nonexistent";
	fz_d.hostname = (char *)"fuzz.example.org";
	pthread_rwlock_init(&fz_d.reload_lock, NULL);
	otpmaild_ctx = &fz_d;
	return 0;
}

static void
fz_check_reply(json_t *r, int may_succeed)
{
	json_t *okv;
	char *s;

	if (r == NULL || !json_is_object(r))
		abort();
	okv = json_object_get(r, "ok");
	if (!json_is_boolean(okv))
		abort();
	if (json_is_true(okv) && !may_succeed)
		abort();	/* passed the role check without the role */
	if (json_is_false(okv) &&
	    (!json_is_string(json_object_get(r, "error")) ||
	    !json_is_string(json_object_get(r, "detail"))))
		abort();
	/* The daemon writes replies exactly like this: one line each. */
	if ((s = json_dumps(r, JSON_COMPACT | JSON_ENSURE_ASCII)) == NULL)
		abort();
	if (strchr(s, '\n') != NULL || strchr(s, '\r') != NULL)
		abort();
	free(s);
}

static void
fz_check_accessors(json_t *req)
{
	const char *key, *s, **list;
	json_t *v, *err;
	size_t len, n, i, j;
	long l;
	int b;

	json_object_foreach(req, key, v) {
		err = NULL;
		s = NULL;
		if (req_str(req, key, 0, 64, &s, &err) == 0) {
			if (s != NULL) {
				if (strlen(s) > 64)
					abort();
				for (i = 0; s[i] != '\0'; i++)
					if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
						abort();
			}
		} else if (err == NULL || !json_is_string(json_object_get(err, "error")))
			abort();
		json_decref(err);
		err = NULL;
		s = NULL;
		len = 0;
		if (req_text(req, key, 1, 4096, &s, &len, &err) == 0) {
			if (s == NULL || len > 4096 || memchr(s, '\0', len) != NULL)
				abort();
		} else if (err == NULL)
			abort();
		json_decref(err);
		err = NULL;
		l = 0;
		if (req_int(req, key, 1, -5, 1000, &l, &err) == 0) {
			if (l < -5 || l > 1000)
				abort();
		} else if (err == NULL)
			abort();
		json_decref(err);
		err = NULL;
		if (req_bool(req, key, &b, &err) != 0 && err == NULL)
			abort();
		json_decref(err);
		err = NULL;
		list = NULL;
		n = 0;
		if (req_str_list(req, key, 1, 8, 32, &list, &n, &err) == 0) {
			if (list == NULL || n > 8)
				abort();
			for (i = 0; i < n; i++) {
				if (list[i] == NULL || strlen(list[i]) > 32)
					abort();
				for (j = 0; list[i][j] != '\0'; j++)
					if ((unsigned char)list[i][j] < 0x20 || list[i][j] == 0x7f)
						abort();
			}
			if (list[n] != NULL)
				abort();
			free(list);
		} else if (err == NULL)
			abort();
		json_decref(err);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ctl_peer nobody = { .uid = 65534, .gid = 65534, .pid = 1, .roles = ROLE_ANY };
	struct ctl_peer admin = { .uid = 0, .gid = 0, .pid = 1, .roles = ROLE_ANY | ROLE_APP | ROLE_ADMIN };
	const char *line = (const char *)data, *op;
	const struct ctl_op *o;
	json_error_t jerr;
	json_t *r, *req;

	r = ctl_dispatch(&fz_d, &nobody, line, size);
	req = json_loadb(line, size, JSON_REJECT_DUPLICATES, &jerr);
	op = req != NULL ? json_string_value(json_object_get(req, "op")) : NULL;
	o = op != NULL ? ctl_op_find(op) : NULL;
	fz_check_reply(r, o != NULL && (o->roles & ROLE_ANY) != 0);
	json_decref(r);
	/* The ops that touch neither store nor queue also run as admin. */
	if (op != NULL && (strcmp(op, "ping") == 0 || strcmp(op, "version") == 0 ||
	    strcmp(op, "help") == 0 || strcmp(op, "config.show") == 0)) {
		r = ctl_dispatch(&fz_d, &admin, line, size);
		fz_check_reply(r, 1);
		json_decref(r);
	}
	if (req != NULL && json_is_object(req))
		fz_check_accessors(req);
	json_decref(req);
	return 0;
}
