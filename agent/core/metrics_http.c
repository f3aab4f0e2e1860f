/*
 * metrics_http.c - the optional scrape endpoint (metrics_listen): a thread
 * that answers "GET /metrics" over HTTP/1.x with the "metrics" op's text,
 * one connection at a time, each bounded in size and time, so Prometheus
 * needs no glue.  Off unless metrics_listen is set.
 */
#include <sys/socket.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "agent/control/control.h"
#include "agent/core/log.h"
#include "agent/core/metrics_http.h"

#define MH_REQUEST_MAX	8192	/* bytes of request head we read */
#define MH_IO_TIMEOUT	5	/* seconds per connection */
#define MH_MAX_CONNS	16	/* clients at once */

struct mh_conn {
	int	 fd;
	size_t	 len;
	time_t	 deadline;
	char	 req[MH_REQUEST_MAX + 1];
};

struct metrics_http {
	struct otpmaild	*d;
	int		 fd;
	pthread_t	 thr;
	int		 running;
	volatile int	 stop;
};

static void	*mh_main(void *);
static int	 mh_read(struct metrics_http *, struct mh_conn *);
static void	 mh_serve(struct metrics_http *, int, char *);
static void	 mh_status(int, const char *, const char *);

struct metrics_http *
metrics_http_listen(const char *spec, char *err, size_t errlen)
{
	struct addrinfo hints, *ai = NULL, *a;
	struct metrics_http *m;
	char host[300], *colon;
	int fd = -1, one = 1, r;

	snprintf(host, sizeof(host), "%s", spec);
	if ((colon = strrchr(host, ':')) == NULL) {
		snprintf(err, errlen, "metrics_listen: no port in \"%s\"", spec);
		return NULL;
	}
	*colon = '\0';
	if (host[0] == '[') {		/* "[::1]:9425" */
		memmove(host, host + 1, strlen(host));
		host[strcspn(host, "]")] = '\0';
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	if ((r = getaddrinfo(host, colon + 1, &hints, &ai)) != 0) {
		snprintf(err, errlen, "metrics_listen %s: %s", spec, gai_strerror(r));
		return NULL;
	}
	for (a = ai; a != NULL; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
		if (fd == -1)
			continue;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0)
			break;
		close(fd);
		fd = -1;
	}
	if (fd == -1)
		snprintf(err, errlen, "metrics_listen %s: %s", spec, strerror(errno));
	freeaddrinfo(ai);
	if (fd == -1)
		return NULL;
	if ((m = calloc(1, sizeof(*m))) == NULL) {
		close(fd);
		snprintf(err, errlen, "metrics_listen: out of memory");
		return NULL;
	}
	m->fd = fd;
	return m;
}

int
metrics_http_start(struct metrics_http *m, struct otpmaild *d, char *err, size_t errlen)
{
	m->d = d;
	if ((errno = pthread_create(&m->thr, NULL, mh_main, m)) != 0) {
		snprintf(err, errlen, "metrics_listen: thread: %s", strerror(errno));
		return -1;
	}
	m->running = 1;
	return 0;
}

void
metrics_http_stop(struct metrics_http *m)
{
	if (m == NULL)
		return;
	m->stop = 1;
	if (m->running)
		pthread_join(m->thr, NULL);
	close(m->fd);
	free(m);
}

/*
 * One poll loop over the listener and up to MH_MAX_CONNS clients, each
 * with its own deadline: a client that sends nothing holds a slot for
 * MH_IO_TIMEOUT at most and never delays the others' answers.
 */
static void *
mh_main(void *arg)
{
	struct metrics_http *m = arg;
	struct mh_conn c[MH_MAX_CONNS];
	struct pollfd p[MH_MAX_CONNS + 1];
	size_t n = 0, i, k;
	time_t now;
	int fd;

	while (!m->stop) {
		p[0].fd = m->fd;
		p[0].events = POLLIN;
		for (i = 0; i < n; i++) {
			p[i + 1].fd = c[i].fd;
			p[i + 1].events = POLLIN;
			p[i + 1].revents = 0;
		}
		if (poll(p, n + 1, 500) < 0)
			continue;	/* the stop flag is looked at twice a second */
		now = time(NULL);
		for (i = 0, k = 0; i < n; i++) {
			int done = 0;
			if (p[i + 1].revents & (POLLIN | POLLHUP | POLLERR))
				done = mh_read(m, &c[i]);
			if (!done && now >= c[i].deadline)
				done = 1;	/* silent too long: dropped */
			if (done)
				close(c[i].fd);
			else
				c[k++] = c[i];
		}
		n = k;
		if ((p[0].revents & POLLIN) &&
		    (fd = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) != -1) {
			if (n == MH_MAX_CONNS) {	/* full: the oldest goes */
				close(c[0].fd);
				memmove(c, c + 1, (n - 1) * sizeof(c[0]));
				n--;
			}
			c[n].fd = fd;
			c[n].len = 0;
			c[n].deadline = now + MH_IO_TIMEOUT;
			n++;
		}
	}
	for (i = 0; i < n; i++)
		close(c[i].fd);
	return NULL;
}

/* Reads what a client sent; 1 when it is answered (or gone). */
static int
mh_read(struct metrics_http *m, struct mh_conn *c)
{
	ssize_t r = recv(c->fd, c->req + c->len, MH_REQUEST_MAX - c->len, 0);

	if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
		return 1;
	if (r < 0)
		return 0;
	c->len += (size_t)r;
	c->req[c->len] = '\0';
	if (strstr(c->req, "\r\n\r\n") == NULL && strstr(c->req, "\n\n") == NULL) {
		if (c->len < MH_REQUEST_MAX)
			return 0;
		mh_status(c->fd, "431 Request Header Fields Too Large", "");
		return 1;
	}
	mh_serve(m, c->fd, c->req);
	return 1;
}

static void
mh_write(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void
mh_status(int fd, const char *status, const char *extra)
{
	char out[512];
	int n;

	n = snprintf(out, sizeof(out), "HTTP/1.1 %s\r\nContent-Type: text/plain\r\n%s"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n", status, extra,
	    strlen(status) + 1, status);
	if (n > 0 && (size_t)n < sizeof(out))
		mh_write(fd, out, (size_t)n);
}

static void
mh_serve(struct metrics_http *m, int fd, char *req)
{
	struct timeval tv = { MH_IO_TIMEOUT, 0 };
	struct ctl_peer peer;
	char head[256], *sp, *path, *ver;
	const char *text;
	json_t *r;
	int is_head;

	/* the answer is written blocking, bounded by a send timeout */
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	req[strcspn(req, "\r\n")] = '\0';
	if ((sp = strchr(req, ' ')) == NULL || (ver = strchr(sp + 1, ' ')) == NULL ||
	    strncmp(ver + 1, "HTTP/1.", 7) != 0) {
		mh_status(fd, "400 Bad Request", "");
		return;
	}
	*sp = *ver = '\0';
	path = sp + 1;
	is_head = strcmp(req, "HEAD") == 0;
	if (strcmp(req, "GET") != 0 && !is_head) {
		mh_status(fd, "405 Method Not Allowed", "Allow: GET, HEAD\r\n");
		return;
	}
	if (strcmp(path, "/metrics") != 0 && strncmp(path, "/metrics?", 9) != 0) {
		mh_status(fd, "404 Not Found", "");
		return;
	}
	/* the "metrics" op itself, as the daemon's own user: one exposition */
	memset(&peer, 0, sizeof(peer));
	peer.uid = geteuid();
	peer.gid = getegid();
	peer.roles = ROLE_APP | ROLE_ANY;
	r = ctl_dispatch(m->d, &peer, "{\"op\":\"metrics\"}", 16);
	text = json_string_value(json_object_get(r, "text"));
	if (text == NULL) {
		mh_status(fd, "503 Service Unavailable", "");
		json_decref(r);
		return;
	}
	snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n"
	    "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
	    "Content-Length: %zu\r\nConnection: close\r\n\r\n", strlen(text));
	mh_write(fd, head, strlen(head));
	if (!is_head)
		mh_write(fd, text, strlen(text));
	json_decref(r);
}
