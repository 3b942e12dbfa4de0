//! The network lock: from the moment a tree with established TCP connections is frozen until
//! the restored tree runs, every packet of those connections is dropped by a firewall rule
//! of cryo's, so the peer sees lost packets (and retransmits) instead of a reset from a kernel
//! that no longer knows the connection.
//!
//! The rules live in one table (nftables, `inet cryo-…`) or one chain jumped to from INPUT and
//! OUTPUT (iptables and ip6tables, `cryo-…`) of the namespace the sockets live in, named per
//! checkpoint and recorded in the inventory, so restore can find and remove exactly those.
//! Each connection is matched by its 4-tuple in both directions. A [`NetLock`] removes its
//! rules when dropped unless it was handed on with [`NetLock::keep`] (a dump that killed the
//! tree leaves them for restore).
//!
//! nftables locks are added, looked up and removed straight over nfnetlink (`sys::nft_ffi`),
//! each change one transaction: the `nft` tool took about 5 ms to add the table, 4 ms to list
//! it and 20 ms to delete it here, most of it its own start-up and ruleset cache; the kernel
//! answers in a fraction of a millisecond (closing the socket of a delete waits 5-15 ms for
//! the kernel to release it: a short-lived child does that close, see `nft_ffi`). Should
//! nfnetlink fail, the tool does the same (`nft SCRIPT`, run from a thread inside the
//! namespace). iptables locks are always made with the tools (`iptables -w`); their error
//! output is part of the error.

use super::Netns;
use crate::sys::net_ffi::InetAddr;
use crate::sys::nft_ffi;
use std::process::{Command, Stdio};

/// Errors of the network lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A firewall command failed.
    #[error("network lock {name}: {what}")]
    Command {
        /// The table or chain.
        name: String,
        /// The command and what it printed.
        what: String,
    },
    /// No firewall tool is available.
    #[error("network lock: {0}")]
    Unavailable(String),
    /// Entering the namespace failed.
    #[error("network lock {name}: entering the network namespace: {source}")]
    Netns {
        /// The table or chain.
        name: String,
        /// The failed call.
        #[source]
        source: crate::sys::SysError,
    },
    /// A fault injected by a test (`CRYO_FAULT`).
    #[error(transparent)]
    Fault(#[from] crate::fault::InjectedFault),
}

/// Packets carrying this mark (SO_MARK) pass the lock: the segments restore sends to a
/// half-closed connection on behalf of its peer.
pub const PASS_MARK: u32 = 0x6372_796f;

/// Which firewall keeps the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nftables, with the `nft` tool.
    Nftables,
    /// iptables and ip6tables.
    Iptables,
}

impl Backend {
    /// The name used in the inventory and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }

    /// Parses [`Backend::name`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nftables" => Some(Backend::Nftables),
            "iptables" => Some(Backend::Iptables),
            _ => None,
        }
    }

    /// nftables when `nft` is installed, else iptables when it is.
    pub fn detect() -> Result<Self, LockError> {
        if tool_exists("nft") {
            Ok(Backend::Nftables)
        } else if tool_exists("iptables") && tool_exists("ip6tables") {
            Ok(Backend::Iptables)
        } else {
            Err(LockError::Unavailable(
                "neither nft nor iptables is installed (Debian: apt-get install nftables); \
                 or choose --network-lock skip and keep the peers quiet yourself"
                    .into(),
            ))
        }
    }
}

fn tool_exists(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(name).is_file())
}

/// One TCP connection, as its local socket sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    /// The local address and port.
    pub local: InetAddr,
    /// The peer's address and port.
    pub peer: InetAddr,
}

/// The bytes of an address as the firewall sees it: an IPv4-mapped IPv6 address is IPv4 on
/// the wire (4 bytes).
fn wire_bytes(a: &InetAddr) -> &[u8] {
    match a.addr.len() {
        16 if a.addr[..10].iter().all(|&b| b == 0) && a.addr[10..12] == [0xff, 0xff] => {
            &a.addr[12..]
        }
        _ => &a.addr,
    }
}

/// The addresses of a connection in the family the firewall sees ([`wire_bytes`]): whether it
/// is IPv4, and its text.
fn wire(a: &InetAddr) -> (bool, String) {
    match wire_bytes(a) {
        b if b.len() == 4 => (
            true,
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        ),
        b => {
            let b: [u8; 16] = b.try_into().unwrap_or([0; 16]);
            (false, std::net::Ipv6Addr::from(b).to_string())
        }
    }
}

/// The keys of `conns` in the lock's sets (IPv4, IPv6), both directions of each.
fn lock_keys(conns: &[Conn]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for c in conns {
        let (l, p) = (wire_bytes(&c.local), wire_bytes(&c.peer));
        let keys = [
            nft_ffi::lock_key(l, c.local.port, p, c.peer.port),
            nft_ffi::lock_key(p, c.peer.port, l, c.local.port),
        ];
        if l.len() == 4 {
            v4.extend(keys);
        } else {
            v6.extend(keys);
        }
    }
    (v4, v6)
}

/// Firewall rules of one checkpoint in one network namespace.
#[derive(Debug)]
pub struct NetLock {
    backend: Backend,
    name: String,
    ns: Netns,
    armed: bool,
    /// The nfnetlink socket that added the rules, closed with the lock (see
    /// `nft_ffi::add_lock_table`).
    nl: Option<std::os::fd::OwnedFd>,
}

impl NetLock {
    /// A table/chain name for a checkpoint of `root_pid` taken now: short enough for an
    /// iptables chain (28 characters).
    pub fn fresh_name(root_pid: i32) -> String {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("cryo-{root_pid}-{:08x}", ms as u32)
    }

    /// Drops every packet of `conns` in `ns`, in both directions, with rules named `name`.
    pub fn lock(
        ns: Netns,
        backend: Backend,
        name: &str,
        conns: &[Conn],
    ) -> Result<NetLock, LockError> {
        let mut lock = NetLock {
            backend,
            name: name.to_string(),
            ns,
            armed: true,
            nl: None,
        };
        let res = match backend {
            Backend::Nftables => {
                let (keys4, keys6) = lock_keys(conns);
                match lock.nfnl(|n| nft_ffi::add_lock_table(n, PASS_MARK, &keys4, &keys6)) {
                    Ok(sock) => {
                        lock.nl = Some(sock);
                        Ok(())
                    }
                    Err(e) => {
                        // Nothing was added (one transaction): the tool tries.
                        tracing::debug!(lock = %lock.id(), error = %e, "nfnetlink failed; asking nft");
                        lock.nft(&lock.nft_script(conns), "adding the rules")
                    }
                }
            }
            Backend::Iptables => lock.ipt_lock(conns),
        };
        match res {
            Ok(()) => {
                tracing::info!(lock = %lock.id(), connections = conns.len(), "network locked");
                Ok(lock)
            }
            Err(e) => {
                // Whatever part was added goes (drop removes it).
                drop(lock);
                Err(e)
            }
        }
    }

    /// The lock named `id` (as [`NetLock::id`] gives it) in `ns`, if its rules are there.
    pub fn find(ns: Netns, id: &str) -> Result<Option<NetLock>, LockError> {
        let (b, name) = id.split_once(':').unwrap_or(("nftables", id));
        let backend = Backend::parse(b)
            .ok_or_else(|| LockError::Unavailable(format!("unknown lock kind in {id:?}")))?;
        let mut lock = NetLock {
            backend,
            name: name.to_string(),
            ns,
            armed: false,
            nl: None,
        };
        let present = match backend {
            Backend::Nftables => {
                match lock.nfnl(|n| nft_ffi::table_exists(nft_ffi::NFPROTO_INET, n)) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::debug!(lock = %lock.id(), error = %e, "nfnetlink lookup failed; asking nft");
                        lock.run_tool("nft", &["list", "table", "inet", name])
                            .is_ok()
                    }
                }
            }
            Backend::Iptables => lock.run_tool("iptables", &["-w", "-n", "-L", name]).is_ok(),
        };
        if !present {
            return Ok(None);
        }
        lock.armed = true;
        Ok(Some(lock))
    }

    /// `backend:name`, as recorded in the inventory.
    pub fn id(&self) -> String {
        format!("{}:{}", self.backend.name(), self.name)
    }

    /// Leaves the rules in place (for restore to remove) and returns [`NetLock::id`].
    pub fn keep(mut self) -> String {
        self.armed = false;
        self.id()
    }

    /// Removes the rules.
    pub fn unlock(mut self) -> Result<(), LockError> {
        self.armed = false;
        self.remove()?;
        tracing::info!(lock = %self.id(), "network unlocked");
        Ok(())
    }

    fn remove(&self) -> Result<(), LockError> {
        match self.backend {
            Backend::Nftables => {
                match self.nfnl(|n| nft_ffi::delete_table(nft_ffi::NFPROTO_INET, n)) {
                    Ok(sock) => {
                        // The rules are gone; the socket's close would still wait for the
                        // kernel to release them (see nft_ffi).
                        if let Err(e) = crate::sys::proc_ctl::close_in_child(sock) {
                            tracing::debug!(error = %e, "closing the nfnetlink socket here");
                        }
                        Ok(())
                    }
                    Err(e) => {
                        tracing::debug!(lock = %self.id(), error = %e, "nfnetlink delete failed; asking nft");
                        self.nft(
                            &format!("delete table inet {}\n", self.name),
                            "removing the rules",
                        )
                    }
                }
            }
            Backend::Iptables => self.ipt_unlock(),
        }
    }

    /// Runs an nfnetlink request about this lock's table in its namespace.
    fn nfnl<T: Send>(
        &self,
        f: impl FnOnce(&str) -> Result<T, crate::sys::SysError> + Send,
    ) -> Result<T, crate::sys::SysError> {
        let name = self.name.as_str();
        self.ns.run(|| f(name))?
    }

    fn nft_script(&self, conns: &[Conn]) -> String {
        let t = format!("inet {}", self.name);
        let mut s = format!("add table {t}\n");
        for (chain, hook) in [("input", "input"), ("output", "output")] {
            s += &format!(
                "add chain {t} {chain} {{ type filter hook {hook} priority -150 ; policy accept ; }}\n"
            );
        }
        s += &format!(
            "add set {t} conns4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service ; }}\n"
        );
        s += &format!(
            "add set {t} conns6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service ; }}\n"
        );
        for chain in ["input", "output"] {
            s += &format!("add rule {t} {chain} meta mark {PASS_MARK:#x} accept\n");
        }
        for chain in ["input", "output"] {
            s += &format!(
                "add rule {t} {chain} ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop\n"
            );
            s += &format!(
                "add rule {t} {chain} ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop\n"
            );
        }
        for c in conns {
            let ((v4, l), (_, p)) = (wire(&c.local), wire(&c.peer));
            let set = if v4 { "conns4" } else { "conns6" };
            let (lp, pp) = (c.local.port, c.peer.port);
            s += &format!(
                "add element {t} {set} {{ {l} . {lp} . {p} . {pp}, {p} . {pp} . {l} . {lp} }}\n"
            );
        }
        s
    }

    fn nft(&self, script: &str, what: &str) -> Result<(), LockError> {
        // The whole script as one argument: one transaction, as with -f, and measured here
        // several milliseconds faster than reading it from a pipe.
        self.run_tool("nft", &[script])
            .map_err(|e| LockError::Command {
                name: self.name.clone(),
                what: format!("{what}: {e}"),
            })
    }

    fn ipt_lock(&self, conns: &[Conn]) -> Result<(), LockError> {
        let n = self.name.as_str();
        let mark = format!("{PASS_MARK:#x}");
        for tool in ["iptables", "ip6tables"] {
            self.ipt(tool, &["-N", n])?;
            self.ipt(
                tool,
                &["-A", n, "-m", "mark", "--mark", &mark, "-j", "ACCEPT"],
            )?;
        }
        for c in conns {
            let ((v4, l), (_, p)) = (wire(&c.local), wire(&c.peer));
            let tool = if v4 { "iptables" } else { "ip6tables" };
            let (lp, pp) = (c.local.port.to_string(), c.peer.port.to_string());
            for (s, sp, d, dp) in [(&l, &lp, &p, &pp), (&p, &pp, &l, &lp)] {
                self.ipt(
                    tool,
                    &[
                        "-A", n, "-p", "tcp", "-s", s, "--sport", sp, "-d", d, "--dport", dp, "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        for tool in ["iptables", "ip6tables"] {
            for chain in ["INPUT", "OUTPUT"] {
                self.ipt(tool, &["-I", chain, "1", "-j", n])?;
            }
        }
        Ok(())
    }

    fn ipt_unlock(&self) -> Result<(), LockError> {
        let n = self.name.as_str();
        let mut first_err = None;
        for tool in ["iptables", "ip6tables"] {
            for chain in ["INPUT", "OUTPUT"] {
                // Every jump to the chain (a lock taken twice has two).
                while self.ipt(tool, &["-D", chain, "-j", n]).is_ok() {}
            }
            for args in [["-F", n], ["-X", n]] {
                if let Err(e) = self.ipt(tool, &args) {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn ipt(&self, tool: &str, args: &[&str]) -> Result<(), LockError> {
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        self.run_tool(tool, &all).map_err(|e| LockError::Command {
            name: self.name.clone(),
            what: e,
        })
    }

    /// Runs `tool args` in the namespace; the error says what it printed.
    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .ns
            .run(|| -> std::io::Result<std::process::Output> {
                Command::new(tool)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .output()
            })
            .map_err(|e| format!("entering the network namespace: {e}"))?
            .map_err(|e| format!("running {tool}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            err.trim()
        ))
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.remove() {
                tracing::warn!(lock = %self.id(), error = %e, "could not remove the network lock");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a4(b: [u8; 4], port: u16) -> InetAddr {
        InetAddr {
            family: libc::AF_INET,
            addr: b.to_vec(),
            port,
            ..Default::default()
        }
    }

    #[test]
    fn mapped_addresses_are_ipv4_on_the_wire() {
        assert_eq!(wire(&a4([10, 0, 0, 1], 80)), (true, "10.0.0.1".into()));
        let mut m = vec![0u8; 10];
        m.extend_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        let mapped = InetAddr {
            family: libc::AF_INET6,
            addr: m,
            port: 1,
            ..Default::default()
        };
        assert_eq!(wire(&mapped), (true, "127.0.0.1".into()));
        let mut v6 = vec![0u8; 16];
        v6[15] = 1;
        let v6 = InetAddr {
            family: libc::AF_INET6,
            addr: v6,
            port: 1,
            ..Default::default()
        };
        assert_eq!(wire(&v6), (false, "::1".into()));
    }

    #[test]
    fn names_fit_an_iptables_chain() {
        assert!(NetLock::fresh_name(4_194_304).len() <= 28);
    }

    /// Against the kernel: the `nft` tool's script, the fallback when nfnetlink fails, adds a
    /// lock that nfnetlink then finds, holding the connection's key, and removes.
    #[test]
    fn tool_fallback_adds_a_lock_netlink_finds_and_removes() {
        const TEST: &str = "tool_fallback_adds_a_lock_netlink_finds_and_removes";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP {TEST}: needs root");
            return;
        }
        if !tool_exists("nft") {
            eprintln!("SKIP {TEST}: no nft tool");
            return;
        }
        let conns = [Conn {
            local: a4([10, 1, 2, 3], 4321),
            peer: a4([10, 9, 8, 7], 80),
        }];
        let lock = NetLock {
            backend: Backend::Nftables,
            name: format!("cryo-tool-{}", std::process::id()),
            ns: Netns::current().unwrap(),
            armed: true,
            nl: None,
        };
        lock.nft(&lock.nft_script(&conns), "adding the rules")
            .unwrap();
        let out = std::process::Command::new("nft")
            .args(["list", "table", "inet", &lock.name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let found = NetLock::find(Netns::current().unwrap(), &lock.id()).unwrap();
        assert!(found.is_some(), "nfnetlink does not see {}", lock.id());
        drop(found.map(NetLock::keep));
        let id = lock.id();
        lock.unlock().unwrap();
        assert!(NetLock::find(Netns::current().unwrap(), &id)
            .unwrap()
            .is_none());
        for want in [
            "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop",
            "10.1.2.3 . 4321 . 10.9.8.7 . 80",
            "10.9.8.7 . 80 . 10.1.2.3 . 4321",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
