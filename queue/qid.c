/*
 * qid.c - queue ids: 24 lower-case hex chars.  The first 16 are a 64-bit
 * microsecond clock made strictly increasing in this process (so ids sort
 * by time and never repeat across threads), the last 8 a random nonce
 * drawn at start (so two processes, or a clock stepped back across a
 * restart, still never produce the same id).  On several hosts the nonce's
 * first hex digit is the site's index (queue_id_site): ids of two sites
 * differ there, and message.status can say where an id lives.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

#include "queue/queue_int.h"

static void	qid_init(void);

static pthread_mutex_t	 qid_mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t	 qid_once = PTHREAD_ONCE_INIT;
static uint64_t		 qid_last;
static uint32_t		 qid_nonce;
static int		 qid_site = -1;	/* queue_id_site */

static void
qid_init(void)
{
	struct timeval tv;

	if (getrandom(&qid_nonce, sizeof(qid_nonce), 0) != sizeof(qid_nonce)) {
		gettimeofday(&tv, NULL);
		qid_nonce = (uint32_t)(tv.tv_usec ^ (getpid() << 12) ^ tv.tv_sec);
	}
}

void
qid_new(char out[QUEUE_ID_LEN + 1])
{
	struct timespec ts;
	uint64_t now;

	pthread_once(&qid_once, qid_init);
	clock_gettime(CLOCK_REALTIME, &ts);
	now = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	pthread_mutex_lock(&qid_mtx);
	if (now <= qid_last)
		now = qid_last + 1;
	qid_last = now;
	pthread_mutex_unlock(&qid_mtx);
	snprintf(out, QUEUE_ID_LEN + 1, "%016llx%08x",
	    (unsigned long long)now, qid_site < 0 ? (unsigned)qid_nonce :
	    (unsigned)(qid_nonce & 0x0fffffffu) | (unsigned)qid_site << 28);
}

void
queue_id_site(int site)
{
	pthread_mutex_lock(&qid_mtx);
	qid_site = site >= 0 && site < 15 ? site : -1;
	pthread_mutex_unlock(&qid_mtx);
}

int
queue_id_site_of(const char *id)
{
	char c;

	if (!qid_valid(id))
		return -1;
	c = id[16];
	return c >= '0' && c <= '9' ? c - '0' : c - 'a' + 10;
}

void
qid_seen(const char *id)
{
	char hex[17];
	uint64_t t;

	if (!qid_valid(id))
		return;
	memcpy(hex, id, 16);
	hex[16] = '\0';
	t = strtoull(hex, NULL, 16);
	pthread_mutex_lock(&qid_mtx);
	if (t > qid_last)
		qid_last = t;
	pthread_mutex_unlock(&qid_mtx);
}

int
qid_valid(const char *s)
{
	size_t i;

	if (s == NULL)
		return 0;
	for (i = 0; i < QUEUE_ID_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[QUEUE_ID_LEN] == '\0';
}
