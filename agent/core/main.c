/*
 * main.c - otpmaild: loads the configuration, takes the state directory,
 * opens the store, the queue and the DKIM keys, binds the control socket,
 * drops privileges, starts the request and delivery workers, then serves
 * signals (TERM/INT stop, HUP reloads) and runs the periodic jobs.
 */
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "agent/control/control.h"
#include "agent/delivery/delivery.h"
#include "agent/core/cluster.h"
#include "agent/events/events.h"
#include "agent/core/log.h"
#include "agent/mail/mail.h"
#include "agent/core/metrics_http.h"
#include "agent/core/otpmaild.h"
#include "agent/core/privs.h"
#include "dkim/dkim_sign.h"
#include "queue/queue.h"
#include "store/store.h"

#define MAIN_MAILDROP_INTERVAL	5	/* seconds between maildrop scans */

struct otpmaild *otpmaild_ctx;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: otpmaild [-f] [-c file] [--check-config]\n"
	    "  -c, --config FILE   configuration file (default: built-in sandbox defaults,\n"
	    "                      or $OTPMAIL_CONFIG)\n"
	    "  -f, --foreground    stay in the foreground (logs to stderr)\n"
	    "  -n, --check-config  validate the configuration, print it, exit\n"
	    "  -V, --version       print the version\n");
}

static void
main_queue_params(const struct config *c, struct queue_params *qp, char *spool)
{
	memset(qp, 0, sizeof(*qp));
	qp->dir = spool;
	qp->klass[Q_CLASS_OTP].retry_min = c->otp_retry_min;
	qp->klass[Q_CLASS_OTP].retry_max = c->otp_retry_max;
	qp->klass[Q_CLASS_OTP].lifetime = c->otp_max_ttl;
	qp->klass[Q_CLASS_OTP].jitter = c->retry_jitter;
	qp->klass[Q_CLASS_DEFAULT].retry_min = c->default_retry_min;
	qp->klass[Q_CLASS_DEFAULT].retry_max = c->default_retry_max;
	qp->klass[Q_CLASS_DEFAULT].lifetime = c->default_lifetime;
	qp->klass[Q_CLASS_DEFAULT].jitter = c->retry_jitter;
	qp->min_free_bytes = c->queue_min_free_space;
	qp->min_free_inodes = c->queue_min_free_inodes;
	qp->segments = c->queue_segments;
	qp->keep_done = c->queue_keep_done;
	qp->bounce_from = c->bounce_from;
	qp->hostname = c->hostname;
	qp->log = log_line;
}

/* Builds the DKIM signer from the config (start and reload). */
static struct dkim_signer *
main_dkim(const struct config *c, char *err, size_t errlen)
{
	struct dkim_params dp;
	struct dkim_signer *s;
	char msg[1024];
	size_t i;

	if (c->ndkim_keys == 0)
		return NULL;
	memset(&dp, 0, sizeof(dp));
	dp.keys = c->dkim_keys;
	dp.nkeys = c->ndkim_keys;
	dp.relaxed_header = strncmp(c->dkim_canonicalization, "relaxed/", 8) == 0;
	dp.relaxed_body = strstr(c->dkim_canonicalization, "/relaxed") != NULL;
	dp.sign_headers = (const char *const *)c->dkim_sign_headers;
	dp.oversign_headers = (const char *const *)c->dkim_oversign_headers;
	dp.check_key_modes = 1;
	if ((s = dkim_signer_new(&dp, err, errlen)) != NULL || c->file == NULL ||
	    c->dkim_key_lines == NULL)
		return s;
	/* name the line of the key at fault, as the config errors do */
	for (i = 0; i < c->ndkim_keys; i++)
		if (strstr(err, c->dkim_keys[i].keyfile) != NULL) {
			snprintf(msg, sizeof(msg), "%s:%d: %s", c->file, c->dkim_key_lines[i], err);
			snprintf(err, errlen, "%s", msg);
			break;
		}
	return NULL;
}

static char *
main_path(const char *dir, const char *name)
{
	char *p;

	if (asprintf(&p, "%s/%s", dir, name) == -1)
		abort();
	return p;
}

/* Tells systemd (Type=notify) we are ready, without libsystemd. */
/*
 * --check-config: what is valid but will hurt delivery.  No DKIM key for
 * otp_from's domain (or a parent of it) means unsigned OTP mail; Ed25519
 * alone is not verified by many receivers yet.
 */
static void
main_check_warnings(const struct config *c)
{
	const char *from = c->otp_from && *c->otp_from ? c->otp_from : NULL;
	char dom[256];
	size_t i, l, ned = 0, kl;
	int covered = 0;

	if (c->sandbox)
		return;
	if (from != NULL && strrchr(from, '@') != NULL)
		snprintf(dom, sizeof(dom), "%s", strrchr(from, '@') + 1);
	else
		snprintf(dom, sizeof(dom), "%s", c->hostname ? c->hostname : "");
	dom[strcspn(dom, ">")] = '\0';
	l = strlen(dom);
	for (i = 0; i < c->ndkim_keys; i++) {
		kl = strlen(c->dkim_keys[i].domain);
		if (l >= kl && strcasecmp(dom + l - kl, c->dkim_keys[i].domain) == 0 &&
		    (l == kl || dom[l - kl - 1] == '.'))
			covered = 1;
		if (c->dkim_keys[i].alg == DKIM_ALG_ED25519_SHA256)
			ned++;
	}
	if (!covered)
		fprintf(stderr, "otpmaild: warning: delivery is on and no dkim_key covers "
		    "the domain of otp_from (%s): its mail goes out unsigned\n",
		    dom[0] ? dom : "the host name");
	if (c->ndkim_keys > 0 && ned == c->ndkim_keys)
		fprintf(stderr, "otpmaild: warning: only Ed25519 DKIM keys: many receivers "
		    "do not verify Ed25519 yet; add an RSA key beside it\n");
}

static void
main_sd_notify(const char *msg)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    strlen(path) >= sizeof(sun.sun_path))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, path);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1)
		return;
	(void)!sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun, len);
	close(fd);
}

/* SIGHUP: re-read the file; swap what can change while running. */
static void
main_reload(struct otpmaild *d, const char *path)
{
	struct config *nc;
	struct dkim_signer *ns = NULL, *old;
	struct otp_templates *nt, *oldt;
	char err[512];

	if ((nc = config_load(path, err, sizeof(err))) == NULL) {
		log_msg(LOG_ERR, "event=reload_failed detail=\"%s\"", err);
		return;
	}
	if (nc->ndkim_keys > 0 && (ns = main_dkim(nc, err, sizeof(err))) == NULL) {
		log_msg(LOG_ERR, "event=reload_failed detail=\"%s\"", err);
		config_free(nc);
		return;
	}
	nt = otp_templates_load(nc->templates_dir, nc->otp_default_locale, err, sizeof(err));
	if (nt == NULL) {
		log_msg(LOG_ERR, "event=reload_failed detail=\"%s\"", err);
		dkim_signer_free(ns);
		config_free(nc);
		return;
	}
	pthread_rwlock_wrlock(&d->reload_lock);
	old = d->dkim;
	oldt = d->templates;
	d->dkim = ns;
	d->templates = nt;
	pthread_rwlock_unlock(&d->reload_lock);
	dkim_signer_free(old);
	otp_templates_free(oldt);
	log_init("otpmaild", d->cfg->log_stderr, d->cfg->log_syslog, nc->log_level);
	log_msg(LOG_INFO, "event=reloaded what=\"dkim keys, templates, log level\" "
	    "note=\"other keys take effect at restart\"");
	config_free(nc);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "check-config", no_argument, NULL, 'n' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 }
	};
	struct otpmaild d;
	struct store_params sp;
	struct store_cluster sc;
	struct queue_params qp;
	struct control *ctl = NULL;
	struct metrics_http *mhttp = NULL;
	struct timespec tick = { 1, 0 };
	const char *path = getenv("OTPMAIL_CONFIG");
	char err[1024], *spool;
	int ch, foreground = 0, check = 0, lockfd, sig, rc = 1, lost_spawner = 0;
	time_t last_sweep, last_ckpt, last_drop, last_rpt, last_sts;
	sigset_t set;
	struct passwd *pw;

	/* the delivery process: the same binary, a fresh address space */
	if (argc > 1 && strcmp(argv[1], PRIVSEP_ARG) == 0)
		return privsep_child_main(argc, argv);
	/* what starts it as another user once main has dropped root */
	if (argc > 1 && strcmp(argv[1], SPAWNER_ARG) == 0)
		return spawner_main(argc, argv);
	/* the fetch process (MTA-STS, TLS-RPT lookups, webhooks): the same */
	if (argc > 1 && strcmp(argv[1], FETCH_ARG) == 0)
		return fetch_child_main(argc, argv);
	while ((ch = getopt_long(argc, argv, "c:fnVh", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':	path = optarg; break;
		case 'f':	foreground = 1; break;
		case 'n':	check = 1; break;
		case 'V':	printf("otpmaild %s\n", PACKAGE_VERSION); return 0;
		case 'h':	usage(stdout); return 0;
		default:	usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (path != NULL && *path == '\0')
		path = NULL;

	memset(&d, 0, sizeof(d));
	if ((d.cfg = config_load(path, err, sizeof(err))) == NULL) {
		fprintf(stderr, "otpmaild: %s\n", err);
		return 1;
	}
	for (size_t i = 0; check && i < d.cfg->nwarnings; i++)
		fprintf(stderr, "otpmaild: warning: %s\n", d.cfg->warnings[i]);
	if (check) {
		/* Keys are part of the configuration: load them too. */
		struct dkim_signer *s = NULL;
		if (d.cfg->ndkim_keys > 0 && (s = main_dkim(d.cfg, err, sizeof(err))) == NULL) {
			fprintf(stderr, "otpmaild: %s\n", err);
			config_free(d.cfg);
			return 1;
		}
		dkim_signer_free(s);
		/* and the admin's bounce rules, refused with file:line */
		if (bounce_init(d.cfg->bounce_rules_file, err, sizeof(err)) == -1) {
			fprintf(stderr, "otpmaild: %s\n", err);
			config_free(d.cfg);
			return 1;
		}
		bounce_shutdown();
		main_check_warnings(d.cfg);
		config_print(d.cfg, stdout);
		config_free(d.cfg);
		return 0;
	}

	if (!foreground) {
		if (daemon(0, 0) == -1) {
			fprintf(stderr, "otpmaild: daemon: %s\n", strerror(errno));
			return 1;
		}
		d.cfg->log_stderr = 0;
		d.cfg->log_syslog = 1;
	}
	log_init("otpmaild", d.cfg->log_stderr, d.cfg->log_syslog, d.cfg->log_level);
	for (size_t i = 0; i < d.cfg->nwarnings; i++)
		log_msg(LOG_WARNING, "event=config_warning detail=%s", d.cfg->warnings[i]);
	signal(SIGPIPE, SIG_IGN);
	/* Every thread inherits this mask; only main waits for the signals. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	otpmaild_ctx = &d;
	d.started = time(NULL);
	d.state_dir = d.cfg->state_dir;
	d.hostname = d.cfg->hostname;
	/* SMTP delivery runs in a process of its own, which reads the config */
	d.delivery_privsep = 1;
	d.config_path = path != NULL ? realpath(path, NULL) : NULL;
	pthread_rwlock_init(&d.reload_lock, NULL);
	umask(027);

	if ((lockfd = privs_state_lock(d.cfg, err, sizeof(err))) == -1)
		goto fail;
	/* root with `user =`: a process that stays root to start delivery
	 * processes as delivery_user; before any thread and any secret */
	if (spawner_start(d.config_path, d.cfg, err, sizeof(err)) == -1)
		goto fail;
	if (otp_store_params_from_config(d.cfg, d.state_dir, &sp) == -1) {
		snprintf(err, sizeof(err), "bad one-time-code settings");
		goto fail;
	}
	sp.log = log_line;
	/* several hosts: the relay first, the store waits for a master through it */
	d.cluster = cluster_open(d.cfg, d.state_dir, &sc, err, sizeof(err));
	if (d.cluster == NULL && err[0] != '\0')
		goto fail;
	if (d.cluster != NULL) {
		if (cluster_relay_start(d.cluster, err, sizeof(err)) == -1)
			goto fail;
		sp.cluster = &sc;
		/* message ids say which site queued them (message.status) */
		queue_id_site(cluster_self(d.cluster));
	}
	d.store = store_open(&sp, err, sizeof(err));
	explicit_bzero(&sc, sizeof(sc));
	if (d.store == NULL)
		goto fail;
	spool = main_path(d.state_dir, "spool");
	main_queue_params(d.cfg, &qp, spool);
	qp.sign = submit_sign_dsn;	/* DSNs are signed like any mail */
	qp.sign_arg = &d;
	/* the event log first: the queue records expiries in it */
	if (events_open(&d, qp.klass, err, sizeof(err)) == -1)
		goto fail;
	qp.expired = events_expired;
	qp.expired_sync = events_expired_sync;
	d.queue = queue_open(&qp, err, sizeof(err));
	free(spool);	/* the queue keeps its own copy */
	if (d.queue == NULL)
		goto fail;
	if (d.cfg->ndkim_keys > 0 && (d.dkim = main_dkim(d.cfg, err, sizeof(err))) == NULL)
		goto fail;
	d.templates = otp_templates_load(d.cfg->templates_dir, d.cfg->otp_default_locale,
	    err, sizeof(err));
	if (d.templates == NULL)
		goto fail;
	/* before any thread: the rules are read once, a bad line fails the start */
	if (bounce_init(d.cfg->bounce_rules_file, err, sizeof(err)) == -1)
		goto fail;
	if (d.cfg->sandbox && mkdir(d.cfg->sandbox_maildir, 0750) == -1 && errno != EEXIST) {
		snprintf(err, sizeof(err), "mkdir %s: %s", d.cfg->sandbox_maildir, strerror(errno));
		goto fail;
	}
	/* A bad resolver or trust anchor fails now, not at the first lookup;
	 * the lookups themselves are the fetch and delivery processes'. */
	if (!d.cfg->sandbox && mx_resolver_check(d.cfg, err, sizeof(err)) == -1)
		goto fail;
	if (privs_chown_state(d.cfg, err, sizeof(err)) == -1)
		goto fail;
	if (maildrop_init(d.cfg, err, sizeof(err)) == -1)
		goto fail;
	if ((ctl = control_listen(&d, err, sizeof(err))) == NULL)
		goto fail;
	if (geteuid() == 0 && d.cfg->user[0] != '\0' && (pw = getpwnam(d.cfg->user)) != NULL)
		(void)!chown(d.cfg->control_socket, pw->pw_uid, (gid_t)-1);
	if (d.cfg->metrics_listen[0] != '\0' &&
	    (mhttp = metrics_http_listen(d.cfg->metrics_listen, err, sizeof(err))) == NULL)
		goto fail;
	if (privs_drop(d.cfg, err, sizeof(err)) == -1)
		goto fail;
	/* Delivery (and its resolver) first: once the socket answers, clients
	 * may take every descriptor there is. */
	if ((d.delivery = delivery_start(&d, err, sizeof(err))) == NULL)
		goto fail;
	if (fetch_start(&d, err, sizeof(err)) == -1)
		goto fail;
	delivery_wait_ready(d.delivery);	/* their start-up is not the first requests' */
	if (events_start(err, sizeof(err)) == -1)
		goto fail;
	if (control_run(ctl, err, sizeof(err)) == -1)
		goto fail;
	if (mhttp != NULL && metrics_http_start(mhttp, &d, err, sizeof(err)) == -1)
		goto fail;

	log_msg(LOG_INFO, "event=started version=%s state_dir=%s socket=%s mode=%s uid=%u",
	    PACKAGE_VERSION, d.state_dir, d.cfg->control_socket,
	    d.cfg->sandbox ? "sandbox" : "delivery", (unsigned)geteuid());
	if (d.cfg->sandbox)
		log_msg(LOG_INFO, "event=sandbox maildir=%s note=\"nothing leaves this "
		    "machine (set sandbox = no to deliver)\"", d.cfg->sandbox_maildir);
	main_sd_notify("READY=1");

	last_sweep = last_ckpt = last_drop = last_rpt = last_sts = time(NULL);
	maildrop_scan(&d);	/* what otpmail-sendmail kept while we were down */
	while (!d.stopping) {
		sig = sigtimedwait(&set, NULL, &tick);
		if (spawner_lost()) {
			d.stopping = 1;
			lost_spawner = 1;
			break;
		}
		if (sig == SIGTERM || sig == SIGINT) {
			log_msg(LOG_INFO, "event=stopping signal=%s", sig == SIGTERM ? "TERM" : "INT");
			d.stopping = 1;
			break;
		}
		if (sig == SIGHUP)
			main_reload(&d, path);
		if (time(NULL) - last_sweep >= d.cfg->otp_sweep_interval) {
			size_t n = 0;
			last_sweep = time(NULL);
			if (store_sweep(d.store, last_sweep, &n) == S_OK && n > 0)
				log_msg(LOG_INFO, "event=otp_sweep removed=%zu", n);
		}
		if (time(NULL) - last_drop >= MAIN_MAILDROP_INTERVAL) {
			/* a sendmail that found the socket just before it was up */
			last_drop = time(NULL);
			maildrop_scan(&d);
		}
		if (d.cfg->mta_sts && !d.cfg->sandbox &&
		    time(NULL) - last_sts >= d.cfg->mta_sts_check_interval) {
			last_sts = time(NULL);
			mtasts_refresh(mtasts_shared(d.cfg, d.state_dir));
		}
		if (d.cfg->tls_rpt && !d.cfg->sandbox &&
		    time(NULL) - last_rpt >= d.cfg->tls_rpt_interval) {
			size_t ns, nf;

			last_rpt = time(NULL);
			tlsrpt_send(&d, &ns, &nf);
		}
		if (time(NULL) - last_ckpt >= 60) {
			last_ckpt = time(NULL);
			store_checkpoint(d.store);
			events_expire();
		}
	}
	main_sd_notify("STOPPING=1");
	metrics_http_stop(mhttp);
	mhttp = NULL;
	control_stop(ctl);
	ctl = NULL;
	delivery_stop(d.delivery);
	d.delivery = NULL;
	rc = lost_spawner ? 1 : 0;
	log_msg(LOG_INFO, "event=stopped");
	goto out;
fail:
	log_msg(LOG_ERR, "event=start_failed detail=\"%s\"", err);
	if (foreground && !d.cfg->log_stderr)
		fprintf(stderr, "otpmaild: %s\n", err);
out:
	metrics_http_stop(mhttp);
	control_stop(ctl);
	if (d.delivery)
		delivery_stop(d.delivery);
	if (d.queue)
		queue_close(d.queue);
	events_close();
	fetch_stop();		/* after the webhook threads and delivery */
	spawner_stop();		/* after both (it started them) */
	if (d.store)
		store_close(d.store);
	cluster_close(d.cluster);
	dkim_signer_free(d.dkim);
	otp_templates_free(d.templates);
	mtasts_shared_free();
	bounce_shutdown();
	config_free(d.cfg);
	free((char *)d.config_path);
	return rc;
}
