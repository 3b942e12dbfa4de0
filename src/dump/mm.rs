//! Collecting the address space: VMAs from /proc/PID/maps with their kind, protections, map
//! flags and file identity (through map_files), the mm fields, and which pages must be stored
//! (present or swapped pages that a file cannot give back). Pages come from the PAGEMAP_SCAN
//! ioctl where the kernel has it (a few regions per VMA instead of 8 bytes per page, and pages
//! still mapped to the shared zero page are known without reading them); otherwise from
//! reading /proc/PID/pagemap.

use super::proc::{self, MapEntry, ProcError};
use super::DumpError;
use crate::infect::PageRunReq;
use crate::proto::{FileId, MmState, Vma, VmaKind};
use crate::sys::pagemap::{self as scan, PageRegion};
use crate::sys::PAGE_SIZE;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

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

/// The VMAs of `pid`, the page runs to store (never crossing a VMA boundary), and how many
/// present pages were left out because they are the shared zero page.
pub fn collect_vmas(
    pid: i32,
    maps: &[MapEntry],
) -> Result<(Vec<Vma>, Vec<PageRunReq>, u64), DumpError> {
    let mut vmas = Vec::with_capacity(maps.len());
    let mut runs: Vec<PageRunReq> = Vec::new();
    let mut zero_mapped = 0;
    let mut pagemap = Pagemap::open(pid)?;
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
            let st = proc::map_file_stat(pid, m.start, m.end)?;
            Some(FileId {
                path: m.path.clone(),
                dev: st.dev,
                ino: st.ino,
                size: st.size,
                mtime_ns: st.mtime_ns,
            })
        } else {
            None
        };
        if stores_pages(kind) {
            let (ranges, zero) = pagemap.wanted(m, kind)?;
            zero_mapped += zero;
            runs.extend(ranges.into_iter().map(|(start, end)| PageRunReq {
                vaddr: start,
                nr_pages: (end - start) / PAGE_SIZE,
                prot: m.prot,
            }));
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
    Ok((vmas, runs, zero_mapped))
}

/// The mm fields from /proc/PID/stat, auxv and exe; `brk` comes from the task itself.
pub fn collect_mm(pid: i32, vmas: Vec<Vma>, brk: u64) -> Result<MmState, DumpError> {
    let st = proc::read_stat(pid)?;
    let exe_path = proc::read_link(pid, "exe")?;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|md| {
            use std::os::unix::fs::MetadataExt;
            FileId {
                path: exe_path.clone(),
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            }
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
