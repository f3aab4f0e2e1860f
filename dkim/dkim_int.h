/*
 * dkim_int.h - what the files of dkim/ share and nobody else needs: the
 * loaded key, the key file checks and the TXT record builder.
 */
#ifndef OTPMAIL_DKIM_INT_H
#define OTPMAIL_DKIM_INT_H

#include <stddef.h>
#include <openssl/evp.h>

#include "dkim/dkim_sign.h"

#define DKIM_KEY_MAX_FILE	(64 * 1024)	/* a 16k-bit RSA PEM is ~12 KiB */
#define DKIM_RSA_MIN_BITS	1024
#define DKIM_RSA_MAX_BITS	8192

/* A private key read from its file, checked against its algorithm. */
struct dkim_key {
	char		*domain;	/* lower case */
	char		*selector;
	char		*keyfile;
	enum dkim_alg	 alg;
	int		 bits;		/* RSA modulus / 256 for Ed25519 */
	unsigned char	*pem;		/* normalized PKCS#8 PEM, NUL-terminated */
	size_t		 pemlen;
	char		*txt;		/* "v=DKIM1; k=...; p=..." */
	EVP_PKEY	*pkey;		/* parsed once, handed to libopendkim (keycache.c) */
};

/*
 * Reads and checks keyfile (mode, size, parse, algorithm) and fills pem,
 * bits and txt of k.  Errors name the file, never the key material.
 */
int	dkim_key_load(struct dkim_key *k, const char *keyfile, enum dkim_alg alg,
	    int check_mode, char *err, size_t errlen);
void	dkim_key_clear(struct dkim_key *k);

/* The TXT record value for a key (malloc'd) or NULL. */
char	*dkim_key_txt(EVP_PKEY *pkey, enum dkim_alg alg);

/*
 * keycache.c: the parsed keys libopendkim gets instead of parsing the PEM
 * again per message.  A signer adds its keys after loading them and
 * removes them before freeing them.
 */
int		 dkim_keycache_add(const struct dkim_key *);
void		 dkim_keycache_remove(const struct dkim_key *);
unsigned long	 dkim_keycache_hits(void);	/* tests */
/* The key this thread got from the cache since the last mark, or NULL. */
void		 dkim_keycache_mark(void);
const EVP_PKEY	*dkim_keycache_given(void);
/* sign.c: blocks libopendkim left behind after dkim_free (tests). */
unsigned long	 dkim_sign_reclaimed(void);

#endif
