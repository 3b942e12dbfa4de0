/*
 * vfork: a parent blocked in vfork() while its child, which shares its memory, waits. cryo
 * must refuse to dump it (and leave both running).
 */
#include "protocol.c"

int main(void)
{
	wl_init();
	wl_ready();
	pid_t child = vfork();
	if (child == 0) {
		for (;;)
			pause();
	}
	return 0;
}
