//! Unix sockets at restore. A connected pair is one `socketpair` (its object id names it);
//! each end takes one side, and a pair whose other end had been closed gets that side closed
//! when the fd table is done, which leaves the survivor shut down as it was. An unconnected
//! end bound to an abstract name (an autobind) is bound to it again. An unconnected
//! socket is created and bound to its name: a stale socket file of the dead original at the
//! path is removed first, the new one gets the old mode and owner, and a socket whose file had
//! been removed has it removed again. A listening socket listens with its backlog. A datagram
//! socket connected outside the checkpoint (`--ext-unix-sk`) is connected to its peer's name.
//!
//! Queued messages are sent again from the peer once every fd is in place (phase 3 of
//! [`super::files`]), one send per datagram or packet so boundaries are kept; then shutdowns
//! are applied and the peek offset is set.

use super::files::{set_flags, Descriptions, Inode};
use crate::proto::{fd_entry::State, FdEntry, FdKind, UnixSocketState};
use crate::sys::files_ffi as ffi;
use crate::sys::task;
use std::os::fd::RawFd;

/// sock_diag's state of a listening socket.
const TCP_LISTEN: u32 = 10;

fn state(f: &FdEntry) -> Option<&UnixSocketState> {
    match &f.state {
        Some(State::UnixSocket(s)) => Some(s),
        _ => None,
    }
}

/// Binds `fd` to the saved name; for a path, replaces the original's stale socket file and
/// gives the new one the saved mode and owner. A relative name is bound from the directory it
/// was found in at dump (the cwd is put back after).
fn bind_named(f: &FdEntry, fd: RawFd, s: &UnixSocketState) -> Result<(), String> {
    if s.name[0] == 0 {
        return ffi::unix_bind(fd, &s.name)
            .map_err(|e| format!("fd {}: binding to an abstract name: {e}", f.fd));
    }
    let name = String::from_utf8_lossy(&s.name).into_owned();
    let path = if s.bind_dir.is_empty() {
        name.clone()
    } else {
        format!("{}/{name}", s.bind_dir.trim_end_matches('/'))
    };
    match ffi::stat_path(&path) {
        Ok(st)
            if st.st_mode & libc::S_IFMT == libc::S_IFSOCK
                && s.file_ino != 0
                && st.st_ino == s.file_ino =>
        {
            ffi::unlink(&path)
                .map_err(|e| format!("fd {}: removing the old socket file {path}: {e}", f.fd))?;
        }
        Ok(_) => {
            return Err(format!(
                "fd {}: cannot bind to {path}: another file is there now",
                f.fd
            ))
        }
        Err(_) => {}
    }
    let bound = if s.bind_dir.is_empty() {
        ffi::unix_bind(fd, &s.name)
    } else {
        let old =
            std::env::current_dir().map_err(|e| format!("fd {}: reading the cwd: {e}", f.fd))?;
        std::env::set_current_dir(&s.bind_dir)
            .map_err(|e| format!("fd {}: entering {}: {e}", f.fd, s.bind_dir))?;
        let bound = ffi::unix_bind(fd, &s.name);
        std::env::set_current_dir(&old)
            .map_err(|e| format!("fd {}: going back to {}: {e}", f.fd, old.display()))?;
        bound
    };
    bound.map_err(|e| format!("fd {}: binding to {path}: {e}", f.fd))?;
    let fix = || -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if s.file_ino == 0 {
            return std::fs::remove_file(&path);
        }
        std::os::unix::fs::chown(&path, Some(s.file_uid), Some(s.file_gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(s.file_mode & 0o7777))
    };
    fix().map_err(|e| format!("fd {}: restoring the socket file {path}: {e}", f.fd))
}

/// Sets the buffer sizes and SO_PASSCRED as saved.
fn set_options(f: &FdEntry, fd: RawFd, s: &UnixSocketState) -> Result<(), String> {
    let e = |what: &'static str| move |err| format!("fd {}: {what}: {err}", f.fd);
    let sol = libc::SOL_SOCKET;
    // The kernel doubles what it is given; *BUFFORCE passes the system maximum (we are root).
    for (get, set, want) in [
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, s.sndbuf),
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, s.rcvbuf),
    ] {
        if want > 0 && ffi::sockopt_int(fd, sol, get).map_err(e("reading a buffer size"))? != want {
            ffi::set_sockopt_int(fd, sol, set, want / 2).map_err(e("setting a buffer size"))?;
        }
    }
    if s.passcred {
        ffi::set_sockopt_int(fd, sol, libc::SO_PASSCRED, 1).map_err(e("setting SO_PASSCRED"))?;
    }
    Ok(())
}

/// Creates the description of unix socket `f` (the first fd that has it).
pub fn create(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let s = state(f).ok_or_else(|| format!("fd {}: no saved socket state", f.fd))?;
    let kind = s.r#type | libc::SOCK_CLOEXEC;
    let fd = if s.peer_ino != 0 || s.peer_closed {
        if !descs.inodes.contains_key(&f.inode_id) {
            let (a, b) = ffi::unix_socketpair(kind)
                .map_err(|e| format!("fd {}: creating a socket pair: {e}", f.fd))?;
            let a = descs.keep(a, "a socket").inspect_err(|_| task::close(b))?;
            let b = descs.keep(b, "a socket").inspect_err(|_| task::close(a))?;
            descs.inodes.insert(
                f.inode_id,
                Inode::SocketPair {
                    ends: [a, b],
                    takers: [0, 0],
                },
            );
        }
        let Some(Inode::SocketPair { ends, takers }) = descs.inodes.get_mut(&f.inode_id) else {
            return Err(format!("fd {}: its socket pair is not a pair", f.fd));
        };
        let slot = takers
            .iter()
            .position(|&t| t == 0)
            .ok_or_else(|| format!("fd {}: a third socket in a pair", f.fd))?;
        takers[slot] = s.ino;
        let end = ends[slot];
        let fd = task::dup_above(end, 0).map_err(|e| format!("fd {}: {e}", f.fd))?;
        let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
        if !s.name.is_empty() {
            ffi::unix_bind(fd, &s.name)
                .inspect_err(|_| task::close(fd))
                .map_err(|e| format!("fd {}: binding to an abstract name: {e}", f.fd))?;
        }
        fd
    } else {
        let fd = ffi::unix_socket(kind).map_err(|e| format!("fd {}: socket: {e}", f.fd))?;
        let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
        if !s.name.is_empty() {
            bind_named(f, fd, s).inspect_err(|_| task::close(fd))?;
        }
        if !s.ext_peer.is_empty() {
            ffi::unix_connect(fd, &s.ext_peer)
                .inspect_err(|_| task::close(fd))
                .map_err(|e| {
                    format!(
                        "fd {}: connecting to {} outside the checkpoint again: {e}",
                        f.fd,
                        String::from_utf8_lossy(&s.ext_peer)
                    )
                })?;
        }
        if s.state == TCP_LISTEN {
            ffi::listen(fd, s.backlog as i32)
                .inspect_err(|_| task::close(fd))
                .map_err(|e| format!("fd {}: listen: {e}", f.fd))?;
        }
        fd
    };
    set_options(f, fd, s)
        .and_then(|()| set_flags(fd, f))
        .inspect_err(|_| task::close(fd))?;
    Ok(fd)
}

/// Sends `msgs` from `from`, one send per message, all of each.
fn send_all(f: &FdEntry, from: RawFd, msgs: &[Vec<u8>], stream: bool) -> Result<(), String> {
    for m in msgs {
        let mut off = 0;
        loop {
            let n = ffi::send(from, &m[off..])
                .map_err(|e| format!("fd {}: sending {} queued bytes back: {e}", f.fd, m.len()))?;
            off += n;
            if off >= m.len() {
                break;
            }
            if !stream {
                return Err(format!(
                    "fd {}: a queued message of {} bytes went out in part",
                    f.fd,
                    m.len()
                ));
            }
        }
    }
    Ok(())
}

/// Phase 3: refills every socket's queue from its peer, then applies shutdowns and peek
/// offsets. In a restore child (`placed`) the fds are at their saved numbers by now, and the
/// sockets cryo made before the fork (shared with other processes) are left alone: cryo
/// refilled those itself, calling this on its own descriptions (`placed` false).
pub fn fill_and_shut(fds: &[FdEntry], descs: &Descriptions, placed: bool) -> Result<(), String> {
    let fd_of = |f: &FdEntry| -> Option<RawFd> {
        if placed {
            Some(f.fd)
        } else {
            descs.fd_of(f)
        }
    };
    let sockets = || {
        fds.iter()
            .filter(|f| f.kind() == FdKind::FdUnix)
            .filter(|f| !(placed && descs.is_shared(f)))
            .filter_map(|f| state(f).map(|s| (f, s)))
    };
    for (f, s) in sockets().filter(|(_, s)| !s.queue.is_empty()) {
        let from = if s.peer_closed {
            match descs.inodes.get(&f.inode_id) {
                Some(Inode::SocketPair { ends, takers }) => {
                    let i = takers.iter().position(|&t| t != s.ino).unwrap_or(1);
                    ends[i]
                }
                _ => return Err(format!("fd {}: its socket pair is gone", f.fd)),
            }
        } else {
            sockets()
                .find(|(_, p)| p.ino == s.peer_ino)
                .and_then(|(p, _)| fd_of(p))
                .ok_or_else(|| format!("fd {}: its peer is not in the checkpoint", f.fd))?
        };
        send_all(f, from, &s.queue, s.r#type == libc::SOCK_STREAM)?;
    }
    for (f, s) in sockets() {
        let Some(fd) = fd_of(f) else { continue };
        let how = match s.shutdown & 3 {
            1 => Some(libc::SHUT_RD),
            2 => Some(libc::SHUT_WR),
            3 => Some(libc::SHUT_RDWR),
            _ => None,
        };
        if let Some(how) = how {
            ffi::shutdown(fd, how).map_err(|e| format!("fd {}: shutdown: {e}", f.fd))?;
        }
        if s.peek_off >= 0 {
            ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, s.peek_off)
                .map_err(|e| format!("fd {}: setting SO_PEEK_OFF: {e}", f.fd))?;
        }
    }
    Ok(())
}
