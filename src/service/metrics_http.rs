//! The metrics endpoint: a minimal HTTP/1.x server on its own thread that answers
//! `GET /metrics` with the OpenMetrics text, 404 for other paths, 405 for other methods.
//!
//! It listens on any listening address of the grammar (through [`Listener::open`], so TCP,
//! UNIX and vsock listeners with their options, `allow=` included). A hostile client cannot
//! stall it: each client is served on a short-lived thread (at most [`MAX_CLIENTS`] at once;
//! past that new clients are closed at once), a request is read only up to
//! [`MAX_REQUEST_BYTES`], and the whole exchange has [`CLIENT_DEADLINE`] to finish.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::allow::Peer;
use super::metrics::Metrics;
use crate::addr::Address;
use crate::error::{Error, Result};
use crate::open::Listener;
use crate::sys::eventfd::EventFd;
use crate::sys::socket::{SockAddr, Socket, wait_readable, wait_writable};

/// Clients served at once; more are closed at once.
pub const MAX_CLIENTS: usize = 8;
/// The longest request head read (request line and headers).
pub const MAX_REQUEST_BYTES: usize = 8192;
/// Time a client has to send its request and take the answer.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// The running endpoint; dropping it stops the server thread.
#[derive(Debug)]
pub struct MetricsServer {
    local: SockAddr,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `address` and serves `metrics` from a new thread.
    pub fn start(address: &Address, metrics: Arc<Metrics>) -> Result<MetricsServer> {
        let listener = Listener::open(address)?;
        let local = listener.local_addr().clone();
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
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port the kernel picked for port 0).
    pub fn local_addr(&self) -> &SockAddr {
        &self.local
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

fn serve(listener: Listener, metrics: Arc<Metrics>, stop: &EventFd) {
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let mut fds = [
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(listener.socket().as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                crate::warn!("metrics: poll: {e}");
                return;
            }
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        while let Ok(Some(socket)) = listener.socket().accept() {
            if let Some(allow) = &listener.address().options.allow {
                match Peer::of(&socket) {
                    Ok(peer) if allow.permits(&peer) => {}
                    Ok(peer) => {
                        crate::limited!(Info, "metrics: {peer} refused by the allow list");
                        continue;
                    }
                    Err(_) => continue,
                }
            }
            if clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                clients.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (metrics, slots) = (metrics.clone(), clients.clone());
            let spawned = std::thread::Builder::new()
                .name("vsplice-scrape".into())
                .spawn(move || {
                    if let Err(e) = answer(&socket, &metrics) {
                        crate::debug!("metrics: client: {e}");
                    }
                    slots.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                clients.fetch_sub(1, Ordering::SeqCst);
            }
        }
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

/// Reads the request head, at most [`MAX_REQUEST_BYTES`], before `deadline`. `Ok(None)`:
/// the client left or was too slow.
fn read_head(socket: &Socket, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() >= MAX_REQUEST_BYTES {
            return Ok(Some(head));
        }
        if !wait_readable(socket.as_fd(), Some(deadline))? {
            return Ok(None);
        }
        match nix::unistd::read(socket.as_fd(), &mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_REQUEST_BYTES - head.len())]),
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => return Err(crate::sys::from_nix(e)),
        }
    }
}

fn classify(head: &[u8]) -> Request {
    let complete =
        head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n");
    if !complete {
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

fn answer(socket: &Socket, metrics: &Metrics) -> io::Result<()> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let Some(head) = read_head(socket, deadline)? else {
        return Ok(());
    };
    let (status, content_type, body) = match classify(&head) {
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
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    write_all(socket, response.as_bytes(), deadline)
}

fn write_all(socket: &Socket, mut data: &[u8], deadline: Instant) -> io::Result<()> {
    while !data.is_empty() {
        if !wait_writable(socket.as_fd(), Some(deadline))? {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow"));
        }
        match nix::unistd::write(socket, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(e) => return Err(crate::sys::from_nix(e)),
        }
    }
    let _ = socket.shutdown_write();
    // Read what the client still sends until it closes: closing with unread bytes would
    // reset the connection, and a reset can destroy the answer before the client reads it.
    let mut sink = [0u8; 1024];
    while wait_readable(socket.as_fd(), Some(deadline))? {
        match nix::unistd::read(socket.as_fd(), &mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
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
        let metrics = Arc::new(Metrics::new());
        metrics.service("api").on_accept();
        let address = Address::parse("TCP4-LISTEN:0,bind=127.0.0.1").unwrap();
        let server = MetricsServer::start(&address, metrics).unwrap();
        let SockAddr::Inet(local) = server.local_addr() else {
            panic!("inet")
        };
        let port = local.port();
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
}
