//! Dump: freeze a process, collect its state into the `proto` `*State` messages, and hand
//! them to the image layer. Collection never writes files itself; the image layer never calls
//! ptrace.
//!
//! Order, chosen so that a failure at any step leaves the target as it was: check the image
//! directory; seize (guard detaches on drop); read /proc and ptrace state (registers and signal
//! mask before anything is changed); refuse what cannot be restored; infect the parasite
//! (guard cures on drop) for signal actions, timers and the pages; cure; write every image;
//! commit the inventory; only then kill the target (or detach with `--leave-running`).

pub mod files;
pub mod mm;
pub mod proc;
pub mod seize;

use crate::image::{ImageError, ImageType, ImageWriter};
use crate::infect::remote::{find_syscall_insn, RemoteError, RemoteTask};
use crate::infect::{InfectError, Parasite};
use crate::proto::{
    Creds, Inventory, ItimerVal, PosixTimer, ProcessCore, PstreeEntry, Rlimit, RseqConfig, SigInfo,
    TaskCore, UserRegs,
};
use crate::sys::{ptrace, SysError};
use proc::ProcError;
use seize::Seized;
use std::path::PathBuf;
use std::time::Instant;

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
    /// The process does not exist (any more).
    #[error("pid {pid}: no such process")]
    Gone {
        /// The PID.
        pid: i32,
    },
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
    /// Bytes of page data written.
    pub page_bytes: u64,
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
    let threads = proc::list_threads(pid)?;
    if threads.len() != 1 {
        return Err(DumpError::Unsupported {
            pid,
            what: format!(
                "{} threads: multi-threaded processes are not supported yet",
                threads.len()
            ),
        });
    }
    let t0 = Instant::now();
    let seized = Seized::seize(pid, &threads)?;
    let frozen_at = Instant::now();
    let children = proc::list_children(pid, pid)?;
    if !children.is_empty() {
        return Err(DumpError::Unsupported {
            pid,
            what: format!("has children {children:?}: process trees are not supported yet"),
        });
    }
    let mut stats = DumpStats {
        freeze_s: (frozen_at - t0).as_secs_f64(),
        ..DumpStats::default()
    };
    let collected = collect(pid, opts, &mut writer, &mut stats)?;
    writer.commit(collected)?;
    stats.frozen_s = t0.elapsed().as_secs_f64();
    stats.written_s = frozen_at.elapsed().as_secs_f64();
    if opts.leave_running {
        seized.release()?;
    } else {
        seized.kill()?;
    }
    tracing::info!(
        pid,
        frozen_s = stats.frozen_s,
        pages = stats.pages_stored,
        "dumped"
    );
    Ok(stats)
}

fn ptrace_err(pid: i32, what: &'static str) -> impl FnOnce(SysError) -> DumpError {
    move |source| DumpError::Ptrace { pid, what, source }
}

/// Collects everything and writes every image but the inventory, which it returns.
fn collect(
    pid: i32,
    opts: &DumpOpts,
    writer: &mut ImageWriter,
    stats: &mut DumpStats,
) -> Result<Inventory, DumpError> {
    let stat = proc::read_stat(pid)?;
    let status = proc::read_status(pid)?;
    let maps_text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|_| DumpError::Gone { pid })?;
    let maps = proc::parse_maps(&maps_text)?;
    let fds = files::collect_fds(pid, opts.shell_job)?;
    let (vmas, runs) = mm::collect_vmas(pid, &maps)?;
    stats.pages_scanned = runs.iter().map(|r| r.nr_pages).sum();

    // Per-task state readable through ptrace, before anything in the task changes.
    let regs = ptrace::get_regs(pid).map_err(ptrace_err(pid, "registers"))?;
    let xsave = ptrace::get_xstate(pid).map_err(ptrace_err(pid, "xsave state"))?;
    let sigmask = ptrace::get_sigmask(pid).map_err(ptrace_err(pid, "signal mask"))?;
    let pending = ptrace::peek_siginfo(pid, false).map_err(ptrace_err(pid, "pending signals"))?;
    let shared =
        ptrace::peek_siginfo(pid, true).map_err(ptrace_err(pid, "shared pending signals"))?;
    let rseq = ptrace::get_rseq(pid).map_err(ptrace_err(pid, "rseq configuration"))?;
    let (robust, robust_len) =
        crate::sys::proc_ctl::get_robust_list(pid).map_err(ptrace_err(pid, "robust list"))?;
    let timers = proc::read_timers(pid)?;
    let limits = proc::read_limits(pid)?;

    // brk is not in /proc: ask the task.
    let brk = {
        let insn = find_syscall_insn(pid, &maps_text)?;
        let mut rt = RemoteTask::new(pid, insn)?;
        let brk = rt.syscall(|| "brk(0)".into(), libc::SYS_brk, [0; 6]);
        rt.restore()?;
        brk?
    };

    let mut parasite = Parasite::infect(pid, &maps_text)?;
    let sigactions = parasite.sigactions()?;
    let itimers: Vec<ItimerVal> = parasite.itimers()?;
    let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
    let values = parasite.posix_timers(&ids)?;
    let (ss_sp, ss_size, ss_flags) = parasite.sigaltstack()?;
    let umask = parasite.umask()?;
    let tid_addr = parasite.tid_address()?;
    let mut pages = writer.create_pages(pid)?;
    let pages_at = Instant::now();
    let stored = parasite.dump_pages(&runs, &mut pages.file)?;
    stats.pages_s = pages_at.elapsed().as_secs_f64();
    parasite.cure()?;
    writer.finish_pages(pages)?;
    stats.pages_stored = stored.iter().map(|r| r.nr_pages).sum();
    stats.pages_zero = stats.pages_scanned.saturating_sub(stats.pages_stored);
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
    let task = TaskCore {
        tid: pid,
        regs: Some(user_regs(&regs)),
        xsave,
        sigmask,
        pending: pending
            .iter()
            .map(|s| SigInfo { raw: s.to_vec() })
            .collect(),
        altstack_sp: ss_sp,
        altstack_size: ss_size,
        altstack_flags: ss_flags,
        clear_tid_addr: tid_addr,
        robust_list: robust,
        robust_list_len: robust_len,
        rseq: Some(RseqConfig {
            ptr: rseq.rseq_abi_pointer,
            len: rseq.rseq_abi_size,
            flags: rseq.flags,
            sig: rseq.signature,
        }),
        comm: stat.comm.clone(),
    };
    let personality = std::fs::read_to_string(format!("/proc/{pid}/personality"))
        .ok()
        .and_then(|s| u32::from_str_radix(s.trim(), 16).ok())
        .unwrap_or(0);
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
        exe: proc::read_link(pid, "exe")?,
        exit_signal: stat.exit_signal,
    };
    let mm = mm::collect_mm(pid, vmas, brk)?;
    let pstree = PstreeEntry {
        pid,
        ppid: 0,
        pgid: stat.pgrp,
        sid: stat.session,
        threads: vec![pid],
    };
    writer.write(ImageType::Pstree, None, &[pstree])?;
    writer.write(ImageType::Core, Some(pid), &[core])?;
    writer.write(ImageType::Tasks, Some(pid), &[task])?;
    writer.write(ImageType::Mm, Some(pid), &[mm])?;
    writer.write(ImageType::Pagemap, Some(pid), &stored)?;
    writer.write(ImageType::Fds, Some(pid), &fds)?;
    Ok(Inventory {
        format_major: crate::image::FORMAT_MAJOR,
        format_minor: crate::image::FORMAT_MINOR,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel: crate::sys::proc_ctl::kernel_release(),
        root_pid: pid,
        pids: vec![pid],
        manifest: Vec::new(),
        dump_time_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        shell_job: opts.shell_job,
    })
}

fn user_regs(r: &libc::user_regs_struct) -> UserRegs {
    UserRegs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}
