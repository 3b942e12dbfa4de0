/*
 * fd_dup: fds sharing one open file description. "shared" is opened once and duplicated
 * with dup(), dup2() (onto 10) and F_DUPFD_CLOEXEC (onto 20 or above); "out" is put on both
 * stdout and stderr (as a shell's 2>&1 does); "shared" is also opened a second time, which is
 * a separate description with its own offset.
 *
 * After restore the duplicates still share one offset and one set of status flags (a write
 * or fcntl through one is seen through all), only the F_DUPFD_CLOEXEC copy is close-on-exec,
 * and the separate open has its own offset.
 */
#include "protocol.c"

static off_t pos(int fd) { return lseek(fd, 0, SEEK_CUR); }

int main(void)
{
	wl_init();
	int a = open("shared", O_RDWR | O_CREAT | O_TRUNC, 0644);
	int out = open("out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (a < 0 || out < 0)
		wl_die("open");
	int b = dup(a);
	if (b < 0 || dup2(a, 10) != 10)
		wl_die("dup");
	int c = fcntl(a, F_DUPFD_CLOEXEC, 20);
	int sep = open("shared", O_RDWR);
	if (c < 0 || sep < 0 || dup2(out, 1) != 1 || dup2(out, 2) != 2)
		wl_die("dup2");
	close(out);
	if (write(a, "abc", 3) != 3 || write(1, "12", 2) != 2)
		wl_die("write");
	lseek(sep, 1, SEEK_SET);

	wl_ready();
	wl_wait_check(NULL);

	int fds[] = {a, b, 10, c};
	for (int i = 0; i < 4; i++) {
		if (pos(fds[i]) != 3)
			wl_fail("fd %d: offset %lld, want 3", fds[i], (long long)pos(fds[i]));
		int cl = fcntl(fds[i], F_GETFD) & FD_CLOEXEC;
		if (!!cl != (fds[i] == c))
			wl_fail("fd %d: close-on-exec %d", fds[i], !!cl);
	}
	if (write(b, "de", 2) != 2)
		wl_fail("write through the dup");
	for (int i = 0; i < 4; i++)
		if (pos(fds[i]) != 5)
			wl_fail("after a write through fd %d, fd %d is at %lld, want 5", b, fds[i],
				(long long)pos(fds[i]));
	if (fcntl(c, F_SETFL, O_NONBLOCK) || !(fcntl(a, F_GETFL) & O_NONBLOCK))
		wl_fail("status flags set through fd %d not seen through fd %d", c, a);
	if (pos(sep) != 1)
		wl_fail("the separate open is at %lld, want 1", (long long)pos(sep));
	if (write(2, "34", 2) != 2 || pos(1) != 4)
		wl_fail("stdout and stderr do not share an offset (stdout at %lld)",
			(long long)pos(1));
	char buf[8] = {0};
	if (pread(sep, buf, 5, 0) != 5 || memcmp(buf, "abcde", 5))
		wl_fail("shared reads %.5s", buf);
	return wl_finish();
}
