//! Soak: one process dumped and restored many times in a row (`CRYO_SOAK_CYCLES`, 100 by
//! default), checking after every cycle that nothing leaked: the restored process has the
//! same fds, mappings and threads as after the first restore and is neither stopped nor
//! traced; no process is left besides it; the images directory holds exactly the files of
//! one checkpoint; no temporary file appeared. Odd cycles are signed (`--sign-key`), even ones
//! not, and every dump overwrites the previous checkpoint (`--overwrite`). About 17 s for
//! 100 cycles of the `counter` workload on the development machine.

mod common;

use common::*;
use cryo::sys::ptrace::WaitStatus;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Cycles unless `CRYO_SOAK_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 100;
/// The soak fails if it runs longer than this (`CRYO_SOAK_MAX_SECS` overrides).
const DEFAULT_MAX_SECS: u64 = 600;

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The files of a checkpoint of the small process `pid`, sorted: its images and pages are
/// all in the pack.
fn checkpoint_files(pid: i32, signed: bool) -> Vec<String> {
    let _ = pid;
    let mut v: Vec<String> = vec!["inventory.img".into(), "pack.img".into()];
    if signed {
        v.push("signature.img".into());
    }
    v.sort();
    v
}

/// What the restored process looks like from outside: fds, mappings, threads.
#[derive(Debug, PartialEq, Eq)]
struct Shape {
    fds: Vec<(i32, String)>,
    maps: Vec<String>,
    threads: Vec<i32>,
}

fn shape(pid: i32) -> Shape {
    Shape {
        fds: fd_table(pid),
        maps: mappings(pid),
        threads: threads(pid),
    }
}

/// Ignored by a plain `cargo test`: `scripts/test.sh` runs it as its own step
/// (`cargo test --test soak -- --ignored`).
#[test]
#[ignore = "the soak step of scripts/test.sh runs it: cargo test --test soak -- --ignored"]
fn soak_dump_restore_cycles() {
    let _serial = serial();
    const TEST: &str = "soak_dump_restore_cycles";
    if !require_root(TEST) {
        return;
    }
    let Some(bin) = workload_bin(TEST, "counter") else {
        return;
    };
    require_cli();
    let cycles: usize = env_num("CRYO_SOAK_CYCLES", DEFAULT_CYCLES);
    let max = Duration::from_secs(env_num("CRYO_SOAK_MAX_SECS", DEFAULT_MAX_SECS));

    // A private temporary directory for everything started here, cryo included: whatever
    // appears in it besides the harness's own directories is a leak.
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("key");
    write_key(&key, 9, 32);
    let key = key.to_str().expect("utf-8").to_string();
    let tmp_root =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("soak-tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp_root).expect("create the soak TMPDIR");
    std::env::set_var("TMPDIR", &tmp_root);

    let mut w = Workload::start(&bin, &[]);
    let pid = w.pid;
    let images = images_dir();
    let dir: &Path = images.path();
    let me = std::process::id() as i32;
    let harness_dirs = |root: &Path| -> Vec<String> {
        dir_names(root)
            .into_iter()
            .filter(|n| !(n.starts_with("cryo-counter-") || n.starts_with("cryo-images-")))
            .collect()
    };

    let start = Instant::now();
    let mut baseline: Option<Shape> = None;
    let (mut dump_time, mut restore_time) = (Duration::ZERO, Duration::ZERO);
    for cycle in 0..cycles {
        assert!(
            start.elapsed() < max,
            "soak: {cycle} of {cycles} cycles in {:?}, over the {max:?} limit",
            start.elapsed()
        );
        let signed = cycle % 2 == 1;
        let mut args = vec!["--overwrite"];
        if signed {
            args.extend_from_slice(&["--sign-key", &key]);
        }
        let t = Instant::now();
        dump_ok(&w, dir, &args);
        dump_time += t.elapsed();
        if cycle == 0 {
            w.wait_killed_by_dump();
        } else {
            match w.reap_adopted() {
                WaitStatus::Signaled(libc::SIGKILL) => {}
                other => panic!("cycle {cycle}: the dumped process ended with {other:?}"),
            }
        }
        assert!(
            w.wait_pid_gone(Duration::from_secs(5)),
            "cycle {cycle}: pid {pid} still exists after the dump"
        );
        assert_eq!(
            dir_names(dir),
            checkpoint_files(pid, signed),
            "cycle {cycle}: images directory"
        );

        let t = Instant::now();
        let d = dir.to_str().expect("utf-8");
        let mut restore = vec!["restore", "-D", d, "-d"];
        if signed {
            restore.extend_from_slice(&["--sign-key", &key]);
        }
        let out = cryo_output(&restore, TIMEOUT);
        restore_time += t.elapsed();
        assert!(
            out.status.success(),
            "cycle {cycle}: {}\n{}",
            show_output("cryo restore -d", &out),
            w.logs()
        );
        assert!(
            alive(pid),
            "cycle {cycle}: restored pid {pid} is not running"
        );
        assert!(w.is_ours(), "cycle {cycle}: pid {pid} is not the workload");
        assert!(
            !matches!(proc_state(pid), Some('T' | 't')),
            "cycle {cycle}: restored process left stopped"
        );
        assert_eq!(tracer_pid(pid), Some(0), "cycle {cycle}: still traced");
        let now = shape(pid);
        match &baseline {
            None => {
                assert_eq!(now.threads, vec![pid], "one thread after the first restore");
                baseline = Some(now);
            }
            Some(b) => assert_eq!(&now, b, "cycle {cycle}: the restored process changed"),
        }
        assert_eq!(
            children_of(me),
            vec![pid],
            "cycle {cycle}: processes left besides the workload"
        );
        assert_eq!(
            harness_dirs(&tmp_root),
            Vec::<String>::new(),
            "cycle {cycle}: files left in TMPDIR"
        );
    }
    let result = w.check();
    assert_eq!(result, "PASS", "{}", w.logs());
    match w.reap_adopted() {
        WaitStatus::Exited(0) => {}
        other => panic!("the workload ended with {other:?}\n{}", w.logs()),
    }
    eprintln!(
        "soak: {cycles} cycles in {:.1} s (dump {:.0} ms, restore -d {:.0} ms on average)",
        start.elapsed().as_secs_f64(),
        dump_time.as_secs_f64() * 1000.0 / cycles.max(1) as f64,
        restore_time.as_secs_f64() * 1000.0 / cycles.max(1) as f64,
    );
    drop(w);
    drop(images);
    assert_eq!(
        children_of(me),
        Vec::<i32>::new(),
        "processes left at the end"
    );
    assert_eq!(
        dir_names(&tmp_root),
        Vec::<String>::new(),
        "files left in TMPDIR at the end"
    );
    let _ = std::fs::remove_dir(&tmp_root);
    std::env::remove_var("TMPDIR");
}

/// The small-tree soak: the `tree` workload (13 processes and a zombie) dumped and restored
/// `CRYO_SOAK_TREE_CYCLES` times (100 by default); after every restore the tree has the same
/// processes, and each process the same fds, mappings and threads, as after the first one.
#[test]
#[ignore = "the soak step of scripts/test.sh runs it: cargo test --test soak -- --ignored"]
fn soak_tree_dump_restore_cycles() {
    let _serial = serial();
    const TEST: &str = "soak_tree_dump_restore_cycles";
    if !require_root(TEST) {
        return;
    }
    let Some(bin) = workload_bin(TEST, "tree") else {
        return;
    };
    require_cli();
    let cycles: usize = env_num("CRYO_SOAK_TREE_CYCLES", DEFAULT_CYCLES);
    let max = Duration::from_secs(env_num("CRYO_SOAK_MAX_SECS", DEFAULT_MAX_SECS));
    let start = Instant::now();
    let mut w = Workload::start(&bin, &[]);
    let mut pids = descendants(w.pid);
    pids.sort_unstable();
    assert!(pids.len() >= 14, "the tree workload built only {pids:?}");
    let images = images_dir();
    let dir = images.path().to_str().expect("utf-8").to_string();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    assert!(reap_gone(&pids), "the dumped tree did not go away");
    let mut first: Option<Vec<(i32, Shape)>> = None;
    for cycle in 0..cycles {
        let out = cryo_output(&["restore", "-d", "-D", &dir], TIMEOUT);
        assert!(
            out.status.success(),
            "cycle {cycle}: {}",
            show_output("cryo restore -d", &out)
        );
        let mut now_pids = descendants(w.pid);
        now_pids.sort_unstable();
        assert_eq!(now_pids, pids, "cycle {cycle}: the restored tree differs");
        let shapes: Vec<(i32, Shape)> = pids
            .iter()
            .filter(|&&p| proc_state(p) != Some('Z'))
            .map(|&p| (p, shape(p)))
            .collect();
        match &first {
            None => first = Some(shapes),
            Some(f) => assert!(
                f == &shapes,
                "cycle {cycle}: a process of the tree changed shape"
            ),
        }
        let out = cryo_output(
            &["dump", "-t", &w.pid.to_string(), "-D", &dir, "--overwrite"],
            TIMEOUT,
        );
        assert!(
            out.status.success(),
            "cycle {cycle}: {}",
            show_output("cryo dump", &out)
        );
        assert!(
            reap_gone(&pids),
            "cycle {cycle}: the dumped tree did not go away"
        );
        assert!(
            start.elapsed() < max,
            "the tree soak took longer than {max:?}"
        );
    }
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
    println!(
        "soak: tree of {} processes, {cycles} cycles in {:.1} s",
        pids.len(),
        start.elapsed().as_secs_f64()
    );
}
