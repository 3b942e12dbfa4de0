//! Shared anonymous memory. A MAP_SHARED|MAP_ANONYMOUS mapping is a shmem object that one or
//! several processes map; the dump names it by (dev, inode) and each process stores the pages
//! it had present. Before forking anything, cryo creates one memfd per object, writes every
//! stored page of every process into it at the page's offset in the object, and places it at
//! an fd number above every saved fd. Every restored process inherits it (they are all forks
//! of cryo), maps it where the VMA was, and closes it; so the processes share the memory again
//! instead of getting copies.

use super::{ProcessImage, RestoreError};
use crate::image::{PageStore, PagesLoc};
use crate::proto::{Vma, VmaKind};
use crate::sys::{task, PAGE_SIZE};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

/// The shared memory objects of a checkpoint, ready to be inherited.
#[derive(Default)]
pub struct SharedMem {
    by_id: BTreeMap<(u64, u64), (File, RawFd)>,
}

fn key(v: &Vma) -> Option<(u64, u64)> {
    (v.kind() == VmaKind::VmaAnonShared)
        .then(|| v.file.as_ref().map(|f| (f.dev, f.ino)))
        .flatten()
}

impl SharedMem {
    /// Creates and fills the objects; `fd_base` is the lowest fd number they may take.
    pub fn prepare(
        images: &BTreeMap<i32, ProcessImage>,
        pages: &BTreeMap<i32, PagesLoc>,
        fd_base: RawFd,
    ) -> Result<Self, RestoreError> {
        let mut sizes: BTreeMap<(u64, u64), u64> = BTreeMap::new();
        for img in images.values() {
            for v in &img.mm.vmas {
                if let Some(k) = key(v) {
                    let end = v.pgoff + (v.end - v.start);
                    let e = sizes.entry(k).or_default();
                    *e = (*e).max(end);
                }
            }
        }
        let mut me = SharedMem::default();
        for (k, size) in sizes {
            let what = format!("shared memory object {}:{}", k.0, k.1);
            let file = task::memfd_create("cryo-shmem").map_err(|source| RestoreError::Sys {
                pid: 0,
                what: format!("creating a memfd for {what}"),
                source,
            })?;
            file.set_len(size).map_err(|source| RestoreError::Io {
                path: what.clone(),
                source,
            })?;
            let fd =
                task::dup_above(file.as_raw_fd(), fd_base).map_err(|source| RestoreError::Sys {
                    pid: 0,
                    what: format!("placing {what}"),
                    source,
                })?;
            me.by_id.insert(k, (file, fd));
        }
        for img in images.values() {
            let mut store: Option<PageStore> = None;
            for run in &img.pagemap {
                let Some(v) = img
                    .mm
                    .vmas
                    .iter()
                    .find(|v| v.start <= run.vaddr && run.vaddr < v.end)
                else {
                    continue;
                };
                let Some((file, _)) = key(v).and_then(|k| me.by_id.get(&k)) else {
                    continue;
                };
                let store = match &mut store {
                    Some(s) => s,
                    None => {
                        let loc = pages.get(&img.pid()).ok_or_else(|| RestoreError::Invalid {
                            pid: img.pid(),
                            what: "page runs without a page store".into(),
                        })?;
                        store.insert(PageStore::open_at(loc)?)
                    }
                };
                let mut buf = vec![0u8; (run.nr_pages * PAGE_SIZE) as usize];
                store.read_exact_at(&mut buf, run.offset)?;
                // Page data is checked as it is read (restore no longer reads it twice).
                if crc32c::crc32c(&buf) != run.crc32c {
                    return Err(RestoreError::Invalid {
                        pid: img.pid(),
                        what: format!(
                            "{}: page data at offset {:#x} (address {:#x}) does not match its checksum",
                            store.path().display(),
                            run.offset,
                            run.vaddr
                        ),
                    });
                }
                file.write_all_at(&buf, v.pgoff + (run.vaddr - v.start))
                    .map_err(|source| RestoreError::Io {
                        path: format!("memfd of the shared memory at {:#x}", v.start),
                        source,
                    })?;
            }
        }
        Ok(me)
    }

    /// The inherited fd number of the object behind a shared anonymous VMA.
    pub fn fd_for(&self, v: &Vma) -> Option<RawFd> {
        key(v).and_then(|k| self.by_id.get(&k)).map(|(_, fd)| *fd)
    }

    /// Every inherited fd number.
    pub fn fds(&self) -> Vec<RawFd> {
        self.by_id.values().map(|(_, fd)| *fd).collect()
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        for (_, fd) in self.by_id.values() {
            task::close(*fd);
        }
    }
}
