//! One end of one bench stream: its sender and receiver together, and how their counts merge.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use super::proto::{Params, StreamCounts};
use super::receive::{Ending, Expect, TestStart, receive};
use super::send::{limit_for, send};
use super::stream::Stream;

/// Where a stream end stands with the other end: what it expects to receive, how long it
/// waits for a silent sender, and whom to tell its own sent count as soon as it has one.
pub(crate) struct OtherEnd<'a> {
    pub expect: &'a Expect,
    pub idle: Duration,
    pub on_sent: Box<dyn FnOnce(u64) + Send + 'a>,
}

/// One end of one stream: the sender runs on this thread when `send_from` gives the test's
/// start; the receiver, when `receive` is set, on a helper thread beside a sender or on this
/// one alone, timed from the test's start as `test_start` gives it (see [`TestStart`]);
/// their counts are merged. The sent count goes to `peer.on_sent` when
/// sending ends (0 at once for an end that does not send), so the control connection can
/// carry it while the receiver still runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_end(
    stream: &Stream,
    id: u32,
    params: &Params,
    send_from: Option<Instant>,
    receive: bool,
    test_start: TestStart<'_>,
    sent: &AtomicU64,
    received: &AtomicU64,
    peer: OtherEnd<'_>,
) -> StreamCounts {
    let OtherEnd {
        expect,
        idle,
        on_sent,
    } = peer;
    let receiver = || {
        self::receive(
            stream,
            id,
            params.len,
            params.verify,
            received,
            expect,
            idle,
            Ending::of(params, id),
            test_start,
        )
    };
    let Some(started) = send_from else {
        // Nothing to send: no helper thread, and the count (0) goes out at once.
        on_sent(0);
        return match receive {
            true => receiver(),
            false => StreamCounts {
                stream: id,
                ..StreamCounts::default()
            },
        };
    };
    std::thread::scope(|scope| {
        let receiver = receive.then(|| scope.spawn(receiver));
        let sent = send(
            stream,
            id,
            params.len,
            limit_for(params, id, started),
            params.verify,
            params.zerocopy,
            sent,
        );
        on_sent(sent.sent);
        match receiver {
            Some(r) => merge(sent, r.join().unwrap_or_default()),
            None => sent,
        }
    })
}

/// Merges a stream's sender and receiver counts (bidirectional streams have both).
pub(crate) fn merge(a: StreamCounts, b: StreamCounts) -> StreamCounts {
    StreamCounts {
        stream: a.stream,
        sent: a.sent + b.sent,
        send_seconds: a.send_seconds.max(b.send_seconds),
        received: a.received + b.received,
        recv_seconds: a.recv_seconds.max(b.recv_seconds),
        transactions: a.transactions + b.transactions,
        sent_messages: a.sent_messages + b.sent_messages,
        received_messages: a.received_messages + b.received_messages,
        vsock_buffer: a.vsock_buffer.or(b.vsock_buffer),
        error: a.error.or(b.error),
    }
}
