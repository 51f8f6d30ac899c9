//go:build linux && cgo

// cfloor's UDP floor: N threads, each with its own SO_REUSEPORT socket on
// one port, each blocking in recvmmsg for up to UDP_BATCH datagrams
// (MSG_WAITFORONE: it returns once one has come) and echoing the batch with
// one sendmmsg. Two system calls per batch and nothing else: what a
// datagram costs the kernel.

#define _GNU_SOURCE
#include "cfloor.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { UDP_BATCH = 64, UDP_SEG = 2048 };

static void *udp_run(void *arg) {
	int fd = (int)(intptr_t)arg;
	char *bufs = malloc(UDP_BATCH * UDP_SEG);
	struct mmsghdr msgs[UDP_BATCH];
	struct iovec iov[UDP_BATCH];
	struct sockaddr_in from[UDP_BATCH];
	if (bufs == NULL)
		return NULL;
	for (;;) {
		for (int i = 0; i < UDP_BATCH; i++) {
			iov[i].iov_base = bufs + i * UDP_SEG;
			iov[i].iov_len = UDP_SEG;
			memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
			msgs[i].msg_hdr.msg_iov = &iov[i];
			msgs[i].msg_hdr.msg_iovlen = 1;
			msgs[i].msg_hdr.msg_name = &from[i];
			msgs[i].msg_hdr.msg_namelen = sizeof from[i];
		}
		int n = recvmmsg(fd, msgs, UDP_BATCH, MSG_WAITFORONE, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return NULL;
		}
		// The echo: each datagram back to its sender, from where it lies.
		for (int i = 0; i < n; i++)
			iov[i].iov_len = msgs[i].msg_len;
		for (int sent = 0; sent < n;) {
			int r = sendmmsg(fd, msgs + sent, n - sent, 0);
			if (r < 0) {
				if (errno == EINTR)
					continue;
				break; // no room: the rest is dropped, as a server would
			}
			sent += r;
		}
	}
}

int cf_udp_start(int loops, int *err, const char **step) {
	int port = 0;
	for (int i = 0; i < loops; i++) {
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			*step = "socket";
			goto fail;
		}
		int one = 1;
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
			*step = "setsockopt(SO_REUSEPORT)";
			goto fail;
		}
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
			*step = "bind";
			goto fail;
		}
		socklen_t alen = sizeof a;
		if (getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
			*step = "getsockname";
			goto fail;
		}
		port = ntohs(a.sin_port);
		pthread_t t;
		int e = pthread_create(&t, NULL, udp_run, (void *)(intptr_t)fd);
		if (e != 0) {
			errno = e;
			*step = "pthread_create";
			goto fail;
		}
		pthread_detach(t);
	}
	return port;
fail:
	*err = errno;
	return -1;
}
