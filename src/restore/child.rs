//! What a freshly forked restore child does to itself before handing itself to the restorer:
//! its fd table (every saved fd at its number, at its offset, with its flags; the terminal
//! inherited from cryo with `--shell-job`), cwd, umask, rlimits and name. Runs in the child
//! between fork and `PTRACE_TRACEME`; reports failure as a message to the parent.

use super::ProcessImage;
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

/// Prepares the child and stops it for the restorer. Returns only on failure, with a message.
pub fn prepare_and_stop(img: &ProcessImage, report_fd: RawFd) -> String {
    match prepare(img, report_fd) {
        Ok(report_fd) => {
            task::close(report_fd);
            match task::trace_me_and_stop() {
                Ok(()) => String::new(),
                Err(e) => format!("pid {}: {e}", img.pid()),
            }
        }
        Err(msg) => format!("pid {}: {msg}", img.pid()),
    }
}

fn prepare(img: &ProcessImage, report_fd: RawFd) -> Result<RawFd, String> {
    task::set_pdeathsig(libc::SIGKILL).map_err(|e| e.to_string())?;
    let max_target = img.fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let high = max_target.max(2) + 1;
    let report = task::dup_above(report_fd, high).map_err(|e| e.to_string())?;

    // Terminals inherited from cryo (shell job): park them above the target's numbers first.
    let mut parked: Vec<(i32, RawFd)> = Vec::new();
    for f in img.fds.iter().filter(|f| f.kind() == FdKind::FdTty) {
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
    let keep: Vec<RawFd> = parked.iter().map(|p| p.1).chain([report]).collect();
    for fd in task::own_fds() {
        if !keep.contains(&fd) {
            task::close(fd);
        }
    }
    for f in &img.fds {
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
    let core = &img.core;
    if !core.root.is_empty() && core.root != "/" {
        task::chroot(&core.root).map_err(|e| format!("chroot({}): {e}", core.root))?;
    }
    if !core.cwd.is_empty() {
        task::chdir(&core.cwd).map_err(|e| format!("chdir({}): {e}", core.cwd))?;
    }
    task::umask(core.umask);
    for r in &core.rlimits {
        let (_, our_max) = task::get_rlimit(r.resource).map_err(|e| e.to_string())?;
        // Raising a hard limit needs CAP_SYS_RESOURCE; keep ours where we cannot.
        let max = if r.max > our_max { our_max } else { r.max };
        let cur = r.cur.min(max);
        if task::set_rlimit(r.resource, cur, max).is_err() {
            tracing::warn!(resource = r.resource, "could not restore rlimit");
        }
    }
    if let Some(t) = img.tasks.first() {
        if !t.comm.is_empty() {
            let _ = task::set_comm(&t.comm);
        }
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
