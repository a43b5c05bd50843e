//! Logs an operator can use, read from a real process's real standard error: `--log-format
//! json` lines parse and the close line of a relayed connection carries its fields (service,
//! peer, connection id, bytes each way, reason, duration); under systemd (`JOURNAL_STREAM`
//! naming standard error itself) lines start with their sd-daemon priority and journald's
//! timestamp is left to journald; and the data path logs nothing per chunk, even at `-dddd`.

mod common;

use std::fs::File;
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ExchangeServer, Listen, Relay, exchange, free_port, payload, vsplice_bin};

const LONG: Duration = Duration::from_secs(60);
const BIG: usize = 16 << 20;

/// Every line of `log` as a JSON object (a line that does not parse fails the test).
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{log}"))
        })
        .collect()
}

/// Relays one connection of `BIG` bytes each way through `vsplice ARGS TCP-LISTEN TCP`,
/// checking the bytes, and returns the relay's standard error after it closed the connection.
fn relay_one(args: &[&str]) -> String {
    let reply = payload(BIG, 21);
    let sent = payload(BIG, 22);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, reply.data.clone(), 1);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,fork");
    let mut all: Vec<&str> = args.to_vec();
    all.extend([listen.as_str(), upstream.as_str()]);
    let mut relay = Relay::start(&all);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = exchange(Box::new(client), sent.data.clone()).expect("client exchange");
    assert_eq!(
        (got.received, &got.sha),
        (BIG, &reply.sha),
        "client got the server's bytes"
    );
    let at_server = server.next(LONG);
    assert_eq!(
        (at_server.received, &at_server.sha),
        (BIG, &sent.sha),
        "server got the client's bytes"
    );
    relay.wait_for_log("closed: finished", LONG);
    relay.stop();
    relay.log()
}

#[test]
fn json_lines_parse_and_the_close_line_carries_the_connection_fields() {
    let log = relay_one(&["--log-format", "json", "--threads", "1"]);
    let lines = json_lines(&log);
    for line in &lines {
        for key in ["timestamp", "level", "pid", "message"] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["message"].as_str().unwrap().starts_with("listening on"))
    );
    let close = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("closed: finished"))
        .unwrap_or_else(|| panic!("no close line:\n{log}"));
    assert_eq!(close["level"], "notice", "{close}");
    assert_eq!(close["reason"], "finished", "{close}");
    assert_eq!(close["bytes_first_to_second"], BIG as u64, "{close}");
    assert_eq!(close["bytes_second_to_first"], BIG as u64, "{close}");
    assert!(close["conn_id"].is_u64(), "{close}");
    assert!(close["duration_s"].as_f64().unwrap() > 0.0, "{close}");
    assert!(
        close["peer"].as_str().unwrap().contains("127.0.0.1"),
        "{close}"
    );
    assert!(
        close["upstream"].as_str().unwrap().contains("127.0.0.1"),
        "{close}"
    );
    assert!(
        close.get("service").is_none(),
        "no service outside `serve`: {close}"
    );
}

#[test]
fn at_the_most_verbose_level_a_16_mib_connection_logs_a_handful_of_lines_not_one_per_chunk() {
    let log = relay_one(&["-dddd", "--log-format", "json", "--threads", "1"]);
    let lines = json_lines(&log);
    let about_conn = lines
        .iter()
        .filter(|l| l["message"].as_str().unwrap().contains("conn "))
        .count();
    // 16 MiB each way is hundreds of pipe- or buffer-sized chunks.
    assert!((1..50).contains(&about_conn), "{about_conn} lines:\n{log}");
}

/// Starts vsplice on `args` with standard error in a file, `JOURNAL_STREAM` set to `journal`
/// (or to the file's own `DEVICE:INODE` when `None`); returns what it wrote once it exits.
fn stderr_with_journal_stream(args: &[&str], journal: Option<&str>) -> String {
    let dir = std::env::temp_dir().join(format!(
        "vsplice-logs-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stderr");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let status = Command::new(vsplice_bin())
        .args(args)
        .env("JOURNAL_STREAM", journal.unwrap_or(&own))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .expect("run vsplice");
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "the dial was to fail: {text}");
    text
}

/// Runs a forking relay whose every dial fails, connects once, and returns standard error.
fn warning_under(journal: Option<&str>) -> String {
    let port = free_port();
    let closed = free_port();
    let args = [
        "-d".to_string(),
        format!("TCP-LISTEN:{port},bind=127.0.0.1,fork"),
        format!("TCP:127.0.0.1:{closed}"),
    ];
    let dir = std::env::temp_dir().join(format!("vsplice-logs-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stderr");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let own = format!("{}:{}", meta.dev(), meta.ino());
    let mut child = Command::new(vsplice_bin())
        .args(&args)
        .env("JOURNAL_STREAM", journal.unwrap_or(&own))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn vsplice");
    let deadline = Instant::now() + LONG;
    let text = loop {
        // Each connection's dial behind it fails: a (rate-limited) warning at -d.
        let _ = TcpStream::connect(("127.0.0.1", port));
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("closed:") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    text
}

#[test]
fn under_systemd_a_warning_line_starts_with_its_priority_and_no_timestamp() {
    let text = warning_under(None);
    let line = text
        .lines()
        .find(|l| l.contains("closed:"))
        .unwrap_or_else(|| panic!("no close line:\n{text}"));
    assert!(line.starts_with("<4>conn "), "{line:?}\n{text}");
}

#[test]
fn a_journal_stream_that_is_not_standard_error_leaves_the_text_lines_as_they_are() {
    let text = warning_under(Some("1:1"));
    let line = text
        .lines()
        .find(|l| l.contains("closed:"))
        .unwrap_or_else(|| panic!("no close line:\n{text}"));
    assert!(!line.starts_with('<'), "{line:?}");
    assert!(line.contains(" W conn "), "{line:?}");
    assert!(
        line.as_bytes()[4] == b'/' && line.contains(" vsplice["),
        "{line:?}"
    );
}

#[test]
fn under_systemd_an_error_reads_3_and_json_lines_keep_the_prefix_before_the_object() {
    let port = free_port();
    // A single connection to a port nobody listens on: the relay's error, then exit 1.
    let closed = format!("TCP:127.0.0.1:{port}");
    let text = stderr_with_journal_stream(&["--log-format", "json", "STDIO", &closed], None);
    let line = text
        .lines()
        .find(|l| l.starts_with("<3>"))
        .unwrap_or_else(|| panic!("no <3> line:\n{text}"));
    let object: serde_json::Value = serde_json::from_str(&line[3..]).unwrap();
    assert_eq!(object["level"], "error", "{object}");
}

#[test]
fn under_serve_the_json_close_line_names_its_service() {
    let reply = payload(4 << 20, 23);
    let sent = payload(4 << 20, 24);
    let server = Listen::tcp();
    let upstream = server.connect_address();
    let server = ExchangeServer::spawn(server, reply.data.clone(), 1);
    let port = free_port();
    let dir = common::Scratch::new("logs-serve");
    let config = dir.path("vsplice.toml");
    std::fs::write(
        &config,
        format!(
            "[[service]]\nname = \"echo\"\nlisten = \"TCP4-LISTEN:{port},bind=127.0.0.1,fork\"\n\
             connect = \"{upstream}\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let mut relay = Relay::spawn(
        &["serve", "--config", config, "--log-format", "json"],
        Stdio::null(),
        Stdio::null(),
    );
    relay.wait_for_log("serving 1 services", LONG);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let got = exchange(Box::new(client), sent.data.clone()).expect("client exchange");
    assert_eq!(got.sha, reply.sha, "client got the server's bytes");
    assert_eq!(
        server.next(LONG).sha,
        sent.sha,
        "server got the client's bytes"
    );
    relay.wait_for_log("closed: finished", LONG);
    relay.stop();
    let log = relay.log();
    let lines = json_lines(&log);
    let close = lines
        .iter()
        .find(|l| l["message"].as_str().unwrap().contains("closed: finished"))
        .unwrap_or_else(|| panic!("no close line:\n{log}"));
    assert_eq!(close["service"], "echo", "{close}");
    assert_eq!(close["bytes_first_to_second"], 4u64 << 20, "{close}");
    assert_eq!(close["bytes_second_to_first"], 4u64 << 20, "{close}");
}
