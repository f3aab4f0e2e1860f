/*
 * guard.h - limits on failed code checks per client uid and for the whole
 * daemon, so one application (or one attacker behind it) cannot spread
 * guesses over many addresses and contexts.  Kept in memory.
 */
#ifndef OTPMAIL_GUARD_H
#define OTPMAIL_GUARD_H

#include <sys/types.h>
#include <time.h>

#include "agent/core/config.h"

/*
 * Before a check: 0 when it may run (it is counted as a failure already, so
 * concurrent checks cannot overshoot); else the seconds to wait, and *limit
 * names the limit.
 */
int	guard_verify_begin(const struct config *, uid_t, time_t now, const char **limit);
/* After a check that began at now and did not fail: gives the count back. */
void	guard_verify_success(uid_t, time_t now);

#endif
