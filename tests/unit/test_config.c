/*
 * test_config.c - the configuration parser: defaults, a good file, every
 * kind of bad line (unknown key, bad value, missing "=", overlong line,
 * missing file), derived values, repeatable keys, config_print round trip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <pwd.h>

#include "agent/core/config.h"
#include "tests/unit/tap.h"

static char dir[] = "/tmp/otpmail-test-config-XXXXXX";

static const char *
write_conf(const char *name, const char *text)
{
	static char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	fputs(text, f);
	fclose(f);
	return path;
}

/* Loads text; returns NULL and copies the error into err if it fails. */
static struct config *
load(const char *text, char *err, size_t len)
{
	return config_load(write_conf("t.conf", text), err, len);
}

static void
expect_error(const char *text, const char *want, const char *name)
{
	char err[512] = "";
	struct config *c = load(text, err, sizeof(err));

	ok(c == NULL, name);
	if (!ok(strstr(err, want) != NULL, "  ...with a message naming the problem"))
		diag("error was \"%s\", want \"%s\"", err, want);
	config_free(c);
}

int
main(void)
{
	char err[512], big[6000];
	struct config *c;
	char *text = NULL;
	size_t len = 0, i;
	FILE *f;
	const char *const *keys;

	if (mkdtemp(dir) == NULL)
		return 1;

	c = config_load(NULL, err, sizeof(err));
	ok(c != NULL, "built-in defaults load");
	is_int(c->sandbox, 1, "defaults: sandbox mode");
	ok(strstr(c->state_dir, "/otpmail-state") != NULL && c->state_dir[0] == '/',
	    "defaults: ./otpmail-state made absolute");
	ok(strstr(c->control_socket, "otpmail-state/control.sock") != NULL,
	    "defaults: socket inside the state dir");
	is_int(c->otp_length, 6, "defaults: 6-digit codes");
	is_int(c->otp_ttl, 300, "defaults: 5 minute TTL");
	is_int(c->control_socket_mode, 0660, "defaults: socket mode 0660");
	is_int(c->tls_policy, TLS_MAY, "defaults: TLS may");
	ok(c->hostname[0] != '\0', "defaults: a hostname");
	ok(strncmp(c->bounce_from, "MAILER-DAEMON@", 14) == 0, "defaults: bounce_from derived");
	config_free(c);

	c = load("# comment\n\nstate_dir = /var/lib/x\nsandbox = no\notp_ttl = 10m\n"
	    "hostname = mail.example.org\n"
	    "message_size_limit = 2M\nretry_jitter = 0.5\ncontrol_socket_mode = 0600\n"
	    "app_users = root, 0\nroute = example.org [127.0.0.1]:2525\n"
	    "route = example.net mx.example.net\ndomain_tls_policy = example.org verify\n"
	    "smarthost = relay.example.com:587\nfallback_relay = [::1]:25\n"
	    "dkim_key = example.org sel1 rsa-sha256 /etc/k.pem\n"
	    "dkim_key = example.org sel2 ed25519-sha256 /etc/k2.pem\n"
	    "  otp_alphabet   =   alnum   \n", err, sizeof(err));
	if (!ok(c != NULL, "a good file loads"))
		diag("%s", err);
	is_str(c->state_dir, "/var/lib/x", "string value");
	is_int(c->sandbox, 0, "boolean value");
	is_int(c->otp_ttl, 600, "duration with unit");
	is_int(c->message_size_limit, 2 * 1048576, "size with unit");
	ok(c->retry_jitter == 0.5, "double value");
	is_int(c->control_socket_mode, 0600, "octal mode");
	is_str(c->app_users[0], "root", "list value 1");
	is_str(c->app_users[1], "0", "list value 2");
	ok(c->app_users[2] == NULL, "list terminated");
	is_int(c->nroutes, 2, "two routes");
	is_str(c->routes[0].host, "[127.0.0.1]", "route host literal");
	is_int(c->routes[0].port, 2525, "route port");
	is_int(c->routes[1].port, 25, "route default port");
	ok(config_route(c, "EXAMPLE.org") == &c->routes[0], "route lookup ignores case");
	ok(config_route(c, "other.org") == NULL, "no route for others");
	is_int(config_tls_policy(c, "example.org"), TLS_VERIFY, "per-domain TLS policy");
	is_int(config_tls_policy(c, "other.org"), TLS_MAY, "default TLS policy");
	ok(c->smarthost && c->smarthost->port == 587, "smarthost");
	ok(c->nfallback_relays == 1 && strcmp(c->fallback_relays[0].host, "[::1]") == 0,
	    "fallback relay");
	is_int(c->ndkim_keys, 2, "two DKIM keys");
	is_int(c->dkim_keys[1].alg, DKIM_ALG_ED25519_SHA256, "ed25519 key");
	is_str(c->otp_alphabet, "alnum", "white space trimmed");

	/* print, then load what was printed: the same effective configuration */
	f = open_memstream(&text, &len);
	config_print(c, f);
	fclose(f);
	config_free(c);
	c = load(text, err, sizeof(err));
	if (!ok(c != NULL, "printed configuration loads again"))
		diag("%s", err);
	ok(c && c->nroutes == 2 && c->ndkim_keys == 2 && c->otp_ttl == 600,
	    "printed configuration round-trips");
	config_free(c);
	free(text);

	expect_error("no_such_key = 1\n", "t.conf:1: unknown key \"no_such_key\"", "unknown key");
	expect_error("\n\nsandbox maybe\n", "t.conf:3: expected", "missing =");
	expect_error("sandbox = maybe\n", "t.conf:1: sandbox must be yes or no", "bad boolean");
	expect_error("otp_length = 3\n", "otp_length must be", "integer below minimum");
	expect_error("otp_length = 13\n", "otp_length must be", "integer above maximum");
	expect_error("otp_length = six\n", "otp_length must be", "integer not a number");
	expect_error("otp_ttl = 5x\n", "otp_ttl must be a duration", "bad duration unit");
	expect_error("message_size_limit = -1\n", "message_size_limit must be a size",
	    "negative size");
	expect_error("retry_jitter = 2\n", "retry_jitter must be", "double out of range");
	expect_error("control_socket_mode = 999\n", "octal", "bad mode");
	expect_error("otp_alphabet = hex\n", "otp_alphabet must be one of", "bad enum");
	expect_error("dkim_sign_headers = From\v, To\n",
	    "t.conf:1: dkim_sign_headers: control character 0x0b", "control character in a list");
	expect_error("otp_app_name = Acme\x1b[31m\n", "control character 0x1b",
	    "escape sequence in a string");
	expect_error("tls_policy = strict\n", "tls_policy must be", "bad TLS policy");
	expect_error("route = example.org\n", "route takes", "route without host");
	expect_error("route = example.org host:99999\n", "bad port", "route bad port");
	expect_error("route = bad_domain! host\n", "bad domain", "route bad domain");
	expect_error("dkim_key = example.org sel rsa-md5 /k\n", "algorithm", "dkim bad algorithm");
	expect_error("dkim_key = example.org sel\n", "dkim_key takes", "dkim too few words");
	expect_error("domain_tls_policy = example.org maybe\n", "TLS policy", "bad domain policy");
	expect_error("app_users = no-such-user-xyz\n", "no such user", "unknown user");
	expect_error("admin_groups = no-such-group-xyz\n", "no such group", "unknown group");
	expect_error("otp_retry_min = 100s\notp_retry_max = 10s\n", "retry_max", "max < min");
	expect_error("otp_ttl = 2h\notp_max_ttl = 1h\notp_allow_long_ttl = yes\n",
	    "otp_ttl is larger than otp_max_ttl", "ttl > max ttl");
	/* NIST SP 800-63B floors (the override keys are tested in
	 * tests/integration/test_config_floors.py) */
	expect_error("otp_length = 5\n", "100000 possible codes", "5 digits: too few codes");
	expect_error("otp_alphabet = alnum\notp_length = 4\n", "923521 possible codes",
	    "4 alnum characters: too few codes");
	expect_error("otp_ttl = 11m\n", "NIST SP 800-63B", "otp_ttl over 10 minutes");
	expect_error("otp_max_ttl = 1h\n", "otp_allow_long_ttl", "otp_max_ttl over 10 minutes");
	expect_error("control_socket_mode = 0777\n", "control_socket_mode = 0777",
	    "world-writable socket");
	expect_error("control_socket_mode = 0662\n", "every local user", "o+w socket");
	expect_error("control_max_connections = 8\n", "control_admin_reserve",
	    "admin reserve not below the connection limit");
	expect_error("otp_from = Login <noreply@example.org>\n", "bare address",
	    "otp_from with a display name");
	expect_error("sandbox = no\nhostname = vm\n", "fully-qualified",
	    "delivery with a sender domain that has no dot");
	memset(big, 'a', sizeof(big) - 2);
	big[sizeof(big) - 2] = '\n';
	big[sizeof(big) - 1] = '\0';
	expect_error(big, "line longer than", "overlong line");

	c = config_load("/nonexistent/otpmail.conf", err, sizeof(err));
	ok(c == NULL && strstr(err, "/nonexistent/otpmail.conf") &&
	    strstr(err, "No such file"), "missing file named in the error");

	/* every key is documented in the sample config */
	keys = config_keys();
	f = fopen(SRCDIR "/etc/otpmail.conf", "r");
	if (ok(f != NULL, "sample config exists")) {
		char *sample = NULL;
		size_t cap = 0;
		ssize_t n = getdelim(&sample, &cap, '\0', f);
		int missing = 0;
		fclose(f);
		for (i = 0; keys[i] != NULL && n > 0; i++) {
			char pat[128];
			snprintf(pat, sizeof(pat), "# %s =", keys[i]);
			if (strstr(sample, pat) == NULL) {
				diag("key %s is not documented in etc/otpmail.conf", keys[i]);
				missing++;
			}
		}
		is_int(missing, 0, "every key documented in etc/otpmail.conf");
		/*
		 * The sample itself loads.  It names user = otpmail, which the
		 * package makes (debian/otpmail.postinst); before the package
		 * was ever installed here, a copy names root instead, so the
		 * rest of the sample is still checked.
		 */
		if (getpwnam("otpmail") != NULL)
			c = config_load(SRCDIR "/etc/otpmail.conf", err, sizeof(err));
		else {
			char *u = n > 0 ? strstr(sample, "\nuser = otpmail\n") : NULL;

			if (ok(u != NULL, "the sample names user = otpmail")) {
				memcpy(u, "\nuser = root   \n", 17);
				diag("no user otpmail here (the package makes it): "
				    "the sample is loaded with user = root");
			}
			c = config_load(write_conf("sample.conf", sample), err, sizeof(err));
			unlink(write_conf("sample.conf", ""));
		}
		if (!ok(c != NULL, "sample config loads"))
			diag("%s", err);
		config_free(c);
		free(sample);
	}

	unlink(write_conf("t.conf", ""));
	rmdir(dir);
	return done_testing();
}
