//! CPU accounting for bench reports: this process's user and system time (getrusage), and
//! another process's (from /proc/PID/stat, all its threads included).

use std::time::Duration;

use super::proto::Cpu;

/// User and system CPU time consumed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct CpuTimes {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTimes {
    /// This process, all threads.
    pub(crate) fn of_self() -> CpuTimes {
        let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
        match usage {
            Ok(u) => {
                let tv = |t: nix::sys::time::TimeVal| {
                    Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
                };
                CpuTimes {
                    user: tv(u.user_time()),
                    system: tv(u.system_time()),
                }
            }
            Err(_) => CpuTimes::default(),
        }
    }

    /// Another process and all its descendants (a forking relay such as socat does its work
    /// in children): own time from /proc/PID/stat, the time of children it already reaped
    /// (cutime, cstime), and the live children's, recursively.
    pub(crate) fn of_pid(pid: u32) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name: utime, stime, cutime, cstime are
        // fields 14-17 of the whole line.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = clock_ticks() as f64;
        let field = |i: usize| -> Option<f64> { fields.get(i)?.parse().ok() };
        let user = field(11)? + field(13)?;
        let system = field(12)? + field(14)?;
        let mut total = CpuTimes {
            user: Duration::from_secs_f64(user / ticks),
            system: Duration::from_secs_f64(system / ticks),
        };
        for child in children(pid) {
            if let Some(c) = CpuTimes::of_pid(child) {
                total.user += c.user;
                total.system += c.system;
            }
        }
        Some(total)
    }

    pub(crate) fn total(&self) -> Duration {
        self.user + self.system
    }

    /// The time used since `earlier`, as a share of `wall`.
    pub(crate) fn since(&self, earlier: CpuTimes, wall: Duration) -> Cpu {
        let wall = wall.as_secs_f64().max(1e-9);
        Cpu {
            user_pct: 100.0 * (self.user.saturating_sub(earlier.user)).as_secs_f64() / wall,
            system_pct: 100.0 * (self.system.saturating_sub(earlier.system)).as_secs_f64() / wall,
        }
    }
}

/// Child processes of `pid`, from every thread's /proc children list.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn clock_ticks() -> i64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
}

/// Peak resident set size of a process in bytes (VmHWM).
pub(crate) fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_from_rusage_and_proc_agree_roughly() {
        let start = CpuTimes::of_self();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let now = CpuTimes::of_self();
        assert!(now.total() > start.total());
        let proc = CpuTimes::of_pid(std::process::id()).expect("own /proc stat");
        assert!(proc.total() + Duration::from_millis(50) >= start.total());
        assert!(peak_rss(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn a_child_process_counts_toward_its_parent() {
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        let me = CpuTimes::of_pid(std::process::id()).unwrap();
        let alone = CpuTimes::of_pid(child.id()).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert!(alone.total() > Duration::from_millis(50), "{alone:?}");
        assert!(me.total() >= alone.total(), "{me:?} includes {alone:?}");
    }
}
