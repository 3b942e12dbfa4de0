//! Kernel feature probes for `cryo check`: each function exercises one feature for real (a
//! forked child is seized, a child is created at a chosen PID, a PAGEMAP_SCAN runs over a
//! mapping made for it, ...) and returns what it observed. Every probe cleans up after itself:
//! children are killed and reaped, fds closed, mappings unmapped. Which features are required
//! and how results are worded is decided by `crate::check`, not here.
//!
//! Children are forked from a possibly multi-threaded process, so between fork and `_exit`
//! they only make raw system calls (async-signal-safe).

use super::{check, pagemap, proc_ctl, ptrace, SysError};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `UFFDIO_API` = `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`.
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// `UFFD_FEATURE_WP_ASYNC` (Linux 6.7): write-protect faults resolved by the kernel, dirty
/// state read back with PAGEMAP_SCAN.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `KCMP_FILE`.
const KCMP_FILE: libc::c_int = 0;

/// pagemap entry bit: page present.
const PM_PRESENT: u64 = 1 << 63;
/// pagemap entry bit: soft-dirty.
const PM_SOFT_DIRTY: u64 = 1 << 55;

const PAGE: usize = 4096;

/// Why a probe did not confirm its feature.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// A file under /proc could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The calls succeeded but the kernel behaved differently than the feature promises.
    #[error("{0}")]
    Unexpected(String),
}

/// Result of one probe.
pub type ProbeResult<T> = Result<T, ProbeError>;

fn io_err(path: &str) -> impl FnOnce(std::io::Error) -> ProbeError + '_ {
    move |source| ProbeError::Io {
        path: path.to_string(),
        source,
    }
}

/// A forked child that sleeps in pause(2) until killed; Drop kills and reaps it.
struct PausedChild {
    pid: i32,
}

impl PausedChild {
    fn fork() -> ProbeResult<Self> {
        // SAFETY: fork in a possibly multi-threaded process; the child only makes raw
        // system calls (prctl, pause) and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: async-signal-safe system calls only; the loop never returns.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                loop {
                    libc::pause();
                }
            }
        }
        check("fork", pid as libc::c_long)?;
        Ok(Self { pid })
    }
}

impl Drop for PausedChild {
    fn drop(&mut self) {
        // Killing also ends a ptrace stop; the child may already be gone (ESRCH).
        let _ = proc_ctl::kill(self.pid, libc::SIGKILL);
        let _ = ptrace::wait(self.pid, 0);
    }
}

/// What the ptrace probe saw.
#[derive(Debug)]
pub struct PtraceReport {
    /// PTRACE_GET_RSEQ_CONFIGURATION on the stopped child.
    pub rseq: ProbeResult<ptrace::RseqConfiguration>,
}

/// Forks a child, PTRACE_SEIZEs it, stops it with PTRACE_INTERRUPT (expecting a
/// PTRACE_EVENT_STOP), then asks for its rseq configuration while it is stopped.
pub fn probe_ptrace() -> ProbeResult<PtraceReport> {
    let child = PausedChild::fork()?;
    ptrace::seize(child.pid, libc::PTRACE_O_EXITKILL)?;
    ptrace::interrupt(child.pid)?;
    match ptrace::wait(child.pid, 0)? {
        Some((_, ptrace::WaitStatus::Stopped { event, .. }))
            if event == ptrace::PTRACE_EVENT_STOP => {}
        other => {
            return Err(ProbeError::Unexpected(format!(
                "after PTRACE_INTERRUPT the child reported {other:?}, not PTRACE_EVENT_STOP"
            )))
        }
    }
    let rseq = ptrace::get_rseq(child.pid).map_err(ProbeError::from);
    Ok(PtraceReport { rseq })
}

/// Creates a child with clone3 at a PID that is currently free (`set_tid`), checks it got that
/// PID, and reaps it. Returns the PID used.
pub fn probe_clone3_set_tid() -> ProbeResult<i32> {
    let pid_max = super::proc_ctl::read_proc_int(super::proc_ctl::PID_MAX, "read(pid_max)")?;
    let last = super::proc_ctl::read_proc_int(super::proc_ctl::NS_LAST_PID, "read(ns_last_pid)")?;
    let mut last_err = None;
    for attempt in 0..8 {
        let span = (pid_max - 1000).max(1);
        let want = 1000 + (last + 500 + attempt * 97).rem_euclid(span);
        if fs::metadata(format!("/proc/{want}")).is_ok() {
            continue;
        }
        match proc_ctl::fork_with_pid(want, 0) {
            Ok(0) => {
                // SAFETY: in the child: leave at once without running any Rust code.
                unsafe { libc::_exit(0) }
            }
            Ok(got) => {
                let _ = ptrace::wait(got, 0);
                if got != want {
                    return Err(ProbeError::Unexpected(format!(
                        "asked for pid {want}, got {got}"
                    )));
                }
                return Ok(got);
            }
            // Someone took the PID between our look and the clone: try another.
            Err(e) if e.errno == libc::EEXIST => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_err
        .map(ProbeError::from)
        .unwrap_or_else(|| ProbeError::Unexpected("found no free pid to try".into())))
}

/// Opens /proc/sys/kernel/ns_last_pid for writing and writes back the value it holds.
/// Returns that value.
pub fn probe_ns_last_pid() -> ProbeResult<i32> {
    const PATH: &str = "/proc/sys/kernel/ns_last_pid";
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(PATH)
        .map_err(io_err(PATH))?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io_err(PATH))?;
    let last: i32 = text
        .trim()
        .parse()
        .map_err(|_| ProbeError::Unexpected(format!("{PATH}: not a number: {text:?}")))?;
    f.write_all(last.to_string().as_bytes())
        .map_err(io_err(PATH))?;
    Ok(last)
}

/// `struct prctl_mm_map`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: u64,
    auxv_size: u32,
    exe_fd: u32,
}

/// prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE): the size of `struct prctl_mm_map` the kernel expects.
pub fn probe_mm_map_size() -> ProbeResult<u32> {
    let mut size: u32 = 0;
    // SAFETY: the kernel writes one u32 through the pointer, which is valid.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_MM,
            libc::PR_SET_MM_MAP_SIZE as libc::c_ulong,
            &mut size as *mut u32,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    check("prctl(PR_SET_MM_MAP_SIZE)", ret as libc::c_long)?;
    Ok(size)
}

/// Parses the mm boundaries of /proc/self/stat into a `prctl_mm_map` (brk is filled by the
/// caller, auxv and exe file left unchanged).
fn own_mm_map() -> ProbeResult<PrctlMmMap> {
    const PATH: &str = "/proc/self/stat";
    let stat = fs::read_to_string(PATH).map_err(io_err(PATH))?;
    let after_comm = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| ProbeError::Unexpected(format!("{PATH}: no command field")))?;
    // Field 3 (state) is the first after the command.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> ProbeResult<u64> {
        fields
            .get(n - 3)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ProbeError::Unexpected(format!("{PATH}: field {n} missing")))
    };
    Ok(PrctlMmMap {
        start_code: field(26)?,
        end_code: field(27)?,
        start_stack: field(28)?,
        start_data: field(45)?,
        end_data: field(46)?,
        start_brk: field(47)?,
        arg_start: field(48)?,
        arg_end: field(49)?,
        env_start: field(50)?,
        env_end: field(51)?,
        auxv: 0,
        auxv_size: 0,
        exe_fd: u32::MAX,
        brk: 0,
    })
}

/// Forks a child that applies PR_SET_MM_MAP with its own current values (a no-op map: same
/// boundaries, auxv and exe file untouched). Returns the errno on failure.
pub fn probe_mm_map_noop() -> ProbeResult<()> {
    let mut map = own_mm_map()?;
    // SAFETY: fork in a possibly multi-threaded process; the child only makes raw system
    // calls on memory it owns (its copy of `map`) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: brk(0) only reports the break; prctl reads `map`, which is valid and of the
        // size passed; _exit does not return.
        unsafe {
            map.brk = libc::syscall(libc::SYS_brk, 0) as u64;
            let ret = libc::prctl(
                libc::PR_SET_MM,
                libc::PR_SET_MM_MAP as libc::c_ulong,
                &map as *const PrctlMmMap,
                std::mem::size_of::<PrctlMmMap>() as libc::c_ulong,
                0 as libc::c_ulong,
            );
            let code = if ret == 0 {
                0
            } else {
                *libc::__errno_location() & 0xff
            };
            libc::_exit(code)
        }
    }
    check("fork", pid as libc::c_long)?;
    match ptrace::wait(pid, 0)? {
        Some((_, ptrace::WaitStatus::Exited(0))) => Ok(()),
        Some((_, ptrace::WaitStatus::Exited(errno))) => {
            Err(SysError::from_errno("prctl(PR_SET_MM, PR_SET_MM_MAP)", errno).into())
        }
        other => Err(ProbeError::Unexpected(format!(
            "PR_SET_MM_MAP child ended with {other:?}"
        ))),
    }
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

fn userfaultfd() -> ProbeResult<OwnedFd> {
    // SAFETY: plain syscall with integer flags.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    let fd = check("userfaultfd", fd)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn uffdio_api(fd: &OwnedFd, features: u64) -> ProbeResult<u64> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `api` is.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    check("ioctl(UFFDIO_API)", ret as libc::c_long)?;
    Ok(api.features)
}

/// Opens a userfaultfd and handshakes with no features requested; returns the feature mask
/// the kernel offers.
pub fn probe_userfaultfd() -> ProbeResult<u64> {
    let fd = userfaultfd()?;
    uffdio_api(&fd, 0)
}

/// Opens a userfaultfd and enables write-protect faults in async mode (the handshake fails
/// when the kernel lacks a requested feature).
pub fn probe_uffd_wp_async() -> ProbeResult<()> {
    let fd = userfaultfd()?;
    uffdio_api(&fd, UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_ASYNC).map(drop)
}

/// An anonymous private mapping, unmapped on Drop.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

impl Mapping {
    fn anon(len: usize) -> ProbeResult<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SysError::last("mmap").into());
        }
        Ok(Self {
            addr: addr.cast(),
            len,
        })
    }

    /// Writes one byte into page `page`, making it present.
    fn touch(&self, page: usize) {
        assert!(page * PAGE < self.len);
        // SAFETY: the address is inside the mapping, which is readable and writable.
        unsafe { self.addr.add(page * PAGE).write_volatile(1) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value created; nothing refers to it now.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Maps 4 pages, touches pages 0 and 2, and runs PAGEMAP_SCAN on /proc/self/pagemap for
/// present pages. Returns the regions found as page-index ranges relative to the mapping
/// (the kernel is right when this is `[(0, 1), (2, 3)]`).
pub fn probe_pagemap_scan() -> ProbeResult<Vec<(u64, u64)>> {
    const PATH: &str = "/proc/self/pagemap";
    let map = Mapping::anon(4 * PAGE)?;
    map.touch(0);
    map.touch(2);
    let pagemap = fs::File::open(PATH).map_err(io_err(PATH))?;
    let mut regions = Vec::new();
    let base = map.addr as u64;
    let present = pagemap::Masks {
        all: pagemap::PAGE_IS_PRESENT,
        report: pagemap::PAGE_IS_PRESENT,
        ..pagemap::Masks::default()
    };
    pagemap::scan(
        pagemap.as_fd(),
        base,
        base + map.len as u64,
        present,
        &mut regions,
    )?;
    Ok(regions
        .iter()
        .map(|r| {
            (
                r.start.saturating_sub(base) / PAGE as u64,
                r.end.saturating_sub(base) / PAGE as u64,
            )
        })
        .collect())
}

/// Touches a page of a fresh mapping and reads its pagemap entry: returns whether the
/// soft-dirty bit is set (it always is on a kernel that tracks soft-dirty).
pub fn probe_soft_dirty() -> ProbeResult<bool> {
    use std::os::unix::fs::FileExt;
    const PATH: &str = "/proc/self/pagemap";
    let map = Mapping::anon(PAGE)?;
    map.touch(0);
    let pagemap = fs::File::open(PATH).map_err(io_err(PATH))?;
    let mut entry = [0u8; 8];
    pagemap
        .read_exact_at(&mut entry, (map.addr as u64 / PAGE as u64) * 8)
        .map_err(io_err(PATH))?;
    let entry = u64::from_le_bytes(entry);
    if entry & PM_PRESENT == 0 {
        return Err(ProbeError::Unexpected(format!(
            "a touched page is not present in pagemap (entry {entry:#x})"
        )));
    }
    Ok(entry & PM_SOFT_DIRTY != 0)
}

/// Puts a fresh TCP socket into repair mode (TCP_REPAIR) and back.
pub fn probe_tcp_repair() -> ProbeResult<()> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    check("socket(AF_INET, SOCK_STREAM)", fd as libc::c_long)?;
    // SAFETY: the kernel returned a new fd that we now own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    for (call, value) in [
        ("setsockopt(TCP_REPAIR, 1)", 1),
        ("setsockopt(TCP_REPAIR, 0)", 0),
    ] {
        let v: libc::c_int = value;
        // SAFETY: optval points to a c_int of the length passed.
        let ret = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_REPAIR,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        check(call, ret as libc::c_long)?;
    }
    Ok(())
}

/// pidfd_open on this process, then pidfd_getfd of the pidfd itself.
pub fn probe_pidfd() -> ProbeResult<()> {
    let pidfd = proc_ctl::pidfd_open(std::process::id() as i32)?;
    let copy = proc_ctl::pidfd_getfd(&pidfd, pidfd.as_raw_fd())?;
    drop(copy);
    Ok(())
}

/// Reads a buffer of this process through process_vm_readv and compares.
pub fn probe_process_vm_readv() -> ProbeResult<()> {
    let source: Vec<u8> = (0..=255u8).collect();
    let mut copy = vec![0u8; source.len()];
    super::mem::read(std::process::id() as i32, source.as_ptr() as u64, &mut copy)?;
    if copy != source {
        return Err(ProbeError::Unexpected(
            "process_vm_readv returned different bytes".into(),
        ));
    }
    Ok(())
}

fn kcmp_files(fd1: i32, fd2: i32) -> ProbeResult<i64> {
    let pid = std::process::id() as libc::c_long;
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, fd1, fd2) };
    Ok(check("kcmp(KCMP_FILE)", ret)?)
}

/// kcmp(KCMP_FILE) on two fds sharing a file (must compare equal) and on two separate opens
/// of the same path (must differ).
pub fn probe_kcmp() -> ProbeResult<()> {
    const PATH: &str = "/dev/null";
    let a = fs::File::open(PATH).map_err(io_err(PATH))?;
    let dup = a.try_clone().map_err(io_err(PATH))?;
    let other = fs::File::open(PATH).map_err(io_err(PATH))?;
    let same = kcmp_files(a.as_raw_fd(), dup.as_raw_fd())?;
    let differ = kcmp_files(a.as_raw_fd(), other.as_raw_fd())?;
    if same != 0 || differ == 0 {
        return Err(ProbeError::Unexpected(format!(
            "kcmp said {same} for a dup and {differ} for separate opens"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<PrctlMmMap>(), 104);
        assert_eq!(std::mem::size_of::<UffdioApi>(), 24);
        // The ioctl numbers encode those sizes in bits 16..30.
        assert_eq!((UFFDIO_API >> 16) & 0x3fff, 24);
    }

    #[test]
    fn own_mm_map_is_ordered() {
        let m = own_mm_map().expect("parse /proc/self/stat");
        assert!(m.start_code < m.end_code);
        assert!(m.start_data <= m.end_data);
        assert!(m.arg_start <= m.arg_end);
        assert!(m.env_start <= m.env_end);
        assert!(m.start_stack > m.end_code);
    }

    #[test]
    fn process_vm_readv_and_kcmp_work_on_self() {
        // Neither needs privileges on one's own process.
        probe_process_vm_readv().expect("process_vm_readv on self");
        probe_kcmp().expect("kcmp on own fds");
    }
}
