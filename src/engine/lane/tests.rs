//! The staged lane driven directly, against a ring that is only waited on where the test
//! needs a transfer to really happen.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use super::super::Mode;
use super::super::direction::Direction;
use super::super::ends::Ends;
use super::super::registry::Registry;
use super::super::ring::{ConnOps, Ring};
use super::super::testing::{options, send, unix_endpoint};
use super::super::token::{self, Op, Token};
use super::flow::{FillPolicy, Flow, FlowState};
use super::ring::RING_IDLE_GRACE;
use super::staged::COPY_IDLE_GRACE;
use super::*;
use crate::net::endpoint::Endpoint;
use crate::sys::socket::Socket;

const FORWARD: Direction = Direction::Forward;

fn devnull() -> File {
    OpenOptions::new().write(true).open("/dev/null").unwrap()
}

fn pipe_lane(capacity: usize, readiness_first: bool) -> StagedLane {
    let mut flow = Flow::new(capacity, FillPolicy::Eager);
    if readiness_first {
        flow.await_readiness_first();
    }
    StagedLane::new(flow, Staging::Pipe(PipeStage::new(64 * 1024)), false, false)
}

#[test]
fn a_direction_that_splice_refuses_moves_its_staged_bytes_to_a_buffer_and_copies_on() {
    let mut rig = Rig::new(Mode::Splice);
    let (source, mut peer) = unix_endpoint();
    // splice(2) into a file opened for append fails with EINVAL; a write works.
    let path = std::env::temp_dir().join(format!("vsplice-lane-append-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let mut sink = Endpoint::socket(Socket::from_owned(OwnedFd::from(file)), "append".into());
    let mut lane = pipe_lane(64 * 1024, false);
    send(&mut peer, b"hello, world");
    rig.last_active = Instant::now() - Duration::from_secs(1);
    let before = rig.last_active;
    let mut cx = rig.cx(&source, &mut sink);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(
        cx.ops.in_flight(Op::Drain(FORWARD)),
        "the staged bytes go out with an io_uring write"
    );
    assert!(
        matches!(lane.staging(), Staging::Copy(_)),
        "the lane copies now"
    );
    assert_eq!(lane.flow().staged(), 12, "no staged byte was lost");
    assert_eq!(lane.flow().delivered(), 0);
    assert_eq!(cx.pipes.idle(), 1, "the emptied pipe went back to the pool");
    assert!(*cx.last_active > before, "the fill counted as activity");

    // Let the kernel run the write and hand its completion to the lane.
    let mut batch = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while batch.is_empty() {
        assert!(Instant::now() < deadline, "the write never completed");
        cx.ops
            .ring_mut()
            .wait(false, Some(deadline), Instant::now(), 0);
        cx.ops.ring_mut().reap(&mut batch);
    }
    let (user_data, result, _flags) = batch[0];
    assert_eq!(
        token::decode(user_data),
        Token::Conn {
            key: 7,
            op: Op::Drain(FORWARD)
        }
    );
    lane.complete(
        Op::Drain(FORWARD),
        super::super::ring::outcome(result),
        &mut cx,
    );
    assert_eq!(lane.flow().delivered(), 12);
    assert_eq!(lane.flow().staged(), 0);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello, world");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_parked_direction_waits_and_splices_through_its_fixed_file_slots_whatever_the_mode() {
    let mut rig = Rig::new(Mode::Splice);
    let (source, _source_peer) = unix_endpoint();
    let (mut sink, _sink_peer) = unix_endpoint();
    let mut lane = pipe_lane(64 * 1024, true);
    let mut cx = rig.cx_with(FORWARD, |devnull| {
        Ends::new(Some(&source), Some(&mut sink), Some([4, 5]), false, devnull)
    });
    // Parked and idle: it waits for its source, holding no pipe.
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(lane.is_idle_pipe());
    assert_eq!(cx.pipes.created, 0);
    // Woken: the poll came back readable.
    cx.ops.returned(Op::Readable(FORWARD));
    lane.readable();
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(
        cx.ops.in_flight(Op::Fill(FORWARD)),
        "a parked socket has no descriptor: the fill is an IORING_OP_SPLICE"
    );
    assert_eq!(cx.pipes.created, 1, "a pipe is borrowed once bytes move");
    assert!(!lane.is_idle_pipe());
}

#[test]
fn an_unparked_splice_direction_with_nothing_to_read_gives_its_pipe_back_and_polls() {
    let mut rig = Rig::new(Mode::Splice);
    let (source, _source_peer) = unix_endpoint();
    let (mut sink, _sink_peer) = unix_endpoint();
    let mut lane = pipe_lane(64 * 1024, false);
    let mut cx = rig.cx(&source, &mut sink);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(
        !cx.ops.in_flight(Op::Fill(FORWARD)),
        "the splice ran inline"
    );
    assert!(lane.is_idle_pipe());
    assert_eq!(cx.pipes.idle(), 1);
}

/// The next completion of connection 7's requests (cancellations' own are skipped), with the
/// in-flight set updated as the worker does.
fn next_completion(
    cx: &mut Cx<'_>,
    pending: &mut std::collections::VecDeque<(u64, i32, u32)>,
) -> (Op, i32, u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some((user_data, result, flags)) = pending.pop_front() {
            if let Token::Conn { op, .. } = token::decode(user_data) {
                if !io_uring::cqueue::more(flags) {
                    cx.ops.returned(op);
                }
                return (op, result, flags);
            }
        }
        assert!(Instant::now() < deadline, "no completion came");
        let mut batch = Vec::new();
        cx.ops
            .ring_mut()
            .wait(false, Some(deadline), Instant::now(), 0);
        cx.ops.ring_mut().reap(&mut batch);
        pending.extend(batch);
    }
}

#[test]
fn a_ring_direction_takes_its_group_when_bytes_come_and_gives_it_back_once_drained_and_quiet() {
    use std::io::Read;
    let Some(mut rig) = Rig::with_ring_groups(Mode::Recv) else {
        return;
    };
    let (source, mut peer) = unix_endpoint();
    let (mut sink, mut sink_peer) = unix_endpoint();
    let mut lane = RingLane::new(8, 4096, false, false);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    // Idle: a readiness wait, no group.
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(!lane.holds_buffers());
    send(&mut peer, b"hello");
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!(op, Op::Readable(FORWARD));
    lane.complete(op, result, flags, &mut cx);
    // Readable: it takes a group and receives (and, holding it with nothing queued yet,
    // asks to be looked at again after the grace).
    assert_eq!(lane.pump(&mut cx), Pumped::RecheckAfter(RING_IDLE_GRACE));
    assert!(lane.holds_buffers());
    assert!(cx.ops.in_flight(Op::Fill(FORWARD)));
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), 5));
    lane.complete(op, result, flags, &mut cx);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Drain(FORWARD), 5));
    lane.complete(op, result, flags, &mut cx);
    // Drained but recently busy: it keeps the group (one recheck is pending already).
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(lane.holds_buffers());
    // Quiet for the grace: the receive is cancelled, and the group goes back only after its
    // last completion.
    lane.age(RING_IDLE_GRACE);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(lane.holds_buffers(), "the receive still runs");
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), -libc::ECANCELED));
    lane.complete(op, result, flags, &mut cx);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(!lane.holds_buffers());
    assert_eq!(cx.registry.idle_groups(), 1, "the group waits in the pool");
    assert!(
        cx.ops.in_flight(Op::Readable(FORWARD)),
        "idle again: a readiness wait"
    );
    // And it wakes again, with the same group from the pool.
    send(&mut peer, b" again");
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    lane.complete(op, result, flags, &mut cx);
    assert_eq!(lane.pump(&mut cx), Pumped::RecheckAfter(RING_IDLE_GRACE));
    assert_eq!(cx.registry.idle_groups(), 0);
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), 6));
    lane.complete(op, result, flags, &mut cx);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    lane.complete(op, result, flags, &mut cx);
    let mut got = [0u8; 11];
    sink_peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello again");
    assert_eq!(lane.flow().delivered(), 11);
    // Closing: the receive is cancelled and the lane freed only after its last completion.
    cx.ops.cancel(Op::Fill(FORWARD));
    let (op, ..) = next_completion(&mut cx, &mut pending);
    assert_eq!(op, Op::Fill(FORWARD));
    assert!(!cx.ops.in_flight(Op::Fill(FORWARD)));
    lane.release(cx.registry, cx.ops.ring());
    cx.registry.free_idle_groups(cx.ops.ring());
}

#[test]
fn a_ring_direction_into_a_socket_sends_each_filled_buffer_whole_however_small_its_send_buffer() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let Some(mut rig) = Rig::with_ring_groups(Mode::Recv) else {
        return;
    };
    let (source, mut peer) = unix_endpoint();
    // The sink's send buffer holds a fraction of one 16 KiB ring buffer: a plain write of a
    // buffer comes back short every time.
    let (ours, mut sink_peer) = UnixStream::pair().unwrap();
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut sink = Endpoint::socket(Socket::from_owned(OwnedFd::from(ours)), "unix".into());
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        sink_peer.read_to_end(&mut got).unwrap();
        got
    });
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let writer = {
        let sent = sent.clone();
        std::thread::spawn(move || {
            send(&mut peer, &sent);
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut lane = Lane::Ring(RingLane::new(8, 16 * 1024, false, false).whole_sends(true));
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    let (mut fills, mut sends, mut turns) = (0, 0, 0);
    while lane.pump(&mut cx) != Pumped::Ended {
        turns += 1;
        assert!(turns < 2_000, "the direction never ended");
        let (op, result, flags) = next_completion(&mut cx, &mut pending);
        match op {
            Op::Fill(_) if result > 0 => fills += 1,
            Op::Drain(_) => {
                assert!(result > 0, "send failed: {result}");
                sends += 1;
            }
            _ => {}
        }
        lane.complete(op, result, flags, &mut cx);
    }
    writer.join().unwrap();
    assert_eq!(lane.state(), FlowState::Finished);
    assert_eq!(
        sends, fills,
        "one send per filled buffer, none came back short ({fills} buffers filled)"
    );
    let got = reader.join().unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "every byte in order");
    lane.release(cx.registry, cx.ops.ring(), cx.pipes);
    cx.registry.free_idle_groups(cx.ops.ring());
}

#[test]
fn a_pipe_whose_fill_completed_after_its_connection_closed_never_goes_back_to_the_pool() {
    let mut rig = Rig::new(Mode::UringSplice);
    let (source, mut peer) = unix_endpoint();
    let (mut sink, _sink_peer) = unix_endpoint();
    let flow = Flow::new(64 * 1024, FillPolicy::Eager);
    let stage = Staging::Pipe(PipeStage::new(64 * 1024));
    let mut lane = StagedLane::new(flow, stage, false, true);
    send(&mut peer, b"the closed connection's bytes");
    let mut cx = rig.cx(&source, &mut sink);
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(
        cx.ops.in_flight(Op::Fill(FORWARD)),
        "an IORING_OP_SPLICE fill"
    );
    // The connection closes meanwhile: the fill's completion (29 bytes now in the pipe) comes
    // back, but a closing connection's lanes take no completions.
    let mut pending = std::collections::VecDeque::new();
    let (op, result, _) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), 29));
    lane.release(cx.registry, cx.ops.ring(), cx.pipes);
    assert_eq!(
        rig.pipes.idle(),
        0,
        "a pipe holding a closed connection's bytes is closed, not handed to the next one"
    );
}

#[test]
fn a_vsock_source_gets_ring_buffers_that_hold_its_whole_credit_window() {
    use nix::sys::socket::AddressFamily;
    let (tcp, _peer) = super::super::testing::tcp_endpoint();
    assert_eq!(ring_buffer_size(1 << 20, Some(&tcp)), 128 * 1024);
    assert_eq!(ring_buffer_size(8 << 20, Some(&tcp)), 1 << 20);
    // An unconnected vsock socket: its family is all this asks (nothing connects).
    let Ok(vsock) = Socket::new(AddressFamily::Vsock) else {
        eprintln!("no AF_VSOCK here: skipped");
        return;
    };
    let vsock = Endpoint::socket(vsock, "vsock".into());
    assert_eq!(ring_buffer_size(1 << 20, Some(&vsock)), VSOCK_RING_BUFFER);
    assert_eq!(ring_buffer_size(64 << 10, Some(&vsock)), VSOCK_RING_BUFFER);
    assert_eq!(ring_buffer_size(8 << 20, Some(&vsock)), 1 << 20);
}

#[test]
fn auto_takes_the_copy_path_to_or_from_vsock_and_splice_elsewhere_and_an_explicit_mode_stays() {
    use nix::sys::socket::AddressFamily;
    let (tcp, _peer) = super::super::testing::tcp_endpoint();
    assert_eq!(
        Lane::mode_for(Mode::Auto, Some(&tcp), Some(&tcp)),
        Mode::Splice
    );
    // An unconnected vsock socket: its family is all this asks (nothing connects).
    let Ok(vsock) = Socket::new(AddressFamily::Vsock) else {
        eprintln!("no AF_VSOCK here: skipped");
        return;
    };
    let vsock = Endpoint::socket(vsock, "vsock".into());
    assert_eq!(
        Lane::mode_for(Mode::Auto, Some(&vsock), Some(&tcp)),
        Mode::Copy
    );
    assert_eq!(
        Lane::mode_for(Mode::Auto, Some(&tcp), Some(&vsock)),
        Mode::Copy
    );
    assert_eq!(
        Lane::mode_for(Mode::Auto, Some(&vsock), Some(&vsock)),
        Mode::Copy
    );
    assert_eq!(
        Lane::mode_for(Mode::Recv, Some(&vsock), Some(&tcp)),
        Mode::Recv
    );
}

#[test]
fn a_copy_direction_between_sockets_sends_whole_buffers_with_the_next_read_linked_behind_each() {
    use std::io::Read;
    let (source, mut peer) = unix_endpoint();
    let (mut sink, mut sink_peer) = unix_endpoint();
    let mut lane = socket_copy_lane(16 * 1024);
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    send(&mut peer, &sent);
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rig = Rig::new(Mode::Copy);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    let (mut linked, mut turns) = (0, 0);
    while lane.pump(&mut cx) != Pumped::Ended {
        turns += 1;
        assert!(turns < 200, "the direction never ended");
        if cx.ops.in_flight(Op::Drain(FORWARD)) && cx.ops.in_flight(Op::Fill(FORWARD)) {
            linked += 1;
        }
        let (op, result, flags) = next_completion(&mut cx, &mut pending);
        lane.complete(op, result, flags, &mut cx);
    }
    assert_eq!(lane.state(), FlowState::Finished);
    assert!(
        linked >= 5,
        "100,000 bytes through a 16 KiB buffer: the reads ride behind the sends ({linked})"
    );
    let mut got = Vec::new();
    sink_peer.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "every byte in order");
}

#[test]
fn a_read_linked_behind_a_send_that_fails_is_cancelled_and_counts_as_no_read() {
    let (source, mut peer) = unix_endpoint();
    let (mut sink, sink_peer) = unix_endpoint();
    let mut lane = socket_copy_lane(4096);
    send(&mut peer, &[1u8; 8192]);
    drop(sink_peer);
    let mut rig = Rig::new(Mode::Copy);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    let mut results = Vec::new();
    while lane.pump(&mut cx) != Pumped::Ended {
        assert!(results.len() < 20, "the direction never ended");
        let (op, result, flags) = next_completion(&mut cx, &mut pending);
        results.push((op, result));
        lane.complete(op, result, flags, &mut cx);
    }
    assert!(
        results.contains(&(Op::Fill(FORWARD), -libc::ECANCELED)),
        "the read behind the failed send never ran: {results:?}"
    );
    let Lane::Staged(staged) = &lane else {
        unreachable!()
    };
    assert_eq!(
        staged.flow().failure().map(|e| (e.op, e.errno)),
        Some((flow::FlowOp::Write, libc::EPIPE))
    );
    assert_eq!(staged.flow().delivered(), 0);
    assert_eq!(
        staged.flow().staged(),
        4096,
        "the cancelled read added nothing"
    );
}

#[test]
fn a_copy_direction_keeps_its_buffer_through_a_short_wait_and_gives_it_back_after_the_grace() {
    let (source, mut peer) = unix_endpoint();
    let (mut sink, _sink_peer) = unix_endpoint();
    let mut lane = socket_copy_lane(4096);
    send(&mut peer, &[7u8; 4096]);
    let mut rig = Rig::new(Mode::Copy);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    // Move the 4 KiB until the direction waits for readiness again.
    let waited = run_until_recheck(&mut lane, &mut cx, &mut pending);
    assert_eq!(waited, COPY_IDLE_GRACE);
    // The read itself waits in the kernel for the source (POLL_FIRST), in the buffer.
    assert!(cx.ops.in_flight(Op::Fill(FORWARD)));
    assert!(!cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(held(&lane), "kept through the wait");
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(held(&lane), "still within the grace");
    cx.now += COPY_IDLE_GRACE;
    // Past the grace the waiting read is cancelled; its end gives the buffer back.
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), -libc::ECANCELED));
    lane.complete(op, result, flags, &mut cx);
    assert!(!held(&lane), "given back after the grace");
    // And the direction waits with a poll that holds no buffer.
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(!held(&lane));
}

#[test]
fn a_copy_direction_from_a_polled_source_keeps_its_buffer_through_a_poll_and_gives_it_back_after_the_grace()
 {
    let (source, mut peer) = unix_endpoint();
    let (mut sink, _sink_peer) = unix_endpoint();
    let mut lane = socket_copy_lane_polling(4096);
    send(&mut peer, &[7u8; 4096]);
    let mut rig = Rig::new(Mode::Copy);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    let waited = run_until_recheck(&mut lane, &mut cx, &mut pending);
    assert_eq!(waited, COPY_IDLE_GRACE);
    assert!(cx.ops.in_flight(Op::Readable(FORWARD)));
    assert!(!cx.ops.in_flight(Op::Fill(FORWARD)));
    assert!(held(&lane), "kept through the wait");
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(held(&lane), "still within the grace");
    cx.now += COPY_IDLE_GRACE;
    assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
    assert!(!held(&lane), "given back after the grace");
}

#[test]
fn a_copy_direction_whose_source_ran_dry_takes_the_next_bytes_in_one_waiting_read() {
    let (source, mut peer) = unix_endpoint();
    let (mut sink, mut sink_peer) = unix_endpoint();
    let mut lane = socket_copy_lane(8192);
    // Less than the buffer: the read drains the source.
    send(&mut peer, &[7u8; 3000]);
    let mut rig = Rig::new(Mode::Copy);
    let mut cx = rig.cx(&source, &mut sink);
    let mut pending = std::collections::VecDeque::new();
    let mut fills = Vec::new();
    loop {
        if let Pumped::RecheckAfter(_) = lane.pump(&mut cx) {
            break;
        }
        let (op, result, flags) = next_completion(&mut cx, &mut pending);
        if let Op::Fill(_) = op {
            fills.push(result);
        }
        lane.complete(op, result, flags, &mut cx);
    }
    // One POLL_ADD, one read of the 3000 bytes; no read that found the source empty: the
    // read after the drain waits in the kernel.
    assert_eq!(fills, vec![3000]);
    assert!(cx.ops.in_flight(Op::Fill(FORWARD)));
    send(&mut peer, &[8u8; 500]);
    let (op, result, flags) = next_completion(&mut cx, &mut pending);
    assert_eq!((op, result), (Op::Fill(FORWARD), 500));
    lane.complete(op, result, flags, &mut cx);
    while lane.pump(&mut cx) != Pumped::Waiting || cx.ops.in_flight(Op::Drain(FORWARD)) {
        let (op, result, flags) = next_completion(&mut cx, &mut pending);
        lane.complete(op, result, flags, &mut cx);
        if op == Op::Drain(FORWARD) {
            break;
        }
    }
    let mut got = vec![0u8; 3500];
    std::io::Read::read_exact(&mut sink_peer, &mut got).unwrap();
    assert_eq!(&got[..3000], &[7u8; 3000][..]);
    assert_eq!(&got[3000..], &[8u8; 500][..]);
}

/// Whether a copy direction holds its buffer now.
fn held(lane: &Lane) -> bool {
    matches!(lane, Lane::Staged(l) if matches!(l.staging(), Staging::Copy(b) if b.is_held()))
}

/// Pumps `lane` and hands it its completions until it asks to be called again later (a
/// kept buffer's grace); returns after how long.
fn run_until_recheck(
    lane: &mut Lane,
    cx: &mut Cx<'_>,
    pending: &mut std::collections::VecDeque<(u64, i32, u32)>,
) -> Duration {
    loop {
        match lane.pump(cx) {
            Pumped::RecheckAfter(after) => return after,
            Pumped::Ended => panic!("ended"),
            _ => {}
        }
        let (op, result, flags) = next_completion(cx, pending);
        lane.complete(op, result, flags, cx);
    }
}

/// What a lane test's [`Cx`] borrows: a ring, the worker's registry and pipe pool, the
/// connection's in-flight set, clock and options.
struct Rig {
    ring: Ring,
    registry: Registry,
    pipes: PipePool,
    devnull: File,
    inflight: u16,
    last_active: Instant,
    options: std::sync::Arc<super::super::config::RelayOptions>,
}

impl Rig {
    fn new(mode: Mode) -> Rig {
        Rig {
            ring: Ring::new(8, None).unwrap(),
            registry: Registry::empty(),
            pipes: PipePool::new(4),
            devnull: devnull(),
            inflight: 0,
            last_active: Instant::now(),
            options: options(mode),
        }
    }

    /// As [`Rig::new`], with a registry that has provided-buffer rings; `None` (and a line
    /// saying so) on a kernel without them.
    fn with_ring_groups(mode: Mode) -> Option<Rig> {
        let mut rig = Rig::new(mode);
        rig.registry = Registry::new(&rig.ring, 0, 0);
        if !rig.registry.ring_groups_supported(&rig.ring) {
            eprintln!("no provided-buffer rings on this kernel: nothing to test");
            return None;
        }
        Some(rig)
    }

    /// A [`Cx`] for connection 7's forward direction from `source` to `sink`.
    fn cx<'a>(&'a mut self, source: &'a Endpoint, sink: &'a mut Endpoint) -> Cx<'a> {
        self.cx_with(FORWARD, |devnull| {
            Ends::new(Some(source), Some(sink), None, false, devnull)
        })
    }

    /// A [`Cx`] for connection 7's direction `dir` between the ends `ends` makes (it gets
    /// the rig's /dev/null for a discarded direction).
    fn cx_with<'a>(
        &'a mut self,
        dir: Direction,
        ends: impl FnOnce(std::os::fd::BorrowedFd<'a>) -> Ends<'a>,
    ) -> Cx<'a> {
        Cx {
            ops: ConnOps::new(&mut self.ring, 7, &mut self.inflight),
            ends: ends(self.devnull.as_fd()),
            registry: &mut self.registry,
            pipes: &mut self.pipes,
            last_active: &mut self.last_active,
            now: Instant::now(),
            options: &self.options,
            id: 1,
            dir,
            turn: 16,
        }
    }
}

/// A copy direction between two sockets (whole sends) with `size` bytes of buffer, waiting
/// for readiness first as `Lane::setup` makes it, whose reads wait in the kernel after the
/// source ran dry, as for a vsock source (the UNIX sockets here stand in for it).
fn socket_copy_lane(size: usize) -> Lane {
    let mut flow = Flow::new(size, FillPolicy::Adaptive);
    flow.await_readiness_first();
    Lane::Staged(
        StagedLane::new(flow, Staging::Copy(CopyBuffer::lazy(size)), false, false)
            .sockets(true, true)
            .reads_wait_in_kernel(true),
    )
}

/// A copy direction between sockets whose source is not vsock: MSG_DONTWAIT reads, and a
/// POLL_ADD once the source is found empty.
fn socket_copy_lane_polling(size: usize) -> Lane {
    let mut flow = Flow::new(size, FillPolicy::Adaptive);
    flow.await_readiness_first();
    Lane::Staged(
        StagedLane::new(flow, Staging::Copy(CopyBuffer::lazy(size)), false, false)
            .sockets(true, true),
    )
}

#[test]
fn the_first_addresss_direction_takes_bytes_already_there_and_the_second_waits_for_readiness() {
    let mut rig = Rig::new(Mode::Splice);
    for (dir, moves_at_once) in [(Direction::Forward, true), (Direction::Backward, false)] {
        let (source, mut peer) = unix_endpoint();
        let (mut sink, _sink_peer) = unix_endpoint();
        send(&mut peer, b"the client speaks first");
        let mut lane = Lane::setup(
            dir,
            Some(&source),
            Some(&sink),
            &rig.options.clone(),
            &mut rig.registry,
            &rig.ring,
        );
        let mut cx = rig.cx_with(dir, |devnull| {
            Ends::new(Some(&source), Some(&mut sink), None, false, devnull)
        });
        assert_eq!(lane.pump(&mut cx), Pumped::Waiting);
        if moves_at_once {
            assert_eq!(
                lane.delivered(),
                23,
                "{dir}: spliced through before any poll"
            );
        } else {
            assert_eq!(lane.delivered(), 0, "{dir}: nothing moves before readiness");
        }
        assert!(
            cx.ops.in_flight(Op::Readable(dir)),
            "{dir}: then it waits for more"
        );
        // Take the poll's completion back, so the next round's connection starts clean.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut batch = Vec::new();
        if !moves_at_once {
            while batch.is_empty() {
                assert!(Instant::now() < deadline, "the poll never completed");
                cx.ops
                    .ring_mut()
                    .wait(false, Some(deadline), Instant::now(), 0);
                cx.ops.ring_mut().reap(&mut batch);
            }
        }
    }
}
