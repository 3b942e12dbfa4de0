//! Remote system calls: make a ptrace-stopped task execute one syscall of our choosing, in its
//! own context, and report the result. Used by the dumper (to set up the parasite) and by the
//! restorer (to build a process from outside).
//!
//! Mechanism: the task's registers are saved once; for each call the registers are set to
//! `rip = <an address holding the bytes 0f 05 (syscall)>`, `rax = nr`, arguments in
//! rdi/rsi/rdx/r10/r8/r9 and `orig_rax = -1` (so the kernel applies no syscall-restart logic
//! to our borrowed frame), then the task runs with PTRACE_SYSCALL to the syscall-entry stop
//! and again to the syscall-exit stop, where rax holds the result. No byte of the task's
//! memory is changed. All signals are blocked (PTRACE_SETSIGMASK) while we drive the task,
//! so a pending signal cannot be delivered in the middle; the original mask comes back in
//! [`RemoteTask::restore`].

use crate::sys::ptrace::{self, WaitStatus};
use crate::sys::SysError;

/// Errors of remote execution.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// A ptrace or wait call on the task failed.
    #[error("pid {pid}: {source}")]
    Ptrace {
        /// The task.
        pid: i32,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The task stopped for another reason than the one we drove it to.
    #[error("pid {pid}: unexpected stop while running remote {what}: {status:?}")]
    UnexpectedStop {
        /// The task.
        pid: i32,
        /// What we were running.
        what: String,
        /// What waitpid reported.
        status: WaitStatus,
    },
    /// The remote syscall returned an error.
    #[error("pid {pid}: remote {name} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Syscall {
        /// The task.
        pid: i32,
        /// The syscall, with its interesting arguments.
        name: String,
        /// The errno.
        errno: i32,
    },
    /// No syscall instruction could be found in the task's executable memory.
    #[error("pid {pid}: no syscall instruction found in executable memory")]
    NoSyscallInsn {
        /// The task.
        pid: i32,
    },
}

/// A task stopped under ptrace, borrowed to run syscalls.
pub struct RemoteTask {
    pid: i32,
    saved: libc::user_regs_struct,
    saved_mask: u64,
    syscall_ip: u64,
    restored: bool,
}

/// Every signal blocked (SIGKILL and SIGSTOP cannot be, the kernel ignores those bits).
const ALL_SIGNALS: u64 = !0;

impl RemoteTask {
    /// Takes over `pid`, which must be in a ptrace-stop, with `syscall_ip` the address of a
    /// `syscall` instruction (bytes 0f 05) mapped executable in the task. The task's registers
    /// and signal mask are saved and all signals blocked.
    pub fn new(pid: i32, syscall_ip: u64) -> Result<Self, RemoteError> {
        let err = |source| RemoteError::Ptrace { pid, source };
        let saved = ptrace::get_regs(pid).map_err(err)?;
        let saved_mask = ptrace::get_sigmask(pid).map_err(err)?;
        ptrace::set_sigmask(pid, ALL_SIGNALS).map_err(err)?;
        // No PTRACE_O_EXITKILL here: if the dumper dies, its target must live on. The
        // restorer adds it for the children it builds.
        ptrace::set_options(pid, libc::PTRACE_O_TRACESYSGOOD).map_err(err)?;
        Ok(Self {
            pid,
            saved,
            saved_mask,
            syscall_ip,
            restored: false,
        })
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The registers as they were when we took over.
    pub fn saved_regs(&self) -> &libc::user_regs_struct {
        &self.saved
    }

    /// The signal mask as it was when we took over.
    pub fn saved_sigmask(&self) -> u64 {
        self.saved_mask
    }

    /// Uses another `syscall` instruction from now on (e.g. after the old one was unmapped).
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    /// Runs syscall `nr` with `args` and returns the raw result (negative errno on failure).
    pub fn syscall_raw(&mut self, nr: libc::c_long, args: [u64; 6]) -> Result<i64, RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        let mut regs = self.saved;
        regs.rip = self.syscall_ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(pid, &regs).map_err(err)?;
        for _stage in 0..2 {
            ptrace::syscall(pid, 0).map_err(err)?;
            self.wait_syscall_stop(nr)?;
        }
        let out = ptrace::get_regs(pid).map_err(err)?;
        Ok(out.rax as i64)
    }

    /// Runs syscall `nr` and turns a negative result into [`RemoteError::Syscall`] named by
    /// `name` (which should say what was being done, e.g. `mmap(0x7f00..., 8192)`).
    pub fn syscall(
        &mut self,
        name: impl FnOnce() -> String,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, RemoteError> {
        let ret = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(RemoteError::Syscall {
                pid: self.pid,
                name: name(),
                errno: (-ret) as i32,
            });
        }
        Ok(ret as u64)
    }

    fn wait_syscall_stop(&self, nr: libc::c_long) -> Result<(), RemoteError> {
        let pid = self.pid;
        loop {
            let (_, status) = ptrace::wait(pid, 0)
                .map_err(|source| RemoteError::Ptrace { pid, source })?
                .ok_or_else(|| RemoteError::Ptrace {
                    pid,
                    source: ptrace::unexpected("waitpid"),
                })?;
            match status {
                WaitStatus::Stopped { sig, event: 0 } if sig == (libc::SIGTRAP | 0x80) => {
                    return Ok(())
                }
                // A task of a stopped (group-stop) process reports the group stop again when
                // first resumed; resume it once more to reach the syscall stop. (The dumper
                // stops it again when it lets it go.)
                WaitStatus::Stopped { sig, event }
                    if event == ptrace::PTRACE_EVENT_STOP
                        && matches!(
                            sig,
                            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                        ) =>
                {
                    ptrace::syscall(pid, 0)
                        .map_err(|source| RemoteError::Ptrace { pid, source })?;
                }
                other => {
                    return Err(RemoteError::UnexpectedStop {
                        pid,
                        what: format!("syscall {nr}"),
                        status: other,
                    })
                }
            }
        }
    }

    /// Puts back the saved registers and signal mask. Called by the owner when done; the task
    /// stays stopped.
    pub fn restore(&mut self) -> Result<(), RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        ptrace::set_regs(pid, &self.saved).map_err(err)?;
        ptrace::set_sigmask(pid, self.saved_mask).map_err(err)?;
        self.restored = true;
        Ok(())
    }

    /// Gives up ownership without restoring (the caller sets the final state itself, as the
    /// restorer does).
    pub fn forget(mut self) {
        self.restored = true;
    }
}

impl Drop for RemoteTask {
    fn drop(&mut self) {
        if !self.restored {
            if let Err(e) = self.restore() {
                tracing::error!(pid = self.pid, error = %e, "could not restore registers");
            }
        }
    }
}

/// Finds the address of a `syscall` instruction (0f 05) in one of the task's executable
/// mappings, preferring the vdso. `maps` is the content of /proc/PID/maps.
pub fn find_syscall_insn(pid: i32, maps: &str) -> Result<u64, RemoteError> {
    let mut candidates: Vec<(u64, u64, bool)> = Vec::new();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        if !perms.contains('x') || !perms.starts_with('r') {
            continue;
        }
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if s >= 0xffff_ffff_ff60_0000 {
            continue; // vsyscall: not readable through process_vm_readv
        }
        candidates.push((s, e, line.ends_with("[vdso]")));
    }
    candidates.sort_by_key(|c| !c.2);
    for (s, e, _) in candidates {
        let len = ((e - s) as usize).min(1 << 20);
        let mut buf = vec![0u8; len];
        if crate::sys::mem::read_force(pid, s, &mut buf).is_err() {
            continue;
        }
        if let Some(i) = buf.windows(2).position(|w| w == [0x0f, 0x05]) {
            return Ok(s + i as u64);
        }
    }
    Err(RemoteError::NoSyscallInsn { pid })
}
