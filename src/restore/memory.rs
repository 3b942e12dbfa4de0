//! Rebuilding the address space of a restore child from outside: clear the inherited
//! mappings, move the vdso/vvar to their saved addresses, map every saved VMA at its address
//! (files from their paths), fill the saved pages (through [`super::fill`]), fix protections,
//! and set the mm fields with PR_SET_MM_MAP.

use super::layout::find_hole;
use super::remote_ctx::{Call, Ctx, Le, TRAMPOLINE_LEN};
use super::{ProcessImage, RestoreError};
use crate::proto::{Vma, VmaKind};
use std::collections::HashMap;

/// `PR_SET_MM` / `PR_SET_MM_MAP`.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
/// `RSEQ_FLAG_UNREGISTER`.
const RSEQ_FLAG_UNREGISTER: u64 = 1;

/// One line of /proc/PID/maps, as much as restore needs of it.
pub struct CurMap {
    start: u64,
    end: u64,
    name: String,
}

/// Where `addr` lies in the vdso of `maps`, as an offset, if it is there.
pub fn vdso_offset(maps: &str, addr: u64) -> Option<u64> {
    parse_maps(maps)
        .iter()
        .find(|m| m.name == "[vdso]" && (m.start..m.end).contains(&addr))
        .map(|m| addr - m.start)
}

/// The text of /proc/PID/maps.
pub fn maps_text(pid: i32) -> Result<String, RestoreError> {
    let path = format!("/proc/{pid}/maps");
    crate::dump::proc::read_lossy(std::path::Path::new(&path))
        .map_err(|source| RestoreError::Io { path, source })
}

/// The mappings listed in `text` (a /proc/PID/maps).
pub fn parse_maps(text: &str) -> Vec<CurMap> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let range = it.next().unwrap_or("");
        let name = it.nth(4).unwrap_or("").trim().to_string();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        out.push(CurMap { start, end, name });
    }
    out
}

fn special_kind(name: &str) -> Option<VmaKind> {
    match name {
        "[vdso]" => Some(VmaKind::VmaVdso),
        "[vvar]" => Some(VmaKind::VmaVvar),
        "[vvar_vclock]" => Some(VmaKind::VmaVvarVclock),
        _ => None,
    }
}

/// Whether a saved VMA is one the kernel provides (moved, not mapped).
pub fn is_special(v: &Vma) -> bool {
    matches!(
        v.kind(),
        VmaKind::VmaVdso | VmaKind::VmaVvar | VmaKind::VmaVvarVclock | VmaKind::VmaVsyscall
    )
}

/// Picks the trampoline address: free in cryo's own layout (which the child inherits) and in
/// the target's.
pub fn choose_trampoline(img: &ProcessImage, ours: &[(u64, u64)]) -> Result<u64, RestoreError> {
    let mut busy: Vec<(u64, u64)> = img.mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.extend_from_slice(ours);
    find_hole(&busy, TRAMPOLINE_LEN).ok_or_else(|| RestoreError::Invalid {
        pid: img.pid(),
        what: "no free address range for the restore trampoline".into(),
    })
}

/// The address ranges listed in `maps` (a /proc/PID/maps).
pub fn ranges(maps: &str) -> Vec<(u64, u64)> {
    parse_maps(maps).iter().map(|m| (m.start, m.end)).collect()
}

/// Unregisters the rseq area the child inherited from cryo (it points into memory that is
/// about to disappear).
pub fn drop_inherited_rseq(ctx: &mut Ctx) -> Result<(), RestoreError> {
    let pid = ctx.pid();
    let conf = crate::sys::ptrace::get_rseq(pid).map_err(|source| RestoreError::Sys {
        pid,
        what: "reading the inherited rseq registration".into(),
        source,
    })?;
    if conf.rseq_abi_pointer != 0 {
        ctx.defer(vec![Call::new(
            "rseq(unregister inherited)".into(),
            libc::SYS_rseq,
            [
                conf.rseq_abi_pointer,
                conf.rseq_abi_size as u64,
                RSEQ_FLAG_UNREGISTER,
                conf.signature as u64,
                0,
                0,
            ],
        )])?;
    }
    Ok(())
}

/// Unmaps everything the child inherited (`cur`, its maps) except the trampoline and the
/// kernel's special mappings, then moves those specials to the addresses the target had them
/// at. Returns where the vdso was, its length and where it went (`(from, len, to)`).
pub fn clear_and_move_specials(
    ctx: &mut Ctx,
    img: &ProcessImage,
    cur: &[CurMap],
) -> Result<Option<(u64, u64, u64)>, RestoreError> {
    let pid = ctx.pid();
    let tramp = (ctx.tramp, ctx.tramp + TRAMPOLINE_LEN);
    // One munmap per gap between what stays (the trampoline, the specials) rather than one per
    // inherited mapping: each munmap ends with a TLB flush (an IPI to every CPU that ran the
    // process), and a copy of cryo has a few dozen mappings.
    let mut stay: Vec<(u64, u64)> = cur
        .iter()
        .filter(|m| special_kind(&m.name).is_some())
        .map(|m| (m.start, m.end))
        .chain([tramp])
        .collect();
    stay.sort_unstable();
    let top = cur
        .iter()
        .filter(|m| m.start < 0xffff_ffff_ff60_0000)
        .map(|m| m.end)
        .max()
        .unwrap_or(0);
    let mut unmaps = Vec::new();
    let mut from = 0u64;
    // The last gap ends at the top of what is mapped.
    for (s, e) in stay.into_iter().chain([(top, top)]) {
        if s > from {
            unmaps.push(Call::new(
                format!("munmap({from:#x}-{s:#x}) of inherited mappings"),
                libc::SYS_munmap,
                [from, s - from, 0, 0, 0, 0],
            ));
        }
        from = from.max(e);
    }
    ctx.defer(unmaps)?;

    // Pair the child's specials with the target's by kind.
    let mut moves: Vec<(u64, u64, u64)> = Vec::new(); // (cur_start, len, dst)
    let mut unmap: Vec<(u64, u64)> = Vec::new();
    let mut vdso = None;
    for m in cur.iter() {
        let Some(kind) = special_kind(&m.name) else {
            continue;
        };
        match img.mm.vmas.iter().find(|v| v.kind() == kind) {
            Some(v) => {
                if v.end - v.start != m.end - m.start {
                    return Err(RestoreError::Invalid {
                        pid,
                        what: format!(
                            "{} is {} bytes here but was {} bytes at dump: checkpoint from another kernel",
                            m.name,
                            m.end - m.start,
                            v.end - v.start
                        ),
                    });
                }
                if kind == VmaKind::VmaVdso {
                    vdso = Some((m.start, m.end - m.start, v.start));
                }
                moves.push((m.start, m.end - m.start, v.start));
            }
            None => unmap.push((m.start, m.end)),
        }
    }
    // Unmaps and moves in one batch, in order.
    let mut calls: Vec<Call> = unmap
        .into_iter()
        .map(|(s, e)| {
            Call::new(
                format!("munmap({s:#x}-{e:#x}) of a special mapping the target lacked"),
                libc::SYS_munmap,
                [s, e - s, 0, 0, 0, 0],
            )
        })
        .collect();
    // Two phases, so that no move lands on a special that has not moved yet.
    let mut busy: Vec<(u64, u64)> = img.mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    busy.push(tramp);
    busy.extend(moves.iter().map(|&(s, l, _)| (s, s + l)));
    let mut staged = Vec::new();
    for &(s, len, dst) in &moves {
        if s == dst {
            continue;
        }
        let tmp = find_hole(&busy, len).ok_or_else(|| RestoreError::Invalid {
            pid,
            what: "no free range to stage the vdso move".into(),
        })?;
        busy.push((tmp, tmp + len));
        calls.push(mremap(s, len, tmp));
        staged.push((tmp, len, dst));
    }
    for (tmp, len, dst) in staged {
        calls.push(mremap(tmp, len, dst));
    }
    ctx.defer(calls)?;
    Ok(vdso)
}

fn mremap(from: u64, len: u64, to: u64) -> Call {
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
    Call::new(
        format!("mremap({from:#x}, {len:#x}) to {to:#x}"),
        libc::SYS_mremap,
        [from, len, len, flags, to, 0],
    )
    .expecting(to)
}

/// Whether restore writes page contents into this VMA (shared memory gets its contents
/// through its shared object, see [`super::shmem`]).
pub fn takes_pages(v: &Vma) -> bool {
    !is_special(v) && v.kind() != VmaKind::VmaFileShared && v.kind() != VmaKind::VmaAnonShared
}

/// Maps every saved VMA at its address. VMAs that receive page contents are mapped writable
/// for now; [`fix_protections`] sets the saved protections afterwards.
pub fn map_vmas(
    ctx: &mut Ctx,
    img: &ProcessImage,
    shared: &super::shmem::SharedMem,
) -> Result<(), RestoreError> {
    // Every mapped file opened once (read-write for writable shared mappings), all in one
    // batch; then every mapping in one batch; then the files closed.
    let mut wanted: Vec<(String, bool)> = Vec::new();
    for v in img.mm.vmas.iter().filter(|v| !is_special(v)) {
        if let Some(key) = file_key(v) {
            if !wanted.contains(&key) {
                wanted.push(key);
            }
        }
    }
    let opens: Vec<Call> = wanted
        .iter()
        .map(|(path, rw)| {
            let oflags = if *rw { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
            let mut p = path.as_bytes().to_vec();
            p.push(0);
            Call::with_data(
                format!("open({path}) for a mapping"),
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, 0, oflags as u64, 0, 0, 0],
                1,
                p,
            )
        })
        .collect();
    // (If an open fails, the restore fails and the process goes, with any fd opened before.)
    let fds = ctx.sys_batch(opens)?;
    let file_fds: HashMap<(String, bool), u64> = wanted.into_iter().zip(fds).collect();
    // The mappings and the closes run with the next call.
    map_vmas_inner(ctx, img, shared, &file_fds)?;
    let closes = file_fds
        .values()
        .map(|&fd| Call::new("close".into(), libc::SYS_close, [fd, 0, 0, 0, 0, 0]))
        .collect();
    ctx.defer(closes)
}

/// The file a file mapping is made from, and whether it is opened read-write.
fn file_key(v: &Vma) -> Option<(String, bool)> {
    match v.kind() {
        VmaKind::VmaFilePrivate | VmaKind::VmaFileShared => {
            let path = v.file.as_ref().map(|f| f.path.clone()).unwrap_or_default();
            let rw = v.kind() == VmaKind::VmaFileShared && v.prot & libc::PROT_WRITE as u32 != 0;
            Some((path, rw))
        }
        _ => None,
    }
}

fn map_vmas_inner(
    ctx: &mut Ctx,
    img: &ProcessImage,
    shared: &super::shmem::SharedMem,
    file_fds: &HashMap<(String, bool), u64>,
) -> Result<(), RestoreError> {
    let mut maps = Vec::new();
    for v in img.mm.vmas.iter().filter(|v| !is_special(v)) {
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        if takes_pages(v) {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
        }
        let mut flags = v.flags as u64 | libc::MAP_FIXED as u64;
        let (fd, off) = match v.kind() {
            VmaKind::VmaFilePrivate | VmaKind::VmaFileShared => {
                let fd = file_key(v)
                    .and_then(|k| file_fds.get(&k).copied())
                    .ok_or_else(|| RestoreError::Invalid {
                        pid: ctx.pid(),
                        what: format!("no file opened for the mapping at {:#x}", v.start),
                    })?;
                (fd, v.pgoff)
            }
            VmaKind::VmaAnonShared => {
                // The shared object was prepared by cryo and inherited at a known fd.
                let fd = shared.fd_for(v).ok_or_else(|| RestoreError::Invalid {
                    pid: ctx.pid(),
                    what: format!("no shared memory object for the VMA at {:#x}", v.start),
                })?;
                (fd as u64, v.pgoff)
            }
            _ => {
                flags |= libc::MAP_ANONYMOUS as u64;
                (u64::MAX, 0)
            }
        };
        let (start, end) = (v.start, v.end);
        maps.push(
            Call::new(
                format!("mmap({start:#x}-{end:#x}) {}", v.name),
                libc::SYS_mmap,
                [start, len, prot, flags, fd, off],
            )
            .expecting(start),
        );
    }
    ctx.defer(maps)
}

/// Reads every stored page run from the page store into place and checks its crc32c (see
/// [`super::fill`]: userfaultfd copies into private anonymous memory, no second pass over the
/// page store).
pub fn fill_pages(
    ctx: &mut Ctx,
    img: &ProcessImage,
    pages: Option<&crate::image::PagesLoc>,
) -> Result<(), RestoreError> {
    super::fill::fill_pages(ctx, img, pages)
}

/// Puts back the saved protections of VMAs that were mapped writable for filling.
pub fn fix_protections(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    let calls = img
        .mm
        .vmas
        .iter()
        .filter(|v| takes_pages(v) && v.prot & rw != rw)
        .map(|v| {
            let (s, e, prot) = (v.start, v.end, v.prot);
            Call::new(
                format!("mprotect({s:#x}-{e:#x}, {prot:#x})"),
                libc::SYS_mprotect,
                [s, e - s, prot as u64, 0, 0, 0],
            )
        })
        .collect();
    ctx.defer(calls)
}

/// PR_SET_MM_MAP: code/data/brk/stack/arg/env boundaries, auxv and the exe file.
pub fn set_mm_fields(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let mm = &img.mm;
    let exe = mm.exe.as_ref().map(|f| f.path.clone()).unwrap_or_default();
    let mut exe_fd = u64::MAX;
    if !exe.is_empty() {
        let p = ctx.put_path(0, &exe)?;
        exe_fd = ctx.sys(
            || format!("open({exe}) as exe"),
            libc::SYS_openat,
            [
                libc::AT_FDCWD as u64,
                p,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                0,
                0,
                0,
            ],
        )?;
    }
    let res = (|| {
        let mut auxv = Le::default();
        for a in &mm.auxv {
            auxv = auxv.u64(*a);
        }
        let auxv_addr = ctx.put(4096, &auxv.0)?;
        let map = Le::default()
            .u64(mm.start_code)
            .u64(mm.end_code)
            .u64(mm.start_data)
            .u64(mm.end_data)
            .u64(mm.start_brk)
            .u64(mm.brk)
            .u64(mm.start_stack)
            .u64(mm.arg_start)
            .u64(mm.arg_end)
            .u64(mm.env_start)
            .u64(mm.env_end)
            .u64(auxv_addr)
            .u32(auxv.0.len() as u32)
            .u32(exe_fd as u32);
        let map_len = map.0.len() as u64;
        let map_addr = ctx.put(2048, &map.0)?;
        ctx.sys(
            || "prctl(PR_SET_MM, PR_SET_MM_MAP)".into(),
            libc::SYS_prctl,
            [PR_SET_MM, PR_SET_MM_MAP, map_addr, map_len, 0, 0],
        )
        .map(drop)
    })();
    if exe_fd != u64::MAX {
        ctx.defer(vec![Call::new(
            "close(exe)".into(),
            libc::SYS_close,
            [exe_fd, 0, 0, 0, 0, 0],
        )])?;
    }
    res
}
