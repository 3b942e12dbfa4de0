/*
 * tree: 13 live processes over 4 levels plus a zombie. The root leads its own session; one
 * subtree has its own process group, and one process joins that group from another branch.
 *
 *   root (session leader)
 *   +- a -------- a1, a2, a3 -- a3x
 *   +- b -------- b1, b2, and z (exits 42 at once; b keeps it a zombie until the check)
 *   +- c (new group) -- c1, c2 (in c's group)
 *   +- d (joins c's group)
 *
 * Every process remembers its pid, ppid, pgid and sid (and every non-root one its name, its
 * executable, the FD_CLOEXEC flag of two fds and its CPU count) and, after the check request, compares
 * them and writes res.<pid>. The root collects 12 of them, and b reaps its zombie expecting
 * status 42. Each parent reaps its children before exiting.
 */
#include "protocol.c"
#include <signal.h>
#include <dirent.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sched.h>
#include <fcntl.h>

static pid_t kids[8];
static int nkids;
static pid_t zombie;

static void report(const char *what)
{
	char name[64], text[512];
	snprintf(name, sizeof(name), "res.%d", (int)getpid());
	snprintf(text, sizeof(text), "%s\n", what);
	wl_write_file(name, text);
}

static void check_ids(pid_t pid, pid_t ppid, pid_t pgid, pid_t sid, char *out, size_t len)
{
	if (getpid() != pid || getppid() != ppid || getpgid(0) != pgid || getsid(0) != sid)
		snprintf(out, len, "pid %d: pid/ppid/pgid/sid %d/%d/%d/%d, were %d/%d/%d/%d", (int)pid,
			 (int)getpid(), (int)getppid(), (int)getpgid(0), (int)getsid(0), (int)pid, (int)ppid,
			 (int)pgid, (int)sid);
	else
		snprintf(out, len, "PASS");
}

static void reap_kids(void)
{
	for (int i = 0; i < nkids; i++)
		waitpid(kids[i], NULL, 0);
}

/*
 * What else a member checks of itself: its name, its executable, an fd with and one without
 * FD_CLOEXEC (a restore process may go through an execve on its way, which resets names and
 * closes close-on-exec fds), and how many CPUs it may run on (restore pins each process to
 * its worker's CPU while it builds it).
 */
struct self {
	char name[16], exe[256];
	int cloexec_fd, plain_fd, cpus;
};

/* How many CPUs it may run on. */
static int cpu_count(void)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return -1;
	return CPU_COUNT(&set);
}

static void note_self(struct self *s)
{
	snprintf(s->name, sizeof(s->name), "m%d", (int)(getpid() % 100000));
	if (prctl(PR_SET_NAME, s->name) < 0)
		wl_die("PR_SET_NAME");
	ssize_t n = readlink("/proc/self/exe", s->exe, sizeof(s->exe) - 1);
	s->exe[n > 0 ? n : 0] = 0;
	s->cpus = cpu_count();
	s->cloexec_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	s->plain_fd = open("/dev/null", O_RDONLY);
	if (s->cloexec_fd < 0 || s->plain_fd < 0)
		wl_die("open /dev/null");
}

static void check_self(const struct self *s, char *out, size_t len)
{
	char name[16] = "", exe[256];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = 0;
	prctl(PR_GET_NAME, name);
	int ce = fcntl(s->cloexec_fd, F_GETFD), plain = fcntl(s->plain_fd, F_GETFD);
	if (strcmp(name, s->name))
		snprintf(out, len, "pid %d: name %s, was %s", (int)getpid(), name, s->name);
	else if (strcmp(exe, s->exe))
		snprintf(out, len, "pid %d: exe %.100s, was %.100s", (int)getpid(), exe, s->exe);
	else if (ce < 0 || !(ce & FD_CLOEXEC))
		snprintf(out, len, "pid %d: fd %d flags %d, FD_CLOEXEC expected", (int)getpid(), s->cloexec_fd, ce);
	else if (plain != 0)
		snprintf(out, len, "pid %d: fd %d flags %d, 0 expected", (int)getpid(), s->plain_fd, plain);
	else if (cpu_count() != s->cpus)
		snprintf(out, len, "pid %d: may run on %d CPUs, %d before", (int)getpid(), cpu_count(), s->cpus);
}

/* The life of every non-root process after its own children are forked. */
static void member(void)
{
	pid_t pid = getpid(), ppid = getppid(), pgid = getpgid(0), sid = getsid(0);
	struct self self;
	note_self(&self);
	wl_wait_check(NULL);
	char verdict[256];
	check_ids(pid, ppid, pgid, sid, verdict, sizeof(verdict));
	if (!strcmp(verdict, "PASS"))
		check_self(&self, verdict, sizeof(verdict));
	if (zombie && !strcmp(verdict, "PASS")) {
		int status;
		if (waitpid(zombie, &status, WNOHANG) != zombie)
			snprintf(verdict, sizeof(verdict), "zombie %d is not waiting to be reaped", (int)zombie);
		else if (!WIFEXITED(status) || WEXITSTATUS(status) != 42)
			snprintf(verdict, sizeof(verdict), "zombie status %#x, expected exit 42", status);
	}
	report(verdict);
	reap_kids();
	exit(0);
}

static pid_t spawn(void (*body)(void))
{
	pid_t p = fork();
	if (p < 0)
		wl_die("fork");
	if (p == 0) {
		nkids = 0;
		zombie = 0;
		body();
		member();
	}
	kids[nkids++] = p;
	return p;
}

static void leaf(void) {}
static void a3(void) { spawn(leaf); }
static void a(void) { spawn(leaf); spawn(leaf); spawn(a3); }
static void b(void)
{
	spawn(leaf);
	spawn(leaf);
	zombie = fork();
	if (zombie == 0)
		_exit(42);
	/* Wait until it is a zombie. */
	char path[64], buf[256];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)zombie);
	for (;;) {
		FILE *f = fopen(path, "r");
		if (f && fgets(buf, sizeof(buf), f) && strstr(buf, ") Z ")) {
			fclose(f);
			break;
		}
		if (f)
			fclose(f);
		usleep(1000);
	}
}
static pid_t c_pid;
static void c(void) { setpgid(0, 0); spawn(leaf); spawn(leaf); }
static void d(void) { setpgid(0, c_pid); }

/* Processes (zombies included) whose session is `sid`, from /proc. */
static int session_size(pid_t sid)
{
	DIR *dir = opendir("/proc");
	int n = 0;
	struct dirent *e;
	while (dir && (e = readdir(dir))) {
		char path[300], buf[512];
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f)) {
			char *r = strrchr(buf, ')');
			int ppid, pgrp, session;
			char state;
			if (r && sscanf(r + 2, "%c %d %d %d", &state, &ppid, &pgrp, &session) == 4 &&
			    session == sid)
				n++;
		}
		fclose(f);
	}
	if (dir)
		closedir(dir);
	return n;
}

int main(void)
{
	wl_init();
	if (setsid() < 0)
		wl_die("setsid");
	pid_t pid = getpid(), sid = getsid(0);
	spawn(a);
	spawn(b);
	c_pid = spawn(c);
	/* c must lead its group before d joins it. */
	while (getpgid(c_pid) != c_pid)
		usleep(1000);
	spawn(d);
	/* Wait until the whole tree is up: 13 live processes and the zombie. */
	while (session_size(sid) < 14)
		usleep(10000);
	wl_ready();
	wl_wait_check(NULL);
	char verdict[256];
	check_ids(pid, getppid(), pid, pid, verdict, sizeof(verdict));
	if (strcmp(verdict, "PASS"))
		wl_fail("%s", verdict);
	wl_collect_results(12, 30);
	reap_kids();
	return wl_finish();
}
