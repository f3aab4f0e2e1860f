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

struct config {
	char		*file;		/* NULL = built-in defaults */

	/* general */
	char		*state_dir;
	char		*control_socket;	/* "" = <state_dir>/control.sock */
	unsigned	 control_socket_mode;
	char		*control_socket_group;
	char		*user;
	int		 sandbox;
	char		*sandbox_maildir;	/* "" = <state_dir>/sandbox */
	char		*hostname;		/* "" = the machine's FQDN */
	int		 log_stderr;
	int		 log_syslog;
	char		*log_level;		/* debug|info|warning|error */
	int		 log_pseudonymize;

	/* access */
	char		**app_users;		/* names or numeric uids */
	char		**app_groups;
	char		**admin_users;
	char		**admin_groups;

	/* control socket limits */
	size_t		 control_max_line;
	int		 control_max_connections;
	int		 control_idle_timeout;
	int		 control_max_pipeline;
	int		 request_workers;

	/* queue */
	size_t		 message_size_limit;
	int		 max_recipients;
	uint64_t	 queue_min_free_space;
	uint64_t	 queue_min_free_inodes;
	int		 otp_retry_min;
	int		 otp_retry_max;
	int		 default_retry_min;
	int		 default_retry_max;
	int		 default_lifetime;
	double		 retry_jitter;
	int		 queue_keep_done;
	char		*bounce_from;		/* "" = MAILER-DAEMON@hostname */

	/* one-time codes */
	int		 otp_length;
	char		*otp_alphabet;		/* digits|alnum */
	int		 otp_ttl;
	int		 otp_max_ttl;
	int		 otp_keep_codes;
	int		 otp_resend_cooldown;
	int		 otp_max_per_address_hour;
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
	int		 otp_check_deliverability;

	/* DKIM */
	struct dkim_key_conf *dkim_keys;	/* dkim_key = domain selector alg file */
	size_t		 ndkim_keys;
	char		*dkim_canonicalization;	/* header/body: relaxed/relaxed */
	char		**dkim_sign_headers;
	char		**dkim_oversign_headers;

	/* delivery */
	int		 delivery_workers;
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

#endif
