//! Unix sockets at dump: type, state, bound name (a path, with its socket file, or an abstract
//! name), peer, receive queue, shutdown state, listen backlog and the options restore sets
//! back (buffer sizes, SO_PASSCRED, SO_PEEK_OFF). The peer, the backlog and pending
//! connections come from sock_diag; the queue is read without consuming it, with MSG_PEEK on
//! a pidfd_getfd copy at a peek offset that walks the queue (the socket's own SO_PEEK_OFF is
//! put back afterwards), so datagram and packet boundaries are kept.
//!
//! Supported: connected pairs whose both ends are in the checkpoint, in one process or two
//! (socketpair, or a stream half whose peer was closed), unconnected sockets (bound to a path or an abstract name, or not),
//! listening sockets without connections waiting, and with `--ext-unix-sk` a datagram socket
//! connected to a named socket outside (restore connects it to that name again; datagrams
//! carry no connection state). Refused, naming the socket: any other peer outside the
//! process (a stream's peer holds state of the connection that cannot be recreated),
//! connected sockets bound to paths, queued data on an unconnected datagram socket
//! (its senders cannot be recreated), connections waiting to be accepted, fds in flight
//! (SCM_RIGHTS).

use super::fd_event::kernel_dev_to_user;
use super::files::FdRef;
use super::proc::FdInfo;
use super::DumpError;
use crate::proto::{fd_entry::State, FdEntry, FdKind, UnixSocketState};
use crate::sys::files_ffi as ffi;
use std::os::fd::AsRawFd;

/// sock_diag states.
const TCP_ESTABLISHED: u8 = 1;
const TCP_LISTEN: u8 = 10;

/// Largest datagram read from a queue.
const MAX_DGRAM: usize = 4 << 20;
/// Most datagrams read from one queue.
const MAX_DGRAMS: usize = 1 << 16;
/// Most bytes saved from one queue (a record of fds-PID.img must hold them).
const MAX_QUEUE_BYTES: usize = 15 << 20;

/// The address family of the socket at `r` (SO_DOMAIN of a copy).
pub fn domain(r: &FdRef) -> Result<i32, DumpError> {
    let copy = r.copy()?;
    ffi::socket_domain(copy.as_raw_fd()).map_err(r.sys("reading its address family"))
}

/// A short name of an address family, for messages.
pub fn family_name(domain: i32) -> String {
    match domain {
        libc::AF_UNIX => "unix".into(),
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        d => format!("family {d}"),
    }
}

/// The state of unix socket `r`, whose inode is `ino`.
pub fn unix_socket(r: &FdRef, info: &FdInfo, ino: u64) -> Result<UnixSocketState, DumpError> {
    if let Some((_, v)) = info.extra.iter().find(|(k, _)| k == "scm_fds") {
        if v.trim() != "0" {
            return Err(r.refuse(format!(
                "{} fds in flight (SCM_RIGHTS) in its queue cannot be restored",
                v.trim()
            )));
        }
    }
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let opt = |name: i32, what: &'static str| {
        ffi::sockopt_int(fd, libc::SOL_SOCKET, name).map_err(r.sys(what))
    };
    let kind = opt(libc::SO_TYPE, "reading its type")?;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&kind) {
        return Err(r.refuse(format!("unix socket type {kind} is not supported")));
    }
    let diag = diag_in(r.pid, ino as u32).map_err(r.sys("asking sock_diag about it"))?;
    let name = ffi::unix_name(fd).map_err(r.sys("reading its name"))?;
    let shutdown = u32::from(diag.shutdown.unwrap_or(0));
    let mut s = UnixSocketState {
        r#type: kind,
        state: u32::from(diag.state),
        name,
        ino,
        shutdown,
        sndbuf: opt(libc::SO_SNDBUF, "reading SO_SNDBUF")?,
        rcvbuf: opt(libc::SO_RCVBUF, "reading SO_RCVBUF")?,
        passcred: opt(libc::SO_PASSCRED, "reading SO_PASSCRED")? != 0,
        peek_off: opt(libc::SO_PEEK_OFF, "reading SO_PEEK_OFF")?,
        ..Default::default()
    };
    if !s.name.is_empty() && s.name[0] != 0 {
        socket_file(r, &mut s, diag.vfs)?;
    }
    match diag.state {
        TCP_LISTEN => {
            if !diag.icons.is_empty() {
                return Err(r.refuse(format!(
                    "a listening socket with {} connections waiting to be accepted",
                    diag.icons.len()
                )));
            }
            s.backlog = diag.rqlen.map_or(0, |q| q.1);
            return Ok(s);
        }
        TCP_ESTABLISHED => match diag.peer {
            Some(0) | None if kind != libc::SOCK_DGRAM => s.peer_closed = true,
            Some(0) | None => {
                return Err(r.refuse("a datagram socket connected to a closed socket"))
            }
            Some(p) => s.peer_ino = u64::from(p),
        },
        _ => {}
    }
    // An unconnected stream or seqpacket socket has no queue (recv fails with EINVAL).
    if diag.state == TCP_ESTABLISHED || kind == libc::SOCK_DGRAM {
        s.queue = peek_queue(r, fd, kind, shutdown)?;
    }
    if s.peer_ino == 0 && !s.peer_closed && !s.queue.is_empty() {
        return Err(r.refuse(format!(
            "{} messages queued on an unconnected socket: their senders cannot be recreated",
            s.queue.len()
        )));
    }
    Ok(s)
}

/// The socket file of a path-bound socket: its mode, or that it has been removed. A relative
/// name is looked up from the process's cwd (where it was most likely bound).
fn socket_file(
    r: &FdRef,
    s: &mut UnixSocketState,
    vfs: Option<(u32, u32)>,
) -> Result<(), DumpError> {
    let name =
        String::from_utf8(s.name.clone()).map_err(|_| r.refuse("its bound path is not UTF-8"))?;
    let Some((vino, vdev)) = vfs else {
        return Err(r.refuse(format!("sock_diag shows no socket file for {name}")));
    };
    let path = if name.starts_with('/') {
        name.clone()
    } else {
        let cwd = std::fs::read_link(format!("/proc/{}/cwd", r.pid))
            .map_err(|e| r.refuse(format!("reading its process's cwd: {e}")))?;
        let cwd = cwd
            .to_str()
            .ok_or_else(|| r.refuse("its process's cwd is not UTF-8"))?
            .to_string();
        let path = format!("{}/{name}", cwd.trim_end_matches('/'));
        s.bind_dir = cwd;
        path
    };
    match ffi::stat_path(&path) {
        Ok(st)
            if st.st_ino == u64::from(vino) && st.st_dev == kernel_dev_to_user(u64::from(vdev)) =>
        {
            s.file_mode = st.st_mode;
            s.file_uid = st.st_uid;
            s.file_gid = st.st_gid;
            s.file_ino = st.st_ino;
            s.file_dev = st.st_dev;
            Ok(())
        }
        // Bound, and its file removed since: restore binds and removes it again.
        Err(e) if e.errno == libc::ENOENT && name.starts_with('/') => Ok(()),
        _ if !name.starts_with('/') => Err(r.refuse(format!(
            "bound to the relative path {name}, whose socket file is not at {path}"
        ))),
        _ => Err(r.refuse(format!("bound to {path}, which is now another file"))),
    }
}

/// Reads the receive queue without consuming it: MSG_PEEK at a peek offset that starts at 0
/// and moves past each piece read; the socket's own peek offset is put back.
fn peek_queue(r: &FdRef, fd: i32, kind: i32, shutdown: u32) -> Result<Vec<Vec<u8>>, DumpError> {
    let old = ffi::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(r.sys("reading SO_PEEK_OFF"))?;
    ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0)
        .map_err(r.sys("setting SO_PEEK_OFF"))?;
    let res = peek_all(r, fd, kind, shutdown);
    let put_back = ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)
        .map_err(r.sys("putting SO_PEEK_OFF back"));
    let q = res?;
    put_back?;
    Ok(q)
}

fn peek_all(r: &FdRef, fd: i32, kind: i32, shutdown: u32) -> Result<Vec<Vec<u8>>, DumpError> {
    let stream = kind == libc::SOCK_STREAM;
    let mut buf = vec![0u8; if stream { 64 << 10 } else { MAX_DGRAM }];
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut total = 0usize;
    loop {
        let n = match ffi::peek(fd, &mut buf, !stream).map_err(r.sys("peeking at its queue"))? {
            None => break,
            // End of file: nothing more can be queued.
            Some(0) if stream || shutdown & 1 != 0 => break,
            Some(n) => n,
        };
        if n > buf.len() {
            return Err(r.refuse(format!("a queued datagram of {n} bytes is too large")));
        }
        total += n;
        if total > MAX_QUEUE_BYTES || out.len() >= MAX_DGRAMS {
            return Err(r.refuse(format!(
                "more than {MAX_QUEUE_BYTES} bytes or {MAX_DGRAMS} messages queued"
            )));
        }
        if stream {
            match out.first_mut() {
                Some(q) => q.extend_from_slice(&buf[..n]),
                None => out.push(buf[..n].to_vec()),
            }
        } else {
            out.push(buf[..n].to_vec());
        }
    }
    Ok(out)
}

/// Pairs connected sockets whose both ends are in the process, and gives each socket whose
/// peer was closed an id of its own: each pair gets an object id (`inode_id`), starting at
/// `next_id`. Sockets whose peer is elsewhere are left for [`pair_across_processes`]. Returns
/// the next free id.
pub fn pair_sockets(pid: i32, fds: &mut [FdEntry], mut next_id: u32) -> Result<u32, DumpError> {
    let carriers = carriers(fds);
    for (i, s) in &carriers {
        if fds[*i].inode_id != 0 {
            continue;
        }
        if s.peer_closed {
            fds[*i].inode_id = next_id;
            next_id += 1;
            continue;
        }
        if s.peer_ino == 0 {
            continue;
        }
        let Some((j, peer)) = carriers.iter().find(|(_, p)| p.ino == s.peer_ino) else {
            continue;
        };
        check_pair(s, peer).map_err(|what| refuse(pid, &fds[*i], what))?;
        fds[*i].inode_id = next_id;
        fds[*j].inode_id = next_id;
        next_id += 1;
    }
    same_id_for_dups(fds);
    Ok(next_id)
}

/// The unix sockets of `fds` that carry a state: (index, state).
fn carriers(fds: &[FdEntry]) -> Vec<(usize, UnixSocketState)> {
    fds.iter()
        .enumerate()
        .filter(|(_, e)| e.kind() == FdKind::FdUnix)
        .filter_map(|(i, e)| match &e.state {
            Some(State::UnixSocket(s)) => Some((i, s.clone())),
            _ => None,
        })
        .collect()
}

fn refuse(pid: i32, e: &FdEntry, what: String) -> DumpError {
    DumpError::Unsupported {
        pid,
        what: format!("fd {} ({}): {what}", e.fd, e.path),
    }
}

/// Whether two connected sockets can be restored as a pair.
fn check_pair(s: &UnixSocketState, peer: &UnixSocketState) -> Result<(), String> {
    if peer.peer_ino != s.ino {
        return Err("connected to a socket that is not connected back to it".into());
    }
    // An abstract name (an autobind, say) is bound again to that end; a path name may be
    // shared with a listener (an accepted socket) and cannot.
    let path_named = |n: &[u8]| n.first().is_some_and(|&c| c != 0);
    if path_named(&s.name) || path_named(&peer.name) {
        return Err("connected unix sockets bound to paths are not supported yet".into());
    }
    Ok(())
}

/// The other fds of each socket's description carry the same id.
fn same_id_for_dups(fds: &mut [FdEntry]) {
    for k in 0..fds.len() {
        if fds[k].kind() == FdKind::FdUnix && fds[k].inode_id == 0 {
            let desc = fds[k].desc_id;
            if let Some(id) = fds
                .iter()
                .find(|o| o.desc_id == desc && o.inode_id != 0)
                .map(|o| o.inode_id)
            {
                fds[k].inode_id = id;
            }
        }
    }
}

/// After ids are numbered across the checkpoint: pairs connected sockets whose ends are in
/// different processes (one object id for both, so restore creates the pair once and each
/// process gets its end), and handles peers outside the checkpoint: with `ext_unix_sk` a
/// datagram socket keeps its peer's name, anything else is refused naming the socket.
pub fn pair_across_processes(
    all: &mut [(i32, Vec<FdEntry>)],
    ext_unix_sk: bool,
) -> Result<(), DumpError> {
    let mut next_id = all
        .iter()
        .flat_map(|(_, l)| l.iter().map(|e| e.inode_id))
        .max()
        .unwrap_or(0)
        + 1;
    // (process index, fd index, state) of every socket still without a peer.
    let mut open: Vec<(usize, usize, UnixSocketState)> = Vec::new();
    for (p, (_, list)) in all.iter().enumerate() {
        for (i, s) in carriers(list) {
            if list[i].inode_id == 0 && s.peer_ino != 0 {
                open.push((p, i, s));
            }
        }
    }
    let mut done: Vec<u64> = Vec::new();
    for (p, i, s) in &open {
        if done.contains(&s.ino) {
            continue;
        }
        let pid = all[*p].0;
        if let Some((q, j, peer)) = open.iter().find(|(q, _, o)| q != p && o.ino == s.peer_ino) {
            check_pair(s, peer).map_err(|what| refuse(pid, &all[*p].1[*i], what))?;
            all[*p].1[*i].inode_id = next_id;
            all[*q].1[*j].inode_id = next_id;
            next_id += 1;
            done.extend([s.ino, peer.ino]);
            continue;
        }
        let e = &all[*p].1[*i];
        if ext_unix_sk && s.r#type == libc::SOCK_DGRAM {
            let ext_peer = external_peer(pid, s).map_err(|why| refuse(pid, e, why))?;
            if let Some(State::UnixSocket(st)) = &mut all[*p].1[*i].state {
                st.ext_peer = ext_peer;
                st.peer_ino = 0;
            }
            continue;
        }
        let hint = if s.r#type == libc::SOCK_DGRAM {
            " (dump with --ext-unix-sk to connect it to the same name again at restore)"
        } else {
            ""
        };
        return Err(refuse(
            pid,
            e,
            format!(
                "connected to socket:[{}] outside the checkpoint; unix sockets are supported \
                 when both ends are in the checkpoint{hint}",
                s.peer_ino
            ),
        ));
    }
    for (_, list) in all.iter_mut() {
        same_id_for_dups(list);
    }
    Ok(())
}

/// sock_diag about unix socket `ino`, asked in the network namespace of `pid` (sock_diag
/// only sees its own namespace's sockets).
fn diag_in(pid: i32, ino: u32) -> Result<ffi::UnixDiag, crate::sys::SysError> {
    let ns = crate::net::Netns::of_pid(pid).map_err(|e| {
        crate::sys::SysError::from_errno(
            "open /proc/PID/ns/net",
            e.raw_os_error().unwrap_or(libc::EIO),
        )
    })?;
    ns.run(|| ffi::unix_diag(ino))?
}

/// The name of a datagram socket's peer outside the process, to connect to again at restore.
fn external_peer(pid: i32, s: &UnixSocketState) -> Result<Vec<u8>, String> {
    if !s.queue.is_empty() {
        return Err(format!(
            "{} datagrams from its peer outside the process are queued; they cannot be sent \
             again from there",
            s.queue.len()
        ));
    }
    let diag = diag_in(pid, s.peer_ino as u32).map_err(|e| {
        format!(
            "asking sock_diag about its peer socket:[{}]: {e}",
            s.peer_ino
        )
    })?;
    let mut name = diag.name.unwrap_or_default();
    if name.first().is_some_and(|&c| c != 0) {
        while name.last() == Some(&0) {
            name.pop();
        }
        if name.first() != Some(&b'/') {
            return Err("its peer outside is bound to a relative path".into());
        }
    }
    if name.is_empty() {
        return Err("its peer outside the process has no name to connect to again".into());
    }
    Ok(name)
}
