//! A few nftables requests sent straight over nfnetlink (`NETLINK_NETFILTER`): whether a table
//! exists, and deleting one. The `nft` tool does the same in about 4 ms (list) and 20 ms
//! (delete) here, nearly all of it the tool's own start-up and ruleset cache; the kernel
//! answers these in well under a millisecond. Everything else about the network lock still
//! goes through the tool (see `net::lock`).
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
    let mut m = vec![0u8; 16];
    m.push(family);
    m.push(0); // NFNETLINK_V0
    m.extend_from_slice(&res_id.to_be_bytes());
    for (kind, value) in attrs {
        let len = 4 + value.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(m.len().next_multiple_of(4), 0);
    }
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

/// Reads answers until the acknowledgement of message `seq`; returns its error code (0 or a
/// negative errno) and whether a message of type `want` came before it.
fn answer(sock: &OwnedFd, seq: u32, want: u16) -> SysResult<(i32, bool)> {
    let bad = || SysError::from_errno("nfnetlink answer", libc::EPROTO);
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = false;
    loop {
        // SAFETY: buf is a valid writable buffer.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = check("recv(nfnetlink)", n as libc::c_long)? as usize;
        let mut i = 0;
        while i + 16 <= n {
            let field = |at: usize, len: usize| buf.get(i + at..i + at + len).ok_or_else(bad);
            let len = u32::from_ne_bytes(field(0, 4)?.try_into().map_err(|_| bad())?) as usize;
            let kind = u16::from_ne_bytes(field(4, 2)?.try_into().map_err(|_| bad())?);
            let mseq = u32::from_ne_bytes(field(8, 4)?.try_into().map_err(|_| bad())?);
            if len < 16 || i + len > n {
                return Err(bad());
            }
            if kind == NLMSG_ERROR && mseq == seq {
                let code = i32::from_ne_bytes(field(16, 4)?.try_into().map_err(|_| bad())?);
                return Ok((code, seen));
            }
            if kind == NLMSG_ERROR {
                // The answer to another message of the batch (begin or end): an error there
                // is the batch's.
                let code = i32::from_ne_bytes(field(16, 4)?.try_into().map_err(|_| bad())?);
                if code != 0 {
                    return Ok((code, seen));
                }
            }
            if kind == want {
                seen = true;
            }
            if kind == NLMSG_DONE {
                return Err(bad());
            }
            i += len.next_multiple_of(4);
        }
    }
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
    match answer(&sock, 1, (SUBSYS_NFTABLES << 8) | MSG_NEWTABLE)? {
        (0, found) => Ok(found),
        (e, _) if -e == libc::ENOENT => Ok(false),
        (e, _) => Err(SysError::from_errno("nftables get table", -e)),
    }
}

/// Deletes the table `name` of `family` and everything in it, in one transaction.
pub fn delete_table(family: u8, name: &str) -> SysResult<()> {
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
    match answer(&sock, 2, u16::MAX)? {
        (0, _) => Ok(()),
        (e, _) => Err(SysError::from_errno("nftables delete table", -e)),
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
        delete_table(NFPROTO_INET, &name).unwrap();
        assert!(!table_exists(NFPROTO_INET, &name).unwrap());
        let err = delete_table(NFPROTO_INET, &name).unwrap_err();
        assert_eq!(err.errno, libc::ENOENT, "{err}");
    }
}
