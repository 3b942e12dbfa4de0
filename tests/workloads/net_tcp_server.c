/*
 * A TCP server with established connections to clients on another host and one connection
 * whose both ends are in its own tree (a forked child connects to it).
 *
 * args: NETNS(-) FAMILY(4|6) ADDR PORT NCLIENTS BYTES
 * (6 with ADDR "::" is a dual-stack listener: IPv4 clients arrive as v4-mapped addresses.)
 *
 * Every connection streams BYTES bytes each way (tests/workloads/netstream.h); each side
 * checks every byte it receives. Before reporting ready the server neither reads nor stops
 * writing until every connection has unread bytes in its receive queue and bytes in its send
 * queue, and it goes on not reading for a while after, so the dump catches both queues full.
 * After the streams it accepts one more connection (ping/pong) and checks its options.
 */
#include "protocol.c"
#include "netstream.h"
#include <linux/sockios.h>
#include <sys/wait.h>

static int v6;
static const char *addr;
static int port;

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(fd, level, name, &v, &l);
	return v;
}

static void child(uint64_t total)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, addr, port);
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	int rcvbuf = 64 << 10; /* keeps the server's send queue full while we do not read */
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len)) {
		perror("child connect");
		_exit(3);
	}
	uint8_t id = 100;
	if (send(fd, &id, 1, 0) != 1)
		_exit(3);
	struct conn c;
	conn_init(&c, fd, 1000 + id, 2000 + id, total, now_s() + 3.0);
	if (conns_run(&c, 1, now_s() + 120)) {
		char d[256];
		conn_describe(&c, id, d, sizeof(d));
		fprintf(stderr, "child: %s\n", d);
		_exit(1);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 7) {
		fprintf(stderr, "usage: NETNS 4|6 ADDR PORT NCLIENTS BYTES\n");
		return 2;
	}
	ns_enter(argv[1]);
	wl_init();
	v6 = atoi(argv[2]) == 6;
	addr = argv[3];
	port = atoi(argv[4]);
	int nclients = atoi(argv[5]);
	uint64_t total = strtoull(argv[6], NULL, 0);
	int n = nclients + 1;

	int ls = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(ls, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	/* Accepted sockets inherit a small receive buffer: what the peers (the in-tree child
	 * among them) send cannot all sit in it, so their send queues stay full too. */
	int rcvbuf = 64 << 10;
	setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	int dual = v6 && !strcmp(addr, "::");
	if (v6 && !dual)
		setsockopt(ls, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, addr, port);
	if (bind(ls, (struct sockaddr *)&ss, len) || listen(ls, 16))
		wl_die("listen");
	pid_t kid = fork();
	if (kid == 0)
		child(total);

	struct conn cs[64];
	int ids[64];
	for (int i = 0; i < n; i++) {
		int fd = accept(ls, NULL, NULL);
		if (fd < 0)
			wl_die("accept");
		uint8_t id;
		if (recv(fd, &id, 1, MSG_WAITALL) != 1)
			wl_die("read id");
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		ids[i] = id;
		conn_init(&cs[i], fd, 2000 + id, 1000 + id, total, 0);
	}
	/* Fill both queues of every connection without reading. */
	double give_up = now_s() + 20;
	for (;;) {
		int full = 1;
		for (int i = 0; i < n; i++) {
			conn_step(&cs[i], 0, 1);
			/* Unsent bytes, not just unacknowledged ones: they stay only once the peer's
			 * window is full, while a few bytes in flight are acknowledged within
			 * microseconds (a dump that froze the server right then found an empty send
			 * queue). */
			int inq = 0, unsent = 0;
			ioctl(cs[i].fd, SIOCINQ, &inq);
			ioctl(cs[i].fd, SIOCOUTQNSD, &unsent);
			if (inq == 0 || unsent == 0)
				full = 0;
		}
		if (full)
			break;
		if (now_s() > give_up) {
			wl_fail("queues never filled");
			break;
		}
		usleep(2000);
	}
	wl_ready();
	double stall_end = now_s() + 1.5;
	while (now_s() < stall_end) {
		for (int i = 0; i < n; i++)
			conn_step(&cs[i], 0, 1);
		usleep(5000);
	}
	if (conns_run(cs, n, now_s() + 120)) {
		for (int i = 0; i < n; i++) {
			char d[256];
			conn_describe(&cs[i], ids[i], d, sizeof(d));
			if (!conn_done(&cs[i]) || cs[i].bad || cs[i].err || cs[i].eof)
				wl_fail("%s", d);
		}
	}
	if (opt(ls, SOL_SOCKET, SO_KEEPALIVE) != 1)
		wl_fail("listener lost SO_KEEPALIVE");
	if (opt(ls, SOL_SOCKET, SO_REUSEADDR) != 1)
		wl_fail("listener lost SO_REUSEADDR");
	if (v6 && opt(ls, IPPROTO_IPV6, IPV6_V6ONLY) != !dual)
		wl_fail("listener's IPV6_V6ONLY changed");
	for (int i = 0; i < n; i++)
		if (opt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY) != 1)
			wl_fail("conn %d lost TCP_NODELAY", ids[i]);

	/* The listener still accepts: one more connection, ping/pong. */
	struct pollfd p = { .fd = ls, .events = POLLIN };
	if (poll(&p, 1, 30000) != 1) {
		wl_fail("no new connection after restore");
	} else {
		int fd = accept(ls, NULL, NULL);
		char buf[4] = { 0 };
		if (fd < 0 || recv(fd, buf, 4, MSG_WAITALL) != 4 || memcmp(buf, "ping", 4) ||
		    send(fd, "pong", 4, 0) != 4)
			wl_fail("ping/pong on a new connection failed");
		if (fd >= 0)
			close(fd);
	}
	int status = 0;
	if (waitpid(kid, &status, 0) != kid || !WIFEXITED(status) || WEXITSTATUS(status))
		wl_fail("the in-tree peer failed (status %#x)", status);
	wl_wait_check(NULL);
	return wl_finish();
}
