//! Property tests of the bench control protocol's parsers, the code that faces untrusted
//! bytes at both ends: the server's hello reader and parameter check, each end's bounded
//! line reader and message decoding. Generators produce arbitrary bytes, hellos built from the
//! protocol's grammar with hostile numbers, and valid lines with bytes flipped. A short run is
//! part of `cargo test`; `PROPTEST_CASES=N` makes it longer.

use std::io::{BufReader, Cursor, Read};

use proptest::prelude::*;

use super::proto::*;

/// A small bound, so generated lines cross it often.
const SMALL_MAX: usize = 300;

fn direction() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("forward".to_string()),
        Just("reverse".to_string()),
        Just("bidir".to_string()),
        "[a-z]{0,8}",
    ]
}

/// Numbers a hostile peer would try: edges, powers of two, anything.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u32..64).prop_map(|s| (1u64 << s).to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("1e30".to_string()),
        Just("18446744073709551616".to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
    ]
}

fn workload() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("stream".to_string()),
        Just("rr".to_string()),
        Just("crr".to_string()),
        "[a-z]{0,5}",
    ]
}

fn limit() -> impl Strategy<Value = String> {
    prop_oneof![
        number().prop_map(|n| format!("{{\"time\":{{\"ms\":{n}}}}}")),
        number().prop_map(|n| format!("{{\"bytes\":{{\"total\":{n}}}}}")),
        "[ -~]{0,20}",
    ]
}

/// A control hello from the protocol's grammar with hostile values in every field.
fn hostile_hello() -> impl Strategy<Value = String> {
    (
        number(),
        number(),
        number(),
        direction(),
        limit(),
        any::<bool>(),
        any::<bool>(),
        "[ -~]{0,40}",
        (prop::option::of(number()), workload()),
    )
        .prop_map(|(version, streams, len, dir, limit, verify, zc, cookie, (vsock, workload))| {
            let cookie = cookie.replace(['"', '\\'], "");
            let vsock = vsock.map_or(String::new(), |n| format!(",\"vsock_buffer\":{n}"));
            format!(
                "{{\"type\":\"control\",\"version\":{version},\"cookie\":\"{cookie}\",\"params\":{{\"streams\":{streams},\"len\":{len},\"direction\":\"{dir}\",\"limit\":{limit},\"verify\":{verify},\"zerocopy\":{zc},\"workload\":\"{workload}\"{vsock}}}}}\n"
            )
        })
}

fn valid_params() -> impl Strategy<Value = Params> {
    (
        1u32..=MAX_STREAMS,
        1usize..=MAX_LEN,
        prop_oneof![
            Just(TestDirection::Forward),
            Just(TestDirection::Reverse),
            Just(TestDirection::Bidir)
        ],
        prop_oneof![
            (1u64..=MAX_TIME_MS).prop_map(|ms| Limit::Time { ms }),
            (1u64..=MAX_BYTES).prop_map(|total| Limit::Bytes { total }),
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(streams, len, direction, limit, verify, zerocopy)| Params {
                streams,
                len: len.min((MAX_BUFFERED / u64::from(streams)) as usize).max(1),
                direction,
                limit,
                verify,
                zerocopy,
                workload: Workload::Stream,
                vsock_buffer: None,
                messages: false,
            },
        )
}

/// What the server accepts from a hello is within every bound.
fn assert_accepted_is_bounded(hello: &Hello) {
    if let Hello::Control { params, .. } = hello {
        if params.check().is_ok() {
            assert!((1..=MAX_STREAMS).contains(&params.streams));
            assert!((1..=MAX_LEN).contains(&params.len));
            assert!(u64::from(params.streams) * params.len as u64 <= MAX_BUFFERED);
            if let Some(b) = params.vsock_buffer {
                assert!((4096..=MAX_VSOCK_BUFFER).contains(&b));
            }
            match params.limit {
                Limit::Time { ms } => assert!((1..=MAX_TIME_MS).contains(&ms)),
                Limit::Bytes { total } => assert!((1..=MAX_BYTES).contains(&total)),
            }
            assert!(params.max_line() <= MAX_LINE + LINE_PER_STREAM * MAX_STREAMS as usize);
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_give_a_bounded_line_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut r = BufReader::new(Cursor::new(bytes.clone()));
        let server_side = recv_line::<ClientMsg>(&mut r, SMALL_MAX);
        let consumed = r.into_inner().position() as usize;
        // The reader consumed one line at most, and never more than the bound allows.
        prop_assert!(consumed <= bytes.len());
        if server_side.is_ok() {
            prop_assert!(consumed <= SMALL_MAX);
        }
        let mut r = BufReader::new(Cursor::new(bytes));
        let _ = recv_line::<ServerMsg>(&mut r, SMALL_MAX);
    }

    #[test]
    fn a_line_past_the_bound_is_refused_without_reading_the_rest(extra in 1usize..5000, tail in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut wire = vec![b' '; SMALL_MAX + extra];
        wire.extend_from_slice(&tail);
        let total = wire.len();
        let mut r = Cursor::new(wire);
        let err = recv_line::<ServerMsg>(&mut r, SMALL_MAX).unwrap_err();
        prop_assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        prop_assert!(r.position() as usize <= SMALL_MAX + 1 || r.position() as usize == total);
    }

    #[test]
    fn any_bytes_as_a_hello_never_panic_and_stop_at_the_first_line(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let mut r = Cursor::new(bytes.clone());
        let hello = read_hello(&mut r);
        let consumed = r.position() as usize;
        prop_assert!(consumed <= 4097);
        if let Ok(h) = hello {
            prop_assert_eq!(bytes[consumed - 1], b'\n');
            assert_accepted_is_bounded(&h);
        }
    }

    #[test]
    fn hostile_hellos_from_the_grammar_are_bounded_or_refused(line in hostile_hello()) {
        if let Ok(h) = read_hello(&mut Cursor::new(line.as_bytes())) {
            assert_accepted_is_bounded(&h);
        }
    }

    #[test]
    fn mutated_valid_lines_never_panic(params in valid_params(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)) {
        let mut wire = Vec::new();
        send_line(&mut wire, &Hello::Control { version: VERSION, cookie: "c".into(), params }).unwrap();
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        if let Ok(h) = read_hello(&mut Cursor::new(&wire)) {
            assert_accepted_is_bounded(&h);
        }
        let _ = recv_line::<ServerMsg>(&mut BufReader::new(Cursor::new(&wire)), MAX_LINE);
        let _ = recv_line::<ClientMsg>(&mut BufReader::new(Cursor::new(&wire)), MAX_LINE);
    }

    #[test]
    fn valid_parameters_pass_both_ends_and_round_trip(params in valid_params()) {
        prop_assert!(params.check().is_ok(), "{:?}", params.check());
        let hello = Hello::Control { version: VERSION, cookie: "c".into(), params };
        let mut wire = Vec::new();
        send_line(&mut wire, &hello).unwrap();
        wire.extend_from_slice(b"rest");
        let mut r = Cursor::new(&wire);
        prop_assert_eq!(read_hello(&mut r).unwrap(), hello);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        prop_assert_eq!(rest, b"rest".to_vec());
    }
}
