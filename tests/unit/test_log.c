/*
 * test_log.c - agent/core/log.c: values quoted and escaped by log_msg
 * itself, fragments checked, numbers as printf writes them, long lines cut
 * after a whole pair.
 */
#include <stdlib.h>
#include <string.h>

#include "agent/core/log.h"
#include "tap.h"

static char last[16384];

static void
tap_line(int prio, const char *line)
{
	(void)prio;
	snprintf(last, sizeof(last), "%s", line);
}

int
main(void)
{
	char frag[256], big[3000];
	const char *volatile nul = NULL;	/* hidden from printf checking */
	size_t i;

	log_init("test", 0, 0, "info");
	log_set_tap(tap_line);

	log_msg(LOG_INFO, "event=x v=%s", "plain-value_1.2@example.org");
	is_str(last, "event=x v=plain-value_1.2@example.org", "a safe value stays bare");
	log_msg(LOG_INFO, "event=x v=%s n=%d", "a\" result=ok b=\"c", 3);
	is_str(last, "event=x v=\"a\\\" result=ok b=\\\"c\" n=3",
	    "quotes, spaces and '=' are quoted and escaped");
	log_msg(LOG_INFO, "event=x v=%s", "l1\nl2\r\x01\x7f\xc3\xa9\\");
	is_str(last, "event=x v=\"l1\\x0al2\\x0d\\x01\\x7f\\xc3\\xa9\\\\\"",
	    "control characters, DEL, non-ASCII and backslash escaped");
	log_msg(LOG_INFO, "event=x v=%s", "");
	is_str(last, "event=x v=\"\"", "an empty value is \"\"");
	log_msg(LOG_INFO, "event=x detail=\"why: %s\" k=1", "a\"b\nc");
	is_str(last, "event=x detail=\"why: a\\\"b\\x0ac\" k=1",
	    "inside a literal \"...\": escaped, no extra quotes");
	log_msg(LOG_INFO, "event=x %s uid=%u", "evil=1 result=ok", 7u);
	is_str(last, "event=x evil=1 result=ok uid=7",
	    "a fragment of whole pairs passes (the caller built it)");
	log_msg(LOG_INFO, "event=x %s uid=%u", "a b\"c", 7u);
	is_str(last, "event=x unsafe=\"a b\\\"c\" uid=7", "any other fragment is quoted");
	log_msg(LOG_INFO, "event=x %s", log_pair(frag, sizeof(frag), "to",
	    "\"x y=1\"@example.org"));
	is_str(last, "event=x to=\"\\\"x y=1\\\"@example.org\"", "log_pair quotes its value");
	log_msg(LOG_INFO, "event=x %s=%s", "domain", "a b");
	is_str(last, "event=x domain=\"a b\"", "a key from %s, then its value");
	log_msg(LOG_INFO, "event=x z=%zu l=%ld ll=%lld u=%u m=%04o x=%x d=%.3f s=%.2s p=%%",
	    (size_t)42, -5L, 1LL << 40, 4000000000u, 0660u, 255u, 1.5, "abcdef");
	is_str(last, "event=x z=42 l=-5 ll=1099511627776 u=4000000000 m=0660 x=ff d=1.500 "
	    "s=ab p=%", "numbers, precision and %% as printf");
	log_msg(LOG_INFO, "event=x v=%s", nul);
	is_str(last, "event=x v=-", "NULL is -");

	for (i = 0; i < sizeof(big) - 1; i++)
		big[i] = i % 2 ? '"' : 'a';
	big[sizeof(big) - 1] = '\0';
	log_msg(LOG_INFO, "event=x v=%s", big);
	ok(strlen(last) == strlen("event=x v=\"") + 1024 + 512 + strlen("...\"") && strstr(last, "...\"") != NULL,
	    "a long value is cut at 1024 bytes (512 of them escaped), with ...");
	log_msg(LOG_INFO, "event=x a=%s b=%s c=%s d=%s e=%s f=%s g=%s h=%s i=%s", big, big,
	    big, big, big, big, big, big, big);
	i = strlen(last);
	ok(i < 8192 && i > 14 && strcmp(last + i - 14, " truncated=yes") == 0,
	    "a line over 8 KiB ends after a whole pair with truncated=yes");
	{
		int inq = 0;
		for (i = 0; last[i] != '\0'; i++) {
			if (inq && last[i] == '\\')
				i++;
			else if (last[i] == '"')
				inq = !inq;
		}
		ok(!inq, "... and no quote is left open");
	}
	log_line(LOG_INFO, "queue: id=ABC dsn=DEF to=\"x y\"@example.org");
	is_str(last, "event=queue detail=\"id=ABC dsn=DEF to=\\\"x y\\\"@example.org\"",
	    "a library line is one quoted detail of its module's event");
	log_line(LOG_INFO, "BDB1234 a=b: c");
	is_str(last, "event=library detail=\"BDB1234 a=b: c\"", "other library text too");
	return done_testing();
}
