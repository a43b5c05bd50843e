//! Process signal setup: every signal whose default action would end the process from outside
//! (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, ...) arrives on a signalfd the acceptor
//! polls, so each stops the relay cleanly (a UNIX-LISTEN socket file is removed) instead of
//! killing it; and SIGPIPE is ignored (a peer that went away shows up as EPIPE on that
//! connection, never as the death of the process). SIGKILL and SIGSTOP cannot be caught;
//! SIGPROF and SIGVTALRM stay with profilers; faults (SIGSEGV, SIGBUS, ...) are not requests.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, pthread_sigmask, signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::from_nix;

/// The signals that ask vsplice to stop: those sent from outside whose default action ends
/// the process. SIGHUP will get a meaning of its own (reload); until then it stops too.
pub(crate) const STOP_SIGNALS: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGXCPU,
    Signal::SIGIO,
    Signal::SIGPWR,
];

fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in STOP_SIGNALS {
        set.add(signal);
    }
    set
}

/// Ignores SIGPIPE for the whole process.
pub(crate) fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so no async-signal-safety rules apply.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }
        .map(drop)
        .map_err(from_nix)
}

/// A signalfd for the stop signals. Create it on the main thread before any other thread
/// starts: the signals are blocked in the calling thread and threads inherit that mask.
#[derive(Debug)]
pub(crate) struct StopSignals(SignalFd);

impl StopSignals {
    pub(crate) fn install() -> io::Result<StopSignals> {
        let set = stop_signals();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(from_nix)?;
        SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map(StopSignals)
            .map_err(from_nix)
    }

    /// Waits until `fd` is readable or a stop signal arrives; returns the signal's number in
    /// the second case.
    pub(crate) fn wait_with(&self, fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(self.0.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => Ok(self.take()),
            Err(e) => Err(from_nix(e)),
        }
    }

    /// Returns the pending stop signal's number, if one arrived.
    pub(crate) fn take(&self) -> Option<i32> {
        match self.0.read_signal() {
            Ok(Some(info)) => Some(info.ssi_signo as i32),
            _ => None,
        }
    }
}

impl AsFd for StopSignals {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Blocks every signal in the calling thread, for a helper thread that may start before
/// [`StopSignals::install`]: a thread with a stop signal unblocked would take it with its
/// default action (the end of the process) instead of leaving it to the signalfd.
pub(crate) fn block_all_in_this_thread() -> io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None).map_err(from_nix)
}
