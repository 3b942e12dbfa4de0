//! Freezing a process tree: PTRACE_SEIZE + PTRACE_INTERRUPT on every thread of every
//! process under the root (no SIGSTOP, so the tree's job-control state is untouched).
//! Threads and children that appear while seizing are caught by walking again until nothing
//! new shows up; a task that exits meanwhile is dropped, not fatal. Zombies are recorded, not
//! seized. [`SeizedTree`] is a guard: dropping it detaches every thread it holds, so any early
//! return leaves the tree running as before.
//!
//! ptrace requests on a tracee are accepted only from the thread that attached it, so the
//! work is spread over a small pool of tracer threads ([`Tracers`]): each process is seized
//! by one of them (the least loaded, by resident memory) and every later ptrace step for it
//! (collecting, the parasite, detaching, reaping) runs as a job on that same thread. That is
//! what lets several processes be dumped at once.
//!
//! Each tracer runs on a CPU of its own, and, when the dump is to kill the tree, the threads
//! it seizes are moved to that CPU: a ptrace stop then wakes the other side on the CPU it is
//! on. A remote syscall took 13 us that way and 65 us with the two on different CPUs of this
//! virtual machine (micro-benchmark); the tree bench's collection went from 10.4-10.8 to
//! 7.8-8.6 ms. A tree that goes on running (`--leave-running`) is not moved: since Linux 6.2
//! the kernel keeps the mask given to sched_setaffinity as the task's own request through
//! later cpuset changes, so putting the old affinity back would not leave the task exactly as
//! it was. If a dump that moved threads fails, they get their affinity back (see
//! `proc_ctl::give_affinity_back`) before they are detached.

use super::proc;
use super::DumpError;
use crate::sys::proc_ctl::{self, CpuMask};
use crate::sys::ptrace::{self, WaitStatus, PTRACE_EVENT_STOP};
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

/// A job for a tracer thread.
type Job<'scope> = Box<dyn FnOnce() + Send + 'scope>;

/// A fixed pool of tracer threads, each with its own job queue. The threads live in a
/// `std::thread::scope` and end when the pool is dropped.
pub struct Tracers<'scope> {
    queues: Vec<mpsc::Sender<Job<'scope>>>,
    /// The CPU each thread is pinned to, if any.
    pins: Vec<Option<CpuMask>>,
    /// Resident bytes of the processes given to each tracer so far.
    load: Mutex<Vec<u64>>,
    /// How long a thread waiting for a job or an answer looks before it sleeps.
    linger: Duration,
}

/// How long an idle tracer keeps looking for its next job before it sleeps, when a CPU is
/// free. Jobs come in bursts (a dump hands each tracer a process every few tens of
/// microseconds while it seizes, then the processes to collect); a thread that sleeps in
/// between lets its CPU go idle, and on a virtual machine waking an idle CPU took up to several
/// milliseconds (measured: a seize job waited 3.7 ms for its thread while the other tracer ran
/// at once). When other tasks keep every CPU busy, no CPU goes idle, and a thread looking
/// (yielding) hands its CPU to them for a time slice where a sleeping one would be woken at
/// once: then there is no linger (tcp bench, whose peer and dumped child spin: dump 37.0 ->
/// 33.4 ms without it; tree bench, idle CPUs: 30.3 -> 25.7 ms with it).
const TRACER_LINGER: Duration = Duration::from_micros(300);

/// The linger for a pool started now (see [`TRACER_LINGER`]). `CRYO_LINGER_US` overrides it
/// (for A/B measurements; 0 is also taken as every CPU busy, see [`Tracers::cpus_busy`]).
fn linger_now() -> Duration {
    if let Some(us) = std::env::var("CRYO_LINGER_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_micros(us);
    }
    match crate::sys::proc_ctl::cpus_busy_with_others() {
        Some(true) => Duration::ZERO,
        _ => TRACER_LINGER,
    }
}

/// Receives from `rx`, looking for up to `linger` (yielding the CPU to anyone who needs it)
/// before sleeping (see [`TRACER_LINGER`]). None once the sender is gone.
fn linger_recv<T>(rx: &mpsc::Receiver<T>, linger: Duration) -> Option<T> {
    if linger.is_zero() {
        return rx.recv().ok();
    }
    let until = Instant::now() + linger;
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) if Instant::now() < until => std::thread::yield_now(),
            Err(mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// The answer of a job queued with [`Tracers::run`].
#[must_use = "a job's result must be waited for"]
pub struct Pending<T>(mpsc::Receiver<T>, Duration);

impl<T> Pending<T> {
    /// Waits for the job (lingering like the tracers). Fails only if its tracer thread is gone
    /// (it panicked).
    pub fn wait(self) -> Result<T, DumpError> {
        linger_recv(&self.0, self.1).ok_or(DumpError::TracerGone)
    }
}

impl<'scope> Tracers<'scope> {
    /// Starts `n` (at least one) tracer threads in `scope`.
    pub fn start<'env>(scope: &'scope std::thread::Scope<'scope, 'env>, n: usize) -> Self {
        let n = n.max(1);
        let linger = linger_now();
        let mut queues = Vec::with_capacity(n);
        let mut pins = Vec::with_capacity(n);
        // Each tracer on a CPU of its own, and the threads it seizes with it (see the module
        // doc).
        for pin in crate::sys::proc_ctl::worker_cpus(n) {
            let (tx, rx) = mpsc::channel::<Job<'scope>>();
            pins.push(pin);
            scope.spawn(move || {
                if let Some(m) = &pin {
                    let _ = crate::sys::proc_ctl::set_affinity(0, m);
                }
                while let Some(job) = linger_recv(&rx, linger) {
                    job();
                }
            });
            queues.push(tx);
        }
        Self {
            queues,
            pins,
            load: Mutex::new(vec![0; n]),
            linger,
        }
    }

    /// Whether other tasks kept every CPU busy when the pool started (then nobody lingers).
    pub fn cpus_busy(&self) -> bool {
        self.linger.is_zero()
    }

    /// How many tracer threads there are.
    pub fn len(&self) -> usize {
        self.queues.len()
    }

    /// Always false: a pool has at least one thread.
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// Queues `f` on tracer `idx`; its result comes back through the returned [`Pending`].
    pub fn run<T, F>(&self, idx: usize, f: F) -> Pending<T>
    where
        T: Send + 'scope,
        F: FnOnce() -> T + Send + 'scope,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job<'scope> = Box::new(move || {
            let _ = tx.send(f());
        });
        if let Some(q) = self.queues.get(idx) {
            // A send fails only if the thread is gone; then the Pending reports it.
            let _ = q.send(job);
        }
        Pending(rx, self.linger)
    }

    /// The CPU tracer `idx` runs on, if it is pinned.
    fn pin(&self, idx: usize) -> Option<CpuMask> {
        self.pins.get(idx).copied().flatten()
    }

    /// Runs `f` on tracer `idx` and waits for it.
    pub fn call<T, F>(&self, idx: usize, f: F) -> Result<T, DumpError>
    where
        T: Send + 'scope,
        F: FnOnce() -> T + Send + 'scope,
    {
        self.run(idx, f).wait()
    }

    /// The least loaded tracer, charged with `bytes` more.
    fn pick(&self, bytes: u64) -> usize {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        let idx = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
        if let Some(l) = load.get_mut(idx) {
            *l += bytes.max(1);
        }
        idx
    }
}

/// Killed processes with at least this much resident memory have it freed by the dumper too
/// (see [`SeizedTree::kill`]).
const MRELEASE_FROM: u64 = 64 << 20;

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
    /// The tracer thread ([`Tracers`]) that holds its threads.
    pub tracer: usize,
    /// Its resident memory when it was seized, in bytes.
    pub resident: u64,
}

/// Every thread of a process tree, held in ptrace-stop.
pub struct SeizedTree<'t, 'scope> {
    procs: BTreeMap<i32, SeizedProc>,
    /// Threads moved to their tracer's CPU, with their own affinity to put back.
    moved: Vec<(i32, CpuMask)>,
    root: i32,
    done: bool,
    tracers: &'t Tracers<'scope>,
}

impl<'t, 'scope> SeizedTree<'t, 'scope> {
    /// Seizes the tree rooted at `root`, each process by one of `tracers`; `move_threads`: the
    /// tree is to be killed, and its threads may run on their tracers' CPUs meanwhile (see the
    /// module doc).
    pub fn seize(
        root: i32,
        tracers: &'t Tracers<'scope>,
        move_threads: bool,
    ) -> Result<Self, DumpError> {
        let mut t = SeizedTree {
            procs: BTreeMap::new(),
            moved: Vec::new(),
            root,
            done: false,
            tracers,
        };
        let mut todo = vec![root];
        // Processes whose every thread was seized (stopped) when their threads were last
        // listed: they can make no new thread or child, so they are not listed again until
        // the final pass.
        let mut settled: BTreeSet<i32> = BTreeSet::new();
        loop {
            let mut changed = false;
            // Whether this pass left out a settled process.
            let mut skipped = false;
            while let Some(pid) = todo.pop() {
                if t.procs.contains_key(&pid) {
                    continue;
                }
                match t.add_process(pid, pid == root, move_threads) {
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
                if settled.contains(&pid) {
                    skipped = true;
                    continue;
                }
                let threads = match proc::list_threads(pid) {
                    Ok(v) => v,
                    Err(e) if e.is_gone() => continue,
                    Err(e) => return Err(e.into()),
                };
                let tracer = t.procs[&pid].tracer;
                let pin = t.tracers.pin(tracer).filter(|_| move_threads);
                let mut all_held = true;
                for tid in threads {
                    if !t.procs[&pid].tids.contains(&tid) {
                        all_held = false;
                        let busy = t.tracers.cpus_busy();
                        let seized = t
                            .tracers
                            .call(tracer, move || seize_and_move(tid, busy, pin))??;
                        if let Some(moved) = seized {
                            t.moved.extend(moved.map(|m| (tid, m)));
                            if let Some(p) = t.procs.get_mut(&pid) {
                                p.tids.push(tid);
                            }
                            changed = true;
                        }
                    }
                }
                if all_held {
                    settled.insert(pid);
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
                if !skipped {
                    break;
                }
                // Done only after a pass over every process, settled or not, that finds
                // nothing new (an orphan reparented to a subreaper of the tree after that
                // subreaper was listed, say).
                settled.clear();
            }
        }
        Ok(t)
    }

    fn add_process(
        &mut self,
        pid: i32,
        is_root: bool,
        move_threads: bool,
    ) -> Result<(), DumpError> {
        let st = proc::read_stat(pid)?;
        let mut p = SeizedProc {
            pid,
            ppid: if is_root { 0 } else { st.ppid },
            pgid: st.pgrp,
            sid: st.session,
            tids: Vec::new(),
            zombie: None,
            stopped: st.state == 'T',
            tracer: 0,
            resident: 0,
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
        p.resident = proc::resident_bytes(pid);
        p.tracer = self.tracers.pick(p.resident);
        let tracer = p.tracer;
        // Insert first so that a failure half-way still detaches what was seized.
        self.procs.insert(pid, p);
        let busy = self.tracers.cpus_busy();
        let pin = self.tracers.pin(tracer).filter(|_| move_threads);
        let seized = self.tracers.call(tracer, move || {
            let mut seized = Vec::with_capacity(threads.len());
            let mut moved = Vec::new();
            for tid in threads {
                match seize_and_move(tid, busy, pin) {
                    Ok(Some(own)) => {
                        seized.push(tid);
                        moved.extend(own.map(|m| (tid, m)));
                    }
                    Ok(None) => {}
                    Err(e) => return (seized, moved, Err(e)),
                }
            }
            (seized, moved, Ok(()))
        })?;
        if let Some(p) = self.procs.get_mut(&pid) {
            p.tids.extend_from_slice(&seized.0);
        }
        self.moved.extend(seized.1);
        seized.2?;
        if self.procs[&pid].tids.is_empty() {
            // It exited between its listing and its seizing (a short-lived child): its parent
            // is frozen or about to be, so it stays a zombie, and is dumped as one.
            return match settle_exit(pid) {
                Some(code) => {
                    if let Some(p) = self.procs.get_mut(&pid) {
                        p.zombie = Some(code);
                        p.stopped = false;
                    }
                    Ok(())
                }
                None => {
                    self.procs.remove(&pid);
                    Err(DumpError::Gone { pid })
                }
            };
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

    /// The tracer threads holding the tree.
    pub fn tracers(&self) -> &'t Tracers<'scope> {
        self.tracers
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
        // Big processes first, each with a pidfd to free its memory from here (below).
        let mut live: Vec<(i32, bool)> = self
            .procs
            .values()
            .filter(|p| p.zombie.is_none())
            .map(|p| (p.pid, p.resident >= MRELEASE_FROM))
            .collect();
        live.sort_by_key(|&(_, big)| !big);
        let big: Vec<(i32, OwnedFd)> = live
            .iter()
            .filter(|p| p.1)
            .filter_map(|&(pid, _)| proc_ctl::pidfd_open(pid).ok().map(|fd| (pid, fd)))
            .collect();
        for &(pid, _) in &live {
            crate::sys::proc_ctl::kill(pid, libc::SIGKILL)
                .map_err(|source| DumpError::Seize { pid, source })?;
        }
        // A big process's memory is freed from here too, while its exit frees it on its
        // tracer's CPU, and the two share the work (1.25 GiB: 121 -> 63 ms in a
        // micro-benchmark; a 1 GiB dump's kill and exit 113-134 -> 65-73 ms). That works only if this
        // call comes before the process's exit has let go of its memory (ESRCH then: the exit
        // does all of it, as without the call).
        for (pid, fd) in &big {
            match proc_ctl::process_mrelease(fd) {
                Ok(()) => tracing::debug!(pid, "memory freed beside the exit"),
                Err(e) => tracing::debug!(pid, error = %e, "memory left to the exit"),
            }
        }
        // Each tracer collects the exits of the threads it holds.
        let pending: Vec<_> = self
            .by_tracer()
            .into_iter()
            .map(|(tracer, procs)| {
                self.tracers.run(tracer, move || {
                    for tids in procs {
                        // The leader's exit is reported only after every other thread's: leader
                        // last.
                        for &tid in tids.iter().rev() {
                            while let Ok(Some((_, st))) = ptrace::wait(tid, 0) {
                                if matches!(st, WaitStatus::Exited(_) | WaitStatus::Signaled(_)) {
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for p in pending {
            p.wait()?;
        }
        Ok(())
    }

    /// The threads of the live processes, grouped by the tracer that holds them.
    fn by_tracer(&self) -> BTreeMap<usize, Vec<Vec<i32>>> {
        let mut m: BTreeMap<usize, Vec<Vec<i32>>> = BTreeMap::new();
        for p in self.procs.values().filter(|p| p.zombie.is_none()) {
            m.entry(p.tracer).or_default().push(p.tids.clone());
        }
        m
    }

    /// Lets the tree run on (stopped processes stopped again).
    pub fn release(mut self) -> Result<(), DumpError> {
        self.done = true;
        self.detach_all()
    }

    fn detach_all(&self) -> Result<(), DumpError> {
        for (tid, mask) in &self.moved {
            match proc_ctl::give_affinity_back(*tid, mask) {
                Ok(()) => {}
                // It exited meanwhile.
                Err(e) if e.errno == libc::ESRCH => {}
                Err(e) => {
                    tracing::warn!(tid, error = %e, "could not give a thread its CPU affinity back")
                }
            }
        }
        for p in self.procs.values() {
            // Running code in a stopped task ends its group stop: queue a SIGSTOP while it is
            // still held, so it stops again before running any code of its own.
            if p.stopped && p.zombie.is_none() {
                let _ = crate::sys::proc_ctl::kill(p.pid, libc::SIGSTOP);
            }
        }
        let pending: Vec<_> = self
            .by_tracer()
            .into_iter()
            .map(|(tracer, procs)| {
                self.tracers.run(tracer, move || {
                    let mut first = Ok(());
                    for &tid in procs.iter().flatten() {
                        if let Err(source) = ptrace::detach(tid, 0) {
                            tracing::error!(pid = tid, error = %source, "could not detach");
                            if first.is_ok() {
                                first = Err(DumpError::Seize { pid: tid, source });
                            }
                        }
                    }
                    first
                })
            })
            .collect();
        let mut first = Ok(());
        for p in pending {
            let r = p.wait().and_then(|r| r);
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for SeizedTree<'_, '_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.detach_all();
        }
    }
}

/// Waits (up to 100 ms) for a process that could not be seized because it is exiting to be a
/// zombie; returns its exit status, or None if it is gone (reaped) or does not turn into one.
fn settle_exit(pid: i32) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        match proc::read_stat(pid) {
            Ok(st) if st.state == 'Z' => return Some(st.exit_code),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            _ => return None,
        }
    }
}

/// Whether task `tid` is exiting (a zombie or dead thread, or already gone).
fn exiting(tid: i32) -> bool {
    match proc::read_stat(tid) {
        Ok(st) => matches!(st.state, 'Z' | 'X'),
        Err(e) => e.is_gone(),
    }
}

/// Seizes thread `tid` ([`seize_one`]) and moves it to the CPU `pin` of its tracer, if any
/// (see the module doc). None if it vanished; else its own affinity, to be put back, if it was
/// moved (a thread whose cpuset excludes that CPU stays where it is).
fn seize_and_move(
    tid: i32,
    busy: bool,
    pin: Option<CpuMask>,
) -> Result<Option<Option<CpuMask>>, DumpError> {
    if !seize_one(tid, busy)? {
        return Ok(None);
    }
    let moved = pin.and_then(|pin| {
        let own = proc_ctl::get_affinity(tid).ok()?;
        proc_ctl::set_affinity(tid, &pin).ok()?;
        Some(own)
    });
    Ok(Some(moved))
}

/// Seizes and stops one thread. Ok(false) if it vanished or was already exiting (ptrace
/// refuses a task that has exited: EPERM). `busy`: other tasks keep every CPU busy (see
/// [`wait_interrupted`]).
fn seize_one(tid: i32, busy: bool) -> Result<bool, DumpError> {
    match ptrace::seize(tid, 0) {
        Ok(()) => {}
        Err(e) if e.errno == libc::ESRCH => return Ok(false),
        Err(e) if e.errno == libc::EPERM && exiting(tid) => return Ok(false),
        Err(source) => return Err(DumpError::Seize { pid: tid, source }),
    }
    ptrace::interrupt(tid).map_err(|source| DumpError::Seize { pid: tid, source })?;
    match wait_interrupted(tid, busy) {
        Ok(()) => Ok(true),
        Err(DumpError::Gone { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits for the PTRACE_EVENT_STOP that follows PTRACE_INTERRUPT. A signal that arrives first
/// is delivered on (it would have been delivered anyway) and we keep waiting for the stop.
///
/// A running task stops within microseconds; one asleep in the kernel may take longer. Where a
/// CPU is free, yield first (a sleep, however short, costs the timer slack: 50 us, more than
/// the stop takes), then nap. Where other tasks keep every CPU busy (`busy`), a yield hands
/// the CPU to one of them for a whole time slice (measured: a single yield_now took 2-4 ms in
/// the tcp bench, whose peer spins), so then only short naps: a timer wake-up gets the CPU
/// back at once.
fn wait_interrupted(tid: i32, busy: bool) -> Result<(), DumpError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (max_yields, max_nap) = if busy {
        (0, Duration::from_micros(100))
    } else {
        (32, Duration::from_millis(1))
    };
    let mut nap = Duration::from_micros(10);
    let mut yields = 0u32;
    loop {
        let st = ptrace::wait(tid, libc::WNOHANG)
            .map_err(|source| DumpError::Seize { pid: tid, source })?;
        match st {
            None if yields < max_yields => {
                yields += 1;
                std::thread::yield_now();
            }
            None if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(max_nap);
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
