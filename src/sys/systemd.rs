//! The two systemd protocols a service needs, without libsystemd: readiness notification
//! (`sd_notify`: a datagram to `$NOTIFY_SOCKET`, a path or an abstract `@name`) and socket
//! activation (listening sockets passed as descriptors 3.. with `LISTEN_FDS`, `LISTEN_PID`
//! and `LISTEN_FDNAMES`).
//!
//! Both are pure environment-plus-socket protocols, so they also work under
//! `systemd-socket-activate` or any other supervisor that speaks them, with no PID 1 needed.
//! Inherited descriptors are taken once per process, at its start, before it opens any of
//! its own (a second call gets nothing), marked close-on-exec and non-blocking, and checked
//! to be listening stream sockets.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixSocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

use super::handover::check_handed_over;
use super::socket::Socket;
use super::{cvt, from_nix};

/// The first inherited descriptor (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

/// Sends state changes to the service manager.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: UnixSocketAddr,
    /// The same address for sendmsg(2), which carries descriptors (`FDSTORE=1`).
    store: nix::sys::socket::UnixAddr,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for; `None` when not run by a service manager
    /// (or the variable is empty).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(v) if !v.is_empty() => Notifier::new(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for a `NOTIFY_SOCKET` value: an absolute path, or `@name` for a name in
    /// the abstract namespace.
    pub fn new(notify_socket: &str) -> io::Result<Notifier> {
        use nix::sys::socket::UnixAddr;
        let (target, store) = match notify_socket.strip_prefix('@') {
            Some(name) => (
                UnixSocketAddr::from_abstract_name(name.as_bytes())?,
                UnixAddr::new_abstract(name.as_bytes()).map_err(from_nix)?,
            ),
            None if notify_socket.starts_with('/') => (
                UnixSocketAddr::from_pathname(notify_socket)?,
                UnixAddr::new(notify_socket).map_err(from_nix)?,
            ),
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("NOTIFY_SOCKET \"{notify_socket}\" is neither a path nor @name"),
                ));
            }
        };
        // std's sockets are close-on-exec.
        let socket = UnixDatagram::unbound()?;
        Ok(Notifier {
            socket,
            target,
            store,
        })
    }

    /// Sends one message of `KEY=VALUE` lines.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.target)?;
        if sent != state.len() {
            return Err(io::Error::other("notification truncated"));
        }
        Ok(())
    }

    /// Startup finished: the service is serving. `status` is shown by `systemctl status`.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)))
    }

    /// A reload started; the monotonic timestamp lets `Type=notify-reload` match it to the
    /// signal it sent. Send [`Notifier::ready`] when the reload is done.
    pub fn reloading(&self) -> io::Result<()> {
        let now =
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_err(from_nix)?;
        let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
    }

    /// A process that took over from the main one (a binary upgrade) serves now: it names
    /// itself the main process (needs `NotifyAccess=all`) and says it is ready.
    pub fn took_over(&self, pid: u32, status: &str) -> io::Result<()> {
        self.notify(&format!(
            "MAINPID={pid}\nREADY=1\nSTATUS={}",
            one_line(status)
        ))
    }

    /// Keeps `fd` in the service manager's descriptor store under `name` (`FDSTORE=1` with
    /// `FDNAME=`; needs `FileDescriptorStoreMax=` above 0): the next start of the service
    /// gets it back in `LISTEN_FDS` with that name, so a restart keeps a listening socket
    /// open (its clients wait in the backlog). A descriptor stored twice is kept once.
    pub fn store_fd(&self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        use std::os::fd::AsRawFd;
        if !fdname_is_valid(name) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{name}\" cannot be an FDNAME (255 printable characters, no ':')"),
            ));
        }
        let text = format!("FDSTORE=1\nFDNAME={name}");
        let iov = [io::IoSlice::new(text.as_bytes())];
        let fds = [fd.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg(
            self.socket.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::empty(),
            Some(&self.store),
        )
        .map_err(from_nix)?;
        Ok(())
    }

    /// Drops what the descriptor store keeps under `name`.
    pub fn remove_stored(&self, name: &str) -> io::Result<()> {
        self.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }

    /// Shutdown started (draining).
    pub fn stopping(&self) -> io::Result<()> {
        self.notify("STOPPING=1")
    }

    /// A free-form status line.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.notify(&format!("STATUS={}", one_line(status)))
    }

    /// Keeps the watchdog from firing; send every [`Watchdog::interval`].
    pub fn watchdog(&self) -> io::Result<()> {
        self.notify("WATCHDOG=1")
    }
}

/// What systemd takes as a descriptor name (its `fdname_is_valid`): 1 to 255 ASCII
/// characters, no control character, no ':'.
pub fn fdname_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| (b' '..0x7f).contains(&b) && b != b':')
}

/// How many descriptors the service manager keeps for this service (`$FDSTORE`, from
/// `FileDescriptorStoreMax=`; systemd 254 and later); 0 when it keeps none.
pub fn fd_store_max() -> usize {
    std::env::var("FDSTORE")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

/// The watchdog the service manager armed (`WATCHDOG_USEC`, for us if `WATCHDOG_PID` is
/// unset or our pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// The manager's timeout.
    pub timeout: Duration,
}

impl Watchdog {
    pub fn from_env() -> Option<Watchdog> {
        Watchdog::parse(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// Reads the two variables' values for process `pid`.
    pub fn parse(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Watchdog> {
        let usec: u64 = usec?.trim().parse().ok().filter(|n| *n > 0)?;
        if let Some(p) = watchdog_pid {
            if p.trim().parse::<u32>().ok()? != pid {
                return None;
            }
        }
        Some(Watchdog {
            timeout: Duration::from_micros(usec),
        })
    }

    /// How often to send WATCHDOG=1: half the timeout, as sd_watchdog_enabled(3) advises,
    /// but never more often than every [`Watchdog::MIN_INTERVAL`]: a `WATCHDOG_USEC` of 1000
    /// would otherwise ping a thousand times a second (and a sub-millisecond wait rounds
    /// down to a zero poll timeout, a busy loop).
    pub fn interval(&self) -> Duration {
        (self.timeout / 2).max(Self::MIN_INTERVAL)
    }

    /// The shortest ping interval: a manager that wants faster pings than this cannot be
    /// served without spending a core on it.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

    /// Whether the manager's timeout is shorter than we can serve (see [`Watchdog::interval`]).
    pub fn is_clamped(&self) -> bool {
        self.timeout / 2 < Self::MIN_INTERVAL
    }

    /// When the next ping is due after one sent at `sent`.
    pub fn next_after(&self, sent: Instant) -> Instant {
        sent + self.interval()
    }
}

/// One socket handed over by the service manager.
#[derive(Debug)]
pub struct ActivatedSocket {
    /// Its descriptor number as passed (3, 4, ...): what `ACCEPT-FD:n` names.
    pub number: i32,
    /// Its `FileDescriptorName=` (systemd names unnamed sockets "unknown").
    pub name: Option<String>,
    pub fd: OwnedFd,
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// What [`adopt_listen_fds`] took at the start of the process, until [`take_listen_fds`]
/// hands it out.
static ADOPTED: Mutex<Option<io::Result<Vec<ActivatedSocket>>>> = Mutex::new(None);

/// Which descriptors the environment says are ours: `LISTEN_FDS` of them from 3, if
/// `LISTEN_PID` is `pid`. Names come from `LISTEN_FDNAMES` (colon-separated).
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
) -> Result<Vec<(i32, Option<String>)>, String> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else {
        return Ok(Vec::new());
    };
    let listen_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID \"{listen_pid}\" is not a process id"))?;
    if listen_pid != pid {
        // Meant for another process (we were started by one that did not unset them).
        return Ok(Vec::new());
    }
    let count: i32 = listen_fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=4096).contains(n))
        .ok_or_else(|| format!("LISTEN_FDS \"{listen_fds}\" is not a count 0-4096"))?;
    let names: Vec<&str> = names.map(|n| n.split(':').collect()).unwrap_or_default();
    if !names.is_empty() && names.len() != count as usize {
        return Err(format!(
            "LISTEN_FDNAMES has {} names for {count} descriptors",
            names.len()
        ));
    }
    Ok((0..count)
        .map(|i| {
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty())
                .map(|n| n.to_string());
            (LISTEN_FDS_START + i, name)
        })
        .collect())
}

/// Takes the sockets the service manager passed (and those an upgrading vsplice handed
/// over: `super::handover`), before the process opens any descriptor of its own: call it
/// first thing in `main`. Later, descriptors 3, 4, ... may be vsplice's
/// own (its signalfds, its engine's rings), and a `LISTEN_FDS` larger than what was really
/// passed would make them "inherited" too, with two owners that both close them. Each
/// descriptor must be open and a listening stream socket, else the whole set is refused
/// (a service manager that passes something else is misconfigured, and guessing which of
/// them it meant is how a socket gets two owners). The result, sockets or error, waits for
/// [`take_listen_fds`]; it matters only to a run that asks for an `ACCEPT-FD`.
pub fn adopt_listen_fds() {
    super::handover::adopt();
    let mut slot = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    if !TAKEN.swap(true, Ordering::SeqCst) {
        *slot = Some(adopt());
    }
}

/// The sockets the service manager passed (empty when none were, or when they were taken
/// already): those [`adopt_listen_fds`] took at the start of the process, or, if it was not
/// called, taken now (with the same checks). Each is close-on-exec.
pub fn take_listen_fds() -> io::Result<Vec<ActivatedSocket>> {
    let mut slot = ADOPTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(adopted) = slot.take() {
        return adopted;
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    adopt()
}

/// Why the environment passed no descriptors to this process, for an error message:
/// `None` when it passed some.
pub fn why_no_listen_fds() -> Option<String> {
    let Some(pid) = std::env::var("LISTEN_PID").ok() else {
        return Some("LISTEN_PID is not set".into());
    };
    if std::env::var_os("LISTEN_FDS").is_none() {
        return Some("LISTEN_FDS is not set".into());
    }
    let ours = std::process::id();
    if pid.trim().parse::<u32>().ok() != Some(ours) {
        return Some(format!(
            "LISTEN_PID={pid} is not this process ({ours}): the sockets were meant for another"
        ));
    }
    None
}

fn adopt() -> io::Result<Vec<ActivatedSocket>> {
    let var = |k: &str| std::env::var(k).ok();
    let wanted = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let count = wanted.len();
    let mut out = Vec::with_capacity(count);
    for (number, name) in wanted {
        let refuse = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "LISTEN_FDS={count} names descriptor {number}, which is {what}; \
                     vsplice takes only listening stream sockets"
                ),
            )
        };
        // Check the descriptor is open before anything owns it.
        // SAFETY: F_GETFD only reads the descriptor's flags; any integer is a valid
        // argument (a closed one fails with EBADF), and no memory is involved.
        cvt(unsafe { libc::fcntl(number, libc::F_GETFD) })
            .map_err(|e| refuse(format!("not open ({e})")))?;
        // SAFETY: the service manager passed descriptor `number` to this process for it to
        // own (LISTEN_PID is our pid, and F_GETFD just showed it open); the TAKEN guard
        // makes this the only place that ever wraps it, so it gets exactly one owner. It
        // cannot be one of vsplice's own: adopt_listen_fds runs before any is opened.
        let fd = unsafe { OwnedFd::from_raw_fd(number) };
        fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(from_nix)?;
        check_handed_over(fd.as_fd()).map_err(refuse)?;
        out.push(ActivatedSocket { number, name, fd });
    }
    Ok(out)
}

/// Turns an inherited descriptor (from the service manager, or from an upgrading vsplice)
/// into a socket to serve on: a listening stream socket, or a bound UDP socket (systemd's
/// `ListenDatagram=`, a `UDP-LISTEN` service's); made non-blocking (managers pass blocking
/// ones).
pub fn inherited_listener(fd: OwnedFd) -> io::Result<Socket> {
    super::handover::check_handed_over(fd.as_fd())
        .map_err(|what| io::Error::new(io::ErrorKind::InvalidInput, what))?;
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(from_nix)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(from_nix)?;
    Ok(Socket::from_owned(fd))
}

/// A signal that means a request rather than a stop, on a signalfd: SIGHUP (reload,
/// `ExecReload=kill -HUP $MAINPID`) or SIGUSR2 (binary upgrade). Blocked so it no longer
/// ends the process. Create it on the main thread before other threads start. The stop
/// signals' signalfd (`super::signal::StopSignals`) reads these too: take this one first.
#[derive(Debug)]
pub struct CaughtSignal(nix::sys::signalfd::SignalFd);

impl CaughtSignal {
    /// SIGHUP, the reload signal.
    pub fn hangup() -> io::Result<CaughtSignal> {
        CaughtSignal::catch(nix::sys::signal::Signal::SIGHUP)
    }

    /// SIGUSR2, the upgrade signal.
    pub fn upgrade() -> io::Result<CaughtSignal> {
        CaughtSignal::catch(nix::sys::signal::Signal::SIGUSR2)
    }

    fn catch(signal: nix::sys::signal::Signal) -> io::Result<CaughtSignal> {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
        use nix::sys::signalfd::{SfdFlags, SignalFd};
        let mut set = SigSet::empty();
        set.add(signal);
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(from_nix)?;
        SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map(CaughtSignal)
            .map_err(from_nix)
    }

    /// Whether the signal arrived since the last call.
    pub fn take(&self) -> bool {
        matches!(self.0.read_signal(), Ok(Some(_)))
    }
}

impl AsFd for CaughtSignal {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_env_is_read_only_for_our_pid() {
        assert_eq!(parse_listen_env(None, None, None, 7), Ok(vec![]));
        assert_eq!(parse_listen_env(Some("8"), Some("2"), None, 7), Ok(vec![]));
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), Some("web:vsock"), 7),
            Ok(vec![(3, Some("web".into())), (4, Some("vsock".into()))])
        );
        assert_eq!(
            parse_listen_env(Some("7"), Some("1"), None, 7),
            Ok(vec![(3, None)])
        );
        let e = parse_listen_env(Some("7"), Some("2"), Some("one"), 7).unwrap_err();
        assert!(e.contains("1 names for 2"), "{e}");
        let e = parse_listen_env(Some("7"), Some("many"), None, 7).unwrap_err();
        assert!(e.contains("\"many\""), "{e}");
        assert!(parse_listen_env(Some("x"), Some("1"), None, 7).is_err());
    }

    #[test]
    fn a_tiny_watchdog_timeout_pings_at_most_ten_times_a_second() {
        let w = Watchdog::parse(Some("1000"), None, 7).unwrap();
        assert_eq!(w.interval(), Duration::from_millis(100));
        assert!(w.is_clamped());
        let w = Watchdog::parse(Some("1"), None, 7).unwrap();
        assert_eq!(w.interval(), Duration::from_millis(100));
        let w = Watchdog::parse(Some("200000"), None, 7).unwrap();
        assert_eq!(w.interval(), Duration::from_millis(100));
        assert!(!w.is_clamped());
    }

    #[test]
    fn watchdog_is_armed_for_our_pid_with_half_the_timeout() {
        let w = Watchdog::parse(Some("3000000"), None, 7).unwrap();
        assert_eq!(w.interval(), Duration::from_millis(1500));
        assert_eq!(Watchdog::parse(Some("3000000"), Some("7"), 7), Some(w));
        assert_eq!(Watchdog::parse(Some("3000000"), Some("8"), 7), None);
        assert_eq!(Watchdog::parse(Some("0"), None, 7), None);
        assert_eq!(Watchdog::parse(None, None, 7), None);
    }

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = std::env::temp_dir().join(format!("vsplice-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let abstract_name = format!("vsplice-notify-test-{}", std::process::id());
        let by_path = UnixDatagram::bind(&path).unwrap();
        let by_name = UnixDatagram::bind_addr(
            &UnixSocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap(),
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let mut recv = |s: &UnixDatagram| {
            let n = s.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.ready("2 services\nup").unwrap();
        assert_eq!(recv(&by_path), "READY=1\nSTATUS=2 services up");
        n.stopping().unwrap();
        assert_eq!(recv(&by_path), "STOPPING=1");
        let n = Notifier::new(&format!("@{abstract_name}")).unwrap();
        n.reloading().unwrap();
        let msg = recv(&by_name);
        assert!(msg.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{msg}");
        n.watchdog().unwrap();
        assert_eq!(recv(&by_name), "WATCHDOG=1");
        n.status("draining").unwrap();
        assert_eq!(recv(&by_name), "STATUS=draining");
        assert!(Notifier::new("relative").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stored_descriptor_reaches_the_notify_socket_with_its_name() {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::AsRawFd;
        let name = format!("vsplice-fdstore-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&UnixSocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.store_fd("listen=127.0.0.1%3A1", l.as_fd()).unwrap();
        let mut buf = [0u8; 256];
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fds: Vec<_> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let len = msg.bytes;
        assert_eq!(fds.len(), 1);
        // SAFETY: SCM_RIGHTS just gave this process the descriptor; nothing else owns it.
        let got = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let same = |fd: BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(same(got.as_fd()), same(l.as_fd()), "the same socket");
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=listen=127.0.0.1%3A1");
        let e = n.store_fd("a:b", l.as_fd()).unwrap_err();
        assert!(e.to_string().contains("\"a:b\""), "{e}");
        n.remove_stored("x").unwrap();
        assert!(fdname_is_valid("listen=[%3A%3A]%3A22"));
        assert!(fdname_is_valid("listen=unix%3A/run/with space"));
        assert!(!fdname_is_valid("listen=[::]:22"));
        assert!(!fdname_is_valid("tab\there"));
    }

    #[test]
    fn only_listening_sockets_are_accepted_as_inherited() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let socket = inherited_listener(OwnedFd::from(l)).unwrap();
        let _c = std::net::TcpStream::connect(addr).unwrap();
        crate::sys::socket::wait_readable(socket.as_fd(), None).unwrap();
        assert!(socket.accept().unwrap().is_some());
        assert!(socket.accept().unwrap().is_none(), "non-blocking");
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let e = inherited_listener(OwnedFd::from(a)).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");
        let file = std::fs::File::open("/dev/null").unwrap();
        let e = inherited_listener(OwnedFd::from(file)).unwrap_err();
        assert!(e.to_string().contains("a character device"), "{e}");
    }
}
