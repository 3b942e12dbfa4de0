//! Reading and writing another process's memory: process_vm_readv/writev, with /proc/PID/mem
//! as the path that can also write through read-only protections.

use super::{check, SysResult};
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Reads `buf.len()` bytes at `addr` of `pid`. Short reads are errors.
pub fn read(pid: i32, addr: u64, buf: &mut [u8]) -> SysResult<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: local points to a live buffer of iov_len bytes; the remote iovec is only
        // interpreted by the kernel in the other address space.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        let n = check("process_vm_readv", n as libc::c_long)?;
        if n == 0 {
            return Err(super::SysError::from_errno(
                "process_vm_readv",
                libc::EFAULT,
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Writes `buf` at `addr` of `pid`. Short writes are errors.
pub fn write(pid: i32, addr: u64, buf: &[u8]) -> SysResult<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let local = libc::iovec {
            iov_base: buf[done..].as_ptr() as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: buf.len() - done,
        };
        // SAFETY: local points to a live buffer of iov_len bytes; the kernel only reads it.
        let n = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        let n = check("process_vm_writev", n as libc::c_long)?;
        if n == 0 {
            return Err(super::SysError::from_errno(
                "process_vm_writev",
                libc::EFAULT,
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Writes through /proc/PID/mem, which ignores the mapping's protections (used to place
/// code in an executable, non-writable page).
pub fn write_force(pid: i32, addr: u64, buf: &[u8]) -> std::io::Result<()> {
    let f = File::options()
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.write_all_at(buf, addr)
}

/// Reads through /proc/PID/mem (works on pages the task itself cannot read, e.g. PROT_NONE).
pub fn read_force(pid: i32, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let f = File::open(format!("/proc/{pid}/mem"))?;
    f.read_exact_at(buf, addr)
}
