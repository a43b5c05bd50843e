//! Parking: when the live connections of the process approach what RLIMIT_NOFILE can hold
//! with two sockets each, a worker moves the sockets of connections idle for [`PARK_IDLE`]
//! into its ring's fixed-file table and closes their descriptors. A parked connection keeps
//! working: its readiness polls hold the files, and its directions splice with
//! IORING_OP_SPLICE on the fixed slots when data comes (parked connections never go back).
//! A parked connection that is cut gets its reset armed through the ring ([`arm_reset`]), as
//! an active one gets it with setsockopt(2) on its descriptors.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;

use io_uring::{opcode, types};

use super::conn::{Conn, Phase};
use super::registry::Registry;
use super::ring::{ConnOps, Ring};
use super::shared::Shared;
use super::token::Op;
use crate::net::endpoint::Endpoint;
use crate::{debug, info};

/// A connection idle this long may be parked when descriptors run short.
pub(super) const PARK_IDLE: Duration = Duration::from_millis(500);
/// How often a worker looks for connections to park while descriptors run short.
const PARK_SWEEP: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(super) struct Parking {
    /// Live connections in the process above which idle ones are parked.
    above: usize,
    next_sweep: Instant,
    /// Connections of this worker parked now.
    pub parked: usize,
}

impl Parking {
    /// The policy for a process allowed `nofile` descriptors, and the size of the fixed-file
    /// table to register: as large as the limit allows (direct descriptors do not count
    /// against it).
    pub(super) fn new(nofile: u64) -> (Parking, u32) {
        let table = nofile.min(1 << 16) as u32 & !1;
        let reserve = (nofile / 4).min(512);
        let above = ((nofile.saturating_sub(reserve) / 2) * 3 / 4) as usize;
        let parking = Parking {
            above,
            next_sweep: Instant::now(),
            parked: 0,
        };
        (parking, table)
    }

    /// How many connections of the whole process hold descriptors beyond the comfortable
    /// number: how many should be parked now.
    fn wanted(&self, registry: &Registry, shared: &Shared) -> usize {
        if !registry.can_park() {
            return 0;
        }
        let live = shared.live.load(Ordering::Relaxed);
        let parked = shared.parked.load(Ordering::Relaxed);
        live.saturating_sub(parked).saturating_sub(self.above)
    }

    /// When the next sweep is due, while parking is wanted.
    pub(super) fn due(&self, registry: &Registry, shared: &Shared) -> Option<Instant> {
        (self.wanted(registry, shared) > 0).then_some(self.next_sweep)
    }

    /// Parks the connections idle for PARK_IDLE (longest idle first) while parking is wanted.
    pub(super) fn sweep(
        &mut self,
        conns: &mut Slab<Conn>,
        registry: &mut Registry,
        ring: &Ring,
        shared: &Shared,
        worker: usize,
        now: Instant,
    ) {
        if now < self.next_sweep || self.wanted(registry, shared) == 0 {
            return;
        }
        self.next_sweep = now + PARK_SWEEP;
        // Park only what brings the process back under the mark: parked connections move
        // bytes on the slower IORING_OP_SPLICE path.
        let mut candidates: Vec<(Instant, usize)> = conns
            .iter()
            .filter(|(_, c)| c.parkable(now, PARK_IDLE))
            .map(|(k, c)| (c.last_active, k))
            .collect();
        candidates.sort_unstable();
        let wanted = self.wanted(registry, shared);
        let before = self.parked;
        for (_, key) in candidates.into_iter().take(wanted) {
            match park(&mut conns[key], registry, ring) {
                Parked::Yes => {
                    self.parked += 1;
                    shared.parked.fetch_add(1, Ordering::Relaxed);
                }
                Parked::Skipped => {}
                Parked::NoRoom => break,
            }
        }
        if self.parked != before {
            info!(
                "worker {worker}: {} connections parked in the fixed-file table ({} live in all)",
                self.parked,
                shared.live.load(Ordering::Relaxed)
            );
        }
    }

    /// A parked connection closed (its pair was released).
    pub(super) fn unparked(&mut self, shared: &Shared) {
        self.parked -= 1;
        shared.parked.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Parked {
    Yes,
    /// Not both ends have a socket descriptor (cannot happen for a parkable connection).
    Skipped,
    /// No free slots, or the kernel refused: stop this sweep.
    NoRoom,
}

/// Moves a connection's two sockets into the fixed-file table and closes their descriptors.
/// Its readiness polls in flight keep working: they hold the files.
fn park(conn: &mut Conn, registry: &mut Registry, ring: &Ring) -> Parked {
    if !registry.can_park() {
        return Parked::NoRoom;
    }
    let fds = match (
        conn.first.read_fd(),
        conn.second.as_ref().and_then(Endpoint::read_fd),
    ) {
        (Some(a), Some(b)) => [a.as_raw_fd(), b.as_raw_fd()],
        _ => return Parked::Skipped,
    };
    let pair = match registry.park(ring, fds) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Parked::NoRoom,
        Err(e) => {
            debug!("cannot park conn {}: {e}", conn.id);
            return Parked::NoRoom;
        }
    };
    drop(conn.first.take_socket());
    drop(conn.second.as_mut().and_then(Endpoint::take_socket));
    if let Phase::Relaying(relaying) = &mut conn.phase {
        relaying.parked = Some(pair);
    }
    Parked::Yes
}

/// SO_LINGER on with a zero timeout: the socket's close aborts the connection. A static, so
/// the kernel can read it whenever it runs the request.
static ABORT: libc::linger = libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// Arms a reset on both sockets of a parked connection that is being cut (see
/// [`CloseReason::truncates`](super::close::CloseReason::truncates)): SO_LINGER 0 set with
/// IORING_OP_URING_CMD (SOCKET_URING_OP_SETSOCKOPT, Linux 6.7) on its fixed slots, since it
/// has no descriptors for setsockopt(2). The requests are the connection's own, so its slots
/// are released (and the sockets closed) only after they returned. A kernel that refuses the
/// request (older kernels; AF_UNIX and AF_VSOCK sockets, which have no reset anyway) leaves
/// the close as it was: a FIN. Nothing for other connections.
pub(super) fn arm_reset(conn: &mut Conn, ring: &mut Ring, key: usize) {
    let Phase::Closing {
        reason, relaying, ..
    } = &conn.phase
    else {
        return;
    };
    let Some(slots) = relaying
        .parked
        .as_ref()
        .filter(|_| reason.truncates())
        .map(super::registry::ParkPair::slots)
    else {
        return;
    };
    let mut ops = ConnOps::new(ring, key, &mut conn.inflight);
    for (end, slot) in (0u8..).zip(slots) {
        let sqe = opcode::SetSockOpt::new(
            types::Fixed(slot),
            libc::SOL_SOCKET as u32,
            libc::SO_LINGER as u32,
            (&raw const ABORT).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
        .build();
        ops.push(Op::ArmReset(end), sqe);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::super::direction::{Direction, PerDir};
    use super::super::lane::flow::{FillPolicy, Flow};
    use super::super::lane::{CopyBuffer, Lane, PipeStage, StagedLane, Staging};
    use super::super::testing::{options, relaying_conn, unix_endpoint};
    use super::super::token::Op;
    use super::*;

    fn lanes(copy: bool) -> PerDir<Option<Lane>> {
        PerDir::from_fn(|_| {
            let staging = if copy {
                Staging::Copy(CopyBuffer::new(4096))
            } else {
                Staging::Pipe(PipeStage::new(4096))
            };
            Some(Lane::Staged(StagedLane::new(
                Flow::new(4096, FillPolicy::Eager),
                staging,
                false,
                false,
            )))
        })
    }

    #[test]
    fn only_idle_connections_that_just_wait_on_empty_pipes_can_be_parked() {
        let (first, _a) = unix_endpoint();
        let (second, _b) = unix_endpoint();
        let mut conn = relaying_conn(first, second, options(Mode::Splice));
        if let Phase::Relaying(r) = &mut conn.phase {
            r.lanes = lanes(false);
        }
        let now = Instant::now();
        conn.last_active = now - PARK_IDLE;
        assert!(conn.parkable(now, PARK_IDLE));
        conn.inflight =
            Op::Readable(Direction::Forward).bit() | Op::Readable(Direction::Backward).bit();
        assert!(conn.parkable(now, PARK_IDLE), "waiting for data is idle");
        conn.inflight |= Op::Fill(Direction::Forward).bit();
        assert!(!conn.parkable(now, PARK_IDLE), "a transfer is in flight");
        conn.inflight = 0;
        conn.last_active = now;
        assert!(!conn.parkable(now, PARK_IDLE), "bytes moved lately");
        conn.last_active = now - PARK_IDLE;
        if let Phase::Relaying(r) = &mut conn.phase {
            r.lanes = lanes(true);
        }
        assert!(
            !conn.parkable(now, PARK_IDLE),
            "copy lanes keep their descriptors"
        );
        assert!(conn.begin_close(super::super::close::CloseReason::Done));
        assert!(!conn.parkable(now, PARK_IDLE), "a closing connection stays");
    }

    #[test]
    fn the_parking_mark_leaves_a_reserve_of_descriptors() {
        let (parking, table) = Parking::new(1024);
        assert_eq!(table, 1024);
        // 1024 descriptors, 256 in reserve, two per connection, three quarters of that.
        assert_eq!(parking.above, 288);
        let (_, table) = Parking::new(1 << 20);
        assert_eq!(table, 1 << 16, "the table is bounded");
    }
}
