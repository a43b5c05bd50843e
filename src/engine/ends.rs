//! The two ends of one direction as its data path sees them: the source and the sink (or
//! their fixed-file slots while the connection is parked, or `/dev/null` for a direction that
//! discards), and how the source's end of file is to be taken.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::lane::end::{self, EndOfFile};
use super::ring::Target;
use crate::net::endpoint::Endpoint;

/// The two ends of one direction, as its data path sees them.
pub(crate) struct Ends<'a> {
    source: Option<&'a Endpoint>,
    sink: Option<&'a mut Endpoint>,
    /// Fixed-file slots of [source, sink] while the connection is parked.
    fixed: Option<[u32; 2]>,
    /// The direction is turned off (`-u`/`-U`): its bytes are read and dropped into
    /// `devnull`, so the peer can finish sending and close cleanly instead of being reset.
    discard: bool,
    devnull: BorrowedFd<'a>,
}

impl<'a> Ends<'a> {
    pub(crate) fn new(
        source: Option<&'a Endpoint>,
        sink: Option<&'a mut Endpoint>,
        fixed: Option<[u32; 2]>,
        discard: bool,
        devnull: BorrowedFd<'a>,
    ) -> Ends<'a> {
        Ends {
            source,
            sink,
            fixed,
            discard,
            devnull,
        }
    }

    /// Whether the sockets live in the fixed-file table (only io_uring requests name them).
    pub(crate) fn parked(&self) -> bool {
        self.fixed.is_some()
    }

    #[cfg(test)]
    pub(crate) fn discard(&self) -> bool {
        self.discard
    }

    /// Where the direction reads.
    pub(crate) fn source(&self) -> Option<Target<'_>> {
        match self.fixed {
            Some([source, _]) => Some(Target::Fixed(source)),
            None => self.source.and_then(Endpoint::read_fd).map(Target::Fd),
        }
    }

    /// Where the direction writes (`/dev/null` when it discards).
    pub(crate) fn destination(&self) -> Option<Target<'_>> {
        if self.discard {
            return Some(Target::Fd(self.devnull));
        }
        match self.fixed {
            Some([_, sink]) => Some(Target::Fixed(sink)),
            None => self
                .sink
                .as_deref()
                .and_then(Endpoint::write_fd)
                .map(Target::Fd),
        }
    }

    /// The source's descriptor (never parked on the paths that ask).
    pub(crate) fn source_fd(&self) -> Option<RawFd> {
        match self.source() {
            Some(Target::Fd(fd)) => Some(fd.as_raw_fd()),
            _ => None,
        }
    }

    /// The destination's descriptor (never parked on the paths that ask).
    pub(crate) fn destination_fd(&self) -> Option<RawFd> {
        match self.destination() {
            Some(Target::Fd(fd)) => Some(fd.as_raw_fd()),
            _ => None,
        }
    }

    /// How the source's end of file is to be taken (see [`end::classify`]): asked of the
    /// source socket, which our write side of is still open unless the other direction
    /// passed end of file on to it. A parked socket has no descriptor to ask: its end counts
    /// as clean (parked connections exist only while descriptors run short).
    pub(crate) fn source_end(&self) -> EndOfFile {
        match self.source {
            Some(source) => end::classify(source.peer_end(), source.write_open()),
            None => EndOfFile::Clean,
        }
    }

    /// Passes end of file on to the destination, now (a discarding direction has nothing to
    /// pass on).
    pub(crate) fn shutdown_write(&mut self) -> Result<(), i32> {
        if self.discard {
            return Ok(());
        }
        match self.sink.as_deref_mut() {
            Some(sink) => sink
                .shutdown_write()
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO)),
            None => Err(libc::EBADF),
        }
    }
}
