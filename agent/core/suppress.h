/*
 * suppress.h - the daemon's side of the per-app suppression lists
 * (store/suppress.c holds them): the delivery outcome hook that classifies
 * each recipient's failure and suppresses hard bounces, and the check that
 * otp.issue and mail.send make before anything is spent.
 */
#ifndef OTPMAIL_SUPPRESS_H
#define OTPMAIL_SUPPRESS_H

#include <stddef.h>
#include <jansson.h>

struct otpmaild;
struct q_envelope;

/* The app a queued message belongs to: its tag's "app=NAME", else "uid:N". */
void	 suppress_env_app(const struct q_envelope *, char *out, size_t len);
/*
 * Delivery outcome hook (deliver.c's release block, main process): sets
 * each failed or deferred recipient's err_class from its reply, and puts a
 * recipient that failed with class "hard" on its app's list (once).
 */
void	 suppress_note_outcome(struct otpmaild *, struct q_envelope *);
/* Adds addr to app's list with reason and the reply; 0 or -1 (logged). */
int	 suppress_add(struct otpmaild *, const char *app, const char *addr,
	    const char *reason, const char *reply, const char *queue_id);
/* NULL if none of addrs is on app's list, else the "suppressed" error
 * reply naming the address (the caller's own), reason and date. */
json_t	*suppress_refuse(struct otpmaild *, const char *app, const char *const *addrs,
	    size_t n);

#endif
