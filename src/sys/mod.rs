//! The FFI boundary: thin, checked wrappers over the syscalls cryo needs (ptrace, remote memory,
//! clone3, wait). Every wrapper returns `Result<_, SysError>` carrying the call name and errno;
//! callers add the context (pid, address, file). Nothing here knows about images or /proc
//! formats.

pub mod files_ffi;
pub mod mem;
pub mod net_ffi;
pub mod nft_ffi;
pub mod pagemap;
pub mod parasite_ffi;
pub mod probe;
pub mod proc_ctl;
pub mod ptrace;
pub mod task;
pub mod tty_ffi;
pub mod uffd;

use std::fmt;

/// A failed system call: which call, and the errno it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysError {
    /// The name of the system call (or libc wrapper) that failed.
    pub call: &'static str,
    /// The errno value.
    pub errno: i32,
}

impl SysError {
    /// Captures `errno` for a call that just failed.
    pub fn last(call: &'static str) -> Self {
        Self {
            call,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        }
    }

    /// Builds an error from an explicit errno (e.g. a negative remote syscall return).
    pub fn from_errno(call: &'static str, errno: i32) -> Self {
        Self { call, errno }
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.call,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for SysError {}

/// Result of a raw syscall wrapper.
pub type SysResult<T> = Result<T, SysError>;

/// Converts a libc return value (-1 on error) into a `SysResult`.
pub(crate) fn check(call: &'static str, ret: libc::c_long) -> SysResult<libc::c_long> {
    if ret == -1 {
        Err(SysError::last(call))
    } else {
        Ok(ret)
    }
}

/// The page size cryo works in (x86_64).
pub const PAGE_SIZE: u64 = 4096;
