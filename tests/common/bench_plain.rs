//! `vsplice bench` against a plain reader and writer (issue 25, item 4): for vsock, UNIX and
//! TCP in one guest, the same bytes moved by a plain writer (128 KiB `write`s) to a plain
//! reader in another process (128 KiB `read`s, timed from its accept to end of file), and by
//! `vsplice bench client --bytes N --len 128K` to `vsplice bench server` (the receiver's
//! rate), interleaved over rounds; prints the medians and their ratio. With `--before PATH`
//! the bench of another vsplice build runs too, in the same rounds.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::speed::{Family, Spot, median};
use super::{MIB, Relay, Scratch};

const LEN: usize = 128 * 1024;

/// The guest role `--plain-sink SPOT`: listens, prints `ready`, accepts one connection,
/// reads it to end of file in 128 KiB reads, and prints `BYTES SECONDS` (accept to end).
pub fn plain_sink(spot: &str) {
    let listen = Spot::from_arg(spot).listen();
    println!("ready");
    io::stdout().flush().unwrap();
    let mut s = listen.accept().expect("plain sink accept");
    let started = Instant::now();
    let mut buf = vec![0u8; LEN];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("plain sink read: {e}"),
        }
    }
    println!("{got} {}", started.elapsed().as_secs_f64());
}

/// Gbit/s of `bytes` from a plain writer in this process to a `--plain-sink` process.
fn plain_run(spot: &Spot, bytes: usize, trace: Option<&Path>) -> f64 {
    let exe = std::env::current_exe().expect("own path");
    let mut sink = match trace {
        Some(dir) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-c", "-o"])
                .arg(dir.join("plain.strace"))
                .arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut sink = sink
        .arg("--plain-sink")
        .arg(spot.to_arg())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the plain sink");
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let mut client = spot.connect_when_up();
    let data = vec![0x5au8; LEN];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(LEN);
        client.write_all(&data[..n]).expect("plain writer");
        left -= n;
    }
    client.shutdown_write().expect("plain writer shutdown");
    let line = lines.next().expect("the sink's figures").unwrap();
    assert!(sink.wait().unwrap().success());
    let (got, secs) = line.split_once(' ').expect("BYTES SECONDS");
    assert_eq!(got.parse::<usize>().unwrap(), bytes, "plain sink: {line}");
    bytes as f64 * 8.0 / secs.parse::<f64>().unwrap() / 1e9
}

/// Gbit/s the bench server received from the bench client, both from the build at `bin`.
fn bench_run(bin: &Path, spot: &Spot, bytes: usize, trace: Option<&Path>) -> f64 {
    let command = |side: &str| match trace {
        Some(dir) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-c", "-o"])
                .arg(dir.join(format!("{side}.strace")))
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let listen = spot.vsplice_listen();
    let mut server = Relay::spawn_with(
        command("server"),
        &["bench", "server", &listen],
        Stdio::null(),
        Stdio::piped(),
    );
    server.wait_for_stdout("listening on");
    let connect = spot.vsplice_connect();
    let size = format!("{bytes}");
    let run = command("client")
        .args([
            "bench", "client", &connect, "--bytes", &size, "--len", "128K",
        ])
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("run the bench client");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench client: {}\n{stdout}",
        String::from_utf8_lossy(&run.stderr)
    );
    if trace.is_some() {
        // SIGTERM to strace does not reach the traced server: signal strace's child.
        let pid = server.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        for child in children.split_whitespace() {
            let child = nix::unistd::Pid::from_raw(child.parse().unwrap());
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGTERM);
        }
        server.wait_exit(std::time::Duration::from_secs(30));
    } else {
        server.stop();
    }
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("bench JSON");
    let sum = &doc["sum_client_to_server"];
    assert_eq!(sum["receiver_bytes"], bytes as u64, "{doc}");
    sum["receiver_bits_per_second"].as_f64().expect("a rate") / 1e9
}

/// The measurement scenario `bench_against_a_plain_reader_and_writer`.
pub fn run() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| super::number_arg(&args, name, default);
    let rounds = arg("--rounds", 3);
    let bytes = arg("--mib", 256) * MIB;
    let mut bins = vec![PathBuf::from(super::vsplice_bin())];
    if let Some(i) = args.iter().position(|a| a == "--before") {
        bins.push(PathBuf::from(&args[i + 1]));
    }
    let scratch = Scratch::new("bench-plain");
    let families = [Family::Vsock, Family::Unix, Family::Tcp];
    // figures[family][0] is the plain pair, then one per bench build.
    let mut figures = vec![vec![Vec::new(); bins.len() + 1]; families.len()];
    for _ in 0..rounds {
        for (f, family) in families.iter().enumerate() {
            figures[f][0].push(plain_run(&Spot::fresh(*family, &scratch.0), bytes, None));
            for (b, bin) in bins.iter().enumerate() {
                let rate = bench_run(bin, &Spot::fresh(*family, &scratch.0), bytes, None);
                figures[f][b + 1].push(rate);
            }
        }
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "vsplice bench against a plain reader and writer in the guest (Linux {}), one stream, \
         {} MiB a run, 128 KiB writes and reads, median of {rounds} interleaved rounds, Gbit/s \
         (relative figures: an emulated guest)",
        kernel.trim(),
        bytes / MIB
    );
    let mut header = format!(
        "{:<8} | {:>8} | {:>8} | {:>11}",
        "family", "plain", "bench", "bench/plain"
    );
    if bins.len() > 1 {
        header.push_str(&format!(
            " | {:>12} | {:>12}",
            "bench before", "before/plain"
        ));
    }
    println!("{header}");
    for (f, family) in families.iter().enumerate() {
        let m: Vec<f64> = figures[f].iter_mut().map(|v| median(v)).collect();
        let mut row = format!(
            "{:<8} | {:>8.3} | {:>8.3} | {:>11.2}",
            family.name(),
            m[0],
            m[1],
            m[1] / m[0]
        );
        if bins.len() > 1 {
            row.push_str(&format!(" | {:>12.3} | {:>12.2}", m[2], m[2] / m[0]));
        }
        println!("{row}");
    }
    // `--strace`: one more run per family of the plain reader and of each bench build with
    // both ends under `strace -f -c`, to see what each spends per byte (the rates then mean
    // nothing): the system calls made 16 times or more, and the total.
    if args.iter().any(|a| a == "--strace") {
        let dir = scratch.0.join("trace");
        std::fs::create_dir_all(&dir).unwrap();
        let show = |what: String, file: &str| {
            let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            println!("{what}, {} MiB:", bytes / MIB);
            for line in text.lines().filter(|l| many_calls(l)) {
                println!("  {line}");
            }
        };
        for family in families {
            plain_run(&Spot::fresh(family, &scratch.0), bytes, Some(&dir));
            show(
                format!("plain reader over {}", family.name()),
                "plain.strace",
            );
            for bin in &bins {
                bench_run(bin, &Spot::fresh(family, &scratch.0), bytes, Some(&dir));
                for side in ["client", "server"] {
                    show(
                        format!("{} bench {side} over {}", bin.display(), family.name()),
                        &format!("{side}.strace"),
                    );
                }
            }
        }
    }
}

/// A line of `strace -c` worth printing: the header, the total, or a system call made 16
/// times or more (the calls column, the fourth).
fn many_calls(line: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.get(3).map(|c| c.parse::<u64>()) {
        Some(Ok(calls)) => calls >= 16 || fields.last() == Some(&"total"),
        _ => line.contains("syscall"),
    }
}
