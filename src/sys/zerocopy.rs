//! MSG_ZEROCOPY sends (TCP, and vsock from Linux 6.7): enabling SO_ZEROCOPY, sending, and
//! reading the completion notifications from the socket's error queue. Until a send is
//! reported complete the kernel may still read its buffer, so the caller must not change it.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

const SO_ZEROCOPY: libc::c_int = 60;
const MSG_ZEROCOPY: libc::c_int = 0x400_0000;
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;

/// Turns SO_ZEROCOPY on; sockets that cannot do it say EOPNOTSUPP (UNIX sockets, older vsock).
pub(crate) fn enable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the pointer and length describe `one`, live for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// One blocking MSG_ZEROCOPY send. Each call, even a partial one, uses one notification
/// sequence number.
pub(crate) fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live slice for the call; the kernel pins its pages until the
    // completion notification, which callers wait for before changing the buffer.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            MSG_ZEROCOPY | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads the completion notifications queued now, without blocking. Returns how many sends
/// they complete (each notification covers an inclusive range of sequence numbers).
pub(crate) fn reap(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut completed = 0u32;
    loop {
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is a valid "no name, no data" header.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` points at `control`, which outlives the call; no data buffers.
        let r = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(completed);
            }
            return Err(e);
        }
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel just filled, within
        // msg_controllen; each header's data is read only if it holds a whole
        // sock_extended_err.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                let len = (*cmsg).cmsg_len as usize;
                let want =
                    libc::CMSG_LEN(std::mem::size_of::<libc::sock_extended_err>() as u32) as usize;
                if len >= want {
                    let ee: libc::sock_extended_err =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY && ee.ee_errno == 0 {
                        completed += ee.ee_data.wrapping_sub(ee.ee_info).wrapping_add(1);
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
}
