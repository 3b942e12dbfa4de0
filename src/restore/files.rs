//! Restoring the fd table of a restore child: every saved fd at its number, with its flags,
//! offset and close-on-exec bit; regular files, directories, FIFOs and character devices are
//! reopened by path, a terminal is inherited from cryo (`--shell-job`). Runs inside the
//! forked child before it stops for the restorer; errors are messages for the parent.

use crate::proto::{FdEntry, FdKind};
use crate::sys::task;
use std::os::fd::RawFd;

/// Open flags that are carried over when a file is reopened.
const REOPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_DIRECTORY
    | libc::O_LARGEFILE
    | libc::O_PATH
    | libc::O_SYNC
    | libc::O_DSYNC;

/// Installs `fds` in the calling process: every other fd is closed except `report_fd`, which
/// is moved above the saved fd numbers, and `keep` (fds cryo prepared for the restorer, all
/// above every saved fd). Returns the report fd's new number.
pub fn install_fds(fds: &[FdEntry], report_fd: RawFd, keep: &[RawFd]) -> Result<RawFd, String> {
    let max_target = fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let high = max_target.max(2) + 1;
    let report = task::dup_above(report_fd, high).map_err(|e| e.to_string())?;

    // Terminals inherited from cryo (shell job): park them above the target's numbers first.
    let mut parked: Vec<(i32, RawFd)> = Vec::new();
    for f in fds.iter().filter(|f| f.kind() == FdKind::FdTty) {
        let src = if task::is_tty(f.fd) {
            f.fd
        } else {
            (0..3).find(|&fd| task::is_tty(fd)).ok_or_else(|| {
                format!(
                    "fd {} was the terminal {} but cryo has no terminal to give it",
                    f.fd, f.path
                )
            })?
        };
        let p = task::dup_above(src, high).map_err(|e| format!("fd {}: {e}", f.fd))?;
        parked.push((f.fd, p));
    }
    let keep: Vec<RawFd> = parked
        .iter()
        .map(|p| p.1)
        .chain([report])
        .chain(keep.iter().copied())
        .collect();
    for fd in task::own_fds() {
        if !keep.contains(&fd) {
            task::close(fd);
        }
    }
    for f in fds {
        match f.kind() {
            FdKind::FdTty => {
                let src = parked
                    .iter()
                    .find(|p| p.0 == f.fd)
                    .map(|p| p.1)
                    .ok_or_else(|| format!("fd {}: terminal not prepared", f.fd))?;
                place(src, f)?;
            }
            FdKind::FdReg | FdKind::FdChr => {
                let flags = f.flags as i32 & REOPEN_FLAGS;
                let fifo = f.mode & libc::S_IFMT == libc::S_IFIFO;
                // A FIFO is opened non-blocking (a blocking open would wait for a peer) and
                // gets its own flags back right after.
                let open_flags = if fifo {
                    flags | libc::O_NONBLOCK
                } else {
                    flags
                };
                let fd = task::open(&f.path, open_flags, 0)
                    .map_err(|e| format!("fd {}: reopening {}: {e}", f.fd, f.path))?;
                if fifo {
                    task::set_status_flags(fd, flags)
                        .map_err(|e| format!("fd {}: restoring flags of {}: {e}", f.fd, f.path))?;
                }
                place(fd, f)?;
                if f.kind() == FdKind::FdReg && f.mode & libc::S_IFMT == libc::S_IFREG {
                    task::seek(f.fd, f.pos).map_err(|e| {
                        format!("fd {}: seeking {} to {}: {e}", f.fd, f.path, f.pos)
                    })?;
                }
            }
            FdKind::FdPipe => {
                return Err(format!("fd {}: pipes are not supported yet", f.fd));
            }
        }
    }
    for (_, p) in parked {
        task::close(p);
    }
    Ok(report)
}

/// Moves `src` to the saved fd number with the saved close-on-exec flag.
fn place(src: RawFd, f: &FdEntry) -> Result<(), String> {
    if src != f.fd {
        task::dup2(src, f.fd).map_err(|e| format!("fd {}: {e}", f.fd))?;
        task::close(src);
    }
    task::set_cloexec(f.fd, f.cloexec).map_err(|e| format!("fd {}: {e}", f.fd))
}
