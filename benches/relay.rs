//! Criterion benches: address parsing, relay throughput through the engine (UNIX socketpair
//! and TCP loopback, several `-b` sizes and the three data paths), and vsock throughput
//! against a real bench server when `VSPLICE_BENCH_VSOCK=cid:port` names one.
//!
//! `cargo bench` runs them all; `cargo bench -- parse` picks by name.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::mpsc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vsplice::addr::Address;
use vsplice::engine::{Engine, EngineConfig, Job, Mode, RelayOptions, Second};
use vsplice::net::endpoint::Endpoint;
use vsplice::sys::socket::Socket;

const CHUNK: usize = 8 << 20;

fn parse(c: &mut Criterion) {
    let samples = [
        "TCP-LISTEN:5201,fork,max-children=100,backlog=512,reuseport",
        "VSOCK-CONNECT:3:5201,connect-timeout=2.5,rcvbuf=1M",
        "UNIX-LISTEN:\"/run/my app/sock\",unlink-early,fork",
        "TCP6:[2001:db8::1]:443,bind=[::1]:4000,nodelay,keepidle=30",
    ];
    c.bench_function("parse 4 addresses", |b| {
        b.iter(|| {
            for s in samples {
                std::hint::black_box(Address::parse(std::hint::black_box(s)).unwrap());
            }
        })
    });
}

fn nonblocking(fd: OwnedFd) -> Socket {
    let sock = Socket::from_owned(fd);
    let flags = nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&sock, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
    sock
}

/// Two connected pairs: client <-> relay side A, and relay side B <-> server.
struct Wiring {
    client: Box<dyn Write + Send>,
    relay_a: OwnedFd,
    relay_b: OwnedFd,
    server: Box<dyn Read + Send>,
}

trait Pairs {
    fn wiring() -> Wiring;
}

struct Unix;
impl Pairs for Unix {
    fn wiring() -> Wiring {
        let (client, a) = UnixStream::pair().unwrap();
        let (b, server) = UnixStream::pair().unwrap();
        Wiring {
            client: Box::new(client),
            relay_a: a.into(),
            relay_b: b.into(),
            server: Box::new(server),
        }
    }
}

struct Tcp;
impl Pairs for Tcp {
    fn wiring() -> Wiring {
        let pair = || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (c, s)
        };
        let (client, a) = pair();
        let (b, server) = pair();
        Wiring {
            client: Box::new(client),
            relay_a: a.into(),
            relay_b: b.into(),
            server: Box::new(server),
        }
    }
}

/// Bytes per second through one relayed connection: a writer thread pushes CHUNK bytes into
/// one end for every iteration while the bench reads them from the other.
fn throughput<P: Pairs>(c: &mut Criterion, family: &str) {
    let mut group = c.benchmark_group(format!("relay {family}"));
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(20);
    for (mode, size) in [
        (Mode::Splice, 64 << 10),
        (Mode::Splice, 256 << 10),
        (Mode::Splice, 1 << 20),
        (Mode::UringSplice, 256 << 10),
        (Mode::Copy, 256 << 10),
        (Mode::Recv, 1 << 20),
        (Mode::RecvZc, 1 << 20),
    ] {
        let config = EngineConfig {
            relay: RelayOptions {
                mode,
                pipe_size: size,
                copy_size: size,
                ..RelayOptions::default()
            },
            pin_workers: false,
            ..EngineConfig::default()
        };
        let mut engine = Engine::start(1, Arc::new(config)).expect("engine");
        let Wiring {
            mut client,
            relay_a,
            relay_b,
            mut server,
        } = P::wiring();
        engine.submit(Job {
            first: Endpoint::socket(nonblocking(relay_a), "a".into()),
            second: Second::Ready(Endpoint::socket(nonblocking(relay_b), "b".into())),
            prelude: None,
        });
        let (go, rounds) = mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let data = vec![7u8; CHUNK];
            while rounds.recv().is_ok() {
                client.write_all(&data).unwrap();
            }
        });
        let mut buf = vec![0u8; CHUNK];
        let id = BenchmarkId::new(mode.name(), format!("-b {}K", size >> 10));
        group.bench_function(id, |bench| {
            bench.iter(|| {
                go.send(()).unwrap();
                server.read_exact(&mut buf).unwrap();
            })
        });
        drop(go);
        writer.join().unwrap();
        engine.stop();
    }
    group.finish();
}

fn relay_unix(c: &mut Criterion) {
    throughput::<Unix>(c, "UNIX socketpair");
}

fn relay_tcp(c: &mut Criterion) {
    throughput::<Tcp>(c, "TCP loopback");
}

/// Against a bench server on a real VM host or guest: `VSPLICE_BENCH_VSOCK=cid:port`.
fn vsock(c: &mut Criterion) {
    let Ok(target) = std::env::var("VSPLICE_BENCH_VSOCK") else {
        eprintln!(
            "vsock bench skipped: set VSPLICE_BENCH_VSOCK=cid:port to a `vsplice bench server VSOCK-LISTEN:port`"
        );
        return;
    };
    let address = Arc::new(
        Address::parse(&format!("VSOCK-CONNECT:{target}"))
            .unwrap_or_else(|e| panic!("VSPLICE_BENCH_VSOCK={target}: {e}")),
    );
    let bytes: u64 = 64 << 20;
    let mut group = c.benchmark_group("vsock bench client");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    for len in [4 << 10, 64 << 10, 1 << 20] {
        let params = vsplice::bench::proto::Params {
            streams: 1,
            len,
            direction: vsplice::bench::proto::TestDirection::Forward,
            limit: vsplice::bench::proto::Limit::Bytes { total: bytes },
            verify: false,
            zerocopy: false,
            workload: Default::default(),
            vsock_buffer: None,
            messages: false,
        };
        group.bench_function(BenchmarkId::new("len", len), |b| {
            b.iter(|| {
                let report = vsplice::bench::client::run_test(
                    &address,
                    &params,
                    None,
                    vsplice::bench::client::Output::Quiet,
                    vsplice::bench::DEFAULT_STALL_TIMEOUT,
                )
                .expect("bench run");
                assert!(report.errors.is_empty(), "{:?}", report.errors);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parse, relay_unix, relay_tcp, vsock);
criterion_main!(benches);
