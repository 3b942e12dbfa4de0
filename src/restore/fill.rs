//! Filling a restore child's memory with its saved pages, checking each run's crc32c on the
//! way. This module owns the page data path of restore and nothing else: the VMAs are mapped
//! before (writable) and their protections set after, by [`super::memory`].
//!
//! cryo maps the page store [`WINDOW`] bytes at a time (straight from the page cache; reads
//! into a buffer if it cannot be mapped), and for each chunk of [`CHUNK`] bytes folds it into
//! the run's crc32c, then places it while it is still in the CPU cache:
//! - into private anonymous memory (anonymous, heap, stack VMAs; nearly all the data) with
//!   `UFFDIO_COPY` on a userfaultfd the child creates and cryo takes over: the kernel allocates
//!   each page and copies into it at once, with no zeroing first and no page fault in the
//!   child. That is faster than the child's first touch of fresh memory would be.
//! - anywhere else (copied-on-write pages of private file mappings, shared anonymous memory),
//!   or where userfaultfd is unavailable, with `process_vm_writev`.
//!
//! The page store's pages of a big process are dropped from the page cache once placed
//! (`DROP_READ_FROM`), unless `--keep-page-cache`.
//!
//! A run whose data does not match its checksum fails the restore (the caller kills the
//! half-built child), so the page store is read once, not once to verify and once to fill.
//! Every userfaultfd registration is undone before returning, on success and on error.

use super::memory::is_special;
use super::remote_ctx::{Call, Ctx};
use super::{ProcessImage, RestoreError};
use crate::image::{PageStore, PagesLoc};
use crate::proto::{Vma, VmaKind};
use crate::stats::{self, Progress};
use crate::sys::uffd::{FileWindow, Uffd, UFFD_USER_MODE_ONLY};
use crate::sys::{mem, proc_ctl, SysError, PAGE_SIZE};
use std::time::Instant;

/// Bytes checksummed and placed at a time: small enough to stay in the CPU cache between the
/// checksum and the copy (256 KiB measured best against 1 and 4 MiB).
const CHUNK: usize = 256 << 10;
/// Bytes of the page store mapped at a time (they count in cryo's RSS while mapped).
const WINDOW: u64 = 4 << 20;

/// Reads every stored page run from the page store at `pages` into the child's memory and
/// checks its crc32c.
pub fn fill_pages(
    ctx: &mut Ctx,
    img: &ProcessImage,
    pages: Option<&PagesLoc>,
) -> Result<(), RestoreError> {
    if img.pagemap.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let pages = pages.ok_or_else(|| RestoreError::Invalid {
        pid: img.pid(),
        what: "page runs without a page store".into(),
    })?;
    let store = PageStore::open_at(pages)?;
    let vmas = run_vmas(img)?;
    let wants_uffd: Vec<&Vma> = {
        let mut v: Vec<&Vma> = vmas.iter().copied().filter(|v| uffd_capable(v)).collect();
        v.dedup_by_key(|v| v.start);
        v
    };
    let uffd = if wants_uffd.is_empty() {
        // The mappings must exist before pages are written into them.
        ctx.flush()?;
        None
    } else {
        open_uffd(ctx)?
    };
    let mut registered: Vec<(u64, u64)> = Vec::new();
    if let Some(u) = &uffd {
        for v in &wants_uffd {
            match u.register(v.start, v.end - v.start) {
                Ok(()) => registered.push((v.start, v.end)),
                Err(e) => tracing::debug!(
                    pid = ctx.pid(),
                    addr = format_args!("{:#x}", v.start),
                    error = %e,
                    "userfaultfd registration refused; filling this VMA with process_vm_writev"
                ),
            }
        }
    }
    let res = fill_runs(ctx.pid(), img, &store, &vmas, uffd.as_ref(), &registered);
    let mut unreg_err = None;
    if let Some(u) = &uffd {
        for &(s, e) in &registered {
            if let Err(source) = u.unregister(s, e - s) {
                unreg_err.get_or_insert(RestoreError::Sys {
                    pid: ctx.pid(),
                    what: format!("unregistering {s:#x}-{e:#x} from userfaultfd"),
                    source,
                });
            }
        }
    }
    let (pages, pages_uffd, threads) = res?;
    if let Some(e) = unreg_err {
        return Err(e);
    }
    let secs = start.elapsed().as_secs_f64();
    stats::note_restore(|s| {
        s.pages_read += pages;
        s.pages_uffd += pages_uffd;
        s.fill_threads = s.fill_threads.max(threads);
        s.fill_s += secs;
    });
    tracing::debug!(
        pid = ctx.pid(),
        pages,
        pages_uffd,
        elapsed_ms = (secs * 1000.0) as u64,
        "pages filled and verified"
    );
    Ok(())
}

/// The VMA holding each run, in run order. Runs are in address order (validated), as are VMAs.
fn run_vmas(img: &ProcessImage) -> Result<Vec<&Vma>, RestoreError> {
    let mut out = Vec::with_capacity(img.pagemap.len());
    let mut it = img.mm.vmas.iter().filter(|v| !is_special(v)).peekable();
    for run in &img.pagemap {
        let end = run.vaddr + run.nr_pages * PAGE_SIZE;
        while it.peek().is_some_and(|v| v.end <= run.vaddr) {
            it.next();
        }
        match it.peek() {
            Some(v) if v.start <= run.vaddr && end <= v.end => out.push(*v),
            _ => {
                return Err(RestoreError::Invalid {
                    pid: img.pid(),
                    what: format!(
                        "page run {:#x}+{} pages lies outside the saved VMAs",
                        run.vaddr, run.nr_pages
                    ),
                })
            }
        }
    }
    Ok(out)
}

/// Private anonymous memory, which `UFFDIO_COPY` can fill.
fn uffd_capable(v: &Vma) -> bool {
    matches!(
        v.kind(),
        VmaKind::VmaAnon | VmaKind::VmaHeap | VmaKind::VmaStack
    ) && v.flags & libc::MAP_SHARED as u32 == 0
}

/// Has the child create a userfaultfd and takes it over. `None` (and a debug message) when this
/// kernel or configuration refuses userfaultfd: the pages are then written another way.
fn open_uffd(ctx: &mut Ctx) -> Result<Option<Uffd>, RestoreError> {
    let pid = ctx.pid();
    let flags = libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY;
    let fd = match ctx.sys(
        || "userfaultfd".into(),
        libc::SYS_userfaultfd,
        [flags, 0, 0, 0, 0, 0],
    ) {
        Ok(fd) => fd,
        Err(RestoreError::Remote(crate::infect::remote::RemoteError::Syscall {
            errno, ..
        })) => {
            tracing::debug!(
                pid,
                errno,
                "no userfaultfd in the child; using process_vm_writev"
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let local =
        proc_ctl::pidfd_open(pid).and_then(|pidfd| proc_ctl::pidfd_getfd(&pidfd, fd as i32));
    // The child's own copy is not needed: ours keeps the userfaultfd alive.
    ctx.defer(vec![Call::new(
        "close(userfaultfd)".into(),
        libc::SYS_close,
        [fd, 0, 0, 0, 0, 0],
    )])?;
    let sys = |what: &str| {
        let what = what.to_string();
        move |source| RestoreError::Sys { pid, what, source }
    };
    let local = local.map_err(sys("taking over the child's userfaultfd"))?;
    Uffd::new(local)
        .map(Some)
        .map_err(sys("userfaultfd handshake"))
}

/// Where the bytes of the page store come from: windows mapped straight from the page cache
/// (no copy into a buffer; about 15% less CPU than reading into a buffer, measured), or, if
/// mapping fails, reads into a buffer.
struct Source<'a> {
    store: &'a PageStore,
    window: Option<(u64, FileWindow)>,
    map_failed: bool,
    buf: Vec<u8>,
    /// Drop each window's pages from the page cache once done with it (see [`DROP_READ_FROM`]).
    drop_read: bool,
    /// Where this thread's bytes of the store end: its windows stop there, so that no thread
    /// maps pages another one drops (a mapped page stays in the page cache).
    end: u64,
    /// The start of the window before the current one.
    prev_window: Option<u64>,
}

/// Drops bytes `from..to` of the page store from the page cache (see [`DROP_READ_FROM`]).
fn drop_cached(store: &PageStore, from: u64, to: u64) {
    let at = store.file_offset(from);
    if let Err(e) = crate::sys::uffd::drop_cached(store.as_fd(), at, to.saturating_sub(from)) {
        tracing::debug!(error = %e, "page store pages left cached");
    }
}

impl Source<'_> {
    /// Unmaps the window; with `drop_read`, drops its pages from the page cache too, from
    /// the start of the window before: the page cache holds a file in folios of up to 2 MiB,
    /// which are only dropped whole, and windows (which start after the store's header) cut
    /// through them.
    fn close_window(&mut self) {
        if let Some((offset, w)) = self.window.take() {
            let end = offset + w.bytes().len() as u64;
            drop(w);
            if self.drop_read {
                let from = self.prev_window.unwrap_or(offset);
                drop_cached(self.store, from, end);
                self.prev_window = Some(offset);
            }
        }
    }

    /// The `len` bytes at `offset` of the page store (`offset` page-aligned, `len` at most
    /// [`CHUNK`], inside the store: the runs' shapes were checked before).
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8], RestoreError> {
        let end = offset + len as u64;
        let inside = |w: &(u64, FileWindow)| offset >= w.0 && end <= w.0 + w.1.bytes().len() as u64;
        if !self.map_failed && !self.window.as_ref().is_some_and(inside) {
            self.close_window();
            if end > self.store.len() {
                // Cannot be mapped (a truncated store): let the read report it.
                self.map_failed = true;
            } else {
                let wlen = (self.end.min(self.store.len()).max(end) - offset).min(WINDOW) as usize;
                let at = self.store.file_offset(offset);
                match FileWindow::map(self.store.as_fd(), at, wlen) {
                    Ok(w) => self.window = Some((offset, w)),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot map the page store; reading it");
                        self.map_failed = true;
                    }
                }
            }
        }
        if let Some((start, w)) = &self.window {
            let from = (offset - start) as usize;
            return Ok(&w.bytes()[from..from + len]);
        }
        self.buf.resize(CHUNK, 0);
        let chunk = &mut self.buf[..len];
        self.store.read_exact_at(chunk, offset)?;
        Ok(chunk)
    }
}

/// A process with at least this many bytes of pages is filled by several threads at once
/// (`UFFDIO_COPY` allocates and copies on the calling thread's CPU): 1 GiB took 0.58 s on one
/// thread here, with the other CPU idle.
const PARALLEL_FILL_FROM: u64 = 64 << 20;
/// At most this many threads fill one process.
const MAX_FILL_THREADS: usize = 4;

/// A process with at least this many bytes of pages has them dropped from the page cache as
/// they are placed, unless [`keep_page_cache`] said otherwise. The memory the page cache gave
/// back is what the next pages are placed in: on this VM fresh memory costs a host fault per
/// page in some minutes (see the README), and a 1 GiB restore took 0.31-1.29 s keeping the
/// cache and 0.35-0.39 s dropping it, in the same minutes. A restore of the same checkpoint
/// again then reads it from the disk.
const DROP_READ_FROM: u64 = 64 << 20;

/// `--keep-page-cache`: see [`DROP_READ_FROM`].
static KEEP_PAGE_CACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether restores from now on leave the page store's pages in the page cache.
pub fn keep_page_cache(keep: bool) {
    KEEP_PAGE_CACHE.store(keep, std::sync::atomic::Ordering::Relaxed);
}

/// Bytes `from..to` of run `run` (an index into the pagemap), to be filled by one thread.
#[derive(Clone, Copy)]
struct Piece {
    run: usize,
    from: u64,
    to: u64,
}

/// The copy loop. Returns (pages read, of which placed with userfaultfd, threads used). A big
/// process is cut into contiguous shares of its bytes, one per thread (a run may be cut too:
/// its pieces' checksums are combined); every run is checked once all are placed.
fn fill_runs(
    pid: i32,
    img: &ProcessImage,
    store: &PageStore,
    vmas: &[&Vma],
    uffd: Option<&Uffd>,
    registered: &[(u64, u64)],
) -> Result<(u64, u64, u64), RestoreError> {
    // Shared anonymous memory got its pages (checked) in its shared object, see
    // `super::shmem`.
    let runs: Vec<usize> = (0..img.pagemap.len())
        .filter(|&i| super::memory::takes_pages(vmas[i]))
        .collect();
    let total: u64 = runs
        .iter()
        .map(|&i| img.pagemap[i].nr_pages * PAGE_SIZE)
        .sum();
    let progress = Progress::new("restoring pages", total);
    let threads = if total >= PARALLEL_FILL_FROM {
        proc_ctl::helper_cpus().min(MAX_FILL_THREADS)
    } else {
        1
    };
    let lens: Vec<(usize, u64)> = runs
        .iter()
        .map(|&i| (i, img.pagemap[i].nr_pages * PAGE_SIZE))
        .collect();
    let shares = cut_into_shares(&lens, threads);
    let drop_read =
        total >= DROP_READ_FROM && !KEEP_PAGE_CACHE.load(std::sync::atomic::Ordering::Relaxed);
    let fill_share = |share: &[Piece]| -> Result<(Vec<u32>, u64), RestoreError> {
        let mut src = Source {
            store,
            window: None,
            map_failed: false,
            buf: Vec::new(),
            drop_read,
            prev_window: None,
            end: share
                .last()
                .map_or(0, |p| img.pagemap[p.run].offset + p.to)
                .next_multiple_of(PAGE_SIZE),
        };
        let mut crcs = Vec::with_capacity(share.len());
        let mut uffd_bytes = 0u64;
        for p in share {
            let vma = vmas[p.run];
            let via_uffd = uffd.filter(|_| {
                registered
                    .iter()
                    .any(|&(s, e)| s == vma.start && e == vma.end)
            });
            let (crc, n) = fill_piece(pid, &img.pagemap[p.run], *p, &mut src, via_uffd, &progress)?;
            crcs.push(crc);
            uffd_bytes += n;
        }
        src.close_window();
        Ok((crcs, uffd_bytes))
    };
    let results: Vec<Result<(Vec<u32>, u64), RestoreError>> = if shares.len() < 2 {
        shares.iter().map(|s| fill_share(s)).collect()
    } else {
        std::thread::scope(|sc| {
            let handles: Vec<_> = shares
                .iter()
                .map(|share| {
                    let fill_share = &fill_share;
                    sc.spawn(move || {
                        // Each on a CPU of its choosing, not all on the restore worker's.
                        proc_ctl::unpin_current_thread();
                        fill_share(share)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(RestoreError::Invalid {
                            pid,
                            what: "a page filling thread panicked".into(),
                        })
                    })
                })
                .collect()
        })
    };
    // Each run's checksum, combined from its pieces in order.
    let mut crc: Vec<Option<u32>> = vec![None; img.pagemap.len()];
    let mut uffd_bytes = 0u64;
    for (share, res) in shares.iter().zip(results) {
        let (crcs, n) = res?;
        uffd_bytes += n;
        for (p, c) in share.iter().zip(crcs) {
            let slot = &mut crc[p.run];
            *slot = Some(match *slot {
                None => c,
                Some(prev) => crc32c::crc32c_combine(prev, c, (p.to - p.from) as usize),
            });
        }
    }
    for &i in &runs {
        store.check_run(&img.pagemap[i], crc[i].unwrap_or(0))?;
    }
    if drop_read {
        // What the threads could not drop: the folios across the ends of their shares.
        let first = runs.first().map_or(0, |&i| img.pagemap[i].offset);
        let last = runs.last().map_or(0, |&i| {
            let r = &img.pagemap[i];
            r.offset + r.nr_pages * PAGE_SIZE
        });
        drop_cached(store, first, last);
    }
    Ok((
        total / PAGE_SIZE,
        uffd_bytes / PAGE_SIZE,
        shares.len() as u64,
    ))
}

/// `runs` (pagemap index, bytes: whole pages) cut into up to `threads` shares of about the same
/// number of bytes, each a list of pieces in address order; a cut falls on a page boundary.
fn cut_into_shares(runs: &[(usize, u64)], threads: usize) -> Vec<Vec<Piece>> {
    let total: u64 = runs.iter().map(|r| r.1).sum();
    let threads = threads.max(1) as u64;
    let mut shares: Vec<Vec<Piece>> = Vec::with_capacity(threads as usize);
    let mut cur: Vec<Piece> = Vec::new();
    // Where the current share ends, in bytes from the start of the first run.
    let mut k = 1u64;
    let mut share_end = (total / PAGE_SIZE * k / threads) * PAGE_SIZE;
    let mut at = 0u64;
    for &(i, len) in runs {
        let mut from = 0u64;
        while from < len {
            let to = if k < threads {
                from + (len - from).min(share_end - at)
            } else {
                len
            };
            if to > from {
                cur.push(Piece { run: i, from, to });
            }
            at += to - from;
            from = to;
            if k < threads && at >= share_end {
                shares.push(std::mem::take(&mut cur));
                k += 1;
                share_end = (total / PAGE_SIZE * k / threads) * PAGE_SIZE;
            }
        }
    }
    if !cur.is_empty() {
        shares.push(cur);
    }
    shares.retain(|s| !s.is_empty());
    shares
}

/// Places bytes `p.from..p.to` of `run` (with `UFFDIO_COPY` when `via_uffd`), chunk by chunk;
/// returns their crc32c and the bytes placed with userfaultfd.
fn fill_piece(
    pid: i32,
    run: &crate::proto::PageRun,
    p: Piece,
    src: &mut Source<'_>,
    via_uffd: Option<&Uffd>,
    progress: &Progress,
) -> Result<(u32, u64), RestoreError> {
    let mut crc = 0u32;
    let mut uffd_bytes = 0u64;
    let mut pos = p.from;
    while pos < p.to {
        let n = (p.to - pos).min(CHUNK as u64) as usize;
        let chunk = src.bytes(run.offset + pos, n)?;
        crc = crc32c::crc32c_append(crc, chunk);
        let addr = run.vaddr + pos;
        match via_uffd {
            // Pages the kernel populated at mmap already are written the other way.
            Some(u) => {
                uffd_bytes += u
                    .copy_or_write(pid, addr, chunk)
                    .map_err(|(at, source)| write_err(pid, at, source))?
            }
            None => mem::write(pid, addr, chunk).map_err(|source| write_err(pid, addr, source))?,
        }
        pos += n as u64;
        progress.advance(n as u64);
    }
    Ok((crc, uffd_bytes))
}

fn write_err(pid: i32, addr: u64, source: SysError) -> RestoreError {
    RestoreError::Sys {
        pid,
        what: format!("writing saved pages at {addr:#x}"),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shares cover every byte of every run once, in order, cut on pages, and are about
    /// equal.
    #[test]
    fn shares_cover_the_runs_evenly() {
        let p = PAGE_SIZE;
        let cases: Vec<(Vec<(usize, u64)>, usize)> = vec![
            (vec![(0, 1 << 30)], 2),
            (vec![(0, 3 * p), (1, 5 * p), (4, 2 * p)], 2),
            (vec![(0, 3 * p), (1, 5 * p), (4, 2 * p)], 4),
            (vec![(2, p)], 4),
            (vec![(0, 7 * p), (3, 64 * p)], 3),
            (vec![(0, 10 * p)], 1),
        ];
        for (runs, threads) in cases {
            let shares = cut_into_shares(&runs, threads);
            assert!(!shares.is_empty() && shares.len() <= threads, "{runs:?}");
            let flat: Vec<Piece> = shares.iter().flatten().copied().collect();
            // Every run, whole, in order.
            let mut k = 0;
            for &(i, len) in &runs {
                let mut at = 0;
                while at < len {
                    let piece = flat[k];
                    assert_eq!((piece.run, piece.from), (i, at), "{runs:?}");
                    assert!(piece.to > piece.from && piece.to % p == 0);
                    at = piece.to;
                    k += 1;
                }
                assert_eq!(at, len);
            }
            assert_eq!(k, flat.len());
            let total: u64 = runs.iter().map(|r| r.1).sum();
            for share in &shares {
                let bytes: u64 = share.iter().map(|x| x.to - x.from).sum();
                assert!(
                    bytes <= total / threads as u64 + p,
                    "{runs:?}: share of {bytes}"
                );
            }
        }
    }
}
