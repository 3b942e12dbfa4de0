//! Network sockets at restore: IPv4/IPv6 (TCP, UDP, raw), AF_PACKET and AF_NETLINK sockets.
//!
//! cryo creates every one of them itself before it forks the tree (as it does for objects
//! several processes share), in the network namespace it runs in, so that established TCP
//! connections can be rebuilt in repair mode and taken out of it from cryo once every process
//! is built ([`finish_repair`]), while the network lock still holds packets off.
//!
//! A socket gets its saved options first (buffer sizes with the *FORCE variants, since
//! getsockopt reads back twice what was set), then its address: listeners bind with
//! SO_REUSEADDR on for the bind (the dumped connections on the same port may linger) and
//! listen with their backlog; UDP and raw sockets bind and connect, and their queued
//! datagrams are sent to them again from their original sender addresses (a raw UDP socket
//! with a transparent bind, so no port is taken). An established connection is rebuilt in
//! repair mode: queue sequence numbers, connect (no handshake in repair mode), TCP options
//! (MSS, window scaling, SACK, timestamps) and timestamp, the receive queue, the sent part of
//! the send queue; the unsent part is written with repair mode briefly off (it is new data
//! for the peer); then the window. A half-closed connection then gets its FINs back: ours by
//! shutdown(2) in repair mode (with the send queue selected when the peer had acknowledged
//! it, so it counts as sent), the peer's FIN and acknowledgment as segments sent on the
//! peer's behalf from a raw socket, marked to pass the network lock. With `--tcp-close` a
//! connection is left a closed socket instead.

use super::files::{set_flags, Descriptions};
use crate::proto::{fd_entry::State, FdEntry, InetSocketState, SockOpt, TcpConnection};
use crate::sys::net_ffi::{self as net, tcp};
use crate::sys::{files_ffi as ffi, task};
use std::os::fd::RawFd;

/// Address of a saved socket in its family.
fn addr(family: i32, a: &crate::proto::InetAddr) -> net::InetAddr {
    crate::dump::fd_inet::ffi_addr(family, a)
}

/// Applies saved options; buffer sizes are halved and forced (the kernel doubles them).
fn apply_opts(fd: RawFd, opts: &[SockOpt], what: &str) -> Result<(), String> {
    for o in opts {
        let (name, value) = match (o.level, o.name) {
            (libc::SOL_SOCKET, libc::SO_SNDBUF | libc::SO_RCVBUF) => {
                let v = o
                    .value
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| format!("{what}: a short buffer size option"))?;
                let force = if o.name == libc::SO_SNDBUF {
                    libc::SO_SNDBUFFORCE
                } else {
                    libc::SO_RCVBUFFORCE
                };
                (force, (v / 2).to_ne_bytes().to_vec())
            }
            (_, n) => (n, o.value.clone()),
        };
        net::setsockopt_bytes(fd, o.level, name, &value).map_err(|e| {
            format!(
                "{what}: setting {}: {e}",
                crate::dump::fd_inet::opt_name(o.level, o.name)
            )
        })?;
    }
    Ok(())
}

/// The saved SO_REUSEADDR value (0 when it was not set).
fn saved_reuseaddr(opts: &[SockOpt]) -> i32 {
    opts.iter()
        .find(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR))
        .and_then(|o| o.value.get(..4))
        .and_then(|b| b.try_into().ok())
        .map_or(0, i32::from_ne_bytes)
}

/// A new socket for `f` (owned by `descs` from the start, so a failure closes it) with the
/// saved options applied.
fn new_socket(
    f: &FdEntry,
    descs: &mut Descriptions,
    what: &str,
    (domain, kind, protocol): (i32, i32, i32),
    opts: &[SockOpt],
) -> Result<RawFd, String> {
    let fd = net::socket(domain, kind, protocol)
        .map_err(|e| format!("{what}: creating the socket: {e}"))?;
    let fd = descs.keep(fd, what)?;
    descs.adopt(f, fd);
    apply_opts(fd, opts, what)?;
    Ok(fd)
}

/// Creates the AF_INET/AF_INET6 socket of `f`.
pub fn create_inet(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let what = format!("fd {} ({})", f.fd, f.path);
    let Some(State::Inet(s)) = &f.state else {
        return Err(format!("{what}: the saved socket has no state"));
    };
    let fd = new_socket(f, descs, &what, (s.family, s.r#type, s.protocol), &s.opts)?;
    let w = what.as_str();
    let sys = |doing: &'static str| move |e| format!("{w}: {doing}: {e}");
    let local = s.local.as_ref().map(|a| addr(s.family, a));
    let peer = s.peer.as_ref().map(|a| addr(s.family, a));
    let reuse = saved_reuseaddr(&s.opts);
    match (s.protocol, s.state) {
        (libc::IPPROTO_TCP, st) if crate::dump::fd_inet::is_connection(st) => {
            let (Some(l), Some(p), Some(t)) = (&local, &peer, &s.tcp) else {
                return Err(format!(
                    "{what}: the saved connection lacks its addresses or state"
                ));
            };
            if descs.tcp_close {
                tracing::info!(fd = f.fd, local = %l, peer = %p, "--tcp-close: the connection is restored closed");
            } else {
                restore_connection(fd, l, p, t, s)
                    .map_err(|e| format!("{what}: {l} -> {p}: {e}"))?;
                descs.repaired.push((fd, reuse));
            }
        }
        (libc::IPPROTO_TCP, st) => {
            if let Some(l) = &local {
                ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
                    .map_err(sys("setting SO_REUSEADDR"))?;
                net::inet_bind(fd, l).map_err(|e| format!("{what}: binding to {l}: {e}"))?;
                if st == crate::dump::fd_inet::TCP_LISTEN {
                    ffi::listen(fd, s.backlog as i32).map_err(sys("listening"))?;
                }
                ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse)
                    .map_err(sys("setting SO_REUSEADDR back"))?;
            }
        }
        _ => {
            if let Some(l) = &local {
                net::inet_bind(fd, l).map_err(|e| format!("{what}: binding to {l}: {e}"))?;
            }
            if let Some(p) = &peer {
                net::inet_connect(fd, p).map_err(|e| format!("{what}: connecting to {p}: {e}"))?;
            }
            if s.protocol == libc::IPPROTO_UDP && !s.queue.is_empty() {
                requeue_datagrams(s, local.as_ref()).map_err(|e| format!("{what}: {e}"))?;
            }
        }
    }
    set_flags(fd, f)?;
    Ok(fd)
}

/// Rebuilds an established connection on the new socket `fd`, leaving it in repair mode.
fn restore_connection(
    fd: RawFd,
    local: &net::InetAddr,
    peer: &net::InetAddr,
    t: &TcpConnection,
    s: &InetSocketState,
) -> Result<(), String> {
    let set = |name: i32, v: i32, doing: &str| {
        ffi::set_sockopt_int(fd, libc::IPPROTO_TCP, name, v).map_err(|e| format!("{doing}: {e}"))
    };
    use crate::dump::fd_inet::{
        fin_received, fin_sent, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK,
    };
    let state = s.state;
    // The FINs count one sequence number each; the data ends before them.
    let inq_seq = t.inq_seq.wrapping_sub(u32::from(fin_received(state)));
    let outq_seq = t.outq_seq.wrapping_sub(u32::from(fin_sent(state)));
    set(tcp::REPAIR, 1, "turning TCP repair mode on")?;
    net::inet_bind(fd, local).map_err(|e| format!("binding: {e}"))?;
    set(
        tcp::REPAIR_QUEUE,
        tcp::RECV_QUEUE,
        "selecting the receive queue",
    )?;
    let inq_start = inq_seq.wrapping_sub(t.inq.len() as u32);
    set(
        tcp::QUEUE_SEQ,
        inq_start as i32,
        "setting the receive sequence",
    )?;
    set(
        tcp::REPAIR_QUEUE,
        tcp::SEND_QUEUE,
        "selecting the send queue",
    )?;
    let outq_start = outq_seq.wrapping_sub(t.outq.len() as u32);
    set(
        tcp::QUEUE_SEQ,
        outq_start as i32,
        "setting the send sequence",
    )?;
    net::inet_connect(fd, peer).map_err(|e| format!("connecting in repair mode: {e}"))?;
    let mut opts = Vec::new();
    if t.opt_mask & tcp::TCPI_OPT_SACK != 0 {
        opts.push((tcp::OPT_SACK_PERM, 0));
    }
    if t.opt_mask & tcp::TCPI_OPT_WSCALE != 0 {
        opts.push((tcp::OPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16)));
    }
    if t.opt_mask & tcp::TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((tcp::OPT_TIMESTAMP, 0));
    }
    opts.push((tcp::OPT_MAXSEG, t.mss));
    net::set_repair_options(fd, &opts).map_err(|e| format!("setting TCP options: {e}"))?;
    if t.opt_mask & tcp::TCPI_OPT_TIMESTAMPS != 0 {
        set(tcp::TIMESTAMP, t.timestamp as i32, "setting the timestamp")?;
    }
    // The queues are written back in larger pieces than they arrived in, which the kernel
    // accounts differently: make room for them first (the saved sizes are set again below).
    make_room(fd, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, t.inq.len())?;
    make_room(fd, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, t.outq.len())?;
    if !t.inq.is_empty() {
        set(
            tcp::REPAIR_QUEUE,
            tcp::RECV_QUEUE,
            "selecting the receive queue",
        )?;
        send_all(fd, &t.inq, "the receive queue")?;
    }
    let unsent = (t.unsent as usize).min(t.outq.len());
    let sent = t.outq.len() - unsent;
    if sent > 0 {
        set(
            tcp::REPAIR_QUEUE,
            tcp::SEND_QUEUE,
            "selecting the send queue",
        )?;
        send_all(fd, &t.outq[..sent], "the send queue")?;
    }
    if unsent > 0 {
        // Never sent: ordinary new data, written with repair mode off.
        set(tcp::REPAIR, 0, "leaving repair mode for unsent data")?;
        send_all(fd, &t.outq[sent..], "the unsent data")?;
        set(tcp::REPAIR, 1, "turning TCP repair mode on again")?;
    }
    // The buffer sizes the program had (autotuned ones, not saved, keep the raised size).
    let sizes: Vec<SockOpt> = s
        .opts
        .iter()
        .filter(|o| {
            o.level == libc::SOL_SOCKET && matches!(o.name, libc::SO_RCVBUF | libc::SO_SNDBUF)
        })
        .cloned()
        .collect();
    apply_opts(fd, &sizes, "restoring its buffer sizes")?;
    if t.has_window {
        let mut w = net::RepairWindow {
            snd_wl1: t.snd_wl1,
            snd_wnd: t.snd_wnd,
            max_window: t.max_window,
            rcv_wnd: t.rcv_wnd,
            rcv_wup: t.rcv_wup,
        };
        if fin_received(state) {
            // The peer's FIN is not in the receive queue yet; it comes as a segment below.
            w.rcv_wup = w.rcv_wup.wrapping_sub(1);
            w.rcv_wnd = w.rcv_wnd.wrapping_add(1);
        }
        net::set_repair_window(fd, &w).map_err(|e| format!("setting the window: {e}"))?;
    }
    set(
        tcp::REPAIR_QUEUE,
        tcp::NO_QUEUE,
        "deselecting the repair queue",
    )?;
    // Half-closed: our FIN goes into the send queue with shutdown(2) (as already sent when it
    // was acknowledged); the peer's FIN and its acknowledgment of ours arrive as segments sent
    // on the peer's behalf (they pass the network lock by their mark).
    let snd_una = outq_seq.wrapping_sub(t.outq.len() as u32);
    let peer_window = (t.snd_wnd >> t.snd_wscale.min(14)).min(0xffff) as u16;
    let fake =
        |seq: u32, ack: u32, flags: u8| fake_segment(local, peer, seq, ack, flags, peer_window);
    if matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2) {
        shutdown_in_repair(fd, state == TCP_FIN_WAIT2)?;
    }
    if fin_received(state) {
        fake(inq_seq, snd_una, TH_FIN | TH_ACK)?;
    }
    if state == TCP_LAST_ACK {
        shutdown_in_repair(fd, false)?;
    }
    if state == TCP_FIN_WAIT2 {
        fake(inq_seq, outq_seq.wrapping_add(1), TH_ACK)?;
    }
    if state != crate::dump::fd_inet::TCP_ESTABLISHED {
        wait_state(fd, state)?;
    }
    tracing::debug!(local = %local, peer = %peer, inq = t.inq.len(), outq = t.outq.len(), unsent, family = s.family, "TCP connection rebuilt");
    Ok(())
}

/// Raises buffer `name` (set through `force`) so that `bytes` of queued data fit, when it is
/// smaller.
fn make_room(fd: RawFd, name: i32, force: i32, bytes: usize) -> Result<(), String> {
    if bytes == 0 {
        return Ok(());
    }
    let cur = ffi::sockopt_int(fd, libc::SOL_SOCKET, name)
        .map_err(|e| format!("reading a buffer size: {e}"))?;
    // Twice the data plus slack for the per-buffer overhead; the kernel doubles what is set.
    let want = (bytes.saturating_mul(2) + (256 << 10)).min(i32::MAX as usize) as i32;
    if cur >= want {
        return Ok(());
    }
    ffi::set_sockopt_int(fd, libc::SOL_SOCKET, force, want / 2)
        .map_err(|e| format!("making room for {bytes} queued bytes: {e}"))
}

/// TCP header flags.
const TH_FIN: u8 = 0x01;
const TH_ACK: u8 = 0x10;

/// shutdown(SHUT_WR) of a socket in repair mode: queues our FIN, as sent already when
/// `acked` (the send queue is selected, so nothing goes out).
fn shutdown_in_repair(fd: RawFd, acked: bool) -> Result<(), String> {
    let queue = |q: i32| {
        ffi::set_sockopt_int(fd, libc::IPPROTO_TCP, tcp::REPAIR_QUEUE, q)
            .map_err(|e| format!("selecting a repair queue: {e}"))
    };
    if acked {
        queue(tcp::SEND_QUEUE)?;
    }
    ffi::shutdown(fd, libc::SHUT_WR).map_err(|e| format!("restoring our FIN: {e}"))?;
    if acked {
        queue(tcp::NO_QUEUE)?;
    }
    Ok(())
}

/// Waits (briefly) until the rebuilt connection reaches `state`.
fn wait_state(fd: RawFd, state: u32) -> Result<(), String> {
    use crate::dump::fd_inet::tcp_state_name;
    let mut now = 0;
    for _ in 0..200 {
        now = net::tcp_info(fd)
            .map_err(|e| format!("reading TCP_INFO: {e}"))?
            .state;
        if u32::from(now) == state {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(format!(
        "the half-closed connection came back in state {} instead of {}",
        tcp_state_name(u32::from(now)),
        tcp_state_name(state)
    ))
}

/// Sends one TCP segment without data from `peer` to `local` (as the peer would), marked so
/// that it passes the network lock.
fn fake_segment(
    local: &net::InetAddr,
    peer: &net::InetAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
) -> Result<(), String> {
    let v6 = local.family == libc::AF_INET6;
    let mut seg = Vec::with_capacity(20);
    seg.extend_from_slice(&peer.port.to_be_bytes());
    seg.extend_from_slice(&local.port.to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.push(5 << 4); // data offset: 20 bytes
    seg.push(flags);
    seg.extend_from_slice(&window.to_be_bytes());
    seg.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    if !v6 {
        let sum = tcp4_checksum(&peer.addr, &local.addr, &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    // The checksum offset in a TCP header: the kernel fills it in over IPv6.
    send_as(peer, local, libc::IPPROTO_TCP, &seg, true, 16)
        .map_err(|e| format!("sending a segment on behalf of {peer}: {e}"))
}

/// Sends `packet` (a transport header and its data, protocol `proto`) from `from`'s address
/// to `to`'s, through a raw socket bound there transparently (the address need not be ours
/// and no port is taken). `marked`: it carries the mark that passes the network lock. Over
/// IPv6 the kernel computes the checksum at `csum_offset`; over IPv4 it must be in place (or
/// 0 for UDP).
fn send_as(
    from: &net::InetAddr,
    to: &net::InetAddr,
    proto: i32,
    packet: &[u8],
    marked: bool,
    csum_offset: i32,
) -> Result<(), String> {
    let v6 = from.family == libc::AF_INET6;
    let raw = net::socket(from.family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto)
        .map_err(|e| format!("creating a raw socket: {e}"))?;
    let res = (|| {
        let (level, transparent) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
        } else {
            (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
        };
        ffi::set_sockopt_int(raw, level, transparent, 1)
            .map_err(|e| format!("making the raw socket transparent: {e}"))?;
        if marked {
            ffi::set_sockopt_int(
                raw,
                libc::SOL_SOCKET,
                libc::SO_MARK,
                crate::net::lock::PASS_MARK as i32,
            )
            .map_err(|e| format!("marking the raw socket: {e}"))?;
        }
        if v6 {
            ffi::set_sockopt_int(raw, libc::IPPROTO_RAW, libc::IPV6_CHECKSUM, csum_offset)
                .map_err(|e| format!("setting IPV6_CHECKSUM: {e}"))?;
        }
        let src = net::InetAddr {
            port: 0,
            ..from.clone()
        };
        net::inet_bind(raw, &src).map_err(|e| format!("binding a raw socket to {src}: {e}"))?;
        let dst = net::InetAddr {
            port: 0,
            ..to.clone()
        };
        net::inet_sendto(raw, packet, &dst)
            .map(drop)
            .map_err(|e| format!("sending to {dst}: {e}"))
    })();
    task::close(raw);
    res
}

/// The TCP checksum of `seg` between IPv4 addresses `src` and `dst`.
fn tcp4_checksum(src: &[u8], dst: &[u8], seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            sum += u32::from(w);
        }
    };
    add(src);
    add(dst);
    add(&[0, libc::IPPROTO_TCP as u8]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Writes `data` whole without blocking, in chunks that shrink when the kernel refuses a
/// large one (queue data in repair mode goes into one linear buffer per call).
fn send_all(fd: RawFd, mut data: &[u8], what: &str) -> Result<(), String> {
    let mut chunk = 1usize << 20;
    while !data.is_empty() {
        let n = chunk.min(data.len());
        match net::send_flags(fd, &data[..n], libc::MSG_DONTWAIT) {
            Ok(0) => return Err(format!("writing {what}: the socket took nothing")),
            Ok(k) => data = &data[k..],
            Err(e)
                if chunk > 4096
                    && matches!(e.errno, libc::ENOMEM | libc::EAGAIN | libc::ENOBUFS) =>
            {
                chunk /= 2
            }
            Err(e) => return Err(format!("writing {what} ({} bytes left): {e}", data.len())),
        }
    }
    Ok(())
}

/// Sends the saved datagrams to the new socket again from their senders' addresses, through
/// a raw UDP socket bound (transparently) to each sender's address.
fn requeue_datagrams(s: &InetSocketState, local: Option<&net::InetAddr>) -> Result<(), String> {
    let v6 = s.family == libc::AF_INET6;
    let port = local.map_or(0, |l| l.port);
    if port == 0 {
        return Err(format!(
            "{} queued datagrams on a socket with no port",
            s.queue.len()
        ));
    }
    // Where the socket receives: its own address, or loopback for the wildcard.
    let dst = match local {
        Some(l) if l.addr.iter().any(|&b| b != 0) => l.clone(),
        _ => net::InetAddr {
            family: s.family,
            addr: if v6 {
                std::net::Ipv6Addr::LOCALHOST.octets().to_vec()
            } else {
                std::net::Ipv4Addr::LOCALHOST.octets().to_vec()
            },
            port,
            ..Default::default()
        },
    };
    for d in &s.queue {
        let Some(from) = &d.from else {
            return Err("a queued datagram has no sender".into());
        };
        let from = addr(s.family, from);
        let len = 8 + d.data.len();
        let mut pkt = Vec::with_capacity(len);
        pkt.extend_from_slice(&from.port.to_be_bytes());
        pkt.extend_from_slice(&port.to_be_bytes());
        pkt.extend_from_slice(&(len as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]); // checksum: none over IPv4, the kernel's over IPv6
        pkt.extend_from_slice(&d.data);
        send_as(&from, &dst, libc::IPPROTO_UDP, &pkt, false, 6)
            .map_err(|e| format!("requeueing a datagram from {from}: {e}"))?;
    }
    Ok(())
}

/// Creates the AF_PACKET socket of `f`.
pub fn create_packet(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let what = format!("fd {} ({})", f.fd, f.path);
    let Some(State::Packet(s)) = &f.state else {
        return Err(format!("{what}: the saved socket has no state"));
    };
    let fd = new_socket(
        f,
        descs,
        &what,
        (libc::AF_PACKET, s.r#type, s.protocol as i32),
        &s.opts,
    )?;
    if s.ifindex != 0 || s.protocol != 0 {
        let ifindex = if s.ifname.is_empty() {
            0
        } else {
            net::if_index(&s.ifname).map_err(|e| format!("{what}: interface {}: {e}", s.ifname))?
        };
        net::packet_bind(fd, ifindex, s.protocol as u16)
            .map_err(|e| format!("{what}: binding to {}: {e}", s.ifname))?;
    }
    set_flags(fd, f)?;
    Ok(fd)
}

/// Creates the AF_NETLINK socket of `f`.
pub fn create_netlink(f: &FdEntry, descs: &mut Descriptions) -> Result<RawFd, String> {
    let what = format!("fd {} ({})", f.fd, f.path);
    let Some(State::Netlink(s)) = &f.state else {
        return Err(format!("{what}: the saved socket has no state"));
    };
    let fd = new_socket(
        f,
        descs,
        &what,
        (libc::AF_NETLINK, s.r#type, s.protocol),
        &s.opts,
    )?;
    if s.portid != 0 {
        net::netlink_bind(fd, s.portid, 0, false)
            .map_err(|e| format!("{what}: binding to port {}: {e}", s.portid))?;
    }
    for &g in &s.groups {
        ffi::set_sockopt_int(
            fd,
            libc::SOL_NETLINK,
            libc::NETLINK_ADD_MEMBERSHIP,
            g as i32,
        )
        .map_err(|e| format!("{what}: joining group {g}: {e}"))?;
    }
    if s.dst_portid != 0 || s.dst_group != 0 {
        net::netlink_bind(fd, s.dst_portid, s.dst_group, true)
            .map_err(|e| format!("{what}: connecting: {e}"))?;
    }
    set_flags(fd, f)?;
    Ok(fd)
}

/// Takes the rebuilt connections out of repair mode (every process is built; the network is
/// still locked) and gives them their own SO_REUSEADDR back (repair mode overrode it).
pub fn finish_repair(repaired: &[(RawFd, i32)]) -> Result<(), String> {
    for &(fd, reuse) in repaired {
        crate::dump::fd_inet::repair_off(fd)
            .map_err(|e| format!("taking a TCP socket out of repair mode: {e}"))?;
        ffi::set_sockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse)
            .map_err(|e| format!("restoring SO_REUSEADDR of a TCP socket: {e}"))?;
    }
    Ok(())
}
