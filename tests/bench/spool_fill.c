/*
 * spool_fill.c - writes N deferred messages into a spool, fast, for the
 * queue-scale row of tests/bench/run (issue 21).
 *
 *   tests/bench/spool_fill SPOOL N [body-bytes]
 *
 * Each message is what the daemon leaves after one deferred attempt of a
 * mail.send: the message part (header line, first envelope, body, end
 * marker) and one appended state record (attempts 1, the recipient
 * deferred with the sink's reply, next attempt in an hour), in the real
 * format (queue/spool.c's own envelope writer and CRC).  Unlike the daemon
 * it does not fsync each file: one syncfs at the end.  Ids come from
 * qid_new, so they sort by time like the daemon's.  Prints the count and
 * the time taken.  A benchmark tool, not part of the daemon.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "queue/queue_int.h"

static double
fill_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
fill_write(const char *path, const struct iovec *iov, int n)
{
	ssize_t want = 0, got;
	int fd, i;

	for (i = 0; i < n; i++)
		want += (ssize_t)iov[i].iov_len;
	if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) == -1)
		return -1;
	got = writev(fd, iov, n);
	if (close(fd) == -1 || got != want) {
		unlink(path);
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct q_envelope env;
	struct q_rcpt rcpt;
	struct spool sp;
	struct iovec iov[7];
	char err[256], rcptaddr[128], rel[128], path[4096], mhdr[96], shdr[96];
	char *body, *e1, *e2;
	size_t n, blen, i, l1, l2;
	time_t now;
	double t0;
	int fd;

	if (argc < 3) {
		fprintf(stderr, "usage: spool_fill SPOOL N [body-bytes]\n");
		return 2;
	}
	n = strtoul(argv[2], NULL, 10);
	blen = argc > 3 ? strtoul(argv[3], NULL, 10) : 2900;
	if (blen < 16 || blen > (1u << 20)) {
		fprintf(stderr, "spool_fill: body-bytes out of range\n");
		return 2;
	}
	if (spool_init(&sp, argv[1], 0, 0, 0, NULL, err, sizeof(err)) == -1) {
		fprintf(stderr, "spool_fill: %s\n", err);
		return 1;
	}
	if ((body = malloc(blen)) == NULL)
		return 1;
	memset(body, 'x', blen);
	for (i = 76; i + 1 < blen; i += 78) {
		body[i] = '\r';
		body[i + 1] = '\n';
	}
	memcpy(body, "Subject: b\r\n", 12);
	now = time(NULL);
	t0 = fill_now();
	for (i = 0; i < n; i++) {
		memset(&env, 0, sizeof(env));
		memset(&rcpt, 0, sizeof(rcpt));
		/* as long as loadgen's addresses: b<time>-<pid>-<n>@domain */
		snprintf(rcptaddr, sizeof(rcptaddr), "b%lld-%d-%zu@bench.example.org",
		    (long long)now, (int)getpid(), i);
		rcpt.addr = rcptaddr;
		qid_new(env.id);
		env.klass = Q_CLASS_DEFAULT;
		env.sender = "bench@bench.example.org";
		env.nrcpt = 1;
		env.rcpts = &rcpt;
		env.created = now;
		env.expires = now + 5 * 86400;
		env.next_attempt = now;
		env.size = blen;
		env.client_uid = 0;
		if ((e1 = spool_env_format(&env, &l1)) == NULL)
			return 1;
		/* after one attempt against a sink answering RCPT with 4xx */
		env.attempts = 1;
		env.next_attempt = now + 3600;
		env.last_error = "deferred: 450 4.3.0 Error: command failed";
		rcpt.state = Q_RCPT_DEFERRED;
		rcpt.attempts = 1;
		rcpt.last_attempt = now;
		rcpt.reply = "450 4.3.0 Error: command failed";
		if ((e2 = spool_env_format(&env, &l2)) == NULL)
			return 1;
		iov[0].iov_base = mhdr;
		iov[0].iov_len = (size_t)snprintf(mhdr, sizeof(mhdr), "OTPQ1 %zu %zu %08x %08x\n",
		    l1, blen, (unsigned)spool_crc32(0, e1, l1), (unsigned)spool_crc32(0, body, blen));
		iov[1].iov_base = e1;
		iov[1].iov_len = l1;
		iov[2].iov_base = body;
		iov[2].iov_len = blen;
		iov[3].iov_base = (void *)"END\n";
		iov[3].iov_len = 4;
		iov[4].iov_base = shdr;
		iov[4].iov_len = (size_t)snprintf(shdr, sizeof(shdr), "OTPS1 %zu %08x\n", l2,
		    (unsigned)spool_crc32(0, e2, l2));
		iov[5].iov_base = e2;
		iov[5].iov_len = l2;
		iov[6].iov_base = (void *)"END\n";
		iov[6].iov_len = 4;
		spool_path(env.id, rel, sizeof(rel));
		snprintf(path, sizeof(path), "%s/%s", argv[1], rel);
		if (fill_write(path, iov, 7) == -1) {
			fprintf(stderr, "spool_fill: %s: %s\n", path, strerror(errno));
			return 1;
		}
		free(e1);
		free(e2);
	}
	/* once for all of them, not per file as the daemon does */
	if ((fd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		syncfs(fd);
		close(fd);
	}
	printf("spool_fill: %zu messages of %zu bytes in %.1f s\n", n, blen, fill_now() - t0);
	free(body);
	spool_free(&sp);
	return 0;
}
