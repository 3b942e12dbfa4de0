//! Process trees and multi-threaded processes (issue 3): a tree of 12 processes over 4 levels
//! with its own session, a separate process group and a zombie; a process with 8 threads;
//! repeated cycles; and a restore whose PID is taken, which must fail cleanly.

mod common;

use common::*;
use cryo::sys::ptrace;
use std::path::Path;
use std::time::Duration;

/// Reaps the processes of a dumped tree adopted by this test process and waits until their
/// PIDs are free.
fn reap_tree(pids: &[i32]) {
    assert!(reap_gone(pids), "the dumped tree did not go away: {pids:?}");
}

fn dump_restore_check(w: &mut Workload, tree: &[i32]) {
    let images = images_dir();
    dump_ok(w, images.path(), &[]);
    w.wait_killed_by_dump();
    reap_tree(tree);
    let result = restore_and_check(w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

#[test]
fn tree_with_session_group_and_zombie() {
    let _serial = serial();
    let Some(bin) = prepare("tree_with_session_group_and_zombie", "tree") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    assert!(tree.len() >= 13, "the workload built only {tree:?}");
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    let show = cryo_output(&["show", "-D", images.path().to_str().unwrap()], TIMEOUT);
    let text = String::from_utf8_lossy(&show.stdout);
    for pid in &tree {
        assert!(
            text.contains(&pid.to_string()),
            "cryo show lacks pid {pid}\n{text}"
        );
    }
    w.wait_killed_by_dump();
    reap_tree(&tree);
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

#[test]
fn threads_keep_tids_tls_masks_and_progress() {
    let _serial = serial();
    let Some(bin) = prepare("threads_keep_tids_tls_masks_and_progress", "threads") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let threads = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(threads, 9, "the workload should have 9 threads");
    let pid = w.pid;
    dump_restore_check(&mut w, &[pid]);
}

#[test]
fn twenty_cycles_of_a_tree() {
    let _serial = serial();
    let Some(bin) = prepare("twenty_cycles_of_a_tree", "tree") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    reap_tree(&tree);
    for cycle in 0..20 {
        let restore = restore_spawn(images.path(), &["-d"]);
        let out = restore.finish(TIMEOUT);
        assert!(
            out.status.success(),
            "cycle {cycle}: {}",
            show_output("cryo restore -d", &out)
        );
        let again = images_dir();
        let dump = cryo_output(
            &[
                "dump",
                "-t",
                &w.pid.to_string(),
                "-D",
                again.path().to_str().unwrap(),
            ],
            TIMEOUT,
        );
        assert!(
            dump.status.success(),
            "cycle {cycle}: {}",
            show_output("cryo dump", &dump)
        );
        reap_tree(&tree);
        // Keep the newest checkpoint for the next cycle.
        for f in std::fs::read_dir(images.path()).unwrap().flatten() {
            let _ = std::fs::remove_file(f.path());
        }
        for f in std::fs::read_dir(again.path()).unwrap().flatten() {
            std::fs::rename(f.path(), images.path().join(f.file_name())).unwrap();
        }
    }
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

#[test]
fn taken_pid_fails_cleanly() {
    let _serial = serial();
    let Some(bin) = prepare("taken_pid_fails_cleanly", "tree") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    reap_tree(&tree);
    // Occupy one PID of the tree (a leaf) with a process of our own.
    let taken = *tree.last().unwrap();
    let Some(holder) = hold_pid(taken) else {
        skip("taken_pid_fails_cleanly", "could not occupy a chosen PID");
        return;
    };
    let out = restore_spawn(images.path(), &["-d"]).finish(TIMEOUT);
    assert!(
        !out.status.success(),
        "restore succeeded with pid {taken} taken"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&taken.to_string()),
        "the error does not name pid {taken}: {err}"
    );
    for p in tree.iter().filter(|p| **p != taken) {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} of the checkpoint is left behind after a failed restore"
        );
    }
    drop(holder);
}

/// A child process of ours occupying `pid` (forked with clone3 set_tid); killed and reaped on
/// drop.
struct PidHolder(i32);

impl Drop for PidHolder {
    fn drop(&mut self) {
        let _ = cryo::sys::proc_ctl::kill(self.0, libc::SIGKILL);
        let _ = ptrace::wait(self.0, 0);
    }
}

fn hold_pid(pid: i32) -> Option<PidHolder> {
    match cryo::sys::proc_ctl::fork_with_pid(pid, 0) {
        Ok(0) => cryo::sys::task::pause_forever(),
        Ok(p) => Some(PidHolder(p)),
        Err(_) => None,
    }
}

#[test]
fn shared_anonymous_memory_stays_shared() {
    let _serial = serial();
    let Some(bin) = prepare("shared_anonymous_memory_stays_shared", "shm") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    assert_eq!(tree.len(), 2, "expected a parent and a child: {tree:?}");
    dump_restore_check(&mut w, &tree);
}

#[test]
fn stopped_child_comes_back_stopped() {
    let _serial = serial();
    let Some(bin) = prepare("stopped_child_comes_back_stopped", "stopped") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    assert_eq!(tree.len(), 2, "expected a parent and a child: {tree:?}");
    dump_restore_check(&mut w, &tree);
}

#[test]
fn vfork_child_is_refused_and_both_run_on() {
    let _serial = serial();
    let Some(bin) = prepare("vfork_child_is_refused_and_both_run_on", "vfork") else {
        return;
    };
    let w = Workload::start(&bin, &[]);
    let mut tree = vec![w.pid];
    assert!(
        wait_until(Duration::from_secs(10), || {
            tree = descendants(w.pid);
            tree.len() == 2
        }),
        "the vfork child did not appear"
    );
    let images = images_dir();
    let out = dump(&w, images.path(), &[]);
    assert!(!out.status.success(), "a vfork child was dumped");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vfork"), "the refusal does not say why: {err}");
    for &p in &tree {
        assert!(Path::new(&format!("/proc/{p}")).exists(), "pid {p} died");
        assert_eq!(tracer_pid(p), Some(0), "pid {p} is still traced");
    }
    let _ = cryo::sys::proc_ctl::kill(tree[1], libc::SIGKILL);
    reap_tree(&tree[1..]);
}

#[test]
fn shared_file_offset_and_pipe_between_processes() {
    let _serial = serial();
    let Some(bin) = prepare("shared_file_offset_and_pipe_between_processes", "xshare") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    assert_eq!(tree.len(), 2, "expected a parent and a child: {tree:?}");
    dump_restore_check(&mut w, &tree);
}

/// A child created with CLONE_FS shares cwd and umask with its parent again after restore:
/// a chdir and a umask by either is seen by the other.
#[test]
fn clone_fs_child_shares_cwd_and_umask() {
    let test = "clone_fs_child_shares_cwd_and_umask";
    let Some(bin) = prepare(test, "clone_fs") else {
        return;
    };
    let _serial = serial();
    let mut w = Workload::start(&bin, &[]);
    let images = dump_tree_and_reap(&mut w, &[]);
    assert_eq!(restore_and_check(&w, images.path()), "PASS", "{}", w.logs());
}

/// A child created with CLONE_FILES shares one fd table with its parent again after restore:
/// an fd opened by one is seen by the other, one closed by one is closed for the other.
#[test]
fn clone_files_child_shares_the_fd_table() {
    let test = "clone_files_child_shares_the_fd_table";
    let Some(bin) = prepare(test, "clone_files") else {
        return;
    };
    let _serial = serial();
    let mut w = Workload::start(&bin, &[]);
    let images = dump_tree_and_reap(&mut w, &[]);
    assert_eq!(restore_and_check(&w, images.path()), "PASS", "{}", w.logs());
}

#[test]
fn shared_fd_table_and_fs_info_between_processes() {
    let _serial = serial();
    let Some(bin) = prepare(
        "shared_fd_table_and_fs_info_between_processes",
        "clone_share",
    ) else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    assert_eq!(
        tree.len(),
        4,
        "expected a parent, a CLONE_FILES child and grandchild, a CLONE_FS child: {tree:?}"
    );
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    let show = cryo_output(&["show", "-D", images.path().to_str().unwrap()], TIMEOUT);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("[parent's fd table]") && text.contains("[parent's cwd/root/umask]"),
        "cryo show does not show the sharing\n{text}"
    );
    w.wait_killed_by_dump();
    reap_tree(&tree);
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// A restore of processes sharing an fd table and fs info that fails at any step (in a sharer
/// or its owner) leaves no process behind and does not hang; the checkpoint restores after.
#[test]
fn failed_restore_of_sharing_processes_leaves_nothing_behind() {
    let _serial = serial();
    let test = "failed_restore_of_sharing_processes_leaves_nothing_behind";
    let Some(bin) = prepare(test, "clone_share") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let tree = descendants(w.pid);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    reap_tree(&tree);
    for point in cryo::fault::RESTORE_POINTS {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cryo"))
            .args(["restore", "-d", "-D", images.path().to_str().unwrap()])
            .env("CRYO_FAULT", point)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run cryo");
        assert!(!out.status.success(), "{point}: restore succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("injected fault"), "{point}: {err}");
        reap_tree(&tree);
    }
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// A 10-process tree, each with 8 MiB of its own data and pages still mapped to the zero page,
/// is dumped by several tracer threads at once. A failure in the fifth process's page dump
/// (while others are being dumped) leaves the whole tree running, untraced, and passing its
/// check; the good dump stores every page and restores, with every process checking its memory
/// (every one created without a copy of cryo's memory, from the stub).
#[test]
fn tree_memory_dumped_in_parallel() {
    let _serial = serial();
    let test = "tree_memory_dumped_in_parallel";
    let Some(bin) = prepare(test, "memtree") else {
        return;
    };
    let mut w = Workload::start(&bin, &["3", "2", "8"]);
    let tree = descendants(w.pid);
    assert_eq!(tree.len(), 10, "the workload built {tree:?}");

    let failed = images_dir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cryo"))
        .args(["dump", "-t", &w.pid.to_string(), "-D"])
        .arg(failed.path())
        .env("CRYO_FAULT", "dump:pages@5")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cryo");
    assert!(
        !out.status.success(),
        "{}",
        show_output("faulty dump", &out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("injected fault"), "{err}");
    assert!(
        !failed.path().join("inventory.img").exists(),
        "a failed dump left a checkpoint"
    );
    for &p in &tree {
        assert!(alive(p), "pid {p} died in the failed dump");
        assert!(
            wait_until(Duration::from_secs(10), || tracer_pid(p) == Some(0)
                && proc_state(p) != Some('t')),
            "pid {p} is still traced or stopped after the failed dump"
        );
    }

    let images = images_dir();
    let dump = dump_ok(&w, images.path(), &["--print-stats"]);
    let stats = show_output("dump", &dump);
    let written = stat_figure(&dump, "pages written");
    assert!(written >= 10 * 8 * 256, "{stats}");
    // 1 MiB per process read-faulted (the zero page); a quarter of it written since.
    assert!(
        stat_figure(&dump, "pages skipped as zero") >= 10 * 192,
        "{stats}"
    );
    assert_eq!(stat_figure(&dump, "processes"), 10, "{stats}");
    assert!(stat_figure(&dump, "dumper threads") >= 2, "{stats}");
    let at_once = stats
        .split("at most ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        at_once >= 2,
        "no two processes were dumped at once\n{stats}"
    );
    w.wait_killed_by_dump();
    reap_tree(&tree);
    let (result, out) = check_restore(&w, restore_spawn(images.path(), &["--print-stats"]));
    let stats = show_output("restore", &out);
    assert_eq!(result, "PASS", "{stats}\n{}", w.logs());
    assert!(out.status.success(), "{stats}");
    // Every process is created without a copy of cryo's memory (the root sharing cryo's,
    // the others the root's, until each execs the stub).
    assert_eq!(stat_figure(&out, "processes"), 10, "{stats}");
    assert_eq!(stat_figure(&out, "started from the stub"), 10, "{stats}");
}

/// Where no executable memory file can be made (the stub's probe fails: injected), every
/// process of a tree is forked as a copy of cryo, as before the stub, and the tree still
/// checks its ids, names, executables and FD_CLOEXEC flags.
#[test]
fn tree_restored_without_the_stub() {
    let _serial = serial();
    let test = "tree_restored_without_the_stub";
    let Some(bin) = prepare(test, "tree") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = dump_tree_and_reap(&mut w, &[]);
    let dir = images.path().to_str().expect("utf-8 path");
    let restore = CryoProcess::spawn_with_env(
        &["restore", "-D", dir, "--print-stats"],
        &[("CRYO_FAULT", "restore:stub-probe")],
    );
    let (result, out) = check_restore(&w, restore);
    let stats = show_output("restore", &out);
    assert_eq!(result, "PASS", "{stats}\n{}", w.logs());
    assert_eq!(stat_figure(&out, "started from the stub"), 0, "{stats}");
}

/// A tree whose PIDs wrap around pid_max (some just below it, some just above the 300 the
/// kernel wraps to): neither the dump nor the restore may leave the PID allocator where the
/// next process, `cryo restore` itself or one of its threads, takes one of the tree's PIDs.
#[test]
fn tree_whose_pids_wrap_around_pid_max() {
    let _serial = serial();
    let test = "tree_whose_pids_wrap_around_pid_max";
    let Some(bin) = prepare(test, "memtree") else {
        return;
    };
    let read = |path: &str| -> i32 {
        std::fs::read_to_string(path)
            .expect(path)
            .trim()
            .parse()
            .expect(path)
    };
    let pid_max = read("/proc/sys/kernel/pid_max");
    // Anything else forking on the machine may shift the tree: a few tries.
    let (mut w, tree) = (0..5)
        .find_map(|_| {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid_max - 6).to_string())
                .expect("write ns_last_pid");
            let w = Workload::start(&bin, &["3", "2", "1"]);
            let tree = descendants(w.pid);
            let high = tree.iter().any(|&p| p > pid_max - 10);
            let low = tree.iter().any(|&p| p < pid_max / 2);
            if high && low {
                Some((w, tree))
            } else {
                drop(w);
                reap_gone(&tree);
                None
            }
        })
        .expect("could not get a tree whose PIDs wrap");
    dump_restore_check(&mut w, &tree);
    drop(w);
}

/// Processes and threads are born and die while the tree is being frozen: each dump must
/// catch a tree it can restore (a child or thread half-way through fork or exit is either in
/// it, whole, or not), a `--leave-running` dump must leave it going, and the restored workers
/// go on forking, threading and reaping, every child's exit status intact.
#[test]
fn tree_forking_and_threading_while_dumped() {
    let _serial = serial();
    let Some(bin) = prepare("tree_forking_and_threading_while_dumped", "forker") else {
        return;
    };
    for round in 0..4u64 {
        let mut w = Workload::start(&bin, &[]);
        std::thread::sleep(std::time::Duration::from_millis(7 * round));
        // First a dump that leaves the tree running: it must go on, untraced.
        let kept = images_dir();
        dump_ok(&w, kept.path(), &["--leave-running"]);
        assert_eq!(
            tracer_pid(w.pid),
            Some(0),
            "round {round}: still traced after -R"
        );
        let images = images_dir();
        dump_ok(&w, images.path(), &[]);
        w.wait_killed_by_dump();
        // The checkpoint's processes, whatever was alive at the freeze.
        let pids = cryo::image::ImageReader::open(images.path())
            .expect("read the checkpoint")
            .inventory()
            .pids
            .clone();
        assert!(pids.len() >= 3, "round {round}: only {pids:?} dumped");
        reap_tree(&pids);
        let result = restore_and_check(&w, images.path());
        assert_eq!(result, "PASS", "round {round}: {}", w.logs());
    }
}
