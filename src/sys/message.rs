//! The system calls of message sockets (SOCK_SEQPACKET, datagrams): one message received
//! whole with its full length known, one message sent whole, and the socket settings that
//! make both exact.
//!
//! A receive asks with `MSG_TRUNC`, so the kernel returns the message's real length even when
//! it did not fit the buffer: a message is never cut short without the caller knowing. A UNIX
//! SEQPACKET socket reports a zero-length message and the end of the stream both as 0; with
//! `SO_PASSCRED` on the receiving socket every message comes with an `SCM_CREDENTIALS` control
//! message and the end of the stream with none, which tells them apart ([`ZeroMeans`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// What a receive of 0 bytes means on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ZeroMeans {
    /// The end of the stream (vsock SEQPACKET: its kernel drops zero-length messages).
    End,
    /// A zero-length message (datagrams: UDP has no end of stream).
    Message,
    /// Either: the credentials that come with every message tell (UNIX SEQPACKET with
    /// [`pass_credentials`] set).
    AskCredentials,
}

/// What one receive found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    /// A message of this many bytes (more than the buffer when it did not fit: its tail is
    /// lost, and the caller must treat it as an error).
    Message(usize),
    /// The peer ended the stream.
    End,
    /// Nothing to read now.
    Nothing,
}

/// Room for one `SCM_CREDENTIALS` control message (CMSG_SPACE of a `ucred`: 16 + 12, padded),
/// as u64s for the alignment `cmsghdr` needs.
const CONTROL_WORDS: usize = 8;

/// Receives one message into `buf` without waiting.
pub(crate) fn recv_message(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    zero: ZeroMeans,
) -> io::Result<Received> {
    recv_message_flags(fd, buf, zero, libc::MSG_DONTWAIT)
}

/// Receives one message into `buf`, waiting on a blocking socket as long as its
/// `SO_RCVTIMEO` allows ([`Received::Nothing`] when that time ran out).
pub(crate) fn recv_message_waiting(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    zero: ZeroMeans,
) -> io::Result<Received> {
    recv_message_flags(fd, buf, zero, 0)
}

fn recv_message_flags(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    zero: ZeroMeans,
    wait: libc::c_int,
) -> io::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; CONTROL_WORDS];
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if zero == ZeroMeans::AskCredentials {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
    }
    let flags = wait | libc::MSG_TRUNC | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points at `iov` (describing `buf`, writable for its length) and at
    // `control` (writable for msg_controllen bytes), all live for the call; `fd` is borrowed.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(Received::Nothing),
            _ => Err(e),
        };
    }
    let n = n as usize;
    if n > 0 {
        return Ok(Received::Message(n));
    }
    Ok(match zero {
        ZeroMeans::End => Received::End,
        ZeroMeans::Message => Received::Message(0),
        ZeroMeans::AskCredentials if msg.msg_controllen > 0 => Received::Message(0),
        ZeroMeans::AskCredentials => Received::End,
    })
}

/// Reads what a stream holds into `buf` without waiting: the bytes read (0 at its end), or
/// `None` when it holds nothing now.
pub(crate) fn recv_stream(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is writable for its length for the call; `fd` is borrowed.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(None),
        _ => Err(e),
    }
}

/// Sends `buf` as one message (or, on a stream, as much of it as goes): the bytes sent, or
/// the error (EAGAIN when nothing could go now on a non-blocking socket).
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL;
    // SAFETY: `buf` is readable for its length for the call; `fd` is borrowed.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Makes every message received on `fd` carry its sender's credentials (`SO_PASSCRED`), so
/// that [`ZeroMeans::AskCredentials`] can tell a zero-length message from the end.
pub(crate) fn pass_credentials(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)
}

/// Clears `O_NONBLOCK` on `fd`'s open file (shared by its duplicates), so sends wait in the
/// kernel until the whole message is queued. Receives must then pass `MSG_DONTWAIT`
/// themselves, as [`recv_message`] and [`recv_stream`] do.
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a borrowed, open descriptor touch no memory of ours.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) })?;
    Ok(())
}

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, live for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn seqpacket_pair() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn a_zero_length_seqpacket_message_is_told_from_the_end_by_its_credentials() {
        let (a, b) = seqpacket_pair();
        pass_credentials(b.as_fd()).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(send(a.as_fd(), b"").unwrap(), 0);
        assert_eq!(send(a.as_fd(), b"xy").unwrap(), 2);
        drop(a);
        let r = |buf: &mut [u8]| recv_message(b.as_fd(), buf, ZeroMeans::AskCredentials).unwrap();
        assert_eq!(r(&mut buf), Received::Message(0));
        assert_eq!(r(&mut buf), Received::Message(2));
        assert_eq!(r(&mut buf), Received::End);
    }

    #[test]
    fn a_message_larger_than_the_buffer_reports_its_full_length() {
        let (a, b) = seqpacket_pair();
        send(a.as_fd(), &[7u8; 100]).unwrap();
        let mut buf = [0u8; 10];
        assert_eq!(
            recv_message(b.as_fd(), &mut buf, ZeroMeans::End).unwrap(),
            Received::Message(100)
        );
        assert_eq!(
            recv_message(b.as_fd(), &mut buf, ZeroMeans::End).unwrap(),
            Received::Nothing
        );
    }

    #[test]
    fn an_empty_datagram_is_a_message() {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.send(b"").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            recv_message(b.as_fd(), &mut buf, ZeroMeans::Message).unwrap(),
            Received::Message(0)
        );
    }
}
