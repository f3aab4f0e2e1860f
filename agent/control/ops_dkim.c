/*
 * ops_dkim.c - dkim.records (the DKIM TXT records of the loaded keys plus
 * suggested SPF and DMARC records, as JSON and as zone-file text),
 * dkim.keygen (a new key file, mode 0600, owned by the daemon's user) and
 * dkim.check (the published TXT records, looked up by the fetch process
 * through the configured resolver, compared with the keys in use).
 */
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/otpmaild.h"
#include "agent/control/ops.h"
#include "agent/delivery/delivery.h"
#include "dkim/dkim_sign.h"

#define DKIM_OPS_TXT_CHUNK	255	/* one <character-string> of a TXT record */
#define DKIM_OPS_NAME_MAX	253
#define DKIM_OPS_SELECTOR_MAX	63

static int	 dkim_ops_name_ok(const char *, size_t, int);
static void	 dkim_ops_append(char **, size_t *, const char *);
static void	 dkim_ops_zone_line(char **, size_t *, const char *, const char *);
static void	 dkim_ops_add(json_t *, char **, size_t *, const char *, const char *,
		    const char *, const char *, const char *);
static char	*dkim_ops_tag(const char *, const char *);
static int	 dkim_ops_mkdir(const char *, uid_t, gid_t, int);

/* Domain (dots) or selector: LDH labels, '_' allowed, no empty label. */
static int
dkim_ops_name_ok(const char *s, size_t max, int dots)
{
	size_t len = strlen(s), i;

	if (len == 0 || len > max || s[0] == '.' || s[len - 1] == '.' ||
	    s[0] == '-')
		return 0;
	for (i = 0; i < len; i++) {
		char c = s[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_')
			continue;
		if (c == '.' && dots && s[i + 1] != '.')
			continue;
		return 0;
	}
	return 1;
}

/* Appends text to *zone (a malloc'd string, length *zlen). */
static void
dkim_ops_append(char **zone, size_t *zlen, const char *text)
{
	size_t len = strlen(text);
	char *n;

	if ((n = realloc(*zone, *zlen + len + 1)) == NULL)
		return;
	memcpy(n + *zlen, text, len + 1);
	*zone = n;
	*zlen += len;
}

/* NAME IN TXT "part" "part": values longer than 255 bytes are split. */
static void
dkim_ops_zone_line(char **zone, size_t *zlen, const char *name, const char *value)
{
	char part[DKIM_OPS_TXT_CHUNK + 4];
	size_t vlen = strlen(value), off = 0;

	dkim_ops_append(zone, zlen, name);
	dkim_ops_append(zone, zlen, "\tIN\tTXT\t");
	do {
		snprintf(part, sizeof(part), "%s\"%.*s\"", off ? " " : "",
		    DKIM_OPS_TXT_CHUNK, value + off);
		dkim_ops_append(zone, zlen, part);
		off += DKIM_OPS_TXT_CHUNK;
	} while (off < vlen);
	dkim_ops_append(zone, zlen, "\n");
}

static void
dkim_ops_add(json_t *list, char **zone, size_t *zlen, const char *domain,
    const char *name, const char *value, const char *kind, const char *note)
{
	json_t *o;

	o = json_pack("{s:s, s:s, s:s, s:s, s:s}", "domain", domain, "name", name,
	    "type", "TXT", "value", value, "kind", kind);
	if (o == NULL)
		return;
	if (note != NULL)
		json_object_set_new(o, "note", json_string(note));
	json_array_append_new(list, o);
	dkim_ops_zone_line(zone, zlen, name, value);
}

json_t *
op_dkim_records(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct dkim_key_info ki, kj;
	const char *only = NULL;
	json_t *err = NULL, *r, *list;
	char *zone = NULL, *name = NULL, *value = NULL, *note = NULL, *line = NULL;
	size_t zlen = 0, i, j, n;

	if (req_str(req, "domain", 0, DKIM_OPS_NAME_MAX, &only, &err) == -1)
		return err;
	list = json_array();
	if ((zone = strdup("")) == NULL) {
		json_decref(list);
		return reply_error("unavailable", "out of memory");
	}
	pthread_rwlock_rdlock(&d->reload_lock);
	n = dkim_signer_nkeys(d->dkim);
	for (i = 0; i < n; i++) {
		if (dkim_signer_key(d->dkim, i, &ki) == -1)
			break;
		if (only != NULL && strcasecmp(only, ki.domain) != 0)
			continue;
		if (asprintf(&name, "%s._domainkey.%s.", ki.selector, ki.domain) == -1)
			break;
		if (asprintf(&line, "; DKIM %s key %s (%d bits), file %s\n",
		    dkim_alg_name(ki.alg), ki.selector, ki.bits, ki.keyfile) != -1) {
			dkim_ops_append(&zone, &zlen, line);
			free(line);
		}
		dkim_ops_add(list, &zone, &zlen, ki.domain, name, ki.txt, "dkim", NULL);
		json_object_set_new(json_array_get(list, json_array_size(list) - 1),
		    "selector", json_string(ki.selector));
		json_object_set_new(json_array_get(list, json_array_size(list) - 1),
		    "algorithm", json_string(dkim_alg_name(ki.alg)));
		free(name);
		name = NULL;

		/* SPF and DMARC once per domain, after its last key */
		for (j = i + 1; j < n; j++)
			if (dkim_signer_key(d->dkim, j, &kj) == 0 &&
			    strcmp(kj.domain, ki.domain) == 0)
				break;
		if (j < n)
			continue;
		if (d->hostname == NULL || *d->hostname == '\0') {
			if (asprintf(&value, "v=spf1 mx -all") == -1)
				value = NULL;
		} else if (asprintf(&value, "v=spf1 mx a:%s -all", d->hostname) == -1)
			value = NULL;
		if (value != NULL && asprintf(&name, "%s.", ki.domain) != -1 &&
		    asprintf(&note, "suggestion: allows the domain's MX hosts and "
		    "this host (%s), which delivers directly; add every other "
		    "host or relay (include:) that sends for %s, and merge with "
		    "an existing SPF record (only one is allowed)",
		    d->hostname ? d->hostname : "", ki.domain) != -1)
			dkim_ops_add(list, &zone, &zlen, ki.domain, name, value,
			    "spf", note);
		free(name);
		free(value);
		free(note);
		name = value = note = NULL;
		if (asprintf(&name, "_dmarc.%s.", ki.domain) != -1 &&
		    asprintf(&value, "v=DMARC1; p=none; rua=mailto:dmarc@%s",
		    ki.domain) != -1)
			dkim_ops_add(list, &zone, &zlen, ki.domain, name, value,
			    "dmarc", "suggestion: start with p=none and read the "
			    "reports sent to rua, then move to quarantine or reject; "
			    "the rua mailbox must exist");
		free(name);
		free(value);
		name = value = NULL;
	}
	pthread_rwlock_unlock(&d->reload_lock);

	r = reply_ok();
	json_object_set_new(r, "records", list);
	json_object_set_new(r, "zone", json_string(zone ? zone : ""));
	if (json_array_size(list) == 0)
		json_object_set_new(r, "note", json_string(only ?
		    "no DKIM key is configured for this domain" :
		    "no DKIM key is configured (dkim_key in the config)"));
	free(zone);
	return r;
}

/* mkdir -p of one level, given to the daemon's user when we are root. */
static int
dkim_ops_mkdir(const char *dir, uid_t uid, gid_t gid, int chown_it)
{
	if (mkdir(dir, 0700) == -1) {
		if (errno != EEXIST)
			return -1;
		return 0;
	}
	if (chown_it && chown(dir, uid, gid) == -1)
		return -1;
	return 0;
}

json_t *
op_dkim_keygen(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	const char *domain = NULL, *selector = NULL, *algs = NULL, *file = NULL;
	json_t *err = NULL, *r;
	struct passwd *pw = NULL;
	char errbuf[512], dombuf[DKIM_OPS_NAME_MAX + 1];
	char *path = NULL, *dir = NULL, *txt = NULL, *name = NULL, *zone = NULL;
	char *cfgline = NULL;
	size_t zlen = 0, i;
	long bits = 0;
	int alg = DKIM_ALG_RSA_SHA256, chown_it = 0;

	if (req_str(req, "domain", 1, DKIM_OPS_NAME_MAX, &domain, &err) == -1 ||
	    req_str(req, "selector", 1, DKIM_OPS_SELECTOR_MAX, &selector, &err) == -1 ||
	    req_str(req, "algorithm", 0, 32, &algs, &err) == -1 ||
	    req_int(req, "bits", 0, 1024, 8192, &bits, &err) == -1 ||
	    req_str(req, "file", 0, 1024, &file, &err) == -1)
		return err;
	if (!dkim_ops_name_ok(domain, DKIM_OPS_NAME_MAX, 1) || !strchr(domain, '.'))
		return reply_bad_field("domain", "\"%s\" is not a domain name", domain);
	if (!dkim_ops_name_ok(selector, DKIM_OPS_SELECTOR_MAX, 1))
		return reply_bad_field("selector", "a selector is letters, digits, "
		    "'-', '_' and dots");
	if (algs != NULL && (alg = dkim_alg_parse(algs)) == -1)
		return reply_bad_field("algorithm", "algorithm is rsa or ed25519");
	if (alg == DKIM_ALG_ED25519_SHA256 && bits != 0)
		return reply_bad_field("bits", "Ed25519 keys have no size to choose");
	if (file != NULL && file[0] != '/')
		return reply_bad_field("file", "the key file must be an absolute path");
	for (i = 0; domain[i] && i < sizeof(dombuf) - 1; i++)
		dombuf[i] = (char)((domain[i] >= 'A' && domain[i] <= 'Z') ?
		    domain[i] + 32 : domain[i]);
	dombuf[i] = '\0';

	/* As root (no user to drop to, or not yet), give the files to that user. */
	if (geteuid() == 0 && d->cfg->user != NULL && *d->cfg->user != '\0') {
		if ((pw = getpwnam(d->cfg->user)) == NULL)
			return reply_error("unavailable", "user %s does not exist",
			    d->cfg->user);
		chown_it = pw->pw_uid != 0;
	}
	if (file == NULL) {
		if (asprintf(&dir, "%s/dkim", d->state_dir) == -1 ||
		    asprintf(&path, "%s/%s.%s.key", dir, dombuf, selector) == -1) {
			r = reply_error("unavailable", "out of memory");
			goto out;
		}
		if (dkim_ops_mkdir(dir, chown_it ? pw->pw_uid : 0,
		    chown_it ? pw->pw_gid : 0, chown_it) == -1) {
			r = reply_error("unavailable", "cannot create %s: %s", dir,
			    strerror(errno));
			goto out;
		}
		file = path;
	}
	if (dkim_keygen(alg, (int)bits, file, &txt, errbuf, sizeof(errbuf)) == -1) {
		r = reply_error(strstr(errbuf, "exists") ? "conflict" : "unavailable",
		    "%s", errbuf);
		goto out;
	}
	if (chown_it && chown(file, pw->pw_uid, pw->pw_gid) == -1) {
		r = reply_error("unavailable", "key written to %s but chown to %s "
		    "failed: %s", file, d->cfg->user, strerror(errno));
		goto out;
	}
	if (asprintf(&name, "%s._domainkey.%s.", selector, dombuf) == -1 ||
	    asprintf(&cfgline, "dkim_key = %s %s %s %s", dombuf, selector,
	    dkim_alg_name(alg), file) == -1 || (zone = strdup("")) == NULL) {
		r = reply_error("unavailable", "out of memory");
		goto out;
	}
	dkim_ops_zone_line(&zone, &zlen, name, txt);
	r = reply_ok();
	json_object_set_new(r, "domain", json_string(dombuf));
	json_object_set_new(r, "selector", json_string(selector));
	json_object_set_new(r, "algorithm", json_string(dkim_alg_name(alg)));
	if (alg == DKIM_ALG_RSA_SHA256)
		json_object_set_new(r, "bits", json_integer(bits ? bits : 2048));
	json_object_set_new(r, "file", json_string(file));
	json_object_set_new(r, "record", json_pack("{s:s, s:s, s:s, s:s, s:s}",
	    "domain", dombuf, "name", name, "type", "TXT", "value", txt,
	    "kind", "dkim"));
	json_object_set_new(r, "zone", json_string(zone));
	json_object_set_new(r, "config_line", json_string(cfgline));
	json_object_set_new(r, "note", json_string("publish the record, add the "
	    "config line, then reload (SIGHUP) to sign with the key"));
	log_msg(LOG_INFO, "event=dkim_keygen domain=%s selector=%s algorithm=%s "
	    "file=%s uid=%u", dombuf, selector, dkim_alg_name(alg), file,
	    (unsigned)p->uid);
out:
	free(path);
	free(dir);
	free(txt);
	free(name);
	free(zone);
	free(cfgline);
	return r;
}

/* The value of tag t in a tag=value list, whitespace removed (malloc'd). */
static char *
dkim_ops_tag(const char *rec, const char *t)
{
	const char *p = rec, *e;
	size_t tl = strlen(t);
	char *v, *o;

	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == ';')
			p++;
		e = p + strcspn(p, ";");
		if ((size_t)(e - p) > tl && strncmp(p, t, tl) == 0) {
			const char *q = p + tl;

			while (q < e && (*q == ' ' || *q == '\t'))
				q++;
			if (q < e && *q == '=') {
				if ((v = malloc((size_t)(e - q))) == NULL)
					return NULL;
				for (o = v, q++; q < e; q++)
					if (*q != ' ' && *q != '\t' && *q != '\r' &&
					    *q != '\n')
						*o++ = *q;
				*o = '\0';
				return v;
			}
		}
		p = e;
	}
	return NULL;
}

json_t *
op_dkim_check(struct otpmaild *d, const struct ctl_peer *p, json_t *req)
{
	struct dkim_key_info ki, *keys;
	const char *only = NULL;
	json_t *err = NULL, *r, *list, *o;
	char *name = NULL, *want = NULL, *got = NULL, **txt = NULL, why[512];
	size_t i, j, n, nk = 0, nmatch = 0, nbad = 0;
	enum mx_status st;

	if (req_str(req, "domain", 0, DKIM_OPS_NAME_MAX, &only, &err) == -1)
		return err;
	list = json_array();

	/* copy the keys out: lookups take seconds and must not hold off a reload */
	pthread_rwlock_rdlock(&d->reload_lock);
	n = dkim_signer_nkeys(d->dkim);
	keys = calloc(n ? n : 1, sizeof(*keys));
	for (i = 0; keys != NULL && i < n; i++) {
		if (dkim_signer_key(d->dkim, i, &ki) == -1)
			break;
		keys[nk].domain = strdup(ki.domain);
		keys[nk].selector = strdup(ki.selector);
		keys[nk].txt = strdup(ki.txt);
		keys[nk].alg = ki.alg;
		nk++;
	}
	pthread_rwlock_unlock(&d->reload_lock);
	if (keys == NULL) {
		json_decref(list);
		return reply_error("unavailable", "out of memory");
	}
	for (i = 0; i < nk; i++) {
		const char *status, *detail = NULL;

		ki = keys[i];
		if (ki.domain == NULL || ki.selector == NULL || ki.txt == NULL)
			continue;
		if (only != NULL && strcasecmp(only, ki.domain) != 0)
			continue;
		if (asprintf(&name, "%s._domainkey.%s.", ki.selector, ki.domain) == -1)
			break;
		want = dkim_ops_tag(ki.txt, "p");
		/* the lookup is the fetch process's: no DNS answer is parsed here */
		st = fetch_txt(name, &txt, why, sizeof(why));
		if (st == MX_NXDOMAIN || (st == MX_OK && txt[0] == NULL)) {
			status = "missing";
			detail = st == MX_NXDOMAIN ? "no such name" : "no TXT record";
		} else if (st != MX_OK) {
			status = "error";
			detail = why[0] != '\0' ? why : "DNS failure";
		} else {
			status = "mismatch";
			detail = "the published key is not the key in use";
			for (j = 0; txt[j] != NULL; j++) {
				free(got);
				got = dkim_ops_tag(txt[j], "p");
				if (got != NULL && want != NULL && strcmp(got, want) == 0) {
					status = "match";
					detail = NULL;
					break;
				}
				if (got != NULL && *got == '\0')
					detail = "the published record revokes the key (empty p=)";
			}
		}
		o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "domain", ki.domain,
		    "selector", ki.selector, "algorithm", dkim_alg_name(ki.alg),
		    "name", name, "status", status, "expected", ki.txt);
		if (o != NULL) {
			if (detail != NULL)
				json_object_set_new(o, "detail", json_string(detail));
			if (txt != NULL && txt[0] != NULL)
				json_object_set_new(o, "published", json_string(txt[0]));
			json_array_append_new(list, o);
		}
		if (strcmp(status, "match") == 0)
			nmatch++;
		else
			nbad++;
		mx_txt_free(txt);
		txt = NULL;
		free(name);
		free(want);
		free(got);
		name = want = got = NULL;
	}
	for (i = 0; i < nk; i++) {
		free((char *)keys[i].domain);
		free((char *)keys[i].selector);
		free((char *)keys[i].txt);
	}
	free(keys);

	r = reply_ok();
	json_object_set_new(r, "keys", list);
	json_object_set_new(r, "match", json_integer((json_int_t)nmatch));
	json_object_set_new(r, "problems", json_integer((json_int_t)nbad));
	if (json_array_size(list) == 0)
		json_object_set_new(r, "note", json_string(
		    "no DKIM key is configured (dkim_key in the config)"));
	return r;
}
