/*
 * sign.c - the DKIM signer: one DKIM_LIB shared by all threads and the keys
 * loaded once at start; per message, the From domain picks the keys (the
 * nearest parent domain with keys), and each key gets its own DKIM handle
 * fed the same header fields and body.  libopendkim parses the in-memory
 * PEM itself at dkim_eom; nothing touches the disk per message.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <opendkim/dkim.h>

#include "dkim/dkim_int.h"

#define DKIM_SIGN_MAX_HEADERS	1000	/* fields in one message */
#define DKIM_SIGN_MAX_DOMAIN	253
#define DKIM_SIGN_MAX_SELECTOR	63
#define DKIM_SIGN_HDRNAME	"DKIM-Signature: "

struct dkim_signer {
	DKIM_LIB	*lib;
	struct dkim_key	*keys;
	size_t		 nkeys;
	dkim_canon_t	 hcanon;
	dkim_canon_t	 bcanon;
};

struct dkim_field {
	const char	*p;		/* "Name: value" with folding, no final EOL */
	size_t		 len;
};

/*
 * What libopendkim allocates for one DKIM handle (its memory closure).
 * libopendkim 2.11 never frees the key context of an Ed25519 signature;
 * whatever the handle still holds after dkim_free is freed here.
 */
struct dkim_arena {
	void		**p;
	size_t		 n;
	size_t		 cap;
};

struct dkim_buf {
	char		*p;
	size_t		 len;
	size_t		 cap;
};

static const char *const dkim_sign_default_headers[] = {
	"from", "to", "subject", "date", "message-id", "mime-version",
	"content-type", "content-transfer-encoding", "reply-to", "cc",
	"in-reply-to", "references", "auto-submitted", "list-unsubscribe",
	"list-unsubscribe-post", "feedback-id", NULL,
};
static const char *const dkim_sign_default_oversign[] = {
	"from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post", NULL,
};

static int	 dkim_sign_name_ok(const char *, int);
static int	 dkim_sign_set_headers(DKIM_LIB *, int, const char *const *,
		    const char *const *, char *, size_t);
static int	 dkim_sign_split(const char *, size_t, struct dkim_field **,
		    size_t *, const char **, size_t *, char *, size_t);
static int	 dkim_sign_from_domain(const char *, size_t, char *, size_t);
static int	 dkim_sign_one(struct dkim_signer *, const struct dkim_key *,
		    const struct dkim_field *, size_t, const char *, size_t,
		    struct dkim_buf *, char *, size_t);
static int	 dkim_buf_add(struct dkim_buf *, const char *, size_t);
static void	*dkim_arena_malloc(void *, size_t);
static void	 dkim_arena_free(void *, void *);
static size_t	 dkim_arena_release(struct dkim_arena *);

static unsigned long dkim_arena_reclaimed;	/* tests: blocks freed after dkim_free */
static pthread_mutex_t dkim_arena_lock = PTHREAD_MUTEX_INITIALIZER;

static void *
dkim_arena_malloc(void *closure, size_t len)
{
	struct dkim_arena *a = closure;
	void **n, *p;
	size_t cap;

	if ((p = malloc(len)) == NULL || a == NULL)
		return p;			/* library-wide memory: not tracked */
	if (a->n == a->cap) {
		cap = a->cap ? a->cap * 2 : 64;
		if ((n = realloc(a->p, cap * sizeof(*n))) == NULL) {
			free(p);
			return NULL;
		}
		a->p = n;
		a->cap = cap;
	}
	a->p[a->n++] = p;
	return p;
}

static void
dkim_arena_free(void *closure, void *p)
{
	struct dkim_arena *a = closure;
	size_t i;

	if (p == NULL)
		return;
	for (i = a ? a->n : 0; i > 0; i--) {	/* recent blocks die first */
		if (a->p[i - 1] == p) {
			a->p[i - 1] = a->p[--a->n];
			break;
		}
	}
	free(p);
}

static size_t
dkim_arena_release(struct dkim_arena *a)
{
	size_t i, n = a->n;

	for (i = 0; i < a->n; i++)
		free(a->p[i]);
	free(a->p);
	memset(a, 0, sizeof(*a));
	if (n > 0) {
		pthread_mutex_lock(&dkim_arena_lock);
		dkim_arena_reclaimed += n;
		pthread_mutex_unlock(&dkim_arena_lock);
	}
	return n;
}

unsigned long
dkim_sign_reclaimed(void)
{
	unsigned long n;

	pthread_mutex_lock(&dkim_arena_lock);
	n = dkim_arena_reclaimed;
	pthread_mutex_unlock(&dkim_arena_lock);
	return n;
}

static int
dkim_buf_add(struct dkim_buf *b, const char *p, size_t len)
{
	char *n;
	size_t cap;

	if (b->len + len + 1 > b->cap) {
		cap = b->cap ? b->cap : 512;
		while (cap < b->len + len + 1)
			cap *= 2;
		if ((n = realloc(b->p, cap)) == NULL)
			return -1;
		b->p = n;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, len);
	b->len += len;
	b->p[b->len] = '\0';
	return 0;
}

/* Domain (dot allowed) or selector label syntax: letters, digits, - _ . */
static int
dkim_sign_name_ok(const char *s, int maxlen)
{
	size_t len = strlen(s), i;

	if (len == 0 || len > (size_t)maxlen || s[0] == '.' || s[len - 1] == '.')
		return 0;
	for (i = 0; i < len; i++) {
		if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_' &&
		    s[i] != '.')
			return 0;
		if (s[i] == '.' && s[i + 1] == '.')
			return 0;
	}
	return 1;
}

/*
 * The signed list always holds From and every oversigned name (an
 * oversigned field that is not signed would be meaningless).
 */
static int
dkim_sign_set_headers(DKIM_LIB *lib, int opt, const char *const *names,
    const char *const *extra, char *err, size_t errlen)
{
	const char **list;
	size_t n = 0, i, j, max = 2;
	int rc = -1;

	for (i = 0; names[i] != NULL; i++)
		max++;
	for (i = 0; extra != NULL && extra[i] != NULL; i++)
		max++;
	if ((list = calloc(max, sizeof(*list))) == NULL) {
		snprintf(err, errlen, "dkim: out of memory");
		return -1;
	}
	for (i = 0; names[i] != NULL; i++) {
		if (!dkim_sign_name_ok(names[i], 128) || strchr(names[i], '.')) {
			snprintf(err, errlen, "dkim: bad header name \"%.64s\"",
			    names[i]);
			goto out;
		}
		list[n++] = names[i];
	}
	for (i = 0; extra != NULL && extra[i] != NULL; i++) {
		for (j = 0; j < n; j++)
			if (strcasecmp(list[j], extra[i]) == 0)
				break;
		if (j == n)
			list[n++] = extra[i];
	}
	if (opt == DKIM_OPTS_SIGNHDRS) {
		for (j = 0; j < n; j++)
			if (strcasecmp(list[j], "from") == 0)
				break;
		if (j == n)
			list[n++] = "from";
	}
	list[n] = NULL;
	/* the size must be sizeof(char **) (LIBNOTES) */
	if (dkim_options(lib, DKIM_OP_SETOPT, opt, n ? list : NULL,
	    sizeof(char **)) != DKIM_STAT_OK) {
		snprintf(err, errlen, "dkim: libopendkim refused the %s header list",
		    opt == DKIM_OPTS_SIGNHDRS ? "signed" : "oversigned");
		goto out;
	}
	rc = 0;
out:
	free(list);
	return rc;
}

struct dkim_signer *
dkim_signer_new(const struct dkim_params *prm, char *err, size_t errlen)
{
	struct dkim_signer *s;
	const char *const *sign, *const *over;
	unsigned int flags;
	uint64_t fixed;
	size_t i, j;
	char *p;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "dkim: out of memory");
		return NULL;
	}
	s->hcanon = prm->relaxed_header ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	s->bcanon = prm->relaxed_body ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE;
	if ((s->lib = dkim_init(dkim_arena_malloc, dkim_arena_free)) == NULL) {
		snprintf(err, errlen, "dkim: libopendkim initialization failed");
		goto fail;
	}
	/* Bare LF in a body is signed as the CRLF it becomes on the wire. */
	flags = DKIM_LIBFLAGS_FIXCRLF;
	if (dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_FLAGS, &flags,
	    sizeof(flags)) != DKIM_STAT_OK) {
		snprintf(err, errlen, "dkim: cannot set library flags");
		goto fail;
	}
	sign = prm->sign_headers ? prm->sign_headers : dkim_sign_default_headers;
	over = prm->oversign_headers ? prm->oversign_headers :
	    dkim_sign_default_oversign;
	if (dkim_sign_set_headers(s->lib, DKIM_OPTS_SIGNHDRS, sign, over, err,
	    errlen) == -1)
		goto fail;
	if (over[0] != NULL && dkim_sign_set_headers(s->lib,
	    DKIM_OPTS_OVERSIGNHDRS, over, NULL, err, errlen) == -1)
		goto fail;
	if (prm->fixed_time > 0) {
		fixed = (uint64_t)prm->fixed_time;
		if (dkim_options(s->lib, DKIM_OP_SETOPT, DKIM_OPTS_FIXEDTIME,
		    &fixed, sizeof(fixed)) != DKIM_STAT_OK) {
			snprintf(err, errlen, "dkim: cannot set the fixed time");
			goto fail;
		}
	}

	if (prm->nkeys > 0 &&
	    (s->keys = calloc(prm->nkeys, sizeof(*s->keys))) == NULL) {
		snprintf(err, errlen, "dkim: out of memory");
		goto fail;
	}
	for (i = 0; i < prm->nkeys; i++) {
		const struct dkim_key_conf *kc = &prm->keys[i];
		struct dkim_key *k = &s->keys[i];

		if (kc->domain == NULL || kc->selector == NULL || kc->keyfile == NULL) {
			snprintf(err, errlen, "dkim key %zu: domain, selector and "
			    "key file are required", i + 1);
			goto fail;
		}
		if (!dkim_sign_name_ok(kc->domain, DKIM_SIGN_MAX_DOMAIN) ||
		    strchr(kc->domain, '.') == NULL) {
			snprintf(err, errlen, "dkim key %s: bad domain \"%.253s\"",
			    kc->keyfile, kc->domain);
			goto fail;
		}
		if (!dkim_sign_name_ok(kc->selector, DKIM_SIGN_MAX_SELECTOR)) {
			snprintf(err, errlen, "dkim key %s: bad selector \"%.63s\"",
			    kc->keyfile, kc->selector);
			goto fail;
		}
		if (kc->alg != DKIM_ALG_RSA_SHA256 &&
		    kc->alg != DKIM_ALG_ED25519_SHA256) {
			snprintf(err, errlen, "dkim key %s: unknown algorithm",
			    kc->keyfile);
			goto fail;
		}
		for (j = 0; j < i; j++) {
			if (strcasecmp(s->keys[j].domain, kc->domain) == 0 &&
			    strcasecmp(s->keys[j].selector, kc->selector) == 0) {
				snprintf(err, errlen, "dkim key %s: selector %s of "
				    "%s is configured twice", kc->keyfile,
				    kc->selector, kc->domain);
				goto fail;
			}
		}
		if (dkim_key_load(k, kc->keyfile, kc->alg, prm->check_key_modes,
		    err, errlen) == -1)
			goto fail;
		s->nkeys = i + 1;
		if (dkim_keycache_add(k) == -1) {
			dkim_key_clear(k);
			s->nkeys = i;
			snprintf(err, errlen, "dkim: out of memory");
			goto fail;
		}
		if ((k->domain = strdup(kc->domain)) == NULL ||
		    (k->selector = strdup(kc->selector)) == NULL) {
			snprintf(err, errlen, "dkim: out of memory");
			goto fail;
		}
		for (p = k->domain; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	}
	s->nkeys = prm->nkeys;
	return s;
fail:
	dkim_signer_free(s);
	return NULL;
}

void
dkim_signer_free(struct dkim_signer *s)
{
	size_t i;

	if (s == NULL)
		return;
	for (i = 0; i < s->nkeys; i++) {
		dkim_keycache_remove(&s->keys[i]);
		dkim_key_clear(&s->keys[i]);
	}
	free(s->keys);
	if (s->lib != NULL)
		dkim_close(s->lib);
	free(s);
}

size_t
dkim_signer_nkeys(const struct dkim_signer *s)
{
	return s != NULL ? s->nkeys : 0;
}

int
dkim_signer_key(const struct dkim_signer *s, size_t i, struct dkim_key_info *ki)
{
	if (s == NULL || i >= s->nkeys)
		return -1;
	ki->domain = s->keys[i].domain;
	ki->selector = s->keys[i].selector;
	ki->alg = s->keys[i].alg;
	ki->keyfile = s->keys[i].keyfile;
	ki->bits = s->keys[i].bits;
	ki->txt = s->keys[i].txt;
	return 0;
}

/*
 * Splits the header section into fields (with their folding, without the
 * final line end) and finds the body.  A message without an empty line is
 * all header and has an empty body.
 */
static int
dkim_sign_split(const char *msg, size_t len, struct dkim_field **fieldsp,
    size_t *nfieldsp, const char **body, size_t *bodylen, char *err,
    size_t errlen)
{
	struct dkim_field *f;
	const char *p = msg, *end = msg + len, *eol, *colon;
	size_t n = 0, linelen;

	*fieldsp = NULL;
	*nfieldsp = 0;
	*body = end;
	*bodylen = 0;
	if ((f = calloc(DKIM_SIGN_MAX_HEADERS, sizeof(*f))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	while (p < end) {
		eol = memchr(p, '\n', (size_t)(end - p));
		linelen = eol ? (size_t)(eol - p) : (size_t)(end - p);
		if (linelen > 0 && p[linelen - 1] == '\r')
			linelen--;
		if (linelen == 0) {		/* the empty line */
			if (eol != NULL) {
				*body = eol + 1;
				*bodylen = (size_t)(end - *body);
			}
			break;
		}
		if (*p == ' ' || *p == '\t') {
			if (n == 0) {
				snprintf(err, errlen, "message starts with a "
				    "continuation line");
				goto fail;
			}
			f[n - 1].len = (size_t)(p + linelen - f[n - 1].p);
		} else {
			colon = memchr(p, ':', linelen);
			if (colon == NULL || colon == p) {
				snprintf(err, errlen, "header line %zu has no field "
				    "name", n + 1);
				goto fail;
			}
			if (n == DKIM_SIGN_MAX_HEADERS) {
				snprintf(err, errlen, "more than %d header fields",
				    DKIM_SIGN_MAX_HEADERS);
				goto fail;
			}
			f[n].p = p;
			f[n].len = linelen;
			n++;
		}
		if (eol == NULL)
			break;
		p = eol + 1;
	}
	*fieldsp = f;
	*nfieldsp = n;
	return 0;
fail:
	free(f);
	return -1;
}

/*
 * The domain of the (first) From mailbox: comments dropped, quoted strings
 * blanked so their '@' '<' ',' do not count, then <addr> if present, else
 * the addr-spec (after a group name, before a second mailbox).
 */
static int
dkim_sign_from_domain(const char *v, size_t len, char *dom, size_t domlen)
{
	char *c, *a, *at, *e, *q;
	size_t i, n = 0;
	int depth = 0, inq = 0;

	if ((c = malloc(len + 1)) == NULL)
		return -1;
	for (i = 0; i < len; i++) {
		char ch = v[i];

		if (ch == '\r' || ch == '\n')
			continue;
		if (ch == '\\' && (inq || depth) && i + 1 < len) {
			i++;
			if (inq)
				c[n++] = 'q';
			continue;
		}
		if (inq) {
			if (ch == '"')
				inq = 0;
			else
				c[n++] = 'q';
			continue;
		}
		if (depth) {
			if (ch == '(')
				depth++;
			else if (ch == ')')
				depth--;
			continue;
		}
		if (ch == '"') {
			inq = 1;
			continue;
		}
		if (ch == '(') {
			depth = 1;
			c[n++] = ' ';
			continue;
		}
		c[n++] = ch;
	}
	c[n] = '\0';

	if ((a = strchr(c, '<')) != NULL) {
		a++;
		if ((e = strchr(a, '>')) != NULL)
			*e = '\0';
	} else {
		a = c;
		if ((q = strchr(a, ':')) != NULL)	/* group: "name: a@b;" */
			a = q + 1;
		a[strcspn(a, ",;")] = '\0';
	}
	if ((at = strrchr(a, '@')) == NULL)
		goto fail;
	a = at + 1;
	while (*a == ' ' || *a == '\t')
		a++;
	e = a + strlen(a);
	while (e > a && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '.'))
		e--;
	*e = '\0';
	if (!dkim_sign_name_ok(a, DKIM_SIGN_MAX_DOMAIN) || strlen(a) >= domlen)
		goto fail;			/* also refuses [domain literals] */
	for (i = 0; a[i]; i++)
		dom[i] = (char)tolower((unsigned char)a[i]);
	dom[i] = '\0';
	free(c);
	return 0;
fail:
	free(c);
	return -1;
}

/*
 * One signature with one key: feed fields and body, append the field.
 * Returns 0, -1 on a library failure, -2 if the library finds the message
 * malformed (retrying would not help).
 */
static int
dkim_sign_one(struct dkim_signer *s, const struct dkim_key *k,
    const struct dkim_field *f, size_t nf, const char *body, size_t bodylen,
    struct dkim_buf *out, char *err, size_t errlen)
{
	struct dkim_arena arena = { NULL, 0, 0 };
	DKIM *d;
	DKIM_STAT st;
	unsigned char *hdr = NULL;
	size_t hdrlen = 0, i;
	const char *why;
	int rc = -1;

	d = dkim_sign(s->lib, (const unsigned char *)"otpmail", &arena,
	    (dkim_sigkey_t)k->pem, (const unsigned char *)k->selector,
	    (const unsigned char *)k->domain, s->hcanon, s->bcanon,
	    k->alg == DKIM_ALG_ED25519_SHA256 ? DKIM_SIGN_ED25519SHA256 :
	    DKIM_SIGN_RSASHA256, -1, &st);
	if (d == NULL) {
		snprintf(err, errlen, "dkim_sign for %s/%s: %s", k->domain,
		    k->selector, dkim_getresultstr(st));
		dkim_arena_release(&arena);
		return -1;
	}
	/* Ed25519 with simple header canonicalization needs no folding (LIBNOTES). */
	if (s->hcanon == DKIM_CANON_SIMPLE)
		dkim_set_margin(d, 0);
	for (i = 0; i < nf; i++) {
		st = dkim_header(d, (u_char *)f[i].p, f[i].len);
		if (st != DKIM_STAT_OK)
			goto libfail;
	}
	if ((st = dkim_eoh(d)) != DKIM_STAT_OK)
		goto libfail;
	if (bodylen > 0 && (st = dkim_body(d, (u_char *)body, bodylen)) !=
	    DKIM_STAT_OK)
		goto libfail;
	dkim_keycache_mark();
	if ((st = dkim_eom(d, NULL)) != DKIM_STAT_OK)
		goto libfail;
	if ((st = dkim_getsighdr_d(d, strlen(DKIM_SIGN_HDRNAME), &hdr,
	    &hdrlen)) != DKIM_STAT_OK)
		goto libfail;
	if (dkim_buf_add(out, DKIM_SIGN_HDRNAME, strlen(DKIM_SIGN_HDRNAME)) == -1)
		goto nomem;
	/* the library folds with bare LF: the message uses CRLF */
	for (i = 0; i < hdrlen; i++) {
		if (hdr[i] == '\n' && (i == 0 || hdr[i - 1] != '\r')) {
			if (dkim_buf_add(out, "\r\n", 2) == -1)
				goto nomem;
		} else if (dkim_buf_add(out, (const char *)&hdr[i], 1) == -1)
			goto nomem;
	}
	if (dkim_buf_add(out, "\r\n", 2) == -1)
		goto nomem;
	rc = 0;
	goto out;
libfail:
	why = dkim_geterror(d);
	snprintf(err, errlen, "signing for %s/%s failed: %s%s%s", k->domain,
	    k->selector, dkim_getresultstr(st), why && *why ? ": " : "",
	    why ? why : "");
	if (st == DKIM_STAT_SYNTAX)
		rc = -2;
	goto out;
nomem:
	snprintf(err, errlen, "out of memory");
out:
	dkim_free(d);
	/*
	 * A key context left behind means libopendkim skipped its key
	 * cleanup (Ed25519 in 2.11), so the reference to our cached key it
	 * took is still held: give it back for it.
	 */
	if (dkim_arena_release(&arena) > 0 && k->alg == DKIM_ALG_ED25519_SHA256 &&
	    dkim_keycache_given() == k->pkey)
		EVP_PKEY_free(k->pkey);
	return rc;
}

enum dkim_status
dkim_sign_message(struct dkim_signer *s, const char *msg, size_t len,
    char **sig, const char **domain_out, char *err, size_t errlen)
{
	struct dkim_field *f = NULL;
	struct dkim_buf out = { NULL, 0, 0 };
	const char *body, *from = NULL, *dp;
	const struct dkim_key *match = NULL;
	char dom[DKIM_SIGN_MAX_DOMAIN + 1];
	size_t nf, bodylen, nfrom = 0, i, fromlen = 0, namelen;
	enum dkim_status rc = DKIM_SIGN_ERROR;

	*sig = NULL;
	if (domain_out != NULL)
		*domain_out = NULL;
	if (err != NULL && errlen > 0)
		*err = '\0';
	if (s == NULL || msg == NULL) {
		snprintf(err, errlen, "no signer or no message");
		return DKIM_SIGN_ERROR;
	}
	if (dkim_sign_split(msg, len, &f, &nf, &body, &bodylen, err, errlen) == -1)
		return DKIM_SIGN_BADMSG;
	for (i = 0; i < nf; i++) {
		namelen = strcspn(f[i].p, ":");
		while (namelen > 0 && (f[i].p[namelen - 1] == ' ' ||
		    f[i].p[namelen - 1] == '\t'))
			namelen--;
		if (namelen == 4 && strncasecmp(f[i].p, "from", 4) == 0) {
			nfrom++;
			from = memchr(f[i].p, ':', f[i].len) + 1;
			fromlen = f[i].len - (size_t)(from - f[i].p);
		}
	}
	if (nfrom != 1) {
		snprintf(err, errlen, nfrom == 0 ? "no From header" :
		    "%zu From headers", nfrom);
		rc = DKIM_SIGN_BADMSG;
		goto out;
	}
	if (dkim_sign_from_domain(from, fromlen, dom, sizeof(dom)) == -1) {
		snprintf(err, errlen, "no domain in the From header");
		rc = DKIM_SIGN_BADMSG;
		goto out;
	}
	/* exact domain first, then each parent domain */
	for (dp = dom; dp != NULL && match == NULL; ) {
		for (i = 0; i < s->nkeys; i++) {
			if (strcmp(s->keys[i].domain, dp) == 0) {
				match = &s->keys[i];
				break;
			}
		}
		if (match == NULL && (dp = strchr(dp, '.')) != NULL)
			dp++;
	}
	if (match == NULL) {
		snprintf(err, errlen, "no DKIM key for %s", dom);
		rc = DKIM_SIGN_NOKEY;
		goto out;
	}
	for (i = 0; i < s->nkeys; i++) {
		if (strcmp(s->keys[i].domain, match->domain) != 0)
			continue;
		switch (dkim_sign_one(s, &s->keys[i], f, nf, body, bodylen, &out,
		    err, errlen)) {
		case 0:
			break;
		case -2:
			rc = DKIM_SIGN_BADMSG;
			goto out;
		default:
			goto out;
		}
	}
	*sig = out.p;
	out.p = NULL;
	if (domain_out != NULL)
		*domain_out = match->domain;
	rc = DKIM_SIGN_OK;
out:
	free(out.p);
	free(f);
	return rc;
}
