/*
 * Shared by the network workloads (included, not a workload of its own): entering a network
 * namespace, deterministic byte streams both ends can check byte by byte, and one
 * connection's worth of streaming with poll.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>
#include <errno.h>

/* Joins the network namespace at `path` ("-" for none). */
static __attribute__((unused)) void ns_enter(const char *path)
{
	if (strcmp(path, "-") == 0)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || setns(fd, CLONE_NEWNET)) {
		perror("setns");
		exit(2);
	}
	close(fd);
}

/* A byte stream from a 64-bit xorshift generator. */
struct stream {
	uint64_t x;
	uint8_t buf[8];
	int pos;
	uint64_t count; /* bytes produced so far */
};

static __attribute__((unused)) void stream_init(struct stream *s, uint64_t seed)
{
	s->x = seed * 0x9E3779B97F4A7C15ull + 1;
	s->pos = 8;
	s->count = 0;
}

static __attribute__((unused)) uint8_t stream_next(struct stream *s)
{
	if (s->pos == 8) {
		s->x ^= s->x << 13;
		s->x ^= s->x >> 7;
		s->x ^= s->x << 17;
		memcpy(s->buf, &s->x, 8);
		s->pos = 0;
	}
	s->count++;
	return s->buf[s->pos++];
}

/* Parses "4" or "6" and an address into a sockaddr. */
static __attribute__((unused)) socklen_t make_addr(struct sockaddr_storage *ss, int v6,
						  const char *host, int port)
{
	memset(ss, 0, sizeof(*ss));
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(port);
		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1) {
			fprintf(stderr, "bad address %s\n", host);
			exit(2);
		}
		return sizeof(*a);
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;
	a->sin_family = AF_INET;
	a->sin_port = htons(port);
	if (inet_pton(AF_INET, host, &a->sin_addr) != 1) {
		fprintf(stderr, "bad address %s\n", host);
		exit(2);
	}
	return sizeof(*a);
}

static __attribute__((unused)) double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One end of a streaming connection: sends `total` bytes of stream tx and checks `total`
 * bytes of stream rx, without reading before `read_after` (monotonic seconds). */
struct conn {
	int fd;
	struct stream tx, rx;
	uint64_t total;
	uint64_t sent, recvd;
	double read_after;
	int bad;     /* first mismatch seen */
	uint64_t bad_at;
	int eof;
	int err;
};

static __attribute__((unused)) void conn_init(struct conn *c, int fd, uint64_t tx_seed,
					      uint64_t rx_seed, uint64_t total, double read_after)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	stream_init(&c->tx, tx_seed);
	stream_init(&c->rx, rx_seed);
	c->total = total;
	c->read_after = read_after;
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

static __attribute__((unused)) int conn_done(const struct conn *c)
{
	return c->bad || c->err || c->eof || (c->sent == c->total && c->recvd == c->total);
}

/* One step: writes what fits, reads what is there (after read_after). */
static __attribute__((unused)) void conn_step(struct conn *c, int may_read, int may_write)
{
	static uint8_t buf[65536];
	if (may_write && c->sent < c->total) {
		size_t n = sizeof(buf);
		if (n > c->total - c->sent)
			n = c->total - c->sent;
		/* Generate into a copy of the stream so unsent bytes are produced again. */
		struct stream t = c->tx;
		for (size_t i = 0; i < n; i++)
			buf[i] = stream_next(&t);
		ssize_t w = send(c->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w > 0) {
			for (ssize_t i = 0; i < w; i++)
				stream_next(&c->tx);
			c->sent += w;
		} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
			c->err = errno;
		}
	}
	if (may_read && now_s() >= c->read_after && c->recvd < c->total) {
		ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r > 0) {
			for (ssize_t i = 0; i < r && !c->bad; i++) {
				if (buf[i] != stream_next(&c->rx)) {
					c->bad = 1;
					c->bad_at = c->recvd + i;
				}
			}
			c->recvd += r;
		} else if (r == 0) {
			c->eof = 1;
		} else if (errno != EAGAIN && errno != EINTR) {
			c->err = errno;
		}
	}
}

/* Runs connections until all are done or `deadline`; returns 0 when every one is complete. */
static __attribute__((unused)) int conns_run(struct conn *cs, int n, double deadline)
{
	for (;;) {
		int all = 1;
		struct pollfd p[64];
		for (int i = 0; i < n; i++) {
			p[i].fd = cs[i].fd;
			p[i].events = 0;
			if (!conn_done(&cs[i])) {
				all = 0;
				if (cs[i].sent < cs[i].total)
					p[i].events |= POLLOUT;
				if (cs[i].recvd < cs[i].total)
					p[i].events |= POLLIN;
			}
		}
		if (all)
			break;
		if (now_s() > deadline)
			return -1;
		poll(p, n, 20);
		for (int i = 0; i < n; i++)
			if (!conn_done(&cs[i]))
				conn_step(&cs[i], 1, 1);
	}
	for (int i = 0; i < n; i++)
		if (cs[i].bad || cs[i].err || cs[i].eof)
			return -1;
	return 0;
}

static __attribute__((unused)) void conn_describe(const struct conn *c, int i, char *out, size_t len)
{
	snprintf(out, len,
		 "conn %d: sent %llu/%llu recvd %llu/%llu%s%s%s (mismatch at %llu, err %s)", i,
		 (unsigned long long)c->sent, (unsigned long long)c->total,
		 (unsigned long long)c->recvd, (unsigned long long)c->total,
		 c->bad ? " MISMATCH" : "", c->eof ? " EOF" : "", c->err ? " ERROR" : "",
		 (unsigned long long)c->bad_at, c->err ? strerror(c->err) : "-");
}
