//! Unit tests of the address grammar: every type, alias, option and error message.

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Address {
    Address::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn error(text: &str) -> String {
    match Address::parse(text) {
        Ok(a) => panic!("{text} parsed as {a:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn tcp_connect_and_aliases() {
    for (text, family) in [
        ("TCP:localhost:5201", Family::Any),
        ("tcp:localhost:5201", Family::Any),
        ("TCP-CONNECT:localhost:5201", Family::Any),
        ("TCP4:localhost:5201", Family::V4),
        ("TCP4-CONNECT:localhost:5201", Family::V4),
        ("TCP6:localhost:5201", Family::V6),
        ("tcp6-connect:localhost:5201", Family::V6),
    ] {
        assert_eq!(
            parse(text).kind,
            Kind::TcpConnect {
                host: "localhost".into(),
                port: 5201,
                family
            },
            "{text}"
        );
    }
}

#[test]
fn tcp_connect_ipv6_literal_in_brackets() {
    assert_eq!(
        parse("TCP6:[::1]:80").kind,
        Kind::TcpConnect {
            host: "::1".into(),
            port: 80,
            family: Family::V6
        }
    );
}

#[test]
fn tcp_listen_and_aliases() {
    for (text, family) in [
        ("TCP-LISTEN:5201", Family::Any),
        ("TCP-L:5201", Family::Any),
        ("tcp-listen:5201", Family::Any),
        ("TCP4-LISTEN:5201", Family::V4),
        ("TCP4-L:5201", Family::V4),
        ("TCP6-LISTEN:5201", Family::V6),
        ("TCP6-L:5201", Family::V6),
    ] {
        let a = parse(text);
        assert_eq!(a.kind, Kind::TcpListen { port: 5201, family }, "{text}");
        assert!(a.is_listener());
    }
}

#[test]
fn unix_addresses_and_aliases() {
    for text in [
        "UNIX-CONNECT:/run/x.sock",
        "UNIX:/run/x.sock",
        "unix:/run/x.sock",
    ] {
        assert_eq!(
            parse(text).kind,
            Kind::UnixConnect {
                path: "/run/x.sock".into()
            }
        );
    }
    for text in ["UNIX-LISTEN:/run/x.sock", "UNIX-L:/run/x.sock"] {
        assert_eq!(
            parse(text).kind,
            Kind::UnixListen {
                path: "/run/x.sock".into()
            }
        );
    }
}

#[test]
fn vsock_addresses_and_aliases() {
    for text in [
        "VSOCK-CONNECT:3:5201",
        "VSOCK:3:5201",
        "vsock-connect:3:5201",
    ] {
        assert_eq!(parse(text).kind, Kind::VsockConnect { cid: 3, port: 5201 });
    }
    assert_eq!(
        parse("VSOCK-CONNECT:-1:5201").kind,
        Kind::VsockConnect {
            cid: u32::MAX,
            port: 5201
        }
    );
    for text in ["VSOCK-LISTEN:5201", "VSOCK-L:5201"] {
        assert_eq!(parse(text).kind, Kind::VsockListen { port: 5201 });
    }
}

#[test]
fn hybrid_vsock_addresses() {
    assert_eq!(
        parse("VSOCK-UDS-CONNECT:/run/fc.vsock:52").kind,
        Kind::VsockUdsConnect {
            path: "/run/fc.vsock".into(),
            port: 52
        }
    );
    assert_eq!(
        parse("VSOCK-UDS-LISTEN:/run/fc.vsock:5000,fork").kind,
        Kind::VsockUdsListen {
            path: "/run/fc.vsock".into(),
            port: 5000
        }
    );
    assert_eq!(
        error("VSOCK-UDS-CONNECT:/run/fc.vsock"),
        "VSOCK-UDS-CONNECT needs path:port"
    );
}

#[test]
fn stdio_forms() {
    assert_eq!(parse("-").kind, Kind::Stdio);
    assert_eq!(parse("STDIO").kind, Kind::Stdio);
    assert_eq!(parse("stdio").kind, Kind::Stdio);
    assert_eq!(error("STDIO:x"), "STDIO takes no parameters");
}

#[test]
fn unknown_type_names_the_keyword() {
    assert_eq!(error("NOPE:1"), "unknown address type \"NOPE\"");
    assert_eq!(error("localhost"), "unknown address type \"localhost\"");
}

#[test]
fn parameter_count_errors() {
    assert_eq!(error("VSOCK-CONNECT:5201"), "VSOCK-CONNECT needs cid:port");
    assert_eq!(error("VSOCK:5201"), "VSOCK-CONNECT needs cid:port");
    assert_eq!(error("TCP:localhost"), "TCP needs host:port");
    assert_eq!(error("TCP-LISTEN"), "TCP-LISTEN needs port");
    assert_eq!(error("TCP-LISTEN:1:2"), "TCP-LISTEN needs port");
    assert_eq!(error("UNIX-CONNECT"), "UNIX-CONNECT needs path");
    assert_eq!(error("VSOCK-LISTEN:1:2"), "VSOCK-LISTEN needs port");
    // An unbracketed IPv6 literal splits into too many parameters.
    assert_eq!(error("TCP6:::1:80"), "TCP6 needs host:port");
}

#[test]
fn range_and_number_errors() {
    assert_eq!(error("TCP-LISTEN:99999"), "port 99999 out of range 0-65535");
    assert_eq!(
        error("TCP:h:123456789012345678901234567890"),
        "port 123456789012345678901234567890 out of range 0-65535"
    );
    assert_eq!(error("TCP:h:http"), "port \"http\" is not a number");
    assert_eq!(error("TCP:h:"), "port \"\" is not a number");
    assert_eq!(error("TCP::80"), "empty host in TCP");
    assert_eq!(
        error("VSOCK-CONNECT:x:1"),
        "cid \"x\" is not a number 0-4294967295 (or -1 for any)"
    );
    assert_eq!(
        error("VSOCK-CONNECT:4294967296:1"),
        "cid \"4294967296\" is not a number 0-4294967295 (or -1 for any)"
    );
    assert_eq!(
        error("VSOCK-LISTEN:p"),
        "vsock port \"p\" is not a number 0-4294967295 (or -1 for any)"
    );
    assert_eq!(error("UNIX-LISTEN:"), "empty path in UNIX-LISTEN");
    let long = format!("UNIX-LISTEN:/{}", "a".repeat(120));
    assert_eq!(
        error(&long),
        format!(
            "UNIX socket path \"/{}\" is 121 bytes, longer than the kernel's 107",
            "a".repeat(120)
        )
    );
}

#[test]
fn lexical_errors_surface() {
    assert_eq!(error(""), "empty address");
    assert_eq!(error("TCP6:[::1:80"), "unclosed [");
    assert_eq!(error("UNIX:'abc"), "unterminated quote '");
}

#[test]
fn listener_options() {
    let a = parse("TCP-LISTEN:5201,fork,max-children=10,backlog=128,reuseport,reuseaddr=0");
    assert!(a.options.fork);
    assert_eq!(a.options.max_children, Some(10));
    assert_eq!(a.options.backlog, Some(128));
    assert!(a.options.reuseport);
    assert_eq!(a.options.reuseaddr, Some(false));
    let a = parse("VSOCK-LISTEN:5201,FORK,Backlog=4");
    assert!(a.options.fork);
    assert_eq!(a.options.backlog, Some(4));
    let a = parse("UNIX-LISTEN:/tmp/s,fork,unlink-early");
    assert!(a.options.fork && a.options.unlink_early);
}

#[test]
fn socket_buffer_options_and_aliases() {
    let a = parse("TCP:h:1,rcvbuf=1M,so-sndbuf=64K");
    assert_eq!(a.options.rcvbuf, Some(1 << 20));
    assert_eq!(a.options.sndbuf, Some(65536));
    let a = parse("VSOCK-CONNECT:3:1,so-rcvbuf=256K,sndbuf=1024");
    assert_eq!(a.options.rcvbuf, Some(256 << 10));
    assert_eq!(a.options.sndbuf, Some(1024));
    let a = parse("UNIX-CONNECT:/s,rcvbuf=4K");
    assert_eq!(a.options.rcvbuf, Some(4096));
}

#[test]
fn tcp_options() {
    let a = parse("TCP:h:1,nodelay,keepalive,keepidle=10,keepintvl=5,keepcnt=3");
    assert!(a.options.nodelay && a.options.keepalive);
    assert_eq!(a.options.keepidle, Some(10));
    assert_eq!(a.options.keepintvl, Some(5));
    assert_eq!(a.options.keepcnt, Some(3));
    // Keepalive timing implies keepalive.
    assert!(parse("TCP-L:1,tcp-keepidle=30").options.keepalive);
    assert!(
        parse("TCP-L:1,tcp-nodelay,so-keepalive,tcp-keepcnt=2,tcp-keepintvl=1")
            .options
            .nodelay
    );
}

#[test]
fn connect_options() {
    let a = parse("TCP:h:1,connect-timeout=2.5,retry=3,interval=0.5");
    assert_eq!(a.options.connect_timeout, Some(Duration::from_millis(2500)));
    assert_eq!(a.options.retry, 3);
    assert_eq!(a.options.interval, Some(Duration::from_millis(500)));
    assert_eq!(
        parse("VSOCK-CONNECT:3:1,connect-timeout=1")
            .options
            .connect_timeout,
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        parse("UNIX-CONNECT:/s,connect-timeout=1")
            .options
            .connect_timeout,
        Some(Duration::from_secs(1))
    );
}

#[test]
fn bind_forms() {
    assert_eq!(
        parse("TCP-L:80,bind=127.0.0.1").options.bind,
        Some(Bind::Inet {
            host: "127.0.0.1".into(),
            port: None
        })
    );
    assert_eq!(
        parse("TCP:h:80,bind=10.0.0.1:4000").options.bind,
        Some(Bind::Inet {
            host: "10.0.0.1".into(),
            port: Some(4000)
        })
    );
    assert_eq!(
        parse("TCP6:h:80,bind=[::1]:4000").options.bind,
        Some(Bind::Inet {
            host: "::1".into(),
            port: Some(4000)
        })
    );
    assert_eq!(
        parse("TCP6-L:80,bind=::1").options.bind,
        Some(Bind::Inet {
            host: "::1".into(),
            port: None
        })
    );
    assert_eq!(
        parse("VSOCK-LISTEN:80,bind=1").options.bind,
        Some(Bind::Vsock {
            cid: Some(1),
            port: None
        })
    );
    assert_eq!(
        parse("VSOCK-CONNECT:3:80,bind=:7000").options.bind,
        Some(Bind::Vsock {
            cid: None,
            port: Some(7000)
        })
    );
    assert_eq!(
        parse("UNIX-CONNECT:/s,bind=/tmp/me").options.bind,
        Some(Bind::Unix("/tmp/me".into()))
    );
    assert_eq!(
        error("TCP:h:80,bind=1.2.3.4:99999"),
        "invalid value \"1.2.3.4:99999\" for option \"bind\": port 99999 out of range 0-65535"
    );
    assert_eq!(
        error("VSOCK-LISTEN:80,bind=x"),
        "invalid value \"x\" for option \"bind\": cid \"x\" is not a number 0-4294967295 (or -1 for any)"
    );
}

#[test]
fn option_not_valid_for_type() {
    assert_eq!(
        error("TCP-LISTEN:80,frobnicate"),
        "option \"frobnicate\" is not valid for TCP-LISTEN"
    );
    assert_eq!(
        error("TCP-L:80,frobnicate=3"),
        "option \"frobnicate\" is not valid for TCP-LISTEN"
    );
    assert_eq!(
        error("TCP:h:80,fork"),
        "option \"fork\" is not valid for TCP"
    );
    assert_eq!(
        error("UNIX-LISTEN:/s,nodelay"),
        "option \"nodelay\" is not valid for UNIX-LISTEN"
    );
    assert_eq!(
        error("VSOCK-LISTEN:1,keepalive"),
        "option \"keepalive\" is not valid for VSOCK-LISTEN"
    );
    assert_eq!(
        error("TCP-LISTEN:1,unlink-early"),
        "option \"unlink-early\" is not valid for TCP-LISTEN"
    );
    assert_eq!(
        error("TCP-LISTEN:1,connect-timeout=1"),
        "option \"connect-timeout\" is not valid for TCP-LISTEN"
    );
    assert_eq!(
        error("UNIX-LISTEN:/s,bind=/x"),
        "option \"bind\" is not valid for UNIX-LISTEN"
    );
    assert_eq!(
        error("STDIO,rcvbuf=1K"),
        "option \"rcvbuf\" is not valid for STDIO"
    );
    assert_eq!(error("-,fork"), "option \"fork\" is not valid for STDIO");
}

#[test]
fn option_value_errors() {
    assert_eq!(
        error("TCP-L:1,backlog"),
        "option \"backlog\" needs a value (backlog=N)"
    );
    assert_eq!(
        error("TCP-L:1,backlog=lots"),
        "invalid value \"lots\" for option \"backlog\": not a number"
    );
    assert_eq!(
        error("TCP-L:1,fork,max-children=0"),
        "invalid value \"0\" for option \"max-children\": must be at least 1"
    );
    assert_eq!(
        error("TCP-L:1,fork=maybe"),
        "invalid value \"maybe\" for option \"fork\": expected 0 or 1"
    );
    assert_eq!(
        error("TCP:h:1,rcvbuf=12Q"),
        "invalid value \"12Q\" for option \"rcvbuf\": invalid size \"12Q\": unknown suffix \"Q\" (use K, M or G)"
    );
    assert_eq!(
        error("TCP:h:1,connect-timeout=-3"),
        "invalid value \"-3\" for option \"connect-timeout\": invalid duration \"-3\": must be zero or more seconds"
    );
    assert_eq!(
        error("TCP:h:1,connect-timeout"),
        "option \"connect-timeout\" needs a value (connect-timeout=SECONDS)"
    );
}

#[test]
fn the_original_text_is_kept_for_messages() {
    let a = parse("tcp-l:5201,fork");
    assert_eq!(a.to_string(), "tcp-l:5201,fork");
}

#[test]
fn a_bind_host_that_no_resolver_could_look_up_is_blamed_on_the_option() {
    assert_eq!(
        error("TCP:127.0.0.1:9,bind=<garbage>"),
        "invalid value \"<garbage>\" for option \"bind\": \"<garbage>\" is not an IP address or host name"
    );
    assert!(error("TCP-L:1,bind=a b:80").contains("\"a b\" is not an IP address or host name"));
    assert!(error("TCP-L:1,bind=a..b").contains("option \"bind\""));
    // Names and literals a resolver takes are still accepted.
    for host in [
        "localhost",
        "my-host.example.",
        "10.0.0.1",
        "[fe80::1]",
        "::",
    ] {
        parse(&format!("TCP:h:80,bind={host}"));
    }
}

#[test]
fn an_empty_bind_is_a_missing_value() {
    assert_eq!(
        error("TCP-L:1,bind="),
        "option \"bind\" needs a value (bind=ADDRESS)"
    );
    assert!(error("VSOCK-L:1,bind=").contains("needs a value"));
    assert!(error("UNIX:/s,bind=").contains("needs a value"));
}

#[test]
fn zero_values_that_would_break_a_connection_are_rejected_naming_the_option() {
    assert_eq!(
        error("TCP:h:1,connect-timeout=0"),
        "invalid value \"0\" for option \"connect-timeout\": must be more than 0 seconds \
         (leave the option out to wait as long as the system does)"
    );
    assert!(error("TCP:h:1,connect-timeout=0.0").contains("\"connect-timeout\""));
    assert_eq!(
        error("TCP-L:1,backlog=0"),
        "invalid value \"0\" for option \"backlog\": must be at least 1"
    );
    assert!(error("TCP-L:1,fork,max-children=0").contains("must be at least 1"));
    assert_eq!(
        error("TCP:h:1,keepidle=0"),
        "invalid value \"0\" for option \"keepidle\": not a number 1-32767"
    );
    assert!(error("TCP:h:1,keepintvl=0").contains("not a number 1-32767"));
    assert!(error("TCP:h:1,keepcnt=0").contains("not a number 1-127"));
    assert!(error("TCP:h:1,keepcnt=128").contains("\"128\""));
    // A zero pause between connect attempts is defined: retry at once.
    assert_eq!(
        parse("TCP:h:1,retry=2,interval=0").options.interval,
        Some(Duration::ZERO)
    );
}

#[test]
fn guest_cid_belongs_to_vsock_uds_listen_and_takes_a_guests_cid_only() {
    let a = parse("VSOCK-UDS-LISTEN:/run/fc.vsock:5000,fork,guest-cid=3");
    assert_eq!(a.options.guest_cid, Some(3));
    let max = parse("VSOCK-UDS-LISTEN:/run/fc.vsock:5000,guest-cid=4294967294");
    assert_eq!(max.options.guest_cid, Some(u32::MAX - 1));
    for bad in ["0", "1", "2", "4294967295", "-1", "x", "4294967296"] {
        let text = format!("VSOCK-UDS-LISTEN:/v:1,guest-cid={bad}");
        let err = Address::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("guest-cid") && err.contains(bad) && err.contains("3-4294967294"),
            "{text}: {err}"
        );
    }
    for other in ["VSOCK-LISTEN:1", "UNIX-LISTEN:/p", "TCP-LISTEN:1"] {
        let text = format!("{other},guest-cid=3");
        let err = Address::parse(&text).unwrap_err().to_string();
        assert!(err.contains("guest-cid"), "{text}: {err}");
    }
    let err = Address::parse("VSOCK-UDS-LISTEN:/v:1,guest-cid")
        .unwrap_err()
        .to_string();
    assert!(err.contains("guest-cid=CID"), "{err}");
}
