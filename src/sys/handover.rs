//! The descriptors one `vsplice serve` hands to the next at a binary upgrade (SIGUSR2), as
//! socket activation hands them from a service manager: the environment names them, the
//! new process takes them before it opens any descriptor of its own.
//!
//! The protocol, in the style of `LISTEN_FDS`/`LISTEN_FDNAMES` (but with the descriptor
//! numbers listed, since the old process cannot move its sockets to 3, 4, ... in the child
//! without clobbering whatever the child's own spawning code holds there):
//!
//! - `VSPLICE_UPGRADE_PID`: the old process; the sockets are for its direct child only
//!   (checked against `getppid()`, as `LISTEN_PID` is checked against our own pid);
//! - `VSPLICE_UPGRADE_FDS`: the listening sockets' descriptor numbers, comma-separated;
//! - `VSPLICE_UPGRADE_FDNAMES`: one name per descriptor, colon-separated; a name is what the
//!   socket binds as the service layer spells it, with `%`, `:` and control characters
//!   escaped as `%XX`;
//! - `VSPLICE_UPGRADE_READY_FD`: the write end of a pipe the new process writes `READY=1\n`
//!   to once it serves (and closes: end of file without it means it failed).
//!
//! Every socket is checked as a socket from the service manager is (open, a listening stream
//! socket) and made close-on-exec; a set that fails a check is refused whole.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

use super::socket::get_int_option;
use super::{cvt, from_nix};

/// The old process's pid.
pub(crate) const ENV_PID: &str = "VSPLICE_UPGRADE_PID";
/// The handed-over descriptors' numbers.
pub(crate) const ENV_FDS: &str = "VSPLICE_UPGRADE_FDS";
/// Their names.
pub(crate) const ENV_FDNAMES: &str = "VSPLICE_UPGRADE_FDNAMES";
/// The readiness pipe's write end.
pub(crate) const ENV_READY_FD: &str = "VSPLICE_UPGRADE_READY_FD";
/// The most descriptors one handover carries.
pub(crate) const MAX_FDS: usize = 4096;
/// What the new process writes to the readiness pipe once it serves.
pub(crate) const READY_LINE: &[u8] = b"READY=1\n";

/// One listening socket handed over by the old process.
#[derive(Debug)]
pub(crate) struct HandedSocket {
    pub name: String,
    pub fd: OwnedFd,
}

/// What the old process handed to this one.
#[derive(Debug)]
pub(crate) struct Handover {
    /// The old process (our parent when we started).
    pub parent: u32,
    pub sockets: Vec<HandedSocket>,
    /// Where to say that we serve.
    pub ready: OwnedFd,
}

/// The handed-over sockets (number and name) and the readiness pipe's number.
pub(crate) type Wanted = (Vec<(RawFd, String)>, RawFd);

/// The handover's variables, read as text: which descriptors are ours and their names, and
/// the readiness pipe. `Ok(None)` when no handover is meant for a process whose parent is
/// `ppid` (no variables, or another process's).
pub(crate) fn parse_env(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    ready: Option<&str>,
    ppid: u32,
) -> Result<Option<Wanted>, String> {
    let Some(pid) = pid else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("{ENV_PID} \"{pid}\" is not a process id"))?;
    if pid != ppid {
        return Ok(None);
    }
    let number = |what: &str, text: &str| -> Result<RawFd, String> {
        text.trim()
            .parse::<RawFd>()
            .ok()
            .filter(|n| *n > 2)
            .ok_or_else(|| format!("{what} \"{text}\" is not a descriptor number above 2"))
    };
    let ready = number(ENV_READY_FD, ready.unwrap_or(""))?;
    let fds: Vec<RawFd> = match fds.unwrap_or("") {
        "" => Vec::new(),
        list => list
            .split(',')
            .map(|n| number(ENV_FDS, n))
            .collect::<Result<_, _>>()?,
    };
    if fds.len() > MAX_FDS {
        return Err(format!("{ENV_FDS} names more than {MAX_FDS} descriptors"));
    }
    let names: Vec<String> = match names.unwrap_or("") {
        "" => Vec::new(),
        list => list.split(':').map(unescape).collect::<Result<_, _>>()?,
    };
    if names.len() != fds.len() {
        return Err(format!(
            "{ENV_FDNAMES} has {} names for {} descriptors",
            names.len(),
            fds.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for fd in fds.iter().chain([&ready]) {
        if !seen.insert(*fd) {
            return Err(format!("descriptor {fd} is named twice"));
        }
    }
    Ok(Some((fds.into_iter().zip(names).collect(), ready)))
}

/// A name as it travels in `VSPLICE_UPGRADE_FDNAMES`: `%`, `:`, `,` and control characters
/// as `%XX`.
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' | ':' | ',' => out.push_str(&format!("%{:02X}", c as u32)),
            c if c.is_control() && (c as u32) < 0x100 => {
                out.push_str(&format!("%{:02X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out
}

/// The reverse of [`escape`]; an error names a bad escape.
pub(crate) fn unescape(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let hex: String = chars.by_ref().take(2).collect();
        let byte = u8::from_str_radix(&hex, 16)
            .ok()
            .filter(|_| hex.len() == 2)
            .ok_or_else(|| format!("\"{text}\": \"%{hex}\" is not an escape (%XX)"))?;
        out.push(byte as char);
    }
    Ok(out)
}

static ADOPTED: Mutex<Option<io::Result<Option<Handover>>>> = Mutex::new(None);

/// Takes the handed-over descriptors, if the environment names some for this process: call
/// it first thing in `main` (through [`super::systemd::adopt_listen_fds`]).
pub(crate) fn adopt() {
    let mut slot = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(adopt_now());
    }
}

/// What `adopt` took at the start of the process (once; later calls get `Ok(None)`).
pub(crate) fn take() -> io::Result<Option<Handover>> {
    let mut slot = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    match slot.take() {
        Some(taken) => {
            *slot = Some(Ok(None));
            taken
        }
        None => {
            *slot = Some(Ok(None));
            Ok(None)
        }
    }
}

fn adopt_now() -> io::Result<Option<Handover>> {
    let var = |k: &str| std::env::var(k).ok();
    let ppid = nix::unistd::getppid().as_raw() as u32;
    let parsed = parse_env(
        var(ENV_PID).as_deref(),
        var(ENV_FDS).as_deref(),
        var(ENV_FDNAMES).as_deref(),
        var(ENV_READY_FD).as_deref(),
        ppid,
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let Some((wanted, ready)) = parsed else {
        return Ok(None);
    };
    let ready = own(ready, "the readiness pipe")?;
    let stat = nix::sys::stat::fstat(ready.as_fd()).map_err(from_nix)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ENV_READY_FD} names a descriptor that is not a pipe"),
        ));
    }
    let mut sockets = Vec::with_capacity(wanted.len());
    for (number, name) in wanted {
        let fd = own(number, &name)?;
        check_handed_over(fd.as_fd()).map_err(|what| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV_FDS}: descriptor {number} ({name}) is {what}"),
            )
        })?;
        sockets.push(HandedSocket { name, fd });
    }
    Ok(Some(Handover {
        parent: ppid,
        sockets,
        ready,
    }))
}

/// Takes ownership of inherited descriptor `number` and marks it close-on-exec.
fn own(number: RawFd, what: &str) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid argument.
    cvt(unsafe { libc::fcntl(number, libc::F_GETFD) }).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("handed-over descriptor {number} ({what}) is not open: {e}"),
        )
    })?;
    // SAFETY: our parent (checked against VSPLICE_UPGRADE_PID) passed `number` for us to
    // own, F_GETFD just showed it open, and this runs once, first thing in main, before
    // vsplice opens any descriptor of its own: it gets exactly one owner. parse_env refused
    // a number listed twice.
    let fd = unsafe { OwnedFd::from_raw_fd(number) };
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(from_nix)?;
    Ok(fd)
}

/// Checks that `fd` is a socket an upgrading vsplice hands over: a listening stream (or
/// SEQPACKET) socket, or a bound UDP socket (`UDP-LISTEN`); otherwise says what it is.
pub(crate) fn check_handed_over(fd: BorrowedFd<'_>) -> Result<(), String> {
    if get_int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE).is_ok_and(|t| t == libc::SOCK_DGRAM) {
        use std::os::fd::AsRawFd;
        return match nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
            fd.as_raw_fd(),
        ) {
            Ok(local) if local.as_sockaddr_in().is_some_and(|a| a.port() != 0) => Ok(()),
            Ok(local) if local.as_sockaddr_in6().is_some_and(|a| a.port() != 0) => Ok(()),
            _ => Err("a datagram socket that is not bound to a UDP port".into()),
        };
    }
    check_listening_stream(fd)
}

/// Checks that `fd` is a listening stream (or SEQPACKET) socket; otherwise says what it is (the check
/// inherited descriptors get, from the service manager or from an upgrading vsplice).
pub(crate) fn check_listening_stream(fd: BorrowedFd<'_>) -> Result<(), String> {
    let stat = nix::sys::stat::fstat(fd).map_err(|e| format!("not readable by fstat ({e})"))?;
    let kind = match stat.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => None,
        libc::S_IFREG => Some("a regular file"),
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a pipe"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        _ => Some("not a socket"),
    };
    if let Some(kind) = kind {
        return Err(kind.into());
    }
    let ty = get_int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)
        .map_err(|e| format!("a socket whose type cannot be read ({e})"))?;
    // A SEQPACKET listener is taken: whether the other address can carry its messages is
    // checked where both are known (service::server).
    if ty != libc::SOCK_STREAM && ty != libc::SOCK_SEQPACKET {
        return Err(match ty {
            libc::SOCK_DGRAM => "a SOCK_DGRAM (datagram) socket".into(),
            other => format!("a socket of type {other}, not SOCK_STREAM or SOCK_SEQPACKET"),
        });
    }
    let listening = get_int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)
        .map_err(|e| format!("a stream socket whose state cannot be read ({e})"))?;
    if listening == 0 {
        return Err(
            "a stream socket that is not listening (a connection: use Accept=no and ListenStream=)"
                .into(),
        );
    }
    Ok(())
}

/// A pipe for the readiness line: (read end, write end), both close-on-exec.
pub(crate) fn ready_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
        .map_err(from_nix)
}

/// Spawns `command` with `inherit` (descriptors of this process, close-on-exec otherwise)
/// open in the child under the same numbers; the caller keeps its own.
pub(crate) fn spawn_inheriting(command: &mut Command, inherit: &[RawFd]) -> io::Result<Child> {
    let fds = inherit.to_vec();
    // SAFETY: the hook runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it calls fcntl(2) and nothing else (no allocation: `fds` was built
    // before the fork). The descriptors stay open in the parent for the whole spawn (the
    // caller borrows them), so each number still names the caller's socket in the child.
    unsafe {
        command.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_escaping_with_colons_percents_and_newlines() {
        for name in [
            "listen=[::]:8080",
            "listen=unix:/run/a:b%c",
            "fd=3",
            "metrics=127.0.0.1:9464",
            "odd\nname,x",
        ] {
            let e = escape(name);
            assert!(
                !e.contains(':') && !e.contains(',') && !e.contains('\n'),
                "{e}"
            );
            assert_eq!(unescape(&e).unwrap(), name);
        }
        assert_eq!(escape("a:b"), "a%3Ab");
        let err = unescape("a%3").unwrap_err();
        assert!(err.contains("%3"), "{err}");
        assert!(unescape("a%zz").is_err());
    }

    #[test]
    fn a_handover_is_read_only_by_the_old_process_child() {
        assert_eq!(parse_env(None, None, None, None, 7), Ok(None));
        assert_eq!(
            parse_env(Some("8"), Some("5"), Some("x"), Some("6"), 7),
            Ok(None)
        );
        assert_eq!(
            parse_env(
                Some("7"),
                Some("5,9"),
                Some("fd=3:listen=a%3A1"),
                Some("6"),
                7
            ),
            Ok(Some((
                vec![(5, "fd=3".into()), (9, "listen=a:1".into())],
                6
            )))
        );
        assert_eq!(
            parse_env(Some("7"), Some(""), Some(""), Some("4"), 7),
            Ok(Some((vec![], 4)))
        );
    }

    #[test]
    fn a_malformed_handover_names_the_bad_variable() {
        let e = parse_env(Some("x"), None, None, None, 7).unwrap_err();
        assert!(e.contains(ENV_PID), "{e}");
        let e = parse_env(Some("7"), Some("5"), Some("a"), None, 7).unwrap_err();
        assert!(e.contains(ENV_READY_FD), "{e}");
        let e = parse_env(Some("7"), Some("5,2"), Some("a:b"), Some("6"), 7).unwrap_err();
        assert!(e.contains("\"2\""), "{e}");
        let e = parse_env(Some("7"), Some("5,8"), Some("a"), Some("6"), 7).unwrap_err();
        assert!(e.contains("1 names for 2"), "{e}");
        let e = parse_env(Some("7"), Some("5,6"), Some("a:b"), Some("6"), 7).unwrap_err();
        assert!(e.contains("descriptor 6 is named twice"), "{e}");
    }
}
