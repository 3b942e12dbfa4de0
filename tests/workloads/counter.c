/*
 * counter: prints "pid P count N" every 0.5 s on stdout (the demo and the "tiny" benchmark).
 * Follows the protocol: on `check` it reports PASS if its pid did not change.
 */
#include "protocol.c"

int main(void)
{
	unsigned long count = 0;
	double next = 0;

	wl_init();
	pid_t pid = getpid();
	setvbuf(stdout, NULL, _IOLBF, 0);
	wl_ready();
	while (!wl_check_requested()) {
		double now = wl_now(CLOCK_MONOTONIC);
		if (now >= next) {
			printf("pid %d count %lu\n", (int)getpid(), count++);
			next = now + 0.5;
		}
		usleep(10000);
	}
	if (getpid() != pid)
		wl_fail("pid is %d, was %d", (int)getpid(), (int)pid);
	return wl_finish();
}
