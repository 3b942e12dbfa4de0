//! Dump and restore of single processes, driven through the `cryo` binary: the full-state
//! workload comes back with its PID and passes its own check; --leave-running; processes
//! dumped inside blocking syscalls; failures that must leave the target or the machine
//! untouched (full filesystem, corrupted or truncated images, an existing checkpoint);
//! `cryo show`; `restore -d --pidfile`.

mod common;

use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// Writes `data` into the FIFO at `path` once some process has it open for reading; `abort`
/// is polled meanwhile (e.g. to notice a restore that died).
fn write_fifo(path: &Path, data: &[u8], mut abort: impl FnMut() -> Option<String>) {
    let mut why = None;
    let mut last_err = None;
    let done = wait_until(TIMEOUT, || {
        why = abort();
        if why.is_some() {
            return true;
        }
        // O_NONBLOCK: fails with ENXIO instead of waiting while there is no reader.
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(data).expect("write fifo");
                true
            }
            Err(e) => {
                last_err = Some(e);
                false
            }
        }
    });
    if let Some(why) = why {
        panic!("writing {}: {why}", path.display());
    }
    assert!(done, "no reader opened {} ({last_err:?})", path.display());
}

/// Waits until the workload sits in one of the syscalls `nrs`.
fn wait_blocked_in(w: &Workload, nrs: &[i64], what: &str) {
    let pid = w.pid;
    assert!(
        wait_until(Duration::from_secs(10), || blocked_syscall(pid)
            .is_some_and(|nr| nrs.contains(&nr))),
        "{} never blocked in {what} (/proc/{pid}/syscall: {:?})",
        w.name,
        fs::read_to_string(format!("/proc/{pid}/syscall"))
    );
}

/// Asserts the original process runs on, untraced and not stopped.
fn assert_untouched(w: &mut Workload) {
    assert!(w.original_running(), "{} died\n{}", w.name, w.logs());
    let state = proc_state(w.pid);
    assert!(
        !matches!(state, Some('T' | 't')),
        "{} left stopped (state {state:?})",
        w.name
    );
    assert_eq!(tracer_pid(w.pid), Some(0), "{} still traced", w.name);
}

/// Every workload passes its own check when nothing is done to it: this validates the
/// workloads and the harness, independently of cryo.
#[test]
fn workloads_self_check_without_dump() {
    let _serial = serial();
    const TEST: &str = "workloads_self_check_without_dump";
    for (name, args) in [
        ("full_state", &[][..]),
        ("counter", &[]),
        ("bigmem", &["8"]),
        ("nanosleep", &["1"]),
        ("fifo_read", &[]),
        ("itimer_pending", &[]),
    ] {
        let Some(bin) = workload_bin(TEST, name) else {
            return;
        };
        let mut w = Workload::start(&bin, args);
        match name {
            "nanosleep" => wait_blocked_in(&w, &[SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP], "nanosleep"),
            "fifo_read" => {
                wait_blocked_in(&w, &[SYS_READ], "read");
                write_fifo(&w.path("fifo"), b"cryo-data\n", || None);
            }
            _ => {}
        }
        let result = w.check();
        assert_eq!(result, "PASS", "{name}\n{}", w.logs());
        let status = w.wait_exit();
        assert!(status.success(), "{name} exited with {status}");
    }
}

/// The full-state workload is dumped (and killed), restored with the same PID, and passes
/// every check of its state.
#[test]
fn full_state_dump_restore_same_pid() {
    let _serial = serial();
    let Some(bin) = prepare("full_state_dump_restore_same_pid", "full_state") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// --leave-running: the original keeps running and passes its own check; afterwards the
/// checkpoint restores and passes too.
#[test]
fn leave_running_then_restore() {
    let _serial = serial();
    let Some(bin) = prepare("leave_running_then_restore", "full_state") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let affinity = cpu_affinities(w.pid);
    let images = images_dir();
    dump_ok(&w, images.path(), &["--leave-running"]);
    assert_untouched(&mut w);
    assert_eq!(
        affinity,
        cpu_affinities(w.pid),
        "CPU affinity after the dump"
    );
    assert_eq!(w.check(), "PASS", "original after dump\n{}", w.logs());
    let status = w.wait_exit();
    assert!(status.success(), "original exited with {status}");

    w.reset_protocol();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "restored\n{}", w.logs());
}

/// SIGTRAP's action and pending signals come through a dump and a restore unchanged, although
/// some remote calls single-step (the kernel ends each step with a forced SIGTRAP): a SIGTRAP
/// queued for a thread takes the step's place and must be put back with its siginfo, and a
/// handler or SIG_IGN must turn the steps off (a forced SIGTRAP would reset them).
#[test]
fn sigtrap_state_survives_single_stepped_calls() {
    let _serial = serial();
    let Some(bin) = prepare("sigtrap_state_survives_single_stepped_calls", "sigtrap") else {
        return;
    };
    const PUT_BACK: &str = "putting back a pending SIGTRAP";
    for mode in ["pending", "handler", "ignored"] {
        let mut w = Workload::start(&bin, &[mode]);
        let images = images_dir();
        let out = dump_ok(&w, images.path(), &["--leave-running"]);
        let log = String::from_utf8_lossy(&out.stderr);
        if mode == "pending" {
            // The main thread's at infection, the second thread's when it is asked for its
            // sigaltstack.
            assert_eq!(
                log.matches(PUT_BACK).count(),
                2,
                "{}",
                show_output("dump", &out)
            );
        } else {
            assert!(
                !log.contains(PUT_BACK),
                "{mode}: {}",
                show_output("dump", &out)
            );
        }
        assert_untouched(&mut w);
        assert_eq!(
            w.check(),
            "PASS",
            "{mode}: original after dump\n{}",
            w.logs()
        );
        let status = w.wait_exit();
        assert!(status.success(), "{mode}: original exited with {status}");

        w.reset_protocol();
        let (result, out) = check_restore(&w, restore_spawn(images.path(), &[]));
        assert_eq!(result, "PASS", "{mode}: restored\n{}", w.logs());
        if mode == "pending" {
            // The main thread's again, at the last call (the trampoline's munmap).
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(log.contains(PUT_BACK), "{}", show_output("restore", &out));
        }
    }
}

/// Dumped while blocked in nanosleep: after restore it finishes sleeping (at least the whole
/// request) and passes.
#[test]
fn dump_in_nanosleep() {
    let _serial = serial();
    let Some(bin) = prepare("dump_in_nanosleep", "nanosleep") else {
        return;
    };
    let mut w = Workload::start(&bin, &["3"]);
    wait_blocked_in(&w, &[SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP], "nanosleep");
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// A periodic ITIMER_REAL whose SIGALRM is pending (so the kernel shows it disarmed) keeps
/// ticking after restore.
#[test]
fn pending_sigalrm_keeps_itimer_periodic() {
    let _serial = serial();
    let Some(bin) = prepare("pending_sigalrm_keeps_itimer_periodic", "itimer_pending") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// Dumped while blocked in read() on a FIFO: data written after restore reaches it.
#[test]
fn dump_blocked_in_fifo_read() {
    let _serial = serial();
    let Some(bin) = prepare("dump_blocked_in_fifo_read", "fifo_read") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    wait_blocked_in(&w, &[SYS_READ], "read");
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();

    let mut restore = restore_spawn(images.path(), &[]);
    let mut restore_died = || {
        restore
            .try_wait()
            .map(|s| format!("cryo restore exited ({s})\n{}", restore.describe()))
    };
    write_fifo(&w.path("fifo"), b"cryo-data\n", &mut restore_died);
    let result = w.check_with(&mut restore_died);
    assert_eq!(result, "PASS", "{}", w.logs());
    let out = restore.finish(TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        show_output("cryo restore", &out)
    );
}

/// A dump into a 1 MiB tmpfs runs out of space: cryo fails with a message, and the target
/// carries on intact (it passes its own check).
#[test]
fn dump_into_full_filesystem_fails_and_target_carries_on() {
    const TEST: &str = "dump_into_full_filesystem_fails_and_target_carries_on";
    let _serial = serial();
    let Some(bin) = prepare(TEST, "full_state") else {
        return;
    };
    let tmpfs = match Tmpfs::mount("1m") {
        Ok(t) => t,
        Err(e) => return skip(TEST, &format!("cannot mount a tmpfs: {e}")),
    };
    let mut w = Workload::start(&bin, &[]);
    let out = dump(&w, tmpfs.path(), &[]);
    assert!(
        !out.status.success(),
        "dump of 48 MiB into 1 MiB succeeded?\n{}",
        show_output("cryo dump", &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("No space left on device"),
        "the error does not say why\n{}",
        show_output("cryo dump", &out)
    );
    assert_untouched(&mut w);
    assert_eq!(w.check(), "PASS", "after the failed dump\n{}", w.logs());
    let status = w.wait_exit();
    assert!(status.success(), "exited with {status}");
}

/// Cuts `path` to `len` bytes.
fn truncate(path: &Path, len: u64) {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate image");
}

/// A flipped page byte and truncated images are refused at restore with an error naming the
/// file, and no process of the checkpoint is left behind; the intact checkpoint still
/// restores.
#[test]
fn corrupted_and_truncated_images_are_refused() {
    let _serial = serial();
    let Some(bin) = prepare("corrupted_and_truncated_images_are_refused", "counter") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();

    // The counter is small: its images and its pages are in the pack.
    let pack = "pack.img";
    assert!(
        images.path().join(pack).is_file(),
        "no {pack} in the checkpoint: {:?}",
        fs::read_dir(images.path()).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let reader = cryo::image::ImageReader::open(images.path()).expect("open the checkpoint");
    let core_name = format!("core-{}.img", w.pid);
    let core = reader
        .inventory()
        .manifest
        .iter()
        .find(|e| e.name == core_name)
        .expect("core image in the manifest")
        .clone();
    assert!(core.packed, "{core:?}");
    let store = reader
        .pages_loc(w.pid)
        .expect("page store")
        .expect("page store in the manifest");
    assert!(store
        .name
        .ends_with(format!("pack.img:pages-{}.img", w.pid)));
    let page_byte = (store.base + 4096 + (store.len - 4096) / 2) as usize;
    let core_byte = (core.offset + core.size / 2) as usize;
    drop(reader);
    type Damage = Box<dyn Fn(&Path)>;
    let flip_at = |pos: usize| -> Damage {
        Box::new(move |p: &Path| {
            let mut data = fs::read(p).expect("read pack");
            data[pos] ^= 0x5a;
            fs::write(p, &data).expect("write pack");
        })
    };
    let cases: [(&str, &str, Damage); 3] = [
        ("flipped page byte", "pages-", flip_at(page_byte)),
        (
            "flipped byte in the core image",
            "core-",
            flip_at(core_byte),
        ),
        (
            "truncated pack",
            pack,
            Box::new(|p: &Path| {
                let len = fs::metadata(p).expect("stat").len();
                truncate(p, len / 2)
            }),
        ),
    ];
    for (what, file, damage) in cases {
        let copy = copy_images(images.path());
        damage(&copy.path().join(pack));
        let out = restore_spawn(copy.path(), &[]).finish(TIMEOUT);
        assert!(
            !out.status.success(),
            "{what}: restore succeeded\n{}",
            show_output("cryo restore", &out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file),
            "{what}: the error does not name {file}\n{}",
            show_output("cryo restore", &out)
        );
        assert!(
            w.wait_pid_gone(Duration::from_secs(5)),
            "{what}: pid {} exists after the refused restore (state {:?})",
            w.pid,
            proc_state(w.pid)
        );
    }

    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "intact checkpoint\n{}", w.logs());
}

/// Contents of every file in a directory, for comparing a checkpoint before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).expect("read file"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Dumping into a directory that holds a checkpoint is refused without --overwrite (the
/// checkpoint and the target stay as they were) and done with it.
#[test]
fn existing_checkpoint_needs_overwrite() {
    let _serial = serial();
    let Some(bin) = prepare("existing_checkpoint_needs_overwrite", "counter") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &["--leave-running"]);
    let before = snapshot(images.path());

    let out = dump(&w, images.path(), &["--leave-running"]);
    assert!(
        !out.status.success(),
        "second dump without --overwrite succeeded\n{}",
        show_output("cryo dump", &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--overwrite"),
        "the refusal does not mention --overwrite\n{}",
        show_output("cryo dump", &out)
    );
    assert!(
        snapshot(images.path()) == before,
        "the refused dump changed the checkpoint"
    );
    assert_untouched(&mut w);

    dump_ok(&w, images.path(), &["--overwrite"]);
    w.wait_killed_by_dump();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// True if `v` contains the number `n` anywhere.
fn json_has_number(v: &serde_json::Value, n: i64) -> bool {
    match v {
        serde_json::Value::Number(x) => x.as_i64() == Some(n),
        serde_json::Value::Array(a) => a.iter().any(|x| json_has_number(x, n)),
        serde_json::Value::Object(o) => o.values().any(|x| json_has_number(x, n)),
        _ => false,
    }
}

/// `cryo show` prints the checkpoint in text and as JSON; `-o FILE` is relative to the
/// images directory.
#[test]
fn show_prints_checkpoint() {
    let _serial = serial();
    let Some(bin) = prepare("show_prints_checkpoint", "counter") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &["-o", "dump.log"]);
    w.wait_killed_by_dump();
    let log = images.path().join("dump.log");
    assert!(
        fs::metadata(&log).is_ok_and(|m| m.len() > 0),
        "-o dump.log did not write {}",
        log.display()
    );

    let dir = images.path().to_str().expect("utf-8");
    let text = cryo_output(&["show", "-D", dir], TIMEOUT);
    assert!(text.status.success(), "{}", show_output("cryo show", &text));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&w.pid.to_string()),
        "cryo show does not mention pid {}\n{stdout}",
        w.pid
    );

    let json = cryo_output(&["show", "-D", dir, "--json"], TIMEOUT);
    assert!(
        json.status.success(),
        "{}",
        show_output("cryo show --json", &json)
    );
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "cryo show --json is not JSON: {e}\n{}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    assert!(
        json_has_number(&value, w.pid as i64),
        "the JSON does not contain pid {}: {value}",
        w.pid
    );
}

/// Complete lines "pid P count N" printed by the counter so far.
fn counter_lines(w: &Workload) -> Vec<(i32, u64)> {
    let text = fs::read_to_string(w.path("stdout.log")).unwrap_or_default();
    // A line still being written has no newline yet.
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next(), it.next()) {
                (Some("pid"), Some(p), Some("count"), Some(n)) => {
                    Some((p.parse().ok()?, n.parse().ok()?))
                }
                _ => None,
            }
        })
        .collect()
}

/// `restore -d --pidfile`: cryo returns once the process runs, the pidfile holds its PID,
/// and the process goes on counting where it stopped (it is then our child, as subreaper).
#[test]
fn restore_detached_with_pidfile() {
    let _serial = serial();
    let Some(bin) = prepare("restore_detached_with_pidfile", "counter") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let pid = w.pid;
    assert!(
        wait_until(Duration::from_secs(10), || counter_lines(&w).len() >= 2),
        "counter does not count\n{}",
        w.logs()
    );
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let counted = counter_lines(&w);
    let last = counted.last().map(|&(_, n)| n).expect("some lines");

    let pidfile = images.path().join("restored.pid");
    let out = restore_spawn(
        images.path(),
        &["-d", "--pidfile", pidfile.to_str().expect("utf-8")],
    )
    .finish(TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        show_output("cryo restore -d", &out)
    );
    let written = fs::read_to_string(&pidfile).expect("pidfile written");
    assert_eq!(written.trim(), pid.to_string(), "pidfile content");
    assert!(
        alive(pid) && w.is_ours(),
        "restored pid {pid} is not running"
    );

    assert!(
        wait_until(Duration::from_secs(10), || counter_lines(&w).len()
            >= counted.len() + 2),
        "the restored counter does not count\n{}",
        w.logs()
    );
    let after = counter_lines(&w);
    for (i, &(p, n)) in after.iter().enumerate().skip(counted.len()) {
        assert_eq!(p, pid, "line {i} printed by another pid");
        assert_eq!(
            n,
            last + 1 + (i - counted.len()) as u64,
            "count resumed wrongly"
        );
    }

    assert_eq!(w.check(), "PASS", "{}", w.logs());
    let status = w.reap_adopted();
    assert_eq!(status, cryo::sys::ptrace::WaitStatus::Exited(0));
}
