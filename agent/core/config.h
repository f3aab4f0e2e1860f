/*
 * config.h - the daemon's configuration: one flat "key = value" file, every
 * key in one table (config.c) with its type, default and documentation.
 * etc/otpmail.conf documents every key; unknown keys are errors.
 */
#ifndef OTPMAIL_CONFIG_H
#define OTPMAIL_CONFIG_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/types.h>

#include "dkim/dkim_sign.h"

enum tls_policy {
	TLS_NONE = 0,		/* never STARTTLS */
	TLS_MAY,		/* opportunistic, no verification */
	TLS_ENCRYPT,		/* TLS required, no verification */
	TLS_VERIFY,		/* TLS + chain + hostname */
	TLS_DANE,		/* TLSA via DNSSEC; without TLSA as "may" */
};

struct route {			/* route = domain host[:port] */
	char	*domain;	/* "*" never: see smarthost */
	char	*host;		/* name or [address] */
	int	 port;
};

struct domain_tls {		/* domain_tls_policy = domain policy */
	char		*domain;
	enum tls_policy	 policy;
};

struct relay {			/* smarthost / fallback_relay values */
	char	*host;
	int	 port;
};

#define CONFIG_APP_NAME_MAX	48

struct app_conf {		/* app = name users=... groups=... senders=... */
	char		*name;		/* its namespace */
	unsigned	*uids;
	size_t		 nuids;
	unsigned	*gids;
	size_t		 ngids;
	char		**senders;	/* domains, addresses, "*"; NULL = none */
};

struct app_webhook {		/* app_webhook = app https://url secret_file */
	char		*app;
	char		*url;
	char		*secret_file;	/* "whsec_<base64>" or raw bytes */
};

struct config {
	char		*file;		/* NULL = built-in defaults */

	/* general */
	char		*state_dir;
	char		*control_socket;	/* "" = <state_dir>/control.sock */
	unsigned	 control_socket_mode;
	int		 control_socket_allow_world_writable;
	char		*control_socket_group;
	char		*user;
	int		 sandbox;
	char		*sandbox_maildir;	/* "" = <state_dir>/sandbox */
	char		*hostname;		/* "" = the machine's FQDN */
	char		*origin_domain;		/* otpmail-sendmail: "" = hostname */
	char		*aliases_file;		/* otpmail-sendmail's aliases */
	char		*metrics_listen;	/* "host:port" of the HTTP scrape endpoint, "" off */
	int		 log_stderr;
	int		 log_syslog;
	char		*log_level;		/* debug|info|warning|error */
	int		 log_pseudonymize;

	/* access */
	char		**app_users;		/* names or numeric uids */
	char		**app_groups;
	char		**admin_users;
	char		**admin_groups;
	struct app_conf	*apps;
	size_t		 napps;

	/* control socket limits */
	size_t		 control_max_line;
	int		 control_max_connections;
	int		 control_admin_reserve;		/* slots only admins may take */
	int		 control_max_connections_per_uid;	/* an app's uid */
	int		 control_anon_max_connections;	/* peers with no role, together */
	int		 control_anon_max_connections_per_uid;
	int		 control_anon_idle_timeout;
	int		 control_idle_timeout;
	int		 control_max_pipeline;
	int		 request_workers;

	/* queue */
	size_t		 message_size_limit;
	int		 max_recipients;
	uint64_t	 queue_min_free_space;
	uint64_t	 queue_min_free_inodes;
	int		 queue_segments;	/* new messages in segment files */
	int		 otp_retry_min;
	int		 otp_retry_max;
	int		 default_retry_min;
	int		 default_retry_max;
	int		 default_lifetime;
	double		 retry_jitter;
	int		 queue_keep_done;
	char		*bounce_from;		/* "" = MAILER-DAEMON@hostname */
	char		*bounce_rules_file;	/* "" = the built-in rules only */
	int		 suppress_hard_bounces;	/* a hard bounce suppresses the address */
	int		 suppress_ttl;		/* s a suppression lasts, 0 = until removed */

	/* one-time codes */
	int		 otp_length;
	char		*otp_alphabet;		/* digits|alnum */
	int		 otp_ttl;
	int		 otp_max_ttl;
	int		 otp_keep_codes;
	int		 otp_resend_cooldown;
	int		 otp_max_per_address_hour;
	int		 otp_max_per_client_id_hour;
	int		 otp_max_per_client_minute;
	int		 otp_max_global_per_second;
	int		 otp_max_failures_per_code;
	int		 otp_max_failed_verifies_per_client_minute;	/* 0 = off */
	int		 otp_max_failed_verifies_per_second;	/* all clients, 0 = off */
	int		 otp_lockout_after;
	int		 otp_lockout_base;
	int		 otp_lockout_max;
	int		 otp_max_consecutive_failures;
	int		 otp_sweep_interval;
	char		*otp_from;		/* "" = noreply@hostname */
	char		*otp_app_name;
	char		*otp_default_locale;
	char		*templates_dir;		/* "" = built-in path */
	char		*otp_old_secret_file;	/* "" = none */
	/* several hosts (agent/core/cluster.c); cluster_site "" = alone */
	char		*cluster_site;		/* this site's relay host:port */
	char		**cluster_peers;	/* the other sites' host:port */
	int		 cluster_priority;
	char		*cluster_secret_file;	/* relative: to state_dir */
	int		 cluster_base_port;	/* repmgr of site j: 127.0.0.1:base+j */
	int		 cluster_start_timeout;
	int		 otp_check_deliverability;
	int		 otp_app_from_request;	/* a request's plain-text "app" is used */
	char		*otp_limit_tag_separators; /* "+": alice+x shares alice's limits */
	int		 allow_address_literals;	/* user@[192.0.2.1] */
	int		 smtputf8;	/* UTF-8 local parts (RFC 6531) */
	int		 otp_allow_small_code_space;	/* below NIST SP 800-63B */
	int		 otp_allow_long_ttl;
	int		 otp_verify_detail;	/* say not_found/expired/attempts_left */
	int		 otp_permanent_lockout;	/* at the cap: until an admin unlocks */

	/* DKIM */
	struct dkim_key_conf *dkim_keys;	/* dkim_key = domain selector alg file */
	size_t		 ndkim_keys;
	int		*dkim_key_lines;	/* the file's line of each (0 = none) */
	char		*dkim_canonicalization;	/* header/body: relaxed/relaxed */
	char		**dkim_sign_headers;
	char		**dkim_oversign_headers;

	/* delivery */
	int		 delivery_workers;
	char		*delivery_user;	/* the delivery process runs as (privsep.c) */
	int		 max_connections;
	int		 max_connections_per_domain;
	double		 domain_rate;		/* messages/s per domain, 0 = off */
	int		 session_reuse_max;
	int		 session_idle_timeout;
	int		 smtp_port;
	int		 smtp_connect_timeout;
	int		 smtp_greeting_timeout;
	int		 smtp_command_timeout;
	int		 smtp_data_timeout;
	int		 smtp_data_done_timeout;
	char		*resolver;		/* "" = /etc/resolv.conf; "addr[@port]" */
	char		*dns_trust_anchor;	/* file for DNSSEC (dane) */
	int		 mx_allow_internal;	/* MX/A/AAAA at loopback, private... */
	enum tls_policy	 tls_policy;
	struct domain_tls *domain_tls;
	size_t		 ndomain_tls;
	char		*tls_ca_file;		/* "" = system store */
	int		 mta_sts;		/* apply MTA-STS policies (RFC 8461) */
	int		 mta_sts_check_interval;	/* seconds between TXT checks */
	int		 mta_sts_fetch_timeout;
	int		 tls_rpt;		/* send TLS-RPT reports (RFC 8460) */
	int		 tls_rpt_interval;
	char		*tls_rpt_from;		/* "" = tlsrpt-noreply@hostname */
	struct route	*routes;
	size_t		 nroutes;
	struct relay	*smarthost;		/* NULL = direct MX delivery */
	struct relay	*fallback_relays;
	size_t		 nfallback_relays;
	char		*smarthost_user;
	char		*smarthost_password_file;

	/* delivery events and webhooks (agent/events/) */
	int		 events_keep;		/* seconds the event log keeps an event */
	size_t		 events_subscriber_buffer;	/* bytes a slow subscriber may hold */
	struct app_webhook *webhooks;
	size_t		 nwebhooks;
	int		 webhook_timeout;
	int		 webhook_retry_min;
	int		 webhook_retry_max;
	int		 webhook_max_age;	/* an event is given up after this */
	char		*webhook_ca_file;	/* "" = system store */

	/* accepted risks, said at start (config_load fills them) */
	char		**warnings;
	size_t		 nwarnings;
};

/*
 * Loads a file (path NULL = built-in defaults, sandbox on).  On error returns
 * NULL and writes "file:line: message" into err.
 */
struct config	*config_load(const char *path, char *err, size_t errlen);
void		 config_free(struct config *);
/* Writes the effective configuration as "key = value" lines (secrets elided). */
void		 config_print(const struct config *, FILE *);
/* The effective configuration as a JSON object (jansson json_t *). */
void		*config_to_json(const struct config *);
/* Every key name, NULL-terminated (tests check docs cover them). */
const char	*const *config_keys(void);

const char	*tls_policy_name(enum tls_policy);
int		 tls_policy_parse(const char *);	/* -1 if unknown */
/* Policy in force for a domain. */
enum tls_policy	 config_tls_policy(const struct config *, const char *domain);
/* Route override for a domain, or NULL. */
const struct route *config_route(const struct config *, const char *domain);

/* config_app.c: the app lines.  config_app_for gives the app of a peer
 * (by uid first, then groups), NULL if none names it (an implicit app). */
int		 config_app_parse(struct config *, const char *, char *, size_t);
void		 config_app_print(const struct config *, FILE *, const char *);
void		 config_apps_free(struct config *);
void		 config_strv_free(char **);
const struct app_conf *config_app_for(const struct config *, uid_t, const gid_t *groups,
		    size_t ngroups);
const struct app_conf *config_app_named(const struct config *, const char *);
/* 1 if the app may send as addr (NULL app: any). */
int		 config_app_sender_ok(const struct app_conf *, const char *addr);
/* app_webhook lines (config_app.c) */
int		 config_webhook_parse(struct config *, const char *, char *, size_t);
void		 config_webhook_print(const struct config *, FILE *, const char *);

#endif
