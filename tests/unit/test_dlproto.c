/*
 * test_dlproto.c - frames in batches (dlproto.c): several frames in one
 * sendmsg, read back through dlp_rbuf whatever way the bytes arrive; the
 * fetch process's DNS replies (MX and host lists, TLSA counts): what a
 * hostile process could send past the bounds is refused.
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

/* A reply frame written by hand, past what the encoder allows. */
struct wr {
	char	 p[64 * 1024];
	size_t	 n;
};

static void
w32(struct wr *w, uint32_t v)
{
	unsigned char x[4] = { v >> 24, v >> 16, v >> 8, v };

	memcpy(w->p + w->n, x, 4);
	w->n += 4;
}

static void
wstr(struct wr *w, const char *s)
{
	w32(w, (uint32_t)strlen(s));
	memcpy(w->p + w->n, s, strlen(s));
	w->n += strlen(s);
}

/* An MX reply: nhost hosts of naddr addresses; name, pref, secure, implicit. */
static void
mx_reply(struct wr *w, uint32_t nhost, uint32_t naddr, const char *name, uint32_t pref,
    uint32_t secure, uint32_t implicit)
{
	uint32_t i, k;

	w->n = 0;
	w32(w, DLP_FETCH_MX);
	w32(w, 7);		/* the id */
	w32(w, 0);
	wstr(w, "");
	wstr(w, "");
	w32(w, 0);
	w32(w, implicit);
	w32(w, nhost);
	for (i = 0; i < nhost; i++) {
		wstr(w, name);
		w32(w, pref);
		w32(w, secure);
		w32(w, naddr);
		for (k = 0; k < naddr; k++)
			wstr(w, k % 2 ? "2001:db8::25" : "192.0.2.25");
	}
}

static int
mx_decodes(const struct wr *w)
{
	struct dlp_frep f;

	if (dlp_frep_decode(w->p, w->n, &f) == -1)
		return 0;
	dlp_frep_free(&f);
	return 1;
}

static void
test_fetch_dns(void)
{
	static char *a0[] = { "192.0.2.25", "2001:db8::25" }, *a1[] = { "192.0.2.26" };
	struct dlp_fhost hosts[2] = { { "mx1.example.org", 10, 1, 2, a0 },
	    { "mx2.example.org", 20, 0, 1, a1 } };
	struct dlp_freq q = { DLP_FETCH_TLSA, "mx.example.org", 0, NULL, NULL, 0, 25, 0 },
	    q2;
	struct dlp_frep f, g;
	struct dlp_buf b;
	struct wr w;
	char name[300];
	size_t cut;
	int cuts_ok = 1;

	memset(&f, 0, sizeof(f));
	f.kind = DLP_FETCH_MX;
	f.why = f.rtype = "";
	f.nhost = 2;
	f.host = hosts;
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == 0 && dlp_frep_decode(b.p + 4, b.len - 4, &g) == 0 &&
	    g.nhost == 2 && strcmp(g.host[0].name, "mx1.example.org") == 0 &&
	    g.host[0].pref == 10 && g.host[0].secure == 1 && g.host[0].naddr == 2 &&
	    strcmp(g.host[0].addr[1], "2001:db8::25") == 0 && g.host[1].naddr == 1 &&
	    g.host[1].secure == 0 && !g.implicit, "an MX reply goes through the frame");
	dlp_frep_free(&g);
	for (cut = 0; cut < b.len - 4; cut++)
		if (dlp_frep_decode(b.p + 4, cut, &g) == 0) {
			cuts_ok = 0;
			dlp_frep_free(&g);
		}
	ok(cuts_ok, "an MX reply cut anywhere is refused");
	memcpy(w.p, b.p + 4, b.len - 4);
	w.p[b.len - 4] = 0;
	w.n = b.len - 3;
	ok(!mx_decodes(&w), "a byte past the MX reply is refused");
	dlp_buf_free(&b);

	/* a failed lookup carries no hosts; a frame that has them is refused */
	f.status = 2;
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == 0 && b.len - 4 == 24,
	    "a failed MX lookup: id, status and reason only");
	dlp_buf_free(&b);
	f.status = 0;

	mx_reply(&w, DLP_FETCH_HOST_MAX, DLP_FETCH_ADDR_MAX, "mx.example.org", 65535, 1, 1);
	ok(mx_decodes(&w), "16 hosts of 16 addresses each: the bound, taken");
	mx_reply(&w, DLP_FETCH_HOST_MAX + 1, 1, "mx.example.org", 10, 0, 0);
	ok(!mx_decodes(&w), "17 hosts are refused");
	mx_reply(&w, 1, DLP_FETCH_ADDR_MAX + 1, "mx.example.org", 10, 0, 0);
	ok(!mx_decodes(&w), "17 addresses of a host are refused");
	mx_reply(&w, 1, 1, "", 10, 0, 0);
	ok(!mx_decodes(&w), "an empty host name is refused");
	memset(name, 'a', DLP_FETCH_NAME_MAX + 1);
	name[DLP_FETCH_NAME_MAX + 1] = '\0';
	mx_reply(&w, 1, 1, name, 10, 0, 0);
	ok(!mx_decodes(&w), "a host name of 256 bytes is refused");
	mx_reply(&w, 1, 1, "mx.example.org", 65536, 0, 0);
	ok(!mx_decodes(&w), "a preference over 65535 is refused");
	mx_reply(&w, 1, 1, "mx.example.org", 10, 2, 0);
	ok(!mx_decodes(&w), "a DNSSEC flag other than 0 or 1 is refused");
	mx_reply(&w, 1, 1, "mx.example.org", 10, 0, 2);
	ok(!mx_decodes(&w), "an implicit flag other than 0 or 1 is refused");
	mx_reply(&w, 1, 1, "mx.example.org", 10, 0, 0);
	w.p[3] = DLP_FETCH_TLSA + 1;
	ok(!mx_decodes(&w), "an unknown kind is refused");
	f.nhost = DLP_FETCH_HOST_MAX + 1;
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == -1, "the encoder refuses 17 hosts");
	dlp_buf_free(&b);

	/* TLSA: a count and a flag */
	memset(&f, 0, sizeof(f));
	f.kind = DLP_FETCH_TLSA;
	f.why = f.rtype = "";
	f.ntlsa = 3;
	f.secure = 1;
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == 0 && dlp_frep_decode(b.p + 4, b.len - 4, &g) == 0 &&
	    g.ntlsa == 3 && g.secure == 1, "a TLSA reply goes through the frame");
	dlp_frep_free(&g);
	b.p[b.len - 5] = DLP_FETCH_TLSA_MAX + 1;	/* the count's low byte */
	ok(dlp_frep_decode(b.p + 4, b.len - 4, &g) == -1, "33 TLSA records are refused");
	dlp_buf_free(&b);

	/* the request carries the port */
	dlp_buf_init(&b);
	ok(dlp_freq_encode(&b, &q) == 0 && dlp_freq_decode(b.p + 4, b.len - 4, &q2) == 0 &&
	    q2.kind == DLP_FETCH_TLSA && q2.port == 25 &&
	    strcmp(q2.name, "mx.example.org") == 0, "a TLSA request carries its port");
	dlp_freq_free(&q2);
	b.p[4 + 4 + 4 + 4 + strlen(q.name) + 1] = 1;	/* port 65561 */
	ok(dlp_freq_decode(b.p + 4, b.len - 4, &q2) == -1, "a port over 65535 is refused");
	dlp_buf_free(&b);
}

/* A request's id comes back in its reply (fetch.c matches them). */
static void
test_fetch_id(void)
{
	struct dlp_freq q = { DLP_FETCH_MX, "example.org", 0, NULL, NULL, 0, 25, 0xfffffffeu },
	    q2;
	struct dlp_frep f, g;
	struct dlp_buf b;

	dlp_buf_init(&b);
	ok(dlp_freq_encode(&b, &q) == 0 && dlp_freq_decode(b.p + 4, b.len - 4, &q2) == 0 &&
	    q2.id == 0xfffffffeu && q2.kind == DLP_FETCH_MX && q2.port == 25 &&
	    strcmp(q2.name, "example.org") == 0, "a request carries its id");
	dlp_freq_free(&q2);
	dlp_buf_free(&b);
	memset(&f, 0, sizeof(f));
	f.kind = DLP_FETCH_TXT;
	f.id = 42;
	f.status = 3;
	f.why = "no answer";
	f.rtype = "";
	dlp_buf_init(&b);
	ok(dlp_frep_encode(&b, &f) == 0 && dlp_frep_decode(b.p + 4, b.len - 4, &g) == 0 &&
	    g.id == 42 && g.kind == DLP_FETCH_TXT && g.status == 3 &&
	    strcmp(g.why, "no answer") == 0, "a reply carries the id it was given");
	dlp_frep_free(&g);
	ok(dlp_frep_decode(b.p + 4, 6, &g) == -1, "a reply cut inside its id is refused");
	dlp_buf_free(&b);
}

int
main(void)
{
	test_batch();
	test_pieces();
	test_bad();
	test_fetch_dns();
	test_fetch_id();
	return done_testing();
}
