//! The contract between cryo (the dumper) and the parasite blob: the control block, the command
//! numbers and the records the commands read and write in the shared region. This one file is
//! compiled into both sides (`parasite/src/main.rs` and `src/infect/parasite.rs`), so it holds
//! only `core` types and `#[repr(C)]` plain data, never an address of either process.
//!
//! ```text
//! shared region (memfd, mapped in the target and in the dumper)
//! +----------------+------------+----------------------------+-----------------+
//! | blob (r-x)     | Ctl (rw-)  | data area (rw-): command   | stack (rw-),    |
//! | relocated for  | one page   | inputs and outputs         | grows down      |
//! | the target     |            |                            |                 |
//! +----------------+------------+----------------------------+-----------------+
//! ```
//!
//! The dumper fills `Ctl` (command, arguments, data area address) and starts the blob at its
//! entry with `rdi` = the target address of `Ctl`; the blob writes `status`, `out` and the data
//! area, then stops on `int3`.

/// Bumped on every incompatible change of this file.
pub const ABI_VERSION: u64 = 5;

/// Written into `Ctl::status` by the dumper before a run; a blob that returns leaves another
/// value, so a run that never reached the blob's epilogue is detected.
pub const STATUS_NOT_RUN: i64 = i64::MIN;

/// Signal actions of signals 1..=64 (except SIGKILL, SIGSTOP) into `[KSigaction; 64]`
/// (index `signo - 1`) in the data area.
pub const CMD_SIGACTIONS: u64 = 1;
/// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF into `[Itimerval; 3]` in the data area.
pub const CMD_ITIMERS: u64 = 2;
/// `args[0]` POSIX timers whose ids are in `[PosixTimerSlot; n]` in the data area: fills in
/// the slots (timer_gettime, timer_getoverrun).
pub const CMD_POSIX_TIMERS: u64 = 3;
/// sigaltstack, umask, PR_GET_TID_ADDRESS into `out[0..5]`: ss_sp, ss_flags, ss_size, umask,
/// tid address.
pub const CMD_MISC: u64 = 4;
/// Streams pages into a pipe with vmsplice. Arguments: `args[0]` the pipe's write end (closed
/// by the blob when the command ends, on every path), `args[1]` the number of `PageReq`s at
/// target address `args[2]`, `args[3]` the target address of `[PageOut; args[4]]`; `args[5]`
/// a second pipe's write end (also closed by the blob) or `NO_FD`, and `args[6]` the stripe
/// size in bytes: with a second pipe, bytes `[k * stripe, (k + 1) * stripe)` of the stream go
/// to pipe `k % 2`, so that the dumper drains one pipe while the blob fills the other and the
/// two never wait on each other's pipe lock. Results:
/// `out[0]` the number of `PageOut`s written, `out[1]` the bytes put into the pipe, `out[2]`
/// and `out[3]` where to resume (request index, page within it) when the output array filled
/// up, `out[4]` 1 when every request was handled, `out[5]` the pages freed by
/// [`REQ_FREE_ZERO`]. `args[7]` is the target address of a [`Handover`] in the data area, or
/// 0: with one, the stored pages of [`REQ_FREE_DATA`] requests are freed once the dumper has
/// them in the page store, and logged there.
pub const CMD_DUMP_PAGES: u64 = 5;
/// Everything the dumper asks of a process but its pages and POSIX timers, in one run:
/// `CMD_SIGACTIONS` at the start of the data area, `CMD_ITIMERS` at [`STATE_ITIMERS_OFF`],
/// `CMD_MISC` into `out[0..5]`, and the program break (`brk(0)`) in `out[5]`.
pub const CMD_STATE: u64 = 6;
/// Where `CMD_STATE` puts the itimers in the data area: after the 64 signal actions.
pub const STATE_ITIMERS_OFF: u64 = 64 * 32;
/// "No fd" in an fd argument.
pub const NO_FD: u64 = u64::MAX;

/// The command block at the start of the control page.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Ctl {
    /// `ABI_VERSION`, checked by the blob.
    pub version: u64,
    /// One of the `CMD_*` values.
    pub cmd: u64,
    /// 0 on success or a negative errno; `STATUS_NOT_RUN` before the blob ran.
    pub status: i64,
    /// On failure: the syscall number that failed.
    pub fail_nr: u64,
    /// On failure: the address (or timer id, or signal) the failing step worked on.
    pub fail_addr: u64,
    /// Target address of the data area.
    pub data: u64,
    /// Length of the data area in bytes.
    pub data_len: u64,
    /// Command arguments.
    pub args: [u64; 8],
    /// Command results.
    pub out: [u64; 8],
}

/// The kernel's `struct sigaction` on x86_64 (rt_sigaction, sigsetsize 8).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct KSigaction {
    /// `sa_handler` (SIG_DFL = 0, SIG_IGN = 1, or a function).
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`, bit `n - 1` for signal `n`.
    pub mask: u64,
}

/// `struct itimerval`: interval and value, seconds and microseconds.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Itimerval {
    /// `it_interval.tv_sec`.
    pub interval_sec: i64,
    /// `it_interval.tv_usec`.
    pub interval_usec: i64,
    /// `it_value.tv_sec`.
    pub value_sec: i64,
    /// `it_value.tv_usec`.
    pub value_usec: i64,
}

/// One POSIX timer: `id` is input, the rest output (`struct itimerspec` and the overrun).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PosixTimerSlot {
    /// Timer id (input).
    pub id: i64,
    /// `it_interval.tv_sec`.
    pub interval_sec: i64,
    /// `it_interval.tv_nsec`.
    pub interval_nsec: i64,
    /// `it_value.tv_sec`.
    pub value_sec: i64,
    /// `it_value.tv_nsec`.
    pub value_nsec: i64,
    /// timer_getoverrun.
    pub overrun: i64,
}

/// A run of pages to stream: page-aligned, ascending across requests, readable by the task.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PageReq {
    /// Start address.
    pub vaddr: u64,
    /// Number of 4 KiB pages.
    pub nr_pages: u64,
    /// `REQ_*` bits.
    pub flags: u64,
}

/// [`PageReq::flags`]: the blob gives runs of at least [`FREE_ZERO_MIN_PAGES`] all-zero pages
/// back to the kernel (`MADV_DONTNEED`) as it finds them. The dumper sets it only for private
/// anonymous memory (which reads as zero afterwards, exactly as before), not locked, not
/// registered with userfaultfd, of a process the dump is to kill.
pub const REQ_FREE_ZERO: u64 = 1;
/// The shortest run of zero pages [`REQ_FREE_ZERO`] frees (one madvise per 64 KiB at most).
pub const FREE_ZERO_MIN_PAGES: u64 = 16;
/// A run of zero pages is freed at every boundary of this many pages (2 MiB) it reaches.
pub const FREE_ZERO_BATCH_PAGES: u64 = 512;

/// [`PageReq::flags`]: the blob gives the request's stored (non-zero) pages back to the
/// kernel (`MADV_DONTNEED`) once the dumper says they are in the page store
/// ([`Handover::stored`]), and logs each range it freed in [`Handover::freed`], so that the
/// dumper can write them back if the dump fails. The same memory as [`REQ_FREE_ZERO`] only;
/// ignored without a `Handover`.
pub const REQ_FREE_DATA: u64 = 2;
/// A range of stored pages the blob freed is freed up to a boundary of this many bytes while
/// it may still grow (2 MiB: whole transparent huge pages, which a partial free would only
/// split, not free).
pub const FREE_DATA_ALIGN: u64 = 2 << 20;
/// Entries of [`Handover::freed`]: twice the runs the dumper lets one command output when it
/// hands pages over, so that the log does not fill up (each run adds at most one range, plus
/// one where a range the blob could not keep track of broke it); when it does, the blob stops
/// freeing.
pub const HANDOVER_ENTRIES: usize = 8192;

/// The exchange of [`REQ_FREE_DATA`]: where the page store has got to, and what was freed.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Handover {
    /// Bytes of this command's stream (from its start) that are in the page store. Written by
    /// the dumper while the blob runs, read by the blob (volatile); it only grows.
    pub stored: u64,
    /// Entries used in `freed` (written by the blob).
    pub n_freed: u64,
    /// The ranges the blob freed, in stream order.
    pub freed: [Freed; HANDOVER_ENTRIES],
}

/// One range of stored pages the blob freed.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Freed {
    /// Start address (page-aligned).
    pub vaddr: u64,
    /// Length in bytes (whole pages).
    pub len: u64,
    /// Offset of its bytes in the command's stream.
    pub stream_off: u64,
}

/// A run of non-zero pages the blob put into the pipe, in pipe order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PageOut {
    /// Start address.
    pub vaddr: u64,
    /// Number of 4 KiB pages.
    pub nr_pages: u64,
    /// crc32c (Castagnoli, standard pre- and post-inversion) of the run's bytes.
    pub crc: u64,
}

/// Page size.
pub const PAGE: u64 = 4096;

const _: () = assert!(STATE_ITIMERS_OFF == 64 * core::mem::size_of::<KSigaction>() as u64);
