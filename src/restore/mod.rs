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
mod files;
mod fill;
pub mod layout;
mod memory;
mod remote_ctx;
mod task_state;

use crate::image::{ImageError, ImageReader, ImageType};
use crate::infect::remote::{find_syscall_insn, RemoteError, RemoteTask};
use crate::proto::{FdEntry, FdKind, MmState, PageRun, ProcessCore, PstreeEntry, TaskCore};
use crate::sys::ptrace::{self, WaitStatus};
use crate::sys::{proc_ctl, task, SysError, PAGE_SIZE};
use remote_ctx::{Ctx, TRAMPOLINE_CODE, TRAMPOLINE_LEN};
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Errors of restore. Each names the pid, file or address involved.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The checkpoint could not be read or failed validation.
    #[error(transparent)]
    Image(#[from] ImageError),
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
        if self.tasks.len() > 1 || self.pstree.threads.len() > 1 {
            return bad("multi-threaded processes are not supported yet".into());
        }
        if self.tasks.iter().any(|t| t.regs.is_none()) {
            return bad(format!("tasks-{pid}.img: a task has no registers"));
        }
        let mut prev_end = 0u64;
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
            if let Some(f) = v.file.as_ref().filter(|_| !memory::is_special(v)) {
                if f.path.is_empty() {
                    return bad(format!("mm-{pid}.img: file VMA {:#x} has no path", v.start));
                }
                check_file_same(pid, &f.path, f.size, f.mtime_ns)?;
            }
        }
        let mut prev = 0u64;
        for r in &self.pagemap {
            let end = r.vaddr + r.nr_pages * PAGE_SIZE;
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

/// Kills and reaps a half-restored child unless disarmed.
struct ChildGuard {
    pid: i32,
    armed: bool,
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = proc_ctl::kill(self.pid, libc::SIGKILL);
            let _ = ptrace::wait(self.pid, 0);
        }
    }
}

/// Restores the checkpoint in `opts.dir`.
pub fn restore(opts: &RestoreOpts) -> Result<RestoreOutcome, RestoreError> {
    let t0 = std::time::Instant::now();
    let reader = ImageReader::open(&opts.dir)?;
    let tree: Vec<PstreeEntry> = reader.read(ImageType::Pstree, None)?;
    let root = reader.inventory().root_pid;
    if tree.len() != 1 || tree[0].pid != root {
        return Err(RestoreError::Invalid {
            pid: root,
            what: format!(
                "pstree.img: {} processes; process trees are not supported yet",
                tree.len()
            ),
        });
    }
    let img = ProcessImage::load(&reader, tree[0].clone())?;
    img.validate(opts.shell_job)?;
    // Page data is checked run by run as it is read into place (fill_pages), before the
    // process may run; a mismatch kills the child.
    reader.check_page_runs(img.pid(), &img.pagemap)?;
    let pages_path = reader.pages_path(img.pid());
    let pages_path = std::fs::canonicalize(&pages_path)
        .map_err(|source| RestoreError::Io {
            path: pages_path.display().to_string(),
            source,
        })?
        .display()
        .to_string();

    let pid = img.pid();
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(RestoreError::PidTaken { pid });
    }
    let tramp = memory::choose_trampoline(&img)?;
    let forked_at = std::time::Instant::now();
    crate::stats::note_restore(|s| s.validate_s = (forked_at - t0).as_secs_f64());
    let (rd, wr) = task::pipe().map_err(|source| RestoreError::Sys {
        pid,
        what: "creating the child report pipe".into(),
        source,
    })?;
    let child = fork_at(pid)?;
    if child == 0 {
        task::close(rd);
        let msg = child::prepare_and_stop(&img, wr);
        task::write_all(wr, msg.as_bytes());
        task::exit_now(1);
    }
    task::close(wr);
    let mut guard = ChildGuard { pid, armed: true };
    wait_child_stopped(pid, rd)?;
    task::close(rd);

    build(&img, tramp, &pages_path)?;
    ptrace::detach(pid, 0).map_err(|source| RestoreError::Sys {
        pid,
        what: "detaching the restored process".into(),
        source,
    })?;
    guard.armed = false;
    crate::stats::note_restore(|s| s.build_s = forked_at.elapsed().as_secs_f64());
    tracing::info!(pid, "restored");
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{pid}\n")).map_err(|source| RestoreError::Io {
            path: p.display().to_string(),
            source,
        })?;
    }
    if opts.detach {
        return Ok(RestoreOutcome::Detached { pid });
    }
    loop {
        match ptrace::wait(pid, 0).map_err(|source| RestoreError::Sys {
            pid,
            what: "waiting for the restored process".into(),
            source,
        })? {
            Some((_, WaitStatus::Exited(code))) => return Ok(RestoreOutcome::Exited { pid, code }),
            Some((_, WaitStatus::Signaled(sig))) => {
                return Ok(RestoreOutcome::Exited {
                    pid,
                    code: 128 + sig,
                })
            }
            _ => continue,
        }
    }
}

/// Forks a child at exactly `pid`.
fn fork_at(pid: i32) -> Result<i32, RestoreError> {
    let sys = |source| RestoreError::Sys {
        pid,
        what: "forking the process".into(),
        source,
    };
    match proc_ctl::fork_with_pid(pid) {
        Ok(c) => Ok(c),
        Err(e) if e.errno == libc::EEXIST => Err(RestoreError::PidTaken { pid }),
        Err(e) if e.errno == libc::ENOSYS || e.errno == libc::EPERM || e.errno == libc::EINVAL => {
            tracing::debug!(pid, error = %e, "clone3 set_tid unavailable, using ns_last_pid");
            match proc_ctl::fork_with_pid_fallback(pid) {
                Err(e) if e.errno == libc::EEXIST => Err(RestoreError::PidTaken { pid }),
                r => r.map_err(sys),
            }
        }
        Err(e) => Err(sys(e)),
    }
}

/// Waits until the child stopped itself for us; if it exited, returns its message.
fn wait_child_stopped(pid: i32, report: RawFd) -> Result<(), RestoreError> {
    match ptrace::wait(pid, 0) {
        Ok(Some((_, WaitStatus::Stopped { sig, .. }))) if sig == libc::SIGSTOP => Ok(()),
        Ok(other) => {
            let mut msg = task::read_to_string(report);
            if msg.is_empty() {
                msg = format!("pid {pid}: the restore child ended early: {other:?}");
            }
            Err(RestoreError::Child(msg))
        }
        Err(source) => Err(RestoreError::Sys {
            pid,
            what: "waiting for the restore child".into(),
            source,
        }),
    }
}

/// Builds the stopped child into the saved process.
fn build(img: &ProcessImage, tramp: u64, pages_path: &str) -> Result<(), RestoreError> {
    let pid = img.pid();
    let maps_path = format!("/proc/{pid}/maps");
    let maps = std::fs::read_to_string(&maps_path).map_err(|source| RestoreError::Io {
        path: maps_path.clone(),
        source,
    })?;
    let insn = find_syscall_insn(pid, &maps)?;
    let mut ctx = Ctx {
        rt: RemoteTask::new(pid, insn)?,
        tramp,
    };
    // If cryo dies from here on, the half-built child dies with it.
    ptrace::set_options(pid, libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL).map_err(
        |source| RestoreError::Sys {
            pid,
            what: "setting ptrace options".into(),
            source,
        },
    )?;
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
    let got = ctx.sys(
        || format!("mmap of the trampoline at {tramp:#x}"),
        libc::SYS_mmap,
        [tramp, TRAMPOLINE_LEN, prot, flags, u64::MAX, 0],
    )?;
    if got != tramp {
        return Err(RestoreError::Invalid {
            pid,
            what: format!("trampoline landed at {got:#x} instead of {tramp:#x}"),
        });
    }
    crate::sys::mem::write(pid, tramp, &TRAMPOLINE_CODE).map_err(|source| RestoreError::Sys {
        pid,
        what: format!("writing the trampoline at {tramp:#x}"),
        source,
    })?;
    ctx.rt.set_syscall_ip(tramp);

    memory::drop_inherited_rseq(&mut ctx)?;
    memory::clear_and_move_specials(&mut ctx, img)?;
    memory::map_vmas(&mut ctx, img)?;
    memory::fill_pages(&mut ctx, img, pages_path)?;
    memory::fix_protections(&mut ctx, img)?;
    memory::set_mm_fields(&mut ctx, img)?;
    task_state::restore_sigactions(&mut ctx, img)?;
    task_state::restore_itimers(&mut ctx, img)?;
    task_state::restore_posix_timers(&mut ctx, img)?;
    let leader = &img.tasks[0];
    task_state::restore_thread_bits(&mut ctx, leader)?;
    task_state::restore_pending(&mut ctx, img, leader)?;
    ctx.sys(
        || "prctl(PR_SET_PDEATHSIG, 0)".into(),
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, 0, 0, 0, 0, 0],
    )?;
    task_state::restore_creds(&mut ctx, img)?;

    // Leave through a syscall instruction of the restored image, then drop the trampoline.
    let maps = std::fs::read_to_string(&maps_path).map_err(|source| RestoreError::Io {
        path: maps_path.clone(),
        source,
    })?;
    let own = find_syscall_insn_outside(pid, &maps, (tramp, tramp + TRAMPOLINE_LEN))?;
    ctx.rt.set_syscall_ip(own);
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
    Ok(())
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
