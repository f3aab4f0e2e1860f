/*
 * config.c - the configuration file: "key = value" lines, "#" comments.
 * Every key is one row of config_table with its type, default and bounds;
 * defaults go through the same parser as the file.  Errors name file:line.
 */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <netdb.h>
#include <pwd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "agent/core/config.h"

#define CONFIG_LINE_MAX	4096
#define OTP_ALNUM_SIZE	31		/* store/code.c: 2-9 and A-Z less I, L, O */
#define OTP_MIN_CODE_SPACE 1e6		/* NIST SP 800-63B: 20 bits */
#define OTP_MAX_SAFE_TTL 600		/* NIST SP 800-63B: 10 minutes */

enum cfg_type {
	T_STR, T_BOOL, T_INT, T_DUR, T_SIZE, T_U64, T_DOUBLE, T_MODE, T_LIST,
	T_ENUM, T_TLS, T_SPECIAL
};

struct cfg_key {
	const char	*name;
	enum cfg_type	 type;
	size_t		 off;
	const char	*def;		/* parsed like a file value; NULL = none */
	long		 min, max;	/* T_INT, T_DUR bounds */
	const char	*choices;	/* T_ENUM: "a|b|c" */
	int		(*parse)(struct config *, const char *, char *, size_t);
	void		(*print)(const struct config *, FILE *, const char *);
	int		 secret;	/* elided from config.show */
};

static int	cfg_check_limits(struct config *, char *, size_t);
static void	cfg_warn(struct config *, const char *, ...) __attribute__((format(printf, 2, 3)));
static int	cfg_dkim_key(struct config *, const char *, char *, size_t);
static int	cfg_route(struct config *, const char *, char *, size_t);
static int	cfg_domain_tls(struct config *, const char *, char *, size_t);
static int	cfg_smarthost(struct config *, const char *, char *, size_t);
static int	cfg_fallback(struct config *, const char *, char *, size_t);
static void	cfg_print_dkim(const struct config *, FILE *, const char *);
static void	cfg_print_routes(const struct config *, FILE *, const char *);
static void	cfg_print_domain_tls(const struct config *, FILE *, const char *);
static void	cfg_print_smarthost(const struct config *, FILE *, const char *);
static void	cfg_print_fallback(const struct config *, FILE *, const char *);

#define O(f)	offsetof(struct config, f)
#define STR(n, d)		{ #n, T_STR, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define SECRETSTR(n, d)		{ #n, T_STR, O(n), d, 0, 0, NULL, NULL, NULL, 1 }
#define BOOL(n, d)		{ #n, T_BOOL, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define INT(n, d, lo, hi)	{ #n, T_INT, O(n), d, lo, hi, NULL, NULL, NULL, 0 }
#define DUR(n, d, lo, hi)	{ #n, T_DUR, O(n), d, lo, hi, NULL, NULL, NULL, 0 }
#define SIZE(n, d, lo, hi)	{ #n, T_SIZE, O(n), d, lo, hi, NULL, NULL, NULL, 0 }
#define U64(n, d)		{ #n, T_U64, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define DBL(n, d, lo, hi)	{ #n, T_DOUBLE, O(n), d, lo, hi, NULL, NULL, NULL, 0 }
#define MODE(n, d)		{ #n, T_MODE, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define LIST(n, d)		{ #n, T_LIST, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define ENUM(n, d, c)		{ #n, T_ENUM, O(n), d, 0, 0, c, NULL, NULL, 0 }
#define TLS(n, d)		{ #n, T_TLS, O(n), d, 0, 0, NULL, NULL, NULL, 0 }
#define SPECIAL(n, p, pr)	{ #n, T_SPECIAL, 0, NULL, 0, 0, NULL, p, pr, 0 }

#define DAY	86400L
static const struct cfg_key config_table[] = {
	/* general */
	STR(state_dir, "./otpmail-state"),
	STR(control_socket, ""),
	MODE(control_socket_mode, "0660"),
	BOOL(control_socket_allow_world_writable, "no"),
	STR(control_socket_group, ""),
	STR(user, ""),
	BOOL(sandbox, "yes"),
	STR(sandbox_maildir, ""),
	STR(hostname, ""),
	STR(origin_domain, ""),
	STR(aliases_file, "/etc/aliases"),
	STR(metrics_listen, ""),
	BOOL(log_stderr, "yes"),
	BOOL(log_syslog, "no"),
	ENUM(log_level, "info", "debug|info|warning|error"),
	BOOL(log_pseudonymize, "yes"),
	/* access */
	LIST(app_users, ""),
	LIST(app_groups, ""),
	LIST(admin_users, ""),
	LIST(admin_groups, ""),
	SPECIAL(app, config_app_parse, config_app_print),
	/* control socket */
	SIZE(control_max_line, "16M", 1024, 1L << 30),
	INT(control_max_connections, "256", 1, 100000),
	INT(control_admin_reserve, "8", 0, 100000),
	INT(control_max_connections_per_uid, "64", 1, 100000),
	INT(control_anon_max_connections, "16", 0, 100000),
	INT(control_anon_max_connections_per_uid, "4", 0, 100000),
	DUR(control_anon_idle_timeout, "5s", 1, DAY),
	DUR(control_idle_timeout, "300s", 1, DAY),
	INT(control_max_pipeline, "64", 1, 100000),
	INT(request_workers, "16", 1, 256),
	/* queue */
	SIZE(message_size_limit, "10M", 1024, 1L << 30),
	INT(max_recipients, "100", 1, 100000),
	U64(queue_min_free_space, "100M"),
	U64(queue_min_free_inodes, "1000"),
	BOOL(queue_segments, "no"),
	DUR(otp_retry_min, "5s", 1, DAY),
	DUR(otp_retry_max, "60s", 1, DAY),
	DUR(default_retry_min, "300s", 1, DAY),
	DUR(default_retry_max, "4000s", 1, DAY),
	DUR(default_lifetime, "5d", 60, 365 * DAY),
	DBL(retry_jitter, "0.2", 0, 1),
	DUR(queue_keep_done, "1d", 0, 365 * DAY),
	STR(bounce_from, ""),
	STR(bounce_rules_file, ""),
	BOOL(suppress_hard_bounces, "yes"),
	DUR(suppress_ttl, "30d", 0, 3650 * DAY),
	/* one-time codes */
	INT(otp_length, "6", 4, 12),
	ENUM(otp_alphabet, "digits", "digits|alnum"),
	DUR(otp_ttl, "300s", 30, DAY),
	DUR(otp_max_ttl, "600s", 30, DAY),
	BOOL(otp_allow_small_code_space, "no"),
	BOOL(otp_allow_long_ttl, "no"),
	INT(otp_keep_codes, "3", 1, 16),
	DUR(otp_resend_cooldown, "30s", 0, DAY),
	INT(otp_max_per_address_hour, "10", 1, 1000000),
	INT(otp_max_per_client_id_hour, "30", 0, 1000000),
	INT(otp_max_per_client_minute, "6000", 1, 100000000),
	INT(otp_max_global_per_second, "0", 0, 100000000),
	INT(otp_max_failures_per_code, "5", 1, 100),
	INT(otp_max_failed_verifies_per_client_minute, "6000", 0, 100000000),
	INT(otp_max_failed_verifies_per_second, "0", 0, 100000000),
	INT(otp_lockout_after, "10", 1, 100),
	DUR(otp_lockout_base, "60s", 1, DAY),
	DUR(otp_lockout_max, "3600s", 1, 30 * DAY),
	INT(otp_max_consecutive_failures, "100", 1, 100),
	DUR(otp_sweep_interval, "60s", 1, DAY),
	STR(otp_from, ""),
	STR(otp_app_name, "otpmail"),
	STR(otp_default_locale, "en"),
	STR(templates_dir, ""),
	STR(otp_old_secret_file, ""),
	STR(cluster_site, ""),
	LIST(cluster_peers, ""),
	INT(cluster_priority, "100", 0, 1000000),
	STR(cluster_secret_file, "cluster.key"),
	INT(cluster_base_port, "7800", 1024, 65000),
	DUR(cluster_start_timeout, "60s", 1, 3600),
	BOOL(otp_check_deliverability, "yes"),
	BOOL(otp_app_from_request, "yes"),
	STR(otp_limit_tag_separators, "+"),
	BOOL(allow_address_literals, "no"),
	BOOL(smtputf8, "yes"),
	BOOL(otp_verify_detail, "no"),
	BOOL(otp_permanent_lockout, "no"),
	/* DKIM */
	SPECIAL(dkim_key, cfg_dkim_key, cfg_print_dkim),
	ENUM(dkim_canonicalization, "relaxed/relaxed",
	    "relaxed/relaxed|relaxed/simple|simple/relaxed|simple/simple"),
	LIST(dkim_sign_headers, "From, To, Cc, Subject, Date, Message-ID, Reply-To, "
	    "In-Reply-To, References, MIME-Version, Content-Type, "
	    "Content-Transfer-Encoding, Auto-Submitted, List-Unsubscribe, "
	    "List-Unsubscribe-Post, Feedback-ID"),
	LIST(dkim_oversign_headers, "From, To, Subject, List-Unsubscribe, "
	    "List-Unsubscribe-Post"),
	/* delivery */
	INT(delivery_workers, "16", 1, 1024),
	STR(delivery_user, "otpmail-smtp"),
	INT(max_connections, "100", 1, 100000),
	INT(max_connections_per_domain, "10", 1, 10000),
	DBL(domain_rate, "0", 0, 1000000),
	INT(session_reuse_max, "100", 1, 100000),
	DUR(session_idle_timeout, "5s", 0, 3600),
	INT(smtp_port, "25", 1, 65535),
	DUR(smtp_connect_timeout, "30s", 1, 3600),
	DUR(smtp_greeting_timeout, "300s", 1, 3600),
	DUR(smtp_command_timeout, "300s", 1, 3600),
	DUR(smtp_data_timeout, "180s", 1, 3600),
	DUR(smtp_data_done_timeout, "600s", 1, 3600),
	STR(resolver, ""),
	STR(dns_trust_anchor, ""),
	BOOL(mx_allow_internal, "no"),
	TLS(tls_policy, "may"),
	SPECIAL(domain_tls_policy, cfg_domain_tls, cfg_print_domain_tls),
	STR(tls_ca_file, ""),
	BOOL(mta_sts, "yes"),
	DUR(mta_sts_check_interval, "300s", 0, 86400),
	DUR(mta_sts_fetch_timeout, "30s", 1, 300),
	BOOL(tls_rpt, "yes"),
	DUR(tls_rpt_interval, "86400s", 1, 30 * 86400),
	STR(tls_rpt_from, ""),
	SPECIAL(route, cfg_route, cfg_print_routes),
	SPECIAL(smarthost, cfg_smarthost, cfg_print_smarthost),
	SPECIAL(fallback_relay, cfg_fallback, cfg_print_fallback),
	STR(smarthost_user, ""),
	SECRETSTR(smarthost_password_file, ""),
	/* delivery events and webhooks */
	DUR(events_keep, "7d", 60, 365 * DAY),
	SIZE(events_subscriber_buffer, "1M", 4096, 1L << 30),
	SPECIAL(app_webhook, config_webhook_parse, config_webhook_print),
	DUR(webhook_timeout, "10s", 1, 300),
	DUR(webhook_retry_min, "5s", 1, 3600),
	DUR(webhook_retry_max, "1h", 1, DAY),
	DUR(webhook_max_age, "1d", 60, 30 * DAY),
	STR(webhook_ca_file, ""),
	{ NULL, 0, 0, NULL, 0, 0, NULL, NULL, NULL, 0 }
};

static const char *const tls_names[] = { "none", "may", "encrypt", "verify", "dane" };

const char *
tls_policy_name(enum tls_policy p)
{
	return (unsigned)p < sizeof(tls_names) / sizeof(tls_names[0]) ? tls_names[p] : "?";
}

int
tls_policy_parse(const char *s)
{
	size_t i;

	for (i = 0; i < sizeof(tls_names) / sizeof(tls_names[0]); i++)
		if (strcasecmp(s, tls_names[i]) == 0)
			return (int)i;
	return -1;
}

const char *const *
config_keys(void)
{
	static const char *names[sizeof(config_table) / sizeof(config_table[0])];
	size_t i;

	for (i = 0; config_table[i].name != NULL; i++)
		names[i] = config_table[i].name;
	names[i] = NULL;
	return names;
}

static char *
cfg_strdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		abort();
	return p;
}

static void *
cfg_grow(void *arr, size_t n, size_t size)
{
	void *p = realloc(arr, (n + 1) * size);

	if (p == NULL)
		abort();
	memset((char *)p + n * size, 0, size);
	return p;
}

/* Splits a value into words at white space; returns the count (max n). */
static size_t
cfg_words(char *s, char **w, size_t n)
{
	size_t i = 0;
	char *save = NULL, *t;

	for (t = strtok_r(s, " \t", &save); t != NULL && i < n;
	    t = strtok_r(NULL, " \t", &save))
		w[i++] = t;
	return t != NULL ? n + 1 : i;
}

static int
cfg_domain_ok(const char *d)
{
	size_t i, n = strlen(d);

	if (n == 0 || n > 253)
		return 0;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)d[i]) && d[i] != '-' && d[i] != '.')
			return 0;
	return 1;
}

/* "host", "host:port", "[addr]", "[addr]:port" */
static int
cfg_hostport(const char *v, char **host, int *port, int defport, char *err, size_t errlen)
{
	const char *colon;
	char *end;
	long p = defport;
	size_t hl;

	if (v[0] == '[') {
		const char *rb = strchr(v, ']');
		if (rb == NULL) {
			snprintf(err, errlen, "missing ']' in \"%s\"", v);
			return -1;
		}
		colon = rb[1] == ':' ? rb + 1 : NULL;
		if (rb[1] != '\0' && colon == NULL) {
			snprintf(err, errlen, "junk after ']' in \"%s\"", v);
			return -1;
		}
		hl = rb + 1 - v;
	} else {
		colon = strrchr(v, ':');
		hl = colon ? (size_t)(colon - v) : strlen(v);
	}
	if (colon != NULL) {
		errno = 0;
		p = strtol(colon + 1, &end, 10);
		if (errno || *end != '\0' || p < 1 || p > 65535) {
			snprintf(err, errlen, "bad port in \"%s\"", v);
			return -1;
		}
	}
	if (hl == 0 || hl > 255) {
		snprintf(err, errlen, "bad host in \"%s\"", v);
		return -1;
	}
	*host = strndup(v, hl);
	if (*host == NULL)
		abort();
	if (v[0] != '[' && !cfg_domain_ok(*host)) {
		snprintf(err, errlen, "bad host name \"%s\"", *host);
		free(*host);
		return -1;
	}
	*port = (int)p;
	return 0;
}

static int
cfg_dkim_key(struct config *c, const char *val, char *err, size_t errlen)
{
	char *copy = cfg_strdup(val), *w[5];
	struct dkim_key_conf *k;
	size_t i;
	int alg;

	if (cfg_words(copy, w, 4) != 4) {
		snprintf(err, errlen, "dkim_key takes \"domain selector algorithm keyfile\"");
		goto fail;
	}
	if (!cfg_domain_ok(w[0]) || !cfg_domain_ok(w[1])) {
		snprintf(err, errlen, "bad domain or selector in dkim_key");
		goto fail;
	}
	if ((alg = dkim_alg_parse(w[2])) == -1) {
		snprintf(err, errlen, "dkim_key algorithm must be rsa-sha256 or ed25519-sha256");
		goto fail;
	}
	for (i = 0; i < c->ndkim_keys; i++)
		if (strcasecmp(c->dkim_keys[i].domain, w[0]) == 0 &&
		    strcasecmp(c->dkim_keys[i].selector, w[1]) == 0) {
			snprintf(err, errlen, "a second dkim_key for selector %s of %s", w[1], w[0]);
			goto fail;
		}
	c->dkim_keys = cfg_grow(c->dkim_keys, c->ndkim_keys, sizeof(*c->dkim_keys));
	k = &c->dkim_keys[c->ndkim_keys++];
	k->domain = cfg_strdup(w[0]);
	k->selector = cfg_strdup(w[1]);
	k->alg = alg;
	k->keyfile = cfg_strdup(w[3]);
	free(copy);
	return 0;
fail:
	free(copy);
	return -1;
}

static int
cfg_route(struct config *c, const char *val, char *err, size_t errlen)
{
	char *copy = cfg_strdup(val), *w[3];
	struct route *r;
	char *host;
	size_t i;
	int port;

	if (cfg_words(copy, w, 2) != 2) {
		snprintf(err, errlen, "route takes \"domain host[:port]\"");
		goto fail;
	}
	if (!cfg_domain_ok(w[0])) {
		snprintf(err, errlen, "bad domain \"%s\" in route", w[0]);
		goto fail;
	}
	if (cfg_hostport(w[1], &host, &port, 25, err, errlen) == -1)
		goto fail;
	for (i = 0; i < c->nroutes; i++)
		if (strcasecmp(c->routes[i].domain, w[0]) == 0) {
			snprintf(err, errlen, "a second route for %s", w[0]);
			free(host);
			goto fail;
		}
	c->routes = cfg_grow(c->routes, c->nroutes, sizeof(*c->routes));
	r = &c->routes[c->nroutes++];
	r->domain = cfg_strdup(w[0]);
	r->host = host;
	r->port = port;
	free(copy);
	return 0;
fail:
	free(copy);
	return -1;
}

static int
cfg_domain_tls(struct config *c, const char *val, char *err, size_t errlen)
{
	char *copy = cfg_strdup(val), *w[3];
	size_t i;
	int p;

	if (cfg_words(copy, w, 2) != 2 || !cfg_domain_ok(w[0])) {
		snprintf(err, errlen, "domain_tls_policy takes \"domain policy\"");
		goto fail;
	}
	if ((p = tls_policy_parse(w[1])) == -1) {
		snprintf(err, errlen, "TLS policy must be none, may, encrypt, verify or dane");
		goto fail;
	}
	for (i = 0; i < c->ndomain_tls; i++)
		if (strcasecmp(c->domain_tls[i].domain, w[0]) == 0) {
			snprintf(err, errlen, "a second domain_tls_policy for %s", w[0]);
			goto fail;
		}
	c->domain_tls = cfg_grow(c->domain_tls, c->ndomain_tls, sizeof(*c->domain_tls));
	c->domain_tls[c->ndomain_tls].domain = cfg_strdup(w[0]);
	c->domain_tls[c->ndomain_tls++].policy = p;
	free(copy);
	return 0;
fail:
	free(copy);
	return -1;
}

static int
cfg_smarthost(struct config *c, const char *val, char *err, size_t errlen)
{
	struct relay r;

	if (*val == '\0') {
		if (c->smarthost) {
			free(c->smarthost->host);
			free(c->smarthost);
			c->smarthost = NULL;
		}
		return 0;
	}
	if (cfg_hostport(val, &r.host, &r.port, 25, err, errlen) == -1)
		return -1;
	if (c->smarthost) {
		free(c->smarthost->host);
		free(c->smarthost);
	}
	if ((c->smarthost = malloc(sizeof(r))) == NULL)
		abort();
	*c->smarthost = r;
	return 0;
}

static int
cfg_fallback(struct config *c, const char *val, char *err, size_t errlen)
{
	struct relay r;

	if (cfg_hostport(val, &r.host, &r.port, 25, err, errlen) == -1)
		return -1;
	c->fallback_relays = cfg_grow(c->fallback_relays, c->nfallback_relays,
	    sizeof(*c->fallback_relays));
	c->fallback_relays[c->nfallback_relays++] = r;
	return 0;
}

static void
cfg_print_relay(FILE *f, const char *key, const struct relay *r)
{
	fprintf(f, "%s = %s:%d\n", key, r->host, r->port);
}

static void
cfg_print_dkim(const struct config *c, FILE *f, const char *key)
{
	size_t i;

	for (i = 0; i < c->ndkim_keys; i++)
		fprintf(f, "%s = %s %s %s %s\n", key, c->dkim_keys[i].domain,
		    c->dkim_keys[i].selector, dkim_alg_name(c->dkim_keys[i].alg),
		    c->dkim_keys[i].keyfile);
}

static void
cfg_print_routes(const struct config *c, FILE *f, const char *key)
{
	size_t i;

	for (i = 0; i < c->nroutes; i++)
		fprintf(f, "%s = %s %s:%d\n", key, c->routes[i].domain,
		    c->routes[i].host, c->routes[i].port);
}

static void
cfg_print_domain_tls(const struct config *c, FILE *f, const char *key)
{
	size_t i;

	for (i = 0; i < c->ndomain_tls; i++)
		fprintf(f, "%s = %s %s\n", key, c->domain_tls[i].domain,
		    tls_policy_name(c->domain_tls[i].policy));
}

static void
cfg_print_smarthost(const struct config *c, FILE *f, const char *key)
{
	if (c->smarthost)
		cfg_print_relay(f, key, c->smarthost);
}

static void
cfg_print_fallback(const struct config *c, FILE *f, const char *key)
{
	size_t i;

	for (i = 0; i < c->nfallback_relays; i++)
		cfg_print_relay(f, key, &c->fallback_relays[i]);
}

static int
cfg_bool(const char *v, int *out)
{
	if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcmp(v, "1") ||
	    !strcasecmp(v, "on"))
		*out = 1;
	else if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcmp(v, "0") ||
	    !strcasecmp(v, "off"))
		*out = 0;
	else
		return -1;
	return 0;
}

/* A number with an optional unit suffix; units is "s=1,m=60,..." style. */
static int
cfg_number(const char *v, const char *units, const long *mult, unsigned long long *out)
{
	unsigned long long n;
	const char *u;
	char *end;

	if (!isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno)
		return -1;
	if (*end != '\0') {
		if (end[1] != '\0' || (u = strchr(units, *end)) == NULL)
			return -1;
		if (n > ULLONG_MAX / (unsigned long long)mult[u - units])
			return -1;
		n *= mult[u - units];
	}
	*out = n;
	return 0;
}

static void
cfg_free_list(char **l)
{
	size_t i;

	for (i = 0; l && l[i]; i++)
		free(l[i]);
	free(l);
}

static int
cfg_set(struct config *c, const struct cfg_key *k, const char *v, char *err, size_t errlen)
{
	static const long dur_mult[] = { 1, 60, 3600, 86400 };
	static const long size_mult[] = { 1024, 1024, 1048576, 1048576, 1073741824, 1073741824 };
	void *field = (char *)c + k->off;
	unsigned long long n;
	double d;
	const char *q;
	char *end;
	int b;

	/* No value has a use for control characters (a tab separates list
	 * items); one is a typo or an attack on a header or a log line. */
	for (q = v; *q != '\0'; q++)
		if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f) {
			snprintf(err, errlen, "%s: control character 0x%02x in the value",
			    k->name, (unsigned char)*q);
			return -1;
		}
	switch (k->type) {
	case T_STR:
		free(*(char **)field);
		*(char **)field = cfg_strdup(v);
		return 0;
	case T_BOOL:
		if (cfg_bool(v, &b) == -1) {
			snprintf(err, errlen, "%s must be yes or no", k->name);
			return -1;
		}
		*(int *)field = b;
		return 0;
	case T_INT:
	case T_DUR:
		if (cfg_number(v, k->type == T_DUR ? "smhd" : "", dur_mult, &n) == -1 ||
		    n < (unsigned long long)k->min || n > (unsigned long long)k->max) {
			snprintf(err, errlen, "%s must be %s from %ld to %ld", k->name,
			    k->type == T_DUR ? "a duration (s, m, h, d) in seconds" :
			    "a whole number", k->min, k->max);
			return -1;
		}
		*(int *)field = (int)n;
		return 0;
	case T_SIZE:
	case T_U64:
		if (cfg_number(v, "kKmMgG", size_mult, &n) == -1 ||
		    (k->type == T_SIZE && (n < (unsigned long long)k->min ||
		    n > (unsigned long long)k->max))) {
			snprintf(err, errlen, "%s must be a size in bytes (suffix k, M, G)%s",
			    k->name, k->type == T_SIZE ? " within its bounds" : "");
			return -1;
		}
		if (k->type == T_SIZE)
			*(size_t *)field = n;
		else
			*(uint64_t *)field = n;
		return 0;
	case T_DOUBLE:
		errno = 0;
		d = strtod(v, &end);
		if (errno || end == v || *end != '\0' || d < k->min || d > k->max) {
			snprintf(err, errlen, "%s must be a number from %ld to %ld",
			    k->name, k->min, k->max);
			return -1;
		}
		*(double *)field = d;
		return 0;
	case T_MODE:
		errno = 0;
		n = strtoul(v, &end, 8);
		if (errno || end == v || *end != '\0' || n > 0777) {
			snprintf(err, errlen, "%s must be an octal file mode", k->name);
			return -1;
		}
		*(unsigned *)field = n;
		return 0;
	case T_LIST: {
		char *copy = cfg_strdup(v), *save = NULL, *t, **list = NULL;
		size_t cnt = 0;

		for (t = strtok_r(copy, ", \t", &save); t != NULL;
		    t = strtok_r(NULL, ", \t", &save)) {
			list = cfg_grow(list, cnt + 1, sizeof(char *));
			list[cnt++] = cfg_strdup(t);
		}
		if (list == NULL)
			list = cfg_grow(NULL, 0, sizeof(char *));
		free(copy);
		cfg_free_list(*(char ***)field);
		*(char ***)field = list;
		return 0;
	}
	case T_ENUM: {
		const char *p = k->choices;
		size_t vl = strlen(v);

		while (p) {
			const char *bar = strchr(p, '|');
			size_t l = bar ? (size_t)(bar - p) : strlen(p);
			if (l == vl && strncmp(p, v, l) == 0) {
				free(*(char **)field);
				*(char **)field = cfg_strdup(v);
				return 0;
			}
			p = bar ? bar + 1 : NULL;
		}
		snprintf(err, errlen, "%s must be one of %s", k->name, k->choices);
		return -1;
	}
	case T_TLS:
		if ((b = tls_policy_parse(v)) == -1) {
			snprintf(err, errlen, "%s must be none, may, encrypt, verify or dane",
			    k->name);
			return -1;
		}
		*(enum tls_policy *)field = b;
		return 0;
	case T_SPECIAL:
		return k->parse(c, v, err, errlen);
	}
	return -1;
}

static const struct cfg_key *
cfg_find(const char *name)
{
	const struct cfg_key *k;

	for (k = config_table; k->name != NULL; k++)
		if (strcmp(k->name, name) == 0)
			return k;
	return NULL;
}

static char *
cfg_trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/*
 * The line that set the last of the keys named (space-separated): a check
 * of several keys together names where the file set them; 0 = defaults.
 */
static int
cfg_line(const int *lines, const char *names)
{
	char name[64];
	const struct cfg_key *k;
	size_t n;
	int line = 0;

	while (*names != '\0') {
		n = strcspn(names, " ");
		snprintf(name, sizeof(name), "%.*s", (int)n, names);
		names += n + (names[n] == ' ');
		if ((k = cfg_find(name)) != NULL && lines[k - config_table] > line)
			line = lines[k - config_table];
	}
	return line;
}

/* Checks user and group names exist, so a typo fails at start. */
static int
cfg_check_names(const struct config *c, const int *lines, int *errline, char *err,
    size_t errlen)
{
	char *const *lists[] = { c->app_users, c->admin_users, c->app_groups, c->admin_groups };
	const char *names[] = { "app_users", "admin_users", "app_groups", "admin_groups" };
	size_t i, j;
	char *end;

	for (i = 0; i < 4; i++) {
		for (j = 0; lists[i] && lists[i][j]; j++) {
			const char *n = lists[i][j];
			strtoul(n, &end, 10);
			if (*n != '\0' && *end == '\0')
				continue;	/* numeric id */
			if (i < 2 ? getpwnam(n) == NULL : getgrnam(n) == NULL) {
				*errline = cfg_line(lines, names[i]);
				snprintf(err, errlen, "%s: no such %s \"%s\"", names[i],
				    i < 2 ? "user" : "group", n);
				return -1;
			}
		}
	}
	if (c->user[0] != '\0' && getpwnam(c->user) == NULL) {
		*errline = cfg_line(lines, "user");
		snprintf(err, errlen, "user: no such user \"%s\"", c->user);
		return -1;
	}
	/* the default falls back to nobody where it does not exist (privsep.c) */
	if (strcmp(c->delivery_user, "otpmail-smtp") != 0 &&
	    (c->delivery_user[0] == '\0' || getpwnam(c->delivery_user) == NULL)) {
		*errline = cfg_line(lines, "delivery_user");
		snprintf(err, errlen, "delivery_user: no such user \"%s\"", c->delivery_user);
		return -1;
	}
	if (c->control_socket_group[0] != '\0' && getgrnam(c->control_socket_group) == NULL) {
		*errline = cfg_line(lines, "control_socket_group");
		snprintf(err, errlen, "control_socket_group: no such group \"%s\"",
		    c->control_socket_group);
		return -1;
	}
	return 0;
}

static void
cfg_warn(struct config *c, const char *fmt, ...)
{
	va_list ap;
	char *w;

	va_start(ap, fmt);
	if (vasprintf(&w, fmt, ap) == -1)
		abort();
	va_end(ap);
	c->warnings = cfg_grow(c->warnings, c->nwarnings + 1, sizeof(char *));
	c->warnings[c->nwarnings++] = w;
}

/*
 * NIST SP 800-63B floors for a code that authenticates: at least 10^6
 * possible codes (about 20 bits) in any alphabet, valid at most 10
 * minutes.  Below them only with the admin's explicit override, and then
 * with a warning; a socket anyone may connect to is refused outright
 * unless allowed by name.
 */
static int
cfg_check_limits(struct config *c, char *err, size_t errlen)
{
	double space = 1;
	int i;

	for (i = 0; i < c->otp_length; i++)
		space *= strcmp(c->otp_alphabet, "alnum") == 0 ? OTP_ALNUM_SIZE : 10;

	if (space < OTP_MIN_CODE_SPACE) {
		if (!c->otp_allow_small_code_space) {
			snprintf(err, errlen, "otp_length = %d with otp_alphabet = %s gives "
			    "%.0f possible codes, fewer than the 1000000 NIST SP 800-63B "
			    "asks for; lengthen the code, or set otp_allow_small_code_space "
			    "= yes to accept the risk", c->otp_length, c->otp_alphabet, space);
			return -1;
		}
		cfg_warn(c, "otp_length = %d with otp_alphabet = %s gives only %.0f "
		    "possible codes, below NIST SP 800-63B (otp_allow_small_code_space "
		    "= yes)", c->otp_length, c->otp_alphabet, space);
	}
	if (c->otp_ttl > OTP_MAX_SAFE_TTL || c->otp_max_ttl > OTP_MAX_SAFE_TTL) {
		if (!c->otp_allow_long_ttl) {
			snprintf(err, errlen, "%s = %ds is longer than the %d s NIST SP "
			    "800-63B allows a code that authenticates (otp_ttl and "
			    "otp_max_ttl); shorten it, or set otp_allow_long_ttl = yes to "
			    "accept the risk",
			    c->otp_ttl > OTP_MAX_SAFE_TTL ? "otp_ttl" : "otp_max_ttl",
			    c->otp_ttl > OTP_MAX_SAFE_TTL ? c->otp_ttl : c->otp_max_ttl,
			    OTP_MAX_SAFE_TTL);
			return -1;
		}
		cfg_warn(c, "otp_ttl = %ds, otp_max_ttl = %ds: codes may live longer than "
		    "the %d s of NIST SP 800-63B (otp_allow_long_ttl = yes)", c->otp_ttl,
		    c->otp_max_ttl, OTP_MAX_SAFE_TTL);
	}
	if (c->control_socket_mode & 0002) {
		if (!c->control_socket_allow_world_writable) {
			snprintf(err, errlen, "control_socket_mode = %04o lets every local "
			    "user connect; use 0660 with control_socket_group (or set "
			    "control_socket_allow_world_writable = yes)", c->control_socket_mode);
			return -1;
		}
		cfg_warn(c, "control_socket_mode = %04o: every local user may connect "
		    "(control_socket_allow_world_writable = yes)", c->control_socket_mode);
	}
	if (c->control_admin_reserve >= c->control_max_connections) {
		snprintf(err, errlen, "control_admin_reserve (%d) must be smaller than "
		    "control_max_connections (%d)", c->control_admin_reserve,
		    c->control_max_connections);
		return -1;
	}
	return 0;
}

static char *
cfg_join(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) == -1)
		abort();
	return p;
}

/* Fills the values whose defaults derive from others. */
static int
cfg_finish(struct config *c, const int *lines, int *errline, char *err, size_t errlen)
{
	char cwd[PATH_MAX], host[256], *p;
	struct addrinfo hints, *ai;

	if (c->state_dir[0] != '/') {
		const char *rel = c->state_dir;
		if (getcwd(cwd, sizeof(cwd)) == NULL) {
			*errline = cfg_line(lines, "state_dir");
			snprintf(err, errlen, "getcwd: %s", strerror(errno));
			return -1;
		}
		if (strncmp(rel, "./", 2) == 0)
			rel += 2;
		p = cfg_join(cwd, rel);
		free(c->state_dir);
		c->state_dir = p;
	}
	if (c->control_socket[0] == '\0') {
		free(c->control_socket);
		c->control_socket = cfg_join(c->state_dir, "control.sock");
	}
	if (c->sandbox_maildir[0] == '\0') {
		free(c->sandbox_maildir);
		c->sandbox_maildir = cfg_join(c->state_dir, "sandbox");
	}
	if (c->hostname[0] == '\0') {
		if (gethostname(host, sizeof(host)) == -1)
			strcpy(host, "localhost");
		host[sizeof(host) - 1] = '\0';
		if (strchr(host, '.') == NULL) {
			memset(&hints, 0, sizeof(hints));
			hints.ai_flags = AI_CANONNAME;
			if (getaddrinfo(host, NULL, &hints, &ai) == 0) {
				if (ai->ai_canonname && strlen(ai->ai_canonname) < sizeof(host))
					strcpy(host, ai->ai_canonname);
				freeaddrinfo(ai);
			}
		}
		free(c->hostname);
		c->hostname = cfg_strdup(host);
	}
	if (c->metrics_listen[0] != '\0') {
		char *host = NULL;
		int port = 0;
		if (cfg_hostport(c->metrics_listen, &host, &port, 0, err, errlen) == -1)
			return -1;
		free(host);
		if (port == 0) {
			snprintf(err, errlen, "metrics_listen: give host:port, e.g. "
			    "127.0.0.1:9425");
			return -1;
		}
	}
	if (c->origin_domain[0] != '\0' && !cfg_domain_ok(c->origin_domain)) {
		snprintf(err, errlen, "origin_domain: \"%s\" is not a domain name",
		    c->origin_domain);
		return -1;
	}
	if (c->otp_from[0] == '\0') {
		free(c->otp_from);
		if (asprintf(&c->otp_from, "noreply@%s", c->hostname) == -1)
			abort();
	}
	if (c->bounce_from[0] == '\0') {
		free(c->bounce_from);
		if (asprintf(&c->bounce_from, "MAILER-DAEMON@%s", c->hostname) == -1)
			abort();
	}
	if (strpbrk(c->otp_from, "<>\" \t") != NULL || strchr(c->otp_from, '@') == NULL ||
	    strpbrk(c->bounce_from, "<>\" \t") != NULL) {
		*errline = cfg_line(lines, "otp_from bounce_from");
		if (*errline == 0)
			*errline = cfg_line(lines, "hostname");
		snprintf(err, errlen, "otp_from and bounce_from take a bare address "
		    "(local@domain), without a display name");
		return -1;
	}
	if (!c->sandbox && (strchr(strrchr(c->otp_from, '@'), '.') == NULL ||
	    strchr(strrchr(c->bounce_from, '@') ? strrchr(c->bounce_from, '@') : "@",
	    '.') == NULL)) {
		*errline = cfg_line(lines, "otp_from bounce_from hostname sandbox");
		snprintf(err, errlen, "otp_from (%s) or bounce_from (%s) has no "
		    "fully-qualified domain, so remote servers would refuse the "
		    "sender: set hostname, or otp_from and bounce_from",
		    c->otp_from, c->bounce_from);
		return -1;
	}
	if (c->otp_retry_max < c->otp_retry_min || c->default_retry_max < c->default_retry_min) {
		*errline = c->otp_retry_max < c->otp_retry_min ?
		    cfg_line(lines, "otp_retry_min otp_retry_max") :
		    cfg_line(lines, "default_retry_min default_retry_max");
		snprintf(err, errlen, "a *_retry_max is smaller than its *_retry_min");
		return -1;
	}
	if (cfg_check_limits(c, err, errlen) == -1)
		return -1;
	if (c->otp_ttl > c->otp_max_ttl) {
		*errline = cfg_line(lines, "otp_ttl otp_max_ttl");
		snprintf(err, errlen, "otp_ttl is larger than otp_max_ttl");
		return -1;
	}
	return cfg_check_names(c, lines, errline, err, errlen);
}

struct config *
config_load(const char *path, char *err, size_t errlen)
{
	const struct cfg_key *k;
	struct config *c;
	char *line = NULL, msg[512], *key, *val, *eq;
	size_t cap = 0;
	ssize_t n;
	FILE *f = NULL;
	int lineno = 0, errline = 0;
	int lines[sizeof(config_table) / sizeof(config_table[0])] = { 0 };

	if ((c = calloc(1, sizeof(*c))) == NULL)
		abort();
	for (k = config_table; k->name != NULL; k++) {
		if (k->def != NULL && cfg_set(c, k, k->def, msg, sizeof(msg)) == -1) {
			snprintf(err, errlen, "built-in default of %s: %s", k->name, msg);
			goto fail;
		}
	}
	if (path == NULL)
		goto finish;
	c->file = cfg_strdup(path);
	if ((f = fopen(path, "r")) == NULL) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	while ((n = getline(&line, &cap, f)) != -1) {
		lineno++;
		if ((size_t)n > CONFIG_LINE_MAX) {
			snprintf(err, errlen, "%s:%d: line longer than %d bytes", path,
			    lineno, CONFIG_LINE_MAX);
			goto fail;
		}
		if (memchr(line, '\0', n) != NULL) {
			snprintf(err, errlen, "%s:%d: NUL byte in line", path, lineno);
			goto fail;
		}
		key = cfg_trim(line);
		if (*key == '\0' || *key == '#')
			continue;
		if ((eq = strchr(key, '=')) == NULL) {
			snprintf(err, errlen, "%s:%d: expected \"key = value\"", path, lineno);
			goto fail;
		}
		*eq = '\0';
		key = cfg_trim(key);
		val = cfg_trim(eq + 1);
		if ((k = cfg_find(key)) == NULL) {
			snprintf(err, errlen, "%s:%d: unknown key \"%s\"", path, lineno, key);
			goto fail;
		}
		if (cfg_set(c, k, val, msg, sizeof(msg)) == -1) {
			snprintf(err, errlen, "%s:%d: %s", path, lineno, msg);
			goto fail;
		}
		lines[k - config_table] = lineno;
		if (k->parse == cfg_dkim_key) {
			/* a key file that fails to load is reported at its line */
			c->dkim_key_lines = cfg_grow(c->dkim_key_lines, c->ndkim_keys - 1,
			    sizeof(int));
			c->dkim_key_lines[c->ndkim_keys - 1] = lineno;
		}
	}
	if (ferror(f)) {
		snprintf(err, errlen, "%s: read error", path);
		goto fail;
	}
	fclose(f);
	f = NULL;
	free(line);
	line = NULL;
finish:
	if (cfg_finish(c, lines, &errline, msg, sizeof(msg)) == -1) {
		if (path != NULL && errline > 0)
			snprintf(err, errlen, "%s:%d: %s", path, errline, msg);
		else
			snprintf(err, errlen, "%s: %s", path ? path : "built-in defaults", msg);
		goto fail;
	}
	return c;
fail:
	if (f)
		fclose(f);
	free(line);
	config_free(c);
	return NULL;
}

void
config_free(struct config *c)
{
	const struct cfg_key *k;
	size_t i;

	if (c == NULL)
		return;
	for (k = config_table; k->name != NULL; k++) {
		void *field = (char *)c + k->off;
		if (k->type == T_STR || k->type == T_ENUM)
			free(*(char **)field);
		else if (k->type == T_LIST)
			cfg_free_list(*(char ***)field);
	}
	for (i = 0; i < c->ndkim_keys; i++) {
		free((char *)c->dkim_keys[i].domain);
		free((char *)c->dkim_keys[i].selector);
		free((char *)c->dkim_keys[i].keyfile);
	}
	free(c->dkim_keys);
	config_apps_free(c);
	free(c->dkim_key_lines);
	for (i = 0; i < c->nroutes; i++) {
		free(c->routes[i].domain);
		free(c->routes[i].host);
	}
	free(c->routes);
	for (i = 0; i < c->ndomain_tls; i++)
		free(c->domain_tls[i].domain);
	free(c->domain_tls);
	if (c->smarthost)
		free(c->smarthost->host);
	free(c->smarthost);
	for (i = 0; i < c->nfallback_relays; i++)
		free(c->fallback_relays[i].host);
	free(c->fallback_relays);
	for (i = 0; i < c->nwarnings; i++)
		free(c->warnings[i]);
	free(c->warnings);
	free(c->file);
	free(c);
}

static void
cfg_print_value(const struct config *c, const struct cfg_key *k, FILE *f)
{
	const void *field = (const char *)c + k->off;
	size_t i;

	if (k->secret) {
		fprintf(f, "%s = %s\n", k->name, *(char *const *)field && **(char *const *)field
		    ? "(set, not shown)" : "");
		return;
	}
	switch (k->type) {
	case T_STR:
	case T_ENUM:
		fprintf(f, "%s = %s\n", k->name, *(char *const *)field);
		break;
	case T_BOOL:
		fprintf(f, "%s = %s\n", k->name, *(const int *)field ? "yes" : "no");
		break;
	case T_INT:
		fprintf(f, "%s = %d\n", k->name, *(const int *)field);
		break;
	case T_DUR:
		fprintf(f, "%s = %ds\n", k->name, *(const int *)field);
		break;
	case T_SIZE:
		fprintf(f, "%s = %zu\n", k->name, *(const size_t *)field);
		break;
	case T_U64:
		fprintf(f, "%s = %llu\n", k->name,
		    (unsigned long long)*(const uint64_t *)field);
		break;
	case T_DOUBLE:
		fprintf(f, "%s = %g\n", k->name, *(const double *)field);
		break;
	case T_MODE:
		fprintf(f, "%s = %04o\n", k->name, *(const unsigned *)field);
		break;
	case T_LIST: {
		char *const *l = *(char **const *)field;
		fprintf(f, "%s =", k->name);
		for (i = 0; l && l[i]; i++)
			fprintf(f, "%s %s", i ? "," : "", l[i]);
		fprintf(f, "\n");
		break;
	}
	case T_TLS:
		fprintf(f, "%s = %s\n", k->name,
		    tls_policy_name(*(const enum tls_policy *)field));
		break;
	case T_SPECIAL:
		k->print(c, f, k->name);
		break;
	}
}

void
config_print(const struct config *c, FILE *f)
{
	const struct cfg_key *k;

	fprintf(f, "# effective configuration (%s)\n", c->file ? c->file : "built-in defaults");
	for (k = config_table; k->name != NULL; k++)
		cfg_print_value(c, k, f);
}

void *
config_to_json(const struct config *c)
{
	const struct cfg_key *k;
	json_t *o = json_object(), *arr;
	char *text = NULL;
	size_t len = 0;
	FILE *f;

	for (k = config_table; k->name != NULL; k++) {
		f = open_memstream(&text, &len);
		if (f == NULL)
			break;
		cfg_print_value(c, k, f);
		fclose(f);
		if (k->type == T_SPECIAL) {
			/* repeatable: a list of the values */
			char *line, *save = NULL;
			arr = json_array();
			for (line = strtok_r(text, "\n", &save); line != NULL;
			    line = strtok_r(NULL, "\n", &save)) {
				char *eq = strstr(line, " = ");
				if (eq)
					json_array_append_new(arr, json_string(eq + 3));
			}
			json_object_set_new(o, k->name, arr);
		} else {
			char *eq = strstr(text, " =");
			char *v = eq ? eq + 2 : text;
			size_t vl;
			while (*v == ' ')
				v++;
			vl = strlen(v);
			if (vl && v[vl - 1] == '\n')
				v[vl - 1] = '\0';
			json_object_set_new(o, k->name, json_string(v));
		}
		free(text);
		text = NULL;
	}
	return o;
}

enum tls_policy
config_tls_policy(const struct config *c, const char *domain)
{
	size_t i;

	for (i = 0; i < c->ndomain_tls; i++)
		if (strcasecmp(c->domain_tls[i].domain, domain) == 0)
			return c->domain_tls[i].policy;
	return c->tls_policy;
}

const struct route *
config_route(const struct config *c, const char *domain)
{
	size_t i;

	for (i = 0; i < c->nroutes; i++)
		if (strcasecmp(c->routes[i].domain, domain) == 0)
			return &c->routes[i];
	return NULL;
}
