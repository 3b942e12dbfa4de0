/*
 * fd_event: eventfd, timerfd, signalfd and epoll.
 *
 *   ev   eventfd, count 7, O_NONBLOCK
 *   sem  eventfd with EFD_SEMAPHORE, count 3
 *   t1   CLOCK_MONOTONIC one-shot timerfd, 1 s ahead
 *   t2   CLOCK_MONOTONIC periodic timerfd, every 20 ms
 *   t3   CLOCK_REALTIME absolute timerfd (TFD_TIMER_ABSTIME) one hour ahead
 *   t4   CLOCK_MONOTONIC one-shot that fired and was not read (one unread expiration)
 *   t5   CLOCK_BOOTTIME timerfd never armed
 *   sfd  signalfd for SIGUSR1 and SIGRTMIN+1 (both blocked)
 *   ep   epoll watching ev (EPOLLIN, data 0x1111), a pipe's read end (EPOLLIN|EPOLLET, data
 *        0x2222) and t2 (EPOLLIN, data 0xdeadbeefcafef00d)
 *
 * After restore: the counts (and semaphore decrements by one), t1 still ahead and then
 * firing, t2 firing again and again, t3 due at the same wall-clock instant, t4's expiration
 * readable at once, t5 disarmed, the signalfd receiving both signals, the epoll reporting
 * each watched fd with its data when it is ready.
 */
#include "protocol.c"
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

static double ts_d(struct timespec t) { return t.tv_sec + t.tv_nsec / 1e9; }

static uint64_t read_u64(const char *name, int fd, int timeout_ms)
{
	struct pollfd p = {fd, POLLIN, 0};
	uint64_t v = 0;
	if (poll(&p, 1, timeout_ms) != 1) {
		wl_fail("%s: not readable within %d ms", name, timeout_ms);
		return 0;
	}
	if (read(fd, &v, 8) != 8)
		wl_fail("%s: read: %s", name, strerror(errno));
	return v;
}

int main(void)
{
	wl_init();
	int ev = eventfd(7, EFD_NONBLOCK);
	int sem = eventfd(3, EFD_SEMAPHORE);
	int t1 = timerfd_create(CLOCK_MONOTONIC, 0);
	int t2 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int t3 = timerfd_create(CLOCK_REALTIME, 0);
	int t4 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	int t5 = timerfd_create(CLOCK_BOOTTIME, 0);
	if (ev < 0 || sem < 0 || t1 < 0 || t2 < 0 || t3 < 0 || t4 < 0 || t5 < 0)
		wl_die("create");
	struct itimerspec one = {{0, 0}, {1, 0}};
	struct itimerspec per = {{0, 20000000}, {0, 20000000}};
	struct itimerspec quick = {{0, 0}, {0, 1000000}};
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	double t3_due = now.tv_sec + 3600.0 + now.tv_nsec / 1e9;
	struct itimerspec abs = {{0, 0}, {now.tv_sec + 3600, now.tv_nsec}};
	if (timerfd_settime(t1, 0, &one, NULL) || timerfd_settime(t2, 0, &per, NULL) ||
	    timerfd_settime(t3, TFD_TIMER_ABSTIME, &abs, NULL) ||
	    timerfd_settime(t4, 0, &quick, NULL))
		wl_die("timerfd_settime");
	usleep(20000);

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGRTMIN + 1);
	sigprocmask(SIG_BLOCK, &set, NULL);
	int sfd = signalfd(-1, &set, SFD_NONBLOCK);

	int p[2];
	if (sfd < 0 || pipe(p))
		wl_die("signalfd/pipe");
	int ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event e1 = {EPOLLIN, {.u64 = 0x1111}};
	struct epoll_event e2 = {EPOLLIN | EPOLLET, {.u64 = 0x2222}};
	struct epoll_event e3 = {EPOLLIN, {.u64 = 0xdeadbeefcafef00dULL}};
	if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e1) ||
	    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &e2) || epoll_ctl(ep, EPOLL_CTL_ADD, t2, &e3))
		wl_die("epoll");

	wl_ready();
	wl_wait_check(NULL);

	/* epoll first, before anything is read: ev and t2 are ready, the pipe is not. */
	struct epoll_event out[8];
	int n = epoll_wait(ep, out, 8, 1000);
	int saw_ev = 0, saw_t2 = 0;
	for (int i = 0; i < n; i++) {
		if (out[i].data.u64 == 0x1111)
			saw_ev = 1;
		else if (out[i].data.u64 == 0xdeadbeefcafef00dULL)
			saw_t2 = 1;
		else
			wl_fail("epoll: unexpected data %llx", (unsigned long long)out[i].data.u64);
	}
	if (!saw_ev || !saw_t2)
		wl_fail("epoll: eventfd %s, timerfd %s", saw_ev ? "seen" : "missing",
			saw_t2 ? "seen" : "missing");
	if (write(p[1], "x", 1) != 1)
		wl_fail("write pipe");
	n = epoll_wait(ep, out, 8, 1000);
	int saw_pipe = 0;
	for (int i = 0; i < n; i++)
		saw_pipe |= out[i].data.u64 == 0x2222;
	if (!saw_pipe)
		wl_fail("epoll: the pipe's data never reported");

	uint64_t v;
	if (read(ev, &v, 8) != 8 || v != 7)
		wl_fail("eventfd count %llu, want 7", (unsigned long long)v);
	if (read(ev, &v, 8) != -1 || errno != EAGAIN)
		wl_fail("eventfd not O_NONBLOCK or not empty");
	for (int i = 0; i < 3; i++)
		if (read(sem, &v, 8) != 8 || v != 1)
			wl_fail("semaphore read %d gave %llu", i, (unsigned long long)v);
	fcntl(sem, F_SETFL, O_NONBLOCK);
	if (read(sem, &v, 8) != -1)
		wl_fail("semaphore had more than 3");

	struct itimerspec cur;
	double left_t1 = 0;
	if (timerfd_gettime(t1, &cur) == 0)
		left_t1 = ts_d(cur.it_value);
	if (left_t1 <= 0 || left_t1 > 1.0)
		wl_fail("t1: %.3f s left, want (0, 1]", left_t1);
	if (read_u64("t1", t1, 5000) != 1)
		wl_fail("t1 did not fire once");
	for (int i = 0; i < 3; i++)
		if (read_u64("t2", t2, 1000) < 1)
			wl_fail("t2 stopped firing");
	if (timerfd_gettime(t3, &cur) == 0) {
		double left = ts_d(cur.it_value);
		double want = t3_due - wl_now(CLOCK_REALTIME);
		if (left < want - 0.5 || left > want + 0.5)
			wl_fail("t3: %.3f s left, want %.3f", left, want);
	} else
		wl_fail("t3 gettime");
	if (read(t4, &v, 8) != 8 || v != 1)
		wl_fail("t4: unread expiration lost");
	if (timerfd_gettime(t5, &cur) || cur.it_value.tv_sec || cur.it_value.tv_nsec ||
	    cur.it_interval.tv_sec || cur.it_interval.tv_nsec)
		wl_fail("t5 is armed");

	struct signalfd_siginfo si;
	if (read(sfd, &si, sizeof(si)) != -1)
		wl_fail("signalfd had a signal before any was sent");
	kill(getpid(), SIGUSR1);
	kill(getpid(), SIGRTMIN + 1);
	if (read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR1)
		wl_fail("signalfd did not deliver SIGUSR1");
	if (read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != (unsigned)SIGRTMIN + 1)
		wl_fail("signalfd did not deliver SIGRTMIN+1");
	return wl_finish();
}
