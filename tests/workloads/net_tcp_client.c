/*
 * Clients of net_tcp_server on another host (not dumped): NCONN connections, each streaming
 * BYTES bytes each way with every received byte checked; reading starts only after DELAY
 * seconds so the server's send queues fill. Then one more connection: ping/pong.
 * Prints PASS or FAIL: ... and exits 0 or 1.
 *
 * args: NETNS(-) FAMILY(4|6) ADDR PORT NCONN BYTES DELAY
 */
#include "netstream.h"

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: NETNS 4|6 ADDR PORT NCONN BYTES DELAY\n");
		return 2;
	}
	ns_enter(argv[1]);
	int v6 = atoi(argv[2]) == 6;
	int port = atoi(argv[4]);
	int n = atoi(argv[5]);
	uint64_t total = strtoull(argv[6], NULL, 0);
	double delay = atof(argv[7]);
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, argv[3], port);
	struct conn cs[64];
	double start = now_s();
	for (int i = 0; i < n; i++) {
		int fd = -1;
		while (now_s() < start + 20) {
			fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
			/* A small receive buffer (no autotuning): the stream cannot all sit in it, so
			 * the server's send queue stays full while the client does not read. */
			int rcvbuf = 64 << 10;
			setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
			if (connect(fd, (struct sockaddr *)&ss, len) == 0)
				break;
			close(fd);
			fd = -1;
			usleep(20000);
		}
		if (fd < 0) {
			printf("FAIL: cannot connect\n");
			return 1;
		}
		uint8_t id = i;
		if (send(fd, &id, 1, 0) != 1) {
			printf("FAIL: send id\n");
			return 1;
		}
		/* Reading starts `delay` seconds after the connection is made (not after the client
		 * started: the server may take seconds to listen, e.g. while IPv6 addresses are
		 * still tentative), so the dump still finds the server's send queues full. */
		conn_init(&cs[i], fd, 1000 + id, 2000 + id, total, now_s() + delay);
	}
	int bad = conns_run(cs, n, now_s() + 120);
	if (bad) {
		printf("FAIL:");
		for (int i = 0; i < n; i++) {
			char d[256];
			conn_describe(&cs[i], i, d, sizeof(d));
			printf(" %s;", d);
		}
		printf("\n");
		return 1;
	}
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	char buf[4] = { 0 };
	struct timeval tv = { .tv_sec = 30 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&ss, len) || send(fd, "ping", 4, 0) != 4 ||
	    recv(fd, buf, 4, MSG_WAITALL) != 4 || memcmp(buf, "pong", 4)) {
		printf("FAIL: ping/pong after the streams: %s\n", strerror(errno));
		return 1;
	}
	printf("PASS\n");
	return 0;
}
