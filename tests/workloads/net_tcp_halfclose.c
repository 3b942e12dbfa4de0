/*
 * Half-closed TCP connections at dump time, between two test hosts.
 *
 * server NETNS 4|6 ADDR PORT: accepts three connections and brings them to
 *   0: CLOSE_WAIT  (the client sent "abc" and shut down its side; nothing read yet),
 *   1: FIN_WAIT2   (the server sent "xyz" and shut down its side; the client acked the FIN),
 *   2: FIN_WAIT1   (the server filled the client's window with a byte stream, then shut
 *                   down: its FIN waits behind unsent data).
 *   After restore: 0 and 1 are still in their states; 0 reads "abc" then end of file and
 *   answers "bye"; 1 reads "late" then end of file; 2 sees end of file once the client has
 *   read everything.
 * client NETNS 4|6 ADDR PORT: the other ends; starts reading the stream after 3 s, checks
 *   every byte and the end of file, sends "late" on 1 after 3 s. Prints PASS or FAIL.
 */
#include "protocol.c"
#include "netstream.h"

static int v6;

static int state_of(int fd)
{
	struct tcp_info ti;
	socklen_t l = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &l))
		return -1;
	return ti.tcpi_state;
}

/* Reads until end of file (30 s at most); returns the bytes read or -1. */
static int read_all(int fd, char *out, int cap)
{
	int n = 0;
	double end = now_s() + 30;
	while (now_s() < end) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 500) != 1)
			continue;
		ssize_t r = recv(fd, out + n, cap - n - 1, MSG_DONTWAIT);
		if (r == 0) {
			out[n] = 0;
			return n;
		}
		if (r > 0)
			n += r;
		else if (errno != EAGAIN)
			return -1;
	}
	return -1;
}

static int client(const char *addr, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, addr, port);
	int fd[3];
	double start = now_s();
	for (int i = 0; i < 3; i++) {
		fd[i] = -1;
		while (now_s() < start + 20) {
			fd[i] = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
			if (connect(fd[i], (struct sockaddr *)&ss, len) == 0)
				break;
			close(fd[i]);
			fd[i] = -1;
			usleep(20000);
		}
		uint8_t id = i;
		if (fd[i] < 0 || send(fd[i], &id, 1, 0) != 1) {
			printf("FAIL: connect %d\n", i);
			return 1;
		}
	}
	if (send(fd[0], "abc", 3, 0) != 3 || shutdown(fd[0], SHUT_WR)) {
		printf("FAIL: abc\n");
		return 1;
	}
	char buf[64];
	if (read_all(fd[1], buf, sizeof(buf)) != 3 || strcmp(buf, "xyz")) {
		printf("FAIL: no xyz+EOF on 1\n");
		return 1;
	}
	while (now_s() < start + 3)
		usleep(10000);
	if (send(fd[1], "late", 4, 0) != 4) {
		printf("FAIL: late\n");
		return 1;
	}
	close(fd[1]);
	/* The stream on 2, to its end. */
	struct stream st;
	stream_init(&st, 77);
	uint64_t got = 0;
	double end = now_s() + 60;
	for (;;) {
		static uint8_t b[65536];
		struct pollfd p = { .fd = fd[2], .events = POLLIN };
		if (now_s() > end) {
			printf("FAIL: no end of file on 2 after %llu bytes\n", (unsigned long long)got);
			return 1;
		}
		if (poll(&p, 1, 500) != 1)
			continue;
		ssize_t r = recv(fd[2], b, sizeof(b), 0);
		if (r == 0)
			break;
		if (r < 0) {
			printf("FAIL: recv 2: %s\n", strerror(errno));
			return 1;
		}
		for (ssize_t i = 0; i < r; i++)
			if (b[i] != stream_next(&st)) {
				printf("FAIL: stream mismatch at %llu\n", (unsigned long long)(got + i));
				return 1;
			}
		got += r;
	}
	close(fd[2]);
	if (read_all(fd[0], buf, sizeof(buf)) != 3 || strcmp(buf, "bye")) {
		printf("FAIL: no bye+EOF on 0\n");
		return 1;
	}
	printf("PASS %llu\n", (unsigned long long)got);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: server|client NETNS 4|6 ADDR PORT\n");
		return 2;
	}
	ns_enter(argv[2]);
	v6 = atoi(argv[3]) == 6;
	int port = atoi(argv[5]);
	if (strcmp(argv[1], "client") == 0)
		return client(argv[4], port);
	wl_init();
	int ls = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, argv[4], port);
	if (bind(ls, (struct sockaddr *)&ss, len) || listen(ls, 8))
		wl_die("listen");
	int fd[3] = { -1, -1, -1 };
	for (int i = 0; i < 3; i++) {
		int c = accept(ls, NULL, NULL);
		uint8_t id;
		if (c < 0 || recv(c, &id, 1, MSG_WAITALL) != 1 || id > 2)
			wl_die("accept");
		fd[id] = c;
	}
	if (send(fd[1], "xyz", 3, 0) != 3 || shutdown(fd[1], SHUT_WR))
		wl_die("xyz");
	struct stream st;
	stream_init(&st, 77);
	fcntl(fd[2], F_SETFL, O_NONBLOCK);
	for (;;) {
		static uint8_t b[65536];
		struct stream t = st;
		for (size_t i = 0; i < sizeof(b); i++)
			b[i] = stream_next(&t);
		ssize_t w = send(fd[2], b, sizeof(b), MSG_NOSIGNAL);
		if (w <= 0)
			break;
		for (ssize_t i = 0; i < w; i++)
			stream_next(&st);
	}
	if (shutdown(fd[2], SHUT_WR))
		wl_die("shutdown 2");
	double give_up = now_s() + 20;
	while (state_of(fd[0]) != TCP_CLOSE_WAIT || state_of(fd[1]) != TCP_FIN_WAIT2 ||
	       state_of(fd[2]) != TCP_FIN_WAIT1) {
		if (now_s() > give_up) {
			wl_fail("states %d %d %d before the dump", state_of(fd[0]), state_of(fd[1]),
				state_of(fd[2]));
			break;
		}
		usleep(5000);
	}
	wl_ready();
	wl_wait_check(NULL);
	if (state_of(fd[0]) != TCP_CLOSE_WAIT)
		wl_fail("0 is in state %d, not CLOSE_WAIT", state_of(fd[0]));
	if (state_of(fd[1]) != TCP_FIN_WAIT2)
		wl_fail("1 is in state %d, not FIN_WAIT2", state_of(fd[1]));
	char buf[64];
	fcntl(fd[0], F_SETFL, O_NONBLOCK);
	if (read_all(fd[0], buf, sizeof(buf)) != 3 || strcmp(buf, "abc"))
		wl_fail("0: no abc then end of file");
	if (send(fd[0], "bye", 3, MSG_NOSIGNAL) != 3)
		wl_fail("0: bye: %s", strerror(errno));
	close(fd[0]);
	fcntl(fd[1], F_SETFL, O_NONBLOCK);
	if (read_all(fd[1], buf, sizeof(buf)) != 4 || strcmp(buf, "late"))
		wl_fail("1: no late then end of file");
	if (read_all(fd[2], buf, sizeof(buf)) != 0)
		wl_fail("2: no end of file");
	return wl_finish();
}
