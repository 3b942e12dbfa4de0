//! The parasite: cryo's code running inside a frozen task, for the state only the task itself
//! can read (signal actions, itimers, POSIX timers, alternate signal stack, umask, tid address)
//! and for streaming its memory pages out with vmsplice, without copying them through the
//! dumper's memory. This module owns the injection, the command channel and the cure; it must
//! not decide which pages or timers to dump (the caller passes them) nor write images.
//!
//! Infection (all through [`RemoteTask`]; no byte of the task is changed):
//! 1. remote `memfd_create` (its name is an empty string found in the task's own memory),
//!    `ftruncate`, `mmap(MAP_SHARED)`; the dumper takes the memfd with `pidfd_getfd` and maps
//!    it too, so both see one region (layout in `parasite/src/abi.rs`); the task's memfd is
//!    closed again at once, the mapping keeps the file;
//! 2. the blob (built from `parasite/`, embedded at build time) is relocated for the region's
//!    address in the target and copied in through the dumper's mapping; its text is made r-x;
//! 3. a command runs by pointing `rip` at the blob's entry, `rsp` at the region's stack, `rdi`
//!    at the control block, `orig_rax = -1`, and `PTRACE_CONT`; the blob ends in `int3`. All
//!    signals stay blocked except the trap and fault ones, whose "ignored" dispositions are set
//!    to default for the duration (a forced SIGTRAP or SIGSEGV would otherwise reset them).
//!
//! Pages: per command two remote `pipe2`s; the dumper takes their read ends (`pidfd_getfd`),
//! the task's read ends are closed; the blob skips zero pages, computes crc32c of each stored
//! run and vmsplices the pages into the write ends, 1 MiB stripes alternating between the two
//! pipes, and closes them at the end; a dumper thread splices the pipes into the page store
//! concurrently (a pipe holds only 1 MiB here), starting the page store's writeback as it
//! goes. In runs marked [`PageRunReq::free_zero`] the blob also gives runs of at least 16
//! zero pages back to the kernel (`MADV_DONTNEED`) as it finds them; in runs marked
//! [`PageRunReq::free_data`], the pages it stored, once the drain thread has them in the page
//! store (it publishes how far it got in the shared region, the blob logs what it freed
//! there, and [`Parasite::take_handed_over`] returns the log). Pages of VMAs the task cannot
//! read (no PROT_READ) are read through /proc/PID/mem instead.
//!
//! Cure: put back swapped dispositions, close leftover fds, re-queue signals that arrived
//! during a run (they were held back), unmap the region, restore the xsave area, registers and
//! signal mask. A crash of the blob (a fault signal instead of the `int3`) is never delivered:
//! the task is cured at once and the command fails.

use super::blob::{self, BlobError, BlobImage};
use super::remote::{find_syscall_insn, RemoteError, RemoteTask};
use crate::stats::Progress;
use crate::sys::parasite_ffi::{self as ffi, Plain, SharedMapping};
use crate::sys::ptrace::{self, WaitStatus};
use crate::sys::{proc_ctl, SysError, PAGE_SIZE};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

#[path = "../../parasite/src/abi.rs"]
#[allow(dead_code)]
mod abi;

// SAFETY (all impls below): #[repr(C)] structs of u64/i64 fields only, no invalid bit patterns.
// SAFETY: see above.
unsafe impl Plain for abi::Ctl {}
// SAFETY: see above.
unsafe impl Plain for abi::KSigaction {}
// SAFETY: see above.
unsafe impl Plain for abi::Itimerval {}
// SAFETY: see above.
unsafe impl Plain for abi::PosixTimerSlot {}
// SAFETY: see above.
unsafe impl Plain for abi::PageReq {}
// SAFETY: see above.
unsafe impl Plain for abi::PageOut {}
// SAFETY: see above.
unsafe impl Plain for abi::Freed {}

/// Bytes of the data area (command inputs and outputs).
const DATA_LEN: u64 = 1 << 20;
/// Bytes of the blob's stack.
const STACK_LEN: u64 = 64 << 10;
/// Offset of the scratch area (pipe fds, siginfo, sigactions of the cure) in the control page.
const SCRATCH_OFF: u64 = 2048;
/// The pipe size asked for (the default /proc/sys/fs/pipe-max-size).
const PIPE_SIZE: usize = 1 << 20;
/// Page requests per CMD_DUMP_PAGES (96 KiB of the data area); then come the results, and
/// the [`abi::Handover`] at the end.
const MAX_REQS: usize = 4096;
/// Where the [`abi::Handover`] of CMD_DUMP_PAGES lies in the data area: its last pages.
const HANDOVER_OFF: u64 =
    DATA_LEN - (std::mem::size_of::<abi::Handover>() as u64).next_multiple_of(PAGE_SIZE);
/// The blob alternates between two pipes every this many bytes (see `drain`).
const STRIPE: u64 = PIPE_SIZE as u64;
/// Bytes spliced into the page store between two starts of writeback.
const WRITEBACK_BYTES: u64 = 32 << 20;
/// Pages read per /proc/PID/mem access for unreadable VMAs.
const MEM_CHUNK_PAGES: u64 = 256;
/// `runs` cut where they meet the pages of `copied` (sorted byte ranges): each piece with
/// whether it lies in those pages.
fn split_copied(runs: &[PageRunReq], copied: &[(u64, u64)]) -> Vec<(PageRunReq, bool)> {
    let mut out = Vec::with_capacity(runs.len());
    for r in runs {
        let end = r.vaddr + r.nr_pages * PAGE_SIZE;
        let piece = |from: u64, to: u64, c: bool| {
            (
                PageRunReq {
                    vaddr: from,
                    nr_pages: (to - from) / PAGE_SIZE,
                    ..*r
                },
                c,
            )
        };
        let mut at = r.vaddr;
        for &(s, e) in copied {
            let (s, e) = (
                (s / PAGE_SIZE * PAGE_SIZE).max(at),
                e.next_multiple_of(PAGE_SIZE).min(end),
            );
            if s >= e {
                continue;
            }
            if s > at {
                out.push(piece(at, s, false));
            }
            out.push(piece(s, e, true));
            at = e;
        }
        if at < end {
            out.push(piece(at, end, false));
        }
    }
    out
}

/// What [`Parasite::task_state`] collects.
#[derive(Debug, Clone)]
pub struct TaskState {
    /// Signal actions (as [`Parasite::sigactions`]).
    pub sigactions: Vec<crate::proto::SigAction>,
    /// The three itimers.
    pub itimers: Vec<crate::proto::ItimerVal>,
    /// The alternate signal stack: (ss_sp, ss_size, ss_flags).
    pub altstack: (u64, u64, i32),
    /// The umask.
    pub umask: u32,
    /// The clear-child-tid address.
    pub tid_address: u64,
    /// The program break.
    pub brk: u64,
}

/// ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF as saved.
fn decode_itimers(all: &[abi::Itimerval; 3]) -> Vec<crate::proto::ItimerVal> {
    all.iter()
        .enumerate()
        .map(|(which, t)| crate::proto::ItimerVal {
            which: which as u32,
            interval_us: (t.interval_sec as u64) * 1_000_000 + t.interval_usec as u64,
            value_us: (t.value_sec as u64) * 1_000_000 + t.value_usec as u64,
        })
        .collect()
}

/// Up to this many bytes of pages, the dumper reads the memory itself (/proc/PID/mem) instead
/// of having the parasite stream it through pipes.
const DIRECT_READ_MAX: u64 = 2 << 20;
/// Signals left unblocked while the blob runs, so that its end (`int3`) and its crashes stop
/// it. A forced signal that is blocked or ignored would have its disposition reset to default
/// by the kernel, so these are unblocked and their ignored dispositions swapped out.
const TRAP_SIGNALS: [i32; 6] = [
    libc::SIGTRAP,
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGSYS,
];
/// `si_code` of a SIGTRAP raised by `int3`.
const SI_KERNEL: i32 = 0x80;
/// The user code segment of a 64-bit task.
const USER64_CS: u64 = 0x33;

/// Errors of infection, parasite commands and cure. Each names the task and what was done.
#[derive(Debug, thiserror::Error)]
pub enum InfectError {
    /// The task cannot be infected as it is.
    #[error("pid {pid}: cannot infect: {reason}")]
    Unsupported {
        /// The task.
        pid: i32,
        /// Why.
        reason: &'static str,
    },
    /// A remote syscall (or the ptrace driving it) failed.
    #[error("pid {pid}: {step}")]
    Remote {
        /// The task.
        pid: i32,
        /// What was being done.
        step: &'static str,
        /// The failure.
        #[source]
        source: RemoteError,
    },
    /// A syscall in the dumper failed.
    #[error("pid {pid}: {step}")]
    Sys {
        /// The task.
        pid: i32,
        /// What was being done.
        step: &'static str,
        /// The failure.
        #[source]
        source: SysError,
    },
    /// The embedded blob could not be loaded.
    #[error("pid {pid}: loading the parasite blob at {addr:#x}")]
    Blob {
        /// The task.
        pid: i32,
        /// The load address in the task.
        addr: u64,
        /// The failure.
        #[source]
        source: BlobError,
    },
    /// A blob command reported a failed syscall.
    #[error("pid {pid}: parasite command {command}: syscall {syscall} on {addr:#x} failed: {}", io::Error::from_raw_os_error(*errno))]
    Command {
        /// The task.
        pid: i32,
        /// The command.
        command: &'static str,
        /// The syscall number that failed (0: the blob's own check).
        syscall: u64,
        /// The address (or timer id, signal, fd) it worked on.
        addr: u64,
        /// The errno.
        errno: i32,
    },
    /// The blob faulted; the signal was not delivered and the task was cured.
    #[error("pid {pid}: parasite crashed in command {command}: signal {signal} at rip {rip:#x}, fault address {addr:#x} (task cured)")]
    Crashed {
        /// The task.
        pid: i32,
        /// The command.
        command: &'static str,
        /// The fault signal.
        signal: i32,
        /// Where the blob was.
        rip: u64,
        /// The fault address (si_addr).
        addr: u64,
    },
    /// The task stopped in a way a blob run never causes; it was cured.
    #[error("pid {pid}: unexpected stop in parasite command {command}: {status:?} (task cured)")]
    UnexpectedStop {
        /// The task.
        pid: i32,
        /// The command.
        command: &'static str,
        /// What waitpid said.
        status: WaitStatus,
    },
    /// The task died while the blob ran.
    #[error("pid {pid}: task ended during parasite command {command}: {status:?}")]
    TaskGone {
        /// The task.
        pid: i32,
        /// The command.
        command: &'static str,
        /// What waitpid said.
        status: WaitStatus,
    },
    /// A page run request is malformed.
    #[error("pid {pid}: bad page run request at {addr:#x}: {reason}")]
    BadRequest {
        /// The task.
        pid: i32,
        /// The run's address.
        addr: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// Writing to the page store failed.
    #[error("pid {pid}: writing pages to the page store at offset {offset:#x}")]
    PageStore {
        /// The task.
        pid: i32,
        /// The file offset.
        offset: u64,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Reading /proc/PID/mem or /proc/PID/status failed.
    #[error("pid {pid}: reading {what} at {addr:#x}")]
    Proc {
        /// The task.
        pid: i32,
        /// The file.
        what: &'static str,
        /// The address (0 for status).
        addr: u64,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The pipe carried another amount of data than the blob reported.
    #[error("pid {pid}: parasite command {command} put {expected} bytes in the pipe, the dumper got {got}")]
    ShortStream {
        /// The task.
        pid: i32,
        /// The command.
        command: &'static str,
        /// Bytes the blob reported.
        expected: u64,
        /// Bytes the dumper received.
        got: u64,
    },
    /// The parasite was already cured (after a crash or an unexpected stop).
    #[error("pid {pid}: the parasite is gone (cured after an earlier failure)")]
    Cured {
        /// The task.
        pid: i32,
    },
}

/// A run of pages to dump: page-aligned, runs ascending and not overlapping. Pass only pages
/// that are present (e.g. from /proc/PID/pagemap): the blob reads every page it is given, which
/// would fault in untouched anonymous pages (as the shared zero page) and file pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRunReq {
    /// Start address.
    pub vaddr: u64,
    /// Number of 4 KiB pages.
    pub nr_pages: u64,
    /// The VMA's PROT_* bits; runs without PROT_READ are read through /proc/PID/mem.
    pub prot: u32,
    /// The blob may give the run's all-zero pages back to the kernel as it finds them
    /// (`abi::REQ_FREE_ZERO`: only for private anonymous memory, neither locked nor
    /// registered with userfaultfd, of a process the dump is to kill).
    pub free_zero: bool,
    /// The blob may give the run's stored pages back to the kernel once they are in the page
    /// store (`abi::REQ_FREE_DATA`: the same memory as `free_zero`); the ranges it freed are
    /// kept for [`Parasite::take_handed_over`], to be written back if the dump fails.
    pub free_data: bool,
}

/// Pages the blob gave back to the kernel once they were in the page store
/// ([`PageRunReq::free_data`]): until the dump is committed, their only copy is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedOver {
    /// Start address in the task.
    pub vaddr: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Where the bytes are in the page store.
    pub offset: u64,
}

/// The shared region: where it is in the target, the dumper's mapping of it, the blob in it.
struct Region {
    /// Address in the target.
    base: u64,
    /// Length in bytes.
    len: u64,
    /// Shared with the page store's drainer, which sets the `stored` counter of a
    /// [`abi::Handover`] in it while the blob runs (and so keeps it mapped until it is done).
    map: std::sync::Arc<SharedMapping>,
    /// Offset of the control block (and of the region's first non-blob page).
    ctl_off: u64,
    /// Offset of the data area.
    data_off: u64,
    /// Offset of the blob's entry.
    entry: u64,
    /// The `rip` the blob's final `int3` leaves.
    trap_rip: u64,
    /// The blob's `syscall; int3` gadget, once its text is executable (0: none).
    gadget: u64,
    /// Executable ranges of the blob (target addresses).
    code: Vec<(u64, u64)>,
}

impl Region {
    fn addr(&self, off: u64) -> u64 {
        self.base + off
    }
}

/// How a blob run ended.
enum RunEnd {
    /// The blob reached its `int3`.
    Done,
    /// A fault signal inside the blob.
    Crash { signal: i32, rip: u64, addr: u64 },
    /// Some other stop.
    Unexpected(WaitStatus),
    /// The task is gone.
    Gone(WaitStatus),
}

/// An infected task. Commands run the blob inside it; [`Parasite::cure`] (or drop) undoes
/// everything and leaves the task ptrace-stopped for the caller to detach.
#[must_use = "an infected task must be cured (drop cures too, logging errors)"]
pub struct Parasite {
    pid: i32,
    remote: Option<RemoteTask>,
    pidfd: Option<OwnedFd>,
    region: Option<Region>,
    xstate: Option<Vec<u8>>,
    /// Fds created in the task and not closed yet.
    target_fds: Vec<i32>,
    /// Trap signals whose SIG_IGN disposition was swapped for SIG_DFL, with the original.
    swapped: Vec<(i32, abi::KSigaction)>,
    /// Signals (raw siginfo) delivered during a blob run and held back, each with whether it
    /// was pending for the thread (true) or for the whole process.
    stray: Vec<([u8; 128], bool)>,
    /// Signals pending for the thread and for the process at infection and not yet delivered
    /// (SigPnd, ShdPnd): where a held-back signal came from. The kernel delivers a thread's
    /// own before the process's.
    pending: (u64, u64),
    /// The signal mask while the blob runs.
    run_mask: u64,
    mem: Option<File>,
    /// Page requests per CMD_DUMP_PAGES.
    max_reqs: usize,
    /// Result slots per CMD_DUMP_PAGES.
    max_outs: u64,
    /// Up to this many bytes of pages, read them directly (see [`DIRECT_READ_MAX`]).
    direct_max: u64,
    /// Byte ranges whose pages are copied, never spliced ([`Parasite::set_copied_ranges`]).
    copied: Vec<(u64, u64)>,
    /// Zero pages the blob gave back to the kernel so far ([`PageRunReq::free_zero`]).
    zero_freed: u64,
    /// Stored pages the blob gave back so far ([`PageRunReq::free_data`]).
    handed: Vec<HandedOver>,
    /// A CMD_DUMP_PAGES with an [`abi::Handover`] ran (or runs) since its log was read: the
    /// page store offset its stream starts at.
    handing: Option<u64>,
    /// The task is gone: nothing remote can be done any more.
    gone: bool,
    cured: bool,
    /// Remote syscalls run so far: through the gadget (one stop), and directly (two stops).
    calls: RemoteCalls,
}

/// How many remote syscalls a [`Parasite`] ran each way ([`Parasite::remote_calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteCalls {
    /// Through the blob's `syscall; int3` gadget: one stop each.
    pub gadget: u64,
    /// At the task's own syscall instruction: two stops each.
    pub direct: u64,
}

impl Parasite {
    /// Infects `pid`, which the caller has ptrace-stopped (seized and interrupted; a
    /// single-threaded task for now). `maps` is the text of /proc/PID/maps.
    pub fn infect(pid: i32, maps: &str) -> Result<Self, InfectError> {
        if !std::is_x86_feature_detected!("sse4.2") {
            return Err(InfectError::Unsupported {
                pid,
                reason: "the CPU lacks SSE4.2 (crc32c in the blob)",
            });
        }
        let syscall_ip = find_syscall_insn(pid, maps).map_err(|source| InfectError::Remote {
            pid,
            step: "looking for a syscall instruction",
            source,
        })?;
        let empty_name = find_nul_byte(pid, maps, syscall_ip)?;
        let status = read_sig_status(pid)?;
        let (ignored, caught) = (status.ignored, status.caught);
        let mut remote =
            RemoteTask::new(pid, syscall_ip).map_err(|source| InfectError::Remote {
                pid,
                step: "taking over the task",
                source,
            })?;
        // Calls before the gadget exists (and the munmap of the cure) take one stop instead
        // of two where a forced SIGTRAP changes nothing.
        remote.set_single_step(super::remote::may_single_step(ignored, caught));
        if remote.saved_regs().cs != USER64_CS {
            return Err(InfectError::Unsupported {
                pid,
                reason: "the task is not running 64-bit code",
            });
        }
        let mut run_mask = !0u64;
        for sig in TRAP_SIGNALS {
            run_mask &= !(1u64 << (sig - 1));
        }
        let mut p = Parasite {
            pid,
            remote: Some(remote),
            pidfd: None,
            region: None,
            xstate: None,
            target_fds: Vec::new(),
            swapped: Vec::new(),
            stray: Vec::new(),
            pending: (status.pending, status.shared_pending),
            run_mask,
            mem: None,
            max_reqs: MAX_REQS,
            direct_max: DIRECT_READ_MAX,
            copied: Vec::new(),
            zero_freed: 0,
            handed: Vec::new(),
            handing: None,
            max_outs: (HANDOVER_OFF - (MAX_REQS * std::mem::size_of::<abi::PageReq>()) as u64)
                / std::mem::size_of::<abi::PageOut>() as u64,
            gone: false,
            cured: false,
            calls: RemoteCalls::default(),
        };
        match p.setup(empty_name, ignored) {
            Ok(()) => {
                tracing::debug!(
                    pid,
                    addr = format_args!("{:#x}", p.region.as_ref().map_or(0, |r| r.base)),
                    gadget = p.region.as_ref().is_some_and(|r| r.gadget != 0),
                    "parasite injected"
                );
                Ok(p)
            }
            Err(e) => {
                if let Err(e2) = p.cure_now() {
                    tracing::error!(pid, error = %e2, "cure after a failed infection");
                }
                Err(e)
            }
        }
    }

    fn setup(&mut self, empty_name: u64, ignored: u64) -> Result<(), InfectError> {
        let pid = self.pid;
        let sys_err = |step| move |source| InfectError::Sys { pid, step, source };
        self.xstate = Some(ptrace::get_xstate(pid).map_err(sys_err("saving the xsave area"))?);
        let probe = blob::load(blob::PARASITE_ELF, 0).map_err(|source| InfectError::Blob {
            pid,
            addr: 0,
            source,
        })?;
        let blob_len = (probe.bytes.len() as u64).next_multiple_of(PAGE_SIZE);
        let ctl_off = blob_len;
        let data_off = ctl_off + PAGE_SIZE;
        let len = data_off + DATA_LEN + STACK_LEN;

        let memfd = self.remote_call(
            "remote memfd_create",
            libc::SYS_memfd_create,
            [empty_name, libc::MFD_CLOEXEC as u64, 0, 0, 0, 0],
        )? as i32;
        self.target_fds.push(memfd);
        let pidfd = proc_ctl::pidfd_open(pid).map_err(sys_err("pidfd_open"))?;
        let local = proc_ctl::pidfd_getfd(&pidfd, memfd)
            .map_err(sys_err("pidfd_getfd of the parasite memfd"))?;
        let local = std::fs::File::from(local);
        self.pidfd = Some(pidfd);
        // The same file: sized here, without a remote call.
        local.set_len(len).map_err(|e| InfectError::Sys {
            pid,
            step: "sizing the parasite memfd",
            source: SysError {
                call: "ftruncate",
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            },
        })?;
        let map = SharedMapping::new(local.as_fd(), len as usize)
            .map_err(sys_err("mapping the parasite region in the dumper"))?;
        drop(local);
        let base = self.remote_call(
            "remote mmap of the parasite region",
            libc::SYS_mmap,
            [
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                libc::MAP_SHARED as u64,
                memfd as u64,
                0,
            ],
        )?;
        // From here the region exists in the target: record it before anything else can fail.
        self.region = Some(Region {
            base,
            len,
            map: std::sync::Arc::new(map),
            ctl_off,
            data_off,
            entry: 0,
            trap_rip: 0,
            gadget: 0,
            code: Vec::new(),
        });

        let image = blob::load(blob::PARASITE_ELF, base).map_err(|source| InfectError::Blob {
            pid,
            addr: base,
            source,
        })?;
        let trap = find_final_trap(&image).ok_or(InfectError::Blob {
            pid,
            addr: base,
            source: BlobError::Shape("no int3; ud2 after the entry"),
        })?;
        {
            let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
            region
                .map
                .write_bytes(0, &image.bytes)
                .map_err(sys_err("copying the blob"))?;
            region.entry = image.entry;
            region.trap_rip = base + trap + 1;
            region.code = image
                .exec
                .iter()
                .map(|&(s, l)| (base + s, base + s + l))
                .collect();
        }
        for &(s, l) in &image.exec {
            self.remote_call(
                "remote mprotect of the blob's text",
                libc::SYS_mprotect,
                [
                    base + s,
                    l,
                    (libc::PROT_READ | libc::PROT_EXEC) as u64,
                    0,
                    0,
                    0,
                ],
            )?;
        }

        // Ignored trap signals get SIG_DFL while we are inside (see TRAP_SIGNALS).
        for sig in TRAP_SIGNALS {
            if ignored & (1u64 << (sig - 1)) == 0 {
                continue;
            }
            let (new_addr, old_addr) = {
                let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
                let new_off = region.ctl_off + SCRATCH_OFF;
                region
                    .map
                    .write(new_off as usize, &abi::KSigaction::default())
                    .map_err(sys_err("writing a sigaction"))?;
                (region.addr(new_off), region.addr(new_off + 64))
            };
            self.remote_call(
                "remote rt_sigaction (default for an ignored trap signal)",
                libc::SYS_rt_sigaction,
                [sig as u64, new_addr, old_addr, 8, 0, 0],
            )?;
            let old = self.region_read::<abi::KSigaction>(SCRATCH_OFF + 64, true)?;
            self.swapped.push((sig, old));
        }
        // The text is executable and no trap signal is ignored: further calls go through the
        // gadget (one stop each; its int3 must not meet an ignored SIGTRAP, which the kernel
        // would reset to the default action).
        if image.bytes.get(trap as usize + 3..trap as usize + 6) == Some(&[0x0f, 0x05, 0xcc]) {
            let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
            region.gadget = base + trap + 3;
        }
        self.close_target_fd(memfd)?;
        Ok(())
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Lowers the page requests and result runs handled per blob command (at least 1 each;
    /// the defaults fill the 1 MiB data area). Only useful to test the batching and resumption
    /// of [`Parasite::dump_pages`]; the output does not change.
    pub fn set_batch_limits(&mut self, max_reqs: usize, max_outs: u64) {
        self.max_reqs = max_reqs.clamp(1, MAX_REQS);
        self.max_outs = max_outs.max(1).min(self.max_outs);
    }

    /// Reads up to `bytes` of pages directly instead of streaming them (default
    /// `DIRECT_READ_MAX`, 2 MiB; 0 always streams). Only useful to test both paths; the output does
    /// not change.
    pub fn set_direct_read_max(&mut self, bytes: u64) {
        self.direct_max = bytes;
    }

    /// The all-zero pages the blob gave back to the kernel so far ([`PageRunReq::free_zero`]).
    pub fn zero_freed(&self) -> u64 {
        self.zero_freed
    }

    /// The stored pages the blob gave back to the kernel since the last call
    /// ([`PageRunReq::free_data`]), whether the page dump succeeded or not (a crash of the
    /// blob included). Their bytes are in the page store at the offsets given, and must be
    /// written back into the task unless the dump goes through to the kill.
    pub fn take_handed_over(&mut self) -> Vec<HandedOver> {
        self.read_handover();
        std::mem::take(&mut self.handed)
    }

    /// Reads the log of the last CMD_DUMP_PAGES with an [`abi::Handover`], if not read yet.
    /// A log that cannot be read leaves pages freed that nobody knows of: logged loudly.
    fn read_handover(&mut self) {
        let Some(start) = self.handing.take() else {
            return;
        };
        let pid = self.pid;
        let Some(region) = self.region.as_ref() else {
            tracing::error!(
                pid,
                "the log of freed pages is gone with the parasite region"
            );
            return;
        };
        let base = (region.data_off + HANDOVER_OFF) as usize;
        let n: u64 = match region
            .map
            .read(base + std::mem::offset_of!(abi::Handover, n_freed))
        {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(pid, error = %e, "cannot read the log of freed pages");
                return;
            }
        };
        let (log, size) = (
            base + std::mem::offset_of!(abi::Handover, freed),
            std::mem::size_of::<abi::Freed>(),
        );
        for k in 0..(n as usize).min(abi::HANDOVER_ENTRIES) {
            match region.map.read::<abi::Freed>(log + k * size) {
                Ok(f) => self.handed.push(HandedOver {
                    vaddr: f.vaddr,
                    len: f.len,
                    offset: start + f.stream_off,
                }),
                Err(e) => tracing::error!(pid, error = %e, "cannot read the log of freed pages"),
            }
        }
    }

    /// Byte ranges `(start, end)` of the task that the kernel may rewrite while the blob runs:
    /// each thread's rseq area, whose cpu_id and mm_cid the kernel updates whenever the task
    /// returns to user space. A spliced page is only referenced until the dumper drains it, so
    /// such a write in between would store bytes other than the ones the blob checksummed; the
    /// pages holding these ranges are copied by the dumper instead (/proc/PID/mem), and
    /// checksummed as copied.
    pub fn set_copied_ranges(&mut self, mut ranges: Vec<(u64, u64)>) {
        ranges.retain(|r| r.0 < r.1);
        ranges.sort_unstable();
        self.copied = ranges;
    }

    /// Signal actions, itimers, sigaltstack, umask, clear-tid address and program break, with
    /// one run of the blob (what [`Parasite::sigactions`], [`Parasite::itimers`] and
    /// [`Parasite::sigaltstack`] and the others each ask separately).
    pub fn task_state(&mut self) -> Result<TaskState, InfectError> {
        let o = self.run(abi::CMD_STATE, "state", [0; 8])?;
        let all: [abi::KSigaction; 64] = self.region_read(0, false)?;
        let timers: [abi::Itimerval; 3] = self.region_read(abi::STATE_ITIMERS_OFF, false)?;
        Ok(TaskState {
            sigactions: self.decode_sigactions(&all),
            itimers: decode_itimers(&timers),
            altstack: (o[0], o[2], o[1] as u32 as i32),
            umask: o[3] as u32,
            tid_address: o[4],
            brk: o[5],
        })
    }

    /// Signal actions of signals 1..=64 except SIGKILL and SIGSTOP, default ones included.
    pub fn sigactions(&mut self) -> Result<Vec<crate::proto::SigAction>, InfectError> {
        self.run(abi::CMD_SIGACTIONS, "sigactions", [0; 8])?;
        let all: [abi::KSigaction; 64] = self.region_read(0, false)?;
        Ok(self.decode_sigactions(&all))
    }

    /// The saved actions (the ones swapped for our trap handling put back).
    fn decode_sigactions(&self, all: &[abi::KSigaction; 64]) -> Vec<crate::proto::SigAction> {
        let mut out = Vec::with_capacity(62);
        for (i, a) in all.iter().enumerate() {
            let signo = i as i32 + 1;
            if signo == libc::SIGKILL || signo == libc::SIGSTOP {
                continue;
            }
            let a = self
                .swapped
                .iter()
                .find(|(s, _)| *s == signo)
                .map_or(*a, |(_, orig)| *orig);
            out.push(crate::proto::SigAction {
                signo: signo as u32,
                handler: a.handler,
                flags: a.flags,
                restorer: a.restorer,
                mask: a.mask,
            });
        }
        out
    }

    /// ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF, in that order.
    pub fn itimers(&mut self) -> Result<Vec<crate::proto::ItimerVal>, InfectError> {
        self.run(abi::CMD_ITIMERS, "itimers", [0; 8])?;
        let all: [abi::Itimerval; 3] = self.region_read(0, false)?;
        Ok(decode_itimers(&all))
    }

    /// For each POSIX timer id (from /proc/PID/timers): (id, interval_ns, value_ns, overrun).
    pub fn posix_timers(&mut self, ids: &[i32]) -> Result<Vec<(i32, u64, u64, i32)>, InfectError> {
        let per_cmd = (DATA_LEN as usize) / std::mem::size_of::<abi::PosixTimerSlot>();
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(per_cmd) {
            for (i, &id) in chunk.iter().enumerate() {
                let slot = abi::PosixTimerSlot {
                    id: id as i64,
                    ..Default::default()
                };
                self.region_write(
                    (i * std::mem::size_of::<abi::PosixTimerSlot>()) as u64,
                    &slot,
                )?;
            }
            let mut args = [0u64; 8];
            args[0] = chunk.len() as u64;
            self.run(abi::CMD_POSIX_TIMERS, "posix_timers", args)?;
            for i in 0..chunk.len() {
                let s: abi::PosixTimerSlot = self.region_read(
                    (i * std::mem::size_of::<abi::PosixTimerSlot>()) as u64,
                    false,
                )?;
                let ns = |sec: i64, nsec: i64| (sec as u64) * 1_000_000_000 + nsec as u64;
                out.push((
                    s.id as i32,
                    ns(s.interval_sec, s.interval_nsec),
                    ns(s.value_sec, s.value_nsec),
                    s.overrun as i32,
                ));
            }
        }
        Ok(out)
    }

    fn misc(&mut self) -> Result<[u64; 8], InfectError> {
        self.run(abi::CMD_MISC, "misc", [0; 8])
    }

    /// The alternate signal stack: (ss_sp, ss_size, ss_flags).
    pub fn sigaltstack(&mut self) -> Result<(u64, u64, i32), InfectError> {
        let o = self.misc()?;
        Ok((o[0], o[2], o[1] as u32 as i32))
    }

    /// The umask.
    pub fn umask(&mut self) -> Result<u32, InfectError> {
        Ok(self.misc()?[3] as u32)
    }

    /// The clear-child-tid address (PR_GET_TID_ADDRESS).
    pub fn tid_address(&mut self) -> Result<u64, InfectError> {
        Ok(self.misc()?[4])
    }

    /// Streams the given runs (page-aligned, ascending) into `pages` at its current end
    /// (rounded up to 4 KiB): all-zero pages are skipped; returns the stored runs with their
    /// file offsets and crc32c. The file position is left at the new end.
    pub fn dump_pages(
        &mut self,
        runs: &[PageRunReq],
        pages: &mut File,
    ) -> Result<Vec<crate::proto::PageRun>, InfectError> {
        let scanned: u64 = runs.iter().map(|r| r.nr_pages * PAGE_SIZE).sum();
        let progress = Progress::new("dumping pages", scanned);
        self.dump_pages_with_progress(runs, pages, &progress)
    }

    /// [`Parasite::dump_pages`], advancing a progress line that may be shared with other
    /// processes' dumps (whose total the caller keeps).
    pub fn dump_pages_with_progress(
        &mut self,
        runs: &[PageRunReq],
        pages: &mut File,
        progress: &Progress,
    ) -> Result<Vec<crate::proto::PageRun>, InfectError> {
        let pid = self.pid;
        self.check_usable()?;
        let mut prev_end = 0u64;
        for r in runs {
            let bad = |reason| InfectError::BadRequest {
                pid,
                addr: r.vaddr,
                reason,
            };
            if r.vaddr % PAGE_SIZE != 0 {
                return Err(bad("not page-aligned"));
            }
            let end = r
                .nr_pages
                .checked_mul(PAGE_SIZE)
                .and_then(|l| r.vaddr.checked_add(l))
                .ok_or_else(|| bad("run wraps around the address space"))?;
            if r.vaddr < prev_end {
                return Err(bad("runs not ascending or overlapping"));
            }
            prev_end = end;
        }
        let store_err = |offset| {
            move |source| InfectError::PageStore {
                pid,
                offset,
                source,
            }
        };
        let len = pages.seek(SeekFrom::End(0)).map_err(store_err(0))?;
        let mut off = len.next_multiple_of(PAGE_SIZE);
        if off != len {
            pages.set_len(off).map_err(store_err(len))?;
        }
        let mut out = Vec::new();
        let runs: Vec<PageRunReq> = runs.iter().copied().filter(|r| r.nr_pages > 0).collect();
        // A little memory is read by the dumper directly: setting up the pipes and the page
        // stream would cost more than copying it.
        let scanned: u64 = runs.iter().map(|r| r.nr_pages * PAGE_SIZE).sum();
        if scanned <= self.direct_max {
            for r in &runs {
                self.dump_unreadable(r, pages, &mut off, &mut out)?;
            }
            progress.advance(scanned);
            pages.seek(SeekFrom::Start(off)).map_err(store_err(off))?;
            return Ok(out);
        }
        let reserved = reserve_blocks(pages, off, scanned);
        // Stored bytes against the bytes scanned (zero pages make the bar end short of full).
        let first = off;
        let reported = AtomicU64::new(0);
        // Runs without PROT_READ, and the pages the kernel may rewrite meanwhile, are copied.
        let runs = split_copied(&runs, &self.copied);
        let copied = |(r, c): &(PageRunReq, bool)| *c || r.prot & libc::PROT_READ as u32 == 0;
        let mut i = 0;
        while i < runs.len() {
            if copied(&runs[i]) {
                self.dump_unreadable(&runs[i].0, pages, &mut off, &mut out)?;
                i += 1;
                continue;
            }
            let mut j = i;
            while j < runs.len() && !copied(&runs[j]) && j - i < self.max_reqs {
                j += 1;
            }
            let reqs: Vec<abi::PageReq> = runs[i..j]
                .iter()
                .map(|(r, _)| abi::PageReq {
                    vaddr: r.vaddr,
                    nr_pages: r.nr_pages,
                    flags: if r.free_zero { abi::REQ_FREE_ZERO } else { 0 }
                        | if r.free_data { abi::REQ_FREE_DATA } else { 0 },
                })
                .collect();
            self.dump_readable(reqs, pages, &mut off, &mut out, &|at| {
                let done = at - first;
                let before = reported.swap(done, Ordering::Relaxed);
                progress.advance(done.saturating_sub(before));
            })?;
            i = j;
        }
        if reserved {
            // The same size: ext4 gives back the blocks reserved past the end (zero pages).
            pages.set_len(off).map_err(store_err(off))?;
        }
        pages.seek(SeekFrom::Start(off)).map_err(store_err(off))?;
        Ok(out)
    }

    /// Runs CMD_DUMP_PAGES over `reqs` (as many commands as the result area needs).
    fn dump_readable(
        &mut self,
        mut reqs: Vec<abi::PageReq>,
        pages: &File,
        off: &mut u64,
        out: &mut Vec<crate::proto::PageRun>,
        on_progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), InfectError> {
        let pid = self.pid;
        let req_size = std::mem::size_of::<abi::PageReq>() as u64;
        let out_size = std::mem::size_of::<abi::PageOut>() as u64;
        let outs_off = (MAX_REQS as u64) * req_size;
        let hand = reqs.iter().any(|r| r.flags & abi::REQ_FREE_DATA != 0);
        let mut cap = self.max_outs.min((HANDOVER_OFF - outs_off) / out_size);
        if hand {
            // The log of what the blob frees has room for two ranges per run.
            cap = cap.min(abi::HANDOVER_ENTRIES as u64 / 2);
        }
        while !reqs.is_empty() {
            for (k, r) in reqs.iter().enumerate() {
                self.region_write(k as u64 * req_size, r)?;
            }
            let (rfd, wfd) = self.open_pipe()?;
            let (rfd2, wfd2) = self.open_pipe()?;
            // The Handover's counter, and where the blob counts the ranges it logs.
            let stored_off = std::mem::offset_of!(abi::Handover, stored);
            let n_freed_off = std::mem::offset_of!(abi::Handover, n_freed);
            let (data, map, hand_off) = {
                let region = self.region.as_ref().ok_or(InfectError::Cured { pid })?;
                let hand_off = (region.data_off + HANDOVER_OFF) as usize;
                if hand {
                    region
                        .map
                        .write(hand_off + stored_off, &0u64)
                        .and_then(|()| region.map.write(hand_off + n_freed_off, &0u64))
                        .map_err(|source| InfectError::Sys {
                            pid,
                            step: "writing the parasite's handover block",
                            source,
                        })?;
                }
                (region.addr(region.data_off), region.map.clone(), hand_off)
            };
            debug_assert!(outs_off + cap * out_size <= HANDOVER_OFF);
            let stored = if hand {
                Some(
                    map.atomic_u64(hand_off + stored_off)
                        .map_err(|source| InfectError::Sys {
                            pid,
                            step: "sharing the page store's progress",
                            source,
                        })?,
                )
            } else {
                None
            };
            let args = [
                wfd as u64,
                reqs.len() as u64,
                data,
                data + outs_off,
                cap,
                wfd2 as u64,
                STRIPE,
                if hand { data + HANDOVER_OFF } else { 0 },
            ];
            let start = *off;
            if hand {
                self.handing = Some(start);
            }
            let (res, drained) = std::thread::scope(|s| {
                let pipes = [rfd.as_fd(), rfd2.as_fd()];
                // Beside the task, not on its CPU (which the dump gave it with its tracer): the
                // blob's zero checks and checksums overlap the drainer's copies into the file.
                let drainer = s.spawn(move || {
                    proc_ctl::unpin_current_thread();
                    drain(pipes, pages, start, stored, on_progress)
                });
                let res = self.run(abi::CMD_DUMP_PAGES, "dump_pages", args);
                // The blob closes its pipe end on every path it returns by; after a crash or a
                // failure of ours the cure (already done by run) or the task's exit closed it.
                if res.is_ok() || matches!(res, Err(InfectError::Command { .. })) {
                    self.target_fds.retain(|&fd| fd != wfd && fd != wfd2);
                } else if !self.cured && !self.gone {
                    // Unblock the drainer before joining it.
                    if let Err(e) = self.cure_now() {
                        tracing::error!(pid, error = %e, "cure after a failed page dump");
                    }
                }
                let drained = drainer.join();
                (res, drained)
            });
            self.read_handover();
            let o = res?;
            let got = match drained {
                Ok(Ok(n)) => n,
                Ok(Err((at, source))) => {
                    return Err(InfectError::PageStore {
                        pid,
                        offset: at,
                        source,
                    })
                }
                Err(_) => {
                    return Err(InfectError::PageStore {
                        pid,
                        offset: start,
                        source: io::Error::other("page store thread panicked"),
                    })
                }
            };
            let (n_out, bytes, next_req, next_page, done) = (o[0], o[1], o[2], o[3], o[4]);
            self.zero_freed += o[5];
            if got != bytes {
                return Err(InfectError::ShortStream {
                    pid,
                    command: "dump_pages",
                    expected: bytes,
                    got,
                });
            }
            let mut sum = 0u64;
            for k in 0..n_out {
                let r: abi::PageOut = self.region_read(outs_off + k * out_size, false)?;
                out.push(crate::proto::PageRun {
                    vaddr: r.vaddr,
                    nr_pages: r.nr_pages,
                    offset: *off,
                    crc32c: r.crc as u32,
                });
                *off += r.nr_pages * PAGE_SIZE;
                sum += r.nr_pages * PAGE_SIZE;
            }
            if sum != bytes {
                return Err(InfectError::ShortStream {
                    pid,
                    command: "dump_pages",
                    expected: sum,
                    got: bytes,
                });
            }
            if done == 1 {
                break;
            }
            let (next_req, next_page) = (next_req as usize, next_page);
            if next_req >= reqs.len() || next_page >= reqs[next_req].nr_pages {
                return Err(InfectError::BadRequest {
                    pid,
                    addr: reqs.get(next_req).map_or(0, |r| r.vaddr),
                    reason: "parasite returned a bad resume position",
                });
            }
            reqs.drain(..next_req);
            reqs[0].vaddr += next_page * PAGE_SIZE;
            reqs[0].nr_pages -= next_page;
        }
        Ok(())
    }

    /// A pipe with the write end in the task and the read end in the dumper.
    fn open_pipe(&mut self) -> Result<(OwnedFd, i32), InfectError> {
        let pid = self.pid;
        let fds_addr = {
            let region = self.region.as_ref().ok_or(InfectError::Cured { pid })?;
            region.addr(region.ctl_off + SCRATCH_OFF)
        };
        self.remote_call(
            "remote pipe2",
            libc::SYS_pipe2,
            [fds_addr, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
        )?;
        let fds: [i32; 2] = self.region_read(SCRATCH_OFF, true)?;
        self.target_fds.extend_from_slice(&fds);
        let pidfd = self.pidfd.as_ref().ok_or(InfectError::Cured { pid })?;
        let local = proc_ctl::pidfd_getfd(pidfd, fds[0]).map_err(|source| InfectError::Sys {
            pid,
            step: "pidfd_getfd of the parasite pipe",
            source,
        })?;
        self.close_target_fd(fds[0])?;
        if let Err(e) = ffi::set_pipe_size(local.as_fd(), PIPE_SIZE) {
            tracing::debug!(pid, error = %e, "keeping the default pipe size");
        }
        Ok((local, fds[1]))
    }

    /// Pages of a run the task cannot read: through /proc/PID/mem, zero pages skipped.
    fn dump_unreadable(
        &mut self,
        run: &PageRunReq,
        pages: &File,
        off: &mut u64,
        out: &mut Vec<crate::proto::PageRun>,
    ) -> Result<(), InfectError> {
        let pid = self.pid;
        if self.mem.is_none() {
            let f = File::open(format!("/proc/{pid}/mem")).map_err(|source| InfectError::Proc {
                pid,
                what: "/proc/PID/mem",
                addr: run.vaddr,
                source,
            })?;
            self.mem = Some(f);
        }
        let mem = self.mem.as_ref().ok_or(InfectError::Cured { pid })?;
        let chunk_len = (run.nr_pages.min(MEM_CHUNK_PAGES) * PAGE_SIZE) as usize;
        let mut buf = vec![0u8; chunk_len];
        // The chunk's non-zero pages, written with one call per chunk.
        let mut keep: Vec<u8> = Vec::with_capacity(chunk_len);
        let mut cur: Option<crate::proto::PageRun> = None;
        let mut p = 0;
        while p < run.nr_pages {
            let n = (run.nr_pages - p).min(MEM_CHUNK_PAGES);
            let addr = run.vaddr + p * PAGE_SIZE;
            let chunk = &mut buf[..(n * PAGE_SIZE) as usize];
            mem.read_exact_at(chunk, addr)
                .map_err(|source| InfectError::Proc {
                    pid,
                    what: "/proc/PID/mem",
                    addr,
                    source,
                })?;
            keep.clear();
            let chunk_off = *off;
            for (k, page) in chunk.chunks_exact(PAGE_SIZE as usize).enumerate() {
                let vaddr = addr + k as u64 * PAGE_SIZE;
                if page.iter().all(|&b| b == 0) {
                    out.extend(cur.take());
                    continue;
                }
                keep.extend_from_slice(page);
                let r = cur.get_or_insert(crate::proto::PageRun {
                    vaddr,
                    nr_pages: 0,
                    offset: *off,
                    crc32c: 0,
                });
                r.nr_pages += 1;
                r.crc32c = crc32c::crc32c_append(r.crc32c, page);
                *off += PAGE_SIZE;
            }
            if !keep.is_empty() {
                pages
                    .write_all_at(&keep, chunk_off)
                    .map_err(|source| InfectError::PageStore {
                        pid,
                        offset: chunk_off,
                        source,
                    })?;
            }
            p += n;
        }
        out.extend(cur);
        Ok(())
    }

    /// Undoes everything; the task stays ptrace-stopped for the caller to detach.
    pub fn cure(mut self) -> Result<(), InfectError> {
        self.cure_now()
    }

    /// The cure proper: best effort through every step, reporting the first failure.
    fn cure_now(&mut self) -> Result<(), InfectError> {
        if self.cured {
            return Ok(());
        }
        // A page dump cut short (a crash of the blob, say) may have freed pages: its log goes
        // with the region, so it is read first.
        self.read_handover();
        self.cured = true;
        let pid = self.pid;
        let mut first: Option<InfectError> = None;
        let mut note = |r: Result<(), InfectError>| {
            if let Err(e) = r {
                tracing::warn!(pid, error = %e, "cure step failed");
                first.get_or_insert(e);
            }
        };
        if self.gone {
            if let Some(remote) = self.remote.take() {
                remote.forget();
            }
        } else {
            for (sig, act) in std::mem::take(&mut self.swapped) {
                note(self.put_sigaction(sig, &act));
            }
            for fd in std::mem::take(&mut self.target_fds) {
                note(self.close_target_fd(fd));
            }
            for (info, private) in std::mem::take(&mut self.stray) {
                note(self.requeue(&info, private));
            }
            if let Some(region) = self.region.as_ref() {
                let (base, len) = (region.base, region.len);
                // Not through the gadget: it goes with the region.
                note(
                    self.remote_call_direct(
                        "remote munmap of the parasite region",
                        libc::SYS_munmap,
                        [base, len, 0, 0, 0, 0],
                    )
                    .map(drop),
                );
            }
            if let Some(x) = self.xstate.take() {
                note(
                    ptrace::set_xstate(pid, &x).map_err(|source| InfectError::Sys {
                        pid,
                        step: "restoring the xsave area",
                        source,
                    }),
                );
            }
            if let Some(mut remote) = self.remote.take() {
                note(remote.restore().map_err(|source| InfectError::Remote {
                    pid,
                    step: "restoring registers and signal mask",
                    source,
                }));
            }
        }
        self.region = None;
        self.pidfd = None;
        self.mem = None;
        tracing::debug!(pid, ok = first.is_none(), "parasite cured");
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn put_sigaction(&mut self, sig: i32, act: &abi::KSigaction) -> Result<(), InfectError> {
        self.region_write_ctl(SCRATCH_OFF, act)?;
        let addr = self.scratch_addr()?;
        self.remote_call(
            "remote rt_sigaction (putting back an ignored trap signal)",
            libc::SYS_rt_sigaction,
            [sig as u64, addr, 0, 8, 0, 0],
        )
        .map(drop)
    }

    /// Queues a signal that arrived during a blob run back to the task, siginfo unchanged
    /// (a task may queue any siginfo to itself): to the thread if it came from the thread's
    /// own queue (`private`, see `wait_blob`), else to the process.
    fn requeue(&mut self, info: &[u8; 128], private: bool) -> Result<(), InfectError> {
        let signo = i32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
        let mut words = [0u64; 16];
        for (w, b) in words.iter_mut().zip(info.chunks_exact(8)) {
            *w = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
        }
        self.region_write_ctl(SCRATCH_OFF, &words)?;
        let addr = self.scratch_addr()?;
        let pid = self.pid as u64;
        if private {
            // Not through the gadget: the blob's mask would let the signal in at once.
            self.remote_call_direct(
                "remote rt_tgsigqueueinfo (a signal held back during a parasite run)",
                libc::SYS_rt_tgsigqueueinfo,
                [pid, pid, signo as u64, addr, 0, 0],
            )
        } else {
            self.remote_call_direct(
                "remote rt_sigqueueinfo (a signal held back during a parasite run)",
                libc::SYS_rt_sigqueueinfo,
                [pid, signo as u64, addr, 0, 0, 0],
            )
        }
        .map(drop)
    }

    fn close_target_fd(&mut self, fd: i32) -> Result<(), InfectError> {
        let r = self.remote_call("remote close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
        self.target_fds.retain(|&f| f != fd);
        r.map(drop)
    }

    /// Runs one system call in the task: through the blob's gadget once there is one (one
    /// stop, run like a blob command: held-back signals, the blob's mask), otherwise at the
    /// task's own syscall instruction (two syscall stops).
    fn remote_call(
        &mut self,
        step: &'static str,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, InfectError> {
        let pid = self.pid;
        let gadget = self.region.as_ref().map_or(0, |r| r.gadget);
        if gadget != 0 && !self.gone && !self.cured {
            let (remote, region) = match (self.remote.as_ref(), self.region.as_ref()) {
                (Some(r), Some(g)) => (r, g),
                _ => return Err(InfectError::Cured { pid }),
            };
            let mut regs = remote.call_regs(gadget, nr, args);
            regs.rsp = (region.base + region.len - 64) & !15;
            self.calls.gadget += 1;
            self.run_regs(regs, step)?;
            let out = ptrace::get_regs(pid).map_err(|source| InfectError::Sys {
                pid,
                step: "reading a syscall's result",
                source,
            })?;
            return crate::infect::remote::syscall_result(pid, out.rax as i64, || {
                format!("{step} {args:#x?}")
            })
            .map_err(|source| InfectError::Remote { pid, step, source });
        }
        self.remote_call_direct(step, nr, args)
    }

    /// Runs one system call in the task at its own syscall instruction, with every signal
    /// blocked (two syscall stops).
    fn remote_call_direct(
        &mut self,
        step: &'static str,
        nr: libc::c_long,
        args: [u64; 6],
    ) -> Result<u64, InfectError> {
        let pid = self.pid;
        let remote = self.remote.as_mut().ok_or(InfectError::Cured { pid })?;
        self.calls.direct += 1;
        remote
            .syscall(|| format!("{step} {args:#x?}"), nr, args)
            .map_err(|source| InfectError::Remote { pid, step, source })
    }

    /// How many remote syscalls ran so far, through the gadget and directly.
    pub fn remote_calls(&self) -> RemoteCalls {
        self.calls
    }

    fn check_usable(&self) -> Result<(), InfectError> {
        if self.cured || self.gone || self.region.is_none() {
            Err(InfectError::Cured { pid: self.pid })
        } else {
            Ok(())
        }
    }

    fn scratch_addr(&self) -> Result<u64, InfectError> {
        let region = self
            .region
            .as_ref()
            .ok_or(InfectError::Cured { pid: self.pid })?;
        Ok(region.addr(region.ctl_off + SCRATCH_OFF))
    }

    /// Reads a value at `off` of the data area (or of the control page when `ctl`).
    fn region_read<T: Plain>(&self, off: u64, ctl: bool) -> Result<T, InfectError> {
        let pid = self.pid;
        let region = self.region.as_ref().ok_or(InfectError::Cured { pid })?;
        let base = if ctl { region.ctl_off } else { region.data_off };
        region
            .map
            .read((base + off) as usize)
            .map_err(|source| InfectError::Sys {
                pid,
                step: "reading the parasite region",
                source,
            })
    }

    fn region_write<T: Plain>(&mut self, off: u64, val: &T) -> Result<(), InfectError> {
        let pid = self.pid;
        let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
        let at = region.data_off + off;
        region
            .map
            .write(at as usize, val)
            .map_err(|source| InfectError::Sys {
                pid,
                step: "writing the parasite region",
                source,
            })
    }

    fn region_write_ctl<T: Plain>(&mut self, off: u64, val: &T) -> Result<(), InfectError> {
        let pid = self.pid;
        let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
        let at = region.ctl_off + off;
        region
            .map
            .write(at as usize, val)
            .map_err(|source| InfectError::Sys {
                pid,
                step: "writing the parasite region",
                source,
            })
    }

    /// Runs one blob command and returns its `out` words. A crash or unexpected stop cures
    /// the task before the error is returned.
    fn run(
        &mut self,
        cmd: u64,
        command: &'static str,
        args: [u64; 8],
    ) -> Result<[u64; 8], InfectError> {
        self.check_usable()?;
        let pid = self.pid;
        let sys_err = |step| move |source| InfectError::Sys { pid, step, source };
        let (ctl_addr, regs) = {
            let region = self.region.as_mut().ok_or(InfectError::Cured { pid })?;
            let remote = self.remote.as_ref().ok_or(InfectError::Cured { pid })?;
            let ctl = abi::Ctl {
                version: abi::ABI_VERSION,
                cmd,
                status: abi::STATUS_NOT_RUN,
                data: region.addr(region.data_off),
                data_len: DATA_LEN,
                args,
                ..Default::default()
            };
            region
                .map
                .write(region.ctl_off as usize, &ctl)
                .map_err(sys_err("writing the parasite control block"))?;
            let mut regs = *remote.saved_regs();
            regs.rip = region.addr(region.entry);
            regs.rsp = (region.base + region.len - 64) & !15;
            regs.rdi = region.addr(region.ctl_off);
            regs.rax = 0;
            regs.orig_rax = u64::MAX;
            (region.addr(region.ctl_off), regs)
        };
        self.run_regs(regs, command)?;
        let ctl: abi::Ctl = self.region_read(0, true)?;
        tracing::trace!(
            pid,
            command,
            ctl = format_args!("{ctl_addr:#x}"),
            status = ctl.status,
            "parasite command done"
        );
        if ctl.status != 0 {
            let errno = if ctl.status == abi::STATUS_NOT_RUN {
                libc::EPROTO
            } else {
                (-ctl.status) as i32
            };
            return Err(InfectError::Command {
                pid,
                command,
                syscall: ctl.fail_nr,
                addr: ctl.fail_addr,
                errno,
            });
        }
        Ok(ctl.out)
    }

    /// Runs the task from `regs` (in the blob) until it traps back, with the blob's signal
    /// mask; a crash or an unexpected stop cures the task.
    fn run_regs(
        &mut self,
        regs: libc::user_regs_struct,
        command: &'static str,
    ) -> Result<(), InfectError> {
        let pid = self.pid;
        let sys_err = |step| move |source| InfectError::Sys { pid, step, source };
        ptrace::set_regs(pid, &regs).map_err(sys_err("pointing the task at the parasite"))?;
        ptrace::set_sigmask(pid, self.run_mask).map_err(sys_err("setting the parasite's mask"))?;
        let end = self.wait_blob(command);
        if !matches!(end, Ok(RunEnd::Gone(_))) {
            // Back to every signal blocked, as RemoteTask keeps it between calls.
            if let Err(source) = ptrace::set_sigmask(pid, !0) {
                tracing::warn!(pid, error = %source, "could not block signals after a blob run");
            }
        }
        match end? {
            RunEnd::Done => {}
            RunEnd::Gone(status) => {
                self.gone = true;
                return Err(InfectError::TaskGone {
                    pid,
                    command,
                    status,
                });
            }
            RunEnd::Crash { signal, rip, addr } => {
                tracing::error!(
                    pid,
                    command,
                    signal,
                    rip = format_args!("{rip:#x}"),
                    "parasite crashed"
                );
                self.cure_now()?;
                return Err(InfectError::Crashed {
                    pid,
                    command,
                    signal,
                    rip,
                    addr,
                });
            }
            RunEnd::Unexpected(status) => {
                self.cure_now()?;
                return Err(InfectError::UnexpectedStop {
                    pid,
                    command,
                    status,
                });
            }
        }
        Ok(())
    }

    /// Continues the task into the blob and waits for its end. Signals that are not ours are
    /// held back (suppressed now, re-queued by the cure).
    fn wait_blob(&mut self, command: &'static str) -> Result<RunEnd, InfectError> {
        let pid = self.pid;
        let sys_err = |step| move |source| InfectError::Sys { pid, step, source };
        ptrace::cont(pid, 0).map_err(sys_err("starting the parasite"))?;
        loop {
            let (_, status) = ptrace::wait(pid, 0)
                .map_err(sys_err("waiting for the parasite"))?
                .ok_or_else(|| InfectError::Sys {
                    pid,
                    step: "waiting for the parasite",
                    source: ptrace::unexpected("waitpid"),
                })?;
            let sig = match status {
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Ok(RunEnd::Gone(status)),
                WaitStatus::Stopped { sig, event: 0 } => sig,
                other => return Ok(RunEnd::Unexpected(other)),
            };
            let info = ptrace::get_siginfo(pid).map_err(sys_err("reading the stop's siginfo"))?;
            let regs =
                ptrace::get_regs(pid).map_err(sys_err("reading the parasite's registers"))?;
            let si_code = ptrace::siginfo_code(&info);
            let si_addr = u64::from_ne_bytes(info[16..24].try_into().unwrap_or([0; 8]));
            let region = self.region.as_ref().ok_or(InfectError::Cured { pid })?;
            let in_blob = region
                .code
                .iter()
                .any(|&(s, e)| regs.rip >= s && regs.rip <= e);
            let our_trap = regs.rip == region.trap_rip
                || (region.gadget != 0 && regs.rip == region.gadget + 3);
            if sig == libc::SIGTRAP && si_code == SI_KERNEL && our_trap {
                return Ok(RunEnd::Done);
            }
            if TRAP_SIGNALS.contains(&sig) && si_code > 0 && in_blob {
                return Ok(RunEnd::Crash {
                    signal: sig,
                    rip: regs.rip,
                    addr: si_addr,
                });
            }
            // Someone else's signal: hold it back and let the blob go on.
            tracing::debug!(
                pid,
                sig,
                command,
                "holding back a signal during a parasite run"
            );
            let bit = 1u64 << (sig - 1);
            let private = if self.pending.0 & bit != 0 {
                self.pending.0 &= !bit;
                true
            } else if self.pending.1 & bit != 0 {
                self.pending.1 &= !bit;
                false
            } else {
                // Sent during the dump: tgkill (or tkill) is for the thread.
                si_code == libc::SI_TKILL
            };
            self.stray.push((info, private));
            ptrace::cont(pid, 0).map_err(sys_err("resuming the parasite"))?;
        }
    }
}

impl Drop for Parasite {
    fn drop(&mut self) {
        if !self.cured {
            if let Err(e) = self.cure_now() {
                tracing::error!(pid = self.pid, error = %e, "cure on drop failed");
            }
        }
    }
}

/// Page stores of at least this many bytes scanned get their blocks reserved ahead.
const RESERVE_FROM: u64 = 8 << 20;
/// `f_type` of ext4 (fstatfs).
const EXT4_SUPER_MAGIC: i64 = 0xEF53;

/// On ext4, reserves the blocks for `len` bytes of `file` from `off` (`FALLOC_FL_KEEP_SIZE`:
/// the size does not change) and returns true; the caller sets the size once the pages are
/// written, which gives back what the zero pages left unused. Writes into reserved blocks skip
/// the delayed allocation's per-block bookkeeping: writing 1 GiB took 0.21-0.30 s of CPU
/// instead of 0.32-0.41 s here, and 0.15-0.17 s with the writeback started from another thread
/// too (see `drain`). Elsewhere (tmpfs keeps blocks reserved past the end of a file until it
/// is deleted) or on failure, nothing is reserved.
fn reserve_blocks(file: &File, off: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    len >= RESERVE_FROM
        && crate::sys::files_ffi::fs_type(file.as_raw_fd()).is_ok_and(|t| t == EXT4_SUPER_MAGIC)
        && ffi::preallocate(file.as_fd(), off, len)
            .map_err(|e| tracing::debug!(error = %e, "no blocks reserved for the page store"))
            .is_ok()
}

/// Drains the two pipes of a CMD_DUMP_PAGES into `file` from offset `start`, stripe by stripe
/// as the blob fills them (stripe `k`, [`STRIPE`] bytes, comes from pipe `k % 2`), until the
/// stream ends (every write end closed), and returns the bytes moved. With two pipes the
/// blob fills one while this drains the other: with a single pipe the blob spent its time
/// spinning on the pipe's lock, held by the splice into the file (14% of all CPU samples of
/// a 1 GiB dump), which costs a core that the drain needs on a busy machine.
///
/// It reports the offset reached to `on_progress`, and every [`WRITEBACK_BYTES`] it has a
/// thread of its own start writeback of what it spliced (without waiting), so the disk writes
/// while the pages stream and the fsync at commit has little left to do (measured: about
/// 0.15 s less per GiB); on that thread, the work of submitting the writes (a tenth of the
/// drain's CPU time in a 1 GiB dump) is not on the drain's path. With the blob handing pages
/// over, it sets `stored` (the [`abi::Handover`]'s counter) to the bytes of the stream in the
/// file. After a write error it keeps reading (and discarding) in the same order, so that the
/// blob never blocks on a full pipe nor gets SIGPIPE, and no longer advances `stored` (the
/// blob frees nothing the file does not hold); the error is returned at the end with its
/// offset.
fn drain(
    pipes: [BorrowedFd<'_>; 2],
    file: &File,
    start: u64,
    stored: Option<&AtomicU64>,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<u64, (u64, io::Error)> {
    let (to_flush, flush) = std::sync::mpsc::channel::<(u64, u64)>();
    std::thread::scope(|s| {
        s.spawn(move || {
            proc_ctl::unpin_current_thread();
            for (at, len) in flush {
                if let Err(e) = ffi::start_writeback(file.as_fd(), at, len) {
                    tracing::debug!(error = %e, "sync_file_range");
                }
            }
        });
        // The sender goes with this call, which ends the writeback thread's loop.
        drain_stream(pipes, file, start, stored, on_progress, to_flush)
    })
}

/// [`drain`]'s stream: ranges to start writeback of go to `to_flush`.
fn drain_stream(
    pipes: [BorrowedFd<'_>; 2],
    file: &File,
    start: u64,
    stored: Option<&AtomicU64>,
    on_progress: &(dyn Fn(u64) + Sync),
    to_flush: std::sync::mpsc::Sender<(u64, u64)>,
) -> Result<u64, (u64, io::Error)> {
    // Our own position: not every file advances splice's offset (the null device does not).
    let mut off = start;
    let mut flushed = start;
    let mut use_splice = true;
    let mut failed: Option<(u64, io::Error)> = None;
    let mut buf: Vec<u8> = Vec::new();
    let broken = |failed: Option<(u64, io::Error)>, off: u64, errno: i32| {
        failed.unwrap_or((off, io::Error::from_raw_os_error(errno)))
    };
    let mut stripe = 0u64;
    'stream: loop {
        let pipe = pipes[(stripe % 2) as usize];
        let mut got = 0u64;
        while got < STRIPE {
            let want = (STRIPE - got) as usize;
            let n = if failed.is_some() || !use_splice {
                if buf.is_empty() {
                    buf = vec![0u8; PIPE_SIZE];
                }
                let n = match ffi::read(pipe, &mut buf[..want.min(PIPE_SIZE)]) {
                    Ok(n) => n,
                    Err(e) if e.errno == libc::EINTR => continue,
                    // Nothing more can be read: the pipe itself is broken.
                    Err(e) => return Err(broken(failed, off, e.errno)),
                };
                if n > 0 && failed.is_none() {
                    if let Err(e) = file.write_all_at(&buf[..n], off) {
                        failed = Some((off, e));
                    }
                }
                n
            } else {
                let mut at = off as i64;
                match ffi::splice_to_file(pipe, file.as_fd(), &mut at, want) {
                    Ok(n) => n,
                    Err(e) if e.errno == libc::EINTR => continue,
                    // splice into this file is not supported (e.g. O_APPEND): copy instead.
                    Err(e) if e.errno == libc::EINVAL && off == start => {
                        use_splice = false;
                        continue;
                    }
                    Err(e) => {
                        failed = Some((off, io::Error::from_raw_os_error(e.errno)));
                        continue;
                    }
                }
            };
            if n == 0 {
                // End of the stream: nothing may follow in the other pipe.
                let other = pipes[((stripe + 1) % 2) as usize];
                if buf.is_empty() {
                    buf = vec![0u8; PIPE_SIZE];
                }
                loop {
                    match ffi::read(other, &mut buf) {
                        Ok(0) => break 'stream,
                        Ok(_) => {
                            let e = io::Error::other("page stream continued after its end");
                            failed.get_or_insert((off, e));
                        }
                        Err(e) if e.errno == libc::EINTR => {}
                        Err(e) => return Err(broken(failed, off, e.errno)),
                    }
                }
            }
            got += n as u64;
            if failed.is_none() {
                off += n as u64;
                if let Some(s) = stored {
                    s.store(off - start, Ordering::Release);
                }
                on_progress(off);
                if off - flushed >= WRITEBACK_BYTES {
                    // The writeback thread is gone only if it panicked: nothing to start then.
                    let _ = to_flush.send((flushed, off - flushed));
                    flushed = off;
                }
            }
        }
        stripe += 1;
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(off - start),
    }
}

/// The offset (in the image) of the `int3` that ends a blob run: the `int3; ud2` right after
/// the entry's call.
fn find_final_trap(image: &BlobImage) -> Option<u64> {
    let start = image.entry as usize;
    let window = image
        .bytes
        .get(start..(start + 32).min(image.bytes.len()))?;
    window
        .windows(3)
        .position(|w| w == [0xcc, 0x0f, 0x0b])
        .map(|i| (start + i) as u64)
}

/// An address in the task holding a NUL byte (an empty string for memfd_create's name), taken
/// from the mapping that holds the syscall instruction.
fn find_nul_byte(pid: i32, maps: &str, syscall_ip: u64) -> Result<u64, InfectError> {
    for line in maps.lines() {
        let Some(range) = line.split_whitespace().next() else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if !(s..e).contains(&syscall_ip) {
            continue;
        }
        let len = (e - s).min(PAGE_SIZE) as usize;
        let mut buf = vec![0u8; len];
        crate::sys::mem::read_force(pid, s, &mut buf).map_err(|source| InfectError::Proc {
            pid,
            what: "/proc/PID/mem",
            addr: s,
            source,
        })?;
        if let Some(i) = buf.iter().position(|&b| b == 0) {
            return Ok(s + i as u64);
        }
    }
    Err(InfectError::Unsupported {
        pid,
        reason: "no NUL byte next to the syscall instruction",
    })
}

/// Signal bits of /proc/PID/status (the thread's own pending ones are the leader's).
struct SigStatus {
    /// SigIgn.
    ignored: u64,
    /// SigCgt.
    caught: u64,
    /// SigPnd.
    pending: u64,
    /// ShdPnd.
    shared_pending: u64,
}

/// The signal bits of the task's /proc/PID/status.
fn read_sig_status(pid: i32) -> Result<SigStatus, InfectError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        InfectError::Proc {
            pid,
            what: "/proc/PID/status",
            addr: 0,
            source,
        }
    })?;
    let mask =
        |key: &str| {
            let line = status.lines().find_map(|l| l.strip_prefix(key)).ok_or(
                InfectError::Unsupported {
                    pid,
                    reason: "/proc/PID/status lacks a signal line (SigPnd, ShdPnd, SigIgn, SigCgt)",
                },
            )?;
            u64::from_str_radix(line.trim(), 16).map_err(|_| InfectError::Unsupported {
                pid,
                reason: "/proc/PID/status has a malformed signal line",
            })
        };
    Ok(SigStatus {
        ignored: mask("SigIgn:")?,
        caught: mask("SigCgt:")?,
        pending: mask("SigPnd:")?,
        shared_pending: mask("ShdPnd:")?,
    })
}

/// The blob's CRC code, compiled here to test it against the `crc32c` crate.
#[cfg(test)]
#[path = "../../parasite/src/crc.rs"]
mod blob_crc;

#[cfg(test)]
mod tests {
    use super::{blob_crc, drain, split_copied, PageRunReq, PAGE_SIZE, STRIPE};
    use std::io::Write;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills the two-int array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds are new and ours.
        unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// Writes `data` as the blob does: stripe k into pipe k % 2, then closes both.
    fn feed(data: Vec<u8>, mut w: [std::fs::File; 2]) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for (k, stripe) in data.chunks(STRIPE as usize).enumerate() {
                // A reader that stopped early makes this fail; the test checks the drain side.
                let _ = w[k % 2].write_all(stripe);
            }
        })
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
            .collect()
    }

    #[test]
    fn runs_are_cut_at_the_copied_pages() {
        let run = |vaddr: u64, nr_pages: u64| PageRunReq {
            vaddr,
            nr_pages,
            prot: 3,
            free_zero: true,
            free_data: true,
        };
        let p = PAGE_SIZE;
        let got = split_copied(
            &[run(0x10000, 8), run(0x40000, 2)],
            // Inside page 2 and straddling pages 4-5; overlapping the page of the first;
            // past every run.
            &[
                (0x10000 + 2 * p + 100, 0x10000 + 2 * p + 132),
                (0x10000 + 2 * p + 200, 0x10000 + 2 * p + 300),
                (0x10000 + 5 * p - 8, 0x10000 + 5 * p + 24),
                (0x90000, 0x90020),
            ],
        );
        let want = vec![
            (run(0x10000, 2), false),
            (run(0x10000 + 2 * p, 1), true),
            (run(0x10000 + 3 * p, 1), false),
            (run(0x10000 + 4 * p, 2), true),
            (run(0x10000 + 6 * p, 2), false),
            (run(0x40000, 2), false),
        ];
        assert_eq!(got, want, "pieces keep the run's prot and free flags");
        let key = |v: &[(PageRunReq, bool)]| -> Vec<(u64, u64, bool)> {
            v.iter().map(|(r, c)| (r.vaddr, r.nr_pages, *c)).collect()
        };
        assert_eq!(
            key(&split_copied(&[run(0x10000, 8)], &[])),
            key(&[(run(0x10000, 8), false)])
        );
    }

    #[test]
    fn drain_reassembles_the_stripes_in_order() {
        for len in [
            0,
            4096,
            STRIPE as usize,
            3 * STRIPE as usize,
            5 * STRIPE as usize / 2,
        ] {
            let (r0, w0) = pipe();
            let (r1, w1) = pipe();
            let want = data(len);
            let writer = feed(want.clone(), [w0, w1]);
            let file = tempfile::tempfile().expect("tempfile");
            let stored = AtomicU64::new(0);
            let got = drain(
                [r0.as_fd(), r1.as_fd()],
                &file,
                4096,
                Some(&stored),
                &|_| {},
            );
            writer.join().expect("writer");
            assert_eq!(got.expect("drain"), len as u64, "len {len}");
            assert_eq!(
                stored.load(Ordering::Relaxed),
                len as u64,
                "len {len}: stored"
            );
            let mut back = vec![0u8; len];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 4096).expect("read");
            assert!(back == want, "len {len}: data differs");
        }
    }

    #[test]
    fn drain_reads_everything_after_a_write_error() {
        let (r0, w0) = pipe();
        let (r1, w1) = pipe();
        let writer = feed(data(3 * STRIPE as usize), [w0, w1]);
        // A file open read-only: every write fails, the stream must still be consumed.
        let path = tempfile::NamedTempFile::new().expect("tempfile");
        let file = std::fs::File::open(path.path()).expect("open");
        let stored = AtomicU64::new(0);
        let got = drain([r0.as_fd(), r1.as_fd()], &file, 0, Some(&stored), &|_| {});
        writer.join().expect("writer");
        let (at, _) = got.expect_err("writes into a read-only file fail");
        assert_eq!(at, 0);
        // Nothing is in the file: the blob must free nothing.
        assert_eq!(stored.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn blob_crc_matches_the_crc32c_crate() {
        if !std::is_x86_feature_detected!("sse4.2") {
            eprintln!("skipping: no SSE4.2");
            return;
        }
        // Pages with varied contents, lengths 0..=7 pages so the 3-way and tail paths run.
        let mut data = vec![0u64; 7 * 512];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for w in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        // SAFETY: viewing initialized u64s as bytes.
        let bytes: &[u8] =
            unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() * 8) };
        for pages in 0..=7usize {
            let want = crc32c::crc32c(&bytes[..pages * 4096]);
            // SAFETY: data is 8-byte aligned and holds 7 pages; SSE4.2 checked above.
            let got = !unsafe { blob_crc::crc_pages(!0, data.as_ptr().cast(), pages) };
            assert_eq!(got, want, "{pages} pages");
        }
    }

    #[test]
    fn shift_operator_is_consistent() {
        // x^(8*(a+b)) = x^(8a) * x^(8b)
        let (a, b) = (4096u64, 12345u64);
        assert_eq!(
            blob_crc::x8nmodp(a + b),
            blob_crc::multmodp(blob_crc::x8nmodp(a), blob_crc::x8nmodp(b))
        );
        assert_eq!(blob_crc::x8nmodp(0), 1 << 31);
    }
}
