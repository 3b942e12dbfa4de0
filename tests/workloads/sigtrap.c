/*
 * sigtrap: SIGTRAP's state must come through a dump and a restore unchanged. cryo makes some
 * of its remote calls with a single step, which ends in a SIGTRAP the kernel forces on the
 * task, so each mode sets up a state that step could disturb:
 *
 *   pending  SIGTRAP at its default action, blocked in both threads, with three signals
 *            queued with sigqueue values: 42 for the main thread, 43 for the process, 44 for
 *            the second thread. After the check starts, each thread unblocks it with a
 *            handler installed and must receive exactly its own values, with SI_QUEUE.
 *   handler  An SA_SIGINFO handler with a mask: it must still be installed, and run on
 *            raise(SIGTRAP).
 *   ignored  SIG_IGN: it must still be ignored.
 */
#include "protocol.c"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

static volatile sig_atomic_t got_n;
static int got_value[8];
static int got_code[8];
static pid_t got_tid[8];
static volatile int thread_queued, thread_go, thread_done;
static pid_t main_tid, second_tid;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	int n = got_n;
	if (n < 8) {
		got_value[n] = si->si_value.sival_int;
		got_code[n] = si->si_code;
		got_tid[n] = (pid_t)syscall(SYS_gettid);
		got_n = n + 1;
	}
}

static void install(int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO | flags;
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGUSR2);
	if (sigaction(SIGTRAP, &sa, NULL))
		wl_die("sigaction(SIGTRAP)");
}

static void trap_mask(int how)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGTRAP);
	pthread_sigmask(how, &s, NULL);
}

static void *second(void *arg)
{
	(void)arg;
	second_tid = (pid_t)syscall(SYS_gettid);
	union sigval v = { .sival_int = 44 };
	if (pthread_sigqueue(pthread_self(), SIGTRAP, v))
		wl_die("pthread_sigqueue in the second thread");
	thread_queued = 1;
	while (!thread_go) {
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
	}
	trap_mask(SIG_UNBLOCK);
	thread_done = 1;
	for (;;)
		pause();
	return NULL;
}

static int has(int value, pid_t tid)
{
	for (int i = 0; i < got_n; i++)
		if (got_value[i] == value && got_tid[i] == tid && got_code[i] == SI_QUEUE)
			return 1;
	return 0;
}

static void check_pending(void)
{
	struct sigaction old;
	sigaction(SIGTRAP, NULL, &old);
	if (old.sa_handler != SIG_DFL)
		wl_fail("SIGTRAP's action is no longer the default");
	sigset_t pending;
	sigpending(&pending);
	if (!sigismember(&pending, SIGTRAP))
		wl_fail("no SIGTRAP pending any more");
	install(0);
	trap_mask(SIG_UNBLOCK);
	thread_go = 1;
	double end = wl_now(CLOCK_MONOTONIC) + 5;
	while ((!thread_done || got_n < 3) && wl_now(CLOCK_MONOTONIC) < end) {
		struct timespec ms = { 0, 1000000 };
		nanosleep(&ms, NULL);
	}
	if (got_n != 3) {
		char why[256];
		int len = snprintf(why, sizeof(why), "%d SIGTRAPs received, not 3:", (int)got_n);
		for (int i = 0; i < got_n && len < (int)sizeof(why); i++)
			len += snprintf(why + len, sizeof(why) - len, " (value %d code %d %s)",
					got_value[i], got_code[i],
					got_tid[i] == main_tid ? "main" : "second");
		wl_fail("%s", why);
	}
	if (!has(42, main_tid))
		wl_fail("the main thread's own SIGTRAP (value 42) did not reach it");
	if (!has(43, main_tid))
		wl_fail("the process's SIGTRAP (value 43) did not reach the main thread");
	if (!has(44, second_tid))
		wl_fail("the second thread's own SIGTRAP (value 44) did not reach it");
}

static void check_handler(void)
{
	struct sigaction old;
	sigaction(SIGTRAP, NULL, &old);
	if (old.sa_sigaction != on_trap || !(old.sa_flags & SA_SIGINFO))
		wl_fail("SIGTRAP's handler is gone");
	if (!sigismember(&old.sa_mask, SIGUSR2))
		wl_fail("SIGTRAP's handler lost its mask");
	raise(SIGTRAP);
	if (got_n != 1 || got_code[0] != SI_TKILL)
		wl_fail("raise(SIGTRAP) ran the handler %d times", (int)got_n);
}

int main(int argc, char **argv)
{
	wl_init();
	const char *mode = argc > 1 ? argv[1] : "pending";
	main_tid = (pid_t)syscall(SYS_gettid);
	if (!strcmp(mode, "pending")) {
		trap_mask(SIG_BLOCK);
		pthread_t t;
		if (pthread_create(&t, NULL, second, NULL))
			wl_die("pthread_create");
		union sigval v = { .sival_int = 42 };
		if (pthread_sigqueue(pthread_self(), SIGTRAP, v))
			wl_die("pthread_sigqueue");
		v.sival_int = 43;
		if (sigqueue(getpid(), SIGTRAP, v))
			wl_die("sigqueue");
		while (!thread_queued) {
			struct timespec ms = { 0, 1000000 };
			nanosleep(&ms, NULL);
		}
	} else if (!strcmp(mode, "handler")) {
		install(SA_RESTART);
	} else if (!strcmp(mode, "ignored")) {
		signal(SIGTRAP, SIG_IGN);
	} else {
		fprintf(stderr, "sigtrap: unknown mode %s\n", mode);
		return 2;
	}
	wl_ready();
	wl_wait_check(NULL);
	if (!strcmp(mode, "pending")) {
		check_pending();
	} else if (!strcmp(mode, "handler")) {
		check_handler();
	} else {
		struct sigaction old;
		sigaction(SIGTRAP, NULL, &old);
		if (old.sa_handler != SIG_IGN)
			wl_fail("SIGTRAP is no longer ignored");
	}
	return wl_finish();
}
