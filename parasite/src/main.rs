//! The parasite blob: code cryo's dumper runs inside a frozen task to read state only the task
//! itself can read (signal actions, timers, alternate stack, umask, tid address) and to stream
//! its memory pages into a pipe with vmsplice, without copying them through the dumper. Where
//! the dumper allows it, the all-zero pages it skips (`REQ_FREE_ZERO`) and the pages it stored
//! once they are in the page store (`REQ_FREE_DATA`) are given back to the kernel as it goes.
//!
//! It runs on a stack in the shared region, with every signal but the fault ones blocked, one
//! command per start: the entry takes the control block in `rdi`, runs the command, and stops
//! on `int3`; the dumper then restores or re-aims the registers. It owns nothing in the task: it
//! must not allocate, keep state between commands, touch TLS (`fs`), or leave an fd or mapping
//! behind (the pipe end of `CMD_DUMP_PAGES` is closed here on every path).
//!
//! Freestanding: no std, no libc, no statics holding addresses (the image is relocated by the
//! dumper, which accepts only `R_X86_64_RELATIVE`), its own `mem*` functions.

#![no_std]
#![no_main]

// Shared with the dumper, which uses a few items the blob does not.
#[allow(dead_code)]
mod abi;
mod crc;
mod mem;
mod sys;

use abi::*;
use core::ptr::{addr_of, addr_of_mut};

/// The entry: at the start of the text (see `parasite.ld`). Aligns the stack the dumper gave,
/// calls [`parasite_main`] with the control block still in `rdi`, and traps back to the dumper.
/// After that final trap comes a syscall gadget (`syscall; int3`, never reached from the
/// entry): the dumper runs single system calls in the task there, with one stop each.
#[unsafe(naked)]
#[unsafe(no_mangle)]
#[unsafe(link_section = ".text.parasite_start")]
pub extern "C" fn parasite_start() -> ! {
    core::arch::naked_asm!(
        "cld",
        "and rsp, -16",
        "call {main}",
        "int3",
        "ud2",
        "syscall",
        "int3",
        "ud2",
        main = sym parasite_main,
    )
}

/// Runs the command in `*ctl` and records its status.
///
/// # Safety
/// `ctl` points to the control block in the shared region, and the data area it names is
/// mapped read-write; both are only touched by the dumper while the task is stopped.
unsafe extern "C" fn parasite_main(ctl: *mut Ctl) {
    // SAFETY: the dumper passes the control block as described above.
    let ctl = unsafe { &mut *ctl };
    ctl.out = [0; 8];
    ctl.fail_nr = 0;
    ctl.fail_addr = 0;
    if ctl.version != ABI_VERSION {
        ctl.status = -(sys::EINVAL as i64);
        return;
    }
    // SAFETY: each command only uses the data area named by ctl, as the dumper laid it out.
    let res = unsafe {
        match ctl.cmd {
            CMD_SIGACTIONS => cmd_sigactions(ctl),
            CMD_ITIMERS => cmd_itimers(ctl),
            CMD_POSIX_TIMERS => cmd_posix_timers(ctl),
            CMD_MISC => cmd_misc(ctl),
            CMD_DUMP_PAGES => cmd_dump_pages(ctl),
            CMD_STATE => cmd_state(ctl),
            _ => Err(Fail {
                errno: sys::EINVAL,
                nr: 0,
                addr: ctl.cmd,
            }),
        }
    };
    match res {
        Ok(()) => ctl.status = 0,
        Err(f) => {
            ctl.status = -(f.errno as i64);
            ctl.fail_nr = f.nr;
            ctl.fail_addr = f.addr;
        }
    }
}

/// A failed step: errno, the syscall, and what it worked on.
struct Fail {
    errno: u64,
    nr: u64,
    addr: u64,
}

/// Turns a raw syscall return into a result, naming the call and its object on failure.
fn check(ret: i64, nr: u64, addr: u64) -> Result<u64, Fail> {
    if (-4095..0).contains(&ret) {
        Err(Fail {
            errno: (-ret) as u64,
            nr,
            addr,
        })
    } else {
        Ok(ret as u64)
    }
}

/// Checks that `len` bytes at `ptr` lie in the data area.
fn in_data(ctl: &Ctl, ptr: u64, len: u64) -> Result<(), Fail> {
    let end = ptr.checked_add(len);
    match end {
        Some(end) if ptr >= ctl.data && end <= ctl.data + ctl.data_len => Ok(()),
        _ => Err(Fail {
            errno: sys::EINVAL,
            nr: 0,
            addr: ptr,
        }),
    }
}

/// # Safety
/// The data area is mapped read-write.
unsafe fn cmd_sigactions(ctl: &mut Ctl) -> Result<(), Fail> {
    in_data(ctl, ctl.data, 64 * size_of::<KSigaction>() as u64)?;
    let out = ctl.data as *mut KSigaction;
    for sig in 1..=64u64 {
        // SAFETY: index sig - 1 < 64, inside the checked area.
        let slot = unsafe { out.add(sig as usize - 1) };
        // SAFETY: slot is valid for writing a KSigaction.
        unsafe { slot.write(KSigaction::default()) };
        if sig == sys::SIGKILL || sig == sys::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction with a null new action only writes the old one to slot.
        let ret = unsafe { sys::syscall4(sys::NR_RT_SIGACTION, sig, 0, slot as u64, 8) };
        check(ret, sys::NR_RT_SIGACTION, sig)?;
    }
    Ok(())
}

/// # Safety
/// The data area is mapped read-write.
unsafe fn cmd_itimers(ctl: &mut Ctl) -> Result<(), Fail> {
    in_data(ctl, ctl.data, 3 * size_of::<Itimerval>() as u64)?;
    let out = ctl.data as *mut Itimerval;
    for which in 0..3u64 {
        // SAFETY: which < 3, inside the checked area; getitimer writes one itimerval there.
        let ret =
            unsafe { sys::syscall2(sys::NR_GETITIMER, which, out.add(which as usize) as u64) };
        check(ret, sys::NR_GETITIMER, which)?;
    }
    Ok(())
}

/// # Safety
/// The data area is mapped read-write.
unsafe fn cmd_posix_timers(ctl: &mut Ctl) -> Result<(), Fail> {
    let n = ctl.args[0];
    in_data(
        ctl,
        ctl.data,
        n.saturating_mul(size_of::<PosixTimerSlot>() as u64),
    )?;
    let slots = ctl.data as *mut PosixTimerSlot;
    for i in 0..n as usize {
        // SAFETY: i < n, inside the checked area.
        let slot = unsafe { &mut *slots.add(i) };
        let id = slot.id as u64;
        // The kernel's struct itimerspec is four i64 in the order of the slot's fields.
        let spec = addr_of_mut!(slot.interval_sec) as u64;
        // SAFETY: timer_gettime writes 32 bytes at spec, the four fields after `id`.
        let ret = unsafe { sys::syscall2(sys::NR_TIMER_GETTIME, id, spec) };
        check(ret, sys::NR_TIMER_GETTIME, id)?;
        // SAFETY: integer-only syscall.
        let ret = unsafe { sys::syscall1(sys::NR_TIMER_GETOVERRUN, id) };
        slot.overrun = check(ret, sys::NR_TIMER_GETOVERRUN, id)? as i64;
    }
    Ok(())
}

/// # Safety
/// Touches only the control block.
unsafe fn cmd_misc(ctl: &mut Ctl) -> Result<(), Fail> {
    let mut ss = sys::StackT::default();
    // SAFETY: sigaltstack with a null new stack writes the old one into ss.
    let ret = unsafe { sys::syscall2(sys::NR_SIGALTSTACK, 0, addr_of_mut!(ss) as u64) };
    check(ret, sys::NR_SIGALTSTACK, 0)?;
    // umask can only be read by setting it: set a value and put the old one straight back.
    // SAFETY: integer-only syscalls.
    let old = unsafe { sys::syscall1(sys::NR_UMASK, 0o022) };
    let old = check(old, sys::NR_UMASK, 0)?;
    // SAFETY: integer-only syscall.
    let ret = unsafe { sys::syscall1(sys::NR_UMASK, old) };
    check(ret, sys::NR_UMASK, old)?;
    let mut tid_addr: u64 = 0;
    // SAFETY: PR_GET_TID_ADDRESS writes one pointer-sized value at &tid_addr.
    let ret = unsafe {
        sys::syscall2(
            sys::NR_PRCTL,
            sys::PR_GET_TID_ADDRESS,
            addr_of_mut!(tid_addr) as u64,
        )
    };
    check(ret, sys::NR_PRCTL, sys::PR_GET_TID_ADDRESS)?;
    ctl.out[0] = ss.ss_sp;
    ctl.out[1] = ss.ss_flags as u32 as u64;
    ctl.out[2] = ss.ss_size;
    ctl.out[3] = old;
    ctl.out[4] = tid_addr;
    Ok(())
}

/// # Safety
/// The data area is mapped read-write.
unsafe fn cmd_state(ctl: &mut Ctl) -> Result<(), Fail> {
    // SAFETY: the data area is mapped read-write (our contract).
    unsafe { cmd_sigactions(ctl)? };
    let (data, len) = (ctl.data, ctl.data_len);
    if len < STATE_ITIMERS_OFF {
        return Err(Fail {
            errno: sys::EINVAL,
            nr: 0,
            addr: data,
        });
    }
    ctl.data = data + STATE_ITIMERS_OFF;
    ctl.data_len = len - STATE_ITIMERS_OFF;
    // SAFETY: the narrowed area is inside the mapped one.
    let r = unsafe { cmd_itimers(ctl) };
    ctl.data = data;
    ctl.data_len = len;
    r?;
    // SAFETY: touches only the control block.
    unsafe { cmd_misc(ctl)? };
    // SAFETY: brk(0) only reports the current break.
    ctl.out[5] = unsafe { sys::syscall1(sys::NR_BRK, 0) } as u64;
    Ok(())
}

/// Pages of a run whose CRC has not been folded in yet are taken in chunks of this many pages,
/// so that vmsplice starts early and the dumper drains the pipe while the next chunk is read.
const CHUNK_PAGES: u64 = 64;
/// vmsplice is called once this many bytes are queued, or the iovec array is full.
const FLUSH_BYTES: u64 = 256 * 1024;
/// iovecs per vmsplice.
const MAX_IOV: usize = 64;

/// The pipes and what is queued for them.
struct Splicer {
    /// The pipes; stripe `k` of the stream goes to `fds[k % 2]` (both the same with one pipe).
    fds: [u64; 2],
    /// Stripe size in bytes.
    stripe: u64,
    iov: [sys::IoVec; MAX_IOV],
    n_iov: usize,
    queued: u64,
    total: u64,
    /// The pages pushed now are to be freed once stored ([`REQ_FREE_DATA`]).
    free_data: bool,
    hand: Hand,
}

impl Splicer {
    /// Queues `len` bytes at `addr` (merged with the previous iovec when contiguous).
    fn push(&mut self, addr: u64, len: u64) -> Result<(), Fail> {
        if self.free_data {
            self.hand.queue(addr, len, self.total + self.queued);
        }
        if self.n_iov > 0 {
            let last = &mut self.iov[self.n_iov - 1];
            if last.base + last.len == addr {
                last.len += len;
                self.queued += len;
                return self.maybe_flush();
            }
        }
        if self.n_iov == MAX_IOV {
            self.flush()?;
        }
        self.iov[self.n_iov] = sys::IoVec { base: addr, len };
        self.n_iov += 1;
        self.queued += len;
        self.maybe_flush()
    }

    fn maybe_flush(&mut self) -> Result<(), Fail> {
        if self.queued >= FLUSH_BYTES {
            self.flush()
        } else {
            Ok(())
        }
    }

    /// vmsplices everything queued, resuming after partial writes (a full pipe). No call
    /// crosses the end of a stripe: the iovec that does is cut there for the call.
    fn flush(&mut self) -> Result<(), Fail> {
        let mut first = 0;
        while first < self.n_iov {
            let stripe = self.total / self.stripe;
            let room = self.stripe - self.total % self.stripe;
            let fd = self.fds[(stripe % 2) as usize];
            // The iovecs that fit the rest of the stripe; the last one cut short if needed.
            let (mut end, mut sum) = (first, 0u64);
            let mut cut = None;
            while end < self.n_iov && sum < room {
                let len = self.iov[end].len;
                if sum + len > room {
                    cut = Some((end, len));
                    self.iov[end].len = room - sum;
                    sum = room;
                } else {
                    sum += len;
                }
                end += 1;
            }
            wait_writable(fd)?;
            // SAFETY: the iovecs name pages of this task; vmsplice only takes references.
            let ret = unsafe {
                sys::syscall4(
                    sys::NR_VMSPLICE,
                    fd,
                    addr_of!(self.iov[first]) as u64,
                    (end - first) as u64,
                    0,
                )
            };
            if let Some((i, len)) = cut {
                self.iov[i].len = len;
            }
            let mut n = check(ret, sys::NR_VMSPLICE, self.iov[first].base)?;
            if n == 0 {
                return Err(Fail {
                    errno: sys::EIO,
                    nr: sys::NR_VMSPLICE,
                    addr: self.iov[first].base,
                });
            }
            self.total += n;
            self.hand.release(false);
            while n > 0 {
                let v = &mut self.iov[first];
                if n >= v.len {
                    n -= v.len;
                    first += 1;
                } else {
                    v.base += n;
                    v.len -= n;
                    n = 0;
                }
            }
        }
        self.n_iov = 0;
        self.queued = 0;
        Ok(())
    }
}

/// Ranges of stored pages queued for [`REQ_FREE_DATA`]: at most this many (contiguous ones
/// merge; the pipes hold 2 MiB, which is 512 runs of one page); when they are all used, the
/// oldest is dropped unfreed.
const PEND_MAX: usize = 512;

/// The stored pages of [`REQ_FREE_DATA`] requests, freed once the dumper has them in the page
/// store ([`Handover::stored`]) and logged in [`Handover::freed`].
struct Hand {
    /// The exchange with the dumper; null without one, or once its log is full.
    h: *mut Handover,
    /// Pushed ranges not freed yet, in stream order.
    pend: [Freed; PEND_MAX],
    n: usize,
}

impl Hand {
    /// Queues `len` bytes at `addr`, at `stream_off` in the stream.
    fn queue(&mut self, addr: u64, len: u64, stream_off: u64) {
        if self.h.is_null() {
            return;
        }
        if self.n > 0 {
            let last = &mut self.pend[self.n - 1];
            if last.vaddr + last.len == addr && last.stream_off + last.len == stream_off {
                last.len += len;
                return;
            }
        }
        if self.n == PEND_MAX {
            self.release(false);
        }
        if self.n == PEND_MAX {
            self.pend.copy_within(1.., 0);
            self.n -= 1;
        }
        self.pend[self.n] = Freed {
            vaddr: addr,
            len,
            stream_off,
        };
        self.n += 1;
    }

    /// Frees what the page store has of the queued ranges: whole ranges, but the last one
    /// only up to a [`FREE_DATA_ALIGN`] boundary while more may join it (`end` false).
    fn release(&mut self, end: bool) {
        if self.h.is_null() || self.n == 0 {
            return;
        }
        // SAFETY: h points to the Handover in the data area (checked at the start); the dumper
        // writes `stored` meanwhile, hence the volatile read.
        let stored = unsafe { addr_of!((*self.h).stored).read_volatile() };
        let mut done = 0;
        for i in 0..self.n {
            let e = self.pend[i];
            let have = stored.saturating_sub(e.stream_off).min(e.len);
            let take = if have == e.len && (i + 1 < self.n || end) {
                e.len
            } else {
                ((e.vaddr + have) & !(FREE_DATA_ALIGN - 1)).saturating_sub(e.vaddr)
            };
            if take > 0 && !self.free(e.vaddr, take, e.stream_off) {
                return;
            }
            if take == e.len {
                done += 1;
                continue;
            }
            self.pend[i] = Freed {
                vaddr: e.vaddr + take,
                len: e.len - take,
                stream_off: e.stream_off + take,
            };
            break;
        }
        self.pend.copy_within(done..self.n, 0);
        self.n -= done;
    }

    /// Frees one stored range and logs it. Returns false (and stops all freeing) when the log
    /// is full; a range the kernel refuses to free is skipped, as it stays intact.
    fn free(&mut self, addr: u64, len: u64, stream_off: u64) -> bool {
        // SAFETY: h points to the Handover in the data area; only the blob writes its log.
        let h = unsafe { &mut *self.h };
        let n = h.n_freed as usize;
        let merge = n > 0 && {
            let last = &h.freed[n - 1];
            last.vaddr + last.len == addr && last.stream_off + last.len == stream_off
        };
        if !merge && n >= HANDOVER_ENTRIES {
            self.h = core::ptr::null_mut();
            self.n = 0;
            return false;
        }
        // SAFETY: the pages are this task's private anonymous memory (the dumper's promise
        // with REQ_FREE_DATA), their bytes are in the page store, and the range goes into the
        // log the dumper writes them back from if the dump fails.
        let ret = unsafe { sys::syscall3(sys::NR_MADVISE, addr, len, sys::MADV_DONTNEED) };
        if ret != 0 {
            return true;
        }
        if merge {
            h.freed[n - 1].len += len;
        } else {
            h.freed[n] = Freed {
                vaddr: addr,
                len,
                stream_off,
            };
            h.n_freed += 1;
        }
        true
    }
}

/// Sleeps until the pipe `fd` has room. vmsplice would wait too, but only after taking the
/// pipe's lock, and while the dumper splices out of the pipe (holding the lock for a whole
/// megabyte's copy) the kernel spins for that lock instead of sleeping: 10-15% of all CPU time
/// of a 1 GiB dump went into that spinning. poll looks at the pipe without its lock.
fn wait_writable(fd: u64) -> Result<(), Fail> {
    let mut p = sys::PollFd {
        fd: fd as i32,
        events: sys::POLLOUT,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd, valid for the call; no timeout.
        let ret = unsafe { sys::syscall3(sys::NR_POLL, addr_of_mut!(p) as u64, 1, u64::MAX) };
        if ret == -(sys::EINTR as i64) {
            continue;
        }
        // A broken pipe shows up as POLLERR: the vmsplice that follows reports it.
        return check(ret, sys::NR_POLL, fd).map(drop);
    }
}

/// The run of non-zero pages being built.
struct OpenRun {
    start: u64,
    pages: u64,
    /// Pages already folded into `crc` and queued for the pipe.
    done: u64,
    crc: u32,
}

impl OpenRun {
    /// Folds the pending pages into the CRC and queues them.
    fn fold(&mut self, sp: &mut Splicer) -> Result<(), Fail> {
        let n = self.pages - self.done;
        if n == 0 {
            return Ok(());
        }
        let at = self.start + self.done * PAGE;
        // SAFETY: the pages were just read by page_is_zero, so they are mapped and readable;
        // this machine's x86_64 CPUs have SSE4.2 (checked by the dumper before infecting).
        self.crc = unsafe { crc::crc_pages(self.crc, at as *const u8, n as usize) };
        self.done = self.pages;
        sp.push(at, n * PAGE)
    }
}

/// The run of all-zero pages being scanned, for [`REQ_FREE_ZERO`].
struct ZeroRun {
    /// The request allows freeing.
    free: bool,
    start: u64,
    pages: u64,
    /// The pages before `start` belong to the same run and were freed already.
    continued: bool,
}

impl ZeroRun {
    /// Adds the zero page at `addr` (right after the run); frees the run when it reaches a
    /// boundary of [`FREE_ZERO_BATCH_PAGES`] pages (2 MiB: a long run is freed as the scan
    /// goes, in whole transparent huge pages where it covers them) and is long enough to be
    /// freed; a shorter one goes on past the boundary. Returns the pages freed.
    fn add(&mut self, addr: u64) -> u64 {
        if !self.free {
            return 0;
        }
        if self.pages == 0 {
            self.start = addr;
        }
        self.pages += 1;
        if self.pages >= FREE_ZERO_MIN_PAGES
            && (addr + PAGE).is_multiple_of(FREE_ZERO_BATCH_PAGES * PAGE)
        {
            let freed = self.free_pending();
            self.continued = true;
            freed
        } else {
            0
        }
    }

    /// Ends the run: frees what is left of it if the whole run is [`FREE_ZERO_MIN_PAGES`]
    /// long or more. Returns the pages freed.
    fn end(&mut self) -> u64 {
        let freed = if self.continued || self.pages >= FREE_ZERO_MIN_PAGES {
            self.free_pending()
        } else {
            0
        };
        self.pages = 0;
        self.continued = false;
        freed
    }

    /// Frees the pages from `start` on. A failure is not an error: freeing only saves memory
    /// (a sealed mapping refuses it, say), and the pages stay as they are.
    fn free_pending(&mut self) -> u64 {
        let pages = core::mem::take(&mut self.pages);
        if pages == 0 {
            return 0;
        }
        // SAFETY: the pages are this task's private anonymous memory (the dumper's promise
        // with REQ_FREE_ZERO) and all zero; afterwards they read as zero, as before. No page
        // of the run was handed to vmsplice.
        let ret = unsafe {
            sys::syscall3(
                sys::NR_MADVISE,
                self.start,
                pages * PAGE,
                sys::MADV_DONTNEED,
            )
        };
        if ret == 0 {
            pages
        } else {
            0
        }
    }
}

/// Whether the page at `p` is all zeros.
///
/// # Safety
/// `p` is page-aligned and the page is readable.
unsafe fn page_is_zero(p: u64) -> bool {
    let w = p as *const [u64; 8];
    for i in 0..(PAGE as usize / 64) {
        // SAFETY: 64 chunks of 64 bytes make up the page.
        let c = unsafe { w.add(i).read() };
        if (c[0] | c[1] | c[2] | c[3] | c[4] | c[5] | c[6] | c[7]) != 0 {
            return false;
        }
    }
    true
}

/// # Safety
/// The data area is mapped read-write; the requests name readable pages of this task.
unsafe fn cmd_dump_pages(ctl: &mut Ctl) -> Result<(), Fail> {
    let (fd, fd2) = (ctl.args[0], ctl.args[5]);
    let res = (|| {
        let (n_req, reqs, outs, cap) = (ctl.args[1], ctl.args[2], ctl.args[3], ctl.args[4]);
        in_data(ctl, reqs, n_req.saturating_mul(size_of::<PageReq>() as u64))?;
        in_data(ctl, outs, cap.saturating_mul(size_of::<PageOut>() as u64))?;
        let reqs = reqs as *const PageReq;
        let outs = outs as *mut PageOut;
        let two = fd2 != NO_FD && ctl.args[6] != 0;
        let h = ctl.args[7];
        if h != 0 {
            in_data(ctl, h, size_of::<Handover>() as u64)?;
        }
        let mut sp = Splicer {
            fds: [fd, if two { fd2 } else { fd }],
            stripe: if two { ctl.args[6] } else { u64::MAX },
            iov: [sys::IoVec::default(); MAX_IOV],
            n_iov: 0,
            queued: 0,
            total: 0,
            free_data: false,
            hand: Hand {
                h: h as *mut Handover,
                pend: [Freed::default(); PEND_MAX],
                n: 0,
            },
        };
        let mut n_out = 0u64;
        let mut resume = None;
        let mut freed = 0u64;
        'reqs: for i in 0..n_req {
            // SAFETY: i < n_req, inside the checked area.
            let req = unsafe { reqs.add(i as usize).read() };
            sp.free_data = req.flags & REQ_FREE_DATA != 0;
            let mut run: Option<OpenRun> = None;
            let mut zero = ZeroRun {
                free: req.flags & REQ_FREE_ZERO != 0,
                start: 0,
                pages: 0,
                continued: false,
            };
            for p in 0..req.nr_pages {
                let addr = req.vaddr + p * PAGE;
                // SAFETY: the dumper asks only for readable pages of this task.
                if unsafe { page_is_zero(addr) } {
                    if let Some(mut r) = run.take() {
                        close_run(&mut r, &mut sp, outs, &mut n_out)?;
                    }
                    freed += zero.add(addr);
                    continue;
                }
                freed += zero.end();
                let r = match run.as_mut() {
                    Some(r) => r,
                    None => {
                        if n_out == cap {
                            resume = Some((i, p));
                            break 'reqs;
                        }
                        run.insert(OpenRun {
                            start: addr,
                            pages: 0,
                            done: 0,
                            crc: !0,
                        })
                    }
                };
                r.pages += 1;
                if r.pages - r.done >= CHUNK_PAGES {
                    r.fold(&mut sp)?;
                }
            }
            freed += zero.end();
            if let Some(mut r) = run.take() {
                close_run(&mut r, &mut sp, outs, &mut n_out)?;
            }
        }
        sp.flush()?;
        sp.hand.release(true);
        ctl.out[0] = n_out;
        ctl.out[1] = sp.total;
        ctl.out[5] = freed;
        match resume {
            Some((i, p)) => {
                ctl.out[2] = i;
                ctl.out[3] = p;
                ctl.out[4] = 0;
            }
            None => {
                ctl.out[2] = n_req;
                ctl.out[3] = 0;
                ctl.out[4] = 1;
            }
        }
        Ok(())
    })();
    // SAFETY: closes the pipe ends the dumper handed to this command.
    let ret = unsafe { sys::syscall1(sys::NR_CLOSE, fd) };
    let ret2 = if fd2 != NO_FD {
        // SAFETY: as above.
        unsafe { sys::syscall1(sys::NR_CLOSE, fd2) }
    } else {
        0
    };
    res?;
    check(ret, sys::NR_CLOSE, fd)?;
    check(ret2, sys::NR_CLOSE, fd2).map(drop)
}

/// Finishes a run: folds its last pages, records it in the output array.
fn close_run(
    r: &mut OpenRun,
    sp: &mut Splicer,
    outs: *mut PageOut,
    n_out: &mut u64,
) -> Result<(), Fail> {
    r.fold(sp)?;
    // SAFETY: the caller checked n_out < cap when it opened the run; outs has cap slots.
    unsafe {
        outs.add(*n_out as usize).write(PageOut {
            vaddr: r.start,
            nr_pages: r.pages,
            crc: (!r.crc) as u64,
        })
    };
    *n_out += 1;
    Ok(())
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // A trap the dumper reports as a crash of the blob (SIGILL).
    // SAFETY: ud2 raises SIGILL and never returns.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}

/// Never called (panics abort), but unoptimized builds of `core` reference the symbol.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
