/*
 * test_spawner.c - agent/delivery/spawner.c's request parser: only a
 * request of exactly the struct's size, with the magic, a known op and
 * sane fields is taken; everything else (what a compromised main process
 * could send) is refused with a reason.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/delivery/spawner.h"
#include "tests/unit/tap.h"

static struct spawner_req
req(uint32_t op, int32_t n, int32_t pid)
{
	struct spawner_req r;

	memset(&r, 0, sizeof(r));
	r.magic = SPAWNER_MAGIC;
	r.op = op;
	r.n = n;
	r.pid = pid;
	return r;
}

static const char *
why_of(const void *buf, size_t len, int maxn)
{
	struct spawner_req out;
	const char *why = NULL;

	if (spawner_parse(buf, len, maxn, &out, &why) == 0)
		return "accepted";
	return why;
}

int
main(void)
{
	struct spawner_req r, out;
	unsigned char big[sizeof(r) + 8], rnd[sizeof(r)];
	const char *why;
	int i, taken = 0;

	r = req(SPW_SPAWN, 4, 0);
	ok(spawner_parse(&r, sizeof(r), 16, &out, &why) == 0 && out.n == 4,
	    "spawn of 4 workers (max 16) is taken");
	r = req(SPW_SPAWN, 16, 0);
	is_str(why_of(&r, sizeof(r), 16), "accepted", "spawn of the maximum is taken");
	r = req(SPW_KILL, 0, 1234);
	is_str(why_of(&r, sizeof(r), 16), "accepted", "kill of a pid is taken");
	r = req(SPW_WAIT, 0, 1234);
	is_str(why_of(&r, sizeof(r), 16), "accepted", "wait of a pid is taken");
	r = req(SPW_SPAWN_FETCH, 1, 0);
	is_str(why_of(&r, sizeof(r), 16), "accepted", "the fetch process (one socket) is taken");
	r = req(SPW_SPAWN_FETCH, 2, 0);
	is_str(why_of(&r, sizeof(r), 16), "workers", "a fetch process with 2 sockets: refused");
	r = req(SPW_SPAWN_FETCH, 1, 99);
	is_str(why_of(&r, sizeof(r), 16), "field", "a fetch process with a pid: refused");

	r = req(SPW_SPAWN, 4, 0);
	is_str(why_of(&r, sizeof(r) - 1, 16), "size", "one byte short: refused");
	memset(big, 0, sizeof(big));
	memcpy(big, &r, sizeof(r));
	is_str(why_of(big, sizeof(big), 16), "size", "trailing bytes: refused");
	is_str(why_of(big, 0, 16), "size", "empty: refused");
	r.magic ^= 1;
	is_str(why_of(&r, sizeof(r), 16), "magic", "bad magic: refused");
	r = req(SPW_READY, 0, 0);
	is_str(why_of(&r, sizeof(r), 16), "op", "the reply-only op as a request: refused");
	r = req(99, 1, 0);
	is_str(why_of(&r, sizeof(r), 16), "op", "unknown op: refused");
	r = req(0, 1, 0);
	is_str(why_of(&r, sizeof(r), 16), "op", "op 0: refused");
	r = req(SPW_SPAWN, 0, 0);
	is_str(why_of(&r, sizeof(r), 16), "workers", "spawn of 0 workers: refused");
	r = req(SPW_SPAWN, -5, 0);
	is_str(why_of(&r, sizeof(r), 16), "workers", "spawn of -5 workers: refused");
	r = req(SPW_SPAWN, 17, 0);
	is_str(why_of(&r, sizeof(r), 16), "workers", "more workers than configured: refused");
	r = req(SPW_SPAWN, INT32_MAX, 0);
	is_str(why_of(&r, sizeof(r), 1024), "workers", "INT32_MAX workers: refused");
	r = req(SPW_SPAWN, 4, 77);
	is_str(why_of(&r, sizeof(r), 16), "field", "spawn with a pid: refused");
	r = req(SPW_KILL, 0, 1);
	is_str(why_of(&r, sizeof(r), 16), "pid", "kill of init: refused");
	r = req(SPW_KILL, 0, 0);
	is_str(why_of(&r, sizeof(r), 16), "pid", "kill of pid 0 (the group): refused");
	r = req(SPW_KILL, 0, -1);
	is_str(why_of(&r, sizeof(r), 16), "pid", "kill of -1 (everything): refused");
	r = req(SPW_WAIT, 0, -42);
	is_str(why_of(&r, sizeof(r), 16), "pid", "wait of a negative pid: refused");
	r = req(SPW_KILL, 3, 1234);
	is_str(why_of(&r, sizeof(r), 16), "field", "kill with n set: refused");

	/* random requests of the right size: the magic stops all of them */
	srand(20);
	for (i = 0; i < 100000; i++) {
		size_t k;

		for (k = 0; k < sizeof(rnd); k++)
			rnd[k] = (unsigned char)rand();
		if (spawner_parse(rnd, sizeof(rnd), 16, &out, &why) == 0)
			taken++;
	}
	is_int(taken, 0, "100000 random requests: none taken");
	/* the right magic, random rest: what is taken is in range */
	taken = 0;
	for (i = 0; i < 100000; i++) {
		size_t k;

		for (k = 0; k < sizeof(rnd); k++)
			rnd[k] = (unsigned char)rand();
		memcpy(rnd, &(uint32_t){ SPAWNER_MAGIC }, sizeof(uint32_t));
		rnd[4] = (unsigned char)(rand() % 6);
		rnd[5] = rnd[6] = rnd[7] = 0;
		if (i % 3 == 0)
			memset(rnd + 8, 0, 4);
		if (i % 5 == 0)
			memset(rnd + 12, 0, 4);
		if (spawner_parse(rnd, sizeof(rnd), 16, &out, &why) == 0) {
			if (out.op == SPW_SPAWN_FETCH ? out.n != 1 || out.pid != 0 :
			    out.op == SPW_SPAWN ? out.n < 1 || out.n > 16 || out.pid != 0 :
			    out.pid <= 1 || out.n != 0)
				break;
			taken++;
		}
	}
	ok(i == 100000, "100000 requests with the magic: every one taken is in range");
	diag("%d of them taken", taken);
	return done_testing();
}
