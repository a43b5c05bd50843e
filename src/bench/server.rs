//! `vsplice bench server`: accepts control and data connections, runs the tests clients ask
//! for, and reports its side (byte counts per stream, CPU) back on the control connection.
//! Tests may overlap; CPU figures are then shared between them. Each stream ends by the counts
//! the two ends exchange over control (see [`super::proto`]); data connections stay open until
//! the control connection is through, so no end's close cuts bytes still on their way.
//!
//! One thread accepts and reads every hello ([`super::hello`]); a connection gets a thread of
//! its own only once its hello is admitted, within the server's [`super::budget`].
//!
//! With `--accept-proxy` (a bench run through a relay with `send-proxy`) every connection
//! brings a PROXY header before its hello; the client its control connection declares is
//! printed per test and sent back in the results, so the client's report shows it too.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::fd::AsFd;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::budget::{Budget, Limits, Reservation};
use super::cpu::CpuTimes;
use super::end::{self, OtherEnd};
use super::hello::{Hellos, Step};
use super::proto::{
    self, ClientMsg, Hello, Limit, Params, PeerSeen, ServerMsg, StreamCounts, VERSION, Workload,
};
use super::receive::{self, Expect};
use super::rr;
use super::stream::Stream;
use crate::net::open::Listener;
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
    /// `--crr` data connections with a thread now.
    crr_live: u32,
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
    fn new(params: &Params) -> Session {
        let n = params.streams as usize;
        Session {
            params: params.clone(),
            state: Mutex::new(SessionState {
                results: vec![None; n],
                sent: vec![0; n],
                joined: vec![false; n],
                crr: vec![0; n],
                ..SessionState::default()
            }),
            changed: Condvar::new(),
            expect: (0..n).map(|_| Expect::new()).collect(),
        }
    }

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

type Sessions = Mutex<HashMap<String, Arc<Session>>>;

/// What the accepting thread and every connection thread share.
#[derive(Debug)]
struct Server {
    sessions: Sessions,
    budget: Arc<Budget>,
}

/// Serves until SIGINT/SIGTERM, within `limits` over all tests at once; with `accept_proxy`
/// every connection brings a PROXY protocol header first.
pub(crate) fn serve(
    listener: Listener,
    signals: &StopSignals,
    limits: Limits,
    accept_proxy: bool,
) -> std::io::Result<()> {
    let server = Arc::new(Server {
        sessions: Mutex::default(),
        budget: Budget::new(limits),
    });
    let mut hellos = Hellos::new(accept_proxy);
    loop {
        let now = Instant::now();
        let timeout = match hellos.next_deadline(now) {
            // Rounded up, so a wake never comes before the deadline it is for.
            Some(d) => PollTimeout::from((d.as_millis() + 1).min(60_000) as u16),
            None => PollTimeout::NONE,
        };
        let ready: Vec<bool> = {
            let mut fds = vec![
                PollFd::new(listener.socket().as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(hellos.fds().map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(crate::sys::from_nix(e)),
            }
            fds[2..]
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        if let Some(signo) = signals.take() {
            notice!("bench server: signal {signo}, stopping");
            return Ok(());
        }
        let now = Instant::now();
        let mut steps = hellos.advance(&ready, now);
        loop {
            match listener.accept() {
                Ok(Some(endpoint)) => steps.extend(hellos.add(endpoint, now)),
                Ok(None) => break,
                Err(e) => {
                    warn!("bench server: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        for step in steps {
            match step {
                Step::Waiting => {}
                Step::Failed(endpoint, e) => {
                    info!("bench server: {}: {e}", endpoint.label());
                }
                Step::Refused(endpoint, why) => {
                    drain(&endpoint);
                    refuse(endpoint, why);
                }
                Step::Hello(endpoint, hello, seen) => admit(&server, endpoint, hello, seen),
            }
        }
    }
}

/// Writes a refusal to a connection that has no thread yet (its socket is non-blocking; one
/// short line fits any fresh socket's send buffer), then closes it.
fn refuse(endpoint: crate::net::endpoint::Endpoint, message: String) {
    crate::limited!(Warn, "bench server: {}: {message}", endpoint.label());
    let mut line = serde_json::to_vec(&ServerMsg::Error { message }).unwrap_or_default();
    line.push(b'\n');
    if let Some(fd) = endpoint.write_fd() {
        let _ = crate::sys::pipe::write(fd, &line);
    }
}

/// Reads away what a refused connection sent already (at most 64 KiB), so that its close
/// after the refusal line is a clean end the client reads the line before, not a reset.
fn drain(endpoint: &crate::net::endpoint::Endpoint) {
    let Some(fd) = endpoint.read_fd() else {
        return;
    };
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match crate::sys::pipe::read(fd, &mut sink) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// Runs a connection's thread; a thread that cannot start costs that connection only.
fn spawn(name: &str, peer: String, f: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Err(e) = f() {
                crate::limited!(Warn, "bench server: {peer}: {e}");
            }
        });
    if let Err(e) = spawned {
        warn!("bench server: cannot start a thread: {e}");
    }
}

/// Decides on a complete hello, on the accepting thread: a test within the server's budget
/// gets a control thread; a data connection of a running test, for a stream not yet joined,
/// gets a data thread; anything else is closed here, costing no thread.
fn admit(
    server: &Arc<Server>,
    endpoint: crate::net::endpoint::Endpoint,
    hello: Hello,
    seen: Option<PeerSeen>,
) {
    let peer = match &seen {
        Some(seen) => seen.to_string(),
        None => endpoint.label().to_string(),
    };
    match hello {
        Hello::Control {
            version,
            cookie,
            params,
        } => {
            if version != VERSION {
                return refuse(
                    endpoint,
                    format!(
                        "protocol version {version} is not {VERSION}: use the same vsplice on both ends"
                    ),
                );
            }
            if let Err(bad) = params.check() {
                return refuse(endpoint, format!("parameter {bad}"));
            }
            if params.messages != endpoint.is_message() {
                let (asked, here) = match params.messages {
                    true => ("SEQPACKET messages", "streams"),
                    false => ("a stream", "SEQPACKET"),
                };
                return refuse(
                    endpoint,
                    format!("the test asks for {asked}, this server's sockets are {here}"),
                );
            }
            let reservation = match server.budget.reserve(&params) {
                Ok(r) => r,
                Err(why) => return refuse(endpoint, why),
            };
            let session = Arc::new(Session::new(&params));
            {
                let mut sessions = server.sessions.lock().unwrap();
                if sessions.contains_key(&cookie) {
                    drop(sessions);
                    return refuse(endpoint, format!("a test {cookie} is running already"));
                }
                sessions.insert(cookie.clone(), session.clone());
            }
            if let Some(seen) = &seen {
                // The server's text output: the client each test came from.
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "test {cookie}: client {seen}");
            }
            let server = server.clone();
            spawn("bench-control", peer, move || {
                let stream = Stream::from_endpoint(endpoint)?;
                stream.set_timeouts(SETUP_TIMEOUT)?;
                control(stream, &server, cookie, session, reservation, seen)
            });
        }
        Hello::Data { cookie, stream: id } => {
            let session = server.sessions.lock().unwrap().get(&cookie).cloned();
            let Some(session) = session else {
                info!("bench server: {peer}: data connection for unknown test {cookie}");
                return;
            };
            let streams = session.params.streams;
            if id >= streams {
                crate::limited!(
                    Warn,
                    "bench server: {peer}: stream {id} is beyond the test's {streams}"
                );
                return;
            }
            let mut admitted = true;
            session.update(|s| {
                if session.params.workload == Workload::Crr {
                    // One transaction at a time per stream, but the threads of the ones
                    // before may not have seen their close yet (on 2 busy cores, twice the
                    // streams was not enough): a loose bound, still a bound.
                    admitted = s.crr_live < 8 * streams + 64;
                    s.crr_live += u32::from(admitted);
                } else {
                    admitted = !std::mem::replace(&mut s.joined[id as usize], true);
                }
            });
            if !admitted {
                crate::limited!(
                    Warn,
                    "bench server: {peer}: stream {id} arrived twice, or too many at once"
                );
                return;
            }
            spawn("bench-data", peer, move || {
                let result = Stream::from_endpoint(endpoint).and_then(|stream| {
                    stream.set_timeouts(SETUP_TIMEOUT)?;
                    data(stream, &session, id);
                    Ok(())
                });
                if session.params.workload == Workload::Crr {
                    session.update(|s| s.crr_live -= 1);
                }
                result
            });
        }
    }
}

fn control(
    stream: Stream,
    server: &Server,
    cookie: String,
    session: Arc<Session>,
    reservation: Reservation,
    seen: Option<PeerSeen>,
) -> std::io::Result<()> {
    let params = session.params.clone();
    info!("bench server: test {cookie}: {params:?}");
    let result = run_control(&stream, &session, &params, seen);
    // Whatever happened, no receiver waits for counts any more and data connections may go.
    session.expect.iter().for_each(Expect::call_off);
    session.update(|s| {
        if s.finished < params.streams {
            s.aborted = true;
        }
        s.closed = true;
    });
    server.sessions.lock().unwrap().remove(&cookie);
    // Given back before the results go out: a client's next test may follow at once.
    drop(reservation);
    let results = result?;
    proto::send_line(&mut stream.writer(), &results)
}

/// Runs a test to its end; returns the results for the client.
fn run_control(
    stream: &Stream,
    session: &Session,
    params: &Params,
    client: Option<PeerSeen>,
) -> std::io::Result<ServerMsg> {
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
    let mut reader = BufReader::with_capacity(proto::CONTROL_CHUNK, stream.reader());
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
    Ok(ServerMsg::Results {
        streams,
        cpu,
        seconds: seconds.as_secs_f64(),
        client,
    })
}

fn data(stream: Stream, session: &Session, id: u32) {
    let params = session.params.clone();
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
    // `joined` was marked when the hello was admitted.
    session.update(|s| s.arrived += 1);
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
            receive::TICK,
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
    let peer = OtherEnd {
        expect: &session.expect[id as usize],
        idle,
        on_sent: Box::new(|n| {
            session.update(|s| {
                s.sent[id as usize] = n;
                s.senders_done += 1;
            })
        }),
    };
    let test_start = || session.state.lock().unwrap().started;
    let mut counts = end::run_end(
        &stream,
        id,
        &params,
        started,
        params.direction.client_sends(),
        &test_start,
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
