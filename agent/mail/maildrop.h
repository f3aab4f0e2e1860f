/*
 * maildrop.h - picking up what otpmail-sendmail kept in <state_dir>/maildrop
 * while the daemon was down (maildrop.c).
 */
#ifndef OTPMAIL_MAILDROP_H
#define OTPMAIL_MAILDROP_H

#include <stddef.h>

#include "agent/core/otpmaild.h"

/* Creates the directory (mode 3730, the daemon's user and group); as root,
 * before dropping privileges. */
int	maildrop_init(const struct config *, char *err, size_t errlen);
/* Submits every complete file in it as its owner; keeps them when the
 * queue is short of space. */
void	maildrop_scan(struct otpmaild *);

#endif
