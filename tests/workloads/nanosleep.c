/*
 * nanosleep: blocked in nanosleep(2) for argv[1] seconds (default 3), restarting with the
 * remaining time when interrupted. Checks that it slept at least the whole request and kept
 * its pid.
 */
#include "protocol.c"

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 3.0;
	struct timespec ts = { (time_t)secs, (long)((secs - (time_t)secs) * 1e9) };
	int interruptions = 0, ret;

	wl_init();
	pid_t pid = getpid();
	double start = wl_now(CLOCK_MONOTONIC);
	wl_ready();
	while ((ret = nanosleep(&ts, &ts)) && errno == EINTR)
		interruptions++;
	int err = errno;
	double slept = wl_now(CLOCK_MONOTONIC) - start;

	wl_wait_check(NULL);
	if (ret)
		wl_fail("nanosleep: %s", strerror(err));
	if (slept < secs)
		wl_fail("slept %.3f s of %.3f s (%d interruptions)", slept, secs, interruptions);
	if (getpid() != pid)
		wl_fail("pid is %d, was %d", (int)getpid(), (int)pid);
	return wl_finish();
}
