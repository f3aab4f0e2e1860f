/*
 * sandbox.h - the sandbox transport: messages are "delivered" into a local
 * Maildir (tmp -> fsync -> rename into new/ -> fsync new/) instead of the
 * network; the control ops list and read what arrived.
 */
#ifndef OTPMAIL_SANDBOX_H
#define OTPMAIL_SANDBOX_H

#include <stddef.h>
#include <time.h>

#include "agent/core/otpmaild.h"

#define SANDBOX_NAME_MAX	200
#define SANDBOX_FIELD_MAX	256

struct sandbox_entry {
	char	 file[SANDBOX_NAME_MAX + 1];
	char	 from[SANDBOX_FIELD_MAX];
	char	 to[SANDBOX_FIELD_MAX];
	char	 subject[SANDBOX_FIELD_MAX];
	char	 date[SANDBOX_FIELD_MAX];
	size_t	 size;
	time_t	 mtime;
};

/* The Maildir in use: sandbox_maildir, or <state_dir>/sandbox when empty. */
void	 sandbox_dir(const struct config *, const char *state_dir, char *out, size_t len);
/*
 * Writes one message (Return-Path and Delivered-To lines prepended) and
 * makes it durable.  0 and the file name in name, or -1 with err.
 */
int	 sandbox_deliver(const char *maildir, const char *id, const char *sender,
	    const char *const *rcpts, size_t nrcpt, const char *data, size_t len,
	    char *name, size_t namelen, char *err, size_t errlen);
/* Messages in new/ and cur/, newest first, at most max; *out is malloc'd. */
int	 sandbox_list(const char *maildir, size_t max, struct sandbox_entry **out,
	    size_t *n, char *err, size_t errlen);
/*
 * Reads one message (file = a name from sandbox_list, NULL = the newest),
 * at most maxlen bytes.  0, 1 if not found, -1 on error or a bad name.
 */
int	 sandbox_read(const char *maildir, const char *file, size_t maxlen,
	    char **data, size_t *len, char *name, size_t namelen,
	    char *err, size_t errlen);
/* A name that can only be a file directly in new/ or cur/. */
int	 sandbox_name_ok(const char *);

#endif
