//! vsplice's one error type, with variants named by the operation that failed. Grammar and
//! usage errors exit with status 2 (nothing was opened), runtime failures with 1.

use std::io;

use crate::addr::AddressError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address \"{text}\": {source}")]
    Address {
        text: String,
        #[source]
        source: AddressError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{address}: cannot resolve: {source}")]
    Resolve {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("{address}: cannot listen on {local}: {source}")]
    Listen {
        address: String,
        local: String,
        #[source]
        source: io::Error,
    },
    #[error("{address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("{address}: accept failed: {source}")]
    Accept {
        address: String,
        #[source]
        source: io::Error,
    },
    #[error("STDIO: {0}")]
    Stdio(#[source] io::Error),
    #[error("cannot start the engine: {0}")]
    Engine(#[source] io::Error),
    #[error("{0}")]
    Bench(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The process exit status this error maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Address { .. } | Error::Usage(_) => 2,
            _ => 1,
        }
    }

    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_address_and_the_os_error() {
        let e = Error::Listen {
            address: "TCP-LISTEN:80".into(),
            local: "[::]:80".into(),
            source: io::Error::from_raw_os_error(libc::EADDRINUSE),
        };
        assert_eq!(
            e.to_string(),
            "TCP-LISTEN:80: cannot listen on [::]:80: Address already in use (os error 98)"
        );
        assert_eq!(e.exit_code(), 1);
        let e = Error::Address {
            text: "NOPE:1".into(),
            source: AddressError::UnknownType("NOPE".into()),
        };
        assert_eq!(
            e.to_string(),
            "invalid address \"NOPE:1\": unknown address type \"NOPE\""
        );
        assert_eq!(e.exit_code(), 2);
        let e = Error::Connect {
            address: "TCP:127.0.0.1:1".into(),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        assert_eq!(
            e.to_string(),
            "TCP:127.0.0.1:1: Connection refused (os error 111)"
        );
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
    }
}
