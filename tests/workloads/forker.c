/*
 * forker: a root and two workers that, until the check, keep forking short-lived children
 * (each exits 7 after a moment and is reaped at once) and starting and joining short-lived
 * threads, so that a dump meets processes and threads being born and dying while it freezes
 * the tree. After the check each worker verifies that every child it reaped exited 7, that
 * every thread came back, and that both kept going after the restore, and writes res.<pid>;
 * the root collects them.
 */
#include "protocol.c"
#include <pthread.h>
#include <sys/wait.h>

static volatile unsigned long spun;

static void *short_thread(void *arg)
{
	for (int i = 0; i < 2000; i++)
		spun++;
	return arg;
}

static void worker(void)
{
	unsigned long rounds = 0, before_check = 0;
	char verdict[256] = "PASS";
	for (int phase = 0; phase < 2; phase++) {
		/* Phase 0: until the check. Phase 1: 50 more rounds, after the restore. */
		unsigned long until = phase ? rounds + 50 : ~0UL;
		while (rounds < until && !(phase == 0 && wl_check_requested())) {
			pid_t p = fork();
			if (p < 0)
				wl_die("fork");
			if (p == 0) {
				usleep(200);
				_exit(7);
			}
			pthread_t t;
			void *back = NULL;
			if (pthread_create(&t, NULL, short_thread, (void *)&rounds) ||
			    pthread_join(t, &back) || back != (void *)&rounds)
				snprintf(verdict, sizeof(verdict), "thread %lu did not come back", rounds);
			int status;
			if (waitpid(p, &status, 0) != p)
				snprintf(verdict, sizeof(verdict), "child %d vanished", (int)p);
			else if (!WIFEXITED(status) || WEXITSTATUS(status) != 7)
				snprintf(verdict, sizeof(verdict), "child %d: status %#x, expected exit 7",
					 (int)p, status);
			rounds++;
		}
		if (phase == 0)
			before_check = rounds;
	}
	if (!strcmp(verdict, "PASS") && (before_check == 0 || rounds < before_check + 50))
		snprintf(verdict, sizeof(verdict), "%lu rounds before the check, %lu in all",
			 before_check, rounds);
	char name[64], text[300];
	snprintf(name, sizeof(name), "res.%d", (int)getpid());
	snprintf(text, sizeof(text), "%s\n", verdict);
	wl_write_file(name, text);
	exit(0);
}

int main(void)
{
	wl_init();
	pid_t kids[2];
	for (int i = 0; i < 2; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			wl_die("fork");
		if (kids[i] == 0)
			worker();
	}
	wl_ready();
	wl_wait_check(NULL);
	wl_collect_results(2, 60);
	for (int i = 0; i < 2; i++)
		waitpid(kids[i], NULL, 0);
	return wl_finish();
}
