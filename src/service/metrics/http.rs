//! The metrics endpoint: a minimal HTTP/1.x server on its own thread that answers
//! `GET /metrics` with the OpenMetrics text, 404 for other paths, 405 for other methods.
//!
//! It listens on any listening address of the grammar (through [`Listener::open`], so TCP,
//! UNIX and vsock listeners with their options, `allow=` included). A hostile client cannot
//! stall it: one thread serves every client from a `poll(2)` loop on non-blocking sockets,
//! so a client that trickles its request holds a slot, never the thread. There are
//! [`MAX_CLIENTS`] slots; when all are taken, a new client takes the slot of the client that
//! has waited longest, so idle sockets cannot lock a scraper out (the thread-per-client server
//! this replaced had 8 slots, which 8 sockets sending one byte every 5 s held for good). A
//! request head is read only up to [`MAX_REQUEST_BYTES`], the whole exchange (not each read)
//! has [`CLIENT_DEADLINE`] to finish, and a scraper that takes its answer and does not close
//! is let go after [`LINGER`].

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::families::Metrics;
use crate::addr::Address;
use crate::error::{Error, Result};
use crate::net::open::Listener;
use crate::sys::eventfd::EventFd;
use crate::sys::socket::{SockAddr, Socket};

/// Clients served at once; past that a new client displaces the one that has waited longest.
pub(crate) const MAX_CLIENTS: usize = 64;
/// The longest request head read (request line and headers).
pub(crate) const MAX_REQUEST_BYTES: usize = 8192;
/// Time a client has, from its accept, to send its request and take the answer.
pub(crate) const CLIENT_DEADLINE: Duration = Duration::from_secs(5);
/// How long a client that has its whole answer may keep the connection open before it is
/// closed: long enough to read what it still sends (closing with unread bytes would reset
/// the connection and could destroy the answer), short enough that it frees its slot.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// The running endpoint; dropping it stops the server thread.
#[derive(Debug)]
pub struct MetricsServer {
    local: SockAddr,
    /// A duplicate of the listening socket, for a binary upgrade to hand over.
    listening: OwnedFd,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `address` and serves `metrics` from a new thread.
    pub fn start(address: &Address, metrics: Arc<Metrics>) -> Result<MetricsServer> {
        MetricsServer::start_on(Listener::open(address)?, metrics)
    }

    /// Serves `metrics` on `listener` (opened here or handed over) from a new thread.
    pub fn start_on(mut listener: Listener, metrics: Arc<Metrics>) -> Result<MetricsServer> {
        // Nothing prints a scraper's address: save the getpeername.
        listener.set_peer_labels(false);
        let local = listener.local_addr().clone();
        let listening = listener
            .socket()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("metrics: duplicating the listening socket", e))?;
        let stop = Arc::new(EventFd::new().map_err(|e| Error::io("metrics: eventfd", e))?);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("vsplice-metrics".into())
                .spawn(move || serve(listener, metrics, &stop))
                .map_err(|e| Error::io("metrics: starting the thread", e))?
        };
        Ok(MetricsServer {
            local,
            listening,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port the kernel picked for port 0).
    pub fn local_addr(&self) -> &SockAddr {
        &self.local
    }

    /// The listening socket (a duplicate: the server thread accepts on its own).
    pub fn listening(&self) -> &OwnedFd {
        &self.listening
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.notify();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where one client's exchange stands.
#[derive(Debug)]
enum Phase {
    /// Reading the request head.
    Reading { head: Vec<u8> },
    /// Writing the answer; `sent` bytes of it are out.
    Writing { response: Vec<u8>, sent: usize },
    /// The answer is out and the write side shut; reading what the client still sends
    /// until it closes or `until`.
    Lingering { until: Instant },
}

/// One client of the endpoint: its socket, its deadline and where its exchange stands.
#[derive(Debug)]
struct Client {
    socket: Socket,
    deadline: Instant,
    phase: Phase,
}

impl Client {
    fn new(socket: Socket, now: Instant) -> Client {
        Client {
            socket,
            deadline: now + CLIENT_DEADLINE,
            phase: Phase::Reading {
                head: Vec::with_capacity(1024),
            },
        }
    }

    /// The next instant at which this client must be closed if nothing happens.
    fn expires(&self) -> Instant {
        match self.phase {
            Phase::Lingering { until } => until.min(self.deadline),
            _ => self.deadline,
        }
    }

    /// What the client's socket is polled for now.
    fn waits_for(&self) -> PollFlags {
        match self.phase {
            Phase::Writing { .. } => PollFlags::POLLOUT,
            _ => PollFlags::POLLIN,
        }
    }

    /// Moves the exchange on as far as the socket allows without blocking; `false`: the
    /// exchange is over (done, or the client left or failed) and the client is to be closed.
    fn advance(&mut self, metrics: &Metrics, now: Instant) -> bool {
        loop {
            match &mut self.phase {
                Phase::Reading { head } => {
                    if head_complete(head) || head.len() >= MAX_REQUEST_BYTES {
                        let response = respond(classify(head), metrics);
                        self.phase = Phase::Writing { response, sent: 0 };
                        continue;
                    }
                    let mut buf = [0u8; 2048];
                    match nix::unistd::read(self.socket.as_fd(), &mut buf) {
                        Ok(0) => return false,
                        Ok(n) => {
                            let room = MAX_REQUEST_BYTES - head.len();
                            head.extend_from_slice(&buf[..n.min(room)]);
                        }
                        Err(nix::Error::EINTR) => {}
                        Err(nix::Error::EAGAIN) => return true,
                        Err(_) => return false,
                    }
                }
                Phase::Writing { response, sent } => {
                    if *sent == response.len() {
                        let _ = self.socket.shutdown_write();
                        self.phase = Phase::Lingering {
                            until: now + LINGER,
                        };
                        continue;
                    }
                    match nix::unistd::write(&self.socket, &response[*sent..]) {
                        Ok(n) => *sent += n,
                        Err(nix::Error::EINTR) => {}
                        Err(nix::Error::EAGAIN) => return true,
                        Err(_) => return false,
                    }
                }
                Phase::Lingering { .. } => {
                    let mut sink = [0u8; 1024];
                    match nix::unistd::read(self.socket.as_fd(), &mut sink) {
                        Ok(0) => return false,
                        Ok(_) | Err(nix::Error::EINTR) => {}
                        Err(nix::Error::EAGAIN) => return true,
                        Err(_) => return false,
                    }
                }
            }
        }
    }
}

/// The server thread: one poll loop over the stop event, the listener and every client.
fn serve(listener: Listener, metrics: Arc<Metrics>, stop: &EventFd) {
    // Oldest first, so the client displaced when the slots are full is the front one.
    let mut clients: VecDeque<Client> = VecDeque::with_capacity(MAX_CLIENTS);
    loop {
        let now = Instant::now();
        let timeout = clients
            .iter()
            .map(Client::expires)
            .min()
            .map(|t| t.saturating_duration_since(now));
        let timeout = match timeout {
            None => PollTimeout::NONE,
            // Round up, so the loop does not spin through the last sub-millisecond.
            Some(d) => {
                PollTimeout::try_from(d + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        let (stopped, acceptable, ready) = {
            let mut fds = Vec::with_capacity(clients.len() + 2);
            fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(listener.socket().as_fd(), PollFlags::POLLIN));
            for c in &clients {
                fds.push(PollFd::new(c.socket.as_fd(), c.waits_for()));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => {
                    crate::warn!("metrics: poll: {e}");
                    return;
                }
            }
            let fired = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds[2..].iter().map(fired).collect();
            (fired(&fds[0]), fired(&fds[1]), ready)
        };
        if stopped {
            return;
        }
        let now = Instant::now();
        let mut index = 0;
        clients.retain_mut(|c| {
            let fired = ready.get(index).copied().unwrap_or(false);
            index += 1;
            if fired && !c.advance(&metrics, now) {
                return false;
            }
            c.expires() > now
        });
        if acceptable {
            accept_all(&listener, &mut clients, &metrics, now);
        }
    }
}

/// Accepts every pending client that the allow list admits (through [`Listener::accept`],
/// the admission every listener's connections take: a refused TCP peer reads a reset),
/// serving each as far as it can go at once (a scraper whose request is already in often
/// finishes here).
fn accept_all(
    listener: &Listener,
    clients: &mut VecDeque<Client>,
    metrics: &Metrics,
    now: Instant,
) {
    while let Ok(Some(endpoint)) = listener.accept() {
        let Some(socket) = endpoint.into_socket() else {
            continue;
        };
        let mut client = Client::new(socket, now);
        if !client.advance(metrics, now) {
            continue;
        }
        if clients.len() >= MAX_CLIENTS {
            clients.pop_front();
            crate::limited!(
                Info,
                "metrics: all {MAX_CLIENTS} slots taken; closed the oldest client"
            );
        }
        clients.push_back(client);
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

fn classify(head: &[u8]) -> Request {
    if !head_complete(head) {
        return Request::Bad;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    if method != "GET" {
        return Request::BadMethod;
    }
    let path = target.split('?').next().unwrap_or_default();
    if path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// The whole HTTP answer to a request.
fn respond(request: Request, metrics: &Metrics) -> Vec<u8> {
    let (status, content_type, body) = match request {
        Request::Metrics => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        Request::BadMethod => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        Request::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(classify(b"GET /metrics?x=1 HTTP/1.0\n\n"), Request::Metrics);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            classify(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(classify(b"GET /metrics\r\n\r\n"), Request::Bad);
        assert_eq!(classify(b"GET /metrics HTTP/1.1\r\nHost: x"), Request::Bad);
    }

    fn get(port: u16, request: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_404_and_outlasts_a_silent_client() {
        let (server, port) = start_local();
        // A client that connects and says nothing holds one slot, not the server.
        let _silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let reply = get(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("vsplice_connections_accepted_total{service=\"api\"} 1\n"));
        assert!(reply.ends_with("# EOF\n"));
        assert!(get(port, b"GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        // An endless header is cut at the limit and answered 400.
        let mut long = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES));
        assert!(get(port, &long).starts_with("HTTP/1.1 400 "));
        drop(server);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    fn start_local() -> (MetricsServer, u16) {
        let metrics = Arc::new(Metrics::new());
        metrics.service("api").on_accept();
        let address = Address::parse("TCP4-LISTEN:0,bind=127.0.0.1").unwrap();
        let server = MetricsServer::start(&address, metrics).unwrap();
        let SockAddr::Inet(local) = server.local_addr() else {
            panic!("inet")
        };
        let port = local.port();
        (server, port)
    }

    #[test]
    fn a_scrape_is_answered_while_more_trickling_clients_than_slots_are_connected() {
        let (_server, port) = start_local();
        // Each sends one byte of a request and then nothing: the slow-loris that held all
        // eight slots of the thread-per-client server.
        let tricklers: Vec<std::net::TcpStream> = (0..MAX_CLIENTS + 8)
            .map(|_| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.write_all(b"G").unwrap();
                s
            })
            .collect();
        // A scraper that takes its answer and keeps its socket open holds no one up either.
        let mut lazy = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        lazy.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        for _ in 0..3 {
            let reply = get(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply:?}");
            assert!(reply.ends_with("# EOF\n"));
        }
        let mut out = String::new();
        lazy.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out:?}");
        drop(tricklers);
    }

    #[test]
    fn a_client_that_trickles_its_request_is_cut_at_the_deadline_for_the_whole_request() {
        let (_server, port) = start_local();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        // One byte of a header every 200 ms would keep a per-read timeout waiting forever.
        let closed = loop {
            if started.elapsed() > CLIENT_DEADLINE * 6 {
                break false;
            }
            if s.write_all(b"X").is_err() {
                break true;
            }
            match s.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => panic!("answered an unfinished request"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break true,
            }
        };
        assert!(closed, "still open after {:?}", started.elapsed());
        assert!(started.elapsed() >= CLIENT_DEADLINE);
    }

    #[test]
    fn a_scraper_outside_the_allow_list_reads_a_reset_and_no_metrics() {
        let metrics = Arc::new(Metrics::new());
        let address = Address::parse("TCP4-LISTEN:0,bind=127.0.0.1,allow=10.9.9.0/24").unwrap();
        let server = MetricsServer::start(&address, metrics).unwrap();
        let SockAddr::Inet(local) = server.local_addr() else {
            panic!("inet")
        };
        let mut s = std::net::TcpStream::connect(("127.0.0.1", local.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let got = s.read(&mut [0u8; 64]);
        assert_eq!(
            got.as_ref().map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "a refused scraper reads a reset, got {got:?}"
        );
    }
}
