//! A peer's reset reaches the other peer as a reset, on every data path, whichever side
//! resets: one side uploads, the other reads a MiB and closes with SO_LINGER 0. The uploader
//! classifies the first event its socket shows (a reset, or a clean end of file: a FIN the
//! relay sent before its reset), and any clean end of file fails the test (issue 17, item 4).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(120);
/// Connections per mode and resetting side.
const CONNECTIONS: usize = 100;
/// Connections open at once: enough that a worker handles several, and the completions of
/// one connection's two directions land in one batch.
const AT_ONCE: usize = 4;
/// What the resetting side reads before it resets.
const READ_BEFORE_RESET: usize = MIB;
/// What the uploader tries to send: more than the resetting side reads, so the reset cuts
/// the upload short.
const UPLOAD: usize = 8 * MIB;

const MODES: [&str; 6] = ["auto", "splice", "uring-splice", "copy", "recv", "recv-zc"];

/// The first thing an uploading socket showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FirstEvent {
    Reset,
    /// A read returned 0, or a write failed with EPIPE (a FIN had come first) or the upload
    /// finished and then a read returned 0.
    CleanEnd {
        uploaded: usize,
    },
}

/// Uploads `data` on `stream` while reading, reading first whenever the socket is readable,
/// until the connection ends; the first event decides.
fn upload_and_classify(stream: &mut TcpStream, data: &[u8]) -> FirstEvent {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    stream.set_nonblocking(true).unwrap();
    let mut sent = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut events = PollFlags::POLLIN;
        if sent < data.len() {
            events |= PollFlags::POLLOUT;
        }
        let mut fds = [PollFd::new(stream.as_fd(), events)];
        let timeout = PollTimeout::try_from(LONG.as_millis() as i32).unwrap();
        match poll(&mut fds, timeout) {
            Ok(0) => panic!("the connection neither moved nor ended for {LONG:?}"),
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
        if revents.intersects(readable) {
            match stream.read(&mut buf) {
                Ok(0) => return FirstEvent::CleanEnd { uploaded: sent },
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return FirstEvent::Reset,
                Err(e) => panic!("read: {e}"),
            }
        }
        if revents.contains(PollFlags::POLLOUT) && sent < data.len() {
            let end = (sent + 256 * 1024).min(data.len());
            match stream.write(&data[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return FirstEvent::Reset,
                // EPIPE without a reset first: the peer's FIN arrived, then its reset
                // (which, after a FIN, reads as a broken pipe).
                Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                    return FirstEvent::CleanEnd { uploaded: sent };
                }
                Err(e) => panic!("write: {e}"),
            }
        }
    }
}

/// Reads `READ_BEFORE_RESET` bytes from `stream`, checks they are the upload's first bytes,
/// and closes with a reset.
fn read_then_reset(mut stream: TcpStream, data: &[u8]) {
    let mut got = vec![0u8; READ_BEFORE_RESET];
    stream
        .read_exact(&mut got)
        .expect("the resetting side reads");
    assert!(
        got == data[..READ_BEFORE_RESET],
        "the bytes before the reset arrived unchanged"
    );
    close_with_reset(stream);
}

/// Which side of the relay resets.
#[derive(Debug, Clone, Copy)]
enum Resetter {
    /// The second address (the backend): the client uploads.
    Second,
    /// The first address (the client): the backend uploads.
    First,
}

/// Runs `CONNECTIONS` connections through a `--mode MODE` relay; returns how many uploaders
/// saw a clean end first, with a sample of them, and the relay's log.
fn clean_ends(mode: &str, resetter: Resetter) -> (usize, Vec<FirstEvent>, String) {
    let data = payload(UPLOAD, 17).data;
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    widen_backlog(&backend);
    let upstream = format!("TCP:{}", backend.local_addr().unwrap());
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut relay = Relay::start(&["--mode", mode, &listen, &upstream]);
    let (events_tx, events) = mpsc::channel();
    let backend_thread = {
        let data = Arc::clone(&data);
        let events_tx = events_tx.clone();
        std::thread::spawn(move || {
            for _ in 0..CONNECTIONS {
                let (mut stream, _) = backend.accept().expect("backend accept");
                let data = Arc::clone(&data);
                let events_tx = events_tx.clone();
                std::thread::spawn(move || match resetter {
                    Resetter::Second => read_then_reset(stream, &data),
                    Resetter::First => {
                        let _ = events_tx.send(upload_and_classify(&mut stream, &data));
                    }
                });
            }
        })
    };
    let clients: Vec<_> = (0..AT_ONCE)
        .map(|worker| {
            let data = Arc::clone(&data);
            let events_tx = events_tx.clone();
            std::thread::spawn(move || {
                for _ in (worker..CONNECTIONS).step_by(AT_ONCE) {
                    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    match resetter {
                        Resetter::Second => {
                            let _ = events_tx.send(upload_and_classify(&mut client, &data));
                        }
                        Resetter::First => read_then_reset(client, &data),
                    }
                }
            })
        })
        .collect();
    drop(events_tx);
    for client in clients {
        client.join().expect("a client thread");
    }
    backend_thread.join().expect("the backend thread");
    let seen: Vec<FirstEvent> = (0..CONNECTIONS)
        .map(|_| events.recv_timeout(LONG).expect("every uploader reports"))
        .collect();
    let clean: Vec<FirstEvent> = seen
        .iter()
        .copied()
        .filter(|e| *e != FirstEvent::Reset)
        .collect();
    assert!(relay.is_running(), "the relay survives resets");
    let log = relay.log();
    assert_eq!(relay.stop().code(), Some(0), "{log}");
    (clean.len(), clean.into_iter().take(5).collect(), log)
}

fn a_reset_reaches_the_uploader_as_a_reset_in_every_mode(resetter: Resetter) {
    let mut failures = Vec::new();
    for mode in MODES {
        let (clean, sample, log) = clean_ends(mode, resetter);
        eprintln!("{mode}, {resetter:?} address resets: {clean} of {CONNECTIONS} clean ends");
        if clean > 0 {
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            failures.push(format!(
                "--mode {mode}: {clean} of {CONNECTIONS} uploaders read a clean end of file \
                 before the reset (first: {sample:?}); relay log tail:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_backend_reset_during_an_upload_reaches_the_client_as_a_reset_never_a_clean_end_in_every_mode()
{
    a_reset_reaches_the_uploader_as_a_reset_in_every_mode(Resetter::Second);
}

#[test]
fn a_client_reset_during_a_download_reaches_the_backend_as_a_reset_never_a_clean_end_in_every_mode()
{
    a_reset_reaches_the_uploader_as_a_reset_in_every_mode(Resetter::First);
}
