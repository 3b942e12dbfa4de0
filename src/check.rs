//! `cryo check`: runs the kernel feature probes of `sys::probe`, decides which features cryo
//! requires, words each result, and renders the report. It owns the list of features and the
//! policy (required or optional, what each is for); it makes no system calls of its own.

use crate::sys::probe::{self, ProbeResult};

/// One kernel feature and whether this machine has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name of the feature, as printed.
    pub name: &'static str,
    /// The probe confirmed the feature.
    pub ok: bool,
    /// cryo cannot dump or restore without it.
    pub required: bool,
    /// What the probe observed, or why it failed.
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, required: bool, ok: bool, detail: String) -> Self {
        tracing::debug!(feature = name, ok, required, detail = %detail, "probe");
        Self {
            name,
            ok,
            required,
            detail,
        }
    }

    fn from_result<T>(
        name: &'static str,
        required: bool,
        result: &ProbeResult<T>,
        describe: impl FnOnce(&T) -> String,
    ) -> Self {
        match result {
            Ok(v) => Self::new(name, required, true, describe(v)),
            Err(e) => Self::new(name, required, false, e.to_string()),
        }
    }
}

/// Runs every probe, in a fixed order. Each probe really uses its feature (forks, seizes,
/// maps, scans) and cleans up; the whole run takes a few milliseconds.
pub fn run_checks() -> Vec<Check> {
    let mut out = Vec::new();

    let ptrace = probe::probe_ptrace();
    out.push(Check::from_result("PTRACE_SEIZE", true, &ptrace, |_| {
        "seized a forked child and stopped it with PTRACE_INTERRUPT".into()
    }));
    let rseq = match &ptrace {
        Ok(report) => {
            Check::from_result("PTRACE_GET_RSEQ_CONFIGURATION", true, &report.rseq, |c| {
                if c.rseq_abi_pointer == 0 {
                    "answered; the child has no rseq area registered".into()
                } else {
                    format!(
                        "read the child's rseq area: {:#x}, {} bytes (glibc registers one per \
                         thread; restore must re-register it)",
                        c.rseq_abi_pointer, c.rseq_abi_size
                    )
                }
            })
        }
        Err(_) => Check::new(
            "PTRACE_GET_RSEQ_CONFIGURATION",
            true,
            false,
            "not probed: PTRACE_SEIZE failed".into(),
        ),
    };
    out.push(rseq);

    let set_tid = Check::from_result(
        "clone3 set_tid",
        false,
        &probe::probe_clone3_set_tid(),
        |pid| format!("created a child at the chosen pid {pid}"),
    );
    let ns_last_pid = Check::from_result("ns_last_pid", false, &probe::probe_ns_last_pid(), |_| {
        "/proc/sys/kernel/ns_last_pid is writable (fallback for exact PIDs)".into()
    });
    out.push(exact_pids(&set_tid, &ns_last_pid));
    out.push(set_tid);
    out.push(ns_last_pid);

    let map_size = probe::probe_mm_map_size();
    let noop = probe::probe_mm_map_noop();
    out.push(mm_map(&map_size, &noop));

    out.push(Check::from_result(
        "process_vm_readv",
        true,
        &probe::probe_process_vm_readv(),
        |_| "read this process's memory through it".into(),
    ));
    out.push(Check::from_result(
        "pidfd_open/pidfd_getfd",
        true,
        &probe::probe_pidfd(),
        |_| "opened a pidfd and copied an fd through it".into(),
    ));
    out.push(Check::from_result(
        "kcmp",
        false,
        &probe::probe_kcmp(),
        |_| "told shared from separate open files (detects fds sharing a file)".into(),
    ));
    out.push(Check::from_result(
        "TCP_REPAIR",
        false,
        &probe::probe_tcp_repair(),
        |_| "put a TCP socket into repair mode and back (needed for TCP connections)".into(),
    ));
    out.push(match crate::net::lock::Backend::detect() {
        Ok(b) => Check::new(
            "network lock",
            false,
            true,
            format!(
                "{} found (holds packets of dumped TCP connections off)",
                b.name()
            ),
        ),
        Err(e) => Check::new("network lock", false, false, e.to_string()),
    });

    let uffd = probe::probe_userfaultfd();
    out.push(Check::from_result("userfaultfd", false, &uffd, |f| {
        format!("handshake done; features offered {f:#x} (lazy restore)")
    }));
    out.push(wp_async(&uffd, &probe::probe_uffd_wp_async()));
    out.push(pagemap_scan(&probe::probe_pagemap_scan()));
    out.push(soft_dirty(&probe::probe_soft_dirty()));
    out
}

/// Exact PIDs need clone3 with set_tid, or at least the ns_last_pid fallback.
fn exact_pids(set_tid: &Check, ns_last_pid: &Check) -> Check {
    let (ok, detail) = match (set_tid.ok, ns_last_pid.ok) {
        (true, _) => (true, "via clone3 set_tid".to_string()),
        (false, true) => (
            true,
            "via ns_last_pid only (racy against other forks)".to_string(),
        ),
        (false, false) => (
            false,
            format!(
                "neither clone3 set_tid ({}) nor ns_last_pid ({})",
                set_tid.detail, ns_last_pid.detail
            ),
        ),
    };
    Check::new("restore with exact PIDs", true, ok, detail)
}

/// The kernel struct size of prctl_mm_map, then a real no-op PR_SET_MM_MAP in a child.
fn mm_map(size: &ProbeResult<u32>, noop: &ProbeResult<()>) -> Check {
    const NAME: &str = "PR_SET_MM_MAP";
    match (size, noop) {
        (Ok(size), Ok(())) => Check::new(
            NAME,
            true,
            true,
            format!("a child re-applied its own mm fields ({size}-byte prctl_mm_map)"),
        ),
        (Err(e), _) => Check::new(NAME, true, false, format!("PR_SET_MM_MAP_SIZE: {e}")),
        (Ok(_), Err(e)) => Check::new(NAME, true, false, e.to_string()),
    }
}

fn wp_async(uffd: &ProbeResult<u64>, enable: &ProbeResult<()>) -> Check {
    const NAME: &str = "UFFD_FEATURE_WP_ASYNC";
    let offered = matches!(uffd, Ok(f) if f & probe::UFFD_FEATURE_WP_ASYNC != 0);
    match enable {
        Ok(()) => Check::new(
            NAME,
            false,
            true,
            "enabled async write-protect on a userfaultfd (dirty tracking for pre-dump)".into(),
        ),
        Err(e) if !offered => Check::new(
            NAME,
            false,
            false,
            format!("not offered by the kernel ({e})"),
        ),
        Err(e) => Check::new(NAME, false, false, e.to_string()),
    }
}

fn pagemap_scan(result: &ProbeResult<Vec<(u64, u64)>>) -> Check {
    const NAME: &str = "PAGEMAP_SCAN";
    match result {
        Ok(regions) if regions.as_slice() == [(0, 1), (2, 3)] => Check::new(
            NAME,
            false,
            true,
            "found exactly the two touched pages of a 4-page mapping".into(),
        ),
        Ok(regions) => Check::new(
            NAME,
            false,
            false,
            format!("scan of pages 0 and 2 touched returned page ranges {regions:?}"),
        ),
        Err(e) => Check::new(NAME, false, false, e.to_string()),
    }
}

fn soft_dirty(result: &ProbeResult<bool>) -> Check {
    const NAME: &str = "soft-dirty";
    match result {
        Ok(true) => Check::new(
            NAME,
            false,
            true,
            "a written page shows the soft-dirty bit".into(),
        ),
        Ok(false) => Check::new(
            NAME,
            false,
            false,
            "absent (CONFIG_MEM_SOFT_DIRTY off); dirty tracking uses userfaultfd write-protect \
             with PAGEMAP_SCAN instead"
                .into(),
        ),
        Err(e) => Check::new(NAME, false, false, e.to_string()),
    }
}

/// True when every required feature is present.
pub fn can_work(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok || !c.required)
}

/// The report printed by `cryo check`: one line per feature, then the verdict.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::from("cryo check: kernel features\n");
    for c in checks {
        let status = if c.ok { "ok" } else { "MISSING" };
        let need = if c.required { "required" } else { "optional" };
        out.push_str(&format!(
            "  {status:<7}  {:<width$}  {need}  {}\n",
            c.name, c.detail
        ));
    }
    let missing: Vec<&str> = checks
        .iter()
        .filter(|c| c.required && !c.ok)
        .map(|c| c.name)
        .collect();
    if missing.is_empty() {
        out.push_str("cryo can work here: every required feature is present.\n");
    } else {
        out.push_str(&format!(
            "cryo cannot work here: missing {}.\n",
            missing.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &'static str, ok: bool, required: bool) -> Check {
        Check {
            name,
            ok,
            required,
            detail: format!("detail of {name}"),
        }
    }

    #[test]
    fn render_lists_every_feature_and_the_verdict() {
        let checks = [c("alpha", true, true), c("longer-name", false, false)];
        let text = render(&checks);
        assert!(text.contains("  ok       alpha        required  detail of alpha\n"));
        assert!(text.contains("  MISSING  longer-name  optional  detail of longer-name\n"));
        assert!(text.ends_with("cryo can work here: every required feature is present.\n"));
        assert!(can_work(&checks));
    }

    #[test]
    fn a_missing_required_feature_is_named() {
        let checks = [
            c("alpha", false, true),
            c("beta", false, true),
            c("gamma", true, true),
        ];
        assert!(!can_work(&checks));
        assert!(render(&checks).ends_with("cryo cannot work here: missing alpha, beta.\n"));
    }

    #[test]
    fn exact_pids_accepts_either_mechanism() {
        let yes = c("x", true, false);
        let no = c("y", false, false);
        assert!(exact_pids(&yes, &no).ok);
        assert!(exact_pids(&no, &yes).ok);
        assert!(exact_pids(&yes, &yes).ok);
        let neither = exact_pids(&c("x", false, false), &no);
        assert!(!neither.ok && neither.required);
        assert!(neither.detail.contains("detail of x") && neither.detail.contains("detail of y"));
    }

    #[test]
    fn pagemap_scan_must_find_exactly_the_touched_pages() {
        assert!(pagemap_scan(&Ok(vec![(0, 1), (2, 3)])).ok);
        assert!(!pagemap_scan(&Ok(vec![(0, 4)])).ok);
        assert!(!pagemap_scan(&Ok(vec![])).ok);
    }

    #[test]
    fn soft_dirty_is_optional() {
        let absent = soft_dirty(&Ok(false));
        assert!(!absent.ok && !absent.required);
    }

    #[test]
    fn run_checks_probes_every_feature() {
        let checks = run_checks();
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        for want in [
            "PTRACE_SEIZE",
            "PTRACE_GET_RSEQ_CONFIGURATION",
            "restore with exact PIDs",
            "clone3 set_tid",
            "ns_last_pid",
            "PR_SET_MM_MAP",
            "process_vm_readv",
            "pidfd_open/pidfd_getfd",
            "kcmp",
            "TCP_REPAIR",
            "network lock",
            "userfaultfd",
            "UFFD_FEATURE_WP_ASYNC",
            "PAGEMAP_SCAN",
            "soft-dirty",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        // Unprivileged probes give the same answer everywhere.
        for name in ["process_vm_readv", "kcmp"] {
            let check = checks.iter().find(|c| c.name == name).expect("listed");
            assert!(check.ok, "{name}: {}", check.detail);
        }
        print!("{}", render(&checks));
    }
}
