/*
 * reply.c - the one JSON reply builder and the request field accessors:
 * every handler answers through these, so errors look the same everywhere.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/core/otpmaild.h"

static json_t	*reply_verror(const char *, const char *, const char *, va_list);
static void	 reply_clean(char *);

/*
 * A detail may quote the peer's bytes (a JSON parse error does): keep it
 * printable ASCII so it is always a valid JSON string.
 */
static void
reply_clean(char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			*s = '?';
}

json_t *
reply_ok(void)
{
	return json_pack("{s:b}", "ok", 1);
}

static json_t *
reply_verror(const char *code, const char *field, const char *fmt, va_list ap)
{
	char detail[512];
	json_t *r;

	vsnprintf(detail, sizeof(detail), fmt, ap);
	reply_clean(detail);
	r = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", code, "detail", detail);
	if (r == NULL)
		abort();	/* only out of memory gets here */
	if (r != NULL && field != NULL)
		json_object_set_new(r, "field", json_string(field));
	return r;
}

json_t *
reply_error(const char *code, const char *fmt, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, fmt);
	r = reply_verror(code, NULL, fmt, ap);
	va_end(ap);
	return r;
}

json_t *
reply_field_error(const char *code, const char *field, const char *fmt, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, fmt);
	r = reply_verror(code, field, fmt, ap);
	va_end(ap);
	return r;
}

json_t *
reply_bad_field(const char *field, const char *fmt, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, fmt);
	r = reply_verror("bad_request", field, fmt, ap);
	va_end(ap);
	return r;
}

json_t *
reply_limited(const char *code, const char *limit, int retry_after, const char *detail)
{
	char clean[512];
	json_t *r;

	snprintf(clean, sizeof(clean), "%s", detail);
	reply_clean(clean);
	r = json_pack("{s:b, s:s, s:s}", "ok", 0, "error", code, "detail", clean);
	if (r == NULL)
		abort();
	if (limit != NULL)
		json_object_set_new(r, "limit", json_string(limit));
	if (retry_after > 0)
		json_object_set_new(r, "retry_after", json_integer(retry_after));
	return r;
}

static int
req_has_ctl(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 1;
	return 0;
}

int
req_text(json_t *req, const char *field, int required, size_t maxlen,
    const char **out, size_t *lenp, json_t **err)
{
	json_t *v = json_object_get(req, field);
	size_t len;

	if (v == NULL || json_is_null(v)) {
		if (!required)
			return 0;
		*err = reply_bad_field(field, "missing field \"%s\"", field);
		return -1;
	}
	if (!json_is_string(v)) {
		*err = reply_bad_field(field, "field \"%s\" must be a string", field);
		return -1;
	}
	len = json_string_length(v);
	if (len > maxlen) {
		*err = reply_bad_field(field, "field \"%s\" is longer than %zu bytes",
		    field, maxlen);
		return -1;
	}
	if (memchr(json_string_value(v), '\0', len) != NULL) {
		*err = reply_bad_field(field, "field \"%s\" holds a NUL byte", field);
		return -1;
	}
	*out = json_string_value(v);
	if (lenp != NULL)
		*lenp = len;
	return 0;
}

int
req_str(json_t *req, const char *field, int required, size_t maxlen,
    const char **out, json_t **err)
{
	const char *s = NULL;
	size_t len;

	if (req_text(req, field, required, maxlen, &s, &len, err) == -1)
		return -1;
	if (s == NULL)
		return 0;
	if (req_has_ctl(s, len)) {
		*err = reply_bad_field(field,
		    "field \"%s\" holds a control character (CR, LF, ...)", field);
		return -1;
	}
	*out = s;
	return 0;
}

int
req_int(json_t *req, const char *field, int required, long min, long max,
    long *out, json_t **err)
{
	json_t *v = json_object_get(req, field);
	json_int_t i;

	if (v == NULL || json_is_null(v)) {
		if (!required)
			return 0;
		*err = reply_bad_field(field, "missing field \"%s\"", field);
		return -1;
	}
	if (!json_is_integer(v)) {
		*err = reply_bad_field(field, "field \"%s\" must be an integer", field);
		return -1;
	}
	i = json_integer_value(v);
	if (i < min || i > max) {
		*err = reply_bad_field(field, "field \"%s\" must be between %ld and %ld",
		    field, min, max);
		return -1;
	}
	*out = (long)i;
	return 0;
}

int
req_bool(json_t *req, const char *field, int *out, json_t **err)
{
	json_t *v = json_object_get(req, field);

	if (v == NULL || json_is_null(v))
		return 0;
	if (!json_is_boolean(v)) {
		*err = reply_bad_field(field, "field \"%s\" must be true or false", field);
		return -1;
	}
	*out = json_is_true(v);
	return 0;
}

int
req_str_list(json_t *req, const char *field, int required, size_t maxn,
    size_t maxlen, const char ***out, size_t *np, json_t **err)
{
	json_t *v = json_object_get(req, field), *e;
	const char **list;
	size_t i, n;

	if (v == NULL || json_is_null(v)) {
		if (!required)
			return 0;
		*err = reply_bad_field(field, "missing field \"%s\"", field);
		return -1;
	}
	if (json_is_string(v)) {
		const char *s = NULL;
		if (req_str(req, field, 1, maxlen, &s, err) == -1)
			return -1;
		list = calloc(2, sizeof(*list));
		if (list == NULL) {
			*err = reply_error("unavailable", "out of memory");
			return -1;
		}
		list[0] = s;
		*out = list;
		*np = 1;
		return 0;
	}
	if (!json_is_array(v)) {
		*err = reply_bad_field(field,
		    "field \"%s\" must be a string or an array of strings", field);
		return -1;
	}
	n = json_array_size(v);
	if (n == 0 && required) {
		*err = reply_bad_field(field, "field \"%s\" is empty", field);
		return -1;
	}
	if (n > maxn) {
		*err = reply_bad_field(field, "field \"%s\" has more than %zu entries",
		    field, maxn);
		return -1;
	}
	list = calloc(n + 1, sizeof(*list));
	if (list == NULL) {
		*err = reply_error("unavailable", "out of memory");
		return -1;
	}
	json_array_foreach(v, i, e) {
		size_t len;
		if (!json_is_string(e) || (len = json_string_length(e)) > maxlen ||
		    req_has_ctl(json_string_value(e), len)) {
			free(list);
			*err = reply_bad_field(field, "entry %zu of \"%s\" must be a string "
			    "of at most %zu bytes without control characters", i, field, maxlen);
			return -1;
		}
		list[i] = json_string_value(e);
	}
	*out = list;
	*np = n;
	return 0;
}
