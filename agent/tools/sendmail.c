/*
 * sendmail.c - otpmail-sendmail, the system's sendmail: reads a message on
 * stdin and submits it to otpmaild as mail.send over the control socket, so
 * cron, PHP's mail(), git send-email and mutt work unchanged.  Unqualified
 * addresses get the origin domain, local recipients go through the aliases
 * (sm_rewrite.c).  When the daemon is down the request is kept in the
 * maildrop (<state_dir>/maildrop), which otpmaild submits when it starts.
 * Called as mailq (-bp) it lists the queue, as newaliases (-bi) it checks
 * the aliases file.  Exit codes follow sysexits.h.
 */
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent/core/otpmaild.h"
#include "agent/mail/mail.h"
#include "agent/tools/sm.h"

#define SM_MAX_MSG	(64L * 1024 * 1024)
#define SM_MAX_ANSWER	(64L * 1024 * 1024)
#define SM_CONF		SYSCONFDIR "/otpmail/otpmail.conf"

/* Where the daemon and its maildrop are, and how to rewrite addresses. */
struct sm_env {
	struct config	*cfg;		/* NULL: no readable configuration file */
	char		*socket;
	char		*maildrop;
	char		*origin;
	const char	*aliases_file;
};

static void	sm_usage(FILE *);
static void	sm_env_init(struct sm_env *);
static void	sm_env_free(struct sm_env *);
static int	sm_connect(const char *);
static json_t	*sm_call(int, json_t *);
static int	sm_maildrop_put(const struct sm_env *, const char *, size_t);
static int	sm_maildrop_count(const struct sm_env *);
static int	sm_mailq(const struct sm_env *);
static int	sm_newaliases(const struct sm_env *);
static int	sm_flush(const struct sm_env *);
static int	sm_send(const struct sm_env *, int, char **, int, int, const char *,
		    const char *);

static void
sm_usage(FILE *f)
{
	fprintf(f, "usage: sendmail [-t] [-i] [-f sender] [-F name] [recipient ...] < message\n"
	    "       sendmail -bp | mailq          list the queue\n"
	    "       sendmail -bi | newaliases     check the aliases file\n"
	    "       sendmail -q                   retry every queued message now\n"
	    "The configuration is $OTPMAIL_CONFIG or " SM_CONF " (origin_domain,\n"
	    "aliases_file, state_dir); the socket $OTPMAIL_SOCKET, the configured one,\n"
	    "./otpmail-state/control.sock or /var/lib/otpmail/control.sock.\n");
}

static char *
sm_strdup(const char *s)
{
	char *r = strdup(s);

	if (r == NULL) {
		fprintf(stderr, "otpmail-sendmail: out of memory\n");
		exit(EX_OSERR);
	}
	return r;
}

static void
sm_env_init(struct sm_env *e)
{
	const char *path = getenv("OTPMAIL_CONFIG"), *s = getenv("OTPMAIL_SOCKET");
	char err[1024], *d;
	int file = 0;

	memset(e, 0, sizeof(*e));
	if (path == NULL || *path == '\0')
		path = SM_CONF;
	if (access(path, F_OK) == 0) {
		if ((e->cfg = config_load(path, err, sizeof(err))) == NULL)
			fprintf(stderr, "otpmail-sendmail: %s (using defaults)\n", err);
		file = e->cfg != NULL;
	}
	/* the built-in defaults still give the hostname and the aliases file */
	if (e->cfg == NULL && (e->cfg = config_load(NULL, err, sizeof(err))) == NULL) {
		fprintf(stderr, "otpmail-sendmail: %s\n", err);
		exit(EX_CONFIG);
	}
	if (s && *s)
		e->socket = sm_strdup(s);
	else if (file)
		e->socket = sm_strdup(e->cfg->control_socket);
	else if (access("otpmail-state/control.sock", F_OK) == 0)
		e->socket = sm_strdup("otpmail-state/control.sock");
	else
		e->socket = sm_strdup("/var/lib/otpmail/control.sock");
	if (file) {
		if (asprintf(&e->maildrop, "%s/maildrop", e->cfg->state_dir) == -1)
			exit(EX_OSERR);
	} else {
		/* the socket's directory is the state directory by default */
		d = sm_strdup(e->socket);
		if (asprintf(&e->maildrop, "%s/maildrop", dirname(d)) == -1)
			exit(EX_OSERR);
		free(d);
	}
	e->origin = sm_strdup(e->cfg->origin_domain[0] ? e->cfg->origin_domain :
	    e->cfg->hostname);
	e->aliases_file = e->cfg->aliases_file;
}

static void
sm_env_free(struct sm_env *e)
{
	free(e->socket);
	free(e->maildrop);
	free(e->origin);
	config_free(e->cfg);
}

static int
sm_connect(const char *path)
{
	struct sockaddr_un sun;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

static int
sm_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* One request, one answer line; NULL when the connection failed. */
static json_t *
sm_call(int fd, json_t *req)
{
	char *out = json_dumps(req, JSON_COMPACT), buf[65536];
	struct buf ans;
	json_t *r = NULL;
	ssize_t n;

	if (out == NULL)
		return NULL;
	buf_init(&ans);
	if (sm_write_all(fd, out, strlen(out)) == 0 && sm_write_all(fd, "\n", 1) == 0) {
		while (ans.len < (size_t)SM_MAX_ANSWER &&
		    (ans.len == 0 || memchr(ans.data, '\n', ans.len) == NULL)) {
			if ((n = read(fd, buf, sizeof(buf))) <= 0)
				break;
			buf_add(&ans, buf, (size_t)n);
		}
		if (ans.len > 0 && memchr(ans.data, '\n', ans.len) != NULL)
			r = json_loadb(ans.data, ans.len, JSON_DISABLE_EOF_CHECK, NULL);
	}
	free(out);
	buf_free(&ans);
	return r;
}

/*
 * Keeps the request line for otpmaild: written under a dot name, synced,
 * then renamed, so the daemon never reads half a file.  The directory is
 * the daemon's (mode 3730): only its group and root may drop, nobody lists.
 */
static int
sm_maildrop_put(const struct sm_env *e, const char *line, size_t len)
{
	char tmp[4096], fin[4096];
	unsigned char rnd[8];
	size_t off = 0;
	int fd, err;

	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return EX_OSERR;
	snprintf(fin, sizeof(fin), "%s/%lld.%d.%02x%02x%02x%02x%02x%02x%02x%02x", e->maildrop,
	    (long long)time(NULL), (int)getpid(), rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
	    rnd[5], rnd[6], rnd[7]);
	snprintf(tmp, sizeof(tmp), "%s/.%s", e->maildrop, strrchr(fin, '/') + 1);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640)) == -1)
		goto fail;
	(void)!fchmod(fd, 0640);
	while (off < len) {
		ssize_t w = write(fd, line + off, len - off);
		if (w <= 0)
			goto fail_unlink;
		off += (size_t)w;
	}
	if (write(fd, "\n", 1) != 1 || fsync(fd) == -1)
		goto fail_unlink;
	if (close(fd) == -1) {
		fd = -1;
		goto fail_unlink;
	}
	fd = -1;
	if (rename(tmp, fin) == -1)
		goto fail_unlink;
	/* the directory entry too, where we may open the directory */
	if ((fd = open(e->maildrop, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		(void)fsync(fd);
		close(fd);
	}
	fprintf(stderr, "otpmail-sendmail: otpmaild is not running; the message waits in "
	    "%s until it starts\n", e->maildrop);
	return EX_OK;
fail_unlink:
	err = errno;
	if (fd != -1)
		close(fd);
	unlink(tmp);
	errno = err;
fail:
	err = errno;
	fprintf(stderr, "otpmail-sendmail: otpmaild is not running and the message cannot "
	    "be kept in %s: %s\n", e->maildrop, strerror(err));
	if (err == EACCES || err == EPERM)
		return EX_NOPERM;
	return EX_TEMPFAIL;	/* a full disk, or no maildrop yet: try again later */
}

/* Messages waiting in the maildrop, or -1 if the directory is not readable. */
static int
sm_maildrop_count(const struct sm_env *e)
{
	DIR *d = opendir(e->maildrop);
	struct dirent *de;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((de = readdir(d)) != NULL)
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

static void
sm_maildrop_note(const struct sm_env *e)
{
	int n = sm_maildrop_count(e);

	if (n > 0)
		printf("-- %d message%s in the maildrop (%s), not yet taken by otpmaild\n", n,
		    n == 1 ? "" : "s", e->maildrop);
}

/* mailq: the messages not yet finished, Postfix's layout. */
static int
sm_mailq(const struct sm_env *e)
{
	static const char *const states[] = { "queued", "delivering", "deferred", "held" };
	long long bytes = 0;
	int fd, count = 0;
	size_t s, i, k;
	json_t *req, *ans, *m;

	if ((fd = sm_connect(e->socket)) == -1) {
		fprintf(stderr, "otpmail-sendmail: queue report unavailable: cannot reach "
		    "otpmaild at %s: %s\n", e->socket, strerror(errno));
		sm_maildrop_note(e);
		return EX_UNAVAILABLE;
	}
	for (s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
		char after[128] = "";
		for (;;) {
			req = json_pack("{s:s, s:s, s:i}", "op", "queue.list", "state", states[s],
			    "limit", 1000);
			if (after[0])
				json_object_set_new(req, "after", json_string(after));
			ans = sm_call(fd, req);
			json_decref(req);
			if (ans == NULL || !json_is_true(json_object_get(ans, "ok"))) {
				const char *er = json_string_value(json_object_get(ans, "error"));
				fprintf(stderr, "otpmail-sendmail: queue report unavailable: %s: %s\n",
				    er ? er : "no answer",
				    json_string_value(json_object_get(ans, "detail")) ?: "");
				json_decref(ans);
				close(fd);
				return er && strcmp(er, "forbidden") == 0 ? EX_NOPERM : EX_UNAVAILABLE;
			}
			json_array_foreach(json_object_get(ans, "messages"), i, m) {
				time_t t = (time_t)json_integer_value(json_object_get(m, "created"));
				const char *sender = json_string_value(json_object_get(m, "sender"));
				const char *le = json_string_value(json_object_get(m, "last_error"));
				json_t *r;
				char when[64];
				struct tm tm;

				if (count++ == 0)
					printf("-Queue ID-- --Size-- ----Arrival Time---- "
					    "-Sender/Recipient-------\n");
				localtime_r(&t, &tm);
				strftime(when, sizeof(when), "%a %b %e %H:%M:%S", &tm);
				bytes += json_integer_value(json_object_get(m, "size"));
				printf("%-10s%c %8lld %-20s  %s\n",
				    json_string_value(json_object_get(m, "id")),
				    s == 1 ? '*' : s == 3 ? '!' : ' ',
				    (long long)json_integer_value(json_object_get(m, "size")), when,
				    sender && *sender ? sender : "MAILER-DAEMON");
				if (le)
					printf("%*s(%.200s)\n", 12, "", le);
				json_array_foreach(json_object_get(m, "recipients"), k, r) {
					const char *st = json_string_value(json_object_get(r, "state"));
					if (st && (strcmp(st, "delivered") == 0 ||
					    strcmp(st, "failed") == 0))
						continue;
					printf("%*s%s\n", 53, "",
					    json_string_value(json_object_get(r, "to")));
				}
				printf("\n");
				snprintf(after, sizeof(after), "%s",
				    json_string_value(json_object_get(m, "id")));
			}
			m = json_object_get(ans, "more");
			if (!json_is_true(m) || after[0] == '\0') {
				json_decref(ans);
				break;
			}
			json_decref(ans);
		}
	}
	close(fd);
	if (count == 0)
		printf("Mail queue is empty\n");
	else
		printf("-- %lld Kbytes in %d Request%s.\n", (bytes + 1023) / 1024, count,
		    count == 1 ? "" : "s");
	sm_maildrop_note(e);
	return EX_OK;
}

/* newaliases: the aliases file is read as text at each submission, so
 * there is nothing to rebuild; this checks it and says so. */
static int
sm_newaliases(const struct sm_env *e)
{
	struct sm_aliases *a;
	char err[512];

	if ((a = sm_aliases_load(e->aliases_file, stderr, err, sizeof(err))) == NULL) {
		fprintf(stderr, "otpmail-sendmail: %s\n", err);
		return EX_NOINPUT;
	}
	printf("otpmail-sendmail: %s: %zu aliases (read directly, no database to "
	    "rebuild)\n", e->aliases_file[0] ? e->aliases_file : "(no aliases_file)",
	    sm_aliases_count(a));
	sm_aliases_free(a);
	return EX_OK;
}

/* sendmail -q: retry every queued message now. */
static int
sm_flush(const struct sm_env *e)
{
	json_t *req, *ans;
	int fd, rc;

	if ((fd = sm_connect(e->socket)) == -1) {
		fprintf(stderr, "otpmail-sendmail: cannot reach otpmaild at %s: %s\n", e->socket,
		    strerror(errno));
		return EX_UNAVAILABLE;
	}
	req = json_pack("{s:s, s:b}", "op", "queue.flush", "all", 1);
	ans = sm_call(fd, req);
	close(fd);
	json_decref(req);
	rc = ans && json_is_true(json_object_get(ans, "ok")) ? EX_OK : EX_UNAVAILABLE;
	if (rc != EX_OK)
		fprintf(stderr, "otpmail-sendmail: flush refused: %s\n",
		    json_string_value(json_object_get(ans, "detail")) ?: "no answer");
	json_decref(ans);
	return rc;
}

static int
sm_has_field(const char *m, size_t hdrlen, const char *name)
{
	char *v = msg_find_header(m, hdrlen, name);

	free(v);
	return v != NULL;
}

static int
sm_send(const struct sm_env *e, int argc, char **argv, int tflag, int iflag,
    const char *from, const char *fullname)
{
	struct sm_list args = { NULL, 0 }, rcpts = { NULL, 0 };
	struct sm_aliases *aliases;
	struct passwd *pw = getpwuid(getuid());
	char *msg = NULL, *line = NULL, *sender = NULL, *user, *tmp, err[512];
	size_t len = 0, cap = 0, hdrlen, k;
	ssize_t n;
	json_t *req, *ans, *to;
	FILE *mf;
	int i, fd, rc;

	for (i = 0; i < argc; i++)
		sm_addr_list(&args, argv[i], strlen(argv[i]));

	/* the message: with -i only EOF ends it, else also a line with a lone dot */
	if ((mf = open_memstream(&msg, &len)) == NULL)
		return EX_OSERR;
	while ((n = getline(&line, &cap, stdin)) > 0) {
		if (!iflag && (strcmp(line, ".\n") == 0 || strcmp(line, ".\r\n") == 0))
			break;
		fwrite(line, 1, (size_t)n, mf);
		if (ftell(mf) > SM_MAX_MSG) {
			fprintf(stderr, "otpmail-sendmail: message larger than %ld bytes\n",
			    SM_MAX_MSG);
			return EX_DATAERR;
		}
	}
	free(line);
	fclose(mf);

	hdrlen = sm_header_len(msg, len);
	if (tflag) {
		sm_header_addrs(msg, hdrlen, "To", &args);
		sm_header_addrs(msg, hdrlen, "Cc", &args);
		sm_header_addrs(msg, hdrlen, "Bcc", &args);
		len = sm_strip_bcc(msg, len, hdrlen);
	}
	if ((aliases = sm_aliases_load(e->aliases_file, NULL, err, sizeof(err))) == NULL)
		fprintf(stderr, "otpmail-sendmail: aliases: %s (none used)\n", err);
	for (k = 0; k < args.n; k++)
		sm_resolve(aliases, e->origin, args.v[k], &rcpts);
	sm_aliases_free(aliases);
	sm_list_free(&args);
	if (rcpts.n == 0) {
		fprintf(stderr, "otpmail-sendmail: no recipients\n");
		return EX_USAGE;
	}

	/* the envelope sender: -f, else the From field's address, else the user */
	user = sm_qualify(pw ? pw->pw_name : "nobody", e->origin);
	if (from != NULL && (*from == '\0' || strcmp(from, "<>") == 0))
		sender = sm_strdup("<>");
	else if (from != NULL)
		sender = sm_qualify(from, e->origin);
	else {
		struct sm_list hf = { NULL, 0 };
		sm_header_addrs(msg, hdrlen, "From", &hf);
		sender = hf.n > 0 ? sm_qualify(hf.v[0], e->origin) : sm_strdup(user);
		sm_list_free(&hf);
	}

	/* header addresses qualified like the envelope's ("From: root (Cron Daemon)") */
	tmp = sm_rewrite_headers(msg, len, e->origin, &len);
	free(msg);
	msg = tmp;
	hdrlen = sm_header_len(msg, len);
	if (!sm_has_field(msg, hdrlen, "From")) {
		/* a message without From gets one, as sendmail does */
		struct buf b;
		const char *a = strcmp(sender, "<>") == 0 ? user : sender;
		buf_init(&b);
		if (fullname && *fullname && strpbrk(fullname, "\r\n\"\\") == NULL)
			buf_printf(&b, "From: \"%s\" <%s>\n", fullname, a);
		else
			buf_printf(&b, "From: %s\n", a);
		/* a message that starts with its blank line has no headers at all */
		buf_add(&b, msg, len);
		free(msg);
		msg = buf_take(&b, &len);
	}
	free(user);
	if (!sm_utf8_valid(msg, len)) {
		tmp = sm_make_utf8(msg, len, &len);
		free(msg);
		msg = tmp;
	}

	to = json_array();
	for (k = 0; k < rcpts.n; k++)
		json_array_append_new(to, json_string(rcpts.v[k]));
	sm_list_free(&rcpts);
	req = json_pack("{s:s, s:s, s:o, s:s%}", "op", "mail.send", "from", sender, "to", to,
	    "raw", msg, len);
	free(sender);
	free(msg);
	if (req == NULL) {
		fprintf(stderr, "otpmail-sendmail: cannot encode the message\n");
		return EX_DATAERR;
	}
	if ((fd = sm_connect(e->socket)) == -1 || (ans = sm_call(fd, req)) == NULL) {
		/* down, or gone before it answered: keep it (at worst sent twice) */
		char *out = json_dumps(req, JSON_COMPACT);
		if (fd != -1)
			close(fd);
		json_decref(req);
		if (out == NULL)
			return EX_OSERR;
		rc = sm_maildrop_put(e, out, strlen(out));
		free(out);
		return rc;
	}
	close(fd);
	json_decref(req);
	if (json_is_true(json_object_get(ans, "ok")))
		rc = EX_OK;
	else {
		const char *er = json_string_value(json_object_get(ans, "error"));
		fprintf(stderr, "otpmail-sendmail: %s: %s\n", er ? er : "error",
		    json_string_value(json_object_get(ans, "detail")) ?: "");
		if (er && strcmp(er, "forbidden") == 0)
			rc = EX_NOPERM;
		else if (er && strcmp(er, "unavailable") == 0)
			rc = EX_TEMPFAIL;
		else
			rc = EX_DATAERR;
		if (rc == EX_DATAERR && strchr(e->origin, '.') == NULL)
			fprintf(stderr, "otpmail-sendmail: hint: unqualified addresses get "
			    "\"@%s\", which is not a domain: set origin_domain (or hostname) "
			    "in the configuration\n", e->origin);
	}
	json_decref(ans);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *from = NULL, *fullname = NULL, *prog = strrchr(argv[0], '/');
	int tflag = 0, iflag = 0, i, rc;
	enum { SM_SEND, SM_MAILQ, SM_NEWALIASES, SM_FLUSH } mode = SM_SEND;
	struct sm_env e;

	prog = prog ? prog + 1 : argv[0];
	if (strcmp(prog, "mailq") == 0)
		mode = SM_MAILQ;
	else if (strcmp(prog, "newaliases") == 0)
		mode = SM_NEWALIASES;
	for (i = 1; i < argc && argv[i][0] == '-' && argv[i][1] != '\0'; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "-t") == 0)
			tflag = 1;
		else if (strcmp(a, "-i") == 0 || strcmp(a, "-oi") == 0)
			iflag = 1;
		else if (strcmp(a, "-bp") == 0)
			mode = SM_MAILQ;
		else if (strcmp(a, "-bi") == 0 || strcmp(a, "-I") == 0)
			mode = SM_NEWALIASES;
		else if (strncmp(a, "-q", 2) == 0)
			mode = SM_FLUSH;
		else if (strncmp(a, "-f", 2) == 0 || strncmp(a, "-r", 2) == 0) {
			from = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			if (from == NULL) {
				sm_usage(stderr);
				return EX_USAGE;
			}
		} else if (strncmp(a, "-F", 2) == 0) {
			fullname = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
		} else if (strcmp(a, "-bm") == 0 || strncmp(a, "-o", 2) == 0 ||
		    strncmp(a, "-B", 2) == 0 || strncmp(a, "-e", 2) == 0 ||
		    strcmp(a, "-U") == 0 || strncmp(a, "-N", 2) == 0 ||
		    strncmp(a, "-v", 2) == 0 || strncmp(a, "-R", 2) == 0 ||
		    strncmp(a, "-V", 2) == 0) {
			/* accepted for compatibility, no effect */
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			sm_usage(stdout);
			return EX_OK;
		} else {
			fprintf(stderr, "otpmail-sendmail: unsupported option %s\n", a);
			sm_usage(stderr);
			return EX_USAGE;
		}
	}
	sm_env_init(&e);
	switch (mode) {
	case SM_MAILQ:		rc = sm_mailq(&e); break;
	case SM_NEWALIASES:	rc = sm_newaliases(&e); break;
	case SM_FLUSH:		rc = sm_flush(&e); break;
	default:
		rc = sm_send(&e, argc - i, argv + i, tflag, iflag, from, fullname);
		break;
	}
	sm_env_free(&e);
	return rc;
}
