/*
 * verify.c - database crash isolation at open: each .db file of the store
 * is checked with DB->verify in a forked child (libdb 5.3 has memory bugs
 * on some damaged pages: the child may crash, the daemon must not), and a
 * file that fails is moved into <state_dir>/quarantine/ with a log line
 * saying what failed, what is lost and what to do.  The store then starts
 * with what is sound: a quarantined otp.db is recreated empty (its expiry
 * index goes with it), expiry.db is rebuilt from otp.db, rate.db starts
 * empty.  store_quarantined() lists what the folder holds (stats); for
 * max_ttl after a quarantined otp.db a failed verify answers unavailable
 * (otp.c): the code may have been right.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "store/store_int.h"

#define VERIFY_TIMEOUT_MS	120000	/* a child verifying longer is stuck */

/* The store's files; what a quarantine of each costs. */
static const struct db_file {
	const char	*name;
	const char	*lost;
} db_files[STORE_DB_FILES] = {
	{ "otp.db", "every outstanding code, resend cooldown, failure count, "
	    "lock-out and idempotency key (users ask for a new code)" },
	{ "expiry.db", "nothing (the expiry index is rebuilt from otp.db)" },
	{ "rate.db", "the per-client issue windows (at most a minute of counts)" },
};

struct check;

static void	child_errcall(const DB_ENV *, const char *, const char *);
static void	verify_child(const char *, int) __attribute__((noreturn));
static void	check_reason(struct check *);
static void	wait_children(struct check *, size_t);
static int	quarantine_path(const struct store *, char *, size_t);
static int	quarantine_dir(struct store *, char *, size_t);
static int	quarantine(struct store *, size_t, const char *, char *, size_t);
static void	list_earlier(struct store *);
static void	recover_child(const struct store *, const int *) __attribute__((noreturn));
static void	recover_retry(struct store *, int *);
static void	quiet_errcall(const DB_ENV *, const char *, const char *);

/* The child's fd for BDB's first error message (one per child). */
static int child_errfd = -1;

static void
child_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	size_t n;

	(void)env;
	(void)pfx;
	if (child_errfd == -1)
		return;
	n = strlen(msg);
	if (n > STORE_QREASON_MAX - 33)
		n = STORE_QREASON_MAX - 33;
	if (write(child_errfd, msg, n) < 0) {
		/* the parent reports the exit status alone */
	}
	close(child_errfd);
	child_errfd = -1;
}

/* In the child: 0 sound, 1 damaged; a crash shows as a signal. */
static void
verify_child(const char *path, int errfd)
{
	DB *db;
	int r;

	child_errfd = errfd;
	if (db_create(&db, NULL, 0) != 0)
		_exit(2);
	db->set_errcall(db, child_errcall);
	/* verify closes the handle, whatever it finds */
	r = db->verify(db, path, NULL, NULL, DB_NOORDERCHK);
	if (r != 0 && child_errfd != -1)
		child_errcall(NULL, NULL, db_strerror(r));
	_exit(r == 0 ? 0 : 1);
}

struct check {
	pid_t		 pid;
	int		 fd;		/* read end of the child's message pipe */
	int		 present;
	int		 status;
	int		 done;
	int		 waiterr;	/* errno of a failed waitpid: result unknown */
	char		 reason[STORE_QREASON_MAX];
};

static void
check_reason(struct check *c)
{
	char msg[STORE_QREASON_MAX - 32];
	ssize_t n;

	n = read(c->fd, msg, sizeof(msg) - 1);
	msg[n > 0 ? n : 0] = '\0';
	for (ssize_t i = 0; i < n; i++)
		if (msg[i] == '"' || msg[i] == '\\' || (unsigned char)msg[i] < 0x20)
			msg[i] = '\'';
	if (WIFSIGNALED(c->status))
		snprintf(c->reason, sizeof(c->reason), "DB->verify crashed (signal %d)",
		    WTERMSIG(c->status));
	else if (WIFEXITED(c->status) && WEXITSTATUS(c->status) == 1)
		snprintf(c->reason, sizeof(c->reason), "DB->verify failed: %.*s",
		    (int)sizeof(msg) - 1, msg[0] ? msg : "damaged");
	else
		snprintf(c->reason, sizeof(c->reason), "DB->verify could not run "
		    "(status %d)", c->status);
}

static void
quiet_errcall(const DB_ENV *env, const char *pfx, const char *msg)
{
	(void)env;
	(void)pfx;
	(void)msg;
}

/*
 * In a child: recovery (the log redoes what a crash left half written in
 * the files), then the failed files verified again.  Exits with a bit per
 * file still damaged.
 */
static void
recover_child(const struct store *s, const int *bad)
{
	char path[PATH_MAX];
	DB_ENV *env;
	DB *db;
	int i, still = 0;

	if (db_env_create(&env, 0) != 0)
		_exit(0x7f);
	env->set_errcall(env, quiet_errcall);
	if (env->open(env, s->p.dir, DB_CREATE | DB_INIT_TXN | DB_INIT_LOCK |
	    DB_INIT_LOG | DB_INIT_MPOOL | DB_RECOVER, 0600) != 0)
		_exit(0x7f);
	env->close(env, 0);
	for (i = 0; i < STORE_DB_FILES; i++) {
		if (!bad[i])
			continue;
		snprintf(path, sizeof(path), "%s/%s", s->p.dir, db_files[i].name);
		if (db_create(&db, NULL, 0) != 0)
			_exit(0x7f);
		db->set_errcall(db, quiet_errcall);
		if (db->verify(db, path, NULL, NULL, DB_NOORDERCHK) != 0)
			still |= 1 << i;
	}
	_exit(still);
}

/*
 * A file that fails before recovery may only be what a crash left: pages
 * the log still holds.  Only then (a clean start pays nothing) recovery
 * runs in a child, and what verifies after it is kept.
 */
static void
recover_retry(struct store *s, int *bad)
{
	struct check c;
	size_t i;

	memset(&c, 0, sizeof(c));
	c.present = 1;
	c.fd = -1;
	if ((c.pid = fork()) == -1)
		return;
	if (c.pid == 0)
		recover_child(s, bad);
	wait_children(&c, 1);
	if (c.waiterr != 0 || !WIFEXITED(c.status) || WEXITSTATUS(c.status) == 0x7f)
		return;
	for (i = 0; i < STORE_DB_FILES; i++)
		if (bad[i] && !(WEXITSTATUS(c.status) & (1 << i))) {
			bad[i] = 0;
			store_logf(s, LOG_WARNING, "event=store.verify file=%s/%s "
			    "result=\"damaged before recovery, sound after it: kept\"",
			    s->p.dir, db_files[i].name);
		}
}

/* Waits for every child, killing those past the deadline. */
static void
wait_children(struct check *c, size_t n)
{
	struct timespec ts = { 0, 1000000 };
	long waited = 0;
	size_t left, i;
	pid_t r;

	for (;;) {
		left = 0;
		for (i = 0; i < n; i++) {
			if (!c[i].present || c[i].done)
				continue;
			r = waitpid(c[i].pid, &c[i].status, WNOHANG);
			if (r == c[i].pid || (r == -1 && errno != EINTR)) {
				c[i].waiterr = r == -1 ? errno : 0;
				c[i].done = 1;
				continue;
			}
			left++;
			if (waited >= VERIFY_TIMEOUT_MS) {
				kill(c[i].pid, SIGKILL);
				while (waitpid(c[i].pid, &c[i].status, 0) == -1 &&
				    errno == EINTR)
					;
				c[i].done = 1;
			}
		}
		if (left == 0)
			return;
		nanosleep(&ts, NULL);
		waited++;
	}
}

/* <state_dir>/quarantine: beside the environment's directory */
static int
quarantine_path(const struct store *s, char *out, size_t len)
{
	char parent[PATH_MAX];

	snprintf(parent, sizeof(parent), "%s", s->p.dir);
	if (snprintf(out, len, "%s/quarantine", dirname(parent)) >= (int)len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

static int
quarantine_dir(struct store *s, char *out, size_t len)
{
	char parent[PATH_MAX];

	if (quarantine_path(s, out, len) == -1)
		return -1;
	if (mkdir(out, 0700) == 0) {
		snprintf(parent, sizeof(parent), "%s", out);
		if (store_fsync_dir(dirname(parent)) == -1)
			return -1;
	} else if (errno != EEXIST)
		return -1;
	return 0;
}

/* Moves dir/file into the quarantine folder; -1 with err set on failure. */
static int
quarantine(struct store *s, size_t i, const char *reason, char *err, size_t errlen)
{
	struct store_quarantine *q;
	char qdir[PATH_MAX], from[PATH_MAX], to[PATH_MAX], stamp[32];
	time_t now = time(NULL);
	struct tm tm;

	snprintf(from, sizeof(from), "%s/%s", s->p.dir, db_files[i].name);
	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	if (quarantine_dir(s, qdir, sizeof(qdir)) == -1 ||
	    snprintf(to, sizeof(to), "%s/%s.%s.%ld", qdir, db_files[i].name, stamp,
	    (long)getpid()) >= (int)sizeof(to) ||
	    rename(from, to) == -1 || store_fsync_dir(qdir) == -1 ||
	    store_fsync_dir(s->p.dir) == -1) {
		snprintf(err, errlen, "store: %s is damaged (%s) and cannot be moved "
		    "aside (%s): move it out of %s by hand and start again (%s are "
		    "then lost), or restore the store from a backup", from, reason,
		    strerror(errno), s->p.dir, db_files[i].lost);
		return -1;
	}
	store_logf(s, LOG_CRIT, "event=store.quarantine file=%s moved_to=%s reason=\"%s\" "
	    "lost=\"%s\" action=\"starting with a new empty %s; to recover, stop the "
	    "daemon and restore the store from a backup (keep the quarantined file for "
	    "analysis: db_verify, db_dump -r)\"", from, to, reason, db_files[i].lost,
	    db_files[i].name);
	q = &s->quarantined[s->nquarantined++];
	snprintf(q->file, sizeof(q->file), "%s", db_files[i].name);
	snprintf(q->moved_to, sizeof(q->moved_to), "quarantine/%s", strrchr(to, '/') + 1);
	snprintf(q->reason, sizeof(q->reason), "%s", reason);
	snprintf(q->lost, sizeof(q->lost), "%s", db_files[i].lost);
	q->when = now;
	return 0;
}

/*
 * Verifies the files that exist, all at once (one child each), and
 * quarantines those that fail: a damaged otp.db takes its index with it.
 * -1 (err set) only if a damaged file cannot be moved aside or no child
 * can be started.
 */
int
store_verify_files(struct store *s, char *err, size_t errlen)
{
	struct check c[STORE_DB_FILES];
	char path[PATH_MAX];
	int pfd[2], bad[STORE_DB_FILES];
	size_t i;

	memset(c, 0, sizeof(c));
	memset(bad, 0, sizeof(bad));
	for (i = 0; i < STORE_DB_FILES; i++) {
		snprintf(path, sizeof(path), "%s/%s", s->p.dir, db_files[i].name);
		if (access(path, F_OK) == -1)
			continue;
		if (pipe2(pfd, O_CLOEXEC) == -1)
			goto nochild;
		if ((c[i].pid = fork()) == -1) {
			close(pfd[0]);
			close(pfd[1]);
			goto nochild;
		}
		if (c[i].pid == 0) {
			close(pfd[0]);
			verify_child(path, pfd[1]);
		}
		close(pfd[1]);
		c[i].fd = pfd[0];
		c[i].present = 1;
	}
	wait_children(c, STORE_DB_FILES);
	for (i = 0; i < STORE_DB_FILES; i++) {
		if (!c[i].present)
			continue;
		if (c[i].waiterr != 0) {
			/* not known to be sound, nor damaged: neither open nor move it */
			snprintf(err, errlen, "store: %s/%s: the result of its check is "
			    "unknown (waitpid: %s): start again", s->p.dir, db_files[i].name,
			    strerror(c[i].waiterr));
			for (; i < STORE_DB_FILES; i++)
				if (c[i].present)
					close(c[i].fd);
			return -1;
		}
		if (!WIFEXITED(c[i].status) || WEXITSTATUS(c[i].status) != 0) {
			check_reason(&c[i]);
			bad[i] = 1;
		}
		close(c[i].fd);
	}
	if (bad[0] || bad[1] || bad[2])
		recover_retry(s, bad);
	/* the expiry index of a quarantined otp.db indexes nothing left */
	if (bad[0] && c[1].present && !bad[1]) {
		bad[1] = 1;
		snprintf(c[1].reason, sizeof(c[1].reason), "index of the quarantined otp.db");
	}
	for (i = 0; i < STORE_DB_FILES; i++)
		if (bad[i] && quarantine(s, i, c[i].reason, err, errlen) == -1)
			return -1;
	list_earlier(s);
	for (i = 0; i < s->nquarantined; i++)
		if (strcmp(s->quarantined[i].file, "otp.db") == 0 &&
		    (uint64_t)s->quarantined[i].when + (uint64_t)s->p.max_ttl > s->lost_until)
			s->lost_until = (uint64_t)s->quarantined[i].when + (uint64_t)s->p.max_ttl;
	return 0;
nochild:
	snprintf(err, errlen, "store: cannot check %s in a child process: %s", path,
	    strerror(errno));
	for (i = 0; i < STORE_DB_FILES; i++)
		if (c[i].present) {
			close(c[i].fd);
			kill(c[i].pid, SIGKILL);
			waitpid(c[i].pid, NULL, 0);
		}
	return -1;
}

/*
 * Adds the files an earlier start moved aside (the folder's names say which
 * file and when), so stats keeps reporting them until an operator empties
 * the folder.
 */
static void
list_earlier(struct store *s)
{
	struct store_quarantine *q;
	char qdir[PATH_MAX];
	struct dirent *de;
	struct tm tm;
	size_t i, j;
	DIR *dir;

	if (quarantine_path(s, qdir, sizeof(qdir)) == -1 ||
	    (dir = opendir(qdir)) == NULL)
		return;
	while ((de = readdir(dir)) != NULL && s->nquarantined < STORE_QUARANTINE_MAX) {
		for (i = 0; i < STORE_DB_FILES; i++) {
			size_t n = strlen(db_files[i].name);

			if (strncmp(de->d_name, db_files[i].name, n) == 0 &&
			    de->d_name[n] == '.')
				break;
		}
		if (i == STORE_DB_FILES)
			continue;
		for (j = 0; j < s->nquarantined; j++)
			if (strcmp(s->quarantined[j].moved_to + sizeof("quarantine/") - 1,
			    de->d_name) == 0)
				break;
		if (j < s->nquarantined)
			continue;	/* this start's */
		memset(&tm, 0, sizeof(tm));
		q = &s->quarantined[s->nquarantined];
		memset(q, 0, sizeof(*q));
		if (strptime(de->d_name + strlen(db_files[i].name) + 1, "%Y%m%dT%H%M%SZ",
		    &tm) == NULL)
			continue;
		q->when = timegm(&tm);
		snprintf(q->file, sizeof(q->file), "%s", db_files[i].name);
		snprintf(q->moved_to, sizeof(q->moved_to), "quarantine/%.80s", de->d_name);
		snprintf(q->reason, sizeof(q->reason), "quarantined by an earlier start");
		snprintf(q->lost, sizeof(q->lost), "%s", db_files[i].lost);
		s->nquarantined++;
	}
	closedir(dir);
}

size_t
store_quarantined(const struct store *s, const struct store_quarantine **out)
{
	*out = s->quarantined;
	return s->nquarantined;
}
