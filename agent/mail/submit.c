/*
 * submit.c - the one path into the queue: DKIM-sign the message for its
 * From domain, then hand it to the spool, which returns only once the
 * message is on disk.  What is spooled is exactly what will be sent.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/core/otpmaild.h"
#include "agent/events/events.h"
#include "agent/mail/message.h"
#include "agent/mail/submit.h"
#include "dkim/dkim_sign.h"

/*
 * Signs msg for its From domain under the reload lock.  On DKIM_SIGN_OK,
 * *sig is the malloc'd header (NULL if none); signed_for names the domain.
 */
static enum dkim_status
submit_sign(struct otpmaild *d, const char *msg, size_t len, char **sig,
    char *signed_for, size_t sflen, char *dkerr, size_t errlen)
{
	enum dkim_status ds = DKIM_SIGN_NOKEY;
	const char *sdomain = NULL;
	struct timespec t0, t1;

	*sig = NULL;
	pthread_rwlock_rdlock(&d->reload_lock);
	if (d->dkim != NULL) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		ds = dkim_sign_message(d->dkim, msg, len, sig, &sdomain, dkerr, errlen);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		if (ds == DKIM_SIGN_OK)
			metrics_dkim_sign((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
	}
	/* the domain string belongs to the signer, which a reload may free */
	snprintf(signed_for, sflen, "%s",
	    ds == DKIM_SIGN_OK && sdomain != NULL ? sdomain : "none");
	pthread_rwlock_unlock(&d->reload_lock);
	return ds;
}

char *
submit_sign_dsn(void *arg, const char *msg, size_t len, size_t *outlen)
{
	struct otpmaild *d = arg;
	char *sig, *out, dkerr[256] = "", signed_for[256];
	size_t sl;

	if (submit_sign(d, msg, len, &sig, signed_for, sizeof(signed_for), dkerr,
	    sizeof(dkerr)) != DKIM_SIGN_OK || sig == NULL) {
		if (dkerr[0] != '\0')
			log_msg(LOG_ERR, "event=dkim_error what=dsn detail=\"%s\"", dkerr);
		free(sig);
		return NULL;
	}
	sl = strlen(sig);
	if ((out = malloc(sl + len + 1)) != NULL) {
		memcpy(out, sig, sl);
		memcpy(out + sl, msg, len);
		out[sl + len] = '\0';
		*outlen = sl + len;
		log_msg(LOG_DEBUG, "event=dsn_signed dkim=%s", signed_for);
	}
	free(sig);
	return out;
}

int
submit_message(struct otpmaild *d, const struct q_envelope *tmpl, const char *msg,
    size_t len, char id[QUEUE_ID_LEN + 1], json_t **err, int (*barrier)(void *), void *arg)
{
	struct q_envelope env = *tmpl;
	char *sig = NULL, dkerr[256] = "", signed_for[256];
	enum dkim_status ds;
	enum q_status qs;
	struct buf b;

	if (len > d->cfg->message_size_limit) {
		*err = reply_error("bad_request", "message of %zu bytes is larger than "
		    "message_size_limit (%zu)", len, d->cfg->message_size_limit);
		return -1;
	}
	buf_init(&b);
	ds = submit_sign(d, msg, len, &sig, signed_for, sizeof(signed_for), dkerr,
	    sizeof(dkerr));
	switch (ds) {
	case DKIM_SIGN_OK:
		if (sig != NULL)
			buf_adds(&b, sig);
		free(sig);
		break;
	case DKIM_SIGN_NOKEY:
		log_msg(LOG_DEBUG, "event=dkim_unsigned reason=\"no key for the From domain\"");
		break;
	case DKIM_SIGN_BADMSG:
		*err = reply_error("bad_request", "message cannot be signed: %s", dkerr);
		return -1;
	case DKIM_SIGN_ERROR:
		log_msg(LOG_ERR, "event=dkim_error detail=\"%s\"", dkerr);
		*err = reply_error("unavailable", "DKIM signing failed; try again later");
		return -1;
	}
	buf_add(&b, msg, len);
	if (msg_is_8bit(msg, len))
		env.flags |= Q_F_8BIT;
	qs = queue_enqueue_barrier(d->queue, &env, b.data, b.len, id, barrier, arg);
	buf_free(&b);
	switch (qs) {
	case Q_OK:
		log_msg(LOG_INFO, "event=queued id=%s class=%s rcpts=%zu size=%zu dkim=%s uid=%u",
		    id, q_class_name(env.klass), env.nrcpt, len, signed_for,
		    (unsigned)env.client_uid);
		events_accepted(&env, id);
		return 0;
	case Q_NOSPACE:
		*err = reply_error("unavailable", "%s; try again later", queue_nospace_why);
		break;
	case Q_BADINPUT:
		*err = reply_error("bad_request", "the queue refused the message");
		break;
	default:
		*err = reply_error("unavailable", "the spool could not store the "
		    "message; try again later");
		break;
	}
	return -1;
}
