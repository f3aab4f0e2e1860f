/*
 * spawner.h - the privileged spawner of the delivery process.  Started as
 * root with `user =`, otpmaild fork-execs this small process before it
 * drops to its user; it stays root (only the capabilities it needs) and
 * serves the main process over a SOCK_SEQPACKET socket pair, one fixed-size
 * request at a time: start a delivery process or the fetch process (privsep_spawn, the binary
 * and config path fixed when it started; the main ends of the socket pairs
 * come back by SCM_RIGHTS), kill one it started, say whether one it
 * started has ended.  Nothing else.  When the main process goes (EOF) it
 * kills its delivery processes and exits; when it goes, the main process
 * logs it and exits non-zero.
 */
#ifndef OTPMAIL_SPAWNER_H
#define OTPMAIL_SPAWNER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/core/otpmaild.h"

#define SPAWNER_ARG		"--delivery-spawner"
#define SPAWNER_FD		3	/* the spawner's socket */
#define SPAWNER_MAGIC		0x4f545350u	/* "OTSP" */
#define SPAWNER_MAX_CHILDREN	4	/* delivery processes alive at once */
#define SPAWNER_MAX_FETCH	2	/* fetch processes alive at once */
#define SPAWNER_BURST		8	/* starts at once, then one a second */
#define SPAWNER_FDS_PER_MSG	200	/* below SCM_MAX_FD (253) */

enum spawner_op {
	SPW_READY = 1,		/* reply only: the spawner is up */
	SPW_SPAWN = 2,		/* n: workers; reply: pid, n descriptors */
	SPW_KILL = 3,		/* pid: SIGKILL it (one it started, running) */
	SPW_WAIT = 4,		/* pid: ended? reply rc 0 + status, or EAGAIN */
	SPW_SPAWN_FETCH = 5	/* n = 1: the fetch process (fetch.h); as SPW_SPAWN */
};

/* A request: exactly this many bytes, or refused. */
struct spawner_req {
	uint32_t	magic;
	uint32_t	op;
	int32_t		n;
	int32_t		pid;
};

struct spawner_rep {
	uint32_t	magic;
	uint32_t	op;
	int32_t		rc;		/* 0 or an errno value */
	int32_t		pid;
	int32_t		status;		/* SPW_WAIT: the wait status */
	int32_t		nfds;		/* SPW_SPAWN: descriptors sent */
};

/*
 * Checks a request as received (len bytes): the size, the magic, a known
 * op, n in 1..maxn for SPW_SPAWN, n = 1 for SPW_SPAWN_FETCH, a pid > 1 for SPW_KILL/SPW_WAIT, unused
 * fields zero.  0 and *rq, or -1 and why (a static string).
 */
int	 spawner_parse(const void *buf, size_t len, int maxn, struct spawner_req *rq,
	    const char **why);

/*
 * Main process, before it drops root: starts the spawner when root,
 * `user =` set and not sandbox (else does nothing: delivery processes are
 * then the main process's own children).  0, or -1 with err.
 */
int	 spawner_start(const char *config_path, const struct config *, char *err,
	    size_t errlen);
/* 1 when delivery processes go through the spawner. */
int	 spawner_active(void);
/* SPW_SPAWN: the pid and n descriptors in fds, or -1 with err. */
pid_t	 spawner_spawn(int n, int *fds, char *err, size_t errlen);
/* SPW_SPAWN_FETCH: the fetch process's pid and its one descriptor. */
pid_t	 spawner_spawn_fetch(int *fd, char *err, size_t errlen);
/* SPW_KILL: 0, or -1 with errno. */
int	 spawner_kill(pid_t);
/* SPW_WAIT: pid and *status when ended, 0 if running (nohang), -1 if unknown. */
pid_t	 spawner_wait(pid_t, int *status, int nohang);
/* The main loop, once a second: 1 if the spawner died (logged once). */
int	 spawner_lost(void);
/* Closes the socket (the spawner kills what is left and exits), reaps it. */
void	 spawner_stop(void);
/* main() of the spawner process (otpmaild SPAWNER_ARG logflags config). */
int	 spawner_main(int argc, char **argv);

#endif
