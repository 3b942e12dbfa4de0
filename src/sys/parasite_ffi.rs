//! FFI the parasite machinery needs on the dumper's side: a shared mapping of the parasite's
//! memfd, splicing a pipe into a file, pipe sizing, and PTRACE_GETSIGINFO. Thin checked
//! wrappers only; what goes where in the region is `infect::parasite`'s business.

use super::{check, SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Plain data that may be copied to and from the shared region byte for byte.
///
/// # Safety
/// Implementors are `#[repr(C)]`, have no padding that matters and no invalid bit patterns
/// (integers only), so any bytes read back from the region form a valid value.
pub unsafe trait Plain: Copy {}

// SAFETY: integers have no invalid bit patterns.
unsafe impl Plain for u64 {}
// SAFETY: integers have no invalid bit patterns.
unsafe impl Plain for i32 {}
// SAFETY: arrays of plain data are plain data.
unsafe impl<T: Plain, const N: usize> Plain for [T; N] {}

/// A `MAP_SHARED` read-write mapping of a file in the dumper, unmapped on drop.
pub struct SharedMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through methods that
// copy bytes, and the other process sharing it is stopped whenever we touch it.
unsafe impl Send for SharedMapping {}
// SAFETY: the copying methods are used by the thread that owns the parasite, never on bytes
// another thread uses at the same time: the only value shared between threads is the counter
// of `atomic_u64`, accessed atomically.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Maps `len` bytes of `fd` from offset 0, read-write and shared.
    pub fn new(fd: BorrowedFd<'_>, len: usize) -> SysResult<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; it aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SysError::last("mmap(MAP_SHARED)"));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, in practice).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn range(&self, off: usize, n: usize) -> SysResult<*mut u8> {
        match off.checked_add(n) {
            Some(end) if end <= self.len => {
                // SAFETY: off + n is within the mapping.
                Ok(unsafe { self.ptr.add(off) })
            }
            _ => Err(SysError::from_errno("shared region access", libc::EINVAL)),
        }
    }

    /// Copies `bytes` into the mapping at `off`.
    pub fn write_bytes(&self, off: usize, bytes: &[u8]) -> SysResult<()> {
        let p = self.range(off, bytes.len())?;
        // SAFETY: p..p+len is inside the mapping, which does not overlap `bytes` (a Rust
        // object of the dumper, never inside this fresh mapping).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        Ok(())
    }

    /// Writes one value at `off` (no alignment needed).
    pub fn write<T: Plain>(&self, off: usize, val: &T) -> SysResult<()> {
        let p = self.range(off, std::mem::size_of::<T>())?;
        // SAFETY: in bounds (checked); unaligned write of plain data.
        unsafe { p.cast::<T>().write_unaligned(*val) };
        Ok(())
    }

    /// Reads one value at `off` (no alignment needed).
    pub fn read<T: Plain>(&self, off: usize) -> SysResult<T> {
        let p = self.range(off, std::mem::size_of::<T>())?;
        // SAFETY: in bounds (checked); T is plain data, valid for any bytes.
        Ok(unsafe { p.cast::<T>().read_unaligned() })
    }
}

impl SharedMapping {
    /// The 8-byte-aligned word at `off`, as an atomic: a value the dumper changes while the
    /// other process runs and reads it.
    pub fn atomic_u64(&self, off: usize) -> SysResult<&std::sync::atomic::AtomicU64> {
        let p = self.range(off, 8)?;
        if (p as usize) % 8 != 0 {
            return Err(SysError::from_errno("shared region access", libc::EINVAL));
        }
        // SAFETY: 8 aligned bytes inside the mapping, which lives as long as &self; AtomicU64
        // has the layout of u64, and every byte pattern is a valid value.
        Ok(unsafe { &*p.cast::<std::sync::atomic::AtomicU64>() })
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe the mapping created in new(); nothing borrows it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// splice(2) from a pipe into `file` at `*off` (advanced by the kernel). Returns the bytes
/// moved; 0 means end of input (every write end closed).
pub fn splice_to_file(
    pipe: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    off: &mut i64,
    len: usize,
) -> SysResult<usize> {
    // SAFETY: both fds are open; off is a valid in/out pointer.
    let n = unsafe {
        libc::splice(
            pipe.as_raw_fd(),
            std::ptr::null_mut(),
            file.as_raw_fd(),
            off as *mut i64,
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_MORE,
        )
    };
    check("splice", n as libc::c_long).map(|n| n as usize)
}

/// sync_file_range(2) with `SYNC_FILE_RANGE_WRITE`: starts writeback of the dirty pages of
/// `[off, off + len)` of `file` without waiting for it, so that a later fsync finds most of
/// the data on its way to the disk already.
pub fn start_writeback(file: BorrowedFd<'_>, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: a plain syscall on an open fd; no memory is passed.
    let ret = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    check("sync_file_range", ret as libc::c_long).map(drop)
}

/// fallocate(2) with `FALLOC_FL_KEEP_SIZE`: reserves the blocks of `[off, off + len)` of
/// `file` without changing its size.
pub fn preallocate(file: BorrowedFd<'_>, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: a plain syscall on an open fd; no memory is passed.
    let ret = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    check("fallocate", ret as libc::c_long).map(drop)
}

/// read(2) into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: buf is a valid writable buffer of buf.len() bytes.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    check("read", n as libc::c_long).map(|n| n as usize)
}

/// F_SETPIPE_SZ; returns the size the kernel granted.
pub fn set_pipe_size(pipe: BorrowedFd<'_>, size: usize) -> SysResult<usize> {
    // SAFETY: fcntl with an integer argument.
    let n = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    check("fcntl(F_SETPIPE_SZ)", n as libc::c_long).map(|n| n as usize)
}
