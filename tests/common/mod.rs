//! The integration-test harness: compiles the C workloads in `tests/workloads/`, starts them in
//! fresh directories, drives `cryo` (dump, restore, show, check) with timeouts, and cleans up
//! every process a test started, also when the test panics.
//!
//! Rules it enforces:
//! - The test process is a child subreaper, so a workload orphaned by a dump, a failed restore
//!   or `restore -d` is reparented to it and can be reaped (PID 1 here does not reap, and a
//!   zombie keeps its PID, which would make the next restore of that PID fail).
//! - Tests that dump or restore hold `serial()`: they reuse PIDs and must not race.
//! - Only PIDs a test started are ever signalled; a restored process is recognized by its cwd
//!   lying inside the workload's own directory.
//! - A test that needs something the machine lacks calls `skip()`, which prints `SKIP: ...` to
//!   stderr and records it in `target/tmp/skips.log` for `scripts/test.sh`.
//!
//! The workload protocol (see `tests/workloads/protocol.c`): `ready` holds "PID READY"; the
//! test creates `check`; the workload answers in `result` with "PASS" or "FAIL: reason".
#![allow(dead_code)]

use cryo::sys::proc_ctl;
use cryo::sys::ptrace::{self, WaitStatus};
use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a workload may take to come up, answer a check, or a cryo command to run.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The workloads compiled for the tests, by file stem.
pub const WORKLOADS: &[&str] = &[
    "clone_files",
    "forker",
    "clone_fs",
    "clone_share",
    "tty_job",
    "pty",
    "unix_xproc",
    "net_tcp_server",
    "net_tcp_client",
    "net_tcp_halfclose",
    "net_udp",
    "net_misc",
    "full_state",
    "nanosleep",
    "fifo_read",
    "counter",
    "bigmem",
    "itimer_pending",
    "sigtrap",
    "threads",
    "tree",
    "memtree",
    "shm",
    "stopped",
    "vfork",
    "xshare",
    "fd_regular",
    "fd_dup",
    "fd_pipe",
    "fd_refused",
    "fd_event",
    "fd_inotify_memfd",
    "fd_unix",
    "fd_locks",
    "fd_unix_ext",
];

/// x86_64 syscall numbers a workload may be found blocked in.
pub const SYS_READ: i64 = 0;
/// `nanosleep`.
pub const SYS_NANOSLEEP: i64 = 35;
/// `clock_nanosleep` (what glibc's nanosleep calls).
pub const SYS_CLOCK_NANOSLEEP: i64 = 230;

/// Makes this test process a child subreaper (once).
pub fn init() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        proc_ctl::set_child_subreaper(true).expect("prctl(PR_SET_CHILD_SUBREAPER)");
        // fds this test process inherited (from CI, a shell, an IDE) must not leak into the
        // workloads, or their dumps would see fds the tests never meant them to have.
        for fd in cryo::sys::task::own_fds().into_iter().filter(|&fd| fd > 2) {
            let _ = cryo::sys::task::set_cloexec(fd, true);
        }
    });
}

/// Serializes the tests that dump or restore. A panic in another test does not poison it.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    init();
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reports a skipped test loudly: `SKIP: reason` on stderr and a line in target/tmp/skips.log.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP: {test}: {reason}");
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("skips.log");
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{}::{test}: {reason}", env!("CARGO_CRATE_NAME"));
    }
}

/// The effective uid, from /proc/self/status.
pub fn euid() -> u32 {
    let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("Uid line in /proc/self/status")
}

/// True when running as root; otherwise reports the skip.
pub fn require_root(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    skip(
        test,
        "needs root (ptrace of any process, clone3 set_tid, mounts)",
    );
    false
}

fn workload_src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads")
}

/// Compiles every workload once per test binary into target/tmp/workloads-<binary>/.
/// Returns None (the caller skips) when no C compiler is installed; a compile error panics.
fn compiled() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("workloads-{}", env!("CARGO_CRATE_NAME")));
        fs::create_dir_all(&out).expect("create workload build dir");
        for name in WORKLOADS {
            let src = workload_src_dir().join(format!("{name}.c"));
            let tmp = out.join(format!("{name}.tmp"));
            let result = Command::new("cc")
                .args(["-O1", "-Wall", "-Wextra", "-Werror", "-o"])
                .arg(&tmp)
                .arg(&src)
                .arg("-lrt")
                .arg("-lpthread")
                .output();
            match result {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("running cc: {e}"),
                Ok(o) if !o.status.success() => panic!(
                    "compiling {}: {}",
                    src.display(),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Ok(_) => fs::rename(&tmp, out.join(name)).expect("rename workload binary"),
            }
        }
        Some(out)
    })
    .as_deref()
}

/// Path of a compiled workload, or None after reporting a skip (no C compiler).
pub fn workload_bin(test: &str, name: &str) -> Option<PathBuf> {
    match compiled() {
        Some(dir) => Some(dir.join(name)),
        None => {
            skip(test, "no C compiler (cc) to build the workloads");
            None
        }
    }
}

/// The usual start of a test that dumps: skips (returning None) unless root and unless the
/// workload could be built; checks that cryo's binary exists.
pub fn prepare(test: &str, workload: &str) -> Option<PathBuf> {
    if !require_root(test) {
        return None;
    }
    let bin = workload_bin(test, workload)?;
    require_cli();
    Some(bin)
}

/// Fails the test unless the cryo binary has the subcommands the tests drive.
pub fn require_cli() {
    let help = cryo_output(&["--help"], TIMEOUT);
    let text = String::from_utf8_lossy(&help.stdout);
    for cmd in ["dump", "restore", "check", "show"] {
        assert!(
            text.contains(cmd),
            "cryo --help does not list `{cmd}` (is the CLI in src/main.rs implemented?):\n{text}"
        );
    }
}

/// The state of /proc/PID/stat (R, S, D, T, t, Z, ...), None if there is no such process.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// True if PID exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// TracerPid from /proc/PID/status (0: not traced).
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|s| s.trim().parse().ok())
}

/// The syscall PID is blocked in, from /proc/PID/syscall (None if running or unreadable).
pub fn blocked_syscall(pid: i32) -> Option<i64> {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn cryo_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryo"));
    cmd.args(args).stdin(Stdio::null());
    cmd
}

/// A running `cryo` command whose output goes to files (a restored process can never hold
/// a pipe of ours open). Drop kills it if it is still running.
pub struct CryoProcess {
    args: Vec<String>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    out: TempDir,
}

impl CryoProcess {
    /// Starts `cryo ARGS`.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    /// Starts `cryo ARGS` with `env` added to its environment.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        init();
        let out = TempDir::new().expect("tempdir for cryo output");
        let stdout = fs::File::create(out.path().join("stdout")).expect("stdout file");
        let stderr = fs::File::create(out.path().join("stderr")).expect("stderr file");
        let child = cryo_command(args)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn cryo");
        Self {
            args: args.iter().map(|s| s.to_string()).collect(),
            child: Some(child),
            status: None,
            out,
        }
    }

    /// The PID of the cryo process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Its exit status if it has finished.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.as_mut()?.try_wait().expect("try_wait cryo");
            if self.status.is_some() {
                self.child = None;
            }
        }
        self.status
    }

    /// Waits for it to finish (killing it after `timeout`) and returns its output.
    pub fn finish(mut self, timeout: Duration) -> Output {
        let done = wait_until(timeout, || self.try_wait().is_some());
        if !done {
            let out = self.describe();
            panic!("cryo {:?} did not finish in {timeout:?}\n{out}", self.args);
        }
        self.output()
    }

    /// Output so far; the status of a process still running reads as killed by SIGKILL.
    pub fn output(&self) -> Output {
        let read = |n: &str| fs::read(self.out.path().join(n)).unwrap_or_default();
        Output {
            status: self.status.unwrap_or(ExitStatus::from_raw(libc::SIGKILL)),
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }

    /// Human-readable summary for assertion messages.
    pub fn describe(&self) -> String {
        let o = self.output();
        format!(
            "cryo {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }
}

impl Drop for CryoProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `cryo ARGS` to completion (killed after `timeout`).
pub fn cryo_output(args: &[&str], timeout: Duration) -> Output {
    CryoProcess::spawn(args).finish(timeout)
}

/// Formats an Output for assertion messages.
pub fn show_output(what: &str, o: &Output) -> String {
    format!(
        "{what}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A workload a test started: its directory, its PID (kept by restore), and the process
/// handle of the original while it has not been reaped. Drop kills what is still running.
pub struct Workload {
    /// File stem of the workload.
    pub name: String,
    /// The PID it had at start (and keeps across restore).
    pub pid: i32,
    dir: TempDir,
    original: Option<Child>,
}

impl Workload {
    /// Starts workload `name` with `args` in a fresh directory (stdin /dev/null, stdout and
    /// stderr to files there) and waits until it is ready.
    pub fn start(bin: &Path, args: &[&str]) -> Self {
        init();
        let name = bin
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = TempDir::with_prefix(format!("cryo-{name}-")).expect("workload tempdir");
        let stdout = fs::File::create(dir.path().join("stdout.log")).expect("stdout.log");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("stderr.log");
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id() as i32;
        let mut w = Self {
            name,
            pid,
            dir,
            original: Some(child),
        };
        w.wait_ready();
        w
    }

    /// Starts workload `bin` in a fresh directory as a session leader whose controlling
    /// terminal, and stdin, stdout and stderr, is the terminal `tty` (a pty slave).
    pub fn start_on_terminal(bin: &Path, args: &[&str], tty: &fs::File) -> Self {
        use std::os::unix::process::CommandExt;
        init();
        let name = bin
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = TempDir::with_prefix(format!("cryo-{name}-")).expect("workload tempdir");
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .current_dir(dir.path())
            .stdin(tty.try_clone().expect("dup tty"))
            .stdout(tty.try_clone().expect("dup tty"))
            .stderr(tty.try_clone().expect("dup tty"));
        // SAFETY: setsid and ioctl are async-signal-safe and touch only the child.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id() as i32;
        let mut w = Self {
            name,
            pid,
            dir,
            original: Some(child),
        };
        w.wait_ready();
        w
    }

    fn wait_ready(&mut self) {
        let ready = self.path("ready");
        let ok = wait_until(TIMEOUT, || {
            ready.exists()
                || self
                    .original
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
        });
        let text = fs::read_to_string(&ready).unwrap_or_default();
        assert!(
            ok && !text.is_empty(),
            "{} never became ready\n{}",
            self.name,
            self.logs()
        );
        let want = format!("{} READY", self.pid);
        assert_eq!(text.trim(), want, "{}: unexpected ready file", self.name);
    }

    /// The workload's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A file in the workload's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// stdout.log and stderr.log, for assertion messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.path(n)).unwrap_or_default();
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.name,
            read("stdout.log"),
            self.name,
            read("stderr.log")
        )
    }

    /// Whether the process with our PID is this workload (its cwd lies in our directory).
    pub fn is_ours(&self) -> bool {
        fs::read_link(format!("/proc/{}/cwd", self.pid))
            .is_ok_and(|cwd| cwd.starts_with(self.dir.path()))
    }

    /// Creates `check` and waits for `result`; returns its trimmed content. While waiting,
    /// `abort` is polled: when it returns Some(reason) the wait fails with that reason (used to
    /// notice a restore that died).
    pub fn check_with(&self, mut abort: impl FnMut() -> Option<String>) -> String {
        fs::write(self.path("check"), b"").expect("create check");
        let result = self.path("result");
        let mut why = None;
        let ok = wait_until(TIMEOUT, || {
            if result.exists() {
                return true;
            }
            why = abort();
            // The workload may have answered and exited between the two looks.
            if why.is_some() && result.exists() {
                why = None;
                return true;
            }
            why.is_some()
        });
        if let Some(why) = why {
            panic!("{}: no result: {why}\n{}", self.name, self.logs());
        }
        assert!(
            ok,
            "{}: no result within {TIMEOUT:?}\n{}",
            self.name,
            self.logs()
        );
        fs::read_to_string(result)
            .expect("read result")
            .trim()
            .to_string()
    }

    /// Creates `check` and waits for `result`, failing early if the process is gone.
    pub fn check(&self) -> String {
        let pid = self.pid;
        self.check_with(|| (!alive(pid)).then(|| format!("pid {pid} is gone")))
    }

    /// Removes `check` and `result` so the protocol can run again (after --leave-running).
    pub fn reset_protocol(&self) {
        for f in ["check", "result", "check.tmp", "result.tmp"] {
            let _ = fs::remove_file(self.path(f));
        }
    }

    /// Waits for the original process to exit on its own and reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.original.as_mut().expect("original not yet reaped");
        let mut status = None;
        let ok = wait_until(TIMEOUT, || {
            status = child.try_wait().expect("try_wait workload");
            status.is_some()
        });
        assert!(ok, "{} did not exit\n{}", self.name, self.logs());
        self.original = None;
        status.expect("status")
    }

    /// After a dump without --leave-running: waits until cryo has killed the original,
    /// reaps it and checks that its PID is free.
    pub fn wait_killed_by_dump(&mut self) {
        let status = self.wait_exit();
        assert!(
            status.signal().is_some(),
            "{} exited by itself ({status}) instead of being killed by the dump",
            self.name
        );
        let pid = self.pid;
        assert!(
            wait_until(Duration::from_secs(5), || proc_state(pid).is_none()),
            "pid {pid} still exists after the dump killed it"
        );
    }

    /// The original process is still ours to wait for.
    pub fn original_running(&mut self) -> bool {
        self.original
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Reaps a restored process that was reparented to us (after `restore -d`).
    pub fn reap_adopted(&self) -> WaitStatus {
        let mut status = None;
        let ok = wait_until(TIMEOUT, || {
            match ptrace::wait(self.pid, libc::WNOHANG) {
                Ok(Some((_, s))) => status = Some(s),
                Ok(None) => {}
                Err(e) => panic!("waitpid({}): {e} (not our child?)", self.pid),
            }
            status.is_some()
        });
        assert!(ok, "restored {} did not exit\n{}", self.name, self.logs());
        status.expect("status")
    }

    /// Waits until no process has our PID any more (zombies count as present).
    pub fn wait_pid_gone(&self, timeout: Duration) -> bool {
        let pid = self.pid;
        wait_until(timeout, || proc_state(pid).is_none())
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // The workload's descendants go too: after a failed test they would otherwise wait
        // forever for a check whose directory is gone (they are the workload's own children,
        // started by this test). Listed before the root dies (then they are no longer its).
        let kids: Vec<i32> = if self.original.is_some() || self.is_ours() {
            descendants(self.pid).into_iter().skip(1).collect()
        } else {
            Vec::new()
        };
        if let Some(mut child) = self.original.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else {
            if self.is_ours() {
                let _ = proc_ctl::kill(self.pid, libc::SIGKILL);
            }
            // A restored process may be our child (adopted after restore -d): reap it if so.
            // ECHILD means it belongs to a cryo process, which its own guard waits for.
            let pid = self.pid;
            wait_until(Duration::from_secs(5), || {
                !matches!(ptrace::wait(pid, libc::WNOHANG), Ok(None))
            });
        }
        for &p in &kids {
            let _ = proc_ctl::kill(p, libc::SIGKILL);
        }
        // Those adopted by this (subreaper) process are reaped here.
        for &p in &kids {
            wait_until(Duration::from_secs(1), || {
                !matches!(ptrace::wait(p, libc::WNOHANG), Ok(None))
            });
        }
    }
}

/// An images directory for one checkpoint.
pub fn images_dir() -> TempDir {
    TempDir::with_prefix("cryo-images-").expect("images tempdir")
}

/// `cryo dump -t PID -D DIR -v 4 EXTRA...`, run to completion.
pub fn dump(w: &Workload, dir: &Path, extra: &[&str]) -> Output {
    let pid = w.pid.to_string();
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["dump", "-t", &pid, "-D", dir, "-v", "4"];
    args.extend_from_slice(extra);
    cryo_output(&args, TIMEOUT)
}

/// The number after `label` in the `--print-stats` text of `out`.
pub fn stat_figure(out: &Output, label: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure {label:?} in\n{}", show_output("cryo", out)))
}

/// Dumps and asserts success.
pub fn dump_ok(w: &Workload, dir: &Path, extra: &[&str]) -> Output {
    let out = dump(w, dir, extra);
    assert!(
        out.status.success(),
        "{}\n{}",
        show_output("cryo dump failed", &out),
        w.logs()
    );
    out
}

/// Dumps `w` and its descendants into a new images directory (`cryo dump ... EXTRA`, which
/// must succeed), waits until the whole tree is gone, and returns the directory.
pub fn dump_tree_and_reap(w: &mut Workload, extra: &[&str]) -> TempDir {
    let tree = descendants(w.pid);
    let images = images_dir();
    dump_ok(w, images.path(), extra);
    w.wait_killed_by_dump();
    assert!(reap_gone(&tree), "the dumped tree did not go away");
    images
}

/// Starts `cryo restore -D DIR -v 4 EXTRA...` without waiting for it.
pub fn restore_spawn(dir: &Path, extra: &[&str]) -> CryoProcess {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["restore", "-D", dir, "-v", "4"];
    args.extend_from_slice(extra);
    CryoProcess::spawn(&args)
}

/// Restores (attached) and runs the workload's check: returns the result line, and asserts
/// that `cryo restore` then exits with the workload's own status (0 on PASS).
pub fn restore_and_check(w: &Workload, dir: &Path) -> String {
    restore_and_check_with(w, dir, &[])
}

/// Copies a checkpoint directory (flat) into a new temp dir.
pub fn copy_images(src: &Path) -> TempDir {
    let dst = images_dir();
    for entry in fs::read_dir(src).expect("read images dir") {
        let entry = entry.expect("dir entry");
        if entry.file_type().expect("file type").is_file() {
            fs::copy(entry.path(), dst.path().join(entry.file_name())).expect("copy image");
        }
    }
    dst
}

/// A tmpfs mounted on a temp dir for the test; unmounted on Drop.
pub struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount(8) syntax, e.g. "1m"). Err carries mount's message.
    pub fn mount(size: &str) -> Result<Self, String> {
        let dir = TempDir::with_prefix("cryo-tmpfs-").map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cryo-test"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Self { dir })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

// ---- Helpers of tests/robust.rs and tests/soak.rs (signing, leaks) ----

/// `restore_and_check` with extra `cryo restore` arguments (e.g. `--sign-key FILE`).
pub fn restore_and_check_with(w: &Workload, dir: &Path, extra: &[&str]) -> String {
    check_restore(w, restore_spawn(dir, extra)).0
}

/// Has `w` check itself while `restore` (a `cryo restore` already started) runs; returns the
/// workload's result and cryo's output, asserting that cryo's exit status matches the result.
pub fn check_restore(w: &Workload, mut restore: CryoProcess) -> (String, Output) {
    let result = w.check_with(|| {
        restore
            .try_wait()
            .map(|s| format!("cryo restore exited ({s})\n{}", restore.describe()))
    });
    let out = restore.finish(TIMEOUT);
    assert_eq!(
        out.status.success(),
        result == "PASS",
        "restore exit status does not match the workload's result {result:?}\n{}",
        show_output("cryo restore", &out)
    );
    (result, out)
}

/// The fd table of PID: (fd, what it points to), in fd order. Empty if the process is gone.
pub fn fd_table(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let fd = e.file_name().to_str()?.parse().ok()?;
                    let target = fs::read_link(e.path()).ok()?;
                    Some((fd, target.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds
}

/// The mappings of PID as "start-end perms path" lines (no inode or device).
pub fn mappings(pid: i32) -> Vec<String> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5..).map(|p| p.join(" ")).unwrap_or_default();
            format!(
                "{} {} {}",
                f.first().unwrap_or(&""),
                f.get(1).unwrap_or(&""),
                path
            )
        })
        .collect()
}

/// The thread ids of PID.
pub fn threads(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.sort();
    tids
}

/// Each thread of PID with its CPU affinity (`Cpus_allowed_list` of its status), in TID order.
/// A dump moves the threads to its tracers' CPUs and must give them their own back.
pub fn cpu_affinities(pid: i32) -> Vec<(i32, String)> {
    threads(pid)
        .into_iter()
        .map(|tid| {
            let status =
                fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap_or("?")
                .trim()
                .to_string();
            (tid, cpus)
        })
        .collect()
}

/// The processes whose parent is PID (zombies included), from /proc/*/stat.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out.sort();
    out
}

/// The names in a directory, sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes a signing key file (0600) of `len` bytes derived from `seed`.
pub fn write_key(path: &Path, seed: u8, len: usize) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("create key file");
    f.write_all(&bytes).expect("write key file");
}

// ---- Process trees ---------------------------------------------------------------------

/// Every process of the tree rooted at `root` (from /proc, zombies included), the root first,
/// then in the order found.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                if let Ok(text) = fs::read_to_string(t.path().join("children")) {
                    out.extend(
                        text.split_whitespace()
                            .filter_map(|s| s.parse::<i32>().ok()),
                    );
                }
            }
        }
        i += 1;
    }
    out
}

/// Reaps what this (subreaper) test process adopted of `pids` and waits, up to 20 s, until
/// all of them are gone. True if they are.
pub fn reap_gone(pids: &[i32]) -> bool {
    wait_until(Duration::from_secs(20), || {
        for &p in pids {
            let _ = ptrace::wait(p, libc::WNOHANG);
        }
        pids.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    })
}
