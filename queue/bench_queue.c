/*
 * bench_queue.c - enqueue rate and recovery time of the spool.
 *   queue/bench_queue DIR [messages] [threads]
 * Enqueues messages of ~1.5 kB from the given number of threads (each one
 * durable: fsync of file and directory), then closes and reopens the
 * queue and times the recovery.  Prints one line per phase.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "queue/queue_int.h"

static struct queue	*bq;
static size_t		 per_thread;
static char		 bbody[1500];
static int		 bfail;

static double
bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *
bench_worker(void *arg)
{
	struct q_rcpt r = { .addr = "someone@example.com" };
	struct q_envelope t;
	char id[QUEUE_ID_LEN + 1];
	size_t i;

	(void)arg;
	memset(&t, 0, sizeof(t));
	t.klass = Q_CLASS_OTP;
	t.sender = "app@example.org";
	t.rcpts = &r;
	t.nrcpt = 1;
	for (i = 0; i < per_thread; i++)
		if (queue_enqueue(bq, &t, bbody, sizeof(bbody), id) != Q_OK)
			__atomic_add_fetch(&bfail, 1, __ATOMIC_RELAXED);
	return NULL;
}

int
main(int argc, char **argv)
{
	struct queue_params p;
	struct q_stats st;
	pthread_t *th;
	char err[256];
	size_t n, i;
	int nt;
	double t0, t1;

	if (argc < 2) {
		fprintf(stderr, "usage: bench_queue DIR [messages] [threads]\n");
		return 2;
	}
	n = argc > 2 ? strtoul(argv[2], NULL, 10) : 10000;
	nt = argc > 3 ? atoi(argv[3]) : 1;
	if (nt < 1 || nt > 256)
		nt = 1;
	memset(bbody, 'x', sizeof(bbody));
	for (i = 76; i < sizeof(bbody); i += 78) {
		bbody[i] = '\r';
		bbody[i + 1] = '\n';
	}
	memset(&p, 0, sizeof(p));
	p.dir = argv[1];
	p.keep_done = 3600;
	if ((bq = queue_open(&p, err, sizeof(err))) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	queue_pause(bq, 1);
	per_thread = n / (size_t)nt;
	th = calloc((size_t)nt, sizeof(*th));
	t0 = bench_now();
	for (i = 0; i < (size_t)nt; i++)
		pthread_create(&th[i], NULL, bench_worker, NULL);
	for (i = 0; i < (size_t)nt; i++)
		pthread_join(th[i], NULL);
	t1 = bench_now();
	printf("enqueue: %zu messages, %d thread(s): %.2f s, %.0f/s, %d failed\n",
	    per_thread * (size_t)nt, nt, t1 - t0, (double)(per_thread * (size_t)nt) / (t1 - t0),
	    bfail);
	queue_close(bq);
	t0 = bench_now();
	bq = queue_open(&p, err, sizeof(err));
	t1 = bench_now();
	if (bq == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	queue_stats(bq, &st);
	printf("recovery: %zu messages in spool: %.3f s\n", st.by_state[Q_MSG_QUEUED], t1 - t0);
	queue_close(bq);
	free(th);
	return bfail ? 1 : 0;
}
