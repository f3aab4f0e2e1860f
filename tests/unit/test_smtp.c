/*
 * test_smtp.c - agent/delivery/smtp.c and agent/delivery/tlsstream.c against a tiny in-process
 * SMTP responder on loopback (a thread): reply classification, per-recipient
 * results, SIZE/8BITMIME, dot-stuffing and the final CRLF, long addresses
 * never sent, timeouts, HELO fallback, session reuse, and STARTTLS under
 * may/encrypt/verify/dane with a certificate generated here.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "agent/delivery/smtp.h"
#include "tests/unit/tap.h"

struct fake {
	int		 lfd;
	int		 port;
	const char	*greeting;	/* NULL = never say anything */
	const char	*ehlo;		/* NULL = 502 to EHLO */
	int		 starttls;	/* answer STARTTLS and handshake */
	const char	*mail_reply;	/* NULL = 250 */
	const char	*data_end;	/* NULL = 250; "hang" = never */
	const char	*ehlo_tls;	/* EHLO reply once TLS is on (NULL = ehlo) */
	int		 badtls;	/* 220 to STARTTLS, then garbage */
	int		 v6;		/* listen on ::1 */
	SSL_CTX		*sctx;
	pthread_mutex_t	 mu;
	char		 log[16384];	/* command lines received */
	char		 data[16384];	/* raw DATA bytes incl. the final dot */
	size_t		 datalen;
	int		 naccept;
	int		 stop;
};

struct conn {
	int	 fd;
	SSL	*ssl;
	char	 buf[4096];
	size_t	 len;
};

static X509	*cert;
static EVP_PKEY	*pkey;
static char	 ca_path[] = "/tmp/otpmail-test-smtp-ca-XXXXXX";

static void
conn_write(struct conn *c, const char *s)
{
	if (c->ssl)
		SSL_write(c->ssl, s, (int)strlen(s));
	else
		(void)!send(c->fd, s, strlen(s), MSG_NOSIGNAL);
}

static ssize_t
conn_fill(struct conn *c)
{
	ssize_t n;

	if (c->len >= sizeof(c->buf))
		return -1;
	if (c->ssl)
		n = SSL_read(c->ssl, c->buf + c->len, (int)(sizeof(c->buf) - c->len));
	else
		n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
	if (n > 0)
		c->len += n;
	return n;
}

/* One line without CRLF into out, or -1 at EOF. */
static int
conn_line(struct conn *c, char *out, size_t outlen)
{
	char *nl;
	size_t n;

	while ((nl = memchr(c->buf, '\n', c->len)) == NULL)
		if (conn_fill(c) <= 0)
			return -1;
	n = nl - c->buf + 1;
	snprintf(out, outlen, "%.*s", (int)(n >= 2 && nl[-1] == '\r' ? n - 2 : n - 1), c->buf);
	memmove(c->buf, c->buf + n, c->len - n);
	c->len -= n;
	return 0;
}

static void
fake_conn(struct fake *f, int fd)
{
	struct conn c = { .fd = fd };
	char line[2048], reply[256];

	if (f->greeting == NULL) {
		while (recv(fd, line, sizeof(line), 0) > 0)
			;
		return;
	}
	conn_write(&c, f->greeting);
	while (conn_line(&c, line, sizeof(line)) == 0) {
		pthread_mutex_lock(&f->mu);
		if (strlen(f->log) + strlen(line) + 2 < sizeof(f->log)) {
			strcat(f->log, line);
			strcat(f->log, "\n");
		}
		pthread_mutex_unlock(&f->mu);
		if (strncasecmp(line, "EHLO", 4) == 0 && c.ssl && f->ehlo_tls)
			conn_write(&c, f->ehlo_tls);
		else if (strncasecmp(line, "EHLO", 4) == 0)
			conn_write(&c, f->ehlo ? f->ehlo : "502 5.5.2 no ESMTP here\r\n");
		else if (strncasecmp(line, "STARTTLS", 8) == 0 && f->badtls) {
			conn_write(&c, "220 2.0.0 go ahead\r\n");
			usleep(100 * 1000);	/* after the reply was read */
			conn_write(&c, "this is not TLS at all\r\n");
			break;
		} else if (strcasecmp(line, "AUTH PLAIN AHVzZXIAc2VjcmV0") == 0)
			conn_write(&c, "235 2.7.0 ok\r\n");
		else if (strncasecmp(line, "AUTH PLAIN", 10) == 0)
			conn_write(&c, "535 5.7.8 bad credentials\r\n");
		else if (strcasecmp(line, "AUTH LOGIN") == 0) {
			conn_write(&c, "334 VXNlcm5hbWU6\r\n");
			if (conn_line(&c, line, sizeof(line)) == -1 || strcmp(line, "dXNlcg==") != 0)
				break;
			conn_write(&c, "334 UGFzc3dvcmQ6\r\n");
			if (conn_line(&c, line, sizeof(line)) == -1)
				break;
			conn_write(&c, strcmp(line, "c2VjcmV0") == 0 ? "235 2.7.0 ok\r\n" :
			    "535 5.7.8 no\r\n");
		}
		else if (strncasecmp(line, "HELO", 4) == 0)
			conn_write(&c, "250 fake\r\n");
		else if (strncasecmp(line, "STARTTLS", 8) == 0 && f->starttls) {
			conn_write(&c, "220 2.0.0 go ahead\r\n");
			c.ssl = SSL_new(f->sctx);
			SSL_set_fd(c.ssl, fd);
			if (SSL_accept(c.ssl) != 1)
				break;
		} else if (strncasecmp(line, "MAIL FROM:", 10) == 0)
			conn_write(&c, f->mail_reply ? f->mail_reply : "250 2.1.0 ok\r\n");
		else if (strncasecmp(line, "RCPT TO:", 8) == 0) {
			if (strstr(line, "soft"))
				conn_write(&c, "450 4.2.0 try later\r\n");
			else if (strstr(line, "hard"))
				conn_write(&c, "550-5.1.1 no such user\r\n550 5.1.1 really\r\n");
			else
				conn_write(&c, "250 2.1.5 ok\r\n");
		} else if (strcasecmp(line, "DATA") == 0) {
			conn_write(&c, "354 go\r\n");
			pthread_mutex_lock(&f->mu);
			f->datalen = 0;
			pthread_mutex_unlock(&f->mu);
			for (;;) {
				char *end;

				if ((end = memmem(c.buf, c.len, "\r\n.\r\n", 5)) != NULL) {
					size_t n = end + 5 - c.buf;

					pthread_mutex_lock(&f->mu);
					if (n < sizeof(f->data)) {
						memcpy(f->data, c.buf, n);
						f->datalen = n;
					}
					pthread_mutex_unlock(&f->mu);
					memmove(c.buf, c.buf + n, c.len - n);
					c.len -= n;
					break;
				}
				if (conn_fill(&c) <= 0)
					goto out;
			}
			if (f->data_end && strcmp(f->data_end, "hang") == 0) {
				while (conn_fill(&c) > 0)
					c.len = 0;
				goto out;
			}
			conn_write(&c, f->data_end ? f->data_end : "250 2.0.0 queued as X\r\n");
		} else if (strcasecmp(line, "RSET") == 0)
			conn_write(&c, "250 2.0.0 ok\r\n");
		else if (strcasecmp(line, "QUIT") == 0) {
			conn_write(&c, "221 2.0.0 bye\r\n");
			break;
		} else {
			snprintf(reply, sizeof(reply), "500 5.5.1 what\r\n");
			conn_write(&c, reply);
		}
	}
out:
	if (c.ssl) {
		SSL_shutdown(c.ssl);
		SSL_free(c.ssl);
	}
}

static void *
fake_main(void *arg)
{
	struct fake *f = arg;
	int fd;

	for (;;) {
		fd = accept(f->lfd, NULL, NULL);
		if (fd == -1) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		if (f->stop) {
			close(fd);
			return NULL;
		}
		pthread_mutex_lock(&f->mu);
		f->naccept++;
		pthread_mutex_unlock(&f->mu);
		fake_conn(f, fd);
		close(fd);
	}
}

static pthread_t
fake_start(struct fake *f)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
	socklen_t len = sizeof(sin);
	pthread_t th;

	pthread_mutex_init(&f->mu, NULL);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin6.sin6_addr = in6addr_loopback;
	f->lfd = socket(f->v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (f->lfd == -1 || (f->v6 ?
	    bind(f->lfd, (struct sockaddr *)&sin6, sizeof(sin6)) :
	    bind(f->lfd, (struct sockaddr *)&sin, sizeof(sin))) == -1 ||
	    listen(f->lfd, 8) == -1) {
		perror("fake listen");
		abort();
	}
	if (f->v6) {
		len = sizeof(sin6);
		getsockname(f->lfd, (struct sockaddr *)&sin6, &len);
		f->port = ntohs(sin6.sin6_port);
	} else {
		getsockname(f->lfd, (struct sockaddr *)&sin, &len);
		f->port = ntohs(sin.sin_port);
	}
	pthread_create(&th, NULL, fake_main, f);
	return th;
}

static void
fake_stop(struct fake *f, pthread_t th)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
	int fd;

	f->stop = 1;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin.sin_port = htons(f->port);
	sin6.sin6_addr = in6addr_loopback;
	sin6.sin6_port = htons(f->port);
	fd = socket(f->v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	if (f->v6)	/* wakes accept */
		connect(fd, (struct sockaddr *)&sin6, sizeof(sin6));
	else
		connect(fd, (struct sockaddr *)&sin, sizeof(sin));
	pthread_join(th, NULL);
	close(fd);
	close(f->lfd);
	pthread_mutex_destroy(&f->mu);
}

static void
fake_addr(struct fake *f, struct sockaddr_in *sin)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sin->sin_port = htons(f->port);
}

static void
params_init(struct smtp_params *p, struct smtp_tls *ctx)
{
	memset(p, 0, sizeof(*p));
	p->helo = "client.example.net";
	p->tls_name = "localhost";
	p->policy = TLS_NONE;
	p->tls_ctx = ctx;
	p->connect_timeout = 2;
	p->greeting_timeout = 2;
	p->command_timeout = 2;
	p->data_timeout = 2;
	p->data_done_timeout = 2;
}

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A self-signed EC certificate for "localhost", saved as the test CA file. */
static void
make_cert(void)
{
	X509_EXTENSION *ext;
	X509_NAME *name;
	FILE *fp;
	int fd;

	pkey = EVP_EC_gen("P-256");
	cert = X509_new();
	X509_set_version(cert, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
	X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_set_pubkey(cert, pkey);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	    (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(cert, name);
	ext = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "DNS:localhost");
	X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
	X509_sign(cert, pkey, EVP_sha256());
	fd = mkstemp(ca_path);
	fp = fdopen(fd, "w");
	PEM_write_X509(fp, cert);
	fclose(fp);
}

static SSL_CTX *
server_ctx(void)
{
	SSL_CTX *s = SSL_CTX_new(TLS_server_method());

	SSL_CTX_use_certificate(s, cert);
	SSL_CTX_use_PrivateKey(s, pkey);
	return s;
}

static const char *EHLO_FULL =
    "250-fake.example.org hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n"
    "250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";
static const char *EHLO_7BIT =
    "250-fake.example.org hello\r\n250-SIZE 100000\r\n250 ENHANCEDSTATUSCODES\r\n";
static const char *EHLO_TLS =
    "250-fake.example.org hello\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
    "250 STARTTLS\r\n";

static void
test_basic(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 fake ESMTP\r\n", .ehlo = EHLO_FULL };
	struct smtp_rcpt r[4] = { { .addr = "ok@example.org" },
	    { .addr = "soft@example.org" }, { .addr = "hard@example.org" },
	    { .addr = "ok2@example.org" } };
	const char *msg = "Subject: t\r\n\r\n.leading dot\r\nbare\nlf\r\n.\r\nend\r\n";
	const char *want = "Subject: t\r\n\r\n..leading dot\r\nbare\r\nlf\r\n..\r\nend\r\n.\r\n";
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;
	int retry;

	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_OK, "open: greeting + EHLO");
	if (s == NULL)
		goto out;
	is_str(smtp_peer_ip(s), "127.0.0.1", "peer ip recorded");
	is_str(smtp_tls_version(s), "none", "no TLS under policy none");
	retry = smtp_send(s, "sender@example.net", r, 4, msg, strlen(msg), 0);
	is_int(retry, 0, "transaction concluded");
	is_int(r[0].status, SMTP_OK, "250 rcpt delivered");
	is_int(r[0].code, 250, "code of the final reply");
	is_str(r[0].reply, "250 2.0.0 queued as X", "final reply kept for the rcpt");
	is_int(r[1].status, SMTP_TEMP, "450 rcpt deferred");
	is_str(r[1].reply, "450 4.2.0 try later", "450 reply kept");
	is_int(r[2].status, SMTP_PERM, "550 rcpt failed");
	is_str(r[2].reply, "550 5.1.1 no such user 5.1.1 really", "multi-line reply joined");
	is_int(r[3].status, SMTP_OK, "second good rcpt delivered");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "EHLO client.example.net\n") != NULL, "EHLO uses the configured name");
	ok(strstr(f.log, "MAIL FROM:<sender@example.net> SIZE=") != NULL, "SIZE= declared when offered");
	ok(strstr(f.log, "BODY=8BITMIME") == NULL, "no BODY= for a 7-bit message");
	ok(f.datalen == strlen(want) && memcmp(f.data, want, f.datalen) == 0,
	    "dot-stuffed, bare LF fixed, no extra empty line before the dot");
	if (!(f.datalen == strlen(want) && memcmp(f.data, want, f.datalen) == 0))
		diag("got data: %.*s", (int)f.datalen, f.data);
	pthread_mutex_unlock(&f.mu);

	/* Reuse: RSET, second message on the same connection. */
	is_int(smtp_reset(s), 0, "RSET accepted");
	msg = "Subject: 8bit \xc3\xa9t\xc3\xa9\r\n\r\nbody\r\n";
	smtp_send(s, "", r, 1, msg, strlen(msg), 1);
	is_int(r[0].status, SMTP_OK, "second message over the same session, null sender");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "MAIL FROM:<> SIZE=") != NULL && strstr(f.log, "BODY=8BITMIME") != NULL,
	    "BODY=8BITMIME when needed and offered");
	is_int(f.naccept, 1, "one connection for two messages");
	pthread_mutex_unlock(&f.mu);
	is_int(smtp_messages(s), 2, "session counts its messages");
	smtp_close(s);
out:
	fake_stop(&f, th);
}

/*
 * SMTPUTF8 (RFC 6531): MAIL FROM ... SMTPUTF8 for a UTF-8 address when the
 * EHLO offers it (not a keyword that only starts with it), else 5.6.7
 * with nothing sent.
 */
static void
test_smtputf8(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 fake ESMTP\r\n", .ehlo =
	    "250-fake.example.org hello\r\n250-SIZE 100000\r\n250-8BITMIME\r\n"
	    "250 SMTPUTF8\r\n" };
	struct fake g = { .greeting = "220 fake ESMTP\r\n", .ehlo =
	    "250-fake.example.org hello\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
	    "250-XSMTPUTF8\r\n250 SMTPUTF8X\r\n" };
	const char *msg = "To: j\xc3\xb6rg@example.org\r\n\r\nx\r\n";
	struct smtp_rcpt r[2];
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;

	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_OK, "open an SMTPUTF8 peer");
	if (s != NULL) {
		memset(r, 0, sizeof(r));
		r[0].addr = "j\xc3\xb6rg@example.org";
		r[1].addr = "plain@example.org";
		smtp_send(s, "sender@example.net", r, 2, msg, strlen(msg), SMTP_SEND_8BIT);
		ok(r[0].status == SMTP_OK && r[1].status == SMTP_OK,
		    "UTF-8 recipient delivered where SMTPUTF8 is offered");
		smtp_reset(s);
		r[0].addr = "plain@example.org";
		smtp_send(s, "sender@example.net", r, 1, "x\r\n", 3, 0);
		is_int(r[0].status, SMTP_OK, "an ASCII message after it");
		pthread_mutex_lock(&f.mu);
		ok(strstr(f.log, "MAIL FROM:<sender@example.net> SIZE=") != NULL &&
		    strstr(f.log, " SMTPUTF8 BODY=8BITMIME\nRCPT TO:<j\xc3\xb6rg@"
		    "example.org>\n") != NULL, "MAIL FROM declares SMTPUTF8");
		ok(strstr(f.log, "SIZE=3\n") != NULL, "no SMTPUTF8 for an ASCII message");
		pthread_mutex_unlock(&f.mu);
		smtp_close(s);
	}
	fake_stop(&f, th);

	th = fake_start(&g);
	fake_addr(&g, &sin);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_OK, "open a peer without SMTPUTF8");
	if (s != NULL) {
		memset(r, 0, sizeof(r));
		r[0].addr = "plain@example.org";
		r[1].addr = "j\xc3\xb6rg@example.org";
		smtp_send(s, "sender@example.net", r, 2, msg, strlen(msg), SMTP_SEND_8BIT);
		ok(r[0].status == SMTP_PERM && r[1].status == SMTP_PERM,
		    "UTF-8 message to a peer without SMTPUTF8: permanent for all");
		ok(strstr(r[1].reply, "5.6.7") != NULL &&
		    strstr(r[1].reply, "does not support SMTPUTF8") != NULL,
		    "with a clear reason");
		memset(r, 0, sizeof(r));
		r[0].addr = "plain@example.org";
		smtp_send(s, "j\xc3\xb6rg@example.net", r, 1, "x\r\n", 3, 0);
		is_int(r[0].status, SMTP_PERM, "a UTF-8 sender too");
		memset(r, 0, sizeof(r));
		r[0].addr = "plain@example.org";
		smtp_send(s, "sender@example.net", r, 1, "x\r\n", 3, SMTP_SEND_SMTPUTF8);
		is_int(r[0].status, SMTP_PERM, "a message flagged SMTPUTF8 too");
		pthread_mutex_lock(&g.mu);
		ok(strstr(g.log, "MAIL FROM") == NULL, "nothing sent for them");
		pthread_mutex_unlock(&g.mu);
		smtp_close(s);
	}
	fake_stop(&g, th);
}

static void
test_refusals(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 fake ESMTP\r\n", .ehlo = EHLO_7BIT };
	char longlocal[80], longdom[300], rs[400];
	struct smtp_rcpt r[2];
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;
	const char *msg = "Subject: caf\xc3\xa9\r\n\r\nx\r\n";

	memset(longlocal, 'a', 65);
	strcpy(longlocal + 65, "@example.org");
	memset(longdom, 'b', 250);
	strcpy(longdom + 250, ".example.org");
	snprintf(rs, sizeof(rs), "x@%s", longdom);
	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_OK, "open 7-bit peer");
	if (s == NULL)
		goto out;
	memset(r, 0, sizeof(r));
	r[0].addr = "ok@example.org";
	smtp_send(s, "sender@example.net", r, 1, msg, strlen(msg), 1);
	is_int(r[0].status, SMTP_PERM, "8-bit message to a peer without 8BITMIME: permanent");
	ok(strstr(r[0].reply, "8BITMIME") != NULL, "with a clear reason");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "MAIL FROM") == NULL, "nothing sent for it");
	pthread_mutex_unlock(&f.mu);

	r[0].addr = longlocal;
	r[1].addr = "fine@example.org";
	msg = "Subject: x\r\n\r\nx\r\n";
	smtp_send(s, "sender@example.net", r, 2, msg, strlen(msg), 0);
	is_int(r[0].status, SMTP_PERM, "65-char local part refused");
	is_int(r[1].status, SMTP_OK, "the other recipient still delivered");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "aaaaaaaaaaaaaaaaaaaa") == NULL, "long address never reached the wire");
	pthread_mutex_unlock(&f.mu);
	smtp_reset(s);
	r[0].addr = "ok@example.org";
	smtp_send(s, rs, r, 1, msg, strlen(msg), 0);
	is_int(r[0].status, SMTP_PERM, "sender with a 262-char domain: permanent");
	r[0].addr = "evil\r\nRCPT TO:<x@y>@example.org";
	smtp_send(s, "sender@example.net", r, 1, msg, strlen(msg), 0);
	is_int(r[0].status, SMTP_PERM, "CR/LF in an address refused");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "bbbbbbbbbb") == NULL && strstr(f.log, "x@y") == NULL,
	    "neither reached the wire");
	pthread_mutex_unlock(&f.mu);
	smtp_close(s);
out:
	fake_stop(&f, th);
}

static void
test_helo_and_mail_fail(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 old\r\n", .ehlo = NULL,
	    .mail_reply = "421 4.3.2 shutting down\r\n" };
	struct smtp_rcpt r[1] = { { .addr = "ok@example.org" } };
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;
	int retry;

	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_OK, "EHLO refused: HELO fallback");
	if (s == NULL)
		goto out;
	retry = smtp_send(s, "a@example.net", r, 1, "x", 1, 0);
	is_int(r[0].status, SMTP_TEMP, "421 at MAIL FROM: deferred");
	is_int(retry, 1, "session-level failure: may retry elsewhere");
	ok(!smtp_usable(s), "session not reused after 421");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "HELO client.example.net") != NULL, "HELO with the configured name");
	ok(strstr(f.log, "SIZE=") == NULL, "no SIZE= without ESMTP");
	pthread_mutex_unlock(&f.mu);
	smtp_close(s);
out:
	fake_stop(&f, th);
}

static volatile int abort_flag;

static void *
set_abort(void *arg)
{
	usleep(300 * 1000);
	abort_flag = 1;
	return NULL;
}

static void
test_abort(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = NULL };
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th, ab;
	double t0;

	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	p.greeting_timeout = 30;
	p.abort = &abort_flag;
	abort_flag = 0;
	pthread_create(&ab, NULL, set_abort, NULL);
	t0 = now_s();
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "abort flag: silent peer given up");
	ok(now_s() - t0 < 15, "long before the 30 s greeting timeout");
	is_str(reply, "greeting: shutting down", "reason says shutting down");
	pthread_join(ab, NULL);
	fake_stop(&f, th);
}

static void
test_timeouts(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = NULL };
	struct fake g = { .greeting = "220 x\r\n", .ehlo = EHLO_FULL, .data_end = "hang" };
	struct smtp_rcpt r[1] = { { .addr = "ok@example.org" } };
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;
	double t0;
	int fd;

	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	p.greeting_timeout = 1;
	t0 = now_s();
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "silent peer: temporary failure");
	ok(now_s() - t0 < 2.5, "within the greeting timeout");
	ok(strstr(reply, "timeout") != NULL, "reason says timeout");
	diag("reply: %s", reply);
	fake_stop(&f, th);

	/* A port nobody listens on. */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	fake_addr(&f, &sin);
	sin.sin_port = 0;
	bind(fd, (struct sockaddr *)&sin, sizeof(sin));
	{
		socklen_t l = sizeof(sin);
		getsockname(fd, (struct sockaddr *)&sin, &l);
	}
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "refused connection: temporary");
	ok(strstr(reply, "refused") != NULL, "reason says refused");
	close(fd);

	th = fake_start(&g);
	fake_addr(&g, &sin);
	p.data_done_timeout = 1;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		t0 = now_s();
		smtp_send(s, "a@example.net", r, 1, "x\r\n", 3, 0);
		is_int(r[0].status, SMTP_TEMP, "no reply to the final dot: deferred");
		ok(now_s() - t0 < 2.5, "within data_done_timeout");
		ok(strstr(r[0].reply, "timeout") != NULL, "reason says timeout");
		ok(!smtp_usable(s), "session dropped");
		smtp_close(s);
	} else
		ok(0, "open for the data timeout test");
	fake_stop(&g, th);
}

static void
test_tls(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 tls\r\n", .ehlo = EHLO_TLS, .starttls = 1 };
	struct fake n = { .greeting = "220 plain\r\n", .ehlo = EHLO_FULL };
	struct smtp_rcpt r[1] = { { .addr = "ok@example.org" } };
	unsigned char *der = NULL, hash[SHA256_DIGEST_LENGTH], bad[SHA256_DIGEST_LENGTH];
	struct tlsa_rr rr;
	struct tlsa_set ts;
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	struct smtp_tls *vctx;
	pthread_t th;
	int len;

	f.sctx = server_ctx();
	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);

	p.policy = TLS_MAY;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		ok(strncmp(smtp_tls_version(s), "TLSv1.", 6) == 0, "may: STARTTLS taken");
		is_str(smtp_tls_auth(s), "unverified", "may: not verified");
		smtp_send(s, "a@example.net", r, 1, "Subject: x\r\n\r\ny\r\n", 17, 0);
		is_int(r[0].status, SMTP_OK, "delivered over TLS");
		pthread_mutex_lock(&f.mu);
		ok(f.datalen > 0 && memmem(f.data, f.datalen, "Subject: x", 10), "data arrived over TLS");
		ok(strstr(f.log, "STARTTLS\nEHLO client.example.net\n") != NULL, "EHLO again after STARTTLS");
		pthread_mutex_unlock(&f.mu);
		smtp_close(s);
	} else {
		ok(0, "may: open");
		diag("%s", reply);
	}

	p.policy = TLS_VERIFY;
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "verify without the CA: deferred");
	ok(strstr(reply, "verification") != NULL, "reason names verification");
	diag("reply: %s", reply);

	vctx = smtp_tls_new(ca_path, reply, sizeof(reply));
	ok(vctx != NULL, "client context with tls_ca_file");
	p.tls_ctx = vctx;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		is_str(smtp_tls_auth(s), "verified", "verify with the CA and the right name");
		smtp_close(s);
	} else {
		ok(0, "verify with the CA and the right name");
		diag("%s", reply);
	}
	p.tls_name = "mx.wrong.example";
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "verify with a wrong name: deferred");
	diag("reply: %s", reply);
	p.tls_name = "localhost";

	/* The CA store is read when a check needs it, not before. */
	ok(smtp_tls_new("/nonexistent/ca.pem", reply, sizeof(reply)) == NULL &&
	    strstr(reply, "/nonexistent/ca.pem") != NULL, "unreadable tls_ca_file refused at once");
	{
		char junk[] = "/tmp/otpmail-test-smtp-junk-XXXXXX";
		struct smtp_tls *jctx;
		int jfd = mkstemp(junk);

		if (jfd != -1) {
			(void)!write(jfd, "not a certificate\n", 18);
			close(jfd);
		}
		jctx = smtp_tls_new(junk, reply, sizeof(reply));
		ok(jctx != NULL, "tls_ca_file is not parsed at start");
		p.tls_ctx = jctx;
		p.policy = TLS_MAY;
		if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
		    sizeof(reply)) == SMTP_OK) {
			is_str(smtp_tls_auth(s), "unverified", "may never reads the CA store");
			smtp_close(s);
		} else {
			ok(0, "may never reads the CA store");
			diag("%s", reply);
		}
		p.policy = TLS_VERIFY;
		is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
		    sizeof(reply)), SMTP_TEMP, "verify with an unparsable tls_ca_file: deferred");
		ok(strstr(reply, junk) != NULL, "reason names the tls_ca_file");
		diag("reply: %s", reply);
		smtp_tls_free(jctx);
		unlink(junk);
	}

	/* DANE-EE SPKI SHA-256 of the test key, checked against the CA-less ctx. */
	len = i2d_PUBKEY(pkey, &der);
	SHA256(der, len, hash);
	OPENSSL_free(der);
	memcpy(bad, hash, sizeof(bad));
	bad[0] ^= 0xff;
	rr.usage = 3; rr.selector = 1; rr.mtype = 1; rr.data = hash; rr.len = sizeof(hash);
	ts.secure = 1; ts.n = 1; ts.rrs = &rr;
	p.tls_ctx = ctx;
	p.policy = TLS_DANE;
	p.tlsa = &ts;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		is_str(smtp_tls_auth(s), "dane", "dane: matching TLSA authenticates");
		smtp_close(s);
	} else {
		ok(0, "dane: matching TLSA authenticates");
		diag("%s", reply);
	}
	rr.data = bad;
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "dane: mismatching TLSA deferred");
	diag("reply: %s", reply);
	fake_stop(&f, th);

	/* A peer without STARTTLS. */
	th = fake_start(&n);
	fake_addr(&n, &sin);
	p.tlsa = NULL;
	p.policy = TLS_ENCRYPT;
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "encrypt without STARTTLS offered: deferred");
	ok(strstr(reply, "STARTTLS") != NULL, "reason names STARTTLS");
	rr.data = hash;
	p.tlsa = &ts;
	p.policy = TLS_DANE;
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "dane with TLSA but no STARTTLS: never in clear");
	ts.secure = 0;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		ok(1, "dane with an insecure TLSA set behaves as may");
		smtp_close(s);
	} else
		ok(0, "dane with an insecure TLSA set behaves as may");
	p.policy = TLS_MAY;
	p.tlsa = NULL;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		is_str(smtp_tls_version(s), "none", "may without STARTTLS: plain");
		smtp_close(s);
	} else
		ok(0, "may without STARTTLS: plain");
	fake_stop(&n, th);
	smtp_tls_free(vctx);
	SSL_CTX_free(f.sctx);
}

static void
test_auth_fallback_v6(struct smtp_tls *ctx)
{
	struct fake f = { .greeting = "220 relay\r\n", .ehlo = EHLO_TLS, .starttls = 1,
	    .ehlo_tls = "250-relay\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n" };
	struct fake l = { .greeting = "220 relay\r\n", .ehlo = EHLO_TLS, .starttls = 1,
	    .ehlo_tls = "250-relay\r\n250 AUTH LOGIN\r\n" };
	struct fake b = { .greeting = "220 broken\r\n", .ehlo = EHLO_TLS, .badtls = 1 };
	struct fake v = { .greeting = "220 six\r\n", .ehlo = EHLO_FULL, .v6 = 1 };
	struct smtp_rcpt r[1] = { { .addr = "ok@example.org" } };
	struct sockaddr_in6 sin6;
	struct smtp_session *s;
	struct smtp_params p;
	struct sockaddr_in sin;
	char reply[512];
	pthread_t th;

	f.sctx = server_ctx();
	l.sctx = f.sctx;
	th = fake_start(&f);
	fake_addr(&f, &sin);
	params_init(&p, ctx);
	p.auth_user = "user";
	p.auth_pass = "secret";
	p.policy = TLS_ENCRYPT;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		ok(1, "AUTH PLAIN over TLS accepted");
		smtp_close(s);
	} else {
		ok(0, "AUTH PLAIN over TLS accepted");
		diag("%s", reply);
	}
	p.auth_pass = "wrong";
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "refused credentials: deferred, not failed");
	ok(strstr(reply, "535") != NULL, "with the 535 reply");
	p.auth_pass = "secret";
	p.policy = TLS_NONE;
	pthread_mutex_lock(&f.mu);
	f.log[0] = '\0';
	pthread_mutex_unlock(&f.mu);
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "AUTH without TLS: refused locally");
	pthread_mutex_lock(&f.mu);
	ok(strstr(f.log, "AUTH") == NULL, "no credentials sent in clear");
	pthread_mutex_unlock(&f.mu);
	fake_stop(&f, th);

	th = fake_start(&l);
	fake_addr(&l, &sin);
	p.policy = TLS_MAY;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		ok(1, "AUTH LOGIN over TLS accepted");
		smtp_close(s);
	} else {
		ok(0, "AUTH LOGIN over TLS accepted");
		diag("%s", reply);
	}
	fake_stop(&l, th);
	p.auth_user = NULL;
	p.auth_pass = NULL;

	th = fake_start(&b);
	fake_addr(&b, &sin);
	p.policy = TLS_MAY;
	if (smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		is_str(smtp_tls_auth(s), "plain-fallback", "may: broken TLS handshake, "
		    "plain on a new connection");
		smtp_send(s, "a@example.net", r, 1, "x\r\n", 3, 0);
		is_int(r[0].status, SMTP_OK, "and the mail goes through");
		smtp_close(s);
	} else {
		ok(0, "may: broken TLS handshake falls back to plain");
		diag("%s", reply);
	}
	is_int(b.naccept, 2, "two connections: TLS attempt, then plain");
	p.policy = TLS_ENCRYPT;
	is_int(smtp_open(&p, (struct sockaddr *)&sin, sizeof(sin), &s, reply,
	    sizeof(reply)), SMTP_TEMP, "encrypt: broken handshake defers");
	is_int(b.naccept, 3, "no plain retry under encrypt");
	fake_stop(&b, th);

	th = fake_start(&v);
	memset(&sin6, 0, sizeof(sin6));
	sin6.sin6_family = AF_INET6;
	sin6.sin6_addr = in6addr_loopback;
	sin6.sin6_port = htons(v.port);
	p.policy = TLS_NONE;
	if (smtp_open(&p, (struct sockaddr *)&sin6, sizeof(sin6), &s, reply,
	    sizeof(reply)) == SMTP_OK) {
		is_str(smtp_peer_ip(s), "::1", "IPv6 peer");
		smtp_send(s, "a@example.net", r, 1, "x\r\n", 3, 0);
		is_int(r[0].status, SMTP_OK, "delivered over IPv6");
		smtp_close(s);
	} else {
		ok(0, "IPv6 peer");
		diag("%s", reply);
	}
	fake_stop(&v, th);
	SSL_CTX_free(f.sctx);
}

int
main(void)
{
	char err[256];
	struct smtp_tls *ctx;

	signal(SIGPIPE, SIG_IGN);
	ok(smtp_addr_ok("a@b.example", 0), "plain address ok");
	ok(!smtp_addr_ok("", 0) && smtp_addr_ok("", 1), "null path only where allowed");
	ok(!smtp_addr_ok("a b@example.org", 0), "space refused");
	ok(!smtp_addr_ok("noat", 0), "no @ refused");
	ok(smtp_addr_ok("j\xc3\xb6rg@example.org", 0), "UTF-8 local part ok (SMTPUTF8)");
	ok(!smtp_addr_ok("j\xc2\x85rg@example.org", 0), "C1 control refused");
	ok(!smtp_addr_ok("jorg@b\xc3\xbc""cher.example", 0), "U-label domain refused");
	make_cert();
	ctx = smtp_tls_new(NULL, err, sizeof(err));
	ok(ctx != NULL, "client context with the system store");
	test_basic(ctx);
	test_refusals(ctx);
	test_smtputf8(ctx);
	test_helo_and_mail_fail(ctx);
	test_timeouts(ctx);
	test_abort(ctx);
	test_tls(ctx);
	test_auth_fallback_v6(ctx);
	smtp_tls_free(ctx);
	unlink(ca_path);
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return done_testing();
}
