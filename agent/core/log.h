/*
 * log.h - one line per event, "key=value" pairs, to stderr and/or syslog
 * (LOG_MAIL).  Callers never quote: a %s right after "key=" is quoted and
 * escaped when it needs it, a %s inside a literal "..." is escaped, and a
 * %s anywhere else must be whole key=value pairs built by the daemon or it
 * is logged as unsafe="...".  Every line is printable ASCII.
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
/* "key=value", the value quoted as log_msg would, for a fragment passed
 * as %s (a field that is "to=..." or "to_pseudonym=..."); returns buf. */
const char *log_pair(char *buf, size_t len, const char *key, const char *value);
/* A tap sees every line logged at info or above (the live event stream). */
void	log_set_tap(void (*tap)(int prio, const char *line));

#endif
