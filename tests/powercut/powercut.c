/*
 * powercut.c - an LD_PRELOAD layer that records what a power cut would
 * leave on disk under one directory tree (tests/integration/test_powercut.py
 * explains the model and how it is checked).
 *
 *   POWERCUT_ROOT=<dir>    the tree to model (otpmaild's state directory)
 *   POWERCUT_SHADOW=<dir>  where the durable image is kept (outside ROOT)
 *   POWERCUT_DROP=<class>  one sync class made a no-op: spool-file,
 *                          spool-dir, state, bdb-log, bdb-data, bdb-dir
 *                          (or none)
 *
 * At load, the whole tree is taken as durable (the test synced it): every
 * file's content goes to SHADOW/ino/<identity> and every directory's
 * entries to SHADOW/dir/<path>.  Afterwards only a sync adds to the image:
 * fsync/fdatasync of a regular file copies its whole content to its
 * identity; fsync of a directory records its entries (name, kind, mode,
 * identity of each file).  The copy is taken before the real sync is
 * called, so only what was written before the sync counts.  An identity
 * is inode number + birth time (statx), so a reused inode number is a new
 * file.  Every image file is written to a temporary name and renamed, so
 * killing the process leaves the image as of its last whole sync.
 * Calls the model cannot express (sync, syncfs, sync_file_range, msync)
 * are appended to SHADOW/unmodelled; the test fails on any.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

enum pc_class {
	PC_OTHER, PC_SPOOL_FILE, PC_SPOOL_DIR, PC_STATE, PC_BDB_LOG, PC_BDB_DATA, PC_BDB_DIR
};

static const char *pc_class_names[] = {
	"other", "spool-file", "spool-dir", "state", "bdb-log", "bdb-data", "bdb-dir"
};

static int	(*real_fsync)(int);
static int	(*real_fdatasync)(int);
static char	 pc_root[PATH_MAX];
static char	 pc_shadow[PATH_MAX];
static int	 pc_drop = -1;
static unsigned long pc_seq;
static pthread_mutex_t pc_lock = PTHREAD_MUTEX_INITIALIZER;

static void	pc_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* SHADOW/unmodelled: one line per call the model does not cover. */
static void
pc_note(const char *fmt, ...)
{
	char path[PATH_MAX + 32], line[512];
	va_list ap;
	int fd, n;

	if (pc_shadow[0] == '\0')
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	snprintf(path, sizeof(path), "%s/unmodelled", pc_shadow);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) == -1)
		return;
	if (write(fd, line, (size_t)n) != n)
		(void)0;
	close(fd);
}

static void
pc_identity(const struct statx *sx, char *out, size_t len)
{
	snprintf(out, len, "%llu-%lld.%u", (unsigned long long)sx->stx_ino,
	    (long long)sx->stx_btime.tv_sec, sx->stx_btime.tv_nsec);
}

static int
pc_statx(int dirfd, const char *name, int flags, struct statx *sx)
{
	return statx(dirfd, name, flags | AT_SYMLINK_NOFOLLOW,
	    STATX_TYPE | STATX_MODE | STATX_INO | STATX_BTIME | STATX_SIZE, sx);
}

/* Writes SHADOW/<sub>/<name> from fd (or from buf when fd < 0), atomically. */
static int
pc_put(const char *sub, const char *name, int fd, const char *buf, size_t blen)
{
	char tmp[PATH_MAX * 2], dst[PATH_MAX * 2], chunk[65536];
	ssize_t r;
	off_t off = 0;
	int out;

	snprintf(dst, sizeof(dst), "%s/%s/%s", pc_shadow, sub, name);
	snprintf(tmp, sizeof(tmp), "%s/tmp.%ld.%lu", pc_shadow, (long)getpid(), pc_seq++);
	if ((out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == -1)
		return -1;
	if (fd < 0) {
		if (write(out, buf, blen) != (ssize_t)blen)
			goto fail;
	} else {
		while ((r = pread(fd, chunk, sizeof(chunk), off)) > 0) {
			if (write(out, chunk, (size_t)r) != r)
				goto fail;
			off += r;
		}
		if (r < 0)
			goto fail;
	}
	close(out);
	return rename(tmp, dst);
fail:
	close(out);
	unlink(tmp);
	return -1;
}

/* "a/b/c" -> "a%2Fb%2Fc" ("" -> "%root"): one flat name per directory. */
static void
pc_dirname_of(const char *rel, char *out, size_t len)
{
	size_t o = 0;

	if (*rel == '\0') {
		snprintf(out, len, "%%root");
		return;
	}
	for (; *rel != '\0' && o + 4 < len; rel++) {
		if (*rel == '/') {
			memcpy(out + o, "%2F", 3);
			o += 3;
		} else
			out[o++] = *rel;
	}
	out[o] = '\0';
}

/* Records the content of the regular file open as fd. */
static void
pc_snap_file(int fd)
{
	char proc[64], ident[96];
	struct statx sx;
	int rfd;

	if (pc_statx(fd, "", AT_EMPTY_PATH, &sx) == -1 || !S_ISREG(sx.stx_mode))
		return;
	pc_identity(&sx, ident, sizeof(ident));
	/* fd may be write-only (O_TMPFILE): read through /proc */
	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if ((rfd = open(proc, O_RDONLY | O_CLOEXEC)) == -1) {
		pc_note("cannot reopen fd %d: %s", fd, strerror(errno));
		return;
	}
	if (pc_put("ino", ident, rfd, NULL, 0) == -1)
		pc_note("cannot copy %s: %s", ident, strerror(errno));
	close(rfd);
}

/* Records the entries of the directory rel (relative to ROOT). */
static void
pc_snap_dir(const char *rel)
{
	char path[PATH_MAX * 2], name[PATH_MAX], ident[96], *buf = NULL, *nb;
	size_t len = 0, cap = 0;
	struct dirent *de;
	struct statx sx;
	DIR *dp;
	int n;

	snprintf(path, sizeof(path), "%s%s%s", pc_root, *rel ? "/" : "", rel);
	if ((dp = opendir(path)) == NULL)
		return;
	while ((de = readdir(dp)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (pc_statx(dirfd(dp), de->d_name, 0, &sx) == -1)
			continue;
		pc_identity(&sx, ident, sizeof(ident));
		if (len + strlen(de->d_name) + 128 > cap) {
			cap = cap ? cap * 2 : 4096;
			while (cap < len + strlen(de->d_name) + 128)
				cap *= 2;
			if ((nb = realloc(buf, cap)) == NULL)
				break;
			buf = nb;
		}
		n = snprintf(buf + len, cap - len, "%c\t%o\t%s\t%s\n",
		    S_ISDIR(sx.stx_mode) ? 'd' : S_ISREG(sx.stx_mode) ? 'f' : 'o',
		    (unsigned)(sx.stx_mode & 07777), ident, de->d_name);
		len += (size_t)n;
	}
	closedir(dp);
	pc_dirname_of(rel, name, sizeof(name));
	if (pc_put("dir", name, -1, buf ? buf : "", len) == -1)
		pc_note("cannot record directory %s: %s", rel, strerror(errno));
	free(buf);
}

/* Path of fd relative to ROOT into rel; -1 when outside ROOT. */
static int
pc_rel_of(int fd, char *rel, size_t len)
{
	char proc[64], target[PATH_MAX];
	size_t rl = strlen(pc_root);
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if ((n = readlink(proc, target, sizeof(target) - 1)) == -1)
		return -1;
	target[n] = '\0';
	if (strncmp(target, pc_root, rl) != 0 || (target[rl] != '\0' && target[rl] != '/'))
		return -1;
	snprintf(rel, len, "%s", target[rl] == '/' ? target + rl + 1 : "");
	return 0;
}

static enum pc_class
pc_classify(const char *rel, int isdir, int datasync)
{
	const char *base = strrchr(rel, '/');

	base = base ? base + 1 : rel;
	if (strcmp(rel, "spool") == 0 || strncmp(rel, "spool/", 6) == 0) {
		if (isdir)
			return PC_SPOOL_DIR;
		return datasync ? PC_STATE : PC_SPOOL_FILE;
	}
	if (strcmp(rel, "db") == 0 && isdir)
		return PC_BDB_DIR;
	if (strncmp(rel, "db/", 3) == 0 && !isdir)
		return strncmp(base, "log.", 4) == 0 ? PC_BDB_LOG : PC_BDB_DATA;
	return PC_OTHER;
}

/* The common part of fsync and fdatasync: 1 = skip the real call. */
static int
pc_sync(int fd, int datasync)
{
	char rel[PATH_MAX];
	struct stat st;
	enum pc_class c;

	if (pc_root[0] == '\0' || fstat(fd, &st) == -1 || pc_rel_of(fd, rel, sizeof(rel)) == -1)
		return 0;
	c = pc_classify(rel, S_ISDIR(st.st_mode), datasync);
	if ((int)c == pc_drop)
		return 1;
	pthread_mutex_lock(&pc_lock);
	if (S_ISDIR(st.st_mode))
		pc_snap_dir(rel);
	else if (S_ISREG(st.st_mode))
		pc_snap_file(fd);
	pthread_mutex_unlock(&pc_lock);
	return 0;
}

int
fsync(int fd)
{
	if (pc_sync(fd, 0))
		return 0;
	return real_fsync(fd);
}

int
fdatasync(int fd)
{
	if (pc_sync(fd, 1))
		return 0;
	return real_fdatasync(fd);
}

void
sync(void)
{
	pc_note("sync()");
	syscall(SYS_sync);
}

int
syncfs(int fd)
{
	pc_note("syncfs(%d)", fd);
	return (int)syscall(SYS_syncfs, fd);
}

int
sync_file_range(int fd, off64_t off, off64_t n, unsigned int flags)
{
	pc_note("sync_file_range(%d)", fd);
	return (int)syscall(SYS_sync_file_range, fd, off, n, flags);
}

int
msync(void *addr, size_t len, int flags)
{
	pc_note("msync(%p, %zu)", addr, len);
	return (int)syscall(SYS_msync, addr, len, flags);
}

/* The initial image: everything under ROOT, walked depth first. */
static void
pc_baseline(const char *rel)
{
	char path[PATH_MAX * 2], sub[PATH_MAX * 2];
	struct dirent *de;
	DIR *dp;
	int fd;

	pc_snap_dir(rel);
	snprintf(path, sizeof(path), "%s%s%s", pc_root, *rel ? "/" : "", rel);
	if ((dp = opendir(path)) == NULL)
		return;
	while ((de = readdir(dp)) != NULL) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(sub, sizeof(sub), "%s%s%s", rel, *rel ? "/" : "", de->d_name);
		if (de->d_type == DT_DIR)
			pc_baseline(sub);
		else if (de->d_type == DT_REG &&
		    (fd = openat(dirfd(dp), de->d_name, O_RDONLY | O_CLOEXEC)) != -1) {
			pc_snap_file(fd);
			close(fd);
		}
	}
	closedir(dp);
}

__attribute__((constructor)) static void
pc_init(void)
{
	char path[PATH_MAX + 32];
	const char *root = getenv("POWERCUT_ROOT"), *shadow = getenv("POWERCUT_SHADOW");
	const char *drop = getenv("POWERCUT_DROP");
	size_t i;
	int fd;

	real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	if (root == NULL || shadow == NULL || realpath(root, pc_root) == NULL ||
	    realpath(shadow, pc_shadow) == NULL) {
		pc_root[0] = '\0';
		return;
	}
	for (i = 0; drop != NULL && i < sizeof(pc_class_names) / sizeof(*pc_class_names); i++)
		if (strcmp(drop, pc_class_names[i]) == 0)
			pc_drop = (int)i;
	snprintf(path, sizeof(path), "%s/baseline.done", pc_shadow);
	if (access(path, F_OK) == 0)
		return;		/* a child exec'd with the same environment */
	snprintf(path, sizeof(path), "%s/ino", pc_shadow);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/dir", pc_shadow);
	mkdir(path, 0700);
	pc_baseline("");
	snprintf(path, sizeof(path), "%s/baseline.done", pc_shadow);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) != -1)
		close(fd);
}
