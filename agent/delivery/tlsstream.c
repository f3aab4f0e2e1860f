/*
 * tlsstream.c - the connection under libetpan (see tlsstream.h).  Every wait
 * is a poll() bounded by the stream's timeout, so a peer that stops talking
 * costs at most that long; with OpenSSL on top, WANT_READ/WANT_WRITE map onto
 * the same waits.  Writes use MSG_NOSIGNAL on the plain path.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>

#include "agent/delivery/tlsstream.h"

struct tlsstream {
	int		 fd;
	SSL		*ssl;
	int		 secs;		/* timeout in force */
	int		 absolute;	/* deadline mode */
	long long	 deadline_ms;	/* monotonic, absolute mode */
	int		 timed_out;
	int		 aborted;
	const volatile int *abort;	/* shutdown flag, may be NULL */
	size_t		 nread;		/* bytes read since the timeout was set */
};

/* A peer may not feed more than this per command (reply lines are unbounded in libetpan). */
#define TLSSTREAM_READ_MAX	(1024 * 1024)

static long long tlsstream_now_ms(void);
static int	 tlsstream_wait(struct tlsstream *, short events);
static ssize_t	 tlsstream_read(mailstream_low *, void *, size_t);
static ssize_t	 tlsstream_write(mailstream_low *, const void *, size_t);
static int	 tlsstream_close(mailstream_low *);
static int	 tlsstream_get_fd(mailstream_low *);
static void	 tlsstream_free(mailstream_low *);
static struct mailstream_cancel *tlsstream_get_cancel(mailstream_low *);
static int	 tlsstream_ssl_wait(struct tlsstream *, int ret);

static mailstream_low_driver tlsstream_driver = {
	.mailstream_read = tlsstream_read,
	.mailstream_write = tlsstream_write,
	.mailstream_close = tlsstream_close,
	.mailstream_get_fd = tlsstream_get_fd,
	.mailstream_free = tlsstream_free,
	.mailstream_cancel = NULL,
	.mailstream_get_cancel = tlsstream_get_cancel,
	.mailstream_get_certificate_chain = NULL,
	.mailstream_setup_idle = NULL,
	.mailstream_unsetup_idle = NULL,
	.mailstream_interrupt_idle = NULL,
};

static long long
tlsstream_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int
tlsstream_connect(const struct sockaddr *sa, socklen_t salen, int timeout_s,
    const volatile int *abort, char *err, size_t errlen)
{
	struct pollfd pfd;
	long long deadline;
	int fd, r, soerr, one = 1;
	socklen_t len;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd == -1) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, sa, salen) == 0)
		return fd;
	if (errno != EINPROGRESS) {
		snprintf(err, errlen, "connect: %s", strerror(errno));
		goto fail;
	}
	deadline = tlsstream_now_ms() + (long long)timeout_s * 1000;
	for (;;) {
		long long left = deadline - tlsstream_now_ms();

		if (left <= 0) {
			snprintf(err, errlen, "connect: timeout after %ds", timeout_s);
			goto fail;
		}
		if (abort != NULL && *abort) {
			snprintf(err, errlen, "connect: shutting down");
			goto fail;
		}
		if (abort != NULL && left > TLSSTREAM_ABORT_MS)
			left = TLSSTREAM_ABORT_MS;
		pfd.fd = fd;
		pfd.events = POLLOUT;
		r = poll(&pfd, 1, (int)left);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1) {
			snprintf(err, errlen, "poll: %s", strerror(errno));
			goto fail;
		}
		if (r == 1)
			break;
	}
	len = sizeof(soerr);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == -1)
		soerr = errno;
	if (soerr != 0) {
		snprintf(err, errlen, "connect: %s", strerror(soerr));
		goto fail;
	}
	return fd;
fail:
	close(fd);
	return -1;
}

mailstream_low *
tlsstream_low_new(int fd)
{
	struct tlsstream *t;
	mailstream_low *low;

	if ((t = calloc(1, sizeof(*t))) == NULL) {
		close(fd);
		return NULL;
	}
	t->fd = fd;
	t->secs = 300;
	t->absolute = 0;
	if ((low = mailstream_low_new(t, &tlsstream_driver)) == NULL) {
		close(fd);
		free(t);
		return NULL;
	}
	return low;
}

void
tlsstream_set_timeout(mailstream_low *low, int secs, int absolute)
{
	struct tlsstream *t = low->data;

	t->secs = secs > 0 ? secs : 1;
	t->absolute = absolute;
	t->deadline_ms = tlsstream_now_ms() + (long long)t->secs * 1000;
	t->timed_out = 0;
	t->aborted = 0;
	t->nread = 0;
}

int
tlsstream_timed_out(mailstream_low *low)
{
	return ((struct tlsstream *)low->data)->timed_out;
}

void
tlsstream_set_abort(mailstream_low *low, const volatile int *abort)
{
	((struct tlsstream *)low->data)->abort = abort;
}

int
tlsstream_aborted(mailstream_low *low)
{
	return ((struct tlsstream *)low->data)->aborted;
}

SSL *
tlsstream_ssl(mailstream_low *low)
{
	return ((struct tlsstream *)low->data)->ssl;
}

int
tlsstream_fd(mailstream_low *low)
{
	return ((struct tlsstream *)low->data)->fd;
}

/* Waits for events within the timeout; 0 ready, -1 timeout or error. */
static int
tlsstream_wait(struct tlsstream *t, short events)
{
	struct pollfd pfd;
	long long left, end;
	int r;

	/* Idle mode: the silence allowed starts now. */
	end = t->absolute ? t->deadline_ms : tlsstream_now_ms() + (long long)t->secs * 1000;
	for (;;) {
		left = end - tlsstream_now_ms();
		if (left <= 0) {
			t->timed_out = 1;
			return -1;
		}
		if (t->abort != NULL && *t->abort) {
			t->aborted = 1;
			return -1;
		}
		if (t->abort != NULL && left > TLSSTREAM_ABORT_MS)
			left = TLSSTREAM_ABORT_MS;
		pfd.fd = t->fd;
		pfd.events = events;
		pfd.revents = 0;
		r = poll(&pfd, 1, left > 0x7fffffff ? 0x7fffffff : (int)left);
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1)
			return -1;
		if (r == 0)
			continue;	/* the top of the loop decides */
		return 0;	/* readable, writable, or an error the next call reports */
	}
}

/* After an SSL call returned ret <= 0: waits if OpenSSL wants I/O (0), -1 otherwise. */
static int
tlsstream_ssl_wait(struct tlsstream *t, int ret)
{
	switch (SSL_get_error(t->ssl, ret)) {
	case SSL_ERROR_WANT_READ:
		return tlsstream_wait(t, POLLIN);
	case SSL_ERROR_WANT_WRITE:
		return tlsstream_wait(t, POLLOUT);
	default:
		return -1;
	}
}

static ssize_t
tlsstream_read(mailstream_low *low, void *buf, size_t len)
{
	struct tlsstream *t = low->data;
	ssize_t n;
	int r;

	if (len > 0x7fffffff)
		len = 0x7fffffff;
	if (t->nread >= TLSSTREAM_READ_MAX)
		return -1;
	for (;;) {
		if (t->ssl != NULL) {
			ERR_clear_error();
			r = SSL_read(t->ssl, buf, (int)len);
			if (r > 0) {
				t->nread += r;
				return r;
			}
			if (SSL_get_error(t->ssl, r) == SSL_ERROR_ZERO_RETURN)
				return 0;
			if (tlsstream_ssl_wait(t, r) == -1)
				return -1;
			continue;
		}
		n = recv(t->fd, buf, len, 0);
		if (n >= 0) {
			t->nread += n;
			return n;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (tlsstream_wait(t, POLLIN) == -1)
			return -1;
	}
}

static ssize_t
tlsstream_write(mailstream_low *low, const void *buf, size_t len)
{
	struct tlsstream *t = low->data;
	ssize_t n;
	int r;

	if (len > 0x7fffffff)
		len = 0x7fffffff;
	for (;;) {
		if (t->ssl != NULL) {
			ERR_clear_error();
			r = SSL_write(t->ssl, buf, (int)len);
			if (r > 0)
				return r;
			if (tlsstream_ssl_wait(t, r) == -1)
				return -1;
			continue;
		}
		n = send(t->fd, buf, len, MSG_NOSIGNAL);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (tlsstream_wait(t, POLLOUT) == -1)
			return -1;
	}
}

int
tlsstream_start_tls(mailstream_low *low, SSL *ssl, char *err, size_t errlen)
{
	struct tlsstream *t = low->data;
	unsigned long e;
	int r;

	if (t->ssl != NULL) {
		SSL_free(ssl);
		snprintf(err, errlen, "TLS already active");
		return -1;
	}
	t->ssl = ssl;
	if (SSL_set_fd(ssl, t->fd) != 1) {
		snprintf(err, errlen, "SSL_set_fd failed");
		goto fail;
	}
	SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
	    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	for (;;) {
		ERR_clear_error();
		r = SSL_connect(ssl);
		if (r == 1)
			return 0;
		if (tlsstream_ssl_wait(t, r) == -1)
			break;
	}
	if (t->timed_out)
		snprintf(err, errlen, "TLS handshake timeout");
	else if ((e = ERR_peek_last_error()) != 0)
		snprintf(err, errlen, "TLS handshake failed: %s",
		    ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "unknown");
	else
		snprintf(err, errlen, "TLS handshake failed: connection lost");
fail:
	/* The SSL stays attached so close frees it; it is unusable. */
	SSL_set_quiet_shutdown(ssl, 1);
	return -1;
}

static int
tlsstream_close(mailstream_low *low)
{
	struct tlsstream *t = low->data;

	if (t == NULL)
		return 0;
	if (t->ssl != NULL) {
		if (SSL_is_init_finished(t->ssl))
			SSL_shutdown(t->ssl);	/* one try, non-blocking */
		SSL_free(t->ssl);
		t->ssl = NULL;
	}
	if (t->fd != -1) {
		close(t->fd);
		t->fd = -1;
	}
	return 0;
}

static int
tlsstream_get_fd(mailstream_low *low)
{
	return ((struct tlsstream *)low->data)->fd;
}

static void
tlsstream_free(mailstream_low *low)
{
	struct tlsstream *t = low->data;

	if (t != NULL) {
		tlsstream_close(low);
		free(t);
	}
	low->data = NULL;
	free(low);
}

static struct mailstream_cancel *
tlsstream_get_cancel(mailstream_low *low)
{
	return NULL;
}
