/*
 * log.h - one line per event, "key=value" pairs, to stderr and/or syslog
 * (LOG_MAIL).  Values with spaces or quotes are quoted by log_kv.
 */
#ifndef OTPMAIL_LOG_H
#define OTPMAIL_LOG_H

#include <stdarg.h>
#include <syslog.h>

void	log_init(const char *ident, int to_stderr, int to_syslog, const char *level);
/* log_msg(LOG_INFO, "event=queued id=%s", id): the caller writes key=value pairs. */
void	log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void	log_vmsg(int prio, const char *fmt, va_list);
/* A log sink for the libraries (queue/, store/): one whole line. */
void	log_line(int prio, const char *line);
/* A tap sees every line logged at info or above (the live event stream). */
void	log_set_tap(void (*tap)(int prio, const char *line));
/* Quotes a value for a key=value line when needed; returns buf. */
const char *log_quote(const char *value, char *buf, size_t len);

#endif
