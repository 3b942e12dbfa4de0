//! The nftables requests of cryo's network lock, sent straight over nfnetlink
//! (`NETLINK_NETFILTER`): adding the lock table with its chains, sets, rules and elements,
//! asking whether a table exists, and deleting one. The `nft` tool took about 5, 4 and 20 ms
//! for these here, most of it its start-up and ruleset cache; the kernel answers each in well
//! under a millisecond. One cost stays: closing a socket right after it committed a change
//! waits for the kernel to release the transaction (an RCU grace period, 5-15 ms here), so
//! [`add_lock_table`] and [`delete_table`] hand their socket back: the lock keeps the first
//! until its end, and has the second closed by a short-lived child
//! (`proc_ctl::close_in_child`).
//!
//! Messages: a netlink header, a `nfgenmsg` (family, version 0, resource id), then attributes.
//! Changes go in a batch (`NFNL_MSG_BATCH_BEGIN` ... `NFNL_MSG_BATCH_END`), which the kernel
//! applies as one transaction; each message asks for an acknowledgement.

use super::{check, SysError, SysResult};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: i32 = 12;
/// `NFNL_SUBSYS_NFTABLES`.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`, `NFNL_MSG_BATCH_END`.
const BATCH_BEGIN: u16 = 0x10;
const BATCH_END: u16 = 0x11;
/// `NFT_MSG_NEWTABLE`, `NFT_MSG_GETTABLE`, `NFT_MSG_DELTABLE`.
const MSG_NEWTABLE: u16 = 0;
const MSG_GETTABLE: u16 = 1;
const MSG_DELTABLE: u16 = 2;
/// `NFTA_TABLE_NAME`.
const TABLE_NAME: u16 = 1;
/// `NLMSG_ERROR`, `NLMSG_DONE`.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// How long to wait for the kernel's answer.
const ANSWER_TIMEOUT_S: libc::time_t = 5;

/// `NFPROTO_INET`: the family of cryo's lock table.
pub const NFPROTO_INET: u8 = 1;

/// One netlink message: header, nfgenmsg, attributes (each padded to 4 bytes).
fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[(u16, &[u8])],
) -> Vec<u8> {
    let a = attrs
        .iter()
        .fold(Attrs::default(), |a, (kind, value)| a.put(*kind, value));
    message_raw(kind, flags, seq, family, res_id, &a.0)
}

/// One netlink message with its attributes already encoded.
fn message_raw(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 16];
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// A table name as an attribute value (NUL-terminated).
fn name_attr(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// An nfnetlink socket of the calling thread's network namespace.
fn socket() -> SysResult<OwnedFd> {
    // SAFETY: plain syscall on integers.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    let fd = check("socket(NETLINK_NETFILTER)", fd as libc::c_long)? as i32;
    // SAFETY: fd was just created and is owned here only.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: ANSWER_TIMEOUT_S,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    check("setsockopt(SO_RCVTIMEO)", r as libc::c_long)?;
    Ok(sock)
}

/// Sends `bytes` to the kernel.
fn send(sock: &OwnedFd, bytes: &[u8]) -> SysResult<()> {
    // SAFETY: sockaddr_nl is plain data; zero means the kernel.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: bytes and kernel are valid for the sizes given.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    check("sendto(nfnetlink)", r as libc::c_long).map(drop)
}

/// Reads answers until every message of `seqs` is acknowledged; returns the first error code
/// (a negative errno, at once) or 0, and whether a message of type `want` came meanwhile.
fn answer(
    sock: &OwnedFd,
    seqs: std::ops::RangeInclusive<u32>,
    want: u16,
) -> SysResult<(i32, bool)> {
    let bad = || SysError::from_errno("nfnetlink answer", libc::EPROTO);
    let mut buf = vec![0u8; 64 << 10];
    let mut acked = std::collections::BTreeSet::new();
    let count = seqs.clone().count();
    let mut seen = false;
    while acked.len() < count {
        // SAFETY: buf is a valid writable buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = check("recv(nfnetlink)", n as libc::c_long)? as usize;
        let mut i = 0;
        while i + 16 <= n {
            let word = |at: usize| -> SysResult<[u8; 4]> {
                buf.get(i + at..i + at + 4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(bad)
            };
            let len = u32::from_ne_bytes(word(0)?) as usize;
            let kind = u16::from_ne_bytes([buf[i + 4], buf[i + 5]]);
            let seq = u32::from_ne_bytes(word(8)?);
            if len < 16 || i + len > n {
                return Err(bad());
            }
            match kind {
                // An error answers any message of the batch (begin and end included).
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(word(16)?);
                    if code != 0 {
                        return Ok((code, seen));
                    }
                    if seqs.contains(&seq) {
                        acked.insert(seq);
                    }
                }
                NLMSG_DONE => return Err(bad()),
                k if k == want => seen = true,
                _ => {}
            }
            i += len.next_multiple_of(4);
        }
    }
    Ok((0, seen))
}

/// Whether the table `name` of `family` exists (in the calling thread's network namespace).
pub fn table_exists(family: u8, name: &str) -> SysResult<bool> {
    let sock = socket()?;
    let name = name_attr(name);
    let kind = (SUBSYS_NFTABLES << 8) | MSG_GETTABLE;
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    send(
        &sock,
        &message(kind, flags, 1, family, 0, &[(TABLE_NAME, &name)]),
    )?;
    match answer(&sock, 1..=1, (SUBSYS_NFTABLES << 8) | MSG_NEWTABLE)? {
        (0, found) => Ok(found),
        (e, _) if -e == libc::ENOENT => Ok(false),
        (e, _) => Err(SysError::from_errno("nftables get table", -e)),
    }
}

/// Deletes the table `name` of `family` and everything in it, in one transaction. Returns the
/// socket, whose close waits for the kernel to release the transaction (see the module docs).
pub fn delete_table(family: u8, name: &str) -> SysResult<OwnedFd> {
    let sock = socket()?;
    let name = name_attr(name);
    let request = libc::NLM_F_REQUEST as u16;
    let mut batch = message(BATCH_BEGIN, request, 1, 0, SUBSYS_NFTABLES, &[]);
    batch.extend(message(
        (SUBSYS_NFTABLES << 8) | MSG_DELTABLE,
        request | libc::NLM_F_ACK as u16,
        2,
        family,
        0,
        &[(TABLE_NAME, &name)],
    ));
    batch.extend(message(BATCH_END, request, 3, 0, SUBSYS_NFTABLES, &[]));
    send(&sock, &batch)?;
    match answer(&sock, 2..=2, u16::MAX)? {
        (0, _) => Ok(sock),
        (e, _) => Err(SysError::from_errno("nftables delete table", -e)),
    }
}

/// `NLA_F_NESTED`.
const NESTED: u16 = 0x8000;
/// Message types (`NFT_MSG_*`).
const MSG_NEWCHAIN: u16 = 3;
const MSG_NEWRULE: u16 = 6;
const MSG_NEWSET: u16 = 9;
const MSG_NEWSETELEM: u16 = 12;
/// `NFT_REG32_00`: the first 32-bit register (concatenations fill consecutive ones).
const REG32_00: u32 = 8;
/// Verdicts.
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// `NFT_META_MARK`, `NFT_META_NFPROTO`, `NFT_META_L4PROTO`.
const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
/// `NFT_PAYLOAD_NETWORK_HEADER`, `NFT_PAYLOAD_TRANSPORT_HEADER`.
const NETWORK_HEADER: u32 = 1;
const TRANSPORT_HEADER: u32 = 2;
/// nft's type ids (only for `nft list`, the kernel ignores them): ipv4_addr, ipv6_addr,
/// inet_service; a concatenation is the ids shifted in 6 bits at a time.
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_SERVICE: u32 = 13;

/// Attributes being built (each padded to 4 bytes; nested ones flagged).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(mut self, kind: u16, value: &[u8]) -> Self {
        self.0
            .extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }
    fn str(self, kind: u16, s: &str) -> Self {
        self.put(kind, &name_attr(s))
    }
    fn be32(self, kind: u16, v: u32) -> Self {
        self.put(kind, &v.to_be_bytes())
    }
    fn nest(self, kind: u16, inner: Attrs) -> Self {
        self.put(kind | NESTED, &inner.0)
    }
}

/// One expression of a rule: its name and its data.
fn expr(name: &str, data: Attrs) -> Attrs {
    Attrs::default().str(1, name).nest(2, data)
}

/// `meta load KEY => reg`.
fn meta(key: u32, dreg: u32) -> Attrs {
    expr("meta", Attrs::default().be32(2, key).be32(1, dreg))
}

/// `cmp eq reg VALUE`.
fn cmp_eq(sreg: u32, value: &[u8]) -> Attrs {
    expr(
        "cmp",
        Attrs::default()
            .be32(1, sreg)
            .be32(2, 0)
            .nest(3, Attrs::default().put(1, value)),
    )
}

/// `payload load LEN @ BASE + OFFSET => reg`.
fn payload(base: u32, offset: u32, len: u32, dreg: u32) -> Attrs {
    expr(
        "payload",
        Attrs::default()
            .be32(1, dreg)
            .be32(2, base)
            .be32(3, offset)
            .be32(4, len),
    )
}

/// `lookup reg @set`.
fn lookup(set: &str, set_id: u32, sreg: u32) -> Attrs {
    expr(
        "lookup",
        Attrs::default().str(1, set).be32(2, sreg).be32(4, set_id),
    )
}

/// `immediate verdict`.
fn verdict(code: u32) -> Attrs {
    let v = Attrs::default().nest(2, Attrs::default().be32(1, code));
    expr("immediate", Attrs::default().be32(1, 0).nest(2, v))
}

/// A rule of `table`/`chain` made of `exprs`.
fn rule(table: &str, chain: &str, exprs: Vec<Attrs>) -> Attrs {
    let list = exprs
        .into_iter()
        .fold(Attrs::default(), |l, e| l.nest(1, e));
    Attrs::default().str(1, table).str(2, chain).nest(4, list)
}

/// The rule dropping what `set` lists: `meta nfproto V meta l4proto tcp
/// SADDR . tcp sport . DADDR . tcp dport @set drop`.
fn drop_rule(table: &str, chain: &str, v6: bool, set: &str, set_id: u32) -> Attrs {
    let (proto, alen, saddr, daddr) = if v6 {
        (libc::NFPROTO_IPV6 as u8, 16, 8, 24)
    } else {
        (libc::NFPROTO_IPV4 as u8, 4, 12, 16)
    };
    let words = alen / 4;
    let r = REG32_00;
    rule(
        table,
        chain,
        vec![
            meta(META_NFPROTO, r),
            cmp_eq(r, &[proto]),
            meta(META_L4PROTO, r),
            cmp_eq(r, &[libc::IPPROTO_TCP as u8]),
            payload(NETWORK_HEADER, saddr, alen, r),
            payload(TRANSPORT_HEADER, 0, 2, r + words),
            payload(NETWORK_HEADER, daddr, alen, r + words + 1),
            payload(TRANSPORT_HEADER, 2, 2, r + 2 * words + 1),
            lookup(set, set_id, r),
            verdict(NF_DROP),
        ],
    )
}

/// One direction of a connection as a key of the lock's sets: source address, source port,
/// destination address, destination port, each port in a 4-byte register (zero padded).
pub fn lock_key(src: &[u8], sport: u16, dst: &[u8], dport: u16) -> Vec<u8> {
    let mut k = src.to_vec();
    k.extend_from_slice(&sport.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k.extend_from_slice(dst);
    k.extend_from_slice(&dport.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// Creates cryo's lock table `name` (family inet) in one transaction, the same rules the
/// `nft` script in `net::lock` adds: chains on input and output (priority -150, policy
/// accept), packets carrying `pass_mark` accepted, and packets whose 4-tuple is in
/// `conns4`/`conns6` (keys from [`lock_key`], both directions) dropped.
///
/// Returns the socket, for the caller to close later: closing a socket that just committed a
/// change waits for the kernel to release the transaction (an RCU grace period, 5 to 15 ms
/// here), which a close at the end of the dump no longer does.
pub fn add_lock_table(
    name: &str,
    pass_mark: u32,
    conns4: &[Vec<u8>],
    conns6: &[Vec<u8>],
) -> SysResult<OwnedFd> {
    let sock = socket()?;
    let request = libc::NLM_F_REQUEST as u16;
    let create = request | (libc::NLM_F_ACK | libc::NLM_F_CREATE) as u16;
    let msg = |kind: u16, flags: u16, seq: u32, attrs: Attrs| {
        message_raw(
            (SUBSYS_NFTABLES << 8) | kind,
            flags,
            seq,
            NFPROTO_INET,
            0,
            &attrs.0,
        )
    };
    let mut seq = 1u32;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut batch = message(BATCH_BEGIN, request, 1, 0, SUBSYS_NFTABLES, &[]);
    batch.extend(msg(
        MSG_NEWTABLE,
        create,
        next(),
        Attrs::default().str(1, name),
    ));
    for (chain, hook) in [
        ("input", libc::NF_INET_LOCAL_IN),
        ("output", libc::NF_INET_LOCAL_OUT),
    ] {
        let hook = Attrs::default()
            .be32(1, hook as u32)
            .be32(2, (-150i32) as u32);
        let attrs = Attrs::default()
            .str(1, name)
            .str(3, chain)
            .nest(4, hook)
            .be32(5, NF_ACCEPT)
            .str(7, "filter");
        batch.extend(msg(MSG_NEWCHAIN, create, next(), attrs));
    }
    let sets = [
        ("conns4", 1u32, TYPE_IPV4, 16u32, conns4),
        ("conns6", 2u32, TYPE_IPV6, 40u32, conns6),
    ];
    for (set, id, addr_type, key_len, _) in &sets {
        let key_type = [*addr_type, TYPE_SERVICE, *addr_type, TYPE_SERVICE]
            .iter()
            .fold(0u32, |t, &s| (t << 6) | s);
        let attrs = Attrs::default()
            .str(1, name)
            .str(2, set)
            .be32(3, 0)
            .be32(4, key_type)
            .be32(5, *key_len)
            .be32(10, *id);
        batch.extend(msg(MSG_NEWSET, create, next(), attrs));
    }
    let append = create | libc::NLM_F_APPEND as u16;
    for chain in ["input", "output"] {
        let pass = rule(
            name,
            chain,
            vec![
                meta(META_MARK, REG32_00),
                cmp_eq(REG32_00, &pass_mark.to_ne_bytes()),
                verdict(NF_ACCEPT),
            ],
        );
        batch.extend(msg(MSG_NEWRULE, append, next(), pass));
    }
    for chain in ["input", "output"] {
        batch.extend(msg(
            MSG_NEWRULE,
            append,
            next(),
            drop_rule(name, chain, false, "conns4", 1),
        ));
        batch.extend(msg(
            MSG_NEWRULE,
            append,
            next(),
            drop_rule(name, chain, true, "conns6", 2),
        ));
    }
    for (set, id, _, _, keys) in &sets {
        if keys.is_empty() {
            continue;
        }
        let elems = keys.iter().fold(Attrs::default(), |l, k| {
            let key = Attrs::default().nest(1, Attrs::default().put(1, k));
            l.nest(1, key)
        });
        let attrs = Attrs::default()
            .str(1, name)
            .str(2, set)
            .nest(3, elems)
            .be32(4, *id);
        batch.extend(msg(MSG_NEWSETELEM, create, next(), attrs));
    }
    let last = seq;
    batch.extend(message(
        BATCH_END,
        request,
        last + 1,
        0,
        SUBSYS_NFTABLES,
        &[],
    ));
    send(&sock, &batch)?;
    match answer(&sock, 2..=last, u16::MAX)?.0 {
        0 => Ok(sock),
        e => Err(SysError::from_errno("nftables add the lock table", -e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_laid_out_as_nfnetlink_wants() {
        let m = message(0x0a01, 5, 7, NFPROTO_INET, 0, &[(TABLE_NAME, b"ab\0")]);
        // 16 header + 4 nfgenmsg + 4 attribute header + 3 value, padded to 28.
        assert_eq!(m.len(), 28);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 0x0a01);
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[NFPROTO_INET, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes(m[20..22].try_into().unwrap()), 7);
        assert_eq!(
            u16::from_ne_bytes(m[22..24].try_into().unwrap()),
            TABLE_NAME
        );
        assert_eq!(&m[24..28], b"ab\0\0");
        // The batch markers carry the subsystem, big-endian.
        let b = message(BATCH_BEGIN, 1, 1, 0, SUBSYS_NFTABLES, &[]);
        assert_eq!(&b[18..20], &[0, 10]);
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    /// Against the kernel: a table made with the `nft` tool is seen, deleted, then gone.
    #[test]
    fn finds_and_deletes_a_table() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP finds_and_deletes_a_table: needs root");
            return;
        }
        let name = format!("cryo-nfnl-test-{}", std::process::id());
        let made = std::process::Command::new("nft")
            .args(["add", "table", "inet", &name])
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("SKIP finds_and_deletes_a_table: the nft tool cannot add a table here");
            return;
        }
        assert!(table_exists(NFPROTO_INET, &name).unwrap());
        drop(delete_table(NFPROTO_INET, &name).unwrap());
        assert!(!table_exists(NFPROTO_INET, &name).unwrap());
        let err = delete_table(NFPROTO_INET, &name).unwrap_err();
        assert_eq!(err.errno, libc::ENOENT, "{err}");
    }

    /// The lock table added over nfnetlink reads back, through the `nft` tool, as the rules
    /// and elements the tool's own script (`net::lock`) makes: same meaning, byte for byte.
    #[test]
    fn lock_table_reads_back_as_nft_writes_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP lock_table_reads_back_as_nft_writes_it: needs root");
            return;
        }
        let have_nft = std::process::Command::new("nft")
            .args(["--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_nft {
            eprintln!("SKIP lock_table_reads_back_as_nft_writes_it: no nft tool to read it back");
            return;
        }
        let name = format!("cryo-nfnl-lock-{}", std::process::id());
        let k4 = lock_key(&[10, 1, 2, 3], 4321, &[10, 9, 8, 7], 80);
        let mut a6 = [0u8; 16];
        a6[15] = 1;
        let mut b6 = [0u8; 16];
        b6[0] = 0xfd;
        b6[15] = 2;
        let k6 = lock_key(&a6, 5555, &b6, 443);
        let sock = add_lock_table(&name, 0x6372_796f, &[k4], &[k6]).unwrap();
        let out = std::process::Command::new("nft")
            .args(["list", "table", "inet", &name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let _ = delete_table(NFPROTO_INET, &name);
        drop(sock);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let squash = |t: &str| t.split_whitespace().collect::<Vec<_>>().join(" ");
        let text = squash(&text);
        for want in [
            "type filter hook input priority mangle; policy accept;",
            "type filter hook output priority mangle; policy accept;",
            "meta mark 0x6372796f accept",
            "ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop",
            "ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop",
            "type ipv4_addr . inet_service . ipv4_addr . inet_service",
            "type ipv6_addr . inet_service . ipv6_addr . inet_service",
            "10.1.2.3 . 4321 . 10.9.8.7 . 80",
            "::1 . 5555 . fd00::2 . 443",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
