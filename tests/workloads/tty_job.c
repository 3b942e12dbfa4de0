/*
 * A shell job: started as a session leader on a terminal (stdin, stdout and stderr), dumped
 * with --shell-job and restored by a cryo running on another terminal. After restore its
 * stdin and stdout are a terminal (cryo's), termios can be read there, and what it writes
 * there ("job-alive") reaches that terminal's master.
 */
#include "protocol.c"
#include <termios.h>

int main(void)
{
	wl_init();
	if (!isatty(0) || !isatty(1))
		wl_die("not started on a terminal");
	wl_ready();
	wl_wait_check(NULL);
	struct termios t;
	if (!isatty(0) || !isatty(1) || !isatty(2))
		wl_fail("stdio is no longer a terminal");
	if (tcgetattr(0, &t))
		wl_fail("tcgetattr: %s", strerror(errno));
	if (write(1, "job-alive\n", 10) != 10)
		wl_fail("writing to the terminal: %s", strerror(errno));
	return wl_finish();
}
