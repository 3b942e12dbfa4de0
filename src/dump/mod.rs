//! Dump: freeze a process, collect its state into the `proto` `*State` messages, and hand
//! them to the image layer. Collection never writes files itself; the image layer never calls
//! ptrace.
//!
//! Order, chosen so that a failure at any step leaves the target as it was: check the image
//! directory; seize (guard detaches on drop); read /proc and ptrace state (registers and signal
//! mask before anything is changed); refuse what cannot be restored; infect the parasite
//! (guard cures on drop) for signal actions, timers and the pages; cure; write every image;
//! commit the inventory; only then kill the target (or detach with `--leave-running`).

pub mod fd_data;
pub mod fd_event;
pub mod fd_inet;
pub mod fd_locks;
pub mod fd_pipe;
pub mod fd_tty;
pub mod fd_unix;
pub mod files;
pub mod handback;
pub mod mm;
pub mod proc;
pub mod seize;
pub mod share;

use crate::image::{ImageError, ImageType, ImageWriter};
use crate::infect::remote::{find_syscall_insn, RemoteError, RemoteTask};
use crate::infect::{InfectError, Parasite};
use crate::proto::{
    Creds, Inventory, PosixTimer, ProcessCore, PstreeEntry, Rlimit, RseqConfig, SigInfo, TaskCore,
    UserRegs,
};
use crate::stats::Progress;
use crate::sys::{ptrace, SysError};
use proc::ProcError;
use seize::{SeizedProc, SeizedTree, Tracers};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The most tracer threads (processes dumped at once) a dump uses.
const MAX_TRACERS: usize = 4;

/// Errors of dump. Each names the pid and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Reading /proc failed.
    #[error(transparent)]
    Proc(#[from] ProcError),
    /// Writing the images failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The parasite failed.
    #[error(transparent)]
    Infect(#[from] InfectError),
    /// A remote syscall failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// Seizing, stopping, detaching or killing failed.
    #[error("pid {pid}: freezing: {source}")]
    Seize {
        /// The task.
        pid: i32,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// A ptrace read of task state failed.
    #[error("pid {pid}: reading {what}: {source}")]
    Ptrace {
        /// The task.
        pid: i32,
        /// What was read.
        what: &'static str,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// The process has something cryo cannot restore; nothing was changed.
    #[error("pid {pid}: cannot dump: {what}")]
    Unsupported {
        /// The process.
        pid: i32,
        /// What, and why.
        what: String,
    },
    /// A syscall on one of the process's fds failed.
    #[error("pid {pid}: fd {fd} ({target}): {what}: {source}")]
    Fd {
        /// The process.
        pid: i32,
        /// The fd.
        fd: i32,
        /// What /proc/PID/fd/N reads.
        target: String,
        /// What was being done.
        what: String,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// A fault injected by a test (`CRYO_FAULT`).
    #[error(transparent)]
    Fault(#[from] crate::fault::InjectedFault),
    /// The network lock failed.
    #[error("pid {pid}: {source}")]
    Net {
        /// The root of the tree.
        pid: i32,
        /// What failed.
        #[source]
        source: crate::net::lock::LockError,
    },
    /// The process does not exist (any more).
    #[error("pid {pid}: no such process")]
    Gone {
        /// The PID.
        pid: i32,
    },
    /// A tracer thread ended before its job did (it panicked).
    #[error("a tracer thread of the dump ended unexpectedly")]
    TracerGone,
    /// The image writer was taken away (another process's dump failed first).
    #[error("the checkpoint was abandoned after another failure")]
    Abandoned,
}

/// What `cryo dump` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct DumpOpts {
    /// The root of the tree to dump.
    pub pid: i32,
    /// The image directory.
    pub dir: PathBuf,
    /// Leave the process running afterwards (`-R`).
    pub leave_running: bool,
    /// Allow terminal fds (`-j`): restore will give the process cryo's terminal.
    pub shell_job: bool,
    /// Replace an existing checkpoint in `dir`.
    pub overwrite: bool,
    /// Save file locks (`--file-locks`); without it a held lock refuses the dump.
    pub file_locks: bool,
    /// Allow datagram unix sockets connected outside the process (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Sign the checkpoint with the key in this file (`--sign-key`, see `image::SignKey`).
    pub sign_key: Option<PathBuf>,
    /// Dump established TCP connections in repair mode (`--tcp-established`).
    pub tcp_established: bool,
    /// Leave out connections waiting to be accepted (`--skip-in-flight`).
    pub skip_in_flight: bool,
    /// How packets of dumped connections are held off (`--network-lock`); `None`: no lock.
    pub network_lock: Option<crate::net::lock::Backend>,
}

/// Figures from a dump.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    /// Time the process was frozen, in seconds.
    pub frozen_s: f64,
    /// Pages stored.
    pub pages_stored: u64,
    /// Pages scanned (present in the page map).
    pub pages_scanned: u64,
    /// Time freezing took (seizing and stopping every thread), in seconds.
    pub freeze_s: f64,
    /// From frozen until the checkpoint was committed, in seconds.
    pub written_s: f64,
    /// Of which streaming the pages into the page store, in seconds.
    pub pages_s: f64,
    /// Pages scanned but not stored because they were all zero.
    pub pages_zero: u64,
    /// Of those, pages the dumped process gave back to the kernel during the dump (a process
    /// the dump kills frees its all-zero anonymous pages as they are found).
    pub pages_freed: u64,
    /// Of the pages stored, those the dumped process gave back to the kernel once they were in
    /// the page store (a process the dump kills; written back if the dump fails).
    pub pages_handed: u64,
    /// Bytes of page data written.
    pub page_bytes: u64,
    /// Processes in the tree (zombies included).
    pub processes: usize,
    /// Tracer threads the dump used.
    pub workers: usize,
    /// The most processes whose state was being collected at the same moment.
    pub most_at_once: usize,
}

impl DumpStats {
    /// Adds one process's page figures.
    fn add_pages(&mut self, o: &DumpStats) {
        self.pages_scanned += o.pages_scanned;
        self.pages_stored += o.pages_stored;
        self.pages_zero += o.pages_zero;
        self.pages_freed += o.pages_freed;
        self.pages_handed += o.pages_handed;
        self.page_bytes += o.page_bytes;
        self.pages_s += o.pages_s;
    }
}

/// The checkpoint being written, shared by the tracer threads; `None` once it is committed or
/// abandoned.
type SharedWriter = Mutex<Option<ImageWriter>>;

/// Runs `f` on the shared writer.
fn with_writer<T>(
    w: &SharedWriter,
    f: impl FnOnce(&mut ImageWriter) -> Result<T, ImageError>,
) -> Result<T, DumpError> {
    let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
    let w = g.as_mut().ok_or(DumpError::Abandoned)?;
    Ok(f(w)?)
}

/// Dumps the process `opts.pid` into `opts.dir`.
pub fn dump(opts: &DumpOpts) -> Result<DumpStats, DumpError> {
    let pid = opts.pid;
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(DumpError::Gone { pid });
    }
    if pid == std::process::id() as i32 {
        return Err(DumpError::Unsupported {
            pid,
            what: "cryo cannot dump itself".into(),
        });
    }
    let mut writer = ImageWriter::create(&opts.dir, opts.overwrite)?;
    writer.set_sign_key_file(opts.sign_key.as_deref())?;
    let writer: SharedWriter = Mutex::new(Some(writer));
    let progress = Progress::new("dumping pages", 0);
    let files = mm::MappedFiles::default();
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, MAX_TRACERS);
    // The tracer threads live in this scope; everything they hold is detached or dead (and the
    // writer committed or abandoned) by the time it ends.
    let res = std::thread::scope(|s| {
        let tracers = Tracers::start(s, workers);
        dump_tree(opts, &tracers, &writer, &progress, &files)
    });
    // Everything is detached now: a process whose memory could not be written back stops.
    handback::stop_unrestored();
    res
}

/// Dumps the tree of `opts.pid` with `tracers` into `writer`.
fn dump_tree<'scope>(
    opts: &DumpOpts,
    tracers: &Tracers<'scope>,
    writer: &'scope SharedWriter,
    progress: &'scope Progress,
    files: &'scope mm::MappedFiles,
) -> Result<DumpStats, DumpError> {
    let pid = opts.pid;
    let t0 = Instant::now();
    let tree = SeizedTree::seize(pid, tracers, !opts.leave_running)?;
    let frozen_at = Instant::now();
    crate::fault::point("dump:seized")?;
    let procs = tree.procs();
    let sharing = share::process_sharing(&procs)?;
    let shares = |pid: i32, files: bool| {
        sharing
            .get(&pid)
            .is_some_and(|s| if files { s.files_owner } else { s.fs_owner } != 0)
    };
    let mut stats = DumpStats {
        freeze_s: (frozen_at - t0).as_secs_f64(),
        processes: procs.len(),
        workers: tracers.len(),
        ..DumpStats::default()
    };
    // Every fd of every process first: refusals come before anything is injected, and
    // descriptions and pipes shared between processes get ids valid across the checkpoint.
    let fd_opts = files::FdOpts {
        shell_job: opts.shell_job,
        file_locks: opts.file_locks,
        ext_unix_sk: opts.ext_unix_sk,
        tcp_established: opts.tcp_established,
        skip_in_flight: opts.skip_in_flight,
    };
    // Each process's fds are read by its tracer (the tracers are idle until the processes
    // are collected, and the reads are /proc and pidfd work, a few system calls per fd); the
    // first error in process order is the one reported.
    let reads: Vec<_> = procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| {
            // A process sharing its parent's fd table has the parent's fds: saved once, there.
            let own = !shares(p.pid, true);
            let pid = p.pid;
            let job = tracers.run(p.tracer, move || {
                if own {
                    files::collect_fds(pid, fd_opts)
                } else {
                    Ok(Vec::new())
                }
            });
            (pid, job)
        })
        .collect();
    let mut all_fds: Vec<(i32, Vec<crate::proto::FdEntry>)> = Vec::with_capacity(reads.len());
    let mut first_err = None;
    for (pid, job) in reads {
        match job.wait().and_then(|r| r) {
            Ok(fds) => all_fds.push((pid, fds)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    files::number_across_processes(&mut all_fds)?;
    fd_unix::pair_across_processes(&mut all_fds, opts.ext_unix_sk)?;
    let pty_pairs = fd_tty::pair_ptys(&mut all_fds, opts.shell_job)?;
    fd_pipe::check_pipe_ends(&all_fds)?;
    // Established connections: packets held off first, then the sockets go into repair mode
    // and are read. On failure the guard takes them out of repair mode, then unlocks.
    let net = lock_and_repair(opts, &procs, &mut all_fds)?;
    // The fds images are written here while the tracers collect the processes (they hold
    // the TCP queues, megabytes). Each is written without holding the writer, which the
    // tracers need meanwhile, and its queues go to the file without a copy.
    let write_fds = || -> Result<(), DumpError> {
        for (pid, fds) in &all_fds {
            let mut place = with_writer(writer, |w| w.reserve(ImageType::Fds, Some(*pid), fds))?;
            place.fill(fds)?;
            with_writer(writer, |w| w.finish_reserved(place))?;
        }
        Ok(())
    };
    let cx = Collecting {
        writer,
        progress,
        files,
        // A tree the dump kills gives its all-zero anonymous pages back as they are found:
        // the page store's page cache then comes partly from them (see `mm`).
        free_zero: !opts.leave_running,
    };
    let mut collected = collect_all(tracers, &procs, cx, &mut stats, write_fds)?;
    // Dropped (writing the freed pages back) before `tree` detaches, unless disarmed after
    // the kill.
    let mut handbacks = Vec::with_capacity(collected.len());
    let mut entries = Vec::with_capacity(procs.len());
    for p in &procs {
        entries.push(match p.zombie {
            Some(status) => PstreeEntry {
                pid: p.pid,
                ppid: p.ppid,
                pgid: p.pgid,
                sid: p.sid,
                threads: Vec::new(),
                zombie: true,
                exit_status: status,
                stopped: false,
                ..PstreeEntry::default()
            },
            None => {
                let fds = fds_of(&all_fds, p.pid);
                let Collected {
                    mut entry,
                    tty_nr,
                    handback,
                    ..
                } = collected
                    .remove(&p.pid)
                    .ok_or(DumpError::Gone { pid: p.pid })?;
                handbacks.push(handback);
                // A sharer's parent is in its group (share.rs): it shares its parent's.
                entry.fs_shared = shares(p.pid, false);
                entry.files_shared = shares(p.pid, true);
                fd_tty::controlling_terminal(&mut entry, tty_nr, fds, &pty_pairs, opts.shell_job)?;
                if entry.ctty_inode_id != 0 {
                    entry.tty_fg_pgrp = fd_tty::foreground_group(&all_fds, entry.ctty_inode_id)?;
                }
                entry
            }
        });
    }
    with_writer(writer, |w| w.write(ImageType::Pstree, None, &entries))?;
    crate::fault::point("dump:images")?;
    let writer = writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or(DumpError::Abandoned)?;
    writer.commit(Inventory {
        format_major: crate::image::FORMAT_MAJOR,
        format_minor: crate::image::FORMAT_MINOR,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: crate::sys::proc_ctl::kernel_release(),
        root_pid: pid,
        pids: procs.iter().map(|p| p.pid).collect(),
        manifest: Vec::new(),
        dump_time_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        shell_job: opts.shell_job,
        tcp_established: !net.repaired.is_empty(),
        net_lock: net.lock.as_ref().map(|l| l.id()).unwrap_or_default(),
        pack_size: 0, // set by commit
    })?;
    stats.frozen_s = t0.elapsed().as_secs_f64();
    stats.written_s = frozen_at.elapsed().as_secs_f64();
    let NetFreeze { repaired, lock } = net;
    if opts.leave_running {
        drop(repaired);
        if let Some(l) = lock {
            l.unlock()
                .map_err(|source| DumpError::Net { pid, source })?;
        }
        tree.release()?;
    } else {
        tree.kill()?;
        // Dead: their freed pages are nobody's any more.
        handbacks.into_iter().for_each(handback::Handback::disarm);
        // Keep the freed PIDs free for the restore as long as the allocator allows: where it
        // was about to sweep through them, it goes on past them.
        let pids: Vec<i32> = procs
            .iter()
            .flat_map(|p| std::iter::once(p.pid).chain(p.tids.iter().copied()))
            .collect();
        if let Err(e) = crate::sys::proc_ctl::advance_last_pid(&pids) {
            tracing::debug!(error = %e, "could not move the PID allocator");
        }
        // The connections die with their last reference, still in repair mode: no packet.
        // The lock stays until restore has them back.
        repaired.close_quietly();
        if let Some(l) = lock {
            let id = l.keep();
            tracing::info!(lock = %id, "packets of the dumped connections stay dropped until restore");
        }
    }
    tracing::info!(
        pid,
        processes = procs.len(),
        frozen_s = stats.frozen_s,
        pages = stats.pages_stored,
        "dumped"
    );
    Ok(stats)
}

/// The fds collected for `pid`.
fn fds_of(all: &[(i32, Vec<crate::proto::FdEntry>)], pid: i32) -> &[crate::proto::FdEntry] {
    all.iter()
        .find(|(p, _)| *p == pid)
        .map(|(_, f)| f.as_slice())
        .unwrap_or_default()
}

/// Collects every live process of the tree, each on the tracer thread that holds it, so
/// processes held by different tracers are collected (and their pages streamed) at the same
/// time. The first failure makes the jobs not yet started give up; it is the error returned.
fn collect_all<'scope>(
    tracers: &Tracers<'scope>,
    procs: &[SeizedProc],
    cx: Collecting<'scope>,
    stats: &mut DumpStats,
    meanwhile: impl FnOnce() -> Result<(), DumpError>,
) -> Result<std::collections::BTreeMap<i32, Collected>, DumpError> {
    let failed = std::sync::Arc::new(AtomicBool::new(false));
    let running = std::sync::Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let pending: Vec<_> = procs
        .iter()
        .filter(|p| p.zombie.is_none())
        .map(|p| {
            let p = p.clone();
            let (failed, running) = (failed.clone(), running.clone());
            tracers.run(p.tracer, move || {
                if failed.load(Ordering::SeqCst) {
                    return None;
                }
                let now = running.0.fetch_add(1, Ordering::SeqCst) + 1;
                running.1.fetch_max(now, Ordering::SeqCst);
                let r = collect(&p, cx);
                running.0.fetch_sub(1, Ordering::SeqCst);
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                Some(r)
            })
        })
        .collect();
    let mut out = std::collections::BTreeMap::new();
    let mut first_err = None;
    if let Err(e) = meanwhile() {
        failed.store(true, Ordering::SeqCst);
        first_err = Some(e);
    }
    for job in pending {
        match job.wait() {
            Ok(Some(Ok(c))) => {
                stats.add_pages(&c.stats);
                out.insert(c.entry.pid, c);
            }
            Ok(Some(Err(e))) | Err(e) => {
                first_err.get_or_insert(e);
            }
            Ok(None) => {}
        }
    }
    stats.most_at_once = running.1.load(Ordering::SeqCst);
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Takes the network lock for the established TCP connections among `all` (in the network
/// namespace of their process) and reads them in repair mode.
fn lock_and_repair(
    opts: &DumpOpts,
    procs: &[SeizedProc],
    all: &mut [(i32, Vec<crate::proto::FdEntry>)],
) -> Result<NetFreeze, DumpError> {
    use crate::net::{lock::NetLock, Netns};
    let conns = fd_inet::established(all);
    if conns.is_empty() {
        return Ok(NetFreeze {
            repaired: fd_inet::Repaired::default(),
            lock: None,
        });
    }
    // One namespace: the one of the processes that hold them.
    let mut ns: Option<Netns> = None;
    for (pid, list) in all.iter() {
        let holds = list.iter().any(|e| {
            matches!(&e.state, Some(crate::proto::fd_entry::State::Inet(s))
                if s.protocol == libc::IPPROTO_TCP && fd_inet::is_connection(s.state))
        });
        if !holds {
            continue;
        }
        let n = Netns::of_pid(*pid).map_err(|e| DumpError::Unsupported {
            pid: *pid,
            what: format!("opening its network namespace: {e}"),
        })?;
        match &ns {
            Some(prev) if prev.ino != n.ino => {
                return Err(DumpError::Unsupported {
                    pid: *pid,
                    what: "established TCP connections in several network namespaces are not \
                           supported"
                        .into(),
                })
            }
            Some(_) => {}
            None => ns = Some(n),
        }
    }
    let root = procs.first().map_or(opts.pid, |p| p.pid);
    let lock = match (opts.network_lock, ns) {
        (Some(backend), Some(ns)) => {
            crate::fault::point("dump:net-lock")?;
            Some(
                NetLock::lock(ns, backend, &NetLock::fresh_name(root), &conns).map_err(|e| {
                    DumpError::Net {
                        pid: root,
                        source: e,
                    }
                })?,
            )
        }
        _ => None,
    };
    let repaired = fd_inet::repair(all)?;
    Ok(NetFreeze { repaired, lock })
}

/// Connections held in repair mode and the lock that keeps their packets away. Fields drop in
/// order: the sockets leave repair mode before packets flow again.
struct NetFreeze {
    repaired: fd_inet::Repaired,
    lock: Option<crate::net::lock::NetLock>,
}

fn ptrace_err(pid: i32, what: &'static str) -> impl FnOnce(SysError) -> DumpError {
    move |source| DumpError::Ptrace { pid, what, source }
}

/// What the collection of every process shares.
#[derive(Clone, Copy)]
struct Collecting<'a> {
    /// The checkpoint being written.
    writer: &'a SharedWriter,
    progress: &'a Progress,
    /// The identities of mapped files, found once per file.
    files: &'a mm::MappedFiles,
    /// The dump is to kill the tree: all-zero anonymous pages may be freed as they are found
    /// (see `mm`).
    free_zero: bool,
}

/// Collects one live process and writes its images; returns its tree entry, its page
/// figures, its controlling terminal and its freed pages ([`Collected`]).
fn collect(p: &SeizedProc, cx: Collecting<'_>) -> Result<Collected, DumpError> {
    let Collecting {
        writer,
        progress,
        files,
        free_zero,
    } = cx;
    let mut stats = DumpStats::default();
    let pid = p.pid;
    let stat = proc::read_stat(pid)?;
    let status = proc::read_status(pid)?;
    let maps_text = proc::read_whole(std::path::Path::new(&format!("/proc/{pid}/maps")))
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(DumpError::Gone { pid })?;
    let maps = proc::parse_maps(&maps_text)?;
    // A big process the dump kills frees its zero pages as they are found, where the VmFlags
    // of their mapping allow it: smaps is read meanwhile, beside this thread (it walks every
    // page table entry: 15 ms for 1.25 GiB). Not a process with locked or pinned memory:
    // pages a device or io_uring holds are written without the page tables, so such a page
    // freed from them would no longer be the process's (VmLck counts vfio's pins too).
    let pinned = status.vm_lck_kib > 0 || status.vm_pin_kib > 0;
    let vm_flags = (free_zero && !pinned && p.resident >= mm::FREE_ZERO_FROM).then(|| {
        std::thread::spawn(move || {
            crate::sys::proc_ctl::unpin_current_thread();
            proc::read_vm_flags(pid)
        })
    });
    let (vmas, mut runs, zero_mapped) = mm::collect_vmas(pid, &maps, files)?;
    stats.pages_scanned += runs.runs.iter().map(|r| r.nr_pages).sum::<u64>();

    // Per-thread state readable through ptrace, before anything in the task changes.
    let mut tasks = Vec::with_capacity(p.tids.len());
    for &tid in &p.tids {
        tasks.push(thread_core(pid, tid)?);
    }
    let shared =
        ptrace::peek_siginfo(pid, true).map_err(ptrace_err(pid, "shared pending signals"))?;
    let timers = proc::read_timers(pid)?;
    let limits = proc::read_limits(pid)?;

    // brk, and the sigaltstack and clear-tid address of threads other than the leader, are
    // not in /proc: ask the tasks.
    if tasks.len() > 1 {
        let insn = find_syscall_insn(pid, &maps_text)?;
        let step = crate::infect::remote::may_single_step(status.sig_ign, status.sig_cgt);
        for t in tasks.iter_mut().skip(1) {
            thread_extras(insn, step, t)?;
        }
    }
    crate::fault::point("dump:collected")?;
    let mut parasite = Parasite::infect(pid, &maps_text)?;
    crate::fault::point("dump:infected")?;
    let state = parasite.task_state()?;
    let (sigactions, itimers, brk) = (state.sigactions, state.itimers, state.brk);
    let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
    let values = parasite.posix_timers(&ids)?;
    let (ss_sp, ss_size, ss_flags) = state.altstack;
    let (umask, tid_addr) = (state.umask, state.tid_address);
    // The kernel writes each thread's rseq area whenever the thread returns to user space,
    // which the blob's does: those pages are copied, not spliced (see set_copied_ranges).
    parasite.set_copied_ranges(
        tasks
            .iter()
            .filter_map(|t| t.rseq.as_ref())
            .filter(|r| r.ptr != 0)
            .map(|r| (r.ptr, r.ptr + r.len.max(32) as u64))
            .collect(),
    );
    let page_bytes = stats.pages_scanned * crate::sys::PAGE_SIZE;
    let mut pages = with_writer(writer, |w| w.create_pages_for(pid, page_bytes))?;
    let pages_at = Instant::now();
    progress.add_total(stats.pages_scanned * crate::sys::PAGE_SIZE);
    // Pages still mapped to the zero page were scanned too, and skipped as zero unread.
    stats.pages_scanned += zero_mapped;
    // Freeing saves memory, nothing more: without the flags, every zero page stays.
    match vm_flags.map(std::thread::JoinHandle::join) {
        Some(Ok(Ok(flags))) => runs.mark_freeable(pid, flags),
        Some(Ok(Err(e))) => tracing::debug!(pid, error = %e, "no VmFlags: zero pages kept"),
        Some(Err(_)) => tracing::warn!(pid, "the smaps reader panicked: zero pages kept"),
        None => {}
    }
    let stored = parasite.dump_pages_with_progress(&runs.runs, &mut pages.file, progress);
    // Stored pages the blob freed are written back when this is dropped, which a failure
    // anywhere before the kill does (here, or in dump_tree that keeps it).
    let handback = handback::Handback::new(pid, &pages.file, parasite.take_handed_over());
    let stored = stored?;
    crate::fault::point("dump:pages")?;
    stats.pages_s += pages_at.elapsed().as_secs_f64();
    stats.pages_freed = parasite.zero_freed();
    stats.pages_handed = handback.pages();
    parasite.cure()?;
    crate::fault::point("dump:cured")?;
    with_writer(writer, |w| w.finish_pages(pages))?;
    stats.pages_stored += stored.iter().map(|r| r.nr_pages).sum::<u64>();
    stats.pages_zero = stats.pages_scanned.saturating_sub(stats.pages_stored);
    if stats.pages_freed > 0 {
        tracing::debug!(
            pid,
            pages = stats.pages_freed,
            "zero pages given back by the task"
        );
    }
    stats.page_bytes = stats.pages_stored * crate::sys::PAGE_SIZE;

    let posix_timers = timers
        .iter()
        .map(|t| {
            let v = values.iter().find(|v| v.0 == t.id);
            PosixTimer {
                id: t.id,
                clock_id: t.clock_id,
                sigev_notify: t.notify,
                sigev_signo: t.signal,
                sigev_value: t.sigev_value,
                notify_tid: t.notify_tid,
                interval_ns: v.map_or(0, |v| v.1),
                value_ns: v.map_or(0, |v| v.2),
                overrun: v.map_or(0, |v| v.3),
            }
        })
        .collect();
    if let Some(leader) = tasks.first_mut() {
        leader.altstack_sp = ss_sp;
        leader.altstack_size = ss_size;
        leader.altstack_flags = ss_flags;
        leader.clear_tid_addr = tid_addr;
    }
    let personality = proc::read_lossy(std::path::Path::new(&format!("/proc/{pid}/personality")))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
    let exe = proc::read_link(pid, "exe")?;
    let core = ProcessCore {
        pid,
        sigactions,
        itimers,
        posix_timers,
        shared_pending: shared.iter().map(|s| SigInfo { raw: s.to_vec() }).collect(),
        rlimits: limits
            .iter()
            .map(|l| Rlimit {
                resource: l.resource,
                cur: l.cur,
                max: l.max,
            })
            .collect(),
        umask,
        cwd: proc::read_link(pid, "cwd")?,
        root: proc::read_link(pid, "root")?,
        creds: Some(Creds {
            uids: status.uids.to_vec(),
            gids: status.gids.to_vec(),
            groups: status.groups.clone(),
        }),
        personality,
        exe: exe.clone(),
        exit_signal: stat.exit_signal,
    };
    let mm = mm::collect_mm(pid, vmas, brk, &stat, exe)?;
    with_writer(writer, |w| {
        w.write(ImageType::Core, Some(pid), &[core])?;
        w.write(ImageType::Tasks, Some(pid), &tasks)?;
        w.write(ImageType::Mm, Some(pid), &[mm])?;
        w.write(ImageType::Pagemap, Some(pid), &stored)
    })?;
    let entry = PstreeEntry {
        pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        threads: p.tids.clone(),
        zombie: false,
        exit_status: 0,
        stopped: p.stopped,
        ..PstreeEntry::default()
    };
    Ok(Collected {
        entry,
        stats,
        tty_nr: stat.tty_nr,
        handback,
    })
}

/// What [`collect`] returns for one process.
struct Collected {
    entry: PstreeEntry,
    /// Its page figures.
    stats: DumpStats,
    /// Its controlling terminal (`tty_nr` of /proc/PID/stat, read frozen).
    tty_nr: i32,
    /// Its stored pages that were freed, written back unless the dump reaches the kill.
    handback: handback::Handback,
}

/// Registers, xsave, signal mask, private pending signals, rseq, robust list and name of one
/// thread, read through ptrace.
fn thread_core(pid: i32, tid: i32) -> Result<TaskCore, DumpError> {
    let regs = ptrace::get_regs(tid).map_err(ptrace_err(tid, "registers"))?;
    let xsave = ptrace::get_xstate(tid).map_err(ptrace_err(tid, "xsave state"))?;
    let sigmask = ptrace::get_sigmask(tid).map_err(ptrace_err(tid, "signal mask"))?;
    let pending = ptrace::peek_siginfo(tid, false).map_err(ptrace_err(tid, "pending signals"))?;
    let rseq = ptrace::get_rseq(tid).map_err(ptrace_err(tid, "rseq configuration"))?;
    let (robust, robust_len) =
        crate::sys::proc_ctl::get_robust_list(tid).map_err(ptrace_err(tid, "robust list"))?;
    Ok(TaskCore {
        tid,
        regs: Some(UserRegs::from(&regs)),
        xsave,
        sigmask,
        pending: pending
            .iter()
            .map(|s| SigInfo { raw: s.to_vec() })
            .collect(),
        altstack_sp: 0,
        altstack_size: 0,
        altstack_flags: libc::SS_DISABLE,
        clear_tid_addr: 0,
        robust_list: robust,
        robust_list_len: robust_len,
        rseq: Some(RseqConfig {
            ptr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            flags: rseq.flags,
            sig: rseq.signature,
        }),
        comm: proc::read_comm(pid, tid)?,
    })
}

/// sigaltstack and clear-tid address of a non-leader thread, asked with remote syscalls in
/// that thread. Their out-arguments go to scratch space on the thread's own stack, well below
/// its stack pointer, whose bytes are saved and put back. `step`: SIGTRAP's action is the
/// default, so each call may take one stop (see [`RemoteTask::set_single_step`]).
fn thread_extras(insn: u64, step: bool, t: &mut TaskCore) -> Result<(), DumpError> {
    let tid = t.tid;
    let rsp = t.regs.as_ref().map_or(0, |r| r.rsp);
    let scratch = (rsp.saturating_sub(4096)) & !15;
    let mut saved = [0u8; 32];
    crate::sys::mem::read(tid, scratch, &mut saved).map_err(ptrace_err(tid, "stack scratch"))?;
    let mut rt = RemoteTask::new(tid, insn)?;
    rt.set_single_step(step);
    let res = (|| -> Result<(), DumpError> {
        rt.syscall(
            || "sigaltstack".into(),
            libc::SYS_sigaltstack,
            [0, scratch, 0, 0, 0, 0],
        )?;
        let mut ss = [0u8; 24];
        crate::sys::mem::read(tid, scratch, &mut ss).map_err(ptrace_err(tid, "sigaltstack"))?;
        let word = |i: usize| u64::from_le_bytes(ss[i..i + 8].try_into().unwrap_or([0; 8]));
        t.altstack_sp = word(0);
        t.altstack_flags = word(8) as u32 as i32;
        t.altstack_size = word(16);
        rt.syscall(
            || "prctl(PR_GET_TID_ADDRESS)".into(),
            libc::SYS_prctl,
            [libc::PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0, 0],
        )?;
        let mut a = [0u8; 8];
        crate::sys::mem::read(tid, scratch, &mut a)
            .map_err(ptrace_err(tid, "clear-tid address"))?;
        t.clear_tid_addr = u64::from_le_bytes(a);
        Ok(())
    })();
    let put_back =
        crate::sys::mem::write(tid, scratch, &saved).map_err(ptrace_err(tid, "stack scratch"));
    rt.restore()?;
    res.and(put_back)
}
