/*
 * iofault.c - an LD_PRELOAD layer that makes chosen I/O calls on files
 * under one directory tree fail with EIO, as a failing disk would
 * (tests/integration/test_io_faults.py).
 *
 *   IOFAULT_ROOT=<dir>   only files under this tree are touched
 *   IOFAULT_CTL=<file>   the rules, re-read whenever the file changes
 *                        (missing or empty: no fault, the disk is back)
 *   IOFAULT_LOG=<file>   one line per fault injected: "op path"
 *   IOFAULT_DUMP=<dir>   at the first fault of each rule (since the rules
 *                        changed) on a regular file, its content (plus the
 *                        data a failed write carried) goes to DUMP/<n>, n
 *                        the fault's number in the log; on a directory,
 *                        the content of the newest file in it
 *   IOFAULT_TRACE=<file> one line per call the rules could match ("op path")
 *   IOFAULT_NO_TMPFILE=1 open(O_TMPFILE) under ROOT fails with EOPNOTSUPP,
 *                        as on a file system without it (the spool then
 *                        writes tmp/<name> and renames it)
 *
 * A rule is one line "op glob after count": op is fsync, fdatasync, write
 * (write, pwrite, pwritev, writev and their 64-bit names), rename (rename,
 * renameat, renameat2; the path is the new name) or link (linkat, link;
 * the new name); glob (fnmatch, FNM_PATHNAME off) matches the path relative
 * to ROOT (an O_TMPFILE file is "dir/#inode (deleted)", so the glob
 * "spool/msg/??/#*" is a new message and "spool/msg/??/[!#]*" a named one); calls number
 * after+1 .. after+count that match fail (count 0: every one after
 * `after`).  Counters restart when the file changes.  Directory fsyncs
 * match the directory's own path.  A fifth field "slow=MS" makes the
 * chosen calls wait MS milliseconds and then succeed, as a stalled disk
 * would, instead of failing (logged with "slow" at the end).
 */

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define IOF_MAX_RULES	16

enum iof_op { IOF_FSYNC, IOF_FDATASYNC, IOF_WRITE, IOF_RENAME, IOF_LINK, IOF_NOPS };

static const char *iof_op_names[IOF_NOPS] = {
	"fsync", "fdatasync", "write", "rename", "link"
};

struct iof_rule {
	enum iof_op	op;
	char		glob[PATH_MAX];
	unsigned long	after, count, seen;
	unsigned long	slow_ms;	/* 0: the call fails; else it waits */
	int		dumped;		/* one dump per rule and change */
};

static char		iof_root[PATH_MAX];
static size_t		iof_rootlen;
static const char	*iof_ctl, *iof_log, *iof_dump, *iof_trace;
static struct iof_rule	iof_rules[IOF_MAX_RULES];
static int		iof_nrules;
static struct timespec	iof_ctl_mtime;
static ino_t		iof_ctl_ino;
static off_t		iof_ctl_size = -1;
static unsigned long	iof_seq;
static pthread_mutex_t	iof_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int	iof_busy;	/* the shim's own I/O is never matched */
static int		iof_no_tmpfile;

static int	(*real_fsync)(int);
static int	(*real_fdatasync)(int);
static ssize_t	(*real_write)(int, const void *, size_t);
static ssize_t	(*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t	(*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t	(*real_writev)(int, const struct iovec *, int);
static ssize_t	(*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t	(*real_pwritev64)(int, const struct iovec *, int, off64_t);
static ssize_t	(*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static int	(*real_rename)(const char *, const char *);
static int	(*real_renameat)(int, const char *, int, const char *);
static int	(*real_renameat2)(int, const char *, int, const char *, unsigned int);
static int	(*real_link)(const char *, const char *);
static int	(*real_linkat)(int, const char *, int, const char *, int);
static int	(*real_open)(const char *, int, ...);
static int	(*real_open64)(const char *, int, ...);

#define IOF_SYM(v, name) do {						\
	if ((v) == NULL)						\
		*(void **)&(v) = dlsym(RTLD_NEXT, name);		\
} while (0)

static void
iof_syms(void)
{
	IOF_SYM(real_fsync, "fsync");
	IOF_SYM(real_fdatasync, "fdatasync");
	IOF_SYM(real_write, "write");
	IOF_SYM(real_pwrite, "pwrite");
	IOF_SYM(real_pwrite64, "pwrite64");
	IOF_SYM(real_writev, "writev");
	IOF_SYM(real_pwritev, "pwritev");
	IOF_SYM(real_pwritev64, "pwritev64");
	IOF_SYM(real_pwritev2, "pwritev2");
	IOF_SYM(real_rename, "rename");
	IOF_SYM(real_renameat, "renameat");
	IOF_SYM(real_renameat2, "renameat2");
	IOF_SYM(real_link, "link");
	IOF_SYM(real_linkat, "linkat");
	IOF_SYM(real_open, "open");
	IOF_SYM(real_open64, "open64");
}

static void
iof_append(const char *file, const char *line)
{
	int fd;

	if (file == NULL)
		return;
	if ((fd = open(file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600)) == -1)
		return;
	if (syscall(SYS_write, fd, line, strlen(line)) == -1)
		(void)0;
	close(fd);
}

/* Re-reads the rules when the control file changed (lock held). */
static void
iof_reload(void)
{
	char buf[8192], op[32], glob[PATH_MAX], *line, *rest, *save = NULL;
	int nf, used;
	struct stat st;
	ssize_t n;
	int fd, i;

	if (stat(iof_ctl, &st) == -1) {
		iof_nrules = 0;
		iof_ctl_size = -1;
		return;
	}
	if (st.st_ino == iof_ctl_ino && st.st_size == iof_ctl_size &&
	    st.st_mtim.tv_sec == iof_ctl_mtime.tv_sec &&
	    st.st_mtim.tv_nsec == iof_ctl_mtime.tv_nsec)
		return;
	iof_ctl_ino = st.st_ino;
	iof_ctl_size = st.st_size;
	iof_ctl_mtime = st.st_mtim;
	iof_nrules = 0;
	if ((fd = open(iof_ctl, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\n", &save); line != NULL && iof_nrules < IOF_MAX_RULES;
	    line = strtok_r(NULL, "\n", &save)) {
		struct iof_rule *r = &iof_rules[iof_nrules];

		/* four fields, or five with slow=MS (anything else: no rule, not
		 * a failing one by mistake) */
		r->slow_ms = 0;
		used = 0;
		if (line[0] == '#' || sscanf(line, "%31s %4095s %lu %lu%n", op, glob,
		    &r->after, &r->count, &used) != 4)
			continue;
		rest = line + used + strspn(line + used, " \t");
		if (*rest != '\0' && (sscanf(rest, "slow=%lu%n", &r->slow_ms, &nf) != 1 ||
		    rest[nf] != '\0' || r->slow_ms == 0))
			continue;
		for (i = 0; i < IOF_NOPS; i++)
			if (strcmp(op, iof_op_names[i]) == 0)
				break;
		if (i == IOF_NOPS)
			continue;
		r->op = (enum iof_op)i;
		snprintf(r->glob, sizeof(r->glob), "%s", glob);
		r->seen = 0;
		r->dumped = 0;
		iof_nrules++;
	}
}

/* rel of an absolute path under ROOT, or NULL. */
static const char *
iof_rel(const char *abs)
{
	if (iof_rootlen == 0 || strncmp(abs, iof_root, iof_rootlen) != 0)
		return NULL;
	if (abs[iof_rootlen] == '/')
		return abs + iof_rootlen + 1;
	return abs[iof_rootlen] == '\0' ? "" : NULL;
}

static int
iof_fd_path(int fd, char *out, size_t len)
{
	char proc[64];
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if ((n = readlink(proc, out, len - 1)) == -1)
		return -1;
	out[n] = '\0';
	return 0;
}

/* An absolute form of path (relative to dirfd); the directory part only
 * is resolved, the name may not exist yet. */
static int
iof_at_path(int dirfd, const char *path, char *out, size_t len)
{
	char base[PATH_MAX];

	if (path[0] == '/') {
		snprintf(out, len, "%s", path);
		return 0;
	}
	if (dirfd == AT_FDCWD) {
		if (getcwd(base, sizeof(base)) == NULL)
			return -1;
	} else if (iof_fd_path(dirfd, base, sizeof(base)) == -1)
		return -1;
	snprintf(out, len, "%s/%s", base, path);
	return 0;
}

static void
iof_copy_fd(int out, int fd)
{
	char proc[64], chunk[65536];
	ssize_t r;
	off_t off = 0;
	int in;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	if ((in = open(proc, O_RDONLY | O_CLOEXEC)) == -1)
		return;
	while ((r = pread(in, chunk, sizeof(chunk), off)) > 0) {
		if (syscall(SYS_write, out, chunk, (size_t)r) != r)
			break;
		off += r;
	}
	close(in);
}

/* The newest regular file of the directory open as fd, opened. */
static int
iof_newest_in(int fd)
{
	char path[PATH_MAX], best[NAME_MAX + 1] = "";
	struct timespec bt = { 0, 0 };
	struct dirent *de;
	struct stat st;
	DIR *dp;

	if (iof_fd_path(fd, path, sizeof(path)) == -1 || (dp = opendir(path)) == NULL)
		return -1;
	while ((de = readdir(dp)) != NULL) {
		if (fstatat(dirfd(dp), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (st.st_mtim.tv_sec > bt.tv_sec || (st.st_mtim.tv_sec == bt.tv_sec &&
		    st.st_mtim.tv_nsec > bt.tv_nsec)) {
			bt = st.st_mtim;
			snprintf(best, sizeof(best), "%s", de->d_name);
		}
	}
	fd = best[0] ? openat(dirfd(dp), best, O_RDONLY | O_CLOEXEC) : -1;
	closedir(dp);
	return fd;
}

/* DUMP/<seq>: what the file open as fd holds (and the data of a failed write). */
static void
iof_dump_fd(int fd, const struct iovec *iov, int iovcnt)
{
	char path[PATH_MAX + 32];
	struct stat st;
	int out, i, nf = -1;

	if (iof_dump == NULL || fd < 0 || fstat(fd, &st) == -1)
		return;
	if (S_ISDIR(st.st_mode)) {
		if ((nf = iof_newest_in(fd)) == -1)
			return;
		fd = nf;
	}
	snprintf(path, sizeof(path), "%s/%lu", iof_dump, iof_seq);
	if ((out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) != -1) {
		iof_copy_fd(out, fd);
		for (i = 0; i < iovcnt; i++)
			if (syscall(SYS_write, out, iov[i].iov_base, iov[i].iov_len) == -1)
				break;
		close(out);
	}
	if (nf != -1)
		close(nf);
}

/*
 * Whether this call fails: 1 with errno = EIO (and the fault logged and
 * dumped), else 0.  abs is the path, or NULL to take fd's.
 */
static int
iof_check(enum iof_op op, int fd, const char *abs, const struct iovec *iov, int iovcnt)
{
	char path[PATH_MAX], line[PATH_MAX + 64];
	const char *rel;
	struct stat st;
	unsigned long slow = 0;
	int i, fail = 0, dump = 0;

	if (iof_rootlen == 0 || iof_busy)
		return 0;
	if (abs == NULL) {
		/* sockets, pipes and the log: not ours (one fstat to know) */
		if (fstat(fd, &st) == -1 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
			return 0;
		if (iof_fd_path(fd, path, sizeof(path)) == -1)
			return 0;
		abs = path;
	}
	if ((rel = iof_rel(abs)) == NULL)
		return 0;
	iof_busy = 1;
	pthread_mutex_lock(&iof_lock);
	if (iof_trace != NULL) {
		snprintf(line, sizeof(line), "%s %s\n", iof_op_names[op], rel);
		iof_append(iof_trace, line);
	}
	if (iof_ctl != NULL)
		iof_reload();
	for (i = 0; i < iof_nrules; i++) {
		struct iof_rule *r = &iof_rules[i];

		if (r->op != op || fnmatch(r->glob, rel, 0) != 0)
			continue;
		r->seen++;
		if (r->seen > r->after && (r->count == 0 || r->seen <= r->after + r->count)) {
			if (r->slow_ms > 0) {
				slow = r->slow_ms;
				break;
			}
			fail = 1;
			dump = !r->dumped;
			r->dumped = 1;
			break;
		}
	}
	if (fail) {
		iof_seq++;
		snprintf(line, sizeof(line), "%s %s %lu\n", iof_op_names[op], rel, iof_seq);
		iof_append(iof_log, line);
		if (dump)
			iof_dump_fd(fd, iov, iovcnt);
	} else if (slow > 0) {
		iof_seq++;
		snprintf(line, sizeof(line), "%s %s %lu slow\n", iof_op_names[op], rel, iof_seq);
		iof_append(iof_log, line);
	}
	pthread_mutex_unlock(&iof_lock);
	iof_busy = 0;
	if (slow > 0)
		usleep((useconds_t)(slow * 1000));
	if (fail)
		errno = EIO;
	return fail;
}

int
fsync(int fd)
{
	iof_syms();
	return iof_check(IOF_FSYNC, fd, NULL, NULL, 0) ? -1 : real_fsync(fd);
}

int
fdatasync(int fd)
{
	iof_syms();
	return iof_check(IOF_FDATASYNC, fd, NULL, NULL, 0) ? -1 : real_fdatasync(fd);
}

ssize_t
write(int fd, const void *buf, size_t n)
{
	struct iovec v = { (void *)buf, n };

	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, &v, 1) ? -1 : real_write(fd, buf, n);
}

ssize_t
pwrite(int fd, const void *buf, size_t n, off_t off)
{
	struct iovec v = { (void *)buf, n };

	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, &v, 1) ? -1 : real_pwrite(fd, buf, n, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
	struct iovec v = { (void *)buf, n };

	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, &v, 1) ? -1 : real_pwrite64(fd, buf, n, off);
}

ssize_t
writev(int fd, const struct iovec *iov, int n)
{
	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, iov, n) ? -1 : real_writev(fd, iov, n);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int n, off_t off)
{
	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, iov, n) ? -1 : real_pwritev(fd, iov, n, off);
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int n, off64_t off)
{
	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, iov, n) ? -1 : real_pwritev64(fd, iov, n, off);
}

ssize_t
pwritev2(int fd, const struct iovec *iov, int n, off_t off, int flags)
{
	iof_syms();
	return iof_check(IOF_WRITE, fd, NULL, iov, n) ? -1 :
	    real_pwritev2(fd, iov, n, off, flags);
}

/* Whether a call naming `to` (relative to dirfd) fails; src: a descriptor
 * whose content the dump shows, or -1. */
static int
iof_path_fails(enum iof_op op, int dirfd, const char *to, int src)
{
	char abs[PATH_MAX * 2];

	iof_syms();
	return iof_at_path(dirfd, to, abs, sizeof(abs)) == 0 &&
	    iof_check(op, src, abs, NULL, 0);
}

int
rename(const char *from, const char *to)
{
	return iof_path_fails(IOF_RENAME, AT_FDCWD, to, -1) ? -1 : real_rename(from, to);
}

int
renameat(int fd1, const char *from, int fd2, const char *to)
{
	return iof_path_fails(IOF_RENAME, fd2, to, -1) ? -1 :
	    real_renameat(fd1, from, fd2, to);
}

int
renameat2(int fd1, const char *from, int fd2, const char *to, unsigned int flags)
{
	return iof_path_fails(IOF_RENAME, fd2, to, -1) ? -1 :
	    real_renameat2(fd1, from, fd2, to, flags);
}

int
link(const char *from, const char *to)
{
	return iof_path_fails(IOF_LINK, AT_FDCWD, to, -1) ? -1 : real_link(from, to);
}

int
linkat(int fd1, const char *from, int fd2, const char *to, int flags)
{
	/* linkat(AT_FDCWD, "/proc/self/fd/N", ...): the dump shows N's content */
	int src = strncmp(from, "/proc/self/fd/", 14) == 0 ? atoi(from + 14) : -1;

	return iof_path_fails(IOF_LINK, fd2, to, src) ? -1 :
	    real_linkat(fd1, from, fd2, to, flags);
}

/* 1 (errno set) when an O_TMPFILE open under ROOT is to fail. */
static int
iof_tmpfile_fails(const char *path, int flags)
{
	char abs[PATH_MAX * 2];

	if (!iof_no_tmpfile || (flags & O_TMPFILE) != O_TMPFILE ||
	    iof_at_path(AT_FDCWD, path, abs, sizeof(abs)) == -1 || iof_rel(abs) == NULL)
		return 0;
	errno = EOPNOTSUPP;
	return 1;
}

static int
iof_open(int (*real)(const char *, int, ...), const char *path, int flags, va_list ap)
{
	mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;

	return iof_tmpfile_fails(path, flags) ? -1 : real(path, flags, mode);
}

/* open and open64 (one function under two names on 64-bit glibc) */
#define IOF_OPEN(name, real)						\
int									\
name(const char *path, int flags, ...)					\
{									\
	va_list ap;							\
	int r;								\
									\
	iof_syms();							\
	va_start(ap, flags);						\
	r = iof_open(real, path, flags, ap);				\
	va_end(ap);							\
	return r;							\
}
IOF_OPEN(open, real_open)
IOF_OPEN(open64, real_open64)

__attribute__((constructor)) static void
iof_init(void)
{
	const char *root = getenv("IOFAULT_ROOT");

	iof_syms();
	iof_ctl = getenv("IOFAULT_CTL");
	iof_log = getenv("IOFAULT_LOG");
	iof_dump = getenv("IOFAULT_DUMP");
	iof_trace = getenv("IOFAULT_TRACE");
	iof_no_tmpfile = getenv("IOFAULT_NO_TMPFILE") != NULL;
	if (root == NULL || realpath(root, iof_root) == NULL) {
		iof_root[0] = '\0';
		return;
	}
	iof_rootlen = strlen(iof_root);
}
