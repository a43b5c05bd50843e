//! Service mode, end to end through the binary: `vsplice serve --check` on good and bad
//! files, the metrics endpoint scraped over HTTP and read by a real Prometheus parser, and the
//! systemd protocols (socket activation through `systemd-socket-activate`, sd_notify on a
//! NOTIFY_SOCKET the test binds).

mod common;

use std::process::Command;

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
