/*
 * itimer_pending: a periodic ITIMER_REAL whose SIGALRM is blocked and pending at dump time.
 * The kernel re-arms such a timer only when the pending SIGALRM is dequeued, so it reads as
 * disarmed (value 0) while its interval is set. After restore, unblocking SIGALRM must give
 * the pending signal and then keep ticking every interval.
 */
#include "protocol.c"
#include <signal.h>
#include <sys/time.h>

static volatile sig_atomic_t ticks;

static void on_alarm(int sig)
{
	(void)sig;
	ticks++;
}

int main(void)
{
	wl_init();
	signal(SIGALRM, on_alarm);
	sigset_t alrm;
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	sigprocmask(SIG_BLOCK, &alrm, NULL);
	struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	/* Let it fire once: SIGALRM is now pending and the timer waits for its dequeue. */
	struct timespec ts = { 0, 50000000 };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
	sigset_t pending;
	sigpending(&pending);
	if (!sigismember(&pending, SIGALRM))
		wl_die("SIGALRM is not pending before the dump");
	wl_ready();
	wl_wait_check(NULL);

	sigprocmask(SIG_UNBLOCK, &alrm, NULL);
	double end = wl_now(CLOCK_MONOTONIC) + 0.3;
	while (wl_now(CLOCK_MONOTONIC) < end) {
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
	}
	/* 0.3 s at 10 ms: about 30 ticks; one would mean only the pending signal came. */
	if (ticks < 5)
		wl_fail("ITIMER_REAL stopped: %d ticks in 0.3 s after unblocking SIGALRM", (int)ticks);
	return wl_finish();
}
