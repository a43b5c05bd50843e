//! Service mode, end to end through the binary: `vsplice serve --check` on good and bad
//! files, the metrics endpoint scraped over HTTP and read by a real Prometheus parser, and the
//! systemd protocols (socket activation through `systemd-socket-activate`, sd_notify on a
//! NOTIFY_SOCKET the test binds).

mod common;

use std::process::Command;

use common::debs::socket_activate;
use common::{Scratch, vsplice_bin};

fn serve_check(config: &str) -> (i32, String, String) {
    let dir = Scratch::new("serve-check");
    let file = dir.path("vsplice.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(vsplice_bin())
        .args(["serve", "--check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(file.to_str().unwrap(), "FILE");
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn serve_check_prints_a_summary_of_a_valid_file_and_exits_0() {
    let (code, out, err) = serve_check(
        r#"
drain-timeout = "30s"
[metrics]
listen = "TCP-LISTEN:9464,bind=127.0.0.1"
[[service]]
name = "guest-ssh"
listen = "VSOCK-LISTEN:22,fork"
connect = "TCP:127.0.0.1:22"
allow = ["cid:3", "cid:10-20"]
[[service]]
name = "api"
listen = "TCP-LISTEN:8080,fork,reuseaddr"
connect = "VSOCK-CONNECT:3:80"
allow = ["127.0.0.0/8", "10.1.0.0/16"]
idle-timeout = "10m"
"#,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "FILE: 2 services, metrics at TCP-LISTEN:9464,bind=127.0.0.1\n  \
         guest-ssh  VSOCK-LISTEN:22,fork -> TCP:127.0.0.1:22  allow cid:3, cid:10-20\n  \
         api        TCP-LISTEN:8080,fork,reuseaddr -> VSOCK-CONNECT:3:80  allow 127.0.0.0/8, 10.1.0.0/16  idle-timeout 600s\n"
    );
}

#[test]
fn serve_check_names_file_line_and_key_and_exits_2() {
    let (code, out, err) = serve_check(
        "[[service]]\nname = \"a\"\nlisten = \"TCP-LISTEN:1,fork\"\nconnect = \"TCP:h:1\"\nidle = 3\n",
    );
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert!(
        err.starts_with("vsplice: FILE:5: idle: unknown field \"idle\""),
        "{err}"
    );
    let (code, _, err) =
        serve_check("[[service]]\nname = \"a\"\nlisten = \"TCP:h:1\"\nconnect = \"TCP:h:1\"\n");
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "vsplice: FILE:3: listen: \"TCP:h:1\" does not listen\n"
    );
}

#[test]
fn a_missing_config_file_is_a_usage_error() {
    let out = Command::new(vsplice_bin())
        .args(["serve", "--check", "--config", "/nonexistent/vsplice.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/vsplice.toml: cannot read")
    );
}

/// Python's `prometheus_client` (its OpenMetrics parser is strict), installed on first use
/// with pip into the lab's cache folder. A missing parser fails the test: it is not skipped.
fn prometheus_parser() -> std::path::PathBuf {
    let dir = std::env::var_os("VSPLICE_LAB_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vsplice-lab")
        })
        .join("python");
    if !dir.join("prometheus_client").exists() {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&dir)
            .arg("prometheus-client")
            .output()
            .expect("python3 is needed to check the metrics exposition");
        assert!(
            out.status.success(),
            "`python3 -m pip install --target {} prometheus-client` failed (install python3-pip, \
             or put the package there by hand): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

/// Scrapes `url` over HTTP with Python and parses it; returns one line per sample:
/// `name{label=value,...} value`, labels sorted.
fn scrape_and_parse(url: &str) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
    assert r.status == 200, r.status
    assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers
    text = r.read().decode()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        v = int(s.value) if float(s.value).is_integer() else s.value
        print(f"{s.name}{{{labels}}} {v}")
"#;
    let out = Command::new("python3")
        .env("PYTHONPATH", prometheus_parser())
        .args(["-c", SCRIPT, url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scrape or parse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn metrics_scraped_over_http_pass_a_real_openmetrics_parser() {
    use std::sync::Arc;
    use std::time::Duration;
    use vsplice::addr::Address;
    use vsplice::service::metrics::{DirectionLabel, Metrics, MetricsServer, ReasonLabel};
    use vsplice::sys::socket::SockAddr;

    let metrics = Arc::new(Metrics::new());
    let api = metrics.service("api");
    let ssh = metrics.service("guest-ssh");
    for _ in 0..3 {
        api.on_accept();
    }
    api.on_deny();
    api.on_dial(Duration::from_micros(300));
    api.on_dial_failure("ECONNREFUSED");
    api.add_bytes(DirectionLabel::first_to_second, 32 << 20);
    api.add_bytes(DirectionLabel::second_to_first, 1234);
    api.on_close(ReasonLabel::eof, Duration::from_millis(1500));
    api.on_close(ReasonLabel::idle_timeout, Duration::from_secs(600));
    metrics.engine().workers.set(2);
    metrics.before_scrape(|e| {
        e.pipes_in_use.set(6);
    });
    let server = MetricsServer::start(
        &Address::parse("TCP4-LISTEN:0,bind=127.0.0.1").unwrap(),
        metrics.clone(),
    )
    .unwrap();
    let SockAddr::Inet(local) = server.local_addr() else {
        panic!("inet listener")
    };
    let samples = scrape_and_parse(&format!("http://{local}/metrics"));
    for want in [
        "vsplice_connections_accepted_total{service=api} 3",
        "vsplice_connections_accepted_total{service=guest-ssh} 0",
        "vsplice_connections_denied_total{service=api} 1",
        "vsplice_connections_active{service=api} 1",
        "vsplice_connections_closed_total{reason=eof,service=api} 1",
        "vsplice_connections_closed_total{reason=idle_timeout,service=api} 1",
        "vsplice_dial_failures_total{errno=ECONNREFUSED,service=api} 1",
        "vsplice_bytes_total{direction=first_to_second,service=api} 33554432",
        "vsplice_bytes_total{direction=second_to_first,service=api} 1234",
        "vsplice_connection_duration_seconds_count{service=api} 2",
        "vsplice_connection_duration_seconds_sum{service=api} 601.5",
        "vsplice_dial_latency_seconds_count{service=api} 1",
        "vsplice_engine_workers{} 2",
        "vsplice_engine_pipes_in_use{} 6",
        "vsplice_engine_parked_connections{} 0",
        "vsplice_engine_receive_cap_bytes{} 0",
    ] {
        assert!(
            samples.iter().any(|s| s == want),
            "{want} not in {samples:#?}"
        );
    }
    drop(ssh);
}

/// Set in the environment of the process `systemd-socket-activate` starts: this test binary
/// again, running only [`socket_activation_child`].
const ACTIVATION_CHILD: &str = "VSPLICE_ACTIVATION_CHILD";

/// The activated process: takes its sockets, says READY=1, answers one connection on each
/// with the socket's name. Does nothing when run as an ordinary test.
#[test]
fn socket_activation_child() {
    use std::io::Write;
    use std::os::fd::AsFd;
    use vsplice::sys::socket::wait_readable;
    use vsplice::sys::systemd::{Notifier, inherited_listener, take_listen_fds};
    if std::env::var_os(ACTIVATION_CHILD).is_none() {
        return;
    }
    let sockets = take_listen_fds().unwrap();
    assert!(take_listen_fds().unwrap().is_empty(), "taken once only");
    let names: Vec<_> = sockets.iter().map(|s| (s.number, s.name.clone())).collect();
    assert_eq!(
        names,
        [(3, Some("tcp".to_string())), (4, Some("unix".to_string()))]
    );
    let notifier = Notifier::from_env().unwrap().expect("NOTIFY_SOCKET is set");
    notifier.ready("2 sockets").unwrap();
    for s in sockets {
        let name = s.name.clone().unwrap();
        let listener = inherited_listener(s.fd).unwrap();
        let conn = loop {
            wait_readable(listener.as_fd(), None).unwrap();
            if let Some(c) = listener.accept().unwrap() {
                break c;
            }
        };
        let mut stream = std::fs::File::from(conn.into_owned());
        // The accepted socket is non-blocking; a short line fits its empty send buffer.
        stream.write_all(format!("{name}\n").as_bytes()).unwrap();
    }
    notifier.stopping().unwrap();
}

#[test]
fn socket_activation_passes_tcp_and_unix_listeners_and_readiness_reaches_notify_socket() {
    use std::io::Read;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::time::Duration;

    let dir = Scratch::new("activation");
    let notify_path = dir.path("notify");
    let unix_path = dir.path("activated.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    // Guards against a hang only; nothing is measured.
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let port = common::free_port();
    let mut activator = socket_activate()
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-l")
        .arg(&unix_path)
        .arg("--fdname=tcp:unix")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg(format!("{ACTIVATION_CHILD}=1"))
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "socket_activation_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting systemd-socket-activate");
    let read_line = |stream: &mut dyn Read| {
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    };
    // systemd-socket-activate listens first, and starts the process on the first connection.
    let mut tcp = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if activator.try_wait().unwrap().is_none() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("systemd-socket-activate exited: {e}"),
        }
    };
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1\nSTATUS=2 sockets");
    assert_eq!(read_line(&mut tcp), "tcp\n");
    let mut unix = UnixStream::connect(&unix_path).unwrap();
    assert_eq!(read_line(&mut unix), "unix\n");
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = activator.wait().unwrap();
    assert!(status.success(), "activated process: {status}");
}

/// A TCP client whose source address is `source` (127.0.0.2 is outside 127.0.0.1/32).
fn tcp_from(source: &str, port: u16) -> std::net::TcpStream {
    try_tcp_from(source, port).unwrap()
}

/// [`tcp_from`], returning the connect's error: a refused peer is reset the moment it is
/// accepted, and that reset can arrive before the connect's completion is read back, so
/// ECONNRESET from the connect itself is a refusal as well.
fn try_tcp_from(source: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
    use vsplice::sys::socket::{SockAddr, Socket, connect_blocking};
    let socket = Socket::new(nix::sys::socket::AddressFamily::Inet)?;
    socket.bind(&SockAddr::Inet(format!("{source}:0").parse().unwrap()))?;
    let target = SockAddr::Inet(format!("127.0.0.1:{port}").parse().unwrap());
    connect_blocking(&socket, &target, Some(std::time::Duration::from_secs(30)))?;
    let stream = std::net::TcpStream::from(socket.into_owned());
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Connects from `source` to a TCP listener whose allow list refuses it, and asserts that it
/// reads a reset (ECONNRESET) and not one byte: a clean end of file fails. The reset can come
/// before the connect's completion is read back ([`try_tcp_from`]), so a connect that fails
/// with ECONNRESET is the same refusal.
fn refused_with_a_reset(source: &str, port: u16, relay: &common::Relay, what: &str) {
    use std::io::Read;
    let mut got = Vec::new();
    let end = try_tcp_from(source, port).and_then(|mut refused| {
        // A guard against a hang, not a timing threshold.
        refused.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        refused.read_to_end(&mut got)
    });
    assert!(
        got.is_empty(),
        "{what} received {} bytes:\n{}",
        got.len(),
        relay.log()
    );
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{what} reads a reset, not {end:?}:\n{}",
        relay.log()
    );
}

fn sample(samples: &[String], name_and_labels: &str) -> Option<f64> {
    samples.iter().find_map(|s| {
        let (key, value) = s.rsplit_once(' ')?;
        (key == name_and_labels).then(|| value.parse().unwrap())
    })
}

#[test]
fn serve_relays_32mib_each_way_through_tcp_and_unix_services_at_once_refuses_peers_by_address_and_uid_and_counts_it_all()
 {
    use common::{ExchangeServer, Listen, MIB, Relay, exchange, payload};
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    let dir = Scratch::new("serve");
    let (up_tcp, up_unix) = (payload(32 * MIB, 1), payload(32 * MIB, 2));
    let (down_tcp, down_unix) = (payload(32 * MIB, 3), payload(32 * MIB, 4));
    let (tcp_listen, unix_listen) = (Listen::tcp(), Listen::tcp());
    let (tcp_target, unix_target) = (tcp_listen.connect_address(), unix_listen.connect_address());
    let server_tcp = ExchangeServer::spawn(tcp_listen, down_tcp.data.clone(), 1);
    let server_unix = ExchangeServer::spawn(unix_listen, down_unix.data.clone(), 1);
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let unix_path = dir.path("service.sock");
    let uid = nix::unistd::geteuid().as_raw();
    let refused_path = dir.path("other-user.sock");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
drain-timeout = "60s"
[metrics]
listen = "TCP4-LISTEN:{metrics_port},bind=127.0.0.1"
[[service]]
name = "tcp"
listen = "TCP4-LISTEN:{port},fork"
connect = "{tcp_target}"
allow = ["127.0.0.1/32"]
[[service]]
name = "unix"
listen = "UNIX-LISTEN:{},fork"
connect = "{unix_target}"
allow = ["uid:{uid}"]
[[service]]
name = "unix-other-user"
listen = "UNIX-LISTEN:{},fork"
connect = "{unix_target}"
allow = ["uid:{}"]
"#,
            unix_path.display(),
            refused_path.display(),
            uid.wrapping_add(4242),
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 3);

    // Refused first: had it been relayed, it would have taken the upstream's only accept.
    refused_with_a_reset("127.0.0.2", port, &relay, "a refused TCP peer");
    // A UNIX peer whose uid is not listed: no byte either, but a UNIX peer cannot be reset.
    let mut got = Vec::new();
    let mut refused = UnixStream::connect(&refused_path).unwrap();
    let _ = refused.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "a refused UNIX peer received {} bytes",
        got.len()
    );

    let tcp_client = std::thread::spawn(move || {
        exchange(Box::new(tcp_from("127.0.0.1", port)), up_tcp.data.clone()).unwrap()
    });
    let unix_client = std::thread::spawn(move || {
        exchange(
            Box::new(UnixStream::connect(&unix_path).unwrap()),
            up_unix.data.clone(),
        )
        .unwrap()
    });
    let (got_tcp, got_unix) = (tcp_client.join().unwrap(), unix_client.join().unwrap());
    assert_eq!(got_tcp.sha, down_tcp.sha, "tcp service: client side");
    assert_eq!(got_unix.sha, down_unix.sha, "unix service: client side");
    assert_eq!(server_tcp.next(Duration::from_secs(120)).sha, up_tcp.sha);
    assert_eq!(server_unix.next(Duration::from_secs(120)).sha, up_unix.sha);

    // The engine counts a connection when it closes; wait for both closes to show.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape_and_parse(&url);
        let closed = |s: &str| {
            sample(
                &samples,
                &format!("vsplice_connections_closed_total{{reason=eof,service={s}}}"),
            )
        };
        if closed("tcp") == Some(1.0) && closed("unix") == Some(1.0) {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "closes not counted: {samples:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mib32 = (32 * MIB) as f64;
    for service in ["tcp", "unix"] {
        let get = |name: &str, extra: &str| {
            sample(&samples, &format!("{name}{{{extra}service={service}}}"))
                .unwrap_or_else(|| panic!("{name} {extra} {service} missing: {samples:#?}"))
        };
        assert_eq!(get("vsplice_connections_accepted_total", ""), 1.0);
        assert_eq!(get("vsplice_connections_active", ""), 0.0);
        assert_eq!(
            get("vsplice_bytes_total", "direction=first_to_second,"),
            mib32
        );
        assert_eq!(
            get("vsplice_bytes_total", "direction=second_to_first,"),
            mib32
        );
        // Observed per connection by the engine: one dial, one duration.
        assert_eq!(get("vsplice_dial_latency_seconds_count", ""), 1.0);
        assert_eq!(get("vsplice_connection_duration_seconds_count", ""), 1.0);
    }
    let workers = sample(&samples, "vsplice_engine_workers{}").expect("engine_workers");
    assert!(workers >= 1.0, "{samples:#?}");
    assert_eq!(
        sample(&samples, "vsplice_connections_denied_total{service=tcp}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "vsplice_connections_denied_total{service=unix}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "vsplice_connections_denied_total{service=unix-other-user}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "vsplice_connections_accepted_total{service=unix-other-user}"
        ),
        Some(0.0)
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = relay.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}; stderr:\n{}", relay.log());
    assert!(
        relay
            .log()
            .contains("tcp: 127.0.0.2 refused by the allow list"),
        "{}",
        relay.log()
    );
}

/// Starts `vsplice -dd ARGS` under `systemd-socket-activate -l LISTEN`, with a
/// NOTIFY_SOCKET bound here; returns the activator and the notify socket.
fn activate(
    dir: &Scratch,
    listen: &str,
    env: &[&str],
    args: &[&str],
) -> (
    std::process::Child,
    std::os::unix::net::UnixDatagram,
    std::path::PathBuf,
) {
    let notify_path = dir.path("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    // Guards against a hang only; nothing is measured.
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let log = dir.path("vsplice.log");
    let child = socket_activate()
        .args(["-l", listen])
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(env.iter().flat_map(|e| ["-E", e]))
        .arg(vsplice_bin())
        .args(args)
        .arg("-dd")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting systemd-socket-activate");
    (child, notify, log)
}

fn recv_notify(notify: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn wait_log(log: &std::path::Path, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not logged:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn accept_fd_on_the_command_line_relays_32mib_each_way_from_a_socket_activated_tcp_listener_and_feeds_the_watchdog()
 {
    use common::{ExchangeServer, Listen, MIB, exchange, payload};
    use std::time::Duration;

    let dir = Scratch::new("accept-fd");
    let (up, down) = (payload(32 * MIB, 5), payload(32 * MIB, 6));
    let upstream = Listen::tcp();
    let target = upstream.connect_address();
    let server = ExchangeServer::spawn(upstream, down.data.clone(), 1);
    let port = common::free_port();
    let (mut activator, notify, log) = activate(
        &dir,
        &format!("127.0.0.1:{port}"),
        &["WATCHDOG_USEC=600000000"],
        &["ACCEPT-FD:3,fork", &target],
    );
    // systemd-socket-activate starts vsplice on the first connection.
    let client = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(recv_notify(&notify), "READY=1\nSTATUS=1 services");
    assert_eq!(recv_notify(&notify), "WATCHDOG=1", "armed by WATCHDOG_USEC");
    let got = exchange(Box::new(client), up.data.clone()).unwrap();
    assert_eq!(got.sha, down.sha);
    assert_eq!(server.next(Duration::from_secs(120)).sha, up.sha);
    let pid = nix::unistd::Pid::from_raw(activator.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(recv_notify(&notify), "STOPPING=1");
    assert_eq!(recv_notify(&notify), "WATCHDOG=1", "fed while draining");
    let status = activator.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
}

#[test]
fn sigterm_drains_a_transfer_through_a_socket_activated_unix_service_and_refuses_new_clients() {
    use common::{ExchangeServer, Listen, MIB, drain as read_all, payload};
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let dir = Scratch::new("drain");
    let (up, down) = (payload(32 * MIB, 7), payload(32 * MIB, 8));
    let upstream = Listen::tcp();
    let target = upstream.connect_address();
    let server = ExchangeServer::spawn(upstream, down.data.clone(), 1);
    let path = dir.path("activated.sock");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "drain-timeout = \"120s\"\n[[service]]\nname = \"uds\"\nlisten = \"ACCEPT-FD:3,fork\"\n\
             connect = \"{target}\"\nallow = [\"uid:{}\"]\n",
            nix::unistd::geteuid().as_raw()
        ),
    )
    .unwrap();
    let (mut activator, notify, log) = activate(
        &dir,
        path.to_str().unwrap(),
        &[],
        &["serve", "--config", config.to_str().unwrap()],
    );
    let client = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(recv_notify(&notify), "READY=1\nSTATUS=1 services");
    let mut reader = client.try_clone().unwrap();
    let receiver = std::thread::spawn(move || read_all(&mut reader).unwrap());
    let mut writer = client;
    let (first_half, second_half) = up.data.split_at(16 * MIB);
    writer.write_all(first_half).unwrap();
    // SIGTERM in the middle of the transfer.
    let pid = nix::unistd::Pid::from_raw(activator.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(recv_notify(&notify), "STOPPING=1");
    wait_log(&log, "stopped accepting; 1 connections left to drain");
    let refused = UnixStream::connect(&path).unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(libc::ECONNREFUSED),
        "{refused}"
    );
    writer.write_all(second_half).unwrap();
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.join().unwrap().sha, down.sha);
    assert_eq!(server.next(Duration::from_secs(120)).sha, up.sha);
    let status = activator.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
    assert!(!text.contains("drain timeout"), "{text}");
}

#[test]
fn the_shipped_example_config_passes_the_check() {
    let out = Command::new(vsplice_bin())
        .args(["serve", "--check", "--config"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/systemd/example.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 3 services, metrics at"));
}

/// Waits for `open` (a connection the relay cuts, here after a 1 s drain) to end with a
/// reset, not an end of file.
fn reads_a_reset(open: &mut std::net::TcpStream, relay: &common::Relay, what: &str) {
    use std::io::Read;
    // A guard against a hang, not a timing threshold.
    open.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    let got = open.read(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{what} ends with a reset, not {got:?}:\n{}",
        relay.log()
    );
}

/// Sends SIGHUP to the relay and waits until it logs `needle` for the `nth` time.
fn reload_and_wait(relay: &common::Relay, needle: &str, nth: usize) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while relay.log().matches(needle).count() < nth {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} (#{nth}) in time:\n{}",
            relay.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn sighup_adds_and_removes_services_while_a_256mib_transfer_goes_on_and_a_broken_file_changes_nothing()
 {
    use common::{ExchangeServer, Listen, MIB, Relay, drain as read_all, exchange, payload};
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    let dir = Scratch::new("reload");
    let long = payload(256 * MIB, 21);
    let (a_up, b_up, c_up) = (Listen::tcp(), Listen::tcp(), Listen::tcp());
    let (a_target, b_target, c_target) = (
        a_up.connect_address(),
        b_up.connect_address(),
        c_up.connect_address(),
    );
    let (b_reply, c_reply) = (payload(4 * MIB, 22), payload(4 * MIB, 23));
    let (b_send, c_send) = (payload(4 * MIB, 24), payload(4 * MIB, 25));
    let a_server = ExchangeServer::spawn(a_up, std::sync::Arc::new(Vec::new()), 1);
    let b_server = ExchangeServer::spawn(b_up, b_reply.data.clone(), 2);
    let c_server = ExchangeServer::spawn(c_up, c_reply.data.clone(), 1);
    let (a_port, b_port, c_port) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let service = |name: &str, port: u16, target: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"{target}\"\n"
        )
    };
    let config = dir.path("vsplice.toml");
    let (a, b, c) = (
        service("a", a_port, &a_target),
        service("b", b_port, &b_target),
        service("c", c_port, &c_target),
    );
    std::fs::write(&config, format!("drain-timeout = \"60s\"\n{a}{c}")).unwrap();
    let notify_path = dir.path("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    // Guards against a hang only; nothing is measured.
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let relay = Relay::spawn_env(
        &["serve", "--config", config.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    assert_eq!(recv_notify(&notify), "READY=1\nSTATUS=2 services");

    // A: 256 MiB, half before the reloads, half after.
    let mut a_client = TcpStream::connect(("127.0.0.1", a_port)).unwrap();
    let (a_first, a_rest) = long.data.split_at(128 * MIB);
    a_client.write_all(a_first).unwrap();
    // C: a connection open when C is removed; it must run to its end.
    let mut c_client = TcpStream::connect(("127.0.0.1", c_port)).unwrap();
    let mut c_reader = c_client.try_clone().unwrap();
    let c_receiver = std::thread::spawn(move || read_all(&mut c_reader).unwrap());
    let (c_first, c_rest) = c_send.data.split_at(2 * MIB);
    c_client.write_all(c_first).unwrap();

    std::fs::write(&config, format!("drain-timeout = \"60s\"\n{a}{b}")).unwrap();
    reload_and_wait(&relay, "1 added, 1 removed, 0 changed, 1 unchanged", 1);
    assert!(recv_notify(&notify).starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert_eq!(
        recv_notify(&notify),
        "READY=1\nSTATUS=2 services; 1 added, 1 removed, 0 changed, 1 unchanged"
    );
    let refused = TcpStream::connect(("127.0.0.1", c_port)).unwrap_err();
    assert_eq!(
        refused.raw_os_error(),
        Some(libc::ECONNREFUSED),
        "{refused}"
    );
    let through_b = || {
        let got = exchange(
            Box::new(TcpStream::connect(("127.0.0.1", b_port)).unwrap()),
            b_send.data.clone(),
        )
        .unwrap();
        assert_eq!(got.sha, b_reply.sha, "B: client side");
        assert_eq!(b_server.next(Duration::from_secs(120)).sha, b_send.sha);
    };
    through_b();

    // A file that does not load: everything keeps running as it was.
    std::fs::write(
        &config,
        format!("drain-timeout = \"60s\"\n{a}{b}bogus-key = 1\n"),
    )
    .unwrap();
    reload_and_wait(&relay, "the running services go on unchanged", 1);
    assert!(recv_notify(&notify).starts_with("RELOADING=1\n"));
    let status = recv_notify(&notify);
    assert!(
        status.starts_with("READY=1\nSTATUS=2 services; reload failed: ")
            && status.contains("bogus-key"),
        "{status}"
    );
    through_b();

    c_client.write_all(c_rest).unwrap();
    c_client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        c_receiver.join().unwrap().sha,
        c_reply.sha,
        "C: client side"
    );
    assert_eq!(c_server.next(Duration::from_secs(120)).sha, c_send.sha);

    a_client.write_all(a_rest).unwrap();
    a_client.shutdown(std::net::Shutdown::Write).unwrap();
    let back = read_all(&mut a_client).unwrap();
    assert_eq!(back.received, 0);
    let a_got = a_server.next(Duration::from_secs(300));
    assert_eq!(a_got.received, 256 * MIB);
    assert_eq!(
        a_got.sha, long.sha,
        "A: the long transfer across the reloads"
    );
    let mut relay = relay;
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_refused_dial_is_counted_by_errno_and_as_a_dial_failed_close() {
    use common::Relay;
    use std::time::{Duration, Instant};

    let dir = Scratch::new("dial-fail");
    let (port, metrics_port, dead) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"TCP4-LISTEN:{metrics_port},bind=127.0.0.1\"\n[[service]]\n\
             name = \"dead\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"TCP:127.0.0.1:{dead}\"\n"
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 1);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut client, &mut got);
    assert!(got.is_empty());
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape_and_parse(&url);
        if sample(
            &samples,
            "vsplice_connections_closed_total{reason=dial_failed,service=dead}",
        ) == Some(1.0)
        {
            break samples;
        }
        assert!(Instant::now() < deadline, "not counted: {samples:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(
            &samples,
            "vsplice_dial_failures_total{errno=ECONNREFUSED,service=dead}"
        ),
        Some(1.0),
        "{samples:#?}"
    );
    assert_eq!(
        sample(&samples, "vsplice_connections_active{service=dead}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "vsplice_dial_latency_seconds_count{service=dead}"),
        Some(0.0)
    );
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_unix_client_running_as_nobody_is_refused_by_uid_and_counted() {
    use common::{ExchangeServer, Listen, MIB, Relay, exchange, payload};
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    if !nix::unistd::geteuid().is_root() {
        println!("skipped: running a client as nobody needs root");
        return;
    }
    let dir = Scratch::new("uid-nobody");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (up, down) = (payload(4 * MIB, 31), payload(4 * MIB, 32));
    let upstream = Listen::tcp();
    let target = upstream.connect_address();
    let server = ExchangeServer::spawn(upstream, down.data.clone(), 1);
    let metrics_port = common::free_port();
    let path = dir.path("root-only.sock");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"TCP4-LISTEN:{metrics_port},bind=127.0.0.1\"\n[[service]]\n\
             name = \"root-only\"\nlisten = \"UNIX-LISTEN:{},fork\"\nconnect = \"{target}\"\n\
             allow = [\"uid:0\"]\n",
            path.display()
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 1);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A client as nobody (uid 65534): connects, sends, reads until the relay closes.
    const CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
try:
    s.sendall(b"x" * 65536)
except OSError:
    pass
got = 0
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
except OSError:
    pass
print(got)
"#;
    let out = Command::new("python3")
        .args(["-c", CLIENT])
        .arg(&path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
    relay.wait_for_log(
        "root-only: uid 65534 refused by the allow list",
        Duration::from_secs(60),
    );
    // Root is served: the upstream's one accept goes to it, not to the refused client.
    let got = exchange(
        Box::new(std::os::unix::net::UnixStream::connect(&path).unwrap()),
        up.data.clone(),
    )
    .unwrap();
    assert_eq!(got.sha, down.sha);
    assert_eq!(server.next(Duration::from_secs(120)).sha, up.sha);
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let samples = scrape_and_parse(&url);
        let denied = sample(
            &samples,
            "vsplice_connections_denied_total{service=root-only}",
        );
        let accepted = sample(
            &samples,
            "vsplice_connections_accepted_total{service=root-only}",
        );
        if denied == Some(1.0) && accepted == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{samples:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_changed_service_sends_new_connections_to_its_new_target_and_leaves_open_ones_alone() {
    use common::{ExchangeServer, Listen, MIB, Relay, drain as read_all, exchange, payload};
    use std::io::Write;
    use std::net::TcpStream;
    use std::time::Duration;

    let dir = Scratch::new("reload-change");
    let (old_up, new_up) = (Listen::tcp(), Listen::tcp());
    let (old_target, new_target) = (old_up.connect_address(), new_up.connect_address());
    let (old_reply, new_reply) = (payload(4 * MIB, 61), payload(4 * MIB, 62));
    let (open_send, new_send) = (payload(8 * MIB, 63), payload(4 * MIB, 64));
    let old_server = ExchangeServer::spawn(old_up, old_reply.data.clone(), 1);
    let new_server = ExchangeServer::spawn(new_up, new_reply.data.clone(), 1);
    let port = common::free_port();
    let config = dir.path("vsplice.toml");
    let write = |target: &str| {
        std::fs::write(
            &config,
            format!(
                "[[service]]\nname = \"x\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
                 connect = \"{target}\"\n"
            ),
        )
        .unwrap()
    };
    write(&old_target);
    let mut relay = Relay::serve(&config, 1);
    let mut open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = open.try_clone().unwrap();
    let receiver = std::thread::spawn(move || read_all(&mut reader).unwrap());
    let (first, rest) = open_send.data.split_at(4 * MIB);
    open.write_all(first).unwrap();

    write(&new_target);
    reload_and_wait(&relay, "0 added, 0 removed, 1 changed, 0 unchanged", 1);
    let got = exchange(
        Box::new(TcpStream::connect(("127.0.0.1", port)).unwrap()),
        new_send.data.clone(),
    )
    .unwrap();
    assert_eq!(
        got.sha, new_reply.sha,
        "a new connection reaches the new target"
    );
    assert_eq!(new_server.next(Duration::from_secs(120)).sha, new_send.sha);

    open.write_all(rest).unwrap();
    open.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(receiver.join().unwrap().sha, old_reply.sha, "the open one");
    assert_eq!(old_server.next(Duration::from_secs(120)).sha, open_send.sha);
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_removed_services_open_connection_is_cut_with_a_reset_after_the_drain_timeout_and_the_other_service_goes_on()
 {
    use common::{ExchangeServer, Listen, MIB, Relay, exchange, payload};
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    let dir = Scratch::new("reload-cut");
    // x's backend accepts and holds its connections without a word; y's answers.
    let x_backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let x_target = format!("TCP:{}", x_backend.local_addr().unwrap());
    let held = std::thread::spawn(move || x_backend.accept().map(|(s, _)| s));
    let y_up = Listen::tcp();
    let y_target = y_up.connect_address();
    let (y_reply, y_send) = (payload(4 * MIB, 81), payload(4 * MIB, 82));
    let y_server = ExchangeServer::spawn(y_up, y_reply.data.clone(), 1);
    let (x_port, y_port) = (common::free_port(), common::free_port());
    let service = |name: &str, port: u16, target: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"{target}\"\n"
        )
    };
    let config = dir.path("vsplice.toml");
    let head = "drain-timeout = \"1s\"\n";
    std::fs::write(
        &config,
        format!(
            "{head}{}{}",
            service("x", x_port, &x_target),
            service("y", y_port, &y_target)
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 2);
    let mut open = TcpStream::connect(("127.0.0.1", x_port)).unwrap();
    open.write_all(b"a request the backend never answers")
        .unwrap();
    let _backend_end = held
        .join()
        .unwrap()
        .expect("x's backend got the connection");

    std::fs::write(
        &config,
        format!("{head}{}", service("y", y_port, &y_target)),
    )
    .unwrap();
    reload_and_wait(&relay, "0 added, 1 removed, 0 changed, 1 unchanged", 1);
    reads_a_reset(&mut open, &relay, "the removed service's connection");
    // The line is queued before the cut, but the logger thread may write it after the reset
    // reached the client.
    relay.wait_for_log(
        "x: removed 1s ago; cutting its 1 open connections",
        Duration::from_secs(30),
    );
    // The other service is untouched.
    let got = exchange(
        Box::new(TcpStream::connect(("127.0.0.1", y_port)).unwrap()),
        y_send.data.clone(),
    )
    .unwrap();
    assert_eq!(got.sha, y_reply.sha);
    assert_eq!(y_server.next(Duration::from_secs(120)).sha, y_send.sha);
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_service_renamed_with_its_address_cuts_the_old_names_open_connection_after_the_drain_timeout() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    let dir = Scratch::new("reload-rename-cut");
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!("TCP:{}", backend.local_addr().unwrap());
    let held = std::thread::spawn(move || {
        // The old name's connection is held without a word; the new name's is echoed.
        let old = backend.accept().map(|(s, _)| s);
        let (mut new, _) = backend.accept().unwrap();
        let mut buf = [0u8; 5];
        new.read_exact(&mut buf).unwrap();
        new.write_all(&buf).unwrap();
        old
    });
    let port = common::free_port();
    let config = dir.path("vsplice.toml");
    let write = |name: &str| {
        std::fs::write(
            &config,
            format!(
                "drain-timeout = \"1s\"\n[[service]]\nname = \"{name}\"\n\
                 listen = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\nconnect = \"{target}\"\n"
            ),
        )
        .unwrap()
    };
    write("old");
    let mut relay = common::Relay::serve(&config, 1);
    let mut open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    open.write_all(b"never answered").unwrap();
    write("new");
    reload_and_wait(&relay, "1 added, 0 removed, 0 changed, 0 unchanged", 1);
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fresh.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    fresh.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello", "the new name serves the address");
    let _old_backend_end = held
        .join()
        .unwrap()
        .expect("the old connection reached the backend");
    reads_a_reset(&mut open, &relay, "the old name's connection");
    assert!(relay.stop().success(), "{}", relay.log());
}

/// Sends SIGHUP and waits for the reload's outcome (applied or failed); returns the log.
fn reload_outcome(relay: &common::Relay, nth: usize) -> String {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let log = relay.log();
        if log.matches("reloaded ").count() + log.matches("reloading ").count() >= nth {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reload outcome in time:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_reload_that_respells_the_listen_address_keeps_its_socket_and_applies_the_tightened_allow_list()
{
    use common::{ExchangeServer, Listen, MIB, Relay, exchange, payload};
    use std::time::Duration;

    let dir = Scratch::new("reload-respelt");
    let up = Listen::tcp();
    let target = up.connect_address();
    let reply = payload(16 * MIB, 91);
    let server = ExchangeServer::spawn(up, reply.data.clone(), 2);
    let port = common::free_port();
    let config = dir.path("vsplice.toml");
    let write = |listen: &str, allow: &str| {
        std::fs::write(
            &config,
            format!(
                "[[service]]\nname = \"x\"\nlisten = \"{listen}\"\nconnect = \"{target}\"\n{allow}"
            ),
        )
        .unwrap()
    };
    write(&format!("TCP4-LISTEN:{port},bind=127.0.0.1,fork"), "");
    let mut relay = Relay::serve(&config, 1);
    let through = |source: &str, seed: u64| {
        let send = payload(16 * MIB, seed);
        let got = exchange(Box::new(tcp_from(source, port)), send.data.clone()).unwrap();
        assert_eq!(got.sha, reply.sha, "{source}: the backend's bytes");
        assert_eq!(server.next(Duration::from_secs(120)).sha, send.sha);
    };
    through("127.0.0.2", 92);

    // The same socket, spelt in lower case with its options reordered, and a tighter list.
    write(
        &format!("tcp4-listen:{port},fork,bind=127.0.0.1"),
        "allow = [\"127.0.0.1/32\"]\n",
    );
    let log = reload_outcome(&relay, 1);
    assert!(!log.contains("Address already in use"), "{log}");
    assert!(
        log.contains("0 added, 0 removed, 1 changed, 0 unchanged"),
        "the reload applies:\n{log}"
    );
    refused_with_a_reset("127.0.0.2", port, &relay, "a now-refused peer");
    through("127.0.0.1", 93);
    assert!(
        relay.log().contains("127.0.0.2 refused by the allow list"),
        "{}",
        relay.log()
    );
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn serve_at_sigterm_leaves_a_regular_file_that_replaced_its_socket_file_alone() {
    use common::{ExchangeServer, Listen, MIB, Relay, exchange, payload};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let dir = Scratch::new("serve-replaced");
    let up = Listen::tcp();
    let target = up.connect_address();
    let (reply, send) = (payload(8 * MIB, 95), payload(8 * MIB, 96));
    let server = ExchangeServer::spawn(up, reply.data.clone(), 1);
    let path = dir.path("service.sock");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"u\"\nlisten = \"UNIX-LISTEN:{},fork\"\nconnect = \"{target}\"\n",
            path.display()
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 1);
    let got = exchange(
        Box::new(UnixStream::connect(&path).unwrap()),
        send.data.clone(),
    )
    .unwrap();
    assert_eq!(got.sha, reply.sha);
    assert_eq!(server.next(Duration::from_secs(120)).sha, send.sha);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"another program's data\n").unwrap();
    relay.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        relay.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        relay.log()
    );
    assert_eq!(
        std::fs::read(&path).expect("the file is still there"),
        b"another program's data\n"
    );
}

#[test]
fn serve_check_refuses_an_idle_timeout_of_zero_or_under_a_millisecond_naming_key_and_value() {
    for (value, token, why) in [
        ("0", "0", "is less than 1 ms"),
        ("1e-12", "1e-12", "is less than 1 ms"),
        ("\"0ms\"", "0ms", "is less than 1 ms"),
        ("\"0.5ms\"", "0.5ms", "is less than 1 ms"),
    ] {
        for at in ["top", "service"] {
            let key = format!("idle-timeout = {value}\n");
            let service =
                "[[service]]\nname = \"a\"\nlisten = \"TCP-L:1,fork\"\nconnect = \"TCP:h:1\"\n";
            let file = if at == "top" {
                format!("{key}{service}")
            } else {
                format!("{service}{key}")
            };
            let (code, out, err) = serve_check(&file);
            assert_eq!(code, 2, "{value} at {at}: {out}{err}");
            assert!(
                err.contains(&format!("idle-timeout: idle timeout \"{token}\" {why}")),
                "{value} at {at}: {err}"
            );
        }
    }
    let (code, _, err) = serve_check(
        "idle-timeout = \"1ms\"\n[[service]]\nname = \"a\"\nlisten = \"TCP-L:1,fork\"\nconnect = \"TCP:h:1\"\n",
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn the_command_line_still_refuses_an_idle_timeout_of_zero() {
    for value in ["0", "1e-12"] {
        let out = Command::new(vsplice_bin())
            .args(["-T", value, "TCP-L:1", "TCP:127.0.0.1:1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("idle timeout \"{value}\" is")),
            "{err}"
        );
    }
}

/// A file of one or more services, each `(name, listen, extra lines)`, connecting to a
/// closed local port (`--check` opens nothing).
fn services(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, listen, extra)| {
            format!(
                "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\nconnect = \"TCP:127.0.0.1:1\"\n{extra}"
            )
        })
        .collect()
}

#[test]
fn serve_check_refuses_a_nul_in_a_unix_path_naming_file_service_and_path() {
    let (code, out, err) = serve_check(&services(&[("a", "UNIX-LISTEN:/tmp/a\\u0000b,fork", "")]));
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.starts_with("vsplice: FILE:3: listen: service \"a\": invalid address"),
        "{err}"
    );
    assert!(
        err.contains("UNIX-LISTEN path \"/tmp/a\\0b\" holds a NUL byte"),
        "{err}"
    );
    let (code, _, err) = serve_check(
        "[[service]]\nname = \"b\"\nlisten = \"TCP-L:1,fork\"\nconnect = \"UNIX-CONNECT:/run/x\\u0000\"\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("vsplice: FILE:4: connect: service \"b\": invalid address")
            && err.contains("UNIX-CONNECT path \"/run/x\\0\" holds a NUL byte"),
        "{err}"
    );
}

#[test]
fn serve_check_refuses_two_services_whose_binds_resolve_to_one_socket() {
    for (first, second, bound) in [
        (
            "TCP4-LISTEN:7001,bind=127.0.0.1,fork",
            "TCP4-LISTEN:7001,bind=localhost,fork",
            "127.0.0.1:7001",
        ),
        (
            "TCP4-LISTEN:7001,fork",
            "tcp4-listen:7001,fork,bind=127.0.0.1",
            "127.0.0.1:7001",
        ),
        (
            "TCP4-LISTEN:7001,bind=127.0.0.1,fork",
            "TCP4-LISTEN:7001,fork",
            "0.0.0.0:7001",
        ),
        (
            "TCP-LISTEN:7001,fork",
            "TCP4-LISTEN:7001,bind=127.0.0.1,fork",
            "127.0.0.1:7001",
        ),
    ] {
        let (code, out, err) = serve_check(&services(&[("one", first, ""), ("two", second, "")]));
        assert_eq!(code, 2, "{first} / {second}: {out}{err}");
        assert_eq!(
            err,
            format!(
                "vsplice: FILE:7: listen: service \"two\": \"{second}\" would bind {bound}, where \
                 service \"one\" already listens\n"
            ),
            "{first} / {second}"
        );
    }
    // Different addresses, or IPv4 and a specific IPv6 address, on one port are fine.
    for (first, second) in [
        (
            "TCP4-LISTEN:7001,bind=127.0.0.1,fork",
            "TCP4-LISTEN:7001,bind=127.0.0.2,fork",
        ),
        ("TCP4-LISTEN:7001,fork", "TCP6-LISTEN:7001,bind=[::1],fork"),
    ] {
        let (code, out, err) = serve_check(&services(&[("one", first, ""), ("two", second, "")]));
        assert_eq!(code, 0, "{first} / {second}: {out}{err}");
    }
}

#[test]
fn serve_check_refuses_an_allow_entry_that_can_never_match_its_listener() {
    for (listen, allow, why) in [
        (
            "TCP4-LISTEN:7002,fork",
            "[\"::1\"]",
            "allow entry \"::1/128\" is an IPv6 network and never matches: a TCP4-LISTEN \
             listener takes IPv4 peers only",
        ),
        (
            "TCP-LISTEN:7002,bind=127.0.0.1,fork",
            "[\"127.0.0.0/8\", \"fd00::/8\"]",
            "allow entry \"fd00::/8\" is an IPv6 network and never matches: a TCP-LISTEN \
             listener bound to 127.0.0.1 takes IPv4 peers only",
        ),
        (
            "TCP6-LISTEN:7002,bind=[::1],fork",
            "[\"10.0.0.0/8\"]",
            "allow entry \"10.0.0.0/8\" is an IPv4 network and never matches: a TCP6-LISTEN \
             listener bound to ::1 takes IPv6 peers only",
        ),
        (
            "TCP-LISTEN:7002,fork",
            "[\"uid:1000\"]",
            "allow entry \"uid:1000\" is for UNIX peers and never matches a TCP-LISTEN listener",
        ),
        (
            "UNIX-LISTEN:/tmp/vsplice-never.sock,fork",
            "[\"10.0.0.0/8\"]",
            "allow entry \"10.0.0.0/8\" is for TCP peers and never matches a UNIX-LISTEN listener",
        ),
    ] {
        let (code, out, err) =
            serve_check(&services(&[("a", listen, &format!("allow = {allow}\n"))]));
        assert_eq!(code, 2, "{listen} {allow}: {out}{err}");
        assert!(
            err.starts_with(&format!("vsplice: FILE:5: allow: service \"a\": {why}")),
            "{listen} {allow}: {err}"
        );
    }
    // Written into the listen address, after or before bind=.
    let (code, _, err) = serve_check(&services(&[(
        "a",
        "TCP-LISTEN:7002,allow=::1,bind=127.0.0.1,fork",
        "",
    )]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("allow entry \"::1/128\" is an IPv6 network and never matches"),
        "{err}"
    );
    // The dual-stack wildcard takes both families.
    let (code, out, err) = serve_check(&services(&[(
        "a",
        "TCP6-LISTEN:7002,fork",
        "allow = [\"127.0.0.1\", \"::1\"]\n",
    )]));
    assert_eq!(code, 0, "{out}{err}");
}

/// Starts `vsplice ARGS -dd` socket-activated by hand: `fds` at descriptors 3, 4, ...,
/// `LISTEN_FDS` as given (which may claim more than were passed), and `LISTEN_PID` the
/// process's own pid (a shell sets it to `$$` and execs vsplice, which keeps the pid), or
/// `listen_pid` when given.
fn hand_activated(
    fds: &[std::os::fd::OwnedFd],
    listen_fds: &str,
    listen_pid: Option<&str>,
    args: &[&str],
) -> common::Relay {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut command = Command::new("sh");
    let pid = listen_pid.map_or("$$".to_string(), |p| p.to_string());
    command
        .arg("-c")
        .arg(format!("export LISTEN_PID={pid}; exec \"$0\" \"$@\""))
        .arg(vsplice_bin())
        .env("LISTEN_FDS", listen_fds)
        .env_remove("LISTEN_FDNAMES");
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2) are made, on
    // descriptors that are open in the child. The sources move above 100 first, so placing
    // one at 3 + i never overwrites a source not yet placed; dup2 clears close-on-exec.
    unsafe {
        command.pre_exec(move || {
            let mut high = Vec::with_capacity(0);
            for &fd in &raw {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    common::Relay::spawn_command(command, args)
}

/// Waits for a hand-activated vsplice that must refuse its descriptors: a non-zero exit
/// within the (generous) bound, and its log.
fn refused(mut relay: common::Relay) -> String {
    let status = relay.wait_exit(std::time::Duration::from_secs(30));
    let log = relay.log();
    assert!(!status.success(), "{status}; stderr:\n{log}");
    log
}

#[test]
fn a_listen_fds_count_larger_than_what_was_passed_is_refused_naming_the_missing_descriptor() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Only descriptor 3 is passed; 4 and 5 would be vsplice's own signalfds, taken as
    // inherited sockets (two owners each) before the fix.
    let relay = hand_activated(
        &[listener.into()],
        "3",
        None,
        &["ACCEPT-FD:3,fork", "TCP:127.0.0.1:1"],
    );
    let log = refused(relay);
    assert!(
        log.contains("LISTEN_FDS=3 names descriptor 4, which is not open"),
        "{log}"
    );
}

fn passed_seqpacket_listener(dir: &Scratch) -> (std::os::fd::OwnedFd, std::path::PathBuf) {
    let path = dir.path("seqpacket.sock");
    (common::messages::seqpacket_listen(&path, 8), path)
}

#[test]
fn a_passed_seqpacket_listener_paired_with_a_stream_is_refused_naming_both_addresses() {
    let dir = Scratch::new("seqpacket");
    let (fd, _path) = passed_seqpacket_listener(&dir);
    let mut relay = hand_activated(&[fd], "1", None, &["ACCEPT-FD:3,fork", "TCP:127.0.0.1:1"]);
    let status = relay.wait_exit(std::time::Duration::from_secs(20));
    let log = relay.log();
    assert_eq!(status.code(), Some(2), "a usage error; stderr:\n{log}");
    assert!(
        log.contains("descriptor 3")
            && log.contains("\"ACCEPT-FD:3,fork\" carries messages")
            && log.contains("\"TCP:127.0.0.1:1\" is a stream"),
        "{log}"
    );
}

#[test]
fn a_passed_seqpacket_listener_relays_messages_to_a_seqpacket_address() {
    use common::messages::{
        Framing, Sequence, check_sequence, send_sequence, seqpacket_connect, seqpacket_listen,
    };
    use nix::sys::socket::accept;
    use std::os::fd::AsFd;
    let dir = Scratch::new("seqpacket-pass");
    let (fd, front) = passed_seqpacket_listener(&dir);
    let back = dir.path("back.sock");
    let backend = seqpacket_listen(&back, 8);
    let connect_to = format!("UNIX-CONNECT:{},socktype=seqpacket", back.display());
    let relay = hand_activated(&[fd], "1", None, &["ACCEPT-FD:3,fork", &connect_to]);
    let client = seqpacket_connect(&front);
    let seq = Sequence {
        seed: 7,
        count: 20_000,
        max: 65535,
        empty: true,
    };
    let sender = std::thread::spawn(move || send_sequence(client.as_fd(), seq, Framing::Packets));
    let server = accept(&backend).unwrap();
    common::messages::recv_timeout(server.as_fd(), 60);
    let checked = check_sequence(server.as_fd(), seq, Framing::Packets);
    sender.join().unwrap().unwrap();
    assert_eq!(checked, Ok(()), "relay log:\n{}", relay.log());
}

#[test]
fn a_passed_socket_that_is_not_listening_is_refused_naming_its_descriptor() {
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let dir = Scratch::new("not-listening");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        "[[service]]\nname = \"x\"\nlisten = \"ACCEPT-FD:3,fork\"\nconnect = \"TCP:127.0.0.1:1\"\n",
    )
    .unwrap();
    let relay = hand_activated(
        &[a.into()],
        "1",
        None,
        &["serve", "--config", config.to_str().unwrap()],
    );
    let log = refused(relay);
    assert!(
        log.contains("descriptor 3, which is a stream socket that is not listening"),
        "{log}"
    );
}

#[test]
fn sockets_meant_for_another_process_are_not_taken_and_the_error_says_why() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = hand_activated(
        &[listener.into()],
        "1",
        Some("1"),
        &["ACCEPT-FD:3,fork", "TCP:127.0.0.1:1"],
    );
    let log = refused(relay);
    assert!(log.contains("LISTEN_PID=1 is not this process"), "{log}");
}

#[test]
fn a_standard_error_nobody_reads_stops_no_service_and_no_sigterm_after_300_refused_peers() {
    use common::{ExchangeServer, Listen, MIB, exchange, payload};
    use std::time::Duration;

    let dir = Scratch::new("stuck-stderr");
    let (up, down) = (payload(32 * MIB, 21), payload(32 * MIB, 22));
    let upstream = Listen::tcp();
    let target = upstream.connect_address();
    let server = ExchangeServer::spawn(upstream, down.data.clone(), 1);
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "drain-timeout = \"5s\"\n[metrics]\nlisten = \"TCP4-LISTEN:{metrics_port},bind=127.0.0.1\"\n\
             [[service]]\nname = \"tcp\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"{target}\"\nallow = [\"127.0.0.1/32\"]\n"
        ),
    )
    .unwrap();
    // Standard error is a pipe of one page that this test never reads: a stuck journald.
    let (never_read, stderr) = nix::unistd::pipe().unwrap();
    nix::fcntl::fcntl(&stderr, nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    // Full before vsplice writes its first line.
    assert_eq!(nix::unistd::write(&stderr, &[b'#'; 4096]).unwrap(), 4096);
    let mut child = Command::new(vsplice_bin())
        .args(["serve", "-d", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(stderr))
        .spawn()
        .unwrap();
    let guard = KillOnDrop(&mut child);
    // Its log cannot be read: wait for the listener instead, as a refused peer (an allowed
    // one would take the upstream's only connection).
    let started = std::time::Instant::now();
    while try_tcp_from("127.0.0.2", port)
        .is_err_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 300 refused peers each cause a warning, then an allowed client moves 32 MiB each way. In a thread, so that a hang fails the test.
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..300 {
            if let Ok(mut s) = try_tcp_from("127.0.0.2", port) {
                let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
            }
        }
        let client = tcp_from("127.0.0.1", port);
        let _ = done_tx.send(exchange(Box::new(client), up.data.clone()).unwrap());
    });
    let got = done
        .recv_timeout(Duration::from_secs(120))
        .expect("the allowed transfer did not finish: a worker blocked on standard error");
    assert_eq!(got.sha, down.sha);
    assert_eq!(server.next(Duration::from_secs(120)).sha, up.sha);
    let samples = scrape_and_parse(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    // The rate limit keeps 300 refusals to a few lines, which the queue holds: what is
    // dropped (unit-tested in src/log.rs) depends on timing, but the counter is there.
    assert!(
        sample(&samples, "vsplice_log_lines_dropped_total{}").is_some(),
        "{samples:#?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not end vsplice"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    drop(never_read);
}

/// Kills a child that is still running when the test ends (a failed assertion included).
struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn an_accept_fd_relay_refuses_a_peer_outside_its_allow_list_with_a_reset_and_dials_nothing() {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    backend.set_nonblocking(true).unwrap();
    let target = format!("TCP:127.0.0.1:{}", backend.local_addr().unwrap().port());
    let relay = hand_activated(
        &[listener.into()],
        "1",
        None,
        &["ACCEPT-FD:3,fork,allow=10.9.9.0/24", &target],
    );
    // The passed socket already listens: the connect completes in its backlog, and vsplice
    // refuses the peer once it has started.
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let got = client.read(&mut [0u8; 64]);
    assert_eq!(
        got.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a refused peer reads a reset, got {got:?}; log:\n{}",
        relay.log()
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(backend.accept().is_err(), "the backend was dialed");
    assert!(
        relay.log().contains("127.0.0.1 refused by the allow list"),
        "{}",
        relay.log()
    );
}

/// `accept-proxy`, `allow-source` and `send-proxy` as service keys: a bad header is counted
/// by reason, a refused declared source too, a good one reaches the backend as the first
/// client; a reload that drops `accept-proxy` serves plain clients from the next one on.
#[test]
fn proxy_keys_of_a_service_read_and_write_headers_count_bad_ones_and_follow_a_reload() {
    use common::Relay;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::{Duration, Instant};

    let dir = Scratch::new("proxy-keys");
    let (port, metrics_port) = (common::free_port(), common::free_port());
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    let config = dir.path("vsplice.toml");
    let write_config = |accept: bool| {
        let accept = if accept {
            "accept-proxy = true\nallow-source = [\"10.0.0.0/8\"]\nproxy-timeout = \"2s\"\n"
        } else {
            ""
        };
        std::fs::write(
            &config,
            format!(
                "[metrics]\nlisten = \"TCP4-LISTEN:{metrics_port},bind=127.0.0.1\"\n[[service]]\n\
                 name = \"pp\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
                 connect = \"TCP:127.0.0.1:{backend_port}\"\nsend-proxy = \"v1\"\n{accept}"
            ),
        )
        .unwrap();
    };
    write_config(true);
    let mut relay = Relay::serve(&config, 1);
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let wait_sample = |key: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let samples = scrape_and_parse(&url);
            if sample(&samples, key) == Some(1.0) {
                return;
            }
            assert!(Instant::now() < deadline, "{key} not 1: {samples:#?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for (bytes, reason) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], "bad-signature"),
        (b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2\r\n", "source-denied"),
    ] {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(bytes).unwrap();
        let mut buf = [0u8; 8];
        let err = c.read(&mut buf).expect_err("a reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        wait_sample(&format!(
            "vsplice_proxy_header_errors_total{{reason={reason},service=pp}}"
        ));
    }
    let read_line = |backend: &std::net::TcpListener| {
        let (s, _) = backend.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"PROXY TCP4 10.9.8.7 10.0.0.1 5555 80\r\nhello\n")
        .unwrap();
    assert_eq!(
        read_line(&backend),
        format!("PROXY TCP4 10.9.8.7 10.0.0.1 5555 80\r\n")
    );
    drop(c);
    write_config(false);
    reload_and_wait(&relay, "0 added, 0 removed, 1 changed, 0 unchanged", 1);
    let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = c.local_addr().unwrap();
    assert_eq!(
        read_line(&backend),
        format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {port}\r\n", me.port()),
        "after the reload a plain client is served, and described as itself"
    );
    assert!(relay.stop().success(), "{}", relay.log());
}

#[test]
fn a_seqpacket_service_relays_messages_whole_and_counts_them_by_direction() {
    use common::Relay;
    use common::messages::{
        Framing, Sequence, check_sequence, send_sequence, seqpacket_connect, seqpacket_listen,
    };
    use nix::sys::socket::{Shutdown, accept, shutdown};
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    let dir = Scratch::new("seqpacket-service");
    let (front, back) = (dir.path("front.sock"), dir.path("back.sock"));
    let metrics_port = common::free_port();
    let backend = seqpacket_listen(&back, 8);
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"TCP4-LISTEN:{metrics_port},bind=127.0.0.1\"\n[[service]]\n\
             name = \"agent\"\nlisten = \"UNIX-LISTEN:{},socktype=seqpacket,fork\"\n\
             connect = \"UNIX-CONNECT:{},socktype=seqpacket\"\n",
            front.display(),
            back.display()
        ),
    )
    .unwrap();
    let mut relay = Relay::serve(&config, 1);
    let up = Sequence {
        seed: 41,
        count: 20_000,
        max: 65535,
        empty: true,
    };
    let client = seqpacket_connect(&front);
    let sender = std::thread::spawn(move || {
        send_sequence(client.as_fd(), up, Framing::Packets).unwrap();
        shutdown(client.as_raw_fd(), Shutdown::Write).unwrap();
        client
    });
    let server = accept(&backend).unwrap();
    common::messages::recv_timeout(server.as_fd(), 60);
    assert_eq!(
        check_sequence(server.as_fd(), up, Framing::Packets),
        Ok(()),
        "{}",
        relay.log()
    );
    let reply = Sequence {
        seed: 42,
        count: 3,
        max: 100,
        empty: false,
    };
    send_sequence(server.as_fd(), reply, Framing::Packets).unwrap();
    drop(server);
    let client = sender.join().unwrap();
    common::messages::recv_timeout(client.as_fd(), 60);
    assert_eq!(
        check_sequence(client.as_fd(), reply, Framing::Packets),
        Ok(())
    );
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = "vsplice_messages_total{direction=first_to_second,service=agent}";
    let samples = loop {
        let samples = scrape_and_parse(&url);
        if sample(&samples, wanted) == Some(20_000.0) {
            break samples;
        }
        assert!(Instant::now() < deadline, "not counted: {samples:#?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(
            &samples,
            "vsplice_messages_total{direction=second_to_first,service=agent}"
        ),
        Some(3.0),
        "{samples:#?}"
    );
    assert!(relay.stop().success(), "{}", relay.log());
}

/// `accept-proxy` on an inherited socket (`ACCEPT-FD`, systemd socket activation): the header
/// is read and taken off, the declared client goes on in the relay's `send-proxy=v1`.
#[test]
fn accept_fd_with_accept_proxy_passes_the_declared_client_on() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::time::Duration;

    let dir = Scratch::new("accept-fd-proxy");
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = format!(
        "TCP:127.0.0.1:{},send-proxy=v1",
        backend.local_addr().unwrap().port()
    );
    let port = common::free_port();
    let (mut activator, notify, log) = activate(
        &dir,
        &format!("127.0.0.1:{port}"),
        &[],
        &["ACCEPT-FD:3,fork,accept-proxy", &target],
    );
    let mut client = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    assert_eq!(recv_notify(&notify), "READY=1\nSTATUS=1 services");
    client
        .write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x05\x0a\x00\x00\x01\x13\x88\x00\x50tail")
        .unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (s, _) = backend.accept().unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line, "PROXY TCP4 192.0.2.5 10.0.0.1 5000 80\r\n");
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"tail");
    let pid = nix::unistd::Pid::from_raw(activator.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = activator.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}:\n{text}");
}

#[test]
fn serve_check_takes_udp_beside_tcp_on_one_port_number_and_refuses_two_udp_services_on_one_port() {
    let (code, out, err) = serve_check(
        "[[service]]\nname = \"dns\"\nlisten = \"UDP4-LISTEN:5353,fork\"\n\
         connect = \"TCP:127.0.0.1:53,framing=len16\"\n\
         [[service]]\nname = \"dns-tcp\"\nlisten = \"TCP4-LISTEN:5353,fork\"\n\
         connect = \"TCP:127.0.0.1:53\"\n",
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("UDP4-LISTEN:5353,fork"), "{out}");
    let (code, _, err) = serve_check(
        "[[service]]\nname = \"dns\"\nlisten = \"UDP4-LISTEN:5353,fork\"\n\
         connect = \"TCP:127.0.0.1:53,framing=len16\"\n\
         [[service]]\nname = \"dns2\"\nlisten = \"UDP4-LISTEN:5353,bind=127.0.0.1,fork\"\n\
         connect = \"TCP:127.0.0.1:54,framing=len16\"\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("service \"dns2\"") && err.contains("UDP 127.0.0.1:5353"),
        "{err}"
    );
}

#[test]
fn serve_check_refuses_a_seqpacket_service_whose_other_end_is_an_unframed_stream() {
    let (code, _, err) = serve_check(
        "[[service]]\nname = \"agent\"\nlisten = \"UNIX-LISTEN:/run/x.sock,socktype=5,fork\"\n\
         connect = \"TCP:127.0.0.1:9000\"\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("carries messages") && err.contains("\"TCP:127.0.0.1:9000\" is a stream"),
        "{err}"
    );
    let (code, out, err) = serve_check(
        "[[service]]\nname = \"agent\"\nlisten = \"UNIX-LISTEN:/run/x.sock,socktype=5,fork\"\n\
         connect = \"TCP:127.0.0.1:9000,framing=len16\"\n",
    );
    assert_eq!(code, 0, "{out}{err}");
}
