/*
 * tap.h - a minimal TAP producer for the C unit tests (header only).
 *   ok(cond, "name"); is_int(got, want, "name"); is_str(got, want, "name");
 *   return done_testing();
 */
#ifndef OTPMAIL_TAP_H
#define OTPMAIL_TAP_H

#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

static inline int
tap_ok(int cond, const char *file, int line, const char *name)
{
	tap_n++;
	printf("%sok %d - %s\n", cond ? "" : "not ", tap_n, name);
	if (!cond) {
		tap_failed++;
		printf("#   failed at %s:%d\n", file, line);
	}
	fflush(stdout);
	return cond;
}
#define ok(c, name) tap_ok(!!(c), __FILE__, __LINE__, (name))
#define is_int(g, w, name) do { long long _g = (g), _w = (w); \
	if (!ok(_g == _w, name)) printf("#   got %lld, want %lld\n", _g, _w); } while (0)
#define is_str(g, w, name) do { const char *_g = (g), *_w = (w); \
	if (!ok(_g && _w && strcmp(_g, _w) == 0, name)) \
		printf("#   got \"%s\", want \"%s\"\n", _g ? _g : "(null)", _w ? _w : "(null)"); } while (0)
#define diag(...) do { printf("# "); printf(__VA_ARGS__); printf("\n"); } while (0)

static inline int
done_testing(void)
{
	printf("1..%d\n", tap_n);
	fflush(stdout);		/* LeakSanitizer exits without flushing stdio */
	return tap_failed ? 1 : 0;
}

#endif
