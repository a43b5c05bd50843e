//! Dialing on the calling thread: the [`Dial`] machine driven with poll(2), for the places where
//! blocking is fine (the first address when it is not a listener, the bench client).

use std::io;
use std::sync::Arc;
use std::time::Instant;

use crate::addr::Address;
use crate::error::Error;
use crate::net::dial::{Dial, Event, Interest, Progress};
use crate::net::endpoint::Endpoint;
use crate::sys::socket::wait_readable;

/// Dials on the calling thread, waiting with poll(2). Used where blocking is fine: opening the
/// first address when it is not a listener, and the bench client.
pub(crate) fn dial_blocking(address: Arc<Address>) -> Result<Endpoint, Error> {
    let mut dial = Dial::new(address.clone());
    let mut event = Event::Start;
    loop {
        match dial.advance(event) {
            Progress::Connected(endpoint) => return Ok(endpoint),
            Progress::Failed(why) => {
                return Err(Error::Connect {
                    address: address.text.clone(),
                    source: io::Error::other(why),
                });
            }
            Progress::Wait {
                fd,
                interest,
                deadline,
            } => {
                event = match fd {
                    None => {
                        if let Some(d) = deadline {
                            std::thread::sleep(d.saturating_duration_since(Instant::now()));
                        }
                        Event::Timeout
                    }
                    Some(_) => {
                        let Some(fd) = dial.waiting_on() else {
                            unreachable!("a wait on a descriptor names the phase's descriptor")
                        };
                        let ready = match interest {
                            Interest::Readable => wait_readable(fd, deadline),
                            Interest::Writable => crate::sys::socket::wait_writable(fd, deadline),
                        };
                        match ready {
                            Ok(true) => Event::Ready,
                            _ => Event::Timeout,
                        }
                    }
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn refused_connect_fails_with_the_target_named() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let addr = Arc::new(Address::parse(&format!("TCP:127.0.0.1:{port}")).unwrap());
        let err = dial_blocking(addr).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "TCP:127.0.0.1:{port}: connect to 127.0.0.1:{port} failed: Connection refused (os error 111)"
            )
        );
    }

    #[test]
    fn retry_rounds_reach_a_late_listener() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
            let _ = l.accept();
        });
        let addr = Arc::new(
            Address::parse(&format!("TCP:127.0.0.1:{port},retry=20,interval=0.05")).unwrap(),
        );
        dial_blocking(addr).expect("a retry reaches the listener");
        late.join().unwrap();
    }
}
