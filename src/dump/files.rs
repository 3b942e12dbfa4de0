//! Collecting open files: every fd from /proc/PID/fd with its fdinfo, classified into a kind
//! cryo restores exactly, or refused (naming the fd and its kind) before anything is changed
//! in the target. This module owns the fd table as a whole: classifying each fd, telling
//! which fds share an open file description (kcmp) and which descriptions are views of one
//! object (a pipe's two ends, a memfd opened twice, a socket pair), assigning their ids, the
//! SIGIO owner, and checks that span several fds (a pipe needs both ends in the process). The
//! state of each kind is read by its own module: [`super::fd_data`] (contents of deleted
//! files and memfds), [`super::fd_pipe`] (pipe and FIFO buffers), [`super::fd_event`]
//! (eventfd, timerfd, signalfd, epoll, inotify), [`super::fd_unix`] (unix sockets),
//! [`super::fd_inet`] (IPv4/IPv6, packet and netlink sockets), [`super::fd_tty`]
//! (pseudo-terminals),
//! [`super::fd_locks`] (file locks).
//!
//! Ids: `desc_id` and `inode_id` are numbered from 1 within the process by [`collect_fds`],
//! then [`number_across_processes`] renumbers them across the checkpoint: a description
//! shared by several processes (kcmp) gets one id, and so does a pipe whose ends are in
//! different processes (same pipe inode).
//!
//! Failed syscalls on the target's fds are reported as [`DumpError::Fd`] naming the fd and
//! what was being done; fds cryo cannot restore as [`DumpError::Unsupported`].
//!
//! It reads /proc, compares files with kcmp and looks at copies of the target's fds taken with
//! pidfd_getfd; it never reads from a file in a way that changes what the target would see
//! (pipes are peeked at with tee, sockets with MSG_PEEK, files read with pread), so
//! `--leave-running` leaves every object as it was.

use super::proc::{self, FdInfo, FdLink};
use super::DumpError;
use super::{fd_data, fd_event, fd_inet, fd_locks, fd_pipe, fd_tty, fd_unix};
use crate::proto::{fd_entry::State, FdEntry, FdKind, FileOwner};
use crate::sys::{files_ffi as ffi, proc_ctl, SysError};
use std::os::fd::{AsRawFd, OwnedFd};

/// One fd of the target, for messages and for taking copies of it.
pub struct FdRef<'a> {
    /// The process.
    pub pid: i32,
    /// The fd number.
    pub fd: i32,
    /// What /proc/PID/fd/N reads.
    pub target: &'a str,
    pidfd: &'a OwnedFd,
}

impl<'a> FdRef<'a> {
    /// Fd `fd` of the process behind `pidfd`, whose /proc/PID/fd link reads `target`.
    pub fn new(pid: i32, fd: i32, target: &'a str, pidfd: &'a OwnedFd) -> Self {
        Self {
            pid,
            fd,
            target,
            pidfd,
        }
    }

    /// A refusal naming this fd: the dump stops, nothing was changed.
    pub fn refuse(&self, what: impl std::fmt::Display) -> DumpError {
        DumpError::Unsupported {
            pid: self.pid,
            what: format!("fd {} ({}): {what}", self.fd, self.target),
        }
    }

    /// Maps a failed syscall made for this fd into a dump error saying what was being done
    /// (not a refusal: the fd may be of a supported kind, the call failed).
    pub fn sys<'b>(&'b self, what: &'b str) -> impl FnOnce(SysError) -> DumpError + 'b {
        move |source| DumpError::Fd {
            pid: self.pid,
            fd: self.fd,
            target: self.target.to_string(),
            what: what.to_string(),
            source,
        }
    }

    /// A copy of the fd in cryo (pidfd_getfd): the same open file description.
    pub fn copy(&self) -> Result<OwnedFd, DumpError> {
        proc_ctl::pidfd_getfd(self.pidfd, self.fd).map_err(self.sys("copying the fd into cryo"))
    }
}

/// What the user allowed for fds.
#[derive(Debug, Clone, Copy, Default)]
pub struct FdOpts {
    /// Terminal fds are allowed (`--shell-job`): restore gives the process cryo's terminal.
    pub shell_job: bool,
    /// File locks are saved and taken again at restore (`--file-locks`).
    pub file_locks: bool,
    /// A datagram unix socket connected to a socket outside is connected to its name again
    /// at restore (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Established TCP connections are dumped (`--tcp-established`).
    pub tcp_established: bool,
    /// Connections still being set up are left out (`--skip-in-flight`).
    pub skip_in_flight: bool,
}

/// The link target of a deleted file ends with this.
const DELETED: &str = " (deleted)";

fn is_terminal_path(p: &str) -> bool {
    p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"
}

/// The kind of an fd from its link target and stat.
fn classify(r: &FdRef, link: &FdLink, shell_job: bool) -> Result<FdKind, DumpError> {
    let t = link.target.as_str();
    if !t.starts_with('/') {
        return match t {
            _ if t.starts_with("pipe:[") => Ok(FdKind::FdPipe),
            "anon_inode:[eventfd]" => Ok(FdKind::FdEventfd),
            "anon_inode:[timerfd]" => Ok(FdKind::FdTimerfd),
            "anon_inode:[signalfd]" => Ok(FdKind::FdSignalfd),
            "anon_inode:[eventpoll]" => Ok(FdKind::FdEpoll),
            "anon_inode:inotify" => Ok(FdKind::FdInotify),
            _ if t.starts_with("socket:[") => match fd_unix::domain(r)? {
                libc::AF_UNIX => Ok(FdKind::FdUnix),
                libc::AF_INET | libc::AF_INET6 => Ok(FdKind::FdInet),
                libc::AF_PACKET => Ok(FdKind::FdPacket),
                libc::AF_NETLINK => Ok(FdKind::FdNetlink),
                d => Err(r.refuse(format!(
                    "{} socket file descriptors are not supported yet",
                    fd_unix::family_name(d)
                ))),
            },
            _ => Err(r.refuse(format!(
                "{} file descriptors are not supported yet",
                unsupported_kind_name(t)
            ))),
        };
    }
    let st = link
        .stat
        .as_ref()
        .ok_or_else(|| r.refuse("cannot stat the file"))?;
    let fmt = st.mode & libc::S_IFMT;
    if let Some(name) = t.strip_suffix(DELETED) {
        if name.starts_with("/memfd:") && fmt == libc::S_IFREG {
            return Ok(FdKind::FdMemfd);
        }
        // A name that really ends in " (deleted)" is still there under it.
        let same = ffi::stat_path(t).is_ok_and(|s| s.st_dev == st.dev && s.st_ino == st.ino);
        if !same {
            if fmt != libc::S_IFREG {
                return Err(r.refuse(format!(
                    "a deleted file of type {fmt:#o}: only deleted regular files are supported"
                )));
            }
            return Ok(FdKind::FdUnlinked);
        }
    }
    if fmt == libc::S_IFCHR && fd_tty::is_ptmx(st.rdev) {
        return Ok(FdKind::FdPtyMaster);
    }
    if fmt == libc::S_IFCHR && fd_tty::pts_index(st.rdev).is_some() {
        // Inside the checkpoint or not is decided once every process's fds are known.
        return Ok(FdKind::FdPtySlave);
    }
    if fmt == libc::S_IFCHR && is_terminal_path(t) {
        if !shell_job {
            return Err(
                r.refuse("a terminal: dump with --shell-job (-j) to let restore inherit cryo's")
            );
        }
        return Ok(FdKind::FdTty);
    }
    let kind = match fmt {
        libc::S_IFCHR => {
            let (major, minor) = (libc::major(st.rdev), libc::minor(st.rdev));
            if !stateless_device(major, minor) {
                return Err(r.refuse(format!(
                    "the character device {major}:{minor} keeps state that reopening it by \
                     path would lose (a pseudo-terminal master, tun, ...); only /dev/null, \
                     /dev/zero, /dev/full, /dev/random and /dev/urandom are supported"
                )));
            }
            FdKind::FdChr
        }
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFIFO => FdKind::FdReg,
        _ => {
            return Err(r.refuse(format!("file type {fmt:#o} is not supported yet")));
        }
    };
    // Restore reopens by path: the path must lead to this very file now.
    match ffi::stat_path(t) {
        Ok(s) if s.st_dev == st.dev && s.st_ino == st.ino => Ok(kind),
        Ok(_) => {
            Err(r.refuse("its path now leads to another file (replaced, or hidden by a mount)"))
        }
        Err(e) => Err(r.refuse(format!("its path cannot be reached: {e}"))),
    }
}

/// Character devices that a fresh open by path gives back exactly: the memory devices null,
/// zero, full, random, urandom (major 1).
fn stateless_device(major: u32, minor: u32) -> bool {
    major == 1 && matches!(minor, 3 | 5 | 7 | 8 | 9)
}

/// A short name for an fd kind cryo does not restore, from its link target:
/// `socket:[123]` -> `socket`, `anon_inode:[pidfd]` -> `pidfd`, `anon_inode:[io_uring]` ->
/// `io_uring`.
pub fn unsupported_kind_name(target: &str) -> String {
    if let Some(rest) = target.strip_prefix("anon_inode:") {
        let name = rest.trim_start_matches('[').trim_end_matches(']');
        return if name.is_empty() { "anon_inode" } else { name }.to_string();
    }
    target
        .split(':')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

/// Kinds whose descriptions may be several views of one object.
fn has_inode_id(kind: FdKind, mode: u32) -> bool {
    match kind {
        FdKind::FdPipe | FdKind::FdUnlinked | FdKind::FdMemfd => true,
        FdKind::FdReg => mode & libc::S_IFMT == libc::S_IFIFO,
        _ => false,
    }
}

/// A description already numbered: (pid, fd, checkpoint-wide desc id).
type SeenDesc = (i32, i32, u32);

/// Renumbers the per-process `desc_id`s and `inode_id`s of every process (`(pid, fds)`, in
/// dump order) so that they are unique across the checkpoint, and equal where two processes
/// share an open file description (kcmp) or a pipe (same pipe inode).
pub fn number_across_processes(all: &mut [(i32, Vec<FdEntry>)]) -> Result<(), DumpError> {
    use std::collections::HashMap;
    let (mut next_desc, mut next_inode) = (1u32, 1u32);
    // Descriptions seen so far, bucketed by (dev, ino, kind) and kept sorted in kcmp's order
    // within a bucket: each new one costs a binary search (log n kcmp calls), not a scan.
    let mut seen: HashMap<(u64, u64, i32), Vec<SeenDesc>> = HashMap::new();
    let mut pipes: HashMap<(u64, u64), u32> = HashMap::new();
    for (pid, list) in all.iter_mut() {
        let pid = *pid;
        let mut desc_map: HashMap<u32, u32> = HashMap::new();
        let mut inode_map: HashMap<u32, u32> = HashMap::new();
        let entries = list.clone();
        let mut out = entries.clone();
        for (k, e) in entries.iter().enumerate() {
            let desc = match desc_map.get(&e.desc_id) {
                Some(d) => *d,
                None => {
                    let bucket = seen.entry((e.dev, e.ino, e.kind)).or_default();
                    let mut failed = None;
                    let pos = bucket.binary_search_by(|s| {
                        ffi::file_order(s.0, s.1, pid, e.fd).unwrap_or_else(|err| {
                            failed.get_or_insert((s.0, s.1, err));
                            std::cmp::Ordering::Less
                        })
                    });
                    if let Some((p2, fd2, source)) = failed {
                        return Err(DumpError::Unsupported {
                            pid,
                            what: format!(
                                "fd {}: comparing with pid {p2} fd {fd2}: {source}",
                                e.fd
                            ),
                        });
                    }
                    let d = match pos {
                        Ok(i) => bucket[i].2,
                        Err(i) => {
                            next_desc += 1;
                            bucket.insert(i, (pid, e.fd, next_desc - 1));
                            next_desc - 1
                        }
                    };
                    desc_map.insert(e.desc_id, d);
                    d
                }
            };
            out[k].desc_id = desc;
            if e.inode_id != 0 {
                let ino = match inode_map.get(&e.inode_id) {
                    Some(x) => *x,
                    None => {
                        let shared = (e.kind() == FdKind::FdPipe)
                            .then(|| pipes.get(&(e.dev, e.ino)).copied())
                            .flatten();
                        let x = shared.unwrap_or_else(|| {
                            next_inode += 1;
                            next_inode - 1
                        });
                        if e.kind() == FdKind::FdPipe {
                            pipes.insert((e.dev, e.ino), x);
                        }
                        inode_map.insert(e.inode_id, x);
                        x
                    }
                };
                out[k].inode_id = ino;
            }
        }
        *list = out;
    }
    // The first end of a pipe in each process carries the pipe's state, also in a process that
    // holds only the write end (whose buffer it could not read itself).
    let states: HashMap<u32, State> = all
        .iter()
        .flat_map(|(_, l)| l.iter())
        .filter(|e| e.kind() == FdKind::FdPipe && e.inode_id != 0)
        .filter_map(|e| e.state.clone().map(|s| (e.inode_id, s)))
        .collect();
    for (_, list) in all.iter_mut() {
        for k in 0..list.len() {
            let e = &list[k];
            let first = !list[..k].iter().any(|p| p.inode_id == e.inode_id);
            if e.kind() == FdKind::FdPipe && e.inode_id != 0 && first && e.state.is_none() {
                list[k].state = states.get(&list[k].inode_id).cloned();
            }
        }
    }
    Ok(())
}

/// The fds of `pid`, in fd order, with sharing and kind-specific state. The process must be
/// frozen (seized) so that nothing changes while it is read.
pub fn collect_fds(pid: i32, opts: FdOpts) -> Result<Vec<FdEntry>, DumpError> {
    let links = proc::list_fds(pid)?;
    let pidfd = proc_ctl::pidfd_open(pid).map_err(|e| DumpError::Unsupported {
        pid,
        what: format!("cannot inspect its fds: {e}"),
    })?;
    let mut out: Vec<FdEntry> = Vec::with_capacity(links.len());
    let (mut next_desc, mut next_inode) = (1u32, 1u32);
    for link in &links {
        let r = FdRef {
            pid,
            fd: link.fd,
            target: &link.target,
            pidfd: &pidfd,
        };
        let kind = classify(&r, link, opts.shell_job)?;
        let info = proc::read_fdinfo(pid, link.fd)?;
        let st = link
            .stat
            .as_ref()
            .ok_or_else(|| r.refuse("cannot stat the file"))?;
        let path = match kind {
            FdKind::FdUnlinked => link.target.trim_end_matches(DELETED).to_string(),
            _ => link.target.clone(),
        };
        let mut e = FdEntry {
            fd: link.fd,
            kind: kind as i32,
            path,
            flags: info.flags & !(libc::O_CLOEXEC as u32),
            cloexec: info.flags & libc::O_CLOEXEC as u32 != 0,
            pos: info.pos,
            dev: st.dev,
            ino: st.ino,
            size: st.size,
            mode: st.mode,
            rdev: st.rdev,
            ..Default::default()
        };
        // Which earlier fd shares the description (dup) or the object (pipe ends, reopens)?
        let mut same_desc = None;
        let mut same_inode = None;
        for prev in out.iter().filter(|p| (p.dev, p.ino) == (e.dev, e.ino)) {
            if same_inode.is_none() && prev.inode_id != 0 {
                same_inode = Some(prev.inode_id);
            }
            if same_desc.is_none()
                && prev.kind == e.kind
                && ffi::same_file(pid, prev.fd, pid, e.fd).map_err(r.sys("kcmp"))?
            {
                same_desc = Some(prev.desc_id);
            }
        }
        e.desc_id = same_desc.unwrap_or_else(|| {
            next_desc += 1;
            next_desc - 1
        });
        if has_inode_id(kind, e.mode) {
            e.inode_id = same_inode.unwrap_or_else(|| {
                next_inode += 1;
                next_inode - 1
            });
        }
        if same_desc.is_none() {
            e.locks = fd_locks::locks(&r, &info, opts.file_locks)?;
            e.owner = owner(&r, &e)?;
            e.state = desc_state(&r, &e, &info, opts)?;
        }
        tracing::debug!(pid, fd = e.fd, kind = ?kind, desc = e.desc_id, inode = e.inode_id, "fd");
        out.push(e);
    }
    for i in 0..out.len() {
        let e = &out[i];
        let first_of_inode = e.inode_id != 0 && !out[..i].iter().any(|p| p.inode_id == e.inode_id);
        if !first_of_inode {
            continue;
        }
        let state = match e.kind() {
            FdKind::FdPipe | FdKind::FdReg => {
                fd_pipe::pipe_data(pid, &pidfd, &out, e.inode_id)?.map(State::PipeData)
            }
            kind @ (FdKind::FdUnlinked | FdKind::FdMemfd) => {
                let r = FdRef {
                    pid,
                    fd: e.fd,
                    target: &links[i].target,
                    pidfd: &pidfd,
                };
                Some(State::FileData(fd_data::file_data(&r, kind, e.size)?))
            }
            _ => None,
        };
        out[i].state = state;
    }
    fd_unix::pair_sockets(pid, &mut out, next_inode)?;
    fd_event::check_epoll_targets(pid, &out)?;
    Ok(out)
}

/// The state of a description, read from fdinfo and a copy of the fd.
fn desc_state(
    r: &FdRef,
    e: &FdEntry,
    info: &FdInfo,
    opts: FdOpts,
) -> Result<Option<State>, DumpError> {
    let net = fd_inet::NetOpts {
        tcp_established: opts.tcp_established,
        skip_in_flight: opts.skip_in_flight,
    };
    Ok(match e.kind() {
        FdKind::FdEventfd => Some(State::Eventfd(fd_event::eventfd(r, info)?)),
        FdKind::FdTimerfd => Some(State::Timerfd(fd_event::timerfd(r, info)?)),
        FdKind::FdSignalfd => Some(State::Signalfd(fd_event::signalfd(r, info)?)),
        FdKind::FdEpoll => Some(State::Epoll(fd_event::epoll(r, info)?)),
        FdKind::FdInotify => Some(State::Inotify(fd_event::inotify(r, info)?)),
        FdKind::FdUnix => Some(State::UnixSocket(fd_unix::unix_socket(r, info, e.ino)?)),
        FdKind::FdInet => Some(State::Inet(fd_inet::inet_socket(r, e.ino, net)?)),
        FdKind::FdPacket => Some(State::Packet(fd_inet::packet_socket(r, e.ino)?)),
        FdKind::FdNetlink => Some(State::Netlink(fd_inet::netlink_socket(r, e.ino)?)),
        FdKind::FdPtyMaster => Some(State::Tty(fd_tty::master_state(r)?)),
        _ => None,
    })
}

/// The SIGIO owner of a description, when one is set. Only the process itself or its own
/// process group can be given back at restore.
fn owner(r: &FdRef, e: &FdEntry) -> Result<Option<FileOwner>, DumpError> {
    if e.flags as i32 & libc::O_PATH != 0 {
        return Ok(None);
    }
    let copy = r.copy()?;
    let (kind, who, signum) = ffi::owner(copy.as_raw_fd()).map_err(r.sys("reading its owner"))?;
    if who == 0 {
        if signum != 0 {
            return Ok(Some(FileOwner {
                r#type: kind,
                pid: 0,
                signum,
            }));
        }
        return Ok(None);
    }
    let ours = match kind {
        ffi::F_OWNER_TID | ffi::F_OWNER_PID => who == r.pid,
        // Its group, read only here: few descriptions have a group as owner.
        ffi::F_OWNER_PGRP => who == proc::read_stat(r.pid)?.pgrp,
        _ => false,
    };
    if !ours {
        return Err(r.refuse(format!(
            "its SIGIO owner is {who} (type {kind}), outside the checkpoint"
        )));
    }
    Ok(Some(FileOwner {
        r#type: kind,
        pid: who,
        signum,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fd_syscalls_are_not_refusals() {
        let e = DumpError::Fd {
            pid: 7,
            fd: 3,
            target: "socket:[9]".into(),
            what: "reading its type".into(),
            source: SysError::from_errno("getsockopt", libc::EBADF),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("pid 7: fd 3 (socket:[9]): reading its type: "),
            "{text}"
        );
        assert!(!text.contains("cannot dump"), "{text}");
    }

    #[test]
    fn unsupported_names() {
        assert_eq!(unsupported_kind_name("socket:[123]"), "socket");
        assert_eq!(unsupported_kind_name("anon_inode:[pidfd]"), "pidfd");
        assert_eq!(unsupported_kind_name("anon_inode:[io_uring]"), "io_uring");
        assert_eq!(unsupported_kind_name("anon_inode:bpf-map"), "bpf-map");
        assert_eq!(unsupported_kind_name("net:[4026531840]"), "net");
        assert_eq!(unsupported_kind_name(""), "unknown");
    }
}
