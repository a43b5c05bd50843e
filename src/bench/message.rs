//! `--seqpacket` tests: the receive side's boundary check. Every write of a SEQPACKET sender
//! is one message, so the receiver knows the length of each message before it comes: the
//! write size, or under `--bytes` what is left of the stream's share when that is less. A
//! receive asks with `MSG_TRUNC` into a buffer one byte longer than the write size, so a
//! message that is longer than the one sent (two merged) shows its whole length, and one that
//! is shorter (one split) shows as such: either ends the stream with an error naming the
//! message. [`Boundaries`] is that check, pure; [`receive_message`] the system call it judges.

use std::io;
use std::os::fd::AsFd;

use serde::Serialize;

use super::proto::{Params, StreamCounts};
use super::stream::Stream;
use crate::sys::message::{Received, ZeroMeans, recv_message_waiting};

/// What one stream's receiver knows about the messages it is to get.
#[derive(Debug, Clone)]
pub(crate) struct Boundaries {
    len: usize,
    /// The stream's bytes in all, when the test has a byte budget.
    total: Option<u64>,
    /// Messages received whole so far.
    pub messages: u64,
    stream: u32,
}

impl Boundaries {
    /// Messages of `len` bytes on stream `stream`, `total` bytes in all under a byte budget
    /// (`None`: a timed test, every message `len` bytes).
    pub(crate) fn new(len: usize, total: Option<u64>, stream: u32) -> Boundaries {
        Boundaries {
            len,
            total,
            messages: 0,
            stream,
        }
    }

    /// The length of the next message, `received` bytes into the stream (0: none is due).
    pub(crate) fn expected(&self, received: u64) -> usize {
        match self.total {
            Some(total) => total.saturating_sub(received).min(self.len as u64) as usize,
            None => self.len,
        }
    }

    /// Judges a message of `got` bytes (its whole length, as `MSG_TRUNC` reports it) that
    /// came `received` bytes into the stream: counted when it is the message sent, else the
    /// error that ends the stream.
    pub(crate) fn check(&mut self, got: usize, received: u64) -> Result<(), String> {
        let want = self.expected(received);
        let number = self.messages + 1;
        let stream = self.stream + 1;
        if want == 0 {
            return Err(format!(
                "message {number} of stream {stream} ({got} bytes) came after all {received} \
                 bytes sent"
            ));
        }
        if got != want {
            let how = if got > want { "merged" } else { "split" };
            return Err(format!(
                "message {number} of stream {stream} was {got} bytes, sent as one of {want}: \
                 a boundary was lost ({how})"
            ));
        }
        self.messages += 1;
        Ok(())
    }
}

/// Receives one message on a blocking SEQPACKET stream into `buf` (at least one byte longer
/// than the write size), judged by `boundaries`: its length, 0 at the end of the stream (the
/// bench sends no empty messages), `WouldBlock` when the receive timeout ran out, and
/// `InvalidData` for a message that is not the one sent.
pub(crate) fn receive_message(
    stream: &Stream,
    buf: &mut [u8],
    boundaries: &mut Boundaries,
    received: u64,
) -> io::Result<usize> {
    let got = recv_message_waiting(stream.reader().as_fd(), buf, ZeroMeans::End)
        .map_err(|e| explain(e, stream.is_vsock()))?;
    match got {
        Received::Message(n) => match boundaries.check(n, received) {
            Ok(()) => Ok(n),
            Err(why) => Err(io::Error::new(io::ErrorKind::InvalidData, why)),
        },
        Received::End => Ok(0),
        Received::Nothing => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// Says what a vsock SEQPACKET receive's ENOBUFS means. Since the kernel counts each queued
/// packet's buffer overhead against the receive buffer (commit 059b7dbd20a6, "vsock/virtio:
/// fix potential unbounded skb queue") and resets a connection whose packet no longer fits
/// (a4f0b001782b, "reset connection on receiving queue overflow"; both in the 6.1.176 of the
/// guest lab), a reader that falls behind a sender of small messages (SEQPACKET messages are
/// never merged into one buffer, as a stream's small writes are) has its connection reset: its
/// receive fails with ENOBUFS, the sender's send with EPIPE. Seen in the guest lab with
/// 64-byte to 1000-byte messages (also with a 4M buffer), never with 16K-128K ones.
fn explain(e: io::Error, vsock: bool) -> io::Error {
    if !(vsock && e.raw_os_error() == Some(libc::ENOBUFS)) {
        return e;
    }
    io::Error::new(
        e.kind(),
        format!(
            "{e}: the kernel reset this vsock SEQPACKET connection, its receive queue \
             overflowed with small messages (try a larger --vsock-buffer or --len)"
        ),
    )
}

/// Messages moved in one direction (`--seqpacket`), as both ends counted them, and their
/// rates over each end's own time.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MessageRates {
    pub sender_messages: u64,
    pub sender_messages_per_second: f64,
    pub receiver_messages: u64,
    pub receiver_messages_per_second: f64,
}

impl MessageRates {
    pub fn new(sent: u64, send_s: f64, received: u64, recv_s: f64) -> MessageRates {
        let rate = |n: u64, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        MessageRates {
            sender_messages: sent,
            sender_messages_per_second: rate(sent, send_s),
            receiver_messages: received,
            receiver_messages_per_second: rate(received, recv_s),
        }
    }

    /// The streams' sum: counts added, over the longest stream's time (`seconds`, each end's).
    pub fn sum<'a>(
        parts: impl Iterator<Item = &'a MessageRates>,
        send_s: f64,
        recv_s: f64,
    ) -> Option<MessageRates> {
        let mut parts = parts.peekable();
        parts.peek()?;
        let (sent, received) = parts.fold((0, 0), |(s, r), p| {
            (s + p.sender_messages, r + p.receiver_messages)
        });
        Some(MessageRates::new(sent, send_s, received, recv_s))
    }
}

/// The messages of one direction of one stream (`--seqpacket`; `None` for streams), from the
/// sending end's counts and the receiving one's; a count that differs is an error of the
/// stream. `sender` names the sending end ("client" or "server").
pub(crate) fn counted(
    params: &Params,
    (sent, received): (&StreamCounts, &StreamCounts),
    sender: &str,
    errors: &mut Vec<String>,
) -> Option<MessageRates> {
    if !params.messages {
        return None;
    }
    if sent.sent_messages != received.received_messages {
        let receiver = if sender == "client" {
            "server"
        } else {
            "client"
        };
        errors.push(format!(
            "stream {}: the {sender} sent {} messages but the {receiver} received {}",
            sent.stream + 1,
            sent.sent_messages,
            received.received_messages
        ));
    }
    Some(MessageRates::new(
        sent.sent_messages,
        sent.send_seconds,
        received.received_messages,
        received.recv_seconds,
    ))
}

/// The text after a summary line's bitrate: the sender's and the receiver's messages and
/// rate, or nothing for streams.
pub(crate) fn columns(m: Option<&MessageRates>) -> (String, String) {
    let Some(m) = m else {
        return (String::new(), String::new());
    };
    let column = |n: u64, per_second: f64| format!("  {n:>10} msgs  {:>13}", rate_text(per_second));
    (
        column(m.sender_messages, m.sender_messages_per_second),
        column(m.receiver_messages, m.receiver_messages_per_second),
    )
}

/// A message rate as printed: `12.3 kmsg/s`.
pub(crate) fn rate_text(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2} Mmsg/s", per_second / 1e6)
    } else {
        format!("{:.1} kmsg/s", per_second / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_test_expects_every_message_at_the_write_size() {
        let mut b = Boundaries::new(1000, None, 0);
        for i in 0..5 {
            assert_eq!(b.expected(i * 1000), 1000);
            b.check(1000, i * 1000).unwrap();
        }
        assert_eq!(b.messages, 5);
    }

    #[test]
    fn a_byte_budget_ends_with_one_short_message_and_nothing_after() {
        let mut b = Boundaries::new(1000, Some(2500), 1);
        b.check(1000, 0).unwrap();
        b.check(1000, 1000).unwrap();
        assert_eq!(b.expected(2000), 500);
        b.check(500, 2000).unwrap();
        assert_eq!(b.messages, 3);
        let late = b.check(7, 2500).unwrap_err();
        assert!(late.contains("message 4 of stream 2"), "{late}");
        assert!(late.contains("after all 2500 bytes"), "{late}");
    }

    #[test]
    fn a_merged_or_split_message_is_an_error_naming_it() {
        let mut b = Boundaries::new(100, None, 2);
        b.check(100, 0).unwrap();
        let merged = b.check(200, 100).unwrap_err();
        assert_eq!(
            merged,
            "message 2 of stream 3 was 200 bytes, sent as one of 100: a boundary was lost (merged)"
        );
        let split = b.check(99, 100).unwrap_err();
        assert!(split.ends_with("(split)"), "{split}");
        assert_eq!(b.messages, 1, "neither was counted");
    }

    #[test]
    fn message_counts_that_differ_between_the_ends_are_an_error_naming_both() {
        let params = Params {
            streams: 1,
            len: 100,
            direction: crate::bench::proto::TestDirection::Reverse,
            limit: crate::bench::proto::Limit::Time { ms: 1000 },
            verify: false,
            zerocopy: false,
            workload: Default::default(),
            vsock_buffer: None,
            messages: true,
        };
        let sent = StreamCounts {
            sent_messages: 10,
            send_seconds: 2.0,
            ..StreamCounts::default()
        };
        let received = StreamCounts {
            received_messages: 9,
            recv_seconds: 3.0,
            ..StreamCounts::default()
        };
        let mut errors = Vec::new();
        let m = counted(&params, (&sent, &received), "server", &mut errors).unwrap();
        assert_eq!(
            errors,
            ["stream 1: the server sent 10 messages but the client received 9"]
        );
        assert_eq!(m.sender_messages_per_second, 5.0);
        assert_eq!(m.receiver_messages_per_second, 3.0);
        let (tx, rx) = columns(Some(&m));
        assert!(tx.contains("10 msgs") && tx.contains("0.0 kmsg/s"), "{tx}");
        assert!(rx.contains("9 msgs"), "{rx}");
        let streams = Params {
            messages: false,
            ..params
        };
        assert_eq!(
            counted(&streams, (&sent, &received), "server", &mut errors),
            None
        );
        assert_eq!(columns(None), (String::new(), String::new()));
    }

    #[test]
    fn enobufs_on_vsock_is_explained_and_other_errors_are_left_as_they_are() {
        let e = explain(io::Error::from_raw_os_error(libc::ENOBUFS), true);
        assert!(
            e.to_string()
                .contains("try a larger --vsock-buffer or --len"),
            "{e}"
        );
        assert_eq!(e.raw_os_error(), None);
        let unix = explain(io::Error::from_raw_os_error(libc::ENOBUFS), false);
        assert_eq!(unix.raw_os_error(), Some(libc::ENOBUFS));
        let other = explain(io::Error::from_raw_os_error(libc::ECONNRESET), true);
        assert_eq!(other.raw_os_error(), Some(libc::ECONNRESET));
    }
}
