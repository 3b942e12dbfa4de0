//! Syscalls a freshly forked restore child runs on itself before the restorer takes it over
//! (fd table, cwd, umask, rlimits, name, tracing), and small process helpers for the parent.

use super::{check, SysError, SysResult};
use std::ffi::CString;
use std::os::fd::RawFd;

fn cstr(call: &'static str, s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| SysError::from_errno(call, libc::EINVAL))
}

/// open(2) with raw flags and mode; returns the new fd.
pub fn open(path: &str, flags: i32, mode: u32) -> SysResult<RawFd> {
    let c = cstr("open", path)?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags, mode as libc::c_uint) };
    check("open", fd as libc::c_long).map(|f| f as RawFd)
}

/// dup2(2) (a no-op when `old == new`, except that it checks `old` is open).
pub fn dup2(old: RawFd, new: RawFd) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::dup2(old, new) };
    check("dup2", r as libc::c_long).map(drop)
}

/// fcntl(F_DUPFD_CLOEXEC): a copy of `fd` at the lowest number >= `min`.
pub fn dup_above(fd: RawFd, min: RawFd) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    check("fcntl(F_DUPFD_CLOEXEC)", r as libc::c_long).map(|f| f as RawFd)
}

/// Sets or clears FD_CLOEXEC.
pub fn set_cloexec(fd: RawFd, on: bool) -> SysResult<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFD, flag) };
    check("fcntl(F_SETFD)", r as libc::c_long).map(drop)
}

/// close(2), ignoring the result.
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd number the caller owns; errors are irrelevant here.
    unsafe { libc::close(fd) };
}

/// lseek(2) to an absolute offset.
pub fn seek(fd: RawFd, pos: u64) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_SET) };
    check("lseek", r as libc::c_long).map(drop)
}

/// The fds open in the calling process (from /proc/self/fd).
pub fn own_fds() -> Vec<RawFd> {
    let mut v: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Closes every fd of the calling process except `keep`, with close_range(2) over the gaps
/// between them (Linux 5.9; no listing of /proc/self/fd). Falls back to closing what
/// /proc/self/fd lists where close_range is missing.
pub fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= 0).collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: u32 = 0;
    for bound in keep.iter().map(|&k| Some(k as u32)).chain([None]) {
        let to = match bound {
            Some(0) => {
                from = 1;
                continue;
            }
            Some(k) => k - 1,
            None => u32::MAX,
        };
        if from <= to {
            // SAFETY: close_range takes plain integers; closing fds this process owns.
            let r = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0u32) };
            if r != 0 {
                for fd in own_fds() {
                    if !keep.contains(&fd) {
                        close(fd);
                    }
                }
                return;
            }
        }
        if let Some(k) = bound {
            from = k + 1;
        }
    }
}

/// Maps `len` bytes of private anonymous read-write-execute memory at exactly `addr` (never
/// over an existing mapping) and copies `code` to its start.
pub fn map_code(addr: u64, len: u64, code: &[u8]) -> SysResult<()> {
    if code.len() as u64 > len {
        return Err(SysError::from_errno("mmap", libc::EINVAL));
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; the result is checked.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(SysError::last("mmap"));
    }
    if p as u64 != addr {
        // An old kernel without MAP_FIXED_NOREPLACE took it as a hint.
        // SAFETY: unmapping what was just mapped.
        unsafe { libc::munmap(p, len as usize) };
        return Err(SysError::from_errno("mmap", libc::EEXIST));
    }
    // SAFETY: p is a fresh writable mapping of len >= code.len() bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p.cast::<u8>(), code.len()) };
    Ok(())
}

/// chdir(2).
pub fn chdir(path: &str) -> SysResult<()> {
    let c = cstr("chdir", path)?;
    // SAFETY: c is a valid C string.
    let r = unsafe { libc::chdir(c.as_ptr()) };
    check("chdir", r as libc::c_long).map(drop)
}

/// chroot(2).
pub fn chroot(path: &str) -> SysResult<()> {
    let c = cstr("chroot", path)?;
    // SAFETY: c is a valid C string.
    let r = unsafe { libc::chroot(c.as_ptr()) };
    check("chroot", r as libc::c_long).map(drop)
}

/// umask(2).
pub fn umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// prlimit64(2) on the calling process.
pub fn set_rlimit(resource: u32, cur: u64, max: u64) -> SysResult<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: new is a valid rlimit64; old may be NULL.
    let r = unsafe { libc::prlimit64(0, resource as _, &new, std::ptr::null_mut()) };
    check("prlimit64", r as libc::c_long).map(drop)
}

/// The calling process's rlimit.
pub fn get_rlimit(resource: u32) -> SysResult<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: old is a valid out-pointer.
    let r = unsafe { libc::prlimit64(0, resource as _, std::ptr::null(), &mut old) };
    check("prlimit64", r as libc::c_long)?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// PR_SET_NAME.
pub fn set_comm(name: &str) -> SysResult<()> {
    let c = cstr("prctl(PR_SET_NAME)", name)?;
    // SAFETY: c is a valid C string; the kernel copies at most 16 bytes.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    check("prctl(PR_SET_NAME)", r as libc::c_long).map(drop)
}

/// PR_SET_PDEATHSIG.
pub fn set_pdeathsig(sig: i32) -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
    check("prctl(PR_SET_PDEATHSIG)", r as libc::c_long).map(drop)
}

/// PTRACE_TRACEME followed by raise(SIGSTOP): hands the calling process to its parent.
pub fn trace_me_and_stop() -> SysResult<()> {
    // SAFETY: PTRACE_TRACEME takes no pointers.
    let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
    check("ptrace(PTRACE_TRACEME)", r)?;
    // SAFETY: raise with a valid signal number.
    let r = unsafe { libc::raise(libc::SIGSTOP) };
    check("raise(SIGSTOP)", r as libc::c_long).map(drop)
}

/// _exit(2): leaves the process without running destructors or atexit handlers (used by a
/// forked child that failed).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is async-signal-safe.
    unsafe { libc::_exit(code) }
}

/// write(2) of the whole buffer, best effort (used for the child's error report).
pub fn write_all(fd: RawFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for the duration of the call.
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        buf = &buf[n as usize..];
    }
}

/// pipe2(O_CLOEXEC): (read end, write end).
pub fn pipe() -> SysResult<(RawFd, RawFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check("pipe2", r as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// isatty(3).
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// Reads `fd` to its end as (lossy) UTF-8, best effort; the fd stays open.
pub fn read_to_string(fd: RawFd) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads `fd` to its end, handing each complete line (without its newline) to `on_line` as
/// soon as it arrives; a last line without a newline is handed over at the end.
pub fn read_lines(fd: RawFd, mut on_line: impl FnMut(&str)) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            on_line(&String::from_utf8_lossy(&line[..i]));
        }
    }
    if !pending.is_empty() {
        on_line(&String::from_utf8_lossy(&pending));
    }
}

/// Reads up to `n` bytes from `fd`, waiting at most `timeout_ms` in all (poll); fewer bytes
/// are returned at end of file, ETIMEDOUT when the time is up first.
pub fn read_bytes_timeout(fd: RawFd, n: usize, timeout_ms: u64) -> SysResult<Vec<u8>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(SysError::from_errno("poll", libc::ETIMEDOUT));
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        check("poll", r as libc::c_long)?;
        if r == 0 {
            continue;
        }
        // SAFETY: out[got..] is a valid writable buffer of n - got bytes.
        let k = unsafe { libc::read(fd, out[got..].as_mut_ptr().cast(), n - got) };
        if k < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        let k = check("read", k as libc::c_long)? as usize;
        if k == 0 {
            break;
        }
        got += k;
    }
    out.truncate(got);
    Ok(out)
}

/// fcntl(F_SETFL).
pub fn set_status_flags(fd: RawFd, flags: i32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    check("fcntl(F_SETFL)", r as libc::c_long).map(drop)
}

/// setsid(2).
pub fn setsid() -> SysResult<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::setsid() };
    check("setsid", r as libc::c_long).map(drop)
}

/// setpgid(0, pgid): join (or with 0, lead) a process group.
pub fn setpgid(pgid: i32) -> SysResult<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::setpgid(0, pgid) };
    check("setpgid", r as libc::c_long).map(drop)
}

/// setpgid(pid, pgid) on a child.
pub fn setpgid_of(pid: i32, pgid: i32) -> SysResult<()> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::setpgid(pid, pgid) };
    check("setpgid", r as libc::c_long).map(drop)
}

/// Waits for signals forever (a restore child waiting to be taken over).
pub fn pause_forever() -> ! {
    loop {
        // SAFETY: pause has no arguments.
        unsafe { libc::pause() };
    }
}

/// Ends the calling process so that its parent sees `status` (a waitpid status word): an exit
/// code, or death by a signal (with the signal's default action, and no core dump).
pub fn die_with_status(status: i32) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let _ = set_rlimit(libc::RLIMIT_CORE, 0, 0);
        // SAFETY: resetting a disposition, unblocking every signal and signalling ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_UNBLOCK, &all, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
        }
        exit_now(128 + sig)
    }
    exit_now(libc::WEXITSTATUS(status))
}

/// memfd_create(2) with MFD_CLOEXEC, as a File.
pub fn memfd_create(name: &str) -> SysResult<std::fs::File> {
    use std::os::fd::FromRawFd;
    let c = cstr("memfd_create", name)?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    let fd = check("memfd_create", fd as libc::c_long)? as RawFd;
    // SAFETY: the kernel returned a new fd that nobody else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// An executable memory file holding `bytes` (close-on-exec), for [`exec_fd`]. Asks for
/// MFD_EXEC where the kernel knows it (it may refuse to execute memory files otherwise).
pub fn exec_memfd(bytes: &[u8]) -> SysResult<RawFd> {
    const MFD_EXEC: libc::c_uint = 0x10;
    let name = c"cryo-stub";
    // SAFETY: name is a valid C string.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | MFD_EXEC) };
    if fd < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above (a kernel before MFD_EXEC).
        fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    }
    let fd = check("memfd_create", fd as libc::c_long)? as RawFd;
    write_all(fd, bytes);
    // SAFETY: fstat into a zeroed stat of our own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is ours, st a valid out-pointer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    if r != 0 || st.st_size != bytes.len() as i64 {
        close(fd);
        return Err(SysError::from_errno("write(memfd)", libc::EIO));
    }
    Ok(fd)
}

/// execveat(fd, "", AT_EMPTY_PATH) with no arguments or environment. Returns only on failure.
pub fn exec_fd(fd: RawFd) -> SysError {
    let argv: [*const libc::c_char; 2] = [c"cryo-stub".as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: the path, argv and envp are valid NUL-terminated arrays for the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    SysError::last("execveat")
}

/// A private anonymous mapping, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// `len` bytes of fresh anonymous memory (reserved, not populated).
    pub fn anon(len: usize) -> SysResult<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; it aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(SysError::last("mmap"));
        }
        Ok(Self { ptr: p.cast(), len })
    }

    /// The mapping's bytes.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is our own live mapping, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_all_but_keeps_exactly_those() {
        // In a child: the test harness's own fds must survive.
        // SAFETY: the child only makes async-signal-safe syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: plain syscalls on integers.
            let open = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
            // SAFETY: dup2 of stdin onto free numbers.
            unsafe {
                for fd in [5, 6, 40, 41, 100] {
                    libc::dup2(0, fd);
                }
            }
            close_all_but(&[0, 6, 41, 41, -1]);
            let want = [
                (0, true),
                (1, false),
                (2, false),
                (5, false),
                (6, true),
                (40, false),
            ];
            let ok = want.iter().all(|&(fd, o)| open(fd) == o) && open(41) && !open(100);
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
