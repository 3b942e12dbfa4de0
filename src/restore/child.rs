//! What each forked restore process does to itself before cryo takes it over: join its session
//! and process group, fork its own children (each of which does the same; zombies exit at
//! once with their saved status), set up its fd table (through [`super::files`]), cwd, umask,
//! rlimits and name, map the trampoline cryo will drive it from, report `R <pid>` on the shared
//! report pipe and wait in pause() until cryo seizes it. On failure it reports `E <pid> <message>` and exits.
//!
//! Only the root is forked as a copy of cryo. Every other process that shares neither an fd
//! table nor fs info ([`creates_by_exec`]) is created sharing its parent's memory (clone3 with
//! `CLONE_VM | CLONE_VFORK` at its PID: nothing is copied, and its parent waits), does the same
//! setup, leaves every fd it keeps open across execve, reports `X <pid>` and execs its stub
//! ([`super::stub`]), which maps the trampoline and waits in pause(). cryo then gives it back
//! what execve reset (its name, the close-on-exec flags). A copy of cryo costs its fork, the
//! page faults of the copy while it runs, and tearing the copy down when cryo replaces it with
//! the checkpoint's memory; for a tree that was a third of the restore's CPU time.
//!
//! Shared fd tables and fs infos (see [`super::tree::Plan::clone_flags`]): a process that
//! shares its parent's fd table (CLONE_FILES) or cwd/root/umask (CLONE_FS) is created with that
//! flag and leaves the shared thing alone; its owner (the top of the sharing group) restores
//! it once, and only after every sharer is done with it. Each owner with sharers creates a
//! sync pipe before forking, at fd numbers above every saved fd; the sharers inherit its
//! write end (or see it in the shared table) and, once they have forked their own children,
//! set themselves up and written their `R` line, write one byte per thing they share (`R`, or
//! `E` when they failed). The owner waits for all of them (with a time limit) before it
//! installs its fd table (which closes what the sharers inherited, the report fd among them)
//! and sets its cwd and umask. A sharer of an fd table never closes an fd itself: the table is
//! its owner's.

use super::tree::{Join, Plan};
use super::ProcessImage;
use crate::sys::task;
use std::collections::BTreeMap;
use std::os::fd::RawFd;

/// How long an owner waits for the processes sharing its fd table or fs info.
const SHARERS_TIMEOUT_MS: u64 = 60_000;

/// What every restore process inherits from cryo.
struct Env<'a> {
    plan: &'a Plan,
    images: &'a BTreeMap<i32, ProcessImage>,
    report: RawFd,
    keep: &'a [RawFd],
    shared: &'a [(u64, RawFd)],
    /// Above every saved fd number of every process: where sync pipes go.
    fd_base: RawFd,
    /// Where each process maps its trampoline ([`super::remote_ctx::TRAMPOLINE_CODE`]).
    tramps: &'a BTreeMap<i32, u64>,
    /// Whether a process the kernel refuses to create sharing memory may be forked instead:
    /// not in a tree created in cryo's own memory (see [`whole_tree_by_exec`]).
    may_fork: bool,
}

/// The write end of an owner's sync pipe, as inherited by the processes forked after it.
#[derive(Debug, Clone, Copy)]
struct OwnerPipe {
    owner: i32,
    w: RawFd,
}

/// Runs restore process `pid` (in the freshly forked child). `keep` are fds cryo prepared
/// that must survive into the process (shared memory objects). Never returns.
pub fn run(
    plan: &Plan,
    images: &BTreeMap<i32, ProcessImage>,
    pid: i32,
    report: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
    tramps: &BTreeMap<i32, u64>,
) -> ! {
    let env = Env::new(plan, images, report, keep, shared, tramps, true);
    run_proc(&env, pid, &[], false)
}

/// Creates the root, restore process `pid`, the way [`create_by_exec`] creates the others:
/// sharing cryo's memory until it execs its stub (it closes `report_r`, cryo's end of the
/// report pipe, first). Returns once the root has exec'd (its whole tree created by then) or
/// failed. Only for a tree that [`whole_tree_by_exec`] accepts, from a thread of cryo that
/// stays alive until the restore is over (the tree's `PR_SET_PDEATHSIG` follows the thread
/// that created the root).
#[allow(clippy::too_many_arguments)]
pub fn start_root_by_exec(
    plan: &Plan,
    images: &BTreeMap<i32, ProcessImage>,
    pid: i32,
    report: RawFd,
    report_r: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
    tramps: &BTreeMap<i32, u64>,
) -> Result<i32, String> {
    let env = Env::new(plan, images, report, keep, shared, tramps, false);
    match create_by_exec(&env, pid, &[], Some(report_r))? {
        Some(child) => Ok(child),
        None => Err(format!(
            "creating process {pid} at its PID: clone3 with set_tid refused"
        )),
    }
}

/// Whether the whole tree can be created from the stub, the root included: then the root is
/// created sharing cryo's own memory, while cryo's threads run. Any process it or its
/// descendants forked instead would be a fork of that memory taken while other threads may
/// hold its locks: only zombies are (they exit at once, with plain system calls).
pub fn whole_tree_by_exec(plan: &Plan) -> bool {
    plan.entries()
        .all(|e| e.zombie || creates_by_exec(plan, e.pid))
}

impl<'a> Env<'a> {
    fn new(
        plan: &'a Plan,
        images: &'a BTreeMap<i32, ProcessImage>,
        report: RawFd,
        keep: &'a [RawFd],
        shared: &'a [(u64, RawFd)],
        tramps: &'a BTreeMap<i32, u64>,
        may_fork: bool,
    ) -> Self {
        let fd_base = images
            .values()
            .flat_map(|i| i.fds.iter().map(|f| f.fd))
            .max()
            .unwrap_or(2)
            .max(2)
            + 1;
        Env {
            plan,
            images,
            report,
            keep,
            shared,
            fd_base,
            tramps,
            may_fork,
        }
    }
}

/// Runs restore process `pid`; `execs`: it was created sharing its parent's memory (see
/// [`creates_by_exec`]) and ends its part by exec'ing its stub instead of waiting here.
fn run_proc(env: &Env, pid: i32, pipes: &[OwnerPipe], execs: bool) -> ! {
    let entry = env.plan.entry(pid);
    let owner_if = |shared: bool, files: bool| {
        if shared {
            env.plan.owner(pid, files)
        } else {
            0
        }
    };
    let files_owner = owner_if(entry.is_some_and(|e| e.files_shared), true);
    let fs_owner = owner_if(entry.is_some_and(|e| e.fs_shared), false);
    // One byte to each owner per thing shared with it.
    let mut owed: Vec<RawFd> = Vec::new();
    let mut missing = None;
    for owner in [files_owner, fs_owner].into_iter().filter(|&o| o != 0) {
        match pipes.iter().find(|p| p.owner == owner) {
            Some(p) => owed.push(p.w),
            None => missing = Some(owner),
        }
    }
    let res = match missing {
        Some(o) => Err(format!(
            "the sync pipe of {o}, whose state it shares, is missing"
        )),
        None => run_inner(env, pid, pipes, &owed).and_then(|report| {
            if execs {
                // The stub maps the trampoline once it runs.
                return Ok(report);
            }
            // The trampoline cryo drives the process from, mapped here (its own children are
            // forked by now, so they do not inherit it): two stops fewer than a remote mmap.
            let tramp = env.tramps.get(&pid).copied().unwrap_or(0);
            task::map_code(
                tramp,
                super::remote_ctx::TRAMPOLINE_LEN,
                &super::remote_ctx::TRAMPOLINE_CODE,
            )
            .map_err(|e| format!("mapping the trampoline at {tramp:#x}: {e}"))?;
            Ok(report)
        }),
    };
    match res {
        Ok(report) if execs => exec_stub(env, pid, report),
        Ok(report) => {
            task::write_all(report, format!("R {pid}\n").as_bytes());
            for &w in &owed {
                task::write_all(w, b"R");
            }
            if files_owner == 0 {
                let mut mine = owed.clone();
                mine.sort_unstable();
                mine.dedup();
                mine.into_iter().for_each(task::close);
                task::close(report);
            }
            task::pause_forever()
        }
        Err(msg) => {
            let msg = msg.replace('\n', " ");
            task::write_all(env.report, format!("E {pid} {msg}\n").as_bytes());
            for &w in &owed {
                task::write_all(w, b"E");
            }
            task::exit_now(1)
        }
    }
}

fn run_inner(env: &Env, pid: i32, pipes: &[OwnerPipe], owed: &[RawFd]) -> Result<RawFd, String> {
    let plan = env.plan;
    task::set_pdeathsig(libc::SIGKILL).map_err(|e| e.to_string())?;
    match plan.join(pid) {
        Join::Inherit => {}
        Join::NewSession => {
            task::setsid().map_err(|e| format!("setsid: {e}"))?;
            controlling_terminal(plan, pid, env.shared)?;
        }
        Join::NewGroup => task::setpgid(0).map_err(|e| format!("setpgid(0): {e}"))?,
        Join::Group(g) => task::setpgid(g).map_err(|e| format!("setpgid({g}): {e}"))?,
    }
    let sharers = plan.sharers(pid);
    let mut pipes = pipes.to_vec();
    let sync = if sharers > 0 {
        let (r, w) = sync_pipe(env.fd_base)?;
        pipes.push(OwnerPipe { owner: pid, w });
        Some((r, w))
    } else {
        None
    };
    for &kid in plan.children(pid) {
        let entry = plan
            .entry(kid)
            .ok_or_else(|| format!("child {kid} missing from the plan"))?;
        let flags = plan.clone_flags(kid);
        let execed = if creates_by_exec(plan, kid) {
            create_by_exec(env, kid, &pipes, None)?
        } else {
            None
        };
        let made = match execed {
            Some(child) => child,
            None => super::fork_at(kid, flags).map_err(|e| format!("forking child {kid}: {e}"))?,
        };
        match made {
            0 if entry.zombie => task::die_with_status(entry.exit_status),
            0 => run_proc(env, kid, &pipes, false),
            _ => {
                // Both parent and child set the child's group (as shells do), so a sibling
                // forked next can join it whichever of the two runs first.
                let target = match plan.join(kid) {
                    Join::NewGroup => Some(kid),
                    Join::Group(g) => Some(g),
                    _ => None,
                };
                if let Some(g) = target {
                    let _ = task::setpgid_of(kid, g);
                }
            }
        }
    }
    if let Some((r, w)) = sync {
        let got = task::read_bytes_timeout(r, sharers, SHARERS_TIMEOUT_MS);
        task::close(r);
        task::close(w);
        let got =
            got.map_err(|e| format!("waiting for the processes that share its state: {e}"))?;
        if got.len() < sharers || got.contains(&b'E') {
            return Err(format!(
                "{} of the {sharers} processes sharing its fd table or cwd failed",
                sharers - got.iter().filter(|&&b| b == b'R').count()
            ));
        }
    }
    crate::fault::point("restore:child").map_err(|e| e.to_string())?;
    let img = env
        .images
        .get(&pid)
        .ok_or_else(|| format!("no images for pid {pid}"))?;
    let keep: Vec<RawFd> = env.keep.iter().chain(owed).copied().collect();
    let entry = plan.entry(pid);
    let own_files = entry.is_none_or(|e| !e.files_shared);
    let own_fs = entry.is_none_or(|e| !e.fs_shared);
    prepare(img, env.report, &keep, env.shared, own_files, own_fs)
}

/// Whether restore process `pid` is created sharing its parent's memory and then execs the
/// stub ([`super::stub`]), rather than forked as a copy of its parent: every live process but
/// those that share an fd table or fs info (execve would unshare the fd table). (The root is
/// created so only when [`whole_tree_by_exec`].)
pub(super) fn creates_by_exec(plan: &Plan, pid: i32) -> bool {
    STUB_OK.load(std::sync::atomic::Ordering::Relaxed)
        && plan
            .entry(pid)
            .is_some_and(|e| !e.zombie && !e.files_shared && !e.fs_shared)
        && plan.sharers(pid) == 0
}

/// Whether this restore may start processes from the stub ([`probe_stub`]); copied into every
/// restore process with the rest of cryo's memory.
static STUB_OK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Checks once, before anything is created, that an executable memory file can be made here
/// (a system with `vm.memfd_noexec = 2` refuses): if not, every process is forked as a copy
/// of cryo, as before the stub. Returns whether the stub will be used.
pub fn probe_stub() -> bool {
    // (A test makes the probe fail to cover the forks.)
    let ok = crate::fault::point("restore:stub-probe").is_ok()
        && task::exec_memfd(&[]).map(task::close).is_ok();
    STUB_OK.store(ok, std::sync::atomic::Ordering::Relaxed);
    ok
}

/// Stack of a process created sharing its parent's memory, until it execs.
const EXEC_STACK_LEN: usize = 1 << 20;

/// What a process created by [`create_by_exec`] starts from (on its creator's stack, which
/// stays put while the creator is suspended).
struct ExecStart<'a, 'e> {
    env: &'a Env<'e>,
    pid: i32,
    pipes: &'a [OwnerPipe],
    /// An fd of the creator's this process closes first.
    close_first: Option<RawFd>,
}

extern "C" fn exec_start(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the ExecStart that create_by_exec passed, alive on the stack of the
    // creator, which is suspended (CLONE_VFORK) until this process execs or exits.
    let start = unsafe { &*(arg as *const ExecStart) };
    if let Some(fd) = start.close_first {
        task::close(fd);
    }
    run_proc(start.env, start.pid, start.pipes, true)
}

/// Creates restore process `pid` sharing this process's memory (no copy of it): it sets itself
/// up and execs its stub before this returns. Ok(None) when the kernel refuses that way of
/// creating it and the caller may fork it instead ([`Env::may_fork`]).
fn create_by_exec(
    env: &Env,
    pid: i32,
    pipes: &[OwnerPipe],
    close_first: Option<RawFd>,
) -> Result<Option<i32>, String> {
    let mut stack = task::Mapping::anon(EXEC_STACK_LEN)
        .map_err(|e| format!("mapping a stack for child {pid}: {e}"))?;
    let start = ExecStart {
        env,
        pid,
        pipes,
        close_first,
    };
    // SAFETY: exec_start never returns (run_proc ends in execve or _exit); the stack and
    // `start` outlive the call, which returns only once the child has exec'd or exited.
    let r = unsafe {
        crate::sys::proc_ctl::vfork_with_pid(
            pid,
            stack.bytes_mut(),
            exec_start,
            &start as *const ExecStart as *mut libc::c_void,
        )
    };
    match r {
        Ok(child) => Ok(Some(child)),
        Err(e) if e.errno == libc::EEXIST => {
            Err(format!("forking child {pid}: pid {pid} is already in use"))
        }
        Err(_) if env.may_fork => Ok(None),
        Err(e) => Err(format!("creating child {pid} at its PID: {e}")),
    }
}

/// The end of a process created by [`create_by_exec`]: every fd it keeps survives execve (cryo
/// puts the saved close-on-exec flags back), it reports ready (`X`: after exec) and execs its
/// stub, which maps the trampoline and waits for cryo; the report fd closes with the execve.
fn exec_stub(env: &Env, pid: i32, report: RawFd) -> ! {
    let res = (|| -> Result<(), String> {
        let img = env
            .images
            .get(&pid)
            .ok_or_else(|| format!("no images for pid {pid}"))?;
        for fd in img.fds.iter().map(|f| f.fd) {
            task::set_cloexec(fd, false).map_err(|e| format!("fd {fd}: {e}"))?;
        }
        // What cryo gave it and it still holds (shared memory it has yet to map); the shared
        // descriptions it does not use are closed already.
        for &fd in env.keep {
            match task::set_cloexec(fd, false) {
                Err(e) if e.errno != libc::EBADF => return Err(format!("fd {fd}: {e}")),
                _ => {}
            }
        }
        task::set_cloexec(report, true).map_err(|e| format!("report fd: {e}"))?;
        let tramp = env.tramps.get(&pid).copied().unwrap_or(0);
        let len = super::remote_ctx::TRAMPOLINE_LEN;
        let elf = super::stub::elf(
            tramp + len + 0x1000,
            tramp,
            len as u32,
            &super::remote_ctx::TRAMPOLINE_CODE,
        );
        let memfd = task::exec_memfd(&elf).map_err(|e| format!("writing the stub: {e}"))?;
        task::write_all(report, format!("X {pid}\n").as_bytes());
        let e = task::exec_fd(memfd);
        Err(format!("exec of the stub: {e}"))
    })();
    let msg = res.err().unwrap_or_default().replace('\n', " ");
    task::write_all(report, format!("E {pid} {msg}\n").as_bytes());
    task::exit_now(1)
}

/// A session leader whose controlling terminal was a pseudo-terminal of the checkpoint takes
/// the pair's slave (inherited from cryo) as its own, before it forks the rest of its session
/// (a process gets its controlling terminal from its parent at fork).
fn controlling_terminal(plan: &Plan, pid: i32, shared: &[(u64, RawFd)]) -> Result<(), String> {
    let Some(e) = plan.entry(pid) else {
        return Ok(());
    };
    if e.ctty_inode_id == 0 {
        return Ok(());
    }
    let key = super::fd_tty::ctty_key(e.ctty_inode_id);
    let fd = shared
        .iter()
        .find(|s| s.0 == key)
        .map(|s| s.1)
        .ok_or_else(|| "its controlling terminal was not created".to_string())?;
    crate::sys::tty_ffi::set_controlling(fd)
        .map_err(|e| format!("taking its controlling terminal: {e}"))
}

/// A pipe at fd numbers at or above `base` (clear of every fd number the restored tables use).
fn sync_pipe(base: RawFd) -> Result<(RawFd, RawFd), String> {
    let (r, w) = task::pipe().map_err(|e| format!("creating a sync pipe: {e}"))?;
    let moved = task::dup_above(r, base).and_then(|r2| match task::dup_above(w, base) {
        Ok(w2) => Ok((r2, w2)),
        Err(e) => {
            task::close(r2);
            Err(e)
        }
    });
    task::close(r);
    task::close(w);
    moved.map_err(|e| format!("placing a sync pipe: {e}"))
}

/// fds (`own_files`), cwd, root, umask (`own_fs`), rlimits and name. Returns the report fd's
/// new number.
fn prepare(
    img: &ProcessImage,
    report_fd: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
    own_files: bool,
    own_fs: bool,
) -> Result<RawFd, String> {
    let report = if own_files {
        super::files::install_fds(&img.fds, report_fd, keep, shared)?
    } else {
        report_fd
    };
    let core = &img.core;
    if own_fs {
        if !core.root.is_empty() && core.root != "/" {
            task::chroot(&core.root).map_err(|e| format!("chroot({}): {e}", core.root))?;
        }
        if !core.cwd.is_empty() {
            task::chdir(&core.cwd).map_err(|e| format!("chdir({}): {e}", core.cwd))?;
        }
        task::umask(core.umask);
    }
    for r in &core.rlimits {
        let (_, our_max) = task::get_rlimit(r.resource).map_err(|e| e.to_string())?;
        // Raising a hard limit needs CAP_SYS_RESOURCE; keep ours where we cannot.
        let max = if r.max > our_max { our_max } else { r.max };
        let cur = r.cur.min(max);
        if task::set_rlimit(r.resource, cur, max).is_err() {
            tracing::warn!(resource = r.resource, "could not restore rlimit");
        }
    }
    if let Some(t) = img.tasks.first() {
        if !t.comm.is_empty() {
            let _ = task::set_comm(&t.comm);
        }
    }
    Ok(report)
}
