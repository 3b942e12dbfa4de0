//! Freezing a process: PTRACE_SEIZE + PTRACE_INTERRUPT on each thread (no SIGSTOP, so the
//! target's job-control state is untouched). [`Seized`] is a guard: dropping it detaches
//! every thread it holds, so any early return leaves the target running as before.

use super::DumpError;
use crate::sys::ptrace::{self, WaitStatus, PTRACE_EVENT_STOP};

/// Threads held in ptrace-stop.
pub struct Seized {
    pid: i32,
    tids: Vec<i32>,
    done: bool,
}

impl Seized {
    /// Seizes and stops `tids` of process `pid` (leader first).
    pub fn seize(pid: i32, tids: &[i32]) -> Result<Self, DumpError> {
        let mut s = Seized {
            pid,
            tids: Vec::new(),
            done: false,
        };
        for &tid in tids {
            ptrace::seize(tid, 0).map_err(|source| DumpError::Seize { pid: tid, source })?;
            s.tids.push(tid);
            ptrace::interrupt(tid).map_err(|source| DumpError::Seize { pid: tid, source })?;
            wait_interrupted(tid)?;
        }
        Ok(s)
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills the process (the dump succeeded and `--leave-running` was not given).
    pub fn kill(mut self) -> Result<(), DumpError> {
        self.done = true;
        crate::sys::proc_ctl::kill(self.pid, libc::SIGKILL).map_err(|source| DumpError::Seize {
            pid: self.pid,
            source,
        })?;
        // Collect the exit as tracer, so the process is gone when dump returns; its parent
        // then reaps it as usual.
        while let Ok(Some((_, st))) = ptrace::wait(self.pid, 0) {
            if matches!(st, WaitStatus::Exited(_) | WaitStatus::Signaled(_)) {
                break;
            }
        }
        Ok(())
    }

    /// Lets the process run on.
    pub fn release(mut self) -> Result<(), DumpError> {
        self.done = true;
        let mut first = Ok(());
        for &tid in &self.tids {
            if let Err(source) = ptrace::detach(tid, 0) {
                if first.is_ok() {
                    first = Err(DumpError::Seize { pid: tid, source });
                }
            }
        }
        first
    }
}

impl Drop for Seized {
    fn drop(&mut self) {
        if !self.done {
            for &tid in &self.tids {
                if let Err(e) = ptrace::detach(tid, 0) {
                    tracing::error!(pid = tid, error = %e, "could not detach");
                }
            }
        }
    }
}

/// Waits for the PTRACE_EVENT_STOP that follows PTRACE_INTERRUPT. A signal that arrives first
/// is delivered on (it would have been delivered anyway) and we keep waiting for the stop.
fn wait_interrupted(tid: i32) -> Result<(), DumpError> {
    loop {
        let st = ptrace::wait(tid, 0).map_err(|source| DumpError::Seize { pid: tid, source })?;
        match st {
            Some((_, WaitStatus::Stopped { event, .. })) if event == PTRACE_EVENT_STOP => {
                return Ok(())
            }
            Some((_, WaitStatus::Stopped { sig, event: 0 })) => {
                tracing::debug!(
                    pid = tid,
                    sig,
                    "signal arrived while freezing; passing it on"
                );
                ptrace::cont(tid, sig).map_err(|source| DumpError::Seize { pid: tid, source })?;
            }
            Some((_, WaitStatus::Stopped { .. })) => {
                ptrace::cont(tid, 0).map_err(|source| DumpError::Seize { pid: tid, source })?;
            }
            Some((_, WaitStatus::Exited(_) | WaitStatus::Signaled(_))) => {
                return Err(DumpError::Gone { pid: tid })
            }
            _ => continue,
        }
    }
}
