/*
 * fetch.c - the fetch process (see fetch.h).  Started like the delivery
 * process (privsep.c: fork, exec of our own binary with FETCH_ARG), it
 * holds one control socket.  A connection to it is a socket pair whose
 * one end the main process passes over the control socket (SCM_RIGHTS);
 * a thread of the child answers the requests on it, one at a time.  Up
 * to FETCH_POOL_MAX connections stay open between requests and are taken
 * by the next ones (no socket pair, passed descriptor or new thread per
 * request); a request that finds them all busy gets a connection of its
 * own, closed after its answer, so requests of delivery workers, webhook
 * threads, request workers and the main loop run side by side, bounded by
 * FETCH_INFLIGHT_MAX.  A connection goes back to the pool only after its
 * request was answered with that request's id: one whose request failed
 * or timed out is closed, and the process with it (restarted at the next
 * request).  A dead process is noticed by its end of the control socket
 * (closed), not by asking the spawner at each request.
 *
 * The child cannot be chrooted: libcurl (GnuTLS) reads its CA file at each
 * connection by path, and CURLOPT_CAINFO_BLOB is not there with GnuTLS.
 * So it runs as delivery_user (when root), with no new privileges, the
 * delivery seccomp filter, and a Landlock ruleset that lets it read the CA
 * files and the resolver's files (webhook hosts are resolved by libcurl,
 * as the admin's system resolves them; MTA-STS hosts by our libunbound
 * resolver, loaded before the lock-in) and nothing else.
 */
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>

#include <curl/curl.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/dlproto.h"
#include "agent/delivery/fetch.h"
#include "agent/delivery/privsep.h"

#define FETCH_INFLIGHT_MAX	32	/* requests at once */
#define FETCH_POOL_MAX		8	/* connections kept open between requests */
#define FETCH_SPAWN_PAUSE	1	/* seconds between two starts */
#define FETCH_DNS_SLACK		15	/* seconds over the HTTP timeouts */
#define FETCH_REPLY_MAX		4096	/* bytes of a webhook receiver's answer read */

/* room for one passed descriptor, aligned for struct cmsghdr */
union fetch_cmsg {
	struct cmsghdr	 h;
	char		 buf[CMSG_SPACE(sizeof(int))];
};

static struct {
	pthread_mutex_t	 mu;
	pthread_cond_t	 cv;
	int		 ready;		/* fetch_start ran */
	char		 exe[PATH_MAX];
	char		*config_path;
	struct config	 logcfg;	/* the log flags the child gets */
	int		 timeout;	/* seconds a request may take */
	pid_t		 pid;
	int		 ctl;
	unsigned	 gen;
	time_t		 last_spawn;
	unsigned long	 restarts;
	int		 inflight;
	int		 idle[FETCH_POOL_MAX];	/* open connections no request holds */
	int		 nidle;
	int		 nconn;		/* open to this process, idle or held (the pool) */
} fetch = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, "", NULL,
	    { 0 }, 0, -1, -1, 0, 0, 0, 0, { 0 }, 0, 0 };

/* the last request id (each request has its own; its reply must carry it) */
static uint32_t			 fetch_seq;

/* the calling thread's last request got no answer from the process */
static __thread int		 fetch_down;

/* the child's: the resolver of MTA-STS and TLS-RPT (5 s a round), and the
 * shared one of the checks an admin or an app waits for (3 s) */
static const struct config	*fetch_cfg;
static struct mx_resolver	*fetch_mx, *fetch_chk;
/* the test hooks FETCH_LATE_ENV: the name whose answers are sent twice;
 * FETCH_HANG_ENV: the name whose requests are never answered */
static const char		*fetch_late, *fetch_hang;

static int	 fetch_spawn_locked(char *err, size_t errlen);
static void	 fetch_lost_locked(const char *why);
static void	 fetch_pool_close_locked(void);
static int	 fetch_ctl_closed(void);
static int	 fetch_conn_locked(int *fd, int *standing, char *why, size_t whylen);
static void	 fetch_conn_put_locked(int fd, int standing, unsigned gen, int answered);
static int	 fetch_call(const struct dlp_freq *, struct dlp_frep *, char *why,
		    size_t whylen);
static void	 fetch_clean(char *s);
static int	 fetch_dns(uint32_t kind, const char *name, int port, struct dlp_frep *,
		    char *why, size_t whylen);
static enum mx_status fetch_records(uint32_t kind, const char *name, char ***out,
		    char *why, size_t whylen);
static struct mx_list *fetch_list(const struct dlp_frep *, const char *asked, int port);
static enum mx_status fetch_hosts(uint32_t kind, const char *name, int port,
		    struct mx_list **out, char *why, size_t whylen);
static void	 fetch_child_dns(const struct dlp_freq *, struct dlp_frep *, char ***v,
		    char *why, size_t whylen);
static int	 fetch_child_hosts(const struct mx_list *, struct dlp_frep *);
static size_t	 fetch_discard(char *, size_t, size_t, void *);
static void	 fetch_child_post(const struct dlp_freq *, struct dlp_frep *, char *why,
		    size_t whylen);
static int	 fetch_child_serve(int fd, const char *buf, size_t len);
static void	*fetch_child_thread(void *);

int
fetch_start(struct otpmaild *d, char *err, size_t errlen)
{
	const struct config *cfg = d->cfg;
	const char *s;
	char *end;
	ssize_t l;
	long v;
	int rc = 0, slack;

	pthread_mutex_lock(&fetch.mu);
	if ((l = readlink("/proc/self/exe", fetch.exe, sizeof(fetch.exe) - 1)) <= 0) {
		snprintf(err, errlen, "fetch process: readlink /proc/self/exe: %s",
		    strerror(errno));
		pthread_mutex_unlock(&fetch.mu);
		return -1;
	}
	fetch.exe[l] = '\0';
	free(fetch.config_path);
	fetch.config_path = d->config_path != NULL ? strdup(d->config_path) : NULL;
	fetch.logcfg.log_stderr = cfg->log_stderr;
	fetch.logcfg.log_syslog = cfg->log_syslog;
	/* the test hook: 0-60 seconds, else (unset, garbage) the default */
	slack = FETCH_DNS_SLACK;
	if ((s = getenv(FETCH_SLACK_ENV)) != NULL && *s != '\0') {
		v = strtol(s, &end, 10);
		if (*end == '\0' && v >= 0 && v <= 60)
			slack = (int)v;
	}
	fetch.timeout = (cfg->mta_sts_fetch_timeout > cfg->webhook_timeout ?
	    cfg->mta_sts_fetch_timeout : cfg->webhook_timeout) + slack;
	fetch.ready = 1;
	/* outside the sandbox every DNS lookup of the main process goes there
	 * (the submission check too); in it, only webhooks and admin checks */
	if (!cfg->sandbox || cfg->nwebhooks > 0)
		rc = fetch_spawn_locked(err, errlen);
	pthread_mutex_unlock(&fetch.mu);
	return rc;
}

void
fetch_stop(void)
{
	int st;

	pthread_mutex_lock(&fetch.mu);
	fetch.ready = 0;
	fetch_pool_close_locked();
	if (fetch.ctl != -1)
		close(fetch.ctl);	/* the child ends at EOF */
	fetch.ctl = -1;
	if (fetch.pid > 0) {
		(void)privsep_kill(fetch.pid);
		(void)privsep_wait(fetch.pid, &st, 0);
	}
	fetch.pid = -1;
	free(fetch.config_path);
	fetch.config_path = NULL;
	pthread_mutex_unlock(&fetch.mu);
}

pid_t
fetch_pid(void)
{
	pid_t p;

	pthread_mutex_lock(&fetch.mu);
	p = fetch.pid;
	pthread_mutex_unlock(&fetch.mu);
	return p;
}

/* With fetch.mu held. */
static int
fetch_spawn_locked(char *err, size_t errlen)
{
	struct timeval tv = { 5, 0 };
	int fd;
	pid_t pid;

	fetch.last_spawn = time(NULL);
	if ((pid = privsep_start_fetch(fetch.exe, fetch.config_path, &fetch.logcfg,
	    &fd, err, errlen)) == -1)
		return -1;
	/* a child that stops reading must not hold the lock for long */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	fetch.pid = pid;
	fetch.ctl = fd;
	fetch.gen++;
	return 0;
}

/* The connections of the pool, closed (their process is gone or going);
 * those that requests hold are closed by them (fetch.gen has moved on). */
static void
fetch_pool_close_locked(void)
{
	while (fetch.nidle > 0)
		close(fetch.idle[--fetch.nidle]);
	fetch.nconn = 0;
	fetch.gen++;
}

/* The process failed (gone, hung, or not speaking the protocol): end it. */
static void
fetch_lost_locked(const char *why)
{
	char how[64];
	pid_t lost = fetch.pid;
	int st = 0;

	if (lost <= 0)
		return;
	fetch_pool_close_locked();
	(void)privsep_kill(lost);
	(void)privsep_wait(lost, &st, 0);
	if (WIFSIGNALED(st))
		snprintf(how, sizeof(how), "signal=%d", WTERMSIG(st));
	else
		snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(st));
	if (fetch.ctl != -1)
		close(fetch.ctl);
	fetch.ctl = -1;
	fetch.pid = -1;
	fetch.restarts++;
	log_msg(LOG_ERR, "event=fetch_process_lost pid=%ld %s detail=\"%s\" restarts=%lu",
	    (long)lost, how, why, fetch.restarts);
}

/* Has the process's end of the control socket gone (the process with it)?
 * It never writes there, so readable means closed. */
static int
fetch_ctl_closed(void)
{
	struct pollfd p = { fetch.ctl, POLLIN, 0 };

	return fetch.ctl == -1 || (poll(&p, 1, 0) == 1 && p.revents != 0);
}

/*
 * A connection for one request (fetch.mu held, the process running): an
 * idle one of the pool, else a new one passed to the process -- in the
 * pool while it has fewer than FETCH_POOL_MAX, else *standing 0: used once
 * (a slow MTA-STS fetch never makes the other requests wait).  0, or -1
 * with why.
 */
static int
fetch_conn_locked(int *fd, int *standing, char *why, size_t whylen)
{
	char one = 'q';
	union fetch_cmsg cbuf;
	struct iovec iov = { &one, 1 };
	struct msghdr mh;
	struct cmsghdr *cm;
	struct timeval tv = { fetch.timeout, 0 };
	int sp[2], e;

	if (fetch.nidle > 0) {
		*fd = fetch.idle[--fetch.nidle];
		*standing = 1;
		return 0;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == -1) {
		snprintf(why, whylen, "socketpair: %s", strerror(errno));
		return -1;
	}
	memset(&mh, 0, sizeof(mh));
	memset(&cbuf, 0, sizeof(cbuf));
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf.buf;
	mh.msg_controllen = sizeof(cbuf.buf);
	cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &sp[1], sizeof(int));
	if (sendmsg(fetch.ctl, &mh, MSG_NOSIGNAL) != 1) {
		e = errno;
		close(sp[0]);
		close(sp[1]);
		snprintf(why, whylen, "the fetch process is gone");
		fetch_lost_locked(strerror(e));
		return -1;
	}
	close(sp[1]);
	/* the per-request timeouts: each read and write of a request */
	(void)setsockopt(sp[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(sp[0], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	*fd = sp[0];
	*standing = fetch.nconn < FETCH_POOL_MAX;
	if (*standing)
		fetch.nconn++;
	log_msg(LOG_DEBUG, "event=fetch_connection_opened pool=%s open=%d pid=%ld",
	    *standing ? "yes" : "no", fetch.nconn, (long)fetch.pid);
	return 0;
}

/* A connection after its request (fetch.mu held): back to the pool when
 * answered, else closed -- the failed request's reply may still come. */
static void
fetch_conn_put_locked(int fd, int standing, unsigned gen, int answered)
{
	if (standing && gen == fetch.gen) {
		if (answered && fetch.nidle < FETCH_POOL_MAX) {
			fetch.idle[fetch.nidle++] = fd;
			return;
		}
		fetch.nconn--;
	}
	close(fd);
}

/* Sends one request to the process, reads its reply.  0, or -1 with why. */
static int
fetch_call(const struct dlp_freq *q0, struct dlp_frep *f, char *why, size_t whylen)
{
	struct dlp_freq q = *q0;
	char *buf = NULL, err[256];
	struct dlp_buf b;
	size_t blen;
	unsigned gen;
	int fd = -1, standing = 0, rc = -1;

	memset(f, 0, sizeof(*f));
	fetch_down = 0;
	q.id = __atomic_add_fetch(&fetch_seq, 1, __ATOMIC_RELAXED);
	dlp_buf_init(&b);
	if (dlp_freq_encode(&b, &q) == -1) {
		snprintf(why, whylen, "request too large for the fetch process");
		dlp_buf_free(&b);
		return -1;
	}
	pthread_mutex_lock(&fetch.mu);
	while (fetch.inflight >= FETCH_INFLIGHT_MAX)
		pthread_cond_wait(&fetch.cv, &fetch.mu);
	fetch.inflight++;
	if (!fetch.ready) {
		snprintf(why, whylen, "no fetch process");
		goto unlock;
	}
	/* it died since the last request (kill -9, a crash): noticed now */
	if (fetch.pid > 0 && fetch_ctl_closed())
		fetch_lost_locked("ended");
	if (fetch.pid <= 0) {
		if (time(NULL) - fetch.last_spawn < FETCH_SPAWN_PAUSE) {
			snprintf(why, whylen, "the fetch process is restarting");
			goto unlock;
		}
		if (fetch_spawn_locked(err, sizeof(err)) == -1) {
			log_msg(LOG_ERR, "event=fetch_process_failed detail=\"%s\"", err);
			snprintf(why, whylen, "the fetch process cannot start");
			goto unlock;
		}
	}
	gen = fetch.gen;
	if (fetch_conn_locked(&fd, &standing, why, whylen) == -1)
		goto unlock;
	pthread_mutex_unlock(&fetch.mu);
	if (dlp_send(fd, &b) == -1 || dlp_recv(fd, DLP_FETCH_REP_MAX, &buf, &blen) == -1) {
		/* EPROTO: bytes past the reply in one read -- a second reply
		 * (a late one) came before this one was read */
		snprintf(err, sizeof(err), "%s", errno == 0 ? "connection closed" :
		    errno == EAGAIN ? "no answer in time" : errno == EPROTO ?
		    "more than one reply" : strerror(errno));
		snprintf(why, whylen, "the fetch process failed (%s)", err);
	} else if (dlp_frep_decode(buf, blen, f) == -1 || f->kind != q.kind) {
		dlp_frep_free(f);
		snprintf(err, sizeof(err), "malformed reply");
		snprintf(why, whylen, "the fetch process failed (malformed reply)");
	} else if (f->id != q.id) {
		dlp_frep_free(f);
		snprintf(err, sizeof(err), "a reply to another request");
		snprintf(why, whylen, "the fetch process failed (%s)", err);
	} else {
		fetch_clean(f->why);
		fetch_clean(f->rtype);
		rc = 0;
	}
	pthread_mutex_lock(&fetch.mu);
	fetch_conn_put_locked(fd, standing, gen, rc == 0);
	if (rc == -1 && gen == fetch.gen)
		fetch_lost_locked(err);
unlock:
	fetch_down = rc == -1;
	fetch.inflight--;
	pthread_cond_signal(&fetch.cv);
	pthread_mutex_unlock(&fetch.mu);
	free(buf);
	dlp_buf_free(&b);
	return rc;
}

/* What goes into our logs and JSON from the other side: printable, no quotes. */
static void
fetch_clean(char *s)
{
	for (; s != NULL && *s != '\0'; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			*s = '?';
}

int
fetch_failed(void)
{
	return fetch_down;
}

/* One DNS request: 0 with the reply (status: an enum mx_status), or -1. */
static int
fetch_dns(uint32_t kind, const char *name, int port, struct dlp_frep *f, char *why,
    size_t whylen)
{
	struct dlp_freq q = { kind, (char *)name, 0, NULL, NULL, 0, (uint32_t)port, 0 };

	why[0] = '\0';
	if (fetch_call(&q, f, why, whylen) == -1)
		return -1;
	if (f->status < MX_OK || f->status > MX_INTERNAL)
		f->status = MX_TEMPFAIL;
	if (f->status != MX_OK)
		snprintf(why, whylen, "%s", f->why);
	return 0;
}

/* TXT strings or PTR names (those cleaned: they go into JSON as they are). */
static enum mx_status
fetch_records(uint32_t kind, const char *name, char ***out, char *why, size_t whylen)
{
	struct dlp_frep f;
	enum mx_status st;
	size_t i;

	*out = NULL;
	if (fetch_dns(kind, name, 0, &f, why, whylen) == -1)
		return MX_TEMPFAIL;
	if ((st = (enum mx_status)f.status) == MX_OK) {
		for (i = 0; kind == DLP_FETCH_PTR && i < f.ntxt; i++)
			fetch_clean(f.txt[i]);
		*out = f.txt;		/* NULL-terminated by the decoder */
		f.txt = NULL;
		f.ntxt = 0;
	}
	dlp_frep_free(&f);
	return st;
}

enum mx_status
fetch_txt(const char *name, char ***txt, char *why, size_t whylen)
{
	return fetch_records(DLP_FETCH_TXT, name, txt, why, whylen);
}

enum mx_status
fetch_ptr(const struct mx_addr *a, char ***names, char *why, size_t whylen)
{
	char ip[NI_MAXHOST];

	*names = NULL;
	if (getnameinfo((const struct sockaddr *)&a->ss, a->sslen, ip, sizeof(ip), NULL, 0,
	    NI_NUMERICHOST) != 0) {
		snprintf(why, whylen, "not an address");
		return MX_BADANSWER;
	}
	return fetch_records(DLP_FETCH_PTR, ip, names, why, whylen);
}

/*
 * The hosts of a reply as an mx_list, addresses at port; NULL when a name
 * is neither a host name nor the one asked for (an address literal), or an
 * address is not one.
 */
static struct mx_list *
fetch_list(const struct dlp_frep *f, const char *asked, int port)
{
	struct mx_list *l;
	size_t i, k;

	if ((l = calloc(1, sizeof(*l))) == NULL)
		return NULL;
	if (f->nhost > 0 && (l->hosts = calloc(f->nhost, sizeof(*l->hosts))) == NULL) {
		free(l);
		return NULL;
	}
	l->implicit = (int)f->implicit;
	for (i = 0; i < f->nhost; i++) {
		const struct dlp_fhost *h = &f->host[i];
		struct mx_host *m = &l->hosts[i];

		l->nhosts = i + 1;	/* freed with the list from here on */
		if ((!mx_domain_valid(h->name) && strcmp(h->name, asked) != 0) ||
		    (m->name = strdup(h->name)) == NULL || (h->naddr > 0 &&
		    (m->addrs = calloc(h->naddr, sizeof(*m->addrs))) == NULL))
			goto bad;
		m->pref = (int)h->pref;
		m->secure = (int)h->secure;
		for (k = 0; k < h->naddr; k++, m->naddr++)
			if (h->addr[k][0] == '[' ||
			    mx_parse_literal(h->addr[k], port, &m->addrs[k]) != 0)
				goto bad;
	}
	return l;
bad:
	mx_list_free(l);
	return NULL;
}

static enum mx_status
fetch_hosts(uint32_t kind, const char *name, int port, struct mx_list **out, char *why,
    size_t whylen)
{
	struct dlp_frep f;
	enum mx_status st;

	*out = NULL;
	if (fetch_dns(kind, name, port, &f, why, whylen) == -1)
		return MX_TEMPFAIL;
	if ((st = (enum mx_status)f.status) == MX_OK &&
	    (*out = fetch_list(&f, name, port)) == NULL) {
		snprintf(why, whylen, "the fetch process failed (malformed host list)");
		st = MX_TEMPFAIL;
	}
	dlp_frep_free(&f);
	return st;
}

enum mx_status
fetch_mx_lookup(const char *domain, int port, struct mx_list **out, char *why,
    size_t whylen)
{
	return fetch_hosts(DLP_FETCH_MX, domain, port, out, why, whylen);
}

enum mx_status
fetch_mx_host(const char *host, int port, struct mx_list **out, char *why, size_t whylen)
{
	return fetch_hosts(DLP_FETCH_HOST, host, port, out, why, whylen);
}

enum mx_status
fetch_tlsa(const char *host, int port, size_t *n, int *secure, char *why, size_t whylen)
{
	struct dlp_frep f;
	enum mx_status st;

	*n = 0;
	*secure = 0;
	if (fetch_dns(DLP_FETCH_TLSA, host, port, &f, why, whylen) == -1)
		return MX_TEMPFAIL;
	if ((st = (enum mx_status)f.status) == MX_OK) {
		*n = f.ntlsa;
		*secure = (int)f.secure;
	}
	dlp_frep_free(&f);
	return st;
}

/*
 * The submission check's verdicts, kept a while per domain: most codes go
 * to a few large providers, and a verdict from here costs no round trip to
 * the fetch process.  Direct-mapped and fixed in size, so a client naming
 * random domains only evicts; a failed lookup (which never refuses) is not
 * kept.  A domain that gains its MX is refused at most DCACHE_BAD_TTL
 * longer, one that loses it is queued (and bounced) at most DCACHE_OK_TTL.
 */
#define DCACHE_SLOTS	1024
#define DCACHE_OK_TTL	300	/* seconds */
#define DCACHE_BAD_TTL	60
#define DCACHE_NAME	254	/* a domain name's bytes and a NUL */

static struct dcache_slot {
	char	 name[DCACHE_NAME];
	char	 detail[512];
	time_t	 until;
	int	 rc;
} dcache[DCACHE_SLOTS];
static pthread_mutex_t dcache_mu = PTHREAD_MUTEX_INITIALIZER;

/* The slot of domain (lower-cased into key), or NULL if it is too long. */
static struct dcache_slot *
dcache_slot(const char *domain, char key[DCACHE_NAME])
{
	uint32_t h = 2166136261u;
	size_t i;

	for (i = 0; domain[i] != '\0'; i++) {
		if (i == DCACHE_NAME - 1)
			return NULL;
		key[i] = (char)tolower((unsigned char)domain[i]);
		h = (h ^ (unsigned char)key[i]) * 16777619u;
	}
	key[i] = '\0';
	return &dcache[h % DCACHE_SLOTS];
}

/*
 * The submission-time check (delivery.h): what needs no DNS here, a
 * verdict kept from a while ago, else the MX lookup in the fetch process.
 */
int
delivery_domain_check(struct otpmaild *d, const char *domain, char *detail, size_t len)
{
	struct dcache_slot *c;
	struct mx_list *l = NULL;
	enum mx_status st;
	char reason[512], key[DCACHE_NAME];
	time_t now = time(NULL);
	int rc;

	if (d == NULL || d->cfg == NULL || domain == NULL)
		return 0;
	if ((rc = mx_check_local(d->cfg, domain, detail, len)) != 1)
		return rc;
	if ((c = dcache_slot(domain, key)) != NULL) {
		pthread_mutex_lock(&dcache_mu);
		if (strcmp(c->name, key) == 0 && now < c->until) {
			rc = c->rc;
			if (rc == -1)
				snprintf(detail, len, "%s", c->detail);
			pthread_mutex_unlock(&dcache_mu);
			return rc;
		}
		pthread_mutex_unlock(&dcache_mu);
	}
	st = fetch_mx_lookup(domain, 25, &l, reason, sizeof(reason));
	if (st == MX_TEMPFAIL && fetch_failed())
		log_msg(LOG_WARNING, "event=dns_error detail=\"%s\"", reason);
	rc = mx_check_answer(d->cfg, domain, st, l, reason, detail, len);
	mx_list_free(l);
	if (c != NULL && st != MX_TEMPFAIL) {
		pthread_mutex_lock(&dcache_mu);
		memcpy(c->name, key, sizeof(c->name));
		snprintf(c->detail, sizeof(c->detail), "%s", rc == -1 ? detail : "");
		c->rc = rc;
		c->until = now + (rc == -1 ? DCACHE_BAD_TTL : DCACHE_OK_TTL);
		pthread_mutex_unlock(&dcache_mu);
	}
	return rc;
}

int
fetch_sts(const char *domain, struct mtasts_policy *pol, const char **rtype,
    char *why, size_t whylen)
{
	static const char *const types[] = { "sts-policy-invalid", "sts-webpki-invalid",
	    "sts-policy-fetch-error" };
	struct dlp_freq q = { DLP_FETCH_STS, (char *)domain, 0, NULL, NULL, 0, 0, 0 };
	struct dlp_frep f;
	size_t i;

	*rtype = "sts-policy-fetch-error";
	memset(pol, 0, sizeof(*pol));
	if (fetch_call(&q, &f, why, whylen) == -1)
		return -1;
	if (f.status != 0) {
		/* one of ours, whatever the other side says */
		for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
			if (strcmp(f.rtype, types[i]) == 0)
				*rtype = types[i];
		snprintf(why, whylen, "%s", f.why);
		dlp_frep_free(&f);
		return -1;
	}
	/* the caller parses it again (mtasts_policy_text, mtasts_parse) */
	*pol = f.pol;
	dlp_frep_free(&f);
	return 0;
}

int
fetch_post(const char *url, const char *const *hdr, size_t nhdr, const char *body,
    size_t len, long *code, char *why, size_t whylen)
{
	struct dlp_freq q = { DLP_FETCH_POST, (char *)url, nhdr, (char **)hdr, body, len,
	    0, 0 };
	struct dlp_frep f;

	*code = 0;
	if (fetch_call(&q, &f, why, whylen) == -1)
		return -1;
	if (f.status < 100 || f.status > 599) {
		snprintf(why, whylen, "%s", f.why[0] ? f.why : "no HTTP status");
		dlp_frep_free(&f);
		return -1;
	}
	*code = f.status;
	dlp_frep_free(&f);
	return 0;
}

/* ---- the fetch process ------------------------------------------------- */

static size_t
fetch_discard(char *p, size_t size, size_t n, void *arg)
{
	size_t *got = arg;

	(void)p;
	*got += size * n;
	return *got > FETCH_REPLY_MAX ? 0 : size * n;	/* a flood ends the transfer */
}

/* The webhook POST: the main process signed it; the answer is a status. */
static void
fetch_child_post(const struct dlp_freq *q, struct dlp_frep *f, char *why, size_t whylen)
{
	const struct config *cfg = fetch_cfg;
	char cerr[CURL_ERROR_SIZE] = "";
	struct curl_slist *h = NULL, *nh;
	size_t i, got = 0;
	long code = 0;
	CURLcode rc;
	CURL *c;

	if (strncmp(q->name, "https://", 8) != 0) {
		snprintf(why, whylen, "not an https URL");
		return;
	}
	if ((c = curl_easy_init()) == NULL) {
		snprintf(why, whylen, "out of memory");
		return;
	}
	for (i = 0; i < q->nhdr; i++) {
		if ((nh = curl_slist_append(h, q->hdr[i])) == NULL) {
			snprintf(why, whylen, "out of memory");
			goto out;
		}
		h = nh;
	}
	curl_easy_setopt(c, CURLOPT_URL, q->name);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (cfg->webhook_ca_file[0] != '\0')
		curl_easy_setopt(c, CURLOPT_CAINFO, cfg->webhook_ca_file);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->webhook_timeout * 1000L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)cfg->webhook_timeout * 1000L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "otpmail/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)q->len);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_discard);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &got);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	rc = curl_easy_perform(c);
	if (rc == CURLE_OK || rc == CURLE_WRITE_ERROR)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	f->status = (int32_t)(code >= 100 && code <= 599 ? code : 0);
	if (f->status == 0)
		snprintf(why, whylen, "%s", cerr[0] ? cerr : curl_easy_strerror(rc));
out:
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
}

/* The hosts of a lookup into the reply (bounded; addresses numeric). */
static int
fetch_child_hosts(const struct mx_list *l, struct dlp_frep *f)
{
	size_t i, k, n = l->nhosts < DLP_FETCH_HOST_MAX ? l->nhosts : DLP_FETCH_HOST_MAX;
	char ip[NI_MAXHOST];

	f->implicit = l->implicit != 0;
	if (n > 0 && (f->host = calloc(n, sizeof(*f->host))) == NULL)
		return -1;
	for (i = 0; i < n; i++) {
		const struct mx_host *m = &l->hosts[i];
		struct dlp_fhost *h = &f->host[i];

		f->nhost = i + 1;
		h->pref = (uint32_t)m->pref;
		h->secure = m->secure != 0;
		if ((h->name = strndup(m->name, DLP_FETCH_NAME_MAX)) == NULL ||
		    (m->naddr > 0 && (h->addr = calloc(m->naddr, sizeof(*h->addr))) == NULL))
			return -1;
		for (k = 0; k < m->naddr && k < DLP_FETCH_ADDR_MAX; k++, h->naddr++)
			if (getnameinfo((const struct sockaddr *)&m->addrs[k].ss,
			    m->addrs[k].sslen, ip, sizeof(ip), NULL, 0, NI_NUMERICHOST) != 0 ||
			    (h->addr[k] = strdup(ip)) == NULL)
				return -1;
	}
	return 0;
}

/* A DNS request: TXT and PTR records in *v (the caller frees them), MX and
 * host lists, TLSA counts.  Each is logged (debug), with our pid. */
static void
fetch_child_dns(const struct dlp_freq *q, struct dlp_frep *f, char ***v, char *why,
    size_t whylen)
{
	static const char *const kinds[] = { "", "txt", "sts", "post", "mx", "host", "ptr",
	    "tlsa" };
	struct mx_list *l = NULL;
	struct tlsa_set *set = NULL;
	struct mx_addr a;
	size_t n;

	if (fetch_mx == NULL || fetch_chk == NULL) {
		f->status = MX_TEMPFAIL;
		snprintf(why, whylen, "no resolver");
		return;
	}
	switch (q->kind) {
	case DLP_FETCH_TXT:
		f->status = (int32_t)mx_txt(fetch_mx, q->name, v, why, whylen);
		break;
	case DLP_FETCH_PTR:
		if (mx_parse_literal(q->name, 0, &a) != 0) {
			f->status = MX_BADANSWER;
			snprintf(why, whylen, "not an address");
			break;
		}
		f->status = (int32_t)mx_ptr(fetch_chk, &a, v, why, whylen);
		break;
	case DLP_FETCH_MX:
	case DLP_FETCH_HOST:
		f->status = (int32_t)(q->kind == DLP_FETCH_MX ?
		    mx_lookup(fetch_chk, q->name, 25, &l, why, whylen) :
		    mx_host(fetch_chk, q->name, 25, &l, why, whylen));
		if (f->status == MX_OK && fetch_child_hosts(l, f) == -1) {
			f->status = MX_TEMPFAIL;
			snprintf(why, whylen, "out of memory");
		}
		break;
	default:
		f->status = (int32_t)mx_tlsa(fetch_chk, q->name, (int)q->port, &set, why,
		    whylen);
		if (f->status == MX_OK && set != NULL) {
			f->ntlsa = (uint32_t)(set->n < DLP_FETCH_TLSA_MAX ? set->n :
			    DLP_FETCH_TLSA_MAX);
			f->secure = set->secure != 0;
		}
		break;
	}
	/* what the frame holds: the first records, each cut to a string field */
	for (n = 0; f->status == MX_OK && *v != NULL && (*v)[n] != NULL &&
	    n < DLP_FETCH_TXT_MAX; n++)
		if (strlen((*v)[n]) > DLP_STR_MAX)
			(*v)[n][DLP_STR_MAX] = '\0';
	f->txt = *v;
	f->ntxt = f->status == MX_OK ? n : 0;
	if (f->status != MX_OK) {
		dlp_fhost_free(f->host, f->nhost);
		f->host = NULL;
		f->nhost = 0;
	}
	log_msg(LOG_DEBUG, "event=fetch_dns kind=%s name=%s status=%s records=%zu hosts=%zu "
	    "pid=%ld", kinds[q->kind], q->name, mx_status_name((enum mx_status)f->status),
	    f->ntxt, f->nhost, (long)getpid());
	mx_list_free(l);
	tlsa_set_free(set);
}

/* One request read from fd: answered (0), or not (-1: the connection
 * ends, and the main process sees the request fail). */
static int
fetch_child_serve(int fd, const char *buf, size_t len)
{
	char why[1024] = "", **v = NULL;
	const char *rtype = "";
	struct dlp_freq q;
	struct dlp_frep f;
	struct dlp_buf b;
	int rc = -1;

	if (dlp_freq_decode(buf, len, &q) == -1)
		return -1;
	/* the test hook: stuck, until the main process ends us */
	while (fetch_hang != NULL && strcmp(q.name, fetch_hang) == 0)
		sleep(60);
	memset(&f, 0, sizeof(f));
	f.kind = q.kind;
	f.id = q.id;
	switch (q.kind) {
	case DLP_FETCH_STS:
		if (fetch_mx == NULL) {
			f.status = -1;
			rtype = "sts-policy-fetch-error";
			snprintf(why, sizeof(why), "no resolver");
			break;
		}
		f.status = mtasts_fetch_policy(fetch_mx, fetch_cfg, q.name, &f.pol, &rtype,
		    why, sizeof(why)) == 0 ? 0 : -1;
		break;
	case DLP_FETCH_POST:
		fetch_child_post(&q, &f, why, sizeof(why));
		break;
	default:
		fetch_child_dns(&q, &f, &v, why, sizeof(why));
		break;
	}
	f.why = why;
	f.rtype = (char *)rtype;
	dlp_buf_init(&b);
	if (dlp_frep_encode(&b, &f) == 0 && dlp_send(fd, &b) == 0)
		rc = 0;
	/* the test hook: the answer again, a while after the first, as the
	 * late reply of a request that timed out would come */
	if (rc == 0 && fetch_late != NULL && strcmp(q.name, fetch_late) == 0) {
		usleep(100 * 1000);
		(void)dlp_send(fd, &b);
	}
	dlp_freq_free(&q);
	dlp_fhost_free(f.host, f.nhost);
	mx_txt_free(v);
	dlp_buf_free(&b);
	return rc;
}

/* The requests of one connection, in turn, until the main process closes
 * it (or a request goes unanswered). */
static void *
fetch_child_thread(void *arg)
{
	int fd = (int)(intptr_t)arg, rc = 0;
	char *buf;
	size_t len;

	/* the thread's name in ps and top; no /proc needed */
	(void)prctl(PR_SET_NAME, "fetch");
	while (rc == 0 && dlp_recv(fd, DLP_FETCH_REQ_MAX, &buf, &len) == 0) {
		rc = fetch_child_serve(fd, buf, len);
		free(buf);
	}
	close(fd);
	return NULL;
}

int
fetch_child_main(int argc, char **argv)
{
	static struct otpmaild d;
	const char *readable[24], *probe = getenv(PRIVSEP_PROBE_ENV);
	char err[512], how[256], one;
	union fetch_cmsg cbuf;
	struct mx_resolver *r;
	struct iovec iov = { &one, 1 };
	struct msghdr mh;
	struct cmsghdr *cm;
	pthread_attr_t at;
	pthread_t th;
	ssize_t got;
	int n, fd, k = 0;

	if (privsep_child_init(argc, argv, "otpmaild-fetch", &d, &n) == -1)
		return 2;
	fetch_cfg = d.cfg;
	fetch_late = getenv(FETCH_LATE_ENV);
	fetch_hang = getenv(FETCH_HANG_ENV);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	/* our resolver for MTA-STS and TLS-RPT, loaded while its files are there */
	if ((r = mx_resolver_shared(d.cfg, err, sizeof(err))) == NULL ||
	    (fetch_mx = mx_resolver_dup(r)) == NULL)
		log_msg(LOG_WARNING, "event=fetch_process_warning detail=\"resolver: %s\"",
		    r == NULL ? err : "out of memory");
	else {
		mx_resolver_set_timeout(fetch_mx, 5000);
		fetch_chk = r;
	}
	/* what libcurl reads at each request: the CA files (and the default
	 * store it also trusts), and what the system resolver reads */
	if (d.cfg->tls_ca_file != NULL && d.cfg->tls_ca_file[0] != '\0')
		readable[k++] = d.cfg->tls_ca_file;
	if (d.cfg->webhook_ca_file[0] != '\0')
		readable[k++] = d.cfg->webhook_ca_file;
	readable[k++] = "/etc/ssl/certs";
	readable[k++] = "/usr/share/ca-certificates";
	readable[k++] = "/usr/local/share/ca-certificates";
	readable[k++] = "/etc/hosts";
	readable[k++] = "/etc/resolv.conf";
	readable[k++] = "/etc/nsswitch.conf";
	readable[k++] = "/etc/host.conf";
	readable[k++] = "/etc/gai.conf";
	readable[k] = NULL;
	if (privsep_restrict(d.cfg, readable, how, sizeof(how), err, sizeof(err)) == -1) {
		log_msg(LOG_ERR, "event=fetch_process_failed detail=\"%s\"", err);
		_exit(1);
	}
	/* Any thread of the main process may have started us (the first request
	 * after a loss), and the parent-death signal follows that thread, not
	 * the process: off.  The end of the main process still ends us, as EOF
	 * on the control socket below. */
	(void)prctl(PR_SET_PDEATHSIG, 0);
	log_msg(LOG_INFO, "event=fetch_process_started pid=%ld %s", (long)getpid(), how);
	if (probe != NULL)
		privsep_probe_event("fetch_probe", probe);
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	for (;;) {
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = cbuf.buf;
		mh.msg_controllen = sizeof(cbuf.buf);
		if ((got = recvmsg(PRIVSEP_FD0, &mh, MSG_CMSG_CLOEXEC)) == -1 && errno == EINTR)
			continue;
		if (got <= 0)
			break;		/* the main process closed it, or is gone */
		fd = -1;
		for (cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS &&
			    cm->cmsg_len == CMSG_LEN(sizeof(int)))
				memcpy(&fd, CMSG_DATA(cm), sizeof(int));
		if (fd == -1)
			continue;
		if (pthread_create(&th, &at, fetch_child_thread, (void *)(intptr_t)fd) != 0)
			close(fd);	/* the request fails in the main process */
	}
	/* no exit handlers: they might want what the filter refuses */
	_exit(0);
}
