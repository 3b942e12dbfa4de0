//! Open files and file-like kernel objects across dump and restore (issue 4): each workload
//! sets up its objects, is dumped (and killed), restored, and checks from inside that every
//! object came back as it was. Kinds cryo does not restore make the dump fail before anything
//! is killed, naming the fd and its kind.

mod common;

use common::*;
use std::time::Duration;

/// Starts `workload`, dumps it (killing it), restores it and returns its check's result.
fn dump_restore_check(test: &str, workload: &str, args: &[&str]) -> Option<String> {
    let bin = prepare(test, workload)?;
    let mut w = Workload::start(&bin, args);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    Some(restore_and_check(&w, images.path()))
}

/// Every workload of this file passes its own check when nothing is done to it: this
/// validates the workloads, independently of cryo.
#[test]
fn fd_workloads_self_check_without_dump() {
    let _serial = serial();
    const TEST: &str = "fd_workloads_self_check_without_dump";
    for (name, args) in [
        ("fd_regular", &[][..]),
        ("fd_dup", &[]),
        ("fd_pipe", &[]),
        ("fd_event", &[]),
        ("fd_inotify_memfd", &[]),
        ("fd_unix", &[]),
        ("fd_locks", &[]),
        ("fd_refused", &["halfpipe"]),
        ("fd_refused", &["flock"]),
        ("fd_refused", &["inotify-queued"]),
    ] {
        let Some(bin) = workload_bin(TEST, name) else {
            return;
        };
        let mut w = Workload::start(&bin, args);
        assert_eq!(w.check(), "PASS", "{name} {args:?}\n{}", w.logs());
        let status = w.wait_exit();
        assert!(status.success(), "{name} exited with {status}");
    }
}

/// Regular files keep flags, offsets and close-on-exec; a directory continues its getdents
/// walk; /dev/null, /dev/zero, /dev/urandom are reopened; files deleted while open come back
/// deleted, with their contents, mode and a shared inode for two opens.
#[test]
fn regular_files_directories_devices_and_deleted_files() {
    let _serial = serial();
    let test = "regular_files_directories_devices_and_deleted_files";
    if let Some(result) = dump_restore_check(test, "fd_regular", &[]) {
        assert_eq!(result, "PASS");
    }
}

/// dup'd fds (dup, dup2, F_DUPFD_CLOEXEC, stdout and stderr on one file) come back as one
/// open file description: one offset, one set of status flags; a second open stays separate.
#[test]
fn duplicated_fds_share_one_description() {
    let _serial = serial();
    if let Some(result) = dump_restore_check("duplicated_fds_share_one_description", "fd_dup", &[])
    {
        assert_eq!(result, "PASS");
    }
}

/// Pipes with both ends in the process and a FIFO keep their buffered bytes, sizes, flags and
/// extra descriptions. A dump with --leave-running reads the buffers without consuming them:
/// the original passes its check, then the checkpoint is restored and passes it again.
#[test]
fn pipes_and_fifos_with_buffered_data() {
    let _serial = serial();
    let Some(bin) = prepare("pipes_and_fifos_with_buffered_data", "fd_pipe") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &["--leave-running"]);
    assert_eq!(
        w.check(),
        "PASS",
        "after dump --leave-running\n{}",
        w.logs()
    );
    w.wait_exit();
    w.reset_protocol();
    assert_eq!(restore_and_check(&w, images.path()), "PASS");
}

/// An fd cryo cannot restore makes the dump fail before anything is killed: the error names
/// the fd and its kind, the target keeps running, untraced, and passes its own check.
#[test]
fn unsupported_fds_are_refused_and_the_target_runs_on() {
    let _serial = serial();
    let test = "unsupported_fds_are_refused_and_the_target_runs_on";
    let Some(bin) = prepare(test, "fd_refused") else {
        return;
    };
    let sockdir = tempfile::TempDir::with_prefix("cryo-unix-peer-").expect("tempdir");
    let sockpath = sockdir.path().join("listener");
    let listener = std::os::unix::net::UnixListener::bind(&sockpath).expect("bind");
    let sockpath = sockpath.to_str().expect("utf-8").to_string();
    for (mode, kind) in [
        ("pidfd", "pidfd"),
        ("inet", "waiting to be accepted"),
        ("halfpipe", "pipe"),
        ("flock", "lock"),
        ("inotify-queued", "inotify"),
        ("ptmx", "pseudo-terminal"),
        ("unix-peer", "outside the checkpoint"),
    ] {
        let args: Vec<&str> = if mode == "unix-peer" {
            vec![mode, &sockpath]
        } else {
            vec![mode]
        };
        let mut w = Workload::start(&bin, &args);
        let _accepted = (mode == "unix-peer").then(|| listener.accept().expect("accept"));
        let fd = std::fs::read_to_string(w.path("fdnum")).expect("fdnum");
        let fd = fd.trim();
        let images = images_dir();
        let out = dump(&w, images.path(), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}: dump succeeded\n{err}");
        assert!(
            err.contains(&format!("fd {fd} ")) && err.contains(kind),
            "{mode}: the error does not name fd {fd} and {kind:?}:\n{err}"
        );
        assert!(
            w.original_running(),
            "{mode}: the target died\n{}",
            w.logs()
        );
        assert_eq!(tracer_pid(w.pid), Some(0), "{mode}: still traced");
        assert!(
            !images.path().join("inventory.img").exists(),
            "{mode}: a checkpoint was written"
        );
        assert_eq!(w.check(), "PASS", "{mode}\n{}", w.logs());
        w.wait_exit();
    }
}

/// eventfd (count, semaphore), timerfd (relative, periodic, absolute, unread expirations,
/// disarmed), signalfd (mask) and epoll (watched fds with events and data) work as before.
#[test]
fn event_objects_eventfd_timerfd_signalfd_epoll() {
    let _serial = serial();
    if let Some(result) = dump_restore_check(
        "event_objects_eventfd_timerfd_signalfd_epoll",
        "fd_event",
        &[],
    ) {
        assert_eq!(result, "PASS");
    }
}

/// inotify watches keep their descriptors and deliver events; memfds keep name, contents,
/// offset and seals, and a second description of one memfd still shows the same file.
#[test]
fn inotify_watches_and_memfds() {
    let _serial = serial();
    if let Some(result) = dump_restore_check("inotify_watches_and_memfds", "fd_inotify_memfd", &[])
    {
        assert_eq!(result, "PASS");
    }
}

/// `cryo show` lists every fd with its kind and saved state, in text and JSON.
#[test]
fn show_lists_fds_with_their_kinds() {
    let _serial = serial();
    let Some(bin) = prepare("show_lists_fds_with_their_kinds", "fd_event") else {
        return;
    };
    let w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &["--leave-running"]);
    let dir = images.path().to_str().expect("utf-8");
    let text = cryo_output(&["show", "-D", dir], TIMEOUT);
    assert!(text.status.success(), "{}", show_output("cryo show", &text));
    let text = String::from_utf8_lossy(&text.stdout);
    for want in [
        "eventfd",
        "count 7",
        "semaphore",
        "timerfd",
        "every 0.020000000s",
        "absolute",
        "signalfd",
        "mask SIGUSR1",
        "pipe",
        "epoll",
        "data 0xdeadbeefcafef00d",
        "same object as fd",
    ] {
        assert!(text.contains(want), "cryo show lacks {want:?}:\n{text}");
    }
    let json = cryo_output(&["show", "-D", dir, "--json"], TIMEOUT);
    assert!(
        json.status.success(),
        "{}",
        show_output("cryo show --json", &json)
    );
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let fds = v
        .pointer("/processes/0/fds")
        .and_then(|f| f.as_array())
        .unwrap_or_else(|| panic!("no processes[0].fds in {v}"));
    let kinds: Vec<&str> = fds.iter().filter_map(|f| f["kind"].as_str()).collect();
    for k in ["eventfd", "timerfd", "signalfd", "epoll", "pipe"] {
        assert!(kinds.contains(&k), "JSON fds lack {k}: {kinds:?}");
    }
    assert_eq!(
        w.check(),
        "PASS",
        "after dump --leave-running\n{}",
        w.logs()
    );
}

/// Unix sockets: stream, datagram and seqpacket pairs with data queued both ways (datagram
/// and packet boundaries intact), shutdowns, a closed peer, a listener bound to a path, an
/// abstract name, an unbound socket, and their options.
#[test]
fn unix_sockets_with_queued_data() {
    let _serial = serial();
    if let Some(result) = dump_restore_check("unix_sockets_with_queued_data", "fd_unix", &[]) {
        assert_eq!(result, "PASS");
    }
}

/// With --file-locks, flock, POSIX and OFD locks are saved and held again after restore:
/// other descriptions and another process cannot take them. Without the flag the dump
/// refuses, naming the lock, and the target keeps running.
#[test]
fn file_locks_with_the_flag_refused_without() {
    let _serial = serial();
    let Some(bin) = prepare("file_locks_with_the_flag_refused_without", "fd_locks") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    let out = dump(&w, images.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump without --file-locks succeeded");
    assert!(
        err.contains("--file-locks") && err.contains("FLOCK"),
        "{err}"
    );
    assert!(w.original_running(), "the target died\n{}", w.logs());
    dump_ok(&w, images.path(), &["--file-locks"]);
    w.wait_killed_by_dump();
    assert_eq!(restore_and_check(&w, images.path()), "PASS");
}

/// A file replaced (same path, another inode) between dump and restore is reported: restore
/// warns, naming the fd and the path, and reopens the new file.
#[test]
fn file_replaced_since_dump_is_reported() {
    let _serial = serial();
    let Some(bin) = prepare("file_replaced_since_dump_is_reported", "fd_dup") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let shared = w.path("shared");
    let copy = w.path("shared.new");
    std::fs::copy(&shared, &copy).expect("copy");
    std::fs::rename(&copy, &shared).expect("replace");
    let mut restore = restore_spawn(images.path(), &[]);
    let result = w.check_with(|| restore.try_wait().map(|s| format!("restore exited ({s})")));
    let out = restore.finish(TIMEOUT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(result, "PASS", "{err}");
    assert!(
        err.contains("replaced since the dump") && err.contains("shared"),
        "no warning about the replaced file:\n{err}"
    );
}

/// A datagram socket connected to a socket outside the process is refused without
/// --ext-unix-sk (the error says so); with it, restore connects it to the same name again
/// and its datagrams arrive there.
#[test]
fn external_datagram_peer_with_ext_unix_sk() {
    let _serial = serial();
    let Some(bin) = prepare("external_datagram_peer_with_ext_unix_sk", "fd_unix_ext") else {
        return;
    };
    let dir = tempfile::TempDir::with_prefix("cryo-ext-unix-").expect("tempdir");
    let path = dir.path().join("peer");
    let peer = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let path = path.to_str().expect("utf-8");
    let mut w = Workload::start(&bin, &[path]);
    let mut buf = [0u8; 64];
    let n = peer.recv(&mut buf).expect("first datagram");
    assert_eq!(&buf[..n], b"before");
    let images = images_dir();
    let out = dump(&w, images.path(), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--ext-unix-sk"),
        "{err}"
    );
    assert!(w.original_running(), "the target died\n{}", w.logs());
    dump_ok(&w, images.path(), &["--ext-unix-sk"]);
    w.wait_killed_by_dump();
    assert_eq!(restore_and_check(&w, images.path()), "PASS");
    let n = peer.recv(&mut buf).expect("datagram after restore");
    assert_eq!(&buf[..n], b"after restore");
}

/// Unix socket pairs whose ends are held by different processes (parent and child), with
/// unread data both ways at dump: restored as one pair again, every message arrives once with
/// its boundaries, and the processes keep talking.
#[test]
fn unix_pairs_across_processes() {
    let _serial = serial();
    let test = "unix_pairs_across_processes";
    let Some(bin) = prepare(test, "unix_xproc") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    assert_eq!(descendants(w.pid).len(), 2, "parent and child");
    let images = dump_tree_and_reap(&mut w, &[]);
    assert_eq!(restore_and_check(&w, images.path()), "PASS", "{}", w.logs());
}

/// A pseudo-terminal pair inside the tree, the controlling terminal of a session inside the
/// tree with another group in the foreground: restored as a new pair with its settings, and
/// the session, its terminal and its foreground group as they were.
#[test]
fn pty_pair_and_controlling_terminal() {
    let _serial = serial();
    let test = "pty_pair_and_controlling_terminal";
    let Some(bin) = prepare(test, "pty") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    assert_eq!(
        descendants(w.pid).len(),
        3,
        "root, session leader, foreground child"
    );
    let images = dump_tree_and_reap(&mut w, &[]);
    let show = cryo_output(&["show", "-D", images.path().to_str().unwrap()], TIMEOUT);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("packet mode"), "show lists the pty:\n{text}");
    assert!(
        text.contains("controlling terminal"),
        "show gives the session its terminal:\n{text}"
    );
    assert_eq!(restore_and_check(&w, images.path()), "PASS", "{}", w.logs());
}

/// A pseudo-terminal pair made by the test: (master, slave).
fn openpty() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two fds to the pointers; the name, termios and winsize are null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [m, s] {
        // SAFETY: plain fcntl on an fd we own; other processes must not inherit it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: openpty returned two new fds that nothing else owns.
    unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
}

/// A job started on a terminal (session leader, stdio on a pty whose master is the test's):
/// refused without --shell-job; with it, restored by a cryo running on another terminal, the
/// job gets that terminal and its output reaches it.
#[test]
fn shell_job_gets_the_restoring_terminal() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let _serial = serial();
    let test = "shell_job_gets_the_restoring_terminal";
    let Some(bin) = prepare(test, "tty_job") else {
        return;
    };
    let (_m1, s1) = openpty();
    let mut w = Workload::start_on_terminal(&bin, &[], &s1);
    drop(s1);
    let images = images_dir();
    let out = dump(&w, images.path(), &[]);
    assert!(
        !out.status.success(),
        "dumped a terminal without --shell-job\n{}",
        show_output("dump", &out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--shell-job"), "the refusal names -j: {err}");
    dump_ok(&w, images.path(), &["--shell-job"]);
    w.wait_killed_by_dump();
    // cryo restore runs on a second terminal.
    let (mut m2, s2) = openpty();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_cryo"))
        .args(["restore", "-j", "-d", "-D", images.path().to_str().unwrap()])
        .stdin(s2.try_clone().unwrap())
        .stdout(s2.try_clone().unwrap())
        .stderr(s2.try_clone().unwrap())
        .status()
        .expect("run cryo restore");
    drop(s2);
    assert!(status.success(), "restore -j failed ({status})");
    assert_eq!(w.check(), "PASS", "{}", w.logs());
    // Its output came out on the second terminal.
    let mut seen = String::new();
    let ok = wait_until(Duration::from_secs(10), || {
        let mut p = libc::pollfd {
            fd: m2.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 100) } == 1 {
            let mut b = [0u8; 4096];
            if let Ok(n) = m2.read(&mut b) {
                seen.push_str(&String::from_utf8_lossy(&b[..n]));
            }
        }
        seen.contains("job-alive")
    });
    assert!(
        ok,
        "the job's output did not reach the restoring terminal: {seen:?}"
    );
}
