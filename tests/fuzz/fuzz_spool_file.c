/*
 * fuzz_spool_file.c - libFuzzer target for spool files read back from disk
 * (spool_load, spool_read_body: header line, lengths, CRC-32s, envelope,
 * end marker, the state records appended to it).  The input but its first
 * byte (ignored, kept for old seeds) becomes msg/XX/<id> in a private
 * spool.  Oracles: a bad file is refused with a reason or quarantined,
 * never crashes; what loads has the file's id and a body of exactly
 * env->size bytes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "queue/queue_int.h"

#define FZ_ID	"0000000000000001deadbeef"

static struct spool fz_sp;

int	LLVMFuzzerInitialize(int *argc, char ***argv);
int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void	fz_write(const char *rel, const void *, size_t);
static void	fz_clean(void);
static void	fz_rmdir(void);

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char tmpl[] = "/dev/shm/fuzz-spool-XXXXXX", tmpl2[] = "/tmp/fuzz-spool-XXXXXX";
	char err[256], *dir;

	if ((dir = mkdtemp(tmpl)) == NULL && (dir = mkdtemp(tmpl2)) == NULL)
		abort();
	if (spool_init(&fz_sp, dir, 0, 0, 0, NULL, err, sizeof(err)) == -1) {
		fprintf(stderr, "spool_init: %s\n", err);
		abort();
	}
	atexit(fz_rmdir);	/* each fuzz run left its spool in /dev/shm */
	return 0;
}

static int
fz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

/* The private spool goes when the run ends (libFuzzer exits normally). */
static void
fz_rmdir(void)
{
	nftw(fz_sp.dir, fz_rm, 16, FTW_DEPTH | FTW_PHYS);
}

static void
fz_write(const char *rel, const void *data, size_t len)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", fz_sp.dir, rel);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == -1)
		abort();
	if (len > 0 && write(fd, data, len) != (ssize_t)len)
		abort();
	close(fd);
}

static void
fz_clean(void)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *dp;

	spool_remove(&fz_sp, FZ_ID, 0);
	snprintf(path, sizeof(path), "%s/corrupt", fz_sp.dir);
	if ((dp = opendir(path)) == NULL)
		abort();
	while ((de = readdir(dp)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/corrupt/%s", fz_sp.dir, de->d_name);
		unlink(path);
	}
	closedir(dp);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *d = (const char *)data;
	char rel[128], why[256], *body = NULL;
	struct q_envelope *env = NULL;
	size_t mlen, blen = 0;
	enum q_status st;

	if (size < 1)
		return 0;
	mlen = size - 1;
	spool_path(FZ_ID, rel, sizeof(rel));
	fz_write(rel, d + 1, mlen);
	why[0] = '\0';
	if (spool_load(&fz_sp, FZ_ID, &env, why, sizeof(why)) == 0) {
		if (env == NULL || strcmp(env->id, FZ_ID) != 0 || env->nrcpt > Q_MAX_RCPT)
			abort();
		st = spool_read_body(&fz_sp, FZ_ID, &body, &blen);
		if (st == Q_OK && (body == NULL || blen != env->size))
			abort();
		if (st != Q_OK && st != Q_NOTFOUND && st != Q_TEMPFAIL)
			abort();
		free(body);
		q_envelope_free(env);
	} else if (why[0] == '\0' || env != NULL)
		abort();
	fz_clean();
	return 0;
}
