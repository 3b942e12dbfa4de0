//! Terminal ioctls: pseudo-terminal pairs (number, peer, lock, packet mode), termios2, window
//! size, foreground process group and controlling terminal. Thin wrappers returning
//! `SysResult` with the call name.

use super::{check, SysResult};
use std::os::fd::RawFd;

const TIOCGPTN: libc::c_ulong = 0x8004_5430;
const TIOCSPTLCK: libc::c_ulong = 0x4004_5431;
const TIOCGPTLCK: libc::c_ulong = 0x8004_5439;
const TIOCPKT: libc::c_ulong = 0x5420;
const TIOCGPKT: libc::c_ulong = 0x8004_5438;
const TIOCGPTPEER: libc::c_ulong = 0x5441;
const TCGETS2: libc::c_ulong = 0x802c_542a;
const TCSETS2: libc::c_ulong = 0x402c_542b;
/// Size of `struct termios2` on x86_64.
pub const TERMIOS2_LEN: usize = 44;

/// An ioctl that reads one int.
fn get_int(fd: RawFd, req: libc::c_ulong, call: &'static str) -> SysResult<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: this ioctl writes one int to the pointer given.
    let r = unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) };
    check(call, r as libc::c_long).map(|_| v)
}

/// An ioctl that reads one int from the pointer given.
fn set_int(fd: RawFd, req: libc::c_ulong, v: i32, call: &'static str) -> SysResult<()> {
    let v: libc::c_int = v;
    // SAFETY: this ioctl reads one int from the pointer given.
    let r = unsafe { libc::ioctl(fd, req, &v as *const libc::c_int) };
    check(call, r as libc::c_long).map(drop)
}

/// TIOCGPTN: the number N of the pair's /dev/pts/N.
pub fn pty_number(master: RawFd) -> SysResult<u32> {
    get_int(master, TIOCGPTN, "ioctl(TIOCGPTN)").map(|v| v as u32)
}

/// FIONREAD: bytes waiting to be read.
pub fn bytes_to_read(fd: RawFd) -> SysResult<u32> {
    get_int(fd, libc::FIONREAD, "ioctl(FIONREAD)").map(|v| v.max(0) as u32)
}

/// TIOCGPTPEER: opens the slave of `master` with `flags`, without a path lookup.
pub fn open_peer(master: RawFd, flags: i32) -> SysResult<RawFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument and returns a new fd.
    let r = unsafe { libc::ioctl(master, TIOCGPTPEER, flags as libc::c_ulong) };
    check("ioctl(TIOCGPTPEER)", r as libc::c_long).map(|fd| fd as RawFd)
}

/// Opens a new pseudo-terminal master (/dev/ptmx) with `flags` | O_NOCTTY.
pub fn open_master(flags: i32) -> SysResult<RawFd> {
    // SAFETY: the path is a NUL-terminated literal.
    let r = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags | libc::O_NOCTTY) };
    check("open(/dev/ptmx)", r as libc::c_long).map(|fd| fd as RawFd)
}

/// TCGETS2: the termios2 bytes.
pub fn termios(fd: RawFd) -> SysResult<Vec<u8>> {
    let mut b = vec![0u8; TERMIOS2_LEN];
    // SAFETY: TCGETS2 writes a struct termios2 (TERMIOS2_LEN bytes) to the buffer.
    let r = unsafe { libc::ioctl(fd, TCGETS2, b.as_mut_ptr()) };
    check("ioctl(TCGETS2)", r as libc::c_long).map(|_| b)
}

/// TCSETS2 with saved termios2 bytes.
pub fn set_termios(fd: RawFd, t: &[u8]) -> SysResult<()> {
    if t.len() != TERMIOS2_LEN {
        return Err(super::SysError::from_errno("ioctl(TCSETS2)", libc::EINVAL));
    }
    // SAFETY: TCSETS2 reads a struct termios2 (TERMIOS2_LEN bytes, checked) from the buffer.
    let r = unsafe { libc::ioctl(fd, TCSETS2, t.as_ptr()) };
    check("ioctl(TCSETS2)", r as libc::c_long).map(drop)
}

/// TIOCGWINSZ.
pub fn winsize(fd: RawFd) -> SysResult<libc::winsize> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a struct winsize to the pointer given.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    check("ioctl(TIOCGWINSZ)", r as libc::c_long).map(|_| ws)
}

/// TIOCSWINSZ.
pub fn set_winsize(fd: RawFd, ws: &libc::winsize) -> SysResult<()> {
    // SAFETY: TIOCSWINSZ reads a struct winsize from the pointer given.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, ws as *const libc::winsize) };
    check("ioctl(TIOCSWINSZ)", r as libc::c_long).map(drop)
}

/// TIOCGPKT: whether the master is in packet mode.
pub fn packet_mode(master: RawFd) -> SysResult<bool> {
    get_int(master, TIOCGPKT, "ioctl(TIOCGPKT)").map(|v| v != 0)
}

/// TIOCPKT: sets packet mode on the master.
pub fn set_packet_mode(master: RawFd, on: bool) -> SysResult<()> {
    set_int(master, TIOCPKT, i32::from(on), "ioctl(TIOCPKT)")
}

/// TIOCGPTLCK: whether the slave is locked.
pub fn locked(master: RawFd) -> SysResult<bool> {
    get_int(master, TIOCGPTLCK, "ioctl(TIOCGPTLCK)").map(|v| v != 0)
}

/// TIOCSPTLCK: locks or unlocks the slave.
pub fn set_locked(master: RawFd, on: bool) -> SysResult<()> {
    set_int(master, TIOCSPTLCK, i32::from(on), "ioctl(TIOCSPTLCK)")
}

/// TIOCGPGRP: the terminal's foreground process group.
pub fn foreground_group(fd: RawFd) -> SysResult<i32> {
    get_int(fd, libc::TIOCGPGRP, "ioctl(TIOCGPGRP)")
}

/// TIOCSCTTY: makes the terminal the calling session leader's controlling terminal.
pub fn set_controlling(fd: RawFd) -> SysResult<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
    let r = unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0 as libc::c_ulong) };
    check("ioctl(TIOCSCTTY)", r as libc::c_long).map(drop)
}
