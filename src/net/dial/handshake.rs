//! The bytes a dial exchanges on a connected socket before handing it over: the preamble
//! (a `send-proxy` header), written whole, and the hybrid-vsock handshake (`CONNECT <port>\n`
//! out, `OK <n>\n` back, parsed by [`crate::net::hybrid`]). Each step does what the socket
//! allows without blocking and says whether to wait, is done, or failed; the deadline and
//! what a failure costs are [`super::Dial`]'s.

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::time::Instant;

use super::outcome::Interest;
use crate::net::hybrid::{MAX_REPLY, parse_handshake_reply};
use crate::sys::socket::{SockAddr, Socket};

/// A preamble or hybrid-vsock handshake in progress on a connected socket.
#[derive(Debug)]
pub(super) struct Handshake {
    pub(super) socket: Socket,
    pub(super) target: SockAddr,
    request: Vec<u8>,
    sent: usize,
    reply: Vec<u8>,
    pub(super) deadline: Instant,
}

/// Where an exchange stands after a step.
pub(super) enum Step {
    /// Wait until the socket is ready for this, then step again.
    Wait(Interest),
    /// The request is written whole (and for the handshake, the reply read and accepted).
    Done,
    /// The attempt failed, for this reason.
    Failed(String),
}

impl Handshake {
    /// `request` to write on `socket` (connected to `target`) before `deadline`.
    pub(super) fn new(
        socket: Socket,
        target: SockAddr,
        request: Vec<u8>,
        deadline: Instant,
    ) -> Handshake {
        Handshake {
            socket,
            target,
            request,
            sent: 0,
            reply: Vec::new(),
            deadline,
        }
    }

    pub(super) fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Sends what is left of the request without blocking: `Ok` once all of it is written,
    /// else the error that stopped it (EAGAIN: the socket is full for now).
    fn send_rest(&mut self) -> nix::Result<()> {
        while self.sent < self.request.len() {
            match nix::sys::socket::send(
                self.socket.as_raw_fd(),
                &self.request[self.sent..],
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => self.sent += n,
                Err(nix::Error::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what is left of the preamble.
    pub(super) fn write_preamble(&mut self) -> Step {
        match self.send_rest() {
            Ok(()) => Step::Done,
            Err(nix::Error::EAGAIN) => Step::Wait(Interest::Writable),
            Err(e) => Step::Failed(format!("writing the PROXY header: {e}")),
        }
    }

    /// Drives the `CONNECT <port>` / `OK <n>` exchange. The reply is read with MSG_PEEK first
    /// so that not one byte past its newline is consumed: whatever the VMM sends after `OK`
    /// belongs to the relayed stream.
    pub(super) fn exchange(&mut self) -> Step {
        match self.send_rest() {
            Ok(()) => {}
            Err(nix::Error::EAGAIN) => return Step::Wait(Interest::Writable),
            Err(e) => return Step::Failed(format!("sending CONNECT: {e}")),
        }
        let mut peek = [0u8; MAX_REPLY];
        let room = MAX_REPLY - self.reply.len();
        let peeked = match nix::sys::socket::recv(
            self.socket.as_raw_fd(),
            &mut peek[..room],
            nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Step::Failed("connection closed without a reply".into()),
            Ok(n) => n,
            Err(nix::Error::EAGAIN) => 0,
            Err(e) => return Step::Failed(format!("reading the reply: {e}")),
        };
        if peeked > 0 {
            let newline = peek[..peeked].iter().position(|&b| b == b'\n');
            // Consume exactly the reply bytes: up to and including the newline, or all of
            // what was peeked when it holds no newline yet.
            let take = newline.map_or(peeked, |i| i + 1);
            let mut line = vec![0u8; take];
            match nix::unistd::read(self.socket.as_fd(), &mut line) {
                Ok(n) if n == take => {}
                Ok(n) => return Step::Failed(format!("short read of the reply ({n} of {take})")),
                Err(e) => return Step::Failed(format!("reading the reply: {e}")),
            }
            self.reply.extend_from_slice(&line);
            if newline.is_some() {
                self.reply.pop();
                return match parse_handshake_reply(&self.reply) {
                    Ok(_) => Step::Done,
                    Err(why) => Step::Failed(why),
                };
            }
            if self.reply.len() >= MAX_REPLY {
                return Step::Failed("reply line too long".into());
            }
        }
        Step::Wait(Interest::Readable)
    }
}
