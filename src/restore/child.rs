//! What each forked restore process does to itself before cryo takes it over: join its session
//! and process group, fork its own children (each of which does the same; zombies exit at
//! once with their saved status), set up its fd table (through [`super::files`]), cwd, umask,
//! rlimits and name, report `R <pid>` on the shared report pipe and wait in pause() until cryo
//! seizes it. On failure it reports `E <pid> <message>` and exits.

use super::tree::{Join, Plan};
use super::ProcessImage;
use crate::sys::task;
use std::collections::BTreeMap;
use std::os::fd::RawFd;

/// Runs restore process `pid` (in the freshly forked child). `keep` are fds cryo prepared
/// that must survive into the process (shared memory objects). Never returns.
pub fn run(
    plan: &Plan,
    images: &BTreeMap<i32, ProcessImage>,
    pid: i32,
    report: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
) -> ! {
    match run_inner(plan, images, pid, report, keep, shared) {
        Ok(report) => {
            task::write_all(report, format!("R {pid}\n").as_bytes());
            task::close(report);
            task::pause_forever()
        }
        Err(msg) => {
            let msg = msg.replace('\n', " ");
            task::write_all(report, format!("E {pid} {msg}\n").as_bytes());
            task::exit_now(1)
        }
    }
}

fn run_inner(
    plan: &Plan,
    images: &BTreeMap<i32, ProcessImage>,
    pid: i32,
    report: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
) -> Result<RawFd, String> {
    task::set_pdeathsig(libc::SIGKILL).map_err(|e| e.to_string())?;
    match plan.join(pid) {
        Join::Inherit => {}
        Join::NewSession => {
            task::setsid().map_err(|e| format!("setsid: {e}"))?;
            controlling_terminal(plan, pid, shared)?;
        }
        Join::NewGroup => task::setpgid(0).map_err(|e| format!("setpgid(0): {e}"))?,
        Join::Group(g) => task::setpgid(g).map_err(|e| format!("setpgid({g}): {e}"))?,
    }
    // Children sharing this process's fd table (CLONE_FILES) are forked once the table is
    // built, the others before (they build their own).
    let (late, early): (Vec<i32>, Vec<i32>) = plan
        .children(pid)
        .iter()
        .partition(|&&k| plan.entry(k).is_some_and(|e| e.files_shared));
    for &kid in &early {
        fork_child(plan, images, kid, report, keep, shared)?;
    }
    crate::fault::point("restore:child").map_err(|e| e.to_string())?;
    let img = images
        .get(&pid)
        .ok_or_else(|| format!("no images for pid {pid}"))?;
    let report = if plan.entry(pid).is_some_and(|e| e.files_shared) {
        // The parent built this table; only what is per process remains.
        prepare_own(img)?;
        report
    } else {
        prepare(img, report, keep, shared)?
    };
    for &kid in &late {
        // Its own report fd in the shared table, which it closes when it has reported.
        let kid_report = task::dup_above(report, report + 1).map_err(|e| e.to_string())?;
        fork_child(plan, images, kid, kid_report, keep, shared)?;
    }
    Ok(report)
}

/// Forks child `kid` of the plan at its PID, sharing fs info (CLONE_FS) and the fd table
/// (CLONE_FILES) with this process where it did; the child goes on in [`run`].
fn fork_child(
    plan: &Plan,
    images: &BTreeMap<i32, ProcessImage>,
    kid: i32,
    report: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
) -> Result<(), String> {
    let entry = plan
        .entry(kid)
        .ok_or_else(|| format!("child {kid} missing from the plan"))?;
    let mut flags = 0u64;
    if entry.fs_shared {
        flags |= libc::CLONE_FS as u64;
    }
    if entry.files_shared {
        flags |= libc::CLONE_FILES as u64;
    }
    match super::fork_at(kid, flags).map_err(|e| format!("forking child {kid}: {e}"))? {
        0 if entry.zombie => task::die_with_status(entry.exit_status),
        0 => run(plan, images, kid, report, keep, shared),
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
            Ok(())
        }
    }
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

/// fds, cwd, root, umask, rlimits and name. Returns the report fd's new number.
fn prepare(
    img: &ProcessImage,
    report_fd: RawFd,
    keep: &[RawFd],
    shared: &[(u64, RawFd)],
) -> Result<RawFd, String> {
    let report = super::files::install_fds(&img.fds, report_fd, keep, shared)?;
    prepare_own(img)?;
    Ok(report)
}

/// cwd, root, umask, rlimits and name.
fn prepare_own(img: &ProcessImage) -> Result<(), String> {
    let core = &img.core;
    if !core.root.is_empty() && core.root != "/" {
        task::chroot(&core.root).map_err(|e| format!("chroot({}): {e}", core.root))?;
    }
    if !core.cwd.is_empty() {
        task::chdir(&core.cwd).map_err(|e| format!("chdir({}): {e}", core.cwd))?;
    }
    task::umask(core.umask);
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
    Ok(())
}
