/*
 * fuzz_spool_env.c - libFuzzer target for the envelope text of spool files
 * (spool_env_parse), which is read back from disk and so untrusted.
 * Oracles: an accepted envelope respects the bounds of queue_int.h (valid
 * id, known class, at most Q_MAX_RCPT recipients, bounded addresses), and
 * spool_env_format of it parses back to the very same text (round trip).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/queue_int.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct q_envelope env, env2;
	char why[256], *t1, *t2;
	size_t l1, l2, i;

	why[0] = '\0';
	if (spool_env_parse((const char *)data, size, &env, why, sizeof(why)) == -1) {
		if (why[0] == '\0')
			abort();
		return 0;
	}
	if (!qid_valid(env.id) || env.klass >= Q_CLASS_COUNT || env.sender == NULL ||
	    strlen(env.sender) > Q_MAX_ADDR || env.nrcpt > Q_MAX_RCPT ||
	    (env.nrcpt > 0 && env.rcpts == NULL))
		abort();
	for (i = 0; i < env.nrcpt; i++)
		if (env.rcpts[i].addr == NULL || strlen(env.rcpts[i].addr) > Q_MAX_ADDR ||
		    (env.rcpts[i].reply != NULL && strlen(env.rcpts[i].reply) > Q_MAX_TEXT))
			abort();
	if ((t1 = spool_env_format(&env, &l1)) == NULL)
		abort();
	if (spool_env_parse(t1, l1, &env2, why, sizeof(why)) == -1) {
		fprintf(stderr, "formatted envelope does not parse: %s\n%.*s\n", why,
		    (int)l1, t1);
		abort();
	}
	if ((t2 = spool_env_format(&env2, &l2)) == NULL)
		abort();
	if (l1 != l2 || memcmp(t1, t2, l1) != 0)
		abort();
	free(t1);
	free(t2);
	q_envelope_clear(&env);
	q_envelope_clear(&env2);
	return 0;
}
