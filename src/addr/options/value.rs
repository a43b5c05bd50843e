//! The parsers of option values shared by several options (a flag's `0`/`1`, a number, a
//! number in the kernel's range, `socktype=`), and the error every bad value becomes, naming
//! the option and the value.

use crate::addr::error::AddressError;
use crate::addr::kind::{KindTag, SocketType};

pub(super) fn parse_bool_value(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

pub(super) fn option_value_error(
    option: &str,
    value: &str,
    why: impl Into<String>,
) -> AddressError {
    AddressError::OptionValue {
        option: option.to_string(),
        value: value.to_string(),
        why: why.into(),
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(
    option: &str,
    value: &str,
) -> Result<T, AddressError> {
    value
        .parse::<T>()
        .map_err(|_| option_value_error(option, value, "not a number"))
}

/// The kernel's limits for the keepalive options (include/net/tcp.h): a value outside
/// makes setsockopt fail with EINVAL when the socket is opened, so they are checked here.
pub(super) const MAX_TCP_KEEPIDLE: u32 = 32767;
pub(super) const MAX_TCP_KEEPINTVL: u32 = 32767;
pub(super) const MAX_TCP_KEEPCNT: u32 = 127;

pub(super) fn parse_in_range(
    option: &str,
    value: &str,
    min: u32,
    max: u32,
) -> Result<u32, AddressError> {
    match value.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(option_value_error(
            option,
            value,
            format!("not a number {min}-{max}"),
        )),
    }
}

/// `socktype=`'s value: socat's numbers (1 stream, 5 seqpacket) or their names.
pub(super) fn parse_socktype(
    tag: KindTag,
    option: &str,
    value: &str,
) -> Result<SocketType, AddressError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "stream" => Ok(SocketType::Stream),
        "5" | "seqpacket" => Ok(SocketType::Seqpacket),
        "2" | "dgram" | "datagram" => Err(option_value_error(
            option,
            value,
            format!(
                "{} has no datagram type (vsock has none; for datagrams use UDP addresses)",
                tag.name()
            ),
        )),
        _ => Err(option_value_error(
            option,
            value,
            "expected 1 (stream) or 5 (seqpacket)",
        )),
    }
}

/// `guest-cid=`'s value: a guest's CID, not one of the reserved 0 (hypervisor), 1 (local),
/// 2 (host) nor -1 (any).
pub fn parse_guest_cid(option: &str, value: &str) -> Result<u32, AddressError> {
    match value.parse::<u32>() {
        Ok(n) if (3..u32::MAX).contains(&n) => Ok(n),
        _ => Err(option_value_error(
            option,
            value,
            "not a guest CID 3-4294967294 (0-2 and -1 are reserved)",
        )),
    }
}
