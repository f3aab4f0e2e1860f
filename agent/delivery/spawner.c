/*
 * spawner.c - the privileged spawner of the delivery process (see
 * spawner.h): its side (spawner_main) and the main process's side.
 *
 * What a compromised main process can make it do is bounded: one request
 * is a fixed-size struct (anything else is refused and logged), the
 * binary and the config path are the spawner's own, n is at most the
 * configured delivery_workers (1 for the fetch process), at most
 * SPAWNER_MAX_CHILDREN delivery and SPAWNER_MAX_FETCH fetch processes
 * live at once, starts are rate-limited (SPAWNER_BURST, then one
 * a second), and only pids it started can be killed (SIGKILL only) or
 * asked about.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/fetch.h"
#include "agent/delivery/privsep.h"
#include "agent/delivery/spawner.h"

static void	 spw_reap(void);
static int	 spw_rate_ok(void);
static void	 spw_refused(const char *why, long pid);
static int	 spw_reply(int s, struct spawner_rep *, const int *fds, int nfds);
static void	 spw_caps(char *how, size_t howlen);
static int	 spw_recv(void *msg, size_t len, int *fds, int maxfds, int *nfds);
static int	 spw_call(uint32_t op, int n, pid_t pid, struct spawner_rep *, int *fds);
static pid_t	 spw_spawn(uint32_t op, const char *what, int n, int *fds, char *err,
		    size_t errlen);

/* ---- the request parser (both sides; unit-tested) ---- */

int
spawner_parse(const void *buf, size_t len, int maxn, struct spawner_req *rq,
    const char **why)
{
	if (len != sizeof(*rq)) {
		*why = "size";
		return -1;
	}
	memcpy(rq, buf, sizeof(*rq));
	if (rq->magic != SPAWNER_MAGIC) {
		*why = "magic";
		return -1;
	}
	switch (rq->op) {
	case SPW_SPAWN:
	case SPW_SPAWN_FETCH:
		if (rq->n < 1 || rq->n > (rq->op == SPW_SPAWN_FETCH ? 1 : maxn)) {
			*why = "workers";
			return -1;
		}
		if (rq->pid != 0) {
			*why = "field";
			return -1;
		}
		return 0;
	case SPW_KILL:
	case SPW_WAIT:
		if (rq->pid <= 1) {
			*why = "pid";
			return -1;
		}
		if (rq->n != 0) {
			*why = "field";
			return -1;
		}
		return 0;
	default:
		*why = "op";
		return -1;
	}
}

/* ---- the spawner process ---- */

struct spw_child {
	pid_t		pid;		/* 0: free */
	int		ended;
	int		status;
	int		fetch;		/* 1: a fetch process */
};

/* delivery processes first, then the fetch processes */
#define SPW_NKIDS	(SPAWNER_MAX_CHILDREN + SPAWNER_MAX_FETCH)
static struct spw_child spw_kids[SPW_NKIDS];

static struct spw_child *
spw_find(pid_t pid)
{
	int i;

	for (i = 0; i < SPW_NKIDS; i++)
		if (spw_kids[i].pid == pid && pid > 0)
			return &spw_kids[i];
	return NULL;
}

static void
spw_reap(void)
{
	struct spw_child *c;
	pid_t p;
	int st;

	while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
		if ((c = spw_find(p)) == NULL)
			continue;
		c->ended = 1;
		c->status = st;
		if (WIFSIGNALED(st))
			log_msg(LOG_INFO, "event=%s_process_exit pid=%ld signal=%d",
			    c->fetch ? "fetch" : "delivery", (long)p, WTERMSIG(st));
		else
			log_msg(LOG_INFO, "event=%s_process_exit pid=%ld exit=%d",
			    c->fetch ? "fetch" : "delivery", (long)p, WEXITSTATUS(st));
	}
}

/* A free entry of the role's; an ended one main never asked about goes first. */
static struct spw_child *
spw_slot(int fetch)
{
	int i, lo = fetch ? SPAWNER_MAX_CHILDREN : 0;
	int hi = fetch ? SPW_NKIDS : SPAWNER_MAX_CHILDREN;

	for (i = lo; i < hi; i++)
		if (spw_kids[i].pid == 0)
			return &spw_kids[i];
	for (i = lo; i < hi; i++)
		if (spw_kids[i].ended) {
			memset(&spw_kids[i], 0, sizeof(spw_kids[i]));
			return &spw_kids[i];
		}
	return NULL;
}

/* Token bucket: SPAWNER_BURST starts, refilled one a second. */
static int
spw_rate_ok(void)
{
	static double tokens = SPAWNER_BURST, last;
	struct timespec ts;
	double now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = ts.tv_sec + ts.tv_nsec / 1e9;
	if (last > 0)
		tokens += now - last;
	if (tokens > SPAWNER_BURST)
		tokens = SPAWNER_BURST;
	last = now;
	if (tokens < 1)
		return 0;
	tokens -= 1;
	return 1;
}

/* One refusal line a second at most, with how many were not logged. */
static void
spw_refused(const char *why, long pid)
{
	static time_t last;
	static unsigned long quiet;

	if (time(NULL) == last) {
		quiet++;
		return;
	}
	last = time(NULL);
	log_msg(LOG_WARNING, "event=spawner_refused why=%s pid=%ld not_logged=%lu", why, pid,
	    quiet);
	quiet = 0;
}

/* Sends rep with descriptors fds[0..nfds) (in chunks). */
static int
spw_send(int s, const void *msg, size_t len, const int *fds, int nfds)
{
	char cbuf[CMSG_SPACE(SPAWNER_FDS_PER_MSG * sizeof(int))];
	struct msghdr mh;
	struct cmsghdr *cm;
	struct iovec iov;

	memset(&mh, 0, sizeof(mh));
	iov.iov_base = (void *)msg;
	iov.iov_len = len;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	if (nfds > 0) {
		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
	}
	return sendmsg(s, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

static int
spw_reply(int s, struct spawner_rep *rp, const int *fds, int nfds)
{
	uint32_t more;
	int k, c;

	rp->magic = SPAWNER_MAGIC;
	rp->nfds = nfds;
	c = nfds < SPAWNER_FDS_PER_MSG ? nfds : SPAWNER_FDS_PER_MSG;
	if (spw_send(s, rp, sizeof(*rp), fds, c) == -1)
		return -1;
	for (k = c; k < nfds; k += c) {
		c = nfds - k < SPAWNER_FDS_PER_MSG ? nfds - k : SPAWNER_FDS_PER_MSG;
		more = (uint32_t)c;
		if (spw_send(s, &more, sizeof(more), fds + k, c) == -1)
			return -1;
	}
	return 0;
}

static void
spw_do_spawn(int s, const char *exe, const char *config_path, const struct config *cfg,
    const struct spawner_req *rq, struct spawner_rep *rp)
{
	struct spw_child *c;
	char err[512];
	int *fds, k;
	pid_t pid;

	int fetch = rq->op == SPW_SPAWN_FETCH;

	if ((c = spw_slot(fetch)) == NULL) {
		spw_refused("too_many_processes", 0);
		rp->rc = EMFILE;
		(void)spw_reply(s, rp, NULL, 0);
		return;
	}
	if (!spw_rate_ok()) {
		spw_refused("rate", 0);
		rp->rc = EAGAIN;
		(void)spw_reply(s, rp, NULL, 0);
		return;
	}
	if ((fds = calloc(rq->n, sizeof(*fds))) == NULL) {
		rp->rc = ENOMEM;
		(void)spw_reply(s, rp, NULL, 0);
		return;
	}
	if ((pid = privsep_spawn_role(exe, fetch ? FETCH_ARG : PRIVSEP_ARG, config_path, cfg,
	    rq->n, fds, err, sizeof(err))) == -1) {
		log_msg(LOG_ERR, "event=%s_process_failed detail=\"%s\"",
		    fetch ? "fetch" : "delivery", err);
		rp->rc = EIO;
		(void)spw_reply(s, rp, NULL, 0);
		free(fds);
		return;
	}
	c->pid = pid;
	c->ended = 0;
	c->fetch = fetch;
	rp->pid = pid;
	(void)spw_reply(s, rp, fds, rq->n);
	for (k = 0; k < rq->n; k++)
		close(fds[k]);
	free(fds);
}

static void
spw_serve(int s, const char *exe, const char *config_path, const struct config *cfg,
    const struct spawner_req *rq)
{
	struct spawner_rep rp;
	struct spw_child *c;

	memset(&rp, 0, sizeof(rp));
	rp.op = rq->op;
	rp.pid = rq->pid;
	if (rq->op == SPW_SPAWN || rq->op == SPW_SPAWN_FETCH) {
		spw_do_spawn(s, exe, config_path, cfg, rq, &rp);
		return;
	}
	spw_reap();
	if ((c = spw_find(rq->pid)) == NULL) {
		spw_refused("not_mine", rq->pid);
		rp.rc = ESRCH;
	} else if (rq->op == SPW_KILL) {
		if (!c->ended && kill(c->pid, SIGKILL) == -1)
			rp.rc = errno;
	} else if (!c->ended)
		rp.rc = EAGAIN;
	else {
		rp.status = c->status;
		memset(c, 0, sizeof(*c));	/* told: forgotten */
	}
	(void)spw_reply(s, &rp, NULL, 0);
}

/*
 * Keeps what starting a delivery process needs: setuid/setgid/chroot for
 * it, reading its files whoever owns them, killing it once it is another
 * user.  The bounding set too where allowed (CAP_SETPCAP), so the exec'd
 * delivery process gets no more.
 */
static void
spw_caps(char *how, size_t howlen)
{
	static const int keep[] = { CAP_SETUID, CAP_SETGID, CAP_SYS_CHROOT, CAP_KILL,
	    CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH };
	struct __user_cap_header_struct hdr;
	struct __user_cap_data_struct data[2];
	uint64_t mask = 0;
	size_t i;
	int c, bset = 1;

	for (i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
		mask |= 1ULL << keep[i];
	for (c = 0; c < 64 && prctl(PR_CAPBSET_READ, c, 0, 0, 0) >= 0; c++)
		if (!(mask & (1ULL << c)) && prctl(PR_CAPBSET_DROP, c, 0, 0, 0) == -1)
			bset = 0;
	memset(&hdr, 0, sizeof(hdr));
	memset(data, 0, sizeof(data));
	hdr.version = _LINUX_CAPABILITY_VERSION_3;
	if (syscall(SYS_capget, &hdr, data) == -1) {
		snprintf(how, howlen, "caps=unchanged");
		return;
	}
	data[0].effective &= (uint32_t)mask;
	data[0].permitted &= (uint32_t)mask;
	data[1].effective &= (uint32_t)(mask >> 32);
	data[1].permitted &= (uint32_t)(mask >> 32);
	data[0].inheritable = data[1].inheritable = 0;
	if (syscall(SYS_capset, &hdr, data) == -1) {
		snprintf(how, howlen, "caps=unchanged(%s)", strerror(errno));
		return;
	}
	/* and an exec'd delivery process gets no more than this, bounding set
	 * narrowed or not */
	snprintf(how, howlen, "caps=setuid,setgid,sys_chroot,kill,dac bounding=%s "
	    "no_new_privs=%s", bset ? "same" : "unchanged",
	    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? "yes" : "no");
}

int
spawner_main(int argc, char **argv)
{
	struct spawner_req rq;
	struct spawner_rep rp;
	struct config *cfg;
	struct pollfd pfd;
	char exe[PATH_MAX], err[512], how[128], buf[sizeof(rq) + 16];
	const char *why, *config_path;
	ssize_t l;
	int lf, i, maxn, st;

	if (argc != 4 || fcntl(SPAWNER_FD, F_GETFD) == -1) {
		fprintf(stderr, "otpmaild: %s is for otpmaild's own use\n", SPAWNER_ARG);
		return 2;
	}
	lf = atoi(argv[2]);
	config_path = argv[3][0] != '\0' ? argv[3] : NULL;
	if ((cfg = config_load(config_path, err, sizeof(err))) == NULL) {
		fprintf(stderr, "otpmaild-spawner: %s\n", err);
		return 1;
	}
	cfg->log_stderr = (lf & 1) != 0;
	cfg->log_syslog = (lf & 2) != 0;
	log_init("otpmaild-spawner", cfg->log_stderr, cfg->log_syslog, cfg->log_level);
	if ((l = readlink("/proc/self/exe", exe, sizeof(exe) - 1)) <= 0) {
		log_msg(LOG_ERR, "event=spawner_failed detail=\"readlink /proc/self/exe: %s\"",
		    strerror(errno));
		config_free(cfg);
		_exit(1);
	}
	exe[l] = '\0';
	maxn = cfg->delivery_workers > 0 ? cfg->delivery_workers : 1;
	spw_caps(how, sizeof(how));
	log_msg(LOG_INFO, "event=spawner_started pid=%ld uid=%u %s", (long)getpid(),
	    (unsigned)geteuid(), how);
	memset(&rp, 0, sizeof(rp));
	rp.op = SPW_READY;
	rp.pid = getpid();
	if (spw_reply(SPAWNER_FD, &rp, NULL, 0) == -1)
		goto out;
	pfd.fd = SPAWNER_FD;
	pfd.events = POLLIN;
	for (;;) {
		spw_reap();
		if (poll(&pfd, 1, 1000) == -1 && errno != EINTR)
			break;
		if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		/* MSG_TRUNC: the real length, so a longer datagram is refused */
		if ((l = recv(SPAWNER_FD, buf, sizeof(buf), MSG_TRUNC)) == 0)
			break;		/* the main process is gone */
		if (l == -1) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			break;
		}
		if (spawner_parse(buf, (size_t)l, maxn, &rq, &why) == -1) {
			spw_refused(why, 0);
			memset(&rp, 0, sizeof(rp));
			rp.rc = EINVAL;
			if (spw_reply(SPAWNER_FD, &rp, NULL, 0) == -1)
				break;
			continue;
		}
		spw_serve(SPAWNER_FD, exe, config_path, cfg, &rq);
	}
out:
	/* the main process went: so do the delivery and fetch processes */
	for (i = 0; i < SPW_NKIDS; i++)
		if (spw_kids[i].pid > 0 && !spw_kids[i].ended) {
			kill(spw_kids[i].pid, SIGKILL);
			(void)waitpid(spw_kids[i].pid, &st, 0);
		}
	log_msg(LOG_INFO, "event=spawner_stopped");
	config_free(cfg);
	_exit(0);
}

/* ---- the main process's side ---- */

static pthread_mutex_t spw_mu = PTHREAD_MUTEX_INITIALIZER;
static int spw_sock = -1;
static pid_t spw_pid = -1;
static int spw_gone;

int
spawner_active(void)
{
	return spw_sock != -1;
}

/* Receives one message of len bytes and up to maxfds descriptors. */
static int
spw_recv(void *msg, size_t len, int *fds, int maxfds, int *nfds)
{
	char cbuf[CMSG_SPACE(SPAWNER_FDS_PER_MSG * sizeof(int))];
	struct msghdr mh;
	struct cmsghdr *cm;
	struct iovec iov;
	ssize_t l;
	int n, k;

	*nfds = 0;
	memset(&mh, 0, sizeof(mh));
	iov.iov_base = msg;
	iov.iov_len = len;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cbuf;
	mh.msg_controllen = sizeof(cbuf);
	do
		l = recvmsg(spw_sock, &mh, MSG_CMSG_CLOEXEC);
	while (l == -1 && errno == EINTR);
	for (cm = CMSG_FIRSTHDR(&mh); l > 0 && cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (k = 0; k < n; k++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
			if (*nfds < maxfds)
				fds[(*nfds)++] = fd;
			else
				close(fd);
		}
	}
	if (l != (ssize_t)len || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
		for (k = 0; k < *nfds; k++)
			close(fds[k]);
		*nfds = 0;
		if (l == 0 || l == -1)
			spw_gone = 1;
		return -1;
	}
	return 0;
}

/* One request and its reply (spw_mu held); descriptors into fds[0..n). */
static int
spw_call(uint32_t op, int n, pid_t pid, struct spawner_rep *rp, int *fds)
{
	struct spawner_req rq;
	uint32_t more;
	int got, k, c;

	memset(&rq, 0, sizeof(rq));
	rq.magic = SPAWNER_MAGIC;
	rq.op = op;
	rq.n = n;
	rq.pid = pid;
	if (spw_sock == -1 || spw_gone) {
		errno = EPIPE;
		return -1;
	}
	if (send(spw_sock, &rq, sizeof(rq), MSG_NOSIGNAL) != (ssize_t)sizeof(rq)) {
		spw_gone = 1;
		return -1;
	}
	if (spw_recv(rp, sizeof(*rp), fds, fds != NULL ? n : 0, &got) == -1 ||
	    rp->magic != SPAWNER_MAGIC || rp->op != op)
		goto bad;
	if (rp->rc != 0 || fds == NULL)
		return 0;
	if (rp->nfds != n)
		goto bad;
	while (got < n) {
		if (spw_recv(&more, sizeof(more), fds + got, n - got, &c) == -1)
			goto bad;
		if (c == 0 || (int)more != c)
			goto badc;
		got += c;
	}
	return 0;
badc:
	for (k = 0; k < c; k++)
		close(fds[got + k]);
bad:
	for (k = 0; k < got; k++)
		close(fds[k]);
	/* out of step with the spawner: nothing it says can be trusted now */
	spw_gone = 1;
	errno = EPROTO;
	return -1;
}

int
spawner_start(const char *config_path, const struct config *cfg, char *err, size_t errlen)
{
	struct spawner_rep rp;
	char exe[PATH_MAX], lbuf[8];
	char *argv[5];
	int sv[2], got;
	ssize_t l;
	pid_t pid, parent = getpid();

	if (geteuid() != 0 || cfg->user[0] == '\0' || cfg->sandbox)
		return 0;
	if ((l = readlink("/proc/self/exe", exe, sizeof(exe) - 1)) <= 0) {
		snprintf(err, errlen, "spawner: readlink /proc/self/exe: %s", strerror(errno));
		return -1;
	}
	exe[l] = '\0';
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == -1) {
		snprintf(err, errlen, "spawner: socketpair: %s", strerror(errno));
		return -1;
	}
	snprintf(lbuf, sizeof(lbuf), "%d", (cfg->log_stderr ? 1 : 0) | (cfg->log_syslog ? 2 : 0));
	argv[0] = "otpmaild-spawner";
	argv[1] = SPAWNER_ARG;
	argv[2] = lbuf;
	argv[3] = (char *)(config_path != NULL ? config_path : "");
	argv[4] = NULL;
	if ((pid = fork()) == -1) {
		snprintf(err, errlen, "spawner: fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		return -1;
	}
	if (pid == 0) {
		/* async-signal-safe calls only until exec */
		if (sv[1] == SPAWNER_FD)
			(void)fcntl(SPAWNER_FD, F_SETFD, 0);
		else if (dup2(sv[1], SPAWNER_FD) == -1)
			_exit(127);
		syscall(SYS_close_range, SPAWNER_FD + 1, ~0U, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		execv(exe, argv);
		_exit(127);
	}
	close(sv[1]);
	spw_sock = sv[0];
	spw_pid = pid;
	if (spw_recv(&rp, sizeof(rp), NULL, 0, &got) == -1 || rp.magic != SPAWNER_MAGIC ||
	    rp.op != SPW_READY) {
		snprintf(err, errlen, "spawner: did not start (see its log line)");
		spawner_stop();
		return -1;
	}
	log_msg(LOG_INFO, "event=spawner_ready pid=%ld", (long)pid);
	return 0;
}

/* SPW_SPAWN or SPW_SPAWN_FETCH: the pid, or -1 with err naming what. */
static pid_t
spw_spawn(uint32_t op, const char *what, int n, int *fds, char *err, size_t errlen)
{
	struct spawner_rep rp;
	int rc;

	pthread_mutex_lock(&spw_mu);
	rc = spw_call(op, n, 0, &rp, fds);
	pthread_mutex_unlock(&spw_mu);
	if (rc == -1) {
		snprintf(err, errlen, "%s process: spawner: %s", what, strerror(errno));
		return -1;
	}
	if (rp.rc != 0) {
		snprintf(err, errlen, "%s process: spawner refused: %s", what, strerror(rp.rc));
		return -1;
	}
	return rp.pid;
}

pid_t
spawner_spawn(int n, int *fds, char *err, size_t errlen)
{
	return spw_spawn(SPW_SPAWN, "delivery", n, fds, err, errlen);
}

pid_t
spawner_spawn_fetch(int *fd, char *err, size_t errlen)
{
	return spw_spawn(SPW_SPAWN_FETCH, "fetch", 1, fd, err, errlen);
}

int
spawner_kill(pid_t pid)
{
	struct spawner_rep rp;
	int rc;

	pthread_mutex_lock(&spw_mu);
	rc = spw_call(SPW_KILL, 0, pid, &rp, NULL);
	pthread_mutex_unlock(&spw_mu);
	if (rc == 0 && rp.rc != 0) {
		errno = rp.rc;
		rc = -1;
	}
	return rc;
}

pid_t
spawner_wait(pid_t pid, int *status, int nohang)
{
	struct spawner_rep rp;
	int rc;

	for (;;) {
		pthread_mutex_lock(&spw_mu);
		rc = spw_call(SPW_WAIT, 0, pid, &rp, NULL);
		pthread_mutex_unlock(&spw_mu);
		if (rc == -1 || (rp.rc != 0 && rp.rc != EAGAIN))
			return -1;
		if (rp.rc == 0) {
			*status = rp.status;
			return pid;
		}
		if (nohang)
			return 0;
		usleep(5 * 1000);
	}
}

int
spawner_lost(void)
{
	static int said;
	int st = 0;

	if (spw_pid <= 0)
		return 0;
	if (!spw_gone && waitpid(spw_pid, &st, WNOHANG) != spw_pid)
		return 0;
	spw_gone = 1;
	if (!said) {
		said = 1;
		log_msg(LOG_ERR, "event=spawner_lost pid=%ld %s=%d note=\"delivery cannot "
		    "go on: stopping (exit 1)\"", (long)spw_pid,
		    WIFSIGNALED(st) ? "signal" : "exit",
		    WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
	}
	return 1;
}

void
spawner_stop(void)
{
	int st;

	if (spw_sock != -1) {
		close(spw_sock);
		spw_sock = -1;
	}
	if (spw_pid > 0) {
		(void)waitpid(spw_pid, &st, 0);
		spw_pid = -1;
	}
}
