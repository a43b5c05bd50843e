//! Standard input and output as owned descriptors (taken once per process), and what kind
//! of file they are, which decides whether a direction can splice (pipes, sockets, regular
//! files) or must copy (terminals, character devices, files opened for append, which splice
//! rejects with EINVAL).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of fds 0 and 1 (input, output). Only once per process: later calls fail.
pub(crate) fn take() -> io::Result<(OwnedFd, OwnedFd)> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("STDIO is already in use"));
    }
    // SAFETY: fds 0 and 1 are open for the life of the process unless closed, and the TAKEN
    // guard makes this the only owner; nothing else in vsplice uses them (diagnostics go to
    // fd 2).
    Ok(unsafe { (OwnedFd::from_raw_fd(0), OwnedFd::from_raw_fd(1)) })
}

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::stat::{SFlag, fstat};

use super::from_nix;

/// The file type behind a descriptor, as far as the data path cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FdKind {
    Pipe,
    Socket,
    RegularFile,
    /// Terminals and other character devices.
    CharDevice,
    Other,
}

pub(crate) fn kind_of(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let st = fstat(fd.as_fd()).map_err(from_nix)?;
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    Ok(match fmt {
        SFlag::S_IFIFO => FdKind::Pipe,
        SFlag::S_IFSOCK => FdKind::Socket,
        SFlag::S_IFREG => FdKind::RegularFile,
        SFlag::S_IFCHR => FdKind::CharDevice,
        _ => FdKind::Other,
    })
}

/// Whether splice(2) can read from `fd` (it may still fail at run time; the engine then
/// falls back to copying).
pub(crate) fn can_splice_from(fd: BorrowedFd<'_>) -> bool {
    matches!(
        kind_of(fd),
        Ok(FdKind::Pipe | FdKind::Socket | FdKind::RegularFile)
    )
}

/// Whether splice(2) can write to `fd`: not to terminals, and not to files opened with
/// O_APPEND (the kernel refuses those with EINVAL).
pub(crate) fn can_splice_to(fd: BorrowedFd<'_>) -> bool {
    match kind_of(fd) {
        Ok(FdKind::Pipe | FdKind::Socket) => true,
        Ok(FdKind::RegularFile) => match fcntl(fd, FcntlArg::F_GETFL) {
            Ok(flags) => !OFlag::from_bits_truncate(flags).contains(OFlag::O_APPEND),
            Err(_) => false,
        },
        _ => false,
    }
}
