//! Binary upgrade without dropping a connection (SIGUSR2, as nginx does it): the running
//! `serve` starts the binary at its own path (which a package manager may have replaced) as
//! a child, with its arguments (so its config file) and every listening socket it holds
//! (the services', the metrics endpoint's, and the service manager's descriptors no service
//! took) as inherited descriptors, named in the environment ([`crate::sys::handover`]) by
//! what they bind. The child checks the config, takes the sockets whose names match its
//! services' listen addresses, opens what is new, and accepts at once: old and new accept
//! side by side on the same sockets (one open file description each, one backlog), so no
//! client is refused or waits. Once every service of the child runs it says so on a pipe
//! (and, under systemd, `MAINPID=` itself with `READY=1`); only then does the old process
//! stop accepting, drain its open connections for `drain-timeout` and exit. Stopping is not
//! closing the sockets for anyone: they stay open in the child, and what waits in their
//! backlog is the child's to accept.
//!
//! Whatever goes wrong before that line is harmless: a binary that does not start, exits,
//! or says nothing within [`ready_timeout`] (killed then) is reported and the old process
//! goes on serving with every listener as it was. One upgrade at a time; a SIGUSR2 during a
//! drain is refused.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use super::acceptor::ListenSocket;
use super::server::Server;
use crate::addr::Address;
use crate::error::{Error, Result};
use crate::net::bindkey::BindKey;
use crate::net::open::Listener;
use crate::sys::handover::{self, Handover};
use crate::sys::systemd::inherited_listener;

/// How long a new process has to say it serves, unless `VSPLICE_UPGRADE_TIMEOUT` (seconds)
/// says otherwise.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound on the new process's readiness ([`READY_TIMEOUT`], or
/// `VSPLICE_UPGRADE_TIMEOUT` seconds).
pub(crate) fn ready_timeout() -> Duration {
    std::env::var("VSPLICE_UPGRADE_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .map_or(READY_TIMEOUT, Duration::from_secs_f64)
}

/// The name a listening socket travels under: what it binds.
pub(crate) fn socket_name(key: &BindKey) -> String {
    match key {
        BindKey::Local(addr) => format!("listen={addr}"),
        BindKey::Datagram(addr) => format!("udp-listen={addr}"),
        BindKey::Fd(n) => format!("fd={n}"),
    }
}

/// The name of the metrics endpoint's socket.
pub(crate) fn metrics_name(key: &BindKey) -> String {
    format!("metrics={}", socket_name(key))
}

/// The `FDNAME=` a listening socket is kept under in systemd's descriptor store: its
/// [`socket_name`], escaped (systemd's names have no ':').
pub(crate) fn store_name(name: &str) -> String {
    handover::escape(name)
}

/// The socket name behind a `LISTEN_FDNAMES` entry, if it is one [`store_name`] made.
pub(crate) fn stored_name(fdname: &str) -> Option<String> {
    handover::unescape(fdname).ok().filter(|n| {
        n.starts_with("listen=") || n.starts_with("udp-listen=") || n.starts_with("metrics=")
    })
}

/// The path of the running binary, read at start: `/proc/self/exe` names the file this
/// process was started from, and after a package manager replaced it, the same path plus
/// " (deleted)"; the path is what the upgrade runs.
pub(crate) fn own_binary() -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let exe = std::fs::read_link("/proc/self/exe").or_else(|_| std::env::current_exe())?;
    Ok(
        match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
            Some(stem) => PathBuf::from(std::ffi::OsStr::from_bytes(stem)),
            None => exe,
        },
    )
}

/// Where a started upgrade stands.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Waiting,
    /// The new process serves.
    Ready {
        pid: u32,
        took: Duration,
    },
    /// It will not: why (it was reaped, or killed and reaped).
    Failed(String),
}

/// A new process started by SIGUSR2 that has not said it serves yet.
#[derive(Debug)]
pub(crate) struct Upgrade {
    child: Child,
    ready: std::fs::File,
    said: Vec<u8>,
    started: Instant,
    deadline: Instant,
}

impl Upgrade {
    /// Starts `binary` with `args` and every listening socket `server` (and `metrics`, the
    /// metrics endpoint's socket) holds.
    pub(crate) fn start(
        server: &Server,
        metrics: Option<(BindKey, BorrowedFd<'_>)>,
        binary: &Path,
        args: &[OsString],
    ) -> io::Result<Upgrade> {
        let started = Instant::now();
        let mut names = Vec::new();
        let mut fds: Vec<RawFd> = Vec::new();
        for acceptor in server.services.values() {
            if let Some(socket) = acceptor.listening() {
                names.push(socket_name(acceptor.key()));
                fds.push(socket.as_raw_fd());
            }
        }
        for (n, fd) in &server.inherited {
            names.push(socket_name(&BindKey::Fd(*n)));
            fds.push(fd.as_raw_fd());
        }
        if let Some((key, fd)) = metrics {
            names.push(metrics_name(&key));
            fds.push(fd.as_raw_fd());
        }
        let (read, write) = handover::ready_pipe()?;
        let list = |v: Vec<String>, sep: &str| v.join(sep);
        let mut command = Command::new(binary);
        command
            .args(args)
            .env(handover::ENV_PID, std::process::id().to_string())
            .env(
                handover::ENV_FDS,
                list(fds.iter().map(|f| f.to_string()).collect(), ","),
            )
            .env(
                handover::ENV_FDNAMES,
                list(names.iter().map(|n| handover::escape(n)).collect(), ":"),
            )
            .env(handover::ENV_READY_FD, write.as_raw_fd().to_string())
            // The service manager's variables were for this process, not the next.
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("WATCHDOG_PID")
            // Its own process group: a failed start is killed with whatever it started
            // (which would hold the sockets otherwise).
            .process_group(0);
        fds.push(write.as_raw_fd());
        let child = handover::spawn_inheriting(&mut command, &fds)?;
        // Only the child holds the write end now: its exit is our end of file.
        drop(write);
        Ok(Upgrade {
            child,
            ready: std::fs::File::from(read),
            said: Vec::new(),
            started,
            deadline: started + ready_timeout(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Readable when the new process says something (or ends).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }

    /// When it will have had its time.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Reads what the new process said; reaps it if it failed.
    pub(crate) fn check(&mut self) -> Progress {
        let mut buf = [0u8; 64];
        loop {
            match self.ready.read(&mut buf) {
                Ok(0) => {
                    let why = self.end("closed its readiness pipe without saying it serves");
                    return Progress::Failed(why);
                }
                Ok(n) => {
                    self.said.extend_from_slice(&buf[..n]);
                    if self
                        .said
                        .windows(handover::READY_LINE.len())
                        .any(|w| w == handover::READY_LINE)
                    {
                        return Progress::Ready {
                            pid: self.pid(),
                            took: self.started.elapsed(),
                        };
                    }
                    if self.said.len() > 256 {
                        let why = self.end("wrote something other than READY=1 to its pipe");
                        return Progress::Failed(why);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Failed(self.end(&format!("readiness pipe: {e}"))),
            }
        }
        if Instant::now() >= self.deadline {
            let waited = self.deadline - self.started;
            return Progress::Failed(self.end(&format!("did not say it serves within {waited:?}")));
        }
        Progress::Waiting
    }

    /// Ends a failed new process (killed if it still runs) and says how it ended.
    fn end(&mut self, what: &str) -> String {
        let pid = self.pid();
        // A process that closed the pipe by exiting is reaped a moment later.
        let grace = Instant::now() + Duration::from_secs(1);
        while Instant::now() < grace {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("new process {pid} {what} ({status})"),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        self.kill_group(nix::sys::signal::Signal::SIGKILL);
        match self.child.wait() {
            Ok(status) => format!("new process {pid} {what}; killed ({status})"),
            Err(e) => format!("new process {pid} {what}; killed ({e})"),
        }
    }

    /// Asks a new process that has not said it serves to stop (this process stops): it
    /// drains what it accepted meanwhile.
    pub(crate) fn abandon(mut self) {
        self.kill_group(nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.try_wait();
    }

    /// Signals the new process and whatever it started (its process group).
    fn kill_group(&self, signal: nix::sys::signal::Signal) {
        let group = nix::unistd::Pid::from_raw(self.pid() as i32);
        if nix::sys::signal::killpg(group, signal).is_err() {
            let _ = nix::sys::signal::kill(group, signal);
        }
    }
}

/// The sockets the old process handed to this one (or the service manager kept in its
/// descriptor store across a restart), until the services take them.
#[derive(Debug, Default)]
pub(crate) struct Handed {
    /// The process that handed them over (an upgrade; not a restart).
    pub parent: Option<u32>,
    sockets: HashMap<String, OwnedFd>,
    ready: Option<OwnedFd>,
}

impl Handed {
    pub(crate) fn new(handover: Handover) -> Handed {
        Handed {
            parent: Some(handover.parent),
            sockets: handover
                .sockets
                .into_iter()
                .map(|s| (s.name, s.fd))
                .collect(),
            ready: Some(handover.ready),
        }
    }

    /// Adds the sockets the service manager passed back from its descriptor store (named
    /// as [`store_name`] names them); returns the descriptors that carry no such name (a
    /// socket unit's, for `ACCEPT-FD`).
    pub(crate) fn add_stored(
        &mut self,
        passed: Vec<(i32, Option<String>, OwnedFd)>,
    ) -> Vec<(i32, OwnedFd)> {
        let mut others = Vec::new();
        for (number, name, fd) in passed {
            match name.as_deref().and_then(stored_name) {
                Some(name) => {
                    self.sockets.insert(name, fd);
                }
                None => others.push((number, fd)),
            }
        }
        others
    }

    /// The service manager's descriptors the old process held (by their `ACCEPT-FD` number).
    pub(crate) fn take_inherited(&mut self) -> Vec<(i32, OwnedFd)> {
        let numbers: Vec<(String, i32)> = self
            .sockets
            .keys()
            .filter_map(|name| {
                let n = name.strip_prefix("fd=")?.parse().ok()?;
                Some((name.clone(), n))
            })
            .collect();
        numbers
            .into_iter()
            .filter_map(|(name, n)| Some((n, self.sockets.remove(&name)?)))
            .collect()
    }

    /// The handed-over socket that binds `key`, as a listener for `address`.
    pub(crate) fn take_listener(
        &mut self,
        key: &BindKey,
        address: &Address,
    ) -> Result<Option<Listener>> {
        self.take_named(&socket_name(key), address)
    }

    /// The metrics endpoint's socket, if it still binds `key`.
    pub(crate) fn take_metrics(
        &mut self,
        key: &BindKey,
        address: &Address,
    ) -> Result<Option<Listener>> {
        self.take_named(&metrics_name(key), address)
    }

    fn take_named(&mut self, name: &str, address: &Address) -> Result<Option<Listener>> {
        let Some(fd) = self.sockets.remove(name) else {
            return Ok(None);
        };
        let socket = inherited_listener(fd)
            .map_err(|e| Error::io(format!("{}: handed-over socket", address.text), e))?;
        Listener::adopt(socket, address).map(Some)
    }

    /// Closes the handed-over sockets no service took (the old process still holds them
    /// until it exits); returns their names.
    pub(crate) fn close_unused(&mut self) -> Vec<String> {
        let mut names: Vec<String> = self.sockets.drain().map(|(name, _)| name).collect();
        names.sort();
        names
    }

    /// Tells the old process, if there is one, that this one serves.
    pub(crate) fn say_ready(self) -> io::Result<()> {
        match self.ready {
            Some(ready) => std::fs::File::from(ready).write_all(handover::READY_LINE),
            None => Ok(()),
        }
    }
}

/// A handed-over listener as a service's socket.
pub(crate) fn service_socket(listener: Listener) -> ListenSocket {
    ListenSocket::Opened(Box::new(listener))
}

/// Writes `pid` to `path` (through a file beside it, renamed over it: a reader never sees
/// half a number).
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    std::fs::write(&tmp, format!("{pid}\n"))?;
    std::fs::rename(&tmp, path)
}

/// The pid a pid file names.
pub(crate) fn read_pid_file(path: &Path) -> io::Result<u32> {
    let text = std::fs::read_to_string(path)?;
    parse_pid(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("\"{}\" is not a process id", text.trim()),
        )
    })
}

/// A pid file's text: one positive number, blanks around it allowed.
pub(crate) fn parse_pid(text: &str) -> Option<u32> {
    text.trim().parse().ok().filter(|p| *p > 1)
}

/// Removes `path` if it still names `pid` (after an upgrade it names the new process).
pub(crate) fn remove_pid_file_if_ours(path: &Path, pid: u32) {
    if read_pid_file(path).ok() == Some(pid) {
        let _ = std::fs::remove_file(path);
    }
}

/// `vsplice serve --upgrade --pid-file FILE`: signals the process the file names and waits
/// until the file names the new one (exit 0), or says the upgrade did not happen (exit 1).
pub(crate) fn request(pid_file: &Path) -> Result<ExitCode> {
    let context = |e: io::Error| Error::io(format!("--pid-file {}", pid_file.display()), e);
    let old = read_pid_file(pid_file).map_err(context)?;
    let pid = nix::unistd::Pid::from_raw(old as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2)
        .map_err(|e| context(io::Error::other(format!("signalling process {old}: {e}"))))?;
    let deadline = Instant::now() + ready_timeout() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match read_pid_file(pid_file) {
            Ok(new) if new != old => {
                println!("upgraded: process {new} serves; {old} drains its connections");
                return Ok(ExitCode::SUCCESS);
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    eprintln!(
        "vsplice: process {old} did not hand over to a new one (its log says why); it goes on serving"
    );
    Ok(ExitCode::FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::socket::SockAddr;

    #[test]
    fn sockets_are_named_by_what_they_bind() {
        let tcp = BindKey::Local(SockAddr::Inet("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(socket_name(&tcp), "listen=127.0.0.1:8080");
        assert_eq!(socket_name(&BindKey::Fd(3)), "fd=3");
        assert_eq!(metrics_name(&tcp), "metrics=listen=127.0.0.1:8080");
        let key =
            BindKey::of(&Address::parse("TCP4-LISTEN:8080,bind=127.0.0.1,fork").unwrap()).unwrap();
        assert_eq!(socket_name(&key), socket_name(&tcp));
        let udp = BindKey::of(&Address::parse("UDP4-LISTEN:8080,bind=127.0.0.1").unwrap()).unwrap();
        assert_eq!(socket_name(&udp), "udp-listen=127.0.0.1:8080");
        assert_eq!(
            stored_name(&store_name(&socket_name(&udp))),
            Some(socket_name(&udp))
        );
    }

    #[test]
    fn stored_names_come_back_as_the_socket_names_and_others_keep_their_number() {
        let name = "listen=[::]:8080";
        let stored = store_name(name);
        assert!(crate::sys::systemd::fdname_is_valid(&stored), "{stored}");
        assert_eq!(stored_name(&stored).as_deref(), Some(name));
        assert_eq!(stored_name("tcp"), None);
        assert_eq!(stored_name("fd=3"), None);
        let mut handed = Handed::default();
        let a = std::fs::File::open("/dev/null").unwrap();
        let b = std::fs::File::open("/dev/null").unwrap();
        let others = handed.add_stored(vec![
            (3, Some("tcp".into()), OwnedFd::from(a)),
            (4, Some(stored), OwnedFd::from(b)),
        ]);
        assert_eq!(others.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3]);
        assert_eq!(handed.close_unused(), [name.to_string()]);
    }

    #[test]
    fn pid_files_hold_one_number() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid(" 77 "), Some(77));
        assert_eq!(parse_pid("1"), None);
        assert_eq!(parse_pid("12a"), None);
        assert_eq!(parse_pid(""), None);
    }

    #[test]
    fn a_pid_file_is_removed_only_by_the_process_it_names() {
        let dir = std::env::temp_dir().join(format!("vsplice-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("serve.pid");
        write_pid_file(&path, 4242).unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), 4242);
        remove_pid_file_if_ours(&path, 4243);
        assert!(path.exists());
        remove_pid_file_if_ours(&path, 4242);
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_replaced_binary_is_run_from_its_path_not_as_deleted() {
        let p = own_binary().unwrap();
        assert!(!p.to_string_lossy().ends_with(" (deleted)"));
        assert!(p.is_absolute());
    }
}
