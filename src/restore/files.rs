//! Restoring the fd table of a restore child: every saved fd at its number, sharing open file
//! descriptions as it did (dups), with its flags, offset, owner and close-on-exec bit.
//!
//! Runs inside the forked child before it stops for the restorer; errors are messages for
//! the parent. It must not log after the child's inherited fds are closed (a log line would
//! land in whatever file now has that number), so everything worth a warning is looked at
//! first, by [`preflight`], while cryo's own fds are still in place.
//!
//! Three phases, kept apart so that a later process-tree restore can create shared objects
//! once, in cryo, before it forks the tree:
//! 1. create every open file description (keyed by the dump's `desc_id`) and every object
//!    viewed by several descriptions (keyed by `inode_id`: a pipe, a memfd, a deleted file),
//!    at fd numbers above the restored table ([`Descriptions`]);
//! 2. place: `dup2` each description to every fd number that had it;
//! 3. what needs other fds in place: unix socket queues (sent from the peer) and shutdowns,
//!    epoll registrations; and, once the temporary fds are closed, file locks.
//!
//! For a tree, cryo would run [`create_descriptions`] itself for the descriptions and objects
//! that several processes share (ids are then checkpoint-wide), at numbers above every
//! process's table, fork the tree, and have each child keep those fds instead of closing them
//! before it places its own; every child inherits the very same open file descriptions.
//!
//! Regular files, directories, FIFOs and character devices are reopened by path; a terminal
//! is inherited from cryo (`--shell-job`); the other kinds are built by
//! [`super::fd_pipe`], [`super::fd_data`], [`super::fd_event`] and [`super::fd_unix`].

use super::{fd_data, fd_event, fd_inet, fd_locks, fd_pipe, fd_tty, fd_unix};
use crate::proto::{fd_entry::State, FdEntry, FdKind};
use crate::sys::files_ffi as ffi;
use crate::sys::task;
use std::collections::HashMap;
use std::os::fd::RawFd;

/// Open flags that are carried over when a file is reopened.
pub(super) const REOPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_DIRECTORY
    | libc::O_LARGEFILE
    | libc::O_PATH
    | libc::O_SYNC
    | libc::O_DSYNC;

/// Status flags fcntl(F_SETFL) can set on an existing description.
pub(super) const SETFL_FLAGS: i32 =
    libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME | libc::O_ASYNC;

/// The key of a description: its `desc_id`, or the fd itself for images without ids.
fn desc_key(f: &FdEntry) -> u64 {
    if f.desc_id != 0 {
        u64::from(f.desc_id)
    } else {
        (1 << 32) | f.fd as u64
    }
}

/// An object several descriptions view.
pub(super) enum Inode {
    /// A pipe: its read and write ends.
    Pipe {
        /// Read end.
        r: RawFd,
        /// Write end.
        w: RawFd,
        /// The ends were handed to a description already (later ones reopen).
        r_taken: bool,
        /// Same for the write end.
        w_taken: bool,
    },
    /// A file reopened through /proc/self/fd (memfd, deleted file), or a FIFO's helper fd
    /// that keeps it open for reading and writing while its descriptions are opened.
    File(RawFd),
    /// A connected pair of unix sockets: its two ends, and the saved inode of the socket
    /// that took each end (0: not taken yet; a closed peer's end is never taken).
    SocketPair {
        /// The two ends.
        ends: [RawFd; 2],
        /// Who took them.
        takers: [u64; 2],
    },
    /// A pseudo-terminal pair: its master, and a slave for the first slave description (and
    /// for a session leader's controlling terminal).
    Pty {
        /// The master.
        master: RawFd,
        /// A slave opened from the master.
        slave: RawFd,
        /// The slave was handed to a description already (later ones open their own).
        slave_taken: bool,
    },
}

/// Descriptions and objects under construction, at fd numbers at or above `high`. Dropping it
/// closes them and removes the temporary names of deleted files, on success and on failure.
pub struct Descriptions {
    high: RawFd,
    descs: HashMap<u64, RawFd>,
    pub(super) inodes: HashMap<u32, Inode>,
    /// Names to unlink when done (deleted files are created under a temporary name).
    pub(super) temp_paths: Vec<String>,
    /// memfd seals to apply once every description is open: (fd, seals).
    pub(super) seals: Vec<(RawFd, u32)>,
    /// TCP sockets rebuilt in repair mode, with their own SO_REUSEADDR value.
    pub(super) repaired: Vec<(RawFd, i32)>,
    /// Established connections are restored closed (`--tcp-close`).
    pub(super) tcp_close: bool,
    /// Keys of the descriptions cryo created before the fork (a child's inherited ones).
    shared: std::collections::HashSet<u64>,
}

impl Descriptions {
    /// An empty set whose fds go at `high` or above.
    pub fn new(high: RawFd) -> Self {
        Self {
            high,
            descs: HashMap::new(),
            inodes: HashMap::new(),
            temp_paths: Vec::new(),
            seals: Vec::new(),
            repaired: Vec::new(),
            tcp_close: false,
            shared: std::collections::HashSet::new(),
        }
    }

    /// The description created for `f`, if any.
    pub(super) fn fd_of(&self, f: &FdEntry) -> Option<RawFd> {
        self.get(f)
    }

    /// Whether `f`'s description was created by cryo before the fork and inherited.
    pub(super) fn is_shared(&self, f: &FdEntry) -> bool {
        self.shared.contains(&desc_key(f))
    }

    /// Records `fd` as the description of `f` as soon as it exists, so that a failure
    /// further on closes it.
    pub(super) fn adopt(&mut self, f: &FdEntry, fd: RawFd) {
        self.descs.insert(desc_key(f), fd);
    }

    /// Moves a freshly created fd above the restored table (closing the original), so that
    /// placing other fds can never overwrite it.
    pub(super) fn keep(&self, fd: RawFd, what: &str) -> Result<RawFd, String> {
        if fd >= self.high {
            return Ok(fd);
        }
        let moved = task::dup_above(fd, self.high).map_err(|e| format!("{what}: {e}"));
        task::close(fd);
        moved
    }

    /// The description of `f`, once created.
    fn get(&self, f: &FdEntry) -> Option<RawFd> {
        self.descs.get(&desc_key(f)).copied()
    }
}

impl Drop for Descriptions {
    fn drop(&mut self) {
        for p in self.temp_paths.drain(..) {
            let _ = ffi::unlink(&p);
        }
        for (_, fd) in self.descs.drain() {
            task::close(fd);
        }
        for (_, i) in self.inodes.drain() {
            match i {
                Inode::Pipe { r, w, .. } => {
                    task::close(r);
                    task::close(w);
                }
                Inode::File(fd) => task::close(fd),
                Inode::SocketPair { ends, .. } => ends.into_iter().for_each(task::close),
                // The master is a description (closed with the descriptions).
                Inode::Pty { slave, .. } => task::close(slave),
            }
        }
    }
}

/// Checks the saved table for consistency and looks at the files it will reopen, logging what
/// changed since the dump. Runs in the child while cryo's fds (and its log) are still open.
pub fn preflight(fds: &[FdEntry]) -> Result<(), String> {
    let mut kinds: HashMap<u64, FdKind> = HashMap::new();
    let mut inode_seen: HashMap<u32, FdKind> = HashMap::new();
    for f in fds {
        let kind = f.kind();
        let first_desc = match kinds.get(&desc_key(f)) {
            Some(&k) if k != kind => {
                return Err(format!(
                    "fd {}: shares a description with an fd of another kind",
                    f.fd
                ))
            }
            Some(_) => false,
            None => {
                kinds.insert(desc_key(f), kind);
                true
            }
        };
        let first_inode = f.inode_id != 0 && !inode_seen.contains_key(&f.inode_id);
        if f.inode_id != 0 {
            inode_seen.entry(f.inode_id).or_insert(kind);
        }
        let state_ok = match (kind, &f.state) {
            (FdKind::FdEventfd, Some(State::Eventfd(_)))
            | (FdKind::FdTimerfd, Some(State::Timerfd(_)))
            | (FdKind::FdSignalfd, Some(State::Signalfd(_)))
            | (FdKind::FdEpoll, Some(State::Epoll(_)))
            | (FdKind::FdInotify, Some(State::Inotify(_))) => true,
            (FdKind::FdEventfd | FdKind::FdTimerfd | FdKind::FdSignalfd, _)
            | (FdKind::FdEpoll | FdKind::FdInotify, _) => !first_desc,
            (FdKind::FdUnix, Some(State::UnixSocket(_))) => true,
            (FdKind::FdUnix, _) => !first_desc,
            (FdKind::FdPipe, Some(State::PipeData(_))) => true,
            (FdKind::FdPipe, _) => !first_inode,
            (FdKind::FdUnlinked | FdKind::FdMemfd, Some(State::FileData(_))) => true,
            (FdKind::FdUnlinked | FdKind::FdMemfd, _) => !first_inode,
            _ => true,
        };
        if !state_ok {
            return Err(format!(
                "fd {}: the saved {} has no state",
                f.fd,
                kind.as_str_name()
            ));
        }
        if (kind == FdKind::FdPipe || kind == FdKind::FdUnlinked || kind == FdKind::FdMemfd)
            && f.inode_id == 0
        {
            return Err(format!("fd {}: no object id", f.fd));
        }
        match kind {
            FdKind::FdReg | FdKind::FdChr => check_reopen(f)?,
            FdKind::FdUnlinked => fd_data::preflight(f)?,
            FdKind::FdEpoll | FdKind::FdInotify => fd_event::preflight(f, fds)?,
            _ => {}
        }
    }
    Ok(())
}

/// A file reopened by path: warns if the path now leads to another file (the size check of
/// regular files is done before the fork); a FIFO must still be one.
fn check_reopen(f: &FdEntry) -> Result<(), String> {
    let st = match ffi::stat_path(&f.path) {
        Ok(st) => st,
        Err(e) => return Err(format!("fd {}: {}: {e}", f.fd, f.path)),
    };
    let fifo = f.mode & libc::S_IFMT == libc::S_IFIFO;
    if fifo && st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(format!("fd {}: {} is no longer a FIFO", f.fd, f.path));
    }
    if st.st_dev != f.dev || st.st_ino != f.ino {
        tracing::warn!(fd = f.fd, path = %f.path, "the file was replaced since the dump; reopening the new one");
    }
    Ok(())
}

/// Installs `fds` in the calling process: every other fd is closed except `report_fd`, which
/// is moved above the saved fd numbers, and `keep` (fds cryo prepared for the restorer, all
/// above every saved fd). Returns the report fd's new number.
///
/// `shared` are the descriptions cryo created before forking for objects that several
/// processes share (see [`SharedDescs`]); they are used instead of creating new ones.
pub fn install_fds(
    fds: &[FdEntry],
    report_fd: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
) -> Result<RawFd, String> {
    preflight(fds)?;
    let max_target = fds.iter().map(|f| f.fd).max().unwrap_or(2);
    let high = max_target.max(2) + 1;
    let report = task::dup_above(report_fd, high).map_err(|e| e.to_string())?;
    let mut descs = Descriptions::new(high);
    descs.descs.extend(shared.iter().copied());
    descs.shared.extend(shared.iter().map(|s| s.0));

    // Terminals inherited from cryo (shell job): taken before cryo's fds are closed.
    for f in fds.iter().filter(|f| f.kind() == FdKind::FdTty) {
        if descs.get(f).is_some() {
            continue;
        }
        let src = if task::is_tty(f.fd) {
            f.fd
        } else {
            (0..3).find(|&fd| task::is_tty(fd)).ok_or_else(|| {
                format!(
                    "fd {} was the terminal {} but cryo has no terminal to give it",
                    f.fd, f.path
                )
            })?
        };
        let p = task::dup_above(src, high).map_err(|e| format!("fd {}: {e}", f.fd))?;
        descs.descs.insert(desc_key(f), p);
    }
    let keep: Vec<RawFd> = descs
        .descs
        .values()
        .copied()
        .chain([report])
        .chain(keep.iter().copied())
        .collect();
    task::close_all_but(&keep);

    create_descriptions(fds, &mut descs)?;
    for f in fds {
        let src = descs
            .get(f)
            .ok_or_else(|| format!("fd {}: its description was not created", f.fd))?;
        place(src, f)?;
    }
    fd_unix::fill_and_shut(fds, &descs, true)?;
    fd_event::register_epoll_targets(fds)?;
    drop(descs);
    fd_locks::take_locks(fds)?;
    Ok(report)
}

/// Descriptions and objects shared by several processes of a tree (one open file description
/// with one offset, a pipe whose ends are in different processes), created once by cryo
/// before the tree is forked, so that every process inherits the same ones.
pub struct SharedDescs {
    descs: Descriptions,
}

impl SharedDescs {
    /// Creates the shared ones among `all` (every process's fds, ids numbered across the
    /// checkpoint) at fd numbers at or above `high`, and every network socket (cryo builds
    /// those itself, see [`super::fd_inet`]; `tcp_close`: established connections closed).
    pub fn prepare(all: &[&[FdEntry]], high: RawFd, tcp_close: bool) -> Result<Self, String> {
        let mut desc_procs: HashMap<u64, usize> = HashMap::new();
        let mut inode_procs: HashMap<u32, usize> = HashMap::new();
        for fds in all {
            let mut d: Vec<u64> = fds.iter().map(desc_key).collect();
            d.sort_unstable();
            d.dedup();
            for k in d {
                *desc_procs.entry(k).or_default() += 1;
            }
            let mut i: Vec<u32> = fds.iter().map(|f| f.inode_id).filter(|&i| i != 0).collect();
            i.sort_unstable();
            i.dedup();
            for k in i {
                *inode_procs.entry(k).or_default() += 1;
            }
        }
        let mut subset: Vec<FdEntry> = Vec::new();
        for fds in all {
            for f in fds.iter() {
                let shared = created_by_cryo(f.kind())
                    || desc_procs.get(&desc_key(f)).is_some_and(|&n| n > 1)
                    || (f.inode_id != 0 && inode_procs.get(&f.inode_id).is_some_and(|&n| n > 1));
                if shared && !subset.iter().any(|s| desc_key(s) == desc_key(f)) {
                    subset.push(f.clone());
                }
            }
        }
        // The entry that carries an object's state must come first.
        subset.sort_by_key(|f| f.state.is_none());
        let mut descs = Descriptions::new(high);
        descs.tcp_close = tcp_close;
        create_descriptions(&subset, &mut descs)?;
        // Queues of unix sockets whose ends are in different processes are refilled here,
        // where both ends are at hand.
        fd_unix::fill_and_shut(&subset, &descs, false)?;
        Ok(Self { descs })
    }

    /// Takes the rebuilt TCP connections out of repair mode.
    pub fn finish_repair(&mut self) -> Result<(), String> {
        fd_inet::finish_repair(&self.descs.repaired)?;
        self.descs.repaired.clear();
        Ok(())
    }

    /// (description key, fd) of every shared description, and the slave of every
    /// pseudo-terminal pair under [`fd_tty::ctty_key`] (for controlling terminals).
    pub fn seeds(&self) -> Vec<(u64, RawFd)> {
        let mut out: Vec<(u64, RawFd)> = self.descs.descs.iter().map(|(k, v)| (*k, *v)).collect();
        for (id, i) in &self.descs.inodes {
            if let Inode::Pty { slave, .. } = i {
                out.push((fd_tty::ctty_key(*id), *slave));
            }
        }
        out
    }
}

/// Kinds cryo creates itself before forking, whether shared or not.
fn created_by_cryo(kind: FdKind) -> bool {
    matches!(kind, FdKind::FdInet | FdKind::FdPacket | FdKind::FdNetlink) || fd_tty::is_pty(kind)
}

/// Phase 1: every description of `fds` not created yet (in fd order, so the fd that carries
/// an object's state comes first), then the memfd seals.
pub fn create_descriptions(fds: &[FdEntry], descs: &mut Descriptions) -> Result<(), String> {
    for f in fds {
        if descs.get(f).is_some() {
            continue;
        }
        let fd = create_one(f, descs)?;
        let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
        descs.descs.insert(desc_key(f), fd);
        if let Some(o) = &f.owner {
            ffi::set_owner(fd, o.r#type, o.pid, o.signum)
                .map_err(|e| format!("fd {}: restoring its owner: {e}", f.fd))?;
        }
        // open(2) ignores O_ASYNC; F_SETFL sets it, now that the owner is in place.
        if f.flags as i32 & (libc::O_ASYNC | libc::O_PATH) == libc::O_ASYNC {
            set_flags(fd, f)?;
        }
    }
    for (fd, seals) in std::mem::take(&mut descs.seals) {
        ffi::add_seals(fd, seals).map_err(|e| format!("adding memfd seals {seals:#x}: {e}"))?;
    }
    Ok(())
}

/// Creates the description of `f` (the first fd that has it) and returns its fd.
fn create_one(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    match f.kind() {
        FdKind::FdTty => Err(format!("fd {}: terminal not prepared", f.fd)),
        FdKind::FdReg | FdKind::FdChr => {
            if f.mode & libc::S_IFMT == libc::S_IFIFO {
                return fd_pipe::open_fifo(f, descs);
            }
            let flags = f.flags as i32 & REOPEN_FLAGS;
            let fd = task::open(&f.path, flags, 0)
                .map_err(|e| format!("fd {}: reopening {}: {e}", f.fd, f.path))?;
            let fd = descs.keep(fd, &format!("fd {}", f.fd))?;
            let fmt = f.mode & libc::S_IFMT;
            let seekable = f.kind() == FdKind::FdReg
                && flags & libc::O_PATH == 0
                && (fmt == libc::S_IFREG || (fmt == libc::S_IFDIR && f.pos != 0));
            if seekable {
                task::seek(fd, f.pos)
                    .map_err(|e| format!("fd {}: seeking {} to {}: {e}", f.fd, f.path, f.pos))?;
            }
            Ok(fd)
        }
        FdKind::FdPipe => fd_pipe::open_pipe_end(f, descs),
        FdKind::FdUnlinked | FdKind::FdMemfd => fd_data::open_file(f, descs),
        FdKind::FdEventfd
        | FdKind::FdTimerfd
        | FdKind::FdSignalfd
        | FdKind::FdEpoll
        | FdKind::FdInotify => fd_event::create(f),
        FdKind::FdUnix => fd_unix::create(f, descs),
        FdKind::FdInet => fd_inet::create_inet(f, descs),
        FdKind::FdPacket => fd_inet::create_packet(f, descs),
        FdKind::FdNetlink => fd_inet::create_netlink(f, descs),
        FdKind::FdPtyMaster => fd_tty::create_master(f, descs),
        FdKind::FdPtySlave => fd_tty::create_slave(f, descs),
    }
}

/// Sets the status flags of a new description to the saved ones.
pub(super) fn set_flags(fd: RawFd, f: &FdEntry) -> Result<(), String> {
    ffi::set_status_flags(fd, f.flags as i32 & SETFL_FLAGS)
        .map_err(|e| format!("fd {}: restoring its flags {:#o}: {e}", f.fd, f.flags))
}

/// Puts description `src` at the saved fd number with the saved close-on-exec flag.
fn place(src: RawFd, f: &FdEntry) -> Result<(), String> {
    task::dup2(src, f.fd).map_err(|e| format!("fd {}: {e}", f.fd))?;
    task::set_cloexec(f.fd, f.cloexec).map_err(|e| format!("fd {}: {e}", f.fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EpollState, EpollTarget, EventfdState, PipeData};

    fn entry(fd: i32, kind: FdKind, desc: u32, inode: u32, state: Option<State>) -> FdEntry {
        FdEntry {
            fd,
            kind: kind as i32,
            path: format!("test:{fd}"),
            desc_id: desc,
            inode_id: inode,
            state,
            ..Default::default()
        }
    }

    #[test]
    fn desc_keys() {
        let a = entry(3, FdKind::FdEventfd, 7, 0, None);
        let b = entry(4, FdKind::FdEventfd, 7, 0, None);
        assert_eq!(desc_key(&a), desc_key(&b));
        // Images without ids: every fd is its own description.
        let c = entry(3, FdKind::FdReg, 0, 0, None);
        let d = entry(4, FdKind::FdReg, 0, 0, None);
        assert_ne!(desc_key(&c), desc_key(&d));
        assert_ne!(desc_key(&c), desc_key(&a));
    }

    #[test]
    fn preflight_wants_state_on_the_first_fd() {
        let ev = Some(State::Eventfd(EventfdState {
            count: 1,
            semaphore: false,
        }));
        // The first fd of a description carries the state; its dups do not need it.
        let ok = [
            entry(3, FdKind::FdEventfd, 1, 0, ev.clone()),
            entry(4, FdKind::FdEventfd, 1, 0, None),
        ];
        assert!(preflight(&ok).is_ok());
        let missing = [entry(3, FdKind::FdEventfd, 1, 0, None)];
        assert!(preflight(&missing).unwrap_err().contains("no state"));
        // A pipe's state is on the first fd of the pipe, whatever its description.
        let pipe = Some(State::PipeData(PipeData {
            data: b"x".to_vec(),
            buf_size: 4096,
        }));
        let ok = [
            entry(5, FdKind::FdPipe, 2, 1, pipe),
            entry(6, FdKind::FdPipe, 3, 1, None),
        ];
        assert!(preflight(&ok).is_ok());
        let no_object = [entry(5, FdKind::FdPipe, 2, 0, None)];
        assert!(preflight(&no_object).is_err());
    }

    #[test]
    fn preflight_checks_kinds_and_epoll_targets() {
        let ev = Some(State::Eventfd(EventfdState::default()));
        let mixed = [
            entry(3, FdKind::FdEventfd, 1, 0, ev.clone()),
            entry(4, FdKind::FdSignalfd, 1, 0, None),
        ];
        assert!(preflight(&mixed).unwrap_err().contains("another kind"));
        let ep = |tfd| {
            Some(State::Epoll(EpollState {
                targets: vec![EpollTarget {
                    tfd,
                    events: 1,
                    data: 0,
                }],
            }))
        };
        let ok = [
            entry(3, FdKind::FdEventfd, 1, 0, ev.clone()),
            entry(4, FdKind::FdEpoll, 2, 0, ep(3)),
        ];
        assert!(preflight(&ok).is_ok());
        let dangling = [
            entry(3, FdKind::FdEventfd, 1, 0, ev),
            entry(4, FdKind::FdEpoll, 2, 0, ep(9)),
        ];
        assert!(preflight(&dangling).unwrap_err().contains("fd 9"));
    }
}
