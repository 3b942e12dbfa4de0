/*
 * clone_share: processes sharing an fd table (CLONE_FILES) or cwd/root/umask (CLONE_FS) with
 * their parent, not being threads. P creates A with clone(CLONE_FILES), A creates C with
 * clone(CLONE_FILES) (one table for three processes), and P creates B with clone(CLONE_FS).
 * After restore: A opens a file at fd 100 and P sees it there; P opens one at fd 101 and A
 * sees it; C sees both and opens one at fd 102 that A sees; P closes fd 100 and A sees it
 * gone; A writes to MAP_SHARED anonymous memory that P reads. B chdir()s and P sees its new
 * cwd; P sets the umask and B sees it.
 */
#include "protocol.c"
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int a2p[2], p2a[2], a2c[2], c2a[2], p2b[2], b2p[2];
static volatile int *shm;

static pid_t clone_with(unsigned long flags)
{
	return (pid_t)syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
}

static void token_out(int fd)
{
	if (write(fd, "x", 1) != 1)
		_exit(90);
}

static void token_in(int fd)
{
	char c;
	if (read(fd, &c, 1) != 1)
		_exit(91);
}

/* Opens base/NAME (creating it) at fd number AT. */
static void open_at(const char *name, int at)
{
	char path[PATH_MAX + 16];
	wl_path(path, sizeof(path), name);
	int fd = open(path, O_RDWR | O_CREAT, 0644);
	if (fd < 0 || dup2(fd, at) != at)
		_exit(92);
	close(fd);
}

/* Whether fd AT is base/NAME. */
static int is_file(int at, const char *name)
{
	char path[PATH_MAX + 16];
	struct stat a, b;
	wl_path(path, sizeof(path), name);
	return fstat(at, &a) == 0 && stat(path, &b) == 0 && a.st_ino == b.st_ino &&
	       a.st_dev == b.st_dev;
}

static int exit_code(pid_t pid)
{
	int status;
	if (waitpid(pid, &status, 0) != pid)
		return 200;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 100 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

static void run_c(void)
{
	wl_wait_check(NULL);
	token_in(a2c[0]);
	if (!is_file(100, "a.txt"))
		_exit(10);
	if (!is_file(101, "p.txt"))
		_exit(11);
	open_at("c.txt", 102);
	token_out(c2a[1]);
	_exit(0);
}

static void run_a(void)
{
	pid_t c = clone_with(CLONE_FILES);
	if (c < 0)
		_exit(20);
	if (c == 0)
		run_c();
	wl_wait_check(NULL);
	open_at("a.txt", 100);
	shm[1] = 0xa11;
	token_out(a2p[1]);
	token_in(p2a[0]);
	if (!is_file(101, "p.txt"))
		_exit(21);
	/* P has closed fd 100 by now. */
	if (fcntl(100, F_GETFD) != -1 || errno != EBADF)
		_exit(22);
	open_at("a.txt", 100);
	token_out(a2c[1]);
	token_in(c2a[0]);
	if (!is_file(102, "c.txt"))
		_exit(23);
	int code = exit_code(c);
	_exit(code ? 30 + code % 50 : 0);
}

static void run_b(void)
{
	wl_wait_check(NULL);
	token_in(p2b[0]);
	if (chdir("sub"))
		_exit(40);
	token_out(b2p[1]);
	token_in(p2b[0]);
	mode_t m = umask(0);
	umask(m);
	if (m != 027)
		_exit(41);
	_exit(0);
}

int main(void)
{
	wl_init();
	if (mkdir("sub", 0755) && errno != EEXIST)
		wl_die("mkdir");
	umask(022);
	shm = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shm == MAP_FAILED)
		wl_die("mmap");
	shm[0] = 7;
	int *pipes[] = { a2p, p2a, a2c, c2a, p2b, b2p };
	for (int i = 0; i < 6; i++)
		if (pipe(pipes[i]))
			wl_die("pipe");
	pid_t a = clone_with(CLONE_FILES);
	if (a < 0)
		wl_die("clone(CLONE_FILES)");
	if (a == 0)
		run_a();
	pid_t b = clone_with(CLONE_FS);
	if (b < 0)
		wl_die("clone(CLONE_FS)");
	if (b == 0)
		run_b();
	/* Let A create C before we are ready. */
	usleep(100000);
	wl_ready();
	wl_wait_check(NULL);

	token_in(a2p[0]);
	if (!is_file(100, "a.txt"))
		wl_fail("fd 100 opened by the CLONE_FILES child is not a.txt here");
	if (shm[0] != 7 || shm[1] != 0xa11)
		wl_fail("shared memory holds %d, %#x (expected 7, 0xa11)", shm[0], shm[1]);
	close(100);
	open_at("p.txt", 101);
	token_out(p2a[1]);
	int code = exit_code(a);
	if (code)
		wl_fail("the CLONE_FILES child (or its CLONE_FILES child) failed with %d", code);

	char before[PATH_MAX], after[PATH_MAX];
	if (!getcwd(before, sizeof(before)))
		wl_die("getcwd");
	token_out(p2b[1]);
	token_in(b2p[0]);
	if (!getcwd(after, sizeof(after)))
		wl_die("getcwd");
	size_t n = strlen(after);
	if (n < 4 || strcmp(after + n - 4, "/sub") || strncmp(after, before, strlen(before)))
		wl_fail("cwd after the CLONE_FS child's chdir is %s (was %s)", after, before);
	umask(027);
	token_out(p2b[1]);
	code = exit_code(b);
	if (code)
		wl_fail("the CLONE_FS child failed with %d", code);
	return wl_finish();
}
