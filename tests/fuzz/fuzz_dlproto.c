/*
 * fuzz_dlproto.c - libFuzzer target for the frames between otpmaild and
 * its delivery process (agent/delivery/dlproto.c): the main process reads
 * results from a process that talks to the internet, so they are hostile
 * input.  The first byte picks the decoder (mod 4: 0 result, 1 job, 2 a
 * fetch process's reply, 3 a fetch request; fetch.c).
 * Oracles: an accepted result re-encodes to exactly the input (the format
 * is canonical) and respects the bounds of dlproto.h; dlp_result_check
 * against a four-recipient job refuses unknown or repeated indexes and
 * unknown states; an accepted job re-encodes to a frame that decodes and
 * encodes to itself.  A fetch reply (hostile: the fetch process talks to
 * the internet) or request that decodes re-encodes to exactly the input and
 * respects the bounds (TXT count, mx patterns, max_age, mode; hosts, their
 * addresses, names, flags and preferences of an MX reply; TLSA count; the
 * request's port).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/delivery/dlproto.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
fuzz_result(const char *p, size_t n)
{
	static uint32_t idx[4] = { 0, 1, 2, 7 };
	struct dlp_result res;
	struct dlp_job job;
	struct dlp_buf b;
	size_t i, k;
	int bad = 0;

	if (dlp_result_decode(p, n, &res) == -1)
		return;
	if (res.n > DLP_RCPT_MAX || res.ntls > DLP_TLS_MAX)
		abort();
	for (i = 0; i < res.n; i++) {
		if (res.o[i].reply == NULL || strlen(res.o[i].reply) > DLP_STR_MAX)
			abort();
		if (res.o[i].state < DLP_DELIVERED || res.o[i].state > DLP_DEFERRED ||
		    (res.o[i].idx > 2 && res.o[i].idx != 7))
			bad = 1;
		for (k = 0; k < i; k++)
			if (res.o[k].idx == res.o[i].idx)
				bad = 1;
	}
	for (i = 0; i < res.ntls; i++)
		if (res.tls[i].domain == NULL || res.tls[i].mx == NULL ||
		    res.tls[i].ip == NULL || res.tls[i].rtype == NULL ||
		    res.tls[i].ptype > 2 || res.tls[i].sts > 1)
			abort();
	memset(&job, 0, sizeof(job));
	job.nrcpt = 4;
	job.idx = idx;
	if ((dlp_result_check(&res, &job) == -1) != bad)
		abort();
	dlp_buf_init(&b);
	if (dlp_result_encode(&b, &res) == -1 || b.len - 4 != n ||
	    memcmp(b.p + 4, p, n) != 0)
		abort();
	dlp_buf_free(&b);
	dlp_result_free(&res);
}

static void
fuzz_job(const char *p, size_t n)
{
	struct dlp_job job, job2;
	struct dlp_buf b, b2;

	if (dlp_job_decode(p, n, &job) == -1)
		return;
	if (job.nrcpt == 0 || job.nrcpt > DLP_RCPT_MAX || job.id == NULL ||
	    job.sender == NULL || job.data + job.len != p + n)
		abort();
	dlp_buf_init(&b);
	if (dlp_job_encode(&b, &job) == -1)
		abort();
	if (dlp_job_decode(b.p + 4, b.len - 4, &job2) == -1)
		abort();
	dlp_buf_init(&b2);
	if (dlp_job_encode(&b2, &job2) == -1 || b2.len != b.len ||
	    memcmp(b.p, b2.p, b.len) != 0)
		abort();
	dlp_buf_free(&b);
	dlp_buf_free(&b2);
	dlp_job_free(&job);
	dlp_job_free(&job2);
}

static void
fuzz_frep(const char *p, size_t n)
{
	struct dlp_frep f;
	struct dlp_buf b;
	size_t i, k;

	if (dlp_frep_decode(p, n, &f) == -1)
		return;
	if (f.why == NULL || f.rtype == NULL || f.txt == NULL || f.ntxt > DLP_FETCH_TXT_MAX ||
	    f.txt[f.ntxt] != NULL || f.pol.nmx > MTASTS_MX_MAX ||
	    f.pol.mode > MTASTS_ENFORCE || f.pol.max_age < 0 ||
	    f.pol.max_age > MTASTS_MAX_AGE_MAX)
		abort();
	for (i = 0; i < f.ntxt; i++)
		if (f.txt[i] == NULL || strlen(f.txt[i]) > DLP_STR_MAX)
			abort();
	for (i = 0; i < f.pol.nmx; i++)
		if (strlen(f.pol.mx[i]) > MTASTS_NAME_MAX)
			abort();
	if (f.nhost > DLP_FETCH_HOST_MAX || f.implicit > 1 || f.ntlsa > DLP_FETCH_TLSA_MAX ||
	    f.secure > 1 || (f.nhost > 0 && f.kind != DLP_FETCH_MX && f.kind != DLP_FETCH_HOST))
		abort();
	for (i = 0; i < f.nhost; i++) {
		const struct dlp_fhost *h = &f.host[i];

		if (h->name == NULL || h->name[0] == '\0' ||
		    strlen(h->name) > DLP_FETCH_NAME_MAX || h->pref > 65535 || h->secure > 1 ||
		    h->naddr > DLP_FETCH_ADDR_MAX)
			abort();
		for (k = 0; k < h->naddr; k++)
			if (h->addr[k] == NULL || h->addr[k][0] == '\0' ||
			    strlen(h->addr[k]) > DLP_FETCH_NAME_MAX)
				abort();
	}
	dlp_buf_init(&b);
	if (dlp_frep_encode(&b, &f) == -1 || b.len - 4 != n || memcmp(b.p + 4, p, n) != 0)
		abort();
	dlp_buf_free(&b);
	dlp_frep_free(&f);
}

static void
fuzz_freq(const char *p, size_t n)
{
	struct dlp_freq q;
	struct dlp_buf b;

	if (dlp_freq_decode(p, n, &q) == -1)
		return;
	if (q.name == NULL || q.nhdr > DLP_FETCH_HDR_MAX || q.body + q.len != p + n ||
	    q.port > 65535)
		abort();
	dlp_buf_init(&b);
	if (dlp_freq_encode(&b, &q) == -1 || b.len - 4 != n || memcmp(b.p + 4, p, n) != 0)
		abort();
	dlp_buf_free(&b);
	dlp_freq_free(&q);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *p;

	if (size < 1)
		return 0;
	/* a copy of exactly the frame: reads past it are caught */
	if ((p = malloc(size - 1 + 1)) == NULL)
		return 0;
	memcpy(p, data + 1, size - 1);
	switch (data[0] & 3) {
	case 0:
		fuzz_result(p, size - 1);
		break;
	case 1:
		fuzz_job(p, size - 1);
		break;
	case 2:
		fuzz_frep(p, size - 1);
		break;
	default:
		fuzz_freq(p, size - 1);
		break;
	}
	free(p);
	return 0;
}
