/*
 * cluster.c - the cluster_* settings made into a site list and the keys of
 * the cluster secret.  Every host lists the same sites; sorted, a site's
 * place in the list is its index j everywhere.  One secret file, the same
 * on every host, gives by HMAC-SHA256 with distinct labels: the OTP HMAC
 * secret, the environment's encryption password and the relay's TLS 1.3
 * pre-shared key.  None of the three is derivable from another.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "agent/core/cluster.h"
#include "agent/core/cluster_int.h"

#define CLUSTER_SECRET_MIN	32
#define CLUSTER_SECRET_MAX	1024

static int	cluster_cmp(const void *, const void *);
static int	cluster_split(const char *, char *host, size_t, char *port, size_t);
static int	cluster_secret(const char *path, uint8_t *out, size_t *len,
		    char *err, size_t errlen);

static int
cluster_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* "host:port" or "[v6]:port". */
static int
cluster_split(const char *s, char *host, size_t hlen, char *port, size_t plen)
{
	const char *c;
	char *end;
	long p;

	if (s[0] == '[') {
		if ((c = strstr(s, "]:")) == NULL)
			return -1;
		snprintf(host, hlen, "%.*s", (int)(c - s - 1), s + 1);
		c++;
	} else {
		if ((c = strrchr(s, ':')) == NULL || c == s)
			return -1;
		snprintf(host, hlen, "%.*s", (int)(c - s), s);
	}
	p = strtol(c + 1, &end, 10);
	if (*end != '\0' || p < 1 || p > 65535)
		return -1;
	snprintf(port, plen, "%ld", p);
	return 0;
}

static int
cluster_secret(const char *path, uint8_t *out, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	ssize_t n;
	int fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) == -1) {
		snprintf(err, errlen, "cluster_secret_file %s: %s (make it once with "
		    "head -c 32 /dev/urandom, copy it to every host, mode 0600)", path,
		    strerror(errno));
		return -1;
	}
	if (fstat(fd, &st) == -1 || (st.st_mode & 077) != 0) {
		snprintf(err, errlen, "cluster_secret_file %s: readable by others "
		    "(chmod 600)", path);
		close(fd);
		return -1;
	}
	n = read(fd, out, CLUSTER_SECRET_MAX);
	close(fd);
	if (n < CLUSTER_SECRET_MIN) {
		snprintf(err, errlen, "cluster_secret_file %s: at least %d bytes",
		    path, CLUSTER_SECRET_MIN);
		return -1;
	}
	*len = (size_t)n;
	return 0;
}

void
cluster_derive(const uint8_t *secret, size_t len, const char *label, uint8_t out[32])
{
	unsigned int olen = 32;

	HMAC(EVP_sha256(), secret, (int)len, (const unsigned char *)label,
	    strlen(label), out, &olen);
}

struct cluster *
cluster_open(const struct config *cfg, const char *state_dir, struct store_cluster *sc,
    char *err, size_t errlen)
{
	const char *all[STORE_CLUSTER_MAX];
	uint8_t secret[CLUSTER_SECRET_MAX], k[32];
	char path[4096];
	struct cluster *c;
	size_t n = 0, slen, i;
	int j;

	err[0] = '\0';
	if (cfg->cluster_site[0] == '\0')
		return NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		snprintf(err, errlen, "cluster: out of memory");
		return NULL;
	}
	for (j = 0; j < STORE_CLUSTER_MAX; j++)
		c->lfd[j] = -1;
	c->stop_pipe[0] = c->stop_pipe[1] = -1;
	all[n++] = cfg->cluster_site;
	for (i = 0; cfg->cluster_peers != NULL && cfg->cluster_peers[i] != NULL; i++) {
		if (n >= STORE_CLUSTER_MAX) {
			snprintf(err, errlen, "cluster_peers: at most %d sites",
			    STORE_CLUSTER_MAX);
			goto fail;
		}
		all[n++] = cfg->cluster_peers[i];
	}
	if (n < 3) {
		/* two sites cannot elect after losing one: no gain over one */
		snprintf(err, errlen, "cluster_peers: name at least two other sites");
		goto fail;
	}
	qsort(all, n, sizeof(all[0]), cluster_cmp);
	c->nsites = (int)n;
	c->self = -1;
	for (j = 0; j < c->nsites; j++) {
		if (j > 0 && strcmp(all[j], all[j - 1]) == 0) {
			snprintf(err, errlen, "cluster: site %s named twice", all[j]);
			goto fail;
		}
		if (cluster_split(all[j], c->host[j], sizeof(c->host[j]), c->port[j],
		    sizeof(c->port[j])) == -1) {
			snprintf(err, errlen, "cluster: bad site %s (host:port)", all[j]);
			goto fail;
		}
		snprintf(c->addr[j], sizeof(c->addr[j]), "%s", all[j]);
		if (all[j] == cfg->cluster_site)
			c->self = j;
	}
	c->base_port = cfg->cluster_base_port;
	if (cfg->cluster_secret_file[0] == '/')
		snprintf(path, sizeof(path), "%s", cfg->cluster_secret_file);
	else
		snprintf(path, sizeof(path), "%s/%s", state_dir, cfg->cluster_secret_file);
	if (cluster_secret(path, secret, &slen, err, errlen) == -1)
		goto fail;
	memset(sc, 0, sizeof(*sc));
	sc->nsites = c->nsites;
	sc->self = c->self;
	sc->base_port = c->base_port;
	sc->priority = cfg->cluster_priority;
	sc->start_timeout = cfg->cluster_start_timeout;
	cluster_derive(secret, slen, "otpmail cluster v1: OTP HMAC secret", sc->secret);
	cluster_derive(secret, slen, "otpmail cluster v1: environment", k);
	for (i = 0; i < 32; i++)
		snprintf(sc->env_password + 2 * i, 3, "%02x", k[i]);
	cluster_derive(secret, slen, "otpmail cluster v1: relay PSK", c->psk);
	OPENSSL_cleanse(k, sizeof(k));
	OPENSSL_cleanse(secret, sizeof(secret));
	return c;
fail:
	OPENSSL_cleanse(secret, sizeof(secret));
	cluster_close(c);
	return NULL;
}

int
cluster_nsites(const struct cluster *c)
{
	return c->nsites;
}

int
cluster_self(const struct cluster *c)
{
	return c->self;
}

const char *
cluster_site_addr(const struct cluster *c, int j)
{
	return j >= 0 && j < c->nsites ? c->addr[j] : "?";
}

int
cluster_base_port(const struct cluster *c)
{
	return c->base_port;
}
