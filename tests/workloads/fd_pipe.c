/*
 * fd_pipe: pipes whose both ends are in the process, and a FIFO, with data in their buffers.
 *
 *   a  "hello pipe" buffered; read end O_NONBLOCK|O_ASYNC, owned by the process with
 *      F_SETSIG SIGRTMIN (blocked), so data arriving queues SIGRTMIN
 *   b  1 MiB buffer (F_SETPIPE_SZ) holding 300000 bytes of a pattern, written in pieces
 *   c  the self-pipe trick: empty, both ends O_NONBLOCK|O_CLOEXEC
 *   d  4096-byte buffer, full; its write end duplicated (dup) and its read end opened a
 *      second time through /proc/self/fd (a separate description, blocking)
 *   e  a FIFO in the working directory opened O_RDWR, "fifo data" buffered, and opened
 *      again O_RDONLY|O_NONBLOCK
 *
 * After restore every pipe has its size, flags and exact bytes (no more, no fewer: a further
 * read finds it empty), the duplicate shares its description, and each pipe still connects
 * its ends. The same check passes after a dump with --leave-running, which must not have
 * consumed anything.
 */
#include "protocol.c"
#include <signal.h>

#define BSIZE 300000

static unsigned char pat(long i) { return (unsigned char)(i * 13 + (i >> 9)); }

static void expect_size(const char *name, int fd, int want)
{
	int sz = fcntl(fd, F_GETPIPE_SZ);
	if (sz != want)
		wl_fail("%s: pipe size %d, want %d", name, sz, want);
}

static void expect_fl(const char *name, int fd, int want, int cloexec)
{
	int fl = fcntl(fd, F_GETFL) & (O_ACCMODE | O_NONBLOCK);
	if (fl != want)
		wl_fail("%s: flags %o, want %o", name, fl, want);
	if (!!(fcntl(fd, F_GETFD) & FD_CLOEXEC) != cloexec)
		wl_fail("%s: close-on-exec is not %d", name, cloexec);
}

/* Reads exactly len bytes (non-blocking fd) and expects nothing more. */
static int drain_expect(const char *name, int fd, const unsigned char *want, long len)
{
	static unsigned char buf[BSIZE + 4096];
	long got = 0;
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	for (;;) {
		ssize_t n = read(fd, buf + got, sizeof(buf) - got);
		if (n > 0) {
			got += n;
			continue;
		}
		if (n < 0 && errno == EAGAIN)
			break;
		wl_fail("%s: read: %s", name, n ? strerror(errno) : "EOF");
		break;
	}
	fcntl(fd, F_SETFL, fl);
	if (got != len) {
		wl_fail("%s: %ld bytes buffered, want %ld", name, got, len);
		return 0;
	}
	if (memcmp(buf, want, len)) {
		wl_fail("%s: buffered bytes differ", name);
		return 0;
	}
	return 1;
}

static void expect_connected(const char *name, int r, int w)
{
	char c = 'x';
	if (write(w, &c, 1) != 1)
		wl_fail("%s: write after restore: %s", name, strerror(errno));
	else if (!drain_expect(name, r, (const unsigned char *)"x", 1))
		wl_fail("%s: its ends are not connected", name);
}

int main(void)
{
	static unsigned char big[BSIZE], full[4096];
	int a[2], b[2], c[2], d[2];
	wl_init();

	if (pipe(a) || pipe(b) || pipe2(c, O_NONBLOCK | O_CLOEXEC) || pipe(d))
		wl_die("pipe");
	fcntl(a[0], F_SETFL, O_NONBLOCK);
	if (write(a[1], "hello pipe", 10) != 10)
		wl_die("write a");
	sigset_t rt;
	sigemptyset(&rt);
	sigaddset(&rt, SIGRTMIN);
	sigprocmask(SIG_BLOCK, &rt, NULL);
	if (fcntl(a[0], F_SETOWN, getpid()) || fcntl(a[0], F_SETSIG, SIGRTMIN) ||
	    fcntl(a[0], F_SETFL, O_NONBLOCK | O_ASYNC))
		wl_die("O_ASYNC");
	if (fcntl(b[1], F_SETPIPE_SZ, 1 << 20) != 1 << 20)
		wl_die("F_SETPIPE_SZ 1M");
	for (long i = 0; i < BSIZE; i++)
		big[i] = pat(i);
	for (long off = 0; off < BSIZE; off += 7001) {
		long n = BSIZE - off < 7001 ? BSIZE - off : 7001;
		if (write(b[1], big + off, n) != n)
			wl_die("write b");
	}
	if (fcntl(d[1], F_SETPIPE_SZ, 4096) != 4096)
		wl_die("F_SETPIPE_SZ 4096");
	for (int i = 0; i < 4096; i++)
		full[i] = (unsigned char)(255 - i);
	if (write(d[1], full, 4096) != 4096)
		wl_die("write d");
	int dw2 = dup(d[1]);
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", d[0]);
	int dr2 = open(path, O_RDONLY);
	if (dw2 < 0 || dr2 < 0)
		wl_die("second descriptions of d");
	if (mkfifo("fifo", 0600))
		wl_die("mkfifo");
	int e = open("fifo", O_RDWR);
	int e2 = open("fifo", O_RDONLY | O_NONBLOCK);
	if (e < 0 || e2 < 0 || write(e, "fifo data", 9) != 9)
		wl_die("fifo");

	wl_ready();
	wl_wait_check(NULL);

	expect_fl("a read", a[0], O_RDONLY | O_NONBLOCK, 0);
	expect_fl("a write", a[1], O_WRONLY, 0);
	expect_fl("c read", c[0], O_RDONLY | O_NONBLOCK, 1);
	expect_fl("c write", c[1], O_WRONLY | O_NONBLOCK, 1);
	expect_fl("d read again", dr2, O_RDONLY, 0);
	expect_fl("fifo", e, O_RDWR, 0);
	expect_fl("fifo again", e2, O_RDONLY | O_NONBLOCK, 0);
	expect_size("a", a[0], 65536);
	expect_size("b", b[1], 1 << 20);
	expect_size("d", dr2, 4096);

	drain_expect("a", a[0], (const unsigned char *)"hello pipe", 10);
	drain_expect("b", b[0], big, BSIZE);
	drain_expect("c", c[0], NULL, 0);
	drain_expect("d", dr2, full, 4096);
	drain_expect("fifo", e2, (const unsigned char *)"fifo data", 9);

	/* The duplicate shares its description: O_NONBLOCK set through one shows in the other. */
	fcntl(dw2, F_SETFL, O_NONBLOCK);
	if (!(fcntl(d[1], F_GETFL) & O_NONBLOCK))
		wl_fail("d: the dup'd write end is a separate description");
	if (fcntl(d[0], F_GETFL) & O_NONBLOCK)
		wl_fail("d: the two read descriptions are one");

	if (!(fcntl(a[0], F_GETFL) & O_ASYNC))
		wl_fail("a: O_ASYNC lost");
	if (fcntl(a[0], F_GETOWN) != getpid() || fcntl(a[0], F_GETSIG) != SIGRTMIN)
		wl_fail("a: owner %d signal %d", fcntl(a[0], F_GETOWN), fcntl(a[0], F_GETSIG));
	expect_connected("a", a[0], a[1]);
	struct timespec second = {1, 0};
	if (sigtimedwait(&rt, NULL, &second) != SIGRTMIN)
		wl_fail("a: no SIGRTMIN when data arrived");
	expect_connected("b", b[0], b[1]);
	expect_connected("c", c[0], c[1]);
	expect_connected("d", d[0], dw2);
	expect_connected("fifo", e, e);
	return wl_finish();
}
