//! The worker's side of accepting ([`crate::engine::accept`]): the listeners it accepts on,
//! each with at most one ACCEPT in flight on its ring (multishot without `max-children`,
//! single-shot holding a reserved slot with it), what it does with each completion (admit the
//! socket and start dialing, retry later on EMFILE, ignore an aborted client), and letting go
//! of a listener: cancel its ACCEPT and detach once the completion is back, so the owner may
//! close the listener knowing no worker accepts on it any more.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::Worker;
use super::listening::Listening;
use crate::engine::accept::AcceptGroup;
use crate::engine::token;
use crate::sys::socket::Socket;
use crate::{debug, warn};

/// How long a listener waits after an accept failed for want of descriptors or memory (as
/// the old acceptor did), or for a reason that concerns the listener itself.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Accept errors that concern one client, not the listener.
fn transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::ENETDOWN
            | libc::EAGAIN
    )
}

impl Worker {
    /// Starts accepting on `group`.
    pub(super) fn listen(&mut self, group: Arc<AcceptGroup>) {
        if self.stopping {
            group.detach();
            return;
        }
        let slot = self.accepting.listens.insert(Listening {
            group,
            armed: false,
            holds_slot: false,
            leaving: false,
            retry_at: None,
            warned: false,
        });
        self.arm_accept(slot);
    }

    /// Stops accepting on `group` (every group when `None`): cancels the ACCEPT in flight;
    /// the group is detached once its completion is back.
    pub(super) fn unlisten(&mut self, group: Option<&Arc<AcceptGroup>>) {
        let slots: Vec<usize> = self
            .accepting
            .listens
            .iter()
            .filter(|(_, l)| group.is_none_or(|g| Arc::ptr_eq(g, &l.group)))
            .map(|(slot, _)| slot)
            .collect();
        for slot in slots {
            let l = &mut self.accepting.listens[slot];
            if l.leaving {
                continue;
            }
            l.leaving = true;
            if l.armed {
                let sqe = opcode::AsyncCancel::new(token::encode_accept(slot))
                    .build()
                    .user_data(token::CANCEL);
                // SAFETY: a cancellation names no descriptor or buffer of ours.
                unsafe { self.ring.push(&sqe) };
            } else {
                self.detach_listener(slot);
            }
        }
    }

    fn detach_listener(&mut self, slot: usize) {
        let l = self.accepting.listens.remove(slot);
        debug!(
            "worker {}: stopped accepting on {} ({} accepted here)",
            self.index,
            l.group.name,
            l.group
                .accepted_per_worker()
                .get(self.index)
                .copied()
                .unwrap_or(0)
        );
        l.group.detach();
    }

    /// Arms the ACCEPT of listener `slot` unless one is in flight, it is leaving or waiting
    /// to retry, or (limited) no slot is free.
    fn arm_accept(&mut self, slot: usize) {
        let index = self.index;
        let Some(l) = self.accepting.listens.get_mut(slot) else {
            return;
        };
        if l.armed || l.leaving || l.retry_at.is_some() {
            return;
        }
        if !l.group.may_arm(index) {
            return;
        }
        if l.group.limited && !l.group.reserve(index) {
            return;
        }
        let fd = types::Fd(l.group.listener_for(index));
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let sqe = if !l.group.multishot {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(flags)
                .build()
        } else {
            opcode::AcceptMulti::new(fd).flags(flags).build()
        };
        l.armed = true;
        l.holds_slot = l.group.limited;
        let sqe = sqe.user_data(token::encode_accept(slot));
        // SAFETY: the listening descriptor belongs to the group, which this worker holds (in
        // `listens`) until the ACCEPT's last completion is reaped; no address buffer is given.
        unsafe { self.ring.push(&sqe) };
    }

    /// An ACCEPT of listener `slot` completed.
    pub(super) fn on_accept(&mut self, slot: usize, result: i32, flags: u32) {
        let index = self.index;
        let Some(l) = self.accepting.listens.get_mut(slot) else {
            debug!("worker {index}: accept completion for a gone listener {slot}");
            if result >= 0 {
                // SAFETY: a successful ACCEPT returns a new descriptor that nobody owns yet.
                drop(unsafe { OwnedFd::from_raw_fd(result) });
            }
            return;
        };
        let group = l.group.clone();
        let finished = !cqueue::more(flags);
        let held_slot = finished && std::mem::take(&mut l.holds_slot);
        if finished {
            l.armed = false;
        }
        if result >= 0 {
            // SAFETY: a successful ACCEPT returns a new descriptor that nobody owns yet.
            let socket = Socket::from_owned(unsafe { OwnedFd::from_raw_fd(result) });
            let admitted = self.admit_accepted(&group, socket);
            if held_slot && !admitted {
                group.release(index, false);
            }
        } else {
            let errno = -result;
            if held_slot {
                group.release(index, false);
            }
            let l = &mut self.accepting.listens[slot];
            match errno {
                libc::ECANCELED => {}
                e if transient(e) => {}
                e => {
                    let error = std::io::Error::from_raw_os_error(e);
                    if !l.warned {
                        warn!("{}: accept: {error}; retrying", group.name);
                        l.warned = true;
                    }
                    l.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
        let l = &self.accepting.listens[slot];
        if !l.armed {
            if l.leaving {
                self.detach_listener(slot);
            } else {
                self.arm_accept(slot);
            }
        }
    }

    /// Admits an accepted socket as a connection of this worker; false if refused.
    fn admit_accepted(&mut self, group: &Arc<AcceptGroup>, socket: Socket) -> bool {
        if self.stopping {
            return false;
        }
        let Some((job, options)) = group.admit.admit(socket) else {
            return false;
        };
        group.count_accepted(self.index);
        self.accepting.accepted += 1;
        self.shared.live.fetch_add(1, Ordering::SeqCst);
        // The slot passes to the connection before it starts: a dial that fails at once
        // frees it (and its slot) inside `admit`.
        let key = self.conns.vacant_key();
        self.accepting.groups.insert(key, Arc::downgrade(group));
        group.opened(self.index);
        if self.admit(job, options).is_none() {
            self.accepting.groups.remove(&key);
            group.closed(self.index);
            return false;
        }
        true
    }

    /// Connection `key` was freed: its group counts it closed, its slot (limited groups)
    /// goes back, and this worker arms its own ACCEPT there if it has none armed (it held
    /// back, for balance or for want of a slot).
    pub(super) fn release_slot(&mut self, key: usize) {
        let Some(group) = self.accepting.groups.remove(&key).and_then(|g| g.upgrade()) else {
            return;
        };
        group.closed(self.index);
        let mine = self
            .accepting
            .listens
            .iter()
            .find(|(_, l)| {
                Arc::ptr_eq(&l.group, &group) && !l.armed && !l.leaving && l.retry_at.is_none()
            })
            .map(|(slot, _)| slot);
        // A limited group's slot goes back; this worker means to take it itself when it has
        // an idle listener there.
        group.release(self.index, mine.is_some());
        if let Some(slot) = mine {
            self.arm_accept(slot);
            if group.limited && !self.accepting.listens[slot].armed {
                // Held back for balance (or another worker took the slot first): the slot
                // must not stay free with nobody told.
                group.wake_waiting(self.index);
            }
        }
    }

    /// Arms every listener that is not armed and not waiting to retry (after a wake-up:
    /// another worker may have freed a slot), and those whose retry is due.
    pub(super) fn rearm_accepts(&mut self) {
        let now = Instant::now();
        let slots: Vec<usize> = self
            .accepting
            .listens
            .iter_mut()
            .filter(|(_, l)| !l.armed && !l.leaving)
            .map(|(slot, l)| {
                if l.retry_at.is_some_and(|at| at <= now) {
                    l.retry_at = None;
                }
                slot
            })
            .collect();
        for slot in slots {
            self.arm_accept(slot);
        }
    }
}
