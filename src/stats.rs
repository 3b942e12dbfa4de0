//! Figures about a dump or a restore, for `--print-stats`, and the progress line shown on long
//! dumps and restores when stderr is a terminal. This module only records and renders; it
//! never decides anything about the dump or restore itself.
//!
//! Dump figures travel in the [`DumpStats`] that `dump()` returns. Restore figures are
//! gathered as restore goes (its phases and the page filling note them with
//! [`note_restore`]) and read once at the end with [`take_restore`].

use crate::dump::DumpStats;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Figures from a restore.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RestoreStats {
    /// Reading and validating the checkpoint, until the process is forked, in seconds.
    pub validate_s: f64,
    /// Building the process, from the fork until it runs, in seconds.
    pub build_s: f64,
    /// Of which reading the pages into place and checking their checksums, in seconds.
    pub fill_s: f64,
    /// Pages read from the page store (and checked).
    pub pages_read: u64,
    /// Of which filled with userfaultfd (`UFFDIO_COPY`).
    pub pages_uffd: u64,
    /// The most threads that filled one process's pages at once.
    pub fill_threads: u64,
    /// Processes restored.
    pub processes: u64,
    /// Of which started from the stub (created without a copy of cryo's memory).
    pub from_stub: u64,
}

static RESTORE: Mutex<RestoreStats> = Mutex::new(RestoreStats {
    validate_s: 0.0,
    build_s: 0.0,
    fill_s: 0.0,
    pages_read: 0,
    pages_uffd: 0,
    fill_threads: 0,
    processes: 0,
    from_stub: 0,
});

/// Updates the restore figures.
pub fn note_restore(f: impl FnOnce(&mut RestoreStats)) {
    let mut s = RESTORE.lock().unwrap_or_else(|p| p.into_inner());
    f(&mut s);
}

/// Returns the restore figures gathered so far and starts again from zero.
pub fn take_restore() -> RestoreStats {
    let mut s = RESTORE.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *s)
}

const MIB: f64 = 1024.0 * 1024.0;

/// The `--print-stats` text of a dump.
pub fn render_dump(s: &DumpStats) -> String {
    let mib = s.page_bytes as f64 / MIB;
    let rate = if s.pages_s > 0.0 {
        format!(", {:.0} MiB/s", mib / s.pages_s)
    } else {
        String::new()
    };
    format!(
        "dump statistics\n\
         \x20 freezing time          {:>10.3} s\n\
         \x20 frozen to written      {:>10.3} s\n\
         \x20   of which pages       {:>10.3} s\n\
         \x20 frozen in all          {:>10.3} s\n\
         \x20 pages scanned          {:>10}\n\
         \x20 pages written          {:>10}\n\
         \x20   freed once stored    {:>10}\n\
         \x20 pages skipped as zero  {:>10}\n\
         \x20   of which freed       {:>10}\n\
         \x20 page bytes written     {:>10} ({mib:.1} MiB{rate})\n\
         \x20 processes              {:>10}\n\
         \x20 dumper threads         {:>10} (at most {} processes at once)\n",
        s.freeze_s,
        s.written_s,
        s.pages_s,
        s.frozen_s,
        s.pages_scanned,
        s.pages_stored,
        s.pages_handed,
        s.pages_zero,
        s.pages_freed,
        s.page_bytes,
        s.processes,
        s.workers,
        s.most_at_once,
    )
}

/// The `--print-stats` text of a restore.
pub fn render_restore(s: &RestoreStats) -> String {
    let mib = (s.pages_read * crate::sys::PAGE_SIZE) as f64 / MIB;
    let rate = if s.fill_s > 0.0 {
        format!(", {:.0} MiB/s", mib / s.fill_s)
    } else {
        String::new()
    };
    format!(
        "restore statistics\n\
         \x20 validation time        {:>10.3} s\n\
         \x20 build time             {:>10.3} s\n\
         \x20   of which pages       {:>10.3} s\n\
         \x20 pages read             {:>10} ({mib:.1} MiB{rate})\n\
         \x20   with userfaultfd     {:>10}\n\
         \x20   by threads at once   {:>10}\n\
         \x20 processes              {:>10}\n\
         \x20   started from the stub {:>9}\n",
        s.validate_s,
        s.build_s,
        s.fill_s,
        s.pages_read,
        s.pages_uffd,
        s.fill_threads,
        s.processes,
        s.from_stub,
    )
}

/// Only operations that last longer than this show a progress line.
const PROGRESS_AFTER: Duration = Duration::from_millis(500);
/// The progress line is redrawn at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// A progress line on stderr for a long operation over a known number of bytes. It appears
/// only when stderr is a terminal and the operation has run for half a second, is redrawn at
/// most ten times a second, and is erased when dropped. Shareable between threads.
pub struct Progress {
    label: &'static str,
    total: AtomicU64,
    /// Bytes done so far, for [`Progress::advance`].
    done: AtomicU64,
    start: Instant,
    enabled: bool,
    /// When the line was last drawn, if it was.
    drawn: Mutex<Option<Instant>>,
}

impl Progress {
    /// A progress line for `label` over `total` bytes (an upper bound is fine).
    pub fn new(label: &'static str, total: u64) -> Self {
        Self {
            label,
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            start: Instant::now(),
            enabled: std::io::stderr().is_terminal(),
            drawn: Mutex::new(None),
        }
    }

    /// Raises the total by `bytes`: for work shared by several threads whose size is learnt
    /// as they go.
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Reports `bytes` more done (by any thread).
    pub fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.update(done);
    }

    /// Reports `done` bytes out of the total.
    pub fn update(&self, done: u64) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.start) < PROGRESS_AFTER {
            return;
        }
        let mut drawn = self.drawn.lock().unwrap_or_else(|p| p.into_inner());
        if drawn.is_some_and(|t| now.duration_since(t) < PROGRESS_EVERY) {
            return;
        }
        *drawn = Some(now);
        let total = self.total.load(Ordering::Relaxed);
        let line = progress_line(self.label, done, total, now.duration_since(self.start));
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let drawn = self.drawn.get_mut().unwrap_or_else(|p| p.into_inner());
        if drawn.is_some() {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}

/// `label [#########-----------]  412/1024 MiB  1.2 s`
fn progress_line(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
    const WIDTH: u64 = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    format!(
        "{label} [{}{}] {:>6.0}/{:.0} MiB {:>5.1} s",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize),
        done as f64 / MIB,
        total as f64 / MIB,
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_fills_in_proportion() {
        let l = progress_line("pages", 512 << 20, 1024 << 20, Duration::from_millis(1500));
        assert!(
            l.starts_with("pages [###############---------------]"),
            "{l}"
        );
        assert!(l.contains("512/1024 MiB"), "{l}");
        assert!(l.ends_with("1.5 s"), "{l}");
        let full = progress_line("x", 10, 5, Duration::ZERO);
        assert!(full.contains(&"#".repeat(30)), "{full}");
        assert!(progress_line("x", 0, 0, Duration::ZERO).contains(&"#".repeat(30)));
    }

    #[test]
    fn renders_every_dump_figure() {
        let s = DumpStats {
            freeze_s: 0.001,
            written_s: 0.5,
            pages_s: 0.25,
            frozen_s: 0.6,
            pages_scanned: 300,
            pages_stored: 256,
            pages_zero: 44,
            pages_freed: 40,
            pages_handed: 250,
            page_bytes: 256 * 4096,
            processes: 3,
            workers: 2,
            most_at_once: 2,
        };
        let text = render_dump(&s);
        for want in [
            "freezing time",
            "0.001 s",
            "frozen to written",
            "0.500 s",
            "300",
            "256",
            "44",
            "of which freed               40",
            "freed once stored           250",
            "4 MiB/s",
            "dumper threads",
            "at most 2 processes at once",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn restore_figures_accumulate_and_reset() {
        take_restore();
        note_restore(|s| s.pages_read += 10);
        note_restore(|s| s.pages_read += 5);
        let got = take_restore();
        assert_eq!(got.pages_read, 15);
        assert!(render_restore(&got).contains("15"));
        assert_eq!(take_restore(), RestoreStats::default());
    }
}
