/*
 * keygen.c - making a DKIM key pair: the private key goes to a PEM file
 * created mode 0600 under a temporary name and linked into place (never
 * over an existing key); the caller gets the TXT record to publish.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "dkim/dkim_int.h"

static int	dkim_keygen_write(const char *, EVP_PKEY *, char *, size_t);
static int	dkim_keygen_fsync_dir(const char *);

static int
dkim_keygen_fsync_dir(const char *path)
{
	char *copy, *dir;
	int fd, rc = -1;

	if ((copy = strdup(path)) == NULL)
		return -1;
	dir = dirname(copy);
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		rc = fsync(fd);
		close(fd);
	}
	free(copy);
	return rc;
}

/* tmp file (0600, O_EXCL) -> write -> fsync -> link to the final name. */
static int
dkim_keygen_write(const char *keyfile, EVP_PKEY *pkey, char *err, size_t errlen)
{
	char *tmp = NULL;
	FILE *fp = NULL;
	int fd = -1, rc = -1;

	if (asprintf(&tmp, "%s.tmp.%ld", keyfile, (long)getpid()) == -1) {
		tmp = NULL;
		snprintf(err, errlen, "dkim keygen %s: out of memory", keyfile);
		return -1;
	}
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1) {
		snprintf(err, errlen, "dkim keygen %s: cannot create: %s", tmp,
		    strerror(errno));
		goto fail;
	}
	/* Whatever the umask, the key is 0600. */
	if (fchmod(fd, 0600) == -1 || (fp = fdopen(fd, "w")) == NULL) {
		snprintf(err, errlen, "dkim keygen %s: %s", tmp, strerror(errno));
		goto fail_unlink;
	}
	fd = -1;
	if (PEM_write_PrivateKey(fp, pkey, NULL, NULL, 0, NULL, NULL) != 1 ||
	    fflush(fp) == EOF || fsync(fileno(fp)) == -1) {
		ERR_clear_error();
		snprintf(err, errlen, "dkim keygen %s: write failed: %s", tmp,
		    strerror(errno));
		goto fail_unlink;
	}
	if (fclose(fp) == EOF) {
		fp = NULL;
		snprintf(err, errlen, "dkim keygen %s: close: %s", tmp,
		    strerror(errno));
		goto fail_unlink;
	}
	fp = NULL;
	/* link(2) refuses to replace: a key in use is never overwritten. */
	if (link(tmp, keyfile) == -1) {
		snprintf(err, errlen, "dkim keygen %s: %s", keyfile,
		    errno == EEXIST ? "file exists (remove it or choose another "
		    "selector)" : strerror(errno));
		goto fail_unlink;
	}
	unlink(tmp);
	if (dkim_keygen_fsync_dir(keyfile) == -1) {
		snprintf(err, errlen, "dkim keygen %s: fsync of directory: %s",
		    keyfile, strerror(errno));
		goto fail;
	}
	rc = 0;
	goto fail;
fail_unlink:
	unlink(tmp);
fail:
	if (fp != NULL)
		fclose(fp);
	if (fd != -1)
		close(fd);
	free(tmp);
	return rc;
}

int
dkim_keygen(enum dkim_alg alg, int bits, const char *keyfile, char **txt,
    char *err, size_t errlen)
{
	EVP_PKEY *pkey = NULL;

	*txt = NULL;
	if (keyfile == NULL || *keyfile == '\0') {
		snprintf(err, errlen, "dkim keygen: no key file given");
		return -1;
	}
	switch (alg) {
	case DKIM_ALG_RSA_SHA256:
		if (bits == 0)
			bits = 2048;
		if (bits < DKIM_RSA_MIN_BITS || bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "dkim keygen %s: RSA bits must be "
			    "%d..%d, not %d", keyfile, DKIM_RSA_MIN_BITS,
			    DKIM_RSA_MAX_BITS, bits);
			return -1;
		}
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
		break;
	case DKIM_ALG_ED25519_SHA256:
		pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
		break;
	default:
		snprintf(err, errlen, "dkim keygen %s: unknown algorithm", keyfile);
		return -1;
	}
	if (pkey == NULL) {
		ERR_clear_error();
		snprintf(err, errlen, "dkim keygen %s: key generation failed",
		    keyfile);
		return -1;
	}
	if ((*txt = dkim_key_txt(pkey, alg)) == NULL) {
		snprintf(err, errlen, "dkim keygen %s: cannot derive the public key",
		    keyfile);
		goto fail;
	}
	if (dkim_keygen_write(keyfile, pkey, err, errlen) == -1)
		goto fail;
	EVP_PKEY_free(pkey);
	return 0;
fail:
	free(*txt);
	*txt = NULL;
	EVP_PKEY_free(pkey);
	return -1;
}
