/*
 * otpmailctl - the command-line client of the control socket, for admins and
 * scripts.  Each subcommand maps to one op: positional words and --options
 * become the request's fields.  Human output by default, --json prints the
 * daemon's answer as is.  Exit codes: 0 ok, 1 the daemon refused (ok:false),
 * 2 usage, 3 daemon unreachable, 4 forbidden.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#define EX_OK		0
#define EX_REFUSED	1
#define EX_USAGE	2
#define EX_UNREACHABLE	3
#define EX_FORBIDDEN	4

#define CTL_BULK_MAX	1000	/* ids per request (the daemon's cap) */
#define CTL_BULK_OPTS \
	"--state S\tpending (default) | queued | deferred | held | done\n" \
	"--domain D\ta recipient domain\n--class C\totp | default\n" \
	"--sender S\tthe envelope sender\n--older-than SECS\tcreated before now-SECS\n" \
	"--younger-than SECS\tcreated after now-SECS\n" \
	"--all\tevery pending message (no other filter needed)\n" \
	"--yes\tgo ahead when more than one message matches\n"

typedef void (*ctl_fmt)(json_t *);

struct cmd {
	const char	*words;		/* "queue list" */
	const char	*op;
	const char	*positional;	/* "to code" ("ids..." = rest as a list) */
	const char	*ints;		/* option fields sent as integers */
	const char	*bools;		/* option fields that take no value */
	ctl_fmt		 fmt;
	const char	*help;
};

static void	fmt_generic(json_t *);
static void	fmt_queue_list(json_t *);
static void	fmt_text(json_t *);
static void	fmt_config(json_t *);
static void	fmt_help(json_t *);
static void	fmt_sandbox_list(json_t *);
static void	fmt_zone(json_t *);
static void	fmt_domain_check(json_t *);
static void	fmt_suppress_list(json_t *);
static const char *jstr(json_t *, const char *);

static const struct cmd cmds[] = {
	{ "ping", "ping", "", "", "", fmt_generic, "check the daemon answers" },
	{ "version", "version", "", "", "", fmt_generic, "daemon version and uptime" },
	{ "help", "help", "", "", "", fmt_help, "operations this user may call" },
	{ "config show", "config.show", "", "", "", fmt_config,
	    "effective configuration of the running daemon" },
	{ "otp issue", "otp.issue", "to", "ttl", "", fmt_generic,
	    "<to> [--purpose P] [--context C] [--locale L] [--app NAME] [--ttl S] "
	    "[--client-id ID] [--idempotency-key K]" },
	{ "otp verify", "otp.verify", "to code", "", "", fmt_generic,
	    "<to> <code> [--purpose P] [--context C] [--client-id ID]" },
	{ "otp revoke", "otp.revoke", "to", "", "", fmt_generic,
	    "<to> [--purpose P] [--context C]" },
	{ "otp unlock", "otp.unlock", "to", "", "", fmt_generic,
	    "<to> [--purpose P] [--context C] [--client-id ID] [--as-app APP]  "
	    "(admin: lift a lock-out)" },
	{ "send", "mail.send", "to...", "", "", fmt_generic,
	    "<to>... --from F --subject S (--text T | --raw-file FILE) [--html H]" },
	{ "status", "message.status", "id", "", "", fmt_generic, "<queue id>" },
	{ "queue list", "queue.list", "", "older_than younger_than limit", "all", fmt_queue_list,
	    "[--all | --state S] [--class C] [--domain D] [--sender S] [--older-than SECS] "
	    "[--younger-than SECS] [--after ID] [--limit N]" },
	{ "queue show", "queue.show", "id", "", "body", fmt_generic, "<id> [--body]" },
	{ "queue hold", "queue.hold", "ids...", "older_than younger_than", "all", fmt_generic,
	    "<id>... | --all | [--state S] [--domain D] ... [--yes]" },
	{ "queue release", "queue.release", "ids...", "older_than younger_than", "all",
	    fmt_generic, "<id>... | --all | [--state S] [--domain D] ... [--yes]" },
	{ "queue delete", "queue.delete", "ids...", "older_than younger_than", "all",
	    fmt_generic, "<id>... | --all | [--state S] [--domain D] ... [--yes]" },
	{ "queue flush", "queue.flush", "ids...", "", "all", fmt_generic,
	    "[<id>...] [--domain D] [--all]" },
	{ "queue pause", "queue.pause", "", "", "", fmt_generic, "pause all delivery" },
	{ "queue resume", "queue.resume", "", "", "", fmt_generic, "resume delivery" },
	{ "stats", "stats", "", "", "", fmt_generic, "queue and delivery counters" },
	{ "tail", "events.tail", "", "", "", NULL, "follow the daemon's events live (Ctrl-C ends)" },
	{ "events", "events.subscribe", "", "since", "", NULL,
	    "[--since ID] [--types T] [--app APP]: delivery events (Ctrl-C ends)" },
	{ "metrics", "metrics", "", "", "", fmt_text, "Prometheus text exposition" },
	{ "dkim records", "dkim.records", "", "", "", fmt_zone,
	    "DNS records to publish (DKIM, SPF, DMARC)" },
	{ "dkim keygen", "dkim.keygen", "", "bits", "", fmt_zone,
	    "--domain D --selector S [--algorithm rsa|ed25519] [--bits N] [--file F]" },
	{ "dkim check", "dkim.check", "", "", "", fmt_generic, "[--domain D]" },
	{ "tls policy", "tls.policy", "domain", "", "", fmt_generic,
	    "<domain>: TLS policy in force (DANE, MTA-STS, configured, default)" },
	{ "tls report", "tls.report", "", "", "", fmt_generic,
	    "send the TLS-RPT reports now (else every tls_rpt_interval)" },
	{ "domain check", "domain.check", "domain", "", "", fmt_domain_check,
	    "<domain>: DKIM, SPF, DMARC, FCrDNS, MTA-STS, TLS-RPT as receivers see them" },
	{ "cluster status", "cluster.status", "", "", "", fmt_generic,
	    "sites, master, each site's log lag, last election (several hosts)" },
	{ "sandbox list", "sandbox.list", "", "limit", "", fmt_sandbox_list,
	    "messages in the sandbox Maildir" },
	{ "sandbox show", "sandbox.show", "file", "", "latest", fmt_text,
	    "[<file> | --latest]" },
	{ "suppress list", "suppress.list", "", "limit", "", fmt_suppress_list,
	    "[--as-app APP] [--after ID] [--limit N]" },
	{ "suppress add", "suppress.add", "address", "", "", fmt_generic,
	    "<address> [--reason R] [--reply TEXT] [--as-app APP]" },
	{ "suppress remove", "suppress.remove", "address", "", "", fmt_generic,
	    "(<address> | --id ID) [--as-app APP]" },
	{ "dsn report", "dsn.report", "", "", "", fmt_generic,
	    "--dsn-file FILE [--id QUEUE-ID | --as-app APP]" },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL }
};

/* What --help after a command prints: a description and each option. */
struct cmd_doc {
	const char	*words;
	const char	*desc;
	const char	*opts;		/* "--opt VALUE\tdescription\n" lines */
};

static const struct cmd_doc cmd_docs[] = {
	{ "ping", "Checks that otpmaild answers on the socket (anyone may).", "" },
	{ "version", "Prints the daemon's version and uptime.", "" },
	{ "help", "Lists the operations this user may call.", "" },
	{ "config show", "Prints the running daemon's effective configuration (admin).", "" },
	{ "otp issue", "Mails a one-time code to <to>; prints the queue id and when it expires.",
	    "--purpose P\twhat the code is for (login, reset, ...; default login)\n"
	    "--context C\tan opaque value the code is bound to (a session id)\n"
	    "--locale L\ttemplate language (en, de, fr; default from the config)\n"
	    "--app NAME\tthe application name shown in the mail\n"
	    "--ttl SECS\tvalidity in seconds (default otp_ttl)\n" },
	{ "otp verify", "Checks <code> for <to>; exit 0 if right, 1 otherwise (the error says "
	    "invalid_code, expired, locked or not_found).",
	    "--purpose P\tas issued\n--context C\tas issued\n" },
	{ "otp revoke", "Kills every outstanding code of <to> for a purpose.",
	    "--purpose P\tdefault login\n" },
	{ "otp unlock", "Lifts the lock-out of <to> after too many failures (admin).",
	    "--purpose P\tdefault login\n" },
	{ "send", "Queues a message to each <to>.",
	    "--from F\tsender address, or \"Name <address>\"\n--subject S\tsubject\n"
	    "--text T\tplain-text body\n--html H\tHTML alternative\n"
	    "--raw-file FILE\ta whole RFC 5322 message instead (- = stdin)\n"
	    "--class C\tdefault | otp\n" },
	{ "status", "What an app sees of its message: state and each recipient's.", "" },
	{ "queue list", "Lists the messages still in the queue (all but finished ones, like "
	    "mailq), oldest first; AGE and NEXT are relative to now.",
	    "--all\talso the finished ones (delivered, failed, expired)\n"
	    "--state S\tpending | queued | delivering | deferred | held | done\n"
	    "--class C\totp | default\n--domain D\ta recipient domain\n"
	    "--sender S\tthe envelope sender\n--older-than SECS\tcreated before now-SECS\n"
	    "--younger-than SECS\tcreated after now-SECS\n"
	    "--after ID\tthe next page after this id\n--limit N\tpage size (default 100)\n" },
	{ "queue show", "Everything about one message: envelope, recipients and their last "
	    "replies, flags.", "--body\talso the message as queued\n" },
	{ "queue hold", "Holds messages (no delivery until released): the given ids, or every "
	    "pending message matching the filters.", CTL_BULK_OPTS },
	{ "queue release", "Releases held messages: ids, or by filter (default state held).",
	    CTL_BULK_OPTS },
	{ "queue delete", "Deletes messages without a bounce: ids, or by filter.", CTL_BULK_OPTS },
	{ "queue flush", "Retries now: ids, a domain, or all.  An extra try: if it defers, "
	    "the message keeps its retry schedule and attempt count.",
	    "--domain D\tevery message with a recipient there\n--all\tevery queued message\n" },
	{ "queue pause", "Pauses all delivery (submissions are still queued).", "" },
	{ "queue resume", "Resumes delivery.", "" },
	{ "stats", "Queue counts by state and class, delivery totals since start.", "" },
	{ "tail", "Follows the daemon's events (deliveries, deferrals, OTP) until Ctrl-C.", "" },
	{ "events", "Follows the delivery events of this app (an admin's: every app's) until "
	    "Ctrl-C, after those since an id.",
	    "--since ID\tfirst the logged events after this id\n"
	    "--types T\taccepted | delivered | deferred | bounced | expired | suppressed\n"
	    "--app APP\t(admin) one app's events only\n" },
	{ "metrics", "The Prometheus text exposition.", "" },
	{ "dkim records", "The DNS records to publish: DKIM TXT, SPF and DMARC suggestions.", "" },
	{ "dkim keygen", "Makes a DKIM key (mode 0600) and prints its DNS record and "
	    "the dkim_key line for otpmail.conf.",
	    "--domain D\tsigning domain\n--selector S\tDNS selector\n"
	    "--algorithm A\trsa | ed25519\n--bits N\tRSA size (2048 default)\n"
	    "--file F\twhere to write the key\n" },
	{ "dkim check", "Compares the published DKIM records with the keys in use.",
	    "--domain D\tonly this domain\n" },
	{ "sandbox list", "Messages in the sandbox Maildir (sandbox mode).",
	    "--limit N\tat most N\n" },
	{ "sandbox show", "One message from the sandbox Maildir.",
	    "--latest\tthe newest one\n" },
	{ "suppress list", "The suppression list: an app's own, an admin's every app's "
	    "(no address in clear: ids are keyed hashes).",
	    "--as-app APP\tone app's list (admin)\n--after ID\tthe next page after this id\n"
	    "--limit N\tpage size (default 100)\n" },
	{ "suppress add", "Suppresses <address> for the app: otp.issue and mail.send to it "
	    "answer \"suppressed\" until it is removed or expires (suppress_ttl).",
	    "--reason R\ta word (default complaint)\n--reply TEXT\twhat the receiver said\n"
	    "--as-app APP\tthe app's list (admin)\n" },
	{ "suppress remove", "Takes <address> (or the entry --id ID) off the list.",
	    "--id ID\tan id from suppress list\n--as-app APP\tthe app's list (admin)\n" },
	{ "dsn report", "Feeds a DSN (RFC 3464) that came back to the return path: each "
	    "recipient is classified, noted on the message, and a hard failure suppressed "
	    "(admin).", "--dsn-file FILE\tthe DSN as received (- = stdin)\n"
	    "--id ID\tthe queue id of the message it reports on\n"
	    "--as-app APP\twithout an id: whose list a hard failure goes on\n" },
	{ NULL, NULL, NULL }
};

static int json_out;
static int use_colour;	/* only on a terminal, never with NO_COLOR */
static int assume_yes;	/* --yes: bulk operations on more than one message */
static int list_all;	/* queue list --all */

static void
usage(FILE *f)
{
	const struct cmd *c;

	fprintf(f, "usage: otpmailctl [-s socket] [--json] [--watch SECS] [--yes] <command> [args]\n"
	    "       otpmailctl [-s socket] call '<json request>'   (or '-' for lines on stdin)\n"
	    "       otpmailctl --version | <command> --help\n\n"
	    "commands:\n");
	for (c = cmds; c->words; c++)
		fprintf(f, "  %-14s %s\n", c->words, c->help);
	fprintf(f, "\nThe socket is -s, $OTPMAIL_SOCKET, ./otpmail-state/control.sock, "
	    "or /var/lib/otpmail/control.sock.\n"
	    "Exit codes: 0 ok, 1 refused by the daemon, 2 usage, 3 daemon unreachable, "
	    "4 forbidden.\n");
}

static const char *
default_socket(void)
{
	const char *s = getenv("OTPMAIL_SOCKET");

	if (s != NULL && *s != '\0')
		return s;
	if (access("otpmail-state/control.sock", F_OK) == 0)
		return "otpmail-state/control.sock";
	return "/var/lib/otpmail/control.sock";
}

static int
ctl_connect(const char *path)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "otpmailctl: socket path too long\n");
		return -1;
	}
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		fprintf(stderr, "otpmailctl: cannot reach otpmaild at %s: %s\n", path,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return -1;
	}
	return fd;
}

static int
write_all(int fd, const char *p, size_t n)
{
	ssize_t w;

	while (n > 0) {
		w = send(fd, p, n, MSG_NOSIGNAL);
		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= w;
	}
	return 0;
}

/* Reads one line; returns malloc'd string or NULL on EOF/error. */
static char *
read_line(int fd, char **pending, size_t *plen)
{
	char buf[65536], *nl, *line;
	ssize_t n;

	for (;;) {
		if (*pending && (nl = memchr(*pending, '\n', *plen)) != NULL) {
			size_t l = nl - *pending;
			line = strndup(*pending, l);
			memmove(*pending, nl + 1, *plen - l - 1);
			*plen -= l + 1;
			return line;
		}
		n = read(fd, buf, sizeof(buf));
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return NULL;
		*pending = realloc(*pending, *plen + n);
		if (*pending == NULL)
			return NULL;
		memcpy(*pending + *plen, buf, n);
		*plen += n;
	}
}

static int
exit_code(json_t *reply)
{
	const char *e;

	/* a check that ran but found problems (dkim check, domain check) */
	if (json_is_true(json_object_get(reply, "ok")))
		return json_integer_value(json_object_get(reply, "problems")) > 0 ?
		    EX_REFUSED : EX_OK;
	e = json_string_value(json_object_get(reply, "error"));
	return e && strcmp(e, "forbidden") == 0 ? EX_FORBIDDEN : EX_REFUSED;
}

static void
print_value(json_t *v)
{
	char *s;

	if (json_is_string(v))
		printf("%s", json_string_value(v));
	else {
		s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		printf("%s", s ? s : "?");
		free(s);
	}
}

/* A duration: "45s", "3m", "2h5m", "3d4h". */
static void
human_span(long secs, char *out, size_t len)
{
	if (secs < 120)
		snprintf(out, len, "%lds", secs);
	else if (secs < 7200)
		snprintf(out, len, "%ldm", secs / 60);
	else if (secs < 172800)
		snprintf(out, len, "%ldh%ldm", secs / 3600, secs % 3600 / 60);
	else
		snprintf(out, len, "%ldd%ldh", secs / 86400, secs % 86400 / 3600);
}

/* A time relative to now: "3m ago", "in 20m", "now". */
static void
human_rel(time_t t, time_t now, char *out, size_t len)
{
	char span[32];

	if (t == now) {
		snprintf(out, len, "now");
		return;
	}
	human_span(t < now ? (long)(now - t) : (long)(t - now), span, sizeof(span));
	snprintf(out, len, t < now ? "%s ago" : "in %s", span);
}

/* "2026-12-06 08:10:03 CET (3m ago)": local time and age of an epoch. */
static void
human_time(time_t t, char *out, size_t len)
{
	char date[64], rel[48];
	struct tm tm;

	localtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S %Z", &tm);
	human_rel(t, time(NULL), rel, sizeof(rel));
	snprintf(out, len, "%s (%s)", date, rel);
}

/* Answer fields that hold an epoch time, or a duration in seconds. */
static int
key_is_time(const char *k)
{
	static const char *const keys[] = { "created", "expires", "expires_at",
	    "next_attempt", "finished", "last_attempt", "started", "time", NULL };
	size_t i;

	for (i = 0; keys[i]; i++)
		if (strcmp(k, keys[i]) == 0)
			return 1;
	return 0;
}

static int
key_is_span(const char *k)
{
	return strcmp(k, "age") == 0 || strcmp(k, "uptime") == 0 ||
	    strcmp(k, "oldest_age") == 0;
}

static void
fmt_generic_obj(json_t *o, int indent)
{
	const char *k;
	json_t *v;

	json_object_foreach(o, k, v) {
		if (indent == 0 && (strcmp(k, "ok") == 0 || strcmp(k, "id") == 0) &&
		    json_is_boolean(v))
			continue;
		if (json_is_object(v)) {
			printf("%*s%s:\n", indent, "", k);
			fmt_generic_obj(v, indent + 2);
		} else if (json_is_array(v) && json_array_size(v) > 0 &&
		    json_is_object(json_array_get(v, 0))) {
			size_t i;
			json_t *e;
			printf("%*s%s:\n", indent, "", k);
			json_array_foreach(v, i, e) {
				printf("%*s- \n", indent + 2, "");
				fmt_generic_obj(e, indent + 4);
			}
		} else if (json_is_integer(v) && json_integer_value(v) > 0 && key_is_time(k)) {
			char when[128];
			human_time((time_t)json_integer_value(v), when, sizeof(when));
			printf("%*s%s: %s\n", indent, "", k, when);
		} else if (json_is_integer(v) && json_integer_value(v) >= 0 && key_is_span(k)) {
			char span[32];
			human_span((long)json_integer_value(v), span, sizeof(span));
			printf("%*s%s: %s\n", indent, "", k, span);
		} else {
			printf("%*s%s: ", indent, "", k);
			print_value(v);
			printf("\n");
		}
	}
}

static void
fmt_generic(json_t *r)
{
	/* an answer with nothing but "ok" still says so */
	if (json_object_size(r) - (json_object_get(r, "req_id") != NULL) <= 1)
		printf("ok\n");
	else
		fmt_generic_obj(r, 0);
}

static void
fmt_text(json_t *r)
{
	const char *t = json_string_value(json_object_get(r, "text"));

	if (t == NULL)
		t = json_string_value(json_object_get(r, "message"));
	if (t != NULL)
		fputs(t, stdout);
	else
		fmt_generic(r);
}

static void
fmt_zone(json_t *r)
{
	const char *t = json_string_value(json_object_get(r, "zone"));
	json_t *cl = json_object_get(r, "config_line");

	if (t == NULL) {
		fmt_generic(r);
		return;
	}
	if (*t == '\0' && json_is_string(json_object_get(r, "note")))
		printf("%s\n", json_string_value(json_object_get(r, "note")));
	fputs(t, stdout);
	if (json_is_string(cl))
		printf("\n# add to otpmail.conf:\n%s\n", json_string_value(cl));
}

/* One line per check: OK / WARN / FAIL, what, and the detail. */
static void
fmt_domain_check(json_t *r)
{
	json_t *c, *lines = json_object_get(r, "checks");
	size_t i;

	if (!json_is_array(lines)) {
		fmt_generic(r);
		return;
	}
	json_array_foreach(lines, i, c)
		printf("%-4s %-8s %s\n", jstr(c, "status"), jstr(c, "check"),
		    jstr(c, "detail"));
}

static void
fmt_config(json_t *r)
{
	const char *k;
	json_t *v, *cfg = json_object_get(r, "config");
	size_t i;

	json_object_foreach(cfg, k, v) {
		if (json_is_array(v)) {
			json_t *e;
			json_array_foreach(v, i, e)
				printf("%s = %s\n", k, json_string_value(e));
		} else
			printf("%s = %s\n", k, json_string_value(v));
	}
}

static void
fmt_help(json_t *r)
{
	size_t i;
	json_t *e;

	json_array_foreach(json_object_get(r, "ops"), i, e)
		printf("%-16s %s\n", json_string_value(json_object_get(e, "op")),
		    json_string_value(json_object_get(e, "summary")));
}

static const char *
jstr(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "";
}

static void
fmt_queue_list(json_t *r)
{
	json_t *list = json_object_get(r, "messages"), *e, *rc;
	time_t now = time(NULL);
	size_t i, j;
	char age[32], next[32], rcpt[256];

	if (!json_is_array(list)) {
		fmt_generic(r);
		return;
	}
	if (json_array_size(list) == 0) {
		printf("queue empty (for these filters)%s\n",
		    list_all ? "" :
		    "; --all shows delivered and failed messages too");
		return;
	}
	printf("%-24s %-7s %-10s %-9s %4s %-9s %-30s %s\n", "ID", "CLASS", "STATE", "AGE",
	    "TRY", "NEXT", "RECIPIENT", "LAST ERROR");
	json_array_foreach(list, i, e) {
		json_int_t created = json_integer_value(json_object_get(e, "created"));
		json_int_t na = json_integer_value(json_object_get(e, "next_attempt"));
		json_t *rcpts = json_object_get(e, "recipients");
		human_rel((time_t)created, now, age, sizeof(age));
		if (na > 0)
			human_rel(na <= now ? now : (time_t)na, now, next, sizeof(next));
		else
			strcpy(next, "-");
		rcpt[0] = '\0';
		json_array_foreach(rcpts, j, rc) {
			const char *a = json_is_string(rc) ? json_string_value(rc) : jstr(rc, "to");
			if (j == 0)
				snprintf(rcpt, sizeof(rcpt), "%s", a);
		}
		if (json_array_size(rcpts) > 1) {
			size_t l = strlen(rcpt);
			snprintf(rcpt + l, sizeof(rcpt) - l, " (+%zu)", json_array_size(rcpts) - 1);
		}
		{
			const char *st = jstr(e, "state"), *col = "";
			if (use_colour)
				col = !strcmp(st, "deferred") ? "\033[33m" :
				    !strcmp(st, "held") ? "\033[35m" :
				    !strcmp(st, "delivering") ? "\033[36m" :
				    !strcmp(st, "done") ? "\033[32m" : "";
			printf("%-24s %-7s %s%-10s%s ", jstr(e, "id"), jstr(e, "class"),
			    col, st, *col ? "\033[0m" : "");
		}
		{
			/* the bounce class first: what an admin acts on */
			const char *bc = json_string_value(json_object_get(e,
			    "last_error_class"));
			const char *bl = json_string_value(json_object_get(e,
			    "last_error_blocklist"));
			char why[128];

			snprintf(why, sizeof(why), "%s%s%s%s%s", bc ? "[" : "", bc ? bc : "",
			    bc && bl ? ":" : "", bc && bl ? bl : "", bc ? "] " : "");
			printf("%-9s %4lld %-9s %-30.60s %s%.70s\n", age,
			    (long long)json_integer_value(json_object_get(e, "attempts")),
			    next, rcpt, why, jstr(e, "last_error"));
		}
	}
	if (json_is_true(json_object_get(r, "more")))
		printf("(more: --after %s)\n", jstr(json_array_get(list,
		    json_array_size(list) - 1), "id"));
}

static void
fmt_sandbox_list(json_t *r)
{
	json_t *list = json_object_get(r, "messages"), *e;
	size_t i;

	if (!json_is_array(list)) {
		fmt_generic(r);
		return;
	}
	printf("%-40s %-28s %-28s %s\n", "FILE", "FROM", "TO", "SUBJECT");
	json_array_foreach(list, i, e)
		printf("%-40s %-28.28s %-28.28s %s\n", jstr(e, "file"), jstr(e, "from"),
		    jstr(e, "to"), jstr(e, "subject"));
}

static void
fmt_suppress_list(json_t *r)
{
	json_t *list = json_object_get(r, "entries"), *e;
	char when[32];
	time_t t;
	size_t i;

	if (!json_is_array(list)) {
		fmt_generic(r);
		return;
	}
	printf("%-64s %-12s %-12s %-20s %s\n", "ID", "APP", "REASON", "SINCE (UTC)", "REPLY");
	json_array_foreach(list, i, e) {
		t = (time_t)json_integer_value(json_object_get(e, "created"));
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", gmtime(&t));
		printf("%-64s %-12s %-12s %-20s %s\n", jstr(e, "id"), jstr(e, "app"),
		    jstr(e, "reason"), when, jstr(e, "reply"));
	}
	if (json_is_true(json_object_get(r, "more")))
		printf("(more: --after the last id)\n");
}

static int
word_in(const char *list, const char *w)
{
	size_t n = strlen(w);
	const char *p = list;

	while ((p = strstr(p, w)) != NULL) {
		if ((p == list || p[-1] == ' ') && (p[n] == '\0' || p[n] == ' '))
			return 1;
		p += n;
	}
	return 0;
}

/* Builds the request from the words after the command. */
static json_t *
build_request(const struct cmd *c, int argc, char **argv)
{
	json_t *req = json_pack("{s:s}", "op", c->op);
	char pos[256], *save = NULL, *p;
	int i;

	snprintf(pos, sizeof(pos), "%s", c->positional);
	p = strtok_r(pos, " ", &save);
	for (i = 0; i < argc; i++) {
		char *a = argv[i], key[64];
		size_t k;

		if (strncmp(a, "--", 2) == 0 && a[2] != '\0') {
			snprintf(key, sizeof(key), "%s", a + 2);
			for (k = 0; key[k]; k++)
				if (key[k] == '-')
					key[k] = '_';
			if (word_in(c->bools, key)) {
				json_object_set_new(req, key, json_true());
				continue;
			}
			if (i + 1 >= argc) {
				fprintf(stderr, "otpmailctl: --%s needs a value\n", a + 2);
				goto fail;
			}
			if (strcmp(key, "raw_file") == 0 || strcmp(key, "dsn_file") == 0) {
				FILE *f = strcmp(argv[i + 1], "-") ? fopen(argv[i + 1], "r") : stdin;
				char *text = NULL;
				size_t len = 0, n;
				char chunk[65536];
				if (f == NULL) {
					fprintf(stderr, "otpmailctl: %s: %s\n", argv[i + 1], strerror(errno));
					goto fail;
				}
				while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
					text = realloc(text, len + n + 1);
					memcpy(text + len, chunk, n);
					len += n;
				}
				if (f != stdin)
					fclose(f);
				key[strlen(key) - 5] = '\0';	/* raw, dsn */
				json_object_set_new(req, key, json_stringn(text ? text : "", len));
				free(text);
				i++;
				continue;
			}
			if (word_in(c->ints, key)) {
				char *end;
				long v = strtol(argv[i + 1], &end, 10);
				if (*end != '\0') {
					fprintf(stderr, "otpmailctl: --%s takes a number\n", a + 2);
					goto fail;
				}
				json_object_set_new(req, key, json_integer(v));
			} else
				json_object_set_new(req, key, json_string(argv[i + 1]));
			i++;
			continue;
		}
		if (p == NULL) {
			fprintf(stderr, "otpmailctl: unexpected argument \"%s\"\n", a);
			goto fail;
		}
		k = strlen(p);
		if (k > 3 && strcmp(p + k - 3, "...") == 0) {
			char name[64];
			json_t *arr;
			snprintf(name, sizeof(name), "%.*s", (int)(k - 3), p);
			if ((arr = json_object_get(req, name)) == NULL) {
				arr = json_array();
				json_object_set_new(req, name, arr);
			}
			json_array_append_new(arr, json_string(a));
			continue;	/* a list takes every remaining word */
		}
		json_object_set_new(req, p, json_string(a));
		p = strtok_r(NULL, " ", &save);
	}
	/* "sandbox show --latest" needs no <file>, "suppress remove --id" no address. */
	if (p != NULL && strstr(p, "...") == NULL &&
	    !json_is_true(json_object_get(req, "latest")) &&
	    json_object_get(req, "id") == NULL) {
		fprintf(stderr, "otpmailctl: missing <%s>\n", p);
		goto fail;
	}
	return req;
fail:
	json_decref(req);
	return NULL;
}

/* Sends each request, prints each answer; returns the worst exit code. */
static int
run(int fd, json_t **reqs, size_t n, ctl_fmt fmt)
{
	char *pending = NULL, *line, *s;
	size_t plen = 0, i;
	json_error_t jerr;
	json_t *reply;
	int rc = EX_OK, r, streaming = 0;

	for (i = 0; i < n; i++) {
		s = json_dumps(reqs[i], JSON_COMPACT);
		if (s == NULL || write_all(fd, s, strlen(s)) == -1 || write_all(fd, "\n", 1) == -1) {
			fprintf(stderr, "otpmailctl: write to the daemon failed\n");
			free(s);
			return EX_UNREACHABLE;
		}
		free(s);
	}
	for (i = 0; i < n; i++) {
		if ((line = read_line(fd, &pending, &plen)) == NULL) {
			fprintf(stderr, "otpmailctl: the daemon closed the connection\n");
			free(pending);
			return EX_UNREACHABLE;
		}
		reply = json_loads(line, 0, &jerr);
		if (reply == NULL) {
			fprintf(stderr, "otpmailctl: unreadable answer: %s\n", line);
			free(line);
			rc = EX_REFUSED;
			continue;
		}
		r = exit_code(reply);
		if (r == EX_OK && json_is_true(json_object_get(reply, "streaming")))
			streaming = 1;
		else if (json_out)
			printf("%s\n", line);
		else if (r == EX_OK)
			fmt(reply);
		else {
			json_t *ra = json_object_get(reply, "retry_after");
			fprintf(stderr, "otpmailctl: %s: %s", jstr(reply, "error"),
			    jstr(reply, "detail"));
			if (json_is_integer(ra))
				fprintf(stderr, " (retry after %llds)",
				    (long long)json_integer_value(ra));
			fprintf(stderr, "\n");
		}
		if (r > rc)
			rc = r;
		json_decref(reply);
		free(line);
	}
	/* events.tail: print every event until the daemon goes away */
	while (streaming && (line = read_line(fd, &pending, &plen)) != NULL) {
		if (json_out)
			printf("%s\n", line);
		else if ((reply = json_loads(line, 0, &jerr)) != NULL) {
			time_t ts = json_integer_value(json_object_get(reply, "time"));
			char stamp[32];
			strftime(stamp, sizeof(stamp), "%H:%M:%S", localtime(&ts));
			if (json_object_get(reply, "type") != NULL)	/* events.subscribe */
				printf("%s #%lld %s %s %s %s %s\n", stamp, (long long)
				    json_integer_value(json_object_get(reply, "id")),
				    jstr(reply, "type"), jstr(reply, "app"),
				    jstr(reply, "message"), jstr(reply, "recipient"),
				    json_is_string(json_object_get(reply, "reply")) ?
				    jstr(reply, "reply") : jstr(reply, "detail"));
			else
				printf("%s %s\n", stamp, jstr(reply, "event"));
			json_decref(reply);
		}
		fflush(stdout);
		free(line);
	}
	free(pending);
	return rc;
}

static void
cmd_help(const struct cmd *c)
{
	const struct cmd_doc *d;
	const char *p, *tab, *nl;

	printf("usage: otpmailctl %s %s\n", c->words, c->help);
	for (d = cmd_docs; d->words; d++)
		if (strcmp(d->words, c->words) == 0)
			break;
	if (d->words != NULL) {
		printf("\n%s\n", d->desc);
		if (*d->opts)
			printf("\noptions:\n");
		for (p = d->opts; *p; p = nl + 1) {
			nl = strchr(p, '\n');
			tab = memchr(p, '\t', (size_t)(nl - p));
			if (tab == NULL)
				break;
			printf("  %-22.*s %.*s\n", (int)(tab - p), p, (int)(nl - tab - 1), tab + 1);
		}
	}
	printf("\n(op \"%s\"; --json prints the daemon's answer as is)\n", c->op);
}

/*
 * queue hold/release/delete by filter: lists what matches (every page),
 * asks for --yes when that is more than one message, then acts on the ids
 * in requests of CTL_BULK_MAX.
 */
static int
bulk(const struct cmd *c, json_t *req, const char *sock)
{
	static const char *const filters[] = { "state", "domain", "class", "sender",
	    "older_than", "younger_than", NULL };
	const char *verb = strchr(c->words, ' ') + 1, *k;
	json_t *list, *ids = json_array(), *ans, *m, *v;
	char *pending = NULL, *line, after[128] = "";
	size_t plen = 0, i, off, total = 0;
	int fd, rc = EX_OK, any = json_is_true(json_object_get(req, "all"));

	list = json_pack("{s:s, s:i}", "op", "queue.list", "limit", CTL_BULK_MAX);
	for (i = 0; filters[i]; i++)
		if ((v = json_object_get(req, filters[i])) != NULL) {
			json_object_set(list, filters[i], v);
			any = 1;
		}
	if (!any) {
		fprintf(stderr, "otpmailctl: queue %s needs ids, a filter or --all\n", verb);
		json_decref(list);
		json_decref(ids);
		return EX_USAGE;
	}
	if (json_object_get(list, "state") == NULL)
		json_object_set_new(list, "state", json_string(strcmp(verb, "release") == 0 ?
		    "held" : "pending"));
	if ((fd = ctl_connect(sock)) == -1) {
		json_decref(list);
		json_decref(ids);
		return EX_UNREACHABLE;
	}
	for (;;) {
		char *out;
		if (after[0])
			json_object_set_new(list, "after", json_string(after));
		out = json_dumps(list, JSON_COMPACT);
		if (out == NULL || write_all(fd, out, strlen(out)) == -1 ||
		    write_all(fd, "\n", 1) == -1 ||
		    (line = read_line(fd, &pending, &plen)) == NULL) {
			free(out);
			fprintf(stderr, "otpmailctl: the daemon closed the connection\n");
			rc = EX_UNREACHABLE;
			goto out;
		}
		free(out);
		ans = json_loads(line, 0, NULL);
		free(line);
		if ((rc = exit_code(ans)) != EX_OK) {
			fprintf(stderr, "otpmailctl: %s: %s\n", jstr(ans, "error"),
			    jstr(ans, "detail"));
			json_decref(ans);
			goto out;
		}
		json_array_foreach(json_object_get(ans, "messages"), i, m) {
			json_array_append_new(ids, json_string(jstr(m, "id")));
			snprintf(after, sizeof(after), "%s", jstr(m, "id"));
		}
		k = json_is_true(json_object_get(ans, "more")) ? after : NULL;
		json_decref(ans);
		if (k == NULL || json_array_size(ids) > 1000000)
			break;
	}
	if (json_array_size(ids) == 0) {
		printf("no message matches\n");
		goto out;
	}
	if (json_array_size(ids) > 1 && !assume_yes) {
		printf("%zu messages match (first %s, last %s); add --yes to %s them\n",
		    json_array_size(ids), json_string_value(json_array_get(ids, 0)),
		    json_string_value(json_array_get(ids, json_array_size(ids) - 1)), verb);
		rc = EX_REFUSED;
		goto out;
	}
	for (off = 0; off < json_array_size(ids); off += CTL_BULK_MAX) {
		json_t *act = json_pack("{s:s, s:[]}", "op", c->op, "ids"), *chunk;
		char *out;
		chunk = json_object_get(act, "ids");
		for (i = off; i < off + CTL_BULK_MAX && i < json_array_size(ids); i++)
			json_array_append(chunk, json_array_get(ids, i));
		out = json_dumps(act, JSON_COMPACT);
		json_decref(act);
		if (out == NULL || write_all(fd, out, strlen(out)) == -1 ||
		    write_all(fd, "\n", 1) == -1 ||
		    (line = read_line(fd, &pending, &plen)) == NULL) {
			free(out);
			rc = EX_UNREACHABLE;
			goto out;
		}
		free(out);
		ans = json_loads(line, 0, NULL);
		free(line);
		if (exit_code(ans) == EX_OK)
			total += (size_t)json_integer_value(json_object_get(ans, "count"));
		else if (strcmp(jstr(ans, "error"), "not_found") != 0 &&
		    strcmp(jstr(ans, "error"), "already_finished") != 0) {
			fprintf(stderr, "otpmailctl: %s: %s\n", jstr(ans, "error"),
			    jstr(ans, "detail"));
			rc = exit_code(ans);
		}
		json_decref(ans);
	}
	if (json_out)
		printf("{\"ok\":%s,\"matched\":%zu,\"count\":%zu}\n", rc ? "false" : "true",
		    json_array_size(ids), total);
	else
		printf("%s: %zu of %zu matching message%s\n", c->op, total,
		    json_array_size(ids), json_array_size(ids) == 1 ? "" : "s");
out:
	close(fd);
	free(pending);
	json_decref(list);
	json_decref(ids);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *sock = NULL;
	const struct cmd *c, *best = NULL;
	json_t **reqs = NULL;
	size_t nreq = 0, i;
	int fd, rc, used = 0, watch = 0;
	const char *nc = getenv("NO_COLOR");

	use_colour = isatty(STDOUT_FILENO) && (nc == NULL || *nc == '\0');

	while (argc > 1 && argv[1][0] == '-') {
		if (strcmp(argv[1], "-s") == 0 && argc > 2) {
			sock = argv[2];
			argc -= 2;
			argv += 2;
		} else if (strcmp(argv[1], "--json") == 0 || strcmp(argv[1], "-j") == 0) {
			json_out = 1;
			argc--;
			argv++;
		} else if ((strcmp(argv[1], "--watch") == 0 || strcmp(argv[1], "-w") == 0) &&
		    argc > 2) {
			watch = atoi(argv[2]);
			if (watch < 1 || watch > 3600) {
				fprintf(stderr, "otpmailctl: --watch takes seconds (1-3600)\n");
				return EX_USAGE;
			}
			argc -= 2;
			argv += 2;
		} else if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
			usage(stdout);
			return EX_OK;
		} else if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
			printf("otpmailctl %s\n", PACKAGE_VERSION);
			return EX_OK;
		} else if (strcmp(argv[1], "--list-commands") == 0) {
			/* for the bash completion: each command and its options */
			const struct cmd_doc *d;
			for (d = cmd_docs; d->words; d++) {
				const char *p;
				printf("%s\t", d->words);
				for (p = d->opts; (p = strstr(p, "--")) != NULL; p += 2) {
					if (p != d->opts && p[-1] != '\n')
						continue;
					printf(" %.*s", (int)strcspn(p, " \t"), p);
				}
				printf(" --help\n");
			}
			return EX_OK;
		} else
			break;
	}
	/* --yes anywhere: the confirmation of a bulk operation */
	for (i = 1; i < (size_t)argc; i++)
		if (strcmp(argv[i], "--yes") == 0 || strcmp(argv[i], "-y") == 0) {
			assume_yes = 1;
			memmove(argv + i, argv + i + 1, (argc - i) * sizeof(*argv));
			argc--;
			i--;
		}
	if (argc < 2) {
		usage(stderr);
		return EX_USAGE;
	}
	if (sock == NULL)
		sock = default_socket();

	if (strcmp(argv[1], "call") == 0) {
		/* raw JSON: one request per argument, or lines on stdin with '-' */
		json_error_t jerr;
		if (argc < 3) {
			fprintf(stderr, "otpmailctl: call needs a JSON request or '-'\n");
			return EX_USAGE;
		}
		if (strcmp(argv[2], "-") == 0) {
			char *line = NULL;
			size_t cap = 0;
			ssize_t n;
			while ((n = getline(&line, &cap, stdin)) > 0) {
				json_t *j = json_loadb(line, n, 0, &jerr);
				if (j == NULL)
					continue;
				reqs = realloc(reqs, (nreq + 1) * sizeof(*reqs));
				reqs[nreq++] = j;
			}
			free(line);
		} else {
			for (i = 2; i < (size_t)argc; i++) {
				json_t *j = json_loads(argv[i], 0, &jerr);
				if (j == NULL) {
					fprintf(stderr, "otpmailctl: bad JSON: %s\n", jerr.text);
					return EX_USAGE;
				}
				reqs = realloc(reqs, (nreq + 1) * sizeof(*reqs));
				reqs[nreq++] = j;
			}
		}
		json_out = 1;
		best = &cmds[0];
	} else {
		/* the longest command whose words match */
		for (c = cmds; c->words; c++) {
			char w[64], *save = NULL, *t;
			int k = 1, match = 1;
			snprintf(w, sizeof(w), "%s", c->words);
			for (t = strtok_r(w, " ", &save); t; t = strtok_r(NULL, " ", &save), k++)
				if (k >= argc || strcmp(argv[k], t) != 0) {
					match = 0;
					break;
				}
			if (match && k - 1 > used) {
				best = c;
				used = k - 1;
			}
		}
		if (best == NULL) {
			fprintf(stderr, "otpmailctl: unknown command \"%s\"\n\n", argv[1]);
			usage(stderr);
			return EX_USAGE;
		}
		for (i = 1 + used; i < (size_t)argc; i++)
			if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
				cmd_help(best);
				return EX_OK;
			}
		reqs = calloc(1, sizeof(*reqs));
		if ((reqs[0] = build_request(best, argc - 1 - used, argv + 1 + used)) == NULL) {
			fprintf(stderr, "usage: otpmailctl %s %s\n", best->words, best->help);
			free(reqs);
			return EX_USAGE;
		}
		nreq = 1;
		if (strcmp(best->op, "queue.list") == 0) {
			/* like mailq: what is still to do, unless --all or a state */
			list_all = json_is_true(json_object_get(reqs[0], "all"));
			json_object_del(reqs[0], "all");
			if (!list_all && json_object_get(reqs[0], "state") == NULL)
				json_object_set_new(reqs[0], "state", json_string("pending"));
		}
		if ((strcmp(best->op, "queue.hold") == 0 || strcmp(best->op, "queue.release") == 0 ||
		    strcmp(best->op, "queue.delete") == 0) &&
		    json_object_get(reqs[0], "ids") == NULL) {
			rc = bulk(best, reqs[0], sock);
			json_decref(reqs[0]);
			free(reqs);
			return rc;
		}
	}
	/* --watch: the same request again every few seconds, screen cleared */
	for (;;) {
		if (watch) {
			char stamp[64];
			time_t now = time(NULL);
			strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", localtime(&now));
			if (isatty(STDOUT_FILENO))
				printf("\033[H\033[2J");
			printf("otpmailctl %s  every %ds  %s\n\n", best->words, watch, stamp);
		}
		if ((fd = ctl_connect(sock)) == -1)
			rc = EX_UNREACHABLE;
		else {
			rc = run(fd, reqs, nreq, best->fmt);
			close(fd);
		}
		fflush(stdout);
		if (!watch || rc == EX_UNREACHABLE || rc == EX_FORBIDDEN)
			break;
		sleep(watch);
	}
	for (i = 0; i < nreq; i++)
		json_decref(reqs[i]);
	free(reqs);
	return rc;
}
