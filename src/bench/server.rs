//! `vsplice bench server`: accepts control and data connections, runs the tests clients ask
//! for, and reports its side (byte counts per stream, CPU) back on the control connection.
//! Tests may overlap; CPU figures are then shared between them. Each stream ends by the counts
//! the two ends exchange over control (see [`super::proto`]); data connections stay open until
//! the control connection is through, so no end's close cuts bytes still on their way.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::fd::AsFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::cpu::CpuTimes;
use super::proto::{
    self, ClientMsg, Hello, Limit, Params, ServerMsg, StreamCounts, VERSION, Workload,
};
use super::rr;
use super::stream::{self, Expect, Peer, Stream};
use crate::open::Listener;
use crate::sys::signal::StopSignals;
use crate::{debug, info, notice, warn};

/// How long a server waits for a test's data connections, and for a silent peer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct SessionState {
    arrived: u32,
    started: Option<Instant>,
    aborted: bool,
    finished: u32,
    results: Vec<Option<StreamCounts>>,
    /// Streams whose sender stopped, and what each sent.
    senders_done: u32,
    sent: Vec<u64>,
    /// Which streams' data connections arrived.
    joined: Vec<bool>,
    /// `--crr` transactions answered per stream.
    crr: Vec<u64>,
    /// The control connection is through: data connections may close.
    closed: bool,
}

#[derive(Debug)]
struct Session {
    params: Params,
    state: Mutex<SessionState>,
    changed: Condvar,
    /// What each stream's receiver is to get, from the client's `Sent`.
    expect: Vec<Expect>,
}

impl Session {
    fn wait<F: Fn(&SessionState) -> bool>(&self, until: F, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        while !until(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
        true
    }

    fn update(&self, f: impl FnOnce(&mut SessionState)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }
}

type Sessions = Arc<Mutex<HashMap<String, Arc<Session>>>>;

/// Serves until SIGINT/SIGTERM.
pub fn serve(listener: Listener, signals: &StopSignals) -> std::io::Result<()> {
    let sessions: Sessions = Arc::default();
    loop {
        if let Some(signo) = signals.wait_with(listener.socket().as_fd())? {
            notice!("bench server: signal {signo}, stopping");
            return Ok(());
        }
        loop {
            match listener.accept() {
                Ok(Some(endpoint)) => {
                    let sessions = sessions.clone();
                    let peer = endpoint.label().to_string();
                    let spawned = std::thread::Builder::new()
                        .name("bench-conn".into())
                        .stack_size(256 * 1024)
                        .spawn(move || {
                            if let Err(e) = handle(endpoint, &sessions) {
                                crate::limited!(Warn, "bench server: {peer}: {e}");
                            }
                        });
                    if let Err(e) = spawned {
                        warn!("bench server: cannot start a thread: {e}");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!("bench server: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
    }
}

fn handle(endpoint: crate::endpoint::Endpoint, sessions: &Sessions) -> std::io::Result<()> {
    let stream = Stream::from_endpoint(endpoint)?;
    stream.set_timeouts(SETUP_TIMEOUT)?;
    match proto::read_hello(&mut stream.reader())? {
        Hello::Control {
            version,
            cookie,
            params,
        } => control(stream, sessions, version, cookie, params),
        Hello::Data { cookie, stream: id } => {
            let session = sessions.lock().unwrap().get(&cookie).cloned();
            match session {
                Some(session) => {
                    data(stream, &session, id);
                    Ok(())
                }
                None => Err(std::io::Error::other(format!(
                    "data connection for unknown test {cookie}"
                ))),
            }
        }
    }
}

fn control(
    stream: Stream,
    sessions: &Sessions,
    version: u32,
    cookie: String,
    params: Params,
) -> std::io::Result<()> {
    let mut out = stream.writer();
    // Tells the client why the test is refused, and ends this control connection.
    let mut refuse = |message: String| -> std::io::Result<()> {
        proto::send_line(
            &mut out,
            &ServerMsg::Error {
                message: message.clone(),
            },
        )?;
        Err(std::io::Error::other(message))
    };
    if version != VERSION {
        return refuse(format!(
            "protocol version {version} is not {VERSION}: use the same vsplice on both ends"
        ));
    }
    if let Err(bad) = params.check() {
        return refuse(format!("parameter {bad}"));
    }
    info!("bench server: test {cookie}: {params:?}");
    let session = Arc::new(Session {
        params: params.clone(),
        state: Mutex::new(SessionState {
            results: vec![None; params.streams as usize],
            sent: vec![0; params.streams as usize],
            joined: vec![false; params.streams as usize],
            crr: vec![0; params.streams as usize],
            ..SessionState::default()
        }),
        changed: Condvar::new(),
        expect: (0..params.streams).map(|_| Expect::new()).collect(),
    });
    sessions
        .lock()
        .unwrap()
        .insert(cookie.clone(), session.clone());
    let result = run_control(&stream, &session, &params);
    // Whatever happened, no receiver waits for counts any more and data connections may go.
    session.expect.iter().for_each(Expect::call_off);
    session.update(|s| {
        if s.finished < params.streams {
            s.aborted = true;
        }
        s.closed = true;
    });
    sessions.lock().unwrap().remove(&cookie);
    result
}

fn run_control(stream: &Stream, session: &Session, params: &Params) -> std::io::Result<()> {
    let mut out = stream.writer();
    proto::send_line(&mut out, &ServerMsg::Ready)?;
    // `--crr` streams have no lasting data connections: one arrives per transaction.
    let crr = params.workload == Workload::Crr;
    let all_here = session.wait(|s| crr || s.arrived >= params.streams, SETUP_TIMEOUT);
    if !all_here {
        let message = "not all data connections arrived".to_string();
        let _ = proto::send_line(
            &mut out,
            &ServerMsg::Error {
                message: message.clone(),
            },
        );
        return Err(std::io::Error::other(message));
    }
    let cpu_start = CpuTimes::of_self();
    let started = Instant::now();
    session.update(|s| s.started = Some(started));
    proto::send_line(&mut out, &ServerMsg::Start)?;
    // The client says Done once its streams ended; allow the test's length plus slack.
    let test_time = match params.limit {
        Limit::Time { ms } => Duration::from_millis(ms),
        Limit::Bytes { .. } => Duration::from_secs(3600),
    };
    stream.set_timeouts(test_time + SETUP_TIMEOUT)?;
    let mut reader = BufReader::new(stream.reader());
    // Our senders' counts first (the client reads them only after sending its own, so
    // neither end waits on the other), then the client's, for our receivers.
    session.wait(
        |s| crr || s.senders_done >= params.streams,
        test_time + SETUP_TIMEOUT,
    );
    let sent = session.state.lock().unwrap().sent.clone();
    proto::send_line(&mut out, &ServerMsg::Sent { bytes: sent })?;
    match proto::recv_line(&mut reader, params.max_line())? {
        ClientMsg::Sent { bytes } if bytes.len() == params.streams as usize => {
            for (expect, n) in session.expect.iter().zip(bytes) {
                expect.set(n);
            }
        }
        other => {
            return Err(std::io::Error::other(format!(
                "expected the client's byte counts, got {other:?}"
            )));
        }
    }
    let done: ClientMsg = proto::recv_line(&mut reader, params.max_line())?;
    debug!("bench server: client says {done:?}");
    session.wait(|s| crr || s.finished >= params.streams, SETUP_TIMEOUT);
    if crr {
        session.update(|s| {
            for (i, &n) in s.crr.clone().iter().enumerate() {
                let bytes = n * params.len as u64;
                s.results[i] = Some(StreamCounts {
                    stream: i as u32,
                    sent: bytes,
                    received: bytes,
                    transactions: n,
                    ..StreamCounts::default()
                });
            }
        });
    }
    let seconds = started.elapsed();
    let cpu = CpuTimes::of_self().since(cpu_start, seconds);
    let streams = session
        .state
        .lock()
        .unwrap()
        .results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.clone().unwrap_or_else(|| StreamCounts {
                stream: i as u32,
                error: Some("stream did not finish at the server".into()),
                ..StreamCounts::default()
            })
        })
        .collect();
    proto::send_line(
        &mut out,
        &ServerMsg::Results {
            streams,
            cpu,
            seconds: seconds.as_secs_f64(),
        },
    )
}

fn data(stream: Stream, session: &Session, id: u32) {
    let params = session.params.clone();
    if id >= params.streams {
        warn!(
            "bench server: stream {id} is beyond the test's {}",
            params.streams
        );
        return;
    }
    // `--vsock-buffer`: set on this end's vsock data sockets and read back for the report.
    let vsock_buffer = match (params.vsock_buffer, stream.is_vsock()) {
        (Some(size), true) => match stream.set_vsock_buffer(size) {
            Ok(got) => Some(got),
            Err(e) => {
                warn!("bench server: --vsock-buffer {size}: {e}");
                None
            }
        },
        _ => None,
    };
    if params.workload == Workload::Crr {
        let live = {
            let s = session.state.lock().unwrap();
            s.started.is_some() && !s.closed
        };
        if live {
            let _ = rr::serve_one(&stream, params.len, || {
                session.update(|s| s.crr[id as usize] += 1)
            });
        }
        return;
    }
    let mut duplicate = false;
    session.update(|s| {
        duplicate = std::mem::replace(&mut s.joined[id as usize], true);
        s.arrived += u32::from(!duplicate);
    });
    if duplicate {
        warn!("bench server: stream {id} arrived twice");
        return;
    }
    let idle = match params.limit {
        Limit::Time { ms } => Duration::from_millis(ms) + SETUP_TIMEOUT,
        Limit::Bytes { .. } => SETUP_TIMEOUT,
    };
    let _ = stream.set_timeouts(idle);
    if params.zerocopy && params.direction.server_sends() {
        if let Err(e) = stream.enable_zerocopy() {
            let counts = StreamCounts {
                stream: id,
                error: Some(e.to_string()),
                ..StreamCounts::default()
            };
            session.update(|s| {
                s.results[id as usize] = Some(counts);
                s.finished += 1;
                s.senders_done += 1;
            });
            return;
        }
    }
    if params.workload == Workload::Rr {
        session.update(|s| s.senders_done += 1);
        let mut counts = rr::serve_rr(
            &stream,
            id,
            params.len,
            &session.expect[id as usize],
            idle,
            stream::TICK,
        );
        counts.vsock_buffer = vsock_buffer;
        session.update(|s| {
            s.results[id as usize] = Some(counts);
            s.finished += 1;
        });
        session.wait(|s| s.closed, idle + SETUP_TIMEOUT);
        return;
    }
    let counter = AtomicU64::new(0);
    let started = if params.direction.server_sends() {
        session.wait(|s| s.started.is_some() || s.aborted, SETUP_TIMEOUT);
        session.state.lock().unwrap().started
    } else {
        None
    };
    let peer = Peer {
        expect: &session.expect[id as usize],
        idle,
        on_sent: Box::new(|n| {
            session.update(|s| {
                s.sent[id as usize] = n;
                s.senders_done += 1;
            })
        }),
    };
    let mut counts = stream::run_end(
        &stream,
        id,
        &params,
        started,
        params.direction.client_sends(),
        &counter,
        &counter,
        peer,
    );
    counts.vsock_buffer = vsock_buffer;
    if params.direction.server_sends() && started.is_none() {
        counts
            .error
            .get_or_insert_with(|| "the test never started".into());
    }
    session.update(|s| {
        s.results[id as usize] = Some(counts);
        s.finished += 1;
    });
    // The client may still be reading what this end sent: close only after control is done.
    session.wait(|s| s.closed, idle + SETUP_TIMEOUT);
}
