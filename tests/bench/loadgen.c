/*
 * loadgen.c - load generator for otpmaild's control socket (tests/bench).
 * N client threads, each with its own connection and one request in flight,
 * send a fixed total (closed loop) or a fixed rate (open loop, latency from
 * the scheduled send time so a stalled daemon is not hidden); every answer's
 * latency is recorded and the run ends with msgs/s and p50/p99/p999.
 *   loadgen -s SOCK -o issue|send|verify|ping|raw [-n N] [-c C] [-r RATE] ...
 * The last line is machine-readable: "RESULT key=value ..." (see lg_usage()).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define LG_MAX_ANSWER	(1024 * 1024)	/* longest answer line we accept */
#define LG_MAX_ERRKINDS	16
#define LG_ERRLEN	32
#define LG_MAX_CODE	16
#define LG_MAX_ADDR	256

enum lg_op { LG_PING, LG_ISSUE, LG_SEND, LG_VERIFY, LG_RAW };

struct lg_code {		/* one issued code to verify */
	char	addr[LG_MAX_ADDR];
	char	code[LG_MAX_CODE];
};

struct lg_item {		/* one request of the run */
	uint32_t	 seq;
	int32_t		 code;		/* index into codes (verify), else -1 */
	uint8_t		 right;		/* verify: the right code */
};

struct lg_result {
	int64_t		 send_rt;	/* CLOCK_REALTIME of the (scheduled) send, ns */
	int64_t		 lat;		/* ns, -1 = no answer */
	int8_t		 ok;
	int8_t		 err;		/* index into lg_errs, -1 = none */
};

struct lg_client {
	pthread_t	 thread;
	int		 fd;
	char		*rbuf;
	size_t		 rlen;
	size_t		 rcap;
	/* verify: this client's own items (each address's attempts in order) */
	size_t		*mine;
	size_t		 nmine;
};

static void	lg_usage(FILE *);
static int64_t	lg_now(clockid_t);
static void	lg_sleep_until(int64_t mono);
static int	lg_connect(const char *);
static int	lg_write_all(int, const char *, size_t);
static int	lg_read_line(struct lg_client *, char **line, size_t *len);
static void	lg_consume(struct lg_client *, size_t linelen);
static int	lg_answer_ok(const char *line, char *err, size_t errlen);
static int	lg_err_index(const char *);
static int	lg_build(const struct lg_item *, char **out, size_t *len);
static void	lg_addr(uint32_t seq, char *out, size_t len);
static void	lg_json_escape(const char *in, char *out, size_t outlen);
static int	lg_load_codes(const char *);
static void	lg_wrong_code(const char *right, char *out, size_t len);
static void	*lg_worker(void *);
static int	lg_cmp_i64(const void *, const void *);
static double	lg_pct(const int64_t *sorted, size_t n, double p);

/* options */
static const char	*sock_path;
static enum lg_op	 op = LG_ISSUE;
static size_t		 total = 1000;
static int		 nclients = 16;
static double		 rate;		/* 0 = closed loop */
static double		 duration;	/* seconds, with rate */
static const char	*domain = "bench.example.org";
static const char	*prefix;
static char		 prefix_buf[64];
static const char	*purpose = "login";
static const char	*from_addr;
static size_t		 body_size = 1800;
static const char	*codes_file;
static int		 wrong_per_right = 1;
static const char	*log_file;
static const char	*raw_template;
static int		 timeout_s = 60;
static int		 quiet;

/* run state */
static struct lg_code	*codes;
static size_t		 ncodes;
static struct lg_item	*items;
static size_t		 nitems;
static struct lg_result	*results;
static atomic_size_t	 next_item;
static int64_t		 t0_mono;	/* start of the run */
static int64_t		 t0_real;
static char		*body_json;	/* the filler text, JSON-escaped */
static char		 lg_errs[LG_MAX_ERRKINDS][LG_ERRLEN];
static atomic_int	 nerrkinds;
static pthread_mutex_t	 errs_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int	 disconnects;

static void
lg_usage(FILE *f)
{
	fprintf(f,
	    "usage: loadgen -s SOCKET [-o OP] [-n TOTAL] [-c CLIENTS] [-r RATE -d SECONDS]\n"
	    "               [-D DOMAIN] [-p PREFIX] [-P PURPOSE] [-F FROM] [-b BODY_BYTES]\n"
	    "               [-k CODES_FILE] [-w WRONG_PER_RIGHT] [-l LOG] [-t TEMPLATE]\n"
	    "               [-T TIMEOUT_S] [-q]\n"
	    "  -o issue   otp.issue to a unique address PREFIX<n>@DOMAIN (default)\n"
	    "  -o send    mail.send of a BODY_BYTES text (default 1800: ~2 KB message)\n"
	    "  -o verify  otp.verify from CODES_FILE (lines \"address code\"): per address\n"
	    "             WRONG_PER_RIGHT wrong codes, then the right one; -n is ignored\n"
	    "  -o ping    ping\n"
	    "  -o raw     TEMPLATE with %%n (sequence number) and %%a (address) replaced\n"
	    "  -r/-d      open loop: RATE requests/s for SECONDS (total = RATE*SECONDS);\n"
	    "             latency counts from the scheduled send time\n"
	    "  -l LOG     one line per request: seq address send_realtime_ns latency_ns ok error\n"
	    "Last line: RESULT op= n= ok= err= elapsed_s= rate= p50_ms= p99_ms= p999_ms=\n"
	    "           max_ms= t_first_ns= t_last_ns= errors=kind:count,...\n");
}

static int64_t
lg_now(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
lg_sleep_until(int64_t mono)
{
	struct timespec ts = { .tv_sec = mono / 1000000000, .tv_nsec = mono % 1000000000 };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static int
lg_connect(const char *path)
{
	struct sockaddr_un sun;
	struct timeval tv = { .tv_sec = timeout_s };
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path))
		return -1;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		close(fd);
		return -1;
	}
	return fd;
}

static int
lg_write_all(int fd, const char *p, size_t len)
{
	while (len > 0) {
		ssize_t w = write(fd, p, len);

		if (w == -1 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* Reads one answer line; the line stays valid until the next call. */
static int
lg_read_line(struct lg_client *c, char **line, size_t *len)
{
	static const size_t chunk = 65536;
	char *nl;

	for (;;) {
		nl = c->rlen ? memchr(c->rbuf, '\n', c->rlen) : NULL;
		if (nl != NULL)
			break;
		if (c->rlen >= LG_MAX_ANSWER)
			return -1;
		if (c->rcap - c->rlen < chunk) {
			char *n = realloc(c->rbuf, c->rcap + chunk);

			if (n == NULL)
				return -1;
			c->rbuf = n;
			c->rcap += chunk;
		}
		ssize_t r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);

		if (r == -1 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c->rlen += (size_t)r;
	}
	*nl = '\0';
	*line = c->rbuf;
	*len = (size_t)(nl - c->rbuf);
	return 0;
}

/* Drops the line returned by lg_read_line from the buffer. */
static void
lg_consume(struct lg_client *c, size_t linelen)
{
	size_t used = linelen + 1;

	memmove(c->rbuf, c->rbuf + used, c->rlen - used);
	c->rlen -= used;
}

/*
 * 1 if the answer says "ok": true.  A small scan instead of a JSON parser:
 * the client must cost little next to the daemon.  On failure the "error"
 * string (or "?") goes to err.
 */
static int
lg_answer_ok(const char *line, char *err, size_t errlen)
{
	const char *p = strstr(line, "\"ok\"");
	const char *e;
	size_t n;

	snprintf(err, errlen, "?");
	if (p != NULL) {
		p += 4;
		while (*p == ' ' || *p == ':' || *p == '\t')
			p++;
		if (strncmp(p, "true", 4) == 0)
			return 1;
	}
	e = strstr(line, "\"error\"");
	if (e != NULL && (e = strchr(e + 7, '"')) != NULL) {
		e++;
		n = strcspn(e, "\"");
		if (n >= errlen)
			n = errlen - 1;
		memcpy(err, e, n);
		err[n] = '\0';
	}
	return 0;
}

static int
lg_err_index(const char *err)
{
	int i, n;

	pthread_mutex_lock(&errs_lock);
	n = atomic_load(&nerrkinds);
	for (i = 0; i < n; i++)
		if (strcmp(lg_errs[i], err) == 0)
			goto out;
	if (n < LG_MAX_ERRKINDS) {
		snprintf(lg_errs[n], LG_ERRLEN, "%s", err);
		atomic_store(&nerrkinds, n + 1);
		i = n;
	} else
		i = LG_MAX_ERRKINDS - 1;	/* the last kind collects the rest */
out:
	pthread_mutex_unlock(&errs_lock);
	return i;
}

static void
lg_addr(uint32_t seq, char *out, size_t len)
{
	snprintf(out, len, "%s%" PRIu32 "@%s", prefix, seq, domain);
}

static void
lg_json_escape(const char *in, char *out, size_t outlen)
{
	size_t o = 0;

	for (; *in && o + 7 < outlen; in++) {
		unsigned char ch = (unsigned char)*in;

		if (ch == '"' || ch == '\\') {
			out[o++] = '\\';
			out[o++] = (char)ch;
		} else if (ch == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else if (ch < 0x20) {
			o += (size_t)snprintf(out + o, outlen - o, "\\u%04x", ch);
		} else
			out[o++] = (char)ch;
	}
	out[o] = '\0';
}

/* A right code made wrong: the last character moved to another one. */
static void
lg_wrong_code(const char *right, char *out, size_t len)
{
	size_t n;

	snprintf(out, len, "%s", right);
	n = strlen(out);
	if (n == 0)
		return;
	if (out[n - 1] >= '0' && out[n - 1] <= '9')
		out[n - 1] = (char)('0' + (out[n - 1] - '0' + 1) % 10);
	else
		out[n - 1] = out[n - 1] == 'A' ? 'B' : 'A';
}

static int
lg_build(const struct lg_item *it, char **out, size_t *len)
{
	char addr[LG_MAX_ADDR], eaddr[2 * LG_MAX_ADDR], code[LG_MAX_CODE];
	char *s = NULL;
	int n = -1;

	if (op == LG_VERIFY) {
		const struct lg_code *k = &codes[it->code];

		lg_json_escape(k->addr, eaddr, sizeof(eaddr));
		if (it->right)
			snprintf(code, sizeof(code), "%s", k->code);
		else
			lg_wrong_code(k->code, code, sizeof(code));
		n = asprintf(&s, "{\"op\":\"otp.verify\",\"req_id\":%" PRIu32 ",\"to\":\"%s\","
		    "\"purpose\":\"%s\",\"code\":\"%s\"}\n", it->seq, eaddr, purpose, code);
		goto done;
	}
	lg_addr(it->seq, addr, sizeof(addr));
	lg_json_escape(addr, eaddr, sizeof(eaddr));
	switch (op) {
	case LG_PING:
		n = asprintf(&s, "{\"op\":\"ping\",\"req_id\":%" PRIu32 "}\n", it->seq);
		break;
	case LG_ISSUE:
		n = asprintf(&s, "{\"op\":\"otp.issue\",\"req_id\":%" PRIu32 ",\"to\":\"%s\","
		    "\"purpose\":\"%s\"}\n", it->seq, eaddr, purpose);
		break;
	case LG_SEND:
		n = asprintf(&s, "{\"op\":\"mail.send\",\"req_id\":%" PRIu32 ",\"from\":\"%s\","
		    "\"to\":\"%s\",\"subject\":\"bench message %" PRIu32 "\",\"text\":\"%s\"}\n",
		    it->seq, from_addr, eaddr, it->seq, body_json);
		break;
	case LG_RAW: {
		/* %n -> seq, %a -> address, %% -> % */
		size_t cap = strlen(raw_template) * 2 + 2 * LG_MAX_ADDR + 64, o = 0;
		const char *t;

		s = malloc(cap);
		if (s == NULL)
			return -1;
		for (t = raw_template; *t && o + 2 * LG_MAX_ADDR + 24 < cap; t++) {
			if (t[0] == '%' && t[1] == 'n') {
				o += (size_t)snprintf(s + o, cap - o, "%" PRIu32, it->seq);
				t++;
			} else if (t[0] == '%' && t[1] == 'a') {
				o += (size_t)snprintf(s + o, cap - o, "%s", eaddr);
				t++;
			} else if (t[0] == '%' && t[1] == '%') {
				s[o++] = '%';
				t++;
			} else
				s[o++] = *t;
		}
		s[o++] = '\n';
		s[o] = '\0';
		n = (int)o;
		break;
	}
	default:
		break;
	}
done:
	if (n < 0)
		return -1;
	*out = s;
	*len = (size_t)n;
	return 0;
}

static int
lg_load_codes(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[1024];
	size_t cap = 0;

	if (f == NULL) {
		perror(path);
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		char a[LG_MAX_ADDR], k[LG_MAX_CODE];

		if (sscanf(line, "%255s %15s", a, k) != 2)
			continue;
		if (ncodes == cap) {
			struct lg_code *n;

			cap = cap ? cap * 2 : 1024;
			n = realloc(codes, cap * sizeof(*codes));
			if (n == NULL)
				goto fail;
			codes = n;
		}
		snprintf(codes[ncodes].addr, LG_MAX_ADDR, "%s", a);
		snprintf(codes[ncodes].code, LG_MAX_CODE, "%s", k);
		ncodes++;
	}
	fclose(f);
	return 0;
fail:
	fclose(f);
	return -1;
}

static void *
lg_worker(void *arg)
{
	struct lg_client *c = arg;
	size_t pos = 0;
	char err[LG_ERRLEN];

	for (;;) {
		size_t i, len, llen;
		char *req, *line;
		int64_t sched_mono, start;
		struct lg_result *res;

		if (op == LG_VERIFY) {
			if (pos >= c->nmine)
				break;
			i = c->mine[pos++];
		} else {
			i = atomic_fetch_add(&next_item, 1);
			if (i >= nitems)
				break;
		}
		res = &results[i];
		if (lg_build(&items[i], &req, &len) == -1) {
			res->lat = -1;
			res->err = (int8_t)lg_err_index("client_build");
			continue;
		}
		if (rate > 0) {
			sched_mono = t0_mono + (int64_t)((double)i * 1e9 / rate);
			lg_sleep_until(sched_mono);
		} else
			sched_mono = lg_now(CLOCK_MONOTONIC);
		start = rate > 0 ? sched_mono : lg_now(CLOCK_MONOTONIC);
		res->send_rt = t0_real + (start - t0_mono);
		if (c->fd == -1)
			c->fd = lg_connect(sock_path);
		if (c->fd == -1 || lg_write_all(c->fd, req, len) == -1 ||
		    lg_read_line(c, &line, &llen) == -1) {
			free(req);
			res->lat = -1;
			res->err = (int8_t)lg_err_index(c->fd == -1 ? "client_connect" :
			    "client_io");
			if (c->fd != -1) {
				close(c->fd);
				c->fd = -1;
			}
			c->rlen = 0;
			atomic_fetch_add(&disconnects, 1);
			continue;
		}
		res->lat = lg_now(CLOCK_MONOTONIC) - start;
		res->ok = (int8_t)lg_answer_ok(line, err, sizeof(err));
		res->err = res->ok ? -1 : (int8_t)lg_err_index(err);
		lg_consume(c, llen);
		free(req);
	}
	return NULL;
}

static int
lg_cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static double
lg_pct(const int64_t *sorted, size_t n, double p)
{
	size_t k;

	if (n == 0)
		return 0;
	k = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (k < 1)
		k = 1;
	if (k > n)
		k = n;
	return (double)sorted[k - 1] / 1e6;
}

int
main(int argc, char **argv)
{
	struct lg_client *cl = NULL;
	int64_t *lats = NULL, t_first = INT64_MAX, t_last = 0;
	size_t nok = 0, nerr = 0, nlat = 0, i;
	int ch, errcount[LG_MAX_ERRKINDS] = { 0 };
	double elapsed;
	char fbuf[LG_MAX_ADDR];
	FILE *lf;

	while ((ch = getopt(argc, argv, "s:o:n:c:r:d:D:p:P:F:b:k:w:l:t:T:qh")) != -1) {
		switch (ch) {
		case 's': sock_path = optarg; break;
		case 'o':
			if (strcmp(optarg, "issue") == 0) op = LG_ISSUE;
			else if (strcmp(optarg, "send") == 0) op = LG_SEND;
			else if (strcmp(optarg, "verify") == 0) op = LG_VERIFY;
			else if (strcmp(optarg, "ping") == 0) op = LG_PING;
			else if (strcmp(optarg, "raw") == 0) op = LG_RAW;
			else {
				lg_usage(stderr);
				return 2;
			}
			break;
		case 'n': total = strtoul(optarg, NULL, 10); break;
		case 'c': nclients = atoi(optarg); break;
		case 'r': rate = atof(optarg); break;
		case 'd': duration = atof(optarg); break;
		case 'D': domain = optarg; break;
		case 'p': prefix = optarg; break;
		case 'P': purpose = optarg; break;
		case 'F': from_addr = optarg; break;
		case 'b': body_size = strtoul(optarg, NULL, 10); break;
		case 'k': codes_file = optarg; break;
		case 'w': wrong_per_right = atoi(optarg); break;
		case 'l': log_file = optarg; break;
		case 't': raw_template = optarg; break;
		case 'T': timeout_s = atoi(optarg); break;
		case 'q': quiet = 1; break;
		case 'h': lg_usage(stdout); return 0;
		default: lg_usage(stderr); return 2;
		}
	}
	if (sock_path == NULL || nclients < 1 || nclients > 4096 || wrong_per_right < 0 ||
	    body_size > 16 * 1024 * 1024 || (op == LG_RAW && raw_template == NULL) ||
	    (op == LG_VERIFY && codes_file == NULL) || (rate > 0) != (duration > 0)) {
		lg_usage(stderr);
		return 2;
	}
	if (prefix == NULL) {
		/* unique per run: no resend cooldown or per-address limit trips */
		snprintf(prefix_buf, sizeof(prefix_buf), "b%lx-%d-", (long)time(NULL),
		    (int)getpid());
		prefix = prefix_buf;
	}
	if (from_addr == NULL) {
		snprintf(fbuf, sizeof(fbuf), "bench@%s", domain);
		from_addr = fbuf;
	}
	if (op == LG_SEND) {
		/* 76-column lines of filler: a plain 2 KB transactional mail */
		size_t o = 0;
		char *raw = malloc(body_size + 1);

		body_json = malloc(body_size * 2 + 1);
		if (raw == NULL || body_json == NULL)
			return 1;
		for (i = 0; i < body_size; i++, o++)
			raw[i] = (o % 77 == 76) ? '\n' : (char)('a' + (i * 7 + i / 77) % 26);
		raw[body_size] = '\0';
		lg_json_escape(raw, body_json, body_size * 2 + 1);
		free(raw);
	}
	if (op == LG_VERIFY) {
		if (lg_load_codes(codes_file) == -1 || ncodes == 0) {
			fprintf(stderr, "loadgen: no codes in %s\n", codes_file);
			return 1;
		}
		nitems = ncodes * (size_t)(wrong_per_right + 1);
	} else if (rate > 0)
		nitems = (size_t)(rate * duration + 0.5);
	else
		nitems = total;
	items = calloc(nitems ? nitems : 1, sizeof(*items));
	results = calloc(nitems ? nitems : 1, sizeof(*results));
	cl = calloc((size_t)nclients, sizeof(*cl));
	lats = calloc(nitems ? nitems : 1, sizeof(*lats));
	if (items == NULL || results == NULL || cl == NULL || lats == NULL) {
		fprintf(stderr, "loadgen: out of memory\n");
		return 1;
	}
	for (i = 0; i < nitems; i++) {
		items[i].seq = (uint32_t)i;
		items[i].code = -1;
		results[i].lat = -1;
		results[i].err = -1;
		if (op == LG_VERIFY) {
			/* address k's attempts: wrong ones first, then the right one */
			items[i].code = (int32_t)(i / (size_t)(wrong_per_right + 1));
			items[i].right = i % (size_t)(wrong_per_right + 1) ==
			    (size_t)wrong_per_right;
		}
	}
	for (int k = 0; k < nclients; k++) {
		cl[k].fd = lg_connect(sock_path);
		if (cl[k].fd == -1) {
			fprintf(stderr, "loadgen: connect %s: %s\n", sock_path, strerror(errno));
			return 1;
		}
		if (op == LG_VERIFY) {
			/* a client owns whole addresses so their attempts stay ordered */
			cl[k].mine = calloc(nitems / (size_t)nclients + wrong_per_right + 2,
			    sizeof(size_t));
			if (cl[k].mine == NULL)
				return 1;
		}
	}
	if (op == LG_VERIFY)
		for (i = 0; i < nitems; i++) {
			struct lg_client *c = &cl[(size_t)items[i].code % (size_t)nclients];

			c->mine[c->nmine++] = i;
		}
	t0_mono = lg_now(CLOCK_MONOTONIC);
	t0_real = lg_now(CLOCK_REALTIME);
	for (int k = 0; k < nclients; k++)
		if (pthread_create(&cl[k].thread, NULL, lg_worker, &cl[k]) != 0) {
			fprintf(stderr, "loadgen: pthread_create failed\n");
			return 1;
		}
	for (int k = 0; k < nclients; k++)
		pthread_join(cl[k].thread, NULL);

	lf = log_file ? fopen(log_file, "w") : NULL;
	if (log_file && lf == NULL)
		perror(log_file);
	for (i = 0; i < nitems; i++) {
		struct lg_result *r = &results[i];
		char addr[LG_MAX_ADDR];

		if (r->lat >= 0) {
			lats[nlat++] = r->lat;
			if (r->send_rt < t_first)
				t_first = r->send_rt;
			if (r->send_rt + r->lat > t_last)
				t_last = r->send_rt + r->lat;
		}
		if (r->ok)
			nok++;
		else {
			nerr++;
			if (r->err >= 0)
				errcount[r->err]++;
		}
		if (lf != NULL) {
			if (op == LG_VERIFY)
				snprintf(addr, sizeof(addr), "%s", codes[items[i].code].addr);
			else
				lg_addr(items[i].seq, addr, sizeof(addr));
			fprintf(lf, "%zu %s %" PRId64 " %" PRId64 " %d %s\n", i, addr,
			    r->send_rt, r->lat, r->ok,
			    r->ok ? "-" : r->err >= 0 ? lg_errs[(int)r->err] : "?");
		}
	}
	if (lf != NULL)
		fclose(lf);
	qsort(lats, nlat, sizeof(*lats), lg_cmp_i64);
	elapsed = nlat ? (double)(t_last - t_first) / 1e9 : 0;
	if (!quiet)
		fprintf(stderr, "loadgen: %zu requests, %zu ok, %zu failed, %d reconnects, "
		    "%.3f s, %.0f answers/s, p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms\n",
		    nitems, nok, nerr, atomic_load(&disconnects), elapsed,
		    elapsed > 0 ? (double)nlat / elapsed : 0, lg_pct(lats, nlat, 50),
		    lg_pct(lats, nlat, 99), lg_pct(lats, nlat, 99.9));
	printf("RESULT op=%s n=%zu ok=%zu err=%zu elapsed_s=%.6f rate=%.1f ok_rate=%.1f "
	    "p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f t_first_ns=%" PRId64
	    " t_last_ns=%" PRId64 " errors=",
	    op == LG_ISSUE ? "issue" : op == LG_SEND ? "send" : op == LG_VERIFY ? "verify" :
	    op == LG_PING ? "ping" : "raw", nitems, nok, nerr, elapsed,
	    elapsed > 0 ? (double)nlat / elapsed : 0, elapsed > 0 ? (double)nok / elapsed : 0,
	    lg_pct(lats, nlat, 50), lg_pct(lats, nlat, 99), lg_pct(lats, nlat, 99.9),
	    nlat ? (double)lats[nlat - 1] / 1e6 : 0, nlat ? t_first : 0, t_last);
	for (int k = 0, first = 1; k < atomic_load(&nerrkinds); k++)
		if (errcount[k]) {
			printf("%s%s:%d", first ? "" : ",", lg_errs[k], errcount[k]);
			first = 0;
		}
	printf("\n");
	for (int k = 0; k < nclients; k++) {
		if (cl[k].fd != -1)
			close(cl[k].fd);
		free(cl[k].rbuf);
		free(cl[k].mine);
	}
	free(cl);
	free(lats);
	free(items);
	free(results);
	free(codes);
	free(body_json);
	return nerr == nitems && nitems > 0 ? 1 : 0;
}
