/*
 * maildrop.c - mail that otpmail-sendmail kept while the daemon was down.
 * <state_dir>/maildrop (mode 3730: the daemon's group and root may drop,
 * nobody else may list) holds one mail.send request line per file; each is
 * submitted with its owner's credentials, as if that user had connected.
 */
#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/control/control.h"
#include "agent/core/otpmaild.h"
#include "agent/mail/maildrop.h"

#define MAILDROP_MAX_GROUPS	64
#define MAILDROP_TMP_MAX_AGE	86400	/* a dot file older than this was abandoned */

static int	maildrop_one(struct otpmaild *, struct ctl_acl *, int dfd, const char *name);

static char *
maildrop_path(const struct config *c)
{
	char *p;

	if (asprintf(&p, "%s/maildrop", c->state_dir) == -1)
		return NULL;
	return p;
}

int
maildrop_init(const struct config *c, char *err, size_t errlen)
{
	char *p = maildrop_path(c);
	struct passwd *pw;
	struct stat st;
	int rc = -1;

	if (p == NULL) {
		snprintf(err, errlen, "maildrop: out of memory");
		return -1;
	}
	if (mkdir(p, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "maildrop: mkdir %s: %s", p, strerror(errno));
		goto out;
	}
	if (lstat(p, &st) == -1 || !S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "maildrop: %s is not a directory", p);
		goto out;
	}
	if (geteuid() == 0 && c->user[0] != '\0' && (pw = getpwnam(c->user)) != NULL &&
	    chown(p, pw->pw_uid, pw->pw_gid) == -1) {
		snprintf(err, errlen, "maildrop: chown %s: %s", p, strerror(errno));
		goto out;
	}
	/* set-group-id: every file dropped here is readable by the daemon's group */
	if (chmod(p, 03730) == -1) {
		snprintf(err, errlen, "maildrop: chmod %s: %s", p, strerror(errno));
		goto out;
	}
	rc = 0;
out:
	free(p);
	return rc;
}

static void
maildrop_peer(struct ctl_acl *acl, const struct stat *st, struct ctl_peer *peer)
{
	gid_t groups[MAILDROP_MAX_GROUPS];
	int ng = MAILDROP_MAX_GROUPS;
	struct passwd *pw = getpwuid(st->st_uid);

	memset(peer, 0, sizeof(*peer));
	peer->uid = st->st_uid;
	peer->gid = pw ? pw->pw_gid : st->st_gid;
	if (pw == NULL || getgrouplist(pw->pw_name, pw->pw_gid, groups, &ng) == -1) {
		groups[0] = peer->gid;
		ng = 1;
	}
	peer->roles = ctl_acl_roles(acl, peer->uid, groups, (size_t)ng);
}

/* 1 submitted or set aside, 0 to retry later (the daemon is short of space). */
static int
maildrop_one(struct otpmaild *d, struct ctl_acl *acl, int dfd, const char *name)
{
	struct ctl_peer peer;
	struct stat st;
	char *buf = NULL, aside[512];
	const char *er;
	size_t off = 0;
	json_t *req = NULL, *r = NULL;
	int fd, done = 1;

	fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd == -1 || fstat(fd, &st) == -1)
		goto refuse;
	/* a planted link or a huge file is nobody's submission */
	if (!S_ISREG(st.st_mode) || st.st_nlink != 1 ||
	    (size_t)st.st_size > d->cfg->control_max_line + 1) {
		log_msg(LOG_WARNING, "event=maildrop_refused file=%s uid=%u reason=\"not a "
		    "regular file of at most control_max_line bytes\"", name,
		    (unsigned)st.st_uid);
		goto refuse;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		done = 0;
		goto out;
	}
	while (off < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + off, (size_t)st.st_size - off);
		if (n <= 0)
			break;
		off += (size_t)n;
	}
	while (off > 0 && buf[off - 1] == '\n')
		off--;
	/* only submissions: a root-owned file must not become a queue.delete */
	req = json_loadb(buf, off, 0, NULL);
	if (req == NULL || !json_is_object(req) ||
	    !json_is_string(json_object_get(req, "op")) ||
	    strcmp(json_string_value(json_object_get(req, "op")), "mail.send") != 0) {
		log_msg(LOG_WARNING, "event=maildrop_refused file=%s uid=%u reason=\"not a "
		    "mail.send request\"", name, (unsigned)st.st_uid);
		goto refuse;
	}
	maildrop_peer(acl, &st, &peer);
	r = ctl_dispatch(d, &peer, buf, off);
	if (json_is_true(json_object_get(r, "ok"))) {
		log_msg(LOG_INFO, "event=maildrop_submitted file=%s uid=%u id=%s", name,
		    (unsigned)st.st_uid, json_string_value(json_object_get(r, "id")) ?: "?");
		unlinkat(dfd, name, 0);
		goto out;
	}
	er = json_string_value(json_object_get(r, "error"));
	if (er != NULL && strcmp(er, "unavailable") == 0) {
		log_msg(LOG_WARNING, "event=maildrop_deferred file=%s detail=\"%s\"", name,
		    json_string_value(json_object_get(r, "detail")) ?: "");
		done = 0;
		goto out;
	}
	log_msg(LOG_ERR, "event=maildrop_refused file=%s uid=%u error=%s detail=\"%s\" "
	    "note=\"kept as .refused-%s\"", name, (unsigned)st.st_uid, er ? er : "?",
	    json_string_value(json_object_get(r, "detail")) ?: "", name);
refuse:
	/* kept for the admin under a dot name, which no scan reads again */
	snprintf(aside, sizeof(aside), ".refused-%s", name);
	if (renameat(dfd, name, dfd, aside) == -1)
		unlinkat(dfd, name, 0);
out:
	if (fd != -1)
		close(fd);
	json_decref(req);
	json_decref(r);
	free(buf);
	return done;
}

void
maildrop_scan(struct otpmaild *d)
{
	struct ctl_acl *acl = NULL;
	struct dirent *de;
	struct stat st;
	char *p = maildrop_path(d->cfg);
	DIR *dir;
	int dfd;

	if (p == NULL || (dir = opendir(p)) == NULL) {
		free(p);
		return;
	}
	dfd = dirfd(dir);
	while ((de = readdir(dir)) != NULL && !d->stopping) {
		if (de->d_name[0] == '.') {
			/* a sendmail that died between create and rename */
			if (strncmp(de->d_name, ".refused-", 9) != 0 && de->d_name[1] != '\0' &&
			    de->d_name[1] != '.' &&
			    fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    st.st_mtime + MAILDROP_TMP_MAX_AGE < time(NULL))
				unlinkat(dfd, de->d_name, 0);
			continue;
		}
		if (acl == NULL)
			acl = ctl_acl_new(d->cfg, geteuid());
		if (!maildrop_one(d, acl, dfd, de->d_name))
			break;
	}
	closedir(dir);
	ctl_acl_free(acl);
	free(p);
}
