/*
 * keycache.c - keeps libopendkim from parsing the private key per message.
 *
 * libopendkim takes the key as PEM text and, in dkim_eom, parses it with
 * PEM_read_bio_PrivateKey for every signature: with OpenSSL 3 that costs
 * about 0.45 ms, and a fresh RSA key another 0.4 ms of precomputation -
 * more than an RSA-2048 signature itself, and 20 times an Ed25519 one.
 * This file defines PEM_read_bio_PrivateKey; the dynamic linker binds
 * libopendkim's call to it.  A memory BIO whose bytes are exactly the PEM
 * of a key loaded by a signer gets that key, parsed once at start-up (one
 * more reference, which libopendkim frees like its own - except after an
 * Ed25519 signature, where sign.c gives it back); every other call goes to
 * OpenSSL's function unchanged.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "dkim/dkim_int.h"

typedef EVP_PKEY *(*dkim_pem_read_fn)(BIO *, EVP_PKEY **, pem_password_cb *, void *);

struct dkim_cached {
	const unsigned char	*pem;
	size_t			 pemlen;
	EVP_PKEY		*pkey;
};

static pthread_mutex_t		 dkim_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static struct dkim_cached	*dkim_cache;
static size_t			 dkim_ncache;
static unsigned long		 dkim_cache_hits;
static __thread const EVP_PKEY	*dkim_cache_given;	/* this thread's last hit */
static pthread_once_t		 dkim_real_once = PTHREAD_ONCE_INIT;
static dkim_pem_read_fn		 dkim_real_pem_read;

static void	dkim_keycache_find_real(void);

static void
dkim_keycache_find_real(void)
{
	dkim_real_pem_read = (dkim_pem_read_fn)dlsym(RTLD_NEXT,
	    "PEM_read_bio_PrivateKey");
}

int
dkim_keycache_add(const struct dkim_key *k)
{
	struct dkim_cached *n;

	pthread_mutex_lock(&dkim_cache_lock);
	n = realloc(dkim_cache, (dkim_ncache + 1) * sizeof(*n));
	if (n == NULL) {
		pthread_mutex_unlock(&dkim_cache_lock);
		return -1;
	}
	dkim_cache = n;
	dkim_cache[dkim_ncache].pem = k->pem;
	dkim_cache[dkim_ncache].pemlen = k->pemlen;
	dkim_cache[dkim_ncache].pkey = k->pkey;
	dkim_ncache++;
	pthread_mutex_unlock(&dkim_cache_lock);
	return 0;
}

void
dkim_keycache_remove(const struct dkim_key *k)
{
	size_t i;

	pthread_mutex_lock(&dkim_cache_lock);
	for (i = 0; i < dkim_ncache; i++) {
		if (dkim_cache[i].pem == k->pem) {
			dkim_cache[i] = dkim_cache[--dkim_ncache];
			break;
		}
	}
	if (dkim_ncache == 0) {
		free(dkim_cache);
		dkim_cache = NULL;
	}
	pthread_mutex_unlock(&dkim_cache_lock);
}

void
dkim_keycache_mark(void)
{
	dkim_cache_given = NULL;
}

const EVP_PKEY *
dkim_keycache_given(void)
{
	return dkim_cache_given;
}

unsigned long
dkim_keycache_hits(void)
{
	unsigned long n;

	pthread_mutex_lock(&dkim_cache_lock);
	n = dkim_cache_hits;
	pthread_mutex_unlock(&dkim_cache_lock);
	return n;
}

EVP_PKEY *
PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u)
{
	EVP_PKEY *pkey = NULL;
	char *data;
	long n;
	size_t i;

	if (bp != NULL && x == NULL && cb == NULL &&
	    BIO_method_type(bp) == BIO_TYPE_MEM &&
	    (n = BIO_get_mem_data(bp, &data)) > 0) {
		pthread_mutex_lock(&dkim_cache_lock);
		for (i = 0; i < dkim_ncache; i++) {
			const struct dkim_cached *c = &dkim_cache[i];

			if (((size_t)n == c->pemlen ||
			    ((size_t)n == c->pemlen + 1 && data[c->pemlen] == '\0')) &&
			    memcmp(data, c->pem, c->pemlen) == 0 &&
			    EVP_PKEY_up_ref(c->pkey) == 1) {
				pkey = c->pkey;
				dkim_cache_hits++;
				break;
			}
		}
		pthread_mutex_unlock(&dkim_cache_lock);
		if (pkey != NULL) {
			dkim_cache_given = pkey;
			return pkey;
		}
	}
	pthread_once(&dkim_real_once, dkim_keycache_find_real);
	if (dkim_real_pem_read == NULL)
		return NULL;
	return dkim_real_pem_read(bp, x, cb, u);
}
