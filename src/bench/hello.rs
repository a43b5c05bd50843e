//! The hellos of connections a bench server accepted, read on the accepting thread without a
//! thread per connection: a connection gets its own thread only once its whole hello arrived
//! and was admitted. Each hello has [`HELLO_TIMEOUT`] in all (not per read, so a peer that
//! trickles a byte at a time is cut too), and at most [`MAX_PENDING`] wait at once: beyond, the
//! oldest is closed, so a flood of idle connections cannot keep a real client out for long.

use std::collections::VecDeque;
use std::io;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use super::proto::{self, Hello};
use crate::net::endpoint::Endpoint;
use crate::sys::message::{self, Received, ZeroMeans};
use crate::sys::pipe;

/// How long a connection has, from its accept, to send its whole hello line.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most connections whose hello is still on its way.
pub(crate) const MAX_PENDING: usize = 256;

/// An accepted connection whose hello is on its way (its socket is non-blocking).
#[derive(Debug)]
pub(crate) struct Pending {
    endpoint: Endpoint,
    line: Vec<u8>,
    deadline: Instant,
}

/// Where a pending hello stands after `Pending::advance`.
#[derive(Debug)]
pub(crate) enum Step {
    Waiting,
    Hello(Endpoint, Hello),
    Failed(Endpoint, io::Error),
}

impl Pending {
    fn fd(&self) -> BorrowedFd<'_> {
        self.endpoint.read_fd().expect("a socket")
    }

    /// Reads what arrived, a byte at a time, so that not one byte after the newline (the data
    /// that follows a data hello) is consumed; on a SEQPACKET connection, the one message
    /// that is the hello.
    fn advance(mut self) -> (Option<Pending>, Step) {
        if self.endpoint.is_message() {
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
                    let step = match proto::parse_hello(&self.line) {
                        Ok(hello) => Step::Hello(self.endpoint, hello),
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
            Ok(hello) => (None, Step::Hello(self.endpoint, hello)),
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

/// The connections whose hellos are on their way, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Hellos {
    pending: VecDeque<Pending>,
}

impl Hellos {
    /// Takes a freshly accepted connection and reads what it sent already. Returns what is
    /// to be done now: its hello if complete, and the oldest connection's failure when the
    /// set was full.
    pub(crate) fn add(&mut self, endpoint: Endpoint, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        let fresh = Pending {
            endpoint,
            line: Vec::with_capacity(256),
            deadline: now + HELLO_TIMEOUT,
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
        let Step::Hello(endpoint, hello) = hellos.add(endpoint, Instant::now()).remove(0) else {
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
            [Step::Hello(e, hello)] => {
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
            [Step::Hello(e, hello)] => {
                assert_eq!(e.label(), "client 1");
                assert_eq!(*hello, data_hello("late"));
            }
            other => panic!("client 1's hello is answered, got {other:?}"),
        }
        assert_eq!(hellos.fds().count(), MAX_PENDING - 1);
        drop(late);
    }
}
