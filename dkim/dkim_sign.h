/*
 * dkim_sign.h - DKIM signing with libopendkim, the key table, key generation
 * and the DNS records to publish (public interface of dkim/).
 *
 * One signer holds one DKIM_LIB and the loaded keys; it may be shared by
 * threads (each signature uses its own DKIM handle).
 */
#ifndef OTPMAIL_DKIM_SIGN_H
#define OTPMAIL_DKIM_SIGN_H

#include <stddef.h>

enum dkim_alg {
	DKIM_ALG_RSA_SHA256 = 0,
	DKIM_ALG_ED25519_SHA256,
};

/* One configured key: "domain selector algorithm keyfile" in the config. */
struct dkim_key_conf {
	const char	*domain;
	const char	*selector;
	enum dkim_alg	 alg;
	const char	*keyfile;
};

struct dkim_params {
	const struct dkim_key_conf *keys;
	size_t		 nkeys;
	int		 relaxed_header;	/* 1 = relaxed (default) */
	int		 relaxed_body;		/* 1 = relaxed (default) */
	const char	*const *sign_headers;	/* NULL-terminated; NULL = built-in list */
	const char	*const *oversign_headers; /* NULL-terminated; NULL = From,To,Subject */
	int		 check_key_modes;	/* refuse keys readable by group/other */
	long		 fixed_time;		/* 0 = now; else t= (tests) */
};

struct dkim_signer;

/* Loads every key; any bad key fails with an error naming its file. */
struct dkim_signer *dkim_signer_new(const struct dkim_params *, char *err, size_t errlen);
void		 dkim_signer_free(struct dkim_signer *);

enum dkim_status {
	DKIM_SIGN_OK = 0,	/* *sig set (may be NULL if unsigned: no key) */
	DKIM_SIGN_NOKEY,	/* no key for the From domain: send unsigned */
	DKIM_SIGN_BADMSG,	/* no From header / unparsable message */
	DKIM_SIGN_ERROR,	/* library failure */
};

/*
 * Signs a whole RFC 5322 message (CRLF line ends) for the domain of its From
 * address (or the nearest parent domain with a key).  On success *sig is a
 * malloc'd block of one or more complete "DKIM-Signature: ..." header fields,
 * each ending in CRLF, to be put in front of the message.  *domain_out (if
 * not NULL) gets the signing domain (static until the signer is freed).
 */
enum dkim_status dkim_sign_message(struct dkim_signer *, const char *msg, size_t len,
		    char **sig, const char **domain_out, char *err, size_t errlen);

/* Key generation: writes the private key PEM (mode 0600) and returns the
 * TXT record value ("v=DKIM1; k=rsa; p=...") as a malloc'd string. */
int		 dkim_keygen(enum dkim_alg, int bits, const char *keyfile,
		    char **txt, char *err, size_t errlen);
/* TXT record value for a loaded key file (malloc'd), NULL with err on failure. */
char		*dkim_key_record(const char *keyfile, enum dkim_alg, char *err, size_t errlen);

/* The loaded keys, for dkim.records / dkim.check (no private material). */
struct dkim_key_info {
	const char	*domain;	/* lower case */
	const char	*selector;
	enum dkim_alg	 alg;
	const char	*keyfile;
	int		 bits;		/* RSA modulus bits; 256 for Ed25519 */
	const char	*txt;		/* TXT record value to publish */
};
size_t		 dkim_signer_nkeys(const struct dkim_signer *);
/* Fills *ki (pointers valid until the signer is freed); -1 if i is out of range. */
int		 dkim_signer_key(const struct dkim_signer *, size_t i, struct dkim_key_info *ki);

const char	*dkim_alg_name(enum dkim_alg);
int		 dkim_alg_parse(const char *);	/* -1 if unknown */

#endif
