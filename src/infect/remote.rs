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
//!
//! Each ptrace stop costs two context switches. Where SIGTRAP's action is the default, a call
//! takes one stop instead: PTRACE_SINGLESTEP over the `syscall` instruction, which the kernel
//! ends with a SIGTRAP (si_code TRAP_BRKPT) once the call has returned. That SIGTRAP is forced:
//! the kernel unblocks it (our mask is put back at the stop) and resets the action of a blocked
//! or ignored SIGTRAP to the default, hence the condition, checked by the owner (see
//! [`RemoteTask::set_single_step`]). A SIGTRAP someone queued for the task itself absorbs ours
//! (one pending instance per standard signal) and is delivered at that stop instead: it is put
//! back as it was (resumed into the next stop with that signal while SIGTRAP is blocked: the
//! kernel queues a blocked signal the tracer passes on again, with its siginfo), and the task
//! goes back to two stops per call.
//!
//! The restorer, which owns a trampoline page
//! in the task, installs [`Stubs`] there: a syscall followed by `tgkill(self, SIGSTOP)` (one
//! stop per call instead of two), and a loop that runs a whole table of syscalls before that
//! stop. SIGSTOP cannot be blocked, caught or ignored, so raising it changes no signal action
//! or mask; the tracer sees its signal-delivery stop and discards it. (Raising a stop signal
//! does drop a pending SIGCONT, so the stubs are put away before saved signals are queued.)

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

/// Addresses of the restore trampoline's stubs in the task (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Stubs {
    /// `syscall; mov r12, rax; <stop>`: one call, its result left in r12.
    pub one: u64,
    /// The batch loop over a table of [`BATCH_ENTRY`]-byte entries at r12.
    pub batch: u64,
    /// The thread group of the task (the first tgkill argument).
    pub tgid: i32,
}

/// Bytes per batch table entry: nr, six arguments, the result (u64 each).
pub const BATCH_ENTRY: u64 = 64;
/// The `nr` that ends a batch table.
pub const BATCH_END: u64 = u64::MAX;

/// A task stopped under ptrace, borrowed to run syscalls.
pub struct RemoteTask {
    pid: i32,
    saved: libc::user_regs_struct,
    saved_mask: u64,
    syscall_ip: u64,
    stubs: Option<Stubs>,
    step: bool,
    restored: bool,
}

/// Every signal blocked (SIGKILL and SIGSTOP cannot be, the kernel ignores those bits).
const ALL_SIGNALS: u64 = !0;
/// `si_code` of the SIGTRAP that ends a single step over `syscall`.
const TRAP_BRKPT: i32 = 1;
/// The trap flag of rflags: a task that single-steps itself has it set.
const EFLAGS_TF: u64 = 0x100;
/// Length of the `syscall` instruction.
const SYSCALL_LEN: u64 = 2;

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
            stubs: None,
            step: false,
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

    /// Uses the stubs for later calls (`Some`), or goes back to two stops per call (`None`).
    pub fn set_stubs(&mut self, stubs: Option<Stubs>) {
        self.stubs = stubs;
    }

    /// Lets calls without the stubs single-step over the syscall instruction: one stop per
    /// call instead of two (see the module doc). Only for a task whose SIGTRAP action is the
    /// default (see [`may_single_step`]), which the caller knows or has read
    /// (/proc/PID/status); a call that sets a SIGTRAP action turns it off first.
    pub fn set_single_step(&mut self, on: bool) {
        self.step = on;
    }

    /// The stubs in use, if any.
    pub fn stubs(&self) -> Option<Stubs> {
        self.stubs
    }

    /// Runs syscall `nr` with `args` and returns the raw result (negative errno on failure):
    /// through the one-call stub when there is one, else with two syscall stops.
    pub fn syscall_raw(&mut self, nr: libc::c_long, args: [u64; 6]) -> Result<i64, RemoteError> {
        match self.stubs {
            Some(stubs) => {
                let regs = self.call_regs(stubs.one, nr, args);
                let out = self.run_to_stop(regs, stubs, || format!("syscall {nr}"))?;
                Ok(out.r12 as i64)
            }
            None => self.direct_raw(nr, args),
        }
    }

    /// Runs the batch table at `table` in the task (entries written by the caller, ended by
    /// [`BATCH_END`]): each entry's result is stored in it; the loop stops after the first
    /// call that fails. Needs the stubs.
    pub fn run_batch(&mut self, table: u64) -> Result<(), RemoteError> {
        let stubs = self
            .stubs
            .ok_or(RemoteError::NoSyscallInsn { pid: self.pid })?;
        let mut regs = self.saved;
        regs.rip = stubs.batch;
        regs.orig_rax = u64::MAX;
        regs.r12 = table;
        self.run_to_stop(regs, stubs, || "a batch of syscalls".into())?;
        Ok(())
    }

    /// The saved registers set up to run syscall `nr` with `args` at `rip`, with
    /// `orig_rax = -1` (no syscall-restart logic on our borrowed frame).
    pub fn call_regs(&self, rip: u64, nr: libc::c_long, args: [u64; 6]) -> libc::user_regs_struct {
        let mut regs = self.saved;
        regs.rip = rip;
        // A task stepping itself would trap after our call; its flag comes back with the rest.
        regs.eflags &= !EFLAGS_TF;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        regs
    }

    /// Resumes the task at `regs` (r13/r14 set for the stop) until it stops itself with
    /// SIGSTOP; discards that signal and returns the registers then.
    fn run_to_stop(
        &mut self,
        mut regs: libc::user_regs_struct,
        stubs: Stubs,
        what: impl Fn() -> String,
    ) -> Result<libc::user_regs_struct, RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        regs.r13 = stubs.tgid as u64;
        regs.r14 = pid as u64;
        ptrace::set_regs(pid, &regs).map_err(err)?;
        ptrace::cont(pid, 0).map_err(err)?;
        // Our own SIGSTOP: not passed on (the next resume gives signal 0).
        self.wait_for(
            |st| matches!(st, WaitStatus::Stopped { sig, event: 0 } if *sig == libc::SIGSTOP),
            ptrace::cont,
            what,
        )?;
        ptrace::get_regs(pid).map_err(err)
    }

    /// Runs syscall `nr` with two syscall stops (entry and exit), whatever the stubs, and
    /// turns a negative result into [`RemoteError::Syscall`] named by `name`: for a call whose
    /// new task must not run the stub's stop (clone3 of a thread).
    pub fn syscall_two_stops(
        &mut self,
        name: impl FnOnce() -> String,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, RemoteError> {
        let ret = self.two_stops_raw(nr, args)?;
        syscall_result(self.pid, ret, name)
    }

    /// Runs syscall `nr` at the task's syscall instruction: one stop when single-stepping is
    /// allowed, else two.
    fn direct_raw(&mut self, nr: libc::c_long, args: [u64; 6]) -> Result<i64, RemoteError> {
        if nr == libc::SYS_rt_sigaction && args[0] == libc::SIGTRAP as u64 && args[1] != 0 {
            // From this call on SIGTRAP may have an action a forced SIGTRAP would reset.
            self.step = false;
        }
        if self.step {
            self.one_step_raw(nr, args)
        } else {
            self.two_stops_raw(nr, args)
        }
    }

    fn two_stops_raw(&mut self, nr: libc::c_long, args: [u64; 6]) -> Result<i64, RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        let regs = self.call_regs(self.syscall_ip, nr, args);
        ptrace::set_regs(pid, &regs).map_err(err)?;
        self.syscall_stops(0, nr)?;
        let out = ptrace::get_regs(pid).map_err(err)?;
        Ok(out.rax as i64)
    }

    /// Resumes the task (with `sig`) to the entry stop of the call it is set up for, then to
    /// its exit stop.
    fn syscall_stops(&mut self, sig: i32, nr: libc::c_long) -> Result<(), RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        for stage in 0..2 {
            ptrace::syscall(pid, if stage == 0 { sig } else { 0 }).map_err(err)?;
            self.wait_for(
                |st| {
                    matches!(st, WaitStatus::Stopped { sig, event: 0 }
                        if *sig == (libc::SIGTRAP | 0x80))
                },
                ptrace::syscall,
                || format!("syscall {nr}"),
            )?;
        }
        Ok(())
    }

    /// Runs syscall `nr` with one stop: a single step over the syscall instruction.
    fn one_step_raw(&mut self, nr: libc::c_long, args: [u64; 6]) -> Result<i64, RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        let regs = self.call_regs(self.syscall_ip, nr, args);
        ptrace::set_regs(pid, &regs).map_err(err)?;
        ptrace::singlestep(pid, 0).map_err(err)?;
        self.wait_for(
            |st| matches!(st, WaitStatus::Stopped { sig, event: 0 } if *sig == libc::SIGTRAP),
            ptrace::singlestep,
            || format!("syscall {nr} (single step)"),
        )?;
        let out = ptrace::get_regs(pid).map_err(err)?;
        let info = ptrace::get_siginfo(pid).map_err(err)?;
        // Forcing the SIGTRAP unblocked it.
        ptrace::set_sigmask(pid, ALL_SIGNALS).map_err(err)?;
        if out.rip != self.syscall_ip + SYSCALL_LEN {
            return Err(RemoteError::UnexpectedStop {
                pid,
                what: format!("syscall {nr} (single step, stopped at {:#x})", out.rip),
                status: WaitStatus::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                },
            });
        }
        let si_code = ptrace::siginfo_code(&info);
        if si_code != TRAP_BRKPT {
            // A SIGTRAP queued for the task by someone else took the place of ours. Put it
            // back: SIGTRAP is blocked again, so passing it on at the next resume queues it
            // again with its siginfo. That resume runs a getpid, and from now on a SIGTRAP is
            // pending: two stops per call.
            tracing::debug!(pid, si_code, "putting back a pending SIGTRAP");
            self.step = false;
            let regs = self.call_regs(self.syscall_ip, libc::SYS_getpid, [0; 6]);
            ptrace::set_regs(pid, &regs).map_err(err)?;
            self.syscall_stops(libc::SIGTRAP, libc::SYS_getpid)?;
        }
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
        syscall_result(self.pid, ret, name)
    }

    /// Waits until the task reports the stop `done` accepts. A task of a stopped (group-stop)
    /// process reports the group stop again when first resumed, and a seized task reports
    /// SIGCONT sent to its process (the restorer queues a pending one) as an event stop with
    /// SIGTRAP: those are resumed with `resume` (signal 0) and waited past. (The dumper stops a
    /// stopped task again when it lets it go.) Any other stop is an error naming `what`.
    fn wait_for(
        &self,
        done: impl Fn(&WaitStatus) -> bool,
        resume: fn(i32, i32) -> crate::sys::SysResult<()>,
        what: impl Fn() -> String,
    ) -> Result<(), RemoteError> {
        let pid = self.pid;
        let err = |source| RemoteError::Ptrace { pid, source };
        loop {
            let (_, status) = ptrace::wait(pid, 0)
                .map_err(err)?
                .ok_or_else(|| err(ptrace::unexpected("waitpid")))?;
            if done(&status) {
                return Ok(());
            }
            match status {
                WaitStatus::Stopped { sig, event }
                    if event == ptrace::PTRACE_EVENT_STOP
                        && matches!(
                            sig,
                            libc::SIGSTOP
                                | libc::SIGTSTP
                                | libc::SIGTTIN
                                | libc::SIGTTOU
                                | libc::SIGTRAP
                        ) =>
                {
                    resume(pid, 0).map_err(err)?;
                }
                other => {
                    return Err(RemoteError::UnexpectedStop {
                        pid,
                        what: what(),
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

/// Whether remote calls may single-step in a task whose ignored and caught signals are
/// `ignored` and `caught` (SigIgn, SigCgt): its SIGTRAP action must be the default, which the
/// step's forced SIGTRAP leaves as it is.
pub fn may_single_step(ignored: u64, caught: u64) -> bool {
    (ignored | caught) & (1u64 << (libc::SIGTRAP - 1)) == 0
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

/// A raw result of a syscall run in task `pid`, or [`RemoteError::Syscall`] named by `name`
/// for a negative errno.
pub fn syscall_result(
    pid: i32,
    ret: i64,
    name: impl FnOnce() -> String,
) -> Result<u64, RemoteError> {
    if (-4095..0).contains(&ret) {
        return Err(RemoteError::Syscall {
            pid,
            name: name(),
            errno: (-ret) as i32,
        });
    }
    Ok(ret as u64)
}
