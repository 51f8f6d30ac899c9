// cfloor: a minimal epoll server in C, the floor the Go servers are measured
// against (one read and one write system call per message). See cfloor.c.
#ifndef CFLOOR_H
#define CFLOOR_H

#include <stdint.h>

typedef struct cf_server cf_server;

// cf_start starts loops threads serving echo (http == 0) or the hello-world
// HTTP answer on 127.0.0.1, every thread with its own SO_REUSEPORT listener
// on one port. On failure it returns NULL, sets *err to the errno and *step
// to the call that failed.
cf_server *cf_start(int loops, int http, int *err, const char **step);

// cf_port is the port the listeners are bound to.
int cf_port(const cf_server *s);

// cf_loop_stats reads loop i's counters: connections accepted, reads handed
// to the handler, writes that could not complete at once (the rest kept for
// EPOLLOUT), and connections open.
void cf_loop_stats(const cf_server *s, int i, uint64_t *accepted, uint64_t *work,
		   uint64_t *deferred, int64_t *open);

// cf_stop makes every thread leave its loop, closes every socket, joins the
// threads and frees the server.
void cf_stop(cf_server *s);

// cf_udp_start starts loops threads echoing datagrams on 127.0.0.1, each
// with its own SO_REUSEPORT socket on one port, with recvmmsg and sendmmsg;
// they serve until the process exits. It returns the port, or -1 with
// *err and *step set as cf_start does.
int cf_udp_start(int loops, int *err, const char **step);

#endif
