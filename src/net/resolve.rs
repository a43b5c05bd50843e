//! Name lookups off the workers' threads.
//!
//! getaddrinfo(3) blocks, for as long as a DNS server takes to answer (seconds, when one is
//! down). A worker that called it would stall every connection it serves, so a dial whose
//! host is a name hands the lookup to a small pool of resolver threads and waits, like for
//! any other event, on an eventfd that the resolver signals when the answer is in. Addresses
//! that need no lookup (IP literals, UNIX paths, vsock) are resolved inline. The lookup itself
//! ([`connect_targets`], [`resolve_host`]) lives here too, for both.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

use crossbeam_channel::Sender;

use crate::addr::{Address, Family, Kind};
use crate::sys::eventfd::EventFd;
use crate::sys::socket::SockAddr;

/// The addresses `host` names (a literal, or a DNS lookup on the calling thread), of
/// `family`.
pub(crate) fn resolve_host(host: &str, port: u16, family: Family) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => (host, port).to_socket_addrs()?.collect(),
    };
    let wanted: Vec<SocketAddr> = all
        .into_iter()
        .filter(|a| match family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        })
        .collect();
    if wanted.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no {family:?} address for \"{host}\""),
        ));
    }
    Ok(wanted)
}

/// Where a connect address connects to, freshly resolved.
pub(crate) fn connect_targets(address: &Address) -> io::Result<Vec<SockAddr>> {
    match &address.kind {
        Kind::TcpConnect { host, port, family } | Kind::UdpConnect { host, port, family } => {
            Ok(resolve_host(host, *port, *family)?
                .into_iter()
                .map(SockAddr::Inet)
                .collect())
        }
        Kind::UnixConnect { path } | Kind::VsockUdsConnect { path, .. } => {
            Ok(vec![SockAddr::Unix(path.clone())])
        }
        Kind::VsockConnect { cid, port } => Ok(vec![SockAddr::Vsock {
            cid: *cid,
            port: *port,
        }]),
        _ => Err(io::Error::other(format!(
            "{} is not a connect address",
            address.kind.tag().name()
        ))),
    }
}

/// Resolver threads: enough that one slow name does not hold up lookups of others.
const RESOLVER_THREADS: usize = 4;

type Answer = io::Result<Vec<SockAddr>>;

/// Whether resolving `address` may block (its host is a name, not an IP literal).
pub(crate) fn needs_lookup(address: &Address) -> bool {
    match &address.kind {
        Kind::TcpConnect { host, .. } | Kind::UdpConnect { host, .. } => {
            host.parse::<IpAddr>().is_err()
        }
        _ => false,
    }
}

struct Request {
    address: Arc<Address>,
    done: Arc<Shared>,
}

struct Shared {
    ready: EventFd,
    answer: Mutex<Option<Answer>>,
}

/// A lookup under way on a resolver thread. Dropping it abandons the answer.
pub(crate) struct Lookup {
    done: Arc<Shared>,
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("ready", &self.done.ready.as_raw_fd())
            .finish()
    }
}

fn pool() -> Option<&'static Sender<Request>> {
    static POOL: OnceLock<Option<Sender<Request>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::unbounded::<Request>();
        let mut started = 0;
        for i in 0..RESOLVER_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vsplice-dns{i}"))
                .stack_size(256 * 1024)
                .spawn(move || {
                    for req in rx {
                        let answer = connect_targets(&req.address);
                        *req.done.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
                        req.done.ready.notify();
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(tx)
    })
    .as_ref()
}

impl Lookup {
    /// Starts resolving `address` on a resolver thread. Fails only when no eventfd or thread
    /// can be had; the caller then resolves inline.
    pub(crate) fn start(address: Arc<Address>) -> io::Result<Lookup> {
        let done = Arc::new(Shared {
            ready: EventFd::new()?,
            answer: Mutex::new(None),
        });
        let pool = pool().ok_or_else(|| io::Error::other("no resolver thread"))?;
        pool.send(Request {
            address,
            done: done.clone(),
        })
        .map_err(|_| io::Error::other("resolver threads gone"))?;
        Ok(Lookup { done })
    }

    /// The descriptor that becomes readable when the answer is in.
    pub(crate) fn fd(&self) -> RawFd {
        self.done.ready.as_raw_fd()
    }

    /// As [`Lookup::fd`], borrowed.
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.done.ready.as_fd()
    }

    /// The answer, once the resolver gave it.
    pub(crate) fn take(&self) -> Option<Answer> {
        self.done
            .answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn address(text: &str) -> Arc<Address> {
        Arc::new(Address::parse(text).unwrap())
    }

    #[test]
    fn only_names_need_a_lookup() {
        assert!(needs_lookup(&address("TCP:localhost:80")));
        assert!(needs_lookup(&address("TCP:example.invalid:80")));
        assert!(!needs_lookup(&address("TCP:127.0.0.1:80")));
        assert!(!needs_lookup(&address("TCP6:[::1]:80")));
        assert!(!needs_lookup(&address("UNIX:/tmp/x")));
        assert!(!needs_lookup(&address("VSOCK:2:80")));
    }

    #[test]
    fn a_lookup_signals_its_eventfd_with_the_answer() {
        let lookup = Lookup::start(address("TCP:localhost:8080")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            if let Some(a) = lookup.take() {
                break a;
            }
            assert!(Instant::now() < deadline, "no answer");
            assert!(
                readable_within_a_second(lookup.as_fd()),
                "the eventfd never became readable"
            );
        };
        let targets = answer.unwrap();
        assert!(!targets.is_empty());
        assert!(
            targets.iter().all(
                |t| matches!(t, SockAddr::Inet(a) if a.port() == 8080 && a.ip().is_loopback())
            )
        );
    }

    /// Waits up to a second for `fd` to be readable.
    fn readable_within_a_second(fd: BorrowedFd<'_>) -> bool {
        crate::sys::socket::wait_readable(fd, Some(Instant::now() + Duration::from_secs(1)))
            .unwrap_or(false)
    }
}
