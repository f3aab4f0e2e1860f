/*
 * smtp.c - one outgoing SMTP session (see smtp.h).  libetpan reads and
 * parses replies; every command otpmail needs with its own parameters (EHLO
 * name, MAIL FROM with SIZE/BODY, AUTH) is sent raw through
 * mailsmtp_send_command, so nothing reaches libetpan's 513-byte buffers.
 * Replies are classified by response_code / 100 only.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

#include "agent/mail/mail.h"
#include "agent/delivery/smtp.h"
#include "agent/delivery/tlsstream.h"

/* Exported by libetpan but not declared in its headers (LIBNOTES.md). */
int	mailsmtp_send_command(mailsmtp *, char *command);
int	mailsmtp_read_response(mailsmtp *);
int	mailesmtp_parse_ehlo(mailsmtp *);

#define SMTP_CMD_MAX	1024	/* our own command buffer; addresses are <= 256 */
#define SMTP_STREAM_BUF	8192

/*
 * Nothing of it is made at start: the OpenSSL context costs about 0.3 MiB
 * and the CA store 0.4 MiB of an idle daemon's memory, and a daemon that
 * never verifies a certificate (policies none, may, encrypt) never needs
 * the store.
 */
struct smtp_tls {
	pthread_mutex_t		 mu;		/* ctx, ca */
	SSL_CTX			*ctx;		/* at the first STARTTLS */
	X509_STORE		*ca;		/* at the first certificate check */
	char			*ca_file;	/* NULL: the system store */
};

struct smtp_session {
	mailsmtp		*smtp;
	mailstream_low		*low;		/* owned by smtp->stream */
	struct smtp_params	 p;
	char			 ip[INET6_ADDRSTRLEN];
	int			 usable;
	int			 tls;
	const char		*tls_auth;
	char			 tls_version[32];
	char			 tls_cipher[96];
	int			 nmsgs;
	int			 smtputf8;	/* the EHLO offered SMTPUTF8 */
	/* the last transaction ended with the reply to the end of its data,
	 * which clears the server's state (RFC 5321, 4.1.1.4): no RSET due */
	int			 ended;
};

static enum smtp_status smtp_open_once(const struct smtp_params *,
		    const struct sockaddr *, socklen_t, int notls, int *tls_failed,
		    struct smtp_session **, char *, size_t);
static int	 smtp_cmd(struct smtp_session *, int timeout, const char *fmt, ...)
		    __attribute__((format(printf, 3, 4)));
static int	 smtp_ehlo(struct smtp_session *, char *, size_t);
static int	 smtp_ehlo_has(const char *, const char *);
static void	 smtp_report(struct smtp_session *, const char *rtype, int verified);
static const char *smtp_verify_rtype(long);
static enum smtp_status smtp_starttls(struct smtp_session *, int *tls_failed,
		    char *, size_t);
static enum smtp_status smtp_auth(struct smtp_session *, char *, size_t);
static enum smtp_status smtp_class(int code);
static void	 smtp_reply_text(struct smtp_session *, const char *what,
		    char *out, size_t len);
static void	 smtp_set_all(struct smtp_rcpt *, size_t, int only_unset,
		    enum smtp_status, int code, const char *reply);
static void	 smtp_kill(struct smtp_session *);
static int	 smtp_lost_rcpt(struct smtp_rcpt *, size_t, size_t, int);
static int	 smtp_rcpt_bad(struct smtp_rcpt *);
static int	 smtp_send_pipelined(struct smtp_session *, const char *, const char *,
		    int, struct smtp_rcpt *, size_t, const char *, size_t);
static int	 smtp_data(struct smtp_session *, int, struct smtp_rcpt *, size_t,
		    const char *, size_t);
static int	 smtp_is_ip_literal(const char *, char *out, size_t len);
static SSL_CTX	*smtp_tls_ctx(struct smtp_tls *, X509_STORE **ca, char *, size_t);

struct smtp_tls *
smtp_tls_new(const char *ca_file, char *err, size_t errlen)
{
	struct smtp_tls *t;
	FILE *fp;

	if ((t = calloc(1, sizeof(*t))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&t->mu, NULL);
	if (ca_file != NULL && *ca_file != '\0') {
		/* A wrong path shows at start; the contents are parsed later. */
		if ((fp = fopen(ca_file, "re")) == NULL) {
			snprintf(err, errlen, "cannot read tls_ca_file %s: %s", ca_file,
			    strerror(errno));
			smtp_tls_free(t);
			return NULL;
		}
		fclose(fp);
		if ((t->ca_file = strdup(ca_file)) == NULL) {
			snprintf(err, errlen, "out of memory");
			smtp_tls_free(t);
			return NULL;
		}
	}
	return t;
}

void
smtp_tls_free(struct smtp_tls *t)
{
	if (t == NULL)
		return;
	SSL_CTX_free(t->ctx);
	X509_STORE_free(t->ca);
	free(t->ca_file);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

/*
 * The context, made on first use; with ca != NULL also the CA store, read
 * on first use.  The store is a separate object handed to the sessions that
 * check a certificate (SSL_set1_verify_cert_store), complete before anyone
 * sees it: the context's own store stays empty, so no handshake in flight
 * reads a store being filled.  A failure is not kept: the next try reads
 * again (the file may have been fixed).
 */
static SSL_CTX *
smtp_tls_ctx(struct smtp_tls *t, X509_STORE **ca, char *err, size_t errlen)
{
	SSL_CTX *ctx = NULL;
	X509_STORE *st;

	if (t == NULL) {
		snprintf(err, errlen, "no TLS context");
		return NULL;
	}
	pthread_mutex_lock(&t->mu);
	if (t->ctx == NULL) {
		if ((t->ctx = SSL_CTX_new(TLS_client_method())) == NULL) {
			snprintf(err, errlen, "SSL_CTX_new failed");
			goto out;
		}
		SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
		if (SSL_CTX_dane_enable(t->ctx) <= 0) {
			snprintf(err, errlen, "SSL_CTX_dane_enable failed");
			SSL_CTX_free(t->ctx);
			t->ctx = NULL;
			goto out;
		}
		/* Verification results are checked after the handshake, per policy. */
		SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
	}
	if (ca != NULL && t->ca == NULL) {
		if ((st = X509_STORE_new()) == NULL) {
			snprintf(err, errlen, "X509_STORE_new failed");
			goto out;
		}
		if (t->ca_file != NULL ? X509_STORE_load_file(st, t->ca_file) != 1 :
		    X509_STORE_set_default_paths(st) != 1) {
			if (t->ca_file != NULL)
				snprintf(err, errlen, "cannot load tls_ca_file %s", t->ca_file);
			else
				snprintf(err, errlen, "cannot load the system CA store");
			X509_STORE_free(st);
			ERR_clear_error();
			goto out;
		}
		t->ca = st;
	}
	if (ca != NULL)
		*ca = t->ca;
	ctx = t->ctx;
out:
	pthread_mutex_unlock(&t->mu);
	return ctx;
}

int
smtp_tls_preload(struct smtp_tls *t, char *err, size_t errlen)
{
	X509_STORE *ca;

	return smtp_tls_ctx(t, &ca, err, errlen) != NULL ? 0 : -1;
}

int
smtp_addr_ok(const char *addr, int allow_empty)
{
	char err[128];

	if (addr == NULL)
		return 0;
	if (*addr == '\0')
		return allow_empty;
	/*
	 * The one validator the submission used: RFC 5321 lengths (so nothing
	 * reaches libetpan's fixed command buffer), no CR, LF, NUL or 8-bit
	 * outside a local part of well-formed UTF-8.
	 * A quoted local part ("john smith"@example.org) is valid SMTP, and
	 * a UTF-8 one (smtp_send sends it only with SMTPUTF8).
	 */
	return addr_validate_flags(addr, ADDR_ALLOW_UTF8, err, sizeof(err)) == 0;
}

static enum smtp_status
smtp_class(int code)
{
	switch (code / 100) {
	case 2:
		return SMTP_OK;
	case 5:
		return SMTP_PERM;
	default:		/* 4xx, 0 (timeout, lost), anything odd */
		return SMTP_TEMP;
	}
}

/* "CODE text" of the last reply, one line, printable; or what went wrong. */
static void
smtp_reply_text(struct smtp_session *s, const char *what, char *out, size_t len)
{
	const char *r;
	size_t o;
	int n;

	if (len == 0)
		return;
	if (s->smtp->response_code == 0) {
		snprintf(out, len, "%s: %s", what,
		    s->low != NULL && tlsstream_timed_out(s->low) ? "timeout" :
		    s->low != NULL && tlsstream_aborted(s->low) ? "shutting down" :
		    "connection lost");
		return;
	}
	n = snprintf(out, len, "%d ", s->smtp->response_code);
	o = n > 0 && (size_t)n < len ? (size_t)n : 0;
	r = s->smtp->response != NULL ? s->smtp->response : "";
	for (; *r != '\0' && o + 1 < len; r++) {
		unsigned char c = (unsigned char)*r;

		if (c == '\n') {
			if (r[1] == '\0')
				break;
			c = ' ';
		} else if (c < ' ' || c >= 0x7f)
			c = '?';
		out[o++] = (char)c;
	}
	out[o] = '\0';
}

/* Sends one raw command under the command timeout, returns the reply code. */
static int
smtp_cmd(struct smtp_session *s, int timeout, const char *fmt, ...)
{
	char buf[SMTP_CMD_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(buf) - 2)
		return -1;
	memcpy(buf + n, "\r\n", 3);
	tlsstream_set_timeout(s->low, timeout, 1);
	s->smtp->response_code = 0;
	if (mailsmtp_send_command(s->smtp, buf) == -1) {
		s->usable = 0;
		return 0;
	}
	n = mailsmtp_read_response(s->smtp);
	if (n == 0 || n == 421)
		s->usable = 0;
	return n;
}

static int
smtp_is_ip_literal(const char *name, char *out, size_t len)
{
	unsigned char buf[sizeof(struct in6_addr)];
	size_t n;

	if (name == NULL)
		return 0;
	n = strlen(name);
	if (n >= 2 && name[0] == '[' && name[n - 1] == ']') {
		name++;
		n -= 2;
	}
	if (n == 0 || n >= len)
		return 0;
	memcpy(out, name, n);
	out[n] = '\0';
	if (strncasecmp(out, "IPv6:", 5) == 0)
		memmove(out, out + 5, n - 4);
	return inet_pton(AF_INET, out, buf) == 1 || inet_pton(AF_INET6, out, buf) == 1;
}

/*
 * Whether an EHLO reply (libetpan's text: one line per reply line, codes
 * cut off, the first line the greeting) names the keyword.  libetpan knows
 * no SMTPUTF8 (LIBNOTES.md).
 */
static int
smtp_ehlo_has(const char *resp, const char *kw)
{
	size_t n = strlen(kw);
	const char *l;

	if (resp == NULL || (l = strchr(resp, '\n')) == NULL)
		return 0;
	for (l++; *l != '\0'; l += strcspn(l, "\n"), l += *l == '\n') {
		l += strspn(l, " ");
		if (strncasecmp(l, kw, n) == 0 && strchr(" \r\n", l[n]) != NULL)
			return 1;
	}
	return 0;
}

/* EHLO, or HELO when EHLO is refused.  0 ok, -1 with the reason in err. */
static int
smtp_ehlo(struct smtp_session *s, char *err, size_t errlen)
{
	int code;

	s->smtputf8 = 0;
	code = smtp_cmd(s, s->p.command_timeout, "EHLO %s", s->p.helo);
	if (code / 100 == 2) {
		s->smtputf8 = smtp_ehlo_has(s->smtp->response, "SMTPUTF8");
		/*
		 * libetpan 1.9.4's EHLO parser loops forever on a tab after a
		 * keyword ("AUTH PLAIN\t"): it knows only space as a separator.
		 * Give it spaces for every other control character.
		 */
		if (s->smtp->response != NULL) {
			char *p;
			for (p = s->smtp->response; *p != '\0'; p++)
				if ((unsigned char)*p < 0x20 && *p != '\n' && *p != '\r')
					*p = ' ';
		}
		mailesmtp_parse_ehlo(s->smtp);
		return 0;
	}
	if (code / 100 == 5) {
		code = smtp_cmd(s, s->p.command_timeout, "HELO %s", s->p.helo);
		if (code / 100 == 2) {
			s->smtp->esmtp = 0;
			s->smtp->auth = MAILSMTP_AUTH_NOT_CHECKED;
			return 0;
		}
	}
	smtp_reply_text(s, "EHLO", err, errlen);
	return -1;
}

/* Records what TLS achieved (first failure wins over a later success). */
static void
smtp_report(struct smtp_session *s, const char *rtype, int verified)
{
	struct smtp_tls_report *r = s->p.report;

	if (r == NULL)
		return;
	if (rtype != NULL && r->rtype == NULL)
		r->rtype = rtype;
	r->verified = verified;
}

/* RFC 8460 4.3 result type of a certificate verification error. */
static const char *
smtp_verify_rtype(long vr)
{
	switch (vr) {
	case X509_V_ERR_HOSTNAME_MISMATCH:
		return "certificate-host-mismatch";
	case X509_V_ERR_CERT_HAS_EXPIRED:
		return "certificate-expired";
	case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
	case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
	case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
		return "certificate-not-trusted";
	default:
		return "validation-failure";
	}
}

static enum smtp_status
smtp_starttls(struct smtp_session *s, int *tls_failed, char *err, size_t errlen)
{
	const struct tlsa_set *tlsa = s->p.tlsa;
	char lit[INET6_ADDRSTRLEN + 8], why[256];
	int code, required, check, dane = 0;
	X509_STORE *ca = NULL;
	SSL_CTX *ctx;
	size_t i;
	long vr;
	SSL *ssl;

	required = s->p.policy == TLS_ENCRYPT || s->p.policy == TLS_VERIFY ||
	    (s->p.policy == TLS_DANE && tlsa != NULL && tlsa->secure && tlsa->n > 0);
	if (!(s->smtp->esmtp & MAILSMTP_ESMTP_STARTTLS)) {
		smtp_report(s, "starttls-not-supported", 0);
		if (!required)
			return SMTP_OK;
		snprintf(err, errlen, "TLS required (policy %s) but the server "
		    "does not offer STARTTLS", s->p.policy == TLS_ENCRYPT ? "encrypt" :
		    s->p.policy == TLS_VERIFY ? "verify" : "dane");
		return SMTP_TEMP;
	}
	/* verify and dane check the chain: they need the CA store. */
	check = s->p.policy == TLS_VERIFY || (s->p.policy == TLS_DANE && required) ||
	    s->p.check_name;
	if ((ctx = smtp_tls_ctx(s->p.tls_ctx, check ? &ca : NULL, why,
	    sizeof(why))) == NULL) {
		snprintf(err, errlen, "TLS setup: %s", why);
		return SMTP_TEMP;
	}
	code = smtp_cmd(s, s->p.command_timeout, "STARTTLS");
	if (code != 220) {
		if (code != 0 && code != 421 && !required)
			return SMTP_OK;		/* may: carry on in plain */
		smtp_reply_text(s, "STARTTLS", why, sizeof(why));
		snprintf(err, errlen, "STARTTLS refused: %s", why);
		return SMTP_TEMP;
	}
	/* Nothing may be buffered past the 220 (RFC 3207 injection). */
	if (s->smtp->stream->read_buffer_len != 0) {
		snprintf(err, errlen, "data after the STARTTLS reply: refused");
		s->usable = 0;
		return SMTP_TEMP;
	}
	if ((ssl = SSL_new(ctx)) == NULL) {
		snprintf(err, errlen, "SSL_new failed");
		s->usable = 0;
		return SMTP_TEMP;
	}
	if (check && SSL_set1_verify_cert_store(ssl, ca) != 1) {
		SSL_free(ssl);
		snprintf(err, errlen, "SSL_set1_verify_cert_store failed");
		s->usable = 0;
		return SMTP_TEMP;
	}
	if (s->p.tls_name != NULL && *s->p.tls_name != '\0' &&
	    !smtp_is_ip_literal(s->p.tls_name, lit, sizeof(lit)))
		SSL_set_tlsext_host_name(ssl, s->p.tls_name);
	if (s->p.policy == TLS_DANE && required) {
		if (SSL_dane_enable(ssl, s->p.tls_name) <= 0) {
			SSL_free(ssl);
			snprintf(err, errlen, "SSL_dane_enable failed");
			s->usable = 0;
			return SMTP_TEMP;
		}
		/* RFC 7672: match the MX name, never a wildcard's parent. */
		SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
		for (i = 0; i < tlsa->n; i++)
			if (SSL_dane_tlsa_add(ssl, tlsa->rrs[i].usage,
			    tlsa->rrs[i].selector, tlsa->rrs[i].mtype,
			    tlsa->rrs[i].data, tlsa->rrs[i].len) > 0)
				dane++;
		/* All records unusable: TLS still mandatory, no authentication. */
	} else if (s->p.policy == TLS_VERIFY || s->p.check_name) {
		if (smtp_is_ip_literal(s->p.tls_name, lit, sizeof(lit)))
			X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), lit);
		else {
			SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			SSL_set1_host(ssl, s->p.tls_name);
		}
	}
	tlsstream_set_timeout(s->low, s->p.command_timeout, 1);
	if (tlsstream_start_tls(s->low, ssl, why, sizeof(why)) == -1) {
		smtp_report(s, "validation-failure", 0);
		s->usable = 0;
		*tls_failed = 1;
		snprintf(err, errlen, "%s", why);
		return SMTP_TEMP;
	}
	s->tls = 1;
	if (s->p.report != NULL)
		s->p.report->tls = 1;
	snprintf(s->tls_version, sizeof(s->tls_version), "%s", SSL_get_version(ssl));
	snprintf(s->tls_cipher, sizeof(s->tls_cipher), "%s", SSL_get_cipher_name(ssl));
	s->tls_auth = "unverified";
	if (s->p.policy == TLS_VERIFY || dane > 0 || s->p.check_name) {
		vr = SSL_get_verify_result(ssl);
		if (SSL_get0_peer_certificate(ssl) == NULL && vr == X509_V_OK)
			vr = X509_V_ERR_UNSPECIFIED;
		smtp_report(s, vr == X509_V_OK ? NULL : dane > 0 ? "tlsa-invalid" :
		    smtp_verify_rtype(vr), vr == X509_V_OK);
		if (vr == X509_V_OK)
			s->tls_auth = dane > 0 ? "dane" : "verified";
		else if (s->p.policy == TLS_VERIFY || dane > 0) {
			snprintf(err, errlen, "TLS %s failed for %s: %s",
			    dane > 0 ? "DANE authentication" : "certificate verification",
			    s->p.tls_name ? s->p.tls_name : "?",
			    X509_verify_cert_error_string(vr));
			smtp_cmd(s, 5, "QUIT");
			s->usable = 0;
			return SMTP_TEMP;
		}
		/* check_name alone: reported, not enforced */
	}
	if (smtp_ehlo(s, err, errlen) == -1)
		return smtp_class(s->smtp->response_code) == SMTP_PERM ?
		    SMTP_PERM : SMTP_TEMP;
	return SMTP_OK;
}

static enum smtp_status
smtp_auth(struct smtp_session *s, char *err, size_t errlen)
{
	unsigned char raw[3 * 256 + 3], b64[4 * (sizeof(raw) / 3) + 4];
	size_t ul, pl;
	int code;

	if (!s->tls) {
		snprintf(err, errlen, "refusing SMTP AUTH without TLS");
		return SMTP_TEMP;
	}
	ul = strlen(s->p.auth_user);
	pl = s->p.auth_pass ? strlen(s->p.auth_pass) : 0;
	if (ul > 255 || pl > 255) {
		snprintf(err, errlen, "SMTP AUTH credentials too long");
		return SMTP_TEMP;
	}
	if (s->smtp->auth & MAILSMTP_AUTH_PLAIN) {
		raw[0] = '\0';
		memcpy(raw + 1, s->p.auth_user, ul);
		raw[1 + ul] = '\0';
		memcpy(raw + 2 + ul, s->p.auth_pass, pl);
		EVP_EncodeBlock(b64, raw, (int)(2 + ul + pl));
		code = smtp_cmd(s, s->p.command_timeout, "AUTH PLAIN %s", b64);
		OPENSSL_cleanse(raw, sizeof(raw));
		OPENSSL_cleanse(b64, sizeof(b64));
	} else if (s->smtp->auth & MAILSMTP_AUTH_LOGIN) {
		code = smtp_cmd(s, s->p.command_timeout, "AUTH LOGIN");
		if (code == 334) {
			EVP_EncodeBlock(b64, (const unsigned char *)s->p.auth_user, (int)ul);
			code = smtp_cmd(s, s->p.command_timeout, "%s", b64);
		}
		if (code == 334) {
			EVP_EncodeBlock(b64, (const unsigned char *)s->p.auth_pass, (int)pl);
			code = smtp_cmd(s, s->p.command_timeout, "%s", b64);
			OPENSSL_cleanse(b64, sizeof(b64));
		}
	} else {
		snprintf(err, errlen, "the server offers neither AUTH PLAIN nor LOGIN");
		return SMTP_TEMP;
	}
	if (code / 100 == 2)
		return SMTP_OK;
	smtp_reply_text(s, "AUTH", err, errlen);
	/* A refused login is a configuration problem: keep the mail queued. */
	return SMTP_TEMP;
}

static enum smtp_status
smtp_open_once(const struct smtp_params *p, const struct sockaddr *sa,
    socklen_t salen, int notls, int *tls_failed, struct smtp_session **out,
    char *reply, size_t len)
{
	struct smtp_session *s;
	enum smtp_status st = SMTP_TEMP;
	mailstream *stream;
	int fd, r;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(reply, len, "out of memory");
		return SMTP_TEMP;
	}
	s->p = *p;
	if (notls)
		s->p.policy = TLS_NONE;
	s->tls_auth = "none";
	snprintf(s->tls_version, sizeof(s->tls_version), "none");
	snprintf(s->tls_cipher, sizeof(s->tls_cipher), "none");
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr,
		    s->ip, sizeof(s->ip));
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
		    s->ip, sizeof(s->ip));
	if ((s->smtp = mailsmtp_new(0, NULL)) == NULL) {
		snprintf(reply, len, "out of memory");
		goto fail;
	}
	if ((fd = tlsstream_connect(sa, salen, p->connect_timeout, p->abort,
	    reply, len)) == -1)
		goto fail;
	if ((s->low = tlsstream_low_new(fd)) == NULL) {
		snprintf(reply, len, "out of memory");
		goto fail;
	}
	tlsstream_set_abort(s->low, p->abort);
	if ((stream = mailstream_new(s->low, SMTP_STREAM_BUF)) == NULL) {
		mailstream_low_free(s->low);
		s->low = NULL;
		snprintf(reply, len, "out of memory");
		goto fail;
	}
	/* mailsmtp_connect would close the stream on a bad greeting: read it here. */
	s->smtp->stream = stream;
	tlsstream_set_timeout(s->low, p->greeting_timeout, 1);
	s->smtp->response_code = 0;
	r = mailsmtp_read_response(s->smtp);
	if (r != 220) {
		smtp_reply_text(s, "greeting", reply, len);
		/* A 5xx greeting refuses this host, not the mail: try the next. */
		goto fail;
	}
	s->usable = 1;
	if (smtp_ehlo(s, reply, len) == -1)
		goto fail;
	if (s->p.policy != TLS_NONE) {
		st = smtp_starttls(s, tls_failed, reply, len);
		if (st != SMTP_OK)
			goto fail;
	}
	if (p->auth_user != NULL && *p->auth_user != '\0') {
		st = smtp_auth(s, reply, len);
		if (st != SMTP_OK)
			goto fail;
	}
	/* Borrowed for the setup only: a parked session outlives them. */
	s->p.tls_name = NULL;
	s->p.tlsa = NULL;
	s->p.auth_user = NULL;
	s->p.auth_pass = NULL;
	s->p.report = NULL;
	*out = s;
	return SMTP_OK;
fail:
	smtp_kill(s);
	return st == SMTP_OK ? SMTP_TEMP : st;
}

enum smtp_status
smtp_open(const struct smtp_params *p, const struct sockaddr *sa,
    socklen_t salen, struct smtp_session **out, char *reply, size_t len)
{
	enum smtp_status st;
	int tls_failed = 0;

	if (p->report != NULL)
		memset(p->report, 0, sizeof(*p->report));
	st = smtp_open_once(p, sa, salen, 0, &tls_failed, out, reply, len);
	if (st != SMTP_OK && tls_failed && (p->policy == TLS_MAY ||
	    (p->policy == TLS_DANE && (p->tlsa == NULL || !p->tlsa->secure ||
	    p->tlsa->n == 0)))) {
		/* may: a broken TLS peer still gets its mail, in plain. */
		tls_failed = 0;
		st = smtp_open_once(p, sa, salen, 1, &tls_failed, out, reply, len);
		if (st == SMTP_OK)
			(*out)->tls_auth = "plain-fallback";
	}
	return st;
}

static void
smtp_set_all(struct smtp_rcpt *r, size_t n, int only_unset,
    enum smtp_status st, int code, const char *reply)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (only_unset && r[i].code == -1)
			continue;		/* already final (refused locally) */
		if (only_unset && r[i].code != 0 && smtp_class(r[i].code) != SMTP_OK)
			continue;		/* refused at RCPT */
		r[i].status = st;
		r[i].code = code;
		snprintf(r[i].reply, sizeof(r[i].reply), "%s", reply);
	}
}

/* A recipient no command may carry: failed here, never sent (code -1). */
static int
smtp_rcpt_bad(struct smtp_rcpt *r)
{
	if (smtp_addr_ok(r->addr, 0))
		return 0;
	r->status = SMTP_PERM;
	r->code = -1;
	snprintf(r->reply, sizeof(r->reply), "5.1.3 recipient "
	    "address exceeds RFC 5321 limits or is malformed");
	return 1;
}

/*
 * The connection was lost (or the server is closing) at recipient i before
 * DATA: recipients accepted so far got nothing either, so every one is
 * temporary.  The server's 421 text stays with the recipient it answered
 * (it says why: rate, reputation).  Returns 1 (retry).
 */
static int
smtp_lost_rcpt(struct smtp_rcpt *r, size_t n, size_t i, int code)
{
	size_t j;

	for (j = 0; j < i && j < n; j++)
		if (r[j].status == SMTP_OK) {
			r[j].status = SMTP_TEMP;
			r[j].code = 0;
			snprintf(r[j].reply, sizeof(r[j].reply), "connection lost before DATA");
		}
	for (j = i; j < n; j++) {
		r[j].status = SMTP_TEMP;
		r[j].code = 0;
		if (j == i && code != 0 && r[j].reply[0] != '\0')
			continue;
		snprintf(r[j].reply, sizeof(r[j].reply), "%s",
		    code == 0 ? "RCPT TO: connection lost or timeout" :
		    "RCPT TO: server closing");
	}
	return 1;
}

/*
 * RFC 2920 PIPELINING: MAIL FROM, every RCPT TO and DATA go out in one
 * write, then the replies are read in order; 2 round trips per message
 * instead of 3 + one per recipient.  Same outcomes as the lock-step path.
 */
static int
smtp_send_pipelined(struct smtp_session *s, const char *sender, const char *sizeparam,
    int eightbit, struct smtp_rcpt *r, size_t n, const char *data, size_t len)
{
	char reply[SMTP_REPLY_MAX], *cmds, *p;
	size_t i, cap, accepted = 0;
	int mcode, code, dcode;

	cap = 64 + strlen(sender) + strlen(sizeparam);
	for (i = 0; i < n; i++)
		cap += 16 + strlen(r[i].addr);
	if ((cmds = malloc(cap)) == NULL) {
		smtp_set_all(r, n, 0, SMTP_TEMP, 0, "out of memory");
		return 1;
	}
	p = cmds + snprintf(cmds, cap, "MAIL FROM:<%s>%s%s\r\n", sender, sizeparam,
	    eightbit ? " BODY=8BITMIME" : "");
	for (i = 0; i < n; i++) {
		if (smtp_rcpt_bad(&r[i]))
			continue;
		p += snprintf(p, cap - (size_t)(p - cmds), "RCPT TO:<%s>\r\n", r[i].addr);
	}
	snprintf(p, cap - (size_t)(p - cmds), "DATA\r\n");
	tlsstream_set_timeout(s->low, s->p.command_timeout, 1);
	s->smtp->response_code = 0;
	code = mailsmtp_send_command(s->smtp, cmds);
	free(cmds);
	if (code == -1) {
		s->usable = 0;
		smtp_set_all(r, n, 0, SMTP_TEMP, 0, "MAIL FROM: connection lost");
		return 1;
	}
	mcode = mailsmtp_read_response(s->smtp);
	if (mcode == 0 || mcode == 421)
		s->usable = 0;
	smtp_reply_text(s, "MAIL FROM", reply, sizeof(reply));
	if (mcode == 0)
		return smtp_lost_rcpt(r, n, 0, 0);
	for (i = 0; i < n; i++) {
		if (r[i].code == -1)
			continue;		/* not sent */
		code = s->usable ? mailsmtp_read_response(s->smtp) : 0;
		if (mcode / 100 != 2) {
			/* the sender was refused: its reply is every rcpt's */
			if (code == 0 || code == 421)
				s->usable = 0;
			r[i].code = mcode;
			r[i].status = smtp_class(mcode);
			snprintf(r[i].reply, sizeof(r[i].reply), "%s", reply);
			continue;
		}
		smtp_reply_text(s, "RCPT TO", r[i].reply, sizeof(r[i].reply));
		r[i].code = code;
		r[i].status = smtp_class(code);
		if (code == 0 || code == 421) {
			s->usable = 0;
			return smtp_lost_rcpt(r, n, i, code);
		}
		if (r[i].status == SMTP_OK)
			accepted++;
	}
	dcode = s->usable ? mailsmtp_read_response(s->smtp) : 0;
	if (dcode == 0 || dcode == 421)
		s->usable = 0;
	if (mcode / 100 != 2 || accepted == 0) {
		/* No message to send.  A server that said 354 anyway gets an
		 * empty one it will refuse or drop (RFC 2920, 3.1). */
		if (dcode == 354 && s->usable) {
			tlsstream_set_timeout(s->low, s->p.data_done_timeout, 1);
			if (mailsmtp_send_command(s->smtp, ".\r\n") == -1 ||
			    mailsmtp_read_response(s->smtp) == 0)
				s->usable = 0;
		}
		if (s->usable)
			smtp_reset(s);
		return mcode / 100 == 2 ? 0 : mcode / 100 != 5;
	}
	return smtp_data(s, dcode, r, n, data, len);
}

int
smtp_send(struct smtp_session *s, const char *sender, struct smtp_rcpt *r,
    size_t n, const char *data, size_t len, int flags)
{
	char reply[SMTP_REPLY_MAX], sizeparam[48] = "";
	size_t i, accepted = 0;
	int code, eightbit = (flags & SMTP_SEND_8BIT) != 0;
	int utf8 = (flags & SMTP_SEND_SMTPUTF8) != 0;

	for (i = 0; i < n; i++) {
		r[i].status = SMTP_TEMP;
		r[i].code = 0;
		r[i].reply[0] = '\0';
	}
	if (!s->usable) {
		smtp_set_all(r, n, 0, SMTP_TEMP, 0, "session not usable");
		return 1;
	}
	s->ended = 0;
	if (!smtp_addr_ok(sender, 1)) {
		smtp_set_all(r, n, 0, SMTP_PERM, 0,
		    "5.1.7 sender address exceeds RFC 5321 limits or is malformed");
		return 0;
	}
	utf8 = utf8 || addr_is_utf8(sender);
	for (i = 0; i < n && !utf8; i++)
		utf8 = r[i].addr != NULL && addr_is_utf8(r[i].addr);
	if (utf8 && !s->smtputf8) {
		/* RFC 6531 3.5: not to be downgraded; the address is the mailbox */
		smtp_set_all(r, n, 0, SMTP_PERM, 0, "5.6.7 the receiving server "
		    "does not support SMTPUTF8, which this address needs");
		return 0;
	}
	if (eightbit && !(s->smtp->esmtp & MAILSMTP_ESMTP_8BITMIME)) {
		smtp_set_all(r, n, 0, SMTP_PERM, 0, "5.6.3 message has 8-bit "
		    "content and the server does not offer 8BITMIME");
		return 0;
	}
	if ((s->smtp->esmtp & MAILSMTP_ESMTP_SIZE) && s->smtp->smtp_max_msg_size > 0 &&
	    len > s->smtp->smtp_max_msg_size) {
		snprintf(reply, sizeof(reply), "5.3.4 message of %zu bytes exceeds "
		    "the server's SIZE limit of %zu", len, s->smtp->smtp_max_msg_size);
		smtp_set_all(r, n, 0, SMTP_PERM, 0, reply);
		return 0;
	}
	if (s->smtp->esmtp & MAILSMTP_ESMTP_SIZE)
		snprintf(sizeparam, sizeof(sizeparam), " SIZE=%zu", len);
	if (utf8)	/* fits: 6 + 20 + 9 < 48 */
		snprintf(sizeparam + strlen(sizeparam), sizeof(sizeparam) -
		    strlen(sizeparam), " SMTPUTF8");
	if (s->smtp->esmtp & MAILSMTP_ESMTP_PIPELINING)
		return smtp_send_pipelined(s, sender, sizeparam, eightbit, r, n, data, len);
	code = smtp_cmd(s, s->p.command_timeout, "MAIL FROM:<%s>%s%s", sender,
	    sizeparam, eightbit ? " BODY=8BITMIME" : "");
	if (code / 100 != 2) {
		smtp_reply_text(s, "MAIL FROM", reply, sizeof(reply));
		smtp_set_all(r, n, 0, smtp_class(code), code, reply);
		if (code / 100 == 5 && s->usable)
			smtp_reset(s);
		return code / 100 != 5;
	}
	for (i = 0; i < n; i++) {
		if (smtp_rcpt_bad(&r[i]))
			continue;
		code = smtp_cmd(s, s->p.command_timeout, "RCPT TO:<%s>", r[i].addr);
		smtp_reply_text(s, "RCPT TO", r[i].reply, sizeof(r[i].reply));
		r[i].code = code;
		r[i].status = smtp_class(code);
		if (code == 0 || !s->usable)
			return smtp_lost_rcpt(r, n, i, code);
		if (r[i].status == SMTP_OK)
			accepted++;
	}
	if (accepted == 0) {
		smtp_reset(s);
		return 0;
	}
	code = smtp_cmd(s, s->p.command_timeout, "DATA");
	return smtp_data(s, code, r, n, data, len);
}

/*
 * After the reply to DATA (code): the message, if 354, and the final reply
 * for every recipient still accepted.  Returns smtp_send's value.
 */
static int
smtp_data(struct smtp_session *s, int code, struct smtp_rcpt *r, size_t n,
    const char *data, size_t len)
{
	char reply[SMTP_REPLY_MAX];

	if (code != 354) {
		smtp_reply_text(s, "DATA", reply, sizeof(reply));
		smtp_set_all(r, n, 1, code / 100 == 2 ? SMTP_TEMP : smtp_class(code),
		    code, reply);
		if (s->usable)
			smtp_reset(s);
		return code == 0 || code == 421;
	}
	/* libetpan appends CRLF.CRLF itself: drop our final line end. */
	if (len >= 2 && data[len - 2] == '\r' && data[len - 1] == '\n')
		len -= 2;
	else if (len >= 1 && data[len - 1] == '\n')
		len -= 1;
	tlsstream_set_timeout(s->low, s->p.data_timeout, 0);
	s->smtp->response_code = 0;
	if (mailstream_send_data(s->smtp->stream, data, len, 0, NULL) == -1 ||
	    mailstream_flush(s->smtp->stream) == -1) {
		s->usable = 0;
		smtp_set_all(r, n, 1, SMTP_TEMP, 0, tlsstream_timed_out(s->low) ?
		    "DATA: timeout sending the message" : tlsstream_aborted(s->low) ?
		    "DATA: shutting down" : "DATA: connection lost");
		return 0;
	}
	tlsstream_set_timeout(s->low, s->p.data_done_timeout, 1);
	code = mailsmtp_read_response(s->smtp);
	if (code == 0 || code == 421)
		s->usable = 0;
	else
		s->ended = 1;
	smtp_reply_text(s, "end of DATA", reply, sizeof(reply));
	smtp_set_all(r, n, 1, smtp_class(code), code, reply);
	if (code / 100 == 2)
		s->nmsgs++;
	return 0;
}

int
smtp_reset(struct smtp_session *s)
{
	if (!s->usable)
		return -1;
	if (s->ended)
		return 0;	/* a round trip saved per message on a reused session */
	if (smtp_cmd(s, s->p.command_timeout, "RSET") / 100 != 2) {
		s->usable = 0;
		return -1;
	}
	return 0;
}

int
smtp_usable(const struct smtp_session *s)
{
	return s->usable;
}

/* Frees without QUIT. */
static void
smtp_kill(struct smtp_session *s)
{
	if (s == NULL)
		return;
	if (s->smtp != NULL) {
		if (s->smtp->stream != NULL) {
			mailstream_close(s->smtp->stream);
			s->smtp->stream = NULL;
		}
		mailsmtp_free(s->smtp);
	}
	free(s);
}

void
smtp_close(struct smtp_session *s)
{
	if (s == NULL)
		return;
	if (s->usable && s->smtp->stream != NULL &&
	    !(s->p.abort != NULL && *s->p.abort)) {
		int t = s->p.command_timeout < 10 ? s->p.command_timeout : 10;

		smtp_cmd(s, t, "QUIT");
	}
	smtp_kill(s);
}

const char *
smtp_peer_ip(const struct smtp_session *s)
{
	return s->ip;
}

const char *
smtp_tls_version(const struct smtp_session *s)
{
	return s->tls_version;
}

const char *
smtp_tls_cipher(const struct smtp_session *s)
{
	return s->tls_cipher;
}

const char *
smtp_tls_auth(const struct smtp_session *s)
{
	return s->tls_auth;
}

int
smtp_messages(const struct smtp_session *s)
{
	return s->nmsgs;
}
