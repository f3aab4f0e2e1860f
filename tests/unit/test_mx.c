/*
 * test_mx.c - agent/delivery/mx.c without a DNS server: wire-name, MX and TLSA rdata
 * parsing with crafted (and malformed) bytes, MX ordering and shuffling,
 * null MX, address literals, resolver setup errors, the lookup bound
 * against a silent UDP socket, and concurrent lookups (one of them hanging)
 * against a small DNS responder in a thread of the test.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/core/config.h"
#include "agent/delivery/delivery.h"
#include "agent/delivery/mx.h"
#include "agent/core/otpmaild.h"
#include "tests/unit/tap.h"

#define W(s) ((const unsigned char *)(s)), (sizeof(s) - 1)

static void
test_names(void)
{
	char out[300];
	size_t used = 0;
	char big[300];
	unsigned char lab[70];

	ok(mx_domain_valid("example.org"), "valid domain");
	ok(mx_domain_valid("a-b_c.example.org."), "valid domain, trailing dot");
	ok(!mx_domain_valid(""), "empty domain refused");
	ok(!mx_domain_valid("a..b"), "empty label refused");
	ok(!mx_domain_valid(".a"), "leading dot refused");
	ok(!mx_domain_valid("a b.org"), "space refused");
	ok(!mx_domain_valid("ex@mple.org"), "@ refused");
	ok(!mx_domain_valid("example.org.."), "two trailing dots refused");
	memset(big, 'a', 64);
	strcpy(big + 64, ".org");
	ok(!mx_domain_valid(big), "64-byte label refused");
	memset(big, 'a', 254);
	for (int i = 63; i < 254; i += 64)
		big[i] = '.';
	big[254] = '\0';
	ok(!mx_domain_valid(big), "254-byte name refused");

	is_int(mx_parse_name(W("\x03mx1\x07" "example\x03org\x00"), &used, out,
	    sizeof(out)), 0, "wire name parses");
	is_str(out, "mx1.example.org", "wire name text");
	is_int(used, 17, "wire name length used");
	is_int(mx_parse_name(W("\x00"), &used, out, sizeof(out)), 0, "root parses");
	is_str(out, "", "root is the empty name");
	is_int(mx_parse_name(W("\x03mx1\x07" "exam"), &used, out, sizeof(out)), -1,
	    "truncated label refused");
	is_int(mx_parse_name(W("\x03mx1"), &used, out, sizeof(out)), -1,
	    "missing root label refused");
	is_int(mx_parse_name(W("\xc0\x0c"), &used, out, sizeof(out)), -1,
	    "compression pointer refused");
	is_int(mx_parse_name(W("\x03m x\x00"), &used, out, sizeof(out)), -1,
	    "space in label refused");
	is_int(mx_parse_name(W("\x03m\nx\x00"), &used, out, sizeof(out)), -1,
	    "newline in label refused");
	is_int(mx_parse_name(W("\x03mx1\x03org\x00"), &used, out, 5), -1,
	    "output buffer bound kept");
	lab[0] = 64;
	memset(lab + 1, 'a', 64);
	lab[65] = 0;
	is_int(mx_parse_name(lab, 66, &used, out, sizeof(out)), -1,
	    "64-byte wire label refused");
	is_int(mx_parse_name(W(""), &used, out, sizeof(out)), -1,
	    "empty rdata refused");
}

static void
test_mx_rdata(void)
{
	char name[300];
	int pref = -1;

	is_int(mx_parse_mx_rdata(W("\x00\x0a\x02mx\x07" "example\x03org\x00"), &pref,
	    name, sizeof(name)), 0, "MX rdata parses");
	is_int(pref, 10, "MX preference");
	is_str(name, "mx.example.org", "MX target");
	is_int(mx_parse_mx_rdata(W("\xff\xff\x00"), &pref, name, sizeof(name)), 0,
	    "null MX rdata parses");
	is_int(pref, 65535, "preference is unsigned 16 bits");
	is_str(name, "", "null MX target is the root");
	is_int(mx_parse_mx_rdata(W("\x00\x0a\x02mx\x00garbage"), &pref, name,
	    sizeof(name)), -1, "trailing bytes refused");
	is_int(mx_parse_mx_rdata(W("\x00\x0a"), &pref, name, sizeof(name)), -1,
	    "rdata without a name refused");
	is_int(mx_parse_mx_rdata(W("\x00"), &pref, name, sizeof(name)), -1,
	    "one-byte rdata refused");
}

static void
free_hosts(struct mx_host *h, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(h[i].name);
	free(h);
}

static void
test_hosts(void)
{
	char *data[20];
	int lens[20];
	struct mx_host *h = NULL;
	size_t n = 0;
	char reason[256];
	int seen_ab = 0, seen_ba = 0;
	char buf[20][32];

	data[0] = "\x00\x14\x03mx3\x07" "example\x03org";	/* 20 mx3 */
	lens[0] = 2 + 17;
	data[1] = "\x00\x0a\x03mx1\x07" "example\x03org";	/* 10 mx1 */
	lens[1] = 19;
	data[2] = "\x00\x0a\x03mx2\x07" "example\x03org";	/* 10 mx2 */
	lens[2] = 19;
	data[3] = "\x00\x1e\x03MX1\x07" "example\x03org";	/* 30 MX1 duplicate */
	lens[3] = 19;
	is_int(mx_hosts_from_rdata(data, lens, 4, &h, &n, reason, sizeof(reason)),
	    MX_OK, "MX set parses");
	is_int(n, 3, "duplicate host merged");
	if (n == 3) {
		is_int(h[0].pref, 10, "first host has the best preference");
		is_int(h[1].pref, 10, "second host too");
		is_str(h[2].name, "mx3.example.org", "worst preference last");
		ok(strcmp(h[0].name, "mx3.example.org") != 0, "mx3 not first");
	}
	free_hosts(h, n);

	/* equal preferences come in both orders */
	for (int i = 0; i < 200 && !(seen_ab && seen_ba); i++) {
		if (mx_hosts_from_rdata(data + 1, lens + 1, 2, &h, &n, reason,
		    sizeof(reason)) != MX_OK || n != 2)
			break;
		if (strcmp(h[0].name, "mx1.example.org") == 0)
			seen_ab = 1;
		else
			seen_ba = 1;
		free_hosts(h, n);
	}
	ok(seen_ab && seen_ba, "equal preferences are shuffled");

	data[0] = (char[]){ 0, 0, 0 };	/* preference 0, root target */
	lens[0] = 3;
	is_int(mx_hosts_from_rdata(data, lens, 1, &h, &n, reason, sizeof(reason)),
	    MX_NULLMX, "single . target is a null MX");
	ok(h == NULL && n == 0, "null MX gives no hosts");

	data[1] = "\x00\x0a\x03mx1\x07" "example\x03org";
	is_int(mx_hosts_from_rdata(data, lens, 2, &h, &n, reason, sizeof(reason)),
	    MX_OK, ". among other MX records is skipped");
	is_int(n, 1, "only the real host remains");
	free_hosts(h, n);

	data[1] = "\x00\x0a\xc0\x0c";
	lens[1] = 4;
	is_int(mx_hosts_from_rdata(data, lens, 2, &h, &n, reason, sizeof(reason)),
	    MX_BADANSWER, "compressed target is a bad answer");
	lens[1] = -1;
	is_int(mx_hosts_from_rdata(data, lens, 2, &h, &n, reason, sizeof(reason)),
	    MX_BADANSWER, "negative length is a bad answer");
	is_int(mx_hosts_from_rdata(data, lens, 0, &h, &n, reason, sizeof(reason)),
	    MX_BADANSWER, "empty set is a bad answer");
	data[1] = (char[]){ 0, 0, 0 };
	lens[1] = 3;
	is_int(mx_hosts_from_rdata(data, lens, 2, &h, &n, reason, sizeof(reason)),
	    MX_BADANSWER, "two null MX records are a bad answer");

	/* more than the cap: the most preferred are kept */
	for (int i = 0; i < 20; i++) {
		buf[i][0] = 0;
		buf[i][1] = (char)(100 - i);
		buf[i][2] = 3;
		snprintf(buf[i] + 3, sizeof(buf[i]) - 3, "h%02d", i);
		buf[i][6] = 0;
		data[i] = buf[i];
		lens[i] = 7;
	}
	is_int(mx_hosts_from_rdata(data, lens, 20, &h, &n, reason, sizeof(reason)),
	    MX_OK, "20 MX records parse");
	is_int(n, 16, "capped at 16 hosts");
	if (n == 16) {
		is_int(h[0].pref, 81, "best preference kept");
		is_int(h[15].pref, 96, "worst kept is the 16th best");
	}
	free_hosts(h, n);
}

static void
test_tlsa(void)
{
	unsigned char rd[3 + 64];
	struct tlsa_rr rr;

	memset(rd, 0xab, sizeof(rd));
	rd[0] = 3; rd[1] = 1; rd[2] = 1;
	is_int(mx_parse_tlsa_rdata(rd, 35, &rr), 0, "TLSA 3 1 1 parses");
	ok(rr.usage == 3 && rr.selector == 1 && rr.mtype == 1 && rr.len == 32 &&
	    rr.data[0] == 0xab, "TLSA fields");
	free(rr.data);
	is_int(mx_parse_tlsa_rdata(rd, 34, &rr), -1, "SHA-256 of 31 bytes refused");
	rd[2] = 2;
	is_int(mx_parse_tlsa_rdata(rd, 67, &rr), 0, "TLSA 3 1 2 parses");
	free(rr.data);
	is_int(mx_parse_tlsa_rdata(rd, 35, &rr), -1, "SHA-512 of 32 bytes refused");
	rd[2] = 0;
	is_int(mx_parse_tlsa_rdata(rd, 40, &rr), 0, "full data parses");
	free(rr.data);
	is_int(mx_parse_tlsa_rdata(rd, 3, &rr), -1, "TLSA without data refused");
}

static void
test_literals(void)
{
	struct mx_addr a;
	struct sockaddr_in *sin = (struct sockaddr_in *)&a.ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&a.ss;

	is_int(mx_parse_literal("[192.0.2.1]", 2525, &a), 0, "IPv4 literal");
	ok(sin->sin_family == AF_INET && ntohs(sin->sin_port) == 2525 &&
	    sin->sin_addr.s_addr == htonl(0xc0000201) && a.sslen == sizeof(*sin),
	    "IPv4 literal address and port");
	is_int(mx_parse_literal("[IPv6:2001:db8::1]", 25, &a), 0, "IPv6: literal");
	ok(sin6->sin6_family == AF_INET6 && ntohs(sin6->sin6_port) == 25,
	    "IPv6 literal family and port");
	is_int(mx_parse_literal("[::1]", 25, &a), 0, "bracketed IPv6");
	is_int(mx_parse_literal("10.0.0.5", 25, &a), 0, "bare IPv4");
	is_int(mx_parse_literal("mx.example.org", 25, &a), 1, "a name is no literal");
	is_int(mx_parse_literal("[mx.example.org]", 25, &a), -1, "bad literal");
	is_int(mx_parse_literal("[]", 25, &a), -1, "empty literal");
	is_int(mx_parse_literal("[192.0.2.1", 25, &a), -1, "unclosed literal");
}

/* mx_lookup, and in *ms the milliseconds it took. */
static enum mx_status
timed_lookup(struct mx_resolver *r, const char *domain, struct mx_list **l,
    char *reason, size_t len, long *ms)
{
	struct timespec t0, t1;
	enum mx_status st;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	st = mx_lookup(r, domain, 25, l, reason, len);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	*ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	return st;
}

static void
test_resolver(void)
{
	struct config cfg;
	struct mx_resolver *r;
	struct mx_list *l = NULL;
	struct tlsa_set *t = NULL;
	char err[256], reason[256], ta[] = "/tmp/test_mx_ta.XXXXXX";
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	long ms;
	int fd, s;
	FILE *fp;

	memset(&cfg, 0, sizeof(cfg));
	cfg.resolver = "not an address";
	cfg.dns_trust_anchor = "";
	ok(mx_resolver_new(&cfg, err, sizeof(err)) == NULL, "bad resolver refused");
	cfg.resolver = "127.0.0.1@53";
	cfg.dns_trust_anchor = "/nonexistent/ta";
	r = mx_resolver_new(&cfg, err, sizeof(err));
	ok(r == NULL && strstr(err, "/nonexistent/ta") != NULL,
	    "missing trust anchor file refused");
	mx_resolver_free(r);

	if ((fd = mkstemp(ta)) != -1 && (fp = fdopen(fd, "w")) != NULL) {
		fputs("; comment\nexample.net. IN DS 12345 13 2 (\n"
		    " 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef )\n", fp);
		fclose(fp);
	}
	cfg.dns_trust_anchor = ta;
	r = mx_resolver_new(&cfg, err, sizeof(err));
	ok(r != NULL, "multi-line DS trust anchor accepted");
	mx_resolver_free(r);
	if ((fp = fopen(ta, "w")) != NULL) {
		fputs("example.net. IN DS garbage\n", fp);
		fclose(fp);
	}
	r = mx_resolver_new(&cfg, err, sizeof(err));
	ok(r == NULL, "malformed trust anchor refused");
	mx_resolver_free(r);
	unlink(ta);

	/* a DNS server that never answers: bounded, temporary */
	s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s == -1 || bind(s, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    getsockname(s, (struct sockaddr *)&sin, &slen) == -1) {
		ok(0, "silent DNS socket");
		return;
	}
	snprintf(err, sizeof(err), "127.0.0.1@%d", ntohs(sin.sin_port));
	cfg.resolver = err;
	cfg.dns_trust_anchor = "";
	r = mx_resolver_new(&cfg, reason, sizeof(reason));
	ok(r != NULL, "resolver on a silent server");
	if (r == NULL)
		return;
	mx_resolver_set_timeout(r, 1500);
	is_int(timed_lookup(r, "example.org", &l, reason, sizeof(reason), &ms),
	    MX_TEMPFAIL, "silent DNS: MX lookup is a temporary failure");
	/* upper bounds generous enough for a loaded machine */
	ok(ms >= 1000 && ms < 15000, "silent DNS: bounded by the timeout");
	diag("took %ld ms: %s", ms, reason);
	ok(l == NULL, "no list on failure");
	is_int(mx_tlsa(r, "mx.example.org", 25, &t, reason, sizeof(reason)),
	    MX_TEMPFAIL, "silent DNS: TLSA lookup is a temporary failure");
	ok(t == NULL, "no TLSA set on failure");
	is_int(mx_host(r, "mx.example.org", 25, &l, reason, sizeof(reason)),
	    MX_TEMPFAIL, "silent DNS: host lookup is a temporary failure");

	/* no DNS needed */
	is_int(mx_lookup(r, "bad..domain", 25, &l, reason, sizeof(reason)),
	    MX_NXDOMAIN, "invalid domain is permanent without a query");
	is_int(mx_host(r, "[192.0.2.7]", 587, &l, reason, sizeof(reason)), MX_OK,
	    "literal host needs no DNS");
	ok(l != NULL && l->nhosts == 1 && l->hosts[0].naddr == 1 &&
	    ntohs(((struct sockaddr_in *)&l->hosts[0].addrs[0].ss)->sin_port) == 587,
	    "literal host address and port");
	mx_list_free(l);
	l = NULL;
	is_int(mx_lookup(r, "[192.0.2.7]", 25, &l, reason, sizeof(reason)), MX_OK,
	    "address-literal domain needs no DNS");
	mx_list_free(l);
	mx_resolver_free(r);

	cfg.sandbox = 1;
	is_int(mx_check_local(&cfg, "nx.example.org", reason, sizeof(reason)),
	    0, "sandbox mode never refuses");
	close(s);
}


/* ------------------------------------------------------------ fake DNS */

static int fake_fd = -1;
static _Atomic int fake_stop;	/* set by main, read by the responder */

/* Appends a wire name for text (no compression). */
static size_t
fake_name(unsigned char *p, const char *text)
{
	size_t n = 0;
	const char *s = text, *dot;

	while (*s) {
		dot = strchr(s, '.');
		size_t l = dot ? (size_t)(dot - s) : strlen(s);
		p[n++] = (unsigned char)l;
		memcpy(p + n, s, l);
		n += l;
		s += l;
		if (*s == '.')
			s++;
	}
	p[n++] = 0;
	return n;
}

static size_t
fake_rr(unsigned char *p, int type, const unsigned char *rd, size_t rdlen)
{
	size_t n = 0;

	p[n++] = 0xc0; p[n++] = 12;		/* the question's name */
	p[n++] = (unsigned char)(type >> 8); p[n++] = (unsigned char)type;
	p[n++] = 0; p[n++] = 1;
	p[n++] = 0; p[n++] = 0; p[n++] = 0; p[n++] = 60;
	p[n++] = (unsigned char)(rdlen >> 8); p[n++] = (unsigned char)rdlen;
	memcpy(p + n, rd, rdlen);
	return n + rdlen;
}

static size_t
fake_mx(unsigned char *p, int pref, const char *host)
{
	unsigned char rd[300];
	size_t n;

	rd[0] = (unsigned char)(pref >> 8);
	rd[1] = (unsigned char)pref;
	n = 2 + (host[0] ? fake_name(rd + 2, host) : (rd[2] = 0, 1));
	return fake_rr(p, 15, rd, n);
}

static void *
fake_dns(void *arg)
{
	unsigned char q[512], a[1024];
	struct sockaddr_storage from;
	socklen_t flen;
	struct pollfd pfd = { .fd = fake_fd, .events = POLLIN };
	char name[300];
	size_t used, n, an;
	ssize_t len;
	int type, rcode;
	static const unsigned char lo2[4] = { 127, 0, 0, 2 }, lo3[4] = { 127, 0, 0, 3 };

	(void)arg;
	while (!fake_stop) {
		if (poll(&pfd, 1, 100) <= 0)
			continue;
		flen = sizeof(from);
		if ((len = recvfrom(fake_fd, q, sizeof(q), 0,
		    (struct sockaddr *)&from, &flen)) < 17)
			continue;
		if (mx_parse_name(q + 12, (size_t)len - 12, &used, name, sizeof(name)) == -1 ||
		    12 + used + 4 > (size_t)len)
			continue;
		type = (q[12 + used] << 8) | q[13 + used];
		for (char *c = name; *c; c++)	/* 0x20 randomisation, if any */
			if (*c >= 'A' && *c <= 'Z')
				*c = (char)(*c - 'A' + 'a');
		n = 12 + used + 4;
		memcpy(a, q, n);
		an = 0;
		rcode = 0;
		if (strncmp(name, "slow", 4) == 0)
			continue;			/* never answers */
		if (strcmp(name, "example.org") == 0 && type == 15) {
			n += fake_mx(a + n, 20, "mx2.example.org");
			n += fake_mx(a + n, 10, "mx1.example.org");
			an = 2;
		} else if (strcmp(name, "null.example.org") == 0 && type == 15) {
			n += fake_mx(a + n, 0, "");
			an = 1;
		} else if (strcmp(name, "bad.example.org") == 0 && type == 15) {
			n += fake_rr(a + n, 15, (const unsigned char *)"\0\x0a\x05" "ab", 5);
			an = 1;
		} else if (strcmp(name, "mx1.example.org") == 0 && type == 1) {
			n += fake_rr(a + n, 1, lo2, 4);
			an = 1;
		} else if (strcmp(name, "mx2.example.org") == 0 && type == 1) {
			n += fake_rr(a + n, 1, lo3, 4);
			an = 1;
		} else if (strcmp(name, "mx1.example.org") != 0 &&
		    strcmp(name, "mx2.example.org") != 0 &&
		    strcmp(name, "example.org") != 0 &&
		    strcmp(name, "null.example.org") != 0 &&
		    strcmp(name, "bad.example.org") != 0)
			rcode = 3;
		a[2] = 0x84 | (q[2] & 0x01);		/* QR AA, RD copied */
		a[3] = 0x80 | (unsigned char)rcode;	/* RA */
		a[4] = 0; a[5] = 1;
		a[6] = 0; a[7] = (unsigned char)an;
		a[8] = a[9] = a[10] = a[11] = 0;
		(void)sendto(fake_fd, a, n, 0, (struct sockaddr *)&from, flen);
	}
	return NULL;
}

struct worker {
	struct mx_resolver *r;
	const char	*domain;
	int		 iterations;
	int		 good;
	long		 max_ms;
};

static void *
worker_run(void *arg)
{
	struct worker *w = arg;
	struct mx_list *l;
	char reason[256];
	long ms;

	for (int i = 0; i < w->iterations; i++) {
		enum mx_status st = timed_lookup(w->r, w->domain, &l, reason,
		    sizeof(reason), &ms);

		if (ms > w->max_ms)
			w->max_ms = ms;
		if (st == MX_OK && l->nhosts == 2 &&
		    strcmp(l->hosts[0].name, "mx1.example.org") == 0 &&
		    l->hosts[0].naddr == 1 &&
		    ((struct sockaddr_in *)&l->hosts[0].addrs[0].ss)->sin_addr.s_addr ==
		    htonl(0x7f000002) &&
		    strcmp(l->hosts[1].name, "mx2.example.org") == 0)
			w->good++;
		mx_list_free(l);
	}
	return NULL;
}

static void
test_fake_dns(void)
{
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	struct config cfg;
	struct mx_resolver *r, *r2;
	struct mx_list *l = NULL;
	pthread_t srv, th[9];
	struct worker w[9];
	char spec[64], err[256], reason[256];
	int i, good = 0;
	long max_fast = 0;

	fake_fd = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fake_fd == -1 || bind(fake_fd, (struct sockaddr *)&sin, sizeof(sin)) == -1 ||
	    getsockname(fake_fd, (struct sockaddr *)&sin, &slen) == -1 ||
	    pthread_create(&srv, NULL, fake_dns, NULL) != 0) {
		ok(0, "fake DNS responder");
		return;
	}
	snprintf(spec, sizeof(spec), "127.0.0.1@%d", ntohs(sin.sin_port));
	memset(&cfg, 0, sizeof(cfg));
	cfg.resolver = spec;
	cfg.dns_trust_anchor = "";
	if ((r = mx_resolver_new(&cfg, err, sizeof(err))) == NULL) {
		ok(0, "resolver on the fake DNS");
		goto out;
	}
	mx_resolver_set_timeout(r, 3000);

	is_int(mx_lookup(r, "example.org", 25, &l, reason, sizeof(reason)), MX_OK,
	    "wire answer: MX ok");
	ok(l != NULL && l->nhosts == 2 && l->hosts[0].pref == 10 &&
	    strcmp(l->hosts[0].name, "mx1.example.org") == 0 && !l->implicit,
	    "wire answer: preferred host first");
	mx_list_free(l);
	l = NULL;
	is_int(mx_lookup(r, "null.example.org", 25, &l, reason, sizeof(reason)),
	    MX_NULLMX, "wire answer: null MX");
	is_int(mx_lookup(r, "nx.example.org", 25, &l, reason, sizeof(reason)),
	    MX_NXDOMAIN, "wire answer: NXDOMAIN");
	{
		enum mx_status st = mx_lookup(r, "bad.example.org", 25, &l, reason,
		    sizeof(reason));
		ok(st == MX_TEMPFAIL || st == MX_BADANSWER,
		    "malformed MX on the wire: deferred, no crash");
		diag("malformed MX: %s (%s)", mx_status_name(st), reason);
	}
	ok(l == NULL, "no list for failures");

	/* 8 threads share the resolver while a ninth waits on a hanging query */
	memset(w, 0, sizeof(w));
	for (i = 0; i < 9; i++) {
		w[i].r = r;
		w[i].domain = i == 8 ? "slow.example.org" : "example.org";
		w[i].iterations = i == 8 ? 1 : 25;
	}
	pthread_create(&th[8], NULL, worker_run, &w[8]);
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, worker_run, &w[i]);
	for (i = 0; i < 9; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < 8; i++) {
		good += w[i].good;
		if (w[i].max_ms > max_fast)
			max_fast = w[i].max_ms;
	}
	is_int(good, 200, "200 concurrent lookups, all right");
	ok(max_fast < 2900, "a hanging query does not hold the others to its bound");
	diag("slowest concurrent lookup %ld ms, hanging one %ld ms", max_fast,
	    w[8].max_ms);
	ok(w[8].good == 0 && w[8].max_ms >= 2900 && w[8].max_ms < 20000,
	    "the hanging query ends at its bound");

	/* A second handle shares the context (delivery and the submission
	 * check), with its own bound; freeing it leaves the first working. */
	if ((r2 = mx_resolver_dup(r)) == NULL) {
		ok(0, "second handle on the resolver");
	} else {
		long ms;

		mx_resolver_set_timeout(r2, 1000);
		is_int(timed_lookup(r2, "slow2.example.org", &l, reason, sizeof(reason), &ms),
		    MX_TEMPFAIL, "second handle: hanging query is a temporary failure");
		ok(ms >= 900 && ms < 15000, "second handle: its own bound");
		diag("second handle, hanging query: %ld ms", ms);
		is_int(mx_lookup(r2, "example.org", 25, &l, reason, sizeof(reason)), MX_OK,
		    "second handle: answers");
		mx_list_free(l);
		l = NULL;
		mx_resolver_free(r2);
	}
	is_int(mx_lookup(r, "example.org", 25, &l, reason, sizeof(reason)), MX_OK,
	    "first handle answers after the second is freed");
	mx_list_free(l);
	l = NULL;
	mx_resolver_free(r);
out:
	fake_stop = 1;
	pthread_join(srv, NULL);
	close(fake_fd);
}

/* Which addresses delivery through DNS never connects to. */
static void
test_internal(void)
{
	static const char *const inside[] = { "127.0.0.1", "127.9.9.9", "10.1.2.3",
	    "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
	    "100.64.0.1", "100.100.100.200", "0.0.0.0", "224.0.0.1", "255.255.255.255",
	    "198.18.0.1", "192.0.0.1", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1",
	    "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe",
	    "2002:7f00:1::1", "fec0::1", "100::1", NULL };
	static const char *const outside[] = { "192.0.2.1", "8.8.8.8", "172.32.0.1",
	    "100.128.0.1", "169.253.0.1", "2001:db8::1", "2a00:1450::1",
	    "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", NULL };
	struct mx_addr a;
	char name[128];
	size_t i;

	for (i = 0; inside[i] != NULL; i++) {
		snprintf(name, sizeof(name), "%s is internal", inside[i]);
		ok(mx_parse_literal(inside[i], 25, &a) == 0 && mx_addr_internal(&a), name);
	}
	for (i = 0; outside[i] != NULL; i++) {
		snprintf(name, sizeof(name), "%s is not internal", outside[i]);
		ok(mx_parse_literal(outside[i], 25, &a) == 0 && !mx_addr_internal(&a), name);
	}
}

int
main(void)
{
	test_names();
	test_internal();
	test_mx_rdata();
	test_hosts();
	test_tlsa();
	test_literals();
	test_resolver();
	test_fake_dns();
	mx_resolver_shared_free();
	return done_testing();
}
