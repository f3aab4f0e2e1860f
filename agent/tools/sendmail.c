/*
 * sendmail.c - otpmail-sendmail, a sendmail-compatible front end: reads a
 * message on stdin and submits it to otpmaild as mail.send over the control
 * socket, so PHP's mail(), cron and scripts that expect /usr/sbin/sendmail
 * work unchanged.  Understands -t, -f, -F, -i, -oi, -bm, and ignores the
 * other -o options.  Exit codes follow sysexits.h.
 */
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sysexits.h>
#include <unistd.h>

#include <jansson.h>

#define SM_MAX_RCPT	1000
#define SM_MAX_MSG	(64L * 1024 * 1024)

struct sm_rcpts {
	char	**v;
	size_t	 n;
};

static void
sm_usage(void)
{
	fprintf(stderr, "usage: otpmail-sendmail [-t] [-i] [-f sender] [-F name] "
	    "[recipient ...] < message\n"
	    "The socket is $OTPMAIL_SOCKET, ./otpmail-state/control.sock, or "
	    "/var/lib/otpmail/control.sock.\n");
}

static void
sm_add(struct sm_rcpts *r, const char *a, size_t len)
{
	while (len && (*a == ' ' || *a == '\t')) {
		a++;
		len--;
	}
	while (len && (a[len - 1] == ' ' || a[len - 1] == '\t'))
		len--;
	if (len == 0 || r->n >= SM_MAX_RCPT)
		return;
	r->v = realloc(r->v, (r->n + 1) * sizeof(char *));
	if (r->v == NULL || (r->v[r->n] = strndup(a, len)) == NULL) {
		fprintf(stderr, "otpmail-sendmail: out of memory\n");
		exit(EX_OSERR);
	}
	r->n++;
}

/*
 * Adds the addresses of an RFC 5322 address list: "Name <a@b>, c@d,
 * \"Last, First\" <e@f>, group: g@h;".  Comments in parentheses are dropped.
 */
static void
sm_parse_list(struct sm_rcpts *r, const char *s)
{
	const char *p = s, *start = s, *lt = NULL;
	int quote = 0, paren = 0;

	for (;; p++) {
		char c = *p;
		if (quote) {
			if (c == '\\' && p[1])
				p++;
			else if (c == '"')
				quote = 0;
			else if (c == '\0')
				break;
			continue;
		}
		if (paren) {
			if (c == ')')
				paren--;
			else if (c == '\0')
				break;
			continue;
		}
		switch (c) {
		case '"':	quote = 1; break;
		case '(':	paren = 1; break;
		case '<':	lt = p; break;
		case ':':	start = p + 1; lt = NULL; break;	/* group name */
		case '>':
			if (lt)
				sm_add(r, lt + 1, p - lt - 1);
			lt = NULL;
			start = NULL;
			break;
		case ',':
		case ';':
		case '\0':
			if (start != NULL && lt == NULL) {
				/* a bare address: strip a comment-free token */
				const char *e = p;
				while (start < e && (*start == ' ' || *start == '\t'))
					start++;
				if (strchr("(\"", *start) == NULL)
					sm_add(r, start, e - start);
			}
			start = p + 1;
			lt = NULL;
			break;
		}
		if (c == '\0')
			break;
	}
}

/* Unfolded value of every header called name (NUL-separated into r). */
static void
sm_header_rcpts(const char *msg, size_t hdrlen, const char *name, struct sm_rcpts *r)
{
	size_t nl = strlen(name), i = 0;

	while (i < hdrlen) {
		size_t end = i;
		while (end < hdrlen && !(msg[end] == '\n' && (end + 1 >= hdrlen ||
		    (msg[end + 1] != ' ' && msg[end + 1] != '\t'))))
			end++;
		if (end - i > nl && strncasecmp(msg + i, name, nl) == 0 && msg[i + nl] == ':') {
			char *v = strndup(msg + i + nl + 1, end - i - nl - 1), *q;
			for (q = v; q && *q; q++)
				if (*q == '\r' || *q == '\n' || *q == '\t')
					*q = ' ';
			if (v)
				sm_parse_list(r, v);
			free(v);
		}
		i = end + 1;
	}
}

/* Length of the header section (up to and including the blank line). */
static size_t
sm_header_len(const char *m, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++) {
		if (m[i] == '\n' && i + 1 < len && m[i + 1] == '\n')
			return i + 2;
		if (m[i] == '\n' && i + 2 < len && m[i + 1] == '\r' && m[i + 2] == '\n')
			return i + 3;
	}
	return len;
}

/* Removes every Bcc header (with -t the recipients are taken, the header dropped). */
static size_t
sm_strip_bcc(char *m, size_t len, size_t hdrlen)
{
	size_t i = 0;

	while (i < hdrlen) {
		size_t end = i;
		while (end < hdrlen && !(m[end] == '\n' && (end + 1 >= hdrlen ||
		    (m[end + 1] != ' ' && m[end + 1] != '\t'))))
			end++;
		if (end < hdrlen)
			end++;
		if (end - i > 4 && strncasecmp(m + i, "Bcc:", 4) == 0) {
			memmove(m + i, m + end, len - end);
			len -= end - i;
			hdrlen -= end - i;
			continue;
		}
		i = end;
	}
	return len;
}

static const char *
sm_socket(void)
{
	const char *s = getenv("OTPMAIL_SOCKET");

	if (s && *s)
		return s;
	if (access("otpmail-state/control.sock", F_OK) == 0)
		return "otpmail-state/control.sock";
	return "/var/lib/otpmail/control.sock";
}

int
main(int argc, char **argv)
{
	struct sm_rcpts rcpts = { NULL, 0 };
	const char *from = NULL, *fullname = NULL, *path;
	int tflag = 0, iflag = 0, i, fd, rc;
	char *msg = NULL, *line = NULL, *out, *reply = NULL, host[256], *sender = NULL;
	size_t len = 0, cap = 0, hdrlen, rlen = 0;
	ssize_t n;
	struct sockaddr_un sun;
	struct passwd *pw;
	json_t *req, *ans, *to;
	FILE *mf;

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
		else if (strncmp(a, "-f", 2) == 0 || strncmp(a, "-r", 2) == 0) {
			from = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
			if (from == NULL) {
				sm_usage();
				return EX_USAGE;
			}
		} else if (strncmp(a, "-F", 2) == 0) {
			fullname = a[2] ? a + 2 : (i + 1 < argc ? argv[++i] : NULL);
		} else if (strcmp(a, "-bm") == 0 || strncmp(a, "-o", 2) == 0 ||
		    strncmp(a, "-B", 2) == 0 || strncmp(a, "-e", 2) == 0 ||
		    strcmp(a, "-U") == 0 || strncmp(a, "-N", 2) == 0 ||
		    strncmp(a, "-v", 2) == 0) {
			/* accepted for compatibility, no effect */
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			sm_usage();
			return EX_OK;
		} else {
			fprintf(stderr, "otpmail-sendmail: unsupported option %s\n", a);
			sm_usage();
			return EX_USAGE;
		}
	}
	for (; i < argc; i++)
		sm_parse_list(&rcpts, argv[i]);

	/* the message: with -i only EOF ends it, else also a line with a lone dot */
	if ((mf = open_memstream(&msg, &len)) == NULL)
		return EX_OSERR;
	while ((n = getline(&line, &cap, stdin)) > 0) {
		if (!iflag && (strcmp(line, ".\n") == 0 || strcmp(line, ".\r\n") == 0))
			break;
		fwrite(line, 1, n, mf);
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
		sm_header_rcpts(msg, hdrlen, "To", &rcpts);
		sm_header_rcpts(msg, hdrlen, "Cc", &rcpts);
		sm_header_rcpts(msg, hdrlen, "Bcc", &rcpts);
		len = sm_strip_bcc(msg, len, hdrlen);
	}
	if (rcpts.n == 0) {
		fprintf(stderr, "otpmail-sendmail: no recipients\n");
		return EX_USAGE;
	}
	if (gethostname(host, sizeof(host)) == -1)
		strcpy(host, "localhost");
	host[sizeof(host) - 1] = '\0';
	pw = getpwuid(getuid());
	if (from == NULL) {
		/* the From header's address, as the envelope sender */
		struct sm_rcpts hf = { NULL, 0 };
		sm_header_rcpts(msg, hdrlen, "From", &hf);
		if (hf.n > 0)
			from = sender = strdup(hf.v[0]);
		for (size_t k = 0; k < hf.n; k++)
			free(hf.v[k]);
		free(hf.v);
	}
	if (from == NULL && strchr(host, '.') == NULL) {
		struct addrinfo hints = { .ai_flags = AI_CANONNAME }, *ai;
		if (getaddrinfo(host, NULL, &hints, &ai) == 0) {
			if (ai->ai_canonname && strlen(ai->ai_canonname) < sizeof(host))
				strcpy(host, ai->ai_canonname);
			freeaddrinfo(ai);
		}
	}
	if (from == NULL) {
		if (asprintf(&sender, "%s@%s", pw ? pw->pw_name : "nobody", host) == -1)
			return EX_OSERR;
		from = sender;
	}
	/* a message without From gets one, as sendmail does */
	{
		int has_from = 0;
		size_t k = 0;
		while (k < hdrlen) {
			if (strncasecmp(msg + k, "From:", 5) == 0)
				has_from = 1;
			while (k < hdrlen && msg[k] != '\n')
				k++;
			k++;
		}
		if (!has_from) {
			char *hdr = NULL;
			int hl;
			if (fullname && strpbrk(fullname, "\r\n\"\\") == NULL)
				hl = asprintf(&hdr, "From: \"%s\" <%s>\n", fullname, from);
			else
				hl = asprintf(&hdr, "From: %s\n", from);
			if (hl == -1)
				return EX_OSERR;
			out = malloc(hl + len + 1);
			memcpy(out, hdr, hl);
			memcpy(out + hl, msg, len);
			len += hl;
			free(msg);
			free(hdr);
			msg = out;
		}
	}

	to = json_array();
	for (size_t k = 0; k < rcpts.n; k++)
		json_array_append_new(to, json_string(rcpts.v[k]));
	req = json_pack("{s:s, s:s, s:o, s:s%}", "op", "mail.send", "from", from, "to", to,
	    "raw", msg, len);
	out = req ? json_dumps(req, JSON_COMPACT) : NULL;
	if (out == NULL) {
		fprintf(stderr, "otpmail-sendmail: the message is not valid UTF-8 text; "
		    "8-bit data must be UTF-8\n");
		return EX_DATAERR;
	}
	path = sm_socket();
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		fprintf(stderr, "otpmail-sendmail: cannot reach otpmaild at %s: %s\n", path,
		    strerror(errno));
		return EX_TEMPFAIL;
	}
	{
		size_t olen = strlen(out), off = 0;
		out[olen] = '\0';
		while (off < olen) {
			ssize_t w = send(fd, out + off, olen - off, MSG_NOSIGNAL);
			if (w <= 0) {
				fprintf(stderr, "otpmail-sendmail: write failed\n");
				return EX_TEMPFAIL;
			}
			off += w;
		}
		if (send(fd, "\n", 1, MSG_NOSIGNAL) != 1)
			return EX_TEMPFAIL;
	}
	for (;;) {
		char buf[4096];
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		reply = realloc(reply, rlen + n + 1);
		memcpy(reply + rlen, buf, n);
		rlen += n;
		reply[rlen] = '\0';
		if (memchr(reply, '\n', rlen))
			break;
	}
	close(fd);
	ans = reply ? json_loads(reply, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
	if (ans == NULL) {
		fprintf(stderr, "otpmail-sendmail: no answer from otpmaild\n");
		return EX_TEMPFAIL;
	}
	if (json_is_true(json_object_get(ans, "ok")))
		rc = EX_OK;
	else {
		const char *e = json_string_value(json_object_get(ans, "error"));
		fprintf(stderr, "otpmail-sendmail: %s: %s\n", e ? e : "error",
		    json_string_value(json_object_get(ans, "detail")) ?: "");
		if (e && strcmp(e, "forbidden") == 0)
			rc = EX_NOPERM;
		else if (e && strcmp(e, "unavailable") == 0)
			rc = EX_TEMPFAIL;
		else
			rc = EX_DATAERR;
	}
	return rc;
}
