//! Message fixtures: a repeatable sequence of messages of random sizes (zero-length ones
//! included), a sender that writes it one message per send, and a checker that reads it back
//! one message per receive and fails on the first message whose length or bytes differ (a
//! merged or split message shows as a wrong length). Works on any connected message socket
//! (UNIX or vsock SEQPACKET, connected UDP) and, with [`Framing::Len16`], on streams.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
};

/// How messages travel on the test's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One message per send and receive (SEQPACKET, datagrams).
    Packets,
    /// A stream, each message behind a 2-byte big-endian length.
    Len16,
}

/// The length of message `i` of sequence `seed`: one in four anywhere in 0..=max, the others
/// up to 1 KiB, and every 97th empty (when `empty` allows). The first is at most 64 bytes: it
/// opens a UDP session, alone (see [`udp_exchange`]).
pub fn message_len(seed: u64, i: usize, max: usize, empty: bool) -> usize {
    let r = mix(seed, i as u64);
    if empty && i % 97 == 5 {
        return 0;
    }
    let len = if i == 0 {
        (r >> 8) as usize % 65
    } else if r % 4 == 0 {
        (r >> 8) as usize % (max + 1)
    } else {
        (r >> 8) as usize % 1025
    };
    if !empty && len == 0 { 1 } else { len }
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut x = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

/// Message `i` of sequence `seed`.
pub fn message(seed: u64, i: usize, max: usize, empty: bool) -> Vec<u8> {
    let len = message_len(seed, i, max, empty);
    let start = mix(seed ^ 0x5555, i as u64);
    (0..len)
        .map(|j| (start as u8).wrapping_add((j as u8).wrapping_mul(31)) ^ (j >> 8) as u8)
        .collect()
}

/// A sequence: its seed, its count, the largest message, whether empty messages are in it.
#[derive(Debug, Clone, Copy)]
pub struct Sequence {
    pub seed: u64,
    pub count: usize,
    pub max: usize,
    pub empty: bool,
}

impl Sequence {
    pub fn message(&self, i: usize) -> Vec<u8> {
        message(self.seed, i, self.max, self.empty)
    }

    /// Bytes in the whole sequence.
    pub fn bytes(&self) -> usize {
        (0..self.count)
            .map(|i| message_len(self.seed, i, self.max, self.empty))
            .sum()
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send_all_bytes(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: `buf` is readable for its length; `fd` is borrowed for the call.
        let n = cvt(unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Sends the sequence on a blocking socket, one message per send (or frame).
pub fn send_sequence(fd: BorrowedFd<'_>, seq: Sequence, framing: Framing) -> io::Result<()> {
    for i in 0..seq.count {
        let m = seq.message(i);
        match framing {
            Framing::Packets => {
                // SAFETY: as in `send_all_bytes`.
                let n = cvt(unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        m.as_ptr().cast(),
                        m.len(),
                        libc::MSG_NOSIGNAL,
                    )
                })?;
                if n != m.len() {
                    return Err(io::Error::other(format!(
                        "message {i}: sent {n} of {}",
                        m.len()
                    )));
                }
            }
            Framing::Len16 => {
                let mut frame = (m.len() as u16).to_be_bytes().to_vec();
                frame.extend_from_slice(&m);
                send_all_bytes(fd, &frame)?;
            }
        }
    }
    Ok(())
}

/// Receives one message (MSG_TRUNC: its real length) on a blocking socket.
pub fn recv_one(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its length; `fd` is borrowed for the call.
    cvt(unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_TRUNC,
        )
    })
}

fn recv_exact(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: as in `recv_one`, for the unfilled tail.
        let n = cvt(unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                0,
            )
        })?;
        if n == 0 {
            return Ok(false);
        }
        got += n;
    }
    Ok(true)
}

/// Reads the sequence back and checks every message's length and bytes, in order.
pub fn check_sequence(fd: BorrowedFd<'_>, seq: Sequence, framing: Framing) -> Result<(), String> {
    let mut buf = vec![0u8; 512 * 1024];
    for i in 0..seq.count {
        let want = seq.message(i);
        let got = match framing {
            Framing::Packets => {
                let n = recv_one(fd, &mut buf).map_err(|e| format!("message {i}: {e}"))?;
                if n > buf.len() {
                    return Err(format!("message {i}: {n} bytes, larger than any sent"));
                }
                &buf[..n]
            }
            Framing::Len16 => {
                let mut len = [0u8; 2];
                if !recv_exact(fd, &mut len).map_err(|e| format!("message {i}: {e}"))? {
                    return Err(format!("message {i}: the stream ended"));
                }
                let n = usize::from(u16::from_be_bytes(len));
                if !recv_exact(fd, &mut buf[..n]).map_err(|e| format!("message {i}: {e}"))? {
                    return Err(format!("message {i}: the stream ended inside it"));
                }
                &buf[..n]
            }
        };
        if got.len() != want.len() {
            return Err(format!(
                "message {i} of {}: {} bytes arrived, {} were sent (merged or split)",
                seq.count,
                got.len(),
                want.len()
            ));
        }
        if got != want.as_slice() {
            return Err(format!("message {i}: its bytes differ"));
        }
    }
    Ok(())
}

/// Sets a receive timeout, so a lost message fails a test instead of hanging it.
pub fn recv_timeout(fd: BorrowedFd<'_>, secs: u64) {
    let tv = libc::timeval {
        tv_sec: secs as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: the pointer and length describe `tv`, live for the call.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVTIMEO");
}

/// Gives a UDP server's socket room for fifty senders with two 64 KiB datagrams each in
/// flight (UDP drops what finds a full queue; SO_RCVBUFFORCE passes rmem_max as root).
pub fn widen_udp_receive_queue(socket: &std::net::UdpSocket) {
    let size: libc::c_int = 16 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: the pointer and length describe `size`, live for the call.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            break;
        }
    }
}

/// A UDP server on loopback that answers every datagram with `prefix` and the datagram.
/// Returns its port.
pub fn udp_answerer(prefix: &'static [u8]) -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = socket.local_addr().unwrap().port();
    widen_udp_receive_queue(&socket);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let mut answer = prefix.to_vec();
            answer.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&answer, from);
        }
    });
    port
}

/// A UDP client's exchange through a relay: sends `out` one datagram at a time with at most
/// `window` unanswered (one until the first answer: the first datagram opens the session),
/// and checks that `back` comes back one datagram per message sent, in
/// order (UDP has no flow control: the window keeps every queue on the way from overflowing).
pub fn udp_exchange(
    socket: &std::net::UdpSocket,
    out: Sequence,
    back: Sequence,
    window: usize,
) -> Result<(), String> {
    assert_eq!(out.count, back.count);
    socket
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    let mut sent = 0;
    for i in 0..back.count {
        let window = if i == 0 { 1 } else { window };
        while sent < out.count && sent < i + window {
            let m = out.message(sent);
            let n = socket.send(&m).map_err(|e| format!("send {sent}: {e}"))?;
            if n != m.len() {
                return Err(format!("send {sent}: {n} of {} bytes", m.len()));
            }
            sent += 1;
        }
        let n = socket
            .recv(&mut buf)
            .map_err(|e| format!("message {i} of {}: {e}", back.count))?;
        let want = back.message(i);
        if n != want.len() || buf[..n] != want[..] {
            return Err(format!(
                "message {i}: {n} bytes arrived, {} expected (or its bytes differ)",
                want.len()
            ));
        }
    }
    Ok(())
}

/// Reads one message of the given framing (blocking); `None` at the end of the stream.
pub fn read_one(fd: BorrowedFd<'_>, buf: &mut [u8], framing: Framing) -> io::Result<Option<usize>> {
    match framing {
        Framing::Packets => recv_one(fd, buf).map(Some),
        Framing::Len16 => {
            let mut len = [0u8; 2];
            if !recv_exact(fd, &mut len)? {
                return Ok(None);
            }
            let n = usize::from(u16::from_be_bytes(len));
            if !recv_exact(fd, &mut buf[..n])? {
                return Err(io::Error::other("the stream ended inside a frame"));
            }
            Ok(Some(n))
        }
    }
}

/// Sends one message of the given framing (blocking).
pub fn write_one(fd: BorrowedFd<'_>, message: &[u8], framing: Framing) -> io::Result<()> {
    match framing {
        Framing::Packets => {
            // SAFETY: `message` is readable for its length; `fd` is borrowed for the call.
            let n = cvt(unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    libc::MSG_NOSIGNAL,
                )
            })?;
            if n != message.len() {
                return Err(io::Error::other("a message went out in part"));
            }
            Ok(())
        }
        Framing::Len16 => {
            let mut frame = (message.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(message);
            send_all_bytes(fd, &frame)
        }
    }
}

/// The far end of a request/answer exchange: checks that `up` arrives message by message
/// and answers each with the next message of `down`.
pub fn answer_each(
    fd: BorrowedFd<'_>,
    up: Sequence,
    down: Sequence,
    framing: Framing,
) -> Result<(), String> {
    let mut buf = vec![0u8; 128 * 1024];
    for i in 0..up.count {
        let n = read_one(fd, &mut buf, framing)
            .map_err(|e| format!("message {i}: {e}"))?
            .ok_or_else(|| format!("message {i}: the stream ended"))?;
        let want = up.message(i);
        if n != want.len() || buf[..n] != want[..] {
            return Err(format!(
                "message {i}: {n} bytes, {} sent (or bytes differ)",
                want.len()
            ));
        }
        write_one(fd, &down.message(i), framing).map_err(|e| format!("answer {i}: {e}"))?;
    }
    Ok(())
}

/// A UNIX SEQPACKET socket (close-on-exec), not yet bound or connected.
pub fn unix_seqpacket() -> OwnedFd {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap()
}

/// A UNIX SEQPACKET socket listening at `path`, with room for `backlog` pending clients.
pub fn seqpacket_listen(path: &Path, backlog: i32) -> OwnedFd {
    let fd = unix_seqpacket();
    bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&fd, Backlog::new(backlog).unwrap()).unwrap();
    fd
}

/// A UNIX SEQPACKET socket connected to `path`.
pub fn seqpacket_connect(path: &Path) -> OwnedFd {
    let fd = unix_seqpacket();
    connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    fd
}
