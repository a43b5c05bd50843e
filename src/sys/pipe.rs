//! Pipes, the staging area of the splice data path, and the `splice`/`read`/`write` calls
//! that move bytes through them.
//!
//! A [`Pipe`] owns both ends and closes them on drop. Both ends are non-blocking and every
//! splice passes `SPLICE_F_NONBLOCK`, so a transfer never parks the calling thread: it moves
//! what it can and reports `WouldBlock` otherwise.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl};

use super::from_nix;

/// A kernel pipe with both ends owned.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

/// Pipes open in the process (service mode's `engine_pipes_in_use` gauge). Pipes are pooled,
/// so this moves when a pool grows or shrinks, not per transfer.
static OPEN: AtomicUsize = AtomicUsize::new(0);

impl Pipe {
    /// Pipes open in the process now: held by connections or kept in a pool for reuse.
    pub(crate) fn open_count() -> usize {
        OPEN.load(Ordering::Relaxed)
    }

    /// Creates a non-blocking pipe and asks for `size` bytes of capacity. When the kernel
    /// refuses the size (an unprivileged user over `pipe-user-pages-soft`, or above
    /// `pipe-max-size`), the pipe keeps what it got: [`Pipe::capacity`] says how much.
    pub(crate) fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(from_nix)?;
        let size = size.clamp(4096, i32::MAX as usize) as i32;
        let capacity = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(size)) {
            Ok(n) => n as usize,
            Err(_) => fcntl(&write, FcntlArg::F_GETPIPE_SZ).map_err(from_nix)? as usize,
        };
        OPEN.fetch_add(1, Ordering::Relaxed);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// The end data is spliced out of.
    pub(crate) fn reader(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The end data is spliced into.
    pub(crate) fn writer(&self) -> BorrowedFd<'_> {
        self.write.as_fd()
    }

    /// Bytes the pipe holds when full (a power-of-two number of pages).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Moves up to `len` bytes from `from` to `to` without blocking; one of them must be a pipe.
/// Returns `Ok(0)` at end of input and `ErrorKind::WouldBlock` when nothing can move now.
pub(crate) fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    nix::fcntl::splice(
        from,
        None,
        to,
        None,
        len,
        SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
    )
    .map_err(from_nix)
}

/// Plain `read(2)`, used to empty a pipe into a buffer when a direction falls back to copying.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    nix::unistd::read(fd, buf).map_err(from_nix)
}

/// Plain `write(2)`.
pub(crate) fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    nix::unistd::write(fd, buf).map_err(from_nix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_takes_the_requested_capacity_and_splices() {
        let a = Pipe::new(256 * 1024).unwrap();
        assert_eq!(a.capacity(), 256 * 1024);
        let b = Pipe::new(4096).unwrap();
        assert_eq!(write(a.writer(), b"hello").unwrap(), 5);
        assert_eq!(splice(a.reader(), b.writer(), 1 << 20).unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(read(b.reader(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        let err = splice(a.reader(), b.writer(), 10).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
