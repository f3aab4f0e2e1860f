/*
 * config_app.c - the "app" key: one line per app, naming its uids and groups
 * and the senders it may use, e.g.
 *
 *   app = shop users=www-shop groups=shopworkers senders=shop.example,noreply@example.org
 *
 * Each app is its own namespace (codes, limits, messages, sandbox mail).  A
 * uid or group in app_users/app_groups that no app line names is an app of
 * its own, "uid:N" (the uid), with any sender: configurations from before
 * app lines work unchanged.
 */
#include <ctype.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/core/config.h"

static int	app_ids(const char *list, int groups, unsigned **ids, size_t *n,
		    char *err, size_t errlen);
static int	app_senders(const char *list, char ***out, char *err, size_t errlen);

static int
app_name_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > CONFIG_APP_NAME_MAX)
		return 0;
	for (i = 0; i < n; i++)
		if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) &&
		    s[i] != '-' && s[i] != '_' && s[i] != '.')
			return 0;
	return 1;
}

static int
app_ids(const char *list, int groups, unsigned **ids, size_t *n, char *err, size_t errlen)
{
	char *copy = strdup(list), *save = NULL, *t, *end;
	unsigned long id;
	void *p;

	if (copy == NULL)
		abort();
	for (t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
		id = strtoul(t, &end, 10);
		if (*t == '\0' || *end != '\0') {
			if (groups) {
				struct group *g = getgrnam(t);
				if (g == NULL) {
					snprintf(err, errlen, "app: no such group \"%s\"", t);
					free(copy);
					return -1;
				}
				id = g->gr_gid;
			} else {
				struct passwd *pw = getpwnam(t);
				if (pw == NULL) {
					snprintf(err, errlen, "app: no such user \"%s\"", t);
					free(copy);
					return -1;
				}
				id = pw->pw_uid;
			}
		}
		if ((p = realloc(*ids, (*n + 1) * sizeof(**ids))) == NULL)
			abort();
		*ids = p;
		(*ids)[(*n)++] = (unsigned)id;
	}
	free(copy);
	return 0;
}

/* "*", a domain, or an address local@domain; no spaces, no quotes. */
static int
app_senders(const char *list, char ***out, char *err, size_t errlen)
{
	char *copy = strdup(list), *save = NULL, *t, **v = NULL;
	size_t n = 0, i;

	if (copy == NULL)
		abort();
	for (t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
		const char *at = strchr(t, '@');

		for (i = 0; t[i]; i++)
			if (t[i] <= ' ' || t[i] == '"' || t[i] == '<' || t[i] == '>' ||
			    (unsigned char)t[i] >= 0x7f)
				break;
		if (t[i] != '\0' || (strcmp(t, "*") != 0 && (t[0] == '@' || t[0] == '.' ||
		    (at != NULL && (strchr(at + 1, '@') != NULL || at[1] == '\0'))))) {
			snprintf(err, errlen, "app: bad sender \"%s\" (a domain, an address "
			    "or *)", t);
			free(copy);
			config_strv_free(v);
			return -1;
		}
		if ((v = realloc(v, (n + 2) * sizeof(*v))) == NULL ||
		    (v[n] = strdup(t)) == NULL)
			abort();
		v[++n] = NULL;
	}
	free(copy);
	*out = v;
	return 0;
}

void
config_strv_free(char **v)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

int
config_app_parse(struct config *c, const char *val, char *err, size_t errlen)
{
	struct app_conf a;
	char *copy = strdup(val), *save = NULL, *t;
	size_t i;
	void *p;

	if (copy == NULL)
		abort();
	memset(&a, 0, sizeof(a));
	t = strtok_r(copy, " \t", &save);
	if (t == NULL || !app_name_ok(t)) {
		snprintf(err, errlen, "app takes \"NAME [users=...] [groups=...] "
		    "[senders=...]\"; NAME is 1-%d of a-z 0-9 . _ -", CONFIG_APP_NAME_MAX);
		goto fail;
	}
	for (i = 0; i < c->napps; i++)
		if (strcmp(c->apps[i].name, t) == 0) {
			snprintf(err, errlen, "app \"%s\" is defined twice", t);
			goto fail;
		}
	if ((a.name = strdup(t)) == NULL)
		abort();
	while ((t = strtok_r(NULL, " \t", &save)) != NULL) {
		if (strncmp(t, "users=", 6) == 0) {
			if (app_ids(t + 6, 0, &a.uids, &a.nuids, err, errlen) == -1)
				goto fail;
		} else if (strncmp(t, "groups=", 7) == 0) {
			if (app_ids(t + 7, 1, &a.gids, &a.ngids, err, errlen) == -1)
				goto fail;
		} else if (strncmp(t, "senders=", 8) == 0) {
			config_strv_free(a.senders);
			a.senders = NULL;
			if (app_senders(t + 8, &a.senders, err, errlen) == -1)
				goto fail;
		} else {
			snprintf(err, errlen, "app %s: unknown attribute \"%.40s\" (users=, "
			    "groups=, senders=)", a.name, t);
			goto fail;
		}
	}
	if (a.nuids == 0 && a.ngids == 0) {
		snprintf(err, errlen, "app %s names no users= or groups=", a.name);
		goto fail;
	}
	if ((p = realloc(c->apps, (c->napps + 1) * sizeof(*c->apps))) == NULL)
		abort();
	c->apps = p;
	c->apps[c->napps++] = a;
	free(copy);
	return 0;
fail:
	free(copy);
	free(a.name);
	free(a.uids);
	free(a.gids);
	config_strv_free(a.senders);
	return -1;
}

void
config_app_print(const struct config *c, FILE *f, const char *key)
{
	size_t i, j;

	for (i = 0; i < c->napps; i++) {
		const struct app_conf *a = &c->apps[i];

		fprintf(f, "%s = %s", key, a->name);
		for (j = 0; j < a->nuids; j++)
			fprintf(f, "%s%u", j ? "," : " users=", a->uids[j]);
		for (j = 0; j < a->ngids; j++)
			fprintf(f, "%s%u", j ? "," : " groups=", a->gids[j]);
		for (j = 0; a->senders && a->senders[j]; j++)
			fprintf(f, "%s%s", j ? "," : " senders=", a->senders[j]);
		fprintf(f, "\n");
	}
}

void
config_apps_free(struct config *c)
{
	size_t i;

	for (i = 0; i < c->napps; i++) {
		free(c->apps[i].name);
		free(c->apps[i].uids);
		free(c->apps[i].gids);
		config_strv_free(c->apps[i].senders);
	}
	free(c->apps);
	c->apps = NULL;
	c->napps = 0;
	for (i = 0; i < c->nwebhooks; i++) {
		free(c->webhooks[i].app);
		free(c->webhooks[i].url);
		free(c->webhooks[i].secret_file);
	}
	free(c->webhooks);
	c->webhooks = NULL;
	c->nwebhooks = 0;
}

/*
 * app_webhook = NAME https://host[:port]/path SECRET_FILE: the app's events
 * are POSTed there (agent/events/webhook.c).  Only the config names a
 * webhook: no app can point one anywhere.  NAME is an app line's name or
 * an implicit app's "uid:N".
 */
int
config_webhook_parse(struct config *c, const char *val, char *err, size_t errlen)
{
	char *copy = strdup(val), *save = NULL, *w[4];
	struct app_webhook *wh;
	size_t i, n = 0;
	void *p;

	if (copy == NULL)
		abort();
	for (w[n] = strtok_r(copy, " \t", &save); w[n] != NULL && n < 3;
	    w[n] = strtok_r(NULL, " \t", &save))
		n++;
	if (n != 3 || w[3] != NULL) {
		snprintf(err, errlen, "app_webhook: want \"APP https://URL SECRET_FILE\"");
		goto fail;
	}
	if (!app_name_ok(w[0]) && (strncmp(w[0], "uid:", 4) != 0 || w[0][4] == '\0' ||
	    strspn(w[0] + 4, "0123456789") != strlen(w[0] + 4))) {
		snprintf(err, errlen, "app_webhook: bad app name \"%s\"", w[0]);
		goto fail;
	}
	if (strncasecmp(w[1], "https://", 8) != 0 || w[1][8] == '\0' ||
	    strlen(w[1]) > 2048 || strpbrk(w[1], "\"'<>\\") != NULL) {
		snprintf(err, errlen, "app_webhook: the URL must be https://... (got \"%.64s\")",
		    w[1]);
		goto fail;
	}
	if (w[2][0] != '/') {
		snprintf(err, errlen, "app_webhook: the secret file must be an absolute path");
		goto fail;
	}
	for (i = 0; i < c->nwebhooks; i++)
		if (strcmp(c->webhooks[i].app, w[0]) == 0) {
			snprintf(err, errlen, "app_webhook: app %s has a webhook already", w[0]);
			goto fail;
		}
	if ((p = realloc(c->webhooks, (c->nwebhooks + 1) * sizeof(*wh))) == NULL)
		abort();
	c->webhooks = p;
	wh = &c->webhooks[c->nwebhooks++];
	if ((wh->app = strdup(w[0])) == NULL || (wh->url = strdup(w[1])) == NULL ||
	    (wh->secret_file = strdup(w[2])) == NULL)
		abort();
	free(copy);
	return 0;
fail:
	free(copy);
	return -1;
}

void
config_webhook_print(const struct config *c, FILE *f, const char *key)
{
	size_t i;

	for (i = 0; i < c->nwebhooks; i++)
		fprintf(f, "%s = %s %s %s\n", key, c->webhooks[i].app, c->webhooks[i].url,
		    c->webhooks[i].secret_file);
}

static int
app_has(const unsigned *ids, size_t n, unsigned id)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (ids[i] == id)
			return 1;
	return 0;
}

const struct app_conf *
config_app_for(const struct config *c, uid_t uid, const gid_t *groups, size_t ng)
{
	size_t i, j;

	for (i = 0; i < c->napps; i++)
		if (app_has(c->apps[i].uids, c->apps[i].nuids, (unsigned)uid))
			return &c->apps[i];
	for (i = 0; i < c->napps; i++)
		for (j = 0; j < ng; j++)
			if (app_has(c->apps[i].gids, c->apps[i].ngids, (unsigned)groups[j]))
				return &c->apps[i];
	return NULL;
}

const struct app_conf *
config_app_named(const struct config *c, const char *name)
{
	size_t i;

	for (i = 0; i < c->napps; i++)
		if (strcmp(c->apps[i].name, name) == 0)
			return &c->apps[i];
	return NULL;
}

int
config_app_sender_ok(const struct app_conf *a, const char *addr)
{
	const char *at = strrchr(addr, '@'), *dom;
	size_t i;

	if (a == NULL)
		return 1;	/* an implicit app: any sender, as before app lines */
	dom = at ? at + 1 : "";
	for (i = 0; a->senders && a->senders[i]; i++) {
		const char *s = a->senders[i];

		if (strcmp(s, "*") == 0)
			return 1;
		if (strchr(s, '@') != NULL ? strcasecmp(s, addr) == 0 :
		    (at != NULL && strcasecmp(s, dom) == 0))
			return 1;
	}
	return 0;
}
