//! Collecting open files: every fd from /proc/PID/fd with fdinfo (offset, flags). Each fd is
//! either of a kind cryo restores exactly or the dump refuses, naming the fd and its kind,
//! before anything is changed in the target.

use super::proc;
use super::DumpError;
use crate::proto::{FdEntry, FdKind};

fn is_terminal_path(p: &str) -> bool {
    p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"
}

/// The fds of `pid`.
pub fn collect_fds(pid: i32, shell_job: bool) -> Result<Vec<FdEntry>, DumpError> {
    let mut out = Vec::new();
    for link in proc::list_fds(pid)? {
        let fd = link.fd;
        let unsupported = |what: String| DumpError::Unsupported {
            pid,
            what: format!("fd {fd} ({}): {what}", link.target),
        };
        if !link.target.starts_with('/') {
            let kind = link
                .target
                .split(':')
                .next()
                .unwrap_or("unknown")
                .to_string();
            return Err(unsupported(format!(
                "{kind} file descriptors are not supported yet"
            )));
        }
        if link.target.ends_with(" (deleted)") {
            return Err(unsupported(
                "files deleted while open are not supported yet".into(),
            ));
        }
        let st = link
            .stat
            .as_ref()
            .ok_or_else(|| unsupported("cannot stat the file".into()))?;
        let info = proc::read_fdinfo(pid, fd)?;
        let fmt = st.mode & libc::S_IFMT;
        let kind = if fmt == libc::S_IFCHR && is_terminal_path(&link.target) {
            if !shell_job {
                return Err(unsupported(
                    "a terminal: dump with --shell-job (-j) to let restore inherit cryo's".into(),
                ));
            }
            FdKind::FdTty
        } else if fmt == libc::S_IFCHR {
            FdKind::FdChr
        } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR || fmt == libc::S_IFIFO {
            // A FIFO opened by path is reopened by path (its buffered data is issue #4's work).
            FdKind::FdReg
        } else {
            return Err(unsupported(format!(
                "file type {fmt:#o} is not supported yet"
            )));
        };
        out.push(FdEntry {
            fd,
            kind: kind as i32,
            path: link.target.clone(),
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            pos: info.pos,
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mode: st.mode,
            rdev: st.rdev,
        });
    }
    Ok(out)
}
