/*
 * full_state: one process holding many kinds of state, each checked after restore.
 *
 * Memory: a 32 MiB calloc'd block and a 16 MiB anonymous mapping filled with a pattern derived
 * from each word's address and a per-run seed, with untouched zero pages and pages written
 * back to zero; a small brk-heap block; a stack buffer; a PROT_NONE and a PROT_READ region
 * holding data; a MAP_PRIVATE file mapping with one page modified.
 * Files: a read-only fd at offset 100 moved to fd >= 42 with FD_CLOEXEC; an O_APPEND fd.
 * Signals: SIGUSR1 and SIGUSR2 blocked, one SIGUSR2 queued with a value (pending); SIGCONT
 * blocked and pending (a stop signal raised by the restorer would drop it); a SIGALRM
 * handler with a 50 ms ITIMER_REAL; a 20 ms POSIX timer (created after a deleted one, so its
 * id is not the first); a sigaltstack used by the SIGWINCH handler.
 * Process: pid, umask 027, cwd in a subdirectory, RLIMIT_NOFILE lowered.
 */
#include "protocol.c"
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>

#define PAGE 4096UL
#define HEAP_SIZE (32UL << 20)
#define ANON_SIZE (16UL << 20)
#define BRK_SIZE (96UL << 10)
#define SMALL_PAGES 4
#define ALTSTACK_SIZE (64UL << 10)
#define NOFILE_SOFT 200

static uint64_t seed;
static pid_t start_pid;
static char *heap_area, *anon_area, *brk_area, *none_area, *ro_area, *file_map;
static int data_fd, append_fd;
static off_t append_size_at_setup;
static timer_t posix_timer;
static int posix_timer_kernel_id = -1;
static rlim_t nofile_hard;
static char altstack[ALTSTACK_SIZE];
static unsigned long work_iterations;

static volatile sig_atomic_t alarm_ticks, timer_ticks, timer_value, timer_id_seen;
static volatile sig_atomic_t usr2_count, usr2_value, usr2_code, usr2_pid;
static volatile uintptr_t winch_stack_addr;

static uint64_t pattern(const void *addr)
{
	return ((uint64_t)(uintptr_t)addr * 0x9E3779B97F4A7C15ULL) ^ seed;
}

/* In the big regions, page i is untouched when i % 16 == 5 and written back to zero when
 * i % 16 == 9; every other page holds the pattern. */
static int page_is_zero(size_t i)
{
	return i % 16 == 5 || i % 16 == 9;
}

static void fill_words(void *p, size_t len)
{
	uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		w[i] = pattern(&w[i]);
}

/* Returns the offset of the first word that does not hold the pattern, or -1. */
static long find_bad_word(const void *p, size_t len)
{
	const uint64_t *w = p;
	for (size_t i = 0; i < len / 8; i++)
		if (w[i] != pattern(&w[i]))
			return (long)(i * 8);
	return -1;
}

static void fill_region(char *base, size_t len)
{
	for (size_t i = 0; i < len / PAGE; i++) {
		if (i % 16 == 5)
			continue;
		fill_words(base + i * PAGE, PAGE);
		if (i % 16 == 9)
			memset(base + i * PAGE, 0, PAGE);
	}
}

static void check_region(const char *name, const char *base, size_t len)
{
	for (size_t i = 0; i < len / PAGE; i++) {
		const char *page = base + i * PAGE;
		if (page_is_zero(i)) {
			for (size_t j = 0; j < PAGE; j++)
				if (page[j]) {
					wl_fail("%s: zero page %zu has byte %#x at %zu", name, i,
						(unsigned char)page[j], j);
					return;
				}
		} else {
			long bad = find_bad_word(page, PAGE);
			if (bad >= 0) {
				wl_fail("%s: page %zu (%p) differs at offset %ld", name, i,
					(const void *)page, bad);
				return;
			}
		}
	}
}

/* Finds the /proc/self/maps line covering addr: perms (4 chars) and path ("" if none). */
static int maps_lookup(const void *addr, char perms[5], char *path, size_t path_len)
{
	FILE *f = fopen("/proc/self/maps", "re");
	char line[PATH_MAX + 128];
	int found = 0;
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long start, end;
		char p[5], name[PATH_MAX + 1] = "";
		if (sscanf(line, "%lx-%lx %4s %*s %*s %*s %4096s", &start, &end, p, name) < 3)
			continue;
		if ((uintptr_t)addr >= start && (uintptr_t)addr < end) {
			memcpy(perms, p, 5);
			snprintf(path, path_len, "%s", name);
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

static void check_perms(const char *name, const void *addr, const char *want)
{
	char perms[5], path[PATH_MAX];
	if (!maps_lookup(addr, perms, path, sizeof(path)))
		wl_fail("%s: %p is not mapped", name, addr);
	else if (strcmp(perms, want))
		wl_fail("%s: protection %s, expected %s", name, perms, want);
}

static void on_alarm(int sig)
{
	(void)sig;
	alarm_ticks++;
}

static void on_timer(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	timer_ticks++;
	timer_value = si->si_value.sival_int;
	timer_id_seen = si->si_timerid;
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	usr2_count++;
	usr2_value = si->si_value.sival_int;
	usr2_code = si->si_code;
	usr2_pid = si->si_pid;
}

static void on_winch(int sig)
{
	volatile char here;
	(void)sig;
	winch_stack_addr = (uintptr_t)&here;
}

static void set_handler(int sig, void (*fn)(int), void (*action)(int, siginfo_t *, void *), int flags)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = flags;
	if (action) {
		sa.sa_sigaction = action;
		sa.sa_flags |= SA_SIGINFO;
	} else {
		sa.sa_handler = fn;
	}
	if (sigaction(sig, &sa, NULL))
		wl_die("sigaction");
}

static void write_file(const char *name, const char *data, size_t len)
{
	int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, data, len) != (ssize_t)len)
		wl_die("write test file");
	close(fd);
}

static void setup_memory(void)
{
	char *heap = calloc(1, HEAP_SIZE + PAGE);
	anon_area = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	brk_area = malloc(BRK_SIZE);
	none_area = mmap(NULL, SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro_area = mmap(NULL, SMALL_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (!heap || anon_area == MAP_FAILED || !brk_area || none_area == MAP_FAILED || ro_area == MAP_FAILED)
		wl_die("allocate memory");
	heap_area = (char *)(((uintptr_t)heap + PAGE - 1) & ~(PAGE - 1));
	fill_region(heap_area, HEAP_SIZE);
	fill_region(anon_area, ANON_SIZE);
	fill_words(brk_area, BRK_SIZE);
	fill_words(none_area, SMALL_PAGES * PAGE);
	fill_words(ro_area, SMALL_PAGES * PAGE);
	if (mprotect(none_area, SMALL_PAGES * PAGE, PROT_NONE) || mprotect(ro_area, SMALL_PAGES * PAGE, PROT_READ))
		wl_die("mprotect");
}

static void setup_files(void)
{
	char buf[SMALL_PAGES * PAGE];
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = 'A' + i / PAGE;
	write_file("mapped.dat", buf, sizeof(buf));
	int fd = open("mapped.dat", O_RDONLY);
	if (fd < 0)
		wl_die("open mapped.dat");
	file_map = mmap(NULL, sizeof(buf), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (file_map == MAP_FAILED)
		wl_die("mmap mapped.dat");
	close(fd);
	memset(file_map + PAGE, 'z', PAGE);

	for (size_t i = 0; i < PAGE; i++)
		buf[i] = (char)(i * 7 + 3);
	write_file("data.bin", buf, PAGE);
	fd = open("data.bin", O_RDONLY);
	if (fd < 0 || read(fd, buf, 100) != 100)
		wl_die("read data.bin");
	data_fd = fcntl(fd, F_DUPFD_CLOEXEC, 42);
	if (data_fd < 0)
		wl_die("F_DUPFD_CLOEXEC");
	close(fd);

	append_fd = open("log.txt", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
	if (append_fd < 0 || write(append_fd, "before\n", 7) != 7)
		wl_die("write log.txt");
	append_size_at_setup = 7;
}

static void setup_signals(void)
{
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigaddset(&block, SIGUSR2);
	sigaddset(&block, SIGCONT);
	if (sigprocmask(SIG_BLOCK, &block, NULL))
		wl_die("sigprocmask");
	if (raise(SIGCONT))
		wl_die("raise(SIGCONT)");
	set_handler(SIGUSR2, NULL, on_usr2, SA_RESTART);
	union sigval v = { .sival_int = 4242 };
	if (sigqueue(getpid(), SIGUSR2, v))
		wl_die("sigqueue");

	set_handler(SIGALRM, on_alarm, NULL, SA_RESTART);
	struct itimerval it = { { 0, 50000 }, { 0, 50000 } };
	if (setitimer(ITIMER_REAL, &it, NULL))
		wl_die("setitimer");

	set_handler(SIGRTMIN + 1, NULL, on_timer, SA_RESTART);
	struct sigevent sev;
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_SIGNAL;
	sev.sigev_signo = SIGRTMIN + 1;
	sev.sigev_value.sival_int = 77;
	timer_t first;
	if (timer_create(CLOCK_MONOTONIC, &sev, &first) || timer_create(CLOCK_MONOTONIC, &sev, &posix_timer) ||
	    timer_delete(first))
		wl_die("timer_create");
	struct itimerspec its = { { 0, 20000000 }, { 0, 20000000 } };
	if (timer_settime(posix_timer, 0, &its, NULL))
		wl_die("timer_settime");
	/* Learn the kernel's id for the timer from its first tick. */
	while (!timer_ticks)
		usleep(1000);
	posix_timer_kernel_id = timer_id_seen;

	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0 };
	if (sigaltstack(&ss, NULL))
		wl_die("sigaltstack");
	set_handler(SIGWINCH, on_winch, NULL, SA_ONSTACK | SA_RESTART);
}

static void setup_process(void)
{
	struct rlimit rl;
	if (mkdir("sub", 0755) || chdir("sub"))
		wl_die("chdir sub");
	umask(027);
	if (getrlimit(RLIMIT_NOFILE, &rl))
		wl_die("getrlimit");
	if (rl.rlim_max > 4000)
		rl.rlim_max = 4000;
	rl.rlim_cur = NOFILE_SOFT;
	nofile_hard = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		wl_die("setrlimit");
}

/* Between checks: rewrite one pattern page of the heap with the same values. */
static void work(void)
{
	size_t i = work_iterations++ % (HEAP_SIZE / PAGE);
	if (!page_is_zero(i))
		fill_words(heap_area + i * PAGE, PAGE);
}

static void check_memory(uint64_t *stack_buf, size_t stack_len)
{
	check_region("heap", heap_area, HEAP_SIZE);
	check_region("anon mmap", anon_area, ANON_SIZE);
	if (find_bad_word(brk_area, BRK_SIZE) >= 0)
		wl_fail("brk heap block differs");
	if (find_bad_word(stack_buf, stack_len) >= 0)
		wl_fail("stack buffer differs");

	check_perms("PROT_NONE region", none_area, "---p");
	if (mprotect(none_area, SMALL_PAGES * PAGE, PROT_READ))
		wl_fail("mprotect PROT_NONE region: %s", strerror(errno));
	else if (find_bad_word(none_area, SMALL_PAGES * PAGE) >= 0)
		wl_fail("PROT_NONE region data differs");

	check_perms("read-only region", ro_area, "r--p");
	if (find_bad_word(ro_area, SMALL_PAGES * PAGE) >= 0)
		wl_fail("read-only region data differs");
}

static void check_file_mapping(void)
{
	char perms[5], path[PATH_MAX], page[PAGE];
	if (!maps_lookup(file_map, perms, path, sizeof(path)))
		wl_fail("file mapping: %p is not mapped", (void *)file_map);
	else if (strcmp(perms, "rw-p") || !strstr(path, "/mapped.dat"))
		wl_fail("file mapping: maps shows %s %s", perms, path);
	for (int i = 0; i < SMALL_PAGES; i++) {
		char want = i == 1 ? 'z' : 'A' + i;
		for (size_t j = 0; j < PAGE; j++)
			if (file_map[i * PAGE + j] != want) {
				wl_fail("file mapping: page %d byte %zu is %#x, expected %c", i, j,
					(unsigned char)file_map[i * PAGE + j], want);
				break;
			}
	}
	char name[PATH_MAX + 16];
	wl_path(name, sizeof(name), "mapped.dat");
	int fd = open(name, O_RDONLY);
	if (fd < 0 || pread(fd, page, PAGE, PAGE) != (ssize_t)PAGE || page[0] != 'B' || page[PAGE - 1] != 'B')
		wl_fail("mapped.dat on disk changed");
	if (fd >= 0)
		close(fd);
}

static void check_fds(void)
{
	char buf[50];
	off_t pos = lseek(data_fd, 0, SEEK_CUR);
	if (pos != 100)
		wl_fail("data.bin fd %d at offset %ld, expected 100", data_fd, (long)pos);
	int fdflags = fcntl(data_fd, F_GETFD);
	if (fdflags < 0 || !(fdflags & FD_CLOEXEC))
		wl_fail("data.bin fd %d lost FD_CLOEXEC", data_fd);
	if (read(data_fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
		wl_fail("read data.bin: %s", strerror(errno));
	else
		for (int i = 0; i < (int)sizeof(buf); i++)
			if (buf[i] != (char)((100 + i) * 7 + 3)) {
				wl_fail("data.bin byte %d read wrong", 100 + i);
				break;
			}

	int fl = fcntl(append_fd, F_GETFL);
	if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY)
		wl_fail("log.txt fd flags %#x, expected O_WRONLY|O_APPEND", fl);
	struct stat st;
	if (fstat(append_fd, &st) || st.st_size < append_size_at_setup) {
		wl_fail("log.txt shrank");
		return;
	}
	/* With O_APPEND the write lands at the end wherever the offset points. */
	lseek(append_fd, 0, SEEK_SET);
	if (write(append_fd, "after\n", 6) != 6)
		wl_fail("write log.txt: %s", strerror(errno));
	char head[7], tail[6], name[PATH_MAX + 16];
	wl_path(name, sizeof(name), "log.txt");
	int rd = open(name, O_RDONLY);
	if (rd < 0 || pread(rd, head, 7, 0) != 7 || memcmp(head, "before\n", 7) ||
	    pread(rd, tail, 6, st.st_size) != 6 || memcmp(tail, "after\n", 6))
		wl_fail("log.txt content wrong: O_APPEND write not at the end");
	if (rd >= 0)
		close(rd);
}

static void check_signals(void)
{
	sigset_t cur, pending;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (!sigismember(&cur, SIGUSR1) || !sigismember(&cur, SIGUSR2))
		wl_fail("signal mask lost SIGUSR1/SIGUSR2");
	sigpending(&pending);
	if (!sigismember(&pending, SIGUSR2))
		wl_fail("queued SIGUSR2 is no longer pending");
	if (sigismember(&pending, SIGUSR1))
		wl_fail("SIGUSR1 is pending but was never sent");
	if (!sigismember(&cur, SIGCONT) || !sigismember(&pending, SIGCONT))
		wl_fail("blocked SIGCONT is no longer pending");
	if (usr2_count)
		wl_fail("SIGUSR2 delivered while blocked");
	sigset_t usr2;
	sigemptyset(&usr2);
	sigaddset(&usr2, SIGUSR2);
	sigprocmask(SIG_UNBLOCK, &usr2, NULL);
	if (usr2_count != 1)
		wl_fail("SIGUSR2 delivered %d times after unblocking, expected 1", (int)usr2_count);
	else if (usr2_value != 4242 || usr2_code != SI_QUEUE || usr2_pid != start_pid)
		wl_fail("SIGUSR2 siginfo: value %d code %d pid %d", (int)usr2_value, (int)usr2_code,
			(int)usr2_pid);

	struct sigaction sa;
	sigaction(SIGALRM, NULL, &sa);
	if (sa.sa_handler != on_alarm || !(sa.sa_flags & SA_RESTART))
		wl_fail("SIGALRM action lost");
	struct itimerval it;
	getitimer(ITIMER_REAL, &it);
	if (it.it_interval.tv_sec != 0 || it.it_interval.tv_usec != 50000)
		wl_fail("ITIMER_REAL interval %ld.%06ld s", (long)it.it_interval.tv_sec,
			(long)it.it_interval.tv_usec);

	struct itimerspec its;
	if (timer_gettime(posix_timer, &its))
		wl_fail("timer_gettime: %s", strerror(errno));
	else if (its.it_interval.tv_sec != 0 || its.it_interval.tv_nsec != 20000000)
		wl_fail("POSIX timer interval %ld.%09ld s", (long)its.it_interval.tv_sec,
			(long)its.it_interval.tv_nsec);

	int alarms = alarm_ticks, timers = timer_ticks;
	double t0 = wl_now(CLOCK_MONOTONIC);
	while (wl_now(CLOCK_MONOTONIC) - t0 < 0.3)
		usleep(10000);
	if (alarm_ticks <= alarms)
		wl_fail("ITIMER_REAL stopped ticking (%d ticks)", (int)alarm_ticks);
	if (timer_ticks <= timers)
		wl_fail("POSIX timer stopped firing (%d ticks)", (int)timer_ticks);
	else if (timer_value != 77 || timer_id_seen != posix_timer_kernel_id)
		wl_fail("POSIX timer signal: value %d, timer id %d, expected 77 and %d", (int)timer_value,
			(int)timer_id_seen, posix_timer_kernel_id);

	stack_t ss;
	sigaltstack(NULL, &ss);
	if (ss.ss_sp != altstack || ss.ss_size != sizeof(altstack) || (ss.ss_flags & SS_DISABLE))
		wl_fail("sigaltstack is %p+%zu flags %d", ss.ss_sp, ss.ss_size, ss.ss_flags);
	winch_stack_addr = 0;
	raise(SIGWINCH);
	if (winch_stack_addr < (uintptr_t)altstack || winch_stack_addr >= (uintptr_t)altstack + sizeof(altstack))
		wl_fail("SIGWINCH handler did not run on the alternate stack");
}

static void check_process(void)
{
	char cwd[PATH_MAX], want[PATH_MAX + 8];
	if (getpid() != start_pid)
		wl_fail("pid is %d, was %d", (int)getpid(), (int)start_pid);
	mode_t old = umask(027);
	if (old != 027)
		wl_fail("umask %03o, expected 027", (unsigned)old);
	snprintf(want, sizeof(want), "%s/sub", wl_base);
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, want))
		wl_fail("cwd is not %s", want);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur != NOFILE_SOFT || rl.rlim_max != nofile_hard)
		wl_fail("RLIMIT_NOFILE %lu/%lu, expected %d/%lu", (unsigned long)rl.rlim_cur,
			(unsigned long)rl.rlim_max, NOFILE_SOFT, (unsigned long)nofile_hard);
	if (!work_iterations)
		wl_fail("no work was done");
}

int main(void)
{
	uint64_t stack_buf[512];

	wl_init();
	start_pid = getpid();
	seed = ((uint64_t)time(NULL) << 20) ^ (uint64_t)start_pid ^ ((uint64_t)(uintptr_t)&stack_buf << 3);
	fill_words(stack_buf, sizeof(stack_buf));
	setup_memory();
	setup_files();
	setup_signals();
	setup_process();

	wl_ready();
	wl_wait_check(work);

	check_memory(stack_buf, sizeof(stack_buf));
	check_file_mapping();
	check_fds();
	check_signals();
	check_process();
	return wl_finish();
}
