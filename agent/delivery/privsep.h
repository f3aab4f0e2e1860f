/*
 * privsep.h - the delivery process: otpmaild runs the side that talks to
 * other hosts (DNS, SMTP, TLS) as a process of its own, started from its
 * own binary (a fresh address space, no secret in it), as delivery_user,
 * in an empty chroot, with Landlock hiding the filesystem, no new
 * privileges and a seccomp filter.  Jobs and results go over one socket
 * pair per delivery worker (dlproto.h).
 */
#ifndef OTPMAIL_PRIVSEP_H
#define OTPMAIL_PRIVSEP_H

#include <stddef.h>
#include <sys/types.h>

#include "agent/core/otpmaild.h"

#define PRIVSEP_ARG		"--delivery-child"
#define PRIVSEP_FD0		3	/* the child's first socket */
/* A test hook: paths the delivery process tries to open once restricted. */
#define PRIVSEP_PROBE_ENV	"OTPMAIL_TEST_DELIVERY_PROBE"

/*
 * Starts the delivery process (exe, PRIVSEP_ARG, n, log flags, config path)
 * with n socket pairs; the main process's ends in fds[0..n).  The pid, or
 * -1 with err.
 */
pid_t	 privsep_spawn(const char *exe, const char *config_path,
	    const struct config *, int n, int *fds, char *err, size_t errlen);
/*
 * What deliver.c calls for its delivery processes: through the spawner
 * when it runs, else directly (privsep_spawn, kill, waitpid).
 */
pid_t	 privsep_start(const char *exe, const char *config_path, const struct config *,
	    int n, int *fds, char *err, size_t errlen);
/* The fetch process (FETCH_ARG, one socket) the same way. */
pid_t	 privsep_start_fetch(const char *exe, const char *config_path,
	    const struct config *, int *fd, char *err, size_t errlen);
/* SIGKILL. */
int	 privsep_kill(pid_t);
pid_t	 privsep_wait(pid_t, int *status, int nohang);
/* The same with another role argument (FETCH_ARG: the fetch process). */
pid_t	 privsep_spawn_role(const char *exe, const char *role, const char *config_path,
	    const struct config *, int n, int *fds, char *err, size_t errlen);
/* A child's start: checks argv, loads the config, opens the log as name.
 * 0 with *d and *n (its socket count), or -1 (said on stderr). */
int	 privsep_child_init(int argc, char **argv, const char *name,
	    struct otpmaild *d, int *n);
/* main() of the delivery process (argv as privsep_spawn makes it). */
int	 privsep_child_main(int argc, char **argv);
/*
 * Locks the calling process in: user, no new privileges, Landlock,
 * seccomp.  readable NULL (delivery): an empty chroot and no file right at
 * all; else (fetch) no chroot and the right to read those paths only.
 * What it did in how (for the log).  0 or -1 with err.
 */
int	 privsep_restrict(const struct config *, const char *const *readable,
	    char *how, size_t howlen, char *err, size_t errlen);
/* The test hook: logs, for each path in $PRIVSEP_PROBE_ENV, what opening it did. */
void	 privsep_probe(const char *paths);
/* The same, logged as event (the fetch process: fetch_probe). */
void	 privsep_probe_event(const char *event, const char *paths);

#endif
