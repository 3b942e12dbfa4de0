/*
 * fifo_read: blocked in read(2) on a FIFO it created in its directory (opened O_RDWR, so it
 * never sees EOF). Expects the line "cryo-data\n", written by the test (after restore when
 * dumped), then waits for `check`.
 */
#include "protocol.c"

#define EXPECTED "cryo-data\n"

int main(void)
{
	char buf[64];
	ssize_t n;

	wl_init();
	if (mkfifo("fifo", 0600))
		wl_die("mkfifo");
	int fd = open("fifo", O_RDWR);
	if (fd < 0)
		wl_die("open fifo");
	pid_t pid = getpid();
	wl_ready();
	do
		n = read(fd, buf, sizeof(buf) - 1);
	while (n < 0 && errno == EINTR);
	int err = errno;

	wl_wait_check(NULL);
	if (n < 0)
		wl_fail("read fifo: %s", strerror(err));
	else if (n != (ssize_t)strlen(EXPECTED) || memcmp(buf, EXPECTED, n))
		wl_fail("read %zd bytes from the fifo, not the expected line", n);
	if (getpid() != pid)
		wl_fail("pid is %d, was %d", (int)getpid(), (int)pid);
	return wl_finish();
}
