/*
 * tlsstream.h - otpmail's own connection under libetpan: a non-blocking TCP
 * connect with a timeout, and a mailstream_low driver whose reads and writes
 * wait with poll() (absolute deadline or idle timeout) and go through OpenSSL
 * once STARTTLS has been negotiated.
 */
#ifndef OTPMAIL_TLSSTREAM_H
#define OTPMAIL_TLSSTREAM_H

#include <stddef.h>
#include <sys/socket.h>
#include <openssl/ssl.h>
#include <libetpan/libetpan.h>

/*
 * Connected non-blocking socket, or -1 with a reason ("timeout" on timeout).
 * abort (may be NULL): when it becomes non-zero, waiting stops within
 * TLSSTREAM_ABORT_MS (daemon shutdown).
 */
#define TLSSTREAM_ABORT_MS	250
int		 tlsstream_connect(const struct sockaddr *, socklen_t, int timeout_s,
		    const volatile int *abort, char *err, size_t errlen);
/* A low driver over fd (which it owns from now on, even on failure). */
mailstream_low	*tlsstream_low_new(int fd);
/*
 * Timeout of the next reads/writes: absolute = one deadline now+secs for
 * everything until the next call; otherwise secs of silence per wait.
 */
void		 tlsstream_set_timeout(mailstream_low *, int secs, int absolute);
/* 1 if the last failed read/write ran out of time. */
int		 tlsstream_timed_out(mailstream_low *);
/* Waits of this stream give up when *abort becomes non-zero. */
void		 tlsstream_set_abort(mailstream_low *, const volatile int *abort);
/* 1 if the last failed read/write was cut short by the abort flag. */
int		 tlsstream_aborted(mailstream_low *);
/* Runs the client handshake on ssl (owned by the stream from now on). */
int		 tlsstream_start_tls(mailstream_low *, SSL *, char *err, size_t errlen);
/* The SSL of a TLS stream, NULL while plain. */
SSL		*tlsstream_ssl(mailstream_low *);
int		 tlsstream_fd(mailstream_low *);

#endif
