//! A tiny UDP "DNS server" on 127.0.0.1 that answers every query in one fixed, mostly broken
//! way: for the tests that `check` and the client end by their deadline whatever a server sends,
//! and for the end-to-end fault tests (a slow or garbled server where the lab's was).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A well-formed answer whose message id is not the query's.
    WrongId,
    /// Junk bytes, message id included.
    Garbage,
    /// The query's message id followed by junk bytes.
    GarbageWithId,
    /// A well-formed answer with one A record, cut off in the middle of the record.
    CutShort,
    /// An empty answer with the TC (truncated) bit set.
    TcBit,
    /// Nothing at all.
    Silent,
    /// An empty answer with this response code (2 SERVFAIL, 5 REFUSED).
    Rcode(u8),
    /// A well-formed NXDOMAIN, sent this long after the query (queries are not held up by
    /// the answers still waiting).
    Late(Duration),
}

/// The running server; stops when dropped.
pub struct BadServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Queries received so far.
    pub queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BadServer {
    /// A server on a free port of 127.0.0.1.
    pub fn start(how: Misbehaviour) -> BadServer {
        BadServer::start_at("127.0.0.1:0".parse().expect("an address"), how)
    }

    /// A server on `addr`, in the network namespace of the calling thread.
    pub fn start_at(addr: SocketAddr, how: Misbehaviour) -> BadServer {
        let socket = UdpSocket::bind(addr).expect("bind the test server");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let addr = socket.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let late = match how {
            Misbehaviour::Late(delay) => Some(late_sender(
                socket.try_clone().expect("a second handle"),
                delay,
            )),
            _ => None,
        };
        let thread = {
            let (stop, queries) = (stop.clone(), queries.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    queries.fetch_add(1, Ordering::Relaxed);
                    let Some(reply) = reply(how, &buf[..len]) else {
                        continue;
                    };
                    match &late {
                        Some(later) => {
                            let _ = later.send((Instant::now(), reply, peer));
                        }
                        None => {
                            let _ = socket.send_to(&reply, peer);
                        }
                    }
                }
            })
        };
        BadServer {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BadServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends each reply it is given `delay` after the query came: the delay is the same for
/// all, so they are due in the order they come. Ends when the receiving thread ends.
fn late_sender(socket: UdpSocket, delay: Duration) -> mpsc::Sender<(Instant, Vec<u8>, SocketAddr)> {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>, SocketAddr)>();
    std::thread::spawn(move || {
        for (came, reply, peer) in rx {
            std::thread::sleep((came + delay).saturating_duration_since(Instant::now()));
            let _ = socket.send_to(&reply, peer);
        }
    });
    tx
}

/// The question section of a query (name, type, class), when it parses.
fn question(query: &[u8]) -> Option<&[u8]> {
    let mut i = 12;
    loop {
        let len = usize::from(*query.get(i)?);
        i += 1 + len;
        if len == 0 {
            break;
        }
    }
    query.get(12..i + 4)
}

/// A response header: id, QR|RD|RA plus `flags`, the response code, one question and
/// `answers` answers.
fn header(id: [u8; 2], flags: u16, rcode: u8, answers: u16) -> Vec<u8> {
    let f = 0x8180 | flags | u16::from(rcode & 0x0f);
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(&id);
    h.extend_from_slice(&f.to_be_bytes());
    h.extend_from_slice(&1u16.to_be_bytes());
    h.extend_from_slice(&answers.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

fn reply(how: Misbehaviour, query: &[u8]) -> Option<Vec<u8>> {
    let id = [*query.first()?, *query.get(1)?];
    let q = question(query)?;
    let junk = [
        0xde, 0xad, 0xbe, 0xef, 0xff, 0x00, 0x13, 0x37, 0xca, 0xfe, 0xba, 0xbe,
    ];
    Some(match how {
        Misbehaviour::Silent => return None,
        Misbehaviour::WrongId => {
            let mut r = header([id[0] ^ 0xa5, id[1] ^ 0x5a], 0, 0, 0);
            r.extend_from_slice(q);
            r
        }
        Misbehaviour::Garbage => {
            let mut r = vec![id[0] ^ 0xff, id[1] ^ 0x0f];
            r.extend_from_slice(&junk);
            r
        }
        Misbehaviour::GarbageWithId => {
            let mut r = id.to_vec();
            r.extend_from_slice(&junk);
            r
        }
        Misbehaviour::CutShort => {
            let mut r = header(id, 0, 0, 1);
            r.extend_from_slice(q);
            // Pointer to the question's name, type A, class IN, TTL 60, RDLENGTH 4 — and
            // only two of the four address octets.
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0]);
            r
        }
        Misbehaviour::TcBit => {
            let mut r = header(id, 0x0200, 0, 0);
            r.extend_from_slice(q);
            r
        }
        Misbehaviour::Rcode(code) => {
            let mut r = header(id, 0, code, 0);
            r.extend_from_slice(q);
            r
        }
        Misbehaviour::Late(_) => {
            // NXDOMAIN, authoritative: what the lab's dnsmasq says of a name it lacks.
            let mut r = header(id, 0x0400, 3, 0);
            r.extend_from_slice(q);
            r
        }
    })
}
