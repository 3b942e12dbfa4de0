//! Syscalls for network sockets: IPv4/IPv6 addresses in and out of `sockaddr`, raw
//! getsockopt/setsockopt, the queue-size ioctls, `MSG_PEEK` reads with the sender's address,
//! AF_PACKET and AF_NETLINK addresses, and entering a network namespace. Thin wrappers that
//! return `SysResult` with the call name; callers add the fd and pid.

use super::{check, SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// An IPv4 or IPv6 socket address, in the socket's own family.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InetAddr {
    /// AF_INET or AF_INET6.
    pub family: i32,
    /// 4 or 16 bytes, network order.
    pub addr: Vec<u8>,
    /// Host order.
    pub port: u16,
    /// IPv6 scope id.
    pub scope_id: u32,
    /// IPv6 flow info (network order as stored).
    pub flowinfo: u32,
}

impl InetAddr {
    /// Whether the address is the wildcard and the port 0 (an unbound socket reads so).
    pub fn is_unspecified(&self) -> bool {
        self.port == 0 && self.addr.iter().all(|&b| b == 0)
    }
}

impl std::fmt::Display for InetAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match <[u8; 4]>::try_from(self.addr.as_slice()) {
            Ok(a) => write!(f, "{}:{}", std::net::Ipv4Addr::from(a), self.port),
            Err(_) => match <[u8; 16]>::try_from(self.addr.as_slice()) {
                Ok(a) => write!(f, "[{}]:{}", std::net::Ipv6Addr::from(a), self.port),
                Err(_) => write!(f, "?:{}", self.port),
            },
        }
    }
}

/// The largest sockaddr cryo reads.
type Storage = libc::sockaddr_storage;

fn storage() -> Storage {
    // SAFETY: sockaddr_storage is plain data; all zeros is a valid (AF_UNSPEC) value.
    unsafe { std::mem::zeroed() }
}

/// Decodes an AF_INET/AF_INET6 sockaddr of `len` bytes; other families give `None`.
fn from_storage(ss: &Storage, len: libc::socklen_t) -> Option<InetAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, which fits in it.
            let sin = unsafe { &*(ss as *const Storage as *const libc::sockaddr_in) };
            Some(InetAddr {
                family: libc::AF_INET,
                addr: sin.sin_addr.s_addr.to_ne_bytes().to_vec(),
                port: u16::from_be(sin.sin_port),
                ..InetAddr::default()
            })
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, which fits in it.
            let sin6 = unsafe { &*(ss as *const Storage as *const libc::sockaddr_in6) };
            Some(InetAddr {
                family: libc::AF_INET6,
                addr: sin6.sin6_addr.s6_addr.to_vec(),
                port: u16::from_be(sin6.sin6_port),
                scope_id: sin6.sin6_scope_id,
                flowinfo: sin6.sin6_flowinfo,
            })
        }
        _ => None,
    }
}

/// Encodes `a` as a sockaddr.
fn to_storage(call: &'static str, a: &InetAddr) -> SysResult<(Storage, libc::socklen_t)> {
    let mut ss = storage();
    match a.family {
        libc::AF_INET => {
            let addr: [u8; 4] = a
                .addr
                .as_slice()
                .try_into()
                .map_err(|_| SysError::from_errno(call, libc::EINVAL))?;
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(addr),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut Storage as *mut libc::sockaddr_in, sin) };
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ))
        }
        libc::AF_INET6 => {
            let addr: [u8; 16] = a
                .addr
                .as_slice()
                .try_into()
                .map_err(|_| SysError::from_errno(call, libc::EINVAL))?;
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port.to_be(),
                sin6_flowinfo: a.flowinfo,
                sin6_addr: libc::in6_addr { s6_addr: addr },
                sin6_scope_id: a.scope_id,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage, which is suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut Storage as *mut libc::sockaddr_in6, sin6) };
            Ok((
                ss,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ))
        }
        _ => Err(SysError::from_errno(call, libc::EAFNOSUPPORT)),
    }
}

/// getsockname(2) of an inet socket.
pub fn inet_sockname(fd: RawFd) -> SysResult<Option<InetAddr>> {
    let mut ss = storage();
    let mut len = std::mem::size_of::<Storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writing; len tells the kernel the storage size.
    let r =
        unsafe { libc::getsockname(fd, &mut ss as *mut Storage as *mut libc::sockaddr, &mut len) };
    check("getsockname", r as libc::c_long)?;
    Ok(from_storage(&ss, len))
}

/// getpeername(2) of an inet socket; `None` when it is not connected.
pub fn inet_peername(fd: RawFd) -> SysResult<Option<InetAddr>> {
    let mut ss = storage();
    let mut len = std::mem::size_of::<Storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writing; len tells the kernel the storage size.
    let r =
        unsafe { libc::getpeername(fd, &mut ss as *mut Storage as *mut libc::sockaddr, &mut len) };
    match check("getpeername", r as libc::c_long) {
        Ok(_) => Ok(from_storage(&ss, len)),
        Err(e) if e.errno == libc::ENOTCONN => Ok(None),
        Err(e) => Err(e),
    }
}

/// socket(2). The fd is inherited across fork (no close-on-exec), as restore wants.
pub fn socket(domain: i32, kind: i32, protocol: i32) -> SysResult<RawFd> {
    // SAFETY: plain syscall on integers.
    let r = unsafe { libc::socket(domain, kind, protocol) };
    check("socket", r as libc::c_long).map(|r| r as RawFd)
}

/// bind(2) to an inet address.
pub fn inet_bind(fd: RawFd, a: &InetAddr) -> SysResult<()> {
    let (ss, len) = to_storage("bind", a)?;
    // SAFETY: ss holds a valid sockaddr of `len` bytes for the duration of the call.
    let r = unsafe { libc::bind(fd, &ss as *const Storage as *const libc::sockaddr, len) };
    check("bind", r as libc::c_long).map(drop)
}

/// connect(2) to an inet address; EINPROGRESS counts as success.
pub fn inet_connect(fd: RawFd, a: &InetAddr) -> SysResult<()> {
    let (ss, len) = to_storage("connect", a)?;
    // SAFETY: ss holds a valid sockaddr of `len` bytes for the duration of the call.
    let r = unsafe { libc::connect(fd, &ss as *const Storage as *const libc::sockaddr, len) };
    match check("connect", r as libc::c_long) {
        Err(e) if e.errno == libc::EINPROGRESS => Ok(()),
        r => r.map(drop),
    }
}

/// sendto(2) to an inet address, without waiting.
pub fn inet_sendto(fd: RawFd, data: &[u8], to: &InetAddr) -> SysResult<usize> {
    let (ss, len) = to_storage("sendto", to)?;
    // SAFETY: data is valid for reading; ss holds a valid sockaddr of `len` bytes.
    let r = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            &ss as *const Storage as *const libc::sockaddr,
            len,
        )
    };
    check("sendto", r as libc::c_long).map(|n| n as usize)
}

/// send(2) with `flags` | MSG_NOSIGNAL.
pub fn send_flags(fd: RawFd, data: &[u8], flags: i32) -> SysResult<usize> {
    // SAFETY: data is valid for reading for its length.
    let r = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            flags | libc::MSG_NOSIGNAL,
        )
    };
    check("send", r as libc::c_long).map(|n| n as usize)
}

/// recvfrom(2) with MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC and `flags`: the bytes at the
/// socket's peek offset, the full length of the datagram (MSG_TRUNC) and its sender.
/// `None` when the queue is empty.
pub fn peek_from(
    fd: RawFd,
    buf: &mut [u8],
    flags: i32,
) -> SysResult<Option<(usize, Option<InetAddr>)>> {
    let mut ss = storage();
    let mut len = std::mem::size_of::<Storage>() as libc::socklen_t;
    // SAFETY: buf, ss and len are valid for writing for the sizes given.
    let r = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT | flags,
            &mut ss as *mut Storage as *mut libc::sockaddr,
            &mut len,
        )
    };
    match check("recvfrom(MSG_PEEK)", r as libc::c_long) {
        Ok(n) => Ok(Some((n as usize, from_storage(&ss, len)))),
        Err(e) if e.errno == libc::EAGAIN => Ok(None),
        Err(e) => Err(e),
    }
}

/// getsockopt(2) into a buffer of at most `max` bytes; returns what the kernel wrote.
pub fn getsockopt_bytes(fd: RawFd, level: i32, name: i32, max: usize) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; max];
    let mut len = max as libc::socklen_t;
    // SAFETY: buf is valid for writing `len` bytes; len is updated by the kernel.
    let r = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    check("getsockopt", r as libc::c_long)?;
    buf.truncate(len as usize);
    Ok(buf)
}

/// setsockopt(2) with the option's bytes.
pub fn setsockopt_bytes(fd: RawFd, level: i32, name: i32, val: &[u8]) -> SysResult<()> {
    // SAFETY: val is valid for reading its length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    check("setsockopt", r as libc::c_long).map(drop)
}

/// An ioctl that reads an int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD).
pub fn ioctl_int(fd: RawFd, req: libc::c_ulong) -> SysResult<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int to the pointer given.
    let r = unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) };
    check("ioctl", r as libc::c_long).map(|_| v)
}

/// The ifindex and protocol (network order) an AF_PACKET socket is bound to.
pub fn packet_name(fd: RawFd) -> SysResult<(i32, u16)> {
    let mut ss = storage();
    let mut len = std::mem::size_of::<Storage>() as libc::socklen_t;
    // SAFETY: ss and len are valid for writing; len tells the kernel the storage size.
    let r =
        unsafe { libc::getsockname(fd, &mut ss as *mut Storage as *mut libc::sockaddr, &mut len) };
    check("getsockname", r as libc::c_long)?;
    // SAFETY: an AF_PACKET socket's name is a sockaddr_ll, which fits in the storage.
    let sll = unsafe { &*(&ss as *const Storage as *const libc::sockaddr_ll) };
    Ok((sll.sll_ifindex, sll.sll_protocol))
}

/// bind(2) of an AF_PACKET socket to `ifindex` and `protocol` (network order).
pub fn packet_bind(fd: RawFd, ifindex: i32, protocol: u16) -> SysResult<()> {
    // SAFETY: sockaddr_ll is plain data; zeros are valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol;
    sll.sll_ifindex = ifindex;
    // SAFETY: sll is a valid sockaddr_ll for the duration of the call.
    let r = unsafe {
        libc::bind(
            fd,
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    check("bind(AF_PACKET)", r as libc::c_long).map(drop)
}

fn netlink_addr(fd: RawFd, peer: bool) -> SysResult<(u32, u32)> {
    // SAFETY: sockaddr_nl is plain data; zeros are valid.
    let mut nl: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = &mut nl as *mut libc::sockaddr_nl as *mut libc::sockaddr;
    // SAFETY: nl and len are valid for writing; len tells the kernel the size.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    check(
        if peer { "getpeername" } else { "getsockname" },
        r as libc::c_long,
    )?;
    Ok((nl.nl_pid, nl.nl_groups))
}

/// The port id and first 32 groups an AF_NETLINK socket is bound to.
pub fn netlink_name(fd: RawFd) -> SysResult<(u32, u32)> {
    netlink_addr(fd, false)
}

/// The port id and group an AF_NETLINK socket is connected to (zeros if none).
pub fn netlink_peer(fd: RawFd) -> SysResult<(u32, u32)> {
    netlink_addr(fd, true)
}

fn sockaddr_nl(pid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain data; zeros are valid.
    let mut nl: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    nl.nl_family = libc::AF_NETLINK as u16;
    nl.nl_pid = pid;
    nl.nl_groups = groups;
    nl
}

/// bind(2) (or connect(2) when `connect`) of an AF_NETLINK socket.
pub fn netlink_bind(fd: RawFd, pid: u32, groups: u32, connect: bool) -> SysResult<()> {
    let nl = sockaddr_nl(pid, groups);
    let p = &nl as *const libc::sockaddr_nl as *const libc::sockaddr;
    let len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: nl is a valid sockaddr_nl for the duration of the call.
    let r = unsafe {
        if connect {
            libc::connect(fd, p, len)
        } else {
            libc::bind(fd, p, len)
        }
    };
    check(
        if connect {
            "connect(AF_NETLINK)"
        } else {
            "bind(AF_NETLINK)"
        },
        r as libc::c_long,
    )
    .map(drop)
}

/// The name of interface `ifindex` in the caller's network namespace.
pub fn if_name(ifindex: i32) -> SysResult<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let r = unsafe { libc::if_indextoname(ifindex as u32, buf.as_mut_ptr().cast()) };
    if r.is_null() {
        return Err(SysError::last("if_indextoname"));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The index of interface `name` in the caller's network namespace.
pub fn if_index(name: &str) -> SysResult<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| SysError::from_errno("if_nametoindex", libc::EINVAL))?;
    // SAFETY: c is a NUL-terminated string that outlives the call.
    let r = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if r == 0 {
        return Err(SysError::last("if_nametoindex"));
    }
    Ok(r as i32)
}

/// setns(2) of the calling thread into the network namespace `ns` (an fd of /proc/PID/ns/net).
pub fn enter_netns(ns: BorrowedFd) -> SysResult<()> {
    // SAFETY: plain syscall on integers; only the calling thread's namespace changes.
    let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    check("setns(CLONE_NEWNET)", r as libc::c_long).map(drop)
}

/// TCP repair constants (linux/tcp.h).
pub mod tcp {
    /// `TCP_REPAIR`: put the socket in (1) or out of (0, or -1 without a window probe) repair.
    pub const REPAIR: i32 = 19;
    /// `TCP_REPAIR_QUEUE`: which queue `QUEUE_SEQ`, send and peek act on.
    pub const REPAIR_QUEUE: i32 = 20;
    /// `TCP_QUEUE_SEQ`.
    pub const QUEUE_SEQ: i32 = 21;
    /// `TCP_REPAIR_OPTIONS`.
    pub const REPAIR_OPTIONS: i32 = 22;
    /// `TCP_TIMESTAMP`.
    pub const TIMESTAMP: i32 = 24;
    /// `TCP_REPAIR_WINDOW`.
    pub const REPAIR_WINDOW: i32 = 29;
    /// `TCP_NO_QUEUE`.
    pub const NO_QUEUE: i32 = 0;
    /// `TCP_RECV_QUEUE`.
    pub const RECV_QUEUE: i32 = 1;
    /// `TCP_SEND_QUEUE`.
    pub const SEND_QUEUE: i32 = 2;
    /// `TCP_REPAIR_OFF_NO_WP`.
    pub const REPAIR_OFF_NO_WP: i32 = -1;
    /// `TCPOPT_MAXSEG`.
    pub const OPT_MAXSEG: u32 = 2;
    /// `TCPOPT_WINDOW`.
    pub const OPT_WINDOW: u32 = 3;
    /// `TCPOPT_SACK_PERM`.
    pub const OPT_SACK_PERM: u32 = 4;
    /// `TCPOPT_TIMESTAMP`.
    pub const OPT_TIMESTAMP: u32 = 8;
    /// `TCPI_OPT_TIMESTAMPS`.
    pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
    /// `TCPI_OPT_SACK`.
    pub const TCPI_OPT_SACK: u32 = 2;
    /// `TCPI_OPT_WSCALE`.
    pub const TCPI_OPT_WSCALE: u32 = 4;
    /// `SIOCINQ`: bytes in the receive queue.
    pub const SIOCINQ: libc::c_ulong = 0x541B;
    /// `SIOCOUTQ`: bytes in the send queue (sent and unsent).
    pub const SIOCOUTQ: libc::c_ulong = 0x5411;
    /// `SIOCOUTQNSD`: bytes in the send queue not sent yet.
    pub const SIOCOUTQNSD: libc::c_ulong = 0x894B;
}

/// The first bytes of `struct tcp_info` that cryo uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpInfo {
    /// `tcpi_state`.
    pub state: u8,
    /// `tcpi_options`.
    pub options: u8,
    /// `tcpi_snd_wscale`.
    pub snd_wscale: u8,
    /// `tcpi_rcv_wscale`.
    pub rcv_wscale: u8,
    /// `tcpi_unacked` (a listener: connections waiting to be accepted).
    pub unacked: u32,
    /// `tcpi_sacked` (a listener: its backlog).
    pub sacked: u32,
}

/// getsockopt(TCP_INFO).
pub fn tcp_info(fd: RawFd) -> SysResult<TcpInfo> {
    let b = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, 104)?;
    if b.len() < 32 {
        return Err(SysError::from_errno("getsockopt(TCP_INFO)", libc::EPROTO));
    }
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok(TcpInfo {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u32_at(24),
        sacked: u32_at(28),
    })
}

/// `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairWindow {
    /// `snd_wl1`.
    pub snd_wl1: u32,
    /// `snd_wnd`.
    pub snd_wnd: u32,
    /// `max_window`.
    pub max_window: u32,
    /// `rcv_wnd`.
    pub rcv_wnd: u32,
    /// `rcv_wup`.
    pub rcv_wup: u32,
}

/// getsockopt(TCP_REPAIR_WINDOW); `None` where the kernel lacks it.
pub fn repair_window(fd: RawFd) -> SysResult<Option<RepairWindow>> {
    match getsockopt_bytes(fd, libc::IPPROTO_TCP, tcp::REPAIR_WINDOW, 20) {
        Ok(b) if b.len() == 20 => {
            let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            Ok(Some(RepairWindow {
                snd_wl1: w(0),
                snd_wnd: w(4),
                max_window: w(8),
                rcv_wnd: w(12),
                rcv_wup: w(16),
            }))
        }
        Ok(_) => Err(SysError::from_errno(
            "getsockopt(TCP_REPAIR_WINDOW)",
            libc::EPROTO,
        )),
        Err(e) if e.errno == libc::ENOPROTOOPT => Ok(None),
        Err(e) => Err(e),
    }
}

/// setsockopt(TCP_REPAIR_WINDOW).
pub fn set_repair_window(fd: RawFd, w: &RepairWindow) -> SysResult<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, tcp::REPAIR_WINDOW, &b)
}

/// setsockopt(TCP_REPAIR_OPTIONS) with `(code, value)` pairs (`struct tcp_repair_opt`).
pub fn set_repair_options(fd: RawFd, opts: &[(u32, u32)]) -> SysResult<()> {
    let mut b = Vec::with_capacity(opts.len() * 8);
    for (code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, tcp::REPAIR_OPTIONS, &b)
}

/// recv(2) with MSG_PEEK | MSG_DONTWAIT of up to `buf.len()` bytes; 0 when nothing is queued.
pub fn peek_stream(fd: RawFd, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: buf is valid for writing for its length.
    let r = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match check("recv(MSG_PEEK)", r as libc::c_long) {
        Ok(n) => Ok(n as usize),
        Err(e) if e.errno == libc::EAGAIN => Ok(0),
        Err(e) => Err(e),
    }
}
