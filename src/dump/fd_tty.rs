//! Pseudo-terminals at dump: pairs whose master (/dev/ptmx) is in the checkpoint, and the
//! controlling terminal of session leaders.
//!
//! A master's state is read from a pidfd_getfd copy (the master's termios and window-size
//! ioctls act on the slave side): its number (TIOCGPTN), termios2, window size, packet mode
//! and lock. Data waiting in the pair (written by either side, not read yet) cannot be read
//! back without consuming it, so a pair with queued data is refused, naming the fd.
//!
//! Slaves are matched to masters across the whole checkpoint by their number; every fd of a
//! pair gets the pair's `inode_id`. A slave whose master is outside is the terminal the tree
//! was started from: with `--shell-job` it becomes [`FdKind::FdTty`] (restore gives it cryo's
//! terminal), otherwise the dump is refused.
//!
//! A session leader whose controlling terminal (/proc/PID/stat tty_nr) is a pair of the
//! checkpoint gets that pair's id, the terminal's foreground process group and one of its
//! own fds on the pair in its pstree entry.

use super::files::FdRef;
use super::DumpError;
use crate::proto::{fd_entry::State, FdEntry, FdKind, PstreeEntry, TtyState};
use crate::sys::{proc_ctl, tty_ffi as ffi};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The device numbers of /dev/pts/N: majors 136-143 (UNIX98 pty slaves).
pub fn pts_index(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (136..=143)
        .contains(&major)
        .then(|| (major - 136) * 256 + minor)
}

/// /dev/ptmx: character device 5:2.
pub fn is_ptmx(rdev: u64) -> bool {
    (libc::major(rdev), libc::minor(rdev)) == (5, 2)
}

/// The state of the pty master `r`.
pub fn master_state(r: &FdRef) -> Result<TtyState, DumpError> {
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let index = ffi::pty_number(fd).map_err(r.sys("reading its number (TIOCGPTN)"))?;
    let output = ffi::bytes_to_read(fd).map_err(r.sys("reading its queue size"))?;
    // The slave side's input queue, through a slave opened from the master for the look.
    let peer = ffi::open_peer(fd, libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK)
        .map_err(r.sys("opening its slave to look at its queue (TIOCGPTPEER)"))?;
    // SAFETY: open_peer returned a new fd that nothing else owns.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    let input = ffi::bytes_to_read(peer.as_raw_fd()).map_err(r.sys("reading its input queue"))?;
    if output != 0 || input != 0 {
        return Err(r.refuse(format!(
            "a pseudo-terminal (/dev/pts/{index}) with data waiting in it ({output} bytes for \
             the master, {input} for the slave): a terminal's queues cannot be read without \
             consuming them"
        )));
    }
    let termios = ffi::termios(fd).map_err(r.sys("reading its termios (TCGETS2)"))?;
    let ws = ffi::winsize(fd).map_err(r.sys("reading its window size"))?;
    Ok(TtyState {
        index,
        termios,
        rows: u32::from(ws.ws_row),
        cols: u32::from(ws.ws_col),
        xpixel: u32::from(ws.ws_xpixel),
        ypixel: u32::from(ws.ws_ypixel),
        packet: ffi::packet_mode(fd).map_err(r.sys("reading its packet mode"))?,
        locked: ffi::locked(fd).map_err(r.sys("reading its lock"))?,
    })
}

/// The pty number of every pty fd of a process: a master's from its description's state, a
/// slave's from its device number.
fn index_of(list: &[FdEntry], e: &FdEntry) -> Option<u32> {
    match e.kind() {
        FdKind::FdPtyMaster => {
            list.iter()
                .filter(|o| o.desc_id == e.desc_id)
                .find_map(|o| match &o.state {
                    Some(State::Tty(t)) => Some(t.index),
                    _ => None,
                })
        }
        FdKind::FdPtySlave => pts_index(e.rdev),
        _ => None,
    }
}

/// Matches slaves to masters across the checkpoint and gives every fd of a pair the pair's
/// `inode_id`; slaves without their master become the inherited terminal (`shell_job`) or
/// refuse the dump. Returns (pty number, pair id) of every pair.
pub fn pair_ptys(
    all: &mut [(i32, Vec<FdEntry>)],
    shell_job: bool,
) -> Result<Vec<(u32, u32)>, DumpError> {
    let mut next_id = all
        .iter()
        .flat_map(|(_, l)| l.iter().map(|e| e.inode_id))
        .max()
        .unwrap_or(0)
        + 1;
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for (_, list) in all.iter() {
        for e in list.iter().filter(|e| e.kind() == FdKind::FdPtyMaster) {
            if let Some(i) = index_of(list, e) {
                if !pairs.iter().any(|p| p.0 == i) {
                    pairs.push((i, next_id));
                    next_id += 1;
                }
            }
        }
    }
    for (pid, list) in all.iter_mut() {
        let snapshot = list.clone();
        for e in list.iter_mut() {
            if !matches!(e.kind(), FdKind::FdPtyMaster | FdKind::FdPtySlave) {
                continue;
            }
            let index = index_of(&snapshot, e);
            match index.and_then(|i| pairs.iter().find(|p| p.0 == i)) {
                Some(&(_, id)) => e.inode_id = id,
                None if e.kind() == FdKind::FdPtySlave && shell_job => {
                    e.kind = FdKind::FdTty as i32;
                }
                None => {
                    return Err(DumpError::Unsupported {
                        pid: *pid,
                        what: format!(
                            "fd {} ({}): a terminal whose master is outside the checkpoint: \
                             dump with --shell-job (-j) to let restore give it cryo's terminal",
                            e.fd, e.path
                        ),
                    })
                }
            }
        }
    }
    Ok(pairs)
}

/// Fills in the controlling terminal of session leader `e` (from /proc/PID/stat `tty_nr`):
/// a pair of the checkpoint (`pairs`, from [`pair_ptys`]), or an error if it is another
/// terminal and `shell_job` does not allow that.
pub fn controlling_terminal(
    e: &mut PstreeEntry,
    tty_nr: i32,
    fds: &[FdEntry],
    pairs: &[(u32, u32)],
    shell_job: bool,
) -> Result<(), DumpError> {
    e.tty_fd = -1;
    if e.pid != e.sid || tty_nr == 0 {
        return Ok(());
    }
    let dev = tty_nr as u32 as u64;
    let outside = || DumpError::Unsupported {
        pid: e.pid,
        what: format!(
            "a session leader whose controlling terminal ({}:{}) is outside the checkpoint: \
             dump with --shell-job (-j)",
            libc::major(dev),
            libc::minor(dev)
        ),
    };
    let Some(&(_, id)) = pts_index(dev).and_then(|i| pairs.iter().find(|p| p.0 == i)) else {
        return if shell_job { Ok(()) } else { Err(outside()) };
    };
    e.ctty_inode_id = id;
    // Any fd of the leader on the pair; the foreground group is read through a master.
    e.tty_fd = fds.iter().find(|f| f.inode_id == id).map_or(-1, |f| f.fd);
    Ok(())
}

/// The foreground process group of the pty pair `id`, read through a master fd of it held by
/// some process of the checkpoint.
pub fn foreground_group(all: &[(i32, Vec<FdEntry>)], id: u32) -> Result<i32, DumpError> {
    for (pid, list) in all {
        if let Some(m) = list
            .iter()
            .find(|f| f.inode_id == id && f.kind() == FdKind::FdPtyMaster)
        {
            let err = |what: &str, e: crate::sys::SysError| DumpError::Fd {
                pid: *pid,
                fd: m.fd,
                target: m.path.clone(),
                what: what.to_string(),
                source: e,
            };
            let pidfd = proc_ctl::pidfd_open(*pid).map_err(|e| err("pidfd_open", e))?;
            let copy = proc_ctl::pidfd_getfd(&pidfd, m.fd).map_err(|e| err("copying it", e))?;
            return ffi::foreground_group(copy.as_raw_fd())
                .map_err(|e| err("reading its foreground process group", e));
        }
    }
    Ok(0)
}
