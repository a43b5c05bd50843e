//! The sender loop of one bench stream: writes (copied, or MSG_ZEROCOPY where the socket takes
//! it) until its limit, with the time limit kept by a timer thread, not a clock read per write.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::pattern;
use super::proto::{Limit, Params, StreamCounts};
use super::stream::{Stream, describe, park_until};
use crate::sys::zerocopy;

/// When a sender stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendLimit {
    Until(Instant),
    Bytes(u64),
}

/// Sends until the limit and leaves the write side open. Returns this stream's counts
/// (sender side).
pub(crate) fn send(
    stream: &Stream,
    id: u32,
    len: usize,
    limit: SendLimit,
    verify: bool,
    use_zerocopy: bool,
    counter: &AtomicU64,
) -> StreamCounts {
    let started = Instant::now();
    let mut sent: u64 = 0;
    // A time limit is kept by a timer thread that raises `over` at the deadline, rather than
    // by a clock read per write: in a guest without a vDSO clock that was one system call
    // in two (`bench_against_a_plain_reader_and_writer`).
    let (over, done) = (AtomicBool::new(false), AtomicBool::new(false));
    let (over, done) = (&over, &done);
    let result = std::thread::scope(|scope| {
        let timer = match limit {
            SendLimit::Until(t) => Some(scope.spawn(move || {
                park_until(t, done);
                over.store(true, Ordering::Relaxed);
            })),
            SendLimit::Bytes(_) => None,
        };
        let result = if use_zerocopy {
            send_zerocopy(stream, id, len, limit, verify, counter, &mut sent, over)
        } else {
            send_copy(stream, id, len, limit, verify, counter, &mut sent, over)
        };
        done.store(true, Ordering::SeqCst);
        if let Some(timer) = timer {
            timer.thread().unpark();
        }
        result
    });
    let error = result.err().map(|e| describe(&e, "send"));
    StreamCounts {
        stream: id,
        sent,
        send_seconds: started.elapsed().as_secs_f64(),
        // Every message but a byte budget's last is `len` bytes, and only whole ones count.
        sent_messages: if stream.is_message() {
            sent.div_ceil(len as u64)
        } else {
            0
        },
        error,
        ..StreamCounts::default()
    }
}

/// The next write's length: 0 once the limit is reached (`over`: the time limit's timer
/// fired).
fn next_len(limit: SendLimit, len: usize, sent: u64, over: &AtomicBool) -> usize {
    match limit {
        SendLimit::Until(_) if over.load(Ordering::Relaxed) => 0,
        SendLimit::Until(_) => len,
        SendLimit::Bytes(total) => (total.saturating_sub(sent)).min(len as u64) as usize,
    }
}

#[allow(clippy::too_many_arguments)]
fn send_copy(
    stream: &Stream,
    id: u32,
    len: usize,
    limit: SendLimit,
    verify: bool,
    counter: &AtomicU64,
    sent: &mut u64,
    over: &AtomicBool,
) -> io::Result<()> {
    let mut buf = vec![0u8; len];
    if !verify {
        pattern::fill(id, 0, &mut buf);
    }
    let mut w = stream.writer();
    loop {
        let n = next_len(limit, len, *sent, over);
        if n == 0 {
            return Ok(());
        }
        if verify {
            pattern::fill(id, *sent, &mut buf[..n]);
        }
        let mut off = 0;
        while off < n {
            match w.write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // One write, one message: a part of one would leave its rest as another.
                Ok(k) if stream.is_message() && k != n => {
                    return Err(io::Error::other(format!(
                        "a message of {n} bytes went out as {k} (SEQPACKET send cut it)"
                    )));
                }
                Ok(k) => {
                    off += k;
                    *sent += k as u64;
                    counter.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Blocks until the kernel has reported at least `target` zerocopy sends complete.
fn wait_completed(
    fd: std::os::fd::BorrowedFd<'_>,
    completed: &mut u64,
    target: u64,
) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        *completed += u64::from(zerocopy::reap(fd)?);
        if *completed >= target {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "zerocopy completions did not arrive",
            ));
        }
        // Notifications arrive on the error queue, which poll reports as POLLERR.
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::empty())];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
    }
}

/// MSG_ZEROCOPY sending. With `--verify` each send gets its own buffer from a small ring and
/// a buffer is refilled only after the kernel reported its send complete.
#[allow(clippy::too_many_arguments)]
fn send_zerocopy(
    stream: &Stream,
    id: u32,
    len: usize,
    limit: SendLimit,
    verify: bool,
    counter: &AtomicU64,
    sent: &mut u64,
    over: &AtomicBool,
) -> io::Result<()> {
    const RING: u64 = 8;
    const MAX_OUTSTANDING: u64 = 64;
    let fd = stream.file.as_fd();
    let mut buffers: Vec<Vec<u8>> = (0..if verify { RING } else { 1 })
        .map(|_| vec![0u8; len])
        .collect();
    if !verify {
        pattern::fill(id, 0, &mut buffers[0]);
    }
    let mut issued: u64 = 0;
    let mut completed: u64 = 0;
    loop {
        let n = next_len(limit, len, *sent, over);
        if n == 0 {
            break;
        }
        let slot = (issued % buffers.len() as u64) as usize;
        if verify {
            // This buffer last carried send number `issued - RING`: wait for it.
            if issued >= RING {
                wait_completed(fd, &mut completed, issued - RING + 1)?;
            }
            pattern::fill(id, *sent, &mut buffers[slot][..n]);
        }
        let mut off = 0;
        while off < n {
            match zerocopy::send(fd, &buffers[slot][off..n]) {
                Ok(k) => {
                    issued += 1;
                    off += k;
                    *sent += k as u64;
                    counter.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Too many notifications pending: collect one and retry.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && issued > completed => {
                    let next = completed + 1;
                    wait_completed(fd, &mut completed, next)?
                }
                Err(e) => return Err(e),
            }
        }
        if issued - completed > MAX_OUTSTANDING {
            wait_completed(fd, &mut completed, issued - MAX_OUTSTANDING)?;
        }
    }
    // Every buffer must be released by the kernel before it is freed.
    wait_completed(fd, &mut completed, issued)
}

/// What a sender of stream `id` may send, for a test that started at `started`.
pub(crate) fn limit_for(params: &Params, id: u32, started: Instant) -> SendLimit {
    match params.limit {
        Limit::Time { ms } => SendLimit::Until(started + Duration::from_millis(ms)),
        Limit::Bytes { .. } => SendLimit::Bytes(params.stream_bytes(id).unwrap_or(0)),
    }
}
