//! Syscalls for open files and file-like kernel objects: comparing open file descriptions
//! (kcmp), peeking at pipe and socket buffers without consuming them (tee, MSG_PEEK with
//! SO_PEEK_OFF), querying and creating pipes, eventfds, timerfds, signalfds, epoll and
//! inotify instances, memfds and unix sockets, and resolving file handles. Thin wrappers that
//! return `SysResult` with the call name; callers add the fd, pid and path. Functions that
//! create objects return raw fd numbers, since their callers (a restore child building its fd
//! table) place them at exact numbers themselves.

use super::{check, SysError, SysResult};
use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn cstr(call: &'static str, s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| SysError::from_errno(call, libc::EINVAL))
}

fn ret_fd(call: &'static str, r: libc::c_long) -> SysResult<RawFd> {
    check(call, r).map(|f| f as RawFd)
}

/// `KCMP_FILE`: compares two open file descriptions.
const KCMP_FILE: i32 = 0;
/// `KCMP_EPOLL_TFD`: compares an open file with a file registered in an epoll instance.
const KCMP_EPOLL_TFD: i32 = 7;

/// `struct kcmp_epoll_slot`.
#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// kcmp(KCMP_FILE): whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file
/// description.
pub fn same_file(pid1: i32, fd1: RawFd, pid2: i32, fd2: RawFd) -> SysResult<bool> {
    // SAFETY: kcmp with KCMP_FILE takes two integer fd numbers; no pointers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    check("kcmp(KCMP_FILE)", r).map(|r| r == 0)
}

/// kcmp(KCMP_FILE) as an order: the kernel orders open file descriptions consistently (by
/// their obfuscated addresses), so descriptions can be sorted and searched with it.
pub fn file_order(pid1: i32, fd1: RawFd, pid2: i32, fd2: RawFd) -> SysResult<std::cmp::Ordering> {
    // SAFETY: kcmp with KCMP_FILE takes two integer fd numbers; no pointers.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    match check("kcmp(KCMP_FILE)", r)? {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(super::SysError::from_errno("kcmp(KCMP_FILE)", libc::EINVAL)),
    }
}

/// kcmp(KCMP_EPOLL_TFD): whether the file registered as `tfd` (the `toff`-th registration with
/// that number) in epoll instance `efd` of `pid` is the open file at fd `fd` of `pid`.
pub fn epoll_target_is(pid: i32, efd: RawFd, tfd: RawFd, toff: u32, fd: RawFd) -> SysResult<bool> {
    let slot = KcmpEpollSlot {
        efd: efd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: slot is a valid kcmp_epoll_slot that outlives the call; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            fd,
            &slot as *const KcmpEpollSlot,
        )
    };
    check("kcmp(KCMP_EPOLL_TFD)", r).map(|r| r == 0)
}

/// fcntl(F_GETFL).
pub fn status_flags(fd: RawFd) -> SysResult<i32> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check("fcntl(F_GETFL)", r as libc::c_long).map(|r| r as i32)
}

/// fcntl(F_SETFL).
pub fn set_status_flags(fd: RawFd, flags: i32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    check("fcntl(F_SETFL)", r as libc::c_long).map(drop)
}

/// `F_SETSIG`.
const F_SETSIG: i32 = 10;
/// `F_GETSIG`.
const F_GETSIG: i32 = 11;
/// `F_SETOWN_EX`.
const F_SETOWN_EX: i32 = 15;
/// `F_GETOWN_EX`.
const F_GETOWN_EX: i32 = 16;
/// `F_OWNER_TID`: a thread owns the file.
pub const F_OWNER_TID: i32 = 0;
/// `F_OWNER_PID`: a process owns the file.
pub const F_OWNER_PID: i32 = 1;
/// `F_OWNER_PGRP`: a process group owns the file.
pub const F_OWNER_PGRP: i32 = 2;

/// `struct f_owner_ex`.
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

/// The owner of an open file for SIGIO/SIGURG (F_GETOWN_EX) and the signal (F_GETSIG):
/// (owner type, pid, signal).
pub fn owner(fd: RawFd) -> SysResult<(i32, i32, i32)> {
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: o is a valid f_owner_ex the kernel writes.
    let r = unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut o as *mut FOwnerEx) };
    check("fcntl(F_GETOWN_EX)", r as libc::c_long)?;
    // SAFETY: plain syscall on integers.
    let sig = unsafe { libc::fcntl(fd, F_GETSIG) };
    let sig = check("fcntl(F_GETSIG)", sig as libc::c_long)? as i32;
    Ok((o.kind, o.pid, sig))
}

/// Sets the owner (F_SETOWN_EX) and the signal (F_SETSIG) of an open file.
pub fn set_owner(fd: RawFd, kind: i32, pid: i32, sig: i32) -> SysResult<()> {
    let o = FOwnerEx { kind, pid };
    // SAFETY: o is a valid f_owner_ex the kernel reads.
    let r = unsafe { libc::fcntl(fd, F_SETOWN_EX, &o as *const FOwnerEx) };
    check("fcntl(F_SETOWN_EX)", r as libc::c_long)?;
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, F_SETSIG, sig) };
    check("fcntl(F_SETSIG)", r as libc::c_long).map(drop)
}

/// The bytes waiting to be read (FIONREAD): a pipe's buffered data, an inotify queue's size.
pub fn bytes_queued(fd: RawFd) -> SysResult<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: n is a valid int the kernel writes.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    check("ioctl(FIONREAD)", r as libc::c_long).map(|_| n.max(0) as usize)
}

/// fcntl(F_GETPIPE_SZ).
pub fn pipe_size(fd: RawFd) -> SysResult<u32> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    check("fcntl(F_GETPIPE_SZ)", r as libc::c_long).map(|r| r as u32)
}

/// fcntl(F_SETPIPE_SZ); returns the size the kernel chose.
pub fn set_pipe_size(fd: RawFd, size: u32) -> SysResult<u32> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
    check("fcntl(F_SETPIPE_SZ)", r as libc::c_long).map(|r| r as u32)
}

/// pipe2(2) with `flags`: (read end, write end).
pub fn pipe2(flags: i32) -> SysResult<(RawFd, RawFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), flags) };
    check("pipe2", r as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// A pipe owned by cryo (both ends close on drop).
pub fn owned_pipe() -> SysResult<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    // SAFETY: pipe2 just returned these two fds; nobody else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// tee(2) without blocking: duplicates up to `len` bytes of pipe `from` into pipe `to`
/// without consuming them.
pub fn tee(from: RawFd, to: RawFd, len: usize) -> SysResult<usize> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::tee(from, to, len, libc::SPLICE_F_NONBLOCK) };
    check("tee", r as libc::c_long).map(|r| r as usize)
}

/// read(2) into `buf`; returns the byte count (0 at end of file).
pub fn read(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    check("read", r as libc::c_long).map(|r| r as usize)
}

/// pread(2) into `buf` at `offset`; returns the byte count.
pub fn pread(fd: RawFd, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let r = unsafe {
        libc::pread(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    };
    check("pread", r as libc::c_long).map(|r| r as usize)
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> SysResult<()> {
    while !data.is_empty() {
        // SAFETY: data is a valid slice for the duration of the call.
        let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        match check("write", r as libc::c_long) {
            Ok(0) => return Err(SysError::from_errno("write", libc::EIO)),
            Ok(n) => data = &data[n as usize..],
            Err(e) if e.errno == libc::EINTR => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fstat(2).
pub fn fstat(fd: RawFd) -> SysResult<libc::stat> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    let r = unsafe { libc::fstat(fd, &mut st) };
    check("fstat", r as libc::c_long).map(|_| st)
}

/// stat(2) of a path.
pub fn stat_path(path: &str) -> SysResult<libc::stat> {
    let c = cstr("stat", path)?;
    // SAFETY: stat is plain data; stat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string; st a valid out-pointer.
    let r = unsafe { libc::stat(c.as_ptr(), &mut st) };
    check("stat", r as libc::c_long).map(|_| st)
}

/// The filesystem magic (`f_type` of fstatfs).
pub fn fs_type(fd: RawFd) -> SysResult<i64> {
    // SAFETY: statfs is plain data; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    let r = unsafe { libc::fstatfs(fd, &mut st) };
    check("fstatfs", r as libc::c_long).map(|_| st.f_type)
}

/// ftruncate(2).
pub fn truncate(fd: RawFd, size: u64) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::ftruncate(fd, size as libc::off_t) };
    check("ftruncate", r as libc::c_long).map(drop)
}

/// fchmod(2).
pub fn chmod_fd(fd: RawFd, mode: u32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fchmod(fd, mode as libc::mode_t) };
    check("fchmod", r as libc::c_long).map(drop)
}

/// fchown(2).
pub fn chown_fd(fd: RawFd, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fchown(fd, uid, gid) };
    check("fchown", r as libc::c_long).map(drop)
}

/// unlink(2).
pub fn unlink(path: &str) -> SysResult<()> {
    let c = cstr("unlink", path)?;
    // SAFETY: c is a valid C string.
    let r = unsafe { libc::unlink(c.as_ptr()) };
    check("unlink", r as libc::c_long).map(drop)
}

/// memfd_create(2).
pub fn memfd_create(name: &str, flags: u32) -> SysResult<RawFd> {
    let c = cstr("memfd_create", name)?;
    // SAFETY: c is a valid C string.
    let r = unsafe { libc::memfd_create(c.as_ptr(), flags) };
    ret_fd("memfd_create", r as libc::c_long)
}

/// fcntl(F_GET_SEALS).
pub fn seals(fd: RawFd) -> SysResult<u32> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    check("fcntl(F_GET_SEALS)", r as libc::c_long).map(|r| r as u32)
}

/// fcntl(F_ADD_SEALS).
pub fn add_seals(fd: RawFd, seals: u32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals as libc::c_int) };
    check("fcntl(F_ADD_SEALS)", r as libc::c_long).map(drop)
}

/// eventfd2(2).
pub fn eventfd(initval: u32, flags: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::eventfd(initval, flags) };
    ret_fd("eventfd2", r as libc::c_long)
}

/// timerfd_create(2).
pub fn timerfd_create(clockid: i32, flags: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::timerfd_create(clockid, flags) };
    ret_fd("timerfd_create", r as libc::c_long)
}

fn timespec(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

/// timerfd_settime(2) with nanosecond values.
pub fn timerfd_settime(fd: RawFd, flags: i32, value_ns: u64, interval_ns: u64) -> SysResult<()> {
    let new = libc::itimerspec {
        it_interval: timespec(interval_ns),
        it_value: timespec(value_ns),
    };
    // SAFETY: new is a valid itimerspec; old may be NULL.
    let r = unsafe { libc::timerfd_settime(fd, flags, &new, std::ptr::null_mut()) };
    check("timerfd_settime", r as libc::c_long).map(drop)
}

/// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, u64)`.
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// Sets the expiration count of a timerfd (TFD_IOC_SET_TICKS; nonzero).
pub fn timerfd_set_ticks(fd: RawFd, ticks: u64) -> SysResult<()> {
    // SAFETY: the ioctl reads one u64 from a valid pointer.
    let r = unsafe { libc::ioctl(fd, TFD_IOC_SET_TICKS, &ticks as *const u64) };
    check("ioctl(TFD_IOC_SET_TICKS)", r as libc::c_long).map(drop)
}

/// clock_gettime(2) in nanoseconds.
pub fn clock_now_ns(clockid: i32) -> SysResult<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    let r = unsafe { libc::clock_gettime(clockid, &mut ts) };
    check("clock_gettime", r as libc::c_long)?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// signalfd(2) for a new fd with the signal set `mask` (bit N-1 for signal N).
pub fn signalfd(mask: u64, flags: i32) -> SysResult<RawFd> {
    // The kernel reads a 64-bit sigset_t.
    let set = mask;
    // SAFETY: set is 8 valid bytes; the kernel reads sizemask (8) bytes from it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1,
            &set as *const u64,
            std::mem::size_of::<u64>(),
            flags,
        )
    };
    ret_fd("signalfd4", r)
}

/// epoll_create1(2).
pub fn epoll_create(flags: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::epoll_create1(flags) };
    ret_fd("epoll_create1", r as libc::c_long)
}

/// epoll_ctl(EPOLL_CTL_ADD).
pub fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> SysResult<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event the kernel reads.
    let r = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    check("epoll_ctl(EPOLL_CTL_ADD)", r as libc::c_long).map(drop)
}

/// inotify_init1(2).
pub fn inotify_init(flags: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::inotify_init1(flags) };
    ret_fd("inotify_init1", r as libc::c_long)
}

/// inotify_add_watch(2); returns the watch descriptor.
pub fn inotify_add_watch(fd: RawFd, path: &str, mask: u32) -> SysResult<i32> {
    let c = cstr("inotify_add_watch", path)?;
    // SAFETY: c is a valid C string.
    let r = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    check("inotify_add_watch", r as libc::c_long).map(|r| r as i32)
}

/// inotify_rm_watch(2).
pub fn inotify_rm_watch(fd: RawFd, wd: i32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::inotify_rm_watch(fd, wd) };
    check("inotify_rm_watch", r as libc::c_long).map(drop)
}

/// open_by_handle_at(2): opens the file behind a file handle (`handle_type`, `handle`) on the
/// filesystem of `mount_fd`.
pub fn open_by_handle(
    mount_fd: RawFd,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> SysResult<OwnedFd> {
    if handle.len() > 128 {
        return Err(SysError::from_errno("open_by_handle_at", libc::EINVAL));
    }
    // struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes; u32 words keep
    // the header aligned.
    let mut buf = vec![0u32; 2 + handle.len().div_ceil(4)];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    // SAFETY: buf has 8 + handle.len() (rounded up) bytes; the copy stays inside it and the
    // regions do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            handle.as_ptr(),
            buf.as_mut_ptr().add(2).cast::<u8>(),
            handle.len(),
        );
    }
    // SAFETY: buf is a valid struct file_handle of the size its header announces.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd,
            buf.as_mut_ptr(),
            flags,
        )
    };
    let fd = ret_fd("open_by_handle_at", r)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// getsockopt(2) of an int option.
pub fn sockopt_int(fd: RawFd, level: i32, name: i32) -> SysResult<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid out-pointers of the sizes given.
    let r = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    check("getsockopt", r as libc::c_long).map(|_| v)
}

/// setsockopt(2) of an int option.
pub fn set_sockopt_int(fd: RawFd, level: i32, name: i32, v: i32) -> SysResult<()> {
    // SAFETY: v is a valid int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check("setsockopt", r as libc::c_long).map(drop)
}

/// recv(2) with MSG_PEEK | MSG_DONTWAIT (and the socket's peek offset), plus MSG_TRUNC when
/// `trunc` (datagrams: the return value is then the datagram's full length, of which at most
/// `buf.len()` bytes were copied). `None` when nothing more is queued.
pub fn peek(fd: RawFd, buf: &mut [u8], trunc: bool) -> SysResult<Option<usize>> {
    let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    if trunc {
        flags |= libc::MSG_TRUNC;
    }
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    match check("recv(MSG_PEEK)", r as libc::c_long) {
        Ok(n) => Ok(Some(n as usize)),
        Err(e) if e.errno == libc::EAGAIN => Ok(None),
        Err(e) => Err(e),
    }
}

/// send(2) of one whole message (a datagram, or stream data), without blocking.
pub fn send(fd: RawFd, data: &[u8]) -> SysResult<usize> {
    // SAFETY: data is a valid slice for the duration of the call.
    let r = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    check("send", r as libc::c_long).map(|r| r as usize)
}

/// socketpair(AF_UNIX, `kind`): two connected sockets.
pub fn unix_socketpair(kind: i32) -> SysResult<(RawFd, RawFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) };
    check("socketpair", r as libc::c_long)?;
    Ok((fds[0], fds[1]))
}

/// socket(AF_UNIX, `kind`).
pub fn unix_socket(kind: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::socket(libc::AF_UNIX, kind, 0) };
    ret_fd("socket", r as libc::c_long)
}

fn sockaddr_un(name: &[u8]) -> SysResult<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if name.len() > a.sun_path.len() {
        return Err(SysError::from_errno("sockaddr_un", libc::ENAMETOOLONG));
    }
    for (d, s) in a.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + name.len();
    Ok((a, len as libc::socklen_t))
}

/// bind(2) of a unix socket to `name` (a path, or an abstract name starting with NUL), as
/// the kernel reports it (without a trailing NUL).
pub fn unix_bind(fd: RawFd, name: &[u8]) -> SysResult<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: a is a valid sockaddr_un of at least len bytes.
    let r = unsafe { libc::bind(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    check("bind", r as libc::c_long).map(drop)
}

/// connect(2) of a unix socket to `name`.
pub fn unix_connect(fd: RawFd, name: &[u8]) -> SysResult<()> {
    let (a, len) = sockaddr_un(name)?;
    // SAFETY: a is a valid sockaddr_un of at least len bytes.
    let r = unsafe { libc::connect(fd, (&a as *const libc::sockaddr_un).cast(), len) };
    check("connect", r as libc::c_long).map(drop)
}

/// listen(2).
pub fn listen(fd: RawFd, backlog: i32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::listen(fd, backlog) };
    check("listen", r as libc::c_long).map(drop)
}

/// shutdown(2).
pub fn shutdown(fd: RawFd, how: i32) -> SysResult<()> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::shutdown(fd, how) };
    check("shutdown", r as libc::c_long).map(drop)
}

/// The address a unix socket is bound to (getsockname), without the family; empty when
/// unbound.
pub fn unix_name(fd: RawFd) -> SysResult<Vec<u8>> {
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: a and len are valid out-pointers of the sizes given.
    let r = unsafe { libc::getsockname(fd, (&mut a as *mut libc::sockaddr_un).cast(), &mut len) };
    check("getsockname", r as libc::c_long)?;
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let mut name: Vec<u8> = a.sun_path[..n.min(a.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .collect();
    // A path name may come back with its terminating NUL.
    if name.first().is_some_and(|&c| c != 0) {
        while name.last() == Some(&0) {
            name.pop();
        }
    }
    Ok(name)
}

/// The address family of a socket (SO_DOMAIN).
pub fn socket_domain(fd: RawFd) -> SysResult<i32> {
    sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// What sock_diag reports about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub kind: u8,
    /// TCP_ESTABLISHED (1), TCP_CLOSE (7), TCP_LISTEN (10), ...
    pub state: u8,
    /// The socket's inode.
    pub ino: u32,
    /// The bound name as the kernel keeps it (a path with its NUL, or NUL + abstract name).
    pub name: Option<Vec<u8>>,
    /// The socket file of a path-bound socket: (inode, device in the kernel's encoding).
    pub vfs: Option<(u32, u32)>,
    /// The peer's inode (0 when the peer is closed).
    pub peer: Option<u32>,
    /// Connections waiting to be accepted (listening sockets): their inodes.
    pub icons: Vec<u32>,
    /// (receive queue, send queue); for a listening socket (backlog, max backlog).
    pub rqlen: Option<(u32, u32)>,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: Option<u8>,
}

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// UDIAG_SHOW_NAME | VFS | PEER | ICONS | RQLEN, and SHUTDOWN (0x80, no flag: always sent).
const UDIAG_SHOW: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x10;

/// Asks sock_diag (NETLINK_SOCK_DIAG) about the unix socket with inode `ino` in cryo's network
/// namespace.
pub fn unix_diag(ino: u32) -> SysResult<UnixDiag> {
    // SAFETY: plain syscall on integers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    let fd = ret_fd("socket(NETLINK_SOCK_DIAG)", fd as libc::c_long)?;
    // SAFETY: fd was just created and is owned here only.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + unix_diag_req (24 bytes).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[24..28].copy_from_slice(&ino.to_ne_bytes());
    req[28..32].copy_from_slice(&UDIAG_SHOW.to_ne_bytes());
    req[32..40].copy_from_slice(&[0xff; 8]); // no cookie
                                             // SAFETY: sockaddr_nl is plain data; zero means the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: req and kernel are valid for the sizes given.
    let r = unsafe {
        libc::sendto(
            fd,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    check("sendto(sock_diag)", r as libc::c_long)?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is a valid writable buffer.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
    let n = check("recv(sock_diag)", n as libc::c_long)? as usize;
    drop(sock);
    parse_unix_diag(&buf[..n])
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

/// Parses one sock_diag answer for a unix socket (a netlink message with a unix_diag_msg and
/// its attributes, or a netlink error).
pub fn parse_unix_diag(b: &[u8]) -> SysResult<UnixDiag> {
    let bad = || SysError::from_errno("sock_diag answer", libc::EPROTO);
    let len = u32_at(b, 0).ok_or_else(bad)? as usize;
    let kind = u16_at(b, 4).ok_or_else(bad)?;
    if len > b.len() || len < 16 {
        return Err(bad());
    }
    let b = &b[..len];
    if kind == NLMSG_ERROR {
        let err = i32::from_ne_bytes(
            b.get(16..20)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        return Err(SysError::from_errno("sock_diag", -err));
    }
    if kind != SOCK_DIAG_BY_FAMILY || b.len() < 32 {
        return Err(bad());
    }
    let mut d = UnixDiag {
        kind: b[17],
        state: b[18],
        ino: u32_at(b, 20).ok_or_else(bad)?,
        ..Default::default()
    };
    let mut i = 32;
    while i + 4 <= b.len() {
        let alen = u16_at(b, i).ok_or_else(bad)? as usize;
        let atype = u16_at(b, i + 2).ok_or_else(bad)?;
        if alen < 4 || i + alen > b.len() {
            return Err(bad());
        }
        let v = &b[i + 4..i + alen];
        match atype {
            0 => d.name = Some(v.to_vec()),
            1 => d.vfs = Some((u32_at(v, 0).ok_or_else(bad)?, u32_at(v, 4).ok_or_else(bad)?)),
            2 => d.peer = Some(u32_at(v, 0).ok_or_else(bad)?),
            3 => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
            4 => d.rqlen = Some((u32_at(v, 0).ok_or_else(bad)?, u32_at(v, 4).ok_or_else(bad)?)),
            6 => d.shutdown = v.first().copied(),
            _ => {}
        }
        i += (alen + 3) & !3;
    }
    Ok(d)
}

/// flock(2) without blocking: `exclusive` for LOCK_EX, else LOCK_SH.
pub fn flock(fd: RawFd, exclusive: bool) -> SysResult<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::flock(fd, op | libc::LOCK_NB) };
    check("flock", r as libc::c_long).map(drop)
}

/// Takes a record lock without blocking: an open file description lock (F_OFD_SETLK) when
/// `ofd`, else a POSIX lock of the calling process (F_SETLK). `len` 0 means to end of file.
pub fn record_lock(fd: RawFd, ofd: bool, write: bool, start: u64, len: u64) -> SysResult<()> {
    // SAFETY: flock is plain data; all-zero is valid (l_pid must be 0 for OFD locks).
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = if write { libc::F_WRLCK } else { libc::F_RDLCK } as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l.l_start = start as libc::off_t;
    l.l_len = len as libc::off_t;
    let (cmd, call) = if ofd {
        (libc::F_OFD_SETLK, "fcntl(F_OFD_SETLK)")
    } else {
        (libc::F_SETLK, "fcntl(F_SETLK)")
    };
    // SAFETY: l is a valid struct flock the kernel reads.
    let r = unsafe { libc::fcntl(fd, cmd, &l as *const libc::flock) };
    check(call, r as libc::c_long).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(t: u16, v: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&t.to_ne_bytes());
        a.extend_from_slice(v);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn unix_diag_answers() {
        let mut body = vec![libc::AF_UNIX as u8, libc::SOCK_STREAM as u8, 10, 0];
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend(attr(0, b"/tmp/sock\0"));
        let mut vfs = 77u32.to_ne_bytes().to_vec();
        vfs.extend_from_slice(&0xfe0_0000u32.to_ne_bytes());
        body.extend(attr(1, &vfs));
        body.extend(attr(2, &0u32.to_ne_bytes()));
        body.extend(attr(3, &[5, 0, 0, 0, 6, 0, 0, 0]));
        let mut rq = 0u32.to_ne_bytes().to_vec();
        rq.extend_from_slice(&128u32.to_ne_bytes());
        body.extend(attr(4, &rq));
        body.extend(attr(6, &[2]));
        let d = parse_unix_diag(&message(SOCK_DIAG_BY_FAMILY, &body)).unwrap();
        assert_eq!(d.kind, libc::SOCK_STREAM as u8);
        assert_eq!(d.state, 10);
        assert_eq!(d.ino, 4242);
        assert_eq!(d.name.as_deref(), Some(&b"/tmp/sock\0"[..]));
        assert_eq!(d.vfs, Some((77, 0xfe0_0000)));
        assert_eq!(d.peer, Some(0));
        assert_eq!(d.icons, [5, 6]);
        assert_eq!(d.rqlen, Some((0, 128)));
        assert_eq!(d.shutdown, Some(2));

        let err = parse_unix_diag(&message(NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes()));
        assert_eq!(err.unwrap_err().errno, libc::ENOENT);
        assert!(parse_unix_diag(&[1, 2, 3]).is_err());
        let mut bad = message(SOCK_DIAG_BY_FAMILY, &body);
        bad.truncate(bad.len() - 4);
        let len = bad.len() as u32;
        bad[0..4].copy_from_slice(&len.to_ne_bytes());
        assert!(parse_unix_diag(&bad).is_err());
    }
}
