/*
 * fd_locks: file locks, dumped with --file-locks.
 *
 *   fa  "a" with an exclusive flock
 *   fs  "s" with a shared flock
 *   fb  "b" with POSIX locks: write on bytes 10-19, read from 100 to the end; "b" is also
 *       mapped shared (restore maps it by opening and closing it in the process, which drops
 *       the process's POSIX locks on it unless they are taken again afterwards)
 *   fc  "c" with an open file description (OFD) write lock on bytes 0-4
 *
 * After restore the locks are held again: another description of "a" cannot take any flock,
 * one of "s" can share but not take it exclusively, another description of "c" sees the OFD
 * lock, and a child process sees this process's POSIX locks on "b" and cannot take them.
 */
#include "protocol.c"
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/wait.h>

static int setlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	return fcntl(fd, cmd, &l);
}

static struct flock getlk(int fd, int cmd, short type, off_t start, off_t len)
{
	struct flock l = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
	if (fcntl(fd, cmd, &l))
		l.l_type = -1;
	return l;
}

int main(void)
{
	wl_init();
	int fa = open("a", O_RDWR | O_CREAT, 0644);
	int fs = open("s", O_RDWR | O_CREAT, 0644);
	int fb = open("b", O_RDWR | O_CREAT, 0644);
	int fc = open("c", O_RDWR | O_CREAT, 0644);
	if (fa < 0 || fs < 0 || fb < 0 || fc < 0)
		wl_die("open");
	if (flock(fa, LOCK_EX) || flock(fs, LOCK_SH))
		wl_die("flock");
	if (setlk(fb, F_SETLK, F_WRLCK, 10, 10) || setlk(fb, F_SETLK, F_RDLCK, 100, 0))
		wl_die("posix lock");
	if (setlk(fc, F_OFD_SETLK, F_WRLCK, 0, 5))
		wl_die("ofd lock");
	if (ftruncate(fb, 4096))
		wl_die("ftruncate");
	char *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fb, 0);
	if (map == MAP_FAILED)
		wl_die("mmap");
	strcpy(map + 1000, "mapped and locked");
	pid_t me = getpid();

	wl_ready();
	wl_wait_check(NULL);

	int a2 = open("a", O_RDWR), s2 = open("s", O_RDWR), c2 = open("c", O_RDWR);
	if (a2 < 0 || s2 < 0 || c2 < 0)
		wl_fail("reopen");
	if (flock(a2, LOCK_SH | LOCK_NB) == 0 || errno != EWOULDBLOCK)
		wl_fail("a: the exclusive flock is not held");
	if (flock(s2, LOCK_EX | LOCK_NB) == 0)
		wl_fail("s: could lock exclusively over the shared flock");
	if (flock(s2, LOCK_SH | LOCK_NB))
		wl_fail("s: could not share the shared flock");
	struct flock l = getlk(c2, F_OFD_GETLK, F_WRLCK, 0, 5);
	if (l.l_type != F_WRLCK || l.l_start != 0 || l.l_len != 5)
		wl_fail("c: the OFD lock is not held (type %d)", l.l_type);

	if (strcmp(map + 1000, "mapped and locked"))
		wl_fail("b: the shared mapping lost its contents");
	strcpy(map + 2000, "still writable");

	pid_t child = fork();
	if (child == 0) {
		int b = open("b", O_RDWR);
		struct flock w = getlk(b, F_GETLK, F_WRLCK, 10, 10);
		struct flock r = getlk(b, F_GETLK, F_WRLCK, 200, 1);
		int bad = 0;
		if (w.l_type != F_WRLCK || w.l_pid != me || w.l_start != 10 || w.l_len != 10)
			bad |= 1;
		if (r.l_type != F_RDLCK || r.l_pid != me)
			bad |= 2;
		if (setlk(b, F_SETLK, F_WRLCK, 15, 1) == 0)
			bad |= 4;
		if (setlk(b, F_SETLK, F_RDLCK, 150, 10))
			bad |= 8;
		_exit(bad);
	}
	int st = 0;
	if (child < 0 || waitpid(child, &st, 0) != child || !WIFEXITED(st))
		wl_fail("the checking child failed");
	else if (WEXITSTATUS(st))
		wl_fail("b: the POSIX locks are not as they were (child code %d)", WEXITSTATUS(st));
	return wl_finish();
}
