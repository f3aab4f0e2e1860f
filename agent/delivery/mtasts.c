/*
 * mtasts.c - MTA-STS policies (see mtasts.h).  The TXT record says whether
 * a domain has a policy and which (its id); the policy itself comes from
 * https://mta-sts.<domain>/.well-known/mta-sts.txt, fetched with libcurl
 * against tls_ca_file (or the system store), the host's addresses resolved
 * through our own resolver, no redirects, no proxy, bounded in size and
 * time.  The lookup, the fetch and the parse run in the fetch process
 * (fetch.c, mtasts_fetch_policy): the main process gets the records and
 * the parsed policy, which it writes out as a canonical policy text and
 * parses again before using it.  Policies are cached by domain and written
 * to <state_dir>/mta-sts.json (tmp, fsync, rename) so a restart keeps
 * them; the file is input like any other and is parsed and checked again.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <curl/curl.h>
#include <jansson.h>

#include "agent/core/otpmaild.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/fetch.h"
#include "agent/delivery/mtasts.h"
#include "agent/delivery/mx.h"
#include "agent/delivery/tlsrpt.h"

#define MTASTS_CACHE_MAX	10000	/* domains kept */
#define MTASTS_FILE		"mta-sts.json"
#define MTASTS_HTTPS_PORT	443
#define MTASTS_REFRESH_MAX	64	/* policies refreshed per round */

struct mtasts_entry {
	char			 domain[MTASTS_NAME_MAX + 1];
	int			 have;		/* policy below is valid */
	struct mtasts_policy	 pol;
	char			*text;		/* the policy as fetched */
	time_t			 checked;	/* last TXT lookup */
	struct mtasts_entry	*next;
};

struct mtasts {
	pthread_mutex_t		 mu;
	char			*path;		/* the cache file */
	int			 check_interval;
	struct mtasts_entry	*entries;
	size_t			 n;
};

struct mtasts_body {
	char	*buf;
	size_t	 len;
	int	 toobig;
};

static struct mtasts	*mtasts_global;
static pthread_mutex_t	 mtasts_global_mu = PTHREAD_MUTEX_INITIALIZER;

static struct mtasts_entry *mtasts_find(struct mtasts *, const char *, int create);
static void	 mtasts_load(struct mtasts *);
static void	 mtasts_save(struct mtasts *);
static int	 mtasts_fetch(struct mx_resolver *, const struct config *,
		    const char *domain, char **text, size_t *len, const char **rtype,
		    char *err, size_t errlen);
static size_t	 mtasts_write_cb(char *, size_t, size_t, void *);
static int	 mtasts_pattern_ok(const char *);

const char *
mtasts_mode_name(enum mtasts_mode m)
{
	return m == MTASTS_ENFORCE ? "enforce" : m == MTASTS_TESTING ? "testing" : "none";
}

/* A host name or "*." plus one, LDH labels. */
static int
mtasts_pattern_ok(const char *p)
{
	if (strncmp(p, "*.", 2) == 0)
		p += 2;
	return *p != '\0' && strchr(p, '*') == NULL && strchr(p, '_') == NULL &&
	    mx_domain_valid(p);
}

int
mtasts_parse(const char *text, size_t len, struct mtasts_policy *pol,
    char *err, size_t errlen)
{
	const char *p = text, *end = text + len, *eol, *colon;
	char key[32], val[MTASTS_NAME_MAX + 2];
	int have_version = 0, have_mode = 0, have_age = 0;
	size_t kl, vl, i;

	memset(pol, 0, sizeof(*pol));
	if (len > MTASTS_POLICY_MAX) {
		snprintf(err, errlen, "policy larger than %d bytes", MTASTS_POLICY_MAX);
		return -1;
	}
	if (memchr(text, '\0', len) != NULL) {
		snprintf(err, errlen, "NUL byte in the policy");
		return -1;
	}
	for (; p < end; p = eol + 1) {
		if ((eol = memchr(p, '\n', (size_t)(end - p))) == NULL)
			eol = end;
		kl = (size_t)(eol - p);
		if (kl > 0 && p[kl - 1] == '\r')
			kl--;
		if (kl == 0)
			continue;
		if ((colon = memchr(p, ':', kl)) == NULL) {
			snprintf(err, errlen, "line without a colon");
			return -1;
		}
		vl = kl - (size_t)(colon - p) - 1;
		kl = (size_t)(colon - p);
		colon++;
		while (vl > 0 && (*colon == ' ' || *colon == '\t')) {
			colon++;
			vl--;
		}
		while (vl > 0 && (colon[vl - 1] == ' ' || colon[vl - 1] == '\t'))
			vl--;
		if (kl >= sizeof(key))
			continue;		/* unknown (long) field: ignored */
		memcpy(key, p, kl);
		key[kl] = '\0';
		if (vl >= sizeof(val)) {
			if (strcmp(key, "mx") == 0 || strcmp(key, "mode") == 0 ||
			    strcmp(key, "version") == 0 || strcmp(key, "max_age") == 0) {
				snprintf(err, errlen, "value of %s too long", key);
				return -1;
			}
			continue;
		}
		memcpy(val, colon, vl);
		val[vl] = '\0';
		if (strcmp(key, "version") == 0) {
			if (strcmp(val, "STSv1") != 0) {
				snprintf(err, errlen, "unknown version");
				return -1;
			}
			have_version = 1;
		} else if (strcmp(key, "mode") == 0) {
			if (strcmp(val, "enforce") == 0)
				pol->mode = MTASTS_ENFORCE;
			else if (strcmp(val, "testing") == 0)
				pol->mode = MTASTS_TESTING;
			else if (strcmp(val, "none") == 0)
				pol->mode = MTASTS_NONE;
			else {
				snprintf(err, errlen, "unknown mode");
				return -1;
			}
			have_mode = 1;
		} else if (strcmp(key, "max_age") == 0) {
			long age = 0;

			if (vl == 0 || vl > 10)
				goto bad_age;
			for (i = 0; i < vl; i++) {
				if (!isdigit((unsigned char)val[i]))
					goto bad_age;
				age = age * 10 + (val[i] - '0');
			}
			if (age > MTASTS_MAX_AGE_MAX)
				age = MTASTS_MAX_AGE_MAX;
			pol->max_age = age;
			have_age = 1;
		} else if (strcmp(key, "mx") == 0) {
			for (i = 0; i < vl; i++)
				val[i] = (char)tolower((unsigned char)val[i]);
			if (vl > 0 && val[vl - 1] == '.')
				val[--vl] = '\0';
			if (vl > MTASTS_NAME_MAX || !mtasts_pattern_ok(val)) {
				snprintf(err, errlen, "bad mx pattern");
				return -1;
			}
			if (pol->nmx < MTASTS_MX_MAX)
				memcpy(pol->mx[pol->nmx++], val, vl + 1);
		}
		/* other fields: ignored (RFC 8461 3.2) */
	}
	if (!have_version || !have_mode || !have_age) {
		snprintf(err, errlen, "missing %s", !have_version ? "version" :
		    !have_mode ? "mode" : "max_age");
		return -1;
	}
	if (pol->mode != MTASTS_NONE && pol->nmx == 0) {
		snprintf(err, errlen, "no mx pattern");
		return -1;
	}
	return 0;
bad_age:
	snprintf(err, errlen, "bad max_age");
	return -1;
}

int
mtasts_txt_id(const char *txt, char *id, size_t idlen)
{
	const char *p = txt, *f, *eq;
	int have_id = 0;
	size_t l, i;

	while (*p == ' ' || *p == '\t')
		p++;
	if (strncmp(p, "v=STSv1", 7) != 0 ||
	    (p[7] != ';' && p[7] != ' ' && p[7] != '\t' && p[7] != '\0'))
		return 1;
	p += 7;
	while (*p != '\0') {
		while (*p == ';' || *p == ' ' || *p == '\t')
			p++;
		if (*p == '\0')
			break;
		f = p;
		while (*p != '\0' && *p != ';')
			p++;
		l = (size_t)(p - f);
		while (l > 0 && (f[l - 1] == ' ' || f[l - 1] == '\t'))
			l--;
		if ((eq = memchr(f, '=', l)) == NULL)
			return -1;
		if ((size_t)(eq - f) == 2 && strncmp(f, "id", 2) == 0) {
			size_t vl = l - 3;

			if (vl == 0 || vl > MTASTS_ID_MAX || vl >= idlen || have_id)
				return -1;
			for (i = 0; i < vl; i++)
				if (!isalnum((unsigned char)eq[1 + i]))
					return -1;
			memcpy(id, eq + 1, vl);
			id[vl] = '\0';
			have_id = 1;
		}
	}
	return have_id ? 0 : -1;
}

int
mtasts_mx_match(const struct mtasts_policy *pol, const char *host)
{
	char h[MTASTS_NAME_MAX + 2];
	const char *dot;
	size_t i, l;

	snprintf(h, sizeof(h), "%s", host);
	for (i = 0; h[i]; i++)
		h[i] = (char)tolower((unsigned char)h[i]);
	if ((l = strlen(h)) > 0 && h[l - 1] == '.')
		h[l - 1] = '\0';
	for (i = 0; i < pol->nmx; i++) {
		const char *m = pol->mx[i];

		if (strncmp(m, "*.", 2) == 0) {
			/* the wildcard stands for exactly one leftmost label */
			if ((dot = strchr(h, '.')) != NULL && dot != h &&
			    strcmp(dot + 1, m + 2) == 0)
				return 1;
		} else if (strcmp(h, m) == 0)
			return 1;
	}
	return 0;
}

struct mtasts *
mtasts_shared(const struct config *cfg, const char *state_dir)
{
	struct mtasts *m = NULL;

	pthread_mutex_lock(&mtasts_global_mu);
	if (mtasts_global != NULL || state_dir == NULL)
		goto out;
	if ((m = calloc(1, sizeof(*m))) == NULL)
		goto out;
	if (asprintf(&m->path, "%s/%s", state_dir, MTASTS_FILE) == -1) {
		free(m);
		m = NULL;
		goto out;
	}
	m->check_interval = cfg->mta_sts_check_interval;
	pthread_mutex_init(&m->mu, NULL);
	mtasts_load(m);
	mtasts_global = m;
out:
	m = mtasts_global;
	pthread_mutex_unlock(&mtasts_global_mu);
	return m;
}

void
mtasts_shared_free(void)
{
	struct mtasts *m;
	struct mtasts_entry *e, *next;

	pthread_mutex_lock(&mtasts_global_mu);
	m = mtasts_global;
	mtasts_global = NULL;
	pthread_mutex_unlock(&mtasts_global_mu);
	if (m == NULL)
		return;
	for (e = m->entries; e != NULL; e = next) {
		next = e->next;
		free(e->text);
		free(e);
	}
	free(m->path);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* With m->mu held. */
static struct mtasts_entry *
mtasts_find(struct mtasts *m, const char *domain, int create)
{
	struct mtasts_entry *e, **pp;
	time_t now = time(NULL);

	for (e = m->entries; e != NULL; e = e->next)
		if (strcmp(e->domain, domain) == 0)
			return e;
	if (!create)
		return NULL;
	if (m->n >= MTASTS_CACHE_MAX) {
		/* drop expired or empty entries first; else refuse to grow */
		for (pp = &m->entries; (e = *pp) != NULL; ) {
			if (!e->have || e->pol.expires <= now) {
				*pp = e->next;
				free(e->text);
				free(e);
				m->n--;
			} else
				pp = &e->next;
		}
		if (m->n >= MTASTS_CACHE_MAX)
			return NULL;
	}
	if ((e = calloc(1, sizeof(*e))) == NULL)
		return NULL;
	snprintf(e->domain, sizeof(e->domain), "%s", domain);
	e->next = m->entries;
	m->entries = e;
	m->n++;
	return e;
}

static void
mtasts_load(struct mtasts *m)
{
	json_error_t jerr;
	json_t *root, *pols, *v;
	const char *dom;
	time_t now = time(NULL);
	size_t loaded = 0;

	if ((root = json_load_file(m->path, 0, &jerr)) == NULL) {
		if (access(m->path, F_OK) == 0)
			log_msg(LOG_WARNING, "event=mta_sts_error file=%s error=\"unreadable "
			    "cache, starting empty: %s\"", m->path, jerr.text);
		return;
	}
	pols = json_object_get(root, "policies");
	json_object_foreach(pols, dom, v) {
		const char *text = json_string_value(json_object_get(v, "text"));
		const char *id = json_string_value(json_object_get(v, "id"));
		json_int_t fetched = json_integer_value(json_object_get(v, "fetched"));
		struct mtasts_policy pol;
		struct mtasts_entry *e;
		char err[128];

		if (text == NULL || id == NULL || strlen(id) > MTASTS_ID_MAX ||
		    strlen(dom) > MTASTS_NAME_MAX || !mx_domain_valid(dom) ||
		    mtasts_parse(text, strlen(text), &pol, err, sizeof(err)) == -1 ||
		    fetched <= 0 || fetched > now + 60 ||
		    fetched + pol.max_age <= now)
			continue;		/* damaged or lapsed: forgotten */
		if ((e = mtasts_find(m, dom, 1)) == NULL || (e->text = strdup(text)) == NULL)
			break;
		snprintf(pol.id, sizeof(pol.id), "%s", id);
		pol.fetched = (time_t)fetched;
		pol.expires = pol.fetched + pol.max_age;
		e->pol = pol;
		e->have = 1;
		loaded++;
	}
	json_decref(root);
	log_msg(LOG_INFO, "event=mta_sts_cache_loaded file=%s policies=%zu", m->path, loaded);
}

/* Writes the cache file atomically; with m->mu held. */
static void
mtasts_save(struct mtasts *m)
{
	struct mtasts_entry *e;
	json_t *root, *pols;
	char *tmp = NULL, *s = NULL, *dir = NULL, *slash;
	time_t now = time(NULL);
	int fd = -1, ok = 0;
	size_t len;

	root = json_object();
	pols = json_object();
	json_object_set_new(root, "version", json_integer(1));
	json_object_set(root, "policies", pols);
	for (e = m->entries; e != NULL; e = e->next)
		if (e->have && e->pol.expires > now && e->text != NULL)
			json_object_set_new(pols, e->domain, json_pack("{s:s,s:I,s:s}",
			    "id", e->pol.id, "fetched", (json_int_t)e->pol.fetched,
			    "text", e->text));
	json_decref(pols);
	s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(root);
	if (s == NULL || asprintf(&tmp, "%s.tmp", m->path) == -1) {
		tmp = NULL;
		goto out;
	}
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) == -1)
		goto out;
	len = strlen(s);
	if (write(fd, s, len) != (ssize_t)len || fsync(fd) == -1)
		goto out;
	if (close(fd) == -1) {
		fd = -1;
		goto out;
	}
	fd = -1;
	if (rename(tmp, m->path) == -1)
		goto out;
	if ((dir = strdup(m->path)) != NULL && (slash = strrchr(dir, '/')) != NULL) {
		*slash = '\0';
		if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1)
			(void)fsync(fd);
	}
	ok = 1;
out:
	if (!ok) {
		log_msg(LOG_WARNING, "event=mta_sts_error file=%s error=\"cannot write "
		    "the cache: %s\"", m->path, strerror(errno));
		metrics_event("mta_sts_cache_write", "error");
		if (tmp != NULL)
			unlink(tmp);
	}
	if (fd != -1)
		close(fd);
	free(dir);
	free(tmp);
	free(s);
}

static size_t
mtasts_write_cb(char *data, size_t size, size_t nmemb, void *arg)
{
	struct mtasts_body *b = arg;
	size_t n = size * nmemb;
	char *nb;

	/* CURLOPT_MAXFILESIZE is not enforced without a Content-Length */
	if (b->len + n > MTASTS_POLICY_MAX) {
		b->toobig = 1;
		return 0;
	}
	if ((nb = realloc(b->buf, b->len + n + 1)) == NULL)
		return 0;
	b->buf = nb;
	memcpy(b->buf + b->len, data, n);
	b->len += n;
	b->buf[b->len] = '\0';
	return n;
}

/* GET the policy (fetch process); 0 with *text (malloc'd), -1 with rtype and err. */
static int
mtasts_fetch(struct mx_resolver *mx, const struct config *cfg, const char *domain,
    char **text, size_t *len, const char **rtype, char *err, size_t errlen)
{
	const char *ca = cfg->tls_ca_file != NULL && cfg->tls_ca_file[0] != '\0' ?
	    cfg->tls_ca_file : NULL;
	long timeout = (long)cfg->mta_sts_fetch_timeout * 1000L;
	char host[MTASTS_NAME_MAX + 16], url[MTASTS_NAME_MAX + 64];
	char cerr[CURL_ERROR_SIZE], why[256], resolve[MTASTS_NAME_MAX + 1024];
	struct mtasts_body body = { NULL, 0, 0 };
	struct curl_slist *rl = NULL;
	struct mx_list *list = NULL;
	char *ctype = NULL;
	size_t i, a, o;
	long code = 0;
	CURLcode rc;
	CURL *c = NULL;
	int ret = -1;

	*rtype = "sts-policy-fetch-error";
	snprintf(host, sizeof(host), "mta-sts.%s", domain);
	snprintf(url, sizeof(url), "https://%s/.well-known/mta-sts.txt", host);
	/* our resolver (resolver = ...), not the system's */
	if (mx_host(mx, host, MTASTS_HTTPS_PORT, &list, why, sizeof(why)) != MX_OK ||
	    list == NULL) {
		snprintf(err, errlen, "%s: %s", host, why[0] ? why : "no address");
		goto out;
	}
	/* a hostile domain's DNS must not make us fetch from the inside
	 * (loopback, private, metadata addresses), as for delivery */
	if (!cfg->mx_allow_internal && mx_list_drop_internal(list, why, sizeof(why)) > 0 &&
	    list->nhosts == 0) {
		snprintf(err, errlen, "%s: only internal addresses (%s); not fetched", host, why);
		goto out;
	}
	o = (size_t)snprintf(resolve, sizeof(resolve), "%s:%d:", host, MTASTS_HTTPS_PORT);
	for (i = 0; i < list->nhosts; i++)
		for (a = 0; a < list->hosts[i].naddr && o + 64 < sizeof(resolve); a++) {
			const struct sockaddr_storage *ss = &list->hosts[i].addrs[a].ss;
			char ip[INET6_ADDRSTRLEN];

			if (ss->ss_family == AF_INET)
				inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr,
				    ip, sizeof(ip));
			else
				inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr,
				    ip, sizeof(ip));
			o += (size_t)snprintf(resolve + o, sizeof(resolve) - o,
			    ss->ss_family == AF_INET6 ? "%s[%s]" : "%s%s",
			    resolve[o - 1] == ':' ? "" : ",", ip);
		}
	if (resolve[o - 1] == ':') {
		snprintf(err, errlen, "%s: no address", host);
		goto out;
	}
	if ((rl = curl_slist_append(NULL, resolve)) == NULL || (c = curl_easy_init()) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	cerr[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);	/* RFC 8461 3.3 */
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	curl_easy_setopt(c, CURLOPT_RESOLVE, rl);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
	if (ca != NULL)
		curl_easy_setopt(c, CURLOPT_CAINFO, ca);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout / 2);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "otpmail/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, mtasts_write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
		    rc == CURLE_SSL_CONNECT_ERROR)
			*rtype = "sts-webpki-invalid";
		snprintf(err, errlen, "%s: %s", url, body.toobig ? "policy too large" :
		    cerr[0] ? cerr : curl_easy_strerror(rc));
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ctype);
	if (code != 200) {
		snprintf(err, errlen, "%s: HTTP status %ld", url, code);
		goto out;
	}
	if (ctype == NULL || strncasecmp(ctype, "text/plain", 10) != 0 ||
	    (ctype[10] != '\0' && ctype[10] != ';' && ctype[10] != ' ')) {
		*rtype = "sts-policy-invalid";
		snprintf(err, errlen, "%s: media type is not text/plain", url);
		goto out;
	}
	*text = body.buf != NULL ? body.buf : strdup("");
	*len = body.len;
	body.buf = NULL;
	ret = *text != NULL ? 0 : -1;
out:
	free(body.buf);
	if (c != NULL)
		curl_easy_cleanup(c);
	curl_slist_free_all(rl);
	mx_list_free(list);
	return ret;
}

int
mtasts_fetch_policy(struct mx_resolver *mx, const struct config *cfg, const char *domain,
    struct mtasts_policy *pol, const char **rtype, char *why, size_t whylen)
{
	char perr[128], *text = NULL;
	size_t len = 0;
	int rc;

	memset(pol, 0, sizeof(*pol));
	if (strlen(domain) > MTASTS_NAME_MAX - 8 || !mx_domain_valid(domain)) {
		*rtype = "sts-policy-fetch-error";
		snprintf(why, whylen, "bad domain");
		return -1;
	}
	if (mtasts_fetch(mx, cfg, domain, &text, &len, rtype, why, whylen) == -1)
		return -1;
	if ((rc = mtasts_parse(text, len, pol, perr, sizeof(perr))) == -1) {
		*rtype = "sts-policy-invalid";
		snprintf(why, whylen, "https://mta-sts.%s/.well-known/mta-sts.txt: %s",
		    domain, perr);
	}
	free(text);
	return rc;
}

char *
mtasts_policy_text(const struct mtasts_policy *pol)
{
	char *s = NULL, *t;
	size_t i;

	if (asprintf(&s, "version: STSv1\nmode: %s\nmax_age: %ld\n",
	    mtasts_mode_name(pol->mode), pol->max_age) == -1)
		return NULL;
	for (i = 0; i < pol->nmx && i < MTASTS_MX_MAX; i++) {
		if (asprintf(&t, "%smx: %.*s\n", s, MTASTS_NAME_MAX, pol->mx[i]) == -1) {
			free(s);
			return NULL;
		}
		free(s);
		s = t;
	}
	return s;
}

enum mtasts_status
mtasts_get(struct mtasts *m, const char *domain, struct mtasts_policy *out,
    const char **rtype, char *why, size_t whylen)
{
	struct mtasts_entry *e;
	struct mtasts_policy pol;
	char name[MTASTS_NAME_MAX + 16], id[MTASTS_ID_MAX + 1], reason[256];
	char perr[128], **txt = NULL, *text = NULL;
	time_t now = time(NULL);
	enum mx_status ms;
	size_t i, len = 0;
	int nsts = 0, have_cache, found_id = 0, bad_txt = 0;

	*rtype = NULL;
	why[0] = '\0';
	memset(out, 0, sizeof(*out));
	if (m == NULL || strlen(domain) > MTASTS_NAME_MAX - 8 || !mx_domain_valid(domain))
		return MTASTS_ABSENT;
	pthread_mutex_lock(&m->mu);
	e = mtasts_find(m, domain, 1);
	if (e != NULL && e->have && e->pol.expires <= now)
		e->have = 0;			/* lapsed */
	have_cache = e != NULL && e->have;
	if (have_cache && now - e->checked < m->check_interval &&
	    now < e->pol.fetched + e->pol.max_age / 2) {
		*out = e->pol;
		out->from_cache = 1;
		pthread_mutex_unlock(&m->mu);
		return MTASTS_FOUND;
	}
	if (e != NULL && !have_cache && now - e->checked < m->check_interval &&
	    e->checked != 0) {
		pthread_mutex_unlock(&m->mu);
		return MTASTS_ABSENT;		/* looked recently: nothing */
	}
	pthread_mutex_unlock(&m->mu);

	snprintf(name, sizeof(name), "_mta-sts.%s", domain);
	ms = fetch_txt(name, &txt, reason, sizeof(reason));
	for (i = 0; ms == MX_OK && txt[i] != NULL; i++) {
		int r = mtasts_txt_id(txt[i], id, sizeof(id));

		if (r != 1)
			nsts++;
		if (r == 0)
			found_id = 1;
		else if (r == -1)
			bad_txt = 1;
	}
	mx_txt_free(txt);
	if (nsts != 1 || bad_txt)
		found_id = 0;		/* RFC 8461 3.1: several records = none */

	pthread_mutex_lock(&m->mu);
	if ((e = mtasts_find(m, domain, 1)) == NULL) {
		pthread_mutex_unlock(&m->mu);
		return MTASTS_ABSENT;
	}
	e->checked = now;
	have_cache = e->have && e->pol.expires > now;
	if (!found_id) {
		/* No (valid) record: a cached policy stays in force until it
		 * lapses (RFC 8461 5.1) — DNS may be what is under attack. */
		if (have_cache) {
			*out = e->pol;
			out->from_cache = 1;
			pthread_mutex_unlock(&m->mu);
			return MTASTS_FOUND;
		}
		e->have = 0;
		pthread_mutex_unlock(&m->mu);
		if (ms != MX_OK && ms != MX_NXDOMAIN)
			log_msg(LOG_DEBUG, "event=mta_sts domain=%s note=\"TXT lookup: %s\"",
			    domain, reason);
		return MTASTS_ABSENT;
	}
	if (have_cache && strcmp(e->pol.id, id) == 0 &&
	    now < e->pol.fetched + e->pol.max_age / 2) {
		*out = e->pol;
		out->from_cache = 1;
		pthread_mutex_unlock(&m->mu);
		return MTASTS_FOUND;
	}
	pthread_mutex_unlock(&m->mu);

	/* New, changed, or half-way to lapsing: fetch (outside the lock), by
	 * the fetch process; what it parsed is parsed again from its canonical
	 * text, the form the cache file keeps. */
	if (fetch_sts(domain, &pol, rtype, why, whylen) == 0 &&
	    ((text = mtasts_policy_text(&pol)) == NULL ||
	    mtasts_parse(text, (len = strlen(text)), &pol, perr, sizeof(perr)) == -1)) {
		*rtype = "sts-policy-invalid";
		snprintf(why, whylen, "https://mta-sts.%s/.well-known/mta-sts.txt: "
		    "the fetch process's policy: %s", domain, text ? perr : "out of memory");
		free(text);
		text = NULL;
	}
	if (text == NULL) {
		metrics_event("mta_sts_fetch", *rtype);
		pthread_mutex_lock(&m->mu);
		e = mtasts_find(m, domain, 0);
		have_cache = e != NULL && e->have && e->pol.expires > now;
		log_msg(LOG_WARNING, "event=mta_sts_fetch_failed domain=%s result_type=%s "
		    "using=%s error=%s", domain, *rtype, have_cache ? "cache" : "none",
		    why);
		if (have_cache) {
			*out = e->pol;
			out->from_cache = 1;
			pthread_mutex_unlock(&m->mu);
			return MTASTS_FOUND;
		}
		pthread_mutex_unlock(&m->mu);
		return MTASTS_FAILED;
	}
	metrics_event("mta_sts_fetch", "ok");
	snprintf(pol.id, sizeof(pol.id), "%s", id);
	pol.fetched = now;
	pol.expires = now + pol.max_age;
	log_msg(LOG_INFO, "event=mta_sts_policy domain=%s id=%s mode=%s max_age=%ld mx=%zu",
	    domain, pol.id, mtasts_mode_name(pol.mode), pol.max_age, pol.nmx);
	pthread_mutex_lock(&m->mu);
	if ((e = mtasts_find(m, domain, 1)) != NULL) {
		free(e->text);
		e->text = text;
		text = NULL;
		e->pol = pol;
		e->have = 1;
		e->checked = now;
		mtasts_save(m);
	}
	pthread_mutex_unlock(&m->mu);
	free(text);
	*out = pol;
	return MTASTS_FOUND;
}

int
mtasts_configured(const struct config *cfg, const char *domain)
{
	size_t i;

	for (i = 0; i < cfg->ndomain_tls; i++)
		if (strcasecmp(cfg->domain_tls[i].domain, domain) == 0)
			return 1;
	return 0;
}

int
mtasts_for_delivery(const struct config *cfg, const char *state_dir,
    const char *domain, struct mtasts_policy *out)
{
	const char *rtype;
	char why[512];

	if (!cfg->mta_sts || mtasts_configured(cfg, domain))
		return 0;
	switch (mtasts_get(mtasts_shared(cfg, state_dir), domain, out, &rtype,
	    why, sizeof(why))) {
	case MTASTS_FOUND:
		return out->mode != MTASTS_NONE;
	case MTASTS_FAILED:
		/* RFC 8461 5: deliver as without a policy, and report it */
		tlsrpt_record(domain, TLSRPT_STS, NULL, NULL, NULL, rtype);
		return 0;
	default:
		return 0;
	}
}

void
mtasts_refresh(struct mtasts *m)
{
	char doms[MTASTS_REFRESH_MAX][MTASTS_NAME_MAX + 1], why[512];
	struct mtasts_policy pol;
	struct mtasts_entry *e;
	const char *rtype;
	time_t now = time(NULL);
	size_t n = 0, i;

	if (m == NULL)
		return;
	pthread_mutex_lock(&m->mu);
	for (e = m->entries; e != NULL && n < MTASTS_REFRESH_MAX; e = e->next)
		if (e->have && now < e->pol.expires &&
		    now >= e->pol.fetched + e->pol.max_age / 2)
			snprintf(doms[n++], sizeof(doms[0]), "%s", e->domain);
	pthread_mutex_unlock(&m->mu);
	/* mtasts_get refetches what is past half its max_age (and keeps the
	 * cached copy if that fails) */
	for (i = 0; i < n; i++)
		(void)mtasts_get(m, doms[i], &pol, &rtype, why, sizeof(why));
}
