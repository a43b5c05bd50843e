//! What a bench server lets all its tests together hold: tests at once (`--max-sessions`), data
//! connections, each a thread or two (`--max-streams`), and buffer bytes (`--max-buffered`).
//! [`Params::check`] bounds one test; without these, tests side by side were unbounded (three
//! `--rr` tests of 32 streams x 16 MiB held 1.6 GB). A test reserves its share when its hello
//! is admitted and gives it back when its control connection is through.

use std::sync::{Arc, Mutex};

use super::proto::{Params, Workload};

/// A server's bounds over all its tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_sessions: u32,
    pub max_streams: u64,
    pub max_buffered: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_sessions: 4,
            max_streams: 1024,
            max_buffered: 2 << 30,
        }
    }
}

#[derive(Debug, Default)]
struct Used {
    sessions: u32,
    streams: u64,
    buffered: u64,
}

/// The server's bounds and what its tests hold now.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: Limits,
    used: Mutex<Used>,
}

/// One test's share of the [`Budget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: Arc<Budget>,
    streams: u64,
    buffered: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap();
        used.sessions -= 1;
        used.streams -= self.streams;
        used.buffered -= self.buffered;
    }
}

/// The buffer bytes a test makes the server hold: per stream, a write-size buffer for each
/// way it sends or receives (a ring of 8 for zerocopy with `--verify`).
pub(crate) fn server_buffers(params: &Params) -> u64 {
    let len = params.len as u64;
    let per_stream = match params.workload {
        Workload::Rr | Workload::Crr => len,
        Workload::Stream => {
            let send = match (
                params.direction.server_sends(),
                params.zerocopy && params.verify,
            ) {
                (false, _) => 0,
                (true, false) => len,
                (true, true) => 8 * len,
            };
            let receive = if params.direction.client_sends() {
                len.max(4096)
            } else {
                0
            };
            send + receive
        }
    };
    per_stream * u64::from(params.streams)
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            used: Mutex::default(),
        })
    }

    /// Reserves a test's share, or says which bound it would pass (the text goes to the
    /// client).
    pub(crate) fn reserve(self: &Arc<Budget>, params: &Params) -> Result<Reservation, String> {
        let l = self.limits;
        let streams = u64::from(params.streams);
        let buffered = server_buffers(params);
        let mut used = self.used.lock().unwrap();
        if used.sessions >= l.max_sessions {
            return Err(format!(
                "the server runs at most {} tests at once (--max-sessions): try again when one ends",
                l.max_sessions
            ));
        }
        if used.streams + streams > l.max_streams {
            return Err(format!(
                "{streams} streams would take the server past its {} data connections \
                 (--max-streams; other tests hold {})",
                l.max_streams, used.streams
            ));
        }
        if used.buffered + buffered > l.max_buffered {
            return Err(format!(
                "{} streams x {} bytes need {buffered} bytes of buffers, past the server's \
                 {} (--max-buffered; other tests hold {})",
                params.streams, params.len, l.max_buffered, used.buffered
            ));
        }
        used.sessions += 1;
        used.streams += streams;
        used.buffered += buffered;
        Ok(Reservation {
            budget: self.clone(),
            streams,
            buffered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::proto::{Limit, TestDirection};

    fn params(streams: u32, len: usize) -> Params {
        Params {
            streams,
            len,
            direction: TestDirection::Forward,
            limit: Limit::Time { ms: 1000 },
            verify: false,
            zerocopy: false,
            workload: Workload::Rr,
            vsock_buffer: None,
            messages: false,
        }
    }

    #[test]
    fn tests_side_by_side_share_one_budget_and_give_it_back() {
        let budget = Budget::new(Limits {
            max_sessions: 3,
            max_streams: 100,
            max_buffered: 1 << 30,
        });
        let a = budget.reserve(&params(48, 16 << 20)).unwrap();
        let e = budget.reserve(&params(32, 16 << 20)).unwrap_err();
        assert!(e.contains("--max-buffered"), "{e}");
        let e = budget.reserve(&params(80, 1)).unwrap_err();
        assert!(e.contains("--max-streams"), "{e}");
        let b = budget.reserve(&params(1, 1)).unwrap();
        let _c = budget.reserve(&params(1, 1)).unwrap();
        let e = budget.reserve(&params(1, 1)).unwrap_err();
        assert!(e.contains("at most 3 tests"), "{e}");
        drop((a, b));
        budget.reserve(&params(32, 16 << 20)).unwrap();
    }
}
