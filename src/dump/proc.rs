//! Readers and parsers for the `/proc/PID/*` files the dumper collects from: memory maps and the
//! identity of mapped files, `stat`, `status`, `auxv`, `fdinfo` and the fd table, `limits`,
//! POSIX `timers`, the thread list, children, links (`cwd`, `root`, `exe`), `comm` and `pagemap`.
//!
//! Every format has a pure `parse_*` function over the file's text (unit-tested on samples taken
//! from a 6.18 kernel) and a `read_*` wrapper that reads the file and names it in errors. This
//! module only reads `/proc` of the tasks it is asked about; it does not ptrace, change any state,
//! or decide what is dumped. A task that exits while it is being read gives [`ProcError::Gone`],
//! which callers may treat as non-fatal (a thread exiting during a dump).
//!
//! Text handling: paths (maps, links, fd targets) must be UTF-8 and are refused otherwise
//! ([`ProcError::NotUtf8`]) rather than silently altered; `comm` (which the kernel may truncate in
//! the middle of a multi-byte character) is decoded lossily.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use tracing::{debug, trace};

use crate::sys::PAGE_SIZE;

/// An error reading or parsing a `/proc` file.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The task exited (or was reaped) while it was being read. `pid` is the id of the task that
    /// vanished: the TID for per-thread files (`/proc/PID/task/TID/*`), else the PID.
    #[error("task {pid} is gone")]
    Gone {
        /// The process or thread id that no longer exists.
        pid: i32,
    },
    /// Reading a `/proc` file or link failed.
    #[error("reading {}", path.display())]
    Io {
        /// The file, link or directory being read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A line of a `/proc` file did not have the expected shape.
    #[error("{}: line {line}: {what}: {text:?}", path.display())]
    Parse {
        /// The file (a short label such as `maps` when parsed from text alone).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line (or field).
        text: String,
        /// What was wrong with it.
        what: String,
    },
    /// A field the dumper needs is absent from the file.
    #[error("{}: no {key:?} field", path.display())]
    Missing {
        /// The file (a short label when parsed from text alone).
        path: PathBuf,
        /// The missing key or row.
        key: &'static str,
    },
    /// A path or file content that must be UTF-8 is not.
    #[error("{}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The file or link.
        path: PathBuf,
    },
    /// A pagemap range that is not page-aligned or is reversed.
    #[error("pagemap range {start:#x}-{end:#x} of task {pid} is not a page-aligned range")]
    BadRange {
        /// The process.
        pid: i32,
        /// Start address.
        start: u64,
        /// End address (exclusive).
        end: u64,
    },
    /// Reading `/proc/PID/pagemap` failed at an address.
    #[error("reading {} at address {addr:#x}", path.display())]
    Pagemap {
        /// The pagemap file.
        path: PathBuf,
        /// The virtual address whose entry was being read.
        addr: u64,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ProcError {
    /// True if the task vanished (see [`ProcError::Gone`]).
    pub fn is_gone(&self) -> bool {
        matches!(self, ProcError::Gone { .. })
    }

    /// Replaces the label of a parse error with the full path it was read from.
    fn in_file(self, file: &Path) -> Self {
        match self {
            ProcError::Parse {
                line, text, what, ..
            } => ProcError::Parse {
                path: file.to_path_buf(),
                line,
                text,
                what,
            },
            ProcError::Missing { key, .. } => ProcError::Missing {
                path: file.to_path_buf(),
                key,
            },
            ProcError::NotUtf8 { .. } => ProcError::NotUtf8 {
                path: file.to_path_buf(),
            },
            other => other,
        }
    }
}

/// The owner of a set of `/proc` files: a process (`/proc/PID`) or one of its threads
/// (`/proc/PID/task/TID`). Used to tell "the task is gone" from "this file is missing".
struct Task {
    id: i32,
    dir: PathBuf,
}

impl Task {
    fn process(pid: i32) -> Self {
        Task {
            id: pid,
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    fn thread(pid: i32, tid: i32) -> Self {
        Task {
            id: tid,
            dir: PathBuf::from(format!("/proc/{pid}/task/{tid}")),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Classifies an I/O error on one of this task's files: ESRCH, or ENOENT once the task's
    /// directory is gone, mean the task exited; anything else is an I/O error on `path`.
    fn error(&self, path: &Path, source: io::Error) -> ProcError {
        match source.raw_os_error() {
            Some(libc::ESRCH) => ProcError::Gone { pid: self.id },
            Some(libc::ENOENT) if !self.dir.exists() => ProcError::Gone { pid: self.id },
            _ => ProcError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    fn read_bytes(&self, name: &str) -> Result<(PathBuf, Vec<u8>), ProcError> {
        let path = self.file(name);
        trace!(pid = self.id, path = %path.display(), "read");
        match read_whole(&path) {
            Ok(bytes) => Ok((path, bytes)),
            Err(e) => Err(self.error(&path, e)),
        }
    }

    /// Reads a file that must be UTF-8 (it may hold paths).
    fn read_text(&self, name: &str) -> Result<(PathBuf, String), ProcError> {
        let (path, bytes) = self.read_bytes(name)?;
        match String::from_utf8(bytes) {
            Ok(text) => Ok((path, text)),
            Err(_) => Err(ProcError::NotUtf8 { path }),
        }
    }

    /// Reads a file whose only non-ASCII content can be a `comm` (decoded lossily).
    fn read_text_lossy(&self, name: &str) -> Result<(PathBuf, String), ProcError> {
        let (path, bytes) = self.read_bytes(name)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Ok((path, text))
    }

    fn read_link(&self, name: &str) -> Result<String, ProcError> {
        let path = self.file(name);
        let target = fs::read_link(&path).map_err(|e| self.error(&path, e))?;
        target
            .into_os_string()
            .into_string()
            .map_err(|_| ProcError::NotUtf8 { path })
    }
}

/// Reads a whole `/proc` file. `fs::read` first asks the file its size (statx and lseek, two
/// more syscalls per file, and `/proc` files report 0 anyway); this reads page-sized chunks
/// until end of file.
pub fn read_whole(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2, 0);
        }
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// [`read_whole`], decoded lossily (for files whose only non-ASCII content can be a name).
pub fn read_lossy(path: &Path) -> io::Result<String> {
    read_whole(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Builds a parse error for line `line` (1-based) of the file labelled `file`.
fn bad(file: &str, line: usize, text: &str, what: impl Into<String>) -> ProcError {
    ProcError::Parse {
        path: PathBuf::from(file),
        line,
        text: text.to_string(),
        what: what.into(),
    }
}

fn missing(file: &str, key: &'static str) -> ProcError {
    ProcError::Missing {
        path: PathBuf::from(file),
        key,
    }
}

/// The lines of a /proc file. Split on '\n' only (not `str::lines`, which would also eat a '\r'
/// that belongs to a name); a final empty piece after the last newline is dropped.
fn proc_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines = if body.is_empty() {
        None
    } else {
        Some(body.split('\n'))
    };
    lines
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.parse().ok()
}

fn parse_hex_u64(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// maps
// ---------------------------------------------------------------------------------------------

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `libc::PROT_READ | PROT_WRITE | PROT_EXEC` bits.
    pub prot: u32,
    /// `s` (MAP_SHARED) rather than `p`.
    pub shared: bool,
    /// File offset in bytes (for anonymous shared memory, the offset in its shmem object).
    pub offset: u64,
    /// Device of the mapped file: (major, minor).
    pub dev: (u32, u32),
    /// Inode of the mapped file, 0 if none.
    pub inode: u64,
    /// The pathname column as printed (`""` if none, `[heap]`, `[vdso]`, `/SYSV00000000`, ...),
    /// with a trailing ` (deleted)` removed. The kernel prints a newline in a file name as `\012`
    /// and does not escape backslashes, so for odd names the exact path is the link
    /// `/proc/PID/map_files/START-END` (see [`map_file_metadata`]).
    pub path: String,
    /// The path carried the ` (deleted)` suffix: the file is unlinked (this is also how the kernel
    /// shows anonymous shared memory: `/dev/zero (deleted)`, `/SYSV... (deleted)`, and memfds:
    /// `/memfd:NAME (deleted)`).
    pub deleted: bool,
}

/// Splits off the field before the next single space.
fn field(s: &str) -> Option<(&str, &str)> {
    match s.split_once(' ') {
        Some((f, rest)) => Some((f, rest)),
        None if !s.is_empty() => Some((s, "")),
        None => None,
    }
}

fn parse_maps_line(l: &str) -> Result<MapEntry, &'static str> {
    let (range, rest) = field(l).ok_or("empty line")?;
    let (perms, rest) = field(rest).ok_or("no permissions")?;
    let (offset, rest) = field(rest).ok_or("no offset")?;
    let (dev, rest) = field(rest).ok_or("no device")?;
    let (inode, rest) = field(rest).ok_or("no inode")?;

    let (start, end) = range.split_once('-').ok_or("bad address range")?;
    let start = parse_hex_u64(start).ok_or("bad start address")?;
    let end = parse_hex_u64(end).ok_or("bad end address")?;
    if start >= end {
        return Err("empty or reversed address range");
    }

    let p = perms.as_bytes();
    if p.len() != 4 {
        return Err("permissions are not 4 characters");
    }
    let mut prot = 0u32;
    for (i, (c, bit)) in [
        (b'r', libc::PROT_READ),
        (b'w', libc::PROT_WRITE),
        (b'x', libc::PROT_EXEC),
    ]
    .into_iter()
    .enumerate()
    {
        match p[i] {
            b'-' => {}
            x if x == c => prot |= bit as u32,
            _ => return Err("bad permission character"),
        }
    }
    let shared = match p[3] {
        b's' => true,
        b'p' => false,
        _ => return Err("sharing flag is neither 's' nor 'p'"),
    };

    let offset = parse_hex_u64(offset).ok_or("bad offset")?;
    let (major, minor) = dev.split_once(':').ok_or("bad device")?;
    let major = u32::from_str_radix(major, 16).map_err(|_| "bad device major")?;
    let minor = u32::from_str_radix(minor, 16).map_err(|_| "bad device minor")?;
    let inode = parse_num(inode).ok_or("bad inode")?;

    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Ok(MapEntry {
        start,
        end,
        prot,
        shared,
        offset,
        dev: (major, minor),
        inode,
        path: path.to_string(),
        deleted,
    })
}

/// Parses the text of `/proc/PID/maps`. Pathnames may contain spaces.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, ProcError> {
    proc_lines(text)
        .map(|(n, l)| parse_maps_line(l).map_err(|what| bad("maps", n, l, what)))
        .collect()
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>, ProcError> {
    let (path, text) = Task::process(pid).read_text("maps")?;
    let maps = parse_maps(&text).map_err(|e| e.in_file(&path))?;
    debug!(pid, vmas = maps.len(), "read maps");
    Ok(maps)
}

/// The `VmFlags` of each VMA in the text of `/proc/PID/smaps`: (start address, the two-letter
/// flags). A VMA's header line is a maps line; the lines after it are `Key: value`.
pub fn parse_vm_flags(text: &str) -> Result<Vec<(u64, Vec<String>)>, ProcError> {
    let mut out: Vec<(u64, Vec<String>)> = Vec::new();
    let mut current = None;
    for (n, l) in proc_lines(text) {
        let first = l.split(' ').next().unwrap_or_default();
        if let Some(flags) = l.strip_prefix("VmFlags:") {
            let start = current
                .take()
                .ok_or_else(|| bad("smaps", n, l, "VmFlags before any mapping"))?;
            out.push((start, flags.split_whitespace().map(String::from).collect()));
        } else if !first.ends_with(':') {
            let start = first
                .split_once('-')
                .and_then(|(s, _)| parse_hex_u64(s))
                .ok_or_else(|| bad("smaps", n, l, "bad address range"))?;
            current = Some(start);
        }
    }
    Ok(out)
}

/// Reads `/proc/PID/smaps` and gives each VMA's `VmFlags` ([`parse_vm_flags`]).
pub fn read_vm_flags(pid: i32) -> Result<Vec<(u64, Vec<String>)>, ProcError> {
    let (path, text) = Task::process(pid).read_text_lossy("smaps")?;
    parse_vm_flags(&text).map_err(|e| e.in_file(&path))
}

// ---------------------------------------------------------------------------------------------
// map_files and file identity
// ---------------------------------------------------------------------------------------------

/// The identity of a file, from stat() through a `/proc` magic link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// The link target as the kernel prints it (a deleted file keeps its ` (deleted)` suffix;
    /// pipes and sockets read `pipe:[INO]`, `socket:[INO]`).
    pub path: String,
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size`.
    pub size: u64,
    /// `st_mtime` in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// `st_rdev`.
    pub rdev: u64,
}

fn file_stat(path: String, m: &Metadata) -> FileStat {
    FileStat {
        path,
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        mode: m.mode(),
        rdev: m.rdev(),
    }
}

/// For a file-backed mapping (including anonymous shared memory and memfds), stat() of the
/// mapped file through `/proc/PID/map_files/START-END` (which needs CAP_SYS_ADMIN). `start` and
/// `end` must be exactly the bounds of one mapping from [`read_maps`].
pub fn map_file_metadata(pid: i32, start: u64, end: u64) -> Result<Metadata, ProcError> {
    let task = Task::process(pid);
    let path = task.file(&format!("map_files/{start:x}-{end:x}"));
    fs::metadata(&path).map_err(|e| task.error(&path, e))
}

// ---------------------------------------------------------------------------------------------
// stat
// ---------------------------------------------------------------------------------------------

/// Fields of `/proc/PID/stat` (see proc(5); the field numbers there are 1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    /// (1) pid.
    pub pid: i32,
    /// (2) comm, without the parentheses.
    pub comm: String,
    /// (3) state letter.
    pub state: char,
    /// (4) parent pid.
    pub ppid: i32,
    /// (5) process group.
    pub pgrp: i32,
    /// (6) session.
    pub session: i32,
    /// (7) controlling terminal.
    pub tty_nr: i32,
    /// (9) kernel PF_* flags.
    pub flags: u64,
    /// (20) number of threads.
    pub num_threads: i64,
    /// (26) start of the text segment.
    pub start_code: u64,
    /// (27) end of the text segment.
    pub end_code: u64,
    /// (28) start of the main stack.
    pub start_stack: u64,
    /// (45) start of the data segment.
    pub start_data: u64,
    /// (46) end of the data segment.
    pub end_data: u64,
    /// (47) start of the heap (brk base).
    pub start_brk: u64,
    /// (48) start of argv.
    pub arg_start: u64,
    /// (49) end of argv.
    pub arg_end: u64,
    /// (50) start of the environment.
    pub env_start: u64,
    /// (51) end of the environment.
    pub env_end: u64,
    /// (38) signal sent to the parent on exit (-1 for a non-leader thread).
    pub exit_signal: i32,
    /// (52) exit status as waitpid would report it.
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat` (or `/proc/PID/task/TID/stat`). The comm may contain spaces,
/// parentheses and newlines, so it ends at the last `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, ProcError> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let err = |what: &str| bad("stat", 1, line, what);
    let open = line.find(" (").ok_or_else(|| err("no '(' before comm"))?;
    let close = line.rfind(')').ok_or_else(|| err("no ')' after comm"))?;
    if close < open + 2 {
        return Err(err("')' before '('"));
    }
    let pid = parse_num(&line[..open]).ok_or_else(|| err("bad pid"))?;
    let comm = line[open + 2..close].to_string();
    // fields[0] is field 3 (state) of proc(5).
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    if fields.len() < 50 {
        return Err(err("fewer than 52 fields"));
    }
    let get = |n: usize| fields[n - 3];
    // A closure cannot be generic, so each field is parsed through a small macro.
    macro_rules! f {
        ($n:expr, $name:literal) => {
            get($n)
                .parse()
                .map_err(|_| err(concat!("bad field ", $name)))?
        };
    }
    let state_field = get(3);
    let mut chars = state_field.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(err("state is not one character")),
    };
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid: f!(4, "ppid"),
        pgrp: f!(5, "pgrp"),
        session: f!(6, "session"),
        tty_nr: f!(7, "tty_nr"),
        flags: f!(9, "flags"),
        num_threads: f!(20, "num_threads"),
        start_code: f!(26, "startcode"),
        end_code: f!(27, "endcode"),
        start_stack: f!(28, "startstack"),
        exit_signal: f!(38, "exit_signal"),
        start_data: f!(45, "start_data"),
        end_data: f!(46, "end_data"),
        start_brk: f!(47, "start_brk"),
        arg_start: f!(48, "arg_start"),
        arg_end: f!(49, "arg_end"),
        env_start: f!(50, "env_start"),
        env_end: f!(51, "env_end"),
        exit_code: f!(52, "exit_code"),
    })
}

fn read_stat_of(task: &Task) -> Result<ProcStat, ProcError> {
    let (path, text) = task.read_text_lossy("stat")?;
    parse_stat(&text).map_err(|e| e.in_file(&path))
}

/// Reads `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Result<ProcStat, ProcError> {
    read_stat_of(&Task::process(pid))
}

/// Reads `/proc/PID/task/TID/stat`.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<ProcStat, ProcError> {
    read_stat_of(&Task::thread(pid, tid))
}

// ---------------------------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------------------------

/// Fields of `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStatus {
    /// `Name:` (the comm, with the kernel's `\n` and `\\` escapes undone).
    pub name: String,
    /// `Umask:` (octal in the file).
    pub umask: u32,
    /// First letter of `State:`.
    pub state: char,
    /// `Tgid:`.
    pub tgid: i32,
    /// `Pid:`.
    pub pid: i32,
    /// `PPid:`.
    pub ppid: i32,
    /// `TracerPid:`.
    pub tracer_pid: i32,
    /// `Uid:` real, effective, saved, filesystem.
    pub uids: [u32; 4],
    /// `Gid:` real, effective, saved, filesystem.
    pub gids: [u32; 4],
    /// `Groups:` supplementary groups.
    pub groups: Vec<u32>,
    /// `NSpid:` the pid in each pid namespace, outermost (the reader's) first.
    pub nspid: Vec<i32>,
    /// `Threads:`.
    pub threads: u32,
    /// `SigPnd:` signals pending for this thread.
    pub sig_pnd: u64,
    /// `ShdPnd:` signals pending for the whole process.
    pub shd_pnd: u64,
    /// `SigBlk:` blocked mask.
    pub sig_blk: u64,
    /// `SigIgn:` ignored signals.
    pub sig_ign: u64,
    /// `SigCgt:` caught signals.
    pub sig_cgt: u64,
    /// `CapInh:`.
    pub cap_inh: u64,
    /// `CapPrm:`.
    pub cap_prm: u64,
    /// `CapEff:`.
    pub cap_eff: u64,
    /// `CapBnd:`.
    pub cap_bnd: u64,
    /// `CapAmb:`.
    pub cap_amb: u64,
    /// `NoNewPrivs:`.
    pub no_new_privs: bool,
    /// `Seccomp:` mode (0 off, 1 strict, 2 filter).
    pub seccomp: u32,
    /// `VmLck:` in KiB: memory locked (mlock, and pages pinned by drivers such as vfio that
    /// account them so); 0 when the line is absent.
    pub vm_lck_kib: u64,
    /// `VmPin:` in KiB: pages pinned for devices or io_uring buffers, which the kernel reads
    /// and writes without the page tables; 0 when the line is absent.
    pub vm_pin_kib: u64,
}

/// Undoes the escaping of `Name:` in status: the kernel writes `\` as `\\` and newline as `\n`.
fn unescape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Parses `/proc/PID/status` (or `/proc/PID/task/TID/status`).
pub fn parse_status(text: &str) -> Result<ProcStatus, ProcError> {
    const F: &str = "status";
    let mut name = None;
    let mut umask = None;
    let mut state = None;
    let mut tgid = None;
    let mut pid = None;
    let mut ppid = None;
    let mut tracer_pid = None;
    let mut uids = None;
    let mut gids = None;
    let mut groups = None;
    let mut nspid = None;
    let mut threads = None;
    let mut sig = [None; 5];
    let mut caps = [None; 5];
    let mut no_new_privs = None;
    let mut seccomp = None;
    let (mut vm_lck_kib, mut vm_pin_kib) = (0, 0);

    for (n, l) in proc_lines(text) {
        let Some((key, raw)) = l.split_once(':') else {
            return Err(bad(F, n, l, "no ':'"));
        };
        let v = raw.trim();
        let err = |what: &str| bad(F, n, l, what);
        let four = |what: &str| -> Result<[u32; 4], ProcError> {
            let ids: Vec<u32> = v
                .split_whitespace()
                .map(parse_num)
                .collect::<Option<_>>()
                .ok_or_else(|| err(what))?;
            ids.try_into().map_err(|_| err(what))
        };
        let hex = |what: &str| parse_hex_u64(v).ok_or_else(|| err(what));
        match key {
            // Only the tab after the colon is a separator: a comm may end in spaces or tabs.
            "Name" => name = Some(unescape_name(raw.strip_prefix('\t').unwrap_or(raw))),
            "Umask" => {
                umask = Some(u32::from_str_radix(v, 8).map_err(|_| err("bad umask"))?);
            }
            "State" => state = Some(v.chars().next().ok_or_else(|| err("empty state"))?),
            "Tgid" => tgid = Some(parse_num(v).ok_or_else(|| err("bad tgid"))?),
            "Pid" => pid = Some(parse_num(v).ok_or_else(|| err("bad pid"))?),
            "PPid" => ppid = Some(parse_num(v).ok_or_else(|| err("bad ppid"))?),
            "TracerPid" => tracer_pid = Some(parse_num(v).ok_or_else(|| err("bad tracer pid"))?),
            "Uid" => uids = Some(four("bad uids")?),
            "Gid" => gids = Some(four("bad gids")?),
            "Groups" => {
                groups = Some(
                    v.split_whitespace()
                        .map(parse_num)
                        .collect::<Option<Vec<u32>>>()
                        .ok_or_else(|| err("bad groups"))?,
                );
            }
            "NSpid" => {
                nspid = Some(
                    v.split_whitespace()
                        .map(parse_num)
                        .collect::<Option<Vec<i32>>>()
                        .ok_or_else(|| err("bad NSpid"))?,
                );
            }
            "Threads" => threads = Some(parse_num(v).ok_or_else(|| err("bad thread count"))?),
            "SigPnd" => sig[0] = Some(hex("bad mask")?),
            "ShdPnd" => sig[1] = Some(hex("bad mask")?),
            "SigBlk" => sig[2] = Some(hex("bad mask")?),
            "SigIgn" => sig[3] = Some(hex("bad mask")?),
            "SigCgt" => sig[4] = Some(hex("bad mask")?),
            "CapInh" => caps[0] = Some(hex("bad capability set")?),
            "CapPrm" => caps[1] = Some(hex("bad capability set")?),
            "CapEff" => caps[2] = Some(hex("bad capability set")?),
            "CapBnd" => caps[3] = Some(hex("bad capability set")?),
            "CapAmb" => caps[4] = Some(hex("bad capability set")?),
            "NoNewPrivs" => {
                no_new_privs = Some(match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(err("NoNewPrivs is neither 0 nor 1")),
                });
            }
            "Seccomp" => seccomp = Some(parse_num(v).ok_or_else(|| err("bad seccomp mode"))?),
            "VmLck" | "VmPin" => {
                let kib = v
                    .strip_suffix(" kB")
                    .and_then(|n| parse_num(n.trim()))
                    .ok_or_else(|| err("bad size"))?;
                if key == "VmLck" {
                    vm_lck_kib = kib;
                } else {
                    vm_pin_kib = kib;
                }
            }
            _ => {}
        }
    }
    let [sig_pnd, shd_pnd, sig_blk, sig_ign, sig_cgt] = sig;
    let [cap_inh, cap_prm, cap_eff, cap_bnd, cap_amb] = caps;
    Ok(ProcStatus {
        name: name.ok_or_else(|| missing(F, "Name"))?,
        umask: umask.ok_or_else(|| missing(F, "Umask"))?,
        state: state.ok_or_else(|| missing(F, "State"))?,
        tgid: tgid.ok_or_else(|| missing(F, "Tgid"))?,
        pid: pid.ok_or_else(|| missing(F, "Pid"))?,
        ppid: ppid.ok_or_else(|| missing(F, "PPid"))?,
        tracer_pid: tracer_pid.ok_or_else(|| missing(F, "TracerPid"))?,
        uids: uids.ok_or_else(|| missing(F, "Uid"))?,
        gids: gids.ok_or_else(|| missing(F, "Gid"))?,
        groups: groups.ok_or_else(|| missing(F, "Groups"))?,
        nspid: nspid.ok_or_else(|| missing(F, "NSpid"))?,
        threads: threads.ok_or_else(|| missing(F, "Threads"))?,
        sig_pnd: sig_pnd.ok_or_else(|| missing(F, "SigPnd"))?,
        shd_pnd: shd_pnd.ok_or_else(|| missing(F, "ShdPnd"))?,
        sig_blk: sig_blk.ok_or_else(|| missing(F, "SigBlk"))?,
        sig_ign: sig_ign.ok_or_else(|| missing(F, "SigIgn"))?,
        sig_cgt: sig_cgt.ok_or_else(|| missing(F, "SigCgt"))?,
        cap_inh: cap_inh.ok_or_else(|| missing(F, "CapInh"))?,
        cap_prm: cap_prm.ok_or_else(|| missing(F, "CapPrm"))?,
        cap_eff: cap_eff.ok_or_else(|| missing(F, "CapEff"))?,
        cap_bnd: cap_bnd.ok_or_else(|| missing(F, "CapBnd"))?,
        cap_amb: cap_amb.ok_or_else(|| missing(F, "CapAmb"))?,
        no_new_privs: no_new_privs.ok_or_else(|| missing(F, "NoNewPrivs"))?,
        seccomp: seccomp.ok_or_else(|| missing(F, "Seccomp"))?,
        vm_lck_kib,
        vm_pin_kib,
    })
}

fn read_status_of(task: &Task) -> Result<ProcStatus, ProcError> {
    let (path, text) = task.read_text_lossy("status")?;
    parse_status(&text).map_err(|e| e.in_file(&path))
}

/// Reads `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<ProcStatus, ProcError> {
    read_status_of(&Task::process(pid))
}

/// Reads `/proc/PID/task/TID/status` (per-thread signal masks and pending signals).
pub fn read_task_status(pid: i32, tid: i32) -> Result<ProcStatus, ProcError> {
    read_status_of(&Task::thread(pid, tid))
}

// ---------------------------------------------------------------------------------------------
// auxv
// ---------------------------------------------------------------------------------------------

/// Parses `/proc/PID/auxv`: (type, value) pairs of little-endian u64, flattened, up to and
/// including the AT_NULL pair. A trailing partial pair is ignored.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let word = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let key = word(&pair[..8]);
        out.push(key);
        out.push(word(&pair[8..]));
        if key == libc::AT_NULL {
            break;
        }
    }
    out
}

/// Reads `/proc/PID/auxv`.
pub fn read_auxv(pid: i32) -> Result<Vec<u64>, ProcError> {
    let (_, bytes) = Task::process(pid).read_bytes("auxv")?;
    Ok(parse_auxv(&bytes))
}

// ---------------------------------------------------------------------------------------------
// fdinfo and the fd table
// ---------------------------------------------------------------------------------------------

/// `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// `pos:` file position.
    pub pos: u64,
    /// `flags:` open flags (O_*), octal in the file.
    pub flags: u32,
    /// `mnt_id:` mount id of the file.
    pub mnt_id: i32,
    /// `ino:` inode number.
    pub ino: u64,
    /// Every other line as (key, value), in file order, values trimmed: `eventfd-count`,
    /// `clockid`, `it_value`, `tfd` (epoll), `inotify wd` (the key is everything before the first
    /// ':'), `lock`, ... A line without ':' is kept as (line, "").
    pub extra: Vec<(String, String)>,
}

/// Parses `/proc/PID/fdinfo/FD`.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, ProcError> {
    const F: &str = "fdinfo";
    let (mut pos, mut flags, mut mnt_id, mut ino) = (None, None, None, None);
    let mut extra = Vec::new();
    for (n, l) in proc_lines(text) {
        let Some((key, v)) = l.split_once(':') else {
            extra.push((l.to_string(), String::new()));
            continue;
        };
        let v = v.trim();
        let err = |what: &str| bad(F, n, l, what);
        match key {
            "pos" if pos.is_none() => pos = Some(parse_num(v).ok_or_else(|| err("bad pos"))?),
            "flags" if flags.is_none() => {
                flags = Some(u32::from_str_radix(v, 8).map_err(|_| err("bad octal flags"))?);
            }
            "mnt_id" if mnt_id.is_none() => {
                mnt_id = Some(parse_num(v).ok_or_else(|| err("bad mnt_id"))?);
            }
            "ino" if ino.is_none() => ino = Some(parse_num(v).ok_or_else(|| err("bad ino"))?),
            _ => extra.push((key.to_string(), v.to_string())),
        }
    }
    Ok(FdInfo {
        pos: pos.ok_or_else(|| missing(F, "pos"))?,
        flags: flags.ok_or_else(|| missing(F, "flags"))?,
        mnt_id: mnt_id.ok_or_else(|| missing(F, "mnt_id"))?,
        ino: ino.ok_or_else(|| missing(F, "ino"))?,
        extra,
    })
}

/// Reads `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ProcError> {
    let (path, text) = Task::process(pid).read_text(&format!("fdinfo/{fd}"))?;
    parse_fdinfo(&text).map_err(|e| e.in_file(&path))
}

/// One open file descriptor of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdLink {
    /// The descriptor number.
    pub fd: i32,
    /// readlink of `/proc/PID/fd/N`: `/tmp/x`, `/tmp/x (deleted)`, `pipe:[123]`, `socket:[4]`,
    /// `anon_inode:[eventfd]`, `/dev/pts/0`, `/memfd:x (deleted)`, ...
    pub target: String,
    /// stat() through the link; `None` if it failed.
    pub stat: Option<FileStat>,
}

/// Lists the open descriptors of a process, sorted by fd. A descriptor closed while the list is
/// read is skipped (the process is expected to be frozen, so this is logged).
pub fn list_fds(pid: i32) -> Result<Vec<FdLink>, ProcError> {
    let task = Task::process(pid);
    let fds = list_numeric_dir(&task, "fd")?;
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        let name = format!("fd/{fd}");
        let target = match task.read_link(&name) {
            Ok(t) => t,
            Err(ProcError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                debug!(pid, fd, "fd closed while listing");
                continue;
            }
            Err(e) => return Err(e),
        };
        let path = task.file(&name);
        let stat = match fs::metadata(&path) {
            Ok(m) => Some(file_stat(target.clone(), &m)),
            Err(e) => {
                debug!(pid, fd, error = %e, "stat through fd link failed");
                None
            }
        };
        out.push(FdLink { fd, target, stat });
    }
    Ok(out)
}

/// The numeric entries of a directory under a task (`fd`, `task`), sorted.
fn list_numeric_dir(task: &Task, name: &str) -> Result<Vec<i32>, ProcError> {
    let path = task.file(name);
    let dir = fs::read_dir(&path).map_err(|e| task.error(&path, e))?;
    let mut out = Vec::new();
    for entry in dir {
        let entry = entry.map_err(|e| task.error(&path, e))?;
        let fname = entry.file_name();
        match fname.to_str().and_then(parse_num) {
            Some(n) => out.push(n),
            None => {
                return Err(ProcError::Parse {
                    path: path.clone(),
                    line: 0,
                    text: fname.to_string_lossy().into_owned(),
                    what: "directory entry is not a number".into(),
                })
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// limits
// ---------------------------------------------------------------------------------------------

/// One resource limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// The `RLIMIT_*` number.
    pub resource: u32,
    /// Soft limit; `u64::MAX` is unlimited (RLIM_INFINITY).
    pub cur: u64,
    /// Hard limit; `u64::MAX` is unlimited.
    pub max: u64,
}

/// Row names of `/proc/PID/limits` and their resources, in `RLIMIT_*` order.
const LIMIT_ROWS: [(&str, u32); 16] = [
    ("Max cpu time", libc::RLIMIT_CPU),
    ("Max file size", libc::RLIMIT_FSIZE),
    ("Max data size", libc::RLIMIT_DATA),
    ("Max stack size", libc::RLIMIT_STACK),
    ("Max core file size", libc::RLIMIT_CORE),
    ("Max resident set", libc::RLIMIT_RSS),
    ("Max processes", libc::RLIMIT_NPROC),
    ("Max open files", libc::RLIMIT_NOFILE),
    ("Max locked memory", libc::RLIMIT_MEMLOCK),
    ("Max address space", libc::RLIMIT_AS),
    ("Max file locks", libc::RLIMIT_LOCKS),
    ("Max pending signals", libc::RLIMIT_SIGPENDING),
    ("Max msgqueue size", libc::RLIMIT_MSGQUEUE),
    ("Max nice priority", libc::RLIMIT_NICE),
    ("Max realtime priority", libc::RLIMIT_RTPRIO),
    ("Max realtime timeout", libc::RLIMIT_RTTIME),
];

/// Parses `/proc/PID/limits` into all 16 limits, ordered by resource number. A row the kernel
/// adds in the future is ignored (and logged); a missing row is an error.
pub fn parse_limits(text: &str) -> Result<Vec<Rlimit>, ProcError> {
    const F: &str = "limits";
    let mut found: [Option<Rlimit>; 16] = [None; 16];
    for (n, l) in proc_lines(text) {
        if n == 1 {
            if !l.starts_with("Limit ") {
                return Err(bad(F, n, l, "header is not 'Limit ...'"));
            }
            continue;
        }
        // Columns are padded with spaces, so a row name is followed by a space.
        let Some((name, resource)) = LIMIT_ROWS.iter().find(|(name, _)| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        }) else {
            debug!(line = l, "unknown row in limits");
            continue;
        };
        let mut cols = l[name.len()..].split_whitespace();
        let value = |s: Option<&str>| -> Result<u64, ProcError> {
            match s {
                Some("unlimited") => Ok(u64::MAX),
                Some(s) => parse_num(s).ok_or_else(|| bad(F, n, l, "bad limit value")),
                None => Err(bad(F, n, l, "missing limit column")),
            }
        };
        let cur = value(cols.next())?;
        let max = value(cols.next())?;
        found[*resource as usize] = Some(Rlimit {
            resource: *resource,
            cur,
            max,
        });
    }
    found
        .iter()
        .zip(LIMIT_ROWS)
        .map(|(r, (name, _))| r.ok_or_else(|| missing(F, name)))
        .collect()
}

/// Reads `/proc/PID/limits`.
pub fn read_limits(pid: i32) -> Result<Vec<Rlimit>, ProcError> {
    let (path, text) = Task::process(pid).read_text("limits")?;
    parse_limits(&text).map_err(|e| e.in_file(&path))
}

// ---------------------------------------------------------------------------------------------
// timers
// ---------------------------------------------------------------------------------------------

/// One POSIX timer from `/proc/PID/timers` (timer_create(2)). The timer's current value and
/// interval are not in this file; the parasite reads them with timer_gettime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimer {
    /// The timer id (timer_t) as the process knows it.
    pub id: i32,
    /// The signal it delivers (printed even for SIGEV_NONE).
    pub signal: i32,
    /// `sigev_value` (the whole 64-bit union, whichever member was set).
    pub sigev_value: u64,
    /// `sigev_notify`: SIGEV_SIGNAL=0, SIGEV_NONE=1, SIGEV_THREAD=2, plus SIGEV_THREAD_ID=4.
    pub notify: i32,
    /// The task the kernel printed: the target TID for SIGEV_THREAD_ID, else the process's PID.
    pub notify_tid: i32,
    /// The clock: CLOCK_* numbers, or a negative CPU-clock id (`-6` is
    /// CLOCK_PROCESS_CPUTIME_ID of the process itself as the kernel encodes it).
    pub clock_id: i32,
}

/// Parses `/proc/PID/timers`, which on this kernel is, per timer, newest first:
///
/// ```text
/// ID: 3
/// signal: 36/12345678fffffffb
/// notify: signal/tid.5343
/// ClockID: -6
/// ```
///
/// The result is sorted by id.
pub fn parse_timers(text: &str) -> Result<Vec<ProcTimer>, ProcError> {
    const F: &str = "timers";
    #[derive(Default)]
    struct Partial {
        id: i32,
        line: usize,
        signal: Option<(i32, u64)>,
        notify: Option<(i32, i32)>,
        clock: Option<i32>,
    }
    fn finish(p: Partial) -> Result<ProcTimer, ProcError> {
        let (Some((signal, sigev_value)), Some((notify, notify_tid)), Some(clock_id)) =
            (p.signal, p.notify, p.clock)
        else {
            let key = match (p.signal, p.notify) {
                (None, _) => "signal",
                (_, None) => "notify",
                _ => "ClockID",
            };
            return Err(bad(
                F,
                p.line,
                &format!("ID: {}", p.id),
                format!("timer has no {key} line"),
            ));
        };
        Ok(ProcTimer {
            id: p.id,
            signal,
            sigev_value,
            notify,
            notify_tid,
            clock_id,
        })
    }

    let mut out = Vec::new();
    let mut cur: Option<Partial> = None;
    for (n, l) in proc_lines(text) {
        let err = |what: &str| bad(F, n, l, what);
        let (key, v) = l.split_once(": ").ok_or_else(|| err("no ': '"))?;
        if key == "ID" {
            if let Some(p) = cur.take() {
                out.push(finish(p)?);
            }
            cur = Some(Partial {
                id: parse_num(v).ok_or_else(|| err("bad timer id"))?,
                line: n,
                ..Partial::default()
            });
            continue;
        }
        let p = cur
            .as_mut()
            .ok_or_else(|| err("line before the first ID"))?;
        match key {
            "signal" => {
                let (sig, value) = v.split_once('/').ok_or_else(|| err("no '/'"))?;
                p.signal = Some((
                    parse_num(sig).ok_or_else(|| err("bad signal number"))?,
                    parse_hex_u64(value).ok_or_else(|| err("bad sigev_value"))?,
                ));
            }
            "notify" => {
                let (how, target) = v.split_once('/').ok_or_else(|| err("no '/'"))?;
                let base = match how {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    "thread" => libc::SIGEV_THREAD,
                    _ => return Err(err("unknown notify kind")),
                };
                let (kind, id) = target.split_once('.').ok_or_else(|| err("no '.'"))?;
                let notify = match kind {
                    "tid" => base | libc::SIGEV_THREAD_ID,
                    "pid" => base,
                    _ => return Err(err("notify target is neither tid nor pid")),
                };
                p.notify = Some((
                    notify,
                    parse_num(id).ok_or_else(|| err("bad notify target"))?,
                ));
            }
            "ClockID" => p.clock = Some(parse_num(v).ok_or_else(|| err("bad clock id"))?),
            _ => return Err(err("unknown key")),
        }
    }
    if let Some(p) = cur.take() {
        out.push(finish(p)?);
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Reads `/proc/PID/timers`.
pub fn read_timers(pid: i32) -> Result<Vec<ProcTimer>, ProcError> {
    let (path, text) = Task::process(pid).read_text("timers")?;
    parse_timers(&text).map_err(|e| e.in_file(&path))
}

// ---------------------------------------------------------------------------------------------
// threads, children, links, comm
// ---------------------------------------------------------------------------------------------

/// Resident memory of a process in bytes (`/proc/PID/statm`), 0 if unreadable: only a hint
/// for spreading processes over tracer threads.
pub fn resident_bytes(pid: i32) -> u64 {
    read_lossy(Path::new(&format!("/proc/{pid}/statm")))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * crate::sys::PAGE_SIZE)
}

/// The thread ids of a process from `/proc/PID/task`: the leader first (if it is still listed),
/// then the others in ascending order.
pub fn list_threads(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut tids = list_numeric_dir(&Task::process(pid), "task")?;
    if let Some(i) = tids.iter().position(|&t| t == pid) {
        tids.remove(i);
        tids.insert(0, pid);
    }
    Ok(tids)
}

/// The children forked by thread `tid` of process `pid`, from `/proc/PID/task/TID/children`
/// (a child belongs to the thread that created it; walk every thread to get all children).
pub fn list_children(pid: i32, tid: i32) -> Result<Vec<i32>, ProcError> {
    let task = Task::thread(pid, tid);
    let (path, text) = task.read_text("children")?;
    text.split_whitespace()
        .map(|s| {
            parse_num(s).ok_or_else(|| ProcError::Parse {
                path: path.clone(),
                line: 1,
                text: s.to_string(),
                what: "bad child pid".into(),
            })
        })
        .collect()
}

/// readlink of `/proc/PID/<what>` (`cwd`, `root`, `exe`, ...).
pub fn read_link(pid: i32, what: &str) -> Result<String, ProcError> {
    Task::process(pid).read_link(what)
}

/// The comm of a thread, from `/proc/PID/task/TID/comm`, without the trailing newline. Decoded
/// lossily: the kernel may cut a multi-byte character when it truncates a name to 15 bytes.
pub fn read_comm(pid: i32, tid: i32) -> Result<String, ProcError> {
    let (_, mut text) = Task::thread(pid, tid).read_text_lossy("comm")?;
    if text.ends_with('\n') {
        text.pop();
    }
    Ok(text)
}

// ---------------------------------------------------------------------------------------------
// pagemap
// ---------------------------------------------------------------------------------------------

/// Pagemap entry bit: the page is present in RAM (bits 0-54 are then the PFN, zero without
/// CAP_SYS_ADMIN).
pub const PM_PRESENT: u64 = 1 << 63;
/// Pagemap entry bit: the page is swapped out.
pub const PM_SWAP: u64 = 1 << 62;
/// Pagemap entry bit: a file page or shared anonymous page.
pub const PM_FILE: u64 = 1 << 61;
/// Pagemap entry bit: write-protected by userfaultfd (async write-protect dirty tracking).
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Pagemap entry bit: the page is mapped exclusively (by this process only).
pub const PM_EXCLUSIVE: u64 = 1 << 56;
/// Pagemap entry bits 0-54: the page frame number of a present page.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Entries read per pread: 256 Ki entries = 2 MiB of buffer, 1 GiB of address space.
const PAGEMAP_CHUNK: usize = 1 << 18;

/// The raw pagemap entries (one u64 per 4 KiB page, see `PM_*`) for `[start, end)`, which must
/// be page-aligned. Read with large preads (2 MiB at a time).
pub fn read_pagemap(pid: i32, start: u64, end: u64) -> Result<Vec<u64>, ProcError> {
    if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 || start > end {
        return Err(ProcError::BadRange { pid, start, end });
    }
    let task = Task::process(pid);
    let path = task.file("pagemap");
    let file = File::open(&path).map_err(|e| task.error(&path, e))?;
    let pages = ((end - start) / PAGE_SIZE) as usize;
    let mut out = Vec::with_capacity(pages);
    let mut buf = vec![0u8; pages.min(PAGEMAP_CHUNK) * 8];
    let mut addr = start;
    while addr < end {
        let n = (((end - addr) / PAGE_SIZE) as usize).min(PAGEMAP_CHUNK);
        let chunk = &mut buf[..n * 8];
        let base = addr / PAGE_SIZE * 8;
        let mut got = 0usize;
        while got < chunk.len() {
            match file.read_at(&mut chunk[got..], base + got as u64) {
                Ok(0) => {
                    // The kernel returns EOF once the mm is gone.
                    let at = addr + (got / 8) as u64 * PAGE_SIZE;
                    if !task.dir.exists() {
                        return Err(ProcError::Gone { pid });
                    }
                    return Err(ProcError::Pagemap {
                        path,
                        addr: at,
                        source: io::Error::new(io::ErrorKind::UnexpectedEof, "short read"),
                    });
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.raw_os_error() == Some(libc::ESRCH) {
                        return Err(ProcError::Gone { pid });
                    }
                    return Err(ProcError::Pagemap {
                        path,
                        addr: addr + (got / 8) as u64 * PAGE_SIZE,
                        source: e,
                    });
                }
            }
        }
        out.extend(
            chunk
                .chunks_exact(8)
                .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        );
        addr += n as u64 * PAGE_SIZE;
    }
    trace!(pid, start, end, pages, "read pagemap");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};

    // Samples taken from kernel 6.18 for a test program that set its comm to "a) b (c", created
    // four POSIX timers, blocked SIGUSR1 and SIGRTMIN+2, ignored SIGUSR2, mapped a file with spaces
    // in its name, an unlinked file, anonymous shared memory, /dev/zero, a memfd and a SysV segment.
    const MAPS: &str = concat!(
        "55645b94e000-55645b94f000 r--p 00000000 fe:00 10010817                   /tmp/procfs_probe/t\n",
        "55645b94f000-55645b950000 r-xp 00001000 fe:00 10010817                   /tmp/procfs_probe/t\n",
        "55645b950000-55645b951000 r--p 00002000 fe:00 10010817                   /tmp/procfs_probe/t\n",
        "55645b951000-55645b952000 r--p 00002000 fe:00 10010817                   /tmp/procfs_probe/t\n",
        "55645b952000-55645b953000 rw-p 00003000 fe:00 10010817                   /tmp/procfs_probe/t\n",
        "556477f91000-556477fb2000 rw-p 00000000 00:00 0                          [heap]\n",
        "7f1ffae84000-7f1ffae85000 ---p 00000000 00:00 0 \n",
        "7f1ffae85000-7f1ffb685000 rw-p 00000000 00:00 0 \n",
        "7f1ffb685000-7f1ffb686000 ---p 00000000 00:00 0 \n",
        "7f1ffb686000-7f1ffb688000 rw-s 00000000 00:01 0                          /SYSV00000000 (deleted)\n",
        "7f1ffb688000-7f1ffb68b000 rw-p 00000000 00:00 0 \n",
        "7f1ffb68b000-7f1ffb6b1000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        "7f1ffb6b1000-7f1ffb807000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        "7f1ffb807000-7f1ffb85a000 r--p 0017c000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        "7f1ffb85a000-7f1ffb85e000 r--p 001cf000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        "7f1ffb85e000-7f1ffb860000 rw-p 001d3000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        "7f1ffb860000-7f1ffb86d000 rw-p 00000000 00:00 0 \n",
        "7f1ffb86d000-7f1ffb86f000 r--s 00000000 00:01 26                         /memfd:x (deleted)\n",
        "7f1ffb86f000-7f1ffb870000 rwxs 00000000 00:01 25                         /dev/zero (deleted)\n",
        "7f1ffb870000-7f1ffb873000 rw-s 00000000 00:01 24                         /dev/zero (deleted)\n",
        "7f1ffb873000-7f1ffb874000 r--p 00000000 fe:00 10010786                   /tmp/procfs_probe/deleted me (deleted)\n",
        "7f1ffb874000-7f1ffb876000 rw-s 00001000 fe:00 10010775                   /tmp/procfs_probe/with space file\n",
        "7f1ffb876000-7f1ffb878000 rw-p 00000000 00:00 0 \n",
        "7f1ffb878000-7f1ffb87c000 r--p 00000000 00:00 0                          [vvar]\n",
        "7f1ffb87c000-7f1ffb87e000 r--p 00000000 00:00 0                          [vvar_vclock]\n",
        "7f1ffb87e000-7f1ffb880000 r-xp 00000000 00:00 0                          [vdso]\n",
        "7f1ffb880000-7f1ffb881000 r--p 00000000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n",
        "7f1ffb881000-7f1ffb8a7000 r-xp 00001000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n",
        "7f1ffb8a7000-7f1ffb8b1000 r--p 00027000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n",
        "7f1ffb8b1000-7f1ffb8b3000 r--p 00031000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n",
        "7f1ffb8b3000-7f1ffb8b5000 rw-p 00033000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n",
        "7ffc14a8a000-7ffc14aab000 rw-p 00000000 00:00 0                          [stack]\n",
        "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n",
    );

    const STAT: &str =
        "5343 (a) b (c) S 1 5331 3877 0 -1 4194560 116 0 0 0 0 0 0 0 20 0 2 0 68723 \
        10977280 346 18446744073709551615 93889521577984 93889521579761 140720655211888 0 0 0 512 \
        2054 0 0 0 0 17 0 0 0 0 0 0 93889521589712 93889521590512 93889997901824 140720655215349 \
        140720655215353 140720655215353 140720655216628 0\n";

    // The second thread of the same process: exit_signal is -1.
    const TASK_STAT: &str = "5345 (a) b (c) S 1 5331 3877 0 -1 4194368 1 0 0 0 0 0 0 0 20 0 2 0 \
        68724 10977280 346 18446744073709551615 93889521577984 93889521579761 140720655211888 0 0 \
        0 512 2054 0 1 0 0 -1 0 0 0 0 0 0 93889521589712 93889521590512 93889997901824 \
        140720655215349 140720655215353 140720655215353 140720655216628 0\n";

    const STATUS: &str = concat!(
        "Name:\ta) b (c\n",
        "Umask:\t0022\n",
        "State:\tS (sleeping)\n",
        "Tgid:\t5343\n",
        "Ngid:\t0\n",
        "Pid:\t5343\n",
        "PPid:\t1\n",
        "TracerPid:\t0\n",
        "Uid:\t0\t0\t0\t0\n",
        "Gid:\t0\t0\t0\t0\n",
        "FDSize:\t256\n",
        "Groups:\t10 20 30000 \n",
        "NStgid:\t5343\n",
        "NSpid:\t5343\n",
        "NSpgid:\t5331\n",
        "NSsid:\t3877\n",
        "Kthread:\t0\n",
        "VmPeak:\t   10720 kB\n",
        "VmSize:\t   10720 kB\n",
        "VmLck:\t       0 kB\n",
        "VmPin:\t       0 kB\n",
        "VmHWM:\t    1492 kB\n",
        "VmRSS:\t    1492 kB\n",
        "RssAnon:\t     108 kB\n",
        "RssFile:\t    1384 kB\n",
        "RssShmem:\t       0 kB\n",
        "VmData:\t    8416 kB\n",
        "VmStk:\t     132 kB\n",
        "VmExe:\t       4 kB\n",
        "VmLib:\t    1528 kB\n",
        "VmPTE:\t      44 kB\n",
        "VmSwap:\t       0 kB\n",
        "HugetlbPages:\t       0 kB\n",
        "CoreDumping:\t0\n",
        "THP_enabled:\t1\n",
        "untag_mask:\t0xffffffffffffffff\n",
        "Threads:\t2\n",
        "SigQ:\t5/96365\n",
        "SigPnd:\t0000000000000000\n",
        "ShdPnd:\t0000000000000200\n",
        "SigBlk:\t0000000800000200\n",
        "SigIgn:\t0000000000000806\n",
        "SigCgt:\t0000000100000000\n",
        "CapInh:\t0000000000000000\n",
        "CapPrm:\t000001fffeffffff\n",
        "CapEff:\t000001fffeffffff\n",
        "CapBnd:\t000001fffeffffff\n",
        "CapAmb:\t0000000000000000\n",
        "NoNewPrivs:\t0\n",
        "Seccomp:\t0\n",
        "Seccomp_filters:\t0\n",
        "Speculation_Store_Bypass:\tvulnerable\n",
        "SpeculationIndirectBranch:\talways enabled\n",
        "Cpus_allowed:\t3\n",
        "Cpus_allowed_list:\t0-1\n",
        "Mems_allowed:\t00000000,00000001\n",
        "Mems_allowed_list:\t0\n",
        "voluntary_ctxt_switches:\t1\n",
        "nonvoluntary_ctxt_switches:\t1\n",
    );

    const TIMERS: &str = concat!(
        "ID: 3\n",
        "signal: 36/12345678fffffffb\n",
        "notify: signal/tid.5343\n",
        "ClockID: -6\n",
        "ID: 2\n",
        "signal: 36/12345678fffffffb\n",
        "notify: signal/tid.5343\n",
        "ClockID: 7\n",
        "ID: 1\n",
        "signal: 10/1234567890abcdef\n",
        "notify: none/pid.5343\n",
        "ClockID: 0\n",
        "ID: 0\n",
        "signal: 10/1234567890abcdef\n",
        "notify: signal/pid.5343\n",
        "ClockID: 1\n",
    );

    const LIMITS: &str = concat!(
        "Limit                     Soft Limit           Hard Limit           Units     \n",
        "Max cpu time              unlimited            unlimited            seconds   \n",
        "Max file size             unlimited            unlimited            bytes     \n",
        "Max data size             unlimited            unlimited            bytes     \n",
        "Max stack size            8388608              unlimited            bytes     \n",
        "Max core file size        0                    unlimited            bytes     \n",
        "Max resident set          unlimited            unlimited            bytes     \n",
        "Max processes             96365                96365                processes \n",
        "Max open files            20000                20000                files     \n",
        "Max locked memory         8388608              8388608              bytes     \n",
        "Max address space         unlimited            unlimited            bytes     \n",
        "Max file locks            unlimited            unlimited            locks     \n",
        "Max pending signals       96365                96365                signals   \n",
        "Max msgqueue size         819200               819200               bytes     \n",
        "Max nice priority         0                    0                    \n",
        "Max realtime priority     0                    0                    \n",
        "Max realtime timeout      unlimited            unlimited            us        \n",
    );

    fn self_pid() -> i32 {
        std::process::id() as i32
    }

    /// The TID of the calling thread, from the /proc/thread-self link ("PID/task/TID").
    fn self_tid() -> i32 {
        let link = fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
        let link = link.to_str().expect("utf-8").to_string();
        link.rsplit('/').next().unwrap().parse().unwrap()
    }

    #[test]
    fn maps_sample() {
        let maps = parse_maps(MAPS).unwrap();
        assert_eq!(maps.len(), 33);

        let exe = &maps[1];
        assert_eq!((exe.start, exe.end), (0x55645b94f000, 0x55645b950000));
        assert_eq!(exe.prot, (libc::PROT_READ | libc::PROT_EXEC) as u32);
        assert!(!exe.shared);
        assert_eq!(exe.offset, 0x1000);
        assert_eq!(exe.dev, (0xfe, 0));
        assert_eq!(exe.inode, 10010817);
        assert_eq!(exe.path, "/tmp/procfs_probe/t");
        assert!(!exe.deleted);

        let guard = &maps[6];
        assert_eq!(guard.prot, 0);
        assert_eq!(guard.path, "");
        assert_eq!(guard.inode, 0);

        let sysv = &maps[9];
        assert!(sysv.shared && sysv.deleted);
        assert_eq!(sysv.path, "/SYSV00000000");
        assert_eq!(sysv.dev, (0, 1));

        let memfd = &maps[17];
        assert_eq!((memfd.path.as_str(), memfd.deleted), ("/memfd:x", true));
        assert_eq!(memfd.prot, libc::PROT_READ as u32);

        let zero = &maps[18];
        assert_eq!((zero.path.as_str(), zero.deleted), ("/dev/zero", true));
        assert_eq!(
            zero.prot,
            (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u32
        );
        assert!(zero.shared);
        assert_eq!(zero.inode, 25);

        let gone = &maps[20];
        assert_eq!(gone.path, "/tmp/procfs_probe/deleted me");
        assert!(gone.deleted);

        let spaced = &maps[21];
        assert_eq!(spaced.path, "/tmp/procfs_probe/with space file");
        assert!(!spaced.deleted && spaced.shared);
        assert_eq!(spaced.offset, 0x1000);

        let names: Vec<&str> = maps[23..26].iter().map(|m| m.path.as_str()).collect();
        assert_eq!(names, ["[vvar]", "[vvar_vclock]", "[vdso]"]);

        let vsyscall = maps.last().unwrap();
        assert_eq!(vsyscall.start, 0xffffffffff600000);
        assert_eq!(vsyscall.prot, libc::PROT_EXEC as u32);
        assert_eq!(vsyscall.path, "[vsyscall]");
    }

    #[test]
    fn maps_edge_cases() {
        // No trailing space after the inode, a path with leading/trailing spaces inside the
        // name, a big device minor, and a file literally ending in "(deleted)" twice.
        let text = concat!(
            "1000-2000 rw-p 00000000 00:00 0\n",
            "2000-3000 r--s 0000a000 103:1f 7                          /a b/ c  (deleted) (deleted)\n",
            "3000-4000 rw-p 00000000 00:00 0                          [anon:my name]\n",
        );
        let m = parse_maps(text).unwrap();
        assert_eq!(m[0].path, "");
        assert_eq!(m[1].dev, (0x103, 0x1f));
        assert_eq!(m[1].offset, 0xa000);
        assert_eq!(m[1].path, "/a b/ c  (deleted)");
        assert!(m[1].deleted);
        assert_eq!(m[2].path, "[anon:my name]");
        assert!(parse_maps("").unwrap().is_empty());
    }

    #[test]
    fn maps_errors_name_the_line() {
        let text = "1000-2000 rw-p 00000000 00:00 0\n2000-1000 rw-p 00000000 00:00 0\n";
        match parse_maps(text).unwrap_err() {
            ProcError::Parse { line, text, .. } => {
                assert_eq!(line, 2);
                assert!(text.starts_with("2000-1000"));
            }
            e => panic!("unexpected {e}"),
        }
        for bad_line in [
            "1000-2000 rw-q 00000000 00:00 0",
            "1000-2000 rwxpp 00000000 00:00 0",
            "1000-2000 wr-p 00000000 00:00 0",
            "1000-2000 rw-p 00000000 0000 0",
            "1000-2000 rw-p 00000000 00:00 x",
            "1000 rw-p 00000000 00:00 0",
            "1000-2000 rw-p",
        ] {
            assert!(parse_maps(bad_line).is_err(), "{bad_line}");
        }
        let msg = parse_maps("zz")
            .unwrap_err()
            .in_file(Path::new("/proc/1/maps"));
        assert!(
            msg.to_string().starts_with("/proc/1/maps: line 1: "),
            "{msg}"
        );
    }

    #[test]
    fn stat_sample_with_tricky_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 5343);
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.state, 'S');
        assert_eq!((s.ppid, s.pgrp, s.session, s.tty_nr), (1, 5331, 3877, 0));
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.num_threads, 2);
        assert_eq!(s.start_code, 93889521577984);
        assert_eq!(s.end_code, 93889521579761);
        assert_eq!(s.start_stack, 140720655211888);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.start_data, 93889521589712);
        assert_eq!(s.end_data, 93889521590512);
        assert_eq!(s.start_brk, 93889997901824);
        assert_eq!(s.arg_start, 140720655215349);
        assert_eq!(s.arg_end, 140720655215353);
        assert_eq!(s.env_start, 140720655215353);
        assert_eq!(s.env_end, 140720655216628);
        assert_eq!(s.exit_code, 0);

        let t = parse_stat(TASK_STAT).unwrap();
        assert_eq!(t.pid, 5345);
        assert_eq!(t.exit_signal, -1);

        // A comm with a newline, a backslash and a trailing ")" stays raw in stat.
        let raw = STAT.replace("(a) b (c)", "(x\ny\\z) q\t)");
        assert_eq!(parse_stat(&raw).unwrap().comm, "x\ny\\z) q\t");
        // An empty comm.
        assert_eq!(
            parse_stat(&STAT.replace("(a) b (c)", "()")).unwrap().comm,
            ""
        );
    }

    #[test]
    fn stat_errors() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x) S 1 2 3").is_err());
        assert!(parse_stat(&STAT.replace(" S 1 ", " SS 1 ")).is_err());
        assert!(parse_stat(&STAT.replace("5343 (", "x (")).is_err());
        assert!(parse_stat(&STAT.replace(" 5331 ", " -x ")).is_err());
    }

    #[test]
    fn status_sample() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(s.name, "a) b (c");
        assert_eq!(s.umask, 0o022);
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid, s.tracer_pid), (5343, 5343, 1, 0));
        assert_eq!(s.uids, [0; 4]);
        assert_eq!(s.gids, [0; 4]);
        assert_eq!(s.groups, [10, 20, 30000]);
        assert_eq!(s.nspid, [5343]);
        assert_eq!(s.threads, 2);
        assert_eq!(s.sig_pnd, 0);
        assert_eq!(s.shd_pnd, 1 << (libc::SIGUSR1 - 1));
        assert_eq!(s.sig_blk, (1 << (libc::SIGUSR1 - 1)) | (1 << (36 - 1)));
        assert_eq!(s.sig_ign, 0x806);
        assert_eq!(s.sig_cgt, 0x100000000);
        assert_eq!(s.cap_prm, 0x1fffeffffff);
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert_eq!(s.cap_bnd, 0x1fffeffffff);
        assert_eq!((s.cap_inh, s.cap_amb), (0, 0));
        assert!(!s.no_new_privs);
        assert_eq!(s.seccomp, 0);
        assert_eq!((s.vm_lck_kib, s.vm_pin_kib), (0, 0));
    }

    #[test]
    fn status_variants() {
        // No supplementary groups (the kernel prints "Groups:\t \n"), nested pid namespaces,
        // an escaped name ending in a tab, different ids.
        let text = STATUS
            .replace("Groups:\t10 20 30000 \n", "Groups:\t \n")
            .replace("NSpid:\t5343\n", "NSpid:\t5343\t7\t1\n")
            .replace("Name:\ta) b (c\n", "Name:\tx\\ny\\\\z) q\t\n")
            .replace("Uid:\t0\t0\t0\t0\n", "Uid:\t1000\t1001\t1002\t1003\n")
            .replace("NoNewPrivs:\t0", "NoNewPrivs:\t1")
            .replace("Seccomp:\t0", "Seccomp:\t2")
            .replace("VmLck:\t       0 kB", "VmLck:\t    8192 kB")
            .replace("VmPin:\t       0 kB", "VmPin:\t      12 kB");
        let s = parse_status(&text).unwrap();
        assert!(s.groups.is_empty());
        assert_eq!(s.nspid, [5343, 7, 1]);
        assert_eq!(s.name, "x\ny\\z) q\t");
        assert_eq!(s.uids, [1000, 1001, 1002, 1003]);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
        assert_eq!((s.vm_lck_kib, s.vm_pin_kib), (8192, 12));
        // Absent (a kernel thread has no Vm lines): 0.
        let s = parse_status(&STATUS.replace("VmPin:\t       0 kB\n", "")).unwrap();
        assert_eq!(s.vm_pin_kib, 0);
        assert!(parse_status(&STATUS.replace("VmPin:\t       0 kB", "VmPin:\t 1 MB")).is_err());

        let no_umask = STATUS.replace("Umask:\t0022\n", "");
        match parse_status(&no_umask).unwrap_err() {
            ProcError::Missing { key, .. } => assert_eq!(key, "Umask"),
            e => panic!("unexpected {e}"),
        }
        assert!(parse_status(&STATUS.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0")).is_err());
        assert!(parse_status(&STATUS.replace("SigBlk:\t0000000800000200", "SigBlk:\tzz")).is_err());
    }

    #[test]
    fn auxv_pairs() {
        let mut bytes = Vec::new();
        for v in [33u64, 0x7f1ffb87e000, 6, 4096, 0, 0, 99, 99] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(parse_auxv(&bytes), [33, 0x7f1ffb87e000, 6, 4096, 0, 0]);
        // Truncated input without AT_NULL: whole pairs only.
        assert_eq!(parse_auxv(&bytes[..24]), [33, 0x7f1ffb87e000]);
        assert!(parse_auxv(&[]).is_empty());
    }

    #[test]
    fn fdinfo_samples() {
        let f =
            parse_fdinfo("pos:\t12345\nflags:\t0102002\nmnt_id:\t27\nino:\t10010775\n").unwrap();
        assert_eq!(f.pos, 12345);
        // The kernel sets O_LARGEFILE (0o100000) on 64-bit; libc's O_LARGEFILE is 0 there.
        assert_eq!(f.flags, 0o100000 | (libc::O_APPEND | libc::O_RDWR) as u32);
        assert_eq!(f.mnt_id, 27);
        assert_eq!(f.ino, 10010775);
        assert!(f.extra.is_empty());

        let eventfd = concat!(
            "pos:\t0\n",
            "flags:\t04002\n",
            "mnt_id:\t17\n",
            "ino:\t1038\n",
            "eventfd-count:                7\n",
            "eventfd-id: 1\n",
            "eventfd-semaphore: 0\n",
        );
        let f = parse_fdinfo(eventfd).unwrap();
        assert_eq!(f.flags as i32, libc::O_NONBLOCK | libc::O_RDWR);
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            f.extra,
            [
                kv("eventfd-count", "7"),
                kv("eventfd-id", "1"),
                kv("eventfd-semaphore", "0")
            ]
        );

        let timerfd = concat!(
            "pos:\t0\n",
            "flags:\t02\n",
            "mnt_id:\t17\n",
            "ino:\t1038\n",
            "clockid: 1\n",
            "ticks: 0\n",
            "settime flags: 00\n",
            "it_value: (99, 459276525)\n",
            "it_interval: (1, 0)\n",
        );
        let f = parse_fdinfo(timerfd).unwrap();
        assert_eq!(f.extra[2], kv("settime flags", "00"));
        assert_eq!(f.extra[3], kv("it_value", "(99, 459276525)"));

        let epoll = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
            tfd:        4 events:       19 data:                4  pos:0 ino:4aee sdev:f\n";
        let f = parse_fdinfo(epoll).unwrap();
        assert_eq!(f.flags as i32, libc::O_CLOEXEC | libc::O_RDWR);
        assert_eq!(
            f.extra,
            [kv(
                "tfd",
                "4 events:       19 data:                4  pos:0 ino:4aee sdev:f"
            )]
        );

        assert!(parse_fdinfo("pos:\t0\nflags:\t09\nmnt_id:\t1\nino:\t1\n").is_err());
        assert!(matches!(
            parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t1\n"),
            Err(ProcError::Missing { key: "ino", .. })
        ));
    }

    #[test]
    fn limits_sample() {
        let l = parse_limits(LIMITS).unwrap();
        assert_eq!(l.len(), 16);
        for (i, r) in l.iter().enumerate() {
            assert_eq!(r.resource as usize, i);
        }
        let get = |res: u32| l[res as usize];
        assert_eq!(get(libc::RLIMIT_CPU).cur, u64::MAX);
        assert_eq!(get(libc::RLIMIT_STACK).cur, 8388608);
        assert_eq!(get(libc::RLIMIT_STACK).max, u64::MAX);
        assert_eq!(get(libc::RLIMIT_CORE).cur, 0);
        assert_eq!(get(libc::RLIMIT_NOFILE).cur, 20000);
        assert_eq!(get(libc::RLIMIT_NPROC).max, 96365);
        assert_eq!(get(libc::RLIMIT_MSGQUEUE).max, 819200);
        assert_eq!(get(libc::RLIMIT_NICE).cur, 0);
        assert_eq!(get(libc::RLIMIT_RTTIME).max, u64::MAX);

        let without_rttime: String = LIMITS
            .lines()
            .filter(|l| !l.starts_with("Max realtime timeout"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(
            parse_limits(&without_rttime),
            Err(ProcError::Missing {
                key: "Max realtime timeout",
                ..
            })
        ));
        let future = format!("{LIMITS}Max something new         1                    2\n");
        assert_eq!(parse_limits(&future).unwrap(), l);
        assert!(parse_limits(&LIMITS.replace("20000                20000", "20000  x")).is_err());
        assert!(parse_limits(&LIMITS.replace("Limit ", "Limits")).is_err());
    }

    #[test]
    fn timers_sample() {
        let t = parse_timers(TIMERS).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            ProcTimer {
                id: 0,
                signal: libc::SIGUSR1,
                sigev_value: 0x1234567890abcdef,
                notify: libc::SIGEV_SIGNAL,
                notify_tid: 5343,
                clock_id: libc::CLOCK_MONOTONIC,
            }
        );
        assert_eq!(t[1].notify, libc::SIGEV_NONE);
        assert_eq!(t[1].clock_id, libc::CLOCK_REALTIME);
        assert_eq!(t[2].notify, libc::SIGEV_THREAD_ID);
        assert_eq!(t[2].signal, 36);
        assert_eq!(t[2].sigev_value, 0x12345678fffffffb);
        assert_eq!(t[2].clock_id, libc::CLOCK_BOOTTIME);
        assert_eq!(t[3].clock_id, -6);
        assert!(parse_timers("").unwrap().is_empty());

        let thread = "ID: 9\nsignal: 0/0000000000000000\nnotify: thread/pid.77\nClockID: 1\n";
        assert_eq!(parse_timers(thread).unwrap()[0].notify, libc::SIGEV_THREAD);
        assert!(parse_timers("ID: 1\nsignal: 10/0\nClockID: 1\n").is_err());
        assert!(parse_timers("signal: 10/0\n").is_err());
        assert!(parse_timers("ID: 1\nsignal: 10/0\nnotify: bogus/pid.1\nClockID: 1\n").is_err());
    }

    #[test]
    fn self_maps_and_map_files() {
        let pid = self_pid();
        let maps = read_maps(pid).unwrap();
        for name in ["[vdso]", "[stack]"] {
            assert!(maps.iter().any(|m| m.path == name), "no {name}");
        }
        let exe = read_link(pid, "exe").unwrap();
        let text = maps
            .iter()
            .find(|m| m.path == exe && m.prot & libc::PROT_EXEC as u32 != 0)
            .expect("the test binary's text mapping");
        let st = map_file_metadata(pid, text.start, text.end).unwrap();
        let link = read_link(pid, &format!("map_files/{:x}-{:x}", text.start, text.end));
        assert_eq!(link.unwrap(), exe);
        assert_eq!(st.ino(), text.inode);
        assert_eq!(st.mode() & libc::S_IFMT, libc::S_IFREG);
        let meta = fs::metadata(&exe).unwrap();
        assert_eq!((st.dev(), st.size()), (meta.dev(), meta.size()));
        assert!(st.mtime() > 0);

        // An anonymous mapping has no map_files entry.
        let anon = maps.iter().find(|m| m.path == "[stack]").unwrap();
        assert!(matches!(
            map_file_metadata(pid, anon.start, anon.end),
            Err(ProcError::Io { .. })
        ));
    }

    #[test]
    fn vm_flags_per_mapping() {
        let text = "\
00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
Size:                328 kB
Rss:                 300 kB
VmFlags: rd ex mr mw me dw sd
7ffd1000-7ffd2000 rw-p 00000000 00:00 0          [stack]
Size:                  4 kB
THPeligible:    0
VmFlags: rd wr mr mw me gd ac
";
        let got = parse_vm_flags(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 0x400000);
        assert_eq!(got[0].1, ["rd", "ex", "mr", "mw", "me", "dw", "sd"]);
        assert_eq!(got[1].0, 0x7ffd1000);
        assert_eq!(got[1].1, ["rd", "wr", "mr", "mw", "me", "gd", "ac"]);
        assert!(parse_vm_flags("VmFlags: rd\n").is_err());
        assert!(parse_vm_flags("zz-1 rw-p 0 0:0 0\nVmFlags: rd\n").is_err());
        // This process's own: its main stack grows down.
        let pid = std::process::id() as i32;
        let me = read_vm_flags(pid).unwrap();
        let stack = read_maps(pid)
            .unwrap()
            .into_iter()
            .find(|m| m.path == "[stack]");
        let stack = stack.expect("a [stack] mapping").start;
        let flags = me
            .iter()
            .find(|(s, _)| *s == stack)
            .expect("flags of the stack");
        assert!(flags.1.iter().any(|f| f == "gd"), "{flags:?}");
    }

    #[test]
    fn read_whole_reads_past_a_page() {
        // smaps of a test process is many pages long; /proc files report size 0.
        let path = Path::new("/proc/self/smaps");
        let got = read_whole(path).unwrap();
        assert!(got.len() > 4096, "only {} bytes", got.len());
        assert!(got.ends_with(b"\n"));
        // A regular file bigger than a page, byte for byte.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&file, &data).unwrap();
        assert_eq!(read_whole(&file).unwrap(), data);
        assert!(read_whole(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn self_stat_status_auxv_limits_timers() {
        let pid = self_pid();
        let tid = self_tid();
        let stat = read_stat(pid).unwrap();
        assert_eq!(stat.pid, pid);
        assert!(stat.num_threads >= 1);
        assert!(stat.start_brk > 0);
        let tstat = read_task_stat(pid, tid).unwrap();
        assert_eq!(tstat.pid, tid);

        let status = read_status(pid).unwrap();
        assert_eq!((status.pid, status.tgid), (pid, pid));
        let tstatus = read_task_status(pid, tid).unwrap();
        assert_eq!((tstatus.pid, tstatus.tgid), (tid, pid));
        assert_eq!(read_comm(pid, tid).unwrap(), tstatus.name);

        let auxv = read_auxv(pid).unwrap();
        assert_eq!(auxv.len() % 2, 0);
        assert_eq!(auxv[auxv.len() - 2..], [libc::AT_NULL, 0]);
        let pagesz = auxv
            .chunks(2)
            .find(|p| p[0] == libc::AT_PAGESZ)
            .map(|p| p[1]);
        assert_eq!(pagesz, Some(4096));

        assert_eq!(read_limits(pid).unwrap().len(), 16);
        read_timers(pid).unwrap();
        assert!(!read_link(pid, "cwd").unwrap().is_empty());
        assert_eq!(read_link(pid, "root").unwrap(), "/");
    }

    #[test]
    fn self_threads() {
        let pid = self_pid();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let h = std::thread::spawn(move || {
            tx.send(self_tid()).unwrap();
            done_rx.recv().ok();
        });
        let other = rx.recv().unwrap();
        let tids = list_threads(pid).unwrap();
        assert_eq!(tids[0], pid);
        assert!(tids.contains(&other));
        assert!(tids[1..].windows(2).all(|w| w[0] < w[1]));
        done_tx.send(()).unwrap();
        h.join().unwrap();
        // The thread has exited: its files say so.
        let mut gone = false;
        for _ in 0..100 {
            match read_task_stat(pid, other) {
                Err(ProcError::Gone { pid: p }) => {
                    assert_eq!(p, other);
                    gone = true;
                    break;
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        assert!(gone);
    }

    #[test]
    fn children_and_gone() {
        let pid = self_pid();
        let tid = self_tid();
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let cpid = child.id() as i32;
        assert!(list_children(pid, tid).unwrap().contains(&cpid));
        let s = read_stat(cpid).unwrap();
        assert_eq!(s.ppid, pid);
        assert!(read_link(cpid, "exe").unwrap().ends_with("/sleep"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(matches!(read_stat(cpid), Err(ProcError::Gone { pid: p }) if p == cpid));
        assert!(read_maps(cpid).unwrap_err().is_gone());
        assert!(list_fds(cpid).unwrap_err().is_gone());
        assert!(read_pagemap(cpid, 0, 4096).unwrap_err().is_gone());
        assert!(!list_children(pid, tid).unwrap().contains(&cpid));
    }

    #[test]
    fn self_fds_and_fdinfo() {
        let pid = self_pid();
        let mut tmp = tempfile::Builder::new()
            .prefix("cryo proc test ")
            .tempfile()
            .unwrap();
        tmp.write_all(&[7u8; 100]).unwrap();
        tmp.as_file_mut().seek(SeekFrom::Start(42)).unwrap();
        let fd = tmp.as_file().as_raw_fd();
        let path = tmp.path().to_str().unwrap().to_string();

        let fds = list_fds(pid).unwrap();
        assert!(fds.windows(2).all(|w| w[0].fd < w[1].fd));
        let link = fds.iter().find(|l| l.fd == fd).expect("temp fd listed");
        assert_eq!(link.target, path);
        let st = link.stat.as_ref().unwrap();
        let meta = tmp.as_file().metadata().unwrap();
        assert_eq!((st.ino, st.size), (meta.ino(), 100));

        let info = read_fdinfo(pid, fd).unwrap();
        assert_eq!(info.pos, 42);
        assert_eq!(info.ino, meta.ino());
        assert_eq!(info.flags as i32 & libc::O_ACCMODE, libc::O_RDWR);
        assert_ne!(info.flags as i32 & libc::O_CLOEXEC, 0);

        // Unlinked: the target gains " (deleted)"; stat still works through the link.
        fs::remove_file(tmp.path()).unwrap();
        let fds = list_fds(pid).unwrap();
        let link = fds.iter().find(|l| l.fd == fd).unwrap();
        assert_eq!(link.target, format!("{path} (deleted)"));
        assert!(link.stat.is_some());

        assert!(matches!(
            read_fdinfo(pid, 1_000_000),
            Err(ProcError::Io { .. })
        ));
    }

    #[test]
    fn self_pagemap() {
        const MIB2: usize = 2 << 20;
        let pid = self_pid();
        // 8 MiB of untouched calloc'ed memory (a fresh anonymous mapping).
        let mut buf = vec![0u8; 8 * MIB2];
        let base = buf.as_ptr() as usize;
        // Work inside 2 MiB-aligned blocks so transparent huge pages cannot blur the picture.
        let first = (base + MIB2 - 1) & !(MIB2 - 1);
        let off = first - base;
        // Touch the 1st and 3rd pages of block 0; leave block 2 untouched.
        buf[off] = 1;
        buf[off + 2 * 4096] = 1;
        std::hint::black_box(&mut buf);

        let start = first as u64;
        let end = start + 3 * MIB2 as u64;
        let pm = read_pagemap(pid, start, end).unwrap();
        assert_eq!(pm.len(), 3 * 512);
        assert_ne!(pm[0] & PM_PRESENT, 0);
        assert_ne!(pm[2] & PM_PRESENT, 0);
        assert_eq!(pm[0] & PM_FILE, 0);
        assert!(pm[1024..].iter().all(|e| e & (PM_PRESENT | PM_SWAP) == 0));

        assert!(read_pagemap(pid, start, start).unwrap().is_empty());
        assert!(matches!(
            read_pagemap(pid, start + 1, end),
            Err(ProcError::BadRange { .. })
        ));
        assert!(matches!(
            read_pagemap(pid, end, start),
            Err(ProcError::BadRange { .. })
        ));
        drop(buf);
    }

    /// Timing of read_pagemap over 1 GiB (run with `--ignored --nocapture`, ideally --release).
    #[test]
    #[ignore]
    fn pagemap_1gib_timing() {
        const GIB: usize = 1 << 30;
        let pid = self_pid();
        let mut buf = vec![0u8; GIB + (2 << 20)];
        let start = ((buf.as_ptr() as u64) + 4095) & !4095;
        let end = start + GIB as u64;
        let t = std::time::Instant::now();
        let pm = read_pagemap(pid, start, end).unwrap();
        eprintln!("untouched 1 GiB: {} entries in {:?}", pm.len(), t.elapsed());
        for i in (0..buf.len()).step_by(4096) {
            buf[i] = 1;
        }
        std::hint::black_box(&mut buf);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let pm = read_pagemap(pid, start, end).unwrap();
            let present = pm.iter().filter(|e| *e & PM_PRESENT != 0).count();
            eprintln!(
                "populated 1 GiB: {} entries, {present} present, in {:?}",
                pm.len(),
                t.elapsed()
            );
        }
    }
}
