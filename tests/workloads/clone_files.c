/*
 * A child created with clone(CLONE_FILES): one fd table for both processes. Before the dump
 * each opens a file the other can use. After restore the table is still one: the child opens
 * a file and the parent finds it at the number the child reports; the parent closes an fd and
 * the child finds it closed.
 */
#include "protocol.c"
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int names(int fd, const char *tail)
{
	char link[64], target[PATH_MAX] = { 0 };
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, target, sizeof(target) - 1);
	size_t t = strlen(tail);
	return n >= (ssize_t)t && !strcmp(target + n - t, tail);
}

int main(void)
{
	wl_init();
	int up[2], down[2];
	if (pipe(up) || pipe(down))
		wl_die("pipe");
	int fa = open("a", O_RDWR | O_CREAT, 0644);
	if (fa < 0)
		wl_die("open a");
	pid_t kid = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
	if (kid < 0)
		wl_die("clone");
	if (kid == 0) {
		int fb = open("b", O_RDWR | O_CREAT, 0644);
		if (fb < 0 || write(up[1], &fb, sizeof(fb)) != sizeof(fb))
			_exit(20);
		wl_wait_check(NULL);
		int bad = 0;
		int fc = open("c", O_RDWR | O_CREAT, 0644);
		if (fc < 0 || write(up[1], &fc, sizeof(fc)) != sizeof(fc))
			bad |= 1;
		char x;
		if (read(down[0], &x, 1) != 1)
			bad |= 2;
		if (fcntl(fa, F_GETFD) != -1 || errno != EBADF)
			bad |= 4; /* the parent closed it */
		_exit(bad);
	}
	int fb;
	if (read(up[0], &fb, sizeof(fb)) != sizeof(fb))
		wl_die("read fb");
	if (!names(fb, "/b"))
		wl_die("the child's fd is not in our table");
	wl_ready();
	wl_wait_check(NULL);
	if (!names(fb, "/b"))
		wl_fail("the child's fd %d is gone", fb);
	int fc;
	if (read(up[0], &fc, sizeof(fc)) != sizeof(fc))
		wl_fail("no fd number from the child");
	else if (!names(fc, "/c"))
		wl_fail("fd %d the child opened after restore is not in our table", fc);
	close(fa);
	if (write(down[1], "x", 1) != 1)
		wl_fail("telling the child");
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st))
		wl_fail("the child's checks failed (status %#x)", st);
	return wl_finish();
}
