//! Binary upgrades of `vsplice serve` (SIGUSR2), end to end on real sockets: the binary is
//! copied to a scratch path and run from there, the file is replaced by a copy (as a package
//! manager replaces it: a new file renamed over the old) and the running process signalled,
//! while short connections arrive at about 200 a second and 16 long transfers (32 MiB each
//! way, hashed at both ends) are open across the handover. Also: a broken binary (a script
//! that exits 1, one that never says it serves), an upgrade during a drain, and the systemd
//! protocol through `systemd-socket-activate` with a NOTIFY_SOCKET the test reads.
//!
//! The processes after the first are children of the one they replaced, and orphans once it
//! exits: the test process makes itself a child subreaper so that it reaps them.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::debs::socket_activate;
use common::{MIB, Relay, Scratch, payload, vsplice_bin};
use nix::sys::signal::Signal;

/// Long transfers open across each handover, and their size each way.
const LONG: usize = 16;
const LONG_BYTES: usize = 32 * MIB;
/// A guard against a hang, never a measure.
/// One upgrade test at a time: each makes the test process a child subreaper, signals the
/// processes it started and waits for them to exit; run side by side (CI, 2026-12-07) the
/// socket-activated ones failed twice in a row (a connection after the old process exited was
/// never answered; a log line missing), and passed alone.
static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const GUARD: Duration = Duration::from_secs(180);

fn subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// Whether process `pid` has ended (reaping it when it is ours to reap).
fn exited(pid: u32) -> bool {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            matches!(state, Some(Some('Z' | 'X')))
        }
    }
}

fn wait_exited(pid: u32, log: &dyn Fn() -> String) {
    let deadline = Instant::now() + GUARD;
    while !exited(pid) {
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Replaces the file at `path` by a copy of `from`, as a package manager does: a new file
/// renamed over the old one (the running process keeps its deleted inode).
fn replace_binary(path: &Path, from: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn install_script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// An echo server: every connection gets back what it sends, then the end of file.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    common::widen_backlog(&listener);
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Where every connection the test made started, for the bound on what an old process can
/// have accepted.
#[derive(Default)]
struct Starts(Mutex<Vec<Instant>>);

impl Starts {
    fn record(&self) {
        self.0.lock().unwrap().push(Instant::now());
    }
    fn before(&self, t: Instant) -> usize {
        self.0.lock().unwrap().iter().filter(|s| **s < t).count()
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Short connections at about 200 a second (two clients, 100 each), each 64 bytes echoed;
/// every refusal, reset or wrong answer is kept.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, starts: Arc<Starts>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..2)
            .map(|client| {
                let (stop, done, failures, starts) =
                    (stop.clone(), done.clone(), failures.clone(), starts.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let msg = format!("client {client} connection {i} {:>40}", "x");
                        starts.record();
                        match short_exchange(port, msg.as_bytes()) {
                            Ok(()) => {
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{msg}: {e}")),
                        }
                        i += 1;
                        next += Duration::from_millis(10);
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            done,
            failures,
            threads,
        }
    }

    fn done(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Stops; returns (connections served, failures).
    fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::SeqCst), failures)
    }
}

fn short_exchange(port: u16, msg: &[u8]) -> Result<(), String> {
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(GUARD)).unwrap();
    c.write_all(msg).map_err(|e| format!("send: {e}"))?;
    c.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    c.read_to_end(&mut back)
        .map_err(|e| format!("receive: {e}"))?;
    if back != msg {
        return Err(format!(
            "{} bytes back, not the {} sent",
            back.len(),
            msg.len()
        ));
    }
    Ok(())
}

/// Held shut until opened: the long transfers send their second half only then.
#[derive(Default)]
struct Gate(Mutex<bool>, Condvar);

impl Gate {
    fn wait(&self) {
        let mut open = self.0.lock().unwrap();
        while !*open {
            open = self.1.wait(open).unwrap();
        }
    }
    fn open(&self) {
        *self.0.lock().unwrap() = true;
        self.1.notify_all();
    }
}

/// [`LONG`] transfers through `port`: each sends half its payload, waits for the gate, sends
/// the rest, and checks the hash of everything echoed back.
struct Transfers {
    gate: Arc<Gate>,
    halfway: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Result<(), String>>>,
}

impl Transfers {
    fn start(port: u16, starts: &Starts, seed: u64) -> Transfers {
        let gate = Arc::new(Gate::default());
        let halfway = Arc::new(AtomicUsize::new(0));
        let threads = (0..LONG)
            .map(|i| {
                let data = payload(LONG_BYTES, seed + i as u64);
                starts.record();
                let (gate, halfway) = (gate.clone(), halfway.clone());
                std::thread::spawn(move || {
                    let mut c = TcpStream::connect(("127.0.0.1", port))
                        .map_err(|e| format!("transfer {i}: connect: {e}"))?;
                    let mut w = c.try_clone().unwrap();
                    let sender = std::thread::spawn(move || -> std::io::Result<()> {
                        let (first, second) = data.data.split_at(LONG_BYTES / 2);
                        w.write_all(first)?;
                        halfway.fetch_add(1, Ordering::SeqCst);
                        gate.wait();
                        w.write_all(second)?;
                        w.shutdown(Shutdown::Write)
                    });
                    let outcome = common::drain(&mut c);
                    sender
                        .join()
                        .unwrap()
                        .map_err(|e| format!("transfer {i}: send: {e}"))?;
                    let outcome = outcome.map_err(|e| format!("transfer {i}: receive: {e}"))?;
                    if outcome.sha != data.sha {
                        return Err(format!(
                            "transfer {i}: {} bytes back, hash differs",
                            outcome.received
                        ));
                    }
                    Ok(())
                })
            })
            .collect();
        Transfers {
            gate,
            halfway,
            threads,
        }
    }

    fn wait_halfway(&self) {
        let deadline = Instant::now() + GUARD;
        while self.halfway.load(Ordering::SeqCst) < LONG {
            assert!(Instant::now() < deadline, "transfers did not get halfway");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn finish(self) -> Vec<String> {
        self.gate.open();
        self.threads
            .into_iter()
            .filter_map(|t| t.join().unwrap().err())
            .collect()
    }
}

/// A `vsplice serve` run from a copy of the binary in a scratch folder.
struct Site {
    dir: Scratch,
    binary: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
    port: u16,
    metrics_port: u16,
}

impl Site {
    fn new(tag: &str, drain: &str) -> Site {
        let dir = Scratch::new(tag);
        let binary = dir.path("vsplice");
        std::fs::copy(vsplice_bin(), &binary).unwrap();
        let (port, metrics_port) = (common::free_port(), common::free_port());
        let backend = echo_server();
        let config = dir.path("vsplice.toml");
        std::fs::write(
            &config,
            format!(
                "drain-timeout = \"{drain}\"\n\
                 [metrics]\nlisten = \"TCP-LISTEN:{metrics_port},bind=127.0.0.1\"\n\
                 [[service]]\nname = \"echo\"\n\
                 listen = \"TCP-LISTEN:{port},bind=127.0.0.1,fork,backlog=1024\"\n\
                 connect = \"TCP:127.0.0.1:{backend}\"\n\
                 [[service]]\nname = \"unix\"\n\
                 listen = \"UNIX-LISTEN:{},fork\"\n\
                 connect = \"TCP:127.0.0.1:{backend}\"\n",
                dir.path("echo.sock").display()
            ),
        )
        .unwrap();
        let pid_file = dir.path("vsplice.pid");
        Site {
            dir,
            binary,
            config,
            pid_file,
            port,
            metrics_port,
        }
    }

    fn start(&self) -> Relay {
        self.start_env(&[])
    }

    fn start_env(&self, env: &[(&str, &str)]) -> Relay {
        let mut command = Command::new(&self.binary);
        command.envs(env.iter().copied());
        let relay = Relay::spawn_command(
            command,
            &[
                "serve",
                "--config",
                self.config.to_str().unwrap(),
                "--pid-file",
                self.pid_file.to_str().unwrap(),
            ],
        );
        relay.wait_for_log("serving 2 services", GUARD);
        relay
    }

    /// The metrics text, from whichever process answers.
    fn scrape(&self) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }
}

/// One exchange through the UNIX service.
fn unix_exchange(site: &Site, msg: &[u8]) {
    let mut c = std::os::unix::net::UnixStream::connect(site.dir.path("echo.sock"))
        .expect("the UNIX service's socket file is there");
    c.write_all(msg).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// The first log line of process `pid` that contains `needle`, waited for.
fn wait_line(relay: &Relay, pid: u32, needle: &str) -> String {
    let deadline = Instant::now() + GUARD;
    let tag = format!("vsplice[{pid}] ");
    loop {
        let log = relay.log();
        if let Some(line) = log.lines().find(|l| l.contains(&tag) && l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not log {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The text between `before` and `after` in `line`.
fn between<'a>(line: &'a str, before: &str, after: &str) -> &'a str {
    let rest = &line[line
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} in {line}"))
        + before.len()..];
    &rest[..rest
        .find(after)
        .unwrap_or_else(|| panic!("{after:?} in {line}"))]
}

/// What process `pid` accepted in all, from the counters it logs at exit.
fn accepted_at_exit(relay: &Relay, pid: u32) -> usize {
    accepted_at_exit_of(relay, pid, "echo")
}

/// What process `pid` accepted for `service`, from the counters it logs at exit.
fn accepted_at_exit_of(relay: &Relay, pid: u32, service: &str) -> usize {
    let line = wait_line(relay, pid, &format!("{service}: last counters:"));
    between(&line, "accepted ", ",").parse().unwrap()
}

/// One upgrade under load, from `old`: returns the new pid and the handover time.
fn upgrade_once(
    site: &Site,
    relay: &Relay,
    old: u32,
    starts: &Starts,
    round: u64,
) -> (u32, String) {
    let transfers = Transfers::start(site.port, starts, round * 1000);
    transfers.wait_halfway();
    replace_binary(&site.binary, Path::new(vsplice_bin()));
    kill(old, Signal::SIGUSR2);
    let line = wait_line(relay, old, "this one stopped accepting");
    let new: u32 = between(&line, "upgrade: process ", " serves")
        .parse()
        .unwrap();
    let took = between(&line, "serves (", " after SIGUSR2").to_string();
    // The new process answers scrapes at once (the old one closed its endpoint).
    let metrics = site.scrape();
    assert!(
        metrics.contains("vsplice_connections_accepted_total{service=\"echo\"}"),
        "{metrics}"
    );
    assert_eq!(
        std::fs::read_to_string(&site.pid_file).unwrap().trim(),
        new.to_string(),
        "the pid file names the new process"
    );
    // The old process keeps its 16 transfers, halfway through: it may not exit yet.
    assert!(
        !exited(old),
        "process {old} exited with transfers open:\n{}",
        relay.log()
    );
    let failures = transfers.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", relay.log());
    wait_exited(old, &|| relay.log());
    assert!(
        wait_line(relay, old, "last counters").contains("open 0"),
        "{}",
        relay.log()
    );
    (new, took)
}

#[test]
fn upgrades_under_load_refuse_reset_and_cut_nothing_three_times_in_a_row() {
    let _serial = one_at_a_time();
    subreaper();
    let site = Site::new("upgrade-load", "120s");
    let relay = site.start();
    let starts = Arc::new(Starts::default());
    let load = Load::start(site.port, starts.clone());
    let mut pid = relay.child.id();
    let mut gens = vec![pid];
    let mut handovers = Vec::new();
    let mut bounds = Vec::new();
    for round in 1..=3 {
        // Some short connections before each handover, on the process being replaced.
        let before = load.done();
        while load.done() < before + 50 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let (new, took) = upgrade_once(&site, &relay, pid, &starts, round);
        // Everything the processes up to this one accepted started before its handover was
        // seen: bounded by the connections started by then.
        bounds.push(starts.before(Instant::now()));
        handovers.push(took);
        pid = new;
        gens.push(pid);
    }
    // The UNIX service's socket file outlived the processes that handed it over.
    unix_exchange(&site, b"through the socket file after three upgrades");
    let after = load.done();
    while load.done() < after + 100 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (served, failures) = load.finish();
    kill(pid, Signal::SIGTERM);
    wait_exited(pid, &|| relay.log());
    let accepted: Vec<usize> = gens.iter().map(|p| accepted_at_exit(&relay, *p)).collect();
    let mut sum = 0;
    for (k, bound) in bounds.iter().enumerate() {
        sum += accepted[k];
        assert!(
            sum <= *bound,
            "processes 1..={} accepted {sum}, more than the {bound} connections started before \
             handover {}: {accepted:?}",
            k + 1,
            k + 1
        );
    }
    let total = starts.total();
    assert_eq!(
        accepted.iter().sum::<usize>(),
        total,
        "every connection accepted once: {accepted:?}"
    );
    assert!(
        *accepted.last().unwrap() > 0,
        "the last process served the connections after the last handover"
    );
    assert!(
        failures.is_empty(),
        "{} of {} short connections failed: {failures:#?}\n{}",
        failures.len(),
        served + failures.len(),
        relay.log()
    );
    println!(
        "upgrade figures: refused or reset 0 of {served} short connections (about 200/s), cut 0 of \
         {} long transfers ({} MiB each way, hashed); handover (SIGUSR2 to the new process \
         ready) {handovers:?}; accepted per process {accepted:?}",
        3 * LONG,
        LONG_BYTES / MIB
    );
}

#[test]
fn a_broken_or_silent_binary_leaves_the_old_process_serving_everything() {
    let _serial = one_at_a_time();
    subreaper();
    let site = Site::new("upgrade-broken", "120s");
    // The bound on a new process's readiness, short for the silent binary below.
    let relay = site.start_env(&[("VSPLICE_UPGRADE_TIMEOUT", "1")]);
    let pid = relay.child.id();
    let starts = Arc::new(Starts::default());
    let load = Load::start(site.port, starts.clone());
    let transfers = Transfers::start(site.port, &starts, 77);
    transfers.wait_halfway();
    // A binary that exits 1.
    install_script(&site.binary, "exit 1");
    kill(pid, Signal::SIGUSR2);
    let line = wait_line(&relay, pid, "upgrade failed");
    assert!(line.contains("exit status: 1"), "{line}");
    // A binary that never says it serves, with a child of its own: both are killed at the
    // bound, and `serve --upgrade` says the upgrade did not happen.
    install_script(&site.binary, "sleep 600 & exec sleep 600");
    let out = Command::new(vsplice_bin())
        .args(["serve", "--upgrade", "--pid-file"])
        .arg(&site.pid_file)
        .env("VSPLICE_UPGRADE_TIMEOUT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = wait_line(&relay, pid, "did not say it serves");
    assert!(line.contains("killed"), "{line}");
    assert!(!exited(pid), "{}", relay.log());
    let failures = transfers.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", relay.log());
    // Every listener is intact: a good binary still takes over.
    replace_binary(&site.binary, Path::new(vsplice_bin()));
    let out = Command::new(vsplice_bin())
        .args(["serve", "--upgrade", "--pid-file"])
        .arg(&site.pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\n{}", relay.log());
    let line = wait_line(&relay, pid, "this one stopped accepting");
    let new: u32 = between(&line, "upgrade: process ", " serves")
        .parse()
        .unwrap();
    wait_exited(pid, &|| relay.log());
    let done = load.done();
    while load.done() < done + 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (served, failures) = load.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", relay.log());
    assert!(served > 0);
    kill(new, Signal::SIGTERM);
    wait_exited(new, &|| relay.log());
    // Nothing the silent binary started is left holding the sockets.
    let leftover: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|cmdline| cmdline.as_slice() == b"sleep\x00600\x00")
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect();
    assert!(leftover.is_empty(), "processes left: {leftover:?}");
}

#[test]
fn an_upgrade_during_a_drain_is_refused_with_a_log_line() {
    let _serial = one_at_a_time();
    subreaper();
    let site = Site::new("upgrade-drain", "120s");
    let mut relay = site.start();
    let pid = relay.child.id();
    let starts = Starts::default();
    let transfers = Transfers::start(site.port, &starts, 5);
    transfers.wait_halfway();
    relay.signal(Signal::SIGTERM);
    wait_line(&relay, pid, "connections left to drain");
    replace_binary(&site.binary, Path::new(vsplice_bin()));
    relay.signal(Signal::SIGUSR2);
    wait_line(&relay, pid, "upgrade refused: this process is draining");
    let failures = transfers.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", relay.log());
    assert!(relay.wait_exit(GUARD).success(), "{}", relay.log());
    assert!(!relay.log().contains("upgrade: started"), "{}", relay.log());
}

#[test]
fn socket_activated_listeners_survive_an_upgrade_and_mainpid_names_the_new_process_before_the_old_exits()
 {
    let _serial = one_at_a_time();
    use std::os::unix::net::UnixDatagram;
    subreaper();
    let site = Site::new("upgrade-systemd", "120s");
    let backend = echo_server();
    let config = site.dir.path("activated.toml");
    std::fs::write(
        &config,
        format!(
            "drain-timeout = \"120s\"\n[[service]]\nname = \"echo\"\n\
             listen = \"ACCEPT-FD:3,fork\"\nconnect = \"TCP:127.0.0.1:{backend}\"\n"
        ),
    )
    .unwrap();
    let notify_path = site.dir.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(GUARD)).unwrap();
    let port = common::free_port();
    let mut command = socket_activate();
    command
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg(&site.binary)
        .args(["serve", "--config", config.to_str().unwrap()]);
    let relay = Relay::spawn_command(command, &[]);
    // The activator listens first and execs vsplice (same process) on the first connection.
    let first = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let old = relay.child.id();
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\nSTATUS="), "{ready}");
    drop(first);
    // A transfer open on the old process keeps it from exiting before the test has looked.
    let starts = Starts::default();
    let transfers = Transfers::start(port, &starts, 9);
    transfers.wait_halfway();
    replace_binary(&site.binary, Path::new(vsplice_bin()));
    kill(old, Signal::SIGUSR2);
    let n = notify.recv(&mut buf).unwrap();
    let took_over = String::from_utf8_lossy(&buf[..n]).to_string();
    let new: u32 = between(&took_over, "MAINPID=", "\n").parse().unwrap();
    assert_ne!(new, old);
    assert!(took_over.contains("\nREADY=1\n"), "{took_over}");
    assert!(!exited(old), "MAINPID= came after the old process exited");
    assert!(!exited(new));
    // The passed socket serves through the new process while the old one drains.
    short_exchange(port, b"after the handover").unwrap();
    let failures = transfers.finish();
    assert!(failures.is_empty(), "{failures:#?}\n{}", relay.log());
    wait_exited(old, &|| relay.log());
    // The old process said nothing more to systemd (no STOPPING=1 for the service).
    notify.set_nonblocking(true).unwrap();
    let more = notify.recv(&mut buf);
    assert!(
        matches!(&more, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the old process notified after the handover: {:?}",
        more.map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    );
    short_exchange(port, b"after the old process exited").unwrap();
    let line = wait_line(&relay, new, "took over from process");
    assert!(line.contains(&format!("process {old}")), "{line}");
    // A second upgrade of the new process works the same way.
    notify.set_nonblocking(false).unwrap();
    replace_binary(&site.binary, Path::new(vsplice_bin()));
    kill(new, Signal::SIGUSR2);
    let n = notify.recv(&mut buf).unwrap();
    let third: u32 = between(&String::from_utf8_lossy(&buf[..n]), "MAINPID=", "\n")
        .parse()
        .unwrap();
    wait_exited(new, &|| relay.log());
    short_exchange(port, b"after the second upgrade").unwrap();
    kill(third, Signal::SIGTERM);
    wait_exited(third, &|| relay.log());
}

#[test]
fn a_socket_from_systemds_descriptor_store_is_taken_by_its_name_and_stored_again() {
    let _serial = one_at_a_time();
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixDatagram;
    let site = Site::new("upgrade-fdstore", "5s");
    let backend = echo_server();
    let port = common::free_port();
    let config = site.dir.path("stored.toml");
    // A plain TCP listener: the passed socket already binds its port, so vsplice serves only
    // if it takes that socket by its name instead of binding its own.
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"echo\"\nlisten = \"TCP-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"TCP:127.0.0.1:{backend}\"\n"
        ),
    )
    .unwrap();
    let notify_path = site.dir.path("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(GUARD)).unwrap();
    let name = format!("listen=127.0.0.1%3A{port}");
    let mut command = socket_activate();
    command
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("--fdname={name}"))
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("FDSTORE=8")
        .arg(&site.binary)
        .args(["serve", "--config", config.to_str().unwrap()]);
    let relay = Relay::spawn_command(command, &[]);
    let deadline = Instant::now() + GUARD;
    loop {
        match short_exchange(port, b"through the stored socket") {
            Ok(()) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}\n{}", relay.log());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"READY=1\n"), "{}", relay.log());
    // Stored again (systemd keeps one copy of a descriptor stored twice).
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        notify.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let fds: Vec<_> = msg
        .cmsgs()
        .unwrap()
        .filter_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => Some(fds),
            _ => None,
        })
        .flatten()
        .collect();
    let len = msg.bytes;
    assert_eq!(
        String::from_utf8_lossy(&buf[..len]),
        format!("FDSTORE=1\nFDNAME={name}")
    );
    assert_eq!(fds.len(), 1);
    // SAFETY: SCM_RIGHTS just gave this process the descriptor; nothing else owns it.
    let stored = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    let local =
        nix::sys::socket::getsockname::<nix::sys::socket::SockaddrIn>(stored.as_fd().as_raw_fd())
            .unwrap();
    assert_eq!(local.port(), port);
    // Logged before READY=1, but through the log thread: it may reach the file after.
    relay.wait_for_log("echo: serving on 127.0.0.1", GUARD);
}

/// A UDP service across an upgrade: its socket is handed over, a session open before the
/// upgrade runs on in the old process (its socket is connected to the sender, so the kernel
/// keeps giving it that sender's datagrams) until it ends by its idle timeout, a new sender is
/// served by the new process, and once the old process is gone the first sender gets a new
/// session there: no datagram goes unanswered on the way.
#[test]
fn a_udp_services_socket_is_handed_over_and_an_open_session_runs_on_in_the_old_process() {
    let _serial = one_at_a_time();
    use std::net::UdpSocket;
    subreaper();
    let dir = Scratch::new("upgrade-udp");
    let binary = dir.path("vsplice");
    std::fs::copy(vsplice_bin(), &binary).unwrap();
    let backend = common::messages::udp_answerer(b"echo:");
    let port = common::free_port();
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "drain-timeout = \"120s\"\n[[service]]\nname = \"dns\"\n\
             listen = \"UDP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"UDP:127.0.0.1:{backend}\"\nidle-timeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let pid_file = dir.path("vsplice.pid");
    let relay = Relay::spawn_command(
        Command::new(&binary),
        &[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    relay.wait_for_log("serving 1 services", GUARD);
    let old = relay.child.id();
    let client = || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(GUARD)).unwrap();
        socket
    };
    let ask = |socket: &UdpSocket, message: &str| {
        socket.send(message.as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("{message}: {e}\n{}", relay.log()));
        assert_eq!(&buf[..n], format!("echo:{message}").as_bytes());
    };
    let early = client();
    ask(&early, "before");
    replace_binary(&binary, Path::new(vsplice_bin()));
    kill(old, Signal::SIGUSR2);
    let line = wait_line(&relay, old, "this one stopped accepting");
    let new: u32 = between(&line, "upgrade: process ", " serves")
        .parse()
        .unwrap();
    assert!(line.contains("1 connections left to drain"), "{line}");
    ask(&early, "during the drain");
    let late = client();
    ask(&late, "new sender");
    // The old process ends once the early session has been idle for 2 s.
    wait_exited(old, &|| relay.log());
    assert_eq!(
        accepted_at_exit_of(&relay, old, "dns"),
        1,
        "{}",
        relay.log()
    );
    ask(&early, "after the old process exited");
    kill(new, Signal::SIGTERM);
    wait_exited(new, &|| relay.log());
    assert_eq!(
        accepted_at_exit_of(&relay, new, "dns"),
        2,
        "{}",
        relay.log()
    );
}
