//! Collecting the address space: VMAs from /proc/PID/maps with their kind, protections, map
//! flags and file identity (through map_files), the mm fields, and which pages must be stored
//! (from /proc/PID/pagemap: present or swapped pages that a file cannot give back).

use super::proc::{self, MapEntry};
use super::DumpError;
use crate::infect::PageRunReq;
use crate::proto::{FileId, MmState, Vma, VmaKind};
use crate::sys::PAGE_SIZE;

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

/// The VMAs of `pid` and the page runs to store.
pub fn collect_vmas(pid: i32, maps: &[MapEntry]) -> Result<(Vec<Vma>, Vec<PageRunReq>), DumpError> {
    let mut vmas = Vec::with_capacity(maps.len());
    let mut runs: Vec<PageRunReq> = Vec::new();
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
            let entries = proc::read_pagemap(pid, m.start, m.end)?;
            // Runs never cross a VMA boundary.
            let first_run = runs.len();
            for (i, e) in entries.iter().enumerate() {
                // A private file page that is present but still the file's own page comes back
                // from the file; a copied-on-write one is anonymous (or swapped) and is stored.
                let wanted = match kind {
                    VmaKind::VmaFilePrivate => {
                        (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAP != 0
                    }
                    _ => e & (PM_PRESENT | PM_SWAP) != 0,
                };
                if !wanted {
                    continue;
                }
                let addr = m.start + i as u64 * PAGE_SIZE;
                let in_this_vma = runs.len() > first_run;
                match runs.last_mut() {
                    Some(r) if in_this_vma && r.vaddr + r.nr_pages * PAGE_SIZE == addr => {
                        r.nr_pages += 1
                    }
                    _ => runs.push(PageRunReq {
                        vaddr: addr,
                        nr_pages: 1,
                        prot: m.prot,
                    }),
                }
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
    Ok((vmas, runs))
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
