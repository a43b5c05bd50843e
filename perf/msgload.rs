//! UDP message load for the message benchmark (perf/messages.py), where `vsplice bench
//! --seqpacket` does not fit (UDP has no connection for the bench's control):
//!
//! `msgload udp --to HOST:PORT --sink HOST:PORT --len N --time S` binds a sink at `--sink`,
//! sends `N`-byte datagrams to `--to` (a relay that forwards to the sink, or the sink itself)
//! as fast as one thread can for `S` seconds, waits for stragglers, and prints one JSON line:
//! datagrams sent and received, received per second (over the sending time), and the
//! datagrams that arrived with a wrong length or wrong bytes (a boundary lost; must be 0).
//! UDP may drop what a slower hop cannot take: `received` is what a path delivers at full
//! load, and `sent - received` its loss.
//!
//! Each datagram starts with its sequence number (8 bytes, little-endian); the rest is that
//! number's low byte, so a merged, split or mixed datagram shows.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn arg_after(args: &[String], flag: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| panic!("msgload: {flag} is needed"))
}

/// What the sink counted.
#[derive(Default)]
struct Sunk {
    received: u64,
    bad: u64,
    out_of_order: u64,
}

fn sink(socket: UdpSocket, len: usize, stop: Arc<AtomicBool>) -> Sunk {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut sunk = Sunk::default();
    let mut last: Option<u64> = None;
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let seq = u64::from_le_bytes(buf[..8.min(n)].try_into().unwrap_or([0xff; 8]));
                let fill = seq as u8;
                if n != len || buf[8..n].iter().any(|&b| b != fill) {
                    sunk.bad += 1;
                    continue;
                }
                if last.is_some_and(|l| seq <= l) {
                    sunk.out_of_order += 1;
                }
                last = Some(seq);
                sunk.received += 1;
            }
            Err(_) if stop.load(Ordering::SeqCst) => return sunk,
            Err(_) => {}
        }
    }
}

fn udp(args: &[String]) {
    let to = arg_after(args, "--to");
    let sink_at = arg_after(args, "--sink");
    let len: usize = arg_after(args, "--len").parse().expect("--len");
    assert!((8..=65507).contains(&len), "--len is 8 to 65507");
    let seconds: f64 = arg_after(args, "--time").parse().expect("--time");
    let sink_socket = UdpSocket::bind(&sink_at).expect("bind the sink");
    let stop = Arc::new(AtomicBool::new(false));
    let sink_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || sink(sink_socket, len, stop))
    };
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.connect(&to).expect("--to");
    let mut buf = vec![0u8; len];
    let mut sent: u64 = 0;
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    while sent % 256 != 0 || Instant::now() < until {
        buf[..8].copy_from_slice(&sent.to_le_bytes());
        buf[8..].fill(sent as u8);
        // A full queue on the way (ECONNREFUSED before a relay's session, ENOBUFS) drops
        // this one, as the network would.
        if sender.send(&buf).is_ok() {
            sent += 1;
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    // Stragglers still in the relay's queues.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let sunk = sink_thread.join().unwrap();
    println!(
        "{{\"sent\":{sent},\"received\":{},\"seconds\":{send_seconds:.4},\
         \"received_per_second\":{:.1},\"bad\":{},\"out_of_order\":{}}}",
        sunk.received,
        sunk.received as f64 / send_seconds,
        sunk.bad,
        sunk.out_of_order
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("udp") => udp(&args),
        _ => {
            eprintln!("usage: msgload udp --to HOST:PORT --sink HOST:PORT --len N --time S");
            std::process::exit(2);
        }
    }
}
