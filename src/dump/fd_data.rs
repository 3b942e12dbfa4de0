//! Contents of files that exist nowhere but in the process: regular files deleted while open,
//! and memfds (with their seals and name). They are read through a new read-only open of
//! /proc/PID/fd/N with pread, which leaves the target's own descriptions (and their offsets)
//! untouched. Larger files than a checkpoint record holds are refused.

use super::files::FdRef;
use super::DumpError;
use crate::proto::{FdKind, FileData};
use crate::sys::files_ffi as ffi;
use std::os::fd::AsRawFd;

/// Largest file saved with the checkpoint (one record of fds-PID.img holds it; records are
/// limited to 16 MiB).
pub const MAX_FILE_BYTES: u64 = 15 << 20;

/// `TMPFS_MAGIC`: where memfds live (hugetlbfs memfds are refused).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The contents (and for a memfd its seals and name) of the file at `r`, `size` bytes long.
pub fn file_data(r: &FdRef, kind: FdKind, size: u64) -> Result<FileData, DumpError> {
    if size > MAX_FILE_BYTES {
        return Err(r.refuse(format!(
            "{size} bytes: a {} is saved whole in the checkpoint, which holds at most \
             {MAX_FILE_BYTES} bytes per file",
            if kind == FdKind::FdMemfd {
                "memfd"
            } else {
                "file deleted while open"
            }
        )));
    }
    let proc_path = format!("/proc/{}/fd/{}", r.pid, r.fd);
    let file = std::fs::File::open(&proc_path)
        .map_err(|e| r.refuse(format!("opening {proc_path} to read its contents: {e}")))?;
    let fd = file.as_raw_fd();
    let st = ffi::fstat(fd).map_err(r.sys("fstat"))?;
    if kind == FdKind::FdUnlinked && st.st_nlink != 0 {
        return Err(r.refuse(format!(
            "deleted under this name but still linked elsewhere ({} links): not supported yet",
            st.st_nlink
        )));
    }
    let mut seals = 0;
    let mut name = String::new();
    if kind == FdKind::FdMemfd {
        let fs = ffi::fs_type(fd).map_err(r.sys("fstatfs"))?;
        if fs != TMPFS_MAGIC {
            return Err(r.refuse(format!(
                "a memfd on a filesystem of type {fs:#x} (hugetlb?) is not supported"
            )));
        }
        seals = ffi::seals(fd).map_err(r.sys("reading its seals"))?;
        name = memfd_name(r.target).to_string();
    }
    let size = st.st_size as u64;
    if size > MAX_FILE_BYTES {
        return Err(r.refuse(format!("{size} bytes: more than a checkpoint holds")));
    }
    let mut contents = vec![0u8; size as usize];
    let mut got = 0usize;
    while got < contents.len() {
        let n = ffi::pread(fd, &mut contents[got..], got as u64)
            .map_err(r.sys("reading its contents"))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    contents.truncate(got);
    tracing::debug!(
        pid = r.pid,
        fd = r.fd,
        bytes = got,
        seals,
        "file contents saved"
    );
    Ok(FileData {
        contents,
        seals,
        name,
        uid: st.st_uid,
        gid: st.st_gid,
    })
}

/// The name a memfd was created with, from its link target `/memfd:NAME (deleted)`.
pub fn memfd_name(target: &str) -> &str {
    let t = target.strip_prefix("/memfd:").unwrap_or(target);
    t.strip_suffix(" (deleted)").unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_names() {
        assert_eq!(memfd_name("/memfd:hello world (deleted)"), "hello world");
        assert_eq!(memfd_name("/memfd: (deleted)"), "");
        assert_eq!(memfd_name("/memfd:x"), "x");
    }
}
