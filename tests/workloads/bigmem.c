/*
 * bigmem: fills argv[1] MiB (default 1024) of anonymous memory with incompressible xorshift64
 * output and, if argv[2] is given, touches argv[2] MiB (default 0) of another anonymous mapping
 * by writing zeros to it (present pages whose contents are zero), then idles; with argv[3]
 * `lock`, that mapping is mlocked, with `pin` it is pinned as io_uring fixed buffers of a ring
 * that has no fd left (registered with the task instead: the dump cannot see it). On `check`
 * it regenerates the sequence and compares, and checks that the zero mapping still reads zero
 * (the benchmark workload).
 */
#include "protocol.c"
#include <linux/io_uring.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

/* Pins [p, p + len) as the fixed buffers of a new io_uring whose fd is then closed. */
static void pin(void *p, size_t len)
{
	struct io_uring_params params;
	memset(&params, 0, sizeof params);
	int ring = (int)syscall(SYS_io_uring_setup, 4, &params);
	if (ring < 0)
		wl_die("io_uring_setup");
	struct iovec iov = {.iov_base = p, .iov_len = len};
	if (syscall(SYS_io_uring_register, ring, IORING_REGISTER_BUFFERS, &iov, 1))
		wl_die("IORING_REGISTER_BUFFERS");
	struct io_uring_rsrc_update up = {.offset = (uint32_t)-1, .data = (uint64_t)ring};
	if (syscall(SYS_io_uring_register, ring, IORING_REGISTER_RING_FDS, &up, 1) != 1)
		wl_die("IORING_REGISTER_RING_FDS");
	close(ring);
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 1024;
	size_t zero_mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
	size_t words = (mib << 20) / 8;

	wl_init();
	pid_t pid = getpid();
	uint64_t seed = ((uint64_t)time(NULL) << 16) ^ (uint64_t)pid ^ 0x2545F4914F6CDD1DULL;
	uint64_t *mem = mmap(NULL, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		wl_die("mmap");
	uint64_t state = seed;
	for (size_t i = 0; i < words; i++)
		mem[i] = wl_xorshift64(&state);
	volatile uint64_t *zero = NULL;
	size_t zero_words = (zero_mib << 20) / 8;
	if (zero_mib) {
		zero = mmap(NULL, zero_mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (zero == MAP_FAILED)
			wl_die("mmap");
		/* A write fault gives each page a frame of its own, unlike a read (the zero page). */
		for (size_t i = 0; i < zero_words; i += 4096 / 8)
			zero[i] = 0;
		if (argc > 3 && !strcmp(argv[3], "lock") && mlock((void *)zero, zero_mib << 20))
			wl_die("mlock");
		if (argc > 3 && !strcmp(argv[3], "pin"))
			pin((void *)zero, zero_mib << 20);
	}
	wl_ready();
	wl_wait_check(NULL);

	state = seed;
	for (size_t i = 0; i < words; i++)
		if (mem[i] != wl_xorshift64(&state)) {
			wl_fail("word %zu (%p) differs", i, (void *)&mem[i]);
			break;
		}
	for (size_t i = 0; i < zero_words; i++)
		if (zero[i] != 0) {
			wl_fail("zero word %zu (%p) is %#llx", i, (void *)&zero[i],
				(unsigned long long)zero[i]);
			break;
		}
	if (getpid() != pid)
		wl_fail("pid is %d, was %d", (int)getpid(), (int)pid);
	return wl_finish();
}
