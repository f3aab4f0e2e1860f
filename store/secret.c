/*
 * secret.c - the server secret (32 random bytes, mode 0600, created on the
 * first start; refused if group or others may read it) and the one keyed
 * MAC every key, code and pseudonym of the store is derived with.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "store/store_int.h"

static int	secret_create(const char *path, uint8_t out[STORE_SECRET_LEN],
		    char *err, size_t errlen);
static int	secret_fsync_dir(const char *path);

static int
secret_fsync_dir(const char *path)
{
	char tmp[4096];
	int fd, r;

	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
		return -1;
	if ((fd = open(dirname(tmp), O_RDONLY | O_DIRECTORY)) == -1)
		return -1;
	r = fsync(fd);
	close(fd);
	return r;
}

static int
secret_create(const char *path, uint8_t out[STORE_SECRET_LEN], char *err, size_t errlen)
{
	int fd;

	if (RAND_bytes(out, STORE_SECRET_LEN) != 1) {
		snprintf(err, errlen, "store: RAND_bytes failed");
		return -1;
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd == -1) {
		snprintf(err, errlen, "store: create %s: %s", path, strerror(errno));
		return -1;
	}
	if (write(fd, out, STORE_SECRET_LEN) != STORE_SECRET_LEN || fsync(fd) == -1) {
		snprintf(err, errlen, "store: write %s: %s", path, strerror(errno));
		close(fd);
		unlink(path);
		return -1;
	}
	close(fd);
	if (secret_fsync_dir(path) == -1) {
		snprintf(err, errlen, "store: fsync dir of %s: %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int
store_secret_load(const char *path, int create, uint8_t out[STORE_SECRET_LEN],
    char *err, size_t errlen)
{
	struct stat st;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1 && errno == ENOENT && create)
		return secret_create(path, out, err, errlen);
	if (fd == -1) {
		snprintf(err, errlen, "store: open %s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "store: %s: not a regular file", path);
		goto fail;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		snprintf(err, errlen, "store: %s: mode %03o lets group/others access "
		    "the secret (chmod 600 it)", path, (unsigned)(st.st_mode & 0777));
		goto fail;
	}
	if (st.st_size != STORE_SECRET_LEN) {
		snprintf(err, errlen, "store: %s: must hold exactly %d bytes", path,
		    STORE_SECRET_LEN);
		goto fail;
	}
	n = read(fd, out, STORE_SECRET_LEN);
	if (n != STORE_SECRET_LEN) {
		snprintf(err, errlen, "store: read %s: %s", path,
		    n < 0 ? strerror(errno) : "short read");
		goto fail;
	}
	close(fd);
	return 0;
fail:
	close(fd);
	return -1;
}

/* HMAC-SHA256(key, a | b). */
void
store_mac(const uint8_t key[STORE_SECRET_LEN], const void *a, size_t alen,
    const void *b, size_t blen, uint8_t out[STORE_MAC_LEN])
{
	uint8_t buf[STORE_ADDR_MAX + STORE_CONTEXT_MAX + 128];
	unsigned int len = STORE_MAC_LEN;

	if (alen + blen > sizeof(buf)) {
		/* Callers bound their inputs; never MAC a truncation. */
		memset(out, 0, STORE_MAC_LEN);
		return;
	}
	memcpy(buf, a, alen);
	if (blen)
		memcpy(buf + alen, b, blen);
	HMAC(EVP_sha256(), key, STORE_SECRET_LEN, buf, alen + blen, out, &len);
}
