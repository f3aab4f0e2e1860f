/*
 * fuzz_repl_wire.c - libFuzzer target for the messages of the repmgr
 * channel (store/repl.c): the master decodes what a replica sends and a
 * replica what the master answers.  The first byte picks the decoder (even:
 * request, odd: answer).  Oracles: an accepted request re-encodes to
 * exactly the input (the format is canonical), or to the input and an owner
 * of 0 when the input had none (an older site's); its strings fit their
 * bounds; an accepted answer's strings are terminated within their fields.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_request(const uint8_t *p, size_t n)
{
	static struct repl_req rq;
	static const uint8_t zero[8];
	uint8_t out[REPL_MSG_MAX];
	size_t k;

	if (repl_req_decode(p, n, &rq) == -1)
		return;
	k = repl_req_encode(out, rq.op, &rq.q, rq.a, rq.b, rq.hx, rq.owner);
	if (k == n && memcmp(out, p, n) == 0)
		return;
	/* an older site's request: no owner, read as 0 */
	if (rq.owner == 0 && k == n + 8 && memcmp(out, p, n) == 0 &&
	    memcmp(out + n, zero, 8) == 0)
		return;
	abort();
}

static void
fuzz_answer(const uint8_t *p, size_t n)
{
	char extra[STORE_IDEM_ANSWER_MAX + 1];
	struct otp_result res;
	uint64_t st, count;

	memset(&res, 0, sizeof(res));
	if (repl_ans_decode(p, n, &st, &count, extra, sizeof(extra), &res) == -1)
		(void)repl_ans_decode(p, n, &st, &count, extra, sizeof(extra), NULL);
	if (memchr(extra, 0, sizeof(extra)) == NULL ||
	    memchr(res.code, 0, sizeof(res.code)) == NULL ||
	    memchr(res.issue_id, 0, sizeof(res.issue_id)) == NULL ||
	    memchr(res.queue_id, 0, sizeof(res.queue_id)) == NULL)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] % 2 == 0)
		fuzz_request(data + 1, size - 1);
	else
		fuzz_answer(data + 1, size - 1);
	return 0;
}
