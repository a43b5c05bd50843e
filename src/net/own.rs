//! The machine's own addresses, for the proxies' destination check: a name allowed by a
//! `dest=` name entry must not resolve to the relay's own host (a DNS-rebinding path to its
//! services). Read with getifaddrs(3) when first asked, once per dial round, so an address
//! added since is seen; a failure to read them counts every address as the host's own
//! (refusing is the safe side).

use std::cell::OnceCell;
use std::net::IpAddr;

/// The host's interface addresses, read on first use.
#[derive(Debug, Default)]
pub(crate) struct OwnAddresses {
    addresses: OnceCell<Option<Vec<IpAddr>>>,
}

fn read() -> Option<Vec<IpAddr>> {
    let all = nix::ifaddrs::getifaddrs().ok()?;
    Some(
        all.filter_map(|i| i.address)
            .filter_map(|a| {
                if let Some(v4) = a.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
    )
}

impl OwnAddresses {
    /// Whether `ip` is an address of one of the host's interfaces.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match self.addresses.get_or_init(read) {
            Some(list) => list.iter().any(|a| a.to_canonical() == ip),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_one_of_the_hosts_addresses_and_a_documentation_address_is_not() {
        let own = OwnAddresses::default();
        assert!(own.contains("127.0.0.1".parse().unwrap()));
        assert!(!own.contains("192.0.2.123".parse().unwrap()));
    }
}
