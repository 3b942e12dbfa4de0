/*
 * The workload protocol, shared by every workload with `#include "protocol.c"` (it is not a
 * workload of its own).
 *
 *   start in a fresh directory (cwd)      -> wl_init() remembers it as the base directory
 *   set up state, then wl_ready()         -> writes "<pid> READY\n" to base/ready
 *   work until base/check exists          -> wl_wait_check(work)
 *   check the state, wl_fail() per error  -> wl_finish() writes "PASS\n" or "FAIL: ...\n" to
 *                                            base/result and returns the exit code
 *
 * Files are written whole: data goes to NAME.tmp, which is then renamed to NAME. The paths are
 * absolute so a workload may chdir elsewhere.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char wl_base[PATH_MAX];
static char wl_failures[2048];

static __attribute__((unused)) void wl_path(char *out, size_t len, const char *name)
{
	snprintf(out, len, "%s/%s", wl_base, name);
}

static __attribute__((unused)) void wl_die(const char *what)
{
	fprintf(stderr, "workload: %s: %s\n", what, strerror(errno));
	exit(2);
}

static __attribute__((unused)) void wl_write_file(const char *name, const char *text)
{
	char tmp[PATH_MAX + 16], dst[PATH_MAX + 16];
	snprintf(tmp, sizeof(tmp), "%s/%s.tmp", wl_base, name);
	wl_path(dst, sizeof(dst), name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		wl_die("open tmp file");
	size_t len = strlen(text);
	if (write(fd, text, len) != (ssize_t)len)
		wl_die("write tmp file");
	close(fd);
	if (rename(tmp, dst))
		wl_die("rename tmp file");
}

static __attribute__((unused)) void wl_init(void)
{
	if (!getcwd(wl_base, sizeof(wl_base)))
		wl_die("getcwd");
}

static __attribute__((unused)) void wl_ready(void)
{
	char text[64];
	snprintf(text, sizeof(text), "%d READY\n", (int)getpid());
	wl_write_file("ready", text);
}

static __attribute__((unused)) int wl_check_requested(void)
{
	char path[PATH_MAX + 16];
	wl_path(path, sizeof(path), "check");
	return access(path, F_OK) == 0;
}

/* Calls work() (if any) and sleeps 10 ms until the file `check` appears. */
static __attribute__((unused)) void wl_wait_check(void (*work)(void))
{
	while (!wl_check_requested()) {
		if (work)
			work();
		usleep(10000);
	}
}

/* Records one failed check; wl_finish() reports them all. */
static __attribute__((unused)) void wl_fail(const char *fmt, ...)
{
	size_t used = strlen(wl_failures);
	if (used + 3 >= sizeof(wl_failures))
		return;
	if (used) {
		strcat(wl_failures, "; ");
		used += 2;
	}
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(wl_failures + used, sizeof(wl_failures) - used, fmt, ap);
	va_end(ap);
}

static __attribute__((unused)) int wl_finish(void)
{
	char text[sizeof(wl_failures) + 16];
	if (wl_failures[0]) {
		snprintf(text, sizeof(text), "FAIL: %s\n", wl_failures);
		wl_write_file("result", text);
		return 1;
	}
	wl_write_file("result", "PASS\n");
	return 0;
}

static __attribute__((unused)) double wl_now(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Files in the base directory whose name starts with `prefix` (not the .tmp ones). */
static __attribute__((unused)) int wl_count_files(const char *prefix)
{
	DIR *dir = opendir(wl_base);
	int n = 0;
	struct dirent *e;
	while (dir && (e = readdir(dir)))
		if (!strncmp(e->d_name, prefix, strlen(prefix)) && !strstr(e->d_name, ".tmp"))
			n++;
	if (dir)
		closedir(dir);
	return n;
}

/*
 * For trees whose processes each write their verdict to res.<pid>: waits up to `seconds` for
 * `expected` of them, then wl_fail()s with every verdict that is not PASS (and if some are
 * missing).
 */
static __attribute__((unused)) void wl_collect_results(int expected, double seconds)
{
	double end = wl_now(CLOCK_MONOTONIC) + seconds;
	while (wl_count_files("res.") < expected && wl_now(CLOCK_MONOTONIC) < end)
		usleep(10000);
	if (wl_count_files("res.") != expected)
		wl_fail("%d of %d processes reported", wl_count_files("res."), expected);
	DIR *dir = opendir(wl_base);
	struct dirent *e;
	while (dir && (e = readdir(dir))) {
		if (strncmp(e->d_name, "res.", 4) || strstr(e->d_name, ".tmp"))
			continue;
		char path[PATH_MAX + 300], buf[300] = "";
		snprintf(path, sizeof(path), "%s/%s", wl_base, e->d_name);
		FILE *f = fopen(path, "r");
		if (f) {
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = 0;
			fclose(f);
		}
		buf[strcspn(buf, "\n")] = 0;
		if (strcmp(buf, "PASS"))
			wl_fail("%s", buf);
	}
	if (dir)
		closedir(dir);
}

/* One step of xorshift64: a fast, incompressible pattern for memory contents. */
static __attribute__((unused)) uint64_t wl_xorshift64(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}
