//! A blocking bench connection and the sender and receiver loops that run on it, shared by
//! client and server. Each loop counts its bytes in an atomic the interval reporter reads.
//!
//! A stream never ends by the transport's half-close: several hybrid-vsock backends drop a
//! guest's SHUT_WR or turn a host's into a full shutdown. A sender just stops and reports its
//! count (the control connection carries it to the other end); a receiver stops once its
//! [`Expect`] holds that count and it has as many bytes, or gives up on the missing ones after
//! [`MISSING_GRACE`], naming the stream.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::pattern;
use super::proto::{Limit, Params, StreamCounts};
use crate::net::endpoint::Endpoint;
use crate::sys::zerocopy;

/// A connected, blocking socket.
#[derive(Debug)]
pub struct Stream {
    file: File,
    family: &'static str,
}

impl Stream {
    pub fn from_endpoint(endpoint: Endpoint) -> io::Result<Stream> {
        let label = endpoint.label().to_string();
        let socket = endpoint
            .into_socket()
            .ok_or_else(|| io::Error::other("the bench needs a socket address, not STDIO"))?;
        let fd: OwnedFd = socket.into_owned();
        let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        let family = if label.starts_with("unix:") {
            "UNIX"
        } else if label.starts_with("vsock:") {
            "vsock"
        } else {
            "TCP"
        };
        Ok(Stream {
            file: File::from(fd),
            family,
        })
    }

    /// Bounds every blocking read and write, so a vanished peer gives an error, not a hang.
    pub fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
            // SAFETY: the pointer and length describe `tv`, live for the call.
            crate::sys::cvt(unsafe {
                libc::setsockopt(
                    self.file.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            })?;
        }
        Ok(())
    }

    /// Bounds blocking reads only: the receiver wakes this often to see whether its count
    /// arrived over control.
    pub(super) fn set_recv_timeout(&self, timeout: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: the pointer and length describe `tv`, live for the call.
        crate::sys::cvt(unsafe {
            libc::setsockopt(
                self.file.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    pub fn enable_zerocopy(&self) -> io::Result<()> {
        zerocopy::enable(self.file.as_fd()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "--zerocopy: {} sockets do not support MSG_ZEROCOPY here ({e})",
                    self.family
                ),
            )
        })
    }

    pub fn is_vsock(&self) -> bool {
        self.family == "vsock"
    }

    /// Sets the vsock buffer (SO_VM_SOCKETS_BUFFER_MAX_SIZE, then _SIZE, which the kernel
    /// clamps to the maximum) and reads back what took effect. Only for vsock sockets.
    pub fn set_vsock_buffer(&self, size: u64) -> io::Result<u64> {
        const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
        const SO_VM_SOCKETS_BUFFER_MAX_SIZE: libc::c_int = 2;
        let fd = self.file.as_raw_fd();
        for opt in [SO_VM_SOCKETS_BUFFER_MAX_SIZE, SO_VM_SOCKETS_BUFFER_SIZE] {
            // SAFETY: the pointer and length describe `size`, a u64 as the option expects,
            // live for the call.
            crate::sys::cvt(unsafe {
                libc::setsockopt(
                    fd,
                    libc::AF_VSOCK,
                    opt,
                    (&size as *const u64).cast(),
                    std::mem::size_of::<u64>() as libc::socklen_t,
                )
            })?;
        }
        let mut got: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: `got` and `len` are live for the call and describe a u64 buffer.
        crate::sys::cvt(unsafe {
            libc::getsockopt(
                fd,
                libc::AF_VSOCK,
                SO_VM_SOCKETS_BUFFER_SIZE,
                (&mut got as *mut u64).cast(),
                &mut len,
            )
        })?;
        Ok(got)
    }

    pub fn reader(&self) -> &File {
        &self.file
    }

    pub fn writer(&self) -> &File {
        &self.file
    }
}

/// When a sender stops.
#[derive(Debug, Clone, Copy)]
pub enum SendLimit {
    Until(Instant),
    Bytes(u64),
}

fn describe(e: &io::Error, what: &str) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("{what} timed out (peer gone or stalled)")
        }
        _ => format!("{what} failed: {e}"),
    }
}

/// Sends until the limit and leaves the write side open. Returns this stream's counts
/// (sender side).
pub fn send(
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
        error,
        ..StreamCounts::default()
    }
}

/// Parks this thread until `due` or until `stop` is set (whoever sets it unparks this
/// thread); `true` if `stop` ended the wait.
pub(super) fn park_until(due: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= due {
            return false;
        }
        std::thread::park_timeout(due - now);
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

/// How many bytes a receiver is to get: [`Expect::UNKNOWN`] until the sender's count arrives
/// over control; 0 calls the stream off.
#[derive(Debug)]
pub struct Expect(AtomicU64);

impl Expect {
    pub const UNKNOWN: u64 = u64::MAX;

    pub fn new() -> Expect {
        Expect(AtomicU64::new(Expect::UNKNOWN))
    }

    pub fn set(&self, bytes: u64) {
        self.0.store(bytes, Ordering::SeqCst);
    }

    /// Ends the receiver at once (the test failed elsewhere).
    pub fn call_off(&self) {
        self.set(0);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for Expect {
    fn default() -> Expect {
        Expect::new()
    }
}

/// How often a waiting receiver looks at its [`Expect`].
pub const TICK: Duration = Duration::from_millis(100);
/// How long a receiver waits for the bytes still missing once it knows the sender's count.
pub const MISSING_GRACE: Duration = Duration::from_secs(30);

/// How a receiver's stream is to end, as far as it knows before the sender's count comes:
/// after this many bytes (`--bytes`), or at this long after the test's start (`--time`).
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    Bytes(u64),
    After(Duration),
}

impl Ending {
    pub fn of(params: &Params, id: u32) -> Ending {
        match params.limit {
            Limit::Time { ms } => Ending::After(Duration::from_millis(ms)),
            Limit::Bytes { .. } => Ending::Bytes(params.stream_bytes(id).unwrap_or(0)),
        }
    }
}

/// When the test started, as a receiver learns it: the instant its end sent (server) or got
/// (client) the start. A receiver's time runs from there, not from its thread's start: a
/// server's receiver starts with its data connection, before the other streams arrived and
/// the start went out, and that wait is no part of the transfer (in the guest lab it made a
/// 256 MiB test's receiver time up to a tenth longer than its sender's). `None` if the test
/// has not started.
pub type TestStart<'a> = &'a (dyn Fn() -> Option<Instant> + Sync);

/// A `--time` receiver reads the clock every read once the test's end is this near, so it
/// has the time of its last byte; before that, only every [`Stamps::step`] bytes.
const LATE: Duration = Duration::from_millis(50);

/// When a receiver reads the clock. A clock read is a system call where there is no vDSO
/// clock (user-mode Linux): one per short read was one system call in three on UNIX
/// sockets, whose reads are mostly short (`bench_against_a_plain_reader_and_writer`). The
/// receiver only needs the time of its last byte: with `--bytes` that is the read that
/// completes the count (no clock read before it); with `--time` the clock is read at
/// growing byte steps, each about half of [`LATE`] at the rate so far, until the end is
/// within [`LATE`], and then after every read.
struct Stamps {
    ending: Ending,
    /// The clock is read after the read that brings the count to this.
    next: u64,
}

impl Stamps {
    const FIRST: u64 = 64 << 10;
    const MAX_STEP: u64 = 16 << 20;

    fn new(ending: Ending) -> Stamps {
        let next = match ending {
            Ending::Bytes(total) => total,
            Ending::After(_) => Stamps::FIRST,
        };
        Stamps { ending, next }
    }

    fn due(&self, received: u64) -> bool {
        received >= self.next
    }

    /// Sets the next clock read after one at `now`, `received` bytes into a test that
    /// started at `start`.
    fn stamped(&mut self, now: Instant, start: Instant, received: u64) {
        self.next = match self.ending {
            Ending::After(length) if now + LATE < start + length => {
                received + Stamps::step(received, now.saturating_duration_since(start))
            }
            // Past the expected end, or near it: every read.
            _ => received + 1,
        };
    }

    /// Bytes that take about half of [`LATE`] at `received` bytes in `elapsed`.
    fn step(received: u64, elapsed: Duration) -> u64 {
        let nanos = elapsed.as_nanos().max(1);
        let step = u128::from(received) * (LATE.as_nanos() / 2) / nanos;
        (step.min(u128::from(Stamps::MAX_STEP)) as u64).max(Stamps::FIRST)
    }
}

/// Receives until it has the sender's count (or end of file, or `idle` without a byte
/// while the count is unknown). Returns this stream's counts (receiver side), timed from
/// the test's start to its last byte.
#[allow(clippy::too_many_arguments)]
pub fn receive(
    stream: &Stream,
    id: u32,
    len: usize,
    verify: bool,
    counter: &AtomicU64,
    expect: &Expect,
    idle: Duration,
    ending: Ending,
    test_start: TestStart<'_>,
) -> StreamCounts {
    let begun = Instant::now();
    let mut buf = vec![0u8; len.max(4096)];
    let mut received: u64 = 0;
    let mut r = stream.reader();
    let mut error = None;
    if let Err(e) = stream.set_recv_timeout(TICK) {
        return StreamCounts {
            stream: id,
            error: Some(describe(&e, "receive")),
            ..StreamCounts::default()
        };
    }
    // The test's start, asked for once the first clock read is due (the first bytes came,
    // so the test has started); this thread's start if it has not (a peer that sends early).
    let mut known: Option<Instant> = None;
    let mut start = move || *known.get_or_insert_with(|| test_start().unwrap_or(begun));
    let mut stamps = Stamps::new(ending);
    let mut last_byte = begun;
    let mut count_known: Option<Instant> = None;
    let mut ended: Option<Instant> = None;
    // Bytes came since the clock was last read.
    let mut unstamped = false;
    loop {
        let want = expect.get();
        if want != Expect::UNKNOWN && count_known.is_none() {
            count_known = Some(Instant::now());
        }
        if received >= want {
            break;
        }
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if verify && error.is_none() {
                    if let Err(at) = pattern::check(id, received, &buf[..n]) {
                        error = Some(format!("data mismatch at byte {at} of stream {}", id + 1));
                    }
                }
                received += n as u64;
                counter.fetch_add(n as u64, Ordering::Relaxed);
                if stamps.due(received) {
                    let now = Instant::now();
                    stamps.stamped(now, start(), received);
                    last_byte = now;
                    ended = Some(now);
                    unstamped = false;
                } else {
                    unstamped = true;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if unstamped {
                    // The read that timed out began right after the last byte: it waited
                    // TICK from then (to the timer's tick: only where the bytes stopped
                    // short of the count, or a `--time` sender stopped early).
                    last_byte = Instant::now()
                        .checked_sub(TICK)
                        .unwrap_or(last_byte)
                        .max(last_byte);
                    ended = Some(last_byte);
                    unstamped = false;
                }
                match count_known {
                    Some(at) if at.elapsed() >= MISSING_GRACE => {
                        error.get_or_insert_with(|| {
                            format!(
                                "received {received} of the {want} bytes sent; the other {} did not arrive within {} s",
                                want - received,
                                MISSING_GRACE.as_secs()
                            )
                        });
                        break;
                    }
                    None if last_byte.elapsed() >= idle => {
                        error.get_or_insert_with(|| describe(&e, "receive"));
                        break;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                error.get_or_insert_with(|| describe(&e, "receive"));
                break;
            }
        }
    }
    if unstamped {
        // The loop left right after a read that did not read the clock.
        ended = Some(Instant::now());
    }
    let recv_seconds = match ended {
        Some(at) => at.saturating_duration_since(start()).as_secs_f64(),
        None => 0.0,
    };
    StreamCounts {
        stream: id,
        received,
        recv_seconds,
        error,
        ..StreamCounts::default()
    }
}

/// What a sender of stream `id` may send, for a test that started at `started`.
pub fn limit_for(params: &Params, id: u32, started: Instant) -> SendLimit {
    match params.limit {
        Limit::Time { ms } => SendLimit::Until(started + Duration::from_millis(ms)),
        Limit::Bytes { .. } => SendLimit::Bytes(params.stream_bytes(id).unwrap_or(0)),
    }
}

/// Where a stream end stands with the other end: what it expects to receive, how long it
/// waits for a silent sender, and whom to tell its own sent count as soon as it has one.
pub struct Peer<'a> {
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
pub fn run_end(
    stream: &Stream,
    id: u32,
    params: &Params,
    send_from: Option<Instant>,
    receive: bool,
    test_start: TestStart<'_>,
    sent: &AtomicU64,
    received: &AtomicU64,
    peer: Peer<'_>,
) -> StreamCounts {
    let Peer {
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
pub fn merge(a: StreamCounts, b: StreamCounts) -> StreamCounts {
    StreamCounts {
        stream: a.stream,
        sent: a.sent + b.sent,
        send_seconds: a.send_seconds.max(b.send_seconds),
        received: a.received + b.received,
        recv_seconds: a.recv_seconds.max(b.recv_seconds),
        transactions: a.transactions + b.transactions,
        vsock_buffer: a.vsock_buffer.or(b.vsock_buffer),
        error: a.error.or(b.error),
    }
}

/// Writes a line on a control stream.
pub fn write_all(stream: &Stream, data: &[u8]) -> io::Result<()> {
    stream.writer().write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bytes_receiver_reads_the_clock_only_at_the_count_and_after() {
        let start = Instant::now();
        let mut stamps = Stamps::new(Ending::Bytes(1 << 30));
        assert!(!stamps.due(64 << 10));
        assert!(!stamps.due((1 << 30) - 1));
        assert!(stamps.due(1 << 30));
        // Bytes past the count (a sender that sent more) move the end with them.
        stamps.stamped(start, start, 1 << 30);
        assert!(stamps.due((1 << 30) + 1));
    }

    #[test]
    fn a_time_receiver_reads_the_clock_in_steps_then_every_read_near_the_end() {
        let start = Instant::now();
        let mut stamps = Stamps::new(Ending::After(Duration::from_secs(3)));
        assert!(!stamps.due(Stamps::FIRST - 1));
        assert!(stamps.due(Stamps::FIRST));
        // 200 MB/s so far: a step of 5 MB (25 ms, half of LATE).
        let mb = 1_000_000;
        stamps.stamped(start + Duration::from_millis(500), start, 100 * mb);
        assert_eq!(stamps.next, 100 * mb + 5 * mb);
        // Faster: capped.
        stamps.stamped(start + Duration::from_millis(100), start, 10_000 * mb);
        assert_eq!(stamps.next, 10_000 * mb + Stamps::MAX_STEP);
        // Slow: at least the first step.
        stamps.stamped(start + Duration::from_secs(1), start, 1000);
        assert_eq!(stamps.next, 1000 + Stamps::FIRST);
        // Within LATE of the end, and past it: every read.
        stamps.stamped(start + Duration::from_millis(2960), start, 5000 * mb);
        assert_eq!(stamps.next, 5000 * mb + 1);
        stamps.stamped(start + Duration::from_secs(4), start, 6000 * mb);
        assert_eq!(stamps.next, 6000 * mb + 1);
    }
}
