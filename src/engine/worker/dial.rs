//! The worker's side of dialing a connection's second address: it drives the connection's
//! [`Dial`](crate::net::dial::Dial) machine, polling the descriptor it names through the ring
//! with a timer for its deadline, and starts relaying once it connects.

use io_uring::{opcode, types};

use super::Worker;
use crate::engine::close::CloseReason;
use crate::engine::conn::{Conn, Phase};
use crate::engine::ring::ConnOps;
use crate::engine::timers::{Timer, TimerKind};
use crate::engine::token::Op;
use crate::net::dial::{Event as DialEvent, FailureClass, Interest, Progress};

impl Worker {
    pub(super) fn advance_dial(&mut self, key: usize, event: DialEvent) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let serial = conn.serial;
        let Phase::Dialing(dialing) = &mut conn.phase else {
            return;
        };
        dialing.epoch = dialing.epoch.wrapping_add(1);
        dialing.timed_out = false;
        let epoch = dialing.epoch;
        match dialing.dial.advance(event) {
            Progress::Connected(endpoint) => {
                if let Some(observer) = &conn.options.observer {
                    observer.dialed(conn.started.elapsed());
                }
                let prelude = dialing.prelude.take();
                let reply_timeout = dialing.reply_timeout;
                conn.second = Some(endpoint);
                self.answer_and_relay(key, prelude, reply_timeout);
            }
            Progress::Failed(why) => {
                if let Some(observer) = &conn.options.observer {
                    observer.dial_failed(&why);
                }
                let text = format!("{}: {why}", dialing.dial.address().text);
                if let Some(machine) = dialing.prelude.as_deref_mut() {
                    if let Some(observer) = &conn.options.observer {
                        let result = match why.class() {
                            FailureClass::NotAllowed => "denied",
                            _ => "dial_failed",
                        };
                        observer.prelude_ended(machine.name(), result);
                    }
                    super::prelude::answer_failed_dial(
                        machine,
                        conn.first.as_socket(),
                        &text,
                        why.class(),
                    );
                }
                self.close(key, CloseReason::DialFailed(text));
            }
            Progress::Wait {
                fd,
                interest,
                deadline,
            } => {
                if let Some(at) = deadline {
                    self.timers.push(Timer {
                        at,
                        key,
                        serial,
                        kind: TimerKind::Dial(epoch),
                    });
                }
                if let Some(fd) = fd {
                    let events = match interest {
                        Interest::Readable => libc::POLLIN,
                        Interest::Writable => libc::POLLOUT,
                    };
                    let sqe = opcode::PollAdd::new(types::Fd(fd), events as u32).build();
                    ConnOps::new(&mut self.ring, key, &mut conn.inflight).push(Op::Dial, sqe);
                }
            }
        }
    }

    pub(super) fn on_dial_ready(&mut self, key: usize) {
        let timed_out = self
            .conns
            .get_mut(key)
            .and_then(Conn::dialing_mut)
            .is_some_and(|d| d.timed_out);
        let event = if timed_out {
            DialEvent::Timeout
        } else {
            DialEvent::Ready
        };
        self.advance_dial(key, event);
    }

    pub(super) fn on_dial_timer(&mut self, key: usize, epoch: u32) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let polling = conn.inflight & Op::Dial.bit() != 0;
        let Some(dialing) = conn.dialing_mut() else {
            return;
        };
        if dialing.epoch != epoch || dialing.timed_out {
            return;
        }
        if polling {
            // Let the poll come back (cancelled, or ready after all) before moving on, so no
            // completion of this wait can be mistaken for one of the next.
            dialing.timed_out = true;
            self.ring.cancel(key, Op::Dial);
        } else {
            self.advance_dial(key, DialEvent::Timeout);
        }
    }
}
