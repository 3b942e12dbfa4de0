//! Restore: read and validate a checkpoint completely, then recreate its process with the
//! original PID and state.
//!
//! Design (remote construction): cryo forks a child at the saved PID (clone3 `set_tid`,
//! `ns_last_pid` as fallback); the child sets up its own fd table, cwd, umask and rlimits and
//! stops itself under `PTRACE_TRACEME`. cryo then builds the rest from outside with remote
//! syscalls ([`crate::infect::remote`]) executed from a small trampoline page: it unmaps
//! everything the child inherited, moves the vdso/vvar to their saved addresses, maps the saved
//! VMAs, fills their pages and checks their checksums (`fill`: userfaultfd copies from the
//! page store mapped in cryo), sets mm fields, signal state, timers and credentials, unmaps the trampoline, sets the registers and
//! detaches. No restorer blob has to run inside the target, every step is checked where it
//! happens, and a failure at any step kills the half-built child (it is ours, traced with
//! `PTRACE_O_EXITKILL` and `PR_SET_PDEATHSIG`), so nothing is left behind.

mod child;
mod fd_data;
mod fd_event;
mod fd_inet;
mod fd_locks;
mod fd_pipe;
mod fd_tty;
mod fd_unix;
mod files;
mod fill;
pub mod layout;
mod memory;
mod remote_ctx;
mod shmem;
mod stub;
mod task_state;
pub mod tree;

use crate::image::{ImageError, ImageReader, ImageType, PagesLoc};
use crate::infect::remote::{find_syscall_insn, RemoteError, RemoteTask};
use crate::proto::{
    FdEntry, FdKind, MmState, PageRun, ProcessCore, PstreeEntry, TaskCore, VmaKind,
};
use crate::sys::ptrace::{self, WaitStatus};
use crate::sys::{proc_ctl, task, SysError, PAGE_SIZE};
use remote_ctx::{Call, Ctx, TRAMPOLINE_LEN};
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Errors of restore. Each names the pid, file or address involved.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint could not be read or failed validation.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The network lock failed.
    #[error("pid {pid}: {source}")]
    Net {
        /// The root of the tree.
        pid: i32,
        /// What failed.
        #[source]
        source: crate::net::lock::LockError,
    },
    /// The checkpoint is inconsistent or cannot be restored here.
    #[error("pid {pid}: {what}")]
    Invalid {
        /// The process concerned.
        pid: i32,
        /// What is wrong.
        what: String,
    },
    /// The PID is in use by another process.
    #[error("pid {pid} is already in use by another process; cannot restore it")]
    PidTaken {
        /// The PID.
        pid: i32,
    },
    /// A system call of the restorer failed.
    #[error("pid {pid}: {what}: {source}")]
    Sys {
        /// The process concerned.
        pid: i32,
        /// What was being done.
        what: String,
        /// The failed call.
        #[source]
        source: SysError,
    },
    /// A remote syscall in the child failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The child failed while preparing itself.
    #[error("{0}")]
    Child(String),
    /// A fault injected by a test (`CRYO_FAULT`).
    #[error(transparent)]
    Fault(#[from] crate::fault::InjectedFault),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What `cryo restore` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Return as soon as the process runs (`-d`).
    pub detach: bool,
    /// Write the restored root PID here.
    pub pidfile: Option<PathBuf>,
    /// Give the restored process cryo's terminal (`-j`).
    pub shell_job: bool,
    /// Refuse the checkpoint unless it is signed with the key in this file (`--sign-key`).
    pub sign_key: Option<PathBuf>,
    /// Restore established TCP connections as closed sockets (`--tcp-close`).
    pub tcp_close: bool,
    /// Leave the page store's pages in the page cache (`--keep-page-cache`; see `fill`).
    pub keep_page_cache: bool,
}

/// How a restore ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The process runs; cryo did not wait for it.
    Detached {
        /// Its PID.
        pid: i32,
    },
    /// cryo waited and the process ended.
    Exited {
        /// Its PID.
        pid: i32,
        /// Exit code, or 128 + signal number.
        code: i32,
    },
}

/// Everything saved about one process, loaded and validated.
pub struct ProcessImage {
    /// Its place in the tree.
    pub pstree: PstreeEntry,
    /// Process-wide state.
    pub core: ProcessCore,
    /// Per-thread state, leader first.
    pub tasks: Vec<TaskCore>,
    /// The address space.
    pub mm: MmState,
    /// Stored page runs.
    pub pagemap: Vec<PageRun>,
    /// Open files.
    pub fds: Vec<FdEntry>,
}

impl ProcessImage {
    /// The PID.
    pub fn pid(&self) -> i32 {
        self.pstree.pid
    }

    fn load(r: &ImageReader, pstree: PstreeEntry) -> Result<Self, RestoreError> {
        let pid = pstree.pid;
        Ok(Self {
            core: r.read_one(ImageType::Core, Some(pid))?,
            tasks: r.read(ImageType::Tasks, Some(pid))?,
            mm: r.read_one(ImageType::Mm, Some(pid))?,
            pagemap: r.read(ImageType::Pagemap, Some(pid))?,
            fds: r.read(ImageType::Fds, Some(pid))?,
            pstree,
        })
    }

    /// Consistency checks that need no process: everything here is refused before any process
    /// is created.
    fn validate(&self, shell_job: bool) -> Result<(), RestoreError> {
        let pid = self.pid();
        let bad = |what: String| Err(RestoreError::Invalid { pid, what });
        if self.tasks.is_empty() || self.tasks[0].tid != pid {
            return bad(format!(
                "tasks-{pid}.img: the first task is not the leader {pid}"
            ));
        }
        let tids: Vec<i32> = self.tasks.iter().map(|t| t.tid).collect();
        if tids != self.pstree.threads {
            return bad(format!(
                "tasks-{pid}.img: threads {tids:?} differ from pstree.img's {:?}",
                self.pstree.threads
            ));
        }
        if self.tasks.iter().any(|t| t.regs.is_none()) {
            return bad(format!("tasks-{pid}.img: a task has no registers"));
        }
        let mut prev_end = 0u64;
        let mut checked = std::collections::HashSet::new();
        for v in &self.mm.vmas {
            if v.start >= v.end || v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 {
                return bad(format!("mm-{pid}.img: bad VMA {:#x}-{:#x}", v.start, v.end));
            }
            if v.start < prev_end {
                return bad(format!(
                    "mm-{pid}.img: VMA {:#x} overlaps the one before",
                    v.start
                ));
            }
            prev_end = v.end;
            let by_path = matches!(v.kind(), VmaKind::VmaFilePrivate | VmaKind::VmaFileShared);
            if let Some(f) = v.file.as_ref().filter(|_| by_path) {
                if f.path.is_empty() {
                    return bad(format!("mm-{pid}.img: file VMA {:#x} has no path", v.start));
                }
                // Once per file (a library is mapped four or five times).
                if checked.insert((f.path.as_str(), f.size, f.mtime_ns)) {
                    check_file_same(pid, &f.path, f.size, f.mtime_ns)?;
                }
            }
        }
        let mut prev = 0u64;
        for r in &self.pagemap {
            let Some(end) = r
                .nr_pages
                .checked_mul(PAGE_SIZE)
                .and_then(|len| r.vaddr.checked_add(len))
            else {
                return bad(format!(
                    "pagemap-{pid}.img: run {:#x}+{} pages overflows",
                    r.vaddr, r.nr_pages
                ));
            };
            let inside = self
                .mm
                .vmas
                .iter()
                .any(|v| v.start <= r.vaddr && end <= v.end && !memory::is_special(v));
            if r.vaddr < prev || !inside || r.vaddr % PAGE_SIZE != 0 {
                return bad(format!(
                    "pagemap-{pid}.img: run {:#x}+{} pages is outside the saved VMAs or out of order",
                    r.vaddr, r.nr_pages
                ));
            }
            prev = end;
        }
        if self.pstree.files_shared && !self.fds.is_empty() {
            return bad(format!(
                "fds-{pid}.img: it shares its parent's fd table, yet has fds of its own"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.fds {
            if f.fd < 0 || !seen.insert(f.fd) {
                return bad(format!("fds-{pid}.img: fd {} is invalid or repeated", f.fd));
            }
            if f.kind() == FdKind::FdTty && !shell_job {
                return bad(format!(
                    "fd {} is the terminal {}: restore with --shell-job (-j)",
                    f.fd, f.path
                ));
            }
            if f.kind() == FdKind::FdReg && f.mode & libc::S_IFMT == libc::S_IFREG {
                check_open_file(pid, f)?;
            }
        }
        files::preflight(&self.fds).map_err(|what| RestoreError::Invalid {
            pid,
            what: format!("fds-{pid}.img: {what}"),
        })?;
        if !self.core.root.is_empty() && self.core.root != "/" {
            return bad(format!(
                "root {} is not / (chroot is not supported yet)",
                self.core.root
            ));
        }
        Ok(())
    }
}

/// An open regular file may have grown or shrunk since the dump (a log file of a process left
/// running, say): that is reported. One that is now shorter than the saved offset (without
/// O_APPEND) is refused, since the process would read or write at a place that no longer
/// holds what it did.
fn check_open_file(pid: i32, f: &FdEntry) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&f.path).map_err(|source| RestoreError::Io {
        path: f.path.clone(),
        source,
    })?;
    if md.size() != f.size {
        tracing::warn!(pid, fd = f.fd, path = %f.path, was = f.size, now = md.size(), "file size changed since the dump");
    }
    let append = f.flags as i32 & libc::O_APPEND != 0;
    if !append && md.size() < f.pos {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "fd {}: {} is now {} bytes, shorter than its saved offset {}",
                f.fd,
                f.path,
                md.size(),
                f.pos
            ),
        });
    }
    Ok(())
}

/// Refuses a mapped file that is missing or whose size or mtime changed since the dump: the
/// pages cryo did not store come from that file.
fn check_file_same(pid: i32, path: &str, size: u64, mtime_ns: i64) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).map_err(|source| RestoreError::Io {
        path: path.to_string(),
        source,
    })?;
    let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    if md.is_file() && (md.size() != size || (mtime_ns != 0 && mtime != mtime_ns)) {
        return Err(RestoreError::Invalid {
            pid,
            what: format!(
                "{path} changed since the dump (size {} -> {}{})",
                size,
                md.size(),
                if mtime_ns != 0 && mtime != mtime_ns {
                    ", modified"
                } else {
                    ""
                }
            ),
        });
    }
    Ok(())
}

/// Kills every process of a half-restored tree unless disarmed, and reaps them: cryo is a
/// child subreaper while it restores, so orphans come back to it.
struct TreeGuard {
    pids: Vec<i32>,
    armed: bool,
}

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if self.armed {
            for &pid in &self.pids {
                let _ = proc_ctl::kill(pid, libc::SIGKILL);
            }
            while let Ok(Some(_)) = ptrace::wait(-1, 0) {}
        }
    }
}

/// A session leader with a pseudo-terminal of the checkpoint as controlling terminal: its
/// foreground process group, set with a remote TIOCSPGRP once every process exists.
fn restore_foreground_group(
    ctx: &mut remote_ctx::Ctx,
    img: &ProcessImage,
) -> Result<(), RestoreError> {
    let e = &img.pstree;
    if e.ctty_inode_id == 0 || e.tty_fg_pgrp == 0 || e.tty_fg_pgrp == e.pgid {
        return Ok(());
    }
    if e.tty_fd < 0 {
        tracing::warn!(
            pid = e.pid,
            pgrp = e.tty_fg_pgrp,
            "no fd on its terminal: its foreground process group stays its own"
        );
        return Ok(());
    }
    let addr = ctx.put(0, &e.tty_fg_pgrp.to_ne_bytes())?;
    ctx.sys(
        || format!("ioctl(TIOCSPGRP, {}) on fd {}", e.tty_fg_pgrp, e.tty_fd),
        libc::SYS_ioctl,
        [e.tty_fd as u64, libc::TIOCSPGRP, addr, 0, 0, 0],
    )?;
    Ok(())
}

/// The network lock during a restore. If the dump left its lock in place (restore on the same
/// host), that one is used and stays if the restore fails, so the checkpoint can be restored
/// again without the peers having seen a reset; a lock this restore had to take itself
/// (another host, or the rules were removed) goes on failure.
struct NetLockGuard {
    lock: Option<crate::net::lock::NetLock>,
    from_dump: bool,
}

impl NetLockGuard {
    fn take(
        inv: &crate::proto::Inventory,
        images: &BTreeMap<i32, ProcessImage>,
        tcp_close: bool,
        root: i32,
    ) -> Result<Self, RestoreError> {
        use crate::net::lock::{Backend, Conn, NetLock};
        use crate::proto::fd_entry::State;
        let none = Self {
            lock: None,
            from_dump: false,
        };
        if !inv.tcp_established || inv.net_lock.is_empty() {
            return Ok(none);
        }
        let net_err = |source| RestoreError::Net { pid: root, source };
        let ns = crate::net::Netns::current().map_err(|source| RestoreError::Io {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        crate::fault::point("restore:net-lock")?;
        if let Some(lock) = NetLock::find(ns, &inv.net_lock).map_err(net_err)? {
            if tcp_close {
                // The connections are given up: their peers may hear so.
                lock.unlock().map_err(net_err)?;
                return Ok(none);
            }
            return Ok(Self {
                lock: Some(lock),
                from_dump: true,
            });
        }
        if tcp_close {
            return Ok(none);
        }
        let mut conns: Vec<Conn> = Vec::new();
        for f in images.values().flat_map(|i| i.fds.iter()) {
            if let Some(State::Inet(s)) = &f.state {
                if s.tcp.is_some() {
                    if let (Some(l), Some(p)) = (&s.local, &s.peer) {
                        conns.push(Conn {
                            local: crate::dump::fd_inet::ffi_addr(s.family, l),
                            peer: crate::dump::fd_inet::ffi_addr(s.family, p),
                        });
                    }
                }
            }
        }
        let (backend, name) = inv
            .net_lock
            .split_once(':')
            .unwrap_or(("nftables", &inv.net_lock));
        let backend = Backend::parse(backend)
            .map_or_else(Backend::detect, Ok)
            .map_err(net_err)?;
        let ns = crate::net::Netns::current().map_err(|source| RestoreError::Io {
            path: "/proc/thread-self/ns/net".into(),
            source,
        })?;
        let lock = NetLock::lock(ns, backend, name, &conns).map_err(net_err)?;
        Ok(Self {
            lock: Some(lock),
            from_dump: false,
        })
    }

    /// The tree runs: packets may flow.
    fn release(mut self, root: i32) -> Result<(), RestoreError> {
        if self.lock.is_some() {
            crate::fault::point("restore:net-unlock")?;
        }
        match self.lock.take() {
            Some(l) => l
                .unlock()
                .map_err(|source| RestoreError::Net { pid: root, source }),
            None => Ok(()),
        }
    }
}

impl Drop for NetLockGuard {
    fn drop(&mut self) {
        if let Some(l) = self.lock.take() {
            if self.from_dump {
                let id = l.keep();
                tracing::warn!(lock = %id, "restore failed: the dump's network lock stays, so the checkpoint's connections can still be restored");
            }
        }
    }
}

/// Restores the checkpoint in `opts.dir`.
pub fn restore(opts: &RestoreOpts) -> Result<RestoreOutcome, RestoreError> {
    let t0 = std::time::Instant::now();
    fill::keep_page_cache(opts.keep_page_cache);
    let reader = ImageReader::open_with_key_file(&opts.dir, opts.sign_key.as_deref())?;
    let plan = tree::Plan::new(
        reader.read(ImageType::Pstree, None)?,
        reader.inventory().root_pid,
    )?;
    let root = plan.root();
    let mut images: BTreeMap<i32, ProcessImage> = BTreeMap::new();
    let mut pages_locs: BTreeMap<i32, PagesLoc> = BTreeMap::new();
    let mut tramps: BTreeMap<i32, u64> = BTreeMap::new();
    // cryo's own layout, which every restore process starts as a copy of: the trampolines go
    // where it has nothing, and remote calls start at a syscall instruction found in it.
    let own_maps = memory::maps_text(std::process::id() as i32)?;
    let ours = memory::ranges(&own_maps);
    // Where in the vdso (which every restore process has, and which moves to where the
    // checkpoint had it) a syscall instruction is: remote calls leave through it at the end.
    let insn = find_syscall_insn(std::process::id() as i32, &own_maps)?;
    let insn_vdso_off = memory::vdso_offset(&own_maps, insn);
    let live: Vec<&PstreeEntry> = plan.entries().filter(|e| !e.zombie).collect();
    let load = |e: &&PstreeEntry| -> Result<(ProcessImage, Option<PagesLoc>, u64), RestoreError> {
        let img = ProcessImage::load(&reader, (*e).clone())?;
        // Every page run's checksum, before any process is created (a damaged checkpoint
        // must not even start a restore). fill_pages checks each run again as it reads it
        // into place, which costs nothing extra there and covers a page store changed
        // meanwhile.
        reader.verify_pages(img.pid(), &img.pagemap)?;
        img.validate(opts.shell_job)?;
        let loc = reader.pages_loc(img.pid())?;
        let tramp = memory::choose_trampoline(&img, &ours)?;
        Ok((img, loc, tramp))
    };
    // The processes are loaded and checked by a few threads; the first failure in tree
    // order is the one reported.
    let mut canonical: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for r in parallel_map(&live, load) {
        let (img, loc, tramp) = r?;
        if let Some(mut loc) = loc {
            if let Some(c) = canonical.get(&loc.file) {
                loc.file = c.clone();
            } else {
                let c = std::fs::canonicalize(&loc.file).map_err(|source| RestoreError::Io {
                    path: loc.file.display().to_string(),
                    source,
                })?;
                canonical.insert(loc.file.clone(), c.clone());
                loc.file = c;
            }
            pages_locs.insert(img.pid(), loc);
        }
        tramps.insert(img.pid(), tramp);
        images.insert(img.pid(), img);
    }
    // New PIDs (cryo's threads, anyone's processes) from the widest stretch clear of the
    // checkpoint's from now on, where the allocator was about to sweep through them: fewer
    // chances for one of them to take a PID the restore is about to create.
    let pids: Vec<i32> = plan
        .entries()
        .flat_map(|e| std::iter::once(e.pid).chain(e.threads.iter().copied()))
        .collect();
    match proc_ctl::advance_last_pid(&pids) {
        Ok(moved) => tracing::debug!(moved, "PID allocator clear of the checkpoint's PIDs"),
        Err(e) => tracing::debug!(error = %e, "could not move the PID allocator"),
    }
    for e in plan.entries() {
        for id in std::iter::once(e.pid).chain(e.threads.iter().copied()) {
            if std::path::Path::new(&format!("/proc/{id}")).exists() {
                return Err(RestoreError::PidTaken { pid: id });
            }
        }
    }

    crate::fault::point("restore:validated")?;
    let forked_at = std::time::Instant::now();
    crate::stats::note_restore(|s| s.validate_s = (forked_at - t0).as_secs_f64());
    // Orphans of a failed restore must come back to us to be reaped.
    proc_ctl::set_child_subreaper(true).map_err(|source| RestoreError::Sys {
        pid: root,
        what: "becoming a child subreaper".into(),
        source,
    })?;
    let (rd, wr) = task::pipe().map_err(|source| RestoreError::Sys {
        pid: root,
        what: "creating the report pipe".into(),
        source,
    })?;
    let mut guard = TreeGuard {
        pids: Vec::new(),
        armed: true,
    };
    let fd_base = images
        .values()
        .flat_map(|i| i.fds.iter().map(|f| f.fd))
        .chain(task::own_fds())
        .max()
        .unwrap_or(2)
        + 1;
    let shared = shmem::SharedMem::prepare(&images, &pages_locs, fd_base)?;
    let fd_lists: Vec<&[FdEntry]> = images.values().map(|i| i.fds.as_slice()).collect();
    // Packets of the checkpoint's connections stay away until the tree runs.
    let net_lock = NetLockGuard::take(reader.inventory(), &images, opts.tcp_close, root)?;
    let mut shared_fds =
        files::SharedDescs::prepare(&fd_lists, fd_base, opts.tcp_close).map_err(|what| {
            RestoreError::Invalid {
                pid: root,
                what: format!("creating sockets and files shared between processes: {what}"),
            }
        })?;
    crate::fault::point("restore:tcp-created")?;
    let seeds = shared_fds.seeds();
    // The processes keep the shared descriptions (they close what they do not use) and the
    // shared memory objects (closed after mapping); the raw objects behind shared descriptions
    // stay with cryo.
    let keep: Vec<RawFd> = shared
        .fds()
        .into_iter()
        .chain(seeds.iter().map(|s| s.1))
        .collect();
    // The root is a fork of cryo, unless every process can start from the stub (see
    // child.rs): then a thread of cryo creates it sharing cryo's memory (it waits there until
    // the root execs, and stays until the restore is over: the tree's PR_SET_PDEATHSIG
    // follows the thread that created the root), while this thread reads the reports.
    let by_exec = child::probe_stub() && child::whole_tree_by_exec(&plan);
    if !by_exec {
        let child = fork_at(root, 0)?;
        if child == 0 {
            task::close(rd);
            child::run(&plan, &images, root, wr, &keep, &seeds, &tramps);
        }
        task::close(wr);
        guard.pids = plan.entries().map(|e| e.pid).collect();
    }
    let root_made: std::sync::Mutex<Option<Result<i32, String>>> = std::sync::Mutex::new(None);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let built = std::thread::scope(|sc| {
        if by_exec {
            let (plan, images, keep, seeds, tramps) = (&plan, &images, &keep, &seeds, &tramps);
            let root_made = &root_made;
            sc.spawn(move || {
                let made =
                    child::start_root_by_exec(plan, images, root, wr, rd, keep, seeds, tramps);
                task::close(wr);
                if let Ok(mut slot) = root_made.lock() {
                    *slot = Some(made);
                }
                let _ = done_rx.recv();
            });
        }
        // Each process is built as soon as it reports ready, while the rest of the tree is
        // still being created.
        let feed = ReportFeed {
            fd: rd,
            after: Box::new(|| {
                // Every process holds its sockets now; the connections leave repair mode
                // before any process can run (the lock still holds packets off).
                shared_fds
                    .finish_repair()
                    .map_err(|what| RestoreError::Invalid { pid: root, what })
            }),
        };
        let built = build_all(
            &plan,
            &images,
            &tramps,
            insn_vdso_off,
            &pages_locs,
            &shared,
            feed,
        );
        drop(done_tx);
        built
    });
    task::close(rd);
    if by_exec {
        match root_made.into_inner().ok().flatten() {
            Some(Ok(_)) => guard.pids = plan.entries().map(|e| e.pid).collect(),
            // Nothing was created.
            Some(Err(what)) => return Err(RestoreError::Child(format!("pid {root}: {what}"))),
            None => {
                return Err(RestoreError::Child(format!(
                    "pid {root}: the thread creating it ended without a word"
                )))
            }
        }
    }
    built?;
    net_lock.release(root)?;
    guard.armed = false;
    crate::stats::note_restore(|s| s.build_s = forked_at.elapsed().as_secs_f64());
    let _ = proc_ctl::set_child_subreaper(false);
    tracing::info!(pid = root, processes = plan.entries().count(), "restored");
    if let Some(p) = &opts.pidfile {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .and_then(|mut f| writeln!(f, "{root}"))
            .map_err(|source| RestoreError::Io {
                path: p.display().to_string(),
                source,
            })?;
    }
    if opts.detach {
        return Ok(RestoreOutcome::Detached { pid: root });
    }
    loop {
        match ptrace::wait(root, 0).map_err(|source| RestoreError::Sys {
            pid: root,
            what: "waiting for the restored process".into(),
            source,
        })? {
            Some((_, WaitStatus::Exited(code))) => {
                return Ok(RestoreOutcome::Exited { pid: root, code })
            }
            Some((_, WaitStatus::Signaled(sig))) => {
                return Ok(RestoreOutcome::Exited {
                    pid: root,
                    code: 128 + sig,
                })
            }
            _ => continue,
        }
    }
}

/// `f` of every item, by up to 4 threads (each a contiguous share), results in item order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(items.len().div_ceil(4).max(1));
    if threads < 2 {
        return items.iter().map(f).collect();
    }
    let share = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(share)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The report pipe of the restore processes, read while they are built (see `build_all`), and
/// what to do once every process reported ready.
struct ReportFeed<'a> {
    fd: RawFd,
    after: Box<dyn FnOnce() -> Result<(), RestoreError> + 'a>,
}

/// Builds every process of the tree with a bounded pool of worker threads (ptrace requests
/// must come from the thread that seized a task, so each worker seizes, builds and detaches
/// its own processes). Nothing is detached until every process is built: the workers meet at
/// barriers, and if any failed, none detaches (their tasks die with `PTRACE_O_EXITKILL` when
/// the worker ends, and the caller's guard kills the rest). Stopped processes are detached
/// first, with a SIGSTOP queued, and seen stopped before any other task runs.
fn build_all(
    plan: &tree::Plan,
    images: &BTreeMap<i32, ProcessImage>,
    tramps: &BTreeMap<i32, u64>,
    insn_vdso_off: Option<u64>,
    pages_locs: &BTreeMap<i32, PagesLoc>,
    shared: &shmem::SharedMem,
    feed: ReportFeed<'_>,
) -> Result<(), RestoreError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Barrier, Condvar, Mutex};

    let stopped: Vec<i32> = plan
        .entries()
        .filter(|e| e.stopped && !e.zombie)
        .map(|e| e.pid)
        .collect();
    // Processes sharing one fd table are one unit, built by one worker in a row: the shared
    // memory fds they inherited are one set of fds in that table, closed by the last of them
    // built (the others still map from them). A unit is ready once all its processes reported
    // ready; each worker takes the next ready unit (the tree reports leaves first, as each
    // process forks its children before it gets ready itself).
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(images.len().max(1));
    let mut by_owner: BTreeMap<i32, Vec<&ProcessImage>> = BTreeMap::new();
    for img in images.values() {
        by_owner
            .entry(plan.owner(img.pid(), true))
            .or_default()
            .push(img);
    }
    let units: Vec<Vec<&ProcessImage>> = by_owner.into_values().collect();
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<RestoreError>> = Mutex::new(None);
    let fail = |e: RestoreError| {
        failed.store(true, Ordering::SeqCst);
        if let Ok(mut slot) = first_error.lock() {
            slot.get_or_insert(e);
        }
    };
    let barrier = Barrier::new(workers + 1);
    // Ready processes, ready units not yet taken, and whether the reports are over.
    #[derive(Default)]
    struct Ready {
        pids: std::collections::BTreeSet<i32>,
        /// Those that exec'd their stub (see child.rs).
        execed: std::collections::BTreeSet<i32>,
        queue: std::collections::VecDeque<usize>,
        over: bool,
    }
    let ready: Mutex<Ready> = Mutex::default();
    let ready_cv = Condvar::new();
    let next_unit = || -> Option<usize> {
        let mut g = ready.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if failed.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(u) = g.queue.pop_front() {
                return Some(u);
            }
            if g.over {
                return None;
            }
            g = ready_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    };
    std::thread::scope(|sc| {
        // Each worker on a CPU of its own, and each process on its worker's while it is built
        // (it gets its own affinity back before it is detached).
        for pin in proc_ctl::worker_cpus(workers) {
            let (barrier, failed, fail, stopped) = (&barrier, &failed, &fail, &stopped);
            let (next_unit, units, ready) = (&next_unit, &units, &ready);
            sc.spawn(move || {
                if let Some(m) = &pin {
                    let _ = proc_ctl::set_affinity(0, m);
                }
                let mut saved_masks: Vec<(i32, proc_ctl::CpuMask)> = Vec::new();
                let mut held: Vec<(i32, i32)> = Vec::new(); // (tid, its process)
                'units: while let Some(u) = next_unit() {
                    let last = units[u].len().saturating_sub(1);
                    for (k, &img) in units[u].iter().enumerate() {
                        let close_shared_mem = k == last;
                        let pid = img.pid();
                        let execed = ready
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .execed
                            .contains(&pid);
                        let r = wait_in_pause(pid)
                            .and_then(|()| seize_ready(pid))
                            .and_then(|()| {
                                if let Some(m) = &pin {
                                    if let Ok(orig) = proc_ctl::get_affinity(pid) {
                                        saved_masks.push((pid, orig));
                                        let _ = proc_ctl::set_affinity(pid, m);
                                    }
                                }
                                held.push((pid, pid));
                                crate::fault::point("restore:seized")?;
                                build(
                                    img,
                                    tramps[&pid],
                                    insn_vdso_off,
                                    execed,
                                    pages_locs.get(&pid),
                                    shared,
                                    close_shared_mem,
                                )
                            });
                        match r {
                            Ok(tids) => held.extend(tids.into_iter().map(|t| (t, pid))),
                            Err(e) => {
                                fail(e);
                                break 'units;
                            }
                        }
                    }
                }
                barrier.wait(); // every process built (or failed)
                barrier.wait(); // the main thread's verdict
                if failed.load(Ordering::SeqCst) {
                    return;
                }
                for &(tid, pid) in &held {
                    if let Some((_, m)) = saved_masks.iter().find(|s| s.0 == pid) {
                        let _ = proc_ctl::give_affinity_back(tid, m);
                    }
                }
                let detach = |tid: i32| {
                    if let Err(source) = ptrace::detach(tid, 0) {
                        fail(RestoreError::Sys {
                            pid: tid,
                            what: "detaching the restored task".into(),
                            source,
                        });
                    }
                };
                for &(tid, pid) in held.iter().filter(|h| stopped.contains(&h.1)) {
                    if tid == pid {
                        let _ = proc_ctl::kill(pid, libc::SIGSTOP);
                    }
                }
                for &(tid, _) in held.iter().filter(|h| stopped.contains(&h.1)) {
                    detach(tid);
                }
                barrier.wait(); // stopped processes released
                barrier.wait(); // and seen stopped
                for &(tid, _) in held.iter().filter(|h| !stopped.contains(&h.1)) {
                    detach(tid);
                }
            });
        }
        // The reports, as they come; then every process must have reported ready.
        let mut text = String::new();
        task::read_lines(feed.fd, |line| {
            text.push_str(line);
            text.push('\n');
            let (execed, rest) = match line.strip_prefix("X ") {
                Some(rest) => (true, Some(rest)),
                None => (false, line.strip_prefix("R ")),
            };
            if let Some(pid) = rest.and_then(|p| p.trim().parse().ok()) {
                let mut g = ready.lock().unwrap_or_else(|p| p.into_inner());
                g.pids.insert(pid);
                if execed {
                    g.execed.insert(pid);
                }
                let whole = units.iter().position(|u| {
                    u.iter().any(|i| i.pid() == pid) && u.iter().all(|i| g.pids.contains(&i.pid()))
                });
                if let Some(u) = whole {
                    g.queue.push_back(u);
                    ready_cv.notify_one();
                }
            }
        });
        // A process that could not get ready says why: that is the error to report, whatever
        // a worker met meanwhile.
        let verdict = check_reports(plan, &text).and_then(|()| (feed.after)());
        let from_stub = ready.lock().map_or(0, |g| g.execed.len() as u64);
        crate::stats::note_restore(|s| {
            s.processes = images.len() as u64;
            s.from_stub = from_stub;
        });
        if let Err(e) = verdict {
            failed.store(true, Ordering::SeqCst);
            if let Ok(mut slot) = first_error.lock() {
                *slot = Some(e);
            }
        }
        ready.lock().unwrap_or_else(|p| p.into_inner()).over = true;
        ready_cv.notify_all();
        barrier.wait();
        if let Err(e) = crate::fault::point("restore:detach") {
            fail(e.into());
        }
        barrier.wait();
        if !failed.load(Ordering::SeqCst) {
            barrier.wait();
            for &pid in &stopped {
                wait_stopped(pid);
            }
            barrier.wait();
        }
    });
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Waits (briefly) until `pid` shows as stopped in /proc.
fn wait_stopped(pid: i32) {
    for _ in 0..1000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if matches!(state, Some('T') | None) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    tracing::warn!(pid, "a stopped process did not stop again after restore");
}

/// Checks that every live process of the plan reported `R <pid>`; the first `E` message, or
/// the first missing process, is the error.
fn check_reports(plan: &tree::Plan, report: &str) -> Result<(), RestoreError> {
    let mut ready = std::collections::BTreeSet::new();
    for line in report.lines() {
        let mut it = line.splitn(3, ' ');
        match (it.next(), it.next().and_then(|p| p.parse::<i32>().ok())) {
            (Some("R" | "X"), Some(pid)) => {
                ready.insert(pid);
            }
            (Some("E"), Some(pid)) => {
                return Err(RestoreError::Child(format!(
                    "pid {pid}: {}",
                    it.next().unwrap_or("failed")
                )))
            }
            _ => {}
        }
    }
    for e in plan.entries().filter(|e| !e.zombie) {
        if !ready.contains(&e.pid) {
            return Err(RestoreError::Child(format!(
                "pid {}: the restore process ended before it was ready",
                e.pid
            )));
        }
    }
    Ok(())
}

/// Waits until a restore process that reported ready sits in pause(): after its report it
/// still closes the report pipe and the sync pipes (see `child.rs`), and a process seized
/// before that would keep them, in the restored process and open against the report's end.
fn wait_in_pause(pid: i32) -> Result<(), RestoreError> {
    let path = format!("/proc/{pid}/syscall");
    let start = std::time::Instant::now();
    for round in 0u32.. {
        let now = crate::dump::proc::read_lossy(std::path::Path::new(&path)).map_err(|source| {
            if source.raw_os_error() == Some(libc::ENOENT)
                || source.raw_os_error() == Some(libc::ESRCH)
            {
                RestoreError::Child(format!(
                    "pid {pid}: the restore process ended before cryo took it over (one started \
                     from the stub exits with status {} when it cannot map its trampoline)",
                    stub::MAP_FAILED_STATUS
                ))
            } else {
                RestoreError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        if now.split_whitespace().next() == Some(&libc::SYS_pause.to_string()) {
            return Ok(());
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return Err(RestoreError::Child(format!(
                "pid {pid}: reported ready but does not wait (now in: {})",
                now.trim()
            )));
        }
        // It is a few system calls away: let it run first.
        if round < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
    Ok(())
}

/// Seizes a restore process that reported ready and waits in pause().
fn seize_ready(pid: i32) -> Result<(), RestoreError> {
    let sys = |what: &'static str| {
        move |source| RestoreError::Sys {
            pid,
            what: what.into(),
            source,
        }
    };
    ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL)
        .map_err(sys("seizing the restore process"))?;
    ptrace::interrupt(pid).map_err(sys("stopping the restore process"))?;
    loop {
        match ptrace::wait(pid, 0).map_err(sys("waiting for the restore process to stop"))? {
            Some((_, WaitStatus::Stopped { event, .. })) if event == ptrace::PTRACE_EVENT_STOP => {
                return Ok(())
            }
            Some((_, WaitStatus::Stopped { .. })) => {
                // A signal-delivery stop (e.g. SIGCHLD from a zombie child): suppress it and
                // wait for the interrupt.
                ptrace::cont(pid, 0).map_err(sys("resuming the restore process"))?;
            }
            other => {
                return Err(RestoreError::Child(format!(
                    "pid {pid}: the restore process ended: {other:?}"
                )))
            }
        }
    }
}

/// Forks a child at exactly `pid`.
pub(crate) fn fork_at(pid: i32, flags: u64) -> Result<i32, RestoreError> {
    let sys = |source| RestoreError::Sys {
        pid,
        what: "forking the process".into(),
        source,
    };
    match proc_ctl::fork_with_pid(pid, flags) {
        Ok(c) => Ok(c),
        Err(e) if e.errno == libc::EEXIST => Err(RestoreError::PidTaken { pid }),
        Err(e) if e.errno == libc::ENOSYS || e.errno == libc::EPERM || e.errno == libc::EINVAL => {
            tracing::debug!(pid, error = %e, "clone3 set_tid unavailable, using ns_last_pid");
            match proc_ctl::fork_with_pid_fallback(pid, flags) {
                Err(e) if e.errno == libc::EEXIST => Err(RestoreError::PidTaken { pid }),
                r => r.map_err(sys),
            }
        }
        Err(e) => Err(sys(e)),
    }
}

/// Builds the seized restore process into the saved process, threads included. Returns the
/// thread ids it created (all stopped, ready to be detached). `close_shared_mem`: close the
/// inherited shared memory fds once mapped (false while another process sharing this fd
/// table has yet to map from them). `insn_vdso_off` is where a syscall instruction lies in the
/// vdso (every restore process has one, which moves to where the checkpoint had it); `execed`:
/// the process exec'd the stub (see child.rs), whose name and close-on-exec flags cryo puts
/// back.
#[allow(clippy::too_many_arguments)]
fn build(
    img: &ProcessImage,
    tramp: u64,
    insn_vdso_off: Option<u64>,
    execed: bool,
    pages: Option<&PagesLoc>,
    shared: &shmem::SharedMem,
    close_shared_mem: bool,
) -> Result<Vec<i32>, RestoreError> {
    let pid = img.pid();
    // The maps of what the process still is (a copy of cryo, or its stub), its trampoline
    // included (mapped by the process itself, see child.rs).
    let maps = memory::maps_text(pid)?;
    let mut ctx = Ctx::new(RemoteTask::new(pid, tramp)?, tramp);
    // One stop per remote syscall, one per batch, until signals are queued (see below).
    ctx.rt.set_stubs(Some(ctx.stubs(pid)));
    // Without the stubs, calls single-step if the restored SIGTRAP action allows it (calls
    // without the stubs come after the actions are restored).
    let step = task_state::sigtrap_is_default(img);
    ctx.rt.set_single_step(step);

    memory::drop_inherited_rseq(&mut ctx)?;
    let vdso_moved = memory::clear_and_move_specials(&mut ctx, img, &memory::parse_maps(&maps))?;
    if execed {
        // What execve reset: the name, and the close-on-exec flags the fds kept through it.
        task_state::after_exec(&mut ctx, img)?;
    }
    memory::map_vmas(&mut ctx, img, shared)?;
    let closes = shared
        .fds()
        .into_iter()
        .filter(|_| close_shared_mem)
        .map(|fd| {
            Call::new(
                format!("close of inherited shared memory fd {fd}"),
                libc::SYS_close,
                [fd as u64, 0, 0, 0, 0, 0],
            )
        });
    ctx.defer(closes.collect())?;
    if let Err(e) = crate::fault::point("restore:deferred") {
        // A deferred call that fails (close(-1)): its failure must surface with its name.
        ctx.defer(vec![Call::new(
            format!("close(-1), {e}"),
            libc::SYS_close,
            [u64::MAX, 0, 0, 0, 0, 0],
        )])?;
    }
    memory::fill_pages(&mut ctx, img, pages)?;
    memory::fix_protections(&mut ctx, img)?;
    memory::set_mm_fields(&mut ctx, img)?;
    fd_locks::retake_posix_locks(&mut ctx, img)?;
    restore_foreground_group(&mut ctx, img)?;
    crate::fault::point("restore:memory")?;
    task_state::restore_sigactions(&mut ctx, img)?;
    task_state::restore_itimers(&mut ctx, img)?;
    task_state::restore_posix_timers(&mut ctx, img)?;
    let leader = &img.tasks[0];
    task_state::restore_thread_bits(&mut ctx, leader)?;
    // The stubs stop a task by raising SIGSTOP, which drops a pending SIGCONT: with one to
    // queue, two syscall stops per call from here on.
    if task_state::queues_sigcont(img) {
        ctx.flush()?;
        ctx.rt.set_stubs(None);
    }
    task_state::restore_pending(&mut ctx, img, leader)?;
    ctx.defer(vec![Call::new(
        "prctl(PR_SET_PDEATHSIG, 0)".into(),
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
    )])?;
    let mut threads = Vec::with_capacity(img.tasks.len().saturating_sub(1));
    for t in img.tasks.iter().skip(1) {
        threads.push(create_thread(&mut ctx, img, t)?);
    }
    crate::fault::point("restore:threads")?;
    // Credentials are per thread.
    for th in threads.iter_mut() {
        task_state::restore_creds(th, img)?;
        // While the trampoline (the stubs) is still there.
        th.flush()?;
    }
    task_state::restore_creds(&mut ctx, img)?;

    // Leave through a syscall instruction of the restored image, then drop the trampoline:
    // the one found first if it was in the vdso (which moved with it), else one looked for.
    let own = match (vdso_moved, insn_vdso_off) {
        (Some((_, len, to)), Some(off)) if off < len && is_syscall_at(pid, to + off) => to + off,
        _ => {
            let maps = memory::maps_text(pid)?;
            find_syscall_insn_outside(pid, &maps, (tramp, tramp + TRAMPOLINE_LEN))?
        }
    };
    ctx.flush()?;
    ctx.rt.set_syscall_ip(own);
    // The trampoline goes, stubs and all: this call cannot return into it.
    ctx.rt.set_stubs(None);
    ctx.sys(
        || format!("munmap of the trampoline at {tramp:#x}"),
        libc::SYS_munmap,
        [tramp, TRAMPOLINE_LEN, 0, 0, 0, 0],
    )?;

    let sys = |what: &str| {
        let what = what.to_string();
        move |source| RestoreError::Sys { pid, what, source }
    };
    ptrace::set_sigmask(pid, leader.sigmask).map_err(sys("setting the signal mask"))?;
    if !leader.xsave.is_empty() {
        ptrace::set_xstate(pid, &leader.xsave).map_err(sys("setting the xsave state"))?;
    }
    let regs = leader.regs.as_ref().ok_or_else(|| RestoreError::Invalid {
        pid,
        what: "no registers".into(),
    })?;
    ptrace::set_regs(pid, &task_state::final_regs(regs)).map_err(sys("setting registers"))?;
    ctx.rt.forget();
    let mut tids = Vec::with_capacity(threads.len());
    for (th, t) in threads.into_iter().zip(img.tasks.iter().skip(1)) {
        set_final_thread_state(th, t)?;
        tids.push(t.tid);
    }
    Ok(tids)
}

/// Creates thread `t` in the process with clone3 (`set_tid`), run from the trampoline by the
/// leader. The new thread starts at the trampoline's `jmp .` with every signal blocked (it
/// inherits the leader's mask while we drive it), spins there until we seize it, and gets its
/// own per-thread state with remote syscalls. Its registers are set last, in
/// [`set_final_thread_state`].
fn create_thread(ctx: &mut Ctx, img: &ProcessImage, t: &TaskCore) -> Result<Ctx, RestoreError> {
    let pid = img.pid();
    let tid = t.tid;
    // The clone3 below is run on the task directly: what was deferred runs first.
    ctx.flush()?;
    let set_tid = ctx.put(512, &tid.to_le_bytes())?;
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let args = remote_ctx::Le::default()
        .u64(flags)
        .u64(0) // pidfd
        .u64(0) // child_tid
        .u64(0) // parent_tid
        .u64(0) // exit_signal
        .u64(0) // stack: the leader's, unused while the thread spins
        .u64(0) // stack_size
        .u64(0) // tls: set with the registers
        .u64(set_tid)
        .u64(1) // set_tid_size
        .u64(0); // cgroup
    let args_len = args.0.len() as u64;
    let a = ctx.put(0, &args.0)?;
    // Two syscall stops, never the stub: the new thread returns where the call was made and
    // must land on the trampoline's `jmp .`, not on the stub's stop.
    let got = ctx.rt.syscall_two_stops(
        || format!("clone3(thread {tid})"),
        libc::SYS_clone3,
        [a, args_len, 0, 0, 0, 0],
    )?;
    if got != tid as u64 {
        return Err(RestoreError::Invalid {
            pid,
            what: format!("thread {tid} was created as {got}"),
        });
    }
    seize_ready(tid)?;
    let mut th = Ctx::new(RemoteTask::new(tid, ctx.tramp)?, ctx.tramp);
    th.rt.set_single_step(task_state::sigtrap_is_default(img));
    if ctx.rt.stubs().is_some() {
        th.rt.set_stubs(Some(th.stubs(pid)));
    }
    task_state::restore_thread_bits(&mut th, t)?;
    task_state::restore_pending_private(&mut th, img, t)?;
    Ok(th)
}

/// Signal mask, xsave and registers of a created thread; it stays stopped for detach.
fn set_final_thread_state(mut th: Ctx, t: &TaskCore) -> Result<(), RestoreError> {
    th.flush()?;
    let tid = t.tid;
    let sys = |what: &'static str| {
        move |source| RestoreError::Sys {
            pid: tid,
            what: what.into(),
            source,
        }
    };
    ptrace::set_sigmask(tid, t.sigmask).map_err(sys("setting the signal mask"))?;
    if !t.xsave.is_empty() {
        ptrace::set_xstate(tid, &t.xsave).map_err(sys("setting the xsave state"))?;
    }
    let regs = t.regs.as_ref().ok_or_else(|| RestoreError::Invalid {
        pid: tid,
        what: "no registers".into(),
    })?;
    ptrace::set_regs(tid, &task_state::final_regs(regs)).map_err(sys("setting registers"))?;
    th.rt.forget();
    Ok(())
}

/// Whether task `pid` has a `syscall` instruction at `addr`.
fn is_syscall_at(pid: i32, addr: u64) -> bool {
    let mut b = [0u8; 2];
    crate::sys::mem::read_force(pid, addr, &mut b).is_ok() && b == [0x0f, 0x05]
}

/// A syscall instruction in the restored image (anywhere but the trampoline).
fn find_syscall_insn_outside(pid: i32, maps: &str, skip: (u64, u64)) -> Result<u64, RestoreError> {
    let filtered: String = maps
        .lines()
        .filter(|l| {
            let start = l
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            !(skip.0..skip.1).contains(&start)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(find_syscall_insn(pid, &filtered)?)
}
