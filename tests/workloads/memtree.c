/*
 * memtree: a tree whose processes each hold memory of their own, for the parallel dump. The
 * root forks argv[1] children (default 3) and each child forks argv[2] grandchildren (default
 * 2). Every process fills argv[3] MiB (default 8) of anonymous memory with xorshift64 output
 * seeded by its pid, and reads through 1 MiB more, so those pages are mapped to the shared
 * zero page, then writes a marker into every fourth of them.
 *
 * After the check request every process verifies its memory (data, markers, zero pages that
 * still read zero) and writes res.<pid>; the root collects all of them.
 */
#include "protocol.c"
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define ZERO_MIB 1
#define MAX_KIDS 64

static size_t mib = 8;
static pid_t kids[MAX_KIDS];
static int nkids;

static uint64_t *mem;
static volatile uint64_t *zero;
static uint64_t seed;

static void fill(void)
{
	seed = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)getpid() << 20);
	mem = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	zero = mmap(NULL, ZERO_MIB << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || zero == MAP_FAILED)
		wl_die("mmap");
	uint64_t state = seed;
	for (size_t i = 0; i < (mib << 20) / 8; i++)
		mem[i] = wl_xorshift64(&state);
	/* Read faults map the zero page; then every fourth page gets a frame of its own. */
	uint64_t sum = 0;
	for (size_t i = 0; i < (ZERO_MIB << 20) / 8; i += 512)
		sum += zero[i];
	if (sum)
		wl_die("fresh memory is not zero");
	for (size_t p = 0; p < (ZERO_MIB << 20) / 4096; p += 4)
		zero[p * 512 + 7] = seed + p;
}

static void verify(char *out, size_t len)
{
	uint64_t state = seed;
	snprintf(out, len, "PASS");
	for (size_t i = 0; i < (mib << 20) / 8; i++)
		if (mem[i] != wl_xorshift64(&state)) {
			snprintf(out, len, "pid %d: word %zu differs", (int)getpid(), i);
			return;
		}
	for (size_t i = 0; i < (ZERO_MIB << 20) / 8; i++) {
		size_t p = i / 512;
		uint64_t want = (p % 4 == 0 && i % 512 == 7) ? seed + p : 0;
		if (zero[i] != want) {
			snprintf(out, len, "pid %d: zero-page word %zu is %#llx, expected %#llx",
				 (int)getpid(), i, (unsigned long long)zero[i], (unsigned long long)want);
			return;
		}
	}
}

static void report(void)
{
	char name[64], text[300], verdict[256];
	verify(verdict, sizeof(verdict));
	snprintf(name, sizeof(name), "res.%d", (int)getpid());
	snprintf(text, sizeof(text), "%s\n", verdict);
	wl_write_file(name, text);
}

static void reap_kids(void)
{
	for (int i = 0; i < nkids; i++)
		waitpid(kids[i], NULL, 0);
}

/* The life of a non-root process: fork `grandkids` leaves, fill, wait, check, report. */
static void member(int grandkids)
{
	nkids = 0;
	for (int i = 0; i < grandkids; i++) {
		pid_t p = fork();
		if (p < 0)
			wl_die("fork");
		if (p == 0) {
			nkids = 0;
			break;
		}
		kids[nkids++] = p;
	}
	fill();
	char up[64];
	snprintf(up, sizeof(up), "up.%d", (int)getpid());
	wl_write_file(up, "up\n");
	wl_wait_check(NULL);
	report();
	reap_kids();
	exit(0);
}

int main(int argc, char **argv)
{
	int children = argc > 1 ? atoi(argv[1]) : 3;
	int grandkids = argc > 2 ? atoi(argv[2]) : 2;
	mib = argc > 3 ? strtoul(argv[3], NULL, 10) : 8;
	if (children < 0 || grandkids < 0 || children > MAX_KIDS || grandkids > MAX_KIDS)
		wl_die("bad tree shape");
	wl_init();
	for (int i = 0; i < children; i++) {
		pid_t p = fork();
		if (p < 0)
			wl_die("fork");
		if (p == 0)
			member(grandkids);
		kids[nkids++] = p;
	}
	fill();
	int others = children * (1 + grandkids);
	/* Up when every process has filled its memory. */
	double up_by = wl_now(CLOCK_MONOTONIC) + 60;
	while (wl_count_files("up.") < others && wl_now(CLOCK_MONOTONIC) < up_by)
		usleep(1000);
	if (wl_count_files("up.") < others)
		wl_die("the tree did not come up");
	wl_ready();
	wl_wait_check(NULL);
	char verdict[256];
	verify(verdict, sizeof(verdict));
	if (strcmp(verdict, "PASS"))
		wl_fail("%s", verdict);
	wl_collect_results(others, 60);
	reap_kids();
	return wl_finish();
}
