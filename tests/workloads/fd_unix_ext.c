/*
 * fd_unix_ext PATH: a datagram socket connected to PATH, a socket outside the process (the
 * test's), dumped with --ext-unix-sk. After restore the socket is still connected to PATH:
 * getpeername names it and a datagram sent without an address ("after restore") reaches it.
 */
#include "protocol.c"
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
	wl_init();
	if (argc < 2)
		return 2;
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[1]);
	int s = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)))
		wl_die("connect");
	if (send(s, "before", 6, 0) != 6)
		wl_die("send");

	wl_ready();
	wl_wait_check(NULL);

	struct sockaddr_un peer = {0};
	socklen_t len = sizeof(peer);
	if (getpeername(s, (struct sockaddr *)&peer, &len) || strcmp(peer.sun_path, argv[1]))
		wl_fail("connected to %s, want %s", peer.sun_path, argv[1]);
	if (send(s, "after restore", 13, 0) != 13)
		wl_fail("send after restore: %s", strerror(errno));
	return wl_finish();
}
