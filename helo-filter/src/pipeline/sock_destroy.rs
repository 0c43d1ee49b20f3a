//! Tearing down a local TCP socket through netlink sock_diag (SOCK_DESTROY, what `ss -K`
//! does; needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN): the local process sees the
//! connection aborted, and the kernel sends the peer a RST.

use std::{io, net::SocketAddr};

/// `SOCK_DIAG_BY_FAMILY` (a lookup) and `SOCK_DESTROY` from linux/sock_diag.h.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `TCP_LISTEN` from linux/tcp_states.h.
const TCP_LISTEN: u8 = 10;
/// linux/inet_diag.h: match any cookie.
const INET_DIAG_NOCOOKIE: u32 = !0;

#[repr(C)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
struct InetDiagSockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

#[repr(C)]
struct Request {
    header: NlMsgHdr,
    body: InetDiagReqV2,
}

/// `struct inet_diag_msg`: the kernel's answer to a lookup.
#[repr(C)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// `struct nlmsgerr` as the kernel acknowledges a request.
#[repr(C)]
struct NlMsgErr {
    header: NlMsgHdr,
    error: i32,
    original: NlMsgHdr,
}

fn address_bytes(addr: &SocketAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr {
        SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
        SocketAddr::V6(v6) => out = v6.ip().octets(),
    }
    out
}

/// Destroys the TCP socket bound to `local` and connected to `remote` (same family).
/// `Ok(false)` when no such socket exists (the session already ended).
///
/// The kernel finds the socket of a request by its addresses as it finds the socket of an
/// arriving packet: when no connection matches, it takes the socket listening on `local`.
/// Destroying that would close the MTA's listener (no more mail accepted), so the connection
/// is looked up first and destroyed by its cookie, which names that socket alone.
pub fn destroy_tcp_socket(local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
    let family = match local {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    let mut request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: SOCK_DIAG_BY_FAMILY,
            flags: libc::NLM_F_REQUEST as u16,
            seq: 1,
            pid: 0,
        },
        body: InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: local.port().to_be_bytes(),
                dport: remote.port().to_be_bytes(),
                src: address_bytes(&local),
                dst: address_bytes(&remote),
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        },
    };
    // SAFETY: a plain netlink socket, closed below on every path.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = connection_cookie(fd, &request).and_then(|cookie| {
        let Some(cookie) = cookie else {
            return Ok(false);
        };
        request.header.kind = SOCK_DESTROY;
        request.header.flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        request.body.id.cookie = cookie;
        exchange(fd, &request)
    });
    // SAFETY: closing the socket opened above.
    unsafe { libc::close(fd) };
    result
}

/// The cookie of the connection a lookup `request` names; `None` when there is none, or
/// when what the kernel found is a listening socket.
fn connection_cookie(fd: i32, request: &Request) -> io::Result<Option<[u32; 2]>> {
    let mut reply = [0u8; 512];
    let received = send_and_receive(fd, request, &mut reply)?;
    if received < size_of::<NlMsgHdr>() {
        return Err(io::Error::other("short netlink reply"));
    }
    // SAFETY: the buffer holds at least a netlink header; read unaligned.
    let header: NlMsgHdr = unsafe { std::ptr::read_unaligned(reply.as_ptr().cast()) };
    if header.kind == libc::NLMSG_ERROR as u16 {
        return match acknowledged(&reply[..received])? {
            true => Err(io::Error::other("a lookup acknowledged without an answer")),
            false => Ok(None),
        };
    }
    if header.kind != SOCK_DIAG_BY_FAMILY
        || received < size_of::<NlMsgHdr>() + size_of::<InetDiagMsg>()
    {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {} ({received} bytes)",
            header.kind
        )));
    }
    // SAFETY: the buffer holds an inet_diag_msg after the header; read unaligned.
    let found: InetDiagMsg =
        unsafe { std::ptr::read_unaligned(reply[size_of::<NlMsgHdr>()..].as_ptr().cast()) };
    Ok((found.state != TCP_LISTEN).then_some(found.id.cookie))
}

/// Sends `request` and receives the reply into `reply`: the bytes received.
fn send_and_receive(fd: i32, request: &Request, reply: &mut [u8]) -> io::Result<usize> {
    // SAFETY: sends the bytes of a repr(C) request of the size given.
    let sent = unsafe {
        libc::send(
            fd,
            (request as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: receives into a buffer of the size given.
    let received = unsafe { libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0) };
    if received < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(received as usize)
}

/// Sends `request` (acknowledged): whether it was done, `false` when the socket was gone.
fn exchange(fd: i32, request: &Request) -> io::Result<bool> {
    let mut reply = [0u8; 256];
    let received = send_and_receive(fd, request, &mut reply)?;
    acknowledged(&reply[..received])
}

/// Reads the kernel's acknowledgement: `true` for success, `false` for ENOENT (no such
/// socket).
fn acknowledged(reply: &[u8]) -> io::Result<bool> {
    if reply.len() < size_of::<NlMsgErr>() {
        return Err(io::Error::other("short netlink reply"));
    }
    // SAFETY: the buffer holds at least an nlmsgerr; read unaligned.
    let ack: NlMsgErr = unsafe { std::ptr::read_unaligned(reply.as_ptr().cast()) };
    if ack.header.kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other(format!(
            "unexpected netlink reply type {}",
            ack.header.kind
        )));
    }
    match -ack.error {
        0 => Ok(true),
        libc::ENOENT => Ok(false),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}
