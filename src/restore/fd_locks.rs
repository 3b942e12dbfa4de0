//! File locks at restore: every saved lock is taken again, without waiting, through the fd it
//! was held through. This runs last in the fd table's construction, after cryo's temporary
//! fds are closed, because closing any fd of a file drops the process's POSIX locks on it. A
//! lock someone else holds by now makes the restore fail rather than run without it.
//!
//! Known gap: the restorer later maps files by opening and closing them in the process; if the
//! process had a POSIX-locked file mapped, that close drops the lock. Taking POSIX locks at the
//! very end of the restore (a hook after the memory is built) would close that gap.

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
