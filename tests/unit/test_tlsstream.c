/*
 * test_tlsstream.c - agent/delivery/tlsstream.c, the stream under libetpan: connect
 * timeout against a listener whose queue is full, absolute deadline versus
 * idle timeout against a trickling peer, the per-command read cap, a write
 * timeout against a peer that never reads, and the abort flag.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "agent/delivery/tlsstream.h"
#include "tests/unit/tap.h"

struct trickle {
	int	 fd;
	int	 n;		/* bytes to send */
	int	 gap_ms;	/* between bytes */
};

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *
trickle_main(void *arg)
{
	struct trickle *t = arg;
	int i;

	for (i = 0; i < t->n; i++) {
		usleep(t->gap_ms * 1000);
		if (send(t->fd, "x", 1, MSG_NOSIGNAL) != 1)
			break;
	}
	return NULL;
}

/* Reads until error or EOF; returns bytes read. */
static long
drain(mailstream_low *low)
{
	char buf[65536];
	long total = 0;
	ssize_t n;

	while ((n = mailstream_low_read(low, buf, sizeof(buf))) > 0)
		total += n;
	return total;
}

static void
pair(int sv[2])
{
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == -1)
		abort();
	fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
}

static volatile int abort_flag;

static void *
set_abort(void *arg)
{
	usleep(300 * 1000);
	abort_flag = 1;
	return NULL;
}

int
main(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	struct trickle tr;
	mailstream_low *low;
	char err[256], *big;
	pthread_t th;
	double t0;
	long got;
	int lfd, fill[8], sv[2], i, fd;
	ssize_t n;

	signal(SIGPIPE, SIG_IGN);

	/* Connect timeout: a listener that never accepts and whose queue is full. */
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	bind(lfd, (struct sockaddr *)&sin, sizeof(sin));
	listen(lfd, 0);
	getsockname(lfd, (struct sockaddr *)&sin, &len);
	for (i = 0; i < 8; i++) {
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
		connect(fill[i], (struct sockaddr *)&sin, sizeof(sin));
	}
	usleep(100 * 1000);
	t0 = now_s();
	fd = tlsstream_connect((struct sockaddr *)&sin, sizeof(sin), 1, NULL, err, sizeof(err));
	if (fd != -1) {
		ok(1, "connect timeout # SKIP this kernel accepted past a full queue");
		close(fd);
	} else {
		ok(strstr(err, "timeout") != NULL, "connect to a full queue: timeout");
		/* bounds generous enough for a loaded machine (speed is tests/bench's) */
		ok(now_s() - t0 >= 0.9 && now_s() - t0 < 10, "after connect_timeout (1 s)");
		diag("%s after %.2fs", err, now_s() - t0);
	}
	for (i = 0; i < 8; i++)
		close(fill[i]);
	close(lfd);

	/* Absolute deadline: a peer trickling a byte every 200 ms is cut at 1 s. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	tr.fd = sv[1];
	tr.n = 20;
	tr.gap_ms = 200;
	pthread_create(&th, NULL, trickle_main, &tr);
	tlsstream_set_timeout(low, 1, 1);
	t0 = now_s();
	got = drain(low);
	/* the trickle lasts 4 s: cut before it ends, and before half of it */
	ok(now_s() - t0 < 3.5 && got < 10, "absolute deadline: a trickling peer is cut off");
	ok(tlsstream_timed_out(low), "reported as a timeout");
	mailstream_low_close(low);	/* the trickler's next send fails */
	mailstream_low_free(low);
	pthread_join(th, NULL);
	close(sv[1]);

	/* Idle timeout: the same trickle keeps an idle-mode stream alive. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	tr.fd = sv[1];
	tr.n = 8;
	tr.gap_ms = 200;
	pthread_create(&th, NULL, trickle_main, &tr);
	tlsstream_set_timeout(low, 1, 0);
	t0 = now_s();
	got = 0;
	while (got < 8 && (n = mailstream_low_read(low, err, sizeof(err))) > 0)
		got += n;
	is_int(got, 8, "idle timeout: every trickled byte arrives");
	ok(now_s() - t0 > 1.2, "beyond one timeout period in total");
	t0 = now_s();
	n = mailstream_low_read(low, err, sizeof(err));
	ok(n == -1 && tlsstream_timed_out(low) && now_s() - t0 < 10,
	    "then silence times out after 1 s");
	pthread_join(th, NULL);
	mailstream_low_close(low);
	mailstream_low_free(low);
	close(sv[1]);

	/* Read cap: at most 1 MiB per command. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	big = malloc(3 * 1024 * 1024);
	memset(big, 'a', 3 * 1024 * 1024);
	tlsstream_set_timeout(low, 2, 1);
	{
		long sent = 0;

		fcntl(sv[1], F_SETFL, fcntl(sv[1], F_GETFL) | O_NONBLOCK);
		got = 0;
		while (sent < 3 * 1024 * 1024) {
			n = send(sv[1], big + sent, 3 * 1024 * 1024 - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += n;
			n = mailstream_low_read(low, err, sizeof(err));
			if (n <= 0)
				break;
			got += n;
		}
	}
	ok(got >= 1024 * 1024 && got < 1024 * 1024 + 4096 && !tlsstream_timed_out(low),
	    "a peer cannot feed more than 1 MiB per command");
	tlsstream_set_timeout(low, 2, 1);
	n = mailstream_low_read(low, err, sizeof(err));
	ok(n > 0, "the cap resets with the next command's timeout");
	mailstream_low_close(low);
	mailstream_low_free(low);
	close(sv[1]);

	/* Write timeout: a peer that never reads. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	tlsstream_set_timeout(low, 1, 0);
	t0 = now_s();
	{
		long sent = 0;

		while (sent < 3 * 1024 * 1024 &&
		    (n = mailstream_low_write(low, big + sent, 3 * 1024 * 1024 - sent)) > 0)
			sent += n;
		ok(sent < 3 * 1024 * 1024 && tlsstream_timed_out(low) && now_s() - t0 < 2.0,
		    "writing to a peer that never reads times out");
	}
	mailstream_low_close(low);
	mailstream_low_free(low);
	close(sv[1]);

	/* Abort flag. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	tlsstream_set_timeout(low, 30, 1);
	tlsstream_set_abort(low, &abort_flag);
	pthread_create(&th, NULL, set_abort, NULL);
	t0 = now_s();
	n = mailstream_low_read(low, err, sizeof(err));
	ok(n == -1 && tlsstream_aborted(low) && !tlsstream_timed_out(low) &&
	    now_s() - t0 < 1.0, "abort flag ends a 30 s wait at once");
	pthread_join(th, NULL);
	mailstream_low_close(low);
	mailstream_low_free(low);
	close(sv[1]);

	/* EOF is 0, not an error. */
	pair(sv);
	low = tlsstream_low_new(sv[0]);
	tlsstream_set_timeout(low, 1, 1);
	(void)!send(sv[1], "ab", 2, 0);
	close(sv[1]);
	is_int(mailstream_low_read(low, err, sizeof(err)), 2, "data before EOF");
	is_int(mailstream_low_read(low, err, sizeof(err)), 0, "EOF reads 0");
	mailstream_low_close(low);
	mailstream_low_free(low);
	free(big);
	return done_testing();
}
