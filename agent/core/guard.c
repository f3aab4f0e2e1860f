/*
 * guard.c - failed otp.verify counts per client uid (a 60-second window)
 * and for the daemon (a 1-second window).  The per-address and per-code
 * limits live in the store; these stop guesses spread across addresses.
 * A check is counted when it starts and given back if it succeeds, so
 * concurrent workers cannot run more checks than the limits allow.
 * In memory: a restart forgets them, which only resets one window.
 */
#include <pthread.h>
#include <string.h>

#include "agent/core/guard.h"

#define GUARD_SLOTS	1024	/* distinct uids tracked per window */

struct guard_slot {
	uid_t		 uid;
	int		 used;
	unsigned	 fails;
};

static pthread_mutex_t guard_mu = PTHREAD_MUTEX_INITIALIZER;
static struct guard_slot guard_tab[GUARD_SLOTS];
static time_t guard_minute;		/* start of the client window */
static time_t guard_second;		/* the global window */
static unsigned guard_global;

/* The slot of uid in the current window (caller holds guard_mu); NULL if full. */
static struct guard_slot *
guard_slot(uid_t uid, time_t now)
{
	size_t i, h;

	if (now - guard_minute >= 60) {
		memset(guard_tab, 0, sizeof(guard_tab));
		guard_minute = now;
	}
	h = ((size_t)uid * 2654435761u) % GUARD_SLOTS;
	for (i = 0; i < GUARD_SLOTS; i++) {
		struct guard_slot *s = &guard_tab[(h + i) % GUARD_SLOTS];
		if (s->used && s->uid == uid)
			return s;
		if (!s->used) {
			s->used = 1;
			s->uid = uid;
			return s;
		}
	}
	return NULL;
}

int
guard_verify_begin(const struct config *c, uid_t uid, time_t now, const char **limit)
{
	struct guard_slot *s;
	int wait = 0;

	pthread_mutex_lock(&guard_mu);
	if (now != guard_second) {
		guard_second = now;
		guard_global = 0;
	}
	s = guard_slot(uid, now);
	if (c->otp_max_failed_verifies_per_client_minute > 0 && s != NULL &&
	    s->fails >= (unsigned)c->otp_max_failed_verifies_per_client_minute) {
		*limit = "client_verify_failures";
		wait = (int)(guard_minute + 60 - now);
		if (wait < 1)
			wait = 1;
	} else if (c->otp_max_failed_verifies_per_second > 0 &&
	    guard_global >= (unsigned)c->otp_max_failed_verifies_per_second) {
		*limit = "global_verify_failures";
		wait = 1;
	} else {
		guard_global++;
		if (s != NULL)
			s->fails++;
	}
	pthread_mutex_unlock(&guard_mu);
	return wait;
}

void
guard_verify_success(uid_t uid, time_t began)
{
	struct guard_slot *s;

	pthread_mutex_lock(&guard_mu);
	if (began == guard_second && guard_global > 0)
		guard_global--;
	if (began - guard_minute < 60 && (s = guard_slot(uid, began)) != NULL && s->fails > 0)
		s->fails--;
	pthread_mutex_unlock(&guard_mu);
}
