/*
 * threads: 8 pthreads working under one mutex and condition variable. Each thread keeps its
 * TID, a __thread value and its own signal mask. After restore each thread checks its TID,
 * TLS value and mask, all of them must still make progress, and pthread_join must work (the
 * kernel's clear-tid wake-up).
 */
#include "protocol.c"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#define NTHREADS 8

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t progress = PTHREAD_COND_INITIALIZER;
static unsigned long counts[NTHREADS];
static pid_t tids[NTHREADS];
static volatile int checking, stop;
static char verdict[NTHREADS][128];
static __thread int tls_value;

static void *worker(void *arg)
{
	int i = (int)(long)arg;
	tids[i] = (pid_t)syscall(SYS_gettid);
	tls_value = 1000 + i;
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGRTMIN + i);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	int checked = 0;
	while (!stop) {
		pthread_mutex_lock(&lock);
		counts[i]++;
		pthread_cond_broadcast(&progress);
		pthread_mutex_unlock(&lock);
		if (checking && !checked) {
			sigset_t now;
			pthread_sigmask(SIG_SETMASK, NULL, &now);
			pid_t tid = (pid_t)syscall(SYS_gettid);
			if (tid != tids[i])
				snprintf(verdict[i], sizeof(verdict[i]), "thread %d: tid %d, was %d", i, tid, tids[i]);
			else if (tls_value != 1000 + i)
				snprintf(verdict[i], sizeof(verdict[i]), "thread %d: tls %d", i, tls_value);
			else if (!sigismember(&now, SIGRTMIN + i) || sigismember(&now, SIGRTMIN + (i + 1) % NTHREADS))
				snprintf(verdict[i], sizeof(verdict[i]), "thread %d: signal mask changed", i);
			else
				snprintf(verdict[i], sizeof(verdict[i]), "ok");
			checked = 1;
		}
		usleep(2000);
	}
	return NULL;
}

int main(void)
{
	wl_init();
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		if (pthread_create(&th[i], NULL, worker, (void *)(long)i))
			wl_die("pthread_create");
	/* Wait until every thread has run. */
	for (;;) {
		int all = 1;
		pthread_mutex_lock(&lock);
		for (int i = 0; i < NTHREADS; i++)
			all &= counts[i] > 0;
		pthread_mutex_unlock(&lock);
		if (all)
			break;
		usleep(1000);
	}
	pid_t pid = getpid();
	wl_ready();
	while (!wl_check_requested()) {
		/* The main thread waits on the condition variable too. */
		pthread_mutex_lock(&lock);
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 5000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&progress, &lock, &until);
		pthread_mutex_unlock(&lock);
	}
	unsigned long before[NTHREADS];
	pthread_mutex_lock(&lock);
	memcpy(before, counts, sizeof(before));
	pthread_mutex_unlock(&lock);
	checking = 1;
	usleep(300000);
	stop = 1;
	for (int i = 0; i < NTHREADS; i++)
		if (pthread_join(th[i], NULL))
			wl_fail("pthread_join %d failed", i);
	for (int i = 0; i < NTHREADS; i++) {
		if (counts[i] <= before[i])
			wl_fail("thread %d made no progress", i);
		if (strcmp(verdict[i], "ok"))
			wl_fail("%s", verdict[i][0] ? verdict[i] : "a thread did not check itself");
	}
	if (getpid() != pid)
		wl_fail("pid %d, was %d", (int)getpid(), (int)pid);
	return wl_finish();
}
