/*
 * privs.h - the state directory (created, locked against a second daemon)
 * and dropping root to the configured user.
 */
#ifndef OTPMAIL_PRIVS_H
#define OTPMAIL_PRIVS_H

#include <stddef.h>
#include "agent/core/config.h"

/* Creates state_dir (0750) and takes its lock; returns the lock fd or -1. */
int	privs_state_lock(const struct config *, char *err, size_t errlen);
/* Gives the state directory tree to the configured user (when root). */
int	privs_chown_state(const struct config *, char *err, size_t errlen);
/* Drops to the configured user if root; no-op otherwise. */
int	privs_drop(const struct config *, char *err, size_t errlen);

#endif
