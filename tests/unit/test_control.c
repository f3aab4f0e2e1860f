/*
 * test_control.c - the request parser and dispatcher (every error case of
 * the protocol), the request field accessors, and the peer-credential role
 * check.  The socket itself is exercised by tests/integration/test_control.py.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/control/control.h"
#include "agent/core/otpmaild.h"
#include "tests/unit/tap.h"

struct otpmaild *otpmaild_ctx;

static struct otpmaild d;

static json_t *
run(const struct ctl_peer *p, const char *line)
{
	return ctl_dispatch(&d, p, line, strlen(line));
}

static const char *
err_of(json_t *r)
{
	const char *e = json_string_value(json_object_get(r, "error"));
	return e ? e : "(none)";
}

static void
expect(const struct ctl_peer *p, const char *line, const char *code, const char *field,
    const char *name)
{
	json_t *r = run(p, line);

	ok(json_is_false(json_object_get(r, "ok")), name);
	is_str(err_of(r), code, "  ...error code");
	ok(json_is_string(json_object_get(r, "detail")), "  ...with a detail");
	if (field != NULL)
		is_str(json_string_value(json_object_get(r, "field")), field, "  ...naming the field");
	json_decref(r);
}

int
main(void)
{
	struct ctl_peer admin = { .uid = 0, .gid = 0, .pid = 1, .roles = ROLE_ANY | ROLE_APP | ROLE_ADMIN };
	struct ctl_peer app = { .uid = 1000, .gid = 1000, .pid = 1, .roles = ROLE_ANY | ROLE_APP };
	struct ctl_peer nobody = { .uid = 65534, .gid = 65534, .pid = 1, .roles = ROLE_ANY };
	struct ctl_acl *acl;
	struct config *c;
	char err[256], *big;
	const char *s, **list;
	json_t *r, *req, *e = NULL;
	long l;
	size_t n;
	gid_t g1[] = { 1000, 50 }, g2[] = { 7 };

	d.cfg = config_load(NULL, err, sizeof(err));
	otpmaild_ctx = &d;

	r = run(&nobody, "{\"op\":\"ping\",\"req_id\":7}");
	ok(json_is_true(json_object_get(r, "ok")), "ping answers ok for anyone");
	is_int(json_integer_value(json_object_get(r, "req_id")), 7, "request id echoed");
	json_decref(r);
	r = run(&admin, "{\"op\":\"config.show\"}");
	ok(json_is_true(json_object_get(r, "ok")) &&
	    json_is_object(json_object_get(r, "config")), "config.show for admin");
	ok(json_object_get(json_object_get(r, "config"), "smarthost_password_file") != NULL,
	    "config.show lists keys");
	json_decref(r);

	expect(&admin, "{\"op\":", "bad_request", "", "malformed JSON");
	expect(&admin, "[1,2]", "bad_request", "", "non-object");
	expect(&admin, "\"ping\"", "bad_request", "", "a bare string");
	expect(&admin, "{}", "bad_request", "op", "missing op");
	expect(&admin, "{\"\\\xde\x82", "bad_request", "",
	    "invalid UTF-8 quoted in a parse error still gives a valid reply");
	expect(&admin, "{\"op\":\"\xff\xfe\"}", "bad_request", "", "invalid UTF-8 op");
	expect(&admin, "{\"op\":5}", "bad_request", "op", "op of the wrong type");
	expect(&admin, "{\"op\":\"no.such\"}", "bad_request", "op", "unknown op");
	expect(&admin, "{\"op\":\"ping\",\"op\":\"ping\"}", "bad_request", "", "duplicate key");
	expect(&admin, "{\"op\":\"ping\",\"req_id\":{}}", "bad_request", "req_id",
	    "req_id of the wrong type");
	expect(&nobody, "{\"op\":\"config.show\"}", "forbidden", NULL, "admin op as nobody");
	expect(&app, "{\"op\":\"config.show\"}", "forbidden", NULL, "admin op as app");
	expect(&nobody, "{\"op\":\"otp.issue\",\"to\":\"a@b.example\"}", "forbidden", NULL,
	    "app op as nobody");
	expect(&app, "{\"op\":\"queue.list\"}", "forbidden", NULL, "queue op as app");

	r = run(&app, "{\"op\":\"help\"}");
	s = json_dumps(json_object_get(r, "ops"), 0);
	ok(s && strstr(s, "otp.issue") && !strstr(s, "queue.delete"),
	    "help lists only what the role may call");
	free((char *)s);
	json_decref(r);

	/* field accessors */
	req = json_loads("{\"s\":\"ab\",\"crlf\":\"a\\r\\nb\",\"nul\":\"a\\u0000b\","
	    "\"i\":5,\"f\":1.5,\"b\":true,\"l\":[\"x\",\"y\"],\"lbad\":[\"x\",1],"
	    "\"txt\":\"line1\\nline2\"}", JSON_ALLOW_NUL, NULL);
	s = NULL;
	ok(req_str(req, "s", 1, 10, &s, &e) == 0 && strcmp(s, "ab") == 0, "req_str ok");
	ok(req_str(req, "s", 1, 1, &s, &e) == -1, "req_str refuses overlong");
	is_str(json_string_value(json_object_get(e, "field")), "s", "  ...naming the field");
	json_decref(e);
	ok(req_str(req, "crlf", 1, 10, &s, &e) == -1, "req_str refuses CR LF");
	json_decref(e);
	ok(req_str(req, "nul", 1, 10, &s, &e) == -1, "req_str refuses NUL");
	json_decref(e);
	ok(req_str(req, "i", 1, 10, &s, &e) == -1, "req_str refuses a number");
	json_decref(e);
	ok(req_str(req, "absent", 1, 10, &s, &e) == -1, "req_str refuses a missing required");
	json_decref(e);
	s = "untouched";
	ok(req_str(req, "absent", 0, 10, &s, &e) == 0 && strcmp(s, "untouched") == 0,
	    "optional absent field left alone");
	ok(req_text(req, "txt", 1, 100, &s, &n, &e) == 0 && n == 11, "req_text allows LF");
	ok(req_int(req, "i", 1, 0, 10, &l, &e) == 0 && l == 5, "req_int ok");
	ok(req_int(req, "i", 1, 6, 10, &l, &e) == -1, "req_int bounds");
	json_decref(e);
	ok(req_int(req, "f", 1, 0, 10, &l, &e) == -1, "req_int refuses a fraction");
	json_decref(e);
	{
		int bv = 0;
		ok(req_bool(req, "b", &bv, &e) == 0 && bv == 1, "req_bool ok");
		ok(req_bool(req, "i", &bv, &e) == -1, "req_bool refuses a number");
		json_decref(e);
	}
	ok(req_str_list(req, "l", 1, 10, 10, &list, &n, &e) == 0 && n == 2 &&
	    strcmp(list[1], "y") == 0 && list[2] == NULL, "req_str_list array");
	free(list);
	ok(req_str_list(req, "s", 1, 10, 10, &list, &n, &e) == 0 && n == 1, "req_str_list string");
	free(list);
	ok(req_str_list(req, "l", 1, 1, 10, &list, &n, &e) == -1, "req_str_list max entries");
	json_decref(e);
	ok(req_str_list(req, "lbad", 1, 10, 10, &list, &n, &e) == -1, "req_str_list wrong type");
	json_decref(e);
	json_decref(req);

	r = reply_limited("rate_limited", "resend_cooldown", 17, "wait");
	is_int(json_integer_value(json_object_get(r, "retry_after")), 17, "retry_after");
	is_str(json_string_value(json_object_get(r, "limit")), "resend_cooldown", "limit name");
	json_decref(r);

	/* a huge line is just malformed JSON to the parser, never a crash */
	big = malloc(1 << 20);
	memset(big, '{', 1 << 20);
	r = ctl_dispatch(&d, &admin, big, 1 << 20);
	is_str(err_of(r), "bad_request", "1 MiB of braces is a bad request");
	json_decref(r);
	free(big);

	/* roles from credentials */
	c = config_load(NULL, err, sizeof(err));
	free(c->app_users);		/* the defaults are empty lists */
	free(c->admin_groups);
	c->app_users = calloc(3, sizeof(char *));
	c->app_users[0] = strdup("1000");
	c->app_users[1] = strdup("daemon");
	c->admin_groups = calloc(2, sizeof(char *));
	c->admin_groups[0] = strdup("7");
	acl = ctl_acl_new(c, 4242);
	is_int(ctl_acl_roles(acl, 0, NULL, 0), ROLE_ANY | ROLE_APP | ROLE_ADMIN, "root is admin");
	is_int(ctl_acl_roles(acl, 4242, NULL, 0), ROLE_ANY | ROLE_APP | ROLE_ADMIN,
	    "the daemon's own uid is admin");
	is_int(ctl_acl_roles(acl, 1000, g1, 2), ROLE_ANY | ROLE_APP, "listed uid is app");
	is_int(ctl_acl_roles(acl, 1, NULL, 0), ROLE_ANY | ROLE_APP, "listed user name is app");
	is_int(ctl_acl_roles(acl, 1234, g2, 1), ROLE_ANY | ROLE_APP | ROLE_ADMIN,
	    "member of an admin group is admin");
	is_int(ctl_acl_roles(acl, 65534, g1, 2), ROLE_ANY, "anyone else: no role");
	ctl_acl_free(acl);
	config_free(c);
	config_free(d.cfg);
	return done_testing();
}
