/*
 * log.c - event logging: one line per event, "key=value" pairs, to stderr
 * and/or syslog (LOG_MAIL).  Thread-safe: each line is written whole.
 * The format's literal text is trusted; every string argument is not: one
 * after "key=" is quoted when it needs it, one inside a literal "..." is
 * escaped, and any other must itself read as key=value pairs, so no value
 * can end its field early or plant another (see log.h).
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/log.h"

#define LOG_LINE_MAX	8192
#define LOG_VALUE_MAX	1024	/* bytes of one value kept; more becomes "..." */

struct log_buf {
	char	 s[LOG_LINE_MAX];
	size_t	 len;
	int	 full;
};

static void	log_put(struct log_buf *, const char *, size_t);
static void	log_put_escaped(struct log_buf *, const char *, size_t, int);
static int	log_bare_ok(const char *, size_t);
static int	log_frag_ok(const char *, size_t);
static void	log_spec(char *, const char *, char);
static void	log_cut(struct log_buf *);
static void	log_format(struct log_buf *, const char *, va_list);

/* set at start and reload (SIGHUP) while other threads log */
static atomic_int log_to_stderr = 1;
static atomic_int log_to_syslog;
static atomic_int log_max = LOG_INFO;
static void (*_Atomic log_tap)(int, const char *);

void
log_set_tap(void (*tap)(int, const char *))
{
	log_tap = tap;
}

void
log_init(const char *ident, int to_stderr, int to_syslog, const char *level)
{
	log_to_stderr = to_stderr;
	log_to_syslog = to_syslog;
	if (level == NULL || strcasecmp(level, "info") == 0)
		log_max = LOG_INFO;
	else if (strcasecmp(level, "debug") == 0)
		log_max = LOG_DEBUG;
	else if (strcasecmp(level, "warning") == 0)
		log_max = LOG_WARNING;
	else if (strcasecmp(level, "error") == 0)
		log_max = LOG_ERR;
	if (to_syslog)
		openlog(ident, LOG_PID | LOG_NDELAY, LOG_MAIL);
}

static const char *
log_level_name(int prio)
{
	switch (prio) {
	case LOG_DEBUG:		return "debug";
	case LOG_INFO:
	case LOG_NOTICE:	return "info";
	case LOG_WARNING:	return "warning";
	default:		return "error";
	}
}

/* ---- composing a line ---------------------------------------------------- */

/* Room is kept for a closing quote and " truncated=yes". */
static void
log_put(struct log_buf *b, const char *s, size_t n)
{
	size_t room = sizeof(b->s) - 32 - b->len;

	if (n > room) {
		n = room;
		b->full = 1;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
}

/* Printable ASCII but space, '"', '=' and '\' may stand unquoted. */
static int
log_safe_char(unsigned char c)
{
	return c > ' ' && c < 0x7f && c != '"' && c != '=' && c != '\\';
}

static int
log_bare_ok(const char *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!log_safe_char((unsigned char)v[i]))
			return 0;
	return n > 0;
}

/*
 * Writes v escaped: '"' and '\' behind a backslash, every other byte
 * outside printable ASCII as \xHH (so a line is one line, pure ASCII, and
 * no terminal or viewer reads a control sequence in it); with quotes
 * around it when asked.  Past LOG_VALUE_MAX bytes it ends in "...".
 */
static void
log_put_escaped(struct log_buf *b, const char *v, size_t n, int quote)
{
	char tmp[LOG_VALUE_MAX * 4 + 8];
	size_t i, o = 0, keep = n > LOG_VALUE_MAX ? LOG_VALUE_MAX : n;

	if (quote)
		tmp[o++] = '"';
	for (i = 0; i < keep; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '"' || c == '\\') {
			tmp[o++] = '\\';
			tmp[o++] = (char)c;
		} else if (c < ' ' || c >= 0x7f) {
			o += (size_t)snprintf(tmp + o, sizeof(tmp) - o, "\\x%02x", c);
		} else
			tmp[o++] = (char)c;
	}
	if (keep < n) {
		memcpy(tmp + o, "...", 3);
		o += 3;
	}
	if (quote)
		tmp[o++] = '"';
	if (b->len + o > sizeof(b->s) - 32) {
		/* the line is full: keep it well-formed, say so at the end */
		b->full = 1;
		return;
	}
	log_put(b, tmp, o);
}

/* A quoted value at v: its length, or 0 if it is not one. */
static size_t
log_quoted_len(const char *v, size_t n)
{
	size_t i;

	if (n < 2 || v[0] != '"')
		return 0;
	for (i = 1; i < n; i++) {
		unsigned char c = (unsigned char)v[i];
		if (c == '"')
			return i + 1;
		if (c < ' ' || c >= 0x7f)
			return 0;
		if (c == '\\') {
			if (i + 1 >= n)
				return 0;
			if (v[i + 1] == 'x') {
				if (i + 3 >= n)
					return 0;
				i += 3;
			} else if (v[i + 1] == '"' || v[i + 1] == '\\')
				i++;
			else
				return 0;
		}
	}
	return 0;
}

/*
 * A string argument in the key position must be whole "key=value" pairs
 * (a key alone, or a key and '=' before the next argument, too), each
 * value bare-safe or quoted: it was built by the daemon, not taken raw.
 */
static int
log_frag_ok(const char *v, size_t n)
{
	size_t i = 0, q;

	while (i < n) {
		size_t k = i;
		while (i < n && (v[i] == '_' || v[i] == '.' || v[i] == '-' ||
		    (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
		    (v[i] >= '0' && v[i] <= '9')))
			i++;
		if (i == k)
			return 0;
		if (i < n && v[i] == '=') {
			i++;
			if ((q = log_quoted_len(v + i, n - i)) > 0)
				i += q;
			else
				while (i < n && log_safe_char((unsigned char)v[i]))
					i++;
		}
		if (i == n)
			return 1;
		if (v[i] != ' ' || i + 1 == n)
			return 0;
		i++;
	}
	return n == 0;
}

/* Rewrites a conversion spec ("%04zx") for the type it was read as ("%04llx"). */
static void
log_spec(char *spec, const char *size, char conv)
{
	size_t n = strlen(spec) - 1;

	while (n > 0 && strchr("hlzjtL", spec[n - 1]) != NULL)
		n--;
	snprintf(spec + n, 32 - n, "%s%c", size, conv);
}

static void
log_put_arg(struct log_buf *b, const char *v, size_t n, int in_quotes)
{
	if (in_quotes)
		log_put_escaped(b, v, n, 0);
	else if (b->len > 0 && b->s[b->len - 1] == '=') {
		if (log_bare_ok(v, n) && n <= LOG_VALUE_MAX)
			log_put(b, v, n);
		else
			log_put_escaped(b, v, n, 1);
	} else if (log_frag_ok(v, n))
		log_put(b, v, n);
	else {
		log_put(b, "unsafe=", 7);
		log_put_escaped(b, v, n, 1);
	}
}

/*
 * printf for log lines: numbers as printf writes them, %s and %c through
 * log_put_arg.  Supports what callers use: flags, width, precision (and
 * '*'), the hh/h/l/ll/z/j/t/L sizes, d i u o x X c s p f e g a %.
 */
static void
log_format(struct log_buf *b, const char *fmt, va_list ap)
{
	const char *p = fmt, *lit;
	char spec[32], num[128];
	int in_quotes = 0;

	while (*p != '\0' && !b->full) {
		size_t sl = 0;
		int prec = -1, lmod = 0;	/* 'H' hh, 'h', 'l', 'q' ll, 'z', 'j', 't', 'L' */
		char conv;

		for (lit = p; *p != '\0' && *p != '%'; p++)
			if (*p == '"')
				in_quotes = !in_quotes;
		log_put(b, lit, (size_t)(p - lit));
		if (*p == '\0')
			break;
		spec[sl++] = *p++;
		while (*p != '\0' && strchr("-+ #0", *p) != NULL && sl < 8)
			spec[sl++] = *p++;
		if (*p == '*') {
			(void)va_arg(ap, int);	/* width: values are never padded */
			p++;
		} else
			while (*p >= '0' && *p <= '9' && sl < 16)
				spec[sl++] = *p++;
		if (*p == '.') {
			spec[sl++] = *p++;
			if (*p == '*') {
				prec = va_arg(ap, int);
				sl += (size_t)snprintf(spec + sl, sizeof(spec) - sl, "%d",
				    prec < 0 ? 0 : prec);
				p++;
			} else {
				prec = 0;
				while (*p >= '0' && *p <= '9' && sl < 24) {
					prec = prec * 10 + (*p - '0');
					spec[sl++] = *p++;
				}
			}
		}
		if (*p == 'h' || *p == 'l') {
			lmod = *p;
			spec[sl++] = *p++;
			if (*p == lmod) {
				lmod = lmod == 'h' ? 'H' : 'q';
				spec[sl++] = *p++;
			}
		} else if (*p != '\0' && strchr("zjtL", *p) != NULL) {
			lmod = *p;
			spec[sl++] = *p++;
		}
		if ((conv = *p) == '\0')
			break;
		p++;
		spec[sl++] = conv;
		spec[sl] = '\0';
		switch (conv) {
		case '%':
			log_put(b, "%", 1);
			break;
		case 's': {
			const char *v = va_arg(ap, const char *);
			size_t n;
			if (v == NULL)
				v = "-";
			n = prec >= 0 ? strnlen(v, (size_t)prec) : strlen(v);
			log_put_arg(b, v, n, in_quotes);
			break;
		}
		case 'c': {
			char ch = (char)va_arg(ap, int);
			log_put_arg(b, &ch, 1, in_quotes);
			break;
		}
		case 'd':
		case 'i': {
			long long v;
			switch (lmod) {
			case 'l':	v = va_arg(ap, long); break;
			case 'q':	v = va_arg(ap, long long); break;
			case 'z':	v = va_arg(ap, ssize_t); break;
			case 'j':	v = va_arg(ap, intmax_t); break;
			case 't':	v = va_arg(ap, ptrdiff_t); break;
			default:	v = va_arg(ap, int); break;
			}
			log_spec(spec, "ll", conv);
			log_put(b, num, (size_t)snprintf(num, sizeof(num), spec, v));
			break;
		}
		case 'u':
		case 'o':
		case 'x':
		case 'X': {
			unsigned long long v;
			switch (lmod) {
			case 'l':	v = va_arg(ap, unsigned long); break;
			case 'q':	v = va_arg(ap, unsigned long long); break;
			case 'z':	v = va_arg(ap, size_t); break;
			case 'j':	v = va_arg(ap, uintmax_t); break;
			case 't':	v = (unsigned long long)va_arg(ap, ptrdiff_t); break;
			default:	v = va_arg(ap, unsigned); break;
			}
			if (lmod == 'H')
				v = (unsigned char)v;
			else if (lmod == 'h')
				v = (unsigned short)v;
			log_spec(spec, "ll", conv);
			log_put(b, num, (size_t)snprintf(num, sizeof(num), spec, v));
			break;
		}
		case 'f':
		case 'e':
		case 'g':
		case 'a': {
			double v = lmod == 'L' ? (double)va_arg(ap, long double) :
			    va_arg(ap, double);
			log_spec(spec, "", conv);
			log_put(b, num, (size_t)snprintf(num, sizeof(num), spec, v));
			break;
		}
		case 'p':
			log_put(b, num, (size_t)snprintf(num, sizeof(num), "%p",
			    va_arg(ap, void *)));
			break;
		default:
			/* an unknown conversion: its argument cannot be skipped */
			b->full = 1;
			break;
		}
	}
	if (b->full)
		log_cut(b);
	else if (in_quotes)
		log_put(b, "\"", 1);	/* a literal that never closed its quote */
	b->s[b->len] = '\0';
}

/*
 * A full line is cut after its last whole pair (the last space outside
 * quotes) and says so: a cut never leaves half a value or an open quote.
 */
static void
log_cut(struct log_buf *b)
{
	size_t i, cut = 0;
	int inq = 0;

	for (i = 0; i < b->len; i++) {
		if (inq && b->s[i] == '\\')
			i++;
		else if (b->s[i] == '"')
			inq = !inq;
		else if (!inq && b->s[i] == ' ')
			cut = i;
	}
	/* the 32 bytes kept free hold it */
	b->len = cut + (size_t)sprintf(b->s + cut, "%struncated=yes", cut ? " " : "");
	b->full = 0;
}

void
log_vmsg(int prio, const char *fmt, va_list ap)
{
	struct log_buf *b;
	char stamp[32];
	struct timespec ts;
	struct tm tm;
	void (*tap)(int, const char *) = log_tap;

	if (prio > log_max && (tap == NULL || prio > LOG_INFO))
		return;
	if ((b = malloc(sizeof(*b))) == NULL)
		return;
	b->len = 0;
	b->full = 0;
	log_format(b, fmt, ap);
	if (log_to_stderr && prio <= log_max) {
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		/* One fprintf per line: stdio locks the stream, lines never mix. */
		fprintf(stderr, "%s.%03ldZ level=%s %s\n", stamp,
		    ts.tv_nsec / 1000000, log_level_name(prio), b->s);
	}
	if (log_to_syslog && prio <= log_max)
		syslog(prio, "%s", b->s);
	if (tap != NULL && prio <= LOG_INFO)
		tap(prio, b->s);
	free(b);
}

void
log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, fmt, ap);
	va_end(ap);
}

const char *
log_pair(char *buf, size_t len, const char *key, const char *value)
{
	struct log_buf *b;

	if ((b = malloc(sizeof(*b))) == NULL)
		abort();
	b->len = 0;
	b->full = 0;
	log_put(b, key, strlen(key));
	log_put(b, "=", 1);
	log_put_arg(b, value, strlen(value), 0);
	if (b->full || b->len >= len)
		snprintf(buf, len, "%s=\"...\"", key);
	else {
		memcpy(buf, b->s, b->len);
		buf[b->len] = '\0';
	}
	free(b);
	return buf;
}

/*
 * The libraries' sink (queue/, store/): their lines are free text, often
 * "queue: ...": the text becomes one quoted value of its own event.
 */
void
log_line(int prio, const char *line)
{
	const char *colon = strchr(line, ':'), *eq = strchr(line, '=');
	char src[16];
	size_t n = colon ? (size_t)(colon - line) : 0;

	if (n == 0 || n >= sizeof(src) || !log_frag_ok(line, n) ||
	    (eq != NULL && eq < colon)) {
		log_msg(prio, "event=library detail=%s", line);
		return;
	}
	memcpy(src, line, n);
	src[n] = '\0';
	line = colon + 1;
	while (*line == ' ')
		line++;
	log_msg(prio, "event=%s detail=%s", src, line);
}
