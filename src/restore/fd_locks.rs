//! File locks at restore: every saved lock is taken again, without waiting, through the fd it
//! was held through. This runs last in the fd table's construction, after cryo's temporary
//! fds are closed, because closing any fd of a file drops the process's POSIX locks on it. A
//! lock someone else holds by now makes the restore fail rather than run without it.
//!
//! The restorer later maps files by opening and closing them in the process, and a close drops
//! the process's POSIX locks on that file: [`retake_posix_locks`] takes every POSIX lock again
//! with a remote fcntl once the memory is built (taking a lock the process already holds
//! changes nothing).

use super::remote_ctx::Ctx;
use super::{ProcessImage, RestoreError};
use crate::proto::{file_lock::Kind, FdEntry};
use crate::sys::files_ffi as ffi;

/// Takes the saved locks of `fds` (each description's locks are saved with its lowest fd).
pub fn take_locks(fds: &[FdEntry]) -> Result<(), String> {
    for f in fds {
        for l in &f.locks {
            let taken = match l.kind() {
                Kind::Flock => ffi::flock(f.fd, l.write),
                Kind::Posix => ffi::record_lock(f.fd, false, l.write, l.start, l.len),
                Kind::Ofd => ffi::record_lock(f.fd, true, l.write, l.start, l.len),
            };
            taken.map_err(|e| {
                format!(
                    "fd {} ({}): taking its {} {} lock on bytes {}+{} again: {e}",
                    f.fd,
                    f.path,
                    l.kind().as_str_name().to_ascii_lowercase(),
                    if l.write { "write" } else { "read" },
                    l.start,
                    if l.len == 0 {
                        "EOF".to_string()
                    } else {
                        l.len.to_string()
                    }
                )
            })?;
        }
    }
    Ok(())
}

/// Takes every saved POSIX lock of the process again through a remote fcntl(F_SETLK), after
/// the memory is built (mapping files opened and closed them in the process).
pub fn retake_posix_locks(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    for f in &img.fds {
        for l in f.locks.iter().filter(|l| l.kind() == Kind::Posix) {
            // struct flock: l_type, l_whence (shorts), l_start, l_len (off_t), l_pid.
            let mut b = Vec::with_capacity(32);
            let kind = if l.write {
                libc::F_WRLCK
            } else {
                libc::F_RDLCK
            } as i16;
            b.extend_from_slice(&kind.to_ne_bytes());
            b.extend_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
            b.extend_from_slice(&[0; 4]);
            b.extend_from_slice(&l.start.to_ne_bytes());
            b.extend_from_slice(&l.len.to_ne_bytes());
            b.extend_from_slice(&[0; 8]);
            let addr = ctx.put(0, &b)?;
            ctx.sys(
                || {
                    format!(
                        "fcntl(F_SETLK) on fd {} ({}) to take its POSIX lock on bytes {}+{} again",
                        f.fd, f.path, l.start, l.len
                    )
                },
                libc::SYS_fcntl,
                [f.fd as u64, libc::F_SETLK as u64, addr, 0, 0, 0],
            )?;
        }
    }
    Ok(())
}
