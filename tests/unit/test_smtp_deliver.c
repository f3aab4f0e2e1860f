/*
 * test_smtp_deliver.c - agent/delivery/deliver.c with the real queue and config,
 * against in-process SMTP responders on loopback (one thread per
 * connection): recipients grouped by domain, per-recipient outcomes back in
 * the queue, session reuse and its limit, the per-domain connection cap,
 * idle sessions closed with QUIT, fallback relays, 8-bit refusal, a silent
 * peer that ties up one worker only, and the sandbox transport.
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
#include <sys/stat.h>

#include "agent/delivery/delivery.h"
#include "agent/core/log.h"
#include "agent/core/otpmaild.h"
#include "queue/queue.h"
#include "tests/unit/tap.h"

struct otpmaild *otpmaild_ctx;

struct peer {
	int		 lfd, port;
	int		 silent;
	int		 no8bit;
	int		 rcpt_limit;	/* 452 after this many RCPTs per transaction */
	pthread_mutex_t	 mu;
	int		 conns, cur, maxcur, msgs, quits, rcpts;
	char		 last_rcpts[1024];
};

/* Connections open at all peers together (the global cap). */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_cur, g_max;

struct conn_arg {
	struct peer	*p;
	int		 fd;
};

static int
peer_line(int fd, char *buf, size_t len)
{
	size_t n = 0;
	char c;

	while (n + 1 < len) {
		ssize_t r = recv(fd, &c, 1, 0);

		if (r <= 0)
			return -1;
		if (c == '\n')
			break;
		if (c != '\r')
			buf[n++] = c;
	}
	buf[n] = '\0';
	return 0;
}

static void
peer_say(int fd, const char *s)
{
	(void)!send(fd, s, strlen(s), MSG_NOSIGNAL);
}

static void *
peer_conn(void *arg)
{
	struct conn_arg *ca = arg;
	struct peer *p = ca->p;
	char line[1100];
	int fd = ca->fd, indata = 0, counted = 1, ntx = 0;

	free(ca);
	pthread_mutex_lock(&p->mu);
	p->conns++;
	if (++p->cur > p->maxcur)
		p->maxcur = p->cur;
	pthread_mutex_unlock(&p->mu);
	pthread_mutex_lock(&g_mu);
	if (++g_cur > g_max)
		g_max = g_cur;
	pthread_mutex_unlock(&g_mu);
	if (p->silent) {
		while (recv(fd, line, sizeof(line), 0) > 0)
			;
		goto out;
	}
	peer_say(fd, "220 peer ESMTP\r\n");
	while (peer_line(fd, line, sizeof(line)) == 0) {
		if (indata) {
			if (strcmp(line, ".") == 0) {
				indata = 0;
				pthread_mutex_lock(&p->mu);
				p->msgs++;
				pthread_mutex_unlock(&p->mu);
				peer_say(fd, "250 2.0.0 accepted\r\n");
			}
			continue;
		}
		if (strncasecmp(line, "EHLO", 4) == 0)
			peer_say(fd, p->no8bit ? "250-peer\r\n250 SIZE 1000000\r\n" :
			    "250-peer\r\n250-8BITMIME\r\n250 SIZE 1000000\r\n");
		else if (strncasecmp(line, "MAIL", 4) == 0) {
			ntx = 0;
			pthread_mutex_lock(&p->mu);
			p->last_rcpts[0] = '\0';
			pthread_mutex_unlock(&p->mu);
			peer_say(fd, "250 2.1.0 ok\r\n");
		} else if (strncasecmp(line, "RCPT", 4) == 0) {
			pthread_mutex_lock(&p->mu);
			p->rcpts++;
			if (strlen(p->last_rcpts) + strlen(line) + 2 < sizeof(p->last_rcpts)) {
				strcat(p->last_rcpts, line + 8);
				strcat(p->last_rcpts, " ");
			}
			pthread_mutex_unlock(&p->mu);
			if (p->rcpt_limit > 0 && ++ntx > p->rcpt_limit)
				peer_say(fd, "452 4.5.3 too many recipients\r\n");
			else if (strstr(line, "soft"))
				peer_say(fd, "450 4.2.1 mailbox busy\r\n");
			else if (strstr(line, "hard"))
				peer_say(fd, "550 5.1.1 unknown user\r\n");
			else
				peer_say(fd, "250 2.1.5 ok\r\n");
		} else if (strcasecmp(line, "DATA") == 0) {
			indata = 1;
			peer_say(fd, "354 go\r\n");
		} else if (strcasecmp(line, "RSET") == 0)
			peer_say(fd, "250 ok\r\n");
		else if (strcasecmp(line, "QUIT") == 0) {
			pthread_mutex_lock(&p->mu);
			p->quits++;
			pthread_mutex_unlock(&p->mu);
			/* Closed from here on: the client may reconnect after 221. */
			pthread_mutex_lock(&g_mu);
			g_cur--;
			pthread_mutex_unlock(&g_mu);
			counted = 0;
			peer_say(fd, "221 bye\r\n");
			break;
		} else
			peer_say(fd, "502 no\r\n");
	}
out:
	if (counted) {
		pthread_mutex_lock(&g_mu);
		g_cur--;
		pthread_mutex_unlock(&g_mu);
	}
	close(fd);
	pthread_mutex_lock(&p->mu);
	p->cur--;
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void *
peer_main(void *arg)
{
	struct peer *p = arg;
	struct conn_arg *ca;
	pthread_t th;
	int fd;

	for (;;) {
		if ((fd = accept(p->lfd, NULL, NULL)) == -1) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		ca = malloc(sizeof(*ca));
		ca->p = p;
		ca->fd = fd;
		pthread_create(&th, NULL, peer_conn, ca);
		pthread_detach(th);
	}
}

static void
peer_start(struct peer *p)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	pthread_t th;

	pthread_mutex_init(&p->mu, NULL);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(p->lfd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    listen(p->lfd, 64) == -1)
		abort();
	getsockname(p->lfd, (struct sockaddr *)&sin, &len);
	p->port = ntohs(sin.sin_port);
	pthread_create(&th, NULL, peer_main, p);
	pthread_detach(th);
}

static int
peer_get(struct peer *p, int *field)
{
	int v;

	pthread_mutex_lock(&p->mu);
	v = *field;
	pthread_mutex_unlock(&p->mu);
	return v;
}

/* A port nothing listens on. */
static int
dead_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)&sin, sizeof(sin));
	getsockname(fd, (struct sockaddr *)&sin, &len);
	port = ntohs(sin.sin_port);
	close(fd);
	return port;
}

struct env {
	char		 dir[64];
	struct otpmaild	 d;
	struct config	*cfg;
};

static int
env_open(struct env *e, const char *conf)
{
	char path[256], spool[256], err[512];
	struct queue_params qp;
	FILE *fp;
	int k;

	memset(e, 0, sizeof(*e));
	snprintf(e->dir, sizeof(e->dir), "/tmp/otpmail-test-deliver-XXXXXX");
	if (mkdtemp(e->dir) == NULL)
		return -1;
	snprintf(path, sizeof(path), "%s/otpmail.conf", e->dir);
	fp = fopen(path, "w");
	fprintf(fp, "state_dir = %s\nhostname = client.example.net\n"
	    "log_stderr = no\n%s", e->dir, conf);
	fclose(fp);
	if ((e->cfg = config_load(path, err, sizeof(err))) == NULL) {
		diag("config: %s", err);
		return -1;
	}
	e->d.cfg = e->cfg;
	e->d.state_dir = e->dir;
	e->d.hostname = e->cfg->hostname;
	snprintf(spool, sizeof(spool), "%s/spool", e->dir);
	memset(&qp, 0, sizeof(qp));
	qp.dir = spool;
	for (k = 0; k < Q_CLASS_COUNT; k++) {
		qp.klass[k].retry_min = 600;
		qp.klass[k].retry_max = 3600;
		qp.klass[k].lifetime = 86400;
	}
	qp.keep_done = 3600;
	qp.bounce_from = "MAILER-DAEMON@client.example.net";
	qp.hostname = "client.example.net";
	if ((e->d.queue = queue_open(&qp, err, sizeof(err))) == NULL) {
		diag("queue: %s", err);
		return -1;
	}
	if ((e->d.delivery = delivery_start(&e->d, err, sizeof(err))) == NULL) {
		diag("delivery: %s", err);
		return -1;
	}
	return 0;
}

static void
env_close(struct env *e)
{
	char cmd[128];

	delivery_stop(e->d.delivery);
	queue_close(e->d.queue);
	config_free(e->cfg);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->dir);
	(void)!system(cmd);
}

static char *
enqueue(struct env *e, enum q_class k, const char *const *to, size_t n, int flags,
    const char *body)
{
	struct q_envelope t;
	struct q_rcpt r[8];
	char id[QUEUE_ID_LEN + 1], msg[1024];
	size_t i;

	memset(&t, 0, sizeof(t));
	memset(r, 0, sizeof(r));
	for (i = 0; i < n; i++)
		r[i].addr = (char *)to[i];
	t.klass = k;
	t.sender = "app@example.com";
	t.nrcpt = n;
	t.rcpts = r;
	t.flags = flags;
	if (k == Q_CLASS_OTP)
		t.expires = time(NULL) + 300;
	snprintf(msg, sizeof(msg), "From: app@example.com\r\nTo: %s\r\nSubject: t\r\n\r\n%s\r\n",
	    to[0], body ? body : "hello");
	if (queue_enqueue(e->d.queue, &t, msg, strlen(msg), id) != Q_OK)
		return NULL;
	return strdup(id);
}

/* Waits until the message's attempt has been recorded; returns it (free it). */
static struct q_envelope *
wait_attempt(struct env *e, const char *id, int secs)
{
	struct q_envelope *env;
	time_t end = time(NULL) + secs;
	size_t i;
	int done;

	while (time(NULL) <= end) {
		if (queue_get(e->d.queue, id, &env) == Q_OK) {
			done = env->state != Q_MSG_DELIVERING && env->state != Q_MSG_QUEUED;
			for (i = 0; i < env->nrcpt; i++)
				if (env->rcpts[i].state == Q_RCPT_PENDING)
					done = 0;
			if (done)
				return env;
			q_envelope_free(env);
		}
		usleep(20000);
	}
	return NULL;
}

static const char *
rstate(struct q_envelope *env, size_t i)
{
	return env && i < env->nrcpt ? q_rcpt_state_name(env->rcpts[i].state) : "none";
}

static const char *
rreply(struct q_envelope *env, size_t i)
{
	return env && i < env->nrcpt && env->rcpts[i].reply ? env->rcpts[i].reply : "";
}

int
main(void)
{
	static struct peer a, b, c, s, f, l;
	struct q_envelope *env;
	struct env e;
	char conf[2048], *ids[40], *id;
	int i, n, dport = dead_port();
	double t0, t5;
	int n5, pend5;
	struct timespec ts;

	signal(SIGPIPE, SIG_IGN);
	log_init("test", 0, 0, "error");
	a.no8bit = 0;
	c.no8bit = 1;
	s.silent = 1;
	peer_start(&a);
	peer_start(&b);
	peer_start(&c);
	peer_start(&s);
	l.rcpt_limit = 2;
	peer_start(&f);
	peer_start(&l);
	snprintf(conf, sizeof(conf),
	    "sandbox = no\ntls_policy = none\n"
	    "route = a.example [127.0.0.1]:%d\nroute = b.example [127.0.0.1]:%d\n"
	    "route = c.example [127.0.0.1]:%d\nroute = silent.example [127.0.0.1]:%d\n"
	    "route = dead.example [127.0.0.1]:%d\n"
	    "route = limit.example [127.0.0.1]:%d\n"
	    "fallback_relay = [127.0.0.1]:%d\n"
	    "delivery_workers = 6\nmax_connections_per_domain = 2\n"
	    "session_reuse_max = 10\nsession_idle_timeout = 1s\n"
	    "smtp_greeting_timeout = 2s\nsmtp_command_timeout = 5s\n",
	    a.port, b.port, c.port, s.port, dport, l.port, f.port);
	if (env_open(&e, conf) == -1) {
		ok(0, "daemon pieces start");
		return done_testing();
	}

	/* Three recipients, two domains, one soft and one hard refusal. */
	{
		const char *to[] = { "x@a.example", "y@b.example", "soft@a.example",
		    "hard@a.example", "z@a.example" };

		id = enqueue(&e, Q_CLASS_DEFAULT, to, 5, 0, NULL);
		env = wait_attempt(&e, id, 10);
		ok(env != NULL, "attempt recorded");
		is_str(rstate(env, 0), "delivered", "a.example rcpt delivered");
		is_str(rstate(env, 1), "delivered", "b.example rcpt delivered");
		is_str(rstate(env, 2), "deferred", "450 rcpt deferred");
		is_str(rreply(env, 2), "450 4.2.1 mailbox busy", "its reply kept");
		is_str(rstate(env, 3), "failed", "550 rcpt failed");
		is_str(rstate(env, 4), "delivered", "third a.example rcpt delivered");
		is_str(rreply(env, 0), "250 2.0.0 accepted", "final reply kept");
		ok(env && env->last_error && strstr(env->last_error, "450"), "last_error summarises");
		is_int(peer_get(&a, &a.msgs), 1, "one transaction for the a.example group");
		is_int(peer_get(&a, &a.rcpts), 4, "with its four RCPTs");
		is_int(peer_get(&b, &b.msgs), 1, "one for b.example");
		q_envelope_free(env);
		free(id);
	}

	/* 452 too many recipients: the rest go in further transactions. */
	{
		const char *to[] = { "1@limit.example", "2@limit.example", "3@limit.example",
		    "4@limit.example", "5@limit.example" };
		size_t k;

		id = enqueue(&e, Q_CLASS_DEFAULT, to, 5, 0, NULL);
		env = wait_attempt(&e, id, 10);
		n = 0;
		for (k = 0; env && k < env->nrcpt; k++)
			n += env->rcpts[k].state == Q_RCPT_DELIVERED;
		is_int(n, 5, "452 after 2 RCPTs: all 5 delivered in one attempt");
		is_int(peer_get(&l, &l.msgs), 3, "in three transactions");
		is_int(peer_get(&l, &l.conns), 1, "over one connection");
		q_envelope_free(env);
		free(id);
	}

	/* 8-bit to a peer without 8BITMIME: failed, nothing sent. */
	{
		const char *to[] = { "u@c.example" };

		id = enqueue(&e, Q_CLASS_DEFAULT, to, 1, Q_F_8BIT, "caf\xc3\xa9");
		env = wait_attempt(&e, id, 10);
		is_str(rstate(env, 0), "failed", "8-bit without 8BITMIME: failed");
		ok(strstr(rreply(env, 0), "8BITMIME") != NULL, "reason names 8BITMIME");
		is_int(peer_get(&c, &c.msgs), 0, "nothing transferred");
		q_envelope_free(env);
		free(id);
	}

	/* Reuse and the per-domain cap: 30 messages, 6 workers, cap 2, reuse 10. */
	usleep(1500 * 1000);	/* earlier sessions idle out */
	{
		int conns0 = peer_get(&a, &a.conns), msgs0 = peer_get(&a, &a.msgs);
		const char *to[] = { "bulk@a.example" };

		pthread_mutex_lock(&a.mu);
		a.maxcur = a.cur;
		pthread_mutex_unlock(&a.mu);
		for (i = 0; i < 30; i++)
			ids[i] = enqueue(&e, Q_CLASS_DEFAULT, to, 1, 0, NULL);
		n = 0;
		for (i = 0; i < 30; i++) {
			env = wait_attempt(&e, ids[i], 15);
			if (env && env->rcpts[0].state == Q_RCPT_DELIVERED)
				n++;
			q_envelope_free(env);
			free(ids[i]);
		}
		is_int(n, 30, "30 messages delivered");
		is_int(peer_get(&a, &a.msgs) - msgs0, 30, "30 transactions at the peer");
		ok(peer_get(&a, &a.maxcur) <= 2, "never more than 2 connections at once");
		ok(peer_get(&a, &a.conns) - conns0 >= 3 && peer_get(&a, &a.conns) - conns0 <= 5,
		    "sessions reused, at most session_reuse_max (10) messages each");
		diag("connections for 30 messages: %d, max concurrent %d",
		    peer_get(&a, &a.conns) - conns0, peer_get(&a, &a.maxcur));
		usleep(2500 * 1000);
		is_int(peer_get(&a, &a.cur), 0, "idle sessions closed after session_idle_timeout");
		is_int(peer_get(&a, &a.quits), peer_get(&a, &a.conns), "each with QUIT");
	}

	/* Direct delivery impossible: the fallback relay takes it. */
	{
		const char *to[] = { "v@dead.example" };
		/* the relay also takes the DSN of the 550 above (the sender's
		 * domain has no route): count from here */
		int f0 = peer_get(&f, &f.msgs);

		id = enqueue(&e, Q_CLASS_DEFAULT, to, 1, 0, NULL);
		env = wait_attempt(&e, id, 10);
		is_str(rstate(env, 0), "delivered", "dead route: delivered through the fallback relay");
		ok(peer_get(&f, &f.msgs) - f0 >= 1, "the relay got it");
		q_envelope_free(env);
		free(id);
	}

	/* A silent peer ties up one worker; other mail flows meanwhile. */
	{
		const char *to[] = { "w@silent.example" }, *to2[] = { "q@b.example" };
		char *others[5];
		int b0 = peer_get(&b, &b.msgs);

		clock_gettime(CLOCK_MONOTONIC, &ts);
		t0 = ts.tv_sec + ts.tv_nsec / 1e9;
		id = enqueue(&e, Q_CLASS_DEFAULT, to, 1, 0, NULL);
		usleep(100 * 1000);
		for (i = 0; i < 5; i++)
			others[i] = enqueue(&e, Q_CLASS_DEFAULT, to2, 1, 0, NULL);
		for (i = 0; i < 5; i++) {
			q_envelope_free(wait_attempt(&e, others[i], 10));
			free(others[i]);
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t5 = ts.tv_sec + ts.tv_nsec / 1e9;
		n5 = peer_get(&b, &b.msgs) - b0;
		pend5 = 0;	/* the silent peer's message still undecided? */
		if (queue_get(e.d.queue, id, &env) == Q_OK) {
			for (i = 0; i < (int)env->nrcpt; i++)
				pend5 |= env->rcpts[i].state == Q_RCPT_PENDING;
			q_envelope_free(env);
		}
		env = wait_attempt(&e, id, 10);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		/* an order, not a speed: the five were delivered before the
		 * silent peer was given up (then the fallback relay is tried) */
		ok(pend5 && n5 == 5,
		    "five other messages delivered while the silent peer hangs");
		diag("five others after %.1f s, silent peer given up after %.1f s", t5 - t0,
		    ts.tv_sec + ts.tv_nsec / 1e9 - t0);
		ok(ts.tv_sec + ts.tv_nsec / 1e9 - t0 < 20, "silent peer given up within its timeout");
		is_str(rstate(env, 0), "delivered", "then the fallback relay delivered it");
		q_envelope_free(env);
		free(id);
	}
	env_close(&e);

	/* Global cap of 1 connection across two destinations, and domain_rate. */
	usleep(200 * 1000);
	snprintf(conf, sizeof(conf),
	    "sandbox = no\ntls_policy = none\n"
	    "route = a.example [127.0.0.1]:%d\nroute = b.example [127.0.0.1]:%d\n"
	    "delivery_workers = 4\nmax_connections = 1\nmax_connections_per_domain = 4\n"
	    "session_idle_timeout = 5s\ndomain_rate = 5\n", a.port, b.port);
	if (env_open(&e, conf) == 0) {
		const char *ta[] = { "r@a.example" }, *tb[] = { "r@b.example" };
		int a0 = peer_get(&a, &a.msgs), b0 = peer_get(&b, &b.msgs), g0;

		pthread_mutex_lock(&g_mu);
		g_max = g0 = g_cur;
		pthread_mutex_unlock(&g_mu);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t0 = ts.tv_sec + ts.tv_nsec / 1e9;
		for (i = 0; i < 12; i++)
			ids[i] = enqueue(&e, Q_CLASS_DEFAULT, i % 2 ? tb : ta, 1, 0, NULL);
		n = 0;
		for (i = 0; i < 12; i++) {
			env = wait_attempt(&e, ids[i], 15);
			if (env && env->rcpts[0].state == Q_RCPT_DELIVERED)
				n++;
			q_envelope_free(env);
			free(ids[i]);
		}
		clock_gettime(CLOCK_MONOTONIC, &ts);
		is_int(n, 12, "max_connections = 1: all 12 delivered to two destinations");
		is_int(peer_get(&a, &a.msgs) - a0 + peer_get(&b, &b.msgs) - b0, 12,
		    "12 transactions");
		pthread_mutex_lock(&g_mu);
		ok(g_max - g0 <= 1, "never more than one connection open in all");
		if (g_max - g0 > 1)
			diag("g_max %d g0 %d", g_max, g0);
		pthread_mutex_unlock(&g_mu);
		/* 6 per destination at 5/s: the last starts >= 1 s after the first. */
		ok(ts.tv_sec + ts.tv_nsec / 1e9 - t0 >= 0.95, "domain_rate = 5 spaces the messages");
		diag("12 messages at 5/s per domain in %.2fs", ts.tv_sec + ts.tv_nsec / 1e9 - t0);
		env_close(&e);
	} else
		ok(0, "cap env");

	/* Shutdown: a worker held by a silent peer is cut short after the grace. */
	snprintf(conf, sizeof(conf), "sandbox = no\ntls_policy = none\n"
	    "route = silent.example [127.0.0.1]:%d\nsmtp_greeting_timeout = 60s\n"
	    "delivery_workers = 2\n", s.port);
	if (env_open(&e, conf) == 0) {
		const char *to[] = { "w@silent.example" };

		id = enqueue(&e, Q_CLASS_DEFAULT, to, 1, 0, NULL);
		usleep(500 * 1000);
		clock_gettime(CLOCK_MONOTONIC, &ts);
		t0 = ts.tv_sec + ts.tv_nsec / 1e9;
		delivery_stop(e.d.delivery);
		e.d.delivery = NULL;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ok(ts.tv_sec + ts.tv_nsec / 1e9 - t0 < 7.0,
		    "delivery_stop returns after the grace, not the 60 s timeout");
		env = NULL;
		if (queue_get(e.d.queue, id, &env) == Q_OK) {
			is_str(rstate(env, 0), "deferred", "the cut message stays deferred");
			ok(strstr(rreply(env, 0), "shutting down") != NULL, "reason: shutting down");
		} else
			ok(0, "message still in the queue");
		q_envelope_free(env);
		free(id);
		env_close(&e);
	} else
		ok(0, "stop env");

	/* Sandbox transport. */
	if (env_open(&e, "sandbox = yes\n") == 0) {
		const char *to[] = { "dev@example.org", "dev2@example.net" };
		char dir[300];
		int files;
		FILE *p;

		id = enqueue(&e, Q_CLASS_OTP, to, 2, 0, "Your code is 424242");
		env = wait_attempt(&e, id, 10);
		is_str(rstate(env, 0), "delivered", "sandbox: delivered");
		is_str(rreply(env, 1), "250 sandbox", "sandbox: reply \"250 sandbox\"");
		snprintf(dir, sizeof(dir), "ls %s/sandbox/new | wc -l", e.dir);
		p = popen(dir, "r");
		files = 0;
		if (p) {
			if (fscanf(p, "%d", &files) != 1)
				files = -1;
			pclose(p);
		}
		is_int(files, 1, "one Maildir file for both recipients");
		q_envelope_free(env);
		free(id);
		env_close(&e);
	} else
		ok(0, "sandbox env");
	return done_testing();
}
