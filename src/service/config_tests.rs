use super::*;
use std::path::Path;
use std::time::Duration;

use super::plan::DEFAULT_DRAIN_TIMEOUT;
use super::resolve::resolve;
use crate::addr::Kind;
use crate::engine::Mode;
use crate::error::Error;

fn plan(text: &str) -> ServePlan {
    resolve(Path::new("t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn error(text: &str) -> String {
    let e = resolve(Path::new("t.toml"), text).expect_err("config should be refused");
    assert_eq!(Error::from(e.clone()).exit_code(), 2);
    e.to_string()
}

const ISSUE_EXAMPLE: &str = r#"
drain-timeout = "30s"            # global options

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
"#;

#[test]
fn the_issue_example_resolves_into_two_services() {
    let p = plan(ISSUE_EXAMPLE);
    assert_eq!(p.global.drain_timeout, Duration::from_secs(30));
    assert_eq!(
        p.metrics.as_ref().unwrap().text,
        "TCP-LISTEN:9464,bind=127.0.0.1"
    );
    assert_eq!(p.services.len(), 2);
    let ssh = &p.services[0];
    assert_eq!(ssh.name, "guest-ssh");
    assert_eq!(ssh.listen.kind, Kind::VsockListen { port: 22 });
    assert_eq!(ssh.allow().unwrap().to_string(), "cid:3, cid:10-20");
    assert_eq!(ssh.options, ServiceOptions::default());
    let api = &p.services[1];
    assert_eq!(api.options.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(api.allow().unwrap().to_string(), "127.0.0.0/8, 10.1.0.0/16");
    let summary = p.summary();
    assert!(summary.starts_with("t.toml: 2 services, metrics at TCP-LISTEN:9464"));
    assert!(
        summary.contains("  api        TCP-LISTEN:8080,fork,reuseaddr -> VSOCK-CONNECT:3:80  allow 127.0.0.0/8, 10.1.0.0/16  idle-timeout 600s"),
        "{summary}"
    );
}

#[test]
fn top_level_relay_options_are_every_services_defaults() {
    let p = plan(
        r#"
threads = 3
receive-budget = "1G"
pin = false
idle-timeout = 5
linger = 0.5
one-way = "first-to-second"
buffer = "64K"
mode = "copy"
[[service]]
name = "a"
listen = "TCP-LISTEN:1,fork"
connect = "TCP:h:2"
[[service]]
name = "b"
listen = "UNIX-LISTEN:/run/b.sock,fork"
connect = "TCP:h:2"
mode = "recv-zc"
one-way = "second-to-first"
buffer = 1048576
linger = "250ms"
max-children = 7
"#,
    );
    assert_eq!(p.global.threads, Some(3));
    assert_eq!(p.global.receive_budget, Some(1 << 30));
    assert_eq!(p.global.pin, Some(false));
    assert_eq!(p.global.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    let a = &p.services[0].options;
    assert_eq!(a.idle_timeout, Some(Duration::from_secs(5)));
    assert_eq!(a.linger, Some(Duration::from_millis(500)));
    assert_eq!(a.directions(), [true, false]);
    assert_eq!(a.buffer, Some(65536));
    assert_eq!(a.mode, Some(Mode::Copy));
    let b = &p.services[1];
    assert_eq!(b.options.mode, Some(Mode::RecvZc));
    assert_eq!(b.options.directions(), [false, true]);
    assert_eq!(b.options.buffer, Some(1 << 20));
    assert_eq!(b.options.linger, Some(Duration::from_millis(250)));
    assert_eq!(b.options.idle_timeout, Some(Duration::from_secs(5)));
    assert_eq!(b.max_children(), Some(7));
    assert_eq!(p.services[0].max_children(), None);
}

#[test]
fn unknown_keys_name_file_line_and_key() {
    assert_eq!(
        error("threads = 2\nfrobnicate = 1\n"),
        "t.toml:2: frobnicate: unknown field \"frobnicate\", expected one of \"drain-timeout\", \
         \"threads\", \"receive-budget\", \"pin\", \"idle-timeout\", \"linger\", \"one-way\", \
         \"buffer\", \"mode\", \"metrics\", \"service\""
    );
    let e = error(
        "[[service]]\nname = \"a\"\nlisten = \"TCP-L:1,fork\"\nconnect = \"TCP:h:1\"\nidle_timeout = 3\n",
    );
    assert!(
        e.starts_with("t.toml:5: idle_timeout: unknown field \"idle_timeout\""),
        "{e}"
    );
    let e = error("[metrics]\nlisten = \"TCP-L:9464\"\npath = \"/m\"\n");
    assert!(
        e.starts_with("t.toml:3: path: unknown field \"path\""),
        "{e}"
    );
}

#[test]
fn wrong_types_and_values_name_the_key() {
    let e = error(
        "threads = \"many\"\n[[service]]\nname=\"a\"\nlisten=\"TCP-L:1,fork\"\nconnect=\"TCP:h:1\"\n",
    );
    assert!(
        e.starts_with("t.toml:1: threads: \"many\" is not a whole number from 1 to 1024"),
        "{e}"
    );
    let svc = "[[service]]\nname=\"a\"\nlisten=\"TCP-L:1,fork\"\nconnect=\"TCP:h:1\"\n";
    for (line, expect) in [
        (
            "drain-timeout = \"soon\"",
            "t.toml:1: drain-timeout: \"soon\" is not a duration",
        ),
        (
            "mode = \"fast\"",
            "t.toml:1: mode: \"fast\" is not a data path",
        ),
        ("buffer = \"12Q\"", "t.toml:1: buffer: invalid size \"12Q\""),
        (
            "buffer = 100",
            "t.toml:1: buffer: 100 is not a size from 4K to 1G",
        ),
        (
            "one-way = true",
            "t.toml:1: one-way: true is not \"first-to-second\"",
        ),
        ("pin = 1", "t.toml:1: pin: expected true or false"),
    ] {
        let e = error(&format!("{line}\n{svc}"));
        assert!(e.starts_with(expect), "{line}: {e}");
    }
    let e = error("[[service]]\nname=\"a\"\nlisten=\"TCP-L:1,fork\"\nconnect=7\n");
    assert!(
        e.starts_with("t.toml:4: connect: invalid type: integer"),
        "{e}"
    );
    let e = error("[[service]]\nname=\"a\"\nlisten=\"TCP-L:1,fork\"\n");
    assert!(e.contains("missing field \"connect\""), "{e}");
    assert!(error("threads = 2\n").contains("no [[service]] declared"));
}

#[test]
fn address_errors_come_from_the_command_line_grammar() {
    let service = |listen: &str, connect: &str| {
        format!("\n[[service]]\nname = \"a\"\nlisten = \"{listen}\"\nconnect = \"{connect}\"\n")
    };
    assert_eq!(
        error(&service("TCP-LISTEN:99999,fork", "TCP:h:1")),
        "t.toml:4: listen: invalid address \"TCP-LISTEN:99999,fork\": port 99999 out of range 0-65535"
    );
    assert_eq!(
        error(&service("TCP:h:1", "TCP:h:2")),
        "t.toml:4: listen: \"TCP:h:1\" does not listen"
    );
    assert_eq!(
        error(&service("TCP-L:1,fork", "UNIX-LISTEN:/x")),
        "t.toml:5: connect: \"UNIX-LISTEN:/x\" is not a connecting address"
    );
    assert_eq!(
        error(&service("TCP-L:1,fork", "STDIO")),
        "t.toml:5: connect: \"STDIO\" is not a connecting address"
    );
    assert!(error(&service("TCP-L:1", "TCP:h:1")).contains("a service needs \",fork\""));
    assert!(
        error(&service("TCP-L:1,fork", "TCP:h:1,frob")).contains("\"frob\" is not valid for TCP")
    );
    let e = error(&service("TCP-L:1,fork", "TCP:h:1,connect-timeout=x"));
    assert!(e.starts_with("t.toml:5: connect: invalid address"), "{e}");
    let e = error("[metrics]\nlisten = \"TCP:h:1\"\n");
    assert_eq!(e, "t.toml:2: metrics.listen: \"TCP:h:1\" does not listen");
    let e = error("[metrics]\nlisten = \"ACCEPT-FD:3\"\n");
    assert!(
        e.starts_with("t.toml:2: metrics.listen: an inherited socket"),
        "{e}"
    );
}

#[test]
fn duplicate_names_and_shared_listening_addresses_are_refused() {
    let two = |a: (&str, &str), b: (&str, &str)| {
        format!(
            "[[service]]\nname = \"{}\"\nlisten = \"{}\"\nconnect = \"TCP:h:1\"\n\
             [[service]]\nname = \"{}\"\nlisten = \"{}\"\nconnect = \"TCP:h:1\"\n",
            a.0, a.1, b.0, b.1
        )
    };
    assert_eq!(
        error(&two(("a", "TCP-L:1,fork"), ("a", "TCP-L:2,fork"))),
        "t.toml:6: name: service \"a\" is declared twice (first at line 2)"
    );
    assert_eq!(
        error(&two(
            ("a", "TCP-L:1,fork"),
            ("b", "TCP6-LISTEN:1,fork,bind=[::1]")
        )),
        "t.toml:7: listen: service \"b\": \"TCP6-LISTEN:1,fork,bind=[::1]\" would bind [::1]:1, \
         where service \"a\" already listens"
    );
    for (x, y) in [
        ("UNIX-L:/s,fork", "UNIX-LISTEN:/s,fork,unlink-early"),
        ("VSOCK-L:22,fork", "VSOCK-LISTEN:22,fork,bind=3"),
        ("ACCEPT-FD:3,fork", "ACCEPT-FD:3,fork,max-children=2"),
    ] {
        assert!(
            error(&two(("a", x), ("b", y))).contains("already listens"),
            "{x} {y}"
        );
    }
    for (x, y) in [
        ("TCP-L:1,fork,bind=127.0.0.1", "TCP-L:1,fork,bind=127.0.0.2"),
        ("TCP-L:0,fork", "TCP-L:0,fork"),
        ("VSOCK-L:22,fork,bind=3", "VSOCK-L:22,fork,bind=4"),
        ("UNIX-L:/s,fork", "UNIX-L:/t,fork"),
        ("ACCEPT-FD:3,fork", "ACCEPT-FD:4,fork"),
    ] {
        plan(&two(("a", x), ("b", y)));
    }
    let e = error(
        "[metrics]\nlisten = \"TCP-L:9464\"\n[[service]]\nname = \"m\"\nlisten = \"TCP-L:9464,fork\"\nconnect = \"TCP:h:1\"\n",
    );
    assert_eq!(
        e,
        "t.toml:5: listen: service \"m\": \"TCP-L:9464,fork\" would bind [::]:9464, where \
         [metrics] already listens"
    );
}

#[test]
fn allow_entries_are_checked_against_the_listener() {
    let svc = |listen: &str, allow: &str| {
        format!(
            "[[service]]\nname = \"a\"\nlisten = \"{listen}\"\nconnect = \"TCP:h:1\"\nallow = {allow}\n"
        )
    };
    let p = plan(&svc("UNIX-L:/s,fork", "[\"uid:0\", \"uid:1000-1999\"]"));
    assert_eq!(
        p.services[0].allow().unwrap().to_string(),
        "uid:0, uid:1000-1999"
    );
    assert_eq!(
        error(&svc("TCP-L:1,fork", "[\"127.0.0.1\",\n  \"cid:x\"]")),
        "t.toml:6: allow: invalid allow entry \"cid:x\": expected a number N or a range N-M (N <= M) of 0-4294967295"
    );
    let e = error(&svc("TCP-L:1,fork", "[\"cid:3\"]"));
    assert!(
        e.starts_with("t.toml:5: allow: service \"a\": allow entry \"cid:3\" is for vsock peers and never matches a TCP-LISTEN listener"),
        "{e}"
    );
    assert!(error(&svc("TCP-L:1,fork", "[]")).contains("would refuse everyone"));
    assert!(error(&svc("TCP-L:1,fork,allow=::1", "[\"::2\"]")).contains("given twice"));
    let p = plan(
        &svc("TCP-L:1,fork,allow=::1,allow=10.0.0.0/8", "[\"::2\"]")
            .replace("allow = [\"::2\"]\n", ""),
    );
    assert_eq!(
        p.services[0].allow().unwrap().to_string(),
        "::1/128, 10.0.0.0/8"
    );
    let e = error(&svc(
        "TCP-L:1,fork,max-children=2",
        "[\"::2\"]\nmax-children = 3",
    ));
    assert!(e.starts_with("t.toml:6: max-children: given twice"), "{e}");
}

#[test]
fn fork_on_the_connect_address_is_refused() {
    let e =
        error("[[service]]\nname = \"a\"\nlisten = \"TCP-L:1,fork\"\nconnect = \"TCP:h:1,fork\"\n");
    assert_eq!(
        e,
        "t.toml:4: connect: invalid address \"TCP:h:1,fork\": option \"fork\" is not valid for TCP"
    );
}

#[test]
fn an_unreadable_file_is_a_usage_error() {
    let e = ServePlan::load(Path::new("/nonexistent/vsplice.toml")).unwrap_err();
    assert_eq!(e.line, 0);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/vsplice.toml: cannot read:"),
        "{e}"
    );
    assert_eq!(Error::from(e).exit_code(), 2);
}

#[test]
fn a_proxy_service_takes_its_destinations_as_a_dest_key_or_in_the_address_not_both() {
    let p = plan(
        r#"
[[service]]
name = "egress"
listen = "VSOCK-LISTEN:1080,fork"
connect = "SOCKS5-SERVER,connect-timeout=3"
allow = ["cid:16"]
dest = ["*.example.com:443", "10.0.0.0/8:5432"]
"#,
    );
    let dest = p.services[0].connect.options.proxy.dest.as_ref().unwrap();
    let shown: Vec<String> = dest.rules().iter().map(|r| r.to_string()).collect();
    assert_eq!(shown, ["*.example.com:443", "10.0.0.0/8:5432"]);
    let base = "[[service]]\nname = \"e\"\nlisten = \"TCP-LISTEN:1,fork\"\n";
    let twice = format!("{base}connect = \"SOCKS5-SERVER,dest=a.b:1\"\ndest = [\"c.d:2\"]\n");
    assert!(error(&twice).contains("given twice"), "{}", error(&twice));
    let smuggled = format!("{base}connect = \"SOCKS5-SERVER\"\ndest = [\"a.b:1,user=x\"]\n");
    assert!(
        error(&smuggled).contains("invalid dest entry"),
        "{}",
        error(&smuggled)
    );
    let none = format!("{base}connect = \"HTTP-CONNECT-SERVER\"\n");
    assert!(
        error(&none).contains("an open proxy is never started"),
        "{}",
        error(&none)
    );
    let empty = format!("{base}connect = \"HTTP-CONNECT-SERVER\"\ndest = []\n");
    assert!(
        error(&empty).contains("at least one entry"),
        "{}",
        error(&empty)
    );
}
