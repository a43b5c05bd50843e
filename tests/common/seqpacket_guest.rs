//! vsock SEQPACKET through vsplice, run inside the guest lab (tests/vsock_guest.rs): a UNIX
//! SEQPACKET client, a relay to vsock SEQPACKET, a second relay from vsock SEQPACKET back to a
//! UNIX SEQPACKET server, 20,000 messages each way at once. vsock is then both the source and
//! the sink of a relay in each direction, and every message's length, bytes and order is
//! checked at the far end (vsock's kernel drops zero-length messages, so the sequences have
//! none).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{Shutdown, accept, shutdown};

use super::messages::{
    Framing, Sequence, check_sequence, recv_timeout, send_sequence, seqpacket_connect,
    seqpacket_listen,
};
use super::{Relay, Scratch};

/// Sends `out` and checks `back` on `fd` at once, then half-closes.
fn exchange(fd: OwnedFd, out: Sequence, back: Sequence) -> Result<(), String> {
    recv_timeout(fd.as_fd(), 300);
    let fd = Arc::new(fd);
    let sender = {
        let fd = fd.clone();
        std::thread::spawn(move || {
            send_sequence(fd.as_fd(), out, Framing::Packets).map_err(|e| e.to_string())?;
            shutdown(fd.as_raw_fd(), Shutdown::Write).map_err(|e| e.to_string())
        })
    };
    let checked = check_sequence(fd.as_fd(), back, Framing::Packets);
    checked.and(sender.join().unwrap())
}

/// The scenario (run in the guest).
pub fn vsock_seqpacket_both_ways() {
    const COUNT: usize = 20_000;
    let dir = Scratch::new("vsock-seqpacket");
    let front = dir.path("front.sock");
    let back = dir.path("back.sock");
    let server = seqpacket_listen(&back, 16);
    let mut inner = Relay::start(&[
        "VSOCK-LISTEN:6201,socktype=seqpacket",
        &format!("UNIX-CONNECT:{},socktype=seqpacket", back.display()),
    ]);
    let mut outer = Relay::start(&[
        &format!("UNIX-LISTEN:{},socktype=5", front.display()),
        "VSOCK-CONNECT:1:6201,socktype=5",
    ]);
    let up = Sequence {
        seed: 11,
        count: COUNT,
        max: 65535,
        empty: false,
    };
    let down = Sequence {
        seed: 12,
        count: COUNT,
        max: 65535,
        empty: false,
    };
    let serving = std::thread::spawn(move || exchange(accept(&server).unwrap(), down, up));
    let client = seqpacket_connect(&front);
    let at_client = exchange(client, up, down);
    let at_server = serving.join().unwrap();
    let logs =
        |outer: &Relay, inner: &Relay| format!("outer:\n{}\ninner:\n{}", outer.log(), inner.log());
    assert_eq!(at_client, Ok(()), "client side; {}", logs(&outer, &inner));
    assert_eq!(at_server, Ok(()), "server side; {}", logs(&outer, &inner));
    for status in [
        outer.wait_exit(Duration::from_secs(120)),
        inner.wait_exit(Duration::from_secs(120)),
    ] {
        assert!(status.success(), "{status}; {}", logs(&outer, &inner));
    }
    for relay in [&outer, &inner] {
        assert!(
            relay
                .log()
                .contains(&format!("({COUNT} + {COUNT} messages)")),
            "every message counted once; {}",
            logs(&outer, &inner)
        );
    }
}
