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
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "store/store_int.h"

static int	secret_create(const char *path, uint8_t out[STORE_SECRET_LEN],
		    char *err, size_t errlen);
static int	secret_fsync_dir(const char *path);

static int
secret_fsync_dir(const char *path)
{
	char tmp[4096];

	if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
		return -1;
	return store_fsync_dir(dirname(tmp));
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

int
store_key_init(struct store_key *k, const uint8_t secret[STORE_SECRET_LEN])
{
	uint8_t pad[64];
	int i, ok;

	k->in = EVP_MD_CTX_new();
	k->out = EVP_MD_CTX_new();
	if (k->in == NULL || k->out == NULL)
		goto fail;
	for (i = 0; i < 64; i++)
		pad[i] = (i < STORE_SECRET_LEN ? secret[i] : 0) ^ 0x36;
	ok = EVP_DigestInit_ex(k->in, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(k->in, pad, sizeof(pad));
	for (i = 0; i < 64; i++)
		pad[i] = (i < STORE_SECRET_LEN ? secret[i] : 0) ^ 0x5c;
	ok = ok && EVP_DigestInit_ex(k->out, EVP_sha256(), NULL) &&
	    EVP_DigestUpdate(k->out, pad, sizeof(pad));
	OPENSSL_cleanse(pad, sizeof(pad));
	if (ok)
		return 0;
fail:
	store_key_free(k);
	return -1;
}

void
store_key_free(struct store_key *k)
{
	EVP_MD_CTX_free(k->in);
	EVP_MD_CTX_free(k->out);
	k->in = k->out = NULL;
}

/*
 * HMAC-SHA256(key, a | b) (RFC 2104), resuming from the pre-hashed key
 * blocks: a fifth of the cost of a one-shot HMAC() per call.
 */
void
store_mac(const struct store_key *k, const void *a, size_t alen,
    const void *b, size_t blen, uint8_t out[STORE_MAC_LEN])
{
	uint8_t inner[STORE_MAC_LEN];
	unsigned int len;
	EVP_MD_CTX *c;
	int ok;

	if ((c = EVP_MD_CTX_new()) == NULL)
		goto fail;
	ok = EVP_MD_CTX_copy_ex(c, k->in) && EVP_DigestUpdate(c, a, alen) &&
	    (blen == 0 || EVP_DigestUpdate(c, b, blen)) &&
	    EVP_DigestFinal_ex(c, inner, &len) &&
	    EVP_MD_CTX_copy_ex(c, k->out) && EVP_DigestUpdate(c, inner, sizeof(inner)) &&
	    EVP_DigestFinal_ex(c, out, &len);
	EVP_MD_CTX_free(c);
	if (ok)
		return;
fail:
	/* Never a usable key: all-zero MACs match nothing that was stored. */
	RAND_bytes(out, STORE_MAC_LEN);
}
