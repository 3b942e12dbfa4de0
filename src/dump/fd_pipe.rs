//! Pipes and FIFOs at dump: the bytes in a pipe's buffer and its size. The buffer is read
//! without consuming it: a copy of a readable end is taken with pidfd_getfd and tee(2)'d into
//! a scratch pipe, which cryo then reads, so the target's pipe is left exactly as it was.
//!
//! Also the whole-table check that an anonymous pipe has both ends in the process: an end
//! whose peer lives elsewhere cannot be given back a peer at restore, so it is refused.

use super::files::FdRef;
use super::DumpError;
use crate::proto::{FdEntry, FdKind, PipeData};
use crate::sys::files_ffi as ffi;
use std::os::fd::{AsRawFd, OwnedFd};

/// Largest pipe buffer saved (one record of fds-PID.img holds it; records are limited to
/// 16 MiB).
pub const MAX_PIPE_BYTES: usize = 15 << 20;

fn readable(e: &FdEntry) -> bool {
    e.flags as i32 & libc::O_ACCMODE != libc::O_WRONLY
}

fn writable(e: &FdEntry) -> bool {
    e.flags as i32 & libc::O_ACCMODE != libc::O_RDONLY
}

/// Refuses an anonymous pipe unless the checkpoint holds both a readable and a writable end
/// of it (in one process or in two). `fds` are every process's fds, with ids numbered across
/// the checkpoint.
pub fn check_pipe_ends(fds: &[(i32, Vec<FdEntry>)]) -> Result<(), DumpError> {
    for (pid, list) in fds {
        for e in list.iter().filter(|e| e.kind() == FdKind::FdPipe) {
            let ends = fds
                .iter()
                .flat_map(|(_, l)| l.iter())
                .filter(|p| p.kind() == FdKind::FdPipe && p.inode_id == e.inode_id);
            let (mut r, mut w) = (false, false);
            for p in ends {
                r |= readable(p);
                w |= writable(p);
            }
            if !(r && w) {
                let (has, lacks) = if r {
                    ("read", "write")
                } else {
                    ("write", "read")
                };
                return Err(DumpError::Unsupported {
                    pid: *pid,
                    what: format!(
                        "fd {} ({}): the {has} end of a pipe whose {lacks} end is not in the \
                         checkpoint; a pipe is supported when both its ends are dumped",
                        e.fd, e.path
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The buffer and size of the pipe or FIFO `inode_id`, read through its first readable fd.
/// `None` for a FIFO the process only writes to: its buffer belongs to readers elsewhere and
/// outlives the process.
pub fn pipe_data(
    pid: i32,
    pidfd: &OwnedFd,
    fds: &[FdEntry],
    inode_id: u32,
) -> Result<Option<PipeData>, DumpError> {
    let Some(e) = fds.iter().find(|e| e.inode_id == inode_id && readable(e)) else {
        return Ok(None);
    };
    let r = FdRef::new(pid, e.fd, &e.path, pidfd);
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let buf_size = ffi::pipe_size(fd).map_err(r.sys("reading the pipe size"))?;
    let queued = ffi::bytes_queued(fd).map_err(r.sys("reading the pipe's byte count"))?;
    if queued > MAX_PIPE_BYTES {
        return Err(r.refuse(format!(
            "{queued} bytes in the pipe, more than the {MAX_PIPE_BYTES} a checkpoint holds"
        )));
    }
    let data = if queued == 0 {
        Vec::new()
    } else {
        let packet = fds
            .iter()
            .any(|p| p.inode_id == inode_id && p.flags as i32 & libc::O_DIRECT != 0);
        if packet {
            return Err(r.refuse(
                "a packet-mode (O_DIRECT) pipe with data in it: packet boundaries cannot be read",
            ));
        }
        peek(&r, fd, queued, buf_size)?
    };
    tracing::debug!(pid, fd = e.fd, bytes = data.len(), buf_size, "pipe buffer");
    Ok(Some(PipeData { data, buf_size }))
}

/// Reads the `queued` bytes of pipe `fd` without consuming them: tee into a scratch pipe as
/// large as the original, then read that.
fn peek(r: &FdRef, fd: i32, queued: usize, buf_size: u32) -> Result<Vec<u8>, DumpError> {
    let (sr, sw) = ffi::owned_pipe().map_err(r.sys("creating a scratch pipe"))?;
    let have = ffi::pipe_size(sw.as_raw_fd()).map_err(r.sys("sizing the scratch pipe"))?;
    if have < buf_size {
        ffi::set_pipe_size(sw.as_raw_fd(), buf_size).map_err(r.sys("sizing the scratch pipe"))?;
    }
    let n = ffi::tee(fd, sw.as_raw_fd(), queued).map_err(r.sys("tee of the pipe's buffer"))?;
    if n != queued {
        return Err(r.refuse(format!("tee copied {n} of the {queued} bytes in the pipe")));
    }
    let mut data = vec![0u8; queued];
    let mut got = 0;
    while got < queued {
        match ffi::read(sr.as_raw_fd(), &mut data[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) => return Err(r.sys("reading the scratch pipe")(e)),
        }
    }
    if got != queued {
        return Err(r.refuse(format!("read {got} of the {queued} bytes in the pipe")));
    }
    Ok(data)
}
