//! `SOCKS5-SERVER` and `HTTP-CONNECT-SERVER` with real clients: Debian's curl
//! (`--socks5-hostname`, `--socks5`, `--proxytunnel -x http://`) through a vsplice proxy to an
//! HTTP server this test runs on loopback, 64 MiB down and up with hashes at both ends; denied
//! destinations (by the request, and by what a name resolves to, with `/etc/hosts` replaced in
//! a private mount namespace) answered with curl's "not allowed" errors while the server's
//! listener on that port sees no connection.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{MIB, Relay, Scratch, free_port, payload, sha_hex};

/// An HTTP/1.1 server on 127.0.0.1 for the test: `GET /bytes/N` answers N bytes of the
/// test's payload (seed 7), `PUT /sha` answers the SHA-256 of the body it read. It counts
/// the connections it accepted, so a test can tell that a denied request never reached it.
struct Origin {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn serve_one(stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut out = stream;
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path.starts_with("/bytes/") => {
            let n: usize = path["/bytes/".len()..].parse().unwrap_or(0);
            let body = payload(n, 7);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
            )?;
            out.write_all(&body.data)?;
        }
        (Some("PUT"), _) => {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body)?;
            let sha = sha_hex(&body);
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{sha}",
                sha.len()
            )?;
        }
        _ => write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
    }
    out.flush()
}

impl Origin {
    fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = serve_one(stream);
                });
            }
        });
        Origin { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Debian's curl: the machine's, or else unpacked from the machine's Debian mirror into the
/// labs' cache (never installed; `common::debs::tool`). `None` (the tests skip, saying so)
/// when neither is there.
fn curl_command() -> Option<Command> {
    if Command::new("curl").arg("--version").output().is_ok() {
        return Some(Command::new("curl"));
    }
    match common::debs::tool("curl", "usr/bin/curl") {
        Ok(cmd) => Some(cmd),
        Err(e) => {
            println!("curl is neither installed nor fetchable from the Debian mirror: {e}");
            None
        }
    }
}

fn curl_available() -> bool {
    curl_command().is_some()
}

/// Runs curl with `args` (silent, errors shown, a 30 s bound).
fn curl(args: &[&str]) -> Output {
    curl_command()
        .expect("curl_available() was checked")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .output()
        .expect("running curl")
}

fn proxy(kind: &str, dest: &[String], extra: &str) -> (Relay, u16) {
    let port = free_port();
    let dest: Vec<String> = dest.iter().map(|d| format!(",dest={d}")).collect();
    let second = format!("{kind}{}{extra}", dest.concat());
    let relay = Relay::start(&[&format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"), &second]);
    (relay, port)
}

/// 64 MiB down and 64 MiB up through `proxy_args`, hashed at both ends.
fn download_and_upload(proxy_args: &[&str], host: &str, origin: &Origin, scratch: &Scratch) {
    let n = 64 * MIB;
    let expected = payload(n, 7);
    let file = scratch.path("down");
    let url = format!("http://{host}:{}/bytes/{n}", origin.port);
    let mut args = proxy_args.to_vec();
    args.extend(["-o", file.to_str().unwrap(), &url]);
    let out = curl(&args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), n);
    assert_eq!(sha_hex(&got), expected.sha, "the download's bytes changed");
    let upload = payload(n, 11);
    let up_file = scratch.path("up");
    std::fs::write(&up_file, upload.data.as_slice()).unwrap();
    let url = format!("http://{host}:{}/sha", origin.port);
    let data = format!("@{}", up_file.display());
    let mut args = proxy_args.to_vec();
    args.extend(["-X", "PUT", "--data-binary", &data, &url]);
    let out = curl(&args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        upload.sha,
        "the server hashed other bytes than were uploaded"
    );
}

#[test]
fn curl_moves_64_mib_each_way_through_socks5_by_name_and_by_address_and_through_http_connect() {
    if !curl_available() {
        println!("skipped: no curl (see above)");
        return;
    }
    let origin = Origin::start();
    let scratch = Scratch::new("proxy-curl");
    let p = origin.port;
    let (_socks, sp) = proxy("SOCKS5-SERVER", &[format!("127.0.0.1:{p}")], "");
    let socks = format!("127.0.0.1:{sp}");
    download_and_upload(
        &["--socks5-hostname", &socks],
        "localhost",
        &origin,
        &scratch,
    );
    download_and_upload(&["--socks5", &socks], "127.0.0.1", &origin, &scratch);
    let (_http, hp) = proxy("HTTP-CONNECT-SERVER", &[format!("127.0.0.1:{p}")], "");
    let http = format!("http://127.0.0.1:{hp}");
    download_and_upload(
        &["--proxytunnel", "-x", &http],
        "127.0.0.1",
        &origin,
        &scratch,
    );
}

#[test]
fn a_denied_destination_gets_curls_not_allowed_error_and_never_reaches_the_network() {
    if !curl_available() {
        println!("skipped: no curl (see above)");
        return;
    }
    let allowed = Origin::start();
    let denied = Origin::start();
    let dest = [format!("127.0.0.1:{}", allowed.port)];
    let (socks, sp) = proxy("SOCKS5-SERVER", &dest, "");
    let (http, hp) = proxy("HTTP-CONNECT-SERVER", &dest, "");
    let url = format!("http://127.0.0.1:{}/bytes/10", denied.port);
    let by_name = format!("http://localhost:{}/bytes/10", denied.port);
    let socks_at = format!("127.0.0.1:{sp}");
    let http_at = format!("http://127.0.0.1:{hp}");
    let cases: [(&[&str], &str, &str); 3] = [
        (&["--socks5", &socks_at], &url, "(2)"),
        (&["--socks5-hostname", &socks_at], &by_name, "(2)"),
        (&["--proxytunnel", "-x", &http_at], &url, "response 403"),
    ];
    for (args, url, says) in cases {
        let mut all = args.to_vec();
        all.push(url);
        let out = curl(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "curl {all:?} succeeded");
        assert!(stderr.contains(says), "curl {all:?}: {stderr}");
    }
    // The by-name case resolves to an allowed address, on a port no entry names.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(denied.accepted(), 0, "a denied request reached the network");
    assert!(
        socks.log().contains("no dest= entry allows it"),
        "{}",
        socks.log()
    );
    assert!(http.log().contains("(denied)"), "{}", http.log());
    // The proxies still serve allowed requests.
    let ok = format!("http://127.0.0.1:{}/bytes/1000", allowed.port);
    assert!(
        curl(&["--socks5", &socks_at, "-o", "/dev/null", &ok])
            .status
            .success()
    );
    assert!(
        curl(&["--proxytunnel", "-x", &http_at, "-o", "/dev/null", &ok])
            .status
            .success()
    );
}

#[test]
fn a_name_that_resolves_into_a_denied_network_is_refused() {
    if !curl_available() {
        println!("skipped: no curl (see above)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: replacing /etc/hosts in a private mount namespace needs root");
        return;
    }
    let origin = Origin::start();
    let scratch = Scratch::new("proxy-hosts");
    // Inside vsplice's mount namespace: two names for loopback.
    let hosts = scratch.path("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 rebind.example.test\n127.0.0.1 named.example.test\n",
    )
    .unwrap();
    let p = origin.port;
    let port = free_port();
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c"]);
    command.arg(format!(
        "mount --bind {} /etc/hosts && exec \"$@\"",
        hosts.display()
    ));
    command.args(["sh", common::vsplice_bin()]);
    // `*.example.test` lets both names through by name, but not into loopback; only a
    // network entry naming 127.0.0.1 with another port would.
    let relay = Relay::spawn_command(
        command,
        &[
            &format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"),
            &format!("SOCKS5-SERVER,dest=*.example.test:{p},dest=127.0.0.1:1"),
        ],
    )
    .listening();
    let socks_at = format!("127.0.0.1:{port}");
    let url = format!("http://rebind.example.test:{p}/bytes/10");
    let out = curl(&["--socks5-hostname", &socks_at, &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the rebinding name was relayed");
    assert!(stderr.contains("(2)"), "curl: {stderr}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(origin.accepted(), 0, "the proxy dialed loopback for a name");
    let log = relay.log();
    assert!(
        log.contains("rebind.example.test resolved to 127.0.0.1"),
        "the namespace's /etc/hosts answered: {log}"
    );
    drop(relay);
    // The same name with loopback's port named as a network entry is relayed.
    let port = free_port();
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c"]);
    command.arg(format!(
        "mount --bind {} /etc/hosts && exec \"$@\"",
        hosts.display()
    ));
    command.args(["sh", common::vsplice_bin()]);
    let relay = Relay::spawn_command(
        command,
        &[
            &format!("TCP-LISTEN:{port},fork,bind=127.0.0.1"),
            &format!("SOCKS5-SERVER,dest=127.0.0.0/8:{p}"),
        ],
    )
    .listening();
    let socks_at = format!("127.0.0.1:{port}");
    let url = format!("http://named.example.test:{p}/bytes/1000");
    let out = curl(&["--socks5-hostname", &socks_at, "-o", "/dev/null", &url]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.log()
    );
    assert_eq!(origin.accepted(), 1);
}

#[test]
fn a_proxy_without_dest_entries_is_refused_at_start_with_exit_status_2() {
    for second in ["SOCKS5-SERVER", "HTTP-CONNECT-SERVER,connect-timeout=1"] {
        let (code, stderr) = common::run_vsplice(&["TCP-LISTEN:1,fork", second]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("an open proxy is never started"),
            "{stderr}"
        );
    }
    let (code, stderr) = common::run_vsplice(&[
        "TCP-LISTEN:1,fork",
        "SOCKS5-SERVER,dest=a.b:1,user=u,password-file=/nonexistent/pw",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/pw"), "{stderr}");
}

/// The `value` of sample `name{...}` whose labels include every one of `labels`, from a
/// plain-text scrape of `/metrics` on `port`.
fn sample(port: u16, name: &str, labels: &[&str]) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn serve_counts_proxy_results_and_a_reload_changes_the_dest_key_and_the_password() {
    if !curl_available() {
        println!("skipped: no curl (see above)");
        return;
    }
    let a = Origin::start();
    let b = Origin::start();
    let scratch = Scratch::new("proxy-serve");
    let (port, metrics) = (free_port(), free_port());
    let config = scratch.path("vsplice.toml");
    let password = scratch.path("pw");
    let write = |dest: u16, pw: &str| {
        std::fs::write(&password, format!("{pw}\n")).unwrap();
        std::fs::write(
            &config,
            format!(
                "[metrics]\nlisten = \"TCP-LISTEN:{metrics},bind=127.0.0.1\"\n\
                 [[service]]\nname = \"egress\"\n\
                 listen = \"TCP-LISTEN:{port},fork,bind=127.0.0.1\"\n\
                 connect = \"SOCKS5-SERVER,user=app,password-file={}\"\n\
                 dest = [\"127.0.0.1:{dest}\"]\n",
                password.display()
            ),
        )
        .unwrap();
    };
    write(a.port, "first");
    let relay = Relay::serve(&config, 1);
    let socks = |pw: &str, to: u16| {
        let proxy = format!("socks5h://app:{pw}@127.0.0.1:{port}");
        let url = format!("http://127.0.0.1:{to}/bytes/1000");
        curl(&["-x", &proxy, "-o", "/dev/null", &url])
            .status
            .success()
    };
    assert!(socks("first", a.port), "{}", relay.log());
    assert!(!socks("first", b.port));
    assert!(!socks("wrong", a.port));
    let count = |result: &str| {
        sample(
            metrics,
            "vsplice_proxy_requests_total",
            &["service=\"egress\"", &format!("result=\"{result}\"")],
        )
    };
    assert_eq!(count("connected"), Some(1), "{}", relay.log());
    assert_eq!(count("denied"), Some(1));
    assert_eq!(count("auth_failed"), Some(1));
    // The reload reads the file and the password again.
    write(b.port, "second");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(relay.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    relay.wait_for_log("reloaded", Duration::from_secs(30));
    assert!(socks("second", b.port), "{}", relay.log());
    assert!(!socks("second", a.port));
    assert!(!socks("first", b.port));
    assert_eq!((a.accepted(), b.accepted()), (1, 1));
    assert_eq!(count("connected"), Some(2));
    assert_eq!(count("denied"), Some(2));
    assert_eq!(count("auth_failed"), Some(2));
}

#[test]
fn an_activated_socket_serves_socks5_through_accept_fd() {
    if !curl_available() {
        println!("skipped: no curl (see above)");
        return;
    }
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file()) else {
        println!("skipped: systemd-socket-activate is not installed (tests/service.rs unpacks it)");
        return;
    };
    let origin = Origin::start();
    let port = free_port();
    let mut command = Command::new(activate);
    command.args(["-l", &format!("127.0.0.1:{port}"), common::vsplice_bin()]);
    let relay = Relay::spawn_command(
        command,
        &[
            "ACCEPT-FD:3,fork",
            &format!("SOCKS5-SERVER,dest=127.0.0.1:{}", origin.port),
        ],
    );
    // systemd-socket-activate binds the port only once it runs, and says so: a client that
    // comes first is refused (seen in CI). It starts vsplice at the first connection.
    relay.wait_for_log("Listening on", std::time::Duration::from_secs(20));
    let socks_at = format!("127.0.0.1:{port}");
    let ok = format!("http://127.0.0.1:{}/bytes/100000", origin.port);
    let denied = format!("http://127.0.0.1:{}/bytes/1", origin.port + 1);
    let out = curl(&[
        "--socks5",
        &socks_at,
        "-o",
        "/dev/null",
        "-w",
        "%{size_download}",
        &ok,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "100000",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.log()
    );
    let out = curl(&["--socks5", &socks_at, &denied]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("(2)"));
    assert_eq!(origin.accepted(), 1);
}
