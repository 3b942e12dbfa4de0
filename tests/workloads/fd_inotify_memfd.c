/*
 * fd_inotify_memfd: an inotify instance and memfds.
 *
 *   in   inotify (O_NONBLOCK) with watches on "w1" (wd 1, removed again), "w2" (wd 2,
 *        IN_MODIFY), the directory "d" (wd 3, IN_CREATE|IN_DELETE) and "w3" (wd 4, IN_ATTRIB|IN_ONESHOT)
 *   m1   memfd "cryo test" with MFD_ALLOW_SEALING: 50000 bytes, offset 123, sealed against
 *        shrinking and growing
 *   m2   memfd "plain" without sealing (so sealed with F_SEAL_SEAL), 3 bytes, and a second
 *        read-only description of it opened through /proc/self/fd
 *
 * After restore: the watches have their descriptors (adding one again returns the old one)
 * and deliver events (a file created in "d", a write to "w2", a chmod of "w3"); the memfds have their names,
 * contents, offsets and seals, and both descriptions of m2 show the same file.
 */
#include "protocol.c"
#include <poll.h>
#include <sys/inotify.h>
#include <sys/mman.h>

static unsigned char pat(long i) { return (unsigned char)(i * 5 + 3); }

static int wait_event(int in, int wd, unsigned mask, const char *name)
{
	char buf[4096] __attribute__((aligned(8)));
	struct pollfd p = {in, POLLIN, 0};
	for (int tries = 0; tries < 50; tries++) {
		if (poll(&p, 1, 100) != 1)
			continue;
		ssize_t n = read(in, buf, sizeof(buf));
		for (ssize_t off = 0; off < n;) {
			struct inotify_event *e = (void *)(buf + off);
			if (e->wd == wd && (e->mask & mask) &&
			    (!name || (e->len && !strcmp(e->name, name))))
				return 1;
			off += sizeof(*e) + e->len;
		}
	}
	return 0;
}

static void expect_link(int fd, const char *want)
{
	char path[64], got[256];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(path, got, sizeof(got) - 1);
	got[n > 0 ? n : 0] = 0;
	if (strcmp(got, want))
		wl_fail("fd %d is %s, want %s", fd, got, want);
}

int main(void)
{
	static unsigned char data[50000];
	wl_init();
	for (const char *f = "w1"; f; f = !strcmp(f, "w1") ? "w2" : !strcmp(f, "w2") ? "w3" : NULL) {
		int t = open(f, O_WRONLY | O_CREAT, 0644);
		if (t < 0)
			wl_die("create watched file");
		close(t);
	}
	if (mkdir("d", 0755))
		wl_die("mkdir");
	int in = inotify_init1(IN_NONBLOCK);
	int w1 = inotify_add_watch(in, "w1", IN_MODIFY);
	int w2 = inotify_add_watch(in, "w2", IN_MODIFY);
	int w3 = inotify_add_watch(in, "d", IN_CREATE | IN_DELETE);
	int w4 = inotify_add_watch(in, "w3", IN_ATTRIB | IN_ONESHOT);
	if (in < 0 || w1 != 1 || w2 != 2 || w3 != 3 || w4 != 4 || inotify_rm_watch(in, w1))
		wl_die("inotify");
	char drop[4096];
	while (read(in, drop, sizeof(drop)) > 0)
		;

	int m1 = memfd_create("cryo test", MFD_ALLOW_SEALING);
	int m2 = memfd_create("plain", 0);
	for (long i = 0; i < 50000; i++)
		data[i] = pat(i);
	if (m1 < 0 || m2 < 0 || write(m1, data, 50000) != 50000 || write(m2, "abc", 3) != 3)
		wl_die("memfd");
	lseek(m1, 123, SEEK_SET);
	if (fcntl(m1, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW))
		wl_die("seals");
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", m2);
	int m2r = open(path, O_RDONLY);
	if (m2r < 0)
		wl_die("reopen memfd");

	wl_ready();
	wl_wait_check(NULL);

	if (inotify_add_watch(in, "w2", IN_MODIFY | IN_MASK_ADD) != 2)
		wl_fail("w2 no longer has wd 2");
	if (inotify_add_watch(in, "d", IN_CREATE | IN_MASK_ADD) != 3)
		wl_fail("d no longer has wd 3");
	int t = open("d/created-after-restore", O_WRONLY | O_CREAT, 0644);
	close(t);
	if (!wait_event(in, 3, IN_CREATE, "created-after-restore"))
		wl_fail("no IN_CREATE event for the new file");
	t = open("w2", O_WRONLY);
	if (t < 0 || write(t, "x", 1) != 1)
		wl_fail("write w2");
	close(t);
	if (!wait_event(in, 2, IN_MODIFY, NULL))
		wl_fail("no IN_MODIFY event for w2");
	if (chmod("w3", 0600) || !wait_event(in, 4, IN_ATTRIB, NULL))
		wl_fail("no IN_ATTRIB event for w3");

	expect_link(m1, "/memfd:cryo test (deleted)");
	expect_link(m2, "/memfd:plain (deleted)");
	if (lseek(m1, 0, SEEK_CUR) != 123)
		wl_fail("m1 offset %lld", (long long)lseek(m1, 0, SEEK_CUR));
	static unsigned char back[50001];
	if (pread(m1, back, sizeof(back), 0) != 50000 || memcmp(back, data, 50000))
		wl_fail("m1 contents differ");
	int s1 = fcntl(m1, F_GET_SEALS), s2 = fcntl(m2, F_GET_SEALS);
	if (s1 != (F_SEAL_SHRINK | F_SEAL_GROW))
		wl_fail("m1 seals %#x", s1);
	if (s2 != F_SEAL_SEAL)
		wl_fail("m2 seals %#x", s2);
	if (ftruncate(m1, 10) == 0 || write(m1, "z", 1) != 1)
		wl_fail("m1 seals not enforced, or writing refused");
	if ((fcntl(m2r, F_GETFL) & O_ACCMODE) != O_RDONLY)
		wl_fail("m2's second description is not read-only");
	char b[4] = {0};
	if (pwrite(m2, "Q", 1, 0) != 1 || pread(m2r, b, 3, 0) != 3 || memcmp(b, "Qbc", 3))
		wl_fail("m2's descriptions do not show one file (%.3s)", b);
	return wl_finish();
}
