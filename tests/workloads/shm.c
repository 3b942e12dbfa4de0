/*
 * shm: a parent and a child sharing 1 MiB of MAP_SHARED|MAP_ANONYMOUS memory. Before the dump
 * the parent fills the first pages with a pattern. After restore both check the pattern; the
 * parent writes a word into a page that was never touched before the dump, the child must see
 * it and answer in another untouched page, which the parent must see: the memory is shared
 * again, not copied.
 */
#include "protocol.c"
#include <sys/mman.h>
#include <sys/wait.h>

#define SIZE (1 << 20)

static volatile unsigned *mem;

static int pattern_ok(void)
{
	for (unsigned i = 0; i < 4 * 4096 / sizeof(unsigned); i++)
		if (mem[i] != i * 2654435761u)
			return 0;
	return 1;
}

static int wait_word(size_t index, unsigned want)
{
	double end = wl_now(CLOCK_MONOTONIC) + 10;
	while (mem[index] != want)
		if (wl_now(CLOCK_MONOTONIC) > end)
			return 0;
		else
			usleep(1000);
	return 1;
}

int main(void)
{
	wl_init();
	mem = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		wl_die("mmap");
	for (unsigned i = 0; i < 4 * 4096 / sizeof(unsigned); i++)
		mem[i] = i * 2654435761u;
	pid_t child = fork();
	if (child < 0)
		wl_die("fork");
	if (child == 0) {
		wl_wait_check(NULL);
		const char *verdict = "PASS";
		if (!pattern_ok())
			verdict = "child: pattern lost";
		else if (!wait_word(10 * 1024, 0xfeedbeef))
			verdict = "child: the parent's write after restore never arrived";
		else
			mem[20 * 1024] = 0xacce55ed;
		char text[128];
		snprintf(text, sizeof(text), "%s\n", verdict);
		wl_write_file("res.child", text);
		_exit(0);
	}
	wl_ready();
	wl_wait_check(NULL);
	if (!pattern_ok())
		wl_fail("parent: pattern lost");
	mem[10 * 1024] = 0xfeedbeef;
	if (!wait_word(20 * 1024, 0xacce55ed))
		wl_fail("parent: the child's answer never arrived");
	int status;
	waitpid(child, &status, 0);
	char buf[256] = "";
	FILE *f = fopen("res.child", "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		wl_fail("child wrote no result");
	if (f)
		fclose(f);
	buf[strcspn(buf, "\n")] = 0;
	if (buf[0] && strcmp(buf, "PASS"))
		wl_fail("%s", buf);
	return wl_finish();
}
