//! A prelude: a handshake on an accepted socket that runs before the second address is
//! dialed (PROXY protocol `accept-proxy`; a SOCKS5 or HTTP CONNECT server). It is a pure
//! machine behind the [`Prelude`] trait; the engine's worker drives it (reads bounded by
//! [`Prelude::want`], a deadline, writes of the replies it asks for) and acts on its
//! [`Outcome`]: the declared [`Origin`] of the connection (logs, `allow-source`, a following
//! `send-proxy`), and a dial target that replaces the relay's second address.
//!
//! Bytes are shown, not handed over: the driver peeks at the socket (at most `want()` bytes)
//! and the machine says how many of them it took. So a machine never sees a byte it must
//! give back: whatever follows the handshake stays in the socket and is relayed as usual.
//! The contract that keeps the driver from spinning: [`Step::More`] and [`Step::Reply`]
//! take every byte shown (a machine buffers what it needs), [`Step::Done`] takes the first
//! `used` of them.

use crate::addr::Address;
use crate::sys::socket::{PeerCredentials, SockAddr};

/// Who a connection is from, as a prelude declared it (or as its socket says, for a
/// `send-proxy` without an `accept-proxy` in front).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The client: its address and port (CID and port for vsock, a path for UNIX).
    pub source: SockAddr,
    /// The address the client reached, where known.
    pub destination: Option<SockAddr>,
    /// A UNIX client's credentials (SO_PEERCRED), where known.
    pub credentials: Option<PeerCredentials>,
}

/// What a finished prelude yields.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The connection's declared origin; `None`: none declared (a PROXY `LOCAL` header), the
    /// socket's own peer stands.
    pub origin: Option<Origin>,
    /// Where to dial instead of the relay's second address; `None`: the configured one.
    pub target: Option<Box<Address>>,
}

/// Why a prelude failed: a short, fixed `reason` (a metrics label: `truncated`,
/// `bad-signature`, `too-long`, `timeout`, ...) and a sentence for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
    /// The protocol's answer to write before the connection closes (a SOCKS5 reply, an HTTP
    /// status), as far as the socket takes it at once; empty: none.
    pub reply: Vec<u8>,
}

impl Failure {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            reason,
            detail: detail.into(),
            reply: Vec::new(),
        }
    }

    /// The same failure, answered with `reply` before the close.
    pub fn with_reply(mut self, reply: Vec<u8>) -> Failure {
        self.reply = reply;
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// What the machine wants after it was shown bytes. (`Done` is large, with its `Address`;
/// a step is made a few times per connection, so it is not boxed.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// It took every byte shown; show it more when they come.
    More,
    /// It took every byte shown; write these bytes to the client, then show it more.
    Reply(Vec<u8>),
    /// The prelude is over after the first `used` bytes shown (the rest is relayed).
    Done { used: usize, outcome: Outcome },
    /// The connection ends with a reset (after the failure's reply, if it has one); nothing
    /// is dialed.
    Fail(Failure),
}

/// How the dial that followed the prelude ended, told to [`Prelude::dialed`].
#[derive(Debug)]
#[non_exhaustive]
pub enum DialEnd<'a> {
    /// Connected; `local` is the dialed socket's own address where known. Also said when the
    /// connection needed no dial.
    Connected { local: Option<&'a SockAddr> },
    /// Every attempt failed; `why` says how (the relay's log text), `class` in the terms a
    /// proxy's answer tells apart.
    Failed {
        why: &'a str,
        class: crate::protocols::target::FailureClass,
    },
}

/// A handshake run on an accepted socket before its connection is dialed. Implementations
/// are pure: they see bytes and return steps; the worker does the I/O, the deadline and the
/// bounds on what it reads.
pub trait Prelude: Send + std::fmt::Debug {
    /// A short name for logs and metrics (`proxy`, `socks5`, `http-connect`).
    fn name(&self) -> &'static str;
    /// The most bytes it wants shown next (at least 1): the driver peeks at most this many.
    fn want(&self) -> usize;
    /// Shown `bytes` (still in the socket, never empty): what it took and what comes next.
    fn feed(&mut self, bytes: &[u8]) -> Step;
    /// The dial after [`Step::Done`] ended: the bytes to write to the client before relaying
    /// starts (on failure, written as far as the socket takes them at once, before the reset).
    /// Default: nothing.
    fn dialed(&mut self, end: DialEnd<'_>) -> Vec<u8> {
        let _ = end;
        Vec::new()
    }
}

/// The largest number of bytes a driver shows a machine at once, whatever it wants.
pub(crate) const MAX_SHOW: usize = 4096;
