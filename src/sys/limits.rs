//! Process resource limits: the descriptor limit vsplice raises at start, and the pipe quota
//! that decides how many pipes an unprivileged user may size up, and the page size those
//! kernel settings count in.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

use super::from_nix;

/// The descriptor limits before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NofileChange {
    pub before: u64,
    pub after: u64,
}

fn read_proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Raises the soft RLIMIT_NOFILE to the hard limit, and, when `want` is larger and the process
/// may (root), the hard limit too, up to the kernel's `fs.nr_open`.
pub(crate) fn raise_nofile(want: u64) -> io::Result<NofileChange> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(from_nix)?;
    let mut target_hard = hard;
    if want > hard {
        let nr_open = read_proc_u64("/proc/sys/fs/nr_open").unwrap_or(hard);
        target_hard = want.min(nr_open).max(hard);
    }
    if target_hard > hard && setrlimit(Resource::RLIMIT_NOFILE, target_hard, target_hard).is_ok() {
        return Ok(NofileChange {
            before: soft,
            after: target_hard,
        });
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(from_nix)?;
    }
    Ok(NofileChange {
        before: soft,
        after: hard.max(soft),
    })
}

/// The largest pipe an unprivileged process may ask for (`fs.pipe-max-size`).
pub(crate) fn pipe_max_size() -> usize {
    read_proc_u64("/proc/sys/fs/pipe-max-size").unwrap_or(1 << 20) as usize
}

/// The system's page size (the unit of `net.ipv4.tcp_mem` and of the pipe quotas).
pub(crate) fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as usize)
}
