//! Files whose contents come from the checkpoint: regular files deleted while open, and
//! memfds. A deleted file is recreated under a temporary name in its old directory, filled,
//! given its owner and mode, opened once per saved description, and unlinked when the fd
//! table is done (also when the restore fails). A memfd is created with its name, filled, and
//! sealed after its descriptions are open.

use super::files::{Descriptions, Inode, REOPEN_FLAGS};
use crate::proto::{fd_entry::State, FdEntry, FdKind, FileData};
use crate::sys::files_ffi as ffi;
use crate::sys::task;
use std::os::fd::RawFd;

/// The directory a deleted file lived in.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// A deleted file needs its old directory to be recreated in.
pub fn preflight(f: &FdEntry) -> Result<(), String> {
    let dir = parent(&f.path);
    match ffi::stat_path(dir) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => Ok(()),
        _ => Err(format!(
            "fd {}: the directory {dir} of the deleted file {} is gone; it is recreated there",
            f.fd, f.path
        )),
    }
}

/// Creates the deleted file of `f` under a fresh temporary name beside its old one.
fn create_temp(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let dir = parent(&f.path);
    let pid = std::process::id();
    for n in 0..1000 {
        let tmp = format!("{dir}/.cryo-deleted-{}-{pid}-{n}", f.ino);
        match task::open(
            &tmp,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        ) {
            Ok(fd) => {
                descs.temp_paths.push(tmp);
                return Ok(fd);
            }
            Err(e) if e.errno == libc::EEXIST => continue,
            Err(e) => {
                return Err(format!(
                    "fd {}: recreating the deleted file {} as {tmp}: {e}",
                    f.fd, f.path
                ))
            }
        }
    }
    Err(format!(
        "fd {}: no free temporary name in {dir} for the deleted file {}",
        f.fd, f.path
    ))
}

/// Writes the saved contents and gives the file its owner and mode.
fn fill(f: &FdEntry, fd: RawFd, d: &FileData) -> Result<(), String> {
    let err = |what: &'static str| move |e| format!("fd {}: {what} of {}: {e}", f.fd, f.path);
    ffi::write_all(fd, &d.contents).map_err(err("writing the saved contents"))?;
    ffi::chown_fd(fd, d.uid, d.gid).map_err(err("restoring the owner"))?;
    ffi::chmod_fd(fd, f.mode & 0o7777).map_err(err("restoring the mode"))
}

/// The description of `f`, a deleted file or a memfd, creating the file on its first fd.
pub fn open_file(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    if !descs.inodes.contains_key(&f.inode_id) {
        let Some(State::FileData(d)) = &f.state else {
            return Err(format!("fd {}: no saved contents", f.fd));
        };
        let fd = if f.kind() == FdKind::FdMemfd {
            ffi::memfd_create(&d.name, libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
                .map_err(|e| format!("fd {}: creating memfd {:?}: {e}", f.fd, d.name))?
        } else {
            create_temp(f, descs)?
        };
        let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
        descs.inodes.insert(f.inode_id, Inode::File(fd));
        fill(f, fd, d)?;
        if f.kind() == FdKind::FdMemfd && d.seals != 0 {
            descs.seals.push((fd, d.seals));
        }
    }
    let Some(Inode::File(file)) = descs.inodes.get(&f.inode_id) else {
        return Err(format!("fd {}: its file is not a file", f.fd));
    };
    let flags = f.flags as i32 & REOPEN_FLAGS;
    let fd = task::open(&format!("/proc/self/fd/{file}"), flags, 0)
        .map_err(|e| format!("fd {}: opening {}: {e}", f.fd, f.path))?;
    let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
    if flags & libc::O_PATH == 0 {
        task::seek(fd, f.pos)
            .map_err(|e| format!("fd {}: seeking {} to {}: {e}", f.fd, f.path, f.pos))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent("/tmp/x"), "/tmp");
        assert_eq!(parent("/x"), "/");
        assert_eq!(parent("x"), ".");
        assert_eq!(parent("/a/b/c"), "/a/b");
    }
}
