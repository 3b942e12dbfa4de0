/*
 * fd_refused MODE: holds one fd of a kind cryo refuses to dump, and writes its number to the
 * file `fdnum`. Modes: "pidfd" (a pidfd of itself), "inet" (a TCP listener with a
 * connection waiting to be accepted), "halfpipe" (the
 * read end of a pipe whose write end was closed, with data in it), "flock" (a file with an
 * flock lock held), "inotify-queued" (an inotify instance with an unread event), "ptmx" (a
 * pseudo-terminal pair with data written to the master and not read yet), "unix-peer PATH" (a stream socket connected to PATH, a listener
 * outside the process).
 *
 * The check (after the dump was refused) sees the fd still working as before: the dump must
 * have left it alone.
 */
#include "protocol.c"
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <netinet/in.h>

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "";
	int fd = -1, p[2];
	wl_init();
	if (!strcmp(mode, "pidfd")) {
		fd = syscall(SYS_pidfd_open, getpid(), 0);
	} else if (!strcmp(mode, "inet")) {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t al = sizeof(a);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		int c = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || c < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 4) ||
		    getsockname(fd, (struct sockaddr *)&a, &al) ||
		    connect(c, (struct sockaddr *)&a, sizeof(a)))
			wl_die("inet");
	} else if (!strcmp(mode, "halfpipe")) {
		if (pipe(p) || write(p[1], "left", 4) != 4)
			wl_die("pipe");
		close(p[1]);
		fd = p[0];
	} else if (!strcmp(mode, "flock")) {
		fd = open("locked", O_RDWR | O_CREAT, 0644);
		if (fd >= 0 && flock(fd, LOCK_EX))
			wl_die("flock");
	} else if (!strcmp(mode, "inotify-queued")) {
		fd = inotify_init1(IN_NONBLOCK);
		if (fd >= 0 && inotify_add_watch(fd, ".", IN_CREATE) < 0)
			wl_die("inotify_add_watch");
		int t = open("new-file", O_WRONLY | O_CREAT, 0644);
		close(t);
	} else if (!strcmp(mode, "ptmx")) {
		fd = open("/dev/ptmx", O_RDWR | O_NOCTTY);
		char name[64];
		if (fd < 0 || grantpt(fd) || unlockpt(fd) || ptsname_r(fd, name, sizeof(name)) ||
		    open(name, O_RDWR | O_NOCTTY) < 0 || write(fd, "queued\n", 7) != 7)
			wl_die("ptmx");
	} else if (!strcmp(mode, "unix-peer") && argc > 2) {
		struct sockaddr_un a = {.sun_family = AF_UNIX};
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[2]);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)))
			wl_die("connect");
	} else {
		fprintf(stderr, "unknown mode %s\n", mode);
		return 2;
	}
	if (fd < 0)
		wl_die(mode);
	char num[16];
	snprintf(num, sizeof(num), "%d\n", fd);
	wl_write_file("fdnum", num);

	wl_ready();
	wl_wait_check(NULL);

	if (fcntl(fd, F_GETFD) < 0)
		wl_fail("fd %d is gone", fd);
	if (!strcmp(mode, "halfpipe")) {
		char buf[8];
		if (read(fd, buf, sizeof(buf)) != 4 || memcmp(buf, "left", 4))
			wl_fail("the pipe lost its data");
	} else if (!strcmp(mode, "inotify-queued")) {
		char buf[4096];
		if (read(fd, buf, sizeof(buf)) <= 0)
			wl_fail("the inotify event was consumed");
	} else if (!strcmp(mode, "flock")) {
		int other = open("locked", O_RDWR);
		if (other < 0 || flock(other, LOCK_EX | LOCK_NB) == 0)
			wl_fail("the lock is no longer held");
	}
	return wl_finish();
}
