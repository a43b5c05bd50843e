//! The parameters of an address (ports, CIDs, paths, hosts), each parsed with a message
//! that names the bad value.

use std::path::PathBuf;

use super::error::AddressError;

/// The longest UNIX socket path the kernel accepts (sun_path minus the terminating NUL).
pub const UNIX_PATH_MAX: usize = 107;

pub(super) fn parse_port(text: &str) -> Result<u16, AddressError> {
    match text.parse::<u64>() {
        Ok(n) if n <= u16::MAX as u64 => Ok(n as u16),
        Ok(_) => Err(AddressError::PortRange(text.to_string())),
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            Err(AddressError::PortRange(text.to_string()))
        }
        Err(_) => Err(AddressError::PortNotNumber(text.to_string())),
    }
}

/// Parses a u32 that may also be written `-1` (all ones: "any").
pub(super) fn parse_u32_or_any(text: &str) -> Option<u32> {
    if text == "-1" {
        return Some(u32::MAX);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return u32::from_str_radix(hex, 16).ok();
    }
    text.parse::<u32>().ok()
}

pub(super) fn parse_cid(text: &str) -> Result<u32, AddressError> {
    parse_u32_or_any(text).ok_or_else(|| AddressError::Cid(text.to_string()))
}

pub(super) fn parse_vsock_port(text: &str) -> Result<u32, AddressError> {
    parse_u32_or_any(text).ok_or_else(|| AddressError::VsockPort(text.to_string()))
}

pub(super) fn parse_path(text: &str, kind: &'static str) -> Result<PathBuf, AddressError> {
    if text.is_empty() {
        return Err(AddressError::EmptyPath(kind));
    }
    if text.contains('\0') {
        return Err(AddressError::PathNul {
            kind,
            path: text.replace('\0', "\\0"),
        });
    }
    if text.len() > UNIX_PATH_MAX {
        return Err(AddressError::PathTooLong {
            path: text.to_string(),
            len: text.len(),
        });
    }
    Ok(PathBuf::from(text))
}

/// Removes the brackets around an IPv6 literal: `[::1]` -> `::1`.
pub fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

pub(super) fn parse_host(text: &str, kind: &'static str) -> Result<String, AddressError> {
    let host = strip_brackets(text);
    if host.is_empty() {
        return Err(AddressError::EmptyHost(kind));
    }
    Ok(host.to_string())
}
