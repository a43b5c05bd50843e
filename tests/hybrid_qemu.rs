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

mod common;

use std::net::TcpStream;
use std::time::Duration;

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--guest") {
        guest_only();
        let name = args.get(i + 1).expect("scenario name");
        let (_, guest, _) = SCENARIOS
            .iter()
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
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    let selected: Vec<&Scenario> = SCENARIOS
        .iter()
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
