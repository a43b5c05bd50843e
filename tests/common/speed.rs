//! Relative relay speed inside a guest: one stream of `bytes` from a client through a relay to
//! a sink, for each pair of socket families and each relay (none, vsplice with its default and
//! with every `--mode`, a plain blocking copying relay, socat), interleaved over rounds, and the
//! medians printed as one table. Guests are emulated (user-mode-linux, QEMU TCG): the figures
//! are only comparable with each other, within one run.
//!
//! The client writes 128 KiB at a time and the sink reads 128 KiB at a time, as the plain C
//! reader and writer of the vsock issue did; the copying relay is a thread per direction with
//! blocking 1 MiB reads and writes (what a 40-line C relay does).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Duplex, Listen, Relay, VsockStream};

/// A socket family of one end of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Vsock,
    Tcp,
    Unix,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Vsock => "vsock",
            Family::Tcp => "TCP",
            Family::Unix => "UNIX",
        }
    }
}

/// Where one end listens: enough to build the vsplice, socat and direct forms of it.
#[derive(Debug, Clone)]
pub enum Spot {
    Vsock(u32),
    Tcp(u16),
    Unix(PathBuf),
}

static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

impl Spot {
    /// A fresh place of `family` (ports are never reused within a run: no TIME_WAIT).
    pub fn fresh(family: Family, dir: &std::path::Path) -> Spot {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        match family {
            Family::Vsock => Spot::Vsock(7000 + n),
            Family::Tcp => Spot::Tcp(super::free_port()),
            Family::Unix => Spot::Unix(dir.join(format!("speed-{n}.sock"))),
        }
    }

    /// The form `--copy-relay` takes: `vsock:PORT`, `tcp:PORT`, `unix:PATH`.
    pub fn to_arg(&self) -> String {
        match self {
            Spot::Vsock(p) => format!("vsock:{p}"),
            Spot::Tcp(p) => format!("tcp:{p}"),
            Spot::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    pub fn from_arg(arg: &str) -> Spot {
        let (kind, rest) = arg.split_once(':').expect("KIND:WHERE");
        match kind {
            "vsock" => Spot::Vsock(rest.parse().expect("vsock port")),
            "tcp" => Spot::Tcp(rest.parse().expect("tcp port")),
            _ => Spot::Unix(PathBuf::from(rest)),
        }
    }

    pub fn vsplice_listen(&self) -> String {
        match self {
            Spot::Vsock(p) => format!("VSOCK-LISTEN:{p}"),
            Spot::Tcp(p) => format!("TCP-LISTEN:{p},bind=127.0.0.1"),
            Spot::Unix(p) => format!("UNIX-LISTEN:{},unlink-early", p.display()),
        }
    }

    pub fn vsplice_connect(&self) -> String {
        match self {
            Spot::Vsock(p) => format!("VSOCK-CONNECT:1:{p}"),
            Spot::Tcp(p) => format!("TCP:127.0.0.1:{p}"),
            Spot::Unix(p) => format!("UNIX-CONNECT:{}", p.display()),
        }
    }

    pub fn socat_listen(&self) -> String {
        match self {
            Spot::Vsock(p) => format!("VSOCK-LISTEN:{p}"),
            Spot::Tcp(p) => format!("TCP-LISTEN:{p},bind=127.0.0.1,reuseaddr"),
            Spot::Unix(p) => format!("UNIX-LISTEN:{},unlink-early", p.display()),
        }
    }

    pub fn socat_connect(&self) -> String {
        match self {
            Spot::Vsock(p) => format!("VSOCK-CONNECT:1:{p}"),
            Spot::Tcp(p) => format!("TCP:127.0.0.1:{p}"),
            Spot::Unix(p) => format!("UNIX-CONNECT:{}", p.display()),
        }
    }

    pub fn listen(&self) -> Listen {
        match self {
            Spot::Vsock(p) => Listen::vsock(*p),
            Spot::Tcp(p) => {
                let l = TcpListener::bind(("127.0.0.1", *p)).expect("bind tcp");
                super::widen_backlog(&l);
                Listen::Tcp(l)
            }
            Spot::Unix(p) => Listen::unix(p),
        }
    }

    pub fn connect(&self) -> io::Result<Box<dyn Duplex>> {
        Ok(match self {
            Spot::Vsock(p) => Box::new(VsockStream::connect(1, *p)?),
            Spot::Tcp(p) => Box::new(TcpStream::connect(("127.0.0.1", *p))?),
            Spot::Unix(p) => Box::new(UnixStream::connect(p)?),
        })
    }

    /// Connects, retrying while the listener is not up yet (socat, the copying relay).
    pub fn connect_when_up(&self) -> Box<dyn Duplex> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.connect() {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connect {self:?}: {e}"),
            }
        }
    }
}

/// A relay in the table.
#[derive(Debug, Clone)]
pub enum Via {
    Direct,
    /// vsplice with these global options before the two addresses.
    Vsplice(Vec<String>),
    /// Another vsplice build (`--before PATH`), with its defaults.
    VspliceBuild(PathBuf),
    CopyRelay,
    Socat(PathBuf),
}

impl Via {
    pub fn label(&self) -> String {
        match self {
            Via::Direct => "no relay".into(),
            Via::Vsplice(args) if args.is_empty() => "vsplice".into(),
            Via::Vsplice(args) => format!("vsplice {}", args.join(" ")),
            // `target/vsplice-base` (or a file named vsplice) is "vsplice before"; other
            // builds (`--before` is repeatable) go by their file name.
            Via::VspliceBuild(path) => match path.file_name().and_then(|n| n.to_str()) {
                Some(name) if name != "vsplice-base" && name != "vsplice" => name.into(),
                _ => "vsplice before".into(),
            },
            Via::CopyRelay => "copying relay".into(),
            Via::Socat(_) => "socat -b 131072".into(),
        }
    }
}

/// A running relay of the table, stopped when dropped.
enum Running {
    None,
    Vsplice(Relay),
    Socat(Child),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Socat(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunFigures {
    /// Over the time from the client's connect to the sink's end of file.
    pub gbit: f64,
    /// The relay process's CPU time (user and system, from its rusage once it exited) per
    /// GiB moved; 0 for no relay. Steadier than the rate on a shared machine: another
    /// process's load stretches the run, not the relay's own work.
    pub cpu_s_per_gib: f64,
    /// The relay's system CPU time alone, per GiB (part of `cpu_s_per_gib`).
    pub sys_s_per_gib: f64,
    /// The relay's context switches (voluntary and involuntary, every thread) per MiB moved:
    /// how often it slept or was put off the CPU, what a one-CPU guest pays dearly for.
    pub switches_per_mib: f64,
    /// The relay's log (vsplice's, for the data path it chose).
    pub log: String,
    /// The timed span (the client's connect to the sink's end of file) on the wall clock, for
    /// lining a run up with a host-side profile (`uml_profile`).
    pub span: (std::time::SystemTime, std::time::SystemTime),
}

/// CPU seconds (user and system) of every child that was waited for.
pub fn children_cpu() -> f64 {
    let (user, system, _) = children_usage();
    user + system
}

/// User and system CPU seconds and context switches (voluntary and involuntary) of every
/// child that was waited for.
pub fn children_usage() -> (f64, f64, f64) {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (
        secs(usage.user_time()),
        secs(usage.system_time()),
        (usage.voluntary_context_switches() + usage.involuntary_context_switches()) as f64,
    )
}

/// Moves `bytes` from a client at `from` through `via` to a sink listening at `to`.
pub fn one_run(from: &Spot, to: &Spot, via: &Via, bytes: usize) -> Result<RunFigures, String> {
    traced_run(from, to, via, bytes, None)
}

/// [`one_run`], with the relay (vsplice or the copying relay) under `strace -f -c -o TRACE`
/// when `trace` is given: its system calls counted (figures then mean nothing).
pub fn traced_run(
    from: &Spot,
    to: &Spot,
    via: &Via,
    bytes: usize,
    trace: Option<&std::path::Path>,
) -> Result<RunFigures, String> {
    let strace = |program: &std::path::Path| {
        let mut c = Command::new("strace");
        c.args(["-f", "-c", "-o"]).arg(trace.unwrap()).arg(program);
        c
    };
    let before = children_usage();
    let sink = to.listen();
    let sink = std::thread::spawn(move || {
        let mut s = sink.accept().expect("sink accept");
        let mut buf = vec![0u8; 128 * 1024];
        let mut got = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("sink read: {e}"),
            }
        }
        (got, Instant::now())
    });
    let mut running = match via {
        Via::Direct => Running::None,
        Via::Vsplice(args) => {
            // `-d` logs the data path each direction took.
            let mut all: Vec<&str> = vec!["-d"];
            all.extend(args.iter().map(String::as_str));
            let (l, c) = (from.vsplice_listen(), to.vsplice_connect());
            all.push(&l);
            all.push(&c);
            match trace {
                Some(_) => {
                    let bin = std::path::Path::new(super::vsplice_bin());
                    let relay = Relay::spawn_with(strace(bin), &all, Stdio::null(), Stdio::null())
                        .listening();
                    Running::Vsplice(relay)
                }
                None => Running::Vsplice(Relay::start(&all)),
            }
        }
        Via::VspliceBuild(bin) => {
            let (l, c) = (from.vsplice_listen(), to.vsplice_connect());
            Running::Vsplice(Relay::start_bin(bin, &["-d", &l, &c]))
        }
        // A process of its own, as a C relay would be: in a guest, switching between
        // processes costs what switching between threads of one process does not.
        Via::CopyRelay => Running::Socat(
            match trace {
                Some(_) => strace(&std::env::current_exe().expect("own path")),
                None => Command::new(std::env::current_exe().expect("own path")),
            }
            .arg("--copy-relay")
            .arg(from.to_arg())
            .arg(to.to_arg())
            .stdin(Stdio::null())
            .spawn()
            .expect("start the copying relay"),
        ),
        Via::Socat(bin) => {
            let child = Command::new(bin)
                .args(["-b", "131072"])
                .arg(from.socat_listen())
                .arg(to.socat_connect())
                .env("LD_LIBRARY_PATH", super::lab::deb_root().library_path())
                .stdin(Stdio::null())
                .spawn()
                .expect("start socat");
            Running::Socat(child)
        }
    };
    let data = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    let began = std::time::SystemTime::now();
    let mut client = match via {
        Via::Direct => to.connect().expect("direct connect"),
        Via::Vsplice(_) | Via::VspliceBuild(_) => from.connect().expect("connect to vsplice"),
        _ => from.connect_when_up(),
    };
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len());
        if let Err(e) = client.write_all(&data[..n]) {
            let log = match &running {
                Running::Vsplice(r) => r.log(),
                _ => String::new(),
            };
            return Err(format!(
                "client write {from:?} -> {to:?} via {}: {e}\n{log}",
                via.label()
            ));
        }
        left -= n;
    }
    client.shutdown_write().expect("client shutdown");
    let (got, end) = sink.join().expect("sink");
    assert_eq!(
        got,
        bytes,
        "sink received {got} of {bytes} via {}",
        via.label()
    );
    drop(client);
    let log = match running {
        Running::Vsplice(ref mut r) => {
            let status = r.wait_exit(Duration::from_secs(60));
            assert!(status.success(), "vsplice: {status}\n{}", r.log());
            r.log()
        }
        Running::Socat(ref mut c) => {
            // Both ends closed: it exits by itself (and is killed after a minute).
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().expect("wait").is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            String::new()
        }
        Running::None => String::new(),
    };
    let secs = end.duration_since(start).as_secs_f64();
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let after = children_usage();
    Ok(RunFigures {
        gbit: bytes as f64 * 8.0 / secs / 1e9,
        cpu_s_per_gib: (after.0 + after.1 - before.0 - before.1) / gib,
        sys_s_per_gib: (after.1 - before.1) / gib,
        switches_per_mib: (after.2 - before.2) / (gib * 1024.0),
        log,
        span: (began, began + end.duration_since(start)),
    })
}

/// A plain copying relay for one connection, the guest role `--copy-relay FROM TO`: accept,
/// connect, a thread per direction with blocking 1 MiB reads and writes, shutdown(SHUT_WR) at
/// end of file.
pub fn copying_relay(from: &str, to: &str) {
    let (from, to) = (Spot::from_arg(from), Spot::from_arg(to));
    let a = from.listen().accept().expect("copy relay accept");
    let b = to.connect().expect("copy relay connect");
    let (a2, b2) = (a.split().unwrap(), b.split().unwrap());
    let up = std::thread::spawn(move || copy_until_eof(a, b));
    copy_until_eof(b2, a2);
    up.join().unwrap();
}

fn copy_until_eof(mut from: Box<dyn Duplex>, mut to: Box<dyn Duplex>) {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown_write();
}

/// Median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The data path vsplice logged for the first direction (`first->second: PATH`).
pub fn logged_path(log: &str) -> Option<String> {
    let at = log.find("(first->second: ")?;
    let rest = &log[at + "(first->second: ".len()..];
    Some(rest.split([',', ')']).next()?.to_string())
}
