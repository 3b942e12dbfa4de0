//! What a freshly forked restore child does to itself before handing itself to the restorer:
//! its fd table (through [`super::files`]), cwd, umask, rlimits and name. Runs in the child
//! between fork and `PTRACE_TRACEME`; reports failure as a message to the parent.

use super::ProcessImage;
use crate::sys::task;
use std::os::fd::RawFd;

/// Prepares the child and stops it for the restorer. Returns only on failure, with a message.
pub fn prepare_and_stop(img: &ProcessImage, report_fd: RawFd) -> String {
    match prepare(img, report_fd) {
        Ok(report_fd) => {
            task::close(report_fd);
            match task::trace_me_and_stop() {
                Ok(()) => String::new(),
                Err(e) => format!("pid {}: {e}", img.pid()),
            }
        }
        Err(msg) => format!("pid {}: {msg}", img.pid()),
    }
}

fn prepare(img: &ProcessImage, report_fd: RawFd) -> Result<RawFd, String> {
    task::set_pdeathsig(libc::SIGKILL).map_err(|e| e.to_string())?;
    let report = super::files::install_fds(&img.fds, report_fd)?;
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
    Ok(report)
}
