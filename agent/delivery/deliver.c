/*
 * deliver.c - the delivery workers (see delivery.h).  Each worker leases a
 * due message, groups its open recipients by domain, and delivers each
 * group: sandbox Maildir, route override, smarthost, or the MX hosts (every
 * address of every host, fallback relays when that defers).  Connections
 * are counted per destination and globally; a finished session is parked
 * idle (after RSET, unless its last transaction ended at the reply to
 * its data) for the next message to the same destination.  A worker
 * only ever waits on its own peer, bounded by the smtp_* timeouts.
 *
 * With privilege separation (SMTP mode of otpmaild) the workers are split
 * in two: in the main process each leases a message and hands it, signed,
 * to its twin in the delivery process (privsep.c) over a socket pair, then
 * records the outcomes and releases the lease; the twin routes and speaks
 * SMTP.  A lost delivery process is started again and what it held goes
 * back to the queue untouched.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <netdb.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "agent/mail/mail.h"
#include "agent/delivery/delivery.h"
#include "agent/core/otpmaild.h"
#include "agent/delivery/dlproto.h"
#include "agent/delivery/privsep.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"
#include "agent/delivery/sandbox.h"
#include "agent/delivery/smtp.h"
#include "agent/delivery/tlsrpt.h"
#include "agent/events/events.h"
#include "queue/queue.h"

#define DELIVERY_KEY_MAX	700
/*
 * Seconds a worker waits for a connection slot before deferring the domain:
 * sessions come free in milliseconds normally, and a domain whose peers are
 * all stuck must not collect every worker.
 */
#define DELIVERY_SLOT_WAIT	10
#define DELIVERY_STOP_GRACE	5	/* seconds in-flight sessions get at shutdown */
#define DELIVERY_SPAWN_PAUSE	200	/* ms between failed starts of the process */
#define DELIVERY_READY_WAIT	10000	/* ms the start waits for its processes */
/*
 * With the delivery process, a worker hands over the messages that are
 * due together, up to DELIVERY_BATCH of them, in one write; the process
 * answers the batch in one write too, and the events of the batch are
 * made durable by one sync: the hand-offs are per batch, not per message.
 * Only small messages with few open recipients batch (one that is not
 * ends its batch), so a batch's results always fit in the socket while
 * its jobs are still being written.
 */
#define DELIVERY_BATCH		8
#define DELIVERY_BATCH_BYTES	(64 * 1024)	/* of jobs */
#define DELIVERY_BATCH_RCPTS	4		/* open recipients of a message */
/*
 * ... and only while this worker's deliveries are quick (a relay or MX on
 * the local network): the jobs of a batch are delivered one after the
 * other, and a batch for slow peers would keep messages waiting that
 * another worker could have taken.
 */
#define DELIVERY_BATCH_FAST	0.010		/* seconds per job, moving average */
/*
 * Under load the worker holding the leasing baton waits a little for the
 * messages about to be queued, so they share its batch: a batch costs the
 * two processes one job write, one wake-up on each side, one result read
 * and one event round, whatever its size.  It waits only while messages
 * come faster than one per DELIVERY_GATHER (a moving average of the gaps
 * between leases), so a lone message never waits, and at most
 * DELIVERY_GATHER after the batch's first lease.
 */
#define DELIVERY_GATHER		0.002		/* seconds */

struct idle {
	struct smtp_session	*s;
	time_t			 since;
	char			 host[256];
	struct idle		*next;
	char			 key[DELIVERY_KEY_MAX];	/* its destination */
};

struct dest {				/* one next hop + TLS policy */
	char			 key[DELIVERY_KEY_MAX];
	int			 active;	/* open connections, busy or idle */
	double			 next_send;	/* domain_rate: monotonic time */
	struct idle		*idle;
	pthread_cond_t		 cv;		/* a session or slot of it freed */
	int			 nwait;		/* workers waiting on cv */
	int			 nwait_global;	/* of them, held by max_connections */
	struct dest		*next;
};

/* One worker; with privsep, its socket to its twin in the other process. */
struct slot {
	struct delivery		*dl;
	int			 k;
	int			 fd;		/* -1: none (yet) */
	unsigned		 gen;		/* of the delivery process fd is for */
	struct dlp_rbuf		 rd;		/* frames read ahead from fd */
	/* in flight at the last loss of the delivery process */
	char			 lost[DELIVERY_BATCH][QUEUE_ID_LEN + 1];
	size_t			 nlost;
	double			 per_job;	/* seconds, moving average */
};

/* One message of a batch, main side. */
struct flight {
	struct q_envelope	*env;
	char			*data;
	size_t			 len;
	char			*was_open;	/* recipients open at lease time */
	size_t			 nopen;
	struct dlp_job		 job;
	struct dlp_buf		 b;		/* its job, encoded */
	int			 sent;		/* the job went to the delivery process */
	int			 back;		/* to the queue untouched (a loss) */
};

struct delivery {
	struct otpmaild		*d;
	const struct config	*cfg;
	struct mx_resolver	*mx;
	struct smtp_tls		*tls;		/* built on first use */
	char			*auth_pass;
	char			 maildir[4096];
	pthread_t		*th;
	int			 nth;
	pthread_mutex_t		 mu;
	int			 nwait_global;	/* workers held by max_connections */
	struct dest		*dests;
	int			 active;	/* all open connections */
	atomic_int		 stopping;	/* no new work */
	volatile int		 abort;		/* in-flight sessions give up too */
	struct slot		*slots;
	/* main side of privilege separation (privsep set) */
	int			 privsep;
	char			 exe[PATH_MAX];
	pthread_mutex_t		 pmu;		/* child, gen, fds */
	/* the leasing baton: one main-side worker at a time waits for due
	 * messages and gathers its batch; the others wait here, so a burst
	 * of messages queued together goes out as one batch, not one job
	 * per woken worker */
	pthread_mutex_t		 lease_mu;
	double			 last_lease;	/* lease_mu: monotonic seconds */
	double			 gap;		/* lease_mu: between leases, average */
	/* the releaser: delivered messages wait for their events' sync here,
	 * not in a worker (a slow sync held every worker: rel_mu) */
	pthread_t		 rel_th;
	int			 rel_on;
	int			 rel_stop;
	pthread_mutex_t		 rel_mu;
	pthread_cond_t		 rel_cv;
	struct q_envelope	**relq;
	size_t			 reln, relcap;
	uint64_t		 rel_upto;	/* newest event id of relq */
	pid_t			 child;		/* -1: none running */
	unsigned		 gen;		/* starts of the delivery process */
	int			*fds;		/* sockets of gen not yet taken by their slot */
	/* a second process, started and idle: a lost one is replaced at once
	 * instead of after a start (config, resolver, CA store: ~0.1-1 s) */
	pid_t			 spare;
	int			*spare_fds;
	unsigned long		 restarts;
	atomic_int		 ready_seen;	/* a worker skipped a ready frame */
	/* delivery-process side */
	int			 fd0;
};

/* One delivery of one domain's recipients of one message. */
struct job {
	struct delivery		*dl;
	struct q_envelope	*env;
	const char		*data;
	size_t			 len;
	const char		*domain;
	enum tls_policy		 policy;
	struct smtp_rcpt	*r;
	size_t			 n;
	int			 fallback_done;
	char			 last_temp[SMTP_REPLY_MAX];
	int			 sts_on;	/* MX hosts under an MTA-STS policy */
	struct mtasts_policy	 sts;
};

/* A list of hosts to try for one destination. */
struct hop {
	const char		*kind;		/* "mx", "route", "smarthost", "fallback" */
	char			 key[DELIVERY_KEY_MAX];
	const struct mx_list	*hosts;
	const char		*conf_host;	/* configured relay/route host, NULL for MX */
	int			 auth;		/* smarthost AUTH */
	int			 port;
};

static void	*delivery_worker(void *);
static void	*delivery_child_worker(void *);
static void	 delivery_message(struct slot *, struct q_envelope *);
static int	 delivery_begin(struct delivery *, struct q_envelope *, char **was_open,
		    size_t *nopen, char **data, size_t *len);
static void	 delivery_conclude(struct q_envelope *, char *was_open, size_t nopen);
static void	 delivery_release(struct delivery *, struct q_envelope *);
static void	 delivery_batch(struct slot *, struct q_envelope *);
static void	*delivery_releaser(void *);
static void	 delivery_route(struct delivery *, struct q_envelope *, const char *,
		    size_t);
static int	 delivery_job_make(struct delivery *, struct q_envelope *, const char *,
		    size_t, struct dlp_job *, struct dlp_buf *);
static int	 delivery_job_result(struct slot *, int fd, struct flight *,
		    const char **why);
static void	 delivery_job_clear(struct dlp_job *);
static int	 delivery_spawn_locked(struct delivery *, char *, size_t);
static void	 delivery_lost(struct slot *, const char *why);
static struct delivery *delivery_new(struct otpmaild *, char *, size_t);
static int	 delivery_net_init(struct delivery *, char *, size_t);
static int	 delivery_threads(struct delivery *, void *(*)(void *), char *, size_t);
static void	 delivery_free(struct delivery *);
static int	 delivery_slot_fd(struct slot *);
static int	 delivery_wait_result(int fd);
static void	 delivery_tls_forward(const char *, enum tlsrpt_ptype, int,
		    const char *, const char *, const char *);
static void	 delivery_sandbox(struct delivery *, struct q_envelope *,
		    const char *, size_t);
static void	 delivery_domain(struct delivery *, struct q_envelope *,
		    const char *data, size_t len, const char *domain,
		    size_t *idx, size_t n);
static enum mx_status delivery_drop_internal(const struct q_envelope *, const char *,
		    struct mx_list *, char *, size_t);
static int	 delivery_try_hop(struct job *, struct hop *, int otp_early);
static int	 delivery_fallback(struct job *);
static int	 delivery_transaction(struct job *, struct hop *,
		    struct smtp_session *, const char *host);
static size_t	 delivery_pending(const struct job *);
static struct dest *delivery_dest(struct delivery *, const char *key);
static void	 delivery_wake_all(struct delivery *, int only_global);
static int	 delivery_slot(struct delivery *, const char *key,
		    struct smtp_session **, char *host, size_t hostlen, char *why, size_t);
static void	 delivery_open_failed(struct job *, struct hop *, const char *name,
		    const struct mx_addr *, const char *reply);
static void	 delivery_unslot(struct delivery *, const char *key);
static struct smtp_session *delivery_pool_take(struct delivery *, const char *key,
		    char *host, size_t hostlen);
static void	 delivery_pool_put(struct delivery *, const char *key,
		    struct smtp_session *, const char *host);
static void	 delivery_reap(struct delivery *, int all);
static void	 delivery_rate(struct delivery *, const char *key);
static void	 delivery_set(struct q_rcpt *, enum q_rcpt_state, const char *reply);
static void	 delivery_log_attempt(struct job *, struct hop *, const char *host,
		    struct smtp_session *, const char *ip, const char *result,
		    const char *reply, size_t nrcpt);
static double	 delivery_mono(void);
static int	 delivery_is_literal(const char *);
static char	*delivery_read_secret(const char *path, char *err, size_t errlen);
static int	 delivery_sts_host(struct job *, struct hop *, const char *host,
		    int dane);
static void	 delivery_tls_outcome(struct job *, struct hop *, const char *host,
		    const struct mx_addr *, const struct smtp_params *,
		    const struct smtp_tls_report *);

static double
delivery_mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *
delivery_read_secret(const char *path, char *err, size_t errlen)
{
	char buf[512];
	FILE *fp;
	size_t l;

	if ((fp = fopen(path, "re")) == NULL) {
		snprintf(err, errlen, "smarthost_password_file %s: %s", path, strerror(errno));
		return NULL;
	}
	if (fgets(buf, sizeof(buf), fp) == NULL)
		buf[0] = '\0';
	fclose(fp);
	l = strcspn(buf, "\r\n");
	buf[l] = '\0';
	return strdup(buf);
}

static struct delivery *
delivery_new(struct otpmaild *d, char *err, size_t errlen)
{
	struct delivery *dl;

	if ((dl = calloc(1, sizeof(*dl))) == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return NULL;
	}
	dl->d = d;
	dl->cfg = d->cfg;
	dl->child = -1;
	dl->spare = -1;
	dl->gap = 1.0;		/* no gathering until leases come fast */
	pthread_mutex_init(&dl->mu, NULL);
	pthread_mutex_init(&dl->lease_mu, NULL);
	pthread_mutex_init(&dl->pmu, NULL);
	pthread_mutex_init(&dl->rel_mu, NULL);
	pthread_cond_init(&dl->rel_cv, NULL);
	sandbox_dir(d->cfg, d->state_dir, dl->maildir, sizeof(dl->maildir));
	dl->nth = d->cfg->delivery_workers > 0 ? d->cfg->delivery_workers : 1;
	return dl;
}

/* What talking to other hosts needs, loaded while files can be read. */
static int
delivery_net_init(struct delivery *dl, char *err, size_t errlen)
{
	const struct config *cfg = dl->cfg;
	struct mx_resolver *mx;

	/* One libunbound context per process, shared with the submission
	 * check (mx.c). */
	if ((mx = mx_resolver_shared(cfg, err, errlen)) == NULL)
		return -1;
	if ((dl->mx = mx_resolver_dup(mx)) == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return -1;
	}
	if ((dl->tls = smtp_tls_new(cfg->tls_ca_file, err, errlen)) == NULL)
		return -1;
	if (cfg->smarthost_user != NULL && cfg->smarthost_user[0] != '\0' &&
	    (dl->auth_pass = delivery_read_secret(cfg->smarthost_password_file,
	    err, errlen)) == NULL)
		return -1;
	return 0;
}

static int
delivery_threads(struct delivery *dl, void *(*fn)(void *), char *err, size_t errlen)
{
	int i, n = dl->nth;

	if ((dl->th = calloc(n, sizeof(*dl->th))) == NULL ||
	    (dl->slots = calloc(n, sizeof(*dl->slots))) == NULL) {
		snprintf(err, errlen, "delivery: out of memory");
		return -1;
	}
	for (i = 0; i < n; i++) {
		dl->slots[i].dl = dl;
		dl->slots[i].k = i;
		dl->slots[i].fd = dl->fd0 > 0 ? dl->fd0 + i : -1;
	}
	for (i = 0; i < n; i++) {
		if (pthread_create(&dl->th[i], NULL, fn, &dl->slots[i]) != 0) {
			snprintf(err, errlen, "delivery: pthread_create: %s", strerror(errno));
			dl->nth = i;
			return -1;
		}
		(void)pthread_setname_np(dl->th[i], "deliver");
	}
	return 0;
}

/*
 * The releaser: takes what the workers left, waits once for the newest
 * of their events to be durable, then releases them in order.  At the
 * stop it ends when the workers have ended and nothing is left.
 */
static void *
delivery_releaser(void *arg)
{
	struct delivery *dl = arg;
	struct q_envelope **q;
	uint64_t upto;
	size_t n, i;

	for (;;) {
		pthread_mutex_lock(&dl->rel_mu);
		while (dl->reln == 0 && !dl->rel_stop)
			pthread_cond_wait(&dl->rel_cv, &dl->rel_mu);
		q = dl->relq;
		n = dl->reln;
		upto = dl->rel_upto;
		dl->relq = NULL;
		dl->reln = dl->relcap = 0;
		pthread_mutex_unlock(&dl->rel_mu);
		if (n == 0)
			return NULL;	/* stopping, nothing left */
		events_wait(upto);
		for (i = 0; i < n; i++)
			delivery_release(dl, q[i]);
		free(q);
	}
}

/* Hands a batch's delivered messages to the releaser; -1 (out of
 * memory): the caller waits and releases them. */
static int
delivery_release_later(struct delivery *dl, struct q_envelope **envs, size_t n,
    uint64_t upto)
{
	struct q_envelope **q;
	size_t cap;

	pthread_mutex_lock(&dl->rel_mu);
	if (dl->reln + n > dl->relcap) {
		cap = dl->relcap ? dl->relcap : 64;
		while (cap < dl->reln + n)
			cap *= 2;
		if ((q = realloc(dl->relq, cap * sizeof(*q))) == NULL) {
			pthread_mutex_unlock(&dl->rel_mu);
			return -1;
		}
		dl->relq = q;
		dl->relcap = cap;
	}
	memcpy(dl->relq + dl->reln, envs, n * sizeof(*envs));
	dl->reln += n;
	if (upto > dl->rel_upto)
		dl->rel_upto = upto;
	pthread_mutex_unlock(&dl->rel_mu);
	pthread_cond_signal(&dl->rel_cv);	/* after the unlock, as in queue.c */
	return 0;
}

/* 1 if every recipient of env was delivered: its release writes nothing
 * durable and owes no DSN, so the releaser's one thread suffices. */
static int
delivery_all_delivered(const struct q_envelope *env)
{
	size_t i;

	for (i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state != Q_RCPT_DELIVERED)
			return 0;
	return 1;
}

struct delivery *
delivery_start(struct otpmaild *d, char *err, size_t errlen)
{
	struct delivery *dl;
	ssize_t l;
	int i;

	if ((dl = delivery_new(d, err, errlen)) == NULL)
		return NULL;
	if (!d->cfg->sandbox && d->cfg->smarthost_user != NULL &&
	    d->cfg->smarthost_user[0] != '\0' && (d->cfg->smarthost_password_file == NULL ||
	    d->cfg->smarthost_password_file[0] == '\0')) {
		snprintf(err, errlen, "smarthost_user needs smarthost_password_file");
		goto fail;
	}
	/* The sandbox delivers to a Maildir: no DNS, no TLS, no other host. */
	if (!d->cfg->sandbox && d->delivery_privsep) {
		dl->privsep = 1;
		if ((l = readlink("/proc/self/exe", dl->exe, sizeof(dl->exe) - 1)) <= 0) {
			snprintf(err, errlen, "delivery: readlink /proc/self/exe: %s",
			    strerror(errno));
			goto fail;
		}
		dl->exe[l] = '\0';
		if ((dl->fds = calloc(dl->nth, sizeof(*dl->fds))) == NULL ||
		    (dl->spare_fds = calloc(dl->nth, sizeof(*dl->fds))) == NULL) {
			snprintf(err, errlen, "delivery: out of memory");
			goto fail;
		}
		for (i = 0; i < dl->nth; i++)
			dl->fds[i] = dl->spare_fds[i] = -1;
		pthread_mutex_lock(&dl->pmu);
		l = delivery_spawn_locked(dl, err, errlen);
		pthread_mutex_unlock(&dl->pmu);
		if (l == -1)
			goto fail;
	} else if (!d->cfg->sandbox && delivery_net_init(dl, err, errlen) == -1)
		goto fail;
	if (delivery_threads(dl, delivery_worker, err, errlen) == -1) {
		delivery_stop(dl);
		return NULL;
	}
	if (pthread_create(&dl->rel_th, NULL, delivery_releaser, dl) != 0) {
		snprintf(err, errlen, "delivery: pthread_create: %s", strerror(errno));
		delivery_stop(dl);
		return NULL;
	}
	(void)pthread_setname_np(dl->rel_th, "release");
	dl->rel_on = 1;
	log_msg(LOG_INFO, "event=delivery_started workers=%d mode=%s pid=%ld spare=%ld",
	    dl->nth, d->cfg->sandbox ? "sandbox" : dl->privsep ? "smtp-process" : "smtp",
	    (long)dl->child, (long)dl->spare);
	return dl;
fail:
	delivery_free(dl);
	return NULL;
}

/*
 * Waits (at most DELIVERY_READY_WAIT ms) until the delivery process and its
 * spare have started: each sends an empty frame first (delivery_child_run).
 * Until then they load libraries, the CA store and their sandbox on the
 * same CPUs as the first requests: a daemon that answered before paid for
 * it in the first 100 ms of its answers and its first mail.  A worker that
 * delivers a recovered message meanwhile may read the frame first: it
 * says so in ready_seen, which ends the wait too.  A process still not
 * started after the wait is not waited for; one that died is replaced as
 * before.
 */
void
delivery_wait_ready(struct delivery *dl)
{
	struct pollfd pfd[2];
	double until = delivery_mono() + DELIVERY_READY_WAIT / 1000.0, left;
	int n = 0, r;

	if (dl == NULL || !dl->privsep)
		return;
	/* before any request: no worker has a reason to replace them yet */
	pthread_mutex_lock(&dl->pmu);
	if (dl->child > 0 && dl->fds[0] != -1)
		pfd[n++] = (struct pollfd){ dl->fds[0], POLLIN, 0 };
	if (dl->spare > 0 && dl->spare_fds[0] != -1)
		pfd[n++] = (struct pollfd){ dl->spare_fds[0], POLLIN, 0 };
	pthread_mutex_unlock(&dl->pmu);
	while (n > 0 && !atomic_load(&dl->ready_seen) &&
	    (left = until - delivery_mono()) > 0) {
		r = poll(pfd, (nfds_t)n, left > 0.02 ? 20 : (int)(left * 1000) + 1);
		if (r == -1 && errno != EINTR)
			break;
		if (r <= 0)
			continue;
		if (pfd[0].revents != 0)
			pfd[0] = pfd[--n];
		else if (n > 1 && pfd[1].revents != 0)
			n--;
	}
	if (n > 0 && !atomic_load(&dl->ready_seen))
		log_msg(LOG_WARNING, "event=delivery_process_slow detail=\"not started "
		    "after %d ms; the daemon answers anyway\"", DELIVERY_READY_WAIT);
}

/* The test hook OTPMAIL_FAULT=dl_empty_frames_N (N 1 or 2): empty frames
 * the delivery process sends before each result but a worker's first. */
static size_t	delivery_fault_empty;

/* main() of the delivery process, after privsep.c set it up: fds fd0..fd0+n. */
int
delivery_child_run(struct otpmaild *d, int fd0, int n, char *err, size_t errlen)
{
	struct delivery *dl;
	struct dlp_buf ready;
	char how[256];
	const char *probe = getenv(PRIVSEP_PROBE_ENV), *fault;
	int i;

	if ((dl = delivery_new(d, err, errlen)) == NULL)
		return -1;
	dl->nth = n;
	dl->fd0 = fd0;
	if (delivery_net_init(dl, err, errlen) == -1) {
		delivery_free(dl);
		return -1;
	}
	/* read now what would be read on first use: the CA store */
	if (smtp_tls_preload(dl->tls, how, sizeof(how)) == -1)
		log_msg(LOG_WARNING, "event=delivery_process_warning detail=\"%s\"", how);
	if (privsep_restrict(d->cfg, NULL, how, sizeof(how), err, errlen) == -1) {
		delivery_free(dl);
		return -1;
	}
	log_msg(LOG_INFO, "event=delivery_process_started pid=%ld workers=%d %s",
	    (long)getpid(), n, how);
	if ((fault = getenv("OTPMAIL_FAULT")) != NULL &&
	    strncmp(fault, "dl_empty_frames_", 16) == 0)
		delivery_fault_empty = strcmp(fault + 16, "2") == 0 ? 2 : 1;
	if (probe != NULL)
		privsep_probe(probe);
	/*
	 * Ready: an empty frame on each socket, before any result, tells the
	 * main process this one has started (delivery_wait_ready); the main
	 * process skips it where it reads results.
	 */
	dlp_buf_init(&ready);
	for (i = 0; i < dl->nth; i++)
		if (dlp_send(dl->fd0 + i, &ready) == -1) {
			snprintf(err, errlen, "delivery: ready frame: %s", strerror(errno));
			dlp_buf_free(&ready);
			return -1;
		}
	dlp_buf_free(&ready);
	tlsrpt_forward = delivery_tls_forward;
	if (delivery_threads(dl, delivery_child_worker, err, errlen) == -1)
		return -1;		/* the main process starts another */
	for (i = 0; i < dl->nth; i++)
		pthread_join(dl->th[i], NULL);
	return 0;
}

static void
delivery_free(struct delivery *dl)
{
	struct dest *de, *next;
	int k;

	for (de = dl->dests; de != NULL; de = next) {
		next = de->next;
		pthread_cond_destroy(&de->cv);
		free(de);
	}
	if (dl->mx)
		mx_resolver_free(dl->mx);
	smtp_tls_free(dl->tls);
	if (dl->auth_pass) {
		explicit_bzero(dl->auth_pass, strlen(dl->auth_pass));
		free(dl->auth_pass);
	}
	for (k = 0; dl->fds != NULL && k < dl->nth; k++)
		if (dl->fds[k] != -1)
			close(dl->fds[k]);
	for (k = 0; dl->spare_fds != NULL && k < dl->nth; k++)
		if (dl->spare_fds[k] != -1)
			close(dl->spare_fds[k]);
	free(dl->spare_fds);
	for (k = 0; dl->slots != NULL && dl->fd0 == 0 && k < dl->nth; k++)
		if (dl->slots[k].fd != -1)
			close(dl->slots[k].fd);
	for (k = 0; dl->slots != NULL && k < dl->nth; k++)
		dlp_rbuf_free(&dl->slots[k].rd);
	free(dl->fds);
	free(dl->slots);
	free(dl->th);
	pthread_mutex_destroy(&dl->mu);
	pthread_mutex_destroy(&dl->lease_mu);
	pthread_mutex_destroy(&dl->pmu);
	pthread_mutex_destroy(&dl->rel_mu);
	pthread_cond_destroy(&dl->rel_cv);
	free(dl->relq);
	free(dl);
}

void
delivery_stop(struct delivery *dl)
{
	struct timespec ts;
	int i, st;

	if (dl == NULL)
		return;
	pthread_mutex_lock(&dl->mu);
	dl->stopping = 1;
	delivery_wake_all(dl, 0);
	pthread_mutex_unlock(&dl->mu);
	if (dl->d->queue != NULL)
		queue_shutdown(dl->d->queue);
	/*
	 * In-flight sessions get a grace period; then every wait is cut short
	 * (a peer may hold a worker for smtp_data_done_timeout otherwise).
	 * What was cut stays deferred in the queue; with a delivery process,
	 * that process goes and its leases go back untouched.
	 */
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += DELIVERY_STOP_GRACE;
	for (i = 0; i < dl->nth; i++) {
		if (!dl->abort && pthread_timedjoin_np(dl->th[i], NULL, &ts) == 0)
			continue;
		if (!dl->abort)
			log_msg(LOG_WARNING, "event=delivery_stopping note=\"cutting "
			    "in-flight sessions short after %ds\"", DELIVERY_STOP_GRACE);
		dl->abort = 1;
		pthread_mutex_lock(&dl->pmu);
		if (dl->child > 0)
			privsep_kill(dl->child);
		pthread_mutex_unlock(&dl->pmu);
		pthread_join(dl->th[i], NULL);
	}
	if (dl->rel_on) {
		pthread_mutex_lock(&dl->rel_mu);
		dl->rel_stop = 1;
		pthread_cond_signal(&dl->rel_cv);
		pthread_mutex_unlock(&dl->rel_mu);
		pthread_join(dl->rel_th, NULL);
		dl->rel_on = 0;
	}
	delivery_reap(dl, 1);
	if (dl->spare > 0) {
		privsep_kill(dl->spare);
		(void)privsep_wait(dl->spare, &st, 0);
	}
	if (dl->child > 0) {
		/* its sockets close with the slots: it ends on EOF */
		for (i = 0; dl->slots != NULL && i < dl->nth; i++)
			if (dl->slots[i].fd != -1) {
				close(dl->slots[i].fd);
				dl->slots[i].fd = -1;
			}
		for (i = 0; i < dl->nth; i++)
			if (dl->fds[i] != -1) {
				close(dl->fds[i]);
				dl->fds[i] = -1;
			}
		for (i = 0; i < 50 && privsep_wait(dl->child, &st, 1) == 0; i++)
			usleep(20 * 1000);
		if (i == 50) {
			privsep_kill(dl->child);
			(void)privsep_wait(dl->child, &st, 0);
		}
	}
	delivery_free(dl);
}

static void *
delivery_worker(void *arg)
{
	struct slot *sl = arg;
	struct delivery *dl = sl->dl;
	struct q_envelope *env;
	enum q_status st;

	while (!dl->stopping) {
		delivery_reap(dl, 0);
		env = NULL;
		if (dl->privsep)
			pthread_mutex_lock(&dl->lease_mu);	/* delivery_batch unlocks */
		st = dl->stopping ? Q_NOTFOUND : queue_lease(dl->d->queue, 1000, &env);
		if (st != Q_OK || env == NULL) {
			if (dl->privsep)
				pthread_mutex_unlock(&dl->lease_mu);
			if (st != Q_NOTFOUND)
				usleep(200 * 1000);
			continue;
		}
		if (dl->privsep)
			delivery_batch(sl, env);
		else
			delivery_message(sl, env);
	}
	return NULL;
}

static void
delivery_set(struct q_rcpt *qr, enum q_rcpt_state state, const char *reply)
{
	size_t l = reply != NULL ? strnlen(reply, QUEUE_REPLY_MAX - 1) : 0;
	char *dup = malloc(l + 1);

	qr->state = state;
	qr->last_attempt = time(NULL);
	if (dup != NULL) {
		memcpy(dup, reply != NULL ? reply : "", l);
		dup[l] = '\0';
		free(qr->reply);
		qr->reply = dup;
	}
}

/* One recipient's outcome of this attempt, for the metrics. */
static void
delivery_count(const struct q_envelope *env, const struct q_rcpt *r)
{
	const char *res = r->state == Q_RCPT_DELIVERED ? "delivered" :
	    r->state == Q_RCPT_FAILED ? "failed" : "deferred";
	struct bounce_result b = { 0 };

	if (r->state != Q_RCPT_DELIVERED)
		bounce_classify(r->reply, &b);
	metrics_delivery(q_class_name(env->klass), res, r->reply,
	    bounce_class_name(b.klass));
	if (r->state == Q_RCPT_DELIVERED)
		metrics_delivery_latency((double)(time(NULL) - env->created));
}

/*
 * Notes which recipients this attempt is about (for the metrics and the
 * events) and reads the body: 0, or -1 (the open recipients are deferred).
 */
static int
delivery_begin(struct delivery *dl, struct q_envelope *env, char **was_open,
    size_t *nopen, char **data, size_t *len)
{
	size_t i;

	*data = NULL;
	*len = 0;
	*nopen = env->nrcpt;
	if ((*was_open = calloc(*nopen + 1, 1)) == NULL)
		*nopen = 0;
	for (i = 0; i < *nopen; i++)
		(*was_open)[i] = env->rcpts[i].state == Q_RCPT_PENDING ||
		    env->rcpts[i].state == Q_RCPT_DEFERRED;
	if (queue_body(dl->d->queue, env->id, data, len) == Q_OK)
		return 0;
	for (i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state == Q_RCPT_PENDING ||
		    env->rcpts[i].state == Q_RCPT_DEFERRED)
			delivery_set(&env->rcpts[i], Q_RCPT_DEFERRED,
			    "4.3.0 cannot read the queued message");
	log_msg(LOG_ERR, "event=delivery_error id=%s error=\"cannot read body\"", env->id);
	return -1;
}

/* After the attempt: what was not tried is deferred, counted, announced
 * (the events of a batch are made durable together, see delivery_batch). */
static void
delivery_conclude(struct q_envelope *env, char *was_open, size_t nopen)
{
	char *summary = NULL, *fsummary = NULL;
	size_t i;

	/* Whatever was not tried (stopping, memory) stays open: deferred. */
	for (i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].state == Q_RCPT_PENDING)
			delivery_set(&env->rcpts[i], Q_RCPT_DEFERRED,
			    "4.3.0 delivery interrupted");
		if (env->rcpts[i].state == Q_RCPT_DEFERRED && summary == NULL)
			summary = env->rcpts[i].reply;
		if (env->rcpts[i].state == Q_RCPT_FAILED && fsummary == NULL)
			fsummary = env->rcpts[i].reply;	/* a 5xx shows too */
		/* every recipient open at lease time was tried (or deferred) now */
		if (i < nopen && was_open[i])
			delivery_count(env, &env->rcpts[i]);
	}
	events_delivery(env, was_open, was_open != NULL ? nopen : 0);
	free(was_open);
	if (summary == NULL)
		summary = fsummary;
	if (summary != NULL) {
		char *dup = strdup(summary);

		if (dup != NULL) {
			free(env->last_error);
			env->last_error = dup;
		}
	}
}

static void
delivery_release(struct delivery *dl, struct q_envelope *env)
{
	enum q_status st;

	suppress_note_outcome(dl->d, env);
	if ((st = queue_release_lease(dl->d->queue, env)) != Q_OK)
		log_msg(LOG_ERR, "event=delivery_error error=\"queue_release_lease failed\" status=%d", st);
}

/* One leased message, delivered in this process (sandbox, or SMTP here). */
static void
delivery_message(struct slot *sl, struct q_envelope *env)
{
	struct delivery *dl = sl->dl;
	char *data, *was_open;
	size_t len, nopen;

	if (delivery_begin(dl, env, &was_open, &nopen, &data, &len) == 0) {
		if (dl->cfg->sandbox)
			delivery_sandbox(dl, env, data, len);
		else
			delivery_route(dl, env, data, len);
	}
	delivery_conclude(env, was_open, nopen);
	free(data);
	delivery_release(dl, env);
}

/* Routes and delivers the open recipients of env, domain by domain. */
static void
delivery_route(struct delivery *dl, struct q_envelope *env, const char *data, size_t len)
{
	char domain[ADDR_DOMAIN_MAX + 1], **doms = NULL;
	size_t i, j, n, ndoms = 0, *idx = NULL;

	if ((idx = calloc(env->nrcpt + 1, sizeof(*idx))) == NULL ||
	    (doms = calloc(env->nrcpt + 1, sizeof(*doms))) == NULL)
		goto out;
	/* Distinct domains of the open recipients, in order. */
	for (i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].state != Q_RCPT_PENDING &&
		    env->rcpts[i].state != Q_RCPT_DEFERRED)
			continue;
		if (addr_domain_lower(env->rcpts[i].addr, domain, sizeof(domain)) == -1 ||
		    domain[0] == '\0') {
			delivery_set(&env->rcpts[i], Q_RCPT_FAILED,
			    "5.1.3 bad recipient address");
			continue;
		}
		for (j = 0; j < ndoms; j++)
			if (strcmp(doms[j], domain) == 0)
				break;
		if (j == ndoms && (doms[ndoms++] = strdup(domain)) == NULL)
			ndoms--;
	}
	for (j = 0; j < ndoms && !dl->stopping; j++) {
		n = 0;
		for (i = 0; i < env->nrcpt; i++) {
			if ((env->rcpts[i].state != Q_RCPT_PENDING &&
			    env->rcpts[i].state != Q_RCPT_DEFERRED) ||
			    addr_domain_lower(env->rcpts[i].addr, domain, sizeof(domain)) == -1 ||
			    strcmp(domain, doms[j]) != 0)
				continue;
			idx[n++] = i;
		}
		if (n > 0)
			delivery_domain(dl, env, data, len, doms[j], idx, n);
	}
out:
	for (j = 0; j < ndoms; j++)
		free(doms[j]);
	free(doms);
	free(idx);
}

/* --- privilege separation ------------------------------------------- */

static __thread const struct dlp_job	*delivery_cur_job;
static __thread struct dlp_result	*delivery_cur_res;

/* The hop that took a recipient, in the delivery process until the result
 * carries it to the main process's events (its own threads only). */
struct delivery_hop {
	char	*rcpt;
	char	 mx[256], ip[64], tls[32];
};
static __thread struct delivery_hop	*delivery_hops;
static __thread size_t			 delivery_nhops;

static void
delivery_note_hop(const char *rcpt, const char *mx, const char *ip, const char *tls)
{
	struct delivery_hop *h;

	if (delivery_cur_res == NULL) {	/* not in the delivery process */
		events_note_hop(rcpt, mx, ip, tls);
		return;
	}
	if ((h = realloc(delivery_hops, (delivery_nhops + 1) * sizeof(*h))) == NULL)
		return;
	delivery_hops = h;
	h += delivery_nhops;
	if ((h->rcpt = strdup(rcpt)) == NULL)
		return;
	snprintf(h->mx, sizeof(h->mx), "%s", mx ? mx : "");
	snprintf(h->ip, sizeof(h->ip), "%s", ip ? ip : "");
	snprintf(h->tls, sizeof(h->tls), "%s", tls ? tls : "");
	delivery_nhops++;
}

static const struct delivery_hop *
delivery_hop_of(const char *rcpt)
{
	size_t i;

	for (i = 0; i < delivery_nhops; i++)
		if (strcmp(delivery_hops[i].rcpt, rcpt) == 0)
			return &delivery_hops[i];
	return NULL;
}

static void
delivery_hops_clear(void)
{
	size_t i;

	for (i = 0; i < delivery_nhops; i++)
		free(delivery_hops[i].rcpt);
	free(delivery_hops);
	delivery_hops = NULL;
	delivery_nhops = 0;
}

/* The delivery process's side of the current job (its own threads only). */

/* tlsrpt_record in the delivery process: the counts go with the result. */
static void
delivery_tls_forward(const char *domain, enum tlsrpt_ptype ptype, int sts,
    const char *mx, const char *ip, const char *rtype)
{
	if (delivery_cur_res != NULL)
		(void)dlp_result_add_tls(delivery_cur_res, domain, ptype, sts, mx, ip, rtype);
}

/*
 * Makes a delivery process current (pmu held): the spare if there is one,
 * else a new one; its sockets wait in dl->fds.  Then starts the next spare.
 */
static int
delivery_spawn_locked(struct delivery *dl, char *err, size_t errlen)
{
	char serr[512];
	pid_t pid;
	int k;

	for (k = 0; k < dl->nth; k++) {
		if (dl->fds[k] != -1)
			close(dl->fds[k]);
		dl->fds[k] = -1;
	}
	if (dl->spare > 0) {
		pid = dl->spare;
		for (k = 0; k < dl->nth; k++) {
			dl->fds[k] = dl->spare_fds[k];
			dl->spare_fds[k] = -1;
		}
		dl->spare = -1;
	} else if ((pid = privsep_start(dl->exe, dl->d->config_path, dl->cfg,
	    dl->nth, dl->fds, err, errlen)) == -1)
		return -1;
	dl->child = pid;
	dl->gen++;
	if ((dl->spare = privsep_start(dl->exe, dl->d->config_path, dl->cfg, dl->nth,
	    dl->spare_fds, serr, sizeof(serr))) == -1)
		log_msg(LOG_WARNING, "event=delivery_process_failed spare=yes detail=\"%s\"",
		    serr);
	return 0;
}

/* This slot's socket to the current delivery process (started if none). */
static int
delivery_slot_fd(struct slot *sl)
{
	struct delivery *dl = sl->dl;
	char err[512];
	int fd;

	pthread_mutex_lock(&dl->pmu);
	if (dl->child == -1 && !dl->stopping &&
	    delivery_spawn_locked(dl, err, sizeof(err)) == -1)
		log_msg(LOG_ERR, "event=delivery_process_failed detail=\"%s\"", err);
	if (sl->gen != dl->gen) {
		if (sl->fd != -1)
			close(sl->fd);
		dlp_rbuf_free(&sl->rd);	/* what the last one said is void */
		sl->fd = dl->fds[sl->k];
		dl->fds[sl->k] = -1;
		sl->gen = dl->gen;
	}
	fd = sl->fd;
	pthread_mutex_unlock(&dl->pmu);
	return fd;
}

/*
 * The delivery process this slot talked to failed (died, or said something
 * that is not the protocol): the first slot to see it ends it for good and
 * starts the next one.
 */
static void
delivery_lost(struct slot *sl, const char *why)
{
	struct delivery *dl = sl->dl;
	char err[512], how[64];
	pid_t lost;
	int st = 0;

	dlp_rbuf_free(&sl->rd);
	pthread_mutex_lock(&dl->pmu);
	if (sl->gen == dl->gen && dl->child > 0) {
		lost = dl->child;
		privsep_kill(lost);
		(void)privsep_wait(lost, &st, 0);
		if (WIFSIGNALED(st))
			snprintf(how, sizeof(how), "signal=%d", WTERMSIG(st));
		else
			snprintf(how, sizeof(how), "exit=%d", WEXITSTATUS(st));
		dl->restarts++;
		dl->child = -1;
		if (!dl->stopping && delivery_spawn_locked(dl, err, sizeof(err)) == -1)
			log_msg(LOG_ERR, "event=delivery_process_failed detail=\"%s\"", err);
		log_msg(dl->stopping ? LOG_INFO : LOG_ERR, "event=delivery_process_lost "
		    "pid=%ld %s detail=\"%s\" restarts=%lu next=%ld", (long)lost, how,
		    why, dl->restarts, (long)dl->child);
	}
	if (dl->child == -1 && !dl->stopping) {
		pthread_mutex_unlock(&dl->pmu);
		usleep(DELIVERY_SPAWN_PAUSE * 1000);
		return;
	}
	pthread_mutex_unlock(&dl->pmu);
}

/*
 * Waits for the result in poll: a read blocked on the socket is also woken
 * when the delivery process takes the job from it (the socket's write
 * space), then sleeps again, a context switch more per message.
 */
static int
delivery_wait_result(int fd)
{
	struct pollfd pfd = { fd, POLLIN, 0 };

	while (poll(&pfd, 1, -1) == -1)
		if (errno != EINTR)
			return -1;
	return 0;
}

/*
 * Main process: the job for the open recipients of env (with the MTA-STS
 * policy of each MX-routed domain, whose cache and fetches stay here),
 * encoded in b: 1, or 0 when there is nothing to send (no open recipient,
 * or too large: those are deferred).
 */
static int
delivery_job_make(struct delivery *dl, struct q_envelope *env, const char *data,
    size_t len, struct dlp_job *job, struct dlp_buf *b)
{
	const struct config *cfg = dl->cfg;
	char domain[ADDR_DOMAIN_MAX + 1];
	size_t i, k;

	memset(job, 0, sizeof(*job));
	job->id = env->id;
	job->sender = env->sender;
	job->flags = (uint32_t)env->flags;
	job->klass = (uint32_t)env->klass;
	job->created = env->created;
	job->data = data;
	job->len = len;
	if ((job->rcpts = calloc(env->nrcpt + 1, sizeof(*job->rcpts))) == NULL ||
	    (job->idx = calloc(env->nrcpt + 1, sizeof(*job->idx))) == NULL ||
	    (job->doms = calloc(env->nrcpt + 1, sizeof(*job->doms))) == NULL)
		return 0;	/* the recipients stay open: deferred */
	for (i = 0; i < env->nrcpt; i++) {
		if (env->rcpts[i].state != Q_RCPT_PENDING &&
		    env->rcpts[i].state != Q_RCPT_DEFERRED)
			continue;
		job->idx[job->nrcpt] = (uint32_t)i;
		job->rcpts[job->nrcpt++] = env->rcpts[i].addr;
		if (addr_domain_lower(env->rcpts[i].addr, domain, sizeof(domain)) == -1 ||
		    domain[0] == '\0')
			continue;
		for (k = 0; k < job->ndom; k++)
			if (strcmp(job->doms[k].name, domain) == 0)
				break;
		if (k < job->ndom || (job->doms[k].name = strdup(domain)) == NULL)
			continue;
		job->ndom++;
		if (config_route(cfg, domain) == NULL && cfg->smarthost == NULL)
			job->doms[k].sts_on = mtasts_for_delivery(cfg, dl->d->state_dir,
			    domain, &job->doms[k].sts);
	}
	if (job->nrcpt == 0)
		return 0;
	if (dlp_job_encode(b, job) == -1) {
		for (i = 0; i < job->nrcpt; i++)
			delivery_set(&env->rcpts[job->idx[i]], Q_RCPT_DEFERRED,
			    "4.3.0 message too large for the delivery process");
		return 0;
	}
	return 1;
}

static void
delivery_job_clear(struct dlp_job *job)
{
	size_t k;

	for (k = 0; k < job->ndom; k++)
		free(job->doms[k].name);
	free(job->doms);
	free(job->rcpts);
	free(job->idx);
	memset(job, 0, sizeof(*job));
}

/*
 * Main process: reads the result of f's job (the next frame from the
 * delivery process: it answers in order) and records it on f's envelope.
 * -1 when the process is to be given up (closed, failed, or said
 * something that is not the protocol), with why.
 */
static int
delivery_job_result(struct slot *sl, int fd, struct flight *f, const char **why)
{
	struct q_envelope *env = f->env;
	const struct dlp_job *job = &f->job;
	struct dlp_result res;
	char *buf = NULL;
	size_t i, k, blen;
	int rc = 0;

	memset(&res, 0, sizeof(res));
	/*
	 * An empty frame is the process saying it started: one is skipped,
	 * a second in a row is refused (a process that sent only those would
	 * hold this worker for ever).
	 */
	for (k = 0;; k++) {
		free(buf);
		buf = NULL;
		if ((!dlp_rbuf_ready(&sl->rd) && delivery_wait_result(fd) == -1) ||
		    dlp_recv_rbuf(fd, &sl->rd, DLP_RESULT_MAX, &buf, &blen) == -1) {
			*why = errno == 0 ? "connection closed" : strerror(errno);
			rc = -1;
			goto out;
		}
		if (blen > 0)
			break;
		atomic_store(&sl->dl->ready_seen, 1);
		if (k > 0) {
			*why = "malformed result";
			rc = -1;
			goto out;
		}
	}
	if (dlp_result_decode(buf, blen, &res) == -1 || dlp_result_check(&res, job) == -1) {
		*why = "malformed result";
		rc = -1;
		goto out;
	}
	for (i = 0; i < res.n; i++) {
		delivery_set(&env->rcpts[res.o[i].idx], res.o[i].state == DLP_DELIVERED ?
		    Q_RCPT_DELIVERED : res.o[i].state == DLP_FAILED ? Q_RCPT_FAILED :
		    Q_RCPT_DEFERRED, res.o[i].reply);
		/* the hop, for the delivered event (the job's own recipient) */
		if (res.o[i].state == DLP_DELIVERED && res.o[i].mx[0] != '\0')
			events_note_hop(env->rcpts[res.o[i].idx].addr, res.o[i].mx,
			    res.o[i].ip, res.o[i].tls);
	}
	/* TLS-RPT counts, for the domains of this job only */
	for (i = 0; i < res.ntls; i++) {
		const struct dlp_tls *t = &res.tls[i];

		for (k = 0; k < job->ndom; k++)
			if (strcmp(job->doms[k].name, t->domain) == 0)
				break;
		if (k == job->ndom)
			continue;
		tlsrpt_record(t->domain, (enum tlsrpt_ptype)t->ptype,
		    t->sts && job->doms[k].sts_on ? &job->doms[k].sts : NULL,
		    t->mx[0] ? t->mx : NULL, t->ip[0] ? t->ip : NULL,
		    t->rtype[0] ? t->rtype : NULL);
	}
out:
	dlp_result_free(&res);
	free(buf);
	return rc;
}

/* Was id in flight at this slot's last loss of the delivery process? */
static int
delivery_lost_before(const struct slot *sl, const char *id)
{
	size_t i;

	for (i = 0; i < sl->nlost; i++)
		if (strcmp(sl->lost[i], id) == 0)
			return 1;
	return 0;
}

/*
 * Holding lease_mu: notes a lease at now; 1 if messages come faster than
 * one per DELIVERY_GATHER (the batch begun now may wait for the next).
 */
static int
delivery_lease_noted(struct delivery *dl, double now)
{
	if (dl->last_lease > 0)
		dl->gap = 0.875 * dl->gap + 0.125 * (now - dl->last_lease);
	dl->last_lease = now;
	return dl->gap < DELIVERY_GATHER;
}

/* How long a batch begun at g0 may still wait for its next message (us). */
static long
delivery_gather_left(double g0)
{
	double left = g0 + DELIVERY_GATHER - delivery_mono();

	return left > 0 ? (long)(left * 1e6) : 0;
}

/*
 * Main process: has the delivery process deliver env and the messages due
 * with it (a batch, see DELIVERY_BATCH), records the outcomes and releases
 * the leases.  Called holding the leasing baton (lease_mu), which it passes
 * on once the batch is gathered.  The events of the batch are made durable
 * together, before any of its leases is released.  When the process is
 * lost, what had no result goes back to the queue untouched, due now; a
 * message in flight at two losses in a row of this slot is deferred
 * instead, so one that kills the process cannot keep it dying.
 */
static void
delivery_batch(struct slot *sl, struct q_envelope *env)
{
	struct delivery *dl = sl->dl;
	struct flight f[DELIVERY_BATCH], *m;
	struct dlp_buf out[DELIVERY_BATCH];
	char lost[DELIVERY_BATCH][QUEUE_ID_LEN + 1];
	const char *why = NULL;
	size_t n = 0, nout = 0, nlost = 0, bytes = 0, i, k;
	struct q_envelope *later[DELIVERY_BATCH];
	size_t nlater = 0;
	int fd = -1, gone = 0, gather;
	uint64_t upto;
	double t0, g0;

	memset(f, 0, sizeof(f));
	g0 = delivery_mono();
	gather = delivery_lease_noted(dl, g0);
	for (;;) {
		m = &f[n++];
		m->env = env;
		dlp_buf_init(&m->b);
		if (delivery_begin(dl, env, &m->was_open, &m->nopen, &m->data, &m->len) == 0 &&
		    delivery_job_make(dl, env, m->data, m->len, &m->job, &m->b) == 1) {
			m->sent = 1;
			out[nout++] = m->b;
			bytes += m->b.len;
		}
		if (n == DELIVERY_BATCH || bytes >= DELIVERY_BATCH_BYTES ||
		    m->job.nrcpt > DELIVERY_BATCH_RCPTS || dl->stopping ||
		    sl->per_job > DELIVERY_BATCH_FAST ||
		    queue_lease_us(dl->d->queue, gather ? delivery_gather_left(g0) : 0,
		    &env) != Q_OK || env == NULL)
			break;
		(void)delivery_lease_noted(dl, delivery_mono());
	}
	pthread_mutex_unlock(&dl->lease_mu);	/* the next worker leases */
	if (n > 1)
		log_msg(LOG_DEBUG, "event=delivery_batch messages=%zu jobs=%zu bytes=%zu",
		    n, nout, bytes);
	t0 = delivery_mono();
	if (nout > 0 && ((fd = delivery_slot_fd(sl)) == -1 || dlp_sendv(fd, out, nout) == -1)) {
		why = fd == -1 ? "not running" : errno == 0 ? "connection closed" :
		    strerror(errno);
		gone = 1;
	}
	events_batch_begin();
	for (i = 0; i < n; i++) {
		m = &f[i];
		if (m->sent && !gone && delivery_job_result(sl, fd, m, &why) == -1)
			gone = 1;
		if (m->sent && gone) {
			if (!delivery_lost_before(sl, m->env->id) || dl->stopping) {
				m->back = 1;
				snprintf(lost[nlost++], sizeof(lost[0]), "%s", m->env->id);
				continue;
			}
			log_msg(LOG_ERR, "event=delivery_error id=%s error=\"the delivery "
			    "process ended twice during this message; deferred\"", m->env->id);
			for (k = 0; k < m->job.nrcpt; k++)
				delivery_set(&m->env->rcpts[m->job.idx[k]], Q_RCPT_DEFERRED,
				    "4.3.0 the delivery process ended during this message");
		}
		delivery_conclude(m->env, m->was_open, m->nopen);
		m->was_open = NULL;
	}
	if (nout > 0 && !gone)
		sl->per_job = 0.75 * sl->per_job + 0.25 * (delivery_mono() - t0) / (double)nout;
	/* the leases go once the batch's events are durable: delivered
	 * messages through the releaser, the rest after a wait here */
	upto = events_batch_end_async();
	if (gone) {
		delivery_lost(sl, why != NULL ? why : "connection closed");
		for (i = 0; i < nlost; i++)
			memcpy(sl->lost[i], lost[i], sizeof(lost[i]));
		sl->nlost = nlost;
	} else
		sl->nlost = 0;
	for (i = 0; i < n; i++) {
		m = &f[i];
		free(m->data);
		free(m->was_open);
		dlp_buf_free(&m->b);
		delivery_job_clear(&m->job);
		if (!m->back) {
			if (dl->rel_on && !gone && delivery_all_delivered(m->env)) {
				later[nlater++] = m->env;
				continue;
			}
			events_wait(upto);	/* at once after the first */
			delivery_release(dl, m->env);
			continue;
		}
		/* nothing to record, nothing was concluded */
		if (queue_return_lease(dl->d->queue, m->env) != Q_OK)
			log_msg(LOG_ERR, "event=delivery_error error=\"queue_return_lease "
			    "failed\"");
	}
	if (nlater > 0 && delivery_release_later(dl, later, nlater, upto) == -1) {
		events_wait(upto);
		for (i = 0; i < nlater; i++)
			delivery_release(dl, later[i]);
	}
}

/*
 * Delivery process: one worker per socket.  A job is delivered like a
 * leased message and answered with the outcome of every recipient that
 * concluded.  The results are held while more jobs are waiting (a batch)
 * and go together once none is; EOF (the main process closed it or is
 * gone) ends the worker, anything else the process.
 */
static void *
delivery_child_worker(void *arg)
{
	struct slot *sl = arg;
	struct delivery *dl = sl->dl;
	struct dlp_buf held[DLP_SENDV_MAX];
	struct q_envelope env;
	struct dlp_result res;
	struct dlp_job job;
	char *buf;
	size_t i, len, nheld = 0, nres = 0;

	/* named from within: pthread_setname_np would write to /proc, which
	 * the chroot and Landlock took away */
	(void)prctl(PR_SET_NAME, "dl-worker");
	for (;;) {
		struct pollfd pfd = { sl->fd, POLLIN, 0 };

		if (nheld > 0 && (nheld == DLP_SENDV_MAX ||
		    (!dlp_rbuf_ready(&sl->rd) && poll(&pfd, 1, 0) <= 0))) {
			if (dlp_sendv(sl->fd, held, nheld) == -1) {
				if (errno == 0 || errno == EPIPE)
					_exit(0);	/* the main process went */
				_exit(1);
			}
			for (i = 0; i < nheld; i++)
				dlp_buf_free(&held[i]);
			nheld = 0;
		}
		/* idle sessions past session_idle_timeout close while no job
		 * comes; and poll, unlike a read, does not wake when the main
		 * process takes our last result (the socket's write space) */
		if (nheld == 0 && !dlp_rbuf_ready(&sl->rd)) {
			delivery_reap(dl, 0);
			if (poll(&pfd, 1, 1000) == 0)
				continue;
		}
		if (dlp_recv_rbuf(sl->fd, &sl->rd, DLP_FRAME_MAX, &buf, &len) == -1) {
			if (errno == 0) {
				dlp_rbuf_free(&sl->rd);
				return NULL;
			}
			log_msg(LOG_ERR, "event=delivery_process_error error=\"%s\"",
			    strerror(errno));
			_exit(1);
		}
		if (dlp_job_decode(buf, len, &job) == -1) {
			log_msg(LOG_ERR, "event=delivery_process_error error=\"malformed job\"");
			_exit(1);
		}
		memset(&env, 0, sizeof(env));
		memset(&res, 0, sizeof(res));
		snprintf(env.id, sizeof(env.id), "%s", job.id);
		env.sender = job.sender;
		env.klass = job.klass < Q_CLASS_COUNT ? (enum q_class)job.klass : Q_CLASS_DEFAULT;
		env.flags = (int)job.flags;
		env.created = (time_t)job.created;
		env.nrcpt = job.nrcpt;
		if ((env.rcpts = calloc(job.nrcpt, sizeof(*env.rcpts))) == NULL)
			_exit(1);
		for (i = 0; i < job.nrcpt; i++) {
			env.rcpts[i].addr = job.rcpts[i];
			env.rcpts[i].state = Q_RCPT_PENDING;
		}
		delivery_cur_job = &job;
		delivery_cur_res = &res;
		delivery_route(dl, &env, job.data, job.len);
		delivery_cur_job = NULL;
		delivery_cur_res = NULL;
		for (i = 0; i < job.nrcpt; i++) {
			struct q_rcpt *r = &env.rcpts[i];

			const struct delivery_hop *h = delivery_hop_of(r->addr);

			if (r->state != Q_RCPT_PENDING &&
			    dlp_result_add(&res, job.idx[i], r->state == Q_RCPT_DELIVERED ?
			    DLP_DELIVERED : r->state == Q_RCPT_FAILED ? DLP_FAILED :
			    DLP_DEFERRED, r->reply, h ? h->mx : NULL, h ? h->ip : NULL,
			    h ? h->tls : NULL) == -1)
				_exit(1);
			free(r->reply);
		}
		free(env.rcpts);
		delivery_hops_clear();
		/* the test hook: empty frames before each result but the
		 * first (the ready frame is before that one), as a hostile
		 * process could send (test_privsep.py) */
		for (i = 0; nres > 0 && i < delivery_fault_empty &&
		    nheld < DLP_SENDV_MAX - 1; i++)
			dlp_buf_init(&held[nheld++]);
		nres++;
		dlp_buf_init(&held[nheld]);
		if (dlp_result_encode(&held[nheld], &res) == -1)
			_exit(1);
		nheld++;
		dlp_result_free(&res);
		dlp_job_free(&job);
		free(buf);
	}
}

static void
delivery_sandbox(struct delivery *dl, struct q_envelope *env, const char *data, size_t len)
{
	const char **rc;
	char name[SANDBOX_NAME_MAX + 1], err[512];
	size_t i, n = 0;
	int r;

	if ((rc = calloc(env->nrcpt + 1, sizeof(*rc))) == NULL)
		return;
	for (i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state == Q_RCPT_PENDING ||
		    env->rcpts[i].state == Q_RCPT_DEFERRED)
			rc[n++] = env->rcpts[i].addr;
	if (n == 0) {
		free(rc);
		return;
	}
	r = sandbox_deliver(dl->maildir, env->id, env->sender, rc, n, data, len,
	    name, sizeof(name), err, sizeof(err));
	for (i = 0; i < env->nrcpt; i++)
		if (env->rcpts[i].state == Q_RCPT_PENDING ||
		    env->rcpts[i].state == Q_RCPT_DEFERRED)
			delivery_set(&env->rcpts[i], r == 0 ? Q_RCPT_DELIVERED :
			    Q_RCPT_DEFERRED, r == 0 ? "250 sandbox" : err);
	if (r == 0)
		log_msg(LOG_INFO, "event=delivery id=%s relay=sandbox rcpts=%zu "
		    "result=delivered reply=\"250 sandbox\" file=%s delay=%lds",
		    env->id, n, name, (long)(time(NULL) - env->created));
	else
		log_msg(LOG_ERR, "event=delivery id=%s relay=sandbox rcpts=%zu "
		    "result=deferred reply=%s", env->id, n, err);
	free(rc);
}

static int
delivery_is_literal(const char *host)
{
	return host != NULL && host[0] == '[';
}

static size_t
delivery_pending(const struct job *j)
{
	size_t i, n = 0;

	for (i = 0; i < j->n; i++)
		if (j->r[i].status == SMTP_TEMP)
			n++;
	return n;
}

/*
 * What DNS (or an address literal) names is the recipient domain's to
 * choose, so it must not reach the inside: internal addresses are dropped
 * (a route, smarthost or relay the admin configured may name them).
 * MX_INTERNAL if nothing is left.
 */
static enum mx_status
delivery_drop_internal(const struct q_envelope *env, const char *domain,
    struct mx_list *list, char *reason, size_t len)
{
	char first[300 + INET6_ADDRSTRLEN] = "";
	size_t n;

	if ((n = mx_list_drop_internal(list, first, sizeof(first))) == 0)
		return MX_OK;
	log_msg(LOG_WARNING, "event=delivery_internal_refused id=%s domain=%s "
	    "addresses=%zu first=%s left=%zu", env->id, domain, n,
	    first, list->nhosts);
	if (list->nhosts > 0)
		return MX_OK;
	snprintf(reason, len, "every mail server of %s is at an internal address "
	    "(loopback, private, link-local or metadata), such as %s; otpmail does "
	    "not deliver there unless a route names it", domain, first);
	return MX_INTERNAL;
}

/* Delivers the recipients idx[0..n) of env, all in domain. */
static void
delivery_domain(struct delivery *dl, struct q_envelope *env, const char *data,
    size_t len, const char *domain, size_t *idx, size_t n)
{
	const struct config *cfg = dl->cfg;
	const struct route *rt;
	struct mx_list *list = NULL;
	char reason[SMTP_REPLY_MAX];
	struct job j;
	struct hop hop;
	enum mx_status ms;
	size_t i;

	memset(&j, 0, sizeof(j));
	j.dl = dl;
	j.env = env;
	j.data = data;
	j.len = len;
	j.domain = domain;
	j.policy = config_tls_policy(cfg, domain);
	j.n = n;
	if ((j.r = calloc(n, sizeof(*j.r))) == NULL)
		return;
	for (i = 0; i < n; i++) {
		j.r[i].addr = env->rcpts[idx[i]].addr;
		j.r[i].status = SMTP_TEMP;
		snprintf(j.r[i].reply, sizeof(j.r[i].reply), "4.4.1 not attempted");
	}
	memset(&hop, 0, sizeof(hop));
	reason[0] = '\0';
	if ((rt = config_route(cfg, domain)) != NULL) {
		hop.kind = "route";
		hop.conf_host = rt->host;
		hop.port = rt->port;
		/*
		 * The domain is part of the key: a session verified for one
		 * domain's name (literal routes check the domain) must never
		 * carry another domain's mail.
		 */
		snprintf(hop.key, sizeof(hop.key), "route:%s:%s:%d|%d", domain, rt->host,
		    rt->port, j.policy);
		ms = mx_host(dl->mx, rt->host, rt->port, &list, reason, sizeof(reason));
	} else if (cfg->smarthost != NULL) {
		hop.kind = "smarthost";
		hop.conf_host = cfg->smarthost->host;
		hop.port = cfg->smarthost->port;
		hop.auth = dl->auth_pass != NULL;
		snprintf(hop.key, sizeof(hop.key), "relay:%s:%d|%d", cfg->smarthost->host,
		    cfg->smarthost->port, j.policy);
		ms = mx_host(dl->mx, cfg->smarthost->host, cfg->smarthost->port, &list,
		    reason, sizeof(reason));
	} else {
		hop.kind = "mx";
		hop.port = cfg->smtp_port;
		/* the delivery process has the policy from its job */
		j.sts_on = delivery_cur_job != NULL ?
		    dlp_job_sts(delivery_cur_job, domain, &j.sts) :
		    mtasts_for_delivery(cfg, dl->d->state_dir, domain, &j.sts);
		snprintf(hop.key, sizeof(hop.key), "mx:%s|%d%s", domain, j.policy,
		    j.sts_on ? "|sts" : "");
		ms = mx_lookup(dl->mx, domain, cfg->smtp_port, &list, reason, sizeof(reason));
		if (ms == MX_OK && !cfg->mx_allow_internal)
			ms = delivery_drop_internal(env, domain, list, reason, sizeof(reason));
	}
	if (ms == MX_OK && list != NULL && list->nhosts > 0) {
		hop.hosts = list;
		delivery_try_hop(&j, &hop, env->klass == Q_CLASS_OTP &&
		    strcmp(hop.kind, "smarthost") != 0);
	} else {
		/* Only the recipient domain's own DNS can fail a mail; a broken
		 * route or relay name is the admin's to fix: defer. */
		int perm = strcmp(hop.kind, "mx") == 0 && (ms == MX_NXDOMAIN ||
		    ms == MX_NULLMX || ms == MX_NOHOST || ms == MX_INTERNAL);
		char why[SMTP_REPLY_MAX];
		struct bounce_result b;

		snprintf(why, sizeof(why), "%s %s: %s",
		    ms == MX_NULLMX ? "5.1.10" : ms == MX_INTERNAL ? "5.4.4" :
		    perm ? "5.1.2" : "4.4.3",
		    strcmp(hop.kind, "mx") == 0 ? domain : "next hop",
		    reason[0] ? reason : ms == MX_NULLMX ? "null MX: the domain accepts no mail" :
		    perm ? "no such domain" : "DNS lookup failed");
		for (i = 0; i < n; i++) {
			j.r[i].status = perm ? SMTP_PERM : SMTP_TEMP;
			snprintf(j.r[i].reply, sizeof(j.r[i].reply), "%s", why);
		}
		bounce_classify(why, &b);
		log_msg(LOG_INFO, "event=delivery id=%s domain=%s relay=none "
		    "result=%s rcpts=%zu reply=%s delay=%lds bounce=%s", env->id, domain,
		    perm ? "failed" : "deferred", n, why,
		    (long)(time(NULL) - env->created), bounce_class_name(b.klass));
		snprintf(j.last_temp, sizeof(j.last_temp), "%s", why);
	}
	/* Direct delivery deferred: the fallback relays (never for DNS non-existence). */
	if (delivery_pending(&j) > 0 && strcmp(hop.kind ? hop.kind : "", "smarthost") != 0 &&
	    !dl->stopping)
		delivery_fallback(&j);
	for (i = 0; i < n; i++)
		if (j.r[i].status == SMTP_TEMP && j.last_temp[0] != '\0' &&
		    strncmp(j.r[i].reply, "4.4.1 not attempted", 19) == 0)
			snprintf(j.r[i].reply, sizeof(j.r[i].reply), "%s", j.last_temp);
	for (i = 0; i < n; i++)
		delivery_set(&env->rcpts[idx[i]], j.r[i].status == SMTP_OK ?
		    Q_RCPT_DELIVERED : j.r[i].status == SMTP_PERM ? Q_RCPT_FAILED :
		    Q_RCPT_DEFERRED, j.r[i].reply);
	mx_list_free(list);
	free(j.r);
}

static int
delivery_fallback(struct job *j)
{
	const struct config *cfg = j->dl->cfg;
	struct mx_list *list = NULL;
	char reason[SMTP_REPLY_MAX];
	struct hop hop;
	size_t k;

	if (j->fallback_done || cfg->nfallback_relays == 0)
		return 0;
	j->fallback_done = 1;
	for (k = 0; k < cfg->nfallback_relays && delivery_pending(j) > 0 &&
	    !j->dl->stopping; k++) {
		memset(&hop, 0, sizeof(hop));
		hop.kind = "fallback";
		hop.conf_host = cfg->fallback_relays[k].host;
		hop.port = cfg->fallback_relays[k].port;
		snprintf(hop.key, sizeof(hop.key), "relay:%s:%d|%d",
		    cfg->fallback_relays[k].host, hop.port, j->policy);
		if (mx_host(j->dl->mx, cfg->fallback_relays[k].host, hop.port, &list,
		    reason, sizeof(reason)) != MX_OK || list == NULL) {
			mx_list_free(list);
			list = NULL;
			continue;
		}
		hop.hosts = list;
		delivery_try_hop(j, &hop, 0);
		mx_list_free(list);
		list = NULL;
	}
	return 0;
}

/*
 * Tries the hop: an idle session first, then every address of every host in
 * order, until no recipient is temporarily failed.  otp_early: after the
 * first temporary failure go to the fallback relays before the other hosts.
 */
static int
delivery_try_hop(struct job *j, struct hop *hop, int otp_early)
{
	struct delivery *dl = j->dl;
	const struct config *cfg = dl->cfg;
	struct smtp_params p;
	struct smtp_tls_report rep;
	struct smtp_session *s;
	struct tlsa_set *tlsa;
	char host[256], reply[SMTP_REPLY_MAX], tlsname[ADDR_DOMAIN_MAX + 1];
	size_t h, a;
	int retry, concluded = 0;

	/* A parked session to the same destination. */
	while (delivery_pending(j) > 0 && !dl->stopping &&
	    (s = delivery_pool_take(dl, hop->key, host, sizeof(host))) != NULL) {
		retry = delivery_transaction(j, hop, s, host);
		if (!retry)
			return 0;
	}
	/* A concluded transaction (the peer answered) ends the search. */
	for (h = 0; h < hop->hosts->nhosts && delivery_pending(j) > 0 &&
	    !dl->stopping && !concluded; h++) {
		const struct mx_host *mh = &hop->hosts->hosts[h];

		tlsa = NULL;
		/*
		 * The name TLS checks (and SNI): the MX or relay host name; for a
		 * route to an address literal, the recipient domain; for a literal
		 * relay, its address.
		 */
		if (hop->conf_host != NULL && delivery_is_literal(hop->conf_host))
			snprintf(tlsname, sizeof(tlsname), "%s",
			    strcmp(hop->kind, "route") == 0 ? j->domain : hop->conf_host);
		else
			snprintf(tlsname, sizeof(tlsname), "%s", mh->name);
		if (j->policy == TLS_DANE && mh->secure && !delivery_is_literal(mh->name)) {
			char why[200];
			enum mx_status ts = mx_tlsa(dl->mx, mh->name, hop->port, &tlsa,
			    why, sizeof(why));

			if (ts != MX_OK) {
				/* RFC 7672 2.2: a failed TLSA lookup makes the host unusable. */
				snprintf(j->last_temp, sizeof(j->last_temp),
				    "4.7.5 TLSA lookup for %.255s failed: %s", mh->name, why);
				delivery_log_attempt(j, hop, mh->name, NULL, NULL, "deferred",
				    j->last_temp, delivery_pending(j));
				continue;
			}
		}
		if (j->sts_on && delivery_sts_host(j, hop, mh->name, tlsa != NULL &&
		    tlsa->secure && tlsa->n > 0) == -1) {
			tlsa_set_free(tlsa);
			continue;
		}
		memset(&p, 0, sizeof(p));
		p.helo = dl->d->hostname;
		p.tls_name = tlsname;
		p.policy = j->policy;
		p.tlsa = tlsa != NULL && tlsa->secure && tlsa->n > 0 ? tlsa : NULL;
		p.tls_ctx = dl->tls;
		p.connect_timeout = cfg->smtp_connect_timeout;
		p.greeting_timeout = cfg->smtp_greeting_timeout;
		p.command_timeout = cfg->smtp_command_timeout;
		p.data_timeout = cfg->smtp_data_timeout;
		p.data_done_timeout = cfg->smtp_data_done_timeout;
		p.abort = &dl->abort;
		if (strcmp(hop->kind, "mx") == 0)
			p.report = &rep;
		/* MTA-STS, unless DANE authenticates this host (RFC 8461 2) */
		if (j->sts_on && p.tlsa == NULL) {
			if (j->sts.mode == MTASTS_ENFORCE)
				p.policy = TLS_VERIFY;
			else
				p.check_name = 1;
		}
		if (hop->auth) {
			p.auth_user = cfg->smarthost_user;
			p.auth_pass = dl->auth_pass;
		}
		for (a = 0; a < mh->naddr && delivery_pending(j) > 0 && !dl->stopping; ) {
			const struct mx_addr *ma = &mh->addrs[a];
			int got = delivery_slot(dl, hop->key, &s, host, sizeof(host),
			    reply, sizeof(reply));

			if (got == -1) {
				snprintf(j->last_temp, sizeof(j->last_temp), "%s", reply);
				break;
			}
			if (got == 1) {
				/* A session to this destination came free meanwhile. */
				if (!delivery_transaction(j, hop, s, host))
					concluded = 1;
				if (concluded)
					break;
				continue;
			}
			a++;
			if (smtp_open(&p, (const struct sockaddr *)&ma->ss, ma->sslen, &s,
			    reply, sizeof(reply)) != SMTP_OK) {
				delivery_tls_outcome(j, hop, mh->name, ma, &p, &rep);
				if (j->sts_on && p.policy == TLS_VERIFY && p.tlsa == NULL)
					snprintf(reply + strlen(reply), sizeof(reply) -
					    strlen(reply), " (MTA-STS policy of %.255s: "
					    "enforce)", j->domain);
				delivery_unslot(dl, hop->key);
				delivery_open_failed(j, hop, mh->name, ma, reply);
				if (otp_early && !j->fallback_done)
					delivery_fallback(j);
				continue;
			}
			delivery_tls_outcome(j, hop, mh->name, ma, &p, &rep);
			retry = delivery_transaction(j, hop, s, mh->name);
			if (!retry && delivery_pending(j) > 0 && otp_early && !j->fallback_done)
				delivery_fallback(j);
			if (!retry) {
				concluded = 1;
				break;
			}
		}
		tlsa_set_free(tlsa);
	}
	return 0;
}

/*
 * MTA-STS: may this MX host be used?  In enforce mode only hosts the policy
 * names (-1 = skip it, with the reason); testing mode reports and goes on.
 * A host DANE authenticates is not held to the MTA-STS policy.
 */
static int
delivery_sts_host(struct job *j, struct hop *hop, const char *host, int dane)
{
	if (dane || mtasts_mx_match(&j->sts, host))
		return 0;
	tlsrpt_record(j->domain, TLSRPT_STS, &j->sts, host, NULL, "validation-failure");
	if (j->sts.mode == MTASTS_TESTING) {
		log_msg(LOG_WARNING, "event=mta_sts_violation mode=testing domain=%s "
		    "mx=%s result_type=validation-failure note=\"MX host not in the "
		    "policy; delivered anyway\"", j->domain, host);
		return 0;
	}
	snprintf(j->last_temp, sizeof(j->last_temp), "4.7.5 MTA-STS policy of "
	    "%.200s (enforce) does not list the MX host %.200s", j->domain, host);
	delivery_log_attempt(j, hop, host, NULL, NULL, "deferred", j->last_temp,
	    delivery_pending(j));
	return -1;
}

/* Counts what TLS achieved with an MX host for TLS-RPT (nothing if the
 * connection never got as far as TLS). */
static void
delivery_tls_outcome(struct job *j, struct hop *hop, const char *host,
    const struct mx_addr *ma, const struct smtp_params *p,
    const struct smtp_tls_report *rep)
{
	char ip[64] = "";

	if (p->report == NULL || (rep->rtype == NULL && !rep->tls))
		return;			/* no TLS step reached, or plain by policy */
	getnameinfo((const struct sockaddr *)&ma->ss, ma->sslen, ip, sizeof(ip),
	    NULL, 0, NI_NUMERICHOST);
	tlsrpt_record(j->domain, p->tlsa != NULL ? TLSRPT_TLSA : j->sts_on ?
	    TLSRPT_STS : TLSRPT_NOPOLICY, j->sts_on ? &j->sts : NULL, host, ip,
	    rep->rtype);
	if (rep->rtype != NULL && j->sts_on && j->sts.mode == MTASTS_TESTING &&
	    p->tlsa == NULL)
		log_msg(LOG_WARNING, "event=mta_sts_violation mode=testing domain=%s "
		    "mx=%s ip=%s result_type=%s note=\"delivered anyway\"",
		    j->domain, host, ip, rep->rtype);
	(void)hop;
}

/* A connection or session setup failed: every open recipient gets the reason. */
static void
delivery_open_failed(struct job *j, struct hop *hop, const char *name,
    const struct mx_addr *ma, const char *reply)
{
	char ip[64] = "?";
	size_t i;

	getnameinfo((const struct sockaddr *)&ma->ss, ma->sslen, ip, sizeof(ip),
	    NULL, 0, NI_NUMERICHOST);
	snprintf(j->last_temp, sizeof(j->last_temp), "%s", reply);
	for (i = 0; i < j->n; i++)
		if (j->r[i].status == SMTP_TEMP)
			snprintf(j->r[i].reply, sizeof(j->r[i].reply), "%s", reply);
	delivery_log_attempt(j, hop, name, NULL, ip, "deferred", reply,
	    delivery_pending(j));
}

/*
 * Runs one transaction for the still-temporary recipients on s, logs it,
 * parks or closes s.  Returns 1 if the session failed before the message
 * was accepted (the same recipients may go to the next address).
 */
static int
delivery_transaction(struct job *j, struct hop *hop, struct smtp_session *s,
    const char *host)
{
	struct delivery *dl = j->dl;
	struct smtp_rcpt *sub = NULL;
	size_t i, k, m = 0, *map = NULL;
	int retry, round = 0, again;
	unsigned char *more = NULL;

	if ((sub = calloc(j->n, sizeof(*sub))) == NULL ||
	    (map = calloc(j->n, sizeof(*map))) == NULL ||
	    (more = calloc(j->n, 1)) == NULL) {
		free(sub);
		free(map);
		smtp_close(s);
		delivery_unslot(dl, hop->key);
		return 0;
	}
next_round:
	/*
	 * Round 0 takes every open recipient; later rounds (same session, new
	 * transaction) only those refused with 452 "too many recipients" while
	 * others of the round went through (RFC 5321 4.5.3.1.10).
	 */
	m = 0;
	for (i = 0; i < j->n; i++)
		if (j->r[i].status == SMTP_TEMP && (round == 0 || more[i])) {
			memset(&sub[m], 0, sizeof(sub[m]));
			sub[m].addr = j->r[i].addr;
			map[m++] = i;
		}
	memset(more, 0, j->n);
	if (dl->cfg->domain_rate > 0)
		delivery_rate(dl, hop->key);
	retry = smtp_send(s, j->env->sender, sub, m, j->data, j->len,
	    ((j->env->flags & Q_F_8BIT) ? SMTP_SEND_8BIT : 0) |
	    ((j->env->flags & Q_F_SMTPUTF8) ? SMTP_SEND_SMTPUTF8 : 0));
	again = 0;
	for (k = 0; k < m; k++)
		if (sub[k].status == SMTP_OK)
			again = 1;
	for (k = 0; k < m && again; k++)
		if (sub[k].code == 452)
			more[map[k]] = 1;
	for (k = 0, again = 0; k < m; k++)
		again |= more[map[k]];
	for (k = 0; k < m; k++) {
		j->r[map[k]] = sub[k];
		j->r[map[k]].addr = sub[k].addr;
		if (sub[k].status == SMTP_OK)
			delivery_note_hop(sub[k].addr, host, smtp_peer_ip(s),
			    smtp_tls_version(s));
		if (sub[k].status == SMTP_TEMP)
			snprintf(j->last_temp, sizeof(j->last_temp), "%s", sub[k].reply);
	}
	/* One log line per distinct outcome of this attempt. */
	for (k = 0; k < m; k++) {
		size_t same = 0, x;
		int seen = 0;

		for (x = 0; x < k; x++)
			if (sub[x].status == sub[k].status &&
			    strcmp(sub[x].reply, sub[k].reply) == 0)
				seen = 1;
		if (seen)
			continue;
		for (x = k; x < m; x++)
			if (sub[x].status == sub[k].status &&
			    strcmp(sub[x].reply, sub[k].reply) == 0)
				same++;
		delivery_log_attempt(j, hop, host, s, NULL, sub[k].status == SMTP_OK ?
		    "delivered" : sub[k].status == SMTP_PERM ? "failed" : "deferred",
		    sub[k].reply, same);
	}
	if (again && !retry && smtp_usable(s) && !dl->stopping &&
	    smtp_messages(s) < dl->cfg->session_reuse_max) {
		round++;
		goto next_round;
	}
	free(sub);
	free(map);
	free(more);
	/* A session that failed at session level is not parked (nor retried). */
	if (!retry && smtp_usable(s) && !dl->stopping &&
	    smtp_messages(s) < dl->cfg->session_reuse_max &&
	    dl->cfg->session_idle_timeout > 0 && smtp_reset(s) == 0) {
		delivery_pool_put(dl, hop->key, s, host);
		return retry;
	}
	smtp_close(s);
	delivery_unslot(dl, hop->key);
	return retry;
}

static void
delivery_log_attempt(struct job *j, struct hop *hop, const char *host,
    struct smtp_session *s, const char *ip, const char *result, const char *reply,
    size_t nrcpt)
{
	struct bounce_result b = { 0 };
	char frag[24 + BOUNCE_LIST_MAX];

	if (strcmp(result, "delivered") != 0)
		bounce_classify(reply, &b);
	/* class and list names are bare words: a fragment log_msg keeps as is */
	snprintf(frag, sizeof(frag), "bounce=%s%s%s", bounce_class_name(b.klass),
	    b.list[0] ? " blocklist=" : "", b.list);
	log_msg(LOG_INFO, "event=delivery id=%s class=%s domain=%s route=%s relay=%s "
	    "ip=%s tls_policy=%s tls=%s cipher=%s tls_auth=%s result=%s rcpts=%zu "
	    "reply=%s delay=%lds %s", j->env->id, q_class_name(j->env->klass),
	    j->domain, hop->kind, host,
	    s ? smtp_peer_ip(s) : ip ? ip : "-", tls_policy_name(j->policy),
	    s ? smtp_tls_version(s) : "-", s ? smtp_tls_cipher(s) : "-",
	    s ? smtp_tls_auth(s) : "-", result, nrcpt, reply,
	    (long)(time(NULL) - j->env->created), frag);
}

/* Destination record (created on demand); dl->mu held. */
/* Wakes the workers waiting for a slot (only_global: those held by the
 * global cap).  With dl->mu held. */
static void
delivery_wake_all(struct delivery *dl, int only_global)
{
	struct dest *de;

	for (de = dl->dests; de != NULL; de = de->next)
		if (only_global ? de->nwait_global > 0 : de->nwait > 0)
			pthread_cond_broadcast(&de->cv);
}

static struct dest *
delivery_dest(struct delivery *dl, const char *key)
{
	struct dest *de;

	for (de = dl->dests; de != NULL; de = de->next)
		if (strcmp(de->key, key) == 0)
			return de;
	if ((de = calloc(1, sizeof(*de))) == NULL)
		return NULL;
	pthread_cond_init(&de->cv, NULL);
	snprintf(de->key, sizeof(de->key), "%s", key);
	de->next = dl->dests;
	dl->dests = de;
	return de;
}

/*
 * Takes a connection slot for key under max_connections_per_domain and
 * max_connections: 0 with a slot, 1 with an idle session of this
 * destination in *sp instead (reuse beats a new connection), -1 on timeout
 * or shutdown.  At the global cap, idle sessions of other destinations are
 * closed to make room.
 */
static int
delivery_slot(struct delivery *dl, const char *key, struct smtp_session **sp,
    char *host, size_t hostlen, char *why, size_t whylen)
{
	struct idle *victim = NULL, *it;
	struct dest *de, *o;
	struct timespec ts;
	double start = delivery_mono();
	int global;

	*sp = NULL;
	pthread_mutex_lock(&dl->mu);
	for (;;) {
		if ((de = delivery_dest(dl, key)) == NULL) {
			pthread_mutex_unlock(&dl->mu);
			snprintf(why, whylen, "4.3.0 out of memory");
			return -1;
		}
		if (dl->stopping) {
			pthread_mutex_unlock(&dl->mu);
			snprintf(why, whylen, "4.3.0 shutting down");
			return -1;
		}
		if ((it = de->idle) != NULL) {
			de->idle = it->next;
			pthread_mutex_unlock(&dl->mu);
			*sp = it->s;
			snprintf(host, hostlen, "%s", it->host);
			free(it);
			return 1;
		}
		if (de->active < dl->cfg->max_connections_per_domain &&
		    dl->active < dl->cfg->max_connections)
			break;
		if (de->active < dl->cfg->max_connections_per_domain) {
			/*
			 * Global cap: close another destination's idle session;
			 * its slot is given back only once it is closed.
			 */
			for (o = dl->dests; o != NULL && victim == NULL; o = o->next)
				if (o->idle != NULL) {
					victim = o->idle;
					o->idle = victim->next;
				}
			if (victim != NULL) {
				pthread_mutex_unlock(&dl->mu);
				smtp_close(victim->s);
				delivery_unslot(dl, victim->key);
				free(victim);
				victim = NULL;
				pthread_mutex_lock(&dl->mu);
				continue;
			}
		}
		if (delivery_mono() - start > DELIVERY_SLOT_WAIT) {
			pthread_mutex_unlock(&dl->mu);
			snprintf(why, whylen, "4.4.5 connection limit reached for this destination");
			return -1;
		}
		/* wait on the destination's own condition: a freed session
		 * or slot wakes one worker that can use it, not every worker
		 * of every destination */
		global = de->active < dl->cfg->max_connections_per_domain;
		de->nwait++;
		de->nwait_global += global;
		dl->nwait_global += global;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += 1;
		pthread_cond_timedwait(&de->cv, &dl->mu, &ts);
		de->nwait--;
		de->nwait_global -= global;
		dl->nwait_global -= global;
	}
	de->active++;
	dl->active++;
	pthread_mutex_unlock(&dl->mu);
	return 0;
}

static void
delivery_unslot(struct delivery *dl, const char *key)
{
	struct dest *de;

	pthread_mutex_lock(&dl->mu);
	if ((de = delivery_dest(dl, key)) != NULL && de->active > 0)
		de->active--;
	if (dl->active > 0)
		dl->active--;
	if (de != NULL && de->nwait > 0)
		pthread_cond_signal(&de->cv);
	if (dl->nwait_global > 0)	/* a slot under max_connections freed */
		delivery_wake_all(dl, 1);
	pthread_mutex_unlock(&dl->mu);
}

static struct smtp_session *
delivery_pool_take(struct delivery *dl, const char *key, char *host, size_t hostlen)
{
	struct smtp_session *s = NULL;
	struct dest *de;
	struct idle *it;

	pthread_mutex_lock(&dl->mu);
	if ((de = delivery_dest(dl, key)) != NULL && (it = de->idle) != NULL) {
		de->idle = it->next;
		s = it->s;
		snprintf(host, hostlen, "%s", it->host);
		free(it);
	}
	pthread_mutex_unlock(&dl->mu);
	return s;
}

static void
delivery_pool_put(struct delivery *dl, const char *key, struct smtp_session *s,
    const char *host)
{
	struct dest *de;
	struct idle *it;

	if ((it = calloc(1, sizeof(*it))) == NULL)
		goto close;
	it->s = s;
	it->since = time(NULL);
	snprintf(it->host, sizeof(it->host), "%s", host);
	snprintf(it->key, sizeof(it->key), "%s", key);
	pthread_mutex_lock(&dl->mu);
	if ((de = delivery_dest(dl, key)) == NULL || dl->stopping) {
		pthread_mutex_unlock(&dl->mu);
		free(it);
		goto close;
	}
	it->next = de->idle;
	de->idle = it;
	if (de->nwait > 0)
		pthread_cond_signal(&de->cv);
	if (dl->nwait_global > 0)	/* it may be closed for another */
		delivery_wake_all(dl, 1);
	pthread_mutex_unlock(&dl->mu);
	return;
close:
	smtp_close(s);
	delivery_unslot(dl, key);
}

/* Closes idle sessions past session_idle_timeout (all of them if all). */
static void
delivery_reap(struct delivery *dl, int all)
{
	struct idle *doomed = NULL, **pp, *it;
	struct dest *de, **dp;
	time_t now = time(NULL);

	pthread_mutex_lock(&dl->mu);
	for (de = dl->dests; de != NULL; de = de->next) {
		for (pp = &de->idle; (it = *pp) != NULL; ) {
			if (all || now - it->since >= dl->cfg->session_idle_timeout) {
				*pp = it->next;
				it->next = doomed;
				doomed = it;
			} else
				pp = &it->next;
		}
	}
	/* Forget destinations with nothing open, nobody waiting on them
	 * (a worker held by max_connections waits on a destination with no
	 * connection) and no rate state pending. */
	for (dp = &dl->dests; (de = *dp) != NULL; ) {
		if (de->active == 0 && de->idle == NULL && de->nwait == 0 &&
		    de->next_send < delivery_mono()) {
			*dp = de->next;
			pthread_cond_destroy(&de->cv);
			free(de);
		} else
			dp = &de->next;
	}
	pthread_mutex_unlock(&dl->mu);
	/* Slots are given back once the connections are really closed. */
	while ((it = doomed) != NULL) {
		doomed = it->next;
		smtp_close(it->s);
		delivery_unslot(dl, it->key);
		free(it);
	}
}

/* domain_rate: waits for this destination's next send time. */
static void
delivery_rate(struct delivery *dl, const char *key)
{
	struct dest *de;
	double now, at = 0;

	pthread_mutex_lock(&dl->mu);
	now = delivery_mono();
	if ((de = delivery_dest(dl, key)) != NULL) {
		at = de->next_send > now ? de->next_send : now;
		de->next_send = at + 1.0 / dl->cfg->domain_rate;
	}
	pthread_mutex_unlock(&dl->mu);
	while (!dl->stopping && (now = delivery_mono()) < at) {
		double left = at - now;

		usleep(left > 0.2 ? 200000 : (useconds_t)(left * 1e6));
	}
}
