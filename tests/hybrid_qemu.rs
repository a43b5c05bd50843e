//! Hybrid vsock against a real VMM backend, in the QEMU lab: QEMU's vhost-user-vsock-pci
//! device served by rust-vmm's vhost-device-vsock, the model Firecracker and
//! cloud-hypervisor use. The machine reaches the guest only through the backend's UNIX socket.
//!
//! Like tests/vsock_guest.rs this binary has two roles: on the machine it boots a guest per
//! scenario and plays the host side; in the guest (`--guest NAME`) it plays the guest side and
//! prints results on the console, which the host side reads.
//!
//! vhost-device-vsock 0.3.0 does not pass a half-close through (a host EOF becomes a full
//! shutdown in the guest; a guest SHUT_WR never reaches the host), so the bulk exchanges here
//! send and receive exact lengths instead of relying on EOF, and the half-close check proves
//! what vsplice itself does: it forwards the shutdown, which the guest then sees.
//!
//! `hybrid_speed_table` is a measurement, not a test: it runs only when a filter names it
//! (`perf/vsock-lab.sh`) and prints relay speed over hybrid vsock, relays on the machine, in
//! one guest boot (docs/performance.md, "vsock in the guest, relatively").

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::qemu::{Guest, QemuLab};
use common::*;

const SIZE: usize = 16 * MIB;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 6000;
const BENCH_PORT: u32 = 5201;
/// A host relay `VSOCK-UDS-LISTEN:..:5202,fork -> TCP` in front of a host bench server.
const HOST_RELAY_PORT: u32 = 5202;
/// A guest relay `VSOCK-LISTEN:5203,fork -> TCP` in front of a guest bench server.
const GUEST_RELAY_PORT: u32 = 5203;
const BOOT: Duration = Duration::from_secs(120);
const LONG: Duration = Duration::from_secs(300);

fn host_payload() -> Payload {
    payload(SIZE, 61)
}

fn guest_payload() -> Payload {
    payload(SIZE, 62)
}

// ---------------------------------------------------------------- guest sides

/// Guest: a TCP exchange server behind `vsplice VSOCK-LISTEN:5000 TCP:...`.
fn guest_host_to_guest() {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let listen = format!("VSOCK-LISTEN:{GUEST_PORT}");
    let mut relay = Relay::start(&["-ddd", &listen, &upstream]);
    println!("GUEST-READY");
    let mut s = server.accept().unwrap();
    let got = exchange_exact(&*s, guest_payload().data, SIZE).unwrap();
    println!("GUEST-RESULT received={} sha={}", got.received, got.sha);
    // The host half-closes next: vsplice on the host forwards it, the guest reads EOF.
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    println!("GUEST-SAW-EOF extra={}", rest.len());
    drop(s);
    let _ = relay.wait_exit(LONG);
    println!("{}", relay.log());
}

/// Guest: a client through `vsplice TCP-LISTEN:... VSOCK-CONNECT:2:6000` to the host.
fn guest_guest_to_host() {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let target = format!("VSOCK-CONNECT:2:{HOST_PORT},retry=50,interval=0.2");
    let mut relay = Relay::start(&["-ddd", &listen, &target]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = exchange_exact(&s, guest_payload().data, SIZE).unwrap();
    println!("GUEST-RESULT received={} sha={}", got.received, got.sha);
    drop(s);
    let _ = relay.wait_exit(LONG);
    println!("{}", relay.log());
}

/// Port on which the guest waits for the host's "done" connection.
const DONE_PORT: u32 = 5999;

/// Guest: a bench server on vsock, and one on TCP behind a vsplice relay on vsock, until the
/// host connects to DONE_PORT.
fn guest_bench() {
    let done = Listen::vsock(DONE_PORT);
    let mut server = Relay::spawn(
        &["bench", "server", &format!("VSOCK-LISTEN:{BENCH_PORT}")],
        std::process::Stdio::null(),
        std::process::Stdio::inherit(),
    );
    let (mut tcp_server, tcp) = bench_server_on_tcp();
    let mut relay = Relay::start(&[&format!("VSOCK-LISTEN:{GUEST_RELAY_PORT},fork"), &tcp]);
    println!("GUEST-READY");
    let _ = done.accept();
    assert!(server.stop().success());
    let _ = relay.stop();
    let _ = tcp_server.stop();
}

/// A bench server on a loopback TCP port, answering once this returns; and its address.
fn bench_server_on_tcp() -> (Relay, String) {
    let port = free_port();
    let server = Relay::spawn(
        &[
            "bench",
            "server",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1"),
        ],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "bench server on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, format!("TCP:127.0.0.1:{port}"))
}

/// Runs a bench client in every direction with `--verify` and exact byte counts; returns the
/// receiver-side Gbit/s of each run, labelled.
fn bench_every_direction(target: &str, path: &str) -> Vec<String> {
    let mut figures = Vec::new();
    for direction in ["--forward", "--reverse", "--bidir"] {
        let mut args = vec![
            "bench",
            "client",
            target,
            "--bytes",
            "8M",
            "--verify",
            "--streams",
            "2",
            "--interval",
            "0",
        ];
        if direction != "--forward" {
            args.push(direction);
        }
        let doc = vsplice_json(&args);
        assert_eq!(
            doc["errors"].as_array().unwrap().len(),
            0,
            "{path} {direction}: {doc}"
        );
        let mut gbps = 0.0;
        for sum in ["sum_client_to_server", "sum_server_to_client"] {
            let d = &doc[sum];
            if !d.is_null() {
                assert_eq!(d["sender_bytes"], 8 << 20, "{path} {direction} {sum}");
                assert_eq!(d["receiver_bytes"], 8 << 20, "{path} {direction} {sum}");
                gbps += d["receiver_bits_per_second"].as_f64().unwrap() / 1e9;
            }
        }
        figures.push(format!("{path} {direction}: {gbps:.3} Gbit/s"));
    }
    figures
}

/// Guest: bench clients to the host (the direction a guest's SHUT_WR never finished on this
/// backend), every direction, direct and through the host's relay; then a timed run.
fn guest_bench_to_host() {
    let direct = format!("VSOCK-CONNECT:2:{BENCH_PORT},retry=100,interval=0.2");
    let relayed = format!("VSOCK-CONNECT:2:{HOST_RELAY_PORT},retry=100,interval=0.2");
    let mut figures = bench_every_direction(&direct, "guest->host direct");
    figures.extend(bench_every_direction(
        &relayed,
        "guest->host via host relay",
    ));
    for f in figures {
        println!("GUEST-BENCH {f}");
    }
    let doc = vsplice_json(&["bench", "client", &direct, "--time", "3", "--interval", "1"]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    let sum = &doc["sum_client_to_server"];
    assert_eq!(sum["sender_bytes"], sum["receiver_bytes"]);
    println!(
        "GUEST-BENCH-TIMED guest->host 3 s: {} bytes, {:.3} Gbit/s receiver, client CPU {:.0}%, server CPU {:.0}%",
        sum["receiver_bytes"],
        sum["receiver_bits_per_second"].as_f64().unwrap() / 1e9,
        doc["cpu"]["client"]["total_pct"].as_f64().unwrap(),
        doc["cpu"]["server"]["total_pct"].as_f64().unwrap(),
    );
    println!("GUEST-BENCH-DONE");
}

// ---------------------------------------------------------------- host sides

/// Host side of a bulk exchange: 16 MiB each way at once, hashes checked at both ends (the
/// guest prints what it received).
fn host_exchange(guest: &mut Guest, stream: &dyn Duplex) {
    let got = exchange_exact(stream, host_payload().data, SIZE).unwrap();
    assert_eq!(
        got.sha,
        guest_payload().sha,
        "host received the guest's bytes intact"
    );
    let at_guest = guest.wait_for("GUEST-RESULT", LONG).unwrap();
    assert_eq!(
        result_sha(&at_guest),
        host_payload().sha,
        "guest received the host's bytes intact"
    );
}

fn result_sha(line: &str) -> String {
    line.split("sha=").nth(1).unwrap_or("").trim().to_string()
}

/// Host: `vsplice TCP-LISTEN -> VSOCK-UDS-CONNECT` into the guest's `VSOCK-LISTEN -> TCP`.
fn host_host_to_guest(guest: &mut Guest) {
    guest.wait_for("GUEST-READY", BOOT).unwrap();
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    // A connect before the guest listens is refused by the backend: retry.
    let target = format!(
        "VSOCK-UDS-CONNECT:{}:{GUEST_PORT},retry=100,interval=0.2",
        guest.uds().display()
    );
    let mut relay = Relay::start(&["-dddd", &listen, &target]);
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    host_exchange(guest, &s);
    // Half-close: the host client shuts down its write side and keeps its socket open. The
    // guest can only see end of file if vsplice forwarded the shutdown.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let eof = guest.wait_for("GUEST-SAW-EOF", LONG).unwrap();
    assert!(eof.ends_with("extra=0"), "{eof}");
    relay.wait_for_log("first->second reached end of file", Duration::from_secs(10));
    drop(s);
    let _ = relay.stop();
}

/// Host: `vsplice VSOCK-UDS-LISTEN -> TCP` serving the guest's `VSOCK-CONNECT:2:6000`.
fn host_guest_to_host(guest: &mut Guest) {
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let listen = format!("VSOCK-UDS-LISTEN:{}:{HOST_PORT}", guest.uds().display());
    let mut relay = Relay::start(&["-ddd", &listen, &upstream]);
    let s = server.accept().unwrap();
    host_exchange(guest, &*s);
    drop(s);
    let _ = relay.wait_exit(LONG);
    let socket_file = format!("{}_{HOST_PORT}", guest.uds().display());
    assert!(
        !std::path::Path::new(&socket_file).exists(),
        "{socket_file} removed on exit"
    );
}

/// Host: the bench client over hybrid vsock, byte counts checked at both ends.
fn host_bench(guest: &mut Guest) {
    guest.wait_for("GUEST-READY", BOOT).unwrap();
    let target = format!(
        "VSOCK-UDS-CONNECT:{}:{BENCH_PORT},retry=100,interval=0.2",
        guest.uds().display()
    );
    let doc = vsplice_json(&[
        "bench",
        "client",
        &target,
        "--bytes",
        "16M",
        "--verify",
        "--streams",
        "2",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["sum_client_to_server"]["receiver_bytes"], 16 << 20);
    println!(
        "bench host->guest over hybrid vsock (TCG-emulated guest): {:.3} Gbit/s",
        doc["sum_client_to_server"]["receiver_bits_per_second"]
            .as_f64()
            .unwrap()
            / 1e9
    );
    let relayed = format!(
        "VSOCK-UDS-CONNECT:{}:{GUEST_RELAY_PORT},retry=100,interval=0.2",
        guest.uds().display()
    );
    let mut figures = bench_every_direction(&target, "host->guest direct");
    figures.extend(bench_every_direction(
        &relayed,
        "host->guest via guest relay",
    ));
    for f in figures {
        println!("bench {f} (TCG-emulated guest)");
    }
    // Tell the guest side it may stop: a plain hybrid-vsock handshake to DONE_PORT.
    let mut done = std::os::unix::net::UnixStream::connect(guest.uds()).unwrap();
    std::io::Write::write_all(&mut done, format!("CONNECT {DONE_PORT}\n").as_bytes()).unwrap();
    let mut reply = [0u8; 3];
    std::io::Read::read_exact(&mut done, &mut reply).unwrap();
    assert_eq!(&reply, b"OK ");
}

/// Host: bench servers for a guest's clients: one on the backend's socket for port 5201, one
/// on TCP behind `vsplice VSOCK-UDS-LISTEN:..:5202,fork`.
fn host_bench_from_guest(guest: &mut Guest) {
    let uds = guest.uds().display().to_string();
    let mut server = Relay::spawn(
        &[
            "bench",
            "server",
            &format!("VSOCK-UDS-LISTEN:{uds}:{BENCH_PORT}"),
        ],
        std::process::Stdio::null(),
        std::process::Stdio::null(),
    );
    let (mut tcp_server, tcp) = bench_server_on_tcp();
    let mut relay = Relay::start(&[
        &format!("VSOCK-UDS-LISTEN:{uds}:{HOST_RELAY_PORT},fork"),
        &tcp,
    ]);
    let outcome = guest.wait_for("GUEST-BENCH-DONE", LONG);
    let _ = relay.stop();
    let _ = tcp_server.stop();
    let _ = server.stop();
    outcome.unwrap();
}

// ---------------------------------------------------------------- speed table (a measurement)

/// Guest port of the speed table's control connection (the host drives every run over it).
const SPEED_CONTROL_PORT: u32 = 5300;
/// Guest port of the sink that host -> guest runs end at.
const SPEED_SINK_PORT: u32 = 5301;
/// First host port (`<uds>_P`) that guest -> host runs connect to; one fresh port a run.
const SPEED_HOST_PORT: u32 = 6100;
/// Write and read size at both ends, as in the user-mode-linux table (`common::speed`).
const SPEED_CHUNK: usize = 128 * 1024;
/// No read of a run waits longer than this.
const SPEED_STALL: Duration = Duration::from_secs(120);

/// Reads exactly `bytes` in `SPEED_CHUNK` reads; an end of file before that is an error.
fn read_exactly<R: std::io::Read + ?Sized>(stream: &mut R, bytes: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; SPEED_CHUNK];
    let mut got = 0;
    while got < bytes {
        let want = (bytes - got).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("end of file after {got} of {bytes} bytes"),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `bytes` in `SPEED_CHUNK` writes.
fn write_bytes<W: std::io::Write + ?Sized>(stream: &mut W, bytes: usize) -> std::io::Result<()> {
    let data = vec![0x5au8; SPEED_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len());
        stream.write_all(&data[..n])?;
        left -= n;
    }
    Ok(())
}

/// Sends `bytes`, then waits for the receiver's one-byte acknowledgement: vhost-device-vsock
/// passes no half-close, so a run ends by its byte count, and the sender learns it from the
/// receiver.
fn send_and_wait_for_ack(stream: &mut dyn Duplex, bytes: usize) -> std::io::Result<()> {
    write_bytes(stream, bytes)?;
    let mut ack = [0u8; 1];
    std::io::Read::read_exact(stream, &mut ack)?;
    if ack[0] != b'!' {
        return Err(std::io::Error::other(format!("acknowledged with {ack:?}")));
    }
    Ok(())
}

/// Reads exactly `bytes`, stamps the time, acknowledges with one byte and waits for the peer
/// to close (or reset): the receiving end of a run.
fn receive_and_ack(stream: &mut dyn Duplex, bytes: usize) -> std::io::Result<Instant> {
    read_exactly(stream, bytes)?;
    let end = Instant::now();
    stream.write_all(b"!")?;
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(stream, &mut rest);
    Ok(end)
}

/// The hybrid-vsock handshake, typed by the client itself: `CONNECT <port>\n`, then one
/// `OK <hostport>\n` line read byte by byte (nothing past it is consumed).
fn hybrid_handshake(stream: &mut dyn Duplex, port: u32) -> std::io::Result<()> {
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        std::io::Read::read_exact(stream, &mut byte)?;
        line.push(byte[0]);
        if line.len() > 64 {
            break;
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(std::io::Error::other(format!(
            "handshake answered {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(())
}

/// Guest: the other end of every run of the speed table. A sink on SPEED_SINK_PORT reads the
/// host's bytes and acknowledges; a control connection on SPEED_CONTROL_PORT takes `BYTES n`,
/// `SEND P` (connect to the host's port P, send, wait for the acknowledgement, answer `SENT`)
/// and `STOP`.
fn guest_speed_table() {
    use std::io::BufRead;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let control = Listen::vsock(SPEED_CONTROL_PORT);
    let sink = Listen::vsock(SPEED_SINK_PORT);
    let bytes = Arc::new(AtomicUsize::new(0));
    let sink_bytes = bytes.clone();
    std::thread::spawn(move || {
        while let Ok(mut s) = sink.accept() {
            let bytes = sink_bytes.load(Ordering::SeqCst);
            std::thread::spawn(move || {
                if let Err(e) = receive_and_ack(&mut *s, bytes) {
                    println!("GUEST-SINK-FAILED {e}");
                }
            });
        }
    });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("GUEST-READY kernel={}", kernel.trim());
    let c = control.accept().expect("control connection");
    let mut answers = c.split().unwrap();
    for line in std::io::BufReader::new(c).lines() {
        let line = line.expect("control line");
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["BYTES", n] => {
                bytes.store(n.parse().expect("BYTES n"), Ordering::SeqCst);
                "READY".to_string()
            }
            ["SEND", port] => {
                let port: u32 = port.parse().expect("SEND port");
                let n = bytes.load(Ordering::SeqCst);
                let mut tries = 0;
                let outcome = loop {
                    tries += 1;
                    match VsockStream::connect(2, port) {
                        Ok(mut s) => break send_and_wait_for_ack(&mut s, n),
                        Err(e) if tries < 50 => {
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Err(e) => break Err(e),
                    }
                };
                match outcome {
                    Ok(()) => format!("SENT tries={tries}"),
                    Err(e) => format!("FAILED {e}"),
                }
            }
            ["STOP"] => break,
            _ => format!("FAILED unknown command {line:?}"),
        };
        answers
            .write_all(format!("{answer}\n").as_bytes())
            .expect("control answer");
    }
}

/// Waits until a TCP listener on 127.0.0.1:`port` is up (read from /proc/net/tcp, so no probe
/// connection takes the relay's one accept).
fn wait_tcp_listening(port: u16) -> Result<(), String> {
    let needle = format!("0100007F:{port:04X} 00000000:0000 0A");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| t.contains(&needle)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("nothing listens on TCP port {port}"))
}

/// Waits until a UNIX listener on `path` is up (flag __SO_ACCEPTCON in /proc/net/unix).
fn wait_unix_listening(path: &std::path::Path) -> Result<(), String> {
    let path = path.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let listening = table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8 && f[3] == "00010000" && f[7] == path
        });
        if listening {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!("nothing listens on {path}"))
}

/// A relay process of one run, with what to wait for once the run is over.
enum SpeedRelay {
    None,
    Vsplice(Relay),
    Child(std::process::Child),
}

impl SpeedRelay {
    /// Waits for the relay to exit by itself (both ends closed), up to a minute; returns its
    /// log (vsplice's), or why it failed.
    fn finish(&mut self) -> Result<String, String> {
        match self {
            SpeedRelay::None => Ok(String::new()),
            SpeedRelay::Vsplice(r) => {
                let status = r.wait_exit(Duration::from_secs(60));
                if status.success() {
                    Ok(r.log())
                } else {
                    Err(format!("vsplice: {status}\n{}", r.log()))
                }
            }
            SpeedRelay::Child(c) => {
                let deadline = Instant::now() + Duration::from_secs(60);
                while c.try_wait().map_err(|e| e.to_string())?.is_none() {
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        return Err("the relay did not exit".into());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(String::new())
            }
        }
    }
}

impl Drop for SpeedRelay {
    fn drop(&mut self) {
        if let SpeedRelay::Child(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// socat and the library path its unpacked copy needs.
struct Socat {
    bin: std::path::PathBuf,
    library_path: String,
}

impl Socat {
    fn start(&self, from: &str, to: &str) -> SpeedRelay {
        let child = std::process::Command::new(&self.bin)
            .args(["-b", "131072", from, to])
            .env("LD_LIBRARY_PATH", &self.library_path)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start socat");
        SpeedRelay::Child(child)
    }
}

fn copying_relay(from: &str, to: &str) -> SpeedRelay {
    let child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--copy-relay", from, to])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start the copying relay");
    SpeedRelay::Child(child)
}

/// What one run of the speed table measured.
struct SpeedRun {
    mib_per_s: f64,
    /// The relay's CPU (user and system, from its rusage) per GiB moved.
    cpu_s_per_gib: f64,
    log: String,
}

/// Host -> guest: a host client through `via` into the guest's sink, over the backend's UNIX
/// socket. Timed from the client's connect to the guest's acknowledgement.
fn speed_host_to_guest(
    uds: &std::path::Path,
    via: &speed::Via,
    socat: Option<&Socat>,
    bytes: usize,
) -> Result<SpeedRun, String> {
    use speed::Via;
    let cpu_before = speed::children_cpu();
    let port = free_port();
    let tcp_listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let mut relay = match via {
        Via::Direct => SpeedRelay::None,
        Via::Vsplice(args) => {
            let target = format!("VSOCK-UDS-CONNECT:{}:{SPEED_SINK_PORT}", uds.display());
            let mut all: Vec<&str> = vec!["-d"];
            all.extend(args.iter().map(String::as_str));
            all.extend([tcp_listen.as_str(), &target]);
            SpeedRelay::Vsplice(Relay::start(&all))
        }
        Via::CopyRelay => copying_relay(&format!("tcp:{port}"), &format!("unix:{}", uds.display())),
        Via::Socat(_) => socat.expect("socat").start(
            &format!("{tcp_listen},reuseaddr"),
            &format!("UNIX-CONNECT:{}", uds.display()),
        ),
        Via::VspliceBuild(_) => unreachable!("not in the hybrid table"),
    };
    if !matches!(via, Via::Direct) {
        wait_tcp_listening(port)?;
    }
    let start = Instant::now();
    let mut client: Box<dyn Duplex> = match via {
        Via::Direct => {
            let s = std::os::unix::net::UnixStream::connect(uds)
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(SPEED_STALL)).unwrap();
            Box::new(s)
        }
        _ => {
            let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(SPEED_STALL)).unwrap();
            Box::new(s)
        }
    };
    // vsplice speaks the handshake itself; everyone else's client types it.
    if !matches!(via, Via::Vsplice(_)) {
        hybrid_handshake(&mut *client, SPEED_SINK_PORT).map_err(|e| format!("handshake: {e}"))?;
    }
    send_and_wait_for_ack(&mut *client, bytes).map_err(|e| format!("client: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    drop(client);
    let log = relay.finish()?;
    Ok(SpeedRun {
        mib_per_s: bytes as f64 / MIB as f64 / secs,
        cpu_s_per_gib: (speed::children_cpu() - cpu_before) / (bytes as f64 / (1u64 << 30) as f64),
        log,
    })
}

/// Guest -> host: the guest connects to CID 2 port `port`, which the backend turns into a
/// connect to `<uds>_<port>`, where `via` (or the sink itself) listens. Timed from the host's
/// `SEND` on the control connection to the sink's last byte.
fn speed_guest_to_host(
    uds: &std::path::Path,
    control: &mut std::io::BufReader<std::os::unix::net::UnixStream>,
    port: u32,
    via: &speed::Via,
    socat: Option<&Socat>,
    bytes: usize,
) -> Result<SpeedRun, String> {
    use speed::Via;
    let cpu_before = speed::children_cpu();
    let socket_file = std::path::PathBuf::from(format!("{}_{port}", uds.display()));
    let sink = match via {
        Via::Direct => Listen::unix(&socket_file),
        _ => Listen::tcp(),
    };
    let sink_port = sink.port();
    let uds_listen = format!("VSOCK-UDS-LISTEN:{}:{port}", uds.display());
    let tcp = format!("TCP:127.0.0.1:{sink_port}");
    let mut relay = match via {
        Via::Direct => SpeedRelay::None,
        Via::Vsplice(args) => {
            let mut all: Vec<&str> = vec!["-d"];
            all.extend(args.iter().map(String::as_str));
            all.extend([uds_listen.as_str(), &tcp]);
            SpeedRelay::Vsplice(Relay::start(&all))
        }
        Via::CopyRelay => copying_relay(
            &format!("unix:{}", socket_file.display()),
            &format!("tcp:{sink_port}"),
        ),
        Via::Socat(_) => socat.expect("socat").start(
            &format!("UNIX-LISTEN:{},unlink-early", socket_file.display()),
            &tcp,
        ),
        Via::VspliceBuild(_) => unreachable!("not in the hybrid table"),
    };
    wait_unix_listening(&socket_file)?;
    let sink = std::thread::spawn(move || -> Result<Instant, String> {
        let mut s: Box<dyn Duplex> = match &sink {
            Listen::Unix(l, _) => {
                let (s, _) = l.accept().map_err(|e| format!("sink accept: {e}"))?;
                s.set_read_timeout(Some(SPEED_STALL)).unwrap();
                Box::new(s)
            }
            Listen::Tcp(l) => {
                let (s, _) = l.accept().map_err(|e| format!("sink accept: {e}"))?;
                s.set_read_timeout(Some(SPEED_STALL)).unwrap();
                Box::new(s)
            }
            Listen::Vsock(..) => unreachable!("the host never listens on vsock"),
        };
        receive_and_ack(&mut *s, bytes).map_err(|e| format!("sink: {e}"))
    });
    let start = Instant::now();
    std::io::Write::write_all(control.get_mut(), format!("SEND {port}\n").as_bytes())
        .map_err(|e| format!("control: {e}"))?;
    let mut answer = String::new();
    std::io::BufRead::read_line(control, &mut answer).map_err(|e| format!("control: {e}"))?;
    if !answer.starts_with("SENT") {
        // The sink waits for a connection that will not come: unblock its accept.
        let _ = std::os::unix::net::UnixStream::connect(&socket_file);
        let _ = TcpStream::connect(("127.0.0.1", sink_port as u16));
        let _ = sink.join();
        let _ = relay.finish();
        return Err(format!("guest: {}", answer.trim()));
    }
    let end = sink.join().map_err(|_| "sink panicked".to_string())??;
    let secs = end.duration_since(start).as_secs_f64();
    let log = relay.finish()?;
    let _ = std::fs::remove_file(&socket_file);
    Ok(SpeedRun {
        mib_per_s: bytes as f64 / MIB as f64 / secs,
        cpu_s_per_gib: (speed::children_cpu() - cpu_before) / (bytes as f64 / (1u64 << 30) as f64),
        log,
    })
}

/// Host: the speed table over hybrid vsock. Words after a lone `--`: `--rounds N` (3),
/// `--mib N` (64 MiB a run), `--with "ARGS"` (repeatable: vsplice with ARGS as another column;
/// the ratios are those of vsplice with its defaults).
fn host_speed_table(guest: &mut Guest) {
    use speed::Via;
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").collect();
    let arg = |name: &str, default: usize| number_arg(&args, name, default);
    let rounds = arg("--rounds", 3);
    let bytes = arg("--mib", 64) * MIB;
    let socat = match common::debs::tool("socat", "usr/bin/socat") {
        Ok(c) => Some(Socat {
            bin: std::path::PathBuf::from(c.get_program()),
            library_path: common::lab::deb_root().library_path(),
        }),
        Err(e) => {
            println!("no socat for the speed table: {e}");
            None
        }
    };
    let ready = guest.wait_for("GUEST-READY", BOOT).unwrap();
    let kernel = ready
        .split("kernel=")
        .nth(1)
        .unwrap_or("?")
        .trim()
        .to_string();
    let uds = guest.uds().to_path_buf();
    // The control connection: a plain hybrid handshake, retried until the guest listens.
    let deadline = Instant::now() + Duration::from_secs(60);
    let control = loop {
        let attempt = std::os::unix::net::UnixStream::connect(&uds).and_then(|mut s| {
            hybrid_handshake(&mut s, SPEED_CONTROL_PORT)?;
            Ok(s)
        });
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "control connection: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    control.set_read_timeout(Some(SPEED_STALL * 2)).unwrap();
    let mut control = std::io::BufReader::new(control);
    std::io::Write::write_all(control.get_mut(), format!("BYTES {bytes}\n").as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut control, &mut answer).unwrap();
    assert_eq!(answer.trim(), "READY");

    let mut vias = vec![Via::Direct, Via::Vsplice(vec![])];
    // `--with "ARGS"` (repeatable) adds vsplice with ARGS (`--mode copy`, say) to the table.
    vias.extend(
        args.windows(2)
            .filter(|w| w[0] == "--with")
            .map(|w| Via::Vsplice(w[1].split_whitespace().map(String::from).collect())),
    );
    vias.push(Via::CopyRelay);
    if let Some(s) = &socat {
        vias.push(Via::Socat(s.bin.clone()));
    }
    let directions = [
        "host -> guest (TCP -> hybrid UDS -> vsock)",
        "guest -> host (vsock -> hybrid UDS -> TCP)",
    ];
    let mut figures = vec![vec![Vec::new(); vias.len()]; directions.len()];
    let mut cpu = vec![vec![Vec::new(); vias.len()]; directions.len()];
    let mut paths = vec![String::new(); directions.len()];
    let mut failed = vec![0usize; directions.len()];
    let mut next_port = SPEED_HOST_PORT;
    for round in 0..rounds {
        for d in 0..directions.len() {
            for (v, via) in vias.iter().enumerate() {
                let run = (0..3)
                    .find_map(|_| {
                        let outcome = if d == 0 {
                            speed_host_to_guest(&uds, via, socat.as_ref(), bytes)
                        } else {
                            next_port += 1;
                            speed_guest_to_host(
                                &uds,
                                &mut control,
                                next_port,
                                via,
                                socat.as_ref(),
                                bytes,
                            )
                        };
                        outcome
                            .map_err(|e| {
                                println!("failed run ({}, {}): {e}", directions[d], via.label());
                                failed[d] += 1;
                            })
                            .ok()
                    })
                    .expect("three failed runs in a row");
                println!(
                    "round {} {} via {}: {:.2} MiB/s",
                    round + 1,
                    directions[d],
                    via.label(),
                    run.mib_per_s
                );
                if matches!(via, Via::Vsplice(a) if a.is_empty()) {
                    paths[d] = speed::logged_path(&run.log).unwrap_or_else(|| "?".into());
                }
                figures[d][v].push(run.mib_per_s);
                cpu[d][v].push(run.cpu_s_per_gib);
            }
        }
    }
    std::io::Write::write_all(control.get_mut(), b"STOP\n").unwrap();

    println!(
        "hybrid vsock speed, QEMU TCG guest (Linux {kernel}, one emulated CPU) behind \
         vhost-device-vsock {}, relays on the host; one stream, {} MiB a run, 128 KiB writes \
         and reads at the ends, a run ends by its byte count and a one-byte acknowledgement; \
         median of {rounds} interleaved rounds, MiB/s (relative figures from an emulated guest)",
        common::qemu::BACKEND_VERSION,
        bytes / MIB
    );
    let mut header = format!("| {:<44}", "direction");
    for via in &vias {
        header.push_str(&format!(" | {}", via.label()));
    }
    header.push_str(
        " | vsplice path | vsplice/no relay | vsplice/copying relay | vsplice/socat | failed runs |",
    );
    println!("{header}");
    println!(
        "|---{}|---|---:|---:|---:|---:|",
        "|---:".repeat(vias.len())
    );
    let at = |want: fn(&Via) -> bool| vias.iter().position(want);
    let vsplice_at = at(|v| matches!(v, Via::Vsplice(a) if a.is_empty())).unwrap();
    let copy_at = at(|v| matches!(v, Via::CopyRelay)).unwrap();
    let socat_at = at(|v| matches!(v, Via::Socat(_)));
    let spreads: Vec<Vec<String>> = figures
        .iter()
        .map(|row| {
            row.iter()
                .map(|f| {
                    let lo = f.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = f.iter().copied().fold(0.0, f64::max);
                    format!("{lo:.0}-{hi:.0}")
                })
                .collect()
        })
        .collect();
    for (d, direction) in directions.iter().enumerate() {
        let medians: Vec<f64> = figures[d].iter_mut().map(|f| speed::median(f)).collect();
        let mut row = format!("| {direction:<44}");
        for m in &medians {
            row.push_str(&format!(" | {m:.2}"));
        }
        let ratio = |i: Option<usize>| {
            i.map_or("-".to_string(), |i| {
                format!("{:.2}", medians[vsplice_at] / medians[i])
            })
        };
        row.push_str(&format!(
            " | {} | {} | {} | {} | {} |",
            paths[d],
            ratio(Some(0)),
            ratio(Some(copy_at)),
            ratio(socat_at),
            failed[d]
        ));
        println!("{row}");
    }
    println!("lowest-highest run of each, MiB/s (the noise of this machine and this guest)");
    for (d, direction) in directions.iter().enumerate() {
        println!("| {direction:<44} | {} |", spreads[d].join(" | "));
    }
    println!(
        "relay CPU on the host (user + system, from its rusage) per GiB moved, median, seconds"
    );
    let mut header = format!("| {:<44}", "direction");
    for via in &vias[1..] {
        header.push_str(&format!(" | {}", via.label()));
    }
    println!("{header} |");
    println!("|---{}|", "|---:".repeat(vias.len() - 1));
    for (d, direction) in directions.iter().enumerate() {
        let mut row = format!("| {direction:<44}");
        for c in cpu[d][1..].iter_mut() {
            row.push_str(&format!(" | {:.2}", speed::median(c)));
        }
        println!("{row} |");
    }
}

type Scenario = (&'static str, fn(), fn(&mut Guest));

const SCENARIOS: &[Scenario] = &[
    ("host_to_guest", guest_host_to_guest, host_host_to_guest),
    ("guest_to_host", guest_guest_to_host, host_guest_to_host),
    ("bench_over_hybrid_vsock", guest_bench, host_bench),
    (
        "bench_guest_to_host_over_hybrid_vsock",
        guest_bench_to_host,
        host_bench_from_guest,
    ),
];

/// Measurements, not tests: they run only when a filter names them (`perf/vsock-lab.sh`), and
/// print their table.
const MEASUREMENTS: &[Scenario] = &[("hybrid_speed_table", guest_speed_table, host_speed_table)];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--copy-relay") {
        // The speed table's copying relay, on the machine: TCP and UNIX only.
        speed::copying_relay(&args[i + 1], &args[i + 2]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--guest") {
        guest_only();
        let name = args.get(i + 1).expect("scenario name");
        let (_, guest, _) = SCENARIOS
            .iter()
            .chain(MEASUREMENTS)
            .find(|(n, ..)| n == name)
            .unwrap_or_else(|| panic!("no scenario {name}"));
        guest();
        return;
    }
    if args.iter().any(|a| a == "--list") {
        for (name, ..) in SCENARIOS {
            println!("{name}: test");
        }
        return;
    }
    // Words after a lone `--` go to the measurement (the speed table's `--rounds N`).
    let filters: Vec<&String> = args[1..]
        .iter()
        .take_while(|a| *a != "--")
        .filter(|a| !a.starts_with('-'))
        .collect();
    let measurements = if filters.is_empty() {
        &[][..]
    } else {
        MEASUREMENTS
    };
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
        .chain(measurements)
        .filter(|(n, ..)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        println!("hybrid_qemu: no scenario matches {filters:?}");
        return;
    }
    let total = selected.len();
    let lab = QemuLab::prepare().unwrap_or_else(|why| {
        eprintln!("QEMU lab cannot start: {why}");
        summary(0, total);
    });
    let me = std::env::current_exe().unwrap();
    let vsplice = std::path::PathBuf::from(vsplice_bin());
    let initramfs = lab.initramfs(&me, &[&vsplice]).unwrap_or_else(|why| {
        eprintln!("QEMU lab cannot build its initramfs: {why}");
        summary(0, total);
    });
    let mut failed = Vec::new();
    for (name, _, host) in selected {
        let started = std::time::Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            let mut guest = lab.boot(&initramfs, name).expect("boot the guest");
            guest
                .wait_for("VSPLICE-QEMU-BOOTED", BOOT)
                .expect("guest boots");
            host(&mut guest);
            match guest.finish(LONG) {
                Ok(0) => {}
                Ok(code) => panic!("the guest side exited with {code}"),
                Err(e) => panic!("{e}"),
            }
        });
        match outcome {
            Ok(()) => println!(
                "test hybrid_qemu::{name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => {
                println!("test hybrid_qemu::{name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let _ = std::fs::remove_file(&initramfs);
    if !failed.is_empty() {
        println!("hybrid_qemu: failed: {failed:?}");
    }
    summary(total - failed.len(), failed.len());
}

/// Ends the run with the standard line `N passed, N failed` and the matching exit status.
fn summary(passed: usize, failed: usize) -> ! {
    println!("hybrid_qemu: {passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}
