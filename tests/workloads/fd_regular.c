/*
 * fd_regular: regular files with their flags and offsets, a directory part-way through a
 * getdents walk, character devices, and files deleted while open.
 *
 *   fd A  "data" O_RDONLY at offset 1234
 *   fd B  "log" O_WRONLY|O_APPEND, "hello" written
 *   fd C  "data" O_RDWR|O_NONBLOCK|O_CLOEXEC at offset 777
 *   fd D  "direct" O_RDWR|O_DIRECT at offset 4096 (8 KiB written with O_DIRECT)
 *   fd E  "dir" O_RDONLY|O_DIRECTORY after reading the first entries with getdents64
 *   fd F  /dev/null O_WRONLY, fd G /dev/zero O_RDONLY, fd H /dev/urandom O_RDONLY|O_CLOEXEC
 *   fd I  "gone" O_RDWR at offset 5000, 200001 bytes with a hole, deleted; mode 0640
 *   fd J  the same deleted file opened again O_RDONLY (its own description, offset 10)
 *   fd K  "sub/gone2" O_WRONLY|O_APPEND, deleted, with 3 bytes
 *
 * After restore every fd has its flags, close-on-exec bit and offset; reads give the right
 * bytes; appends append; the devices are the devices; the deleted files have no name (and no
 * temporary name is left in their directories), their contents, a shared inode.
 */
#include "protocol.c"
#include <dirent.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#define NFILES 40
#define FLAGMASK (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DIRECT)

static unsigned char pat(long i) { return (unsigned char)(i * 7 + (i >> 8)); }

static int fa, fb, fc, fd_, fe, ff, fg, fh, fi, fj, fk;
static char seen[NFILES];

struct linux_dirent64 {
	unsigned long long d_ino;
	long long d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

/* Reads directory entries from fe with a small buffer; marks the f<N> names seen. */
static int read_dir_some(int max_calls)
{
	char buf[256];
	int calls = 0, total = 0;
	while (calls++ < max_calls) {
		long n = syscall(SYS_getdents64, fe, buf, sizeof(buf));
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		for (long off = 0; off < n;) {
			struct linux_dirent64 *d = (void *)(buf + off);
			int k;
			if (sscanf(d->d_name, "f%d", &k) == 1 && k >= 0 && k < NFILES) {
				if (seen[k])
					wl_fail("directory entry f%d read twice", k);
				seen[k] = 1;
			}
			total++;
			off += d->d_reclen;
		}
	}
	return total;
}

static void expect_flags(const char *name, int fd, int want, int cloexec)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0) {
		wl_fail("%s: fcntl: %s", name, strerror(errno));
		return;
	}
	if ((fl & FLAGMASK) != want)
		wl_fail("%s: flags %o, want %o", name, fl & FLAGMASK, want);
	int fdfl = fcntl(fd, F_GETFD);
	if (!!(fdfl & FD_CLOEXEC) != cloexec)
		wl_fail("%s: FD_CLOEXEC is %d", name, !!(fdfl & FD_CLOEXEC));
}

static void expect_pos(const char *name, int fd, off_t want)
{
	off_t p = lseek(fd, 0, SEEK_CUR);
	if (p != want)
		wl_fail("%s: offset %lld, want %lld", name, (long long)p, (long long)want);
}

static void expect_rdev(const char *name, int fd, unsigned maj, unsigned min)
{
	struct stat st;
	if (fstat(fd, &st) || !S_ISCHR(st.st_mode) || st.st_rdev != makedev(maj, min))
		wl_fail("%s: not the device %u:%u", name, maj, min);
}

static int no_temp_names(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int ok = 1;
	if (!d)
		return 0;
	while ((e = readdir(d)))
		if (strstr(e->d_name, "cryo") || strstr(e->d_name, "gone"))
			ok = 0;
	closedir(d);
	return ok;
}

int main(void)
{
	static unsigned char big[200001];
	char path[64];
	wl_init();

	for (long i = 0; i < 10000; i++)
		big[i] = pat(i);
	int w = open("data", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (w < 0 || write(w, big, 10000) != 10000)
		wl_die("data");
	close(w);

	fa = open("data", O_RDONLY);
	fb = open("log", O_WRONLY | O_APPEND | O_CREAT | O_TRUNC, 0644);
	fc = open("data", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	fd_ = open("direct", O_RDWR | O_CREAT | O_TRUNC | O_DIRECT, 0644);
	if (fa < 0 || fb < 0 || fc < 0 || fd_ < 0)
		wl_die("open files");
	lseek(fa, 1234, SEEK_SET);
	if (write(fb, "hello", 5) != 5)
		wl_die("write log");
	lseek(fc, 777, SEEK_SET);
	void *al;
	if (posix_memalign(&al, 4096, 8192))
		wl_die("memalign");
	memset(al, 0x5a, 8192);
	if (write(fd_, al, 8192) != 8192)
		wl_die("O_DIRECT write");
	lseek(fd_, 4096, SEEK_SET);

	if (mkdir("dir", 0755))
		wl_die("mkdir dir");
	for (int k = 0; k < NFILES; k++) {
		snprintf(path, sizeof(path), "dir/f%d", k);
		int t = open(path, O_WRONLY | O_CREAT, 0644);
		if (t < 0)
			wl_die("create dir entry");
		close(t);
	}
	fe = open("dir", O_RDONLY | O_DIRECTORY);
	if (fe < 0 || read_dir_some(2) <= 0)
		wl_die("getdents");

	ff = open("/dev/null", O_WRONLY);
	fg = open("/dev/zero", O_RDONLY);
	fh = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (ff < 0 || fg < 0 || fh < 0)
		wl_die("open devices");

	for (long i = 0; i < 100000; i++)
		big[i] = pat(i * 3);
	fi = open("gone", O_RDWR | O_CREAT | O_TRUNC, 0640);
	if (fi < 0 || write(fi, big, 100000) != 100000 || pwrite(fi, "!", 1, 200000) != 1)
		wl_die("gone");
	fchmod(fi, 0640);
	lseek(fi, 5000, SEEK_SET);
	fj = open("gone", O_RDONLY);
	lseek(fj, 10, SEEK_SET);
	if (mkdir("sub", 0755))
		wl_die("mkdir sub");
	fk = open("sub/gone2", O_WRONLY | O_APPEND | O_CREAT, 0600);
	if (fj < 0 || fk < 0 || write(fk, "abc", 3) != 3)
		wl_die("gone2");
	if (unlink("gone") || unlink("sub/gone2"))
		wl_die("unlink");

	wl_ready();
	wl_wait_check(NULL);

	expect_flags("data ro", fa, O_RDONLY, 0);
	expect_pos("data ro", fa, 1234);
	expect_flags("log", fb, O_WRONLY | O_APPEND, 0);
	expect_flags("data rw", fc, O_RDWR | O_NONBLOCK, 1);
	expect_pos("data rw", fc, 777);
	expect_flags("direct", fd_, O_RDWR | O_DIRECT, 0);
	expect_pos("direct", fd_, 4096);
	expect_flags("dir", fe, O_RDONLY, 0);
	expect_flags("null", ff, O_WRONLY, 0);
	expect_flags("zero", fg, O_RDONLY, 0);
	expect_flags("urandom", fh, O_RDONLY, 1);
	expect_flags("gone", fi, O_RDWR, 0);
	expect_pos("gone", fi, 5000);
	expect_flags("gone again", fj, O_RDONLY, 0);
	expect_pos("gone again", fj, 10);
	expect_flags("gone2", fk, O_WRONLY | O_APPEND, 0);

	unsigned char b[64];
	if (read(fa, b, 10) != 10)
		wl_fail("read data ro");
	for (int i = 0; i < 10; i++)
		if (b[i] != pat(1234 + i))
			wl_fail("data ro: byte %d wrong", 1234 + i);
	if (write(fb, "world", 5) != 5)
		wl_fail("append to log");
	int lr = open("log", O_RDONLY);
	if (lr < 0 || read(lr, b, 64) != 10 || memcmp(b, "helloworld", 10))
		wl_fail("log does not read helloworld");
	if (pread(fd_, al, 4096, 4096) != 4096 || ((unsigned char *)al)[100] != 0x5a)
		wl_fail("O_DIRECT pread");

	if (read_dir_some(1000) < 0)
		wl_fail("getdents after restore");
	for (int k = 0; k < NFILES; k++)
		if (!seen[k])
			wl_fail("directory entry f%d never read", k);

	if (write(ff, "x", 1) != 1)
		wl_fail("write /dev/null");
	memset(b, 1, sizeof(b));
	if (read(fg, b, 16) != 16 || b[0] || b[15])
		wl_fail("read /dev/zero");
	memset(b, 0, sizeof(b));
	if (read(fh, b, 32) != 32)
		wl_fail("read /dev/urandom");
	expect_rdev("null", ff, 1, 3);
	expect_rdev("zero", fg, 1, 5);
	expect_rdev("urandom", fh, 1, 9);

	struct stat si, sj;
	if (fstat(fi, &si) || fstat(fj, &sj))
		wl_fail("fstat gone");
	else {
		if (si.st_nlink != 0)
			wl_fail("gone has %lu links", (unsigned long)si.st_nlink);
		if (si.st_size != 200001)
			wl_fail("gone is %lld bytes", (long long)si.st_size);
		if ((si.st_mode & 07777) != 0640)
			wl_fail("gone has mode %o", si.st_mode & 07777);
		if (si.st_ino != sj.st_ino || si.st_dev != sj.st_dev)
			wl_fail("the two fds of gone are not the same file");
	}
	static unsigned char back[200001];
	if (pread(fj, back, sizeof(back), 0) != (ssize_t)sizeof(back))
		wl_fail("pread gone");
	else {
		for (long i = 0; i < 100000; i++)
			if (back[i] != pat(i * 3)) {
				wl_fail("gone: byte %ld wrong", i);
				break;
			}
		for (long i = 100000; i < 200000; i++)
			if (back[i]) {
				wl_fail("gone: hole byte %ld not zero", i);
				break;
			}
		if (back[200000] != '!')
			wl_fail("gone: last byte wrong");
	}
	if (pwrite(fi, "Z", 1, 7) != 1 || pread(fj, b, 1, 7) != 1 || b[0] != 'Z')
		wl_fail("a write through one fd of gone is not seen through the other");
	if (write(fk, "d", 1) != 1)
		wl_fail("append to gone2");
	struct stat sk;
	if (fstat(fk, &sk) || sk.st_size != 4 || sk.st_nlink != 0)
		wl_fail("gone2: size %lld links %lu", (long long)sk.st_size,
			(unsigned long)sk.st_nlink);
	if (!no_temp_names(".") || !no_temp_names("sub"))
		wl_fail("a name of a deleted file is visible");
	return wl_finish();
}
