//! The prelude phase on a real engine, with a toy machine: a greeting line (`HELLO\n`) that
//! declares nothing and answers `OK\n` once the second end is open.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::addr::Address;
use crate::engine::job::PreludeJob;
use crate::engine::testing::{tcp_endpoint, unix_endpoint};
use crate::engine::{Engine, EngineConfig, Job, Second};
use crate::protocols::prelude::{DialEnd, Failure, Outcome, Prelude, Step};

#[derive(Debug, Default)]
struct Greeting {
    line: Vec<u8>,
}

impl Prelude for Greeting {
    fn name(&self) -> &'static str {
        "greeting"
    }
    fn want(&self) -> usize {
        64 - self.line.len()
    }
    fn feed(&mut self, bytes: &[u8]) -> Step {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.line.extend_from_slice(&bytes[..end]);
                if self.line != b"HELLO" {
                    return Step::Fail(Failure::new("bad-greeting", "not HELLO"));
                }
                Step::Done {
                    used: end + 1,
                    outcome: Outcome::default(),
                }
            }
            None if self.line.len() + bytes.len() >= 64 => {
                Step::Fail(Failure::new("too-long", "no newline in 64 bytes"))
            }
            None => {
                self.line.extend_from_slice(bytes);
                Step::More
            }
        }
    }
    fn dialed(&mut self, end: DialEnd<'_>) -> Vec<u8> {
        match end {
            DialEnd::Connected { .. } => b"OK\n".to_vec(),
            DialEnd::Failed { .. } => Vec::new(),
        }
    }
}

fn engine() -> Engine {
    let config = EngineConfig {
        pin_workers: false,
        ..EngineConfig::default()
    };
    Engine::start(1, Arc::new(config)).unwrap()
}

fn greeting(timeout: Duration) -> Option<PreludeJob> {
    Some(PreludeJob {
        machine: Box::new(Greeting::default()),
        timeout,
        allow_source: None,
    })
}

#[test]
fn the_greeting_is_taken_the_reply_goes_first_and_the_bytes_after_the_greeting_are_relayed() {
    let mut engine = engine();
    let (first, mut client) = tcp_endpoint();
    let (second, mut backend) = unix_endpoint();
    client.write_all(b"HEL").unwrap();
    engine.submit(Job {
        first,
        second: Second::Ready(second),
        prelude: greeting(Duration::from_secs(30)),
    });
    std::thread::sleep(Duration::from_millis(50));
    client.write_all(b"LO\nafter the greeting").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    backend.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"after the greeting");
    backend.write_all(b"answer").unwrap();
    drop(backend);
    let mut back = Vec::new();
    client.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"OK\nanswer");
    engine.stop();
}

/// A client whose greeting is bad, or does not come whole in time, is reset, and the second
/// address is never dialed.
#[test]
fn a_bad_or_late_greeting_resets_the_client_and_dials_nothing() {
    let mut engine = engine();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    backend.set_nonblocking(true).unwrap();
    let target = Arc::new(
        Address::parse(&format!(
            "TCP:127.0.0.1:{}",
            backend.local_addr().unwrap().port()
        ))
        .unwrap(),
    );
    let cases: [(&[u8], Duration); 3] = [
        (b"GOODBYE\nx", Duration::from_secs(30)),
        (b"HEL", Duration::from_millis(200)),
        (&[b'H'; 100], Duration::from_secs(30)),
    ];
    for (sent, timeout) in cases {
        let (first, mut client) = tcp_endpoint();
        client.write_all(sent).unwrap();
        engine.submit(Job {
            first,
            second: Second::Dial(target.clone()),
            prelude: greeting(timeout),
        });
        client
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 16];
        let err = client.read(&mut buf).expect_err("a reset, not an end");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{sent:?}: {err}");
        let dialed = backend.accept();
        assert!(
            dialed
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::WouldBlock),
            "{sent:?}: the backend was dialed: {dialed:?}"
        );
    }
    // The engine still serves a good greeting after them.
    let (first, mut client) = tcp_endpoint();
    client.write_all(b"HELLO\nping").unwrap();
    engine.submit(Job {
        first,
        second: Second::Dial(target),
        prelude: greeting(Duration::from_secs(30)),
    });
    backend.set_nonblocking(false).unwrap();
    let (mut server, _) = backend.accept().unwrap();
    let mut got = [0u8; 4];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    engine.stop();
}
