//! Pseudo-terminal pairs at restore, created by cryo before it forks the tree (like other
//! objects several processes may share): a new pair from /dev/ptmx (its number may differ
//! from the dump's), the saved termios, window size, packet mode and lock set back through the
//! master, and each slave description opened from the master (TIOCGPTPEER, so the slave's
//! path is never looked up). Everything is opened with O_NOCTTY: cryo never takes a terminal
//! as its own. A session leader whose controlling terminal was the pair takes the slave
//! (inherited from cryo, see [`ctty_key`]) as its controlling terminal right after setsid(2),
//! before it forks the rest of its session.

use super::files::{set_flags, Descriptions, Inode};
use crate::proto::{fd_entry::State, FdEntry, FdKind};
use crate::sys::{task, tty_ffi as ffi};
use std::os::fd::RawFd;

/// The key under which the slave of pair `inode_id` is handed to the restore children, for a
/// session leader's TIOCSCTTY (above every description key).
pub fn ctty_key(inode_id: u32) -> u64 {
    (1 << 40) | u64::from(inode_id)
}

/// Creates the pair of `f` (its master, which carries the state) and returns the master.
pub fn create_master(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let what = format!("fd {} (pty master)", f.fd);
    let Some(State::Tty(t)) = &f.state else {
        return Err(format!("{what}: the saved pseudo-terminal has no state"));
    };
    if descs.inodes.contains_key(&f.inode_id) {
        return Err(format!("{what}: a second master for one pair"));
    }
    let flags = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK);
    let master = ffi::open_master(flags).map_err(|e| format!("{what}: {e}"))?;
    let master = descs.keep(master, &what)?;
    descs.adopt(f, master);
    let sys = |doing: &'static str| {
        let w = what.clone();
        move |e| format!("{w}: {doing}: {e}")
    };
    ffi::set_locked(master, false).map_err(sys("unlocking the slave"))?;
    let slave =
        ffi::open_peer(master, libc::O_RDWR | libc::O_NOCTTY).map_err(sys("opening the slave"))?;
    let slave = descs.keep(slave, &what)?;
    descs.inodes.insert(
        f.inode_id,
        Inode::Pty {
            master,
            slave,
            slave_taken: false,
        },
    );
    ffi::set_termios(master, &t.termios).map_err(sys("setting its termios"))?;
    let ws = libc::winsize {
        ws_row: t.rows as u16,
        ws_col: t.cols as u16,
        ws_xpixel: t.xpixel as u16,
        ws_ypixel: t.ypixel as u16,
    };
    ffi::set_winsize(master, &ws).map_err(sys("setting its window size"))?;
    if t.packet {
        ffi::set_packet_mode(master, true).map_err(sys("setting packet mode"))?;
    }
    if t.locked {
        ffi::set_locked(master, true).map_err(sys("locking the slave"))?;
    }
    set_flags(master, f)?;
    Ok(master)
}

/// Opens a slave description of the pair of `f`, whose master was created already.
pub fn create_slave(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let what = format!("fd {} (pty slave)", f.fd);
    let Some(Inode::Pty {
        master,
        slave,
        slave_taken,
    }) = descs.inodes.get_mut(&f.inode_id)
    else {
        return Err(format!("{what}: its master is not in the checkpoint"));
    };
    let flags = f.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND);
    let fd = if !*slave_taken {
        *slave_taken = true;
        task::dup_above(*slave, 0).map_err(|e| format!("{what}: {e}"))?
    } else {
        ffi::open_peer(*master, flags | libc::O_NOCTTY)
            .map_err(|e| format!("{what}: opening the slave: {e}"))?
    };
    let fd = descs.keep(fd, &what)?;
    set_flags(fd, f)?;
    Ok(fd)
}

/// The kinds this module creates.
pub fn is_pty(kind: FdKind) -> bool {
    matches!(kind, FdKind::FdPtyMaster | FdKind::FdPtySlave)
}
