//! Event objects at restore: eventfd with its count and semaphore mode; timerfd armed with
//! its time left (an absolute timer at the same instant of its clock) and interval, with its
//! unread expirations (TFD_IOC_SET_TICKS); signalfd with its mask; epoll, whose watches are
//! registered after every fd is in place, by the saved fd numbers; inotify, whose watches are
//! added by path in ascending watch-descriptor order, burning numbers where the original had
//! gaps so that every watch gets its old descriptor back.

use super::files::set_flags;
use crate::proto::{fd_entry::State, FdEntry, InotifyState, TimerfdState};
use crate::sys::files_ffi as ffi;
use crate::sys::task;
use std::os::fd::RawFd;

/// At most this many watch descriptors are burnt to reach a saved one.
const MAX_WD_GAP: i32 = 1 << 20;

/// Checks what an epoll or inotify instance refers to: every watched fd is in the table; every
/// watched path still leads to the watched file (a replaced file is reported and watched).
pub fn preflight(f: &FdEntry, fds: &[FdEntry]) -> Result<(), String> {
    match &f.state {
        Some(State::Epoll(ep)) => {
            for t in &ep.targets {
                if !fds.iter().any(|o| o.fd == t.tfd) {
                    return Err(format!(
                        "fd {} (epoll): watches fd {}, which is not in the checkpoint",
                        f.fd, t.tfd
                    ));
                }
            }
        }
        Some(State::Inotify(ino)) => {
            let mut prev = 0;
            for w in &ino.watches {
                if w.wd <= prev {
                    return Err(format!(
                        "fd {} (inotify): watch descriptors out of order",
                        f.fd
                    ));
                }
                prev = w.wd;
                match ffi::stat_path(&w.path) {
                    Ok(st) if st.st_dev == w.dev && st.st_ino == w.ino => {}
                    Ok(_) => tracing::warn!(fd = f.fd, wd = w.wd, path = %w.path,
                        "the watched file was replaced since the dump; watching the new one"),
                    Err(e) => {
                        return Err(format!(
                            "fd {} (inotify): watch {} on {}: {e}",
                            f.fd, w.wd, w.path
                        ))
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Creates the description of an event object `f`.
pub fn create(f: &FdEntry) -> Result<RawFd, String> {
    let e = |what: &'static str| move |err| format!("fd {}: {what}: {err}", f.fd);
    let fd = match &f.state {
        Some(State::Eventfd(ev)) => {
            let flags = if ev.semaphore { libc::EFD_SEMAPHORE } else { 0 };
            let fd = ffi::eventfd(0, flags | libc::EFD_CLOEXEC).map_err(e("eventfd"))?;
            if ev.count != 0 {
                ffi::write_all(fd, &ev.count.to_ne_bytes())
                    .inspect_err(|_| task::close(fd))
                    .map_err(e("setting the eventfd count"))?;
            }
            fd
        }
        Some(State::Timerfd(t)) => {
            let fd =
                ffi::timerfd_create(t.clockid, libc::TFD_CLOEXEC).map_err(e("timerfd_create"))?;
            arm_timerfd(fd, t)
                .inspect_err(|_| task::close(fd))
                .map_err(|err| format!("fd {}: {err}", f.fd))?;
            fd
        }
        Some(State::Signalfd(s)) => {
            ffi::signalfd(s.sigmask, libc::SFD_CLOEXEC).map_err(e("signalfd"))?
        }
        Some(State::Epoll(_)) => {
            ffi::epoll_create(libc::EPOLL_CLOEXEC).map_err(e("epoll_create1"))?
        }
        Some(State::Inotify(ino)) => {
            let fd = ffi::inotify_init(libc::IN_NONBLOCK | libc::IN_CLOEXEC)
                .map_err(e("inotify_init1"))?;
            add_watches(fd, ino)
                .inspect_err(|_| task::close(fd))
                .map_err(|err| format!("fd {} (inotify): {err}", f.fd))?;
            fd
        }
        _ => return Err(format!("fd {}: no saved state for its kind", f.fd)),
    };
    set_flags(fd, f).inspect_err(|_| task::close(fd))?;
    Ok(fd)
}

/// Arms a new timerfd as saved. A periodic timer that had expired without being read shows no
/// time left; it is armed one interval ahead, and its unread expirations are set back.
fn arm_timerfd(fd: RawFd, t: &TimerfdState) -> Result<(), String> {
    let next = if t.value_ns != 0 {
        t.value_ns
    } else {
        t.interval_ns
    };
    if next != 0 {
        let abs = t.settime_flags as i32 & libc::TFD_TIMER_ABSTIME != 0;
        let value = if abs {
            t.clock_at_dump_ns.saturating_add(next)
        } else {
            next
        };
        ffi::timerfd_settime(fd, t.settime_flags as i32, value, t.interval_ns)
            .map_err(|e| format!("arming the timerfd: {e}"))?;
    }
    if t.ticks != 0 {
        ffi::timerfd_set_ticks(fd, t.ticks)
            .map_err(|e| format!("setting {} unread expirations: {e}", t.ticks))?;
    }
    Ok(())
}

/// Reads and drops every queued inotify event (the IN_IGNORED of burnt watches).
fn drain(fd: RawFd) {
    let mut buf = [0u8; 4096];
    while matches!(ffi::read(fd, &mut buf), Ok(n) if n > 0) {}
}

/// Adds the saved watches so that each gets its saved descriptor. Descriptors are handed out
/// cyclically upwards, so a number below the wanted one is taken and given back until the
/// wanted one comes up.
fn add_watches(fd: RawFd, ino: &InotifyState) -> Result<(), String> {
    let mut burnt_total = 0;
    for w in &ino.watches {
        let mut burnt = 0;
        loop {
            let got = ffi::inotify_add_watch(fd, &w.path, w.mask | libc::IN_DONT_FOLLOW)
                .map_err(|e| format!("watch {} on {}: {e}", w.wd, w.path))?;
            if got == w.wd {
                break;
            }
            if got > w.wd || burnt >= MAX_WD_GAP {
                return Err(format!(
                    "watch {} on {} came back as descriptor {got}",
                    w.wd, w.path
                ));
            }
            ffi::inotify_rm_watch(fd, got)
                .map_err(|e| format!("giving back descriptor {got}: {e}"))?;
            burnt += 1;
            burnt_total += 1;
            if burnt_total % 1024 == 0 {
                drain(fd);
            }
        }
    }
    if burnt_total != 0 {
        drain(fd);
    }
    Ok(())
}

/// Phase 3: registers every epoll's watches, now that every fd is at its number.
pub fn register_epoll_targets(fds: &[FdEntry]) -> Result<(), String> {
    for f in fds {
        let Some(State::Epoll(ep)) = &f.state else {
            continue;
        };
        for t in &ep.targets {
            ffi::epoll_add(f.fd, t.tfd, t.events, t.data).map_err(|e| {
                format!(
                    "fd {} (epoll): watching fd {} (events {:#x}): {e}",
                    f.fd, t.tfd, t.events
                )
            })?;
        }
    }
    Ok(())
}
