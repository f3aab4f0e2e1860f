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
static const char *jstr(json_t *, const char *);

static const struct cmd cmds[] = {
	{ "ping", "ping", "", "", "", fmt_generic, "check the daemon answers" },
	{ "version", "version", "", "", "", fmt_generic, "daemon version and uptime" },
	{ "help", "help", "", "", "", fmt_help, "operations this user may call" },
	{ "config show", "config.show", "", "", "", fmt_config,
	    "effective configuration of the running daemon" },
	{ "otp issue", "otp.issue", "to", "ttl", "", fmt_generic,
	    "<to> [--purpose P] [--context C] [--locale L] [--app NAME] [--ttl S]" },
	{ "otp verify", "otp.verify", "to code", "", "", fmt_generic,
	    "<to> <code> [--purpose P] [--context C]" },
	{ "otp revoke", "otp.revoke", "to", "", "", fmt_generic, "<to> [--purpose P]" },
	{ "otp unlock", "otp.unlock", "to", "", "", fmt_generic,
	    "<to> [--purpose P]  (admin: lift a lock-out)" },
	{ "send", "mail.send", "to...", "", "", fmt_generic,
	    "<to>... --from F --subject S (--text T | --raw-file FILE) [--html H]" },
	{ "status", "message.status", "id", "", "", fmt_generic, "<queue id>" },
	{ "queue list", "queue.list", "", "older_than younger_than limit", "", fmt_queue_list,
	    "[--state S] [--class C] [--domain D] [--sender S] [--older-than SECS] "
	    "[--younger-than SECS] [--after ID] [--limit N]" },
	{ "queue show", "queue.show", "id", "", "body", fmt_generic, "<id> [--body]" },
	{ "queue hold", "queue.hold", "ids...", "", "", fmt_generic, "<id>..." },
	{ "queue release", "queue.release", "ids...", "", "", fmt_generic, "<id>..." },
	{ "queue delete", "queue.delete", "ids...", "", "", fmt_generic, "<id>..." },
	{ "queue flush", "queue.flush", "ids...", "", "all", fmt_generic,
	    "[<id>...] [--domain D] [--all]" },
	{ "queue pause", "queue.pause", "", "", "", fmt_generic, "pause all delivery" },
	{ "queue resume", "queue.resume", "", "", "", fmt_generic, "resume delivery" },
	{ "stats", "stats", "", "", "", fmt_generic, "queue and delivery counters" },
	{ "tail", "events.tail", "", "", "", NULL, "follow the daemon's events live (Ctrl-C ends)" },
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
	{ "sandbox list", "sandbox.list", "", "limit", "", fmt_sandbox_list,
	    "messages in the sandbox Maildir" },
	{ "sandbox show", "sandbox.show", "file", "", "latest", fmt_text,
	    "[<file> | --latest]" },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL }
};

static int json_out;
static int use_colour;	/* only on a terminal, never with NO_COLOR */

static void
usage(FILE *f)
{
	const struct cmd *c;

	fprintf(f, "usage: otpmailctl [-s socket] [--json] [--watch SECS] <command> [args]\n"
	    "       otpmailctl [-s socket] call '<json request>'   (or '-' for lines on stdin)\n\n"
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

static void
human_age(long secs, char *out, size_t len)
{
	if (secs < 0)
		snprintf(out, len, "-");
	else if (secs < 120)
		snprintf(out, len, "%lds", secs);
	else if (secs < 7200)
		snprintf(out, len, "%ldm", secs / 60);
	else if (secs < 172800)
		snprintf(out, len, "%ldh", secs / 3600);
	else
		snprintf(out, len, "%ldd", secs / 86400);
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
		printf("queue empty (for these filters)\n");
		return;
	}
	printf("%-24s %-7s %-10s %5s %4s %6s  %-30s %s\n", "ID", "CLASS", "STATE", "AGE",
	    "TRY", "NEXT", "RECIPIENT", "LAST ERROR");
	json_array_foreach(list, i, e) {
		json_int_t created = json_integer_value(json_object_get(e, "created"));
		json_int_t na = json_integer_value(json_object_get(e, "next_attempt"));
		json_t *rcpts = json_object_get(e, "recipients");
		human_age(now - created, age, sizeof(age));
		if (na > 0)
			human_age(na - now, next, sizeof(next));
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
		printf("%5s %4lld %6s  %-30.60s %.70s\n", age,
		    (long long)json_integer_value(json_object_get(e, "attempts")), next,
		    rcpt, jstr(e, "last_error"));
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
			if (strcmp(key, "raw_file") == 0) {
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
				json_object_set_new(req, "raw", json_stringn(text ? text : "", len));
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
	/* "sandbox show --latest" needs no <file>. */
	if (p != NULL && strstr(p, "...") == NULL &&
	    !json_is_true(json_object_get(req, "latest"))) {
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
			printf("%s %s\n", stamp, jstr(reply, "event"));
			json_decref(reply);
		}
		fflush(stdout);
		free(line);
	}
	free(pending);
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
		} else
			break;
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
				printf("usage: otpmailctl %s %s\n  (op \"%s\")\n", best->words,
				    best->help, best->op);
				return EX_OK;
			}
		reqs = calloc(1, sizeof(*reqs));
		if ((reqs[0] = build_request(best, argc - 1 - used, argv + 1 + used)) == NULL) {
			fprintf(stderr, "usage: otpmailctl %s %s\n", best->words, best->help);
			free(reqs);
			return EX_USAGE;
		}
		nreq = 1;
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
