//! Whole sends into a vsock SEQPACKET socket, on a helper thread.
//!
//! A non-blocking send into vsock SEQPACKET that finds room for part of a message queues
//! that part and still answers EAGAIN (the kernel returns the count only for a whole
//! message); sent again, the message would reach the peer merged with its own first part. A
//! blocking send waits in the kernel until the whole message is queued, but on a worker it is
//! interrupted (EINTR, again after queueing part) whenever io_uring queues task work for the
//! thread, which every completion of the worker's ring does. So a message direction into vsock
//! SEQPACKET hands each message to a thread of its own, which has no ring and every signal
//! blocked, and sends there, blocking; the direction waits for the thread's eventfd in the
//! worker's ring. The thread is started at the direction's first message and ends with it:
//! dropping the [`WholeSender`] shuts the socket down, which ends a send still waiting.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};

use crate::sys::eventfd::EventFd;
use crate::sys::message;

#[derive(Debug, Default)]
struct Slot {
    /// The message to send next.
    job: Option<Vec<u8>>,
    /// The last send's result: bytes sent, or the errno.
    result: Option<Result<usize, i32>>,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    done: EventFd,
}

/// A helper thread that sends one message at a time, whole, into one socket.
#[derive(Debug)]
pub(super) struct WholeSender {
    shared: Arc<Shared>,
    socket: OwnedFd,
    busy: bool,
}

impl WholeSender {
    /// Starts the thread on a duplicate of `sink`, which it makes blocking (every receive on
    /// the socket passes MSG_DONTWAIT itself).
    pub(super) fn start(sink: BorrowedFd<'_>) -> io::Result<WholeSender> {
        let socket = sink.try_clone_to_owned()?;
        message::set_blocking(socket.as_fd())?;
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            wake: Condvar::new(),
            done: EventFd::new()?,
        });
        let thread_socket = socket.try_clone()?;
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("vsplice-vsock-send".into())
            .spawn(move || run(thread_socket, thread_shared))?;
        Ok(WholeSender {
            shared,
            socket,
            busy: false,
        })
    }

    /// The eventfd that turns readable when a send finished.
    pub(super) fn done_fd(&self) -> BorrowedFd<'_> {
        self.shared.done.as_fd()
    }

    /// Whether a message was handed over and its result not yet taken.
    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Hands `message` to the thread.
    pub(super) fn submit(&mut self, message: Vec<u8>) {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.job = Some(message);
        slot.result = None;
        self.busy = true;
        self.shared.wake.notify_one();
    }

    /// The result of the message handed over, once its send finished.
    pub(super) fn take_result(&mut self) -> Option<Result<usize, i32>> {
        self.shared.done.drain();
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        let result = slot.result.take();
        if result.is_some() {
            self.busy = false;
        }
        result
    }
}

impl Drop for WholeSender {
    fn drop(&mut self) {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.stop = true;
        self.shared.wake.notify_one();
        drop(slot);
        // Ends a send still waiting for room (the connection is closing).
        let _ =
            nix::sys::socket::shutdown(self.socket.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

fn run(socket: OwnedFd, shared: Arc<Shared>) {
    let _ = crate::sys::signal::block_all_in_this_thread();
    loop {
        let job = {
            let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if slot.stop {
                    return;
                }
                if let Some(job) = slot.job.take() {
                    break job;
                }
                slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result =
            message::send(socket.as_fd(), &job).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO));
        shared.slot.lock().unwrap_or_else(|e| e.into_inner()).result = Some(result);
        shared.done.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_handed_over_is_sent_whole_and_its_result_comes_back() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut sender = WholeSender::start(a.as_fd()).unwrap();
        assert!(sender.take_result().is_none());
        sender.submit(vec![5u8; 3000]);
        assert!(sender.busy());
        crate::sys::socket::wait_readable(sender.done_fd(), None).unwrap();
        assert_eq!(sender.take_result(), Some(Ok(3000)));
        assert!(!sender.busy());
        let mut buf = [0u8; 4096];
        let got = message::recv_message(b.as_fd(), &mut buf, message::ZeroMeans::End).unwrap();
        assert_eq!(got, message::Received::Message(3000));
    }
}
