/*
 * xshare: a parent and a child sharing one open file description (one offset) and a pipe
 * whose read end is in the parent and write end in the child, with unread data in it at dump
 * time. After restore: the child advances the shared offset and the parent sees it; the parent
 * reads the data written before the dump, then what the child writes after restore.
 */
#include "protocol.c"
#include <sys/wait.h>

int main(void)
{
	wl_init();
	int fd = open("shared.txt", O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		wl_die("open");
	for (int i = 0; i < 100; i++)
		if (write(fd, "0123456789", 10) != 10)
			wl_die("write");
	lseek(fd, 100, SEEK_SET);
	int p[2];
	if (pipe(p))
		wl_die("pipe");
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		close(p[0]);
		if (write(p[1], "before-dump;", 12) != 12)
			wl_die("write pipe");
		wl_wait_check(NULL);
		char buf[10];
		if (read(fd, buf, 10) != 10) /* advances the shared offset by 10 */
			_exit(3);
		if (write(p[1], "after-restore", 13) != 13)
			_exit(4);
		_exit(0);
	}
	close(p[1]);
	/* Let the child write its data before we are ready. */
	usleep(100000);
	wl_ready();
	wl_wait_check(NULL);
	char buf[64] = "";
	size_t got = 0;
	while (got < 25) {
		ssize_t n = read(p[0], buf + got, sizeof(buf) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	buf[got] = 0;
	if (strcmp(buf, "before-dump;after-restore"))
		wl_fail("pipe gave '%s'", buf);
	int status;
	waitpid(child, &status, 0);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		wl_fail("child status %#x", status);
	off_t pos = lseek(fd, 0, SEEK_CUR);
	if (pos != 110)
		wl_fail("shared offset is %ld, expected 110 after the child read 10 bytes", (long)pos);
	return wl_finish();
}
