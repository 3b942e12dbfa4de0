//! Process-level syscalls that are not ptrace: pidfds, clone3 with set_tid, prctl, robust
//! lists, signals, uname.

use super::{check, SysError, SysResult};
use std::os::fd::{FromRawFd, OwnedFd};

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> SysResult<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = check("pidfd_open", fd)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// process_mrelease(2) (Linux 5.15): frees the memory of the process behind `pidfd`, which
/// must have been sent SIGKILL, from the calling thread, alongside the process's own exit.
pub fn process_mrelease(pidfd: &OwnedFd) -> SysResult<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_process_mrelease, pidfd.as_raw_fd(), 0) };
    check("process_mrelease", r).map(drop)
}

/// pidfd_getfd(2): a duplicate of fd `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: &OwnedFd, target_fd: i32) -> SysResult<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) };
    let fd = check("pidfd_getfd", fd)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// get_robust_list(2) of another task: (head, len).
pub fn get_robust_list(tid: i32) -> SysResult<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: head and len are valid out-pointers of the sizes the kernel writes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    check("get_robust_list", ret)?;
    Ok((head, len as u64))
}

/// PR_SET_CHILD_SUBREAPER on the calling process (`on`), or off.
pub fn set_child_subreaper(on: bool) -> SysResult<()> {
    // SAFETY: prctl with integer arguments.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on as libc::c_ulong, 0, 0, 0) };
    check("prctl(PR_SET_CHILD_SUBREAPER)", ret as libc::c_long).map(drop)
}

/// kill(2).
pub fn kill(pid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: plain syscall.
    let ret = unsafe { libc::kill(pid, sig) };
    check("kill", ret as libc::c_long).map(drop)
}

/// The kernel release string (uname -r).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::from("unknown");
    }
    // SAFETY: the kernel NUL-terminates release.
    let c = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) };
    c.to_string_lossy().into_owned()
}

/// `struct clone_args` for clone3(2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Forks the calling (single-threaded) process with clone3, asking for PID `pid`
/// (`set_tid`). Returns Ok(0) in the child and Ok(child pid) in the parent, like fork.
///
/// The caller must be single-threaded at this point (it behaves like fork(2)).
pub fn fork_with_pid(pid: i32, flags: u64) -> SysResult<i32> {
    let tid = [pid];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of the address
    // space and continues from here with its own stack copy; args and tid outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    check("clone3(set_tid)", ret).map(|r| r as i32)
}

/// Creates a child at exactly PID `pid` that shares the caller's memory (clone3 with
/// `CLONE_VM | CLONE_VFORK` and `set_tid`) and runs `f(arg)` on `stack`; the caller is
/// suspended until the child calls execve or exits, then gets the child's PID. Nothing of the
/// caller's memory is copied: the child starts as cheaply as a thread.
///
/// # Safety
/// The child runs in the caller's memory, with the calling thread's thread-local state (the
/// calling thread is suspended meanwhile, as with vfork(2)): `f` must not return (it ends in
/// execve or _exit), and must not take a lock other threads of the caller could hold forever.
/// `stack` must stay mapped until this returns, and must not be used by anything else.
/// A core-dumping signal in the child would take down every process sharing the memory.
pub unsafe fn vfork_with_pid(
    pid: i32,
    stack: &mut [u8],
    f: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> SysResult<i32> {
    let tid = [pid];
    let args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: stack.len() as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let ret: i64;
    // SAFETY: clone3 returns twice. In the parent it falls through with the result in rax;
    // `args` and `tid` outlive the call. In the child (rax == 0) the kernel has switched rsp
    // to the top of `stack`; the child aligns it, calls `f(arg)` (r12, r13 survive the
    // syscall) and never comes back (ud2 if it did). rcx and r11 are clobbered by syscall.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") f,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    check("clone3(CLONE_VM|CLONE_VFORK, set_tid)", ret as libc::c_long).map(|r| r as i32)
}

/// Forks with the ns_last_pid fallback: writes `pid - 1` to /proc/sys/kernel/ns_last_pid and
/// forks; fails with EEXIST if the kernel handed out a different PID.
pub fn fork_with_pid_fallback(pid: i32, flags: u64) -> SysResult<i32> {
    write_last_pid(pid - 1)?;
    // SAFETY: clone without CLONE_VM and with a null stack is fork (plus `flags`, e.g.
    // CLONE_FS), in a single-threaded caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as u64,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    let ret = check("clone", ret)? as i32;
    if ret != 0 && ret != pid {
        // Someone else took the PID between our write and our fork.
        // SAFETY: the child is ours and not yet doing anything useful.
        unsafe {
            libc::kill(ret, libc::SIGKILL);
            libc::waitpid(ret, std::ptr::null_mut(), 0);
        }
        return Err(SysError::from_errno("fork(ns_last_pid)", libc::EEXIST));
    }
    Ok(ret)
}

/// The kernel's highest PID plus one.
pub const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// The number in a /proc file such as [`PID_MAX`]; `call` names the read in an error (EINVAL
/// for a file that does not hold a number).
pub fn read_proc_int(path: &str, call: &'static str) -> SysResult<i32> {
    std::fs::read_to_string(path)
        .map_err(|e| SysError::from_errno(call, e.raw_os_error().unwrap_or(0)))?
        .trim()
        .parse()
        .map_err(|_| SysError::from_errno(call, libc::EINVAL))
}

/// Moves the PID allocator of this PID namespace (/proc/sys/kernel/ns_last_pid) so that the
/// PIDs it hands out meanwhile, to threads and processes of anyone, cryo's own included, come
/// from the widest stretch free of `pids` instead of sweeping through the PIDs a restore is
/// about to take (on a machine whose pid_max is 32768 the allocator wraps every few minutes of
/// tests). Moves it only when that leaves more room than where it is. Returns whether it moved.
pub fn advance_last_pid(pids: &[i32]) -> SysResult<bool> {
    let now = read_proc_int(NS_LAST_PID, "read(ns_last_pid)")?;
    let pid_max = read_proc_int(PID_MAX, "read(pid_max)")?;
    match last_pid_target(pids, now, pid_max) {
        Some(to) => write_last_pid(to).map(|()| true),
        None => Ok(false),
    }
}

/// Where to put the PID allocator, which hands out PIDs upwards from the last one and wraps at
/// `pid_max`, so that the most PIDs go by before it reaches one of `pids`: on the member of
/// `pids` that opens the widest (cyclic) gap. None when there is nothing to keep free or `now`
/// already has at least half that room ahead of it (moving it back only makes PIDs come round
/// again sooner).
fn last_pid_target(pids: &[i32], now: i32, pid_max: i32) -> Option<i32> {
    let mut sorted: Vec<i32> = pids.iter().copied().filter(|&p| p > 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let first = *sorted.first()?;
    let span = i64::from(pid_max.max(1));
    // PIDs handed out from `from` on before the next member strictly after it, wrapping; a
    // lone member has the whole turn.
    let gap = |from: i32| -> i64 {
        let next = sorted.iter().copied().find(|&p| p > from).unwrap_or(first);
        match (i64::from(next) - i64::from(from)).rem_euclid(span) {
            0 => span,
            g => g,
        }
    };
    let best = sorted
        .iter()
        .copied()
        .max_by_key(|&p| (gap(p), std::cmp::Reverse(p)))?;
    (gap(now) * 2 < gap(best)).then_some(best)
}

/// The last PID handed out in this PID namespace (the next one goes above it).
pub const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";

/// Sets the last PID handed out in this PID namespace.
fn write_last_pid(pid: i32) -> SysResult<()> {
    use std::io::Write;
    let err = |call: &'static str| {
        move |e: std::io::Error| SysError::from_errno(call, e.raw_os_error().unwrap_or(0))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(NS_LAST_PID)
        .map_err(err("open(ns_last_pid)"))?;
    write!(f, "{pid}").map_err(err("write(ns_last_pid)"))
}

/// A CPU affinity mask (sched_getaffinity(2)).
#[derive(Clone, Copy)]
pub struct CpuMask(libc::cpu_set_t);

/// The CPU affinity of task `tid` (0: the calling thread).
pub fn get_affinity(tid: i32) -> SysResult<CpuMask> {
    // SAFETY: a zeroed cpu_set_t is a valid empty mask; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: set is a valid out-pointer of the size given.
    let r =
        unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    check("sched_getaffinity", r as libc::c_long).map(|_| CpuMask(set))
}

/// Sets the CPU affinity of task `tid` (0: the calling thread).
pub fn set_affinity(tid: i32, mask: &CpuMask) -> SysResult<()> {
    // SAFETY: mask is a valid cpu_set_t of the size given.
    let r =
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mask.0) };
    check("sched_setaffinity", r as libc::c_long).map(drop)
}

/// Puts back `own`, the affinity task `tid` had before cryo moved it to a CPU of its own.
/// Since Linux 6.2 the kernel keeps the mask given to sched_setaffinity as the task's request
/// and holds the task to it through later cpuset changes. A task allowed every CPU of its
/// cpuset (every online CPU without one) most likely never asked for a mask: it is given a
/// mask of every CPU instead, which the kernel narrows to the same CPUs and which keeps it
/// following its cpuset, as before. Any other task gets `own` back.
pub fn give_affinity_back(tid: i32, own: &CpuMask) -> SysResult<()> {
    let natural = cpuset_cpus(tid).unwrap_or_else(|| online_cpus().to_vec());
    if !natural.is_empty() && cpus_of(own) == natural {
        // SAFETY: a zeroed cpu_set_t is a valid empty mask.
        let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for c in 0..libc::CPU_SETSIZE as usize {
            // SAFETY: c is within the set, which is ours.
            unsafe { libc::CPU_SET(c, &mut all) };
        }
        return set_affinity(tid, &CpuMask(all));
    }
    set_affinity(tid, own)
}

/// The online CPUs (/sys/devices/system/cpu/online: ranges such as `0-3,6`), read once; empty
/// if unreadable.
fn online_cpus() -> &'static [usize] {
    static ONLINE: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    ONLINE.get_or_init(|| {
        let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
        parse_cpu_list(text.trim()).unwrap_or_default()
    })
}

/// Where the cpuset controller is mounted: the v1 `cpuset` hierarchy if there is one, else the
/// cgroup v2 one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusetMount {
    /// The mount point.
    pub point: String,
    /// The cgroup at the root of that mount (`/` unless mounted from inside a cgroup
    /// namespace or a bind mount).
    pub root: String,
    /// cgroup v2.
    pub v2: bool,
}

/// The mount of the cpuset controller, from /proc/self/mountinfo; None if it has none.
pub fn cpuset_mount() -> Option<CpusetMount> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Option<CpusetMount> = None;
    for line in mounts.lines() {
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let f: Vec<&str> = head.split(' ').collect();
        let t: Vec<&str> = tail.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (f.get(3), f.get(4), t.first()) else {
            continue;
        };
        let mount = |v2| CpusetMount {
            point: point.to_string(),
            root: root.to_string(),
            v2,
        };
        let v1_cpuset = *fstype == "cgroup"
            && t.get(2)
                .is_some_and(|o| o.split(',').any(|x| x == "cpuset"));
        if v1_cpuset {
            return Some(mount(false));
        }
        if *fstype == "cgroup2" && found.is_none() {
            found = Some(mount(true));
        }
    }
    found
}

/// The CPUs the cpuset of task `tid` gives it (`cpuset.effective_cpus` with cgroup v1,
/// `cpuset.cpus.effective` with v2, found through /proc/TID/cpuset and [`cpuset_mount`]);
/// None if there is no such file to read.
fn cpuset_cpus(tid: i32) -> Option<Vec<usize>> {
    let path = std::fs::read_to_string(format!("/proc/{tid}/cpuset")).ok()?;
    let path = path.trim();
    // Read once: giving affinities back is done for every thread a restore builds.
    static MOUNT: std::sync::OnceLock<Option<CpusetMount>> = std::sync::OnceLock::new();
    let m = MOUNT.get_or_init(cpuset_mount).as_ref()?;
    let rel = path
        .strip_prefix(m.root.trim_end_matches('/'))
        .unwrap_or(path);
    let file = if m.v2 {
        "cpuset.cpus.effective"
    } else {
        "cpuset.effective_cpus"
    };
    let text = std::fs::read_to_string(format!("{}{rel}/{file}", m.point)).ok()?;
    parse_cpu_list(text.trim())
}

/// A CPU list such as `0-3,6`; None if malformed.
fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b >= libc::CPU_SETSIZE as usize {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// One CPU each for `n` worker threads, spread over the CPUs the caller may run on, so that a
/// worker and the task it drives through ptrace stops share a CPU (a stop then wakes a thread
/// where it runs instead of an idle vCPU, which on a virtual machine can take milliseconds).
/// None for each when the caller may use only one CPU, or `CRYO_NOPIN` is set (for A/B
/// measurements).
pub fn worker_cpus(n: usize) -> Vec<Option<CpuMask>> {
    let own = get_affinity(0);
    if let Ok(m) = own {
        let _ = UNPINNED.set(m);
    }
    let cpus = own.map(|m| cpus_of(&m)).unwrap_or_default();
    let pin = cpus.len() > 1 && std::env::var_os("CRYO_NOPIN").is_none();
    (0..n)
        .map(|i| pin.then(|| one_cpu(cpus[i % cpus.len()])))
        .collect()
}

/// The CPUs the first caller of [`worker_cpus`] could use.
static UNPINNED: std::sync::OnceLock<CpuMask> = std::sync::OnceLock::new();

/// Lets the calling thread, started by a pinned worker (whose affinity it inherited), run on
/// any CPU the workers were spread over: for a helper that should run beside its worker, not
/// take turns with it. Nothing happens if no worker was pinned.
pub fn unpin_current_thread() {
    if let Some(m) = UNPINNED.get() {
        let _ = set_affinity(0, m);
    }
}

/// How many CPUs helpers of the workers may use: those [`worker_cpus`] spread the workers
/// over, or, before any worker was pinned, those of the calling thread.
pub fn helper_cpus() -> usize {
    match UNPINNED.get() {
        Some(m) => cpus_of(m).len().max(1),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// Whether other runnable tasks already fill every CPU the caller may use: the running count
/// of /proc/loadavg (which includes the caller) against the caller's CPUs. None if unreadable.
pub fn cpus_busy_with_others() -> Option<bool> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let running: usize = text
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()?;
    let cpus = get_affinity(0).map(|m| cpus_of(&m).len()).ok()?;
    Some(running.saturating_sub(1) >= cpus.max(1))
}

/// The mask of the one CPU `cpu`.
fn one_cpu(cpu: usize) -> CpuMask {
    // SAFETY: a zeroed cpu_set_t is a valid empty mask.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu < libc::CPU_SETSIZE as usize {
        // SAFETY: cpu is within the set, which is ours.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    CpuMask(set)
}

/// The CPUs of `mask`, in order.
fn cpus_of(mask: &CpuMask) -> Vec<usize> {
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: c is within the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &mask.0) })
        .collect()
}

/// kcmp(2) types.
pub const KCMP_VM: i32 = 1;
/// Shared fd table.
pub const KCMP_FILES: i32 = 2;
/// Shared fs info (cwd, root, umask).
pub const KCMP_FS: i32 = 3;
/// One open file description.
pub const KCMP_FILE: i32 = 0;

/// kcmp(2): Ok(true) when the two processes share the kernel object of `kind`.
pub fn kcmp_same(pid1: i32, pid2: i32, kind: i32) -> SysResult<bool> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, 0, 0) };
    check("kcmp", r).map(|r| r == 0)
}

/// kcmp(2) as an ordering: the kernel compares the two objects' (obfuscated) addresses, so
/// equal means the very same object and the order is total and stable while both exist.
/// `idx1`/`idx2` are fd numbers for [`KCMP_FILE`], 0 otherwise.
pub fn kcmp_order(
    pid1: i32,
    pid2: i32,
    kind: i32,
    idx1: i32,
    idx2: i32,
) -> SysResult<std::cmp::Ordering> {
    // SAFETY: plain syscall with integer arguments (no kind that takes a pointer is passed
    // here: KCMP_EPOLL_TFD has its own wrapper).
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) };
    match check("kcmp", r)? {
        0 => Ok(std::cmp::Ordering::Equal),
        1 => Ok(std::cmp::Ordering::Less),
        2 => Ok(std::cmp::Ordering::Greater),
        _ => Err(SysError::from_errno(
            "kcmp (unordered result)",
            libc::EINVAL,
        )),
    }
}

/// Lets big allocations come from the heap and freed heap memory stay mapped (up to 32 MiB
/// per allocation, 64 MiB kept), so that the big buffers cryo allocates and frees in turn
/// (socket queues, packed images) reuse memory that is already faulted in instead of mapping
/// fresh pages each time: on these machines first touch costs about 0.6 s per GiB.
pub fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Has `fd` closed for the last time by a short-lived child rather than by cryo: the child
/// inherits it, cryo closes its own copy (not the last reference, so it returns at once), and
/// the child exits as soon as it sees cryo done (a pipe closing), taking whatever the final
/// close waits for with it. For an nfnetlink socket that just committed a change, that wait is
/// the kernel releasing the transaction (an RCU grace period, 5-15 ms here). The child is not
/// waited for: it is reaped by whoever adopts it when cryo exits.
pub fn close_in_child(fd: OwnedFd) -> SysResult<()> {
    let (r, w) = super::task::pipe()?;
    // SAFETY: fork in a possibly multi-threaded process: the child only calls close(2),
    // read(2) and _exit(2), which are async-signal-safe, and touches no lock or allocation.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above; buf is a valid one-byte buffer.
        unsafe {
            libc::close(w);
            let mut buf = 0u8;
            libc::read(r, (&mut buf as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    let forked = check("fork", pid as libc::c_long);
    drop(fd);
    super::task::close(w);
    super::task::close(r);
    forked.map(drop)
}

#[cfg(test)]
mod tests {
    use super::{cpus_busy_with_others, last_pid_target, parse_cpu_list};

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(vec![0, 1, 2, 3, 6, 8, 9]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("0-99999"), None);
    }

    /// A thread allowed every online CPU gets them all back after being moved to one.
    #[test]
    fn affinity_given_back() {
        let own = super::get_affinity(0).expect("own affinity");
        let cpus = super::cpus_of(&own);
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                super::set_affinity(0, &super::one_cpu(cpus[0])).expect("move");
                super::give_affinity_back(tid, &own).expect("give back");
                let back = super::get_affinity(0).expect("affinity");
                assert_eq!(super::cpus_of(&back), cpus);
            });
        });
    }

    /// With more spinning threads than CPUs, the CPUs are reported busy.
    #[test]
    fn spinning_threads_make_the_cpus_busy() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let busy = std::thread::scope(|s| {
            for _ in 0..=cpus {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                });
            }
            // The running count is sampled: look a few times.
            let mut seen = None;
            for _ in 0..200 {
                seen = cpus_busy_with_others();
                if seen == Some(true) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            seen
        });
        assert_eq!(busy, Some(true));
    }

    #[test]
    fn allocator_goes_after_the_widest_gap() {
        // Below the checkpoint's PIDs: on past them (the room after the last one wraps).
        assert_eq!(last_pid_target(&[1000, 1001, 1002], 990, 32768), Some(1002));
        // Already well clear of them: left alone.
        assert_eq!(last_pid_target(&[1000, 1001, 1002], 5000, 32768), None);
        assert_eq!(last_pid_target(&[1000, 1001, 1002], 1002, 32768), None);
        // PIDs that wrapped past pid_max: after the low ones, not after the top one (from
        // which the allocator would wrap straight onto 300).
        let wrapped = [32760, 32761, 32767, 300, 301, 32762];
        assert_eq!(last_pid_target(&wrapped, 32767, 32768), Some(301));
        assert_eq!(last_pid_target(&wrapped, 32750, 32768), Some(301));
        assert_eq!(last_pid_target(&wrapped, 2000, 32768), None);
        // A lone PID: the allocator just before it moves onto it.
        assert_eq!(last_pid_target(&[500], 499, 32768), Some(500));
        assert_eq!(last_pid_target(&[], 499, 32768), None);
    }
}
