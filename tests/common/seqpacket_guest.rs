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

/// `vsplice bench --seqpacket` over real vsock SEQPACKET (run in the guest): every message
/// counted whole at both ends and its bytes checked, both ways at once; a sweep by message
/// size; through a relay from UNIX SEQPACKET to the vsock server; and small messages, which
/// the guest's kernel may reset (src/bench/message.rs says why: so the cases that must pass
/// use 16K-128K messages, where it was never seen). The
/// guest is one slow CPU, so no rate is judged.
pub fn bench_seqpacket_over_vsock() {
    let mut server = Relay::spawn(
        &["bench", "server", "VSOCK-LISTEN:6202", "--seqpacket"],
        std::process::Stdio::null(),
        std::process::Stdio::piped(),
    );
    server.wait_for_stdout("listening on");
    let client = |args: &[&str]| {
        let mut all = vec!["bench", "client", "VSOCK-CONNECT:1:6202", "--seqpacket"];
        all.extend_from_slice(args);
        super::vsplice_json(&all)
    };
    // 16 MiB each way in 64K messages (256 a way), the pattern checked.
    let doc = client(&["--bytes", "16M", "--len", "64K", "--bidir", "--verify"]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    for dir in ["sum_client_to_server", "sum_server_to_client"] {
        let m = &doc[dir]["messages"];
        assert_eq!(m["sender_messages"], 256, "{dir}: {doc}");
        assert_eq!(m["receiver_messages"], 256, "{dir}: {doc}");
        assert_eq!(doc[dir]["receiver_bytes"], 16 << 20, "{dir}");
    }
    let doc = client(&["--time", "0.5", "--sweep", "16K,64K,128K"]);
    let rows = doc["sweep"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
        let m = &r["sum_client_to_server"]["messages"];
        assert_eq!(m["sender_messages"], m["receiver_messages"], "{r}");
        assert!(m["receiver_messages"].as_u64().unwrap() > 0, "{r}");
    }
    // 64-byte messages into the default buffer: the kernel may reset the connection (the
    // receive queue overflows); if it does, the error says so.
    let out = std::process::Command::new(super::vsplice_bin())
        .args(["bench", "client", "VSOCK-CONNECT:1:6202", "--seqpacket"])
        .args(["--time", "1", "--len", "64"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || err.contains("its receive queue overflowed with small messages"),
        "{err}"
    );
    let dir = Scratch::new("bench-seqpacket-vsock");
    let front = dir.path("front.sock");
    let mut relay = Relay::start(&[
        &format!("UNIX-LISTEN:{},socktype=5,fork", front.display()),
        "VSOCK-CONNECT:1:6202,socktype=5",
    ]);
    let doc = super::vsplice_json(&[
        "bench",
        "client",
        &format!("UNIX-CONNECT:{}", front.display()),
        "--seqpacket",
        "--bytes",
        "8M",
        "--len",
        "64K",
        "--reverse",
        "--verify",
    ]);
    assert_eq!(doc["errors"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(
        doc["sum_server_to_client"]["messages"]["receiver_messages"],
        128
    );
    assert!(relay.stop().success(), "{}", relay.log());
    assert!(server.stop().success());
}
