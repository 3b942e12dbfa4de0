//! Freezing a process tree: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread of every
//! process under the root (no SIGSTOP, so the tree's job-control state is untouched).
//! Threads and children that appear while seizing are caught by walking again until nothing
//! new shows up; a task that exits meanwhile is dropped, not fatal. Zombies are recorded, not
//! seized. [`SeizedTree`] is a guard: dropping it detaches every thread it holds, so any early
//! return leaves the tree running as before.

use super::proc;
use super::DumpError;
use crate::sys::ptrace::{self, WaitStatus, PTRACE_EVENT_STOP};
use std::collections::BTreeMap;

/// One process of the frozen tree.
#[derive(Debug, Clone)]
pub struct SeizedProc {
    /// Its PID.
    pub pid: i32,
    /// Its parent (the root's parent is outside the tree).
    pub ppid: i32,
    /// Process group and session.
    pub pgid: i32,
    /// Session.
    pub sid: i32,
    /// Threads, leader first (empty for a zombie).
    pub tids: Vec<i32>,
    /// For a zombie: its wait status.
    pub zombie: Option<i32>,
    /// It was stopped (group-stop) when seized.
    pub stopped: bool,
}

/// Every thread of a process tree, held in ptrace-stop.
pub struct SeizedTree {
    procs: BTreeMap<i32, SeizedProc>,
    root: i32,
    done: bool,
}

impl SeizedTree {
    /// Seizes the tree rooted at `root`.
    pub fn seize(root: i32) -> Result<Self, DumpError> {
        let mut t = SeizedTree {
            procs: BTreeMap::new(),
            root,
            done: false,
        };
        let mut todo = vec![root];
        loop {
            let mut changed = false;
            while let Some(pid) = todo.pop() {
                if t.procs.contains_key(&pid) {
                    continue;
                }
                match t.add_process(pid, pid == root) {
                    Ok(()) => changed = true,
                    Err(DumpError::Gone { .. })
                    | Err(DumpError::Proc(proc::ProcError::Gone { .. }))
                        if pid != root =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            }
            // New threads, and children of every thread.
            let pids: Vec<i32> = t.procs.keys().copied().collect();
            for pid in pids {
                if t.procs[&pid].zombie.is_some() {
                    continue;
                }
                let threads = match proc::list_threads(pid) {
                    Ok(v) => v,
                    Err(e) if e.is_gone() => continue,
                    Err(e) => return Err(e.into()),
                };
                for tid in threads {
                    if !t.procs[&pid].tids.contains(&tid) && seize_one(tid)? {
                        if let Some(p) = t.procs.get_mut(&pid) {
                            p.tids.push(tid);
                        }
                        changed = true;
                    }
                }
                let tids = t.procs[&pid].tids.clone();
                for tid in tids {
                    match proc::list_children(pid, tid) {
                        Ok(kids) => {
                            todo.extend(kids.into_iter().filter(|k| !t.procs.contains_key(k)))
                        }
                        Err(e) if e.is_gone() => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !changed && todo.is_empty() {
                break;
            }
        }
        Ok(t)
    }

    fn add_process(&mut self, pid: i32, is_root: bool) -> Result<(), DumpError> {
        let st = proc::read_stat(pid)?;
        let mut p = SeizedProc {
            pid,
            ppid: if is_root { 0 } else { st.ppid },
            pgid: st.pgrp,
            sid: st.session,
            tids: Vec::new(),
            zombie: None,
            stopped: st.state == 'T',
        };
        if st.state == 'Z' || st.state == 'X' {
            if is_root {
                return Err(DumpError::Unsupported {
                    pid,
                    what: "the process is a zombie".into(),
                });
            }
            p.zombie = Some(st.exit_code);
            self.procs.insert(pid, p);
            return Ok(());
        }
        // A vfork parent sleeps unkillably-but-for-SIGKILL until its child execs or exits, so
        // it could never be frozen: refuse before touching it.
        let threads = proc::list_threads(pid)?;
        for &tid in &threads {
            for kid in proc::list_children(pid, tid).unwrap_or_default() {
                if crate::sys::proc_ctl::kcmp_same(pid, kid, crate::sys::proc_ctl::KCMP_VM)
                    .unwrap_or(false)
                {
                    return Err(DumpError::Unsupported {
                        pid,
                        what: format!(
                            "it is waiting in vfork() for its child {kid}, which shares its memory: \
                             the kernel lets it stop only once the child has exec'd or exited"
                        ),
                    });
                }
            }
        }
        // Insert first so that a failure half-way still detaches what was seized.
        self.procs.insert(pid, p);
        for tid in threads {
            if seize_one(tid)? {
                if let Some(p) = self.procs.get_mut(&pid) {
                    p.tids.push(tid);
                }
            }
        }
        if self.procs[&pid].tids.first() != Some(&pid) {
            return Err(DumpError::Unsupported {
                pid,
                what: "its thread-group leader has exited (threads without a leader are not supported)".into(),
            });
        }
        Ok(())
    }

    /// The root PID.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// The processes, root first, then by PID.
    pub fn procs(&self) -> Vec<SeizedProc> {
        let mut v: Vec<SeizedProc> = self.procs.values().cloned().collect();
        v.sort_by_key(|p| (p.pid != self.root, p.pid));
        v
    }

    /// Kills every live process of the tree (the dump succeeded without `--leave-running`)
    /// and collects their exits as tracer, so they are gone when dump returns.
    pub fn kill(mut self) -> Result<(), DumpError> {
        self.done = true;
        let live: Vec<i32> = self
            .procs
            .values()
            .filter(|p| p.zombie.is_none())
            .map(|p| p.pid)
            .collect();
        for &pid in &live {
            crate::sys::proc_ctl::kill(pid, libc::SIGKILL)
                .map_err(|source| DumpError::Seize { pid, source })?;
        }
        for p in self.procs.values().filter(|p| p.zombie.is_none()) {
            // The leader's exit is reported only after every other thread's: leader last.
            for &tid in p.tids.iter().rev() {
                while let Ok(Some((_, st))) = ptrace::wait(tid, 0) {
                    if matches!(st, WaitStatus::Exited(_) | WaitStatus::Signaled(_)) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lets the tree run on (stopped processes stopped again).
    pub fn release(mut self) -> Result<(), DumpError> {
        self.done = true;
        self.detach_all()
    }

    fn detach_all(&self) -> Result<(), DumpError> {
        let mut first = Ok(());
        for p in self.procs.values() {
            // Running code in a stopped task ends its group stop: queue a SIGSTOP while it is
            // still held, so it stops again before running any code of its own.
            if p.stopped && p.zombie.is_none() {
                let _ = crate::sys::proc_ctl::kill(p.pid, libc::SIGSTOP);
            }
            for &tid in &p.tids {
                if let Err(source) = ptrace::detach(tid, 0) {
                    tracing::error!(pid = tid, error = %source, "could not detach");
                    if first.is_ok() {
                        first = Err(DumpError::Seize { pid: tid, source });
                    }
                }
            }
        }
        first
    }
}

impl Drop for SeizedTree {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.detach_all();
        }
    }
}

/// Seizes and stops one thread. Ok(false) if it vanished first.
fn seize_one(tid: i32) -> Result<bool, DumpError> {
    match ptrace::seize(tid, 0) {
        Ok(()) => {}
        Err(e) if e.errno == libc::ESRCH => return Ok(false),
        Err(source) => return Err(DumpError::Seize { pid: tid, source }),
    }
    ptrace::interrupt(tid).map_err(|source| DumpError::Seize { pid: tid, source })?;
    match wait_interrupted(tid) {
        Ok(()) => Ok(true),
        Err(DumpError::Gone { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for the PTRACE_EVENT_STOP that follows PTRACE_INTERRUPT. A signal that arrives first
/// is delivered on (it would have been delivered anyway) and we keep waiting for the stop.
fn wait_interrupted(tid: i32) -> Result<(), DumpError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = ptrace::wait(tid, libc::WNOHANG)
            .map_err(|source| DumpError::Seize { pid: tid, source })?;
        match st {
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            None => {
                return Err(DumpError::Unsupported {
                    pid: tid,
                    what: "it did not stop within 10 s (uninterruptible sleep?)".into(),
                })
            }
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
            Some(_) => continue,
        }
    }
}
