/*
 * smtp.h - one outgoing SMTP session: libetpan speaks the protocol over
 * otpmail's own stream (tlsstream.h), STARTTLS and certificate/DANE checks
 * run in OpenSSL.  Outcomes are per recipient, classified by reply class.
 * Nothing here logs: the caller (deliver.c) does.
 */
#ifndef OTPMAIL_SMTP_H
#define OTPMAIL_SMTP_H

#include <stddef.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/mx.h"

#define SMTP_REPLY_MAX	512	/* = QUEUE_REPLY_MAX */

enum smtp_status {
	SMTP_OK = 0,		/* 2xx */
	SMTP_TEMP,		/* 4xx, timeout, connection or TLS trouble */
	SMTP_PERM,		/* 5xx or a local permanent refusal */
};

/* What TLS achieved on a connection, for MTA-STS and TLS-RPT (RFC 8460). */
struct smtp_tls_report {
	const char		*rtype;		/* NULL, or an RFC 8460 result type */
	int			 verified;	/* certificate (or DANE) checked out */
	int			 tls;		/* a TLS session was set up */
};

struct smtp_params {
	const char		*helo;		/* EHLO name */
	const char		*tls_name;	/* SNI and the name "verify" checks */
	enum tls_policy		 policy;
	const struct tlsa_set	*tlsa;		/* dane: secure TLSA set or NULL */
	struct smtp_tls		*tls_ctx;	/* from smtp_tls_new */
	int			 connect_timeout;
	int			 greeting_timeout;
	int			 command_timeout;
	int			 data_timeout;		/* idle time while sending DATA */
	int			 data_done_timeout;	/* reply to the final dot */
	const char		*auth_user;	/* AUTH PLAIN/LOGIN (TLS only) or NULL */
	const char		*auth_pass;
	const volatile int	*abort;		/* non-zero: stop waiting (shutdown) */
	int			 check_name;	/* may/encrypt: check the certificate
						 * against tls_name too, without
						 * enforcing (MTA-STS testing) */
	struct smtp_tls_report	*report;	/* out, or NULL */
};

struct smtp_rcpt {
	const char		*addr;		/* in */
	enum smtp_status	 status;	/* out */
	int			 code;		/* out: reply code, 0 = none */
	char			 reply[SMTP_REPLY_MAX];	/* out */
};

struct smtp_session;
struct smtp_tls;

/*
 * The client's TLS, shared by every session (thread-safe): the OpenSSL
 * context (DANE enabled) is made at the first STARTTLS, the CA store
 * (ca_file, or the system store if NULL or "") read at the first handshake
 * that checks a certificate (verify, dane), and both are kept.  A ca_file
 * that cannot be opened fails here; one that does not parse defers the
 * deliveries that need it, naming the file.
 */
struct smtp_tls	*smtp_tls_new(const char *ca_file, char *err, size_t errlen);
void		 smtp_tls_free(struct smtp_tls *);
/* Makes the context and reads the CA store now (before the filesystem goes
 * out of reach, privsep.c); 0, or -1 with err. */
int		 smtp_tls_preload(struct smtp_tls *, char *err, size_t errlen);

/*
 * Connects to one address, reads the greeting, EHLO (HELO fallback), runs
 * STARTTLS as the policy says (may: back to plain on a new connection if
 * the handshake fails), EHLO again, AUTH if asked.  SMTP_OK and a session,
 * or SMTP_TEMP/SMTP_PERM with the reason or remote reply in reply.
 */
enum smtp_status smtp_open(const struct smtp_params *, const struct sockaddr *,
		    socklen_t, struct smtp_session **, char *reply, size_t len);

/* smtp_send flags */
#define SMTP_SEND_8BIT		0x01	/* BODY=8BITMIME: needs 8BITMIME */
#define SMTP_SEND_SMTPUTF8	0x02	/* SMTPUTF8 (RFC 6531): needs SMTPUTF8 */

/*
 * One transaction: MAIL FROM (SIZE=, BODY=8BITMIME with SMTP_SEND_8BIT,
 * SMTPUTF8 with SMTP_SEND_SMTPUTF8 or when an address is UTF-8), RCPT per
 * recipient, DATA, the message (dot-stuffed by libetpan), final reply.
 * A message that needs 8BITMIME or SMTPUTF8 the server does not offer fails
 * every recipient permanently (5.6.3, 5.6.7).  Every rcpt gets a status.  Returns 1 if the failure was at session level
 * before the message was accepted anywhere (the temp-failed recipients may be
 * retried at another address), else 0.
 */
int		 smtp_send(struct smtp_session *, const char *sender,
		    struct smtp_rcpt *, size_t nrcpt, const char *data,
		    size_t len, int flags);
/* Ready for the next transaction: RSET unless the last one ended with the
 * reply to its data; -1 if the session is no longer usable. */
int		 smtp_reset(struct smtp_session *);
/* QUIT (if usable) and free. */
void		 smtp_close(struct smtp_session *);
int		 smtp_usable(const struct smtp_session *);

/* Logging facts of an open session. */
const char	*smtp_peer_ip(const struct smtp_session *);
const char	*smtp_tls_version(const struct smtp_session *);	/* "none" if plain */
const char	*smtp_tls_cipher(const struct smtp_session *);	/* "none" if plain */
/* "none", "unverified", "verified", "dane", "plain-fallback" */
const char	*smtp_tls_auth(const struct smtp_session *);
int		 smtp_messages(const struct smtp_session *);	/* sent so far */

/* An address fits RFC 5321 limits and holds nothing libetpan would choke on
 * (a UTF-8 local part is fine: it goes only to an SMTPUTF8 server). */
int		 smtp_addr_ok(const char *addr, int allow_empty);

#endif
