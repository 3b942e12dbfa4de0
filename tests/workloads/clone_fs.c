/*
 * A child created with clone(CLONE_FS): it shares cwd, root and umask with its parent. After
 * restore they still share them: the child changes directory and umask and the parent sees
 * both, then the parent changes them and the child sees that.
 */
#include "protocol.c"
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static mode_t get_umask(void)
{
	mode_t m = umask(0);
	umask(m);
	return m;
}

static int cwd_is(const char *tail)
{
	char cwd[PATH_MAX], want[PATH_MAX + 32];
	snprintf(want, sizeof(want), "%s/%s", wl_base, tail);
	return getcwd(cwd, sizeof(cwd)) && !strcmp(cwd, want);
}

int main(void)
{
	wl_init();
	int up[2], down[2];
	if (mkdir("sub", 0755) || mkdir("sub/sub2", 0755) || pipe(up) || pipe(down))
		wl_die("setup");
	pid_t kid = syscall(SYS_clone, CLONE_FS | SIGCHLD, 0, 0, 0, 0);
	if (kid < 0)
		wl_die("clone");
	if (kid == 0) {
		close(up[0]);
		close(down[1]);
		wl_wait_check(NULL);
		int bad = 0;
		if (chdir("sub"))
			bad |= 1;
		umask(027);
		char c;
		if (write(up[1], "x", 1) != 1 || read(down[0], &c, 1) != 1)
			bad |= 2;
		if (!cwd_is("sub/sub2"))
			bad |= 4;
		if (get_umask() != 077)
			bad |= 8;
		_exit(bad);
	}
	close(up[1]);
	close(down[0]);
	wl_ready();
	wl_wait_check(NULL);
	char c;
	if (read(up[0], &c, 1) != 1)
		wl_fail("no word from the child");
	if (!cwd_is("sub"))
		wl_fail("the child's chdir is not seen: the fs info is no longer shared");
	if (get_umask() != 027)
		wl_fail("the child's umask is not seen (%o)", get_umask());
	if (chdir("sub2"))
		wl_fail("chdir sub2");
	umask(077);
	if (write(down[1], "y", 1) != 1)
		wl_fail("telling the child");
	int st = 0;
	if (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st))
		wl_fail("the child's checks failed (status %#x)", st);
	return wl_finish();
}
