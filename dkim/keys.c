/*
 * keys.c - loading DKIM private keys at start-up: the file must be private
 * to its owner, hold one key of the configured algorithm, and is kept in
 * memory as normalized PEM for libopendkim; the public half gives the TXT
 * record to publish.  Error messages name the file, never key material.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "dkim/dkim_int.h"

static int	 dkim_key_read_file(const char *, int, unsigned char **, size_t *,
		    char *, size_t);
static char	*dkim_key_b64(const unsigned char *, size_t);
static int	 dkim_key_warm(EVP_PKEY *, enum dkim_alg);

const char *
dkim_alg_name(enum dkim_alg alg)
{
	switch (alg) {
	case DKIM_ALG_RSA_SHA256:
		return "rsa-sha256";
	case DKIM_ALG_ED25519_SHA256:
		return "ed25519-sha256";
	}
	return "unknown";
}

int
dkim_alg_parse(const char *s)
{
	if (s == NULL)
		return -1;
	if (strcasecmp(s, "rsa-sha256") == 0 || strcasecmp(s, "rsa") == 0)
		return DKIM_ALG_RSA_SHA256;
	if (strcasecmp(s, "ed25519-sha256") == 0 || strcasecmp(s, "ed25519") == 0)
		return DKIM_ALG_ED25519_SHA256;
	return -1;
}

/*
 * Reads the whole file through one descriptor so the mode checked is the
 * mode of the bytes read.
 */
static int
dkim_key_read_file(const char *path, int check_mode, unsigned char **out,
    size_t *outlen, char *err, size_t errlen)
{
	struct stat st;
	unsigned char *buf = NULL;
	size_t len = 0, cap = 0;
	ssize_t n;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		snprintf(err, errlen, "dkim key %s: cannot open: %s", path,
		    strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1) {
		snprintf(err, errlen, "dkim key %s: stat: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "dkim key %s: not a regular file", path);
		goto fail;
	}
	if (check_mode && (st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		snprintf(err, errlen, "dkim key %s: mode %04o gives access to "
		    "group or other users; run chmod 600 on it", path,
		    (unsigned)(st.st_mode & 07777));
		goto fail;
	}
	if (st.st_size <= 0 || st.st_size > DKIM_KEY_MAX_FILE) {
		snprintf(err, errlen, "dkim key %s: size %lld is not that of a "
		    "key (1..%d bytes)", path, (long long)st.st_size,
		    DKIM_KEY_MAX_FILE);
		goto fail;
	}
	cap = (size_t)st.st_size + 1;
	if ((buf = malloc(cap)) == NULL) {
		snprintf(err, errlen, "dkim key %s: out of memory", path);
		goto fail;
	}
	while (len < (size_t)st.st_size) {
		n = read(fd, buf + len, (size_t)st.st_size - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			snprintf(err, errlen, "dkim key %s: read: %s", path,
			    strerror(errno));
			goto fail;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	close(fd);
	*out = buf;
	*outlen = len;
	return 0;
fail:
	if (buf != NULL) {
		OPENSSL_cleanse(buf, cap);
		free(buf);
	}
	close(fd);
	return -1;
}

static char *
dkim_key_b64(const unsigned char *p, size_t len)
{
	char *s;

	if ((s = malloc(4 * ((len + 2) / 3) + 1)) == NULL)
		return NULL;
	EVP_EncodeBlock((unsigned char *)s, p, (int)len);
	return s;
}

char *
dkim_key_txt(EVP_PKEY *pkey, enum dkim_alg alg)
{
	unsigned char raw[32], *der = NULL;
	size_t rawlen = sizeof(raw);
	char *b64 = NULL, *txt = NULL;
	int derlen;

	if (alg == DKIM_ALG_ED25519_SHA256) {
		/* RFC 8463: p= is the raw 32-byte public key, not SPKI */
		if (EVP_PKEY_get_raw_public_key(pkey, raw, &rawlen) != 1 ||
		    rawlen != 32)
			return NULL;
		b64 = dkim_key_b64(raw, rawlen);
	} else {
		/* RFC 6376: RSA p= is the DER SubjectPublicKeyInfo */
		if ((derlen = i2d_PUBKEY(pkey, &der)) <= 0)
			return NULL;
		b64 = dkim_key_b64(der, (size_t)derlen);
		OPENSSL_free(der);
	}
	if (b64 == NULL)
		return NULL;
	if (asprintf(&txt, "v=DKIM1; k=%s; p=%s",
	    alg == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa", b64) == -1)
		txt = NULL;
	free(b64);
	return txt;
}

int
dkim_key_load(struct dkim_key *k, const char *keyfile, enum dkim_alg alg,
    int check_mode, char *err, size_t errlen)
{
	unsigned char *data = NULL;
	size_t len = 0;
	EVP_PKEY *pkey = NULL;
	BIO *in = NULL, *out = NULL;
	char *pem;
	long pemlen;
	int type;

	memset(k, 0, sizeof(*k));
	k->alg = alg;
	if (dkim_key_read_file(keyfile, check_mode, &data, &len, err, errlen) == -1)
		return -1;
	if ((in = BIO_new_mem_buf(data, (int)len)) == NULL)
		goto nomem;
	pkey = PEM_read_bio_PrivateKey(in, NULL, NULL, NULL);
	ERR_clear_error();	/* OpenSSL's queue may quote the input */
	if (pkey == NULL) {
		snprintf(err, errlen, "dkim key %s: not a PEM private key "
		    "(encrypted keys are not supported)", keyfile);
		goto fail;
	}
	type = EVP_PKEY_get_base_id(pkey);
	if (alg == DKIM_ALG_RSA_SHA256) {
		if (type != EVP_PKEY_RSA) {
			snprintf(err, errlen, "dkim key %s: configured as %s but "
			    "holds a %s key", keyfile, dkim_alg_name(alg),
			    type == EVP_PKEY_ED25519 ? "Ed25519" : "non-RSA");
			goto fail;
		}
		k->bits = EVP_PKEY_get_bits(pkey);
		if (k->bits < DKIM_RSA_MIN_BITS) {
			snprintf(err, errlen, "dkim key %s: RSA key of %d bits is "
			    "too weak (at least %d)", keyfile, k->bits,
			    DKIM_RSA_MIN_BITS);
			goto fail;
		}
	} else if (alg == DKIM_ALG_ED25519_SHA256) {
		if (type != EVP_PKEY_ED25519) {
			snprintf(err, errlen, "dkim key %s: configured as %s but "
			    "holds a %s key", keyfile, dkim_alg_name(alg),
			    type == EVP_PKEY_RSA ? "RSA" : "non-Ed25519");
			goto fail;
		}
		k->bits = 256;
	} else {
		snprintf(err, errlen, "dkim key %s: unknown algorithm", keyfile);
		goto fail;
	}

	/* One canonical form (PKCS#8 PEM) whatever the file held (PKCS#1...). */
	if ((out = BIO_new(BIO_s_secmem())) == NULL &&
	    (out = BIO_new(BIO_s_mem())) == NULL)
		goto nomem;
	if (PEM_write_bio_PrivateKey(out, pkey, NULL, NULL, 0, NULL, NULL) != 1)
		goto nomem;
	pemlen = BIO_get_mem_data(out, &pem);
	if (pemlen <= 0 || (k->pem = malloc((size_t)pemlen + 1)) == NULL)
		goto nomem;
	memcpy(k->pem, pem, (size_t)pemlen);
	k->pem[pemlen] = '\0';
	k->pemlen = (size_t)pemlen;
	if ((k->txt = dkim_key_txt(pkey, alg)) == NULL ||
	    (k->keyfile = strdup(keyfile)) == NULL)
		goto nomem;
	if (dkim_key_warm(pkey, alg) == -1) {
		ERR_clear_error();
		snprintf(err, errlen, "dkim key %s: a test signature with the key "
		    "failed", keyfile);
		goto fail;
	}

	BIO_free(out);
	BIO_free(in);
	k->pkey = pkey;
	OPENSSL_cleanse(data, len);
	free(data);
	return 0;
nomem:
	ERR_clear_error();
	snprintf(err, errlen, "dkim key %s: out of memory or crypto failure",
	    keyfile);
fail:
	BIO_free(out);
	BIO_free(in);
	EVP_PKEY_free(pkey);
	OPENSSL_cleanse(data, len);
	free(data);
	dkim_key_clear(k);
	return -1;
}

/*
 * One signature at load time proves the key works and does, before the key
 * is shared by threads, what OpenSSL otherwise does lazily on first use
 * (the legacy RSA object libopendkim asks for, RSA blinding).
 */
static int
dkim_key_warm(EVP_PKEY *pkey, enum dkim_alg alg)
{
	static const unsigned char probe[32] = "otpmail dkim key check";
	unsigned char sig[1024];
	size_t siglen = sizeof(sig);
	EVP_MD_CTX *md;
	RSA *rsa;
	int rc = -1;

	if (EVP_PKEY_get_size(pkey) > (int)sizeof(sig))
		return -1;
	if (alg == DKIM_ALG_RSA_SHA256) {
		/* libopendkim signs through the legacy RSA object: make it now */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		if ((rsa = EVP_PKEY_get1_RSA(pkey)) == NULL)
			return -1;
		RSA_free(rsa);
#pragma GCC diagnostic pop
	}
	if ((md = EVP_MD_CTX_new()) == NULL)
		return -1;
	if (EVP_DigestSignInit(md, NULL, alg == DKIM_ALG_RSA_SHA256 ?
	    EVP_sha256() : NULL, NULL, pkey) == 1 &&
	    EVP_DigestSign(md, sig, &siglen, probe, sizeof(probe)) == 1)
		rc = 0;
	EVP_MD_CTX_free(md);
	return rc;
}

void
dkim_key_clear(struct dkim_key *k)
{
	if (k->pem != NULL) {
		OPENSSL_cleanse(k->pem, k->pemlen);
		free(k->pem);
	}
	EVP_PKEY_free(k->pkey);
	free(k->txt);
	free(k->keyfile);
	free(k->domain);
	free(k->selector);
	memset(k, 0, sizeof(*k));
}

char *
dkim_key_record(const char *keyfile, enum dkim_alg alg, char *err, size_t errlen)
{
	struct dkim_key k;
	char *txt;

	/* Mode is not checked: this only derives the public half. */
	if (dkim_key_load(&k, keyfile, alg, 0, err, errlen) == -1)
		return NULL;
	txt = k.txt;
	k.txt = NULL;
	dkim_key_clear(&k);
	return txt;
}
