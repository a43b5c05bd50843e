//! `vsplice bench demo`: the main job on a built-in default, with nothing to set up. It starts
//! a bench server, a vsplice relay in front of it (and socat, when installed, for comparison),
//! runs the bench client straight to the server and through each relay, and prints throughput
//! and CPU side by side, with the relay's CPU seconds per GiB moved.
//!
//! Every party but the client is a separate process, so each one's CPU is its own (read from
//! /proc/PID/stat before and after each run).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::client::run_test;
use super::cpu::{CpuTimes, peak_rss};
use super::proto::{Limit, Params, TestDirection, Workload};
use super::report::{Output, TestReport};
use super::rr::LatencyReport;
use crate::addr::Address;
use crate::engine::Mode;
use crate::error::{Error, Result};

/// The socket family the demo runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// TCP on 127.0.0.1.
    Tcp,
    /// UNIX sockets in a temporary folder.
    Unix,
    /// AF_VSOCK to CID 1 (needs the vsock_loopback module: run it inside a VM guest).
    Vsock,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Unix => "UNIX",
            Transport::Vsock => "vsock",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DemoPlan {
    pub transport: Transport,
    pub seconds: f64,
    pub len: usize,
    /// Throughput, or transactions (`--rr`, `--crr`).
    pub workload: Workload,
    pub streams: u32,
    pub rounds: u32,
    pub mode: Option<Mode>,
    pub socat: bool,
    pub json: bool,
    /// Where to draw the paths' bars (`--plot`).
    pub plot: Option<std::path::PathBuf>,
}

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DemoRun {
    pub path: String,
    pub gbit_per_s: f64,
    pub client_cpu_pct: f64,
    pub server_cpu_pct: f64,
    pub relay_cpu_pct: Option<f64>,
    pub relay_cpu_s_per_gib: Option<f64>,
    pub relay_peak_rss_bytes: Option<u64>,
    /// Transactions and latency percentiles (`--rr`, `--crr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyReport>,
    pub report: TestReport,
}

#[derive(Debug, Serialize)]
struct DemoDocument<'a> {
    transport: Transport,
    seconds_per_run: f64,
    len: usize,
    streams: u32,
    rounds: u32,
    cpus: usize,
    runs: &'a [DemoRun],
}

/// A helper process, stopped on drop.
struct Helper {
    child: Child,
    name: String,
}

impl Helper {
    /// Starts `program args` and waits until a line containing `ready` appears on its stdout
    /// or stderr (whichever `on_stderr` says).
    fn start(
        name: &str,
        program: &str,
        args: &[String],
        ready: &str,
        on_stderr: bool,
    ) -> Result<Helper> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null());
        if on_stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Bench(format!("cannot start {name} ({program}): {e}")))?;
        let pipe: Box<dyn std::io::Read + Send> = if on_stderr {
            Box::new(child.stderr.take().expect("piped stderr"))
        } else {
            Box::new(child.stdout.take().expect("piped stdout"))
        };
        let (tx, rx) = mpsc::channel();
        let needle = ready.to_string();
        std::thread::spawn(move || {
            let mut seen = false;
            for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                if !seen && line.contains(&needle) {
                    seen = true;
                    let _ = tx.send(Ok(()));
                } else if !seen {
                    let _ = tx.send(Err(line));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut said = Vec::new();
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Ok(())) => {
                    return Ok(Helper {
                        child,
                        name: name.into(),
                    });
                }
                Ok(Err(line)) => said.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Bench(format!(
                        "{name} did not start: {}",
                        said.join(" | ")
                    )));
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::debug!("{} had to be killed", self.name);
    }
}

fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

/// (listen address, connect address) for a server named `name`.
fn addresses(
    transport: Transport,
    dir: &std::path::Path,
    name: &str,
    vsock_port: u32,
) -> Result<(String, String)> {
    Ok(match transport {
        Transport::Tcp => {
            let port = free_tcp_port()?;
            (
                format!("TCP-LISTEN:{port},bind=127.0.0.1"),
                format!("TCP:127.0.0.1:{port}"),
            )
        }
        Transport::Unix => {
            let path = dir.join(format!("{name}.sock"));
            (
                format!("UNIX-LISTEN:{}", path.display()),
                format!("UNIX-CONNECT:{}", path.display()),
            )
        }
        Transport::Vsock => (
            format!("VSOCK-LISTEN:{vsock_port}"),
            format!("VSOCK-CONNECT:1:{vsock_port}"),
        ),
    })
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

fn measure(name: &str, connect: &str, params: &Params, relay: Option<&Helper>) -> Result<DemoRun> {
    let address = Arc::new(Address::parse(connect).map_err(|source| Error::Address {
        text: connect.into(),
        source,
    })?);
    let before = relay.and_then(|r| CpuTimes::of_pid(r.pid()));
    let started = Instant::now();
    let report = run_test(
        &address,
        params,
        None,
        Output::Quiet,
        super::client::DEFAULT_STALL_TIMEOUT,
    )?;
    let wall = started.elapsed();
    if !report.errors.is_empty() {
        return Err(Error::Bench(format!(
            "{name}: {}",
            report.errors.join("; ")
        )));
    }
    let after = relay.and_then(|r| CpuTimes::of_pid(r.pid()));
    let moved: u64 = report
        .sum_client_to_server
        .iter()
        .chain(report.sum_server_to_client.iter())
        .map(|d| d.receiver_bytes)
        .sum();
    let (relay_cpu_pct, relay_cpu_s_per_gib) = match (before, after) {
        (Some(b), Some(a)) => {
            let used = a.total().saturating_sub(b.total()).as_secs_f64();
            let gib = moved as f64 / (1u64 << 30) as f64;
            (
                Some(100.0 * used / wall.as_secs_f64()),
                (gib > 0.0).then(|| used / gib),
            )
        }
        _ => (None, None),
    };
    Ok(DemoRun {
        path: name.to_string(),
        gbit_per_s: report.receiver_bits_per_second() / 1e9,
        client_cpu_pct: report.cpu.client.total_pct,
        server_cpu_pct: report.cpu.server.total_pct,
        relay_cpu_pct,
        relay_cpu_s_per_gib,
        relay_peak_rss_bytes: relay.and_then(|r| peak_rss(r.pid())),
        latency: report.latency.clone(),
        report,
    })
}

fn median(mut runs: Vec<DemoRun>) -> DemoRun {
    // Transactions move `len` bytes each way, so throughput orders rr runs too.
    runs.sort_by(|a, b| a.gbit_per_s.total_cmp(&b.gbit_per_s));
    runs.swap_remove(runs.len() / 2)
}

pub(crate) fn run(plan: &DemoPlan) -> Result<()> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::io("finding the vsplice binary", e))?
        .display()
        .to_string();
    let dir = std::env::temp_dir().join(format!("vsplice-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
    let base = 20000 + std::process::id() % 20000;
    let result = run_in(plan, &exe, &dir, base);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(plan: &DemoPlan, exe: &str, dir: &std::path::Path, base: u32) -> Result<()> {
    let (server_listen, server_connect) = addresses(plan.transport, dir, "server", base)?;
    let _server = Helper::start(
        "bench server",
        exe,
        &["bench".into(), "server".into(), server_listen.clone()],
        "listening on",
        false,
    )?;
    let (relay_listen, relay_connect) = addresses(plan.transport, dir, "vsplice", base + 1)?;
    let mut relay_args = vec!["-dd".to_string()];
    if let Some(mode) = plan.mode {
        relay_args.push("--mode".into());
        relay_args.push(mode.name().into());
    }
    relay_args.push(format!("{relay_listen},fork"));
    relay_args.push(server_connect.clone());
    let relay = Helper::start("vsplice relay", exe, &relay_args, "listening on", true)?;
    let socat_path = which("socat").filter(|_| plan.socat);
    let socat = match &socat_path {
        Some(path) => {
            let (listen, connect) = addresses(plan.transport, dir, "socat", base + 2)?;
            let listen = listen.replace(",bind=127.0.0.1", ",bind=127.0.0.1,reuseaddr");
            let h = Helper::start(
                "socat",
                &path.display().to_string(),
                &[
                    "-d".into(),
                    "-d".into(),
                    format!("{listen},fork"),
                    server_connect.clone(),
                ],
                "listening on",
                true,
            )?;
            Some((h, connect))
        }
        None => None,
    };
    let params = Params {
        streams: plan.streams,
        len: plan.len,
        direction: TestDirection::Forward,
        limit: Limit::Time {
            ms: (plan.seconds * 1000.0) as u64,
        },
        verify: false,
        zerocopy: false,
        workload: plan.workload,
        vsock_buffer: None,
        messages: false,
    };
    if !plan.json {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        println!(
            "vsplice bench demo: {} on this machine, {} stream{}, {} byte writes, {:.1} s per run, {} round{}, {cpus} CPUs",
            plan.transport.name(),
            plan.streams,
            if plan.streams == 1 { "" } else { "s" },
            plan.len,
            plan.seconds,
            plan.rounds,
            if plan.rounds == 1 { "" } else { "s" },
        );
    }
    // Rounds interleave the paths (A B C A B C ...) so drift hits all alike; medians are shown.
    let mut direct = Vec::new();
    let mut via_vsplice = Vec::new();
    let mut via_socat = Vec::new();
    for _ in 0..plan.rounds {
        direct.push(measure(
            "client -> server (direct)",
            &server_connect,
            &params,
            None,
        )?);
        via_vsplice.push(measure(
            "client -> vsplice -> server",
            &relay_connect,
            &params,
            Some(&relay),
        )?);
        if let Some((h, connect)) = &socat {
            via_socat.push(measure(
                "client -> socat -> server",
                connect,
                &params,
                Some(h),
            )?);
        }
    }
    let mut runs = vec![median(direct), median(via_vsplice)];
    if !via_socat.is_empty() {
        runs.push(median(via_socat));
    }
    if let Some(path) = &plan.plot {
        let paths: Vec<super::plot::DemoPath<'_>> = runs
            .iter()
            .map(|r| super::plot::DemoPath {
                name: r
                    .path
                    .replace("client -> ", "")
                    .replace(" -> server", "")
                    .replace("server (direct)", "direct"),
                gbit_per_s: r.gbit_per_s,
                relay_cpu_s_per_gib: r.relay_cpu_s_per_gib,
                latency: r.latency.as_ref(),
            })
            .collect();
        let title = format!(
            "vsplice bench demo ({}, {} stream{}, {:.0} s per run)",
            plan.transport.name(),
            plan.streams,
            if plan.streams == 1 { "" } else { "s" },
            plan.seconds
        );
        super::plot::demo(path, &title, &paths)?;
    }
    if plan.json {
        let doc = DemoDocument {
            transport: plan.transport,
            seconds_per_run: plan.seconds,
            len: plan.len,
            streams: plan.streams,
            rounds: plan.rounds,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            runs: &runs,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| Error::Bench(e.to_string()))?
        );
        return Ok(());
    }
    if !plan.workload.is_stream() {
        print_latency_table(&runs);
        return Ok(());
    }
    println!(
        "{:<30} {:>8} {:>11} {:>11} {:>10} {:>16} {:>10}",
        "path", "Gbit/s", "client CPU", "server CPU", "relay CPU", "relay CPU-s/GiB", "relay RSS"
    );
    let opt_pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}%"));
    for r in &runs {
        println!(
            "{:<30} {:>8.2} {:>10.1}% {:>10.1}% {:>10} {:>16} {:>10}",
            r.path,
            r.gbit_per_s,
            r.client_cpu_pct,
            r.server_cpu_pct,
            opt_pct(r.relay_cpu_pct),
            r.relay_cpu_s_per_gib
                .map_or("-".into(), |v| format!("{v:.3}")),
            r.relay_peak_rss_bytes.map_or("-".into(), |b| format!(
                "{:.1} MiB",
                b as f64 / (1u64 << 20) as f64
            )),
        );
    }
    if socat_path.is_none() && plan.socat {
        println!("(socat is not installed: no socat row)");
    }
    Ok(())
}

/// The `--rr` / `--crr` table: transactions per second and latency percentiles per path.
fn print_latency_table(runs: &[DemoRun]) {
    println!(
        "{:<30} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "path", "trans/s", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "relay CPU"
    );
    for r in runs {
        let Some(l) = &r.latency else { continue };
        println!(
            "{:<30} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            r.path,
            l.transactions_per_second,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p99_9_us,
            l.max_us,
            r.relay_cpu_pct
                .map_or("-".to_string(), |v| format!("{v:.1}%"))
        );
    }
}
