//! Event objects at dump: eventfd (count, semaphore mode), timerfd (clock, time left,
//! interval, expirations not yet read, settime flags), signalfd (mask), epoll (each watched fd
//! with its events and data) and inotify (each watch with its mask, found by path through its
//! file handle). Their state comes from /proc/PID/fdinfo (pure parsers below, unit-tested on
//! samples from a 6.18 kernel) and, where fdinfo is not enough, from kcmp (is an epoll's
//! watched file still the one at that fd number?) and a pidfd_getfd copy (inotify's queue).

use super::files::FdRef;
use super::proc::FdInfo;
use super::DumpError;
use crate::proto::{
    fd_entry::State, EpollState, EpollTarget, EventfdState, FdEntry, InotifyState, InotifyWatch,
    SignalfdState, TimerfdState,
};
use crate::sys::files_ffi as ffi;
use std::os::fd::AsRawFd;

fn get<'a>(info: &'a FdInfo, key: &str) -> Option<&'a str> {
    info.extra
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn need<'a>(r: &FdRef, info: &'a FdInfo, key: &str) -> Result<&'a str, DumpError> {
    get(info, key).ok_or_else(|| r.refuse(format!("no {key:?} in its fdinfo")))
}

fn hex(r: &FdRef, key: &str, v: &str) -> Result<u64, DumpError> {
    u64::from_str_radix(v.trim(), 16).map_err(|_| r.refuse(format!("bad {key} {v:?} in fdinfo")))
}

fn dec(r: &FdRef, key: &str, v: &str) -> Result<u64, DumpError> {
    v.trim()
        .parse()
        .map_err(|_| r.refuse(format!("bad {key} {v:?} in fdinfo")))
}

/// An eventfd's count (`eventfd-count`, hex) and semaphore mode.
pub fn eventfd(r: &FdRef, info: &FdInfo) -> Result<EventfdState, DumpError> {
    let count = hex(r, "eventfd-count", need(r, info, "eventfd-count")?)?;
    let semaphore = match get(info, "eventfd-semaphore") {
        Some(v) => dec(r, "eventfd-semaphore", v)? != 0,
        None => {
            return Err(r.refuse("this kernel does not show an eventfd's semaphore mode in fdinfo"))
        }
    };
    Ok(EventfdState { count, semaphore })
}

/// Parses a timespec as fdinfo prints it: `(SECONDS, NANOSECONDS)`.
pub fn parse_timespec_ns(v: &str) -> Option<u64> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (s, ns) = inner.split_once(',')?;
    let s: u64 = s.trim().parse().ok()?;
    let ns: u64 = ns.trim().parse().ok()?;
    s.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// A timerfd's clock, timer and unread expirations. The time left is relative; the clock's
/// reading is kept with it so an absolute timer can be re-armed at the same instant.
pub fn timerfd(r: &FdRef, info: &FdInfo) -> Result<TimerfdState, DumpError> {
    let clockid = dec(r, "clockid", need(r, info, "clockid")?)? as i32;
    let ticks = dec(r, "ticks", need(r, info, "ticks")?)?;
    let flags_text = need(r, info, "settime flags")?;
    let settime_flags = u32::from_str_radix(flags_text.trim(), 8)
        .map_err(|_| r.refuse(format!("bad settime flags {flags_text:?} in fdinfo")))?;
    let ts = |key: &str| -> Result<u64, DumpError> {
        let v = need(r, info, key)?;
        parse_timespec_ns(v).ok_or_else(|| r.refuse(format!("bad {key} {v:?} in fdinfo")))
    };
    let value_ns = ts("it_value")?;
    let interval_ns = ts("it_interval")?;
    let clock_at_dump_ns = ffi::clock_now_ns(clockid).map_err(r.sys("reading its clock"))?;
    Ok(TimerfdState {
        clockid,
        settime_flags,
        ticks,
        value_ns,
        interval_ns,
        clock_at_dump_ns,
    })
}

/// A signalfd's mask (`sigmask`, hex).
pub fn signalfd(r: &FdRef, info: &FdInfo) -> Result<SignalfdState, DumpError> {
    let sigmask = hex(r, "sigmask", need(r, info, "sigmask")?)?;
    Ok(SignalfdState { sigmask })
}

/// Splits an fdinfo line's value such as `4 events: 19 data: 4  pos:0 ino:4aee sdev:f` into
/// its leading value and `key:value` pairs (a key may be followed by its value after spaces).
pub fn split_fields(v: &str) -> (String, Vec<(String, String)>) {
    let mut tokens = v.split_whitespace().peekable();
    let first = tokens.next().unwrap_or("").to_string();
    let mut out = Vec::new();
    while let Some(t) = tokens.next() {
        match t.split_once(':') {
            Some((k, "")) => {
                let v = tokens.next().unwrap_or("");
                out.push((k.to_string(), v.to_string()));
            }
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => out.push((t.to_string(), String::new())),
        }
    }
    (first, out)
}

fn field<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Parses the `tfd:` lines of an epoll's fdinfo: (fd, events, data).
pub fn parse_epoll_targets(info: &FdInfo) -> Option<Vec<EpollTarget>> {
    let mut out = Vec::new();
    for (_, v) in info.extra.iter().filter(|(k, _)| k == "tfd") {
        let (tfd, f) = split_fields(v);
        out.push(EpollTarget {
            tfd: tfd.parse().ok()?,
            events: u32::from_str_radix(field(&f, "events")?, 16).ok()?,
            data: u64::from_str_radix(field(&f, "data")?, 16).ok()?,
        });
    }
    Some(out)
}

/// An epoll instance's watches.
pub fn epoll(r: &FdRef, info: &FdInfo) -> Result<EpollState, DumpError> {
    let targets = parse_epoll_targets(info)
        .ok_or_else(|| r.refuse("cannot parse its tfd lines in fdinfo"))?;
    Ok(EpollState { targets })
}

/// Every file an epoll watches must be open in the process at the number it was registered
/// with (kcmp KCMP_EPOLL_TFD), since restore registers it by that number.
pub fn check_epoll_targets(pid: i32, fds: &[FdEntry]) -> Result<(), DumpError> {
    for e in fds {
        let Some(State::Epoll(ep)) = &e.state else {
            continue;
        };
        for (i, t) in ep.targets.iter().enumerate() {
            let toff = ep.targets[..i].iter().filter(|p| p.tfd == t.tfd).count() as u32;
            let refuse = |why: String| DumpError::Unsupported {
                pid,
                what: format!(
                    "fd {} (epoll): watches a file registered as fd {} that {why}",
                    e.fd, t.tfd
                ),
            };
            if !fds.iter().any(|f| f.fd == t.tfd) {
                return Err(refuse("is no longer open".into()));
            }
            match ffi::epoll_target_is(pid, e.fd, t.tfd, toff, t.tfd) {
                Ok(true) => {}
                Ok(false) => return Err(refuse("is no longer open at that number".into())),
                Err(err) => return Err(refuse(format!("cannot be compared: {err}"))),
            }
        }
    }
    Ok(())
}

/// One watch as the fdinfo of an inotify instance shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawWatch {
    /// Watch descriptor.
    pub wd: i32,
    /// Inode number of the watched file.
    pub ino: u64,
    /// Its device, in the kernel's encoding (major << 20 | minor).
    pub sdev: u64,
    /// The event mask.
    pub mask: u32,
    /// File handle type for open_by_handle_at.
    pub handle_type: i32,
    /// File handle bytes.
    pub handle: Vec<u8>,
}

/// Parses the `inotify wd:` lines of an inotify instance's fdinfo.
pub fn parse_inotify_watches(info: &FdInfo) -> Option<Vec<RawWatch>> {
    let mut out = Vec::new();
    for (_, v) in info.extra.iter().filter(|(k, _)| k == "inotify wd") {
        let (wd, f) = split_fields(v);
        let hexf = |k: &str| u64::from_str_radix(field(&f, k)?, 16).ok();
        let handle_hex = field(&f, "f_handle")?;
        let nbytes = hexf("fhandle-bytes")? as usize;
        if handle_hex.len() != nbytes * 2 {
            return None;
        }
        let handle = (0..nbytes)
            .map(|i| u8::from_str_radix(&handle_hex[2 * i..2 * i + 2], 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        out.push(RawWatch {
            wd: i32::from_str_radix(&wd, 16).ok()?,
            ino: hexf("ino")?,
            sdev: hexf("sdev")?,
            mask: hexf("mask")? as u32,
            handle_type: hexf("fhandle-type")? as i32,
            handle,
        });
    }
    out.sort_by_key(|w| w.wd);
    Some(out)
}

/// The userspace `st_dev` of a device number in the kernel's internal encoding.
pub fn kernel_dev_to_user(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xf_ffff) as u32)
}

/// Unescapes a mountinfo field (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A mount point of the filesystem `major:minor` in cryo's mount namespace, preferring one
/// that shows the filesystem's root.
pub fn mount_point_of(mountinfo: &str, major: u32, minor: u32) -> Option<String> {
    let want = format!("{major}:{minor}");
    let mut fallback = None;
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() < 5 || f[2] != want {
            continue;
        }
        if f[3] == "/" {
            return Some(unescape(f[4]));
        }
        fallback.get_or_insert_with(|| unescape(f[4]));
    }
    fallback
}

/// An inotify instance's watches, each found by path through its file handle. Refused when
/// events are queued (they cannot be put back) or a watched file cannot be found by path.
pub fn inotify(r: &FdRef, info: &FdInfo) -> Result<InotifyState, DumpError> {
    let copy = r.copy()?;
    let queued = ffi::bytes_queued(copy.as_raw_fd()).map_err(r.sys("reading its queue length"))?;
    if queued != 0 {
        return Err(r.refuse(format!(
            "{queued} bytes of inotify events are waiting to be read; queued events cannot \
             be restored"
        )));
    }
    let raw = parse_inotify_watches(info)
        .ok_or_else(|| r.refuse("cannot parse its inotify lines in fdinfo"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| r.refuse(format!("reading /proc/self/mountinfo: {e}")))?;
    let mut watches = Vec::with_capacity(raw.len());
    for w in raw {
        let dev = kernel_dev_to_user(w.sdev);
        let (major, minor) = ((w.sdev >> 20) as u32, (w.sdev & 0xf_ffff) as u32);
        let what =
            |why: String| r.refuse(format!("inotify watch {} (inode {}): {why}", w.wd, w.ino));
        let mnt = mount_point_of(&mountinfo, major, minor)
            .ok_or_else(|| what(format!("no mount of device {major}:{minor}")))?;
        let mnt_dir =
            std::fs::File::open(&mnt).map_err(|e| what(format!("opening its mount {mnt}: {e}")))?;
        let file = ffi::open_by_handle(
            mnt_dir.as_raw_fd(),
            w.handle_type,
            &w.handle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
        .map_err(|e| what(format!("opening it by handle: {e}")))?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| what(format!("finding its path: {e}")))?;
        let path = path
            .to_str()
            .ok_or_else(|| what("its path is not UTF-8".into()))?
            .to_string();
        match ffi::stat_path(&path) {
            Ok(st) if st.st_ino == w.ino && st.st_dev == dev => {}
            _ => {
                return Err(what(format!(
                    "it cannot be reached by a path (found {path:?}): deleted or hidden"
                )))
            }
        }
        watches.push(InotifyWatch {
            wd: w.wd,
            path,
            mask: w.mask,
            dev,
            ino: w.ino,
        });
    }
    Ok(InotifyState { watches })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::proc::parse_fdinfo;

    #[test]
    fn timespecs() {
        assert_eq!(parse_timespec_ns("(99, 999989645)"), Some(99_999_989_645));
        assert_eq!(parse_timespec_ns("(0, 0)"), Some(0));
        assert_eq!(parse_timespec_ns("99, 1"), None);
    }

    #[test]
    fn epoll_lines() {
        let info = parse_fdinfo(concat!(
            "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n",
            "tfd:        4 events: 4000001c data:                5  pos:0 ino:40e sdev:10\n",
            "tfd:        3 events: 80000019 data:       1234567890  pos:0 ino:40e sdev:10\n",
        ))
        .unwrap();
        let t = parse_epoll_targets(&info).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].tfd, t[0].events, t[0].data), (4, 0x4000_001c, 5));
        assert_eq!(
            (t[1].tfd, t[1].events, t[1].data),
            (3, 0x8000_0019, 0x12_3456_7890)
        );
    }

    #[test]
    fn inotify_lines() {
        let info = parse_fdinfo(concat!(
            "pos:\t0\nflags:\t04000\nmnt_id:\t17\nino:\t1038\n",
            "inotify wd:3 ino:98c045 sdev:fe00000 mask:4000fff ignored_mask:0 fhandle-bytes:8 ",
            "fhandle-type:1 f_handle:45c098008749da17\n",
            "inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 ",
            "fhandle-type:1 f_handle:a7c4030000000000\n",
        ))
        .unwrap();
        let w = parse_inotify_watches(&info).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].wd, 1);
        assert_eq!(w[0].ino, 0x3c4a7);
        assert_eq!(w[0].mask, 0x300);
        assert_eq!(w[0].handle, [0xa7, 0xc4, 3, 0, 0, 0, 0, 0]);
        assert_eq!(w[1].wd, 3);
        assert_eq!(w[1].sdev, 0xfe0_0000);
        assert_eq!(w[1].handle_type, 1);
        assert_eq!(kernel_dev_to_user(0xfe0_0000), libc::makedev(254, 0));
    }

    #[test]
    fn mountinfo_lookup() {
        let mi = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                  30 22 254:0 /srv /mnt/with\\040space rw - ext4 /dev/vda rw\n\
                  31 22 0:45 /sub /mnt/x rw - tmpfs t rw\n";
        assert_eq!(mount_point_of(mi, 254, 0).as_deref(), Some("/"));
        assert_eq!(mount_point_of(mi, 0, 45).as_deref(), Some("/mnt/x"));
        assert_eq!(mount_point_of(mi, 1, 1), None);
        assert_eq!(unescape("/mnt/with\\040space"), "/mnt/with space");
    }

    #[test]
    fn fields() {
        let (first, f) = split_fields("4 events:       19 data:    4  pos:0 ino:4aee sdev:f");
        assert_eq!(first, "4");
        assert_eq!(field(&f, "events"), Some("19"));
        assert_eq!(field(&f, "data"), Some("4"));
        assert_eq!(field(&f, "ino"), Some("4aee"));
    }
}
