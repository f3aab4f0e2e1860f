/*
 * bounce.h - classification of delivery failures (SMTP reply code, RFC 3463
 * enhanced status code, reply text, local connection/TLS/DNS failures) into
 * a few classes an app or admin can act on.  The rules are data: the
 * built-in set is etc/bounce-rules (compiled in), an admin's file
 * (bounce_rules_file) is read at start and tried first.
 */
#ifndef OTPMAIL_BOUNCE_H
#define OTPMAIL_BOUNCE_H

#include <stddef.h>

enum bounce_class {
	BOUNCE_NONE = 0,	/* nothing to classify (no reply) */
	BOUNCE_HARD,		/* no such user or domain */
	BOUNCE_MAILBOX_FULL,
	BOUNCE_POLICY,		/* spam, reputation, blocklist */
	BOUNCE_AUTH,		/* DMARC, SPF or DKIM refusal */
	BOUNCE_TEMPORARY,
	BOUNCE_TRANSPORT,	/* connection, TLS, DNS */
};

#define BOUNCE_LIST_MAX	32	/* length of a blocklist's name */

struct bounce_result {
	enum bounce_class klass;
	char		 list[BOUNCE_LIST_MAX + 1];	/* "" unless the rule names one */
	const char	*file;	/* the matching rule: "built-in" or a path */
	int		 line;	/* its line, 0 if none matched */
};

struct bounce_rules;

/* Parses rules text (name for messages); NULL with "name:line: why" in err. */
struct bounce_rules *bounce_rules_parse(const char *text, const char *name,
		    char *err, size_t errlen);
/* The admin's file's rules (path "" = none), then the built-in ones. */
struct bounce_rules *bounce_rules_load(const char *path, char *err, size_t errlen);
void		 bounce_rules_free(struct bounce_rules *);
size_t		 bounce_rules_count(const struct bounce_rules *);
/* Line of rule i (tests check every rule is exercised). */
int		 bounce_rules_line(const struct bounce_rules *, size_t i);

/* First matching rule wins; a reply no rule matches is BOUNCE_NONE. */
void		 bounce_classify_with(const struct bounce_rules *, const char *reply,
		    struct bounce_result *);

/*
 * The daemon's rules: bounce_init (main, before any thread) installs the
 * built-in rules plus the admin's file; bounce_classify uses them (the
 * built-in ones alone if bounce_init never ran).
 */
int		 bounce_init(const char *path, char *err, size_t errlen);
void		 bounce_classify(const char *reply, struct bounce_result *);
/* Frees the daemon's rules (at exit, after the last thread). */
void		 bounce_shutdown(void);
const char	*bounce_class_name(enum bounce_class);

extern const char bounce_builtin_rules[];	/* etc/bounce-rules */

#endif
