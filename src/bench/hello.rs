//! The hellos of connections a bench server accepted, read on the accepting thread without a
//! thread per connection: a connection gets its own thread only once its whole hello arrived
//! and was admitted. Each hello has [`HELLO_TIMEOUT`] in all (not per read, so a peer that
//! trickles a byte at a time is cut too), and at most [`MAX_PENDING`] wait at once: beyond, the
//! oldest is closed, so a flood of idle connections cannot keep a real client out for long.
//!
//! With `--accept-proxy` every connection first brings a PROXY protocol header (v1 or v2),
//! read with the relay's own machine (`protocols::proxy_protocol::AcceptProxy`: one parser
//! for both) the way the relay's worker reads it: peek at most what the machine wants, read
//! away exactly what it took, so not one byte of the hello is consumed. The header shares the
//! hello's deadline; a connection without a valid header is refused ([`Step::Refused`]) with
//! a line saying why.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;

use super::proto::{self, Hello, PeerSeen};
use crate::net::endpoint::Endpoint;
use crate::protocols::prelude::{MAX_SHOW, Prelude, Step as Machine};
use crate::protocols::proxy_protocol::AcceptProxy;
use crate::sys::message::{self, Received, ZeroMeans};
use crate::sys::pipe;

/// How long a connection has, from its accept, to send its whole hello line.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections whose hello is still on its way.
pub(crate) const MAX_PENDING: usize = 256;

/// `--accept-proxy`: where a connection's PROXY header stands.
#[derive(Debug)]
enum Header {
    /// None is read (no `--accept-proxy`).
    Off,
    /// Being read; `first` is its first byte once one came (`P`: v1).
    Reading {
        machine: AcceptProxy,
        first: Option<u8>,
    },
    /// Read: who it declared.
    Read(PeerSeen),
}

/// An accepted connection whose hello is on its way (its socket is non-blocking).
#[derive(Debug)]
pub(crate) struct Pending {
    endpoint: Endpoint,
    line: Vec<u8>,
    deadline: Instant,
    header: Header,
}

/// Where a pending hello stands after `Pending::advance`.
#[derive(Debug)]
pub(crate) enum Step {
    Waiting,
    /// A whole hello; with `--accept-proxy`, who its PROXY header declared.
    Hello(Endpoint, Hello, Option<PeerSeen>),
    Failed(Endpoint, io::Error),
    /// No valid PROXY header (`--accept-proxy`): the connection is refused with this message.
    Refused(Endpoint, String),
}

impl Pending {
    fn fd(&self) -> BorrowedFd<'_> {
        self.endpoint.read_fd().expect("a socket")
    }

    /// Reads what arrived of the PROXY header: `Ok(true)` once it is whole (or none is
    /// expected), `Ok(false)` while more must come, `Err` with the refusal's message.
    fn read_header(&mut self) -> Result<bool, String> {
        let Header::Reading { machine, first } = &mut self.header else {
            return Ok(true);
        };
        let fd = self.endpoint.read_fd().expect("a socket");
        let mut shown = [0u8; MAX_SHOW];
        loop {
            let want = machine.want().clamp(1, MAX_SHOW);
            let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
            let n = match nix::sys::socket::recv(fd.as_raw_fd(), &mut shown[..want], flags) {
                Ok(0) => return Err("closed before its PROXY header was whole".into()),
                Ok(n) => n,
                Err(nix::Error::EAGAIN) => return Ok(false),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(format!("reading its PROXY header: {e}")),
            };
            first.get_or_insert(shown[0]);
            let (take, outcome) = match machine.feed(&shown[..n]) {
                Machine::More | Machine::Reply(_) => (n, None),
                Machine::Done { used, outcome } => (used.min(n), Some(outcome)),
                Machine::Fail(f) => {
                    return Err(format!(
                        "no valid PROXY protocol header ({}: {}); this server has \
                         --accept-proxy: connect through a relay with send-proxy",
                        f.reason, f.detail
                    ));
                }
            };
            consume(fd, take).map_err(|e| format!("reading its PROXY header: {e}"))?;
            if let Some(outcome) = outcome {
                self.header = Header::Read(PeerSeen {
                    client: outcome.origin.map(|o| o.source.to_string()),
                    proxy: if *first == Some(b'P') { "v1" } else { "v2" }.into(),
                    via: self.endpoint.label().to_string(),
                });
                return Ok(true);
            }
        }
    }

    /// Reads what arrived (the PROXY header first, if one is expected), then the hello a byte
    /// at a time, so that not one byte after the newline (the data that follows a data hello)
    /// is consumed.
    fn advance(mut self) -> (Option<Pending>, Step) {
        match self.read_header() {
            Ok(true) => {}
            Ok(false) => return (Some(self), Step::Waiting),
            Err(why) => return (None, Step::Refused(self.endpoint, why)),
        }
        if self.endpoint.is_message() {
            // `--accept-proxy` is refused with `--seqpacket`: no header to read first.
            return self.advance_message();
        }
        let mut byte = [0u8; 1];
        loop {
            match pipe::read(self.fd(), &mut byte) {
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed before its hello",
                    );
                    return (None, Step::Failed(self.endpoint, e));
                }
                Ok(_) if byte[0] == b'\n' => {
                    let seen = match self.header {
                        Header::Read(seen) => Some(seen),
                        Header::Off | Header::Reading { .. } => None,
                    };
                    let step = match proto::parse_hello(&self.line) {
                        Ok(hello) => Step::Hello(self.endpoint, hello, seen),
                        Err(e) => Step::Failed(self.endpoint, e),
                    };
                    return (None, step);
                }
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() > proto::MAX_HELLO {
                        return (None, Step::Failed(self.endpoint, proto::hello_too_long()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return (Some(self), Step::Waiting);
                }
                Err(e) => return (None, Step::Failed(self.endpoint, e)),
            }
        }
    }
}

impl Pending {
    /// A SEQPACKET hello: one message, the line and its newline (a client sends it whole).
    fn advance_message(self) -> (Option<Pending>, Step) {
        let mut buf = [0u8; proto::MAX_HELLO + 2];
        let got = loop {
            match message::recv_message(self.fd(), &mut buf, ZeroMeans::End) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                got => break got,
            }
        };
        let hello = match got {
            Ok(Received::Nothing) => return (Some(self), Step::Waiting),
            Ok(Received::End) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before its hello",
            )),
            Ok(Received::Message(n)) => hello_message(&buf[..n.min(buf.len())], n),
            Err(e) => Err(e),
        };
        match hello {
            Ok(hello) => (None, Step::Hello(self.endpoint, hello, None)),
            Err(e) => (None, Step::Failed(self.endpoint, e)),
        }
    }
}

/// Judges a SEQPACKET hello: the message's bytes as received and its whole length (more than
/// the bytes when it did not fit), which must be a line of at most [`proto::MAX_HELLO`] bytes
/// and its newline.
fn hello_message(bytes: &[u8], len: usize) -> io::Result<Hello> {
    if len > proto::MAX_HELLO + 1 {
        return Err(proto::hello_too_long());
    }
    match bytes.split_last() {
        Some((b'\n', line)) => proto::parse_hello(line),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a hello message without its newline (not a vsplice bench client?)",
        )),
    }
}

/// Reads away `n` bytes that were peeked (so they are there).
fn consume(fd: BorrowedFd<'_>, n: usize) -> io::Result<()> {
    let mut sink = [0u8; MAX_SHOW];
    let mut left = n.min(MAX_SHOW);
    while left > 0 {
        match pipe::read(fd, &mut sink[..left]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(got) => left -= got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The connections whose hellos are on their way, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Hellos {
    pending: VecDeque<Pending>,
    /// Every connection brings a PROXY header first (`--accept-proxy`).
    accept_proxy: bool,
}

impl Hellos {
    /// Hellos that each come after a PROXY protocol header (`--accept-proxy`) or not.
    pub(crate) fn new(accept_proxy: bool) -> Hellos {
        Hellos {
            pending: VecDeque::new(),
            accept_proxy,
        }
    }

    /// Takes a freshly accepted connection and reads what it sent already. Returns what is
    /// to be done now: its hello if complete, and the oldest connection's failure when the
    /// set was full.
    pub(crate) fn add(&mut self, endpoint: Endpoint, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let fresh = Pending {
            endpoint,
            line: Vec::with_capacity(256),
            deadline: now + HELLO_TIMEOUT,
            header: if self.accept_proxy {
                Header::Reading {
                    machine: AcceptProxy::default(),
                    first: None,
                }
            } else {
                Header::Off
            },
        };
        let (left, step) = fresh.advance();
        if let Some(p) = left {
            if self.pending.len() >= MAX_PENDING {
                if let Some(old) = self.pending.pop_front() {
                    let e = io::Error::other(format!(
                        "closed before its hello: {MAX_PENDING} connections were waiting to say hello"
                    ));
                    steps.push(Step::Failed(old.endpoint, e));
                }
            }
            self.pending.push_back(p);
        } else {
            steps.push(step);
        }
        steps
    }

    /// The descriptors to wait on, in order.
    pub(crate) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.pending.iter().map(Pending::fd)
    }

    /// How long until the next hello's time is up (None: no hello pending).
    pub(crate) fn next_deadline(&self, now: Instant) -> Option<Duration> {
        let first = self.pending.iter().map(|p| p.deadline).min()?;
        Some(first.saturating_duration_since(now))
    }

    /// Reads the connections `ready` marks (in [`Hellos::fds`] order) and closes those past
    /// their deadline; returns the finished hellos and the failures.
    pub(crate) fn advance(&mut self, ready: &[bool], now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        for (i, p) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            let (left, step) = if ready.get(i).copied().unwrap_or(false) {
                p.advance()
            } else {
                (Some(p), Step::Waiting)
            };
            match left {
                Some(p) if now >= p.deadline && matches!(p.header, Header::Reading { .. }) => {
                    let why = format!(
                        "no complete PROXY protocol header within {} s (this server has \
                         --accept-proxy)",
                        HELLO_TIMEOUT.as_secs()
                    );
                    steps.push(Step::Refused(p.endpoint, why));
                }
                Some(p) if now >= p.deadline => {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no complete hello within {} s (got {} bytes)",
                            HELLO_TIMEOUT.as_secs(),
                            p.line.len()
                        ),
                    );
                    steps.push(Step::Failed(p.endpoint, e));
                }
                Some(p) => kept.push_back(p),
                None => steps.push(step),
            }
        }
        self.pending = kept;
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::Socket;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A connection as the server holds it after its accept (non-blocking, labelled with its
    /// number), and the client's end.
    fn connection(n: usize) -> (Endpoint, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let endpoint = Endpoint::socket(Socket::from_owned(server.into()), format!("client {n}"));
        (endpoint, client)
    }

    fn data_hello(cookie: &str) -> Hello {
        Hello::Data {
            cookie: cookie.into(),
            stream: 0,
        }
    }

    /// Whether the server closed the client's connection (it reads end of file now).
    fn closed(client: &mut UnixStream) -> bool {
        client.set_nonblocking(true).unwrap();
        match client.read(&mut [0u8; 16]) {
            Ok(0) => true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
            other => panic!("a pending client read {other:?}"),
        }
    }

    /// A TCP connection as a `--accept-proxy` server holds it (a PROXY header needs a peer
    /// that can be peeked: TCP), and the client's end.
    fn tcp_connection() -> (Endpoint, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let endpoint = Endpoint::socket(Socket::from_owned(server.into()), peer.to_string());
        (endpoint, client)
    }

    fn hello_line(cookie: &str) -> Vec<u8> {
        let mut line = serde_json::to_vec(&data_hello(cookie)).unwrap();
        line.push(b'\n');
        line
    }

    /// Gives loopback a moment to deliver what the client wrote (a test that waited too
    /// little fails on "waits", never passes wrongly).
    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn a_v2_header_split_in_two_then_the_hello_yields_the_declared_client_and_no_hello_byte_is_lost()
     {
        use crate::protocols::prelude::Origin;
        use crate::protocols::proxy_protocol::{Extras, encode};
        use crate::sys::socket::SockAddr;
        let origin = Origin {
            source: SockAddr::Vsock { cid: 7, port: 1234 },
            destination: Some(SockAddr::Vsock { cid: 2, port: 5201 }),
            credentials: None,
        };
        let header = encode(
            crate::addr::ProxyVersion::V2,
            Some(&origin),
            &Extras::default(),
        );
        let now = Instant::now();
        let mut hellos = Hellos::new(true);
        let (endpoint, mut client) = tcp_connection();
        client.write_all(&header[..10]).unwrap();
        settle();
        assert!(
            matches!(&hellos.add(endpoint, now)[..], []),
            "half a header waits"
        );
        let mut rest = header[10..].to_vec();
        rest.extend(hello_line("px"));
        rest.extend(b"data after the hello");
        client.write_all(&rest).unwrap();
        settle();
        match &hellos.advance(&[true], now)[..] {
            [Step::Hello(endpoint, hello, Some(seen))] => {
                assert_eq!(*hello, data_hello("px"));
                assert_eq!(seen.client.as_deref(), Some("vsock:7:1234"));
                assert_eq!(seen.proxy, "v2");
                assert_eq!(seen.via, endpoint.label());
                let mut after = [0u8; 20];
                let fd = endpoint.read_fd().unwrap();
                assert_eq!(pipe::read(fd, &mut after).unwrap(), 20);
                assert_eq!(
                    &after, b"data after the hello",
                    "nothing past the hello was read"
                );
            }
            other => panic!("a hello with its declared client, got {other:?}"),
        }
    }

    #[test]
    fn a_v1_header_is_read_and_a_hello_without_a_header_is_refused_naming_the_reason() {
        let now = Instant::now();
        let mut hellos = Hellos::new(true);
        let (endpoint, mut client) = tcp_connection();
        let mut bytes = b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 5201\r\n".to_vec();
        bytes.extend(hello_line("v1"));
        client.write_all(&bytes).unwrap();
        settle();
        match &hellos.add(endpoint, now)[..] {
            [Step::Hello(_, hello, Some(seen))] => {
                assert_eq!(*hello, data_hello("v1"));
                assert_eq!(seen.client.as_deref(), Some("192.0.2.1:40000"));
                assert_eq!(seen.proxy, "v1");
            }
            other => panic!("a hello with its declared client, got {other:?}"),
        }
        let (endpoint, mut client) = tcp_connection();
        client.write_all(&hello_line("bare")).unwrap();
        settle();
        match &hellos.add(endpoint, now)[..] {
            [Step::Refused(_, why)] => {
                assert!(
                    why.contains("no valid PROXY protocol header (bad-signature"),
                    "{why}"
                );
                assert!(why.contains("--accept-proxy"), "{why}");
            }
            other => panic!("a refusal, got {other:?}"),
        }
        // A header that never comes whole: refused at the deadline, saying so.
        let (endpoint, mut client) = tcp_connection();
        client.write_all(b"PROXY TCP4 1.2").unwrap();
        settle();
        assert!(hellos.add(endpoint, now).is_empty());
        match &hellos.advance(&[true], now + HELLO_TIMEOUT)[..] {
            [Step::Refused(_, why)] => {
                assert!(
                    why.contains("no complete PROXY protocol header within 5 s"),
                    "{why}"
                );
            }
            other => panic!("a refusal at the deadline, got {other:?}"),
        }
    }

    #[test]
    fn a_seqpacket_hello_is_one_message_and_leaves_the_next_one_unread() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (server, client) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .unwrap();
        let endpoint = Endpoint::socket(Socket::from_owned(server), "seqpacket".into());
        assert!(endpoint.is_message());
        let mut client = std::fs::File::from(client);
        proto::send_line(&mut client, &data_hello("m")).unwrap();
        client.write_all(b"DATA").unwrap();
        let mut hellos = Hellos::default();
        let Step::Hello(endpoint, hello, None) = hellos.add(endpoint, Instant::now()).remove(0)
        else {
            panic!("the hello is whole at once");
        };
        assert_eq!(hello, data_hello("m"));
        let mut next = [0u8; 16];
        let got = message::recv_message(endpoint.read_fd().unwrap(), &mut next, ZeroMeans::End);
        assert_eq!(got.unwrap(), Received::Message(4));
        assert_eq!(&next[..4], b"DATA");
    }

    #[test]
    fn a_seqpacket_hello_without_newline_or_too_long_is_refused() {
        let line = b"{\"type\":\"data\",\"cookie\":\"c\",\"stream\":0}\n";
        assert_eq!(
            hello_message(line, line.len()).unwrap(),
            data_hello("c"),
            "a whole hello"
        );
        let cut = hello_message(&line[..line.len() - 1], line.len() - 1).unwrap_err();
        assert!(cut.to_string().contains("without its newline"), "{cut}");
        let long = hello_message(line, proto::MAX_HELLO + 2).unwrap_err();
        assert!(long.to_string().contains("too long"), "{long}");
    }

    #[test]
    fn past_max_pending_partial_hellos_the_oldest_is_closed_and_hellos_are_still_answered() {
        let now = Instant::now();
        let mut hellos = Hellos::default();
        let mut clients = Vec::new();
        for n in 0..MAX_PENDING {
            let (endpoint, mut client) = connection(n);
            client.write_all(b"{\"type\":").unwrap();
            let steps = hellos.add(endpoint, now);
            assert!(steps.is_empty(), "{n}: {steps:?}");
            clients.push(client);
        }
        assert_eq!(hellos.fds().count(), MAX_PENDING);

        // One more partial hello: the oldest waiting one (client 0) is closed for it, only that.
        let (endpoint, late) = connection(MAX_PENDING);
        let steps = hellos.add(endpoint, now);
        match &steps[..] {
            [Step::Failed(oldest, e)] => {
                assert_eq!(oldest.label(), "client 0", "the oldest is the one closed");
                let why = format!("{MAX_PENDING} connections were waiting");
                assert!(e.to_string().contains(&why), "{e}");
            }
            other => panic!("one failure expected, got {other:?}"),
        }
        drop(steps);
        assert!(closed(&mut clients[0]), "client 0 was closed");
        for (n, client) in clients.iter_mut().enumerate().skip(1) {
            assert!(!closed(client), "client {n} still waits");
        }
        assert_eq!(hellos.fds().count(), MAX_PENDING);

        // Still answered: a fresh connection whose hello is whole, without closing anyone...
        let (endpoint, mut whole) = connection(MAX_PENDING + 1);
        proto::send_line(&mut whole, &data_hello("fresh")).unwrap();
        match &hellos.add(endpoint, now)[..] {
            [Step::Hello(e, hello, None)] => {
                assert_eq!(e.label(), format!("client {}", MAX_PENDING + 1));
                assert_eq!(*hello, data_hello("fresh"));
            }
            other => panic!("the whole hello is answered at once, got {other:?}"),
        }
        assert!(!closed(&mut clients[1]), "client 1 still waits");
        // ...and a waiting one (client 1, now the oldest) that finishes its hello.
        clients[1]
            .write_all(b"\"data\",\"cookie\":\"late\",\"stream\":0}\n")
            .unwrap();
        let mut ready = vec![false; MAX_PENDING];
        ready[0] = true;
        match &hellos.advance(&ready, now)[..] {
            [Step::Hello(e, hello, None)] => {
                assert_eq!(e.label(), "client 1");
                assert_eq!(*hello, data_hello("late"));
            }
            other => panic!("client 1's hello is answered, got {other:?}"),
        }
        assert_eq!(hellos.fds().count(), MAX_PENDING - 1);
        drop(late);
    }
}
