/*
 * fuzz_header.c - libFuzzer target for msg_find_header and the header
 * checks.  Input: a header name up to the first NUL (or a fixed name), then
 * a raw message.  Oracles: the unfolded value never holds CR or LF, never
 * outgrows the message, and msg_header_value_ok agrees that it fits a
 * header; msg_add_header output always ends in CRLF with no bare CR/LF.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/mail/message.h"

int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *names[] = { "Subject", "From", "To", "Message-ID", "X" };
	const char *m = (const char *)data, *nul, *name;
	char nbuf[80], *v;
	struct buf b;
	size_t len = size, i, nlen;

	nul = memchr(m, '\0', size < 64 ? size : 64);
	if (nul != NULL) {
		nlen = (size_t)(nul - m);
		memcpy(nbuf, m, nlen);
		nbuf[nlen] = '\0';
		name = nbuf;
		m = nul + 1;
		len = size - nlen - 1;
	} else
		name = names[size % 5];
	if (*name == '\0')
		return 0;
	v = msg_find_header(m, len, name);
	if (v != NULL) {
		if (strlen(v) > len)
			abort();
		if (strchr(v, '\r') != NULL || strchr(v, '\n') != NULL)
			abort();
		if (!msg_header_value_ok(v, len + 1))
			abort();
		if (msg_header_name_ok(name)) {
			buf_init(&b);
			msg_add_header(&b, name, v);
			if (b.len < 2 || b.data[b.len - 2] != '\r' || b.data[b.len - 1] != '\n')
				abort();
			for (i = 0; i < b.len; i++) {
				if (b.data[i] == '\n' && (i == 0 || b.data[i - 1] != '\r'))
					abort();
				if (b.data[i] == '\r' && (i + 1 >= b.len || b.data[i + 1] != '\n'))
					abort();
				/* a folded line continues with white space */
				if (b.data[i] == '\n' && i + 1 < b.len &&
				    b.data[i + 1] != ' ' && b.data[i + 1] != '\t')
					abort();
			}
			buf_free(&b);
		}
		free(v);
	}
	return 0;
}
