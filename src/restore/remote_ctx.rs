//! A restore child under construction: a [`RemoteTask`] plus a scratch area inside the
//! trampoline region, where arguments for remote syscalls (paths, structs) are written before
//! each call. Every failure is turned into a [`RestoreError`] that says what was being done.

use super::RestoreError;
use crate::infect::remote::RemoteTask;
use crate::sys::mem;

/// The trampoline region: one code page (`syscall; int3`) followed by scratch pages.
pub const TRAMPOLINE_LEN: u64 = 16 * 4096;
/// The bytes written at the start of the trampoline: `syscall; jmp .`. A thread created by a
/// remote clone3 returns to the `jmp .` and spins there until cryo seizes it.
pub const TRAMPOLINE_CODE: [u8; 4] = [0x0f, 0x05, 0xeb, 0xfe];

/// A task being restored.
pub struct Ctx {
    /// The remote-syscall driver.
    pub rt: RemoteTask,
    /// Start of the trampoline region in the task.
    pub tramp: u64,
}

impl Ctx {
    /// The pid being restored.
    pub fn pid(&self) -> i32 {
        self.rt.pid()
    }

    /// Start of the scratch area.
    fn scratch(&self) -> u64 {
        self.tramp + 4096
    }

    /// Writes `bytes` at scratch offset `off` and returns their address in the task.
    pub fn put(&self, off: u64, bytes: &[u8]) -> Result<u64, RestoreError> {
        if off + bytes.len() as u64 > TRAMPOLINE_LEN - 4096 {
            return Err(RestoreError::Invalid {
                pid: self.pid(),
                what: format!(
                    "argument of {} bytes does not fit the scratch area",
                    bytes.len()
                ),
            });
        }
        let addr = self.scratch() + off;
        mem::write(self.pid(), addr, bytes).map_err(|source| RestoreError::Sys {
            pid: self.pid(),
            what: format!("writing scratch at {addr:#x}"),
            source,
        })?;
        Ok(addr)
    }

    /// Writes a NUL-terminated path at scratch offset `off`.
    pub fn put_path(&self, off: u64, path: &str) -> Result<u64, RestoreError> {
        let mut b = path.as_bytes().to_vec();
        b.push(0);
        self.put(off, &b)
    }

    /// Reads `len` bytes from scratch offset `off`.
    pub fn get(&self, off: u64, len: usize) -> Result<Vec<u8>, RestoreError> {
        let mut buf = vec![0u8; len];
        let addr = self.scratch() + off;
        mem::read(self.pid(), addr, &mut buf).map_err(|source| RestoreError::Sys {
            pid: self.pid(),
            what: format!("reading scratch at {addr:#x}"),
            source,
        })?;
        Ok(buf)
    }

    /// Runs a remote syscall; `what` names it for the error.
    pub fn sys(
        &mut self,
        what: impl FnOnce() -> String,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, RestoreError> {
        self.rt.syscall(what, nr, args).map_err(RestoreError::from)
    }
}

/// Little-endian struct builder for syscall arguments.
#[derive(Default)]
pub struct Le(pub Vec<u8>);

impl Le {
    /// Appends a u64.
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a u32.
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Pads with zeros up to `len` bytes.
    pub fn pad_to(mut self, len: usize) -> Self {
        self.0.resize(len.max(self.0.len()), 0);
        self
    }
}
