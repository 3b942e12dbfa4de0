/*
 * fd_unix: unix sockets with queued data.
 *
 *   st   stream socketpair: "hello " and "world" queued for st[1], 100000 pattern bytes for
 *        st[0]; st[1] has SO_PEEK_OFF 3 (after peeking 3 bytes); st[0] has SO_RCVBUF 100000
 *   dg   datagram socketpair: datagrams of 1, 0 and 5000 bytes queued for dg[1], "x" for
 *        dg[0]; dg[1] has SO_PASSCRED
 *   sq   seqpacket socketpair: "one", "two" queued for sq[1]; then sq[0] shut down for writing
 *   hf   stream socketpair with "bye" queued for hf[0], then hf[1] closed
 *   ls   stream socket bound to the path "sock" (mode 0640), listening, O_NONBLOCK
 *   ab   datagram socket bound to an abstract name, nothing queued
 *   ub   an unbound, unconnected stream socket
 *
 * After restore: each queue holds exactly its bytes, datagrams and packets with their
 * boundaries; the shutdowns and the closed peer show as end of file and EPIPE; the listener
 * accepts a new connection; the abstract socket receives; the options are as they were.
 */
#include "protocol.c"
#include <sys/socket.h>
#include <stddef.h>
#include <sys/un.h>

#define BIG 100000

static unsigned char pat(long i) { return (unsigned char)(i * 31 + (i >> 7)); }

static void expect_recv(const char *name, int fd, const void *want, ssize_t len)
{
	static unsigned char buf[BIG + 16];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n != len)
		wl_fail("%s: received %zd bytes, want %zd (%s)", name, n, len,
			n < 0 ? strerror(errno) : "");
	else if (len && memcmp(buf, want, len))
		wl_fail("%s: received bytes differ", name);
}

static void expect_empty(const char *name, int fd)
{
	char c;
	if (recv(fd, &c, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		wl_fail("%s: more queued than expected", name);
}

static socklen_t abstract_addr(struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "cryo-test-%d", (int)getpid());
	return offsetof(struct sockaddr_un, sun_path) + 1 + n;
}

int main(void)
{
	static unsigned char big[BIG];
	int st[2], dg[2], sq[2], hf[2];
	wl_init();
	for (long i = 0; i < BIG; i++)
		big[i] = pat(i);
	static unsigned char d5000[5000];
	memset(d5000, 0xa5, sizeof(d5000));
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) || socketpair(AF_UNIX, SOCK_STREAM, 0, hf))
		wl_die("socketpair");
	int rcv = 100000;
	if (setsockopt(st[0], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)))
		wl_die("SO_RCVBUF");
	if (send(st[0], "hello ", 6, 0) != 6 || send(st[0], "world", 5, 0) != 5 ||
	    send(st[1], big, BIG, 0) != BIG)
		wl_die("send st");
	int off = 0;
	char peeked[3];
	if (setsockopt(st[1], SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) ||
	    recv(st[1], peeked, 3, MSG_PEEK) != 3)
		wl_die("SO_PEEK_OFF");
	int one = 1;
	if (setsockopt(dg[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)))
		wl_die("SO_PASSCRED");
	if (send(dg[0], "A", 1, 0) != 1 || send(dg[0], "", 0, 0) != 0 ||
	    send(dg[0], d5000, 5000, 0) != 5000 || send(dg[1], "x", 1, 0) != 1)
		wl_die("send dg");
	if (send(sq[0], "one", 3, 0) != 3 || send(sq[0], "two", 3, 0) != 3 ||
	    shutdown(sq[0], SHUT_WR))
		wl_die("seqpacket");
	if (send(hf[1], "bye", 3, 0) != 3)
		wl_die("send hf");
	close(hf[1]);

	int ls = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	struct sockaddr_un la = {.sun_family = AF_UNIX};
	strcpy(la.sun_path, "sock");
	if (ls < 0 || bind(ls, (struct sockaddr *)&la, sizeof(la)) || chmod("sock", 0640) ||
	    listen(ls, 5))
		wl_die("listener");
	int ab = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un aa;
	socklen_t alen = abstract_addr(&aa);
	if (ab < 0 || bind(ab, (struct sockaddr *)&aa, alen))
		wl_die("abstract");
	int ub = socket(AF_UNIX, SOCK_STREAM, 0);
	if (ub < 0)
		wl_die("socket");

	wl_ready();
	wl_wait_check(NULL);

	int v = 0;
	socklen_t vl = sizeof(v);
	if (getsockopt(st[1], SOL_SOCKET, SO_PEEK_OFF, &v, &vl) || v != 3)
		wl_fail("st[1]: SO_PEEK_OFF %d, want 3", v);
	char p3[3];
	if (recv(st[1], p3, 3, MSG_PEEK | MSG_DONTWAIT) != 3 || memcmp(p3, "lo ", 3))
		wl_fail("st[1]: peeking at offset 3 gives %.3s", p3);
	v = -1;
	setsockopt(st[1], SOL_SOCKET, SO_PEEK_OFF, &v, sizeof(v));
	expect_recv("st[1]", st[1], "hello world", 11);
	expect_empty("st[1]", st[1]);
	expect_recv("st[0]", st[0], big, BIG);
	expect_empty("st[0]", st[0]);
	vl = sizeof(v);
	if (getsockopt(st[0], SOL_SOCKET, SO_RCVBUF, &v, &vl) || v != 200000)
		wl_fail("st[0]: SO_RCVBUF %d, want 200000", v);

	expect_recv("dg[1] first", dg[1], "A", 1);
	expect_recv("dg[1] second", dg[1], "", 0);
	expect_recv("dg[1] third", dg[1], d5000, 5000);
	expect_empty("dg[1]", dg[1]);
	expect_recv("dg[0]", dg[0], "x", 1);
	vl = sizeof(v);
	if (getsockopt(dg[1], SOL_SOCKET, SO_PASSCRED, &v, &vl) || !v)
		wl_fail("dg[1]: SO_PASSCRED lost");
	if (send(dg[0], "again", 5, 0) != 5)
		wl_fail("dg: send after restore");
	expect_recv("dg[1] after restore", dg[1], "again", 5);

	expect_recv("sq[1] first", sq[1], "one", 3);
	expect_recv("sq[1] second", sq[1], "two", 3);
	char c;
	if (recv(sq[1], &c, 1, MSG_DONTWAIT) != 0)
		wl_fail("sq[1]: no end of file after the peer's shutdown");
	if (send(sq[0], "z", 1, MSG_NOSIGNAL) != -1 || errno != EPIPE)
		wl_fail("sq[0]: sending after shutdown did not fail with EPIPE");
	if (send(sq[1], "back", 4, 0) != 4)
		wl_fail("sq[1]: cannot send the other way");
	expect_recv("sq[0]", sq[0], "back", 4);

	expect_recv("hf[0]", hf[0], "bye", 3);
	if (recv(hf[0], &c, 1, MSG_DONTWAIT) != 0)
		wl_fail("hf[0]: no end of file from the closed peer");

	if (!(fcntl(ls, F_GETFL) & O_NONBLOCK))
		wl_fail("ls: O_NONBLOCK lost");
	struct sockaddr_un got = {0};
	socklen_t gl = sizeof(got);
	if (getsockname(ls, (struct sockaddr *)&got, &gl) || strcmp(got.sun_path, "sock"))
		wl_fail("ls: bound to %s", got.sun_path);
	struct stat sst;
	if (stat("sock", &sst) || !S_ISSOCK(sst.st_mode) || (sst.st_mode & 0777) != 0640)
		wl_fail("sock: not a socket file with mode 0640");
	int cl = socket(AF_UNIX, SOCK_STREAM, 0);
	if (cl < 0 || connect(cl, (struct sockaddr *)&la, sizeof(la)))
		wl_fail("connect to the restored listener: %s", strerror(errno));
	int acc = accept(ls, NULL, NULL);
	if (acc < 0 || send(cl, "hi", 2, 0) != 2)
		wl_fail("accept: %s", strerror(errno));
	else
		expect_recv("accepted", acc, "hi", 2);

	int snd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (snd < 0 || sendto(snd, "abs", 3, 0, (struct sockaddr *)&aa, alen) != 3)
		wl_fail("sending to the abstract name: %s", strerror(errno));
	else
		expect_recv("ab", ab, "abs", 3);

	vl = sizeof(v);
	if (getsockopt(ub, SOL_SOCKET, SO_TYPE, &v, &vl) || v != SOCK_STREAM)
		wl_fail("ub: not a stream socket");
	return wl_finish();
}
