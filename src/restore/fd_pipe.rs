//! Pipes and FIFOs at restore: a pipe is created once per saved pipe (`inode_id`), sized and
//! refilled with its saved bytes; its first read-only and first write-only descriptions are
//! its two ends, any further description is a new open of it through /proc/self/fd. A FIFO
//! is reopened by path while a helper fd holds it open for reading and writing, so that no
//! open blocks or fails for want of a peer; the helper also puts the saved bytes back.
//!
//! A FIFO's buffer outlives the process only when someone else has the FIFO open: if it
//! already holds bytes at restore, those are someone else's and the restore is refused rather
//! than mixing the two.

use super::files::{set_flags, Descriptions, Inode, REOPEN_FLAGS, SETFL_FLAGS};
use crate::proto::{fd_entry::State, FdEntry, PipeData};
use crate::sys::files_ffi as ffi;
use crate::sys::task;
use std::os::fd::RawFd;

/// Sizes pipe `w` as saved and writes the saved bytes into it.
fn fill(fd_no: i32, w: RawFd, d: &PipeData) -> Result<(), String> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e| format!("fd {fd_no}: {what}: {e}")
    };
    let now = ffi::pipe_size(w).map_err(err("reading the pipe size"))?;
    if d.buf_size != 0 && d.buf_size != now {
        ffi::set_pipe_size(w, d.buf_size)
            .map_err(err(&format!("setting the pipe size to {}", d.buf_size)))?;
    }
    if !d.data.is_empty() {
        // Never block: the bytes fit, since they were in a pipe of this size.
        ffi::set_status_flags(w, libc::O_WRONLY | libc::O_NONBLOCK)
            .map_err(err("making the pipe non-blocking"))?;
        ffi::write_all(w, &d.data).map_err(err(&format!(
            "writing {} saved bytes back into the pipe",
            d.data.len()
        )))?;
    }
    Ok(())
}

/// Reopens the pipe behind `fd` as a new description with access mode `acc`.
fn reopen(f: &FdEntry, fd: RawFd, acc: i32) -> Result<RawFd, String> {
    task::open(
        &format!("/proc/self/fd/{fd}"),
        acc | libc::O_NONBLOCK | libc::O_CLOEXEC,
        0,
    )
    .map_err(|e| format!("fd {}: opening another description of its pipe: {e}", f.fd))
}

/// The description of pipe end `f`, creating the pipe on its first end.
pub fn open_pipe_end(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    if !descs.inodes.contains_key(&f.inode_id) {
        let (r, w) = ffi::pipe2(libc::O_CLOEXEC)
            .map_err(|e| format!("fd {}: creating a pipe: {e}", f.fd))?;
        let r = descs
            .keep(r, "a pipe's read end")
            .inspect_err(|_| task::close(w))?;
        let w = descs
            .keep(w, "a pipe's write end")
            .inspect_err(|_| task::close(r))?;
        descs.inodes.insert(
            f.inode_id,
            Inode::Pipe {
                r,
                w,
                r_taken: false,
                w_taken: false,
            },
        );
        if let Some(State::PipeData(d)) = &f.state {
            fill(f.fd, w, d)?;
        }
    }
    let Some(Inode::Pipe {
        r,
        w,
        r_taken,
        w_taken,
    }) = descs.inodes.get_mut(&f.inode_id)
    else {
        return Err(format!("fd {}: its pipe is not a pipe", f.fd));
    };
    let acc = f.flags as i32 & libc::O_ACCMODE;
    let fd = match acc {
        libc::O_RDONLY if !*r_taken => {
            *r_taken = true;
            task::dup_above(*r, 0).map_err(|e| format!("fd {}: {e}", f.fd))?
        }
        libc::O_WRONLY if !*w_taken => {
            *w_taken = true;
            task::dup_above(*w, 0).map_err(|e| format!("fd {}: {e}", f.fd))?
        }
        _ => reopen(f, *r, acc)?,
    };
    let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
    set_flags(fd, f)?;
    Ok(fd)
}

/// The description of FIFO `f`, opened by path.
pub fn open_fifo(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let open_helper = || {
        task::open(
            &f.path,
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| format!("fd {}: opening the FIFO {}: {e}", f.fd, f.path))
    };
    // Images without object ids: a helper for this open only.
    let mut own_helper = None;
    if f.inode_id == 0 {
        own_helper = Some(open_helper()?);
    } else if !descs.inodes.contains_key(&f.inode_id) {
        let h = open_helper()?;
        let h = descs.keep(h, &format!("fd {}", f.fd))?;
        descs.inodes.insert(f.inode_id, Inode::File(h));
        if let Some(State::PipeData(d)) = &f.state {
            if !d.data.is_empty() {
                let queued = ffi::bytes_queued(h)
                    .map_err(|e| format!("fd {}: reading the FIFO's byte count: {e}", f.fd))?;
                if queued != 0 {
                    return Err(format!(
                        "fd {}: the FIFO {} already holds {queued} bytes: it is open outside \
                         the checkpoint, so its saved {} bytes cannot be put back exactly",
                        f.fd,
                        f.path,
                        d.data.len()
                    ));
                }
            }
            fill(f.fd, h, d)?;
        }
    }
    let flags = f.flags as i32 & REOPEN_FLAGS;
    let opened = task::open(&f.path, flags | libc::O_NONBLOCK, 0)
        .map_err(|e| format!("fd {}: reopening the FIFO {}: {e}", f.fd, f.path));
    if let Some(h) = own_helper {
        task::close(h);
    }
    let fd = descs.keep(opened?, &format!("fd {}", f.fd))?;
    ffi::set_status_flags(fd, flags & SETFL_FLAGS)
        .map_err(|e| format!("fd {}: restoring the flags of {}: {e}", f.fd, f.path))?;
    Ok(fd)
}
