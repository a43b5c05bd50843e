//! Load generation for the perf harness (perf/run.py), where iperf3 does not fit:
//!
//! - `loadgen echo ADDR`: an epoll echo server that holds any number of connections;
//! - `loadgen crr ADDR --time S --concurrency N --len 64`: short connections (connect, send
//!   LEN bytes, read the echo, close) as fast as N threads can; prints JSON;
//! - `loadgen hold ADDR --count N`: opens N connections, checks each echoes one byte (so every
//!   one is really served), prints `held N` and keeps them open until stdin closes;
//! - `loadgen stream ADDR --time S`: one bulk stream to an echo server; prints the echoed
//!   throughput (each byte crosses a relay twice).
//!
//! ADDR is `host:port`.

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

fn arg_after(args: &[String], flag: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

fn raise_nofile() {
    let _ = nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        1 << 20,
        1 << 20,
    );
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Echo server: every byte read is written back. Buffers what a full socket refuses.
fn echo(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    // std listens with a backlog of 128; bursts through a relay need more.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::new(4096).unwrap())?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    const LISTENER: u64 = u64::MAX;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER))?;
    let mut conns: HashMap<u64, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut next = 0u64;
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; 64 * 1024];
    eprintln!("echo listening on {addr}");
    loop {
        let n = epoll.wait(&mut events, EpollTimeout::NONE)?;
        for ev in &events[..n] {
            let key = ev.data();
            if key == LISTENER {
                while let Ok((s, _)) = listener.accept() {
                    s.set_nonblocking(true)?;
                    let _ = s.set_nodelay(true);
                    epoll.add(
                        &s,
                        EpollEvent::new(
                            EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLET,
                            next,
                        ),
                    )?;
                    conns.insert(next, (s, Vec::new()));
                    next += 1;
                }
                continue;
            }
            let mut close = false;
            if let Some((s, pending)) = conns.get_mut(&key) {
                loop {
                    if !pending.is_empty() {
                        match s.write(pending) {
                            Ok(k) => {
                                pending.drain(..k);
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                close = true;
                                break;
                            }
                        }
                        if !pending.is_empty() {
                            break;
                        }
                    }
                    match s.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(k) => pending.extend_from_slice(&buf[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if close {
                if let Some((s, _)) = conns.remove(&key) {
                    let _ = epoll.delete(s.as_fd());
                }
            }
        }
    }
}

/// Short connections per second.
fn crr(addr: &str, seconds: f64, concurrency: usize, len: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (stop, done, errors, addr) =
                (stop.clone(), done.clone(), errors.clone(), addr.to_string());
            std::thread::spawn(move || {
                let msg = vec![b'x'; len];
                let mut back = vec![0u8; len];
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> io::Result<()> {
                        let mut s = TcpStream::connect(&addr)?;
                        s.set_nodelay(true)?;
                        s.set_read_timeout(Some(Duration::from_secs(5)))?;
                        s.write_all(&msg)?;
                        s.read_exact(&mut back)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{{\"connections\": {n}, \"errors\": {}, \"seconds\": {elapsed:.3}, \"per_second\": {:.1}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / elapsed
    );
}

/// One bulk stream for `seconds`, echoed back by the server; prints the echoed throughput.
fn stream(addr: &str, seconds: f64) {
    let s = TcpStream::connect(addr).expect("connect");
    let mut reader = s.try_clone().expect("clone");
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k as u64,
            }
        }
    });
    let chunk = vec![b'z'; 128 * 1024];
    let started = Instant::now();
    let mut w = &s;
    while started.elapsed().as_secs_f64() < seconds {
        if w.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let echoed = counter.join().unwrap_or(0);
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"bytes\": {echoed}, \"seconds\": {elapsed:.3}, \"gbit\": {:.3}}}",
        echoed as f64 * 8.0 / elapsed / 1e9
    );
}

/// Opens `count` connections, checks each is served, holds them until stdin closes.
fn hold(addr: &str, count: usize) {
    let mut conns = Vec::with_capacity(count);
    let mut failed = 0usize;
    let started = Instant::now();
    for i in 0..count {
        match TcpStream::connect(addr) {
            Ok(s) => conns.push(s),
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("connect {i}: {e}");
                }
            }
        }
    }
    // One byte each way on every connection proves the relay serves it end to end.
    let mut served = 0usize;
    for s in &mut conns {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut b = [0u8; 1];
        if s.write_all(b"p").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"p" {
            served += 1;
        }
    }
    println!(
        "held {} served {served} failed {failed} in {:.1} s",
        conns.len(),
        started.elapsed().as_secs_f64()
    );
    let _ = io::stdout().flush();
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    // Check again at the end: every held connection must still work.
    let mut still = 0usize;
    for s in &mut conns {
        let mut b = [0u8; 1];
        if s.write_all(b"q").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"q" {
            still += 1;
        }
    }
    println!("still served {still}");
}

fn main() {
    // SAFETY: ignoring SIGPIPE installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    raise_nofile();
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(addr)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: loadgen echo|crr|hold|stream ADDR [options]");
        std::process::exit(2);
    };
    match mode.as_str() {
        "echo" => {
            if let Err(e) = echo(addr) {
                eprintln!("echo: {e}");
                std::process::exit(1);
            }
        }
        "crr" => crr(
            addr,
            arg_after(&args, "--time", "5").parse().unwrap_or(5.0),
            arg_after(&args, "--concurrency", "8").parse().unwrap_or(8),
            arg_after(&args, "--len", "64").parse().unwrap_or(64),
        ),
        "hold" => hold(
            addr,
            arg_after(&args, "--count", "1000").parse().unwrap_or(1000),
        ),
        "stream" => stream(addr, arg_after(&args, "--time", "5").parse().unwrap_or(5.0)),
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
