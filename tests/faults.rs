//! Fault injection (issue 6): cryo is made to fail at every step of dump and of restore
//! (`CRYO_FAULT`, honoured by debug builds). After a failed dump the target runs on exactly as
//! before: same mappings, same fds, same signal state, not stopped, not traced, no checkpoint
//! presented as good, and it still passes its own check. After a failed restore no process of
//! the checkpoint is left, and the checkpoint still restores afterwards.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn cryo_with_fault(point: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cryo"))
        .args(args)
        .env("CRYO_FAULT", point)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cryo")
}

/// `cryo dump -t PID -D DIR` failing at fault point `point`.
fn dump_with_fault(point: &str, pid: i32, dir: &Path) -> Output {
    cryo_with_fault(
        point,
        &[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            dir.to_str().expect("utf-8 path"),
        ],
    )
}

/// What must not change in a process that a failed dump touched.
struct Fingerprint {
    maps: String,
    fds: Vec<String>,
    /// SigBlk, SigIgn, SigCgt.
    signals: Vec<String>,
    /// Each thread's CPU affinity.
    affinity: Vec<(i32, String)>,
}

fn fingerprint(pid: i32) -> Fingerprint {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let target = std::fs::read_link(e.path()).unwrap_or_default();
                    format!(
                        "{} -> {}",
                        e.file_name().to_string_lossy(),
                        target.display()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let sig: Vec<String> = status
        .lines()
        .filter(|l| l.starts_with("SigBlk") || l.starts_with("SigIgn") || l.starts_with("SigCgt"))
        .map(str::to_string)
        .collect();
    Fingerprint {
        maps,
        fds,
        signals: sig,
        affinity: cpu_affinities(pid),
    }
}

#[test]
fn failed_dump_at_every_step_leaves_the_target_intact() {
    let _serial = serial();
    const TEST: &str = "failed_dump_at_every_step_leaves_the_target_intact";
    let Some(bin) = prepare(TEST, "full_state") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    for point in cryo::fault::DUMP_POINTS {
        let before = fingerprint(w.pid);
        let images = images_dir();
        let out = dump_with_fault(point, w.pid, images.path());
        assert!(!out.status.success(), "{point}: dump succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("injected fault"), "{point}: {err}");
        assert!(
            w.original_running(),
            "{point}: the target died\n{}",
            w.logs()
        );
        assert!(
            !matches!(proc_state(w.pid), Some('T' | 't')),
            "{point}: the target is left stopped"
        );
        assert_eq!(
            tracer_pid(w.pid),
            Some(0),
            "{point}: the target is still traced"
        );
        assert!(
            !images.path().join("inventory.img").exists(),
            "{point}: a failed dump left a checkpoint that looks good"
        );
        let after = fingerprint(w.pid);
        assert_eq!(
            before.maps, after.maps,
            "{point}: the target's mappings changed"
        );
        assert_eq!(before.fds, after.fds, "{point}: the target's fds changed");
        assert_eq!(
            before.signals, after.signals,
            "{point}: the target's signal state changed"
        );
        assert_eq!(
            before.affinity, after.affinity,
            "{point}: the target's CPU affinity changed"
        );
    }
    let result = w.check();
    assert_eq!(result, "PASS", "{}", w.logs());
    w.wait_exit();
}

#[test]
fn failed_restore_at_every_step_leaves_nothing_behind() {
    let _serial = serial();
    const TEST: &str = "failed_restore_at_every_step_leaves_nothing_behind";
    if !require_root(TEST) {
        return;
    }
    require_cli();
    // A tree with threads would be better still; the tree covers forking, sessions, zombies.
    let Some(bin) = workload_bin(TEST, "tree") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    assert!(reap_gone(&tree), "the dumped tree did not go away");
    for point in cryo::fault::RESTORE_POINTS {
        let out = cryo_with_fault(
            point,
            &["restore", "-d", "-D", images.path().to_str().unwrap()],
        );
        assert!(!out.status.success(), "{point}: restore succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("injected fault"), "{point}: {err}");
        if *point == "restore:deferred" {
            // A deferred remote call that fails is reported by name when it runs.
            assert!(err.contains("close(-1)"), "{point}: {err}");
        }
        assert!(
            reap_gone(&tree),
            "{point}: a failed restore left processes of the checkpoint behind: {:?}",
            tree.iter()
                .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                .collect::<Vec<_>>()
        );
    }
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

#[test]
fn failed_dump_of_threads_leaves_every_thread_intact() {
    let _serial = serial();
    const TEST: &str = "failed_dump_of_threads_leaves_every_thread_intact";
    let Some(bin) = prepare(TEST, "threads") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    for point in ["dump:collected", "dump:infected", "dump:pages"] {
        let affinity = cpu_affinities(w.pid);
        let images = images_dir();
        let out = dump_with_fault(point, w.pid, images.path());
        assert!(!out.status.success(), "{point}: dump succeeded");
        assert!(w.original_running(), "{point}: the target died");
        assert_eq!(
            affinity,
            cpu_affinities(w.pid),
            "{point}: a thread's CPU affinity changed"
        );
    }
    let result = w.check();
    assert_eq!(result, "PASS", "{}", w.logs());
    w.wait_exit();
}

/// A dump that fails after moving the target's threads to its tracer's CPU must leave them
/// following their cpuset, as before: since Linux 6.2 the kernel keeps a mask set with
/// sched_setaffinity as the task's own request through cpuset changes, so the target is put
/// in a cpuset of CPU 0 only, the dump fails, the cpuset is widened, and the target must be
/// allowed the wider set (a target given its old mask {0} back would stay on CPU 0).
#[test]
fn failed_dump_leaves_the_target_following_its_cpuset() {
    let _serial = serial();
    const TEST: &str = "failed_dump_leaves_the_target_following_its_cpuset";
    if !require_root(TEST) {
        return;
    }
    require_cli();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        skip(TEST, "needs 2 CPUs (a cpuset to widen)");
        return;
    }
    let Some(mount) = cryo::sys::proc_ctl::cpuset_mount()
        .filter(|m| !m.v2)
        .map(|m| m.point)
    else {
        skip(TEST, "no cgroup v1 cpuset hierarchy mounted");
        return;
    };
    let Some(bin) = workload_bin(TEST, "counter") else {
        return;
    };
    let cg = format!("{mount}/cryo-test-{}", std::process::id());
    if std::fs::create_dir(&cg).is_err() {
        skip(TEST, "cannot create a cpuset cgroup");
        return;
    }
    let write = |file: &str, v: &str| std::fs::write(format!("{cg}/{file}"), v);
    write("cpuset.cpus", "0").expect("cpuset.cpus");
    write("cpuset.mems", "0").expect("cpuset.mems");
    let mut w = Workload::start(&bin, &[]);
    write("cgroup.procs", &w.pid.to_string()).expect("move the workload into the cpuset");
    let allowed = |pid: i32| {
        cpu_affinities(pid)
            .into_iter()
            .map(|t| t.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(allowed(w.pid), ["0"], "in a cpuset of CPU 0");
    let images = images_dir();
    let out = dump_with_fault("dump:collected", w.pid, images.path());
    assert!(!out.status.success(), "dump succeeded");
    write("cpuset.cpus", &format!("0-{}", cpus - 1)).expect("widen the cpuset");
    let after = allowed(w.pid);
    let result = w.check();
    w.wait_exit();
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(
        after,
        [format!("0-{}", cpus - 1)],
        "after the cpuset was widened"
    );
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// A field of /proc/PID/status in KiB (`RssAnon`, `VmLck`).
fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
}

/// RssAnon of `w` (KiB) before and after a dump of it that fails once its pages are read
/// (`dump:cured`); the target must still run.
fn rss_around_failed_dump(w: &mut Workload) -> (u64, u64) {
    let before = status_kib(w.pid, "RssAnon");
    let images = images_dir();
    let out = dump_with_fault("dump:cured", w.pid, images.path());
    assert!(!out.status.success(), "dump succeeded");
    assert!(w.original_running(), "the target died\n{}", w.logs());
    (before, status_kib(w.pid, "RssAnon"))
}

/// A dump that is to kill its target gives the target's all-zero anonymous pages back to the
/// kernel as it finds them (so the page store's page cache can reuse them). When such a dump
/// fails afterwards, the target runs on with those pages unpopulated: its memory reads as
/// before (its own check passes), only less of it is resident. A `--leave-running` dump frees
/// nothing, and no dump frees mlocked memory or memory pinned for io_uring.
#[test]
fn failed_dump_frees_only_zero_pages_of_a_target_it_was_to_kill() {
    let _serial = serial();
    const TEST: &str = "failed_dump_frees_only_zero_pages_of_a_target_it_was_to_kill";
    let Some(bin) = prepare(TEST, "bigmem") else {
        return;
    };
    const ZERO_KIB: u64 = 8 << 10;
    // 24 MiB of data and 8 MiB of touched zero pages: enough memory (16 MiB) for the dump to
    // free zero pages at all.
    let mut w = Workload::start(&bin, &["24", "8"]);
    let before = status_kib(w.pid, "RssAnon");
    assert!(before >= 32 << 10, "RssAnon {before} KiB");

    let images = images_dir();
    let out = dump(&w, images.path(), &["-R", "--print-stats"]);
    assert!(out.status.success(), "{}", show_output("dump -R", &out));
    assert_eq!(stat_figure(&out, "of which freed"), 0);
    let after_r = status_kib(w.pid, "RssAnon");
    assert!(
        after_r + 256 >= before,
        "a --leave-running dump freed memory: RssAnon {before} -> {after_r} KiB"
    );

    let print = fingerprint(w.pid);
    let (before, after) = rss_around_failed_dump(&mut w);
    let freed = before.saturating_sub(after);
    assert!(
        (ZERO_KIB - 64..=ZERO_KIB + 512).contains(&freed),
        "the failed dump should have freed the 8 MiB of zero pages and nothing else: \
         RssAnon {before} -> {after} KiB"
    );
    let later = fingerprint(w.pid);
    assert_eq!(print.maps, later.maps, "the target's mappings changed");
    assert_eq!(print.fds, later.fds, "the target's fds changed");
    assert_eq!(
        print.signals, later.signals,
        "the target's signal state changed"
    );
    let result = w.check();
    assert_eq!(result, "PASS", "{}", w.logs());
    w.wait_exit();

    // The same zero pages, mlocked: kept.
    let mut l = Workload::start(&bin, &["24", "8", "lock"]);
    assert_eq!(status_kib(l.pid, "VmLck"), ZERO_KIB, "VmLck");
    let (before, after) = rss_around_failed_dump(&mut l);
    assert!(
        after + 256 >= before,
        "mlocked zero pages were freed: RssAnon {before} -> {after} KiB"
    );
    assert_eq!(status_kib(l.pid, "VmLck"), ZERO_KIB);
    let result = l.check();
    assert_eq!(result, "PASS", "{}", l.logs());
    l.wait_exit();

    // The same zero pages, pinned as io_uring buffers of a ring the dump cannot see (it has
    // no fd): kept, or the ring would go on with pages that are no longer the process's.
    let io_uring_off = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .is_ok_and(|v| v.trim() != "0");
    if io_uring_off {
        skip(
            TEST,
            "the pinned part: io_uring is disabled (kernel.io_uring_disabled)",
        );
        return;
    }
    let mut p = Workload::start(&bin, &["24", "8", "pin"]);
    assert!(status_kib(p.pid, "VmPin") >= ZERO_KIB, "VmPin");
    let (before, after) = rss_around_failed_dump(&mut p);
    assert!(
        after + 256 >= before,
        "pinned zero pages were freed: RssAnon {before} -> {after} KiB"
    );
    let result = p.check();
    assert_eq!(result, "PASS", "{}", p.logs());
    p.wait_exit();
}

/// A dump that is to kill its target also gives the target's stored pages back to the kernel
/// once they are in the page store, so that until the kill their only copy is there. When
/// such a dump fails afterwards, at a later step or because the images' file system fills up
/// halfway through the pages, it writes them back before letting the target go: the target
/// runs on with its memory resident again (only its zero pages stay freed) and passes its own
/// check. A dump that succeeds frees nearly all of them, and the checkpoint restores.
#[test]
fn failed_dump_writes_back_the_pages_it_freed() {
    let _serial = serial();
    const TEST: &str = "failed_dump_writes_back_the_pages_it_freed";
    let Some(bin) = prepare(TEST, "bigmem") else {
        return;
    };
    const ZERO_KIB: u64 = 8 << 10;
    let mut w = Workload::start(&bin, &["24", "8"]);
    let start = status_kib(w.pid, "RssAnon");
    let print = fingerprint(w.pid);
    let written_back = |out: &Output| {
        String::from_utf8_lossy(&out.stderr).contains("written back from the page store")
    };
    // After each failure: the data pages resident again (RssAnon lower by the zero pages
    // alone, freed by the first failure).
    let resident_again = |w: &mut Workload, what: &str, out: &Output| {
        assert!(!out.status.success(), "dump succeeded ({what})");
        assert!(
            w.original_running(),
            "the target died ({what})\n{}",
            w.logs()
        );
        assert!(written_back(out), "{}", show_output(what, out));
        let now = status_kib(w.pid, "RssAnon");
        assert!(
            now + ZERO_KIB + 512 >= start,
            "{what}: RssAnon {start} -> {now} KiB: freed data pages stayed freed"
        );
    };
    for point in ["dump:pages", "dump:cured", "dump:images"] {
        let images = images_dir();
        let out = dump_with_fault(point, w.pid, images.path());
        resident_again(&mut w, point, &out);
    }
    // The page store fills its file system halfway: what was stored (and freed) comes back.
    match Tmpfs::mount("12m") {
        Err(e) => skip(
            TEST,
            &format!("the full file system part: cannot mount a tmpfs: {e}"),
        ),
        Ok(tmpfs) => {
            let out = dump(&w, tmpfs.path(), &[]);
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("No space left on device"),
                "{}",
                show_output("dump into 12 MiB", &out)
            );
            resident_again(&mut w, "dump into 12 MiB", &out);
        }
    }
    let later = fingerprint(w.pid);
    assert_eq!(print.maps, later.maps, "the target's mappings changed");
    assert_eq!(print.fds, later.fds, "the target's fds changed");
    assert_eq!(w.check(), "PASS", "after the failed dumps\n{}", w.logs());
    w.wait_exit();

    // The dump that goes through frees the pages it stored, and its checkpoint restores.
    let mut w = Workload::start(&bin, &["24", "8"]);
    let images = images_dir();
    let out = dump_ok(&w, images.path(), &["--print-stats"]);
    w.wait_killed_by_dump();
    let written = stat_figure(&out, "pages written");
    let handed = stat_figure(&out, "freed once stored");
    assert!(written >= 24 * 256, "{}", show_output("dump", &out));
    assert!(
        handed + 8 * 256 >= written && handed <= written,
        "{}",
        show_output("dump", &out)
    );
    assert_eq!(restore_and_check(&w, images.path()), "PASS", "{}", w.logs());
}

/// If a failed dump cannot write back the pages it freed (injected: `dump:write-back`, with the
/// dump failing on a full file system), the target is left stopped, not running on with zeros
/// where its data was, and cryo says so.
#[test]
fn failed_write_back_leaves_the_target_stopped() {
    let _serial = serial();
    const TEST: &str = "failed_write_back_leaves_the_target_stopped";
    let Some(bin) = prepare(TEST, "bigmem") else {
        return;
    };
    let tmpfs = match Tmpfs::mount("12m") {
        Ok(t) => t,
        Err(e) => return skip(TEST, &format!("cannot mount a tmpfs: {e}")),
    };
    let mut w = Workload::start(&bin, &["24", "8"]);
    let pid = w.pid.to_string();
    let out = cryo_with_fault(
        cryo::fault::WRITE_BACK_POINT,
        &[
            "dump",
            "-t",
            &pid,
            "-D",
            tmpfs.path().to_str().expect("utf-8 path"),
        ],
    );
    assert!(!out.status.success(), "{}", show_output("dump", &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("No space left on device") && stderr.contains("left stopped"),
        "{}",
        show_output("dump", &out)
    );
    assert!(
        wait_until(std::time::Duration::from_secs(5), || proc_state(w.pid)
            == Some('T')),
        "the target is not stopped: state {:?}",
        proc_state(w.pid)
    );
    assert_eq!(tracer_pid(w.pid), Some(0), "the target is still traced");
    // Ours to end: it must not run on.
    cryo::sys::proc_ctl::kill(w.pid, libc::SIGKILL).expect("kill");
    let status = w.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// A tree dump that fails after several of its processes gave their stored pages over (at the
/// cure of the sixth process of ten, collected two at a time) writes every one of them back:
/// the whole tree passes its own check (each process verifies its memory).
#[test]
fn failed_tree_dump_writes_back_every_process() {
    let _serial = serial();
    const TEST: &str = "failed_tree_dump_writes_back_every_process";
    let Some(bin) = prepare(TEST, "memtree") else {
        return;
    };
    // 10 processes with 20 MiB each: enough for each to free its pages.
    let mut w = Workload::start(&bin, &["3", "2", "20"]);
    let images = images_dir();
    let out = dump_with_fault("dump:cured@6", w.pid, images.path());
    assert!(!out.status.success(), "{}", show_output("dump", &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let written_back = stderr.matches("written back from the page store").count();
    assert!(written_back >= 5, "{}", show_output("dump", &out));
    assert!(w.original_running(), "the root died\n{}", w.logs());
    assert_eq!(w.check(), "PASS", "{}", w.logs());
    w.wait_exit();
}
