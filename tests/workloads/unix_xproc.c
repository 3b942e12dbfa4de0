/*
 * Unix socket pairs whose ends are in different processes: the parent keeps one end of a
 * SOCK_STREAM pair and of a SOCK_SEQPACKET pair, its child the other ends. Before the dump
 * each side sends to the other and nobody reads, so every queue holds data. After restore
 * each side reads exactly what was sent (message boundaries intact on the seqpacket pair),
 * then they talk once more (ping/pong) over both pairs. The child reports through its exit
 * status.
 */
#include "protocol.c"
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int child_failures;

static void expect(int fd, const char *want, const char *who)
{
	char buf[64] = { 0 };
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 10000) != 1) {
		if (who[0] == 'c')
			child_failures++;
		else
			wl_fail("%s: nothing to read, want %s", who, want);
		return;
	}
	/* Exactly the expected length: on the stream the next message may follow at once; on
	 * the seqpacket pair a merged message would be cut short and the next read fail. */
	ssize_t n = recv(fd, buf, strlen(want), MSG_WAITALL);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, n)) {
		if (who[0] == 'c')
			child_failures++;
		else
			wl_fail("%s: read %zd bytes \"%s\", want \"%s\"", who, n, buf, want);
	}
}

static void say(int fd, const char *m)
{
	if (send(fd, m, strlen(m), 0) != (ssize_t)strlen(m))
		wl_die("send");
}

int main(void)
{
	wl_init();
	int st[2], sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp))
		wl_die("socketpair");
	pid_t kid = fork();
	if (kid < 0)
		wl_die("fork");
	if (kid == 0) {
		close(st[0]);
		close(sp[0]);
		say(st[1], "from-child");
		say(sp[1], "c1");
		say(sp[1], "c2");
		wl_wait_check(NULL);
		expect(st[1], "from-parent", "child stream");
		expect(sp[1], "p1", "child seqpacket 1");
		expect(sp[1], "p2", "child seqpacket 2");
		say(st[1], "ping");
		say(sp[1], "ping");
		expect(st[1], "pong", "child stream pong");
		expect(sp[1], "pong", "child seqpacket pong");
		_exit(child_failures ? 1 : 0);
	}
	close(st[1]);
	close(sp[1]);
	say(st[0], "from-parent");
	say(sp[0], "p1");
	say(sp[0], "p2");
	/* Ready once the child's messages are queued on our ends. */
	struct pollfd p[2] = { { .fd = st[0], .events = POLLIN }, { .fd = sp[0], .events = POLLIN } };
	for (int i = 0; i < 500 && !(p[0].revents & POLLIN && p[1].revents & POLLIN); i++)
		poll(p, 2, 10);
	wl_ready();
	wl_wait_check(NULL);
	expect(st[0], "from-child", "parent stream");
	expect(sp[0], "c1", "parent seqpacket 1");
	expect(sp[0], "c2", "parent seqpacket 2");
	expect(st[0], "ping", "parent stream ping");
	expect(sp[0], "ping", "parent seqpacket ping");
	say(st[0], "pong");
	say(sp[0], "pong");
	int status = 0;
	if (waitpid(kid, &status, 0) != kid || !WIFEXITED(status) || WEXITSTATUS(status))
		wl_fail("the child's checks failed (status %#x)", status);
	return wl_finish();
}
