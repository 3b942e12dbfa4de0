//! `cryo show`: a readable summary of a checkpoint directory, as text or as one JSON object.
//!
//! Reads through [`ImageReader`] (so the checkpoint is validated first, page data excepted)
//! and only formats what the images hold; it interprets nothing beyond naming constants
//! (signals, rlimits, protections). Addresses are printed in hex; in JSON they are hex
//! strings (JSON numbers lose precision past 2^53), sizes and counts are numbers.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::proto::{
    fd_entry::State, FdEntry, FdKind, Inventory, MmState, PageRun, ProcessCore, PstreeEntry,
    TaskCore, VmaKind,
};

use super::{ImageError, ImageReader, ImageType, PAGE_SIZE};

/// Everything read for one process; `None` where the checkpoint has no such file.
struct Process {
    pid: i32,
    core: Option<ProcessCore>,
    tasks: Option<Vec<TaskCore>>,
    mm: Option<MmState>,
    pagemap: Option<Vec<PageRun>>,
    fds: Option<Vec<FdEntry>>,
    pages_size: Option<u64>,
}

struct Checkpoint {
    dir: String,
    /// Whether `signature.img` is there (show never checks it; it has no key).
    signed: bool,
    inventory: Inventory,
    pstree: Option<Vec<PstreeEntry>>,
    processes: Vec<Process>,
}

fn load(dir: &Path) -> Result<Checkpoint, ImageError> {
    let reader = ImageReader::open(dir)?;
    let inventory = reader.inventory().clone();
    let pstree: Option<Vec<PstreeEntry>> = if reader.has(ImageType::Pstree, None) {
        Some(reader.read(ImageType::Pstree, None)?)
    } else {
        None
    };
    let mut pids: Vec<i32> = Vec::new();
    for pid in pstree
        .iter()
        .flatten()
        .map(|e| e.pid)
        .chain(inventory.pids.iter().copied())
    {
        if pid > 0 && !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    let mut processes = Vec::new();
    for pid in pids {
        let p = Some(pid);
        let pages_name = ImageType::Pages.file_name(p);
        processes.push(Process {
            pid,
            core: if reader.has(ImageType::Core, p) {
                Some(reader.read_one(ImageType::Core, p)?)
            } else {
                None
            },
            tasks: if reader.has(ImageType::Tasks, p) {
                Some(reader.read(ImageType::Tasks, p)?)
            } else {
                None
            },
            mm: if reader.has(ImageType::Mm, p) {
                Some(reader.read_one(ImageType::Mm, p)?)
            } else {
                None
            },
            pagemap: if reader.has(ImageType::Pagemap, p) {
                Some(reader.read(ImageType::Pagemap, p)?)
            } else {
                None
            },
            fds: if reader.has(ImageType::Fds, p) {
                Some(reader.read(ImageType::Fds, p)?)
            } else {
                None
            },
            pages_size: inventory
                .manifest
                .iter()
                .find(|e| e.name == pages_name)
                .map(|e| e.size),
        });
    }
    Ok(Checkpoint {
        dir: dir.display().to_string(),
        signed: super::is_signed(dir),
        inventory,
        pstree,
        processes,
    })
}

/// Renders the checkpoint in `dir` as text, or as one pretty-printed JSON object if `json`.
pub fn render(dir: &Path, json: bool) -> Result<String, ImageError> {
    let ckpt = load(dir)?;
    Ok(if json {
        format!("{:#}\n", to_json(&ckpt))
    } else {
        to_text(&ckpt)
    })
}

// ---- naming helpers ----

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The kernel's name of a signal number (SIGRTMIN is 32 for the kernel).
fn signal_name(signo: u32) -> String {
    const NAMES: [&str; 31] = [
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match signo {
        1..=31 => NAMES[signo as usize - 1].to_owned(),
        32 => "SIGRTMIN".to_owned(),
        33..=64 => format!("SIGRTMIN+{}", signo - 32),
        _ => format!("signal {signo}"),
    }
}

/// Names of the signals set in a mask (bit n-1 for signal n).
fn mask_names(mask: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| mask & (1u64 << bit) != 0)
        .map(|bit| signal_name(bit + 1))
        .collect()
}

fn handler_name(handler: u64) -> String {
    match handler {
        0 => "SIG_DFL".to_owned(),
        1 => "SIG_IGN".to_owned(),
        h => hex(h),
    }
}

fn rlimit_name(resource: u32) -> String {
    const NAMES: [&str; 16] = [
        "CPU",
        "FSIZE",
        "DATA",
        "STACK",
        "CORE",
        "RSS",
        "NPROC",
        "NOFILE",
        "MEMLOCK",
        "AS",
        "LOCKS",
        "SIGPENDING",
        "MSGQUEUE",
        "NICE",
        "RTPRIO",
        "RTTIME",
    ];
    match NAMES.get(resource as usize) {
        Some(n) => format!("RLIMIT_{n}"),
        None => format!("rlimit {resource}"),
    }
}

const RLIM_INFINITY: u64 = u64::MAX;

fn rlim_text(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        v.to_string()
    }
}

fn rlim_json(v: u64) -> Value {
    if v == RLIM_INFINITY {
        json!("unlimited")
    } else {
        json!(v)
    }
}

fn itimer_name(which: u32) -> String {
    match which {
        0 => "ITIMER_REAL".to_owned(),
        1 => "ITIMER_VIRTUAL".to_owned(),
        2 => "ITIMER_PROF".to_owned(),
        w => format!("itimer {w}"),
    }
}

fn clock_name(clock: i32) -> String {
    match clock {
        0 => "CLOCK_REALTIME".to_owned(),
        1 => "CLOCK_MONOTONIC".to_owned(),
        2 => "CLOCK_PROCESS_CPUTIME_ID".to_owned(),
        3 => "CLOCK_THREAD_CPUTIME_ID".to_owned(),
        7 => "CLOCK_BOOTTIME".to_owned(),
        8 => "CLOCK_REALTIME_ALARM".to_owned(),
        9 => "CLOCK_BOOTTIME_ALARM".to_owned(),
        11 => "CLOCK_TAI".to_owned(),
        c => format!("clock {c}"),
    }
}

fn notify_name(notify: i32) -> String {
    match notify {
        0 => "SIGEV_SIGNAL".to_owned(),
        1 => "SIGEV_NONE".to_owned(),
        2 => "SIGEV_THREAD".to_owned(),
        4 => "SIGEV_THREAD_ID".to_owned(),
        n => format!("sigev {n}"),
    }
}

/// `rwxp` / `rw-s` as in /proc/PID/maps.
fn prot_text(prot: u32, flags: u32) -> String {
    let bit = |b: u32, c: char| if prot & b != 0 { c } else { '-' };
    let shared = flags & libc::MAP_SHARED as u32 != 0;
    format!(
        "{}{}{}{}",
        bit(libc::PROT_READ as u32, 'r'),
        bit(libc::PROT_WRITE as u32, 'w'),
        bit(libc::PROT_EXEC as u32, 'x'),
        if shared { 's' } else { 'p' }
    )
}

fn vma_kind_name(kind: i32) -> String {
    match VmaKind::try_from(kind) {
        Ok(k) => k
            .as_str_name()
            .trim_start_matches("VMA_")
            .to_ascii_lowercase(),
        Err(_) => format!("kind {kind}"),
    }
}

fn fd_kind_name(kind: i32) -> String {
    match FdKind::try_from(kind) {
        Ok(k) => k
            .as_str_name()
            .trim_start_matches("FD_")
            .to_ascii_lowercase(),
        Err(_) => format!("kind {kind}"),
    }
}

fn secs_text(ns: u64) -> String {
    format!("{}.{:09}s", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// An inet address as text.
fn inet_text(family: i32, a: &crate::proto::InetAddr) -> String {
    crate::dump::fd_inet::ffi_addr(family, a).to_string()
}

/// Saved socket options, by name.
fn opts_detail(opts: &[crate::proto::SockOpt], parts: &mut Vec<String>) {
    if opts.is_empty() {
        return;
    }
    let names: Vec<String> =
        opts.iter()
            .map(|o| {
                let v = match o.value.len() {
                    4 => i32::from_ne_bytes([o.value[0], o.value[1], o.value[2], o.value[3]])
                        .to_string(),
                    _ => String::from_utf8_lossy(&o.value)
                        .trim_end_matches('\0')
                        .to_string(),
                };
                format!("{}={v}", crate::dump::fd_inet::opt_name(o.level, o.name))
            })
            .collect();
    parts.push(format!("options {}", names.join(" ")));
}

/// An IPv4/IPv6 socket: protocol, state, addresses, connection and queues.
fn inet_detail(s: &crate::proto::InetSocketState, parts: &mut Vec<String>) {
    use crate::dump::fd_inet::{tcp_state_name, TCP_LISTEN};
    let fam = if s.family == libc::AF_INET6 { "6" } else { "4" };
    let proto = match s.protocol {
        libc::IPPROTO_TCP => format!("tcp{fam}"),
        libc::IPPROTO_UDP => format!("udp{fam}"),
        p => format!("raw{fam} protocol {p}"),
    };
    parts.push(proto);
    if s.protocol == libc::IPPROTO_TCP {
        parts.push(tcp_state_name(s.state).to_string());
    }
    if let Some(l) = &s.local {
        parts.push(format!("local {}", inet_text(s.family, l)));
    }
    if let Some(p) = &s.peer {
        parts.push(format!("peer {}", inet_text(s.family, p)));
    }
    if s.state == TCP_LISTEN && s.protocol == libc::IPPROTO_TCP {
        parts.push(format!("backlog {}", s.backlog));
    }
    if let Some(t) = &s.tcp {
        parts.push(format!(
            "rcv_nxt {} snd_end {} recv queue {} bytes, send queue {} bytes ({} unsent), mss {}",
            t.inq_seq,
            t.outq_seq,
            t.inq.len(),
            t.outq.len(),
            t.unsent,
            t.mss
        ));
    }
    if !s.queue.is_empty() {
        let bytes: usize = s.queue.iter().map(|d| d.data.len()).sum();
        parts.push(format!(
            "{} datagrams queued ({bytes} bytes)",
            s.queue.len()
        ));
    }
    opts_detail(&s.opts, parts);
    if s.dropped != 0 {
        parts.push(format!("{} queued bytes not saved", s.dropped));
    }
}

/// What an fd holds beyond its path and flags: sharing with lower fds and the saved state of
/// its kind.
fn fd_detail(f: &FdEntry, all: &[FdEntry]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let earlier = |same: &dyn Fn(&FdEntry) -> bool| {
        all.iter()
            .take_while(|o| o.fd != f.fd)
            .find(|o| same(o))
            .map(|o| o.fd)
    };
    if f.desc_id != 0 {
        if let Some(d) = earlier(&|o: &FdEntry| o.desc_id == f.desc_id) {
            parts.push(format!("dup of fd {d}"));
        } else if f.inode_id != 0 {
            if let Some(d) = earlier(&|o: &FdEntry| o.inode_id == f.inode_id) {
                parts.push(format!("same object as fd {d}"));
            }
        }
    }
    match &f.state {
        Some(State::FileData(d)) => {
            if f.kind() == FdKind::FdMemfd {
                parts.push(format!("memfd {:?}", d.name));
            }
            parts.push(format!("{} bytes saved", d.contents.len()));
            if d.seals != 0 {
                parts.push(format!("seals {:#x}", d.seals));
            }
        }
        Some(State::PipeData(p)) => {
            parts.push(format!(
                "{} bytes buffered, size {}",
                p.data.len(),
                p.buf_size
            ));
        }
        Some(State::Eventfd(e)) => {
            parts.push(format!("count {}", e.count));
            if e.semaphore {
                parts.push("semaphore".into());
            }
        }
        Some(State::Timerfd(t)) => {
            parts.push(clock_name(t.clockid));
            if t.value_ns == 0 && t.interval_ns == 0 {
                parts.push("disarmed".into());
            } else {
                parts.push(format!("next in {}", secs_text(t.value_ns)));
            }
            if t.interval_ns != 0 {
                parts.push(format!("every {}", secs_text(t.interval_ns)));
            }
            if t.ticks != 0 {
                parts.push(format!("{} unread expirations", t.ticks));
            }
            if t.settime_flags & 1 != 0 {
                parts.push("absolute".into());
            }
        }
        Some(State::Signalfd(sf)) => {
            parts.push(format!("mask {}", mask_names(sf.sigmask).join(",")))
        }
        Some(State::Epoll(ep)) => {
            for t in &ep.targets {
                parts.push(format!(
                    "watches fd {} events {:#x} data {:#x}",
                    t.tfd, t.events, t.data
                ));
            }
            if ep.targets.is_empty() {
                parts.push("no watches".into());
            }
        }
        Some(State::Inotify(ino)) => {
            for w in &ino.watches {
                parts.push(format!("wd {} {} mask {:#x}", w.wd, w.path, w.mask));
            }
            if ino.watches.is_empty() {
                parts.push("no watches".into());
            }
        }
        Some(State::UnixSocket(u)) => {
            parts.push(
                match u.r#type {
                    libc::SOCK_STREAM => "stream",
                    libc::SOCK_DGRAM => "dgram",
                    libc::SOCK_SEQPACKET => "seqpacket",
                    _ => "unix",
                }
                .to_string(),
            );
            match u.state {
                10 => parts.push(format!("listening, backlog {}", u.backlog)),
                1 if u.peer_closed => parts.push("peer closed".into()),
                1 if !u.ext_peer.is_empty() => parts.push(format!(
                    "connected outside to {}",
                    String::from_utf8_lossy(&u.ext_peer)
                )),
                1 => parts.push(format!("connected to socket:[{}]", u.peer_ino)),
                _ => parts.push("unconnected".into()),
            }
            if let Some(first) = u.name.first() {
                let name = String::from_utf8_lossy(&u.name[1..]);
                if *first == 0 {
                    parts.push(format!("bound to @{name}"));
                } else {
                    parts.push(format!("bound to {}", String::from_utf8_lossy(&u.name)));
                }
            }
            if !u.queue.is_empty() {
                let bytes: usize = u.queue.iter().map(Vec::len).sum();
                parts.push(format!("{} queued ({bytes} bytes)", u.queue.len()));
            }
            if u.shutdown != 0 {
                parts.push(format!("shutdown {}", u.shutdown));
            }
        }
        Some(State::Inet(s)) => inet_detail(s, &mut parts),
        Some(State::Tty(t)) => {
            parts.push(format!("pty {} ({}x{})", t.index, t.cols, t.rows));
            if t.packet {
                parts.push("packet mode".into());
            }
            if t.locked {
                parts.push("locked".into());
            }
        }
        Some(State::Packet(p)) => {
            parts.push(format!(
                "packet type {} protocol {:#06x}",
                p.r#type,
                u16::from_be(p.protocol as u16)
            ));
            if !p.ifname.is_empty() {
                parts.push(format!("bound to {}", p.ifname));
            }
            opts_detail(&p.opts, &mut parts);
            if p.dropped != 0 {
                parts.push(format!("{} queued bytes not saved", p.dropped));
            }
        }
        Some(State::Netlink(n)) => {
            parts.push(format!("netlink protocol {} port {}", n.protocol, n.portid));
            if !n.groups.is_empty() {
                let g: Vec<String> = n.groups.iter().map(u32::to_string).collect();
                parts.push(format!("groups {}", g.join(",")));
            }
            opts_detail(&n.opts, &mut parts);
            if n.dropped != 0 {
                parts.push(format!("{} queued bytes not saved", n.dropped));
            }
        }
        None => {}
    }
    for l in &f.locks {
        let range = if l.len == 0 {
            format!("{}-EOF", l.start)
        } else {
            format!("{}-{}", l.start, l.start + l.len - 1)
        };
        parts.push(format!(
            "{} {} lock {range}",
            l.kind().as_str_name().to_ascii_lowercase(),
            if l.write { "write" } else { "read" }
        ));
    }
    if let Some(o) = &f.owner {
        parts.push(format!("owner {} (type {})", o.pid, o.r#type));
        if o.signum != 0 {
            parts.push(format!("signal {}", signal_name(o.signum as u32)));
        }
    }
    parts.join("; ")
}

/// Open flags as `O_RDWR|O_APPEND|...`.
fn open_flags_text(flags: u32, cloexec: bool) -> String {
    let flags = flags as i32;
    let mut parts = vec![match flags & libc::O_ACCMODE {
        libc::O_RDONLY => "O_RDONLY",
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_ACCMODE",
    }];
    for (bit, name) in [
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_NONBLOCK, "O_NONBLOCK"),
        (libc::O_DIRECT, "O_DIRECT"),
        (libc::O_SYNC, "O_SYNC"),
        (libc::O_DSYNC & !libc::O_SYNC, "O_DSYNC"),
        (libc::O_NOATIME, "O_NOATIME"),
        (libc::O_PATH, "O_PATH"),
        (libc::O_LARGEFILE, "O_LARGEFILE"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
    ] {
        if bit != 0 && flags & bit == bit {
            parts.push(name);
        }
    }
    if cloexec {
        parts.push("O_CLOEXEC");
    }
    parts.join("|")
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of a year, and work in
    // 400-year eras of 146097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..365
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A unix time in milliseconds as `YYYY-MM-DD HH:MM:SS.mmm UTC`.
fn utc_text(unix_ms: u64) -> String {
    let secs = (unix_ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03} UTC",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        unix_ms % 1000
    )
}

fn pages_totals(runs: &[PageRun]) -> (u64, u64, u64) {
    let pages: u64 = runs.iter().map(|r| r.nr_pages).fold(0, u64::saturating_add);
    (runs.len() as u64, pages, pages.saturating_mul(PAGE_SIZE))
}

// ---- text ----

fn to_text(c: &Checkpoint) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail; the results are ignored.
    let inv = &c.inventory;
    let _ = writeln!(s, "checkpoint {}", c.dir);
    let _ = writeln!(s, "  format      {}.{}", inv.format_major, inv.format_minor);
    let _ = writeln!(s, "  tool        {}", inv.tool_version);
    let _ = writeln!(s, "  kernel      {}", inv.kernel);
    let _ = writeln!(
        s,
        "  dumped      {} ({} ms)",
        utc_text(inv.dump_time_unix_ms),
        inv.dump_time_unix_ms
    );
    let _ = writeln!(s, "  root pid    {}", inv.root_pid);
    let pids: Vec<String> = inv.pids.iter().map(i32::to_string).collect();
    let _ = writeln!(s, "  pids        {}", pids.join(" "));
    let _ = writeln!(
        s,
        "  shell job   {}",
        if inv.shell_job { "yes" } else { "no" }
    );
    let _ = writeln!(
        s,
        "  signed      {}",
        if c.signed {
            "yes (signature.img; checked by restore --sign-key, not here)"
        } else {
            "no"
        }
    );
    let packed = inv.manifest.iter().filter(|e| e.packed).count();
    if packed == 0 {
        let _ = writeln!(s, "  files       {} + inventory.img", inv.manifest.len());
    } else {
        let _ = writeln!(
            s,
            "  files       {} + inventory.img ({packed} of them in pack.img, {} bytes)",
            inv.manifest.len(),
            inv.pack_size
        );
    }
    let width = inv
        .manifest
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        s,
        "    {:<width$}  {:>12}  {:<12}  WHERE",
        "NAME", "SIZE", "CRC32C"
    );
    for e in &inv.manifest {
        let crc = if e.pages {
            "(page store)".to_owned()
        } else {
            format!("{:08x}", e.crc32c)
        };
        let at = if e.packed {
            format!("pack.img @ {:#x}", e.offset)
        } else {
            "own file".to_owned()
        };
        let _ = writeln!(s, "    {:<width$}  {:>12}  {crc:<12}  {at}", e.name, e.size);
    }

    let _ = writeln!(s, "\nprocess tree");
    match &c.pstree {
        None => {
            let _ = writeln!(s, "  (no pstree.img)");
        }
        Some(tree) => {
            let _ = writeln!(
                s,
                "  {:>7} {:>7} {:>7} {:>7}  THREADS",
                "PID", "PPID", "PGID", "SID"
            );
            for e in tree {
                let threads: Vec<String> = e.threads.iter().map(i32::to_string).collect();
                let state = if e.zombie {
                    format!("zombie, wait status {:#x}", e.exit_status)
                } else if e.stopped {
                    format!("{} (stopped)", threads.join(" "))
                } else {
                    threads.join(" ")
                };
                let mut state = state;
                if e.files_shared {
                    state += " [parent's fd table]";
                }
                if e.fs_shared {
                    state += " [parent's cwd/root/umask]";
                }
                let ctty = if e.ctty_inode_id != 0 {
                    format!(
                        "  [controlling terminal: pty object {}, foreground group {}]",
                        e.ctty_inode_id, e.tty_fg_pgrp
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "  {:>7} {:>7} {:>7} {:>7}  {}{ctty}",
                    e.pid, e.ppid, e.pgid, e.sid, state
                );
            }
        }
    }

    for p in &c.processes {
        process_text(&mut s, p);
    }
    s
}

fn process_text(s: &mut String, p: &Process) {
    let pid = p.pid;
    let _ = writeln!(s, "\nprocess {pid}");
    match &p.core {
        None => {
            let _ = writeln!(s, "  (no core-{pid}.img)");
        }
        Some(core) => {
            let _ = writeln!(s, "  exe         {}", core.exe);
            let _ = writeln!(s, "  cwd         {}", core.cwd);
            if !core.root.is_empty() && core.root != "/" {
                let _ = writeln!(s, "  root        {}", core.root);
            }
            let _ = writeln!(s, "  umask       {:04o}", core.umask);
            if let Some(creds) = &core.creds {
                let _ = writeln!(s, "  uids        {:?}", creds.uids);
                let _ = writeln!(s, "  gids        {:?}", creds.gids);
            }
        }
    }

    let _ = writeln!(s, "  threads");
    match &p.tasks {
        None => {
            let _ = writeln!(s, "    (no tasks-{pid}.img)");
        }
        Some(tasks) => {
            let _ = writeln!(
                s,
                "    {:>7}  {:<16}  {:>18}  {:>18}  SIGMASK",
                "TID", "COMM", "RIP", "RSP"
            );
            for t in tasks {
                let regs = t.regs.unwrap_or_default();
                let names = mask_names(t.sigmask);
                let blocked = if names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", names.join(" "))
                };
                let _ = writeln!(
                    s,
                    "    {:>7}  {:<16}  {:>18}  {:>18}  {:#018x}{blocked}",
                    t.tid,
                    t.comm,
                    hex(regs.rip),
                    hex(regs.rsp),
                    t.sigmask
                );
            }
        }
    }

    if let Some(core) = &p.core {
        let actions: Vec<_> = core.sigactions.iter().filter(|a| a.handler != 0).collect();
        let _ = writeln!(s, "  signal actions (not SIG_DFL): {}", actions.len());
        for a in actions {
            let _ = writeln!(
                s,
                "    {:<14} handler {:<18}  flags {:#x}  mask {:#x}  restorer {:#x}",
                signal_name(a.signo),
                handler_name(a.handler),
                a.flags,
                a.mask,
                a.restorer
            );
        }
        let _ = writeln!(s, "  itimers: {}", core.itimers.len());
        for t in &core.itimers {
            let _ = writeln!(
                s,
                "    {:<14} value {} us  interval {} us",
                itimer_name(t.which),
                t.value_us,
                t.interval_us
            );
        }
        let _ = writeln!(s, "  posix timers: {}", core.posix_timers.len());
        for t in &core.posix_timers {
            let _ = writeln!(
                s,
                "    id {:<4} {:<24} {} {}{}  value {} ns  interval {} ns  overrun {}",
                t.id,
                clock_name(t.clock_id),
                notify_name(t.sigev_notify),
                signal_name(t.sigev_signo as u32),
                if t.sigev_notify == libc::SIGEV_THREAD_ID {
                    format!(" (tid {})", t.notify_tid)
                } else {
                    String::new()
                },
                t.value_ns,
                t.interval_ns,
                t.overrun
            );
        }
        let limits: Vec<_> = core
            .rlimits
            .iter()
            .filter(|r| r.cur != RLIM_INFINITY || r.max != RLIM_INFINITY)
            .collect();
        let _ = writeln!(s, "  rlimits (not unlimited): {}", limits.len());
        for r in limits {
            let _ = writeln!(
                s,
                "    {:<18} cur {:<12} max {}",
                rlimit_name(r.resource),
                rlim_text(r.cur),
                rlim_text(r.max)
            );
        }
    }

    match &p.mm {
        None => {
            let _ = writeln!(s, "  memory: (no mm-{pid}.img)");
        }
        Some(mm) => {
            let _ = writeln!(
                s,
                "  memory: {} VMAs, brk {:#x}-{:#x}",
                mm.vmas.len(),
                mm.start_brk,
                mm.brk
            );
            let _ = writeln!(
                s,
                "    {:>33}  PROT  {:<14} {:>10}  PATH",
                "START-END", "KIND", "PGOFF"
            );
            for v in &mm.vmas {
                let path = v
                    .file
                    .as_ref()
                    .map(|f| f.path.as_str())
                    .filter(|p| !p.is_empty())
                    .unwrap_or(&v.name);
                let path = if path.is_empty() { "-" } else { path };
                let _ = writeln!(
                    s,
                    "    {:>33}  {}  {:<14} {:>10}  {}",
                    format!("{:x}-{:x}", v.start, v.end),
                    prot_text(v.prot, v.flags),
                    vma_kind_name(v.kind),
                    format!("{:x}", v.pgoff),
                    path
                );
            }
        }
    }

    match &p.fds {
        None => {
            let _ = writeln!(s, "  fds: (no fds-{pid}.img)");
        }
        Some(fds) => {
            let _ = writeln!(s, "  fds: {}", fds.len());
            let _ = writeln!(
                s,
                "    {:>5}  {:<8}  {:<32}  {:>10}  PATH",
                "FD", "KIND", "FLAGS", "POS"
            );
            for f in fds {
                let _ = writeln!(
                    s,
                    "    {:>5}  {:<8}  {:<32}  {:>10}  {}",
                    f.fd,
                    fd_kind_name(f.kind),
                    open_flags_text(f.flags, f.cloexec),
                    f.pos,
                    f.path
                );
                let detail = fd_detail(f, fds);
                if !detail.is_empty() {
                    let _ = writeln!(s, "    {:>5}  {}", "", detail);
                }
            }
        }
    }

    match &p.pagemap {
        None => {
            let _ = writeln!(s, "  pages: (no pagemap-{pid}.img)");
        }
        Some(runs) => {
            let (n, pages, bytes) = pages_totals(runs);
            let store = p.pages_size.map_or_else(
                || "no page store".to_owned(),
                |sz| format!("page store {sz} bytes"),
            );
            let _ = writeln!(
                s,
                "  pages: {n} runs, {pages} pages, {bytes} bytes stored ({store})"
            );
        }
    }
}

// ---- JSON ----

fn to_json(c: &Checkpoint) -> Value {
    let inv = &c.inventory;
    let files: Vec<Value> = inv
        .manifest
        .iter()
        .map(|e| {
            json!({
                "name": e.name,
                "size": e.size,
                "crc32c": if e.pages { Value::Null } else { json!(format!("{:08x}", e.crc32c)) },
                "pages": e.pages,
                "packed": e.packed,
                "offset": e.offset,
            })
        })
        .collect();
    let inventory = json!({
        "format": format!("{}.{}", inv.format_major, inv.format_minor),
        "format_major": inv.format_major,
        "format_minor": inv.format_minor,
        "tool_version": inv.tool_version,
        "kernel": inv.kernel,
        "dump_time_unix_ms": inv.dump_time_unix_ms,
        "dump_time": utc_text(inv.dump_time_unix_ms),
        "root_pid": inv.root_pid,
        "pids": inv.pids,
        "shell_job": inv.shell_job,
        "files": files,
        "pack_size": inv.pack_size,
    });
    let pstree = c.pstree.as_ref().map_or(Value::Null, |tree| {
        Value::Array(
            tree.iter()
                .map(|e| {
                    json!({
                        "pid": e.pid, "ppid": e.ppid, "pgid": e.pgid, "sid": e.sid,
                        "threads": e.threads, "zombie": e.zombie,
                        "exit_status": e.exit_status, "stopped": e.stopped,
                        "files_shared": e.files_shared, "fs_shared": e.fs_shared,
                    })
                })
                .collect(),
        )
    });
    let processes: Vec<Value> = c.processes.iter().map(process_json).collect();
    json!({
        "dir": c.dir,
        "signed": c.signed,
        "inventory": inventory,
        "pstree": pstree,
        "processes": processes,
    })
}

fn process_json(p: &Process) -> Value {
    let mut o = Map::new();
    o.insert("pid".into(), json!(p.pid));
    if let Some(core) = &p.core {
        o.insert("exe".into(), json!(core.exe));
        o.insert("cwd".into(), json!(core.cwd));
        o.insert("root".into(), json!(core.root));
        o.insert("umask".into(), json!(format!("{:04o}", core.umask)));
        let actions: Vec<Value> = core
            .sigactions
            .iter()
            .filter(|a| a.handler != 0)
            .map(|a| {
                json!({
                    "signo": a.signo,
                    "signal": signal_name(a.signo),
                    "handler": handler_name(a.handler),
                    "flags": hex(a.flags),
                    "mask": hex(a.mask),
                    "restorer": hex(a.restorer),
                })
            })
            .collect();
        o.insert("sigactions".into(), Value::Array(actions));
        let itimers: Vec<Value> = core
            .itimers
            .iter()
            .map(|t| {
                json!({
                    "which": itimer_name(t.which),
                    "value_us": t.value_us,
                    "interval_us": t.interval_us,
                })
            })
            .collect();
        o.insert("itimers".into(), Value::Array(itimers));
        let timers: Vec<Value> = core
            .posix_timers
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "clock": clock_name(t.clock_id),
                    "notify": notify_name(t.sigev_notify),
                    "signal": signal_name(t.sigev_signo as u32),
                    "notify_tid": t.notify_tid,
                    "value_ns": t.value_ns,
                    "interval_ns": t.interval_ns,
                    "overrun": t.overrun,
                })
            })
            .collect();
        o.insert("posix_timers".into(), Value::Array(timers));
        let limits: Vec<Value> = core
            .rlimits
            .iter()
            .filter(|r| r.cur != RLIM_INFINITY || r.max != RLIM_INFINITY)
            .map(|r| {
                json!({
                    "resource": rlimit_name(r.resource),
                    "cur": rlim_json(r.cur),
                    "max": rlim_json(r.max),
                })
            })
            .collect();
        o.insert("rlimits".into(), Value::Array(limits));
    } else {
        o.insert("core".into(), Value::Null);
    }
    let threads = p.tasks.as_ref().map_or(Value::Null, |tasks| {
        Value::Array(
            tasks
                .iter()
                .map(|t| {
                    let regs = t.regs.unwrap_or_default();
                    json!({
                        "tid": t.tid,
                        "comm": t.comm,
                        "rip": hex(regs.rip),
                        "rsp": hex(regs.rsp),
                        "sigmask": hex(t.sigmask),
                        "blocked": mask_names(t.sigmask),
                    })
                })
                .collect(),
        )
    });
    o.insert("threads".into(), threads);
    let vmas = p.mm.as_ref().map_or(Value::Null, |mm| {
        Value::Array(
            mm.vmas
                .iter()
                .map(|v| {
                    json!({
                        "start": hex(v.start),
                        "end": hex(v.end),
                        "prot": prot_text(v.prot, v.flags),
                        "kind": vma_kind_name(v.kind),
                        "path": v.file.as_ref().map(|f| f.path.clone()).filter(|p| !p.is_empty())
                            .unwrap_or_else(|| v.name.clone()),
                        "pgoff": hex(v.pgoff),
                    })
                })
                .collect(),
        )
    });
    o.insert("vmas".into(), vmas);
    let fds = p.fds.as_ref().map_or(Value::Null, |fds| {
        Value::Array(
            fds.iter()
                .map(|f| {
                    json!({
                        "fd": f.fd,
                        "kind": fd_kind_name(f.kind),
                        "path": f.path,
                        "flags": open_flags_text(f.flags, f.cloexec),
                        "pos": f.pos,
                        "desc_id": f.desc_id,
                        "inode_id": f.inode_id,
                        "detail": fd_detail(f, fds),
                    })
                })
                .collect(),
        )
    });
    o.insert("fds".into(), fds);
    let pages = p.pagemap.as_ref().map_or(Value::Null, |runs| {
        let (n, pages, bytes) = pages_totals(runs);
        json!({ "runs": n, "pages": pages, "bytes": bytes, "store_size": p.pages_size })
    });
    o.insert("pages".into(), pages);
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc_text(951_782_400_000), "2000-02-29 00:00:00.000 UTC");
        assert_eq!(utc_text(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
        assert_eq!(utc_text(4_107_542_399_999), "2100-02-28 23:59:59.999 UTC");
    }

    #[test]
    fn names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(34), "SIGRTMIN+2");
        assert_eq!(mask_names((1 << 1) | (1 << 9)), ["SIGINT", "SIGUSR1"]);
        assert_eq!(rlimit_name(7), "RLIMIT_NOFILE");
        assert_eq!(prot_text(5, 2), "r-xp");
        assert_eq!(prot_text(3, 1), "rw-s");
        assert_eq!(
            vma_kind_name(VmaKind::VmaFilePrivate as i32),
            "file_private"
        );
        assert_eq!(fd_kind_name(FdKind::FdPipe as i32), "pipe");
        assert_eq!(
            open_flags_text((libc::O_WRONLY | libc::O_APPEND) as u32, true),
            "O_WRONLY|O_APPEND|O_CLOEXEC"
        );
    }
}
