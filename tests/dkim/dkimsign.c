/*
 * dkimsign.c - test helper: drives dkim/ from the command line so the
 * integration tests can sign with the library and check the result after
 * a real SMTP hop.
 *   dkimsign keygen rsa|ed25519 FILE      prints the TXT record value
 *   dkimsign sign [-s] DOMAIN:SELECTOR:ALG:FILE... < msg > signed msg
 *     (-s: simple/simple; exit 0 signed, 3 no key, 4 bad message, 1 error)
 *   dkimsign bench N DOMAIN:SELECTOR:ALG:FILE < msg   prints signatures per
 *     second of wall-clock time and per second of CPU time
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dkim/dkim_sign.h"

#define DKIMSIGN_MAX_MSG	(20 * 1024 * 1024)

static char	*dkimsign_read(size_t *);
static int	 dkimsign_keys(int, char **, struct dkim_key_conf *);

static char *
dkimsign_read(size_t *len)
{
	char *buf = malloc(DKIMSIGN_MAX_MSG);
	size_t n;

	if (buf == NULL)
		return NULL;
	n = fread(buf, 1, DKIMSIGN_MAX_MSG, stdin);
	*len = n;
	return buf;
}

static int
dkimsign_keys(int argc, char **argv, struct dkim_key_conf *keys)
{
	int i, alg;

	for (i = 0; i < argc; i++) {
		char *d = argv[i], *s, *a, *f;

		if ((s = strchr(d, ':')) == NULL || (a = strchr(s + 1, ':')) == NULL ||
		    (f = strchr(a + 1, ':')) == NULL) {
			fprintf(stderr, "dkimsign: bad key spec %s\n", d);
			return -1;
		}
		*s++ = '\0';
		*a++ = '\0';
		*f++ = '\0';
		if ((alg = dkim_alg_parse(a)) == -1) {
			fprintf(stderr, "dkimsign: bad algorithm %s\n", a);
			return -1;
		}
		keys[i] = (struct dkim_key_conf){ d, s, alg, f };
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct dkim_key_conf keys[16];
	struct dkim_params p;
	struct dkim_signer *signer;
	struct timespec t0, t1, c0, c1;
	char err[512], *msg, *sig = NULL, *txt;
	size_t len;
	int simple = 0, i, n = 0, rc;

	if (argc == 4 && strcmp(argv[1], "keygen") == 0) {
		if (dkim_keygen(dkim_alg_parse(argv[2]), 0, argv[3], &txt, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "%s\n", err);
			return 1;
		}
		printf("%s\n", txt);
		free(txt);
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "sign") == 0) {
		argv += 2;
		argc -= 2;
		if (strcmp(argv[0], "-s") == 0) {
			simple = 1;
			argv++;
			argc--;
		}
	} else if (argc == 4 && strcmp(argv[1], "bench") == 0) {
		n = atoi(argv[2]);
		argv += 3;
		argc -= 3;
	} else {
		fprintf(stderr, "usage: dkimsign keygen ALG FILE | sign [-s] "
		    "D:S:ALG:FILE... | bench N D:S:ALG:FILE\n");
		return 1;
	}
	if (argc < 1 || argc > 16 || dkimsign_keys(argc, argv, keys) == -1)
		return 1;
	memset(&p, 0, sizeof(p));
	p.keys = keys;
	p.nkeys = (size_t)argc;
	p.relaxed_header = p.relaxed_body = !simple;
	p.check_key_modes = 1;
	if ((signer = dkim_signer_new(&p, err, sizeof(err))) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if ((msg = dkimsign_read(&len)) == NULL)
		return 1;
	if (n > 0) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
		for (i = 0; i < n; i++) {
			if (dkim_sign_message(signer, msg, len, &sig, NULL, err,
			    sizeof(err)) != DKIM_SIGN_OK) {
				fprintf(stderr, "%s\n", err);
				return 1;
			}
			free(sig);
		}
		clock_gettime(CLOCK_MONOTONIC, &t1);
		clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
		/* wall-clock rate, then the rate per CPU-second (load-independent) */
		printf("%.0f %.0f\n", n / ((double)(t1.tv_sec - t0.tv_sec) +
		    (t1.tv_nsec - t0.tv_nsec) / 1e9), n / ((double)(c1.tv_sec -
		    c0.tv_sec) + (c1.tv_nsec - c0.tv_nsec) / 1e9));
		rc = 0;
		goto out;
	}
	switch (dkim_sign_message(signer, msg, len, &sig, NULL, err, sizeof(err))) {
	case DKIM_SIGN_OK:
		fputs(sig, stdout);
		fwrite(msg, 1, len, stdout);
		rc = 0;
		break;
	case DKIM_SIGN_NOKEY:
		rc = 3;
		break;
	case DKIM_SIGN_BADMSG:
		rc = 4;
		break;
	default:
		rc = 1;
		break;
	}
	if (rc != 0)
		fprintf(stderr, "%s\n", err);
	free(sig);
out:
	free(msg);
	dkim_signer_free(signer);
	return rc;
}
