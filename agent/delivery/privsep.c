/*
 * privsep.c - starting and locking in the delivery process (see
 * privsep.h).  The main process forks and execs its own binary: the child
 * never shares an address space with the DKIM keys, the OTP secret or the
 * database.  Once its resolver, TLS context and relay password are loaded,
 * the child takes its user, an empty chroot (a directory made and removed,
 * so nothing can ever appear in it), PR_SET_NO_NEW_PRIVS, a Landlock
 * ruleset that handles every filesystem right and grants none, and a
 * seccomp filter of the system calls delivery makes.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/landlock.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <seccomp.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/bounce.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/privsep.h"
#include "agent/delivery/spawner.h"

#define PRIVSEP_DEFAULT_USER	"otpmail-smtp"
#define PRIVSEP_FALLBACK_USER	"nobody"

static int	 privsep_user(const struct config *, int jail, char *how, size_t howlen,
		    char *err, size_t errlen);
static int	 privsep_landlock(const char *const *readable, char *how, size_t howlen);
static int	 privsep_seccomp(char *err, size_t errlen);

pid_t
privsep_spawn(const char *exe, const char *config_path, const struct config *cfg,
    int n, int *fds, char *err, size_t errlen)
{
	return privsep_spawn_role(exe, PRIVSEP_ARG, config_path, cfg, n, fds, err, errlen);
}

pid_t
privsep_spawn_role(const char *exe, const char *role, const char *config_path,
    const struct config *cfg, int n, int *fds, char *err, size_t errlen)
{
	char nbuf[16], lbuf[8];
	char *argv[6];
	int (*sp)[2], k, t;
	pid_t pid;

	if (n < 1 || n > 1024 || (sp = calloc(n, sizeof(*sp))) == NULL) {
		snprintf(err, errlen, "delivery process: out of memory");
		return -1;
	}
	for (k = 0; k < n; k++)
		sp[k][0] = sp[k][1] = -1;
	for (k = 0; k < n; k++)
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp[k]) == -1) {
			snprintf(err, errlen, "delivery process: socketpair: %s",
			    strerror(errno));
			goto fail;
		}
	snprintf(nbuf, sizeof(nbuf), "%d", n);
	snprintf(lbuf, sizeof(lbuf), "%d", (cfg->log_stderr ? 1 : 0) | (cfg->log_syslog ? 2 : 0));
	argv[0] = strcmp(role, PRIVSEP_ARG) == 0 ? "otpmaild-delivery" : "otpmaild-fetch";
	argv[1] = (char *)role;
	argv[2] = nbuf;
	argv[3] = lbuf;
	argv[4] = (char *)(config_path != NULL ? config_path : "");
	argv[5] = NULL;
	if ((pid = fork()) == -1) {
		snprintf(err, errlen, "delivery process: fork: %s", strerror(errno));
		goto fail;
	}
	if (pid == 0) {
		/* async-signal-safe calls only until exec: move the child ends
		 * above the targets, then onto 3..3+n, close everything else */
		for (k = 0; k < n; k++)
			if ((t = fcntl(sp[k][1], F_DUPFD_CLOEXEC, PRIVSEP_FD0 + n)) == -1)
				_exit(127);
			else
				sp[k][1] = t;
		for (k = 0; k < n; k++)
			if (dup2(sp[k][1], PRIVSEP_FD0 + k) == -1)
				_exit(127);
		syscall(SYS_close_range, PRIVSEP_FD0 + n, ~0U, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(exe, argv);
		_exit(127);
	}
	for (k = 0; k < n; k++) {
		close(sp[k][1]);
		fds[k] = sp[k][0];
	}
	free(sp);
	return pid;
fail:
	for (k = 0; k < n; k++) {
		if (sp[k][0] != -1)
			close(sp[k][0]);
		if (sp[k][1] != -1)
			close(sp[k][1]);
	}
	free(sp);
	return -1;
}

int
privsep_child_init(int argc, char **argv, const char *name, struct otpmaild *d, int *n)
{
	char err[512];
	int lf;

	if (argc != 5 || (*n = atoi(argv[2])) < 1 || *n > 1024) {
		fprintf(stderr, "otpmaild: %s is for otpmaild's own use\n", argv[1]);
		return -1;
	}
	lf = atoi(argv[3]);
	memset(d, 0, sizeof(*d));
	if ((d->cfg = config_load(argv[4][0] != '\0' ? argv[4] : NULL, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "%s: %s\n", name, err);
		return -1;
	}
	d->cfg->log_stderr = (lf & 1) != 0;
	d->cfg->log_syslog = (lf & 2) != 0;
	log_init(name, d->cfg->log_stderr, d->cfg->log_syslog, d->cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	tzset();		/* the zone file is out of reach later */
	d->started = time(NULL);
	d->state_dir = d->cfg->state_dir;
	d->hostname = d->cfg->hostname;
	return 0;
}

int
privsep_child_main(int argc, char **argv)
{
	struct otpmaild d;
	char err[512];
	int n, rc;

	if (privsep_child_init(argc, argv, "otpmaild-delivery", &d, &n) == -1)
		return 2;
	if (bounce_init(d.cfg->bounce_rules_file, err, sizeof(err)) == -1) {
		log_msg(LOG_ERR, "event=delivery_process_failed detail=\"%s\"", err);
		return 1;
	}
	rc = delivery_child_run(&d, PRIVSEP_FD0, n, err, sizeof(err));
	if (rc == -1)
		log_msg(LOG_ERR, "event=delivery_process_failed detail=\"%s\"", err);
	/* no exit handlers: they might want what the filter refuses */
	_exit(rc == -1 ? 1 : 0);
}

/* Looks the user up while /etc is still there; takes it after the chroot
 * (jail: into an empty directory; else the filesystem is Landlock's). */
static int
privsep_user(const struct config *cfg, int jail, char *how, size_t howlen, char *err,
    size_t errlen)
{
	char tmpl[] = "/tmp/otpmail-empty.XXXXXX";
	const char *name = cfg->delivery_user;
	struct passwd *pw;
	uid_t uid;
	gid_t gid;

	if (geteuid() != 0) {
		snprintf(how, howlen, "user=%u chroot=no", (unsigned)geteuid());
		return 0;
	}
	if ((pw = getpwnam(name)) == NULL && strcmp(name, PRIVSEP_DEFAULT_USER) == 0)
		pw = getpwnam(name = PRIVSEP_FALLBACK_USER);
	if (pw == NULL) {
		snprintf(err, errlen, "delivery_user: no such user \"%s\"", name);
		return -1;
	}
	uid = pw->pw_uid;
	gid = pw->pw_gid;
	if (uid == 0) {
		snprintf(err, errlen, "delivery_user %s is root", name);
		return -1;
	}
	if (jail && (mkdtemp(tmpl) == NULL || chdir(tmpl) == -1 || rmdir(tmpl) == -1 ||
	    chroot(".") == -1 || chdir("/") == -1)) {
		snprintf(err, errlen, "chroot into an empty directory (%s): %s", tmpl,
		    strerror(errno));
		return -1;
	}
	if (setgroups(0, NULL) == -1 || setresgid(gid, gid, gid) == -1 ||
	    setresuid(uid, uid, uid) == -1) {
		snprintf(err, errlen, "dropping to %s: %s", name, strerror(errno));
		return -1;
	}
	if (setuid(0) != -1) {
		snprintf(err, errlen, "could regain root after dropping to %s", name);
		return -1;
	}
	/* a change of credentials cleared it */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() == 1)
		_exit(0);
	snprintf(how, howlen, "user=%s chroot=%s", name, jail ? "empty" : "no");
	return 0;
}

/*
 * Every filesystem right handled; none granted but reading the files (or
 * directories) in readable, those that exist.  The ABI used, 0 if none.
 */
static int
privsep_landlock(const char *const *readable, char *how, size_t howlen)
{
	struct landlock_ruleset_attr attr;
	struct landlock_path_beneath_attr pb;
	struct stat st;
	int abi, fd, pfd, i, nr = 0;

	abi = (int)syscall(SYS_landlock_create_ruleset, NULL, 0,
	    LANDLOCK_CREATE_RULESET_VERSION);
	if (abi < 1) {
		snprintf(how, howlen, "landlock=unavailable");
		return 0;
	}
	memset(&attr, 0, sizeof(attr));
	attr.handled_access_fs = (1ULL << 13) - 1;	/* ABI 1: execute..make_sym */
	if (abi >= 2)
		attr.handled_access_fs |= 1ULL << 13;	/* refer */
	if (abi >= 3)
		attr.handled_access_fs |= 1ULL << 14;	/* truncate */
	if (abi >= 5)
		attr.handled_access_fs |= 1ULL << 15;	/* ioctl_dev */
	fd = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr.handled_access_fs), 0);
	for (i = 0; fd != -1 && readable != NULL && readable[i] != NULL; i++) {
		if (readable[i][0] == '\0' ||
		    (pfd = open(readable[i], O_PATH | O_CLOEXEC)) == -1)
			continue;
		memset(&pb, 0, sizeof(pb));
		pb.parent_fd = pfd;
		pb.allowed_access = LANDLOCK_ACCESS_FS_READ_FILE;
		if (fstat(pfd, &st) == 0 && S_ISDIR(st.st_mode))
			pb.allowed_access |= LANDLOCK_ACCESS_FS_READ_DIR;
		if (syscall(SYS_landlock_add_rule, fd, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) == 0)
			nr++;
		close(pfd);
	}
	if (fd == -1 || syscall(SYS_landlock_restrict_self, fd, 0) == -1) {
		snprintf(how, howlen, "landlock=failed(%s)", strerror(errno));
		if (fd != -1)
			close(fd);
		return 0;
	}
	close(fd);
	if (readable != NULL)
		snprintf(how, howlen, "landlock=abi%d readable=%d", abi, nr);
	else
		snprintf(how, howlen, "landlock=abi%d", abi);
	return abi;
}

/*
 * What delivery calls: memory, threads, time, sockets of the internet
 * families, polling, signals of its own.  Anything else fails with EPERM
 * (opening files is refused twice over already; exec, ptrace, mounts,
 * kill, signals to other processes, new unix-socket connections and
 * prctl but for a thread's name and the parent-death signal are not in
 * the list).
 */
static int
privsep_seccomp(char *err, size_t errlen)
{
	static const char *const allow[] = {
		"read", "write", "readv", "writev", "pread64", "pwrite64", "close",
		"recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg", "sendmmsg",
		"connect", "bind", "getsockname", "getpeername", "setsockopt",
		"getsockopt", "shutdown", "socketpair", "pipe", "pipe2", "dup", "dup2",
		"dup3", "fcntl", "ioctl", "lseek", "fstat", "newfstatat", "statx",
		"poll", "ppoll", "select", "pselect6", "epoll_create", "epoll_create1",
		"epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2",
		"futex", "futex_waitv", "set_robust_list", "get_robust_list", "rseq",
		"clone", "clone3", "exit", "exit_group", "set_tid_address",
		"mmap", "munmap", "mprotect", "madvise", "mremap", "brk", "membarrier",
		"clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
		"gettimeofday", "time", "getrandom", "getpid", "gettid", "getppid",
		"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid",
		"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
		"sched_yield", "sched_getaffinity", "uname", "sysinfo",
		"getrusage", "prlimit64", "openat", "open", "access", "faccessat",
		"faccessat2", "readlink", "readlinkat", "getcwd", "close_range",
		"restart_syscall", "timerfd_create", "timerfd_settime",
		NULL
	};
	scmp_filter_ctx ctx;
	int i, rc = -1, sc;

	if ((ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM))) == NULL) {
		snprintf(err, errlen, "seccomp_init failed");
		return -1;
	}
	for (i = 0; allow[i] != NULL; i++) {
		if ((sc = seccomp_syscall_resolve_name(allow[i])) == __NR_SCMP_ERROR)
			continue;
		if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, sc, 0) != 0)
			goto out;
	}
	/* signals to its own threads only (same uid as main without root) */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(tgkill), 1,
	    SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)getpid())) != 0)
		goto out;
	/* prctl: a thread's name (set by the thread: no /proc here) and the
	 * parent-death signal; not dumpable, ptracer or the like */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
	    SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME)) != 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
	    SCMP_A0(SCMP_CMP_EQ, PR_GET_NAME)) != 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(prctl), 1,
	    SCMP_A0(SCMP_CMP_EQ, PR_SET_PDEATHSIG)) != 0)
		goto out;
	/* sockets: the internet families only (no unix-socket connections) */
	if (seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
	    SCMP_A0(SCMP_CMP_EQ, AF_INET)) != 0 ||
	    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
	    SCMP_A0(SCMP_CMP_EQ, AF_INET6)) != 0)
		goto out;
	/* a binary tree, not a list of some 120 compares per system call */
	(void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
	if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1) != 0 || seccomp_load(ctx) != 0)
		goto out;
	rc = 0;
out:
	if (rc == -1)
		snprintf(err, errlen, "seccomp filter could not be loaded");
	seccomp_release(ctx);
	return rc;
}

int
privsep_restrict(const struct config *cfg, const char *const *readable, char *how,
    size_t howlen, char *err, size_t errlen)
{
	char u[128], ll[64];

	if (privsep_user(cfg, readable == NULL, u, sizeof(u), err, errlen) == -1)
		return -1;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) {
		snprintf(err, errlen, "PR_SET_NO_NEW_PRIVS: %s", strerror(errno));
		return -1;
	}
	privsep_landlock(readable, ll, sizeof(ll));
	if (privsep_seccomp(err, errlen) == -1)
		return -1;
	snprintf(how, howlen, "%s no_new_privs=yes %s seccomp=yes", u, ll);
	return 0;
}

void
privsep_probe(const char *paths)
{
	privsep_probe_event("delivery_probe", paths);
}

void
privsep_probe_event(const char *event, const char *paths)
{
	struct sockaddr_un sun;
	char *copy, *p, *save = NULL;
	int fd, oe, ce;

	if (paths == NULL || (copy = strdup(paths)) == NULL)
		return;
	for (p = strtok_r(copy, ":", &save); p != NULL; p = strtok_r(NULL, ":", &save)) {
		oe = ce = 0;
		if ((fd = open(p, O_RDONLY | O_CLOEXEC)) != -1)
			close(fd);
		else
			oe = errno;
		memset(&sun, 0, sizeof(sun));
		sun.sun_family = AF_UNIX;
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", p);
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
			ce = errno;
		else {
			if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1)
				ce = errno;
			close(fd);
		}
		log_msg(LOG_WARNING, "event=%s path=%s open=%s open_errno=%d "
		    "connect=%s connect_errno=%d", event, p, oe ? "denied" : "OPENED", oe,
		    ce ? "denied" : "CONNECTED", ce);
	}
	free(copy);
	/* and a prctl option the filter keeps out (harmless if it let it by) */
	oe = prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == -1 ? errno : 0;
	log_msg(LOG_WARNING, "event=%s prctl=set_dumpable result=%s errno=%d", event,
	    oe ? "denied" : "ALLOWED", oe);
}

/* What deliver.c calls: through the spawner when it runs. */
pid_t
privsep_start(const char *exe, const char *config_path, const struct config *cfg, int n,
    int *fds, char *err, size_t errlen)
{
	if (spawner_active())
		return spawner_spawn(n, fds, err, errlen);
	return privsep_spawn(exe, config_path, cfg, n, fds, err, errlen);
}

pid_t
privsep_start_fetch(const char *exe, const char *config_path, const struct config *cfg,
    int *fd, char *err, size_t errlen)
{
	if (spawner_active())
		return spawner_spawn_fetch(fd, err, errlen);
	return privsep_spawn_role(exe, FETCH_ARG, config_path, cfg, 1, fd, err, errlen);
}

int
privsep_kill(pid_t pid)
{
	if (spawner_active())
		return spawner_kill(pid);
	return kill(pid, SIGKILL);
}

pid_t
privsep_wait(pid_t pid, int *status, int nohang)
{
	if (spawner_active())
		return spawner_wait(pid, status, nohang);
	return waitpid(pid, status, nohang ? WNOHANG : 0);
}
