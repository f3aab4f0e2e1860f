/*
 * otp_mail.h - the one-time-code mail: per-locale templates (subject, text
 * and HTML body) loaded and checked at start, and the composed message;
 * plus the store parameters taken from the configuration.
 */
#ifndef OTPMAIL_OTP_MAIL_H
#define OTPMAIL_OTP_MAIL_H

#include <stddef.h>
#include <time.h>

#include "agent/core/otpmaild.h"
#include "store/store.h"

#define OTP_LOCALE_MAX	16
#define OTP_APP_MAX	64
#define OTP_APP_CHARS	40	/* a request's app name, in characters */
#define OTP_CLIENT_MAX	400	/* client_info, bytes */
#define OTP_CLIENT_CHARS 100	/* client_info, characters */
#define OTP_TEMPLATE_MAX (64 * 1024)

struct otp_templates;

/*
 * Loads every <dir>/<locale>/{subject.txt,body.txt,body.html}.  dir NULL or
 * "" = DATADIR/templates, or SRCDIR/etc/templates when that is absent.
 * Refuses unknown placeholders, a body without {{code}}, a multi-line
 * subject, non-UTF-8 text, and a missing default locale.
 */
struct otp_templates *otp_templates_load(const char *dir, const char *default_locale,
		    char *err, size_t errlen);
void		 otp_templates_free(struct otp_templates *);
/* The locale actually used for a request's locale (exact, language, default). */
const char	*otp_templates_pick(const struct otp_templates *, const char *locale);

struct otp_mail_vars {
	const char	*code;
	int		 ttl;		/* seconds; the mail says minutes, rounded up */
	const char	*app;		/* app name */
	const char	*purpose;
	const char	*locale;	/* NULL = default */
	const char	*from;		/* envelope/header sender */
	const char	*to;		/* validated address */
	const char	*hostname;	/* for Message-ID */
	time_t		 now;		/* when the code was asked for: {{time}} */
	const char	*client;	/* the app's client_info: {{client}}; NULL = none */
};

/*
 * A value from a request that a mail will show to a person (the app name,
 * client_info): plain text only, so it can neither be markup nor become a
 * link in a mail reader.  UTF-8 of at most maxchars characters; letters,
 * digits, single spaces and - _ & ' ( ) , ! +; no controls, bidi or
 * invisible characters, nothing that reads as a dot, slash, colon or @ in
 * any script.  With ip, '.' between digits and ':' between hex digits are
 * allowed (203.0.113.7, 2001:db8::1).  Returns 1, or 0 with why set.
 */
int		 otp_display_text_ok(const char *s, size_t maxchars, int ip, char *why,
		    size_t whylen);

/*
 * Composes the multipart/alternative message (CRLF line ends).  Returns a
 * malloc'd message and its length, or NULL with a reason in err.
 */
char		*otp_mail_compose(const struct otp_templates *, const struct otp_mail_vars *,
		    size_t *len, char *err, size_t errlen);

/* Fills store parameters from the otp_* keys; paths under state_dir. -1 if
 * a value is out of the store's range.  The strings live in static storage
 * of this module until the next call. */
int		 otp_store_params_from_config(const struct config *, const char *state_dir,
		    struct store_params *);

#endif
