//go:build linux && cgo

// cfloor: the floor the Go servers are measured against. N threads, each
// with its own SO_REUSEPORT listener and level-triggered epoll; per readiness
// event one read into the thread's 64 KiB buffer and, for what it holds, one
// write: the echo of the bytes, or every HTTP answer of the read in one batch.
// No parser beyond finding "\r\n\r\n" and "Connection: close", as the gnet
// handler in internal/harness/servers.go.

#define _GNU_SOURCE
#include "cfloor.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
	READ_BUF = 64 << 10,
	MAX_EVENTS = 256,
	// An unfinished request head longer than this closes the connection:
	// the kept tail stays bounded.
	MAX_HEAD = 64 << 10,
};

// conn is one connection; only its loop's thread touches it.
typedef struct conn {
	int fd;
	int closing;           // close once out is written (Connection: close)
	char *out;             // what a short write left, waiting for EPOLLOUT
	size_t outlen, outcap;
	char *in;              // http: an unfinished request
	size_t inlen, incap;
} conn;

typedef struct loop {
	cf_server *srv;
	pthread_t thread;
	int started;
	int lfd, ep;
	// Connections by descriptor rather than a pointer in the epoll event:
	// an event for a descriptor closed meanwhile (its registration outlives
	// close while a forked child still holds the file, until its exec)
	// finds no connection or a new one, never freed memory; and close
	// needs no EPOLL_CTL_DEL.
	conn **conns;
	int nconns;
	char *buf;             // READ_BUF, reused by every read
	char *resp;            // http: the answers of one read
	size_t resplen, respcap;
	time_t date_sec;       // second of the answers below
	char keep[160], clos[192];
	size_t keeplen, closlen;
	// Counters: written by this thread only, read by Go with relaxed
	// loads; a single writer needs no locked add.
	uint64_t accepted, work, deferred;
	int64_t open;
	char pad[64];          // keep the next loop's counters off this line
} loop;

struct cf_server {
	int n, http, port;
	int stopfd; // eventfd in every epoll; readable once: every loop leaves
	loop *loops;
};

static void bump(uint64_t *p) {
	__atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
}

static void add_open(loop *l, int64_t d) {
	__atomic_store_n(&l->open, __atomic_load_n(&l->open, __ATOMIC_RELAXED) + d, __ATOMIC_RELAXED);
}

// reserve grows *buf to hold need bytes; 0 if out of memory.
static int reserve(char **buf, size_t *cap, size_t need) {
	if (need <= *cap)
		return 1;
	size_t c = *cap ? *cap : 256;
	while (c < need)
		c *= 2;
	char *b = realloc(*buf, c);
	if (!b)
		return 0;
	*buf = b;
	*cap = c;
	return 1;
}

static void close_conn(loop *l, conn *c) {
	// Closing the last reference drops the epoll registration.
	close(c->fd);
	l->conns[c->fd] = NULL;
	free(c->out);
	free(c->in);
	free(c);
	add_open(l, -1);
}

static void watch(loop *l, conn *c, uint32_t events) {
	struct epoll_event ev = {.events = events, .data.fd = c->fd};
	if (epoll_ctl(l->ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
		close_conn(l, c);
}

// send_out writes p to c, once. What the socket does not take is kept, and
// the connection watches EPOLLOUT instead of EPOLLIN until it is written:
// no read while an answer waits, so the kept bytes stay bounded by one read.
static void send_out(loop *l, conn *c, const char *p, size_t n) {
	// MSG_NOSIGNAL: a peer gone gives EPIPE, not SIGPIPE.
	ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
	if (w == (ssize_t)n) {
		if (c->closing)
			close_conn(l, c);
		return;
	}
	if (w < 0) {
		if (errno != EAGAIN && errno != EINTR) {
			close_conn(l, c);
			return;
		}
		w = 0;
	}
	size_t rest = n - (size_t)w;
	if (!reserve(&c->out, &c->outcap, rest)) {
		close_conn(l, c);
		return;
	}
	memcpy(c->out, p + w, rest);
	c->outlen = rest;
	bump(&l->deferred);
	watch(l, c, EPOLLOUT);
}

// flush writes what a short write left, on EPOLLOUT.
static void flush(loop *l, conn *c) {
	ssize_t w = send(c->fd, c->out, c->outlen, MSG_NOSIGNAL);
	if (w < 0) {
		if (errno != EAGAIN && errno != EINTR)
			close_conn(l, c);
		return;
	}
	c->outlen -= (size_t)w;
	if (c->outlen > 0) {
		memmove(c->out, c->out + w, c->outlen);
		return;
	}
	if (c->closing)
		close_conn(l, c);
	else
		watch(l, c, EPOLLIN);
}

// set_date builds this second's answers, as the gnet handler writes them.
static void set_date(loop *l, time_t now) {
	struct tm tm;
	char date[64];
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
	static const char pre[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: ";
	static const char body[] = "Hello, World!";
	l->keeplen = (size_t)snprintf(l->keep, sizeof l->keep, "%s%s\r\nContent-Length: %zu\r\n\r\n%s",
				      pre, date, sizeof body - 1, body);
	l->closlen = (size_t)snprintf(l->clos, sizeof l->clos,
				      "%s%s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
				      pre, date, sizeof body - 1, body);
	l->date_sec = now;
}

// has_close reports whether the head holds "connection: close", any case.
static int has_close(const char *s, size_t n) {
	static const char p[] = "connection: close";
	const size_t m = sizeof p - 1;
	for (size_t i = 0; i + m <= n; i++) {
		size_t j = 0;
		while (j < m && (s[i + j] | 0x20) == p[j])
			j++;
		if (j == m)
			return 1;
	}
	return 0;
}

// on_http answers every complete request among the n bytes read, in one
// write, and keeps an unfinished one for the next read.
static void on_http(loop *l, conn *c, size_t n) {
	char *data = l->buf;
	size_t len = n;
	if (c->inlen > 0) {
		// A request began in an earlier read: join it to this one.
		if (!reserve(&c->in, &c->incap, c->inlen + n)) {
			close_conn(l, c);
			return;
		}
		memcpy(c->in + c->inlen, l->buf, n);
		c->inlen += n;
		data = c->in;
		len = c->inlen;
	}
	time_t now = time(NULL);
	if (now != l->date_sec)
		set_date(l, now);
	size_t off = 0;
	l->resplen = 0;
	while (!c->closing) {
		char *end = memmem(data + off, len - off, "\r\n\r\n", 4);
		if (!end)
			break;
		c->closing = has_close(data + off, (size_t)(end - (data + off)));
		off = (size_t)(end - data) + 4;
		const char *a = c->closing ? l->clos : l->keep;
		size_t alen = c->closing ? l->closlen : l->keeplen;
		if (!reserve(&l->resp, &l->respcap, l->resplen + alen)) {
			close_conn(l, c);
			return;
		}
		memcpy(l->resp + l->resplen, a, alen);
		l->resplen += alen;
	}
	// Keep the unfinished rest (nothing after a Connection: close).
	size_t rest = c->closing ? 0 : len - off;
	if (rest > MAX_HEAD) {
		close_conn(l, c);
		return;
	}
	if (data == c->in) {
		memmove(c->in, c->in + off, rest);
	} else if (rest > 0) {
		if (!reserve(&c->in, &c->incap, rest)) {
			close_conn(l, c);
			return;
		}
		memcpy(c->in, data + off, rest);
	}
	c->inlen = rest;
	if (l->resplen > 0)
		send_out(l, c, l->resp, l->resplen);
}

static void on_read(loop *l, conn *c) {
	ssize_t n = read(c->fd, l->buf, READ_BUF);
	if (n <= 0) {
		// 0: the peer closed; an error: the connection is gone.
		if (n == 0 || (errno != EAGAIN && errno != EINTR))
			close_conn(l, c);
		return;
	}
	bump(&l->work);
	if (l->srv->http)
		on_http(l, c, (size_t)n);
	else
		send_out(l, c, l->buf, (size_t)n);
}

// on_accept takes one connection per readiness event; level-triggered epoll
// reports the listener again while more wait.
static void on_accept(loop *l) {
	// TCP_NODELAY was set on the listener: on Linux accepted sockets
	// inherit it, sparing a setsockopt per connection (as herd does).
	int fd = accept4(l->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (fd >= l->nconns) {
		int n = l->nconns ? l->nconns : 1024;
		while (n <= fd)
			n *= 2;
		conn **t = realloc(l->conns, (size_t)n * sizeof *t);
		if (!t) {
			close(fd);
			return;
		}
		memset(t + l->nconns, 0, (size_t)(n - l->nconns) * sizeof *t);
		l->conns = t;
		l->nconns = n;
	}
	conn *c = calloc(1, sizeof *c);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
	if (!c || epoll_ctl(l->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		free(c);
		close(fd);
		return;
	}
	c->fd = fd;
	l->conns[fd] = c;
	bump(&l->accepted);
	add_open(l, 1);
}

static void *run(void *arg) {
	loop *l = arg;
	// Leave process signals (SIGCHLD of the load generator, the Go
	// runtime's) to Go's threads: none interrupts epoll_wait here.
	sigset_t all;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct epoll_event evs[MAX_EVENTS];
	for (;;) {
		int n = epoll_wait(l->ep, evs, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			uint32_t e = evs[i].events;
			if (fd == l->srv->stopfd)
				return NULL;
			if (fd == l->lfd) {
				on_accept(l);
				continue;
			}
			conn *c = fd < l->nconns ? l->conns[fd] : NULL;
			if (!c)
				continue;
			if (e & (EPOLLERR | EPOLLHUP))
				close_conn(l, c);
			else if (e & EPOLLOUT)
				flush(l, c);
			else if (e & EPOLLIN)
				on_read(l, c);
		}
	}
}

// listen_on opens loop l's listener on port (0: any) and its epoll.
static int listen_on(loop *l, int port, const char **step) {
	int one = 1;
	*step = "socket";
	l->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (l->lfd < 0)
		return -1;
	*step = "setsockopt";
	if (setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    setsockopt(l->lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0 ||
	    setsockopt(l->lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	*step = "bind";
	if (bind(l->lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
		return -1;
	*step = "listen";
	if (listen(l->lfd, 4096) < 0)
		return -1;
	*step = "epoll_create1";
	l->ep = epoll_create1(EPOLL_CLOEXEC);
	if (l->ep < 0)
		return -1;
	*step = "epoll_ctl";
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = l->lfd};
	if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->lfd, &ev) < 0)
		return -1;
	ev.data.fd = l->srv->stopfd;
	if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->srv->stopfd, &ev) < 0)
		return -1;
	*step = "malloc";
	l->buf = malloc(READ_BUF);
	if (!l->buf)
		return -1;
	return 0;
}

cf_server *cf_start(int loops, int http, int *err, const char **step) {
	*err = 0;
	*step = "malloc";
	cf_server *s = calloc(1, sizeof *s);
	if (!s || loops < 1 || !(s->loops = calloc((size_t)loops, sizeof *s->loops))) {
		*err = loops < 1 ? EINVAL : ENOMEM;
		free(s);
		return NULL;
	}
	s->n = loops;
	s->http = http;
	for (int i = 0; i < loops; i++) {
		s->loops[i].srv = s;
		s->loops[i].lfd = s->loops[i].ep = -1;
	}
	*step = "eventfd";
	s->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (s->stopfd < 0)
		goto fail;
	// The first listener takes a free port; the others join it through
	// SO_REUSEPORT, and the kernel spreads connections over them by hash.
	for (int i = 0; i < loops; i++) {
		if (listen_on(&s->loops[i], s->port, step) < 0)
			goto fail;
		if (i == 0) {
			struct sockaddr_in sa;
			socklen_t sl = sizeof sa;
			*step = "getsockname";
			if (getsockname(s->loops[0].lfd, (struct sockaddr *)&sa, &sl) < 0)
				goto fail;
			s->port = ntohs(sa.sin_port);
		}
	}
	*step = "pthread_create";
	for (int i = 0; i < loops; i++) {
		int e = pthread_create(&s->loops[i].thread, NULL, run, &s->loops[i]);
		if (e != 0) {
			errno = e;
			goto fail;
		}
		s->loops[i].started = 1;
	}
	return s;
fail:
	*err = errno;
	cf_stop(s);
	return NULL;
}

int cf_port(const cf_server *s) { return s->port; }

void cf_loop_stats(const cf_server *s, int i, uint64_t *accepted, uint64_t *work,
		   uint64_t *deferred, int64_t *open) {
	const loop *l = &s->loops[i];
	*accepted = __atomic_load_n(&l->accepted, __ATOMIC_RELAXED);
	*work = __atomic_load_n(&l->work, __ATOMIC_RELAXED);
	*deferred = __atomic_load_n(&l->deferred, __ATOMIC_RELAXED);
	*open = __atomic_load_n(&l->open, __ATOMIC_RELAXED);
}

void cf_stop(cf_server *s) {
	if (s->stopfd >= 0) {
		// Never read: it stays readable, so every loop sees it.
		uint64_t one = 1;
		if (write(s->stopfd, &one, sizeof one) < 0)
			perror("cfloor: eventfd write");
	}
	for (int i = 0; i < s->n; i++) {
		loop *l = &s->loops[i];
		if (l->started)
			pthread_join(l->thread, NULL);
		for (int fd = 0; fd < l->nconns; fd++)
			if (l->conns[fd])
				close_conn(l, l->conns[fd]);
		if (l->lfd >= 0)
			close(l->lfd);
		if (l->ep >= 0)
			close(l->ep);
		free(l->conns);
		free(l->buf);
		free(l->resp);
	}
	if (s->stopfd >= 0)
		close(s->stopfd);
	free(s->loops);
	free(s);
}
