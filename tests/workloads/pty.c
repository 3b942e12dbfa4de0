/*
 * A pseudo-terminal pair inside the tree, and a session whose controlling terminal it is.
 *
 * The root opens a pair (master with packet mode on, window 33x77) and forks a session
 * leader, which opens the slave as its controlling terminal, turns ECHO off, and forks a
 * child that it makes the terminal's foreground process group. After restore:
 *   root:       packet mode and window size kept; writes "ping" to the master and reads the
 *               child's "pong" back (behind the packet-mode header byte);
 *   leader:     still the session leader, the slave its controlling terminal with the child's
 *               group in the foreground, ECHO still off;
 *   child:      /dev/tty opens (it has a controlling terminal), its group is in the
 *               foreground, it reads "ping" from the terminal and answers "pong".
 * Leader and child report through their exit status.
 */
#include "protocol.c"
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

static int bad;

static void leader(const char *name)
{
	if (setsid() < 0)
		_exit(10);
	int s = open(name, O_RDWR); /* no O_NOCTTY: it becomes the controlling terminal */
	if (s < 0)
		_exit(11);
	struct termios t;
	if (tcgetattr(s, &t))
		_exit(12);
	t.c_lflag &= ~(ECHO | ECHONL);
	if (tcsetattr(s, TCSANOW, &t))
		_exit(13);
	signal(SIGTTOU, SIG_IGN);
	pid_t kid = fork();
	if (kid == 0) {
		setpgid(0, 0);
		wl_wait_check(NULL);
		int tty = open("/dev/tty", O_RDWR);
		if (tty < 0)
			bad |= 1;
		if (tcgetpgrp(s) != getpgrp())
			bad |= 2;
		char buf[64] = { 0 };
		alarm(30);
		ssize_t n = read(s, buf, sizeof(buf) - 1);
		if (n < 5 || memcmp(buf, "ping\n", 5))
			bad |= 4;
		if (write(s, "pong\n", 5) != 5)
			bad |= 8;
		_exit(bad);
	}
	setpgid(kid, kid);
	if (tcsetpgrp(s, kid))
		_exit(14);
	wl_wait_check(NULL);
	if (getsid(0) != getpid() || tcgetsid(s) != getpid())
		bad |= 1;
	if (tcgetpgrp(s) != kid)
		bad |= 2;
	if (tcgetattr(s, &t) || (t.c_lflag & ECHO))
		bad |= 4;
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st))
		bad |= 8 | (WIFEXITED(st) ? WEXITSTATUS(st) << 4 : 0);
	_exit(bad);
}

int main(void)
{
	wl_init();
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0 || grantpt(m) || unlockpt(m))
		wl_die("posix_openpt");
	char name[64];
	if (ptsname_r(m, name, sizeof(name)))
		wl_die("ptsname");
	struct winsize ws = { .ws_row = 33, .ws_col = 77 };
	int one = 1;
	if (ioctl(m, TIOCSWINSZ, &ws) || ioctl(m, TIOCPKT, &one))
		wl_die("master setup");
	pid_t lead = fork();
	if (lead == 0)
		leader(name);
	/* Ready once the leader has put its child's group in the foreground. */
	for (int i = 0; i < 1000; i++) {
		pid_t fg = 0;
		if (ioctl(m, TIOCGPGRP, &fg) == 0 && fg > 0 && fg != lead)
			break;
		usleep(5000);
	}
	wl_ready();
	wl_wait_check(NULL);
	int pkt = 0;
	struct winsize w2 = { 0 };
	if (ioctl(m, TIOCGPKT, &pkt) || !pkt)
		wl_fail("packet mode lost");
	if (ioctl(m, TIOCGWINSZ, &w2) || w2.ws_row != 33 || w2.ws_col != 77)
		wl_fail("window size %dx%d, want 77x33", w2.ws_col, w2.ws_row);
	if (write(m, "ping\n", 5) != 5)
		wl_fail("writing to the master: %s", strerror(errno));
	char got[256] = { 0 };
	size_t len = 0;
	while (!strstr(got, "pong") && len < sizeof(got) - 64) {
		struct pollfd p = { .fd = m, .events = POLLIN };
		if (poll(&p, 1, 20000) != 1) {
			wl_fail("no pong from the terminal");
			break;
		}
		char b[64];
		ssize_t n = read(m, b, sizeof(b));
		if (n <= 0) {
			wl_fail("reading the master: %s", strerror(errno));
			break;
		}
		/* Packet mode: a header byte, then data (header 0). */
		if (b[0] == 0 && n > 1) {
			memcpy(got + len, b + 1, n - 1);
			len += n - 1;
		}
	}
	int st = 0;
	if (waitpid(lead, &st, 0) != lead || !WIFEXITED(st) || WEXITSTATUS(st))
		wl_fail("the session's checks failed (status %#x)", st);
	return wl_finish();
}
