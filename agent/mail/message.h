/*
 * message.h - building RFC 5322 messages: Date and Message-ID, header
 * checks, RFC 2047 encoded words, CRLF line ends.  mail.send and the OTP
 * mail both use these; nothing else writes headers.
 */
#ifndef OTPMAIL_MESSAGE_H
#define OTPMAIL_MESSAGE_H

#include <stddef.h>
#include <time.h>

/* A growable byte buffer: the only way this code builds strings. */
struct buf {
	char	*data;
	size_t	 len;
	size_t	 cap;
};
void	buf_init(struct buf *);
void	buf_free(struct buf *);
void	buf_add(struct buf *, const void *, size_t);
void	buf_adds(struct buf *, const char *);
void	buf_printf(struct buf *, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Detaches the NUL-terminated data; the buffer is empty afterwards. */
char	*buf_take(struct buf *, size_t *len);

/* "Thu, 26 Nov 2026 11:35:27 +0000" */
void	msg_date(time_t, char *out, size_t len);
/* "<random.time@hostname>" */
void	msg_message_id(const char *hostname, char *out, size_t len);
/* A header field name: printable ASCII but ':' and space (RFC 5322 2.2). */
int	msg_header_name_ok(const char *);
/*
 * 1 if the header (name of len bytes) vouches for the sender or the path
 * and only a mail system may write it: Sender, Return-Path, Received,
 * Received-SPF, Authentication-Results, DKIM-Signature, ARC-*, Resent-*.
 * A request never supplies these.
 */
int	msg_header_trace(const char *name, size_t len);
/* A header value: no CR, LF or NUL; length bounded. */
int	msg_header_value_ok(const char *, size_t maxlen);
/* Adds "Name: value\r\n", value encoded as RFC 2047 words if not ASCII,
 * folded at 78 columns. */
void	msg_add_header(struct buf *, const char *name, const char *value);
/*
 * The stream tag every message carries, for the big providers' feedback
 * loops (Gmail's Feedback-ID layout, the sender's id last):
 * "Feedback-ID: purpose:class:app:otpmail".  Fields are cut to a word of
 * [a-z0-9._-] (':' in "uid:N" becomes '-'), so no field can forge another.
 */
#define MSG_FEEDBACK_FIELD_MAX	64
void	msg_add_feedback_id(struct buf *, const char *purpose, const char *klass,
	    const char *app);
/*
 * A mailbox as an app writes it: "addr" or "Display Name <addr>" (the name
 * any UTF-8, optionally in double quotes).  0 with the name (may be "") and
 * the bare address, -1 if malformed.  The address is not validated here.
 */
int	msg_parse_mailbox(const char *in, char *name, size_t namelen,
	    char *addr, size_t addrlen);
/*
 * Adds "Name: mailbox, mailbox\r\n": display names become RFC 2047 words
 * when not ASCII, quoted strings when they hold specials; addresses are
 * written as they are (never encoded).  One mailbox per folded line.
 */
void	msg_add_mailboxes(struct buf *, const char *name, const char *const *names,
	    const char *const *addrs, size_t n);
/* Appends text with every line ending turned into CRLF; ensures a final CRLF. */
void	msg_add_crlf_text(struct buf *, const char *text, size_t len);
/* 1 if any byte >= 0x80 (the message needs 8BITMIME). */
int	msg_is_8bit(const char *, size_t);
/* Finds a header's value in a raw message (first occurrence), unfolded,
 * malloc'd; NULL if absent. */
char	*msg_find_header(const char *msg, size_t len, const char *name);
/* Quoted-printable encoding of UTF-8 text with CRLF line ends. */
void	msg_add_qp(struct buf *, const char *text, size_t len);
/* HTML-escapes text (& < > " '). */
void	msg_add_html_escaped(struct buf *, const char *text);

#endif
