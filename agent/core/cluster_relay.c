/*
 * cluster_relay.c - carries the Replication Manager's streams between hosts
 * over mutually authenticated TLS 1.3.  Repmgr listens and connects only on
 * loopback: site j is 127.0.0.1:base+j on every host, its own repmgr on its
 * host and this relay on the others.  A stream the local repmgr opens to
 * 127.0.0.1:base+k goes over TLS to site k's cluster address, whose relay
 * hands it to its own repmgr.  Both ends prove the pre-shared key derived
 * from the cluster secret (TLS 1.3 external PSK with (EC)DHE, so a stolen
 * secret does not open recorded traffic); there are no certificates, and a
 * peer without the secret gets no byte through.  One thread accepts; each
 * stream is a thread moving bytes both ways.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "agent/core/cluster_int.h"
#include "agent/core/log.h"

#define RELAY_PSK_ID		"otpmail-cluster-v1"
#define RELAY_IO_TIMEOUT	5	/* s for a connect or a handshake */
#define RELAY_BUF		16384
#define RELAY_MAX_STREAMS	64
#define RELAY_DOWN_HOLD		2	/* s a site's port stays closed after a failed connect */

struct relay_stream {
	struct cluster	*c;
	int		 fd;		/* the accepted socket */
	int		 to;		/* outbound: the site it goes to; -1 inbound */
};

static SSL_SESSION *relay_psk_session(SSL *, const uint8_t *psk);
static int	relay_use_psk(SSL *, const EVP_MD *, const unsigned char **, size_t *,
		    SSL_SESSION **);
static int	relay_find_psk(SSL *, const unsigned char *, size_t, SSL_SESSION **);
static int	relay_listen(const char *host, const char *port, char *err, size_t);
static int	relay_connect(const char *host, const char *port);
static void	relay_timeouts(int fd, int secs);
static void	relay_pump(struct cluster *, SSL *, int tfd, int pfd);
static void	*relay_stream_run(void *);
static void	 relay_hold_down(struct cluster *);
static void	*relay_accept_run(void *);

static int relay_ex_index = -1;

static const unsigned char relay_aes128gcm[] = { 0x13, 0x01 };

static SSL_SESSION *
relay_psk_session(SSL *ssl, const uint8_t *psk)
{
	const SSL_CIPHER *cipher;
	SSL_SESSION *sess;

	if ((cipher = SSL_CIPHER_find(ssl, relay_aes128gcm)) == NULL ||
	    (sess = SSL_SESSION_new()) == NULL)
		return NULL;
	if (!SSL_SESSION_set1_master_key(sess, psk, 32) ||
	    !SSL_SESSION_set_cipher(sess, cipher) ||
	    !SSL_SESSION_set_protocol_version(sess, TLS1_3_VERSION)) {
		SSL_SESSION_free(sess);
		return NULL;
	}
	return sess;
}

static int
relay_use_psk(SSL *ssl, const EVP_MD *md, const unsigned char **id, size_t *idlen,
    SSL_SESSION **sess)
{
	struct cluster *c = SSL_get_ex_data(ssl, relay_ex_index);

	*sess = relay_psk_session(ssl, c->psk);
	if (*sess == NULL)
		return 0;
	if (md != NULL && SSL_CIPHER_get_handshake_digest(SSL_SESSION_get0_cipher(*sess)) != md) {
		SSL_SESSION_free(*sess);
		*sess = NULL;
		return 0;
	}
	*id = (const unsigned char *)RELAY_PSK_ID;
	*idlen = strlen(RELAY_PSK_ID);
	return 1;
}

static int
relay_find_psk(SSL *ssl, const unsigned char *id, size_t idlen, SSL_SESSION **sess)
{
	struct cluster *c = SSL_get_ex_data(ssl, relay_ex_index);

	*sess = NULL;
	if (idlen != strlen(RELAY_PSK_ID) || memcmp(id, RELAY_PSK_ID, idlen) != 0)
		return 1;	/* unknown identity: the handshake fails */
	*sess = relay_psk_session(ssl, c->psk);
	return *sess != NULL;
}

static SSL_CTX *
relay_ctx(int server)
{
	SSL_CTX *ctx;

	if ((ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method())) == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256");
	/* no resumption tickets: every stream proves the key afresh */
	SSL_CTX_set_num_tickets(ctx, 0);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (server)
		SSL_CTX_set_psk_find_session_callback(ctx, relay_find_psk);
	else
		SSL_CTX_set_psk_use_session_callback(ctx, relay_use_psk);
	return ctx;
}

static int
relay_listen(const char *host, const char *port, char *err, size_t errlen)
{
	struct addrinfo hints, *res = NULL;
	int fd = -1, one = 1, r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "cluster: %s:%s: %s", host, port, gai_strerror(r));
		return -1;
	}
	if ((fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
	    bind(fd, res->ai_addr, res->ai_addrlen) == -1 || listen(fd, 16) == -1) {
		snprintf(err, errlen, "cluster: listen on %s:%s: %s", host, port,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static void
relay_timeouts(int fd, int secs)
{
	struct timeval tv = { secs, 0 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int
relay_connect(const char *host, const char *port)
{
	struct addrinfo hints, *res = NULL, *ai;
	int fd = -1, one = 1, idle = 5, intvl = 2, cnt = 3;
	unsigned int utmo = 10000;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (getaddrinfo(host, port, &hints, &res) != 0)
		return -1;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if ((fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
			continue;
		relay_timeouts(fd, RELAY_IO_TIMEOUT);
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1)
		return -1;
	/* a peer gone without a word (cable, partition) is noticed in ~11 s */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &utmo, sizeof(utmo));
	return fd;
}

/* Moves bytes both ways until either side closes or the relay stops. */
static void
relay_pump(struct cluster *c, SSL *ssl, int tfd, int pfd)
{
	uint8_t *p2t, *t2p;
	size_t p2t_n = 0, p2t_o = 0, t2p_n = 0, t2p_o = 0;
	struct pollfd pf[2];
	int moved, tr, tw, e, n;
	ssize_t w;

	p2t = malloc(RELAY_BUF);
	t2p = malloc(RELAY_BUF);
	if (p2t == NULL || t2p == NULL)
		goto done;
	fcntl(tfd, F_SETFL, fcntl(tfd, F_GETFL) | O_NONBLOCK);
	fcntl(pfd, F_SETFL, fcntl(pfd, F_GETFL) | O_NONBLOCK);
	while (!atomic_load(&c->stop)) {
		moved = tr = tw = 0;
		if (t2p_n == 0) {
			n = SSL_read(ssl, t2p, RELAY_BUF);
			if (n > 0) {
				t2p_n = (size_t)n;
				t2p_o = 0;
				moved = 1;
			} else if ((e = SSL_get_error(ssl, n)) == SSL_ERROR_WANT_READ)
				tr = 1;
			else if (e == SSL_ERROR_WANT_WRITE)
				tw = 1;
			else
				goto done;
		}
		while (t2p_o < t2p_n) {
			if ((w = write(pfd, t2p + t2p_o, t2p_n - t2p_o)) > 0) {
				t2p_o += (size_t)w;
				moved = 1;
			} else if (w == -1 && (errno == EAGAIN || errno == EINTR))
				break;
			else
				goto done;
		}
		if (t2p_o == t2p_n)
			t2p_n = t2p_o = 0;
		if (p2t_n == 0) {
			if ((w = read(pfd, p2t, RELAY_BUF)) > 0) {
				p2t_n = (size_t)w;
				p2t_o = 0;
				moved = 1;
			} else if (w == 0 || (errno != EAGAIN && errno != EINTR))
				goto done;
		}
		if (p2t_o < p2t_n) {
			n = SSL_write(ssl, p2t + p2t_o, (int)(p2t_n - p2t_o));
			if (n > 0) {
				p2t_o += (size_t)n;
				moved = 1;
			} else if ((e = SSL_get_error(ssl, n)) == SSL_ERROR_WANT_READ)
				tr = 1;
			else if (e == SSL_ERROR_WANT_WRITE)
				tw = 1;
			else
				goto done;
		}
		if (p2t_o == p2t_n)
			p2t_n = p2t_o = 0;
		if (moved)
			continue;
		pf[0].fd = pfd;
		pf[0].events = (p2t_n == 0 ? POLLIN : 0) | (t2p_n > 0 ? POLLOUT : 0);
		pf[1].fd = tfd;
		pf[1].events = (tr ? POLLIN : 0) | (tw ? POLLOUT : 0);
		if (poll(pf, 2, 1000) == -1 && errno != EINTR)
			goto done;
	}
done:
	free(p2t);
	free(t2p);
}

static void *
relay_stream_run(void *arg)
{
	struct relay_stream *st = arg;
	struct cluster *c = st->c;
	char port[8];
	uint8_t tag;
	SSL *ssl = NULL;
	int tfd = -1, pfd = -1, out = st->to >= 0;

	if (out) {
		pfd = st->fd;
		tfd = relay_connect(c->host[st->to], c->port[st->to]);
		if (tfd == -1)
			atomic_store(&c->down_until[st->to], (long)time(NULL) + RELAY_DOWN_HOLD);
	} else {
		tfd = st->fd;
		relay_timeouts(tfd, RELAY_IO_TIMEOUT);
	}
	if (tfd == -1 || (ssl = SSL_new(out ? c->cctx : c->sctx)) == NULL)
		goto done;
	SSL_set_ex_data(ssl, relay_ex_index, c);
	SSL_set_fd(ssl, tfd);
	if ((out ? SSL_connect(ssl) : SSL_accept(ssl)) != 1) {
		atomic_fetch_add(&c->refused, 1);
		log_msg(LOG_WARNING, "event=cluster.relay_refused dir=%s site=%s",
		    out ? "out" : "in", out ? c->addr[st->to] : "-");
		goto done;
	}
	/* which site the stream is for: a misrouted one is refused */
	if (out) {
		tag = (uint8_t)st->to;
		if (SSL_write(ssl, &tag, 1) != 1)
			goto done;
	} else {
		if (SSL_read(ssl, &tag, 1) != 1 || tag != c->self) {
			log_msg(LOG_WARNING, "event=cluster.relay_misrouted");
			goto done;
		}
		snprintf(port, sizeof(port), "%d", c->base_port + c->self);
		if ((pfd = relay_connect("127.0.0.1", port)) == -1)
			goto done;
	}
	relay_timeouts(tfd, 0);
	relay_timeouts(pfd, 0);
	atomic_fetch_add(&c->total, 1);
	log_msg(LOG_DEBUG, "event=cluster.stream dir=%s site=%s", out ? "out" : "in",
	    out ? c->addr[st->to] : "-");
	relay_pump(c, ssl, tfd, pfd);
done:
	if (ssl != NULL) {
		SSL_shutdown(ssl);
		SSL_free(ssl);
	}
	if (tfd != -1)
		close(tfd);
	if (pfd != -1)
		close(pfd);
	atomic_fetch_sub(&c->streams, 1);
	free(st);
	return NULL;
}

/*
 * Closes the loopback port of a site found unreachable, and opens it again
 * RELAY_DOWN_HOLD s later: repmgr's connect is then refused, as on one
 * network.  Accepting it and closing it once the far side fails looked to
 * repmgr like a site coming and going every second, which stalled elections.
 */
static void
relay_hold_down(struct cluster *c)
{
	char port[8], err[256];
	long now = (long)time(NULL);
	int j;

	for (j = 0; j < c->nsites; j++) {
		if (j == c->self)
			continue;
		if (atomic_load(&c->down_until[j]) > now) {
			if (c->lfd[j] != -1) {
				close(c->lfd[j]);
				c->lfd[j] = -1;
			}
		} else if (c->lfd[j] == -1) {
			snprintf(port, sizeof(port), "%d", c->base_port + j);
			c->lfd[j] = relay_listen("127.0.0.1", port, err, sizeof(err));
		}
	}
}

static void *
relay_accept_run(void *arg)
{
	struct cluster *c = arg;
	struct pollfd pf[STORE_CLUSTER_MAX + 1];
	struct relay_stream *st;
	pthread_attr_t attr;
	pthread_t t;
	int j, fd;

	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	while (!atomic_load(&c->stop)) {
		relay_hold_down(c);
		for (j = 0; j < c->nsites; j++) {
			pf[j].fd = c->lfd[j];
			pf[j].events = POLLIN;
		}
		pf[c->nsites].fd = c->stop_pipe[0];
		pf[c->nsites].events = POLLIN;
		if (poll(pf, (nfds_t)c->nsites + 1, 500) == -1) {
			if (errno == EINTR)
				continue;
			break;
		}
		for (j = 0; j < c->nsites; j++) {
			if (pf[j].fd == -1 || !(pf[j].revents & POLLIN))
				continue;
			if ((fd = accept4(c->lfd[j], NULL, NULL, SOCK_CLOEXEC)) == -1)
				continue;
			if (atomic_load(&c->streams) >= RELAY_MAX_STREAMS ||
			    (st = calloc(1, sizeof(*st))) == NULL) {
				close(fd);
				continue;
			}
			st->c = c;
			st->fd = fd;
			st->to = j == c->self ? -1 : j;
			atomic_fetch_add(&c->streams, 1);
			if (pthread_create(&t, &attr, relay_stream_run, st) != 0) {
				atomic_fetch_sub(&c->streams, 1);
				close(fd);
				free(st);
			}
		}
	}
	pthread_attr_destroy(&attr);
	return NULL;
}

int
cluster_relay_start(struct cluster *c, char *err, size_t errlen)
{
	char port[8];
	int j;

	if (relay_ex_index == -1)
		relay_ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	if ((c->cctx = relay_ctx(0)) == NULL || (c->sctx = relay_ctx(1)) == NULL) {
		snprintf(err, errlen, "cluster: cannot set up TLS");
		return -1;
	}
	for (j = 0; j < c->nsites; j++) {
		if (j == c->self)
			c->lfd[j] = relay_listen(c->host[j], c->port[j], err, errlen);
		else {
			snprintf(port, sizeof(port), "%d", c->base_port + j);
			c->lfd[j] = relay_listen("127.0.0.1", port, err, errlen);
		}
		if (c->lfd[j] == -1)
			return -1;
	}
	if (pipe2(c->stop_pipe, O_CLOEXEC) == -1 ||
	    pthread_create(&c->acceptor, NULL, relay_accept_run, c) != 0) {
		snprintf(err, errlen, "cluster: cannot start the relay");
		return -1;
	}
	c->running = 1;
	log_msg(LOG_INFO, "event=cluster.relay site=%s index=%d sites=%d", c->addr[c->self],
	    c->self, c->nsites);
	return 0;
}

void
cluster_close(struct cluster *c)
{
	int j, waited;

	if (c == NULL)
		return;
	atomic_store(&c->stop, 1);
	if (c->running) {
		if (write(c->stop_pipe[1], "x", 1) == -1)
			log_msg(LOG_ERR, "event=cluster.stop error=%s", strerror(errno));
		pthread_join(c->acceptor, NULL);
		/* the streams see stop within a poll (1 s) or a handshake (5 s) */
		for (waited = 0; atomic_load(&c->streams) > 0 && waited < 700; waited++)
			usleep(10000);
	}
	for (j = 0; j < c->nsites; j++)
		if (c->lfd[j] != -1)
			close(c->lfd[j]);
	if (c->stop_pipe[0] != -1) {
		close(c->stop_pipe[0]);
		close(c->stop_pipe[1]);
	}
	/* a stream still running keeps its SSL: leave the contexts then */
	if (atomic_load(&c->streams) == 0) {
		SSL_CTX_free(c->cctx);
		SSL_CTX_free(c->sctx);
	}
	OPENSSL_cleanse(c->psk, sizeof(c->psk));
	free(c);
}

uint64_t
cluster_relay_refused(const struct cluster *c)
{
	return atomic_load(&c->refused);
}

uint64_t
cluster_relay_streams(const struct cluster *c)
{
	return atomic_load(&c->total);
}
