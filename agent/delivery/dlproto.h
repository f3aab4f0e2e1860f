/*
 * dlproto.h - the messages between otpmaild and its delivery process
 * (privsep.c): a frame is a 4-byte big-endian length and that many bytes.
 * The main process sends a job (one signed message, its open recipients
 * and the MTA-STS policy of each MX-routed domain); the delivery process
 * answers with one outcome per recipient and the TLS-RPT counts of the
 * attempt.  Both sides treat what they read as untrusted: every length is
 * bounded and checked before use.
 */
#ifndef OTPMAIL_DLPROTO_H
#define OTPMAIL_DLPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "agent/delivery/mtasts.h"

#define DLP_FRAME_MAX		(256u * 1024 * 1024)	/* a job with its message */
#define DLP_RESULT_MAX		(4u * 1024 * 1024)	/* a result frame */
#define DLP_STR_MAX		4096		/* any string field */
#define DLP_RCPT_MAX		10000		/* recipients of a job */
#define DLP_TLS_MAX		256		/* TLS-RPT records of a result */

enum dlp_state { DLP_DELIVERED = 1, DLP_FAILED = 2, DLP_DEFERRED = 3 };

struct dlp_domain {
	char			*name;
	int			 sts_on;
	struct mtasts_policy	 sts;
};

struct dlp_job {
	char			*id;
	char			*sender;
	uint32_t		 flags;
	uint32_t		 klass;
	int64_t			 created;
	size_t			 nrcpt;
	char			**rcpts;
	uint32_t		*idx;		/* index in the queue envelope */
	size_t			 ndom;
	struct dlp_domain	*doms;
	const char		*data;		/* points into the frame */
	size_t			 len;
};

struct dlp_outcome {
	uint32_t		 idx;
	uint8_t			 state;		/* enum dlp_state */
	char			*reply;
	char			*mx, *ip, *tls;	/* the hop that took it ("" = none) */
};

struct dlp_tls {
	char			*domain;
	uint8_t			 ptype;		/* enum tlsrpt_ptype */
	uint8_t			 sts;		/* under the job's MTA-STS policy */
	char			*mx, *ip, *rtype;	/* "" = NULL */
};

struct dlp_result {
	size_t			 n;
	struct dlp_outcome	*o;
	size_t			 ntls;
	struct dlp_tls		*tls;
};

/* A growing frame; err is set once anything failed (then it is dropped). */
struct dlp_buf {
	char			*p;
	size_t			 len, cap;
	int			 err;
};

void	 dlp_buf_init(struct dlp_buf *);
void	 dlp_buf_free(struct dlp_buf *);

int	 dlp_job_encode(struct dlp_buf *, const struct dlp_job *);
/* Parses a job frame; its data points into buf.  0 or -1. */
int	 dlp_job_decode(const char *buf, size_t len, struct dlp_job *);
void	 dlp_job_free(struct dlp_job *);
/* The MTA-STS policy sent for domain: 1 (out filled) or 0. */
int	 dlp_job_sts(const struct dlp_job *, const char *domain, struct mtasts_policy *out);

int	 dlp_result_add(struct dlp_result *, uint32_t idx, int state, const char *reply,
	    const char *mx, const char *ip, const char *tls);
int	 dlp_result_add_tls(struct dlp_result *, const char *domain, int ptype, int sts,
	    const char *mx, const char *ip, const char *rtype);
int	 dlp_result_encode(struct dlp_buf *, const struct dlp_result *);
/* Parses a result frame: 0 or -1.  Index and state are checked by the caller
 * against its job (dlp_result_check). */
int	 dlp_result_decode(const char *buf, size_t len, struct dlp_result *);
/* Every outcome names a recipient of the job, once, with a known state. */
int	 dlp_result_check(const struct dlp_result *, const struct dlp_job *);
void	 dlp_result_free(struct dlp_result *);

/*
 * The fetch process (fetch.h): requests and replies take turns on a
 * connection, one reply per request, which carries the request's id (the
 * main process numbers its requests, so a reply that is not the answer to
 * the request asked is refused).  A request asks for TXT records (name),
 * an MTA-STS policy (the domain: the process looks up, fetches and parses
 * it), an HTTPS POST (url, header lines, body: the webhook, signed by the
 * main process), the MX hosts of a domain or the addresses of one host
 * (with their addresses and DNSSEC flag), the PTR names of an address (its numeric form) or the
 * TLSA records of a host at port.  The reply carries the status (DNS:
 * enum mx_status; STS: 0 or -1; POST: the HTTP status, 0 when none came),
 * a reason, the records, hosts, TLSA count or the parsed policy -- never
 * the body a remote host sent.
 */
#define DLP_FETCH_REQ_MAX	(2u * 1024 * 1024)
#define DLP_FETCH_REP_MAX	(256u * 1024)
#define DLP_FETCH_TXT_MAX	64	/* TXT strings (PTR names) of a reply */
#define DLP_FETCH_HDR_MAX	16	/* header lines of a POST */
#define DLP_FETCH_HOST_MAX	16	/* hosts of an MX reply (mx.c keeps 16) */
#define DLP_FETCH_ADDR_MAX	16	/* addresses of a host (8 per family) */
#define DLP_FETCH_NAME_MAX	255	/* a host name or address, as text */
#define DLP_FETCH_TLSA_MAX	32	/* TLSA records counted (mx.c keeps 32) */

enum dlp_fetch_kind { DLP_FETCH_TXT = 1, DLP_FETCH_STS = 2, DLP_FETCH_POST = 3,
	DLP_FETCH_MX = 4, DLP_FETCH_HOST = 5, DLP_FETCH_PTR = 6, DLP_FETCH_TLSA = 7 };

struct dlp_freq {
	uint32_t		 kind;
	char			*name;		/* TXT/PTR/MX/HOST/TLSA name, STS domain, POST url */
	size_t			 nhdr;
	char			**hdr;
	const char		*body;		/* points into the frame */
	size_t			 len;
	uint32_t		 port;		/* TLSA: _port._tcp */
	uint32_t		 id;		/* echoed in the reply */
};

struct dlp_fhost {
	char			*name;
	uint32_t		 pref;
	uint32_t		 secure;	/* found by a DNSSEC-validated lookup */
	size_t			 naddr;
	char			**addr;		/* numeric addresses */
};

struct dlp_frep {
	uint32_t		 kind;
	int32_t			 status;
	char			*why;		/* "" when none */
	char			*rtype;		/* STS failure: RFC 8460 result type */
	size_t			 ntxt;
	char			**txt;
	struct mtasts_policy	 pol;		/* STS, status 0: mode, max_age, mx */
	uint32_t		 implicit;	/* MX, status 0: no MX, the domain itself */
	size_t			 nhost;
	struct dlp_fhost	*host;		/* MX and HOST, status 0 */
	uint32_t		 ntlsa;		/* TLSA, status 0: records */
	uint32_t		 secure;	/* TLSA, status 0: validated */
	uint32_t		 id;		/* the request's */
};

int	 dlp_freq_encode(struct dlp_buf *, const struct dlp_freq *);
/* Parses a request frame; its body points into buf.  0 or -1. */
int	 dlp_freq_decode(const char *buf, size_t len, struct dlp_freq *);
void	 dlp_freq_free(struct dlp_freq *);
int	 dlp_frep_encode(struct dlp_buf *, const struct dlp_frep *);
/* Parses a reply frame (bounds only; the caller checks what it means). */
int	 dlp_frep_decode(const char *buf, size_t len, struct dlp_frep *);
void	 dlp_frep_free(struct dlp_frep *);
void	 dlp_fhost_free(struct dlp_fhost *, size_t n);

/* Frame I/O on a blocking socket (EINTR retried).  0, or -1 (EOF: errno 0).
 * The sides take turns, one frame at a time: dlp_recv reads a small frame
 * with its header in one read, and bytes beyond the frame fail (EPROTO). */
int	 dlp_send(int fd, const struct dlp_buf *);
int	 dlp_recv(int fd, size_t max, char **buf, size_t *len);
/*
 * A batch (delivery jobs and their results): n frames in one sendmsg, read
 * back through a buffer that may hold several frames (dlp_rbuf).
 */
#define DLP_SENDV_MAX		16
#define DLP_RD_CHUNK		(64u * 1024)
struct dlp_rbuf {
	char			*p;
	size_t			 off, len;
};
int	 dlp_sendv(int fd, const struct dlp_buf *, size_t n);
void	 dlp_rbuf_init(struct dlp_rbuf *);
void	 dlp_rbuf_free(struct dlp_rbuf *);
/* 1 when a whole frame is held (the next dlp_recv_rbuf needs no read). */
int	 dlp_rbuf_ready(const struct dlp_rbuf *);
int	 dlp_recv_rbuf(int fd, struct dlp_rbuf *, size_t max, char **buf, size_t *len);

#endif
