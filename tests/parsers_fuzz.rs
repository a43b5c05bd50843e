//! Property tests (proptest) of every parser that reads user text or a peer's bytes: the
//! address grammar (lexer and meaning), sizes and durations, the command line as a whole, and
//! the hybrid-vsock handshake reply a VMM sends. Generators build valid addresses from the
//! grammar (they must parse to what was generated), near-valid ones from the grammar's own
//! characters, and arbitrary text; no input may panic, and every rejection must name what it
//! rejects. The seed corpus in tests/corpus/ (inputs that once mattered) runs first, every time.
//!
//! `cargo test` runs a short pass (proptest's default 256 cases per property). A longer run:
//! `PROPTEST_CASES=100000 cargo test --release --test parsers_fuzz`.

use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use vsplice::addr::{Address, Family, Kind, parse_duration, parse_size};
use vsplice::cli::{Cli, options_after_bench, plan};
use vsplice::net::dial::parse_handshake_reply;

/// Inputs kept from earlier runs and hand-picked edge cases, one per line.
const ADDRESS_CORPUS: &str = include_str!("corpus/addresses.txt");

// ---- generators -------------------------------------------------------------------------

/// A keyword spelled as one of its aliases, in random case.
fn spelled(aliases: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(aliases), any::<u64>()).prop_map(|(word, bits)| {
        word.chars()
            .enumerate()
            .map(|(i, c)| {
                if bits >> (i % 64) & 1 == 1 {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
            .collect()
    })
}

fn host() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9]{0,10}){0,3}".prop_map(|h| (h.clone(), h)),
        any::<[u8; 4]>().prop_map(|o| {
            let h = format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3]);
            (h.clone(), h)
        }),
        any::<[u16; 8]>().prop_map(|s| {
            let h = std::net::Ipv6Addr::from(s).to_string();
            (format!("[{h}]"), h)
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9._-]{1,12}){1,6}"
}

/// A vsock number as written (decimal, hex or -1) and its value.
fn vsock_number() -> impl Strategy<Value = (String, u32)> {
    prop_oneof![
        any::<u32>().prop_map(|n| (n.to_string(), n)),
        any::<u32>().prop_map(|n| (format!("0x{n:x}"), n)),
        Just(("-1".to_string(), u32::MAX)),
    ]
}

/// A valid address: its text and the kind it must parse to.
fn valid_kind() -> impl Strategy<Value = (String, Kind)> {
    let family = prop::sample::select(vec![
        ("", Family::Any),
        ("4", Family::V4),
        ("6", Family::V6),
    ]);
    prop_oneof![
        (family.clone(), host(), any::<u16>()).prop_map(|((f, family), (h, host), port)| (
            format!("TCP{f}:{h}:{port}"),
            Kind::TcpConnect { host, port, family }
        )),
        (
            family,
            spelled(&["-LISTEN", "-L"]),
            any::<u16>(),
            any::<bool>()
        )
            .prop_map(|((f, family), suffix, port, fork)| (
                format!("TCP{f}{suffix}:{port}{}", if fork { ",fork" } else { "" }),
                Kind::TcpListen { port, family }
            )),
        (spelled(&["UNIX", "UNIX-CONNECT"]), path())
            .prop_map(|(k, p)| (format!("{k}:{p}"), Kind::UnixConnect { path: p.into() })),
        (spelled(&["UNIX-LISTEN", "UNIX-L"]), path())
            .prop_map(|(k, p)| (format!("{k}:{p}"), Kind::UnixListen { path: p.into() })),
        (
            spelled(&["VSOCK", "VSOCK-CONNECT"]),
            vsock_number(),
            vsock_number()
        )
            .prop_map(|(k, (c, cid), (p, port))| (
                format!("{k}:{c}:{p}"),
                Kind::VsockConnect { cid, port }
            )),
        (spelled(&["VSOCK-LISTEN", "VSOCK-L"]), vsock_number())
            .prop_map(|(k, (p, port))| (format!("{k}:{p}"), Kind::VsockListen { port })),
        (
            spelled(&["VSOCK-UDS", "VSOCK-UDS-CONNECT"]),
            path(),
            vsock_number()
        )
            .prop_map(|(k, p, (n, port))| (
                format!("{k}:{p}:{n}"),
                Kind::VsockUdsConnect {
                    path: p.into(),
                    port
                }
            )),
        (
            spelled(&["VSOCK-UDS-LISTEN", "VSOCK-UDS-L"]),
            path(),
            any::<u32>()
        )
            .prop_map(|(k, p, port)| (
                format!("{k}:{p}:{port}"),
                Kind::VsockUdsListen {
                    path: p.into(),
                    port
                }
            )),
        spelled(&["STDIO", "-"]).prop_map(|k| (k, Kind::Stdio)),
    ]
}

/// Text made of the grammar's own characters and words: mostly near misses of valid input.
fn grammar_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "TCP",
            "tcp-l",
            "UNIX",
            "VSOCK",
            "VSOCK-UDS",
            "STDIO",
            "-",
            ":",
            ":",
            ",",
            ",",
            "=",
            "fork",
            "bind",
            "backlog",
            "retry",
            "interval",
            "connect-timeout",
            "rcvbuf",
            "max-children",
            "keepidle",
            "[",
            "]",
            "(",
            ")",
            "{",
            "}",
            "'",
            "\"",
            "\\",
            "::1",
            "127.0.0.1",
            "-1",
            "0x",
            "0",
            "65536",
            "4294967296",
            "1K",
            "0.5",
            "/",
            " ",
        ])
        .prop_map(str::to_string),
        "[a-z0-9.]{1,6}",
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
}

// ---- properties -------------------------------------------------------------------------

/// Whether an address error names something the user wrote: a fragment of the input (any
/// case) or the canonical keyword of the address type it was read as.
fn names_a_token(input: &str, message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    let keyword_named = [
        "TCP",
        "UNIX",
        "VSOCK",
        "STDIO",
        "empty address",
        "unterminated quote",
        "unclosed",
        "trailing backslash",
        "empty option",
    ]
    .iter()
    .any(|k| message.contains(k));
    // The lexer removes quotes and escaping backslashes: compare what is left of both.
    let bare = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '\'' | '"' | '\\'))
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let input_bare = bare(input);
    let fragment_named = message
        .split('"')
        .skip(1)
        .step_by(2)
        .any(|quoted| input_bare.contains(&bare(quoted)));
    // An unquoted number or path in the message (`port 65536 out of range`).
    let value_named = message
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| matches!(c, '"' | '\'' | ':' | ',' | '(' | ')')))
        .filter(|w| !w.is_empty() && !w.chars().all(|c| c.is_ascii_alphabetic()))
        .any(|w| input_bare.contains(&bare(w)));
    keyword_named || fragment_named || value_named || lower.contains(&input.to_ascii_lowercase())
}

/// Parses without panicking; an error must name a token.
fn check_address(input: &str) {
    if let Err(e) = Address::parse(input) {
        let message = e.to_string();
        assert!(!message.is_empty(), "{input:?}: empty message");
        assert!(
            names_a_token(input, &message),
            "{input:?}: the message names nothing the user wrote: {message}"
        );
    }
}

/// The whole command line, as `main` sees it (without running anything): no panic, and every
/// rejection is a usage error (exit status 2).
fn check_command_line(words: &[String]) {
    let mut argv = vec!["vsplice".to_string()];
    argv.extend_from_slice(words);
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    let argv = match options_after_bench(argv) {
        Ok(a) => a,
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{words:?}: {e}");
            return;
        }
    };
    match Cli::try_parse_from(argv) {
        Err(e) => assert!(
            matches!(e.exit_code(), 0 | 2),
            "{words:?}: clap exit {}",
            e.exit_code()
        ),
        Ok(cli) => {
            if let Err(e) = plan(cli) {
                assert_eq!(e.exit_code(), 2, "{words:?}: {e}");
            }
        }
    }
}

#[test]
fn the_seed_corpus_parses_without_panics_and_its_errors_name_a_token() {
    let mut n = 0;
    for line in ADDRESS_CORPUS.lines().filter(|l| !l.starts_with('#')) {
        check_address(line);
        check_command_line(&[line.to_string(), "TCP:127.0.0.1:1".to_string()]);
        n += 1;
    }
    assert!(n > 50, "the corpus has {n} entries");
}

proptest! {
    #[test]
    fn generated_valid_addresses_parse_to_what_was_generated(
        (text, kind) in valid_kind(),
    ) {
        let a = Address::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&a.kind, &kind, "{}", text);
        prop_assert_eq!(Address::parse(&a.text).unwrap(), a.clone());
    }

    #[test]
    fn generated_options_reach_the_parsed_address(
        port in any::<u16>(),
        backlog in 1u32..100_000,
        children in 1usize..100_000,
        rcvbuf in 1usize..(1 << 20),
        timeout_ms in 1u64..10_000_000,
        retry in any::<u32>(),
        keepcnt in 1u32..=127,
    ) {
        let text = format!(
            "TCP-LISTEN:{port},fork,max-children={children},backlog={backlog},rcvbuf={rcvbuf},\
             keepcnt={keepcnt},bind=127.0.0.1"
        );
        let a = Address::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert!(a.options.fork);
        prop_assert_eq!(a.options.max_children, Some(children));
        prop_assert_eq!(a.options.backlog, Some(backlog));
        prop_assert_eq!(a.options.rcvbuf, Some(rcvbuf));
        prop_assert_eq!(a.options.keepcnt, Some(keepcnt));
        let secs = timeout_ms as f64 / 1000.0;
        let text = format!("TCP:h:{port},connect-timeout={secs},retry={retry},sndbuf={rcvbuf}K");
        let a = Address::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let got = a.options.connect_timeout.unwrap();
        prop_assert!(got.abs_diff(Duration::from_millis(timeout_ms)) < Duration::from_micros(1));
        prop_assert_eq!(a.options.retry, retry);
        prop_assert_eq!(a.options.sndbuf, Some(rcvbuf << 10));
    }

    #[test]
    fn near_valid_addresses_never_panic_and_errors_name_a_token(text in grammar_soup()) {
        check_address(&text);
    }

    #[test]
    fn arbitrary_text_never_panics_and_errors_name_a_token(text in any::<String>()) {
        check_address(&text);
    }

    #[test]
    fn a_valid_address_with_one_character_changed_never_panics(
        (text, _) in valid_kind(),
        at in any::<prop::sample::Index>(),
        c in prop_oneof![any::<char>(), prop::sample::select(vec![':', ',', '=', '[', '"', '\\', '('])],
    ) {
        let mut chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        chars[i] = c;
        check_address(&chars.into_iter().collect::<String>());
    }

    #[test]
    fn command_lines_never_panic_and_every_reject_is_a_usage_error(
        words in prop::collection::vec(prop_oneof![
            grammar_soup(),
            valid_kind().prop_map(|(t, _)| t),
            prop::sample::select(vec![
                "-b", "-t", "-T", "-u", "-U", "-d", "-dd", "-S", "--threads", "--mode", "copy",
                "splice", "--receive-budget", "0", "64K", "bench", "-1", "1e999", "NaN",
            ]).prop_map(str::to_string),
        ], 0..6),
    ) {
        // `bench` subcommands that would run (demo, server) are not generated whole; the
        // planner alone runs for relay lines, and it opens nothing.
        if words.iter().any(|w| w == "bench") {
            return Ok(());
        }
        check_command_line(&words);
    }

    #[test]
    fn sizes_round_trip_and_garbage_never_panics(
        n in 0u64..(1 << 32),
        suffix in prop::sample::select(vec![
            ("", 0), ("b", 0), ("K", 10), ("k", 10), ("KiB", 10), ("kb", 10), ("M", 20),
            ("MiB", 20), ("g", 30), ("GB", 30),
        ]),
        garbage in any::<String>(),
    ) {
        let (s, shift) = suffix;
        prop_assert_eq!(parse_size(&format!("{n}{s}")), Ok((n as usize) << shift));
        if let Err(e) = parse_size(&garbage) {
            prop_assert!(e.contains(&format!("\"{garbage}\"")), "{}", e);
        }
    }

    #[test]
    fn durations_round_trip_and_garbage_never_panics(
        ms in 0u64..1_000_000_000_000,
        garbage in prop_oneof![
            any::<String>(),
            "-?[0-9]{0,12}(\\.[0-9]{0,12})?(e-?[0-9]{1,4})?",
            prop::sample::select(vec!["inf", "-inf", "NaN", "1e999", "-0", "+1", " 1 "])
                .prop_map(str::to_string),
        ],
    ) {
        let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
        let d = parse_duration(&secs).map_err(TestCaseError::fail)?;
        prop_assert!(d.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(1), "{}", secs);
        match parse_duration(&garbage) {
            Ok(d) => prop_assert!(d <= Duration::from_secs(1_000_000_000)),
            Err(e) => prop_assert!(e.contains(&format!("\"{garbage}\"")), "{}", e),
        }
    }

    #[test]
    fn handshake_replies_parse_ok_port_and_nothing_else_panics(
        port in any::<u32>(),
        cr in any::<bool>(),
        junk in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let line = format!("OK {port}{}", if cr { "\r" } else { "" });
        prop_assert_eq!(parse_handshake_reply(line.as_bytes()), Ok(port));
        match parse_handshake_reply(&junk) {
            Ok(p) => {
                let text = String::from_utf8_lossy(&junk);
                prop_assert!(text.starts_with("OK "), "accepted {:?}", text);
                prop_assert!(text.contains(&p.to_string()));
            }
            Err(e) => prop_assert!(e.contains("reply"), "{}", e),
        }
    }
}
