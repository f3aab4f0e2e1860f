/*
 * test_repl_wire.c - the messages of the repmgr channel that carries a
 * replica's writes to the master (store/repl.c): a request and an answer
 * round trip, field by field; NULL strings stay NULL; every cut of a
 * message, a padded one, another version, an unknown op, an oversized
 * string or message are refused; a request of an older site (no owner)
 * decodes with owner 0; a request that does not fit is not encoded.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"
#include "tests/unit/tap.h"

static const char *
nz(const char *s)
{
	return s != NULL ? s : "(null)";
}

int
main(void)
{
	static struct repl_req rq;
	struct otp_request q = { .app = "shop", .client_id = "198.51.100.7",
	    .addr = "Alice@example.org", .limit_addr = "alice@example.org",
	    .purpose = "login", .context = NULL, .ttl = 300, .client_uid = 1001,
	    .now = 1800000000 };
	struct otp_result res, got;
	uint8_t m[REPL_MSG_MAX], big[REPL_MSG_MAX + 16];
	char extra[STORE_IDEM_ANSWER_MAX + 1], longs[STORE_IDEM_ANSWER_MAX + 2];
	uint64_t st, count;
	size_t n, k, n2;
	int cuts;

	/* a request, round trip */
	n = repl_req_encode(m, RO_MARK, &q, "0123456789abcdef0123456789abcdef",
	    "000661f84736017214aef035", NULL, 0x1122334455667788ULL);
	ok(n > 2 && m[1] == RO_MARK, "a request encodes");
	ok(repl_req_decode(m, n, &rq) == 0, "and decodes");
	is_int(rq.op, RO_MARK, "op");
	is_str(rq.q.app, "shop", "app");
	is_str(rq.q.client_id, "198.51.100.7", "client_id");
	is_str(rq.q.addr, "Alice@example.org", "addr (case kept)");
	is_str(rq.q.limit_addr, "alice@example.org", "limit_addr");
	is_str(rq.q.purpose, "login", "purpose");
	ok(rq.q.context == NULL, "a NULL context stays NULL");
	ok(rq.hx == NULL, "a NULL hash stays NULL");
	is_int(rq.q.ttl, 300, "ttl");
	is_int(rq.q.client_uid, 1001, "client_uid");
	is_int(rq.q.now, 1800000000, "now");
	is_str(rq.a, "0123456789abcdef0123456789abcdef", "a");
	is_str(rq.b, "000661f84736017214aef035", "b");
	ok(rq.owner == 0x1122334455667788ULL, "the owner (the asking site's run)");

	/* every cut, and a padded message, are refused */
	cuts = 0;
	for (k = 0; k < n; k++)
		if (repl_req_decode(m, k, &rq) == 0 && k != n - 8)
			cuts++;
	is_int(cuts, 0, "every cut of the request but the owner's is refused");
	ok(repl_req_decode(m, n - 8, &rq) == 0 && rq.owner == 0,
	    "a request without the owner (an older site) decodes, owner 0");
	memcpy(big, m, n);
	big[n] = 0;
	ok(repl_req_decode(big, n + 1, &rq) == -1, "a padded request is refused");
	ok(repl_req_decode(m, REPL_MSG_MAX + 1, &rq) == -1, "an oversized one too");

	/* bad version, bad op */
	memcpy(big, m, n);
	big[0] = 2;
	ok(repl_req_decode(big, n, &rq) == -1, "another version is refused");
	big[0] = m[0];
	big[1] = 'z';
	ok(repl_req_decode(big, n, &rq) == -1, "an unknown op is refused");
	big[1] = 0;
	ok(repl_req_decode(big, n, &rq) == -1, "op 0 is refused");
	ok(repl_req_encode(m, 'z', &q, NULL, NULL, NULL, 0) == 0, "no unknown op is encoded");

	/* a string longer than the limit, a length past the end, a NUL inside */
	memset(longs, 'x', sizeof(longs) - 1);
	longs[sizeof(longs) - 1] = '\0';
	n2 = repl_req_encode(m, RO_IDEM_FINISH, &q, "key", longs, NULL, 1);
	ok(n2 > 0, "a long string still fits the message");
	ok(repl_req_decode(m, n2, &rq) == -1, "but a string over the limit is refused");
	n = repl_req_encode(m, RO_ISSUE, &q, NULL, NULL, NULL, 7);
	ok(n > 0 && repl_req_decode(m, n, &rq) == 0, "an issue round trips");
	m[2] = 0x00;	/* app's length (big-endian): past the end */
	m[3] = 0xfe;
	ok(repl_req_decode(m, n, &rq) == -1, "a string length past the end is refused");
	n = repl_req_encode(m, RO_ISSUE, &q, NULL, NULL, NULL, 7);
	m[5] = '\0';	/* inside "shop" */
	ok(repl_req_decode(m, n, &rq) == -1, "a NUL inside a string is refused");

	/* numbers out of their fields' range: one encoding only */
	n = repl_req_encode(m, RO_ISSUE, &q, NULL, NULL, NULL, 7);
	ok(repl_req_decode(m, n, &rq) == 0 && rq.q.ttl == 300 && rq.q.client_uid == 1001,
	    "(the issue the next two change)");
	memcpy(big, m, n);
	/* the tail: ttl, uid, now (8 each), a, b, hash (NULL: 2 each), owner (8) */
	big[n - 38 + 3] = 1;		/* ttl's high half */
	ok(repl_req_decode(big, n, &rq) == -1, "a ttl past an int is refused");
	memcpy(big, m, n);
	big[n - 30 + 3] = 1;		/* client_uid's high half */
	ok(repl_req_decode(big, n, &rq) == -1, "a client_uid past 32 bits is refused");

	/* nine strings at once (a request with every field) */
	q.context = "ctx";
	n = repl_req_encode(m, RO_IDEM_BEGIN, &q, "key", "answer",
	    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", 9);
	ok(n > 0 && repl_req_decode(m, n, &rq) == 0 && strcmp(nz(rq.hx),
	    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff") == 0 &&
	    strcmp(nz(rq.q.context), "ctx") == 0, "a request with all nine strings round trips");

	/* a request too big for a message is not encoded */
	{
		char *huge = malloc(REPL_MSG_MAX);

		memset(huge, 'y', REPL_MSG_MAX - 1);
		huge[REPL_MSG_MAX - 1] = '\0';
		ok(repl_req_encode(m, RO_ISSUE, &q, huge, NULL, NULL, 0) == 0,
		    "a request over REPL_MSG_MAX is not encoded");
		free(huge);
	}

	/* LSN: op only */
	n = repl_req_encode(m, RO_LSN, NULL, NULL, NULL, NULL, 0);
	ok(n == 2 && repl_req_decode(m, n, &rq) == 0 && rq.op == RO_LSN, "an LSN request");
	m[2] = 0;
	ok(repl_req_decode(m, 3, &rq) == -1, "an LSN request with a tail is refused");

	/* an answer, round trip */
	memset(&res, 0, sizeof(res));
	snprintf(res.code, sizeof(res.code), "123456");
	snprintf(res.issue_id, sizeof(res.issue_id), "abcdef0123456789");
	res.expires_at = 1800000600;
	res.ttl = 600;
	res.resend_after = 30;
	res.limit = "client_lockout";
	res.retry_after = 90;
	res.attempts_left = 3;
	snprintf(res.queue_id, sizeof(res.queue_id), "000661f84736017214aef035");
	n = repl_ans_encode(m, S_LOCKED, &res, 5, "{\"ok\":true}");
	ok(n > 0, "an answer encodes");
	memset(&got, 0, sizeof(got));
	ok(repl_ans_decode(m, n, &st, &count, extra, sizeof(extra), &got) == 0,
	    "and decodes");
	is_int(st, S_LOCKED, "status");
	is_int(count, 5, "count");
	is_str(extra, "{\"ok\":true}", "extra");
	is_str(got.code, "123456", "code");
	is_str(got.issue_id, "abcdef0123456789", "issue id");
	is_int(got.expires_at, 1800000600, "expires_at");
	is_int(got.ttl, 600, "ttl");
	is_int(got.resend_after, 30, "resend_after");
	ok(got.limit != NULL && strcmp(got.limit, "client_lockout") == 0,
	    "the limit maps back to the store's static name");
	is_int(got.retry_after, 90, "retry_after");
	is_int(got.attempts_left, 3, "attempts_left");
	is_str(got.queue_id, "000661f84736017214aef035", "queue id");
	cuts = 0;
	for (k = 0; k < n; k++)
		if (repl_ans_decode(m, k, &st, &count, extra, sizeof(extra), &got) == 0)
			cuts++;
	is_int(cuts, 0, "every cut of the answer is refused");
	memcpy(big, m, n);
	big[n] = 0;
	ok(repl_ans_decode(big, n + 1, &st, &count, extra, sizeof(extra), &got) == -1,
	    "a padded answer is refused");
	/* a limit name the store does not have */
	res.limit = "made_up";
	n = repl_ans_encode(m, S_RATE_LIMITED, &res, 0, NULL);
	ok(repl_ans_decode(m, n, &st, &count, extra, sizeof(extra), &got) == 0 &&
	    strcmp(got.limit, "unknown") == 0, "an unknown limit name reads \"unknown\"");
	/* no result */
	n = repl_ans_encode(m, S_OK, NULL, (uint64_t)7 << 32 | 1234, NULL);
	ok(repl_ans_decode(m, n, &st, &count, NULL, 0, NULL) == 0 && st == S_OK &&
	    count == ((uint64_t)7 << 32 | 1234), "an answer without a result");
	ok(repl_ans_decode(m, n, &st, &count, NULL, 0, &got) == -1,
	    "read as one with a result, it is refused");
	return done_testing();
}
