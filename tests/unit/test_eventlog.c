/*
 * test_eventlog.c - agent/events/eventlog.c: ids survive a reopen, a torn
 * last line is cut, scans start after an id and stop when asked, expiry
 * keeps the newest segment.
 */
#include <sys/stat.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/events/events_int.h"
#include "tests/unit/tap.h"

struct seen {
	uint64_t	 ids[64];
	size_t		 n;
	size_t		 stop_at;
};

static int
collect(void *arg, uint64_t id, const char *line, size_t len)
{
	struct seen *s = arg;

	(void)line;
	(void)len;
	if (s->n < 64)
		s->ids[s->n++] = id;
	return s->stop_at && s->n >= s->stop_at;
}

static int
put(struct eventlog *l, uint64_t id)
{
	char line[128];
	int n = snprintf(line, sizeof(line), "{\"id\":%llu,\"type\":\"accepted\"}",
	    (unsigned long long)id);

	return eventlog_append(l, id, line, (size_t)n);
}

int
main(void)
{
	char dir[] = "/tmp/otpm-evlog-XXXXXX", err[256], path[512];
	struct seen s = { { 0 }, 0, 0 };
	struct eventlog *l;
	uint64_t i;
	int fd;

	if (mkdtemp(dir) == NULL)
		return 1;
	l = eventlog_open(dir, err, sizeof(err));
	ok(l != NULL, "opens an empty directory");
	if (l == NULL)
		return done_testing();
	is_int(eventlog_last(l), 0, "no event yet");
	for (i = 1; i <= 5; i++)
		put(l, i);
	is_int(eventlog_last(l), 5, "five appended");
	eventlog_close(l);

	/* a crash in the middle of a line */
	snprintf(path, sizeof(path), "%s/0000000000000001.log", dir);
	fd = open(path, O_WRONLY | O_APPEND);
	ok(fd != -1 && write(fd, "{\"id\":6,\"ty", 11) == 11, "a torn line is written");
	close(fd);
	l = eventlog_open(dir, err, sizeof(err));
	ok(l != NULL && eventlog_last(l) == 5, "reopen: the last whole event is 5");
	if (l == NULL)
		return done_testing();
	put(l, 6);
	eventlog_scan(l, 0, 0, collect, &s);
	ok(s.n == 6 && s.ids[0] == 1 && s.ids[5] == 6, "the torn line is gone, 6 follows 5");

	memset(&s, 0, sizeof(s));
	eventlog_scan(l, 3, 0, collect, &s);
	ok(s.n == 3 && s.ids[0] == 4, "a scan after 3 starts at 4");
	memset(&s, 0, sizeof(s));
	s.stop_at = 2;
	eventlog_scan(l, 0, 0, collect, &s);
	is_int(s.n, 2, "the callback stops the scan");
	is_int(eventlog_line_id("{\"id\":42,\"x\":1}", 15), 42, "line id");
	is_int(eventlog_line_id("{\"x\":42}", 8), 0, "no id, 0");

	/* expiry: everything is older than a cutoff in the future, but the
	 * newest segment stays, and with it the ids */
	is_int(eventlog_expire(l, time(NULL) + 3600), 0, "the only segment is never removed");
	is_int(eventlog_last(l), 6, "ids go on");
	eventlog_close(l);
	unlink(path);
	rmdir(dir);
	return done_testing();
}
