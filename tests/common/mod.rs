//! Fixtures shared by the integration tests: random payloads and their hashes, streams of the
//! three socket families behind one trait, an exchange (send a payload while receiving one,
//! then half-close) for clients and servers, and a running `vsplice` process.
//!
//! Everything here uses real sockets. The vsock helpers are only ever called inside the
//! user-mode-linux guest (see `guest_only`): the machine itself must never open an AF_VSOCK
//! connection.

#![allow(dead_code)]

pub mod bench;
pub mod bench_plain;
pub mod debs;
pub mod lab;
pub mod messages;
pub mod proxy_reader;
pub mod qemu;
pub mod seqpacket_guest;
pub mod speed;
pub mod splice_probe;
pub mod uml_profile;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const MIB: usize = 1 << 20;

pub fn vsplice_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vsplice")
}

/// A deterministic pseudo-random payload and its SHA-256.
#[derive(Clone)]
pub struct Payload {
    pub data: Arc<Vec<u8>>,
    pub sha: String,
}

/// Fills `len` bytes from a xorshift generator seeded with `seed` (incompressible, repeatable).
pub fn payload(len: usize, seed: u64) -> Payload {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    let sha = sha_hex(&data);
    Payload {
        data: Arc::new(data),
        sha,
    }
}

impl Payload {
    /// Client `i` of an echo test: sends the payload on `c`, half-closes, and checks that the
    /// same bytes come back; the error names the client and the step.
    pub fn echo_through(&self, c: &mut std::net::TcpStream, i: usize) -> Result<(), String> {
        c.write_all(&self.data)
            .and_then(|_| c.shutdown(std::net::Shutdown::Write))
            .map_err(|e| format!("client {i}: send: {e}"))?;
        let mut back = Vec::new();
        c.read_to_end(&mut back)
            .map_err(|e| format!("client {i}: receive: {e}"))?;
        if sha_hex(&back) != self.sha {
            return Err(format!("client {i}: {} bytes back, wrong", back.len()));
        }
        Ok(())
    }
}

pub fn sha_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A bidirectional byte stream that can be split and half-closed.
pub trait Duplex: Read + Write + Send + 'static {
    fn split(&self) -> io::Result<Box<dyn Duplex>>;
    fn shutdown_write(&self) -> io::Result<()>;
}

impl Duplex for TcpStream {
    fn split(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Duplex for UnixStream {
    fn split(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// A blocking AF_VSOCK stream (guest only).
pub struct VsockStream(File);

impl VsockStream {
    pub fn connect(cid: u32, port: u32) -> io::Result<VsockStream> {
        guest_only();
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        connect(fd.as_raw_fd(), &VsockAddr::new(cid, port)).map_err(io::Error::from)?;
        Ok(VsockStream(File::from(fd)))
    }

    /// The local (CID, port) of the connection.
    pub fn local_addr(&self) -> io::Result<(u32, u32)> {
        let addr: nix::sys::socket::VsockAddr =
            nix::sys::socket::getsockname(self.0.as_raw_fd()).map_err(io::Error::from)?;
        Ok((addr.cid(), addr.port()))
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Duplex for VsockStream {
    fn split(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(Box::new(VsockStream(self.0.try_clone()?)))
    }
    fn shutdown_write(&self) -> io::Result<()> {
        nix::sys::socket::shutdown(self.0.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(io::Error::from)
    }
}

/// Refuses to go on unless running inside one of the guest labs: the user-mode-linux guest
/// (its CPU model says UML) or the QEMU guest (an emulated "QEMU Virtual CPU").
pub fn guest_only() {
    let marked = std::env::var("VSPLICE_LAB_GUEST").as_deref() == Ok("1");
    let guest_cpu = std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| c.contains("UML") || c.contains("QEMU Virtual CPU"))
        .unwrap_or(false);
    assert!(
        marked && guest_cpu,
        "AF_VSOCK connections are only allowed inside the guest lab"
    );
}

/// Sends `send` while reading exactly `expect` bytes, without half-closing: for transports
/// that cannot pass a half-close on (vhost-device-vsock).
pub fn exchange_exact(
    stream: &dyn Duplex,
    send: Arc<Vec<u8>>,
    expect: usize,
) -> io::Result<Outcome> {
    let mut writer = stream.split()?;
    let mut reader = stream.split()?;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        for chunk in send.chunks(64 * 1024) {
            writer.write_all(chunk)?;
        }
        Ok(())
    });
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    while received < expect {
        let want = (expect - received).min(buf.len());
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("end of file after {received} of {expect} bytes"),
            ));
        }
        hasher.update(&buf[..n]);
        received += n;
    }
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    let sha = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Outcome { received, sha })
}

/// Calls listen() again with a large backlog (the kernel caps it at net.core.somaxconn).
pub fn widen_backlog(listener: &impl std::os::fd::AsFd) {
    nix::sys::socket::listen(listener, nix::sys::socket::Backlog::new(4096).unwrap())
        .expect("widen the listen backlog");
}

/// A listening socket of any family.
pub enum Listen {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
    Vsock(OwnedFd, u32),
}

impl Listen {
    /// A TCP listener on loopback. std listens with a backlog of 128, which a burst of
    /// hundreds of relayed connects overflows (the kernel then falls back to SYN cookies, and
    /// some fail with a reset): widen it.
    pub fn tcp() -> Listen {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
        widen_backlog(&l);
        Listen::Tcp(l)
    }

    pub fn unix(path: &Path) -> Listen {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path).expect("bind unix");
        widen_backlog(&l);
        Listen::Unix(l, path.to_path_buf())
    }

    /// A vsock listener on `port` (guest only), with a generous backlog.
    pub fn vsock(port: u32) -> Listen {
        guest_only();
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, VsockAddr, bind, listen, socket,
        };
        let fd = socket(
            AddressFamily::Vsock,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("vsock socket");
        bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).expect("bind vsock");
        listen(&fd, Backlog::new(1024).unwrap()).expect("listen vsock");
        Listen::Vsock(fd, port)
    }

    pub fn port(&self) -> u32 {
        match self {
            Listen::Tcp(l) => u32::from(l.local_addr().unwrap().port()),
            Listen::Vsock(_, p) => *p,
            Listen::Unix(..) => 0,
        }
    }

    /// The vsplice address that connects to this listener.
    pub fn connect_address(&self) -> String {
        match self {
            Listen::Tcp(l) => format!("TCP:127.0.0.1:{}", l.local_addr().unwrap().port()),
            Listen::Unix(_, p) => format!("UNIX-CONNECT:{}", p.display()),
            Listen::Vsock(_, p) => format!("VSOCK-CONNECT:1:{p}"),
        }
    }

    pub fn accept(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(match self {
            Listen::Tcp(l) => Box::new(l.accept()?.0),
            Listen::Unix(l, _) => Box::new(l.accept()?.0),
            Listen::Vsock(fd, _) => {
                let c = nix::sys::socket::accept4(fd, nix::sys::socket::SockFlag::SOCK_CLOEXEC)
                    .map_err(io::Error::from)?;
                Box::new(VsockStream(File::from(c)))
            }
        })
    }
}

impl Drop for Listen {
    fn drop(&mut self) {
        if let Listen::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// What one side of an exchange received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub received: usize,
    pub sha: String,
}

/// Reads until end of file, hashing.
pub fn drain(stream: &mut dyn Read) -> io::Result<Outcome> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                received += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let sha = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Outcome { received, sha })
}

/// Sends `send` (then half-closes) while receiving until end of file, both at once.
pub fn exchange(mut stream: Box<dyn Duplex>, send: Arc<Vec<u8>>) -> io::Result<Outcome> {
    let mut writer = stream.split()?;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        for chunk in send.chunks(64 * 1024) {
            writer.write_all(chunk)?;
        }
        writer.shutdown_write()
    });
    let outcome = drain(&mut stream);
    sender
        .join()
        .map_err(|_| io::Error::other("sender panicked"))??;
    outcome
}

/// A server that runs [`exchange`] with `reply` on each of `conns` accepted connections and
/// reports what each received.
pub struct ExchangeServer {
    pub results: mpsc::Receiver<io::Result<Outcome>>,
    thread: Option<JoinHandle<()>>,
}

impl ExchangeServer {
    pub fn spawn(listen: Listen, reply: Arc<Vec<u8>>, conns: usize) -> ExchangeServer {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            for _ in 0..conns {
                let stream = match listen.accept() {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let tx = tx.clone();
                let reply = reply.clone();
                workers.push(std::thread::spawn(move || {
                    let _ = tx.send(exchange(stream, reply));
                }));
            }
            for w in workers {
                let _ = w.join();
            }
        });
        ExchangeServer {
            results: rx,
            thread: Some(thread),
        }
    }

    pub fn next(&self, timeout: Duration) -> Outcome {
        self.results
            .recv_timeout(timeout)
            .expect("server reported in time")
            .expect("server exchange succeeded")
    }
}

impl Drop for ExchangeServer {
    fn drop(&mut self) {
        // The accept loop may still wait; the thread is detached rather than joined.
        drop(self.thread.take());
    }
}

/// The lowest port [`free_port`] hands out.
pub const FREE_PORT_LOW: u16 = 20000;

/// The kernel's ephemeral port range (net.ipv4.ip_local_port_range): where outgoing
/// connections and binds to port 0 take their local ports from.
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut ends = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A TCP port on 127.0.0.1 that was free a moment ago, below the ephemeral range: a port
/// from that range (what binding port 0 gives) may be taken meanwhile by any outgoing
/// connection, another test's or a bench's, before the test binds it. Candidates start at
/// an offset drawn from the process id and step with a per-process counter, so test binaries
/// running at once rarely try the same ports; each is checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (ephemeral_low, _) = ephemeral_ports();
    if ephemeral_low <= FREE_PORT_LOW + 1000 {
        // No room below the ephemeral range (an unusual sysctl): let the kernel pick.
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = u32::from(ephemeral_low - FREE_PORT_LOW);
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FREE_PORT_LOW + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FREE_PORT_LOW}..{ephemeral_low}");
}

/// Closes `stream` with a reset (SO_LINGER 0) instead of a FIN.
pub fn close_with_reset(stream: TcpStream) {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &abort)
        .expect("SO_LINGER");
    drop(stream);
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let base = std::env::var_os("VSPLICE_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = base.join(format!("vsplice-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `vsplice` process, stopped (SIGTERM) on drop. Its stderr goes to a file so a
/// failing test can show it.
pub struct Relay {
    pub child: Child,
    log: PathBuf,
    _scratch: Scratch,
}

impl Relay {
    /// Starts `vsplice -dd ARGS` and waits until it logs that it listens.
    pub fn start(args: &[&str]) -> Relay {
        Relay::spawn(args, Stdio::null(), Stdio::null()).listening()
    }

    /// As [`Relay::start`], with the vsplice binary at `bin` (another build, to compare).
    pub fn start_bin(bin: &Path, args: &[&str]) -> Relay {
        Relay::spawn_with(Command::new(bin), args, Stdio::null(), Stdio::null()).listening()
    }

    /// This relay once it has logged "listening on" (20 s at most): the one way every test
    /// waits for a relay it spawned to be ready for clients.
    pub fn listening(self) -> Relay {
        self.wait_for_log("listening on", Duration::from_secs(20));
        self
    }

    /// Starts `vsplice serve --config CONFIG -dd` and waits until it serves `services`.
    pub fn serve(config: &Path, services: usize) -> Relay {
        let relay = Relay::spawn(
            &["serve", "--config", config.to_str().unwrap()],
            Stdio::null(),
            Stdio::null(),
        );
        relay.wait_for_log(
            &format!("serving {services} services"),
            Duration::from_secs(60),
        );
        relay
    }

    /// Starts `vsplice ARGS -dd` with the given stdin and stdout, without waiting.
    pub fn spawn(args: &[&str], stdin: Stdio, stdout: Stdio) -> Relay {
        Relay::spawn_with(Command::new(vsplice_bin()), args, stdin, stdout)
    }

    /// As [`Relay::spawn`], with `env` added to vsplice's environment.
    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Relay {
        let mut command = Command::new(vsplice_bin());
        command.envs(env.iter().copied());
        Relay::spawn_with(command, args, Stdio::null(), Stdio::null())
    }

    /// Starts `vsplice -dd ARGS` with at most `nofile` descriptors (soft and hard limit, set
    /// with util-linux `prlimit`), and waits until it listens.
    pub fn start_limited(nofile: u32, args: &[&str]) -> Relay {
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--nofile={nofile}:{nofile}"))
            .arg(vsplice_bin());
        Relay::spawn_with(cmd, args, Stdio::null(), Stdio::null()).listening()
    }

    /// Starts `vsplice -dd ARGS` as user and group 65534 (nobody) through util-linux
    /// `setpriv`, and waits until it listens: an unprivileged user, subject to the per-user
    /// pipe quota (fs.pipe-user-pages-soft). Needs root.
    pub fn start_unprivileged(args: &[&str]) -> Relay {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(vsplice_bin());
        Relay::spawn_with(cmd, args, Stdio::null(), Stdio::null()).listening()
    }

    /// Starts `COMMAND ARGS -dd` (a wrapper that execs vsplice), without waiting.
    pub fn spawn_command(command: Command, args: &[&str]) -> Relay {
        Relay::spawn_with(command, args, Stdio::null(), Stdio::null())
    }

    pub fn spawn_with(mut command: Command, args: &[&str], stdin: Stdio, stdout: Stdio) -> Relay {
        let scratch = Scratch::new("relay");
        let log = scratch.path("stderr.log");
        let child = command
            .args(args)
            .arg("-dd")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn vsplice");
        Relay {
            child,
            log,
            _scratch: scratch,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads the child's piped stdout until `needle` shows (a bench server's "listening on",
    /// which it prints there); the pipe stays open, so later lines do not meet EPIPE.
    pub fn wait_for_stdout(&mut self, needle: &str) {
        let mut out = self.child.stdout.take().expect("stdout piped");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            assert_eq!(out.read(&mut byte).unwrap(), 1, "exited before {needle:?}");
            seen.push(byte[0]);
        }
        self.child.stdout = Some(out);
    }

    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "vsplice did not log {needle:?} in time; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "vsplice did not exit in time; stderr:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops at once: SIGTERM, then SIGINT (a second stop signal skips the drain, and a
    /// different signal cannot merge with the first while it is pending); waits for the exit
    /// status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        self.wait_exit(Duration::from_secs(20))
    }

    /// Sends one signal (SIGTERM: the relay drains for `--drain-timeout`).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("send a signal");
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `vsplice ARGS --json` to completion, asserts success, prints and parses its output.
pub fn vsplice_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(vsplice_bin())
        .args(args)
        .arg("--json")
        .output()
        .expect("run vsplice");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vsplice {args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("JSON: {e}\n{stdout}"))
}

/// Runs `vsplice ARGS` to completion and returns (status code, stderr).
pub fn run_vsplice(args: &[&str]) -> (i32, String) {
    let out = Command::new(vsplice_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run vsplice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after `name` among a measurement's arguments (`--rounds 5`), or `default`
/// when it is missing or not a number.
pub fn number_arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
