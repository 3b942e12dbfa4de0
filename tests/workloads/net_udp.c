/*
 * UDP sockets with datagrams queued at dump, between two test hosts.
 *
 * Both get a last argument MARK: the server creates that file once its sockets are bound, the
 * client waits for it before sending (datagrams to an unbound port would be lost).
 *
 * server NETNS 4|6 ADDR PEER PORT: a socket bound to ADDR:PORT and one bound to
 *   ADDR:PORT+2 and connected to PEER:PORT+1. Ready once the client's datagrams are queued
 *   on both; reads nothing until the check. Then it must find every queued datagram, in
 *   order, whole, from PEER:PORT+1; it says "hello" to the client, which answers on both.
 * client NETNS 4|6 ADDR PEER PORT: bound to PEER:PORT+1; sends d0..d4 to ADDR:PORT and
 *   c0..c2 to ADDR:PORT+2, waits for "hello", answers "after" to both. Exit 0 on success.
 */
#include "protocol.c"
#include "netstream.h"

static int v6;

static int udp(const char *host, int port)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, host, port);
	int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&ss, len)) {
		perror("bind");
		exit(2);
	}
	return fd;
}

static void to(int fd, const char *host, int port, const char *msg)
{
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, host, port);
	if (sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&ss, len) < 0) {
		perror("sendto");
		exit(2);
	}
}

static int port_of(struct sockaddr_storage *ss)
{
	return ntohs(v6 ? ((struct sockaddr_in6 *)ss)->sin6_port
			: ((struct sockaddr_in *)ss)->sin_port);
}

/* Receives one datagram (waiting up to 30 s) and checks its text and sender port. */
static void expect(int fd, const char *want, int from_port)
{
	char buf[256];
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 30000) != 1) {
		wl_fail("no datagram %s", want);
		return;
	}
	ssize_t n = recvfrom(fd, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&ss, &len);
	if (n < 0) {
		wl_fail("recv %s: %s", want, strerror(errno));
		return;
	}
	buf[n] = 0;
	if (strcmp(buf, want))
		wl_fail("got %s, want %s", buf, want);
	if (port_of(&ss) != from_port)
		wl_fail("%s came from port %d, want %d", want, port_of(&ss), from_port);
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: server|client NETNS 4|6 ADDR PEER PORT MARK\n");
		return 2;
	}
	ns_enter(argv[2]);
	v6 = atoi(argv[3]) == 6;
	const char *addr = argv[4], *peer = argv[5];
	int port = atoi(argv[6]);
	if (strcmp(argv[1], "client") == 0) {
		int fd = udp(peer, port + 1);
		for (int i = 0; i < 2000 && access(argv[7], F_OK); i++)
			usleep(10000);
		char m[16];
		for (int i = 0; i < 5; i++) {
			snprintf(m, sizeof(m), "d%d", i);
			to(fd, addr, port, m);
		}
		for (int i = 0; i < 3; i++) {
			snprintf(m, sizeof(m), "c%d", i);
			to(fd, addr, port + 2, m);
		}
		char buf[64];
		struct timeval tv = { .tv_sec = 120 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		ssize_t n = recv(fd, buf, sizeof(buf), 0);
		if (n != 5 || memcmp(buf, "hello", 5)) {
			printf("FAIL: no hello after restore\n");
			return 1;
		}
		to(fd, addr, port, "after");
		to(fd, addr, port + 2, "after");
		printf("PASS\n");
		return 0;
	}
	wl_init();
	int s1 = udp(addr, port);
	int s2 = udp(addr, port + 2);
	struct sockaddr_storage ss;
	socklen_t len = make_addr(&ss, v6, peer, port + 1);
	if (connect(s2, (struct sockaddr *)&ss, len))
		wl_die("connect");
	int mark = open(argv[7], O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	if (mark < 0)
		wl_die("mark");
	close(mark);
	double give_up = now_s() + 30;
	for (;;) {
		int a = 0, b = 0;
		ioctl(s1, SIOCINQ, &a);
		ioctl(s2, SIOCINQ, &b);
		if (a > 0 && b > 0)
			break;
		if (now_s() > give_up) {
			wl_fail("the client's datagrams never came");
			break;
		}
		usleep(10000);
	}
	usleep(300000);
	wl_ready();
	wl_wait_check(NULL);
	char m[16];
	for (int i = 0; i < 5; i++) {
		snprintf(m, sizeof(m), "d%d", i);
		expect(s1, m, port + 1);
	}
	for (int i = 0; i < 3; i++) {
		snprintf(m, sizeof(m), "c%d", i);
		expect(s2, m, port + 1);
	}
	if (send(s2, "hello", 5, 0) != 5)
		wl_fail("send hello: %s", strerror(errno));
	expect(s1, "after", port + 1);
	expect(s2, "after", port + 1);
	return wl_finish();
}
