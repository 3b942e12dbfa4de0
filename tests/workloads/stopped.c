/*
 * stopped: a parent whose child is stopped (SIGSTOP) at dump time. After restore the child
 * must still be stopped; the parent then continues it with SIGCONT and the child reports.
 */
#include "protocol.c"
#include <signal.h>
#include <sys/wait.h>

static char child_state(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return '?';
	char st = '?';
	if (fgets(buf, sizeof(buf), f)) {
		char *r = strrchr(buf, ')');
		if (r)
			st = r[2];
	}
	fclose(f);
	return st;
}

int main(void)
{
	wl_init();
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_wait_check(NULL);
		wl_write_file("res.child", "PASS\n");
		_exit(0);
	}
	kill(child, SIGSTOP);
	int status;
	if (waitpid(child, &status, WUNTRACED) != child || !WIFSTOPPED(status))
		wl_die("child did not stop");
	wl_ready();
	wl_wait_check(NULL);
	char st = child_state(child);
	if (st != 'T')
		wl_fail("child state is '%c' after restore, not stopped", st);
	kill(child, SIGCONT);
	double end = wl_now(CLOCK_MONOTONIC) + 10;
	while (access("res.child", F_OK) && wl_now(CLOCK_MONOTONIC) < end)
		usleep(10000);
	if (access("res.child", F_OK))
		wl_fail("the continued child did not report");
	waitpid(child, &status, 0);
	return wl_finish();
}
