//! A restore child under construction: a [`RemoteTask`] plus a scratch area inside the
//! trampoline region, where arguments for remote syscalls (paths, structs) are written before
//! each call. Every failure is turned into a [`RestoreError`] that says what was being done.

use super::RestoreError;
use crate::infect::remote::{syscall_result, RemoteTask, Stubs, BATCH_END, BATCH_ENTRY};
use crate::sys::mem;

/// The trampoline region: one code page followed by scratch pages.
pub const TRAMPOLINE_LEN: u64 = 16 * 4096;
/// The code at the start of the trampoline (x86-64, assembled by hand and checked with `as`):
///
/// ```text
/// 0x00  0f 05              syscall            ; two-stop calls; a thread made by clone3
/// 0x02  eb fe              jmp .              ;   returns here and spins until seized
/// 0x10  0f 05              syscall            ; Stubs::one: one call,
/// 0x12  49 89 c4           mov r12, rax       ;   result kept in r12,
/// 0x15  eb 44              jmp stop           ;   then stop
/// 0x20  49 8b 04 24        mov rax, [r12]     ; Stubs::batch: entry {nr, a0..a5, result}
/// 0x24  48 83 f8 ff        cmp rax, -1        ;   nr == -1 ends the table
/// 0x28  74 31              je stop
/// 0x2a  49 8b 7c 24 08     mov rdi, [r12+8]
/// 0x2f  49 8b 74 24 10     mov rsi, [r12+16]
/// 0x34  49 8b 54 24 18     mov rdx, [r12+24]
/// 0x39  4d 8b 54 24 20     mov r10, [r12+32]
/// 0x3e  4d 8b 44 24 28     mov r8, [r12+40]
/// 0x43  4d 8b 4c 24 30     mov r9, [r12+48]
/// 0x48  0f 05              syscall
/// 0x4a  49 89 44 24 38     mov [r12+56], rax  ;   result into the entry
/// 0x4f  49 83 c4 40        add r12, 64
/// 0x53  48 3d 01 f0 ff ff  cmp rax, -4095     ;   next entry unless it failed
/// 0x59  72 c5              jb batch
/// 0x5b  b8 ea 00 00 00     mov eax, 234       ; stop: tgkill(r13, r14, SIGSTOP)
/// 0x60  4c 89 ef           mov rdi, r13
/// 0x63  4c 89 f6           mov rsi, r14
/// 0x66  ba 13 00 00 00     mov edx, 19
/// 0x6b  0f 05              syscall
/// 0x6d  eb fe              jmp .
/// ```
pub const TRAMPOLINE_CODE: [u8; 0x6f] = [
    0x0f, 0x05, 0xeb, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 0x00
    0x0f, 0x05, 0x49, 0x89, 0xc4, 0xeb, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, // 0x10
    0x49, 0x8b, 0x04, 0x24, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x31, // 0x20
    0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, // 0x2a
    0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, // 0x34
    0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, // 0x3e
    0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x83, 0xc4, 0x40, // 0x48
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, 0x72, 0xc5, // 0x53
    0xb8, 0xea, 0x00, 0x00, 0x00, 0x4c, 0x89, 0xef, 0x4c, 0x89, 0xf6, // 0x5b
    0xba, 0x13, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xfe, // 0x66
];
/// Offset of the one-call stub in the trampoline.
const STUB_ONE: u64 = 0x10;
/// Offset of the batch stub in the trampoline.
const STUB_BATCH: u64 = 0x20;
/// Scratch offset of the batch table, and the most entries it holds (with the end marker).
const BATCH_TABLE_OFF: u64 = 16 << 10;
const BATCH_TABLE_LEN: u64 = 16 << 10;
/// Scratch offset and size of the data that batch entries point to.
const BATCH_DATA_OFF: u64 = BATCH_TABLE_OFF + BATCH_TABLE_LEN;
const BATCH_DATA_LEN: u64 = TRAMPOLINE_LEN - 4096 - BATCH_DATA_OFF;
/// What a batch entry's result reads as before it ran.
const NOT_RUN: u64 = 0xdead_0000_0000_0001;

/// One syscall of a batch ([`Ctx::sys_batch`]).
pub struct Call {
    /// What it does, for the error if it fails.
    pub what: String,
    /// The syscall number.
    pub nr: libc::c_long,
    /// Its arguments.
    pub args: [u64; 6],
    /// Bytes to place in the task for it: argument `.0` becomes their address.
    pub data: Option<(usize, Vec<u8>)>,
    /// The result it must return (an address a mapping must land at), if any.
    pub expect: Option<u64>,
}

impl Call {
    /// A call without data.
    pub fn new(what: String, nr: libc::c_long, args: [u64; 6]) -> Self {
        Self {
            what,
            nr,
            args,
            data: None,
            expect: None,
        }
    }

    /// The same call, failing unless it returns `value`.
    pub fn expecting(mut self, value: u64) -> Self {
        self.expect = Some(value);
        self
    }

    /// A call one of whose arguments (index `arg`) points to `bytes`.
    pub fn with_data(
        what: String,
        nr: libc::c_long,
        args: [u64; 6],
        arg: usize,
        bytes: Vec<u8>,
    ) -> Self {
        Self {
            what,
            nr,
            args,
            data: Some((arg, bytes)),
            expect: None,
        }
    }
}

/// A task being restored.
pub struct Ctx {
    /// The remote-syscall driver.
    pub rt: RemoteTask,
    /// Start of the trampoline region in the task.
    pub tramp: u64,
    /// Calls whose results nobody waits for ([`Ctx::defer`]): they run, in order, at the
    /// head of the next batch or call, or at [`Ctx::flush`].
    deferred: Vec<Call>,
}

impl Ctx {
    /// A task driven by `rt`, with its trampoline at `tramp`.
    pub fn new(rt: RemoteTask, tramp: u64) -> Self {
        Self {
            rt,
            tramp,
            deferred: Vec::new(),
        }
    }

    /// Queues `calls` to run before the next remote call, in the same stop: each stop of the
    /// task costs two context switches and a few ptrace calls, and most of a restore's calls
    /// (unmaps, mprotects, signal actions, credentials) only need to succeed. A failure is
    /// reported when they run, named by the call's `what`. Deferred calls must not point into
    /// the scratch area written by [`Ctx::put`] (which later calls reuse): their data goes
    /// with them ([`Call::with_data`]). Without stubs they run at once.
    pub fn defer(&mut self, calls: Vec<Call>) -> Result<(), RestoreError> {
        if self.rt.stubs().is_none() {
            return self.sys_batch(calls).map(drop);
        }
        self.deferred.extend(calls);
        Ok(())
    }

    /// Runs the deferred calls now (before cryo itself reads or writes the task's memory or
    /// registers, or the stubs go).
    pub fn flush(&mut self) -> Result<(), RestoreError> {
        if self.deferred.is_empty() {
            return Ok(());
        }
        self.sys_batch(Vec::new()).map(drop)
    }

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

    /// The stubs of this task's trampoline (see [`TRAMPOLINE_CODE`]); `tgid` is the process.
    pub fn stubs(&self, tgid: i32) -> Stubs {
        Stubs {
            one: self.tramp + STUB_ONE,
            batch: self.tramp + STUB_BATCH,
            tgid,
        }
    }

    /// Runs the deferred calls, then `calls`, in order, as few stops as the batch area allows
    /// (one for most lists), or one by one when the stubs are not in use. Stops at the first
    /// failure, which is the error, named by its `what`. Returns the results of `calls`.
    pub fn sys_batch(&mut self, calls: Vec<Call>) -> Result<Vec<u64>, RestoreError> {
        let mut all = std::mem::take(&mut self.deferred);
        let deferred = all.len();
        all.extend(calls);
        let mut out = self.run_calls(&all, deferred)?;
        Ok(out.split_off(deferred))
    }

    /// Runs `calls`; the first `deferred` of them were deferred (a failure of one of those is
    /// not the failure of the call that was asked for: it comes as [`RestoreError::Sys`]).
    fn run_calls(&mut self, calls: &[Call], deferred: usize) -> Result<Vec<u64>, RestoreError> {
        let pid = self.pid();
        let check = |k: usize, c: &Call, r: u64| -> Result<u64, RestoreError> {
            if k < deferred && (-4095..0).contains(&(r as i64)) {
                return Err(RestoreError::Sys {
                    pid,
                    what: c.what.clone(),
                    source: crate::sys::SysError::from_errno("remote syscall", -(r as i64) as i32),
                });
            }
            let got = syscall_result(pid, r as i64, || c.what.clone())?;
            match c.expect {
                Some(want) if want != got => Err(RestoreError::Invalid {
                    pid,
                    what: format!("{}: landed at {got:#x} instead of {want:#x}", c.what),
                }),
                _ => Ok(got),
            }
        };
        if self.rt.stubs().is_none() {
            let mut out = Vec::with_capacity(calls.len());
            for (k, c) in calls.iter().enumerate() {
                let mut args = c.args;
                if let Some((i, bytes)) = &c.data {
                    args[*i] = self.put(0, bytes)?;
                }
                let r = self.rt.syscall_raw(c.nr, args)? as u64;
                out.push(check(k, c, r)?);
            }
            return Ok(out);
        }
        let table = self.scratch() + BATCH_TABLE_OFF;
        let data_base = self.scratch() + BATCH_DATA_OFF;
        let max_entries = (BATCH_TABLE_LEN / BATCH_ENTRY - 1) as usize;
        let mut out = Vec::with_capacity(calls.len());
        let mut rest = calls;
        let mut done = 0usize;
        while !rest.is_empty() {
            // As many calls as fit the table and the data area.
            let (mut n, mut data_len) = (0usize, 0u64);
            while n < rest.len() && n < max_entries {
                let need = rest[n]
                    .data
                    .as_ref()
                    .map_or(0, |(_, b)| (b.len() as u64).next_multiple_of(8));
                if data_len + need > BATCH_DATA_LEN {
                    if n == 0 {
                        return Err(RestoreError::Invalid {
                            pid,
                            what: format!(
                                "{}: argument too large for the batch area",
                                rest[0].what
                            ),
                        });
                    }
                    break;
                }
                data_len += need;
                n += 1;
            }
            let (chunk, next) = rest.split_at(n);
            let mut entries = Vec::with_capacity((n + 1) * BATCH_ENTRY as usize);
            let mut data = Vec::with_capacity(data_len as usize);
            for c in chunk {
                let mut args = c.args;
                if let Some((i, bytes)) = &c.data {
                    if let Some(a) = args.get_mut(*i) {
                        *a = data_base + data.len() as u64;
                    }
                    data.extend_from_slice(bytes);
                    data.resize(data.len().next_multiple_of(8), 0);
                }
                entries.extend_from_slice(&(c.nr as u64).to_le_bytes());
                for a in args {
                    entries.extend_from_slice(&a.to_le_bytes());
                }
                entries.extend_from_slice(&NOT_RUN.to_le_bytes());
            }
            entries.extend_from_slice(&BATCH_END.to_le_bytes());
            entries.resize(entries.len() + BATCH_ENTRY as usize - 8, 0);
            let write = |addr: u64, bytes: &[u8]| {
                mem::write(pid, addr, bytes).map_err(|source| RestoreError::Sys {
                    pid,
                    what: format!("writing a syscall batch at {addr:#x}"),
                    source,
                })
            };
            if !data.is_empty() {
                write(data_base, &data)?;
            }
            write(table, &entries)?;
            self.rt.run_batch(table)?;
            let mut back = vec![0u8; n * BATCH_ENTRY as usize];
            mem::read(pid, table, &mut back).map_err(|source| RestoreError::Sys {
                pid,
                what: "reading syscall batch results".into(),
                source,
            })?;
            for (k, c) in chunk.iter().enumerate() {
                let at = k * BATCH_ENTRY as usize + 56;
                let r = u64::from_le_bytes(back[at..at + 8].try_into().unwrap_or([0; 8]));
                if r == NOT_RUN {
                    return Err(RestoreError::Invalid {
                        pid,
                        what: format!("{}: the syscall batch stopped before it", c.what),
                    });
                }
                out.push(check(done + k, c, r)?);
            }
            done += n;
            rest = next;
        }
        Ok(out)
    }

    /// Runs a remote syscall (after the deferred ones, in the same stop); `what` names it for
    /// the error.
    pub fn sys(
        &mut self,
        what: impl FnOnce() -> String,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, RestoreError> {
        if !self.deferred.is_empty() {
            if self.rt.stubs().is_some() {
                let r = self.sys_batch(vec![Call::new(what(), nr, args)])?;
                return r.first().copied().ok_or_else(|| RestoreError::Invalid {
                    pid: self.pid(),
                    what: "a batch of one call returned nothing".into(),
                });
            }
            self.flush()?;
        }
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
