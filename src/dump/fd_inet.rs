//! Network sockets at dump: IPv4/IPv6 (TCP, UDP, raw), AF_PACKET and AF_NETLINK.
//!
//! Everything is read from a pidfd_getfd copy of the socket (the same socket): family, type
//! and protocol, bound and peer addresses, TCP state and listen backlog (TCP_INFO), the
//! options a program sets (every option of a fixed list whose value differs from a fresh
//! socket of the same kind, kept as raw getsockopt bytes), and queued UDP datagrams with
//! their senders (MSG_PEEK at a moving SO_PEEK_OFF, so nothing is consumed).
//!
//! Established TCP connections need `--tcp-established` and are read in two steps: while
//! collecting fds only their addresses (so the network lock can be taken first), then
//! [`repair`] puts each socket in TCP repair mode (the kernel then neither sends nor
//! answers anything on it) and reads its sequence numbers, both queues (peeked), options and
//! window. The returned [`Repaired`] keeps copies of those sockets: dropping it takes them
//! out of repair mode (a failed dump, `--leave-running`); [`Repaired::close_quietly`] closes
//! them still in repair mode, which tears the connection down without a packet once the
//! dumped tree is dead.
//!
//! Half-closed connections (FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK) are dumped like established
//! ones; a FIN counts one sequence number, not data, and is left out of the queue sizes.
//!
//! Refused, naming the socket: connections being set up (SYN_SENT/SYN_RECV) or closing on
//! both sides (CLOSING, TIME_WAIT), a listener with connections waiting to be accepted (they would be reset),
//! established connections without `--tcp-established`, packet sockets with mmap rings.
//! Queued data of raw, packet and netlink sockets is not saved (like packets lost on the
//! wire); the dump logs how much.

use super::files::FdRef;
use super::DumpError;
use crate::net::lock::Conn;
use crate::proto::{
    fd_entry::State, Datagram, FdEntry, InetAddr, InetSocketState, NetlinkSocketState,
    PacketSocketState, SockOpt, TcpConnection,
};
use crate::sys::net_ffi::{self as net, tcp};
use crate::sys::{files_ffi as ffi, proc_ctl};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// TCP states (tcpi_state).
pub const TCP_ESTABLISHED: u32 = 1;
/// An unconnected TCP socket.
pub const TCP_CLOSE: u32 = 7;
/// A listening TCP socket.
pub const TCP_LISTEN: u32 = 10;
/// Our FIN sent, not acknowledged.
pub const TCP_FIN_WAIT1: u32 = 4;
/// Our FIN sent and acknowledged; the peer may still send.
pub const TCP_FIN_WAIT2: u32 = 5;
/// The peer's FIN received; we may still send.
pub const TCP_CLOSE_WAIT: u32 = 8;
/// Both FINs, ours not acknowledged.
pub const TCP_LAST_ACK: u32 = 9;

/// States of a connection cryo rebuilds with TCP repair: established and half-closed.
pub fn is_connection(state: u32) -> bool {
    matches!(
        state,
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_CLOSE_WAIT | TCP_LAST_ACK
    )
}

/// Our FIN is in the send queue (it counts one sequence number there).
pub fn fin_sent(state: u32) -> bool {
    matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2 | TCP_LAST_ACK)
}

/// The peer's FIN has been received (it counts one sequence number in the receive queue).
pub fn fin_received(state: u32) -> bool {
    matches!(state, TCP_CLOSE_WAIT | TCP_LAST_ACK)
}

/// Names of TCP states, for messages.
pub fn tcp_state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "?",
    }
}

/// Options saved when they differ from a fresh socket's: (level, name).
const OPTS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_DONTROUTE),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP),
    (libc::SOL_SOCKET, libc::SO_PEEK_OFF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
    (libc::IPPROTO_IP, libc::IP_HDRINCL),
    (libc::IPPROTO_IP, libc::IP_RECVERR),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
    (libc::IPPROTO_IP, libc::IP_PKTINFO),
    (libc::IPPROTO_IP, libc::IP_RECVTTL),
    (libc::IPPROTO_IP, libc::IP_RECVTOS),
    (libc::IPPROTO_IP, libc::IP_FREEBIND),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT),
    (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
    (libc::SOL_PACKET, libc::PACKET_AUXDATA),
    (libc::SOL_PACKET, libc::PACKET_ORIGDEV),
    (libc::SOL_PACKET, libc::PACKET_VNET_HDR),
    (libc::SOL_PACKET, libc::PACKET_VERSION),
    (libc::SOL_PACKET, libc::PACKET_RESERVE),
    (libc::SOL_PACKET, libc::PACKET_TIMESTAMP),
    (libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS),
    (libc::SOL_NETLINK, libc::NETLINK_PKTINFO),
    (libc::SOL_NETLINK, libc::NETLINK_BROADCAST_ERROR),
    (libc::SOL_NETLINK, libc::NETLINK_NO_ENOBUFS),
    (libc::SOL_NETLINK, libc::NETLINK_LISTEN_ALL_NSID),
    (libc::SOL_NETLINK, libc::NETLINK_CAP_ACK),
    (libc::SOL_NETLINK, libc::NETLINK_EXT_ACK),
    (libc::SOL_NETLINK, libc::NETLINK_GET_STRICT_CHK),
];

/// A short name of a socket option, for `cryo show`.
pub fn opt_name(level: i32, name: i32) -> String {
    let n = match (level, name) {
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => "SO_REUSEADDR",
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => "SO_REUSEPORT",
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => "SO_KEEPALIVE",
        (libc::SOL_SOCKET, libc::SO_BROADCAST) => "SO_BROADCAST",
        (libc::SOL_SOCKET, libc::SO_LINGER) => "SO_LINGER",
        (libc::SOL_SOCKET, libc::SO_PRIORITY) => "SO_PRIORITY",
        (libc::SOL_SOCKET, libc::SO_MARK) => "SO_MARK",
        (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) => "SO_BINDTODEVICE",
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => "SO_SNDBUF",
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => "SO_RCVBUF",
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => "SO_RCVTIMEO",
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => "SO_SNDTIMEO",
        (libc::SOL_SOCKET, libc::SO_PEEK_OFF) => "SO_PEEK_OFF",
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => "TCP_NODELAY",
        (libc::IPPROTO_TCP, libc::TCP_CORK) => "TCP_CORK",
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => "TCP_KEEPIDLE",
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => "TCP_KEEPINTVL",
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => "TCP_KEEPCNT",
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => "TCP_CONGESTION",
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => "TCP_USER_TIMEOUT",
        (libc::IPPROTO_IP, libc::IP_TOS) => "IP_TOS",
        (libc::IPPROTO_IP, libc::IP_TTL) => "IP_TTL",
        (libc::IPPROTO_IP, libc::IP_HDRINCL) => "IP_HDRINCL",
        (libc::IPPROTO_IP, libc::IP_FREEBIND) => "IP_FREEBIND",
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT) => "IP_TRANSPARENT",
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) => "IPV6_V6ONLY",
        (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS) => "IPV6_UNICAST_HOPS",
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => "IPV6_TCLASS",
        _ => return format!("{level}/{name}"),
    };
    n.to_string()
}

/// The options of `fd` that differ from those of a fresh socket of the same kind.
fn changed_opts(r: &FdRef, fd: RawFd, domain: i32, kind: i32, proto: i32) -> Vec<SockOpt> {
    let fresh = net::socket(domain, kind | libc::SOCK_CLOEXEC, proto).ok();
    let mut out = Vec::new();
    for &(level, name) in OPTS {
        // Multicast options exist for datagram sockets only (set on a stream one: EINVAL).
        let multicast = matches!(
            (level, name),
            (
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_TTL | libc::IP_MULTICAST_LOOP
            ) | (
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_HOPS | libc::IPV6_MULTICAST_LOOP
            )
        );
        if multicast && kind == libc::SOCK_STREAM {
            continue;
        }
        let Ok(v) = net::getsockopt_bytes(fd, level, name, 64) else {
            continue;
        };
        let same = fresh
            .and_then(|f| net::getsockopt_bytes(f, level, name, 64).ok())
            .is_some_and(|d| d == v);
        if !same {
            tracing::debug!(pid = r.pid, fd = r.fd, opt = %opt_name(level, name), "socket option");
            out.push(SockOpt {
                level,
                name,
                value: v,
            });
        }
    }
    if let Some(f) = fresh {
        crate::sys::task::close(f);
    }
    out
}

fn addr(a: net::InetAddr) -> InetAddr {
    InetAddr {
        addr: a.addr,
        port: u32::from(a.port),
        scope_id: a.scope_id,
        flowinfo: a.flowinfo,
    }
}

/// The saved form of an address back in the socket's family.
pub fn ffi_addr(family: i32, a: &InetAddr) -> net::InetAddr {
    net::InetAddr {
        family,
        addr: a.addr.clone(),
        port: a.port as u16,
        scope_id: a.scope_id,
        flowinfo: a.flowinfo,
    }
}

/// What `--tcp-established` and friends allow.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetOpts {
    /// Established TCP connections are dumped (in repair mode).
    pub tcp_established: bool,
    /// A listener's connections waiting to be accepted are left out (`--skip-in-flight`).
    pub skip_in_flight: bool,
}

/// The state of the AF_INET/AF_INET6 socket `r` with inode `ino`. An established TCP
/// connection gets its addresses only; [`repair`] reads the rest.
pub fn inet_socket(r: &FdRef, ino: u64, opts: NetOpts) -> Result<InetSocketState, DumpError> {
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let int = |level: i32, name: i32, what: &'static str| {
        ffi::sockopt_int(fd, level, name).map_err(r.sys(what))
    };
    let family = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "reading its family")?;
    let kind = int(libc::SOL_SOCKET, libc::SO_TYPE, "reading its type")?;
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "reading its protocol")?;
    let local = net::inet_sockname(fd).map_err(r.sys("reading its address"))?;
    let peer = net::inet_peername(fd).map_err(r.sys("reading its peer"))?;
    let mut s = InetSocketState {
        family,
        r#type: kind,
        protocol,
        ino,
        local: local.filter(|a| !a.is_unspecified()).map(addr),
        peer: peer.clone().map(addr),
        opts: changed_opts(r, fd, family, kind, protocol),
        ..Default::default()
    };
    let what = match (kind, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "TCP",
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "UDP",
        (libc::SOCK_RAW, _) => "raw",
        _ => {
            return Err(r.refuse(format!(
                "an inet socket of type {kind} protocol {protocol} is not supported"
            )))
        }
    };
    match what {
        "TCP" => {
            let info = net::tcp_info(fd).map_err(r.sys("reading TCP_INFO"))?;
            s.state = u32::from(info.state);
            match s.state {
                TCP_CLOSE => {}
                TCP_LISTEN => {
                    if info.unacked != 0 && !opts.skip_in_flight {
                        return Err(r.refuse(format!(
                            "a listening TCP socket with {} connections waiting to be accepted \
                             (they would be reset; --skip-in-flight leaves them out)",
                            info.unacked
                        )));
                    }
                    if info.unacked != 0 {
                        tracing::warn!(
                            pid = r.pid,
                            fd = r.fd,
                            pending = info.unacked,
                            "--skip-in-flight: connections waiting to be accepted are left out"
                        );
                    }
                    s.backlog = info.sacked;
                }
                st if is_connection(st) => {
                    let (l, p) = (s.local.clone().unwrap_or_default(), s.peer.clone());
                    let peer = p.unwrap_or_default();
                    let conn = format!("{} -> {}", ffi_addr(family, &l), ffi_addr(family, &peer));
                    if !opts.tcp_established {
                        return Err(r.refuse(format!(
                            "an established TCP connection {conn} ({}): dump with \
                             --tcp-established to checkpoint it",
                            tcp_state_name(st)
                        )));
                    }
                }
                st => {
                    return Err(r.refuse(format!(
                        "a TCP socket in state {}: connections being set up or closing on \
                         both sides are not supported",
                        tcp_state_name(st)
                    )))
                }
            }
        }
        "UDP" => {
            s.state = if s.peer.is_some() { 1 } else { TCP_CLOSE };
            s.queue = peek_datagrams(r, fd)?;
        }
        _ => {
            s.state = if s.peer.is_some() { 1 } else { TCP_CLOSE };
            s.dropped = dropped_queue(r, fd, "raw socket");
        }
    }
    Ok(s)
}

/// Bytes waiting in the receive queue of a socket whose queue is not saved (raw, packet,
/// netlink: like packets lost on the wire), logged when there are any.
fn dropped_queue(r: &FdRef, fd: RawFd, kind: &str) -> u32 {
    let n = queued(fd);
    if n != 0 {
        tracing::warn!(
            pid = r.pid,
            fd = r.fd,
            bytes = n,
            "{kind}: its queued data is not saved"
        );
    }
    n
}

/// Bytes waiting in the receive queue (0 if it cannot be told).
fn queued(fd: RawFd) -> u32 {
    net::ioctl_int(fd, tcp::SIOCINQ).map_or(0, |n| n.max(0) as u32)
}

/// Most bytes saved from one UDP queue.
const MAX_QUEUE_BYTES: usize = 15 << 20;

/// Reads a UDP receive queue without consuming it: each datagram with its sender, at a peek
/// offset moved past the datagrams read; the socket's own SO_PEEK_OFF is put back.
fn peek_datagrams(r: &FdRef, fd: RawFd) -> Result<Vec<Datagram>, DumpError> {
    let old = ffi::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(r.sys("reading SO_PEEK_OFF"))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut off = 0usize;
    let res = (|| {
        loop {
            ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32)
                .map_err(r.sys("setting SO_PEEK_OFF"))?;
            let Some((n, from)) = net::peek_from(fd, &mut buf, libc::MSG_TRUNC)
                .map_err(r.sys("peeking at its queue"))?
            else {
                return Ok(());
            };
            if n > buf.len() {
                return Err(r.refuse(format!("a queued datagram of {n} bytes is too large")));
            }
            off += n;
            if off > MAX_QUEUE_BYTES {
                return Err(r.refuse(format!("more than {MAX_QUEUE_BYTES} bytes queued")));
            }
            out.push(Datagram {
                data: buf[..n].to_vec(),
                from: from.map(addr),
            });
            if n == 0 && out.len() > 1 << 16 {
                return Err(r.refuse("too many empty datagrams queued"));
            }
            if n == 0 {
                // An empty datagram does not move the offset; the rest cannot be reached.
                return Err(r.refuse("an empty datagram in its queue cannot be saved"));
            }
        }
    })();
    let put_back = ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)
        .map_err(r.sys("putting SO_PEEK_OFF back"));
    res?;
    put_back?;
    Ok(out)
}

/// The state of AF_PACKET socket `r`.
pub fn packet_socket(r: &FdRef, ino: u64) -> Result<PacketSocketState, DumpError> {
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let kind =
        ffi::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(r.sys("reading its type"))?;
    let (ifindex, proto) = net::packet_name(fd).map_err(r.sys("reading its address"))?;
    // A ring mapped into the process cannot be rebuilt; the mapping check refuses it too.
    for ring in [libc::PACKET_RX_RING, libc::PACKET_TX_RING] {
        if net::getsockopt_bytes(fd, libc::SOL_PACKET, ring, 32)
            .is_ok_and(|b| b.iter().any(|&x| x != 0))
        {
            return Err(r.refuse("a packet socket with an mmap ring is not supported"));
        }
    }
    let ifname = if ifindex > 0 {
        let ns = crate::net::Netns::of_pid(r.pid)
            .map_err(|e| r.refuse(format!("opening its network namespace: {e}")))?;
        ns.run(|| net::if_name(ifindex))
            .map_err(r.sys("entering its network namespace"))?
            .map_err(r.sys("reading its interface's name"))?
    } else {
        String::new()
    };
    let dropped = dropped_queue(r, fd, "packet socket");
    Ok(PacketSocketState {
        r#type: kind,
        protocol: u32::from(proto),
        ifindex,
        ifname,
        opts: changed_opts(r, fd, libc::AF_PACKET, kind, 0),
        ino,
        dropped,
    })
}

/// The state of AF_NETLINK socket `r`.
pub fn netlink_socket(r: &FdRef, ino: u64) -> Result<NetlinkSocketState, DumpError> {
    let copy = r.copy()?;
    let fd = copy.as_raw_fd();
    let int = |level: i32, name: i32, what: &'static str| {
        ffi::sockopt_int(fd, level, name).map_err(r.sys(what))
    };
    let kind = int(libc::SOL_SOCKET, libc::SO_TYPE, "reading its type")?;
    let protocol = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "reading its protocol")?;
    let (portid, _) = net::netlink_name(fd).map_err(r.sys("reading its address"))?;
    let (dst_portid, dst_group) = net::netlink_peer(fd).unwrap_or((0, 0));
    let mut groups = Vec::new();
    if let Ok(b) = net::getsockopt_bytes(fd, libc::SOL_NETLINK, libc::NETLINK_LIST_MEMBERSHIPS, 128)
    {
        for (i, w) in b.chunks_exact(4).enumerate() {
            let w = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            for bit in 0..32 {
                if w & (1 << bit) != 0 {
                    groups.push(i as u32 * 32 + bit + 1);
                }
            }
        }
    }
    let dropped = dropped_queue(r, fd, "netlink socket");
    Ok(NetlinkSocketState {
        r#type: kind,
        protocol,
        portid,
        groups,
        dst_portid,
        dst_group,
        opts: changed_opts(r, fd, libc::AF_NETLINK, kind, protocol),
        ino,
        dropped,
    })
}

/// The established TCP connections among `all` (every process's fds), each once.
pub fn established(all: &[(i32, Vec<FdEntry>)]) -> Vec<Conn> {
    let mut out: Vec<Conn> = Vec::new();
    for e in all.iter().flat_map(|(_, l)| l.iter()) {
        if let Some(State::Inet(s)) = &e.state {
            if s.protocol == libc::IPPROTO_TCP && is_connection(s.state) {
                let c = Conn {
                    local: ffi_addr(s.family, s.local.as_ref().unwrap_or(&InetAddr::default())),
                    peer: ffi_addr(s.family, s.peer.as_ref().unwrap_or(&InetAddr::default())),
                };
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// Copies of sockets in TCP repair mode. Dropping it takes them out of repair mode.
#[derive(Debug, Default)]
pub struct Repaired {
    socks: Vec<(i32, i32, OwnedFd)>,
}

impl Repaired {
    /// Number of sockets held.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Closes the copies while still in repair mode: once the dumped processes are dead, this
    /// was the last reference, and the connections go without a packet being sent.
    pub fn close_quietly(mut self) {
        self.socks.clear();
    }
}

impl Drop for Repaired {
    fn drop(&mut self) {
        for (pid, fd, s) in self.socks.drain(..) {
            if let Err(e) = repair_off(s.as_raw_fd()) {
                tracing::warn!(pid, fd, error = %e, "could not take a TCP socket out of repair mode");
            }
        }
    }
}

/// Takes a socket out of repair mode without a window probe (plain off where the kernel
/// does not know that).
pub fn repair_off(fd: RawFd) -> Result<(), crate::sys::SysError> {
    ffi::set_sockopt_int(fd, libc::IPPROTO_TCP, tcp::REPAIR, tcp::REPAIR_OFF_NO_WP)
        .or_else(|_| ffi::set_sockopt_int(fd, libc::IPPROTO_TCP, tcp::REPAIR, 0))
}

/// Puts every established TCP connection of `all` in repair mode and reads its repair state
/// into its entry (once per socket: later fds of the same description across processes lose
/// their state, restore creates the socket once). The network must be locked already.
pub fn repair(all: &mut [(i32, Vec<FdEntry>)]) -> Result<Repaired, DumpError> {
    let mut held = Repaired::default();
    let mut done: Vec<u32> = Vec::new();
    for (pid, list) in all.iter_mut() {
        let pid = *pid;
        let mut pidfd = None;
        for e in list.iter_mut() {
            let Some(State::Inet(s)) = &mut e.state else {
                continue;
            };
            if s.protocol != libc::IPPROTO_TCP || !is_connection(s.state) {
                continue;
            }
            if done.contains(&e.desc_id) {
                e.state = None;
                continue;
            }
            done.push(e.desc_id);
            if pidfd.is_none() {
                pidfd = Some(
                    proc_ctl::pidfd_open(pid).map_err(|e| DumpError::Unsupported {
                        pid,
                        what: format!("cannot inspect its fds: {e}"),
                    })?,
                );
            }
            let Some(pfd) = pidfd.as_ref() else { continue };
            let target = format!("socket:[{}]", e.ino);
            let r = FdRef::new(pid, e.fd, &target, pfd);
            let copy = r.copy()?;
            ffi::set_sockopt_int(copy.as_raw_fd(), libc::IPPROTO_TCP, tcp::REPAIR, 1)
                .map_err(r.sys("turning TCP repair mode on"))?;
            let fd = copy.as_raw_fd();
            held.socks.push((pid, e.fd, copy));
            s.tcp = Some(read_connection(&r, fd, s.state)?);
        }
    }
    crate::fault::point("dump:tcp-repaired")?;
    Ok(held)
}

/// The repair state of a connection whose socket `fd` is in repair mode.
fn read_connection(r: &FdRef, fd: RawFd, state: u32) -> Result<TcpConnection, DumpError> {
    let info = net::tcp_info(fd).map_err(r.sys("reading TCP_INFO"))?;
    if u32::from(info.state) != state {
        return Err(r.refuse(format!(
            "the connection moved to state {} while being frozen",
            tcp_state_name(u32::from(info.state))
        )));
    }
    let ioctl = |req, what: &'static str| net::ioctl_int(fd, req).map_err(r.sys(what));
    let mut outq_len = ioctl(tcp::SIOCOUTQ, "reading its send queue size")? as usize;
    let mut unsent = ioctl(tcp::SIOCOUTQNSD, "reading its unsent size")? as usize;
    if fin_sent(state) {
        // Our FIN counts in the queue sizes while unacknowledged; it is not data.
        outq_len = outq_len.saturating_sub(1);
        unsent = unsent.saturating_sub(1);
    }
    let inq_len = ioctl(tcp::SIOCINQ, "reading its receive queue size")? as usize;
    let mss = ffi::sockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(r.sys("reading TCP_MAXSEG"))?;
    let opt_mask = u32::from(info.options);
    let timestamp = if opt_mask & tcp::TCPI_OPT_TIMESTAMPS != 0 {
        ffi::sockopt_int(fd, libc::IPPROTO_TCP, tcp::TIMESTAMP)
            .map_err(r.sys("reading TCP_TIMESTAMP"))? as u32
    } else {
        0
    };
    let window = net::repair_window(fd).map_err(r.sys("reading TCP_REPAIR_WINDOW"))?;
    // The program's own peek offset would shift the peeks below.
    let peek_off = ffi::sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap_or(-1);
    if peek_off >= 0 {
        ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, -1)
            .map_err(r.sys("clearing SO_PEEK_OFF"))?;
    }
    let queues = (|| {
        let (inq_seq, inq) = read_queue(r, fd, tcp::RECV_QUEUE, inq_len, "receive")?;
        let (outq_seq, outq) = read_queue(r, fd, tcp::SEND_QUEUE, outq_len, "send")?;
        Ok::<_, DumpError>((inq_seq, inq, outq_seq, outq))
    })();
    if peek_off >= 0 {
        ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, peek_off)
            .map_err(r.sys("putting SO_PEEK_OFF back"))?;
    }
    let (inq_seq, inq, outq_seq, outq) = queues?;
    let w = window.unwrap_or_default();
    tracing::debug!(
        pid = r.pid,
        fd = r.fd,
        inq = inq.len(),
        outq = outq.len(),
        unsent,
        "TCP connection"
    );
    Ok(TcpConnection {
        inq_seq,
        outq_seq,
        inq: inq.into(),
        outq: outq.into(),
        unsent: unsent as u32,
        mss: mss as u32,
        opt_mask,
        snd_wscale: u32::from(info.snd_wscale),
        rcv_wscale: u32::from(info.rcv_wscale),
        timestamp,
        has_window: window.is_some(),
        snd_wl1: w.snd_wl1,
        snd_wnd: w.snd_wnd,
        max_window: w.max_window,
        rcv_wnd: w.rcv_wnd,
        rcv_wup: w.rcv_wup,
    })
}

/// The sequence number at the end of a queue and its `len` bytes, peeked in repair mode.
fn read_queue(
    r: &FdRef,
    fd: RawFd,
    queue: i32,
    len: usize,
    name: &str,
) -> Result<(u32, Vec<u8>), DumpError> {
    ffi::set_sockopt_int(fd, libc::IPPROTO_TCP, tcp::REPAIR_QUEUE, queue)
        .map_err(r.sys("selecting a repair queue"))?;
    let seq = ffi::sockopt_int(fd, libc::IPPROTO_TCP, tcp::QUEUE_SEQ)
        .map_err(r.sys("reading TCP_QUEUE_SEQ"))? as u32;
    if len > MAX_TCP_QUEUE {
        return Err(r.refuse(format!(
            "its {name} queue holds {len} bytes, more than cryo saves ({MAX_TCP_QUEUE})"
        )));
    }
    let mut buf = vec![0u8; len + 1];
    let n = if len == 0 {
        0
    } else {
        net::peek_stream(fd, &mut buf).map_err(r.sys("peeking at a TCP queue"))?
    };
    if n != len {
        return Err(r.refuse(format!(
            "its {name} queue should hold {len} bytes but {n} were read"
        )));
    }
    buf.truncate(len);
    Ok((seq, buf))
}

/// Most bytes saved from one TCP queue (a record of fds-PID.img must hold both).
const MAX_TCP_QUEUE: usize = 7 << 20;
