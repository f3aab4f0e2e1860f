/*
 * log.c - event logging: one line per event, "key=value" pairs, to stderr
 * and/or syslog (LOG_MAIL).  Thread-safe: each line is written whole.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/log.h"

static int log_to_stderr = 1;
static int log_to_syslog;
static int log_max = LOG_INFO;
static void (*log_tap)(int, const char *);

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

void
log_vmsg(int prio, const char *fmt, va_list ap)
{
	char line[2048], stamp[32];
	struct timespec ts;
	struct tm tm;

	if (prio > log_max && (log_tap == NULL || prio > LOG_INFO))
		return;
	vsnprintf(line, sizeof(line), fmt, ap);
	if (log_to_stderr && prio <= log_max) {
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		/* One fprintf per line: stdio locks the stream, lines never mix. */
		fprintf(stderr, "%s.%03ldZ level=%s %s\n", stamp,
		    ts.tv_nsec / 1000000, log_level_name(prio), line);
	}
	if (log_to_syslog && prio <= log_max)
		syslog(prio, "%s", line);
	if (log_tap != NULL && prio <= LOG_INFO)
		log_tap(prio, line);
}

void
log_msg(int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(prio, fmt, ap);
	va_end(ap);
}

void
log_line(int prio, const char *line)
{
	log_msg(prio, "%s", line);
}

const char *
log_quote(const char *v, char *buf, size_t len)
{
	size_t i, o = 0;
	int need = (*v == '\0');

	for (i = 0; v[i] != '\0' && !need; i++)
		if (v[i] <= ' ' || v[i] == '"' || v[i] == '=' || v[i] == '\\' ||
		    (unsigned char)v[i] >= 0x7f)
			need = 1;
	if (!need)
		return v;
	if (len < 3)
		return "\"\"";
	buf[o++] = '"';
	for (i = 0; v[i] != '\0' && o + 5 < len; i++) {
		unsigned char c = v[i];
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = c;
		} else if (c < ' ' || c == 0x7f) {
			o += snprintf(buf + o, len - o, "\\x%02x", c);
		} else
			buf[o++] = c;
	}
	buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}
