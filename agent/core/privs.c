/*
 * privs.c - the state directory lock and privilege dropping.  A second
 * daemon on the same state directory fails at once instead of sharing the
 * spool; started as root, the daemon binds and opens what it needs, gives
 * the state tree to its user, then runs as that user.
 */
#include <sys/file.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent/core/privs.h"

int
privs_state_lock(const struct config *c, char *err, size_t errlen)
{
	char path[4096], pid[32];
	int fd;

	struct stat st;

	if (mkdir(c->state_dir, 0750) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", c->state_dir, strerror(errno));
		return -1;
	}
	/* Secrets and the spool live here: nobody else may write into it. */
	if (lstat(c->state_dir, &st) == -1 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "%s is not a directory", c->state_dir);
		return -1;
	}
	if (st.st_mode & 0022) {
		snprintf(err, errlen, "%s is writable by group or others (mode %04o); "
		    "chmod 750 it", c->state_dir, (unsigned)(st.st_mode & 07777));
		return -1;
	}
	if (st.st_uid != geteuid() && st.st_uid != 0) {
		struct passwd *pw = c->user[0] ? getpwnam(c->user) : NULL;
		if (pw == NULL || st.st_uid != pw->pw_uid) {
			snprintf(err, errlen, "%s belongs to uid %u, not to this daemon",
			    c->state_dir, (unsigned)st.st_uid);
			return -1;
		}
	}
	snprintf(path, sizeof(path), "%s/otpmaild.pid", c->state_dir);
	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640)) == -1) {
		snprintf(err, errlen, "open %s: %s", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		snprintf(err, errlen, "another otpmaild runs on %s (lock %s held)",
		    c->state_dir, path);
		close(fd);
		return -1;
	}
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) == -1 || pwrite(fd, pid, strlen(pid), 0) == -1) {
		snprintf(err, errlen, "write %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static uid_t privs_uid;
static gid_t privs_gid;

/*
 * Only what the daemon itself made: entries owned by root or already by the
 * user, and no regular file with other links (a hard link planted here must
 * not hand an outside file to the daemon's user).
 */
static int
privs_chown_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (st->st_uid != 0 && st->st_uid != privs_uid)
		return 0;
	if (!S_ISDIR(st->st_mode) && st->st_nlink > 1)
		return 0;
	if (flag == FTW_SL || flag == FTW_SLN)
		return 0;	/* never follow, never chown a link */
	if (lchown(path, privs_uid, privs_gid) == -1)
		return -1;
	return 0;
}

/*
 * The configured user when running as root: 1 and *pw set, 0 when there is
 * nothing to do, -1 with err when the user does not exist.
 */
static int
privs_user(const struct config *c, struct passwd **pw, char *err, size_t errlen)
{
	if (geteuid() != 0 || c->user[0] == '\0')
		return 0;
	if ((*pw = getpwnam(c->user)) == NULL) {
		snprintf(err, errlen, "no such user %s", c->user);
		return -1;
	}
	return 1;
}

int
privs_chown_state(const struct config *c, char *err, size_t errlen)
{
	struct passwd *pw;
	int r;

	if ((r = privs_user(c, &pw, err, errlen)) <= 0)
		return r;
	privs_uid = pw->pw_uid;
	privs_gid = pw->pw_gid;
	if (nftw(c->state_dir, privs_chown_one, 32, FTW_PHYS | FTW_MOUNT) == -1) {
		snprintf(err, errlen, "chown %s to %s: %s", c->state_dir, c->user,
		    strerror(errno));
		return -1;
	}
	return 0;
}

int
privs_drop(const struct config *c, char *err, size_t errlen)
{
	struct passwd *pw;
	int r;

	if ((r = privs_user(c, &pw, err, errlen)) <= 0)
		return r;
	if (setgroups(0, NULL) == -1 || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) == -1 ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) == -1) {
		snprintf(err, errlen, "dropping to %s: %s", c->user, strerror(errno));
		return -1;
	}
	if (setuid(0) != -1) {
		snprintf(err, errlen, "could regain root after dropping to %s", c->user);
		return -1;
	}
	return 0;
}
