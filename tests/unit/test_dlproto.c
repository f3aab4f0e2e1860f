/*
 * test_dlproto.c - frames in batches (dlproto.c): several frames in one
 * sendmsg, read back through dlp_rbuf whatever way the bytes arrive.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "agent/delivery/dlproto.h"
#include "tests/unit/tap.h"

/* A frame of len bytes, each (seed + i) & 0xff. */
static void
frame(struct dlp_buf *b, size_t len, unsigned seed)
{
	char *p;
	size_t i;

	dlp_buf_init(b);
	if ((p = malloc(len)) == NULL)
		abort();
	for (i = 0; i < len; i++)
		p[i] = (char)((seed + i) & 0xff);
	/* dlp_buf has no public put: build it by hand after the length */
	if ((b->p = realloc(b->p, 4 + len)) == NULL)
		abort();
	memcpy(b->p + 4, p, len);
	b->len = b->cap = 4 + len;
	free(p);
}

static int
same(const char *got, size_t glen, size_t len, unsigned seed)
{
	size_t i;

	if (glen != len)
		return 0;
	for (i = 0; i < len; i++)
		if (got[i] != (char)((seed + i) & 0xff))
			return 0;
	return 1;
}

static void
test_batch(void)
{
	static const size_t lens[] = { 10, 200 * 1024, 5, DLP_RD_CHUNK - 4, DLP_RD_CHUNK };
	struct dlp_buf b[5];
	struct dlp_rbuf rd;
	char *got;
	size_t glen, i;
	int sv[2], good = 1;
	pid_t pid;

	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	if ((pid = fork()) == 0) {
		close(sv[0]);
		for (i = 0; i < 5; i++)
			frame(&b[i], lens[i], (unsigned)i);
		_exit(dlp_sendv(sv[1], b, 5) == 0 ? 0 : 1);
	}
	close(sv[1]);
	dlp_rbuf_init(&rd);
	for (i = 0; i < 5; i++) {
		if (dlp_recv_rbuf(sv[0], &rd, DLP_FRAME_MAX, &got, &glen) == -1 ||
		    !same(got, glen, lens[i], (unsigned)i))
			good = 0;
		free(got);
	}
	ok(good, "five frames in one sendmsg (one larger than the buffer, two at its edge) "
	    "come back whole and in order");
	ok(!dlp_rbuf_ready(&rd), "nothing more is held");
	errno = EINVAL;
	ok(dlp_recv_rbuf(sv[0], &rd, DLP_FRAME_MAX, &got, &glen) == -1 && errno == 0,
	    "EOF between frames: -1 with errno 0");
	waitpid(pid, NULL, 0);
	close(sv[0]);
	dlp_rbuf_free(&rd);
}

/* The bytes of 40 frames, written in pieces of 1 to 700 bytes. */
static void
test_pieces(void)
{
	struct dlp_buf b;
	struct dlp_rbuf rd;
	char *all = NULL, *got;
	size_t n = 0, off, k, glen, i;
	int sv[2], good = 1, ready = 0;
	pid_t pid;

	for (i = 0; i < 40; i++) {
		frame(&b, (i * 37) % 3000, (unsigned)i);
		b.p[0] = (char)((b.len - 4) >> 24);
		b.p[1] = (char)((b.len - 4) >> 16);
		b.p[2] = (char)((b.len - 4) >> 8);
		b.p[3] = (char)(b.len - 4);
		all = realloc(all, n + b.len);
		memcpy(all + n, b.p, b.len);
		n += b.len;
		dlp_buf_free(&b);
	}
	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	if ((pid = fork()) == 0) {
		close(sv[0]);
		srandom(7);
		for (off = 0; off < n; off += k) {
			k = 1 + (size_t)random() % 700;
			if (k > n - off)
				k = n - off;
			if (write(sv[1], all + off, k) != (ssize_t)k)
				_exit(1);
			if (random() % 4 == 0)
				usleep(100);
		}
		_exit(0);
	}
	close(sv[1]);
	dlp_rbuf_init(&rd);
	for (i = 0; i < 40; i++) {
		ready += dlp_rbuf_ready(&rd);
		if (dlp_recv_rbuf(sv[0], &rd, DLP_FRAME_MAX, &got, &glen) == -1 ||
		    !same(got, glen, (i * 37) % 3000, (unsigned)i))
			good = 0;
		free(got);
	}
	ok(good, "40 frames written in random pieces are read whole and in order");
	printf("# %d of them were held whole before their read\n", ready);
	waitpid(pid, NULL, 0);
	close(sv[0]);
	dlp_rbuf_free(&rd);
	free(all);
}

static void
test_bad(void)
{
	struct dlp_rbuf rd;
	char hdr[8] = { 0, 0, 0, 100, 'a', 'b', 'c', 'd' };
	char big[4] = { 0x7f, 0, 0, 0 };
	char *got;
	size_t glen;
	int sv[2];

	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	dlp_rbuf_init(&rd);
	(void)!write(sv[1], hdr, sizeof(hdr));
	close(sv[1]);
	ok(dlp_recv_rbuf(sv[0], &rd, DLP_FRAME_MAX, &got, &glen) == -1 && errno == EPROTO,
	    "a frame cut short: -1, EPROTO");
	close(sv[0]);
	dlp_rbuf_free(&rd);

	socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
	dlp_rbuf_init(&rd);
	(void)!write(sv[1], big, sizeof(big));
	ok(dlp_recv_rbuf(sv[0], &rd, DLP_RESULT_MAX, &got, &glen) == -1 && errno == EMSGSIZE,
	    "a length over the limit: -1, EMSGSIZE, before any allocation");
	close(sv[0]);
	close(sv[1]);
	dlp_rbuf_free(&rd);

	ok(dlp_sendv(-1, NULL, DLP_SENDV_MAX + 1) == -1 && errno == EINVAL,
	    "more frames than DLP_SENDV_MAX are refused");
}

int
main(void)
{
	test_batch();
	test_pieces();
	test_bad();
	return done_testing();
}
