/*
 * submit.h - the one path into the queue: DKIM-sign, then durably enqueue.
 * Only after it returns 0 may the caller answer "ok".
 */
#ifndef OTPMAIL_SUBMIT_H
#define OTPMAIL_SUBMIT_H

#include <jansson.h>
#include "agent/core/otpmaild.h"
#include "queue/queue.h"

/*
 * msg is a complete message with CRLF line ends.  Returns 0 with id set, or
 * -1 with *err a reply object (unavailable / bad_request).  barrier (may be
 * NULL): see queue_enqueue_barrier.
 */
int	submit_message(struct otpmaild *, const struct q_envelope *tmpl,
	    const char *msg, size_t len, char id[QUEUE_ID_LEN + 1], json_t **err,
	    int (*barrier)(void *), void *arg);

/* queue_params.sign: DKIM-signs a DSN for its From domain (NULL: unsigned). */
char	*submit_sign_dsn(void *otpmaild, const char *msg, size_t len, size_t *outlen);

#endif
