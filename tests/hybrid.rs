//! Hybrid vsock (Firecracker, cloud-hypervisor, vhost-device-vsock) against a VMM stand-in on
//! the machine: a UNIX-socket server in the test that speaks the `CONNECT <port>\n` /
//! `OK <n>\n` handshake and then acts as the guest's service. Covers a reply split across
//! reads, stream bytes right after `OK`, refusals, a silent VMM, retries until the guest
//! listens, guest-initiated connections (`VSOCK-UDS-LISTEN`), and the bench over hybrid
//! vsock. The real VMM backend runs in the QEMU lab (tests/hybrid_qemu.rs).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// How the stand-in VMM answers a `CONNECT`.
#[derive(Clone, Copy, Debug)]
enum Vmm {
    /// `OK` in two writes 50 ms apart, then the guest service.
    SplitReply,
    /// `OK` and the first service bytes in one write.
    DataAfterOk,
    /// Closes without a reply (Firecracker when nothing listens on the guest port).
    Refuse,
    /// Answers an error line.
    Error,
    /// Never answers.
    Silent,
    /// Refuses the first `n` connections, then accepts (a guest that starts late).
    LateGuest(usize),
}

const GREETING: &[u8] = b"guest says hi\n";

/// Starts a stand-in VMM at `path`. After a successful handshake the "guest service" sends
/// GREETING, then exchanges `reply` against whatever the client sends (hash reported).
fn vmm(path: &Path, mode: Vmm, reply: Arc<Vec<u8>>) -> std::sync::mpsc::Receiver<(u32, Outcome)> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (tx, reply, seen) = (tx.clone(), reply.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let port: u32 = line
                    .trim()
                    .strip_prefix("CONNECT ")
                    .and_then(|p| p.parse().ok())
                    .expect("a CONNECT line");
                let n = seen.fetch_add(1, Ordering::SeqCst);
                match mode {
                    Vmm::Refuse => return,
                    Vmm::LateGuest(k) if n < k => return,
                    Vmm::Error => {
                        let _ = stream.write_all(b"ERR no listener\n");
                        return;
                    }
                    Vmm::Silent => {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    Vmm::SplitReply => {
                        stream.write_all(b"OK ").unwrap();
                        std::thread::sleep(Duration::from_millis(50));
                        stream.write_all(b"1073741824\n").unwrap();
                        stream.write_all(GREETING).unwrap();
                    }
                    Vmm::DataAfterOk | Vmm::LateGuest(_) => {
                        let mut first = b"OK 1073741824\n".to_vec();
                        first.extend_from_slice(GREETING);
                        stream.write_all(&first).unwrap();
                    }
                }
                // The BufReader may hold bytes the client sent after CONNECT: use it.
                let mut rest = reader;
                let out = exchange_from(&mut rest, &stream, reply);
                let _ = tx.send((port, out));
            });
        }
    });
    rx
}

/// Runs an exchange where reading goes through `reader` (it may have buffered bytes).
fn exchange_from(reader: &mut impl Read, stream: &UnixStream, send: Arc<Vec<u8>>) -> Outcome {
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&send).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let got = drain(reader).unwrap();
    sender.join().unwrap();
    got
}

fn relay_to_vmm(sock: &Path, extra: &str) -> (Relay, u16) {
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let target = format!("VSOCK-UDS-CONNECT:{}:52{extra}", sock.display());
    (Relay::start(&[&listen, &target]), port)
}

/// A client of the relay: reads the greeting, then exchanges `send` and returns what came.
fn client(port: u16, send: Arc<Vec<u8>>) -> std::io::Result<Outcome> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    let mut greeting = vec![0u8; GREETING.len()];
    s.read_exact(&mut greeting)?;
    assert_eq!(
        greeting, GREETING,
        "bytes right after OK reach the client first"
    );
    exchange(Box::new(s), send)
}

fn bulk_through_vmm(mode: Vmm) {
    let dir = Scratch::new("hyb");
    let sock = dir.path("fc.vsock");
    let up = payload(16 * MIB, 41);
    let down = payload(16 * MIB, 42);
    let results = vmm(&sock, mode, down.data.clone());
    let (mut relay, port) = relay_to_vmm(&sock, "");
    let got = client(port, up.data.clone()).unwrap();
    assert_eq!(
        (got.received, got.sha.as_str()),
        (16 * MIB, down.sha.as_str())
    );
    let (guest_port, at_guest) = results.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(guest_port, 52, "CONNECT names the guest port");
    assert_eq!(
        (at_guest.received, at_guest.sha.as_str()),
        (16 * MIB, up.sha.as_str())
    );
    assert!(relay.stop().success());
}

#[test]
fn reply_split_across_reads() {
    bulk_through_vmm(Vmm::SplitReply);
}

#[test]
fn stream_bytes_right_after_ok_are_not_lost() {
    bulk_through_vmm(Vmm::DataAfterOk);
}

fn refused(mode: Vmm, expect: &str) {
    let dir = Scratch::new("hyb-refused");
    let sock = dir.path("fc.vsock");
    let _results = vmm(&sock, mode, Arc::new(Vec::new()));
    let (mut relay, port) = relay_to_vmm(&sock, "");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "a refused connection carries no bytes");
    let needle = format!("guest port 52 refused via {}: {expect}", sock.display());
    relay.wait_for_log(&needle, Duration::from_secs(10));
    assert!(relay.is_running(), "the relay survives a refusal");
    assert!(relay.stop().success());
}

#[test]
fn a_closed_connection_is_a_refusal_naming_path_and_port() {
    refused(Vmm::Refuse, "connection closed without a reply");
}

#[test]
fn an_error_reply_is_a_refusal_naming_the_reply() {
    refused(Vmm::Error, "reply \"ERR no listener\"");
}

#[test]
fn connect_timeout_bounds_a_silent_vmm() {
    let dir = Scratch::new("hyb-silent");
    let sock = dir.path("fc.vsock");
    let _results = vmm(&sock, Vmm::Silent, Arc::new(Vec::new()));
    let target = format!(
        "VSOCK-UDS-CONNECT:{}:52,connect-timeout=0.5",
        sock.display()
    );
    let started = Instant::now();
    let (code, stderr) = run_vsplice(&["-", &target]);
    assert_eq!(code, 1, "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        stderr.contains(&format!(
            "guest port 52 refused via {}: no reply to CONNECT before the timeout",
            sock.display()
        )),
        "{stderr}"
    );
}

#[test]
fn retry_reaches_a_guest_that_listens_late() {
    let dir = Scratch::new("hyb-retry");
    let sock = dir.path("fc.vsock");
    let down = payload(MIB, 43);
    let results = vmm(&sock, Vmm::LateGuest(3), down.data.clone());
    let (mut relay, port) = relay_to_vmm(&sock, ",retry=5,interval=0.1");
    let up = payload(MIB, 44);
    let got = client(port, up.data.clone()).unwrap();
    assert_eq!(got.sha, down.sha);
    let (_, at_guest) = results.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(at_guest.sha, up.sha);
    assert!(relay.stop().success());
    // Without retries the same late guest is a refusal.
    let sock2 = dir.path("fc2.vsock");
    let _r = vmm(&sock2, Vmm::LateGuest(1), Arc::new(Vec::new()));
    let target = format!("VSOCK-UDS-CONNECT:{}:52", sock2.display());
    let (code, stderr) = run_vsplice(&["-", &target]);
    assert_eq!(code, 1);
    assert!(stderr.contains("refused via"), "{stderr}");
}

/// Guest-initiated: the VMM delivers guest connections to host port P at `<path>_<P>`.
#[test]
fn vsock_uds_listen_serves_path_underscore_port() {
    let dir = Scratch::new("hyb-listen");
    let base: PathBuf = dir.path("ch.vsock");
    let delivered = PathBuf::from(format!("{}_5000", base.display()));
    let up = payload(16 * MIB, 45);
    let down = payload(16 * MIB, 46);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let srv = ExchangeServer::spawn(server, down.data.clone(), 1);
    std::fs::write(&delivered, b"stale").unwrap();
    let listen = format!("VSOCK-UDS-LISTEN:{}:5000,unlink-early", base.display());
    let mut relay = Relay::start(&[&listen, &upstream]);
    let got = exchange(
        Box::new(UnixStream::connect(&delivered).unwrap()),
        up.data.clone(),
    )
    .unwrap();
    assert_eq!(got.sha, down.sha);
    assert_eq!(srv.next(Duration::from_secs(60)).sha, up.sha);
    assert!(relay.wait_exit(Duration::from_secs(30)).success());
    assert!(!delivered.exists(), "the socket file is removed on exit");
}

/// The bench speaks hybrid vsock too: a VMM stand-in that forwards each accepted guest-port
/// connection to a real bench server.
#[test]
fn bench_over_hybrid_vsock() {
    let dir = Scratch::new("hyb-bench");
    let sock = dir.path("fc.vsock");
    let port = free_port();
    let mut server = std::process::Command::new(vsplice_bin())
        .args([
            "bench",
            "server",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1"),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The stand-in VMM: handshake, then splice the stream to the bench server.
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut s = stream;
                s.write_all(b"OK 99\n").unwrap();
                let up = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let (mut up_r, mut up_w) = (up.try_clone().unwrap(), up);
                let mut s_w = s.try_clone().unwrap();
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut s_w);
                    let _ = s_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut reader, &mut up_w);
                let _ = up_w.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    let out = std::process::Command::new(vsplice_bin())
        .args([
            "bench",
            "client",
            &format!("VSOCK-UDS-CONNECT:{}:5201", sock.display()),
            "--bytes",
            "32M",
            "--streams",
            "2",
            "--verify",
            "--json",
        ])
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["sum_client_to_server"]["receiver_bytes"], 32 << 20);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0);
}

/// `guest-cid` on a hybrid vsock listener: the connection arrives from the VMM as a UNIX
/// connection on `PATH_5000` (this test stands in for the VMM), and `send-proxy=v2` still
/// gives a backend (docs/proxy-protocol.md's Python reader) the guest: vsock CID 7, its port
/// unknown (4294967295), host CID 2, port 5000; the same through `vsplice serve` with the
/// `guest-cid` key. `--check` refuses a reserved CID and the key on another listener.
#[test]
fn guest_cid_declares_a_hybrid_vsock_connection_as_from_the_guests_cid_to_the_host_port() {
    let dir = Scratch::new("hyb-guest-cid");
    let via_cli = |base: &Path| {
        let backend = free_port();
        let (python, mut out) = proxy_reader::spawn(backend, &dir);
        let mut python = KillOnDrop(python);
        let listen = format!("VSOCK-UDS-LISTEN:{}:5000,guest-cid=7", base.display());
        let relay = Relay::start(&[&listen, &format!("TCP:127.0.0.1:{backend},send-proxy")]);
        (relay, python_header(&mut python, &mut out, base))
    };
    let (_relay, got) = via_cli(&dir.path("cli.vsock"));
    assert_eq!(
        got["header"]["vsock"],
        serde_json::json!([7, 4294967295u32, 2, 5000]),
        "{got}"
    );
    assert_eq!(got["rest"], "hello from the guest", "{got}");

    // Service mode: the `guest-cid` key.
    let backend = free_port();
    let (python, mut out) = proxy_reader::spawn(backend, &dir);
    let mut python = KillOnDrop(python);
    let base = dir.path("serve.vsock");
    let config = dir.path("vsplice.toml");
    let service = |extra: &str| {
        format!(
            "[[service]]\nname = \"guest\"\nlisten = \"VSOCK-UDS-LISTEN:{}:5000,fork\"\n\
             connect = \"TCP:127.0.0.1:{backend}\"\nsend-proxy = \"v2\"\n{extra}\n",
            base.display()
        )
    };
    std::fs::write(&config, service("guest-cid = 9")).unwrap();
    let _serve = Relay::serve(&config, 1);
    let got = python_header(&mut python, &mut out, &base);
    assert_eq!(
        got["header"]["vsock"],
        serde_json::json!([9, 4294967295u32, 2, 5000]),
        "{got}"
    );

    // `--check`: a reserved CID, and the key on a listener that is not hybrid vsock.
    let check = |text: &str| {
        let file = dir.path("check.toml");
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(vsplice_bin())
            .args(["serve", "--check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(&service("guest-cid = 2"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("guest-cid") && err.contains("3-4294967294"),
        "{err}"
    );
    let tcp = "[[service]]\nname = \"t\"\nlisten = \"TCP-LISTEN:1,fork\"\nconnect = \"TCP:127.0.0.1:2\"\nguest-cid = 3\n";
    let (code, err) = check(tcp);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("only for a VSOCK-UDS-LISTEN"), "{err}");
    let file = dir.path("good.toml");
    std::fs::write(&file, service("guest-cid = 3")).unwrap();
    let out = std::process::Command::new(vsplice_bin())
        .args(["serve", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{summary}");
    assert!(
        summary.contains("guest-cid 3"),
        "--check names it: {summary}"
    );
}

/// A child process killed when the test ends, passed or not (a failed test must not leave
/// the Python backend holding the test runner's output open).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to `BASE_5000` as the VMM would for a guest, sends a line, and returns what the
/// Python backend read: its header and the bytes after it.
fn python_header(
    python: &mut KillOnDrop,
    out: &mut BufReader<std::process::ChildStdout>,
    base: &Path,
) -> serde_json::Value {
    let delivered = PathBuf::from(format!("{}_5000", base.display()));
    let mut guest = UnixStream::connect(&delivered).unwrap();
    guest.write_all(b"hello from the guest").unwrap();
    guest.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let _ = python.0.wait();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}
