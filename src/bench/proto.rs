//! The bench wire protocol: JSON lines on a control connection, and one JSON hello line at the
//! start of each data connection.
//!
//! A test: the client opens the control connection and sends `Hello::Control` with the test
//! parameters; the server answers `Ready`. The client opens `streams` data connections, each
//! starting with `Hello::Data`; once all arrived the server sends `Start`. Bytes flow for the
//! test's time or byte budget. Streams do not end by half-close (hybrid-vsock backends lose or
//! widen it): each end, once its senders stopped, sends `Sent` with the byte count of every
//! stream, and the other end's receivers stop when they have that many (iperf3 ends its
//! streams over its control socket the same way). The client then sends `Done`, and the server
//! answers `Results` with its own counts and CPU, so the client prints both ends.

use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 2;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestDirection {
    /// The client sends (default).
    Forward,
    /// The server sends (`--reverse`).
    Reverse,
    /// Both at once on every stream (`--bidir`).
    Bidir,
}

impl TestDirection {
    pub fn client_sends(self) -> bool {
        matches!(self, TestDirection::Forward | TestDirection::Bidir)
    }

    pub fn server_sends(self) -> bool {
        matches!(self, TestDirection::Reverse | TestDirection::Bidir)
    }
}

/// When senders stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Send for this many milliseconds.
    Time { ms: u64 },
    /// Send this many bytes in total, split over the streams.
    Bytes { total: u64 },
}

/// What the streams do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Bulk bytes (throughput).
    #[default]
    Stream,
    /// Request/response transactions on one connection per stream (`--rr`).
    Rr,
    /// A new connection per transaction (`--crr`).
    Crr,
}

impl Workload {
    pub fn is_stream(&self) -> bool {
        *self == Workload::Stream
    }
}

/// The parameters of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    pub streams: u32,
    /// Bytes per write and per read.
    pub len: usize,
    pub direction: TestDirection,
    pub limit: Limit,
    /// Fill with a known pattern and check it on receipt.
    pub verify: bool,
    /// Send with MSG_ZEROCOPY.
    pub zerocopy: bool,
    /// Throughput or transactions (left out of the JSON for throughput, as before).
    #[serde(default, skip_serializing_if = "Workload::is_stream")]
    pub workload: Workload,
    /// SO_VM_SOCKETS_BUFFER_SIZE (and _MAX) for vsock data sockets at both ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_buffer: Option<u64>,
    /// SOCK_SEQPACKET (`--seqpacket`): every write is one message, every receive must be one
    /// whole message of the length sent (left out of the JSON for streams).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub messages: bool,
}

/// The largest stream count a test may ask for.
pub const MAX_STREAMS: u32 = 20_000;
/// The largest write size (each stream holds one or a few buffers of it at each end).
pub const MAX_LEN: usize = 16 << 20;
/// The most buffer memory a test may make one end hold: streams x write size.
pub const MAX_BUFFERED: u64 = 2 << 30;
/// The largest message of a `--seqpacket` test: vsock's default buffer (a UNIX SEQPACKET
/// socket takes up to its send buffer, about 208K by default; a larger message fails that
/// stream with the kernel's EMSGSIZE).
pub const MAX_MESSAGE: usize = 256 << 10;
/// Control lines go out in pieces of at most this many bytes, and are read with buffers of
/// at least this size: over SOCK_SEQPACKET each piece is one message, and a read never cuts
/// one (a hello, at most [`MAX_HELLO`] and its newline, is always one piece).
pub const CONTROL_CHUNK: usize = 8 << 10;
/// The longest test, as iperf3 allows: one day.
pub const MAX_TIME_MS: u64 = 86_400_000;
/// The largest byte budget: 1 PiB.
pub const MAX_BYTES: u64 = 1 << 50;
/// The largest vsock buffer a test may ask for (each end's kernel may hold this much per
/// stream).
pub const MAX_VSOCK_BUFFER: u64 = 256 << 20;
/// The longest control line an end accepts before it knows the stream count.
pub const MAX_LINE: usize = 64 << 10;
/// Control line room per stream (results and byte counts carry one entry per stream).
pub const LINE_PER_STREAM: usize = 512;

/// Which parameter is out of its bounds, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadParam {
    /// The parameter's name in the protocol (the client's option is `--` this name).
    pub name: &'static str,
    pub why: String,
}

impl std::fmt::Display for BadParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.name, self.why)
    }
}

impl Params {
    /// Checks every parameter against its bounds. Both ends call it: the client before it
    /// connects, the server on every control hello (which may come from anyone).
    pub fn check(&self) -> Result<(), BadParam> {
        let bad = |name: &'static str, why: String| Err(BadParam { name, why });
        if !(1..=MAX_STREAMS).contains(&self.streams) {
            return bad(
                "streams",
                format!("{} is not a stream count 1-{MAX_STREAMS}", self.streams),
            );
        }
        if !(1..=MAX_LEN).contains(&self.len) {
            return bad(
                "len",
                format!("{} is not a write size 1-{MAX_LEN} (16M)", self.len),
            );
        }
        let buffered = u64::from(self.streams) * self.len as u64;
        if buffered > MAX_BUFFERED {
            return bad(
                "len",
                format!(
                    "{} times {} streams is more than {MAX_BUFFERED} bytes (2G) of buffers",
                    self.len, self.streams
                ),
            );
        }
        if self.messages {
            if !self.workload.is_stream() {
                return bad(
                    "seqpacket",
                    "measures messages one way or both, not --rr/--crr transactions".into(),
                );
            }
            if self.zerocopy {
                return bad(
                    "zerocopy",
                    "is for streams: SEQPACKET messages are sent copied".into(),
                );
            }
            if self.len > MAX_MESSAGE {
                return bad(
                    "len",
                    format!(
                        "{} is more than the largest --seqpacket message, {MAX_MESSAGE} (256K)",
                        self.len
                    ),
                );
            }
        }
        if let Some(b) = self.vsock_buffer {
            if !(4096..=MAX_VSOCK_BUFFER).contains(&b) {
                return bad(
                    "vsock-buffer",
                    format!("{b} is not a vsock buffer size from 4K to 256M"),
                );
            }
        }
        match self.limit {
            Limit::Time { ms } if !(1..=MAX_TIME_MS).contains(&ms) => bad(
                "time",
                format!("{ms} ms is not a test length from 1 ms to 86400 s"),
            ),
            Limit::Bytes { total } if !(1..=MAX_BYTES).contains(&total) => bad(
                "bytes",
                format!("{total} is not a byte budget from 1 to {MAX_BYTES} (1P)"),
            ),
            _ => Ok(()),
        }
    }

    /// The longest control line an end accepts once the test's parameters are known.
    pub fn max_line(&self) -> usize {
        MAX_LINE + LINE_PER_STREAM * self.streams.min(MAX_STREAMS) as usize
    }

    /// Bytes stream `stream` sends under a byte limit (the remainder goes to stream 0).
    pub fn stream_bytes(&self, stream: u32) -> Option<u64> {
        match self.limit {
            Limit::Time { .. } => None,
            Limit::Bytes { total } => {
                let n = u64::from(self.streams.max(1));
                let share = total / n;
                Some(if stream == 0 {
                    share + total % n
                } else {
                    share
                })
            }
        }
    }
}

/// The first line of every connection to a bench server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Hello {
    Control {
        version: u32,
        cookie: String,
        params: Params,
    },
    Data {
        cookie: String,
        stream: u32,
    },
}

/// CPU time used by one end during a test, as a share of the test's wall time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub user_pct: f64,
    pub system_pct: f64,
}

impl Cpu {
    pub fn total_pct(&self) -> f64 {
        self.user_pct + self.system_pct
    }
}

/// One end's view of one stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamCounts {
    pub stream: u32,
    pub sent: u64,
    pub send_seconds: f64,
    pub received: u64,
    pub recv_seconds: f64,
    /// Request/response transactions (`--rr`, `--crr`).
    #[serde(default)]
    pub transactions: u64,
    /// Messages sent and received whole (`--seqpacket`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sent_messages: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub received_messages: u64,
    /// The vsock buffer this end's socket has, read back (when asked for and vsock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_buffer: Option<u64>,
    /// Anything that went wrong on this stream at this end (I/O error, pattern mismatch).
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Who a test's client is, as a server with `--accept-proxy` saw it: what the PROXY header on
/// the control connection declared, and the relay in front that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSeen {
    /// The declared client (`127.0.0.1:40000`, `vsock:3:1234`, `unix:/path`); `None`: the
    /// header declared none (`LOCAL`, `UNKNOWN`).
    pub client: Option<String>,
    /// The header's version, `v1` or `v2`.
    pub proxy: String,
    /// The socket's own peer: the relay that wrote the header.
    pub via: String,
}

impl std::fmt::Display for PeerSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client = self.client.as_deref().unwrap_or("no client declared");
        write!(
            f,
            "{client} (PROXY {} header from {})",
            self.proxy, self.via
        )
    }
}

/// Messages the server sends on the control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    Ready,
    Start,
    /// Bytes the server sent on each stream (zeros when it does not send).
    Sent {
        bytes: Vec<u64>,
    },
    Results {
        streams: Vec<StreamCounts>,
        cpu: Cpu,
        seconds: f64,
        /// Who the server saw as the test's client (a server with `--accept-proxy`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<PeerSeen>,
    },
    Error {
        message: String,
    },
}

/// Messages the client sends on the control connection after the hello.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Bytes the client sent on each stream (zeros when it does not send).
    Sent {
        bytes: Vec<u64>,
    },
    Done,
}

/// Writes one message as a JSON line, in pieces of at most [`CONTROL_CHUNK`] bytes (one
/// write each: over SOCK_SEQPACKET, one message each).
pub fn send_line<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
    line.push(b'\n');
    line.chunks(CONTROL_CHUNK)
        .try_for_each(|piece| w.write_all(piece))
}

/// Reads one JSON line of at most `max` bytes; end of file is an `UnexpectedEof` error, a
/// longer line an `InvalidData` error (the peer is not a bench end, or is hostile: no line
/// may make this end hold more than `max` bytes).
pub fn recv_line<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead, max: usize) -> io::Result<T> {
    let mut line = Vec::new();
    let n = Read::take(&mut *r, max as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if line.last() != Some(&b'\n') {
        let why = if line.len() > max {
            format!("a control line longer than {max} bytes (not a vsplice bench peer?)")
        } else {
            "connection closed in the middle of a control line".to_string()
        };
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    serde_json::from_slice(&line)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad message: {e}")))
}

/// Reads one line byte by byte, so not one byte of the data that follows is consumed.
pub fn read_hello(r: &mut impl Read) -> io::Result<Hello> {
    let mut line = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        if r.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before its hello",
            ));
        }
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
        if line.len() > MAX_HELLO {
            return Err(hello_too_long());
        }
    }
    parse_hello(&line)
}

/// The longest hello line, newline left out.
pub const MAX_HELLO: usize = 4096;

pub fn hello_too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "hello line too long (not a vsplice bench client?)",
    )
}

/// Parses a hello line (without its newline).
pub fn parse_hello(line: &[u8]) -> io::Result<Hello> {
    serde_json::from_slice(line).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad hello (not a vsplice bench client?): {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_leaves_following_bytes_unread() {
        let hello = Hello::Data {
            cookie: "abc".into(),
            stream: 3,
        };
        let mut wire = Vec::new();
        send_line(&mut wire, &hello).unwrap();
        wire.extend_from_slice(b"DATA");
        let mut cursor = io::Cursor::new(wire);
        assert_eq!(read_hello(&mut cursor).unwrap(), hello);
        let mut rest = String::new();
        cursor.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "DATA");
    }

    #[test]
    fn messages_are_tagged_json_lines() {
        let mut wire = Vec::new();
        send_line(&mut wire, &ServerMsg::Start).unwrap();
        assert_eq!(wire, b"{\"type\":\"start\"}\n");
        let back: ServerMsg = recv_line(&mut io::Cursor::new(wire), MAX_LINE).unwrap();
        assert_eq!(back, ServerMsg::Start);
        let err = recv_line::<ServerMsg>(&mut io::Cursor::new(Vec::new()), MAX_LINE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_control_line_longer_than_a_chunk_goes_in_pieces_of_at_most_a_chunk() {
        /// Records each write's length, as a SEQPACKET socket would take each as a message.
        struct Writes(Vec<usize>);
        impl Write for Writes {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let bytes = vec![1_234_567_890u64; 4000];
        let mut w = Writes(Vec::new());
        send_line(&mut w, &ServerMsg::Sent { bytes }).unwrap();
        let total: usize = w.0.iter().sum();
        assert!(total > 2 * CONTROL_CHUNK, "{total}");
        assert!(w.0.iter().all(|&n| n <= CONTROL_CHUNK), "{:?}", w.0);
        assert_eq!(w.0.len(), total.div_ceil(CONTROL_CHUNK));
        let mut w = Writes(Vec::new());
        send_line(&mut w, &ServerMsg::Start).unwrap();
        assert_eq!(
            w.0,
            [b"{\"type\":\"start\"}\n".len()],
            "a short line is one write"
        );
    }

    #[test]
    fn byte_limits_split_over_streams() {
        let p = Params {
            streams: 3,
            len: 1,
            direction: TestDirection::Forward,
            limit: Limit::Bytes { total: 10 },
            verify: false,
            zerocopy: false,
            workload: Workload::Stream,
            vsock_buffer: None,
            messages: false,
        };
        assert_eq!(p.stream_bytes(0), Some(4));
        assert_eq!(p.stream_bytes(1), Some(3));
        assert_eq!(p.stream_bytes(2), Some(3));
    }
}
