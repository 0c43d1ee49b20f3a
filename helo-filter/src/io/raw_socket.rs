//! Raw IP sockets for the segments the daemon sends itself (action `reply`): whole IP
//! packets, header included, so that a reply can come from the server's address and a RST
//! from the client's. Each socket carries a mark (`SO_MARK`) by which the TC egress program
//! tells these packets from the MTA's. Needs CAP_NET_RAW (and CAP_NET_ADMIN for the mark).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// One raw socket per IP family.
pub struct RawSockets {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl RawSockets {
    /// Opens both sockets, each marked with `mark`.
    pub fn open(mark: u32) -> io::Result<RawSockets> {
        let v4 = raw_socket(libc::AF_INET, mark)?;
        let v6 = raw_socket(libc::AF_INET6, mark)?;
        // An IPv6 raw socket of protocol IPPROTO_RAW takes the IPv6 header from the packet
        // on Linux; said explicitly so that it cannot silently prepend a second one.
        set_option(&v6, libc::IPPROTO_IPV6, libc::IPV6_HDRINCL, 1)?;
        Ok(RawSockets { v4, v6 })
    }

    /// Sends `packet` (an IP packet, header included) to `to`, its destination. Never
    /// blocks: a full socket buffer is an error.
    pub fn send(&self, packet: &[u8], to: IpAddr) -> io::Result<()> {
        let sent = match to {
            IpAddr::V4(addr) => {
                // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
                let mut dest: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                dest.sin_family = libc::AF_INET as libc::sa_family_t;
                dest.sin_addr.s_addr = u32::from_ne_bytes(addr.octets());
                send_to(&self.v4, packet, &dest)
            }
            IpAddr::V6(addr) => {
                // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
                let mut dest: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                dest.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                dest.sin6_addr.s6_addr = addr.octets();
                send_to(&self.v6, packet, &dest)
            }
        }?;
        if sent != packet.len() {
            return Err(io::Error::other(format!(
                "sent {sent} of {} bytes",
                packet.len()
            )));
        }
        Ok(())
    }
}

fn raw_socket(family: libc::c_int, mark: u32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes three integers and returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    set_option(
        &socket,
        libc::SOL_SOCKET,
        libc::SO_MARK,
        mark as libc::c_int,
    )?;
    Ok(socket)
}

fn set_option(
    socket: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int, and its exact size is passed.
    let status = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_to<A>(socket: &OwnedFd, packet: &[u8], dest: &A) -> io::Result<usize> {
    // SAFETY: `packet` is a live buffer of the given length, and `dest` a live socket
    // address of the family of the socket, its exact size passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (dest as *const A).cast(),
            size_of::<A>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}
