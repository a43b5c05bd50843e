//! The guest half of a host-side profile of the user-mode-linux kernel: one pair of socket
//! families, vsplice and the copying relay taking turns (`--runs N`, `--mib M`, `--pair
//! vsock-tcp`, `--with "ARGS"` for a vsplice variant and `--build PATH` for another build
//! besides them). Each run prints a
//! `PROFILE-RUN` line with the guest's CLOCK_REALTIME in nanoseconds at the start and end of
//! the span the speed table times (the client's connect to the sink's end of file; UML takes
//! the clock from the host's, so the host's `perf record -k realtime` samples can be cut by
//! run), the guest's own `/proc/stat` ticks over the whole run, relay start-up included (how
//! long the guest CPU was busy and idle), and the guest's context switches, interrupts and
//! page faults. It first prints the guest kernel's text symbols (`KSYM` lines from
//! `/proc/kallsyms`; the guest runs as root, and UML has no address randomisation), so the host
//! can name the sampled addresses although Debian's `linux.uml` is stripped.
//!
//! The host side: `perf/uml-profile.sh` runs the scenario with the kernel under `perf record`
//! (`VSPLICE_LAB_WRAP`, see `lab.rs`) and `perf/uml-profile.py` turns both into tables.

use std::time::{SystemTime, UNIX_EPOCH};

use super::speed::{self, Family, Spot, Via};
use super::{MIB, Scratch, number_arg};

fn family(name: &str) -> Family {
    match name.to_ascii_lowercase().as_str() {
        "vsock" => Family::Vsock,
        "tcp" => Family::Tcp,
        "unix" => Family::Unix,
        other => panic!("--pair: no family {other:?} (vsock, tcp, unix)"),
    }
}

fn realtime_ns(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// The guest's `cpu` line of /proc/stat: user, nice, system, idle, iowait, irq, softirq (ticks).
fn cpu_ticks() -> Vec<u64> {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    stat.lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|t| t.parse().expect("tick count"))
        .collect()
}

/// Guest-wide event counts: context switches, interrupts (/proc/stat), page faults
/// (/proc/vmstat). Each costs the host more than it would cost a real CPU: UML runs a guest
/// switch between processes and every fault through its host processes.
fn guest_events() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let vmstat = std::fs::read_to_string("/proc/vmstat").expect("read /proc/vmstat");
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    [
        field(&stat, "ctxt "),
        field(&stat, "intr "),
        field(&vmstat, "pgfault "),
    ]
}

/// Prints the guest kernel's text symbols, one `KSYM ADDR NAME` a line.
fn print_text_symbols() {
    let syms = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    let mut n = 0;
    for line in syms.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if matches!(kind, "t" | "T" | "w" | "W") && addr != "0000000000000000" {
            println!("KSYM {addr} {name}");
            n += 1;
        }
    }
    assert!(
        n > 1000,
        "only {n} text symbols in /proc/kallsyms (not root?)"
    );
}

/// The scenario: see the module docs.
pub fn run() {
    let args: Vec<String> = std::env::args().collect();
    let runs = number_arg(&args, "--runs", 4);
    let bytes = number_arg(&args, "--mib", 256) * MIB;
    let pair = args
        .iter()
        .position(|a| a == "--pair")
        .map_or("vsock-tcp".to_string(), |i| args[i + 1].clone());
    let (from, to) = pair.split_once('-').expect("--pair FROM-TO");
    let (from, to) = (family(from), family(to));
    let mut vias = vec![Via::Vsplice(vec![]), Via::CopyRelay];
    vias.extend(
        args.windows(2)
            .filter(|w| w[0] == "--with")
            .map(|w| Via::Vsplice(w[1].split_whitespace().map(String::from).collect())),
    );
    // `--build PATH` (repeatable): another vsplice build, with its defaults.
    vias.extend(
        args.windows(2)
            .filter(|w| w[0] == "--build")
            .map(|w| Via::VspliceBuild(w[1].clone().into())),
    );
    print_text_symbols();
    let scratch = Scratch::new("profile");
    // One warm-up run each, unframed: page cache, first connections.
    for via in &vias {
        let (a, b) = (Spot::fresh(from, &scratch.0), Spot::fresh(to, &scratch.0));
        speed::one_run(&a, &b, via, 32 * MIB).expect("warm-up run");
    }
    for round in 0..runs {
        for via in &vias {
            let (a, b) = (Spot::fresh(from, &scratch.0), Spot::fresh(to, &scratch.0));
            // A quiet gap on both sides, so that no sample of a neighbour's run is counted.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let ticks = cpu_ticks();
            let events = guest_events();
            let run = speed::one_run(&a, &b, via, bytes).expect("run");
            // The timed span only (as the speed table times it): not the relay's start-up.
            let (t0, t1) = (realtime_ns(run.span.0), realtime_ns(run.span.1));
            let after = cpu_ticks();
            let events: Vec<u64> = guest_events()
                .iter()
                .zip(events)
                .map(|(a, b)| a - b)
                .collect();
            let d: Vec<String> = after
                .iter()
                .zip(&ticks)
                .map(|(a, b)| (a - b).to_string())
                .collect();
            println!(
                "PROFILE-RUN round={round} via={:?} t0={t0} t1={t1} bytes={bytes} gbit={:.3} \
                 relay_cpu_s_per_gib={:.3} switches_per_mib={:.1} guest_ticks={} guest_ctxt={} \
                 guest_intr={} guest_pgfault={}",
                via.label(),
                run.gbit,
                run.cpu_s_per_gib,
                run.switches_per_mib,
                d.join(","),
                events[0],
                events[1],
                events[2],
            );
        }
    }
    println!("PROFILE-PAIR {} -> {}", from.name(), to.name());
}
