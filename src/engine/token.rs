//! io_uring `user_data` values: a connection's slab key and an operation tag, a listener's
//! slot and the accept tag, plus reserved sentinels for the worker's own requests. Every
//! request in flight on a connection has its own tag, so the connection knows exactly which
//! requests it must wait for before its slot (and the descriptors and buffers the kernel may
//! still touch) can be reused.

/// The worker's wake-up poll on its eventfd.
pub(crate) const WAKE: u64 = u64::MAX;
/// Cancellation requests; their own completions carry nothing the worker needs.
pub(crate) const CANCEL: u64 = u64::MAX - 1;

/// The tag of a worker's ACCEPT on one of its listeners (above every connection tag).
pub(crate) const ACCEPT_TAG: u8 = 0xa0;

use super::direction::Direction;

/// What an in-flight request on a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// The second address's connect or handshake readiness.
    Dial,
    /// The first end's readiness for a prelude's read or reply.
    Prelude,
    /// Waiting for a direction's source to be readable.
    Readable(Direction),
    /// Waiting for a direction's destination to be writable.
    Writable(Direction),
    /// An io_uring transfer from the source into staging.
    Fill(Direction),
    /// An io_uring transfer from staging to the destination.
    Drain(Direction),
    /// Arming a reset (SO_LINGER 0) on a parked connection's socket that is cut: 0 for the
    /// first end, 1 for the second (see `park::arm_reset`).
    ArmReset(u8),
}

impl Op {
    /// A small number, unique per operation of one connection (bit index in its in-flight set).
    pub(crate) fn tag(self) -> u8 {
        match self {
            Op::Dial => 0,
            Op::Prelude => 11,
            Op::Readable(d) => 1 + 4 * d.index() as u8,
            Op::Writable(d) => 2 + 4 * d.index() as u8,
            Op::Fill(d) => 3 + 4 * d.index() as u8,
            Op::Drain(d) => 4 + 4 * d.index() as u8,
            Op::ArmReset(end) => 9 + end.min(1),
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Op> {
        match tag {
            0 => return Some(Op::Dial),
            9 | 10 => return Some(Op::ArmReset(tag - 9)),
            11 => return Some(Op::Prelude),
            _ => {}
        }
        let d = match (tag - 1) / 4 {
            0 => Direction::Forward,
            1 => Direction::Backward,
            _ => return None,
        };
        Some(match (tag - 1) % 4 {
            0 => Op::Readable(d),
            1 => Op::Writable(d),
            2 => Op::Fill(d),
            _ => Op::Drain(d),
        })
    }

    /// This operation's bit in a connection's in-flight set.
    pub(crate) fn bit(self) -> u16 {
        1 << self.tag()
    }
}

/// Encodes a connection request.
pub(crate) fn encode(key: usize, op: Op) -> u64 {
    ((key as u64) << 8) | u64::from(op.tag())
}

/// Encodes an ACCEPT on the worker's listener `slot`.
pub(crate) fn encode_accept(slot: usize) -> u64 {
    ((slot as u64) << 8) | u64::from(ACCEPT_TAG)
}

/// What a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    Wake,
    Cancel,
    Conn { key: usize, op: Op },
    Accept { slot: usize },
    Unknown(u64),
}

pub(crate) fn decode(user_data: u64) -> Token {
    match user_data {
        WAKE => Token::Wake,
        CANCEL => Token::Cancel,
        other if (other & 0xff) as u8 == ACCEPT_TAG => Token::Accept {
            slot: (other >> 8) as usize,
        },
        other => match Op::from_tag((other & 0xff) as u8) {
            Some(op) => Token::Conn {
                key: (other >> 8) as usize,
                op,
            },
            None => Token::Unknown(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_distinct_bits() {
        let ops = [
            Op::Dial,
            Op::Readable(Direction::Forward),
            Op::Writable(Direction::Forward),
            Op::Fill(Direction::Forward),
            Op::Drain(Direction::Forward),
            Op::Readable(Direction::Backward),
            Op::Writable(Direction::Backward),
            Op::Fill(Direction::Backward),
            Op::Drain(Direction::Backward),
            Op::ArmReset(0),
            Op::ArmReset(1),
            Op::Prelude,
        ];
        let mut bits = 0u16;
        for op in ops {
            assert_eq!(bits & op.bit(), 0, "{op:?} bit is unique");
            bits |= op.bit();
            for key in [0usize, 1, 12345, u32::MAX as usize] {
                assert_eq!(decode(encode(key, op)), Token::Conn { key, op });
            }
        }
        assert_eq!(decode(WAKE), Token::Wake);
        assert_eq!(decode(CANCEL), Token::Cancel);
        assert_eq!(decode(0x55), Token::Unknown(0x55));
        assert_eq!(decode(encode_accept(7)), Token::Accept { slot: 7 });
    }
}
