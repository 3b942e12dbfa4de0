//! Network sockets and established TCP connections (issue 5), end to end between test hosts:
//! two network namespaces joined by a veth pair. A server in host A holds a listener and
//! established connections to clients in host B (which are not dumped) and one to a child
//! of its own; it is dumped with `--tcp-established`, dies, and is restored into host A
//! (`--join-ns`) while the clients keep streaming. Every byte both ways is checked by both
//! ends, and after every test no firewall rule of cryo's is left in the namespace.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Two test hosts: network namespaces A and B joined by a veth pair, with IPv4 10.77.N.1/.2
/// and IPv6 fd77:N::1/::2. Dropping it removes both namespaces.
struct Hosts {
    a: String,
    b: String,
    n: u32,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `tool` is installed (in PATH or an sbin directory).
fn have(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(tool).is_file());
    found
}

impl Hosts {
    /// Makes the hosts, or reports a skip and returns None. The firewall tools the network
    /// lock runs must be installed (scripts/test.sh installs them).
    fn new(test: &str) -> Option<Self> {
        for tool in ["ip", "nft", "iptables", "ip6tables"] {
            if !have(tool) {
                skip(
                    test,
                    &format!(
                        "{tool} is not installed (apt-get install iproute2 nftables iptables)"
                    ),
                );
                return None;
            }
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = (std::process::id() % 100) + 100 + NEXT.fetch_add(1, Ordering::Relaxed);
        let h = Hosts {
            a: format!("cryo-t{n}a"),
            b: format!("cryo-t{n}b"),
            n,
        };
        let (va, vb) = (format!("cv{n}a"), format!("cv{n}b"));
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &h.a])?;
            ip(&["netns", "add", &h.b])?;
            ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])?;
            ip(&["link", "set", &va, "netns", &h.a])?;
            ip(&["link", "set", &vb, "netns", &h.b])?;
            for (ns, dev, last) in [(&h.a, &va, 1), (&h.b, &vb, 2)] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.77.{n}.{last}/24"),
                    "dev",
                    dev,
                ])?;
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("fd77:{n}::{last}/64"),
                    "dev",
                    dev,
                    "nodad",
                ])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            skip(
                test,
                &format!("cannot make network namespaces as test hosts: {e}"),
            );
            return None;
        }
        // The firewall the network lock uses must work in this kernel.
        for cmd in [
            &["nft", "list", "tables"][..],
            &["iptables", "-w", "-n", "-L"][..],
        ] {
            let ok = Command::new("ip")
                .args(["netns", "exec", &h.a])
                .args(cmd)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                skip(test, &format!("`{}` does not work here", cmd.join(" ")));
                return None;
            }
        }
        Some(h)
    }

    fn path(ns: &str) -> String {
        format!("/run/netns/{ns}")
    }

    fn addr(&self, v6: bool, host: u32) -> String {
        if v6 {
            format!("fd77:{}::{host}", self.n)
        } else {
            format!("10.77.{}.{host}", self.n)
        }
    }

    /// Firewall rules of cryo's in host A (nftables tables and iptables chains).
    fn cryo_rules(&self) -> String {
        let mut found = String::new();
        for cmd in [
            vec!["nft", "list", "tables"],
            vec!["iptables-save"],
            vec!["ip6tables-save"],
        ] {
            let out = Command::new("ip")
                .args(["netns", "exec", &self.a])
                .args(&cmd)
                .output();
            if let Ok(o) = out {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if line.contains("cryo-") {
                        found += line;
                        found += "\n";
                    }
                }
            }
        }
        found
    }

    fn assert_no_rules(&self, when: &str) {
        let r = self.cryo_rules();
        assert!(r.is_empty(), "{when}: cryo's firewall rules remain:\n{r}");
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}

/// The client program in host B, killed if the test ends early.
struct Client {
    child: Option<Child>,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Client {
    /// Runs `bin args` (a client in host B), its output to a file.
    fn spawn(bin: &std::path::Path, args: &[&str]) -> Self {
        let dir = tempfile::TempDir::with_prefix("cryo-net-client-").expect("tempdir");
        let out = dir.path().join("out");
        let f = std::fs::File::create(&out).expect("client out");
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .spawn()
            .expect("start client");
        Client {
            child: Some(child),
            out,
            _dir: dir,
        }
    }

    /// net_tcp_client in host B: `conns` connections streaming `bytes` each way.
    fn start(
        bin: &std::path::Path,
        hosts: &Hosts,
        v6: bool,
        port: u16,
        conns: u32,
        bytes: u64,
    ) -> Self {
        Self::spawn(
            bin,
            &[
                Hosts::path(&hosts.b).as_str(),
                if v6 { "6" } else { "4" },
                &hosts.addr(v6, 1),
                &port.to_string(),
                &conns.to_string(),
                &bytes.to_string(),
                // Reading starts this many seconds after each connection is made: well
                // after the dump, so the server's send queues are still full when it is
                // frozen.
                "6",
            ],
        )
    }

    /// Waits for the client's verdict.
    fn finish(mut self) -> (bool, String) {
        let mut child = self.child.take().expect("client");
        let ok = wait_until(TIMEOUT, || matches!(child.try_wait(), Ok(Some(_))));
        if !ok {
            let _ = child.kill();
        }
        let status = child.wait().expect("wait client");
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        (ok && status.success(), text.trim().to_string())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs cryo with extra environment, to completion.
fn cryo_output_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cryo"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run cryo")
}

/// The common start of a test between hosts: root, the serial lock, the hosts (or a skip).
fn begin(test: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Hosts)> {
    if !require_root(test) {
        return None;
    }
    let g = serial();
    Hosts::new(test).map(|h| (g, h))
}

/// `cryo show -D DIR` as text.
fn show_text(dir: &std::path::Path) -> String {
    let out = cryo_output(&["show", "-D", dir.to_str().expect("utf-8 path")], TIMEOUT);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const BYTES: u64 = 4 << 20;
const PORT: u16 = 7000;

/// Starts the server in host A with clients in host B; returns once its queues are full.
fn start_pair(hosts: &Hosts, v6: bool) -> (Workload, Client) {
    start_pair_on(hosts, v6, &hosts.addr(v6, 1), v6)
}

/// Starts the server in host A listening on `addr` (IPv6 if `v6`) and clients in host B over
/// IPv6 or IPv4 (`client_v6`); returns once the server's queues are full.
fn start_pair_on(hosts: &Hosts, v6: bool, addr: &str, client_v6: bool) -> (Workload, Client) {
    let server = workload_bin("net", "net_tcp_server").expect("workloads");
    let client_bin = workload_bin("net", "net_tcp_client").expect("workloads");
    let client = Client::start(&client_bin, hosts, client_v6, PORT, 3, BYTES);
    let w = Workload::start(
        &server,
        &[
            &Hosts::path(&hosts.a),
            if v6 { "6" } else { "4" },
            addr,
            &PORT.to_string(),
            "3",
            &BYTES.to_string(),
        ],
    );
    (w, client)
}

/// Restores into host A (`--join-ns`) and has the server check itself: its result and
/// cryo's output.
fn restore_on_a(hosts: &Hosts, w: &Workload, dir: &std::path::Path) -> (String, Output) {
    let ns = format!("net:{}", Hosts::path(&hosts.a));
    let mut restore = restore_spawn(dir, &["--join-ns", &ns]);
    let result = w.check_with(|| {
        restore
            .try_wait()
            .filter(|s| !s.success())
            .map(|s| format!("cryo restore failed ({s})\n{}", restore.describe()))
    });
    (result, restore.finish(TIMEOUT))
}

/// Restores into host A, has the server check itself and the client report.
fn restore_and_finish(hosts: &Hosts, w: &Workload, dir: &std::path::Path, client: Client) {
    let (result, out) = restore_on_a(hosts, w, dir);
    let (client_ok, client_text) = client.finish();
    assert_eq!(
        result,
        "PASS",
        "server: {result}\n{}",
        show_output("cryo restore", &out)
    );
    assert!(client_ok, "client: {client_text}");
    assert!(
        out.status.success(),
        "{}",
        show_output("cryo restore", &out)
    );
}

/// How a server and its clients meet.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
    /// A dual-stack IPv6 listener on `::` with IPv4 clients (v4-mapped connections).
    Dual,
}

fn tcp_roundtrip(test: &str, family: Family, extra_dump: &[&str]) {
    let Some((_g, hosts)) = begin(test) else {
        return;
    };
    let (mut w, client) = match family {
        Family::V4 => start_pair(&hosts, false),
        Family::V6 => start_pair(&hosts, true),
        Family::Dual => start_pair_on(&hosts, true, "::", false),
    };
    let dir = images_dir();
    let mut args = vec!["--tcp-established"];
    args.extend_from_slice(extra_dump);
    let tree = descendants(w.pid);
    dump_ok(&w, dir.path(), &args);
    w.wait_killed_by_dump();
    assert!(reap_gone(&tree), "the dumped tree did not go away");
    assert!(
        !hosts.cryo_rules().is_empty(),
        "no network lock is held between dump and restore"
    );
    // What was caught: unread data and unacknowledged data in the server's connections.
    let text = show_text(dir.path());
    assert!(text.contains("LISTEN"), "show lists the listener:\n{text}");
    if matches!(family, Family::Dual) {
        assert!(
            text.contains("::ffff:10.77."),
            "IPv4 clients appear as v4-mapped peers:\n{text}"
        );
    }
    let conns: Vec<&str> = text.lines().filter(|l| l.contains("ESTABLISHED")).collect();
    assert_eq!(
        conns.len(),
        5,
        "4 connections in the server, 1 in its child:\n{text}"
    );
    for c in &conns {
        assert!(
            !c.contains("recv queue 0 bytes") && !c.contains("send queue 0 bytes"),
            "both queues hold data at dump: {c}"
        );
    }
    restore_and_finish(&hosts, &w, dir.path(), client);
    hosts.assert_no_rules("after restore");
}

#[test]
fn tcp_connections_survive_dump_and_restore() {
    tcp_roundtrip("tcp_connections_survive_dump_and_restore", Family::V4, &[]);
}

#[test]
fn tcp6_connections_survive_with_iptables_lock() {
    tcp_roundtrip(
        "tcp6_connections_survive_with_iptables_lock",
        Family::V6,
        &["--network-lock", "iptables"],
    );
}

#[test]
fn dual_stack_listener_with_ipv4_clients() {
    tcp_roundtrip("dual_stack_listener_with_ipv4_clients", Family::Dual, &[]);
}

#[test]
fn established_connection_refused_without_the_flag() {
    let test = "established_connection_refused_without_the_flag";
    let Some((_g, hosts)) = begin(test) else {
        return;
    };
    let (w, client) = start_pair(&hosts, false);
    let dir = images_dir();
    let out = dump(&w, dir.path(), &[]);
    assert!(
        !out.status.success(),
        "dump succeeded without --tcp-established"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("established TCP connection") && err.contains("--tcp-established"),
        "the refusal names the connection and the flag: {err}"
    );
    hosts.assert_no_rules("after a refused dump");
    // The server carries on: streams complete, then it checks itself.
    assert_eq!(w.check(), "PASS", "{}", w.logs());
    let (ok, text) = client.finish();
    assert!(ok, "client: {text}");
}

#[test]
fn leave_running_keeps_connections_and_removes_the_lock() {
    let test = "leave_running_keeps_connections_and_removes_the_lock";
    let Some((_g, hosts)) = begin(test) else {
        return;
    };
    let (w, client) = start_pair(&hosts, false);
    let dir = images_dir();
    dump_ok(&w, dir.path(), &["--tcp-established", "-R"]);
    hosts.assert_no_rules("after dump --leave-running");
    assert_eq!(w.check(), "PASS", "{}", w.logs());
    let (ok, text) = client.finish();
    assert!(ok, "client: {text}");
}

#[test]
fn failed_dumps_and_restores_leave_connections_working() {
    let test = "failed_dumps_and_restores_leave_connections_working";
    if !require_root(test) {
        return;
    }
    if !cfg!(debug_assertions) {
        skip(test, "fault injection needs a debug build of cryo");
        return;
    }
    let _g = serial();
    let Some(hosts) = Hosts::new(test) else {
        return;
    };
    let (mut w, client) = start_pair(&hosts, false);
    for point in cryo::fault::NET_POINTS
        .iter()
        .filter(|p| p.starts_with("dump:"))
    {
        let dir = images_dir();
        let pid = w.pid.to_string();
        let out = cryo_output_env(
            &[
                "dump",
                "-t",
                &pid,
                "-D",
                dir.path().to_str().unwrap(),
                "--tcp-established",
            ],
            &[("CRYO_FAULT", point)],
        );
        assert!(!out.status.success(), "{point}: dump succeeded");
        assert!(w.original_running(), "{point}: the server died");
        hosts.assert_no_rules(point);
    }
    let dir = images_dir();
    let tree = descendants(w.pid);
    dump_ok(&w, dir.path(), &["--tcp-established"]);
    w.wait_killed_by_dump();
    assert!(reap_gone(&tree), "the dumped tree did not go away");
    let ns = format!("net:{}", Hosts::path(&hosts.a));
    for point in cryo::fault::NET_POINTS
        .iter()
        .filter(|p| p.starts_with("restore:"))
    {
        let out = cryo_output_env(
            &[
                "restore",
                "-d",
                "-D",
                dir.path().to_str().unwrap(),
                "--join-ns",
                &ns,
            ],
            &[("CRYO_FAULT", point)],
        );
        assert!(!out.status.success(), "{point}: restore succeeded");
        assert!(
            reap_gone(&tree),
            "{point}: a failed restore left the server's tree behind"
        );
        assert!(
            !hosts.cryo_rules().is_empty(),
            "{point}: a failed restore removed the dump's lock"
        );
    }
    restore_and_finish(&hosts, &w, dir.path(), client);
    hosts.assert_no_rules("after restore");
}

fn udp_roundtrip(test: &str, v6: bool) {
    let Some((_g, hosts)) = begin(test) else {
        return;
    };
    let bin = workload_bin("net", "net_udp").expect("workloads");
    let fam = if v6 { "6" } else { "4" };
    let (a, b) = (hosts.addr(v6, 1), hosts.addr(v6, 2));
    let mark_dir = tempfile::TempDir::with_prefix("cryo-net-udp-").expect("tempdir");
    let mark = mark_dir.path().join("bound").display().to_string();
    let host_b = Hosts::path(&hosts.b);
    let client = Client::spawn(&bin, &["client", &host_b, fam, &a, &b, "7100", &mark]);
    // The client sends once the server is bound; the server waits until they are queued.
    let host_a = Hosts::path(&hosts.a);
    let mut w = Workload::start(&bin, &["server", &host_a, fam, &a, &b, "7100", &mark]);
    let dir = images_dir();
    dump_ok(&w, dir.path(), &[]);
    w.wait_killed_by_dump();
    let text = show_text(dir.path());
    assert!(
        text.contains("5 datagrams queued") && text.contains("3 datagrams queued"),
        "show lists the queued datagrams:\n{text}"
    );
    restore_and_finish(&hosts, &w, dir.path(), client);
    hosts.assert_no_rules("after a UDP restore");
}

#[test]
fn udp_sockets_keep_queued_datagrams() {
    udp_roundtrip("udp_sockets_keep_queued_datagrams", false);
}

#[test]
fn udp6_sockets_keep_queued_datagrams() {
    udp_roundtrip("udp6_sockets_keep_queued_datagrams", true);
}

#[test]
fn raw_packet_and_netlink_sockets_work_after_restore() {
    let Some((_g, hosts)) = begin("raw_packet_and_netlink_sockets_work_after_restore") else {
        return;
    };
    let bin = workload_bin("net", "net_misc").expect("workloads");
    let mut w = Workload::start(&bin, &[&Hosts::path(&hosts.a)]);
    let dir = images_dir();
    dump_ok(&w, dir.path(), &[]);
    w.wait_killed_by_dump();
    let text = show_text(dir.path());
    for want in [
        "raw4",
        "packet",
        "netlink protocol 0",
        "udp4",
        "SO_BROADCAST=1",
    ] {
        assert!(text.contains(want), "show lacks {want}:\n{text}");
    }
    let (result, out) = restore_on_a(&hosts, &w, dir.path());
    assert_eq!(result, "PASS", "{}", show_output("cryo restore", &out));
}

#[test]
fn half_closed_connections_survive() {
    let Some((_g, hosts)) = begin("half_closed_connections_survive") else {
        return;
    };
    let bin = workload_bin("net", "net_tcp_halfclose").expect("workloads");
    let a = hosts.addr(false, 1);
    let (host_a, host_b) = (Hosts::path(&hosts.a), Hosts::path(&hosts.b));
    let client = Client::spawn(&bin, &["client", &host_b, "4", &a, "7200"]);
    let mut w = Workload::start(&bin, &["server", &host_a, "4", &a, "7200"]);
    let dir = images_dir();
    dump_ok(&w, dir.path(), &["--tcp-established"]);
    w.wait_killed_by_dump();
    let text = show_text(dir.path());
    for st in ["CLOSE_WAIT", "FIN_WAIT2", "FIN_WAIT1"] {
        assert!(text.contains(st), "show lists a {st} connection:\n{text}");
    }
    restore_and_finish(&hosts, &w, dir.path(), client);
    hosts.assert_no_rules("after restoring half-closed connections");
}

#[test]
fn tcp_close_restores_connections_closed_and_unlocks() {
    let test = "tcp_close_restores_connections_closed_and_unlocks";
    let Some((_g, hosts)) = begin(test) else {
        return;
    };
    let (mut w, client) = start_pair(&hosts, false);
    let dir = images_dir();
    let tree = descendants(w.pid);
    dump_ok(&w, dir.path(), &["--tcp-established"]);
    w.wait_killed_by_dump();
    assert!(reap_gone(&tree), "the dumped tree did not go away");
    let ns = format!("net:{}", Hosts::path(&hosts.a));
    let out = cryo_output(
        &[
            "restore",
            "-d",
            "-D",
            dir.path().to_str().unwrap(),
            "--join-ns",
            &ns,
            "--tcp-close",
        ],
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        show_output("restore --tcp-close", &out)
    );
    hosts.assert_no_rules("after restore --tcp-close");
    // The server runs with its listener and no connection.
    let ss = Command::new("ip")
        .args(["netns", "exec", &hosts.a, "ss", "-Htan"])
        .output()
        .expect("ss");
    let text = String::from_utf8_lossy(&ss.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("LISTEN") && l.contains(":7000")),
        "the listener is back:\n{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("ESTAB")),
        "no connection is restored with --tcp-close:\n{text}"
    );
    // The clients' connections were given up: they see them fail, not hang.
    let (ok, ctext) = client.finish();
    assert!(!ok, "the client should see its connections fail: {ctext}");
}

#[test]
fn skip_in_flight_leaves_out_connections_waiting_to_be_accepted() {
    let test = "skip_in_flight_leaves_out_connections_waiting_to_be_accepted";
    if !require_root(test) {
        return;
    }
    let _g = serial();
    // In cryo's own network namespace, on loopback: a listener with a connection waiting to
    // be accepted, whose connecting end is in the same process.
    let bin = workload_bin("net", "fd_refused").expect("workloads");
    let mut w = Workload::start(&bin, &["inet"]);
    let dir = images_dir();
    let out = dump(&w, dir.path(), &["--tcp-established"]);
    assert!(
        !out.status.success(),
        "a pending connection must refuse the dump"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--skip-in-flight"),
        "the refusal names the flag: {err}"
    );
    dump_ok(&w, dir.path(), &["--tcp-established", "--skip-in-flight"]);
    w.wait_killed_by_dump();
    assert_eq!(restore_and_check(&w, dir.path()), "PASS");
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&tables.stdout);
    assert!(
        !text.contains("cryo-"),
        "cryo's lock remains in cryo's namespace:\n{text}"
    );
}
