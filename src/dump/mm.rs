//! Collecting the address space: VMAs from /proc/PID/maps with their kind, protections, map
//! flags and file identity (through map_files), the mm fields, and which pages must be stored
//! (present or swapped pages that a file cannot give back). Pages come from the PAGEMAP_SCAN
//! ioctl where the kernel has it (a few regions per VMA instead of 8 bytes per page, and pages
//! still mapped to the shared zero page are known without reading them); otherwise from
//! reading /proc/PID/pagemap.
//!
//! When the dump is to kill the process, the runs of its private anonymous memory are marked
//! [`PageRunReq::free_zero`] and [`PageRunReq::free_data`]: the parasite gives their all-zero
//! pages back to the kernel as it finds them (they are not stored either way), and their
//! stored pages once they are in the page store, so the page cache the page store fills comes
//! from memory the process held instead of fresh memory (see `free_zero_allowed`). Stored
//! pages freed are written back from the page store if the dump fails (`handback`).

use super::proc::{self, MapEntry, ProcError};
use super::DumpError;
use crate::infect::PageRunReq;
use crate::proto::{FileId, MmState, Vma, VmaKind};
use crate::sys::pagemap::{self as scan, PageRegion};
use crate::sys::PAGE_SIZE;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

fn kind_of(pid: i32, m: &MapEntry) -> Result<VmaKind, DumpError> {
    let unsupported = |what: String| DumpError::Unsupported { pid, what };
    Ok(match m.path.as_str() {
        "[heap]" => VmaKind::VmaHeap,
        "[stack]" => VmaKind::VmaStack,
        "[vdso]" => VmaKind::VmaVdso,
        "[vvar]" => VmaKind::VmaVvar,
        "[vvar_vclock]" => VmaKind::VmaVvarVclock,
        "[vsyscall]" => VmaKind::VmaVsyscall,
        "" if m.inode == 0 => {
            if m.shared {
                VmaKind::VmaAnonShared
            } else {
                VmaKind::VmaAnon
            }
        }
        "/dev/zero" if m.shared && m.deleted => VmaKind::VmaAnonShared,
        p if p.starts_with('/') && !m.deleted => {
            if m.shared {
                VmaKind::VmaFileShared
            } else {
                VmaKind::VmaFilePrivate
            }
        }
        p => {
            return Err(unsupported(format!(
                "mapping {:#x}-{:#x} of {p}{} is not supported yet",
                m.start,
                m.end,
                if m.deleted { " (deleted)" } else { "" }
            )))
        }
    })
}

/// A process with at least this much memory resident has its all-zero pages freed as they
/// are found (`free_zero_allowed`); below it the gain is small, and /proc/PID/smaps is not
/// worth reading.
pub const FREE_ZERO_FROM: u64 = 16 << 20;

/// `VmFlags` (/proc/PID/smaps) that leave a private anonymous VMA's zero pages free to go:
/// access and may-flags, growing down, read-ahead and fork advice, accounting, no-reserve,
/// don't-dump, KSM, and THP advice ([`free_zero_allowed`]). Any other flag keeps them,
/// notably `lo` (mlocked: madvise would fail, and the process wants them resident),
/// `um`/`uw`/`ui` (registered with userfaultfd: freeing would make the monitor see new
/// faults), `sl` (sealed), `ss` (shadow stack), and flags this list does not know. (A process
/// with locked or pinned memory frees nothing at all: see `collect` in the dump module.)
const FREE_ZERO_FLAGS: &[&str] = &[
    "rd", "wr", "ex", "mr", "mw", "me", "gd", "sr", "rr", "dc", "de", "ac", "nr", "wf", "dd", "mg",
    "hg", "nh", "sd",
];

/// Whether the all-zero pages of a VMA of `kind` may be freed while a process the dump is to
/// kill is dumped (its `VmFlags` permitting, [`FREE_ZERO_FLAGS`]). Only private anonymous
/// memory: a zero page of it that is freed reads as zero again, so even a dump that fails
/// (and leaves the process running) changes none of its memory's contents, only what is
/// resident, exactly as a restore would have it (zero pages are not stored, so a restored
/// process has them unpopulated too). A private file mapping's page would read the file's
/// bytes instead, and shared memory's page is not the process's alone.
fn free_zero_allowed(kind: VmaKind, shared: bool) -> bool {
    matches!(
        kind,
        VmaKind::VmaAnon | VmaKind::VmaHeap | VmaKind::VmaStack
    ) && !shared
}

/// Whether a VMA with these `VmFlags` may have its zero pages freed ([`FREE_ZERO_FLAGS`]).
fn vm_flags_free_zero(flags: &[String]) -> bool {
    flags.iter().all(|f| FREE_ZERO_FLAGS.contains(&f.as_str()))
}

/// Whether this kind of VMA has page contents cryo must store.
fn stores_pages(kind: VmaKind) -> bool {
    matches!(
        kind,
        VmaKind::VmaAnon
            | VmaKind::VmaAnonShared
            | VmaKind::VmaHeap
            | VmaKind::VmaStack
            | VmaKind::VmaFilePrivate
    )
}

/// Where the populated pages of a process are learnt from.
struct Pagemap {
    pid: i32,
    path: PathBuf,
    /// `/proc/PID/pagemap`, for PAGEMAP_SCAN; `None` once the kernel said it has no such ioctl.
    file: Option<File>,
}

impl Pagemap {
    fn open(pid: i32) -> Result<Self, DumpError> {
        let path = PathBuf::from(format!("/proc/{pid}/pagemap"));
        let file = File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                DumpError::Gone { pid }
            } else {
                DumpError::Proc(ProcError::Pagemap {
                    path: path.clone(),
                    addr: 0,
                    source,
                })
            }
        })?;
        Ok(Self {
            pid,
            path,
            file: Some(file),
        })
    }

    /// The page ranges of `m` (a VMA of `kind`) to store, ascending, and how many of its
    /// present pages are the shared zero page (not stored: they read as zero).
    fn wanted(&mut self, m: &MapEntry, kind: VmaKind) -> Result<(Vec<(u64, u64)>, u64), DumpError> {
        // A private file page that is present but still the file's own page comes back from
        // the file; a copied-on-write one is anonymous (or swapped) and is stored.
        let file_private = kind == VmaKind::VmaFilePrivate;
        if let Some(f) = &self.file {
            let mut regions: Vec<PageRegion> = Vec::new();
            match scan::scan_populated(f.as_fd(), m.start, m.end, &mut regions) {
                Ok(()) => {
                    let mut ranges: Vec<(u64, u64)> = Vec::new();
                    let mut zero = 0;
                    for r in regions {
                        let c = r.categories;
                        let swapped = c & scan::PAGE_IS_SWAPPED != 0;
                        if !swapped && c & scan::PAGE_IS_PFNZERO != 0 {
                            zero += (r.end - r.start) / PAGE_SIZE;
                            continue;
                        }
                        if file_private && !swapped && c & scan::PAGE_IS_FILE != 0 {
                            continue;
                        }
                        match ranges.last_mut() {
                            Some(last) if last.1 == r.start => last.1 = r.end,
                            _ => ranges.push((r.start, r.end)),
                        }
                    }
                    return Ok((ranges, zero));
                }
                Err(e) if scan::is_unsupported(&e) => {
                    tracing::debug!(error = %e, "no PAGEMAP_SCAN; reading pagemap");
                    self.file = None;
                }
                Err(e) => {
                    return Err(DumpError::Proc(ProcError::Pagemap {
                        path: self.path.clone(),
                        addr: m.start,
                        source: std::io::Error::from_raw_os_error(e.errno),
                    }))
                }
            }
        }
        let entries = proc::read_pagemap(self.pid, m.start, m.end)?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let wanted = if file_private {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAP != 0
            } else {
                e & (PM_PRESENT | PM_SWAP) != 0
            };
            if !wanted {
                continue;
            }
            let addr = m.start + i as u64 * PAGE_SIZE;
            match ranges.last_mut() {
                Some(last) if last.1 == addr => last.1 += PAGE_SIZE,
                _ => ranges.push((addr, addr + PAGE_SIZE)),
            }
        }
        Ok((ranges, 0))
    }
}

/// The identity of mapped files (dev, ino, size, mtime), by the device and inode that
/// /proc/PID/maps prints for them, shared by every process of a dump: one stat through
/// `map_files` per file instead of one per mapping (a process maps its libc four or five
/// times, and the processes of a tree mostly map the same files; the stats and the proc
/// dentries they create and kill were a sixth of a tree dump's CPU time).
#[derive(Default)]
pub struct MappedFiles(Mutex<HashMap<MapKey, FileId>>);

/// A mapped file as /proc/PID/maps names it: (device (major, minor), inode).
type MapKey = ((u32, u32), u64);

impl MappedFiles {
    /// The identity of the file mapped by `m` (a mapping of `pid` with a file behind it).
    fn identify(&self, pid: i32, m: &MapEntry) -> Result<FileId, DumpError> {
        let key = (m.dev, m.inode);
        // Inode 0 names no file: never share an answer for it.
        if m.inode != 0 {
            if let Some(id) = self.lock().get(&key) {
                return Ok(FileId {
                    path: m.path.clone(),
                    ..id.clone()
                });
            }
        }
        let st = proc::map_file_metadata(pid, m.start, m.end)?;
        let id = FileId {
            path: m.path.clone(),
            dev: st.dev(),
            ino: st.ino(),
            size: st.size(),
            mtime_ns: st
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(st.mtime_nsec()),
        };
        if m.inode != 0 {
            self.lock().insert(key, id.clone());
        }
        Ok(id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MapKey, FileId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The VMAs of `pid`, the page runs to store (never crossing a VMA boundary), and how many
/// present pages were left out because they are the shared zero page.
pub fn collect_vmas(
    pid: i32,
    maps: &[MapEntry],
    files: &MappedFiles,
) -> Result<(Vec<Vma>, PageRuns, u64), DumpError> {
    let mut vmas = Vec::with_capacity(maps.len());
    let mut runs: Vec<PageRunReq> = Vec::new();
    let mut zero_mapped = 0;
    let mut pagemap = Pagemap::open(pid)?;
    let mut anon: Vec<(u64, std::ops::Range<usize>)> = Vec::new();
    for m in maps {
        let kind = kind_of(pid, m)?;
        let mut flags = if m.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u32;
        if kind == VmaKind::VmaStack {
            flags |= libc::MAP_GROWSDOWN as u32;
        }
        // Shared anonymous memory is a shmem file: its identity (dev, ino) tells which
        // mappings, in this process or others, are the same memory.
        let file = if matches!(
            kind,
            VmaKind::VmaFilePrivate | VmaKind::VmaFileShared | VmaKind::VmaAnonShared
        ) {
            Some(files.identify(pid, m)?)
        } else {
            None
        };
        if stores_pages(kind) {
            let (ranges, zero) = pagemap.wanted(m, kind)?;
            zero_mapped += zero;
            let first = runs.len();
            runs.extend(ranges.into_iter().map(|(start, end)| PageRunReq {
                vaddr: start,
                nr_pages: (end - start) / PAGE_SIZE,
                prot: m.prot,
                free_zero: false,
                free_data: false,
            }));
            if free_zero_allowed(kind, m.shared) && runs.len() > first {
                anon.push((m.start, first..runs.len()));
            }
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot,
            flags,
            kind: kind as i32,
            pgoff: m.offset,
            file,
            madv: 0,
            name: m.path.clone(),
        });
    }
    Ok((vmas, PageRuns { runs, anon }, zero_mapped))
}

/// The page runs of a process to store, in address order.
pub struct PageRuns {
    /// The runs.
    pub runs: Vec<PageRunReq>,
    /// The runs of each private anonymous VMA ([`free_zero_allowed`]): (its start, their
    /// indices in `runs`).
    anon: Vec<(u64, std::ops::Range<usize>)>,
}

impl PageRuns {
    /// Marks the runs of private anonymous VMAs whose `VmFlags` (`vm_flags`: start address,
    /// flags, from [`proc::read_vm_flags`]) allow it (`FREE_ZERO_FLAGS`) as
    /// [`PageRunReq::free_zero`] and [`PageRunReq::free_data`].
    pub fn mark_freeable(&mut self, pid: i32, vm_flags: Vec<(u64, Vec<String>)>) {
        let flags: HashMap<u64, Vec<String>> = vm_flags.into_iter().collect();
        for (start, idx) in &self.anon {
            match flags.get(start) {
                Some(f) if vm_flags_free_zero(f) => {
                    for r in &mut self.runs[idx.clone()] {
                        r.free_zero = true;
                        r.free_data = true;
                    }
                }
                f => tracing::debug!(pid, start, flags = ?f, "zero pages of this mapping kept"),
            }
        }
    }
}

/// The mm fields from /proc/PID/stat (`st`), auxv and exe (`exe_path`, its link); `brk`
/// comes from the task itself.
pub fn collect_mm(
    pid: i32,
    vmas: Vec<Vma>,
    brk: u64,
    st: &proc::ProcStat,
    exe_path: String,
) -> Result<MmState, DumpError> {
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|md| FileId {
            path: exe_path.clone(),
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        });
    Ok(MmState {
        vmas,
        start_code: st.start_code,
        end_code: st.end_code,
        start_data: st.start_data,
        end_data: st.end_data,
        start_brk: st.start_brk,
        brk,
        start_stack: st.start_stack,
        arg_start: st.arg_start,
        arg_end: st.arg_end,
        env_start: st.env_start,
        env_end: st.env_end,
        auxv: proc::read_auxv(pid)?,
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_pages_are_freed_only_in_private_anonymous_memory_with_known_flags() {
        let flags = |s: &str| -> Vec<String> { s.split(' ').map(String::from).collect() };
        assert!(vm_flags_free_zero(&flags("rd wr mr mw me ac sd")));
        assert!(
            vm_flags_free_zero(&flags("rd wr mr mw me gd ac")),
            "a stack"
        );
        assert!(vm_flags_free_zero(&[]));
        for kept in ["lo", "um", "uw", "ui", "sl", "ss", "io", "pf", "zz"] {
            let f = flags(&format!("rd wr mr mw me ac {kept}"));
            assert!(!vm_flags_free_zero(&f), "{kept}");
        }
        assert!(free_zero_allowed(VmaKind::VmaAnon, false));
        assert!(free_zero_allowed(VmaKind::VmaHeap, false));
        assert!(free_zero_allowed(VmaKind::VmaStack, false));
        assert!(!free_zero_allowed(VmaKind::VmaAnon, true));
        assert!(!free_zero_allowed(VmaKind::VmaFilePrivate, false));
        assert!(!free_zero_allowed(VmaKind::VmaAnonShared, true));
    }

    #[test]
    fn mapped_files_answer_once_per_file_and_keep_each_path() {
        let pid = std::process::id() as i32;
        let maps = proc::read_maps(pid).unwrap();
        let exe = proc::read_link(pid, "exe").unwrap();
        let mine: Vec<&MapEntry> = maps.iter().filter(|m| m.path == exe).collect();
        assert!(mine.len() >= 2, "the test binary is mapped more than once");
        let files = MappedFiles::default();
        let meta = std::fs::metadata(&exe).unwrap();
        for m in &mine {
            let id = files.identify(pid, m).unwrap();
            assert_eq!(id.path, exe);
            assert_eq!(
                (id.dev, id.ino, id.size),
                (meta.dev(), meta.ino(), meta.size())
            );
        }
        // One entry for the binary, whatever the number of its mappings.
        assert_eq!(files.lock().len(), 1);
        // A cached answer is never used for another file: a different inode asks again (and
        // here fails, as no such mapping exists).
        let mut other = (*mine[0]).clone();
        other.inode += 1;
        other.start = 0x1000;
        other.end = 0x2000;
        assert!(files.identify(pid, &other).is_err());
    }
}
