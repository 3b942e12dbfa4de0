//! Memory handed back: the stored pages the parasite gave back to the kernel in a process the
//! dump is to kill ([`PageRunReq::free_data`]) have their only copy in the page store until the
//! process dies. A [`Handback`] keeps them (the ranges and a handle on the page store) and,
//! unless the dump reaches the kill and disarms it, writes them back into the still-frozen
//! process through /proc/PID/mem when it is dropped: a dump that fails after the pages went
//! leaves the process's memory as it was (resident again, with the same bytes). Should that
//! fail too, the process is left stopped rather than run on with zeros for data.
//!
//! [`PageRunReq::free_data`]: crate::infect::PageRunReq::free_data

use crate::infect::parasite::HandedOver;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes copied per read and write when writing pages back.
const CHUNK: usize = 1 << 20;

/// Stored pages freed from a process, written back on drop unless disarmed.
#[must_use = "dropping a Handback writes the pages back at once"]
pub struct Handback {
    pid: i32,
    /// The page store (its own handle: the image writer closes or removes its file).
    store: Option<File>,
    ranges: Vec<HandedOver>,
}

impl Handback {
    /// Keeps `ranges` of `pid`, whose bytes are in `store`. If the page store cannot be kept
    /// open, the pages are written back at once (and this holds nothing).
    pub fn new(pid: i32, store: &File, ranges: Vec<HandedOver>) -> Self {
        if ranges.is_empty() {
            return Handback {
                pid,
                store: None,
                ranges,
            };
        }
        match store.try_clone() {
            Ok(f) => Handback {
                pid,
                store: Some(f),
                ranges,
            },
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot keep the page store open: memory written back now");
                report(pid, write_back(pid, store, &ranges));
                Handback {
                    pid,
                    store: None,
                    ranges: Vec::new(),
                }
            }
        }
    }

    /// The pages held.
    pub fn pages(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum::<u64>() / crate::sys::PAGE_SIZE
    }

    /// The process is dead (killed by the dump): nothing to write back.
    pub fn disarm(mut self) {
        self.ranges.clear();
    }
}

impl Drop for Handback {
    fn drop(&mut self) {
        if self.ranges.is_empty() {
            return;
        }
        let ranges = std::mem::take(&mut self.ranges);
        if let Some(store) = self.store.take() {
            report(self.pid, write_back(self.pid, &store, &ranges));
        }
    }
}

/// Processes whose freed memory could not be written back, to be stopped once detached.
static TO_STOP: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Sends SIGSTOP to every process whose freed memory could not be written back. Called by the
/// dump once it has detached them: a SIGSTOP sent while they are traced would end in a
/// ptrace stop that the detach lets go.
pub fn stop_unrestored() {
    let pids = std::mem::take(&mut *TO_STOP.lock().unwrap_or_else(|p| p.into_inner()));
    for pid in pids {
        if let Err(e) = crate::sys::proc_ctl::kill(pid, libc::SIGSTOP) {
            tracing::error!(pid, error = %e, "could not stop the process");
        }
    }
}

/// Logs the outcome of [`write_back`].
fn report(pid: i32, r: io::Result<u64>) {
    match r {
        Ok(bytes) => tracing::warn!(
            pid,
            bytes,
            "memory freed by the failed dump written back from the page store"
        ),
        // Killed meanwhile (by someone else): no memory to give back. /proc/PID/mem of a
        // process whose memory is gone writes nothing (WriteZero), which is not an error.
        Err(e)
            if e.raw_os_error() == Some(libc::ESRCH)
                || matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::WriteZero) =>
        {
            tracing::debug!(pid, error = %e, "process gone before its memory was written back")
        }
        Err(e) => {
            // Running on would let it compute with zeros where its data was: it is stopped
            // instead, for its owner to decide (see `stop_unrestored`).
            TO_STOP.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
            tracing::error!(
                pid,
                error = %e,
                "memory freed by the failed dump could not all be written back: the process \
                 is left stopped, as it would read zeros where its data was"
            )
        }
    }
}

/// Copies each range's bytes from `store` into the process's memory. Goes on past a failed
/// range (so that as much as possible is back) and reports the first failure.
fn write_back(pid: i32, store: &File, ranges: &[HandedOver]) -> io::Result<u64> {
    crate::fault::point(crate::fault::WRITE_BACK_POINT).map_err(io::Error::other)?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut first_err = None;
    for r in ranges {
        let mut at = 0u64;
        while at < r.len {
            let n = ((r.len - at) as usize).min(CHUNK);
            let step = store
                .read_exact_at(&mut buf[..n], r.offset + at)
                .and_then(|()| mem.write_all_at(&buf[..n], r.vaddr + at));
            if let Err(e) = step {
                let e = io::Error::new(
                    e.kind(),
                    format!(
                        "{:#x}+{:#x} from page store offset {}: {e}",
                        r.vaddr, r.len, r.offset
                    ),
                );
                first_err.get_or_insert(e);
                break;
            }
            at += n as u64;
            done += n as u64;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}
