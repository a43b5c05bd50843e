//! Probe (guest only): how many bytes one splice(vsock -> pipe) moves per call, beside recv,
//! readv with page-sized segments, and /dev/zero (whose splice is the same `copy_splice_read`).
//! Prints a table; asserts only that every byte arrived.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, SpliceFFlags, fcntl, splice};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

const TOTAL: usize = 16 << 20;
const PORT: u32 = 7900;

#[derive(Clone, Copy)]
enum How {
    Recv,
    Readv,
    Splice {
        len: usize,
        flags: SpliceFFlags,
        pipe: i32,
        drain_at: usize,
        lowat: i32,
    },
    Zero {
        len: usize,
    },
}

fn pair(listener: &super::Listen) -> (OwnedFd, std::thread::JoinHandle<()>) {
    let writer = std::thread::spawn(|| {
        let mut s = super::VsockStream::connect(1, PORT).expect("connect");
        let chunk = vec![7u8; 128 << 10];
        for _ in 0..TOTAL / chunk.len() {
            s.write_all(&chunk).expect("write");
        }
    });
    let super::Listen::Vsock(fd, _) = listener else {
        unreachable!()
    };
    let c =
        nix::sys::socket::accept4(fd, nix::sys::socket::SockFlag::SOCK_CLOEXEC).expect("accept");
    (c, writer)
}

fn wait_readable(fd: &OwnedFd) {
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::NONE).expect("poll");
}

/// Per-call sizes of one run of `how`.
fn measure(listener: &super::Listen, how: How) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    if let How::Zero { len } = how {
        let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
        let (r, w) = nix::unistd::pipe().unwrap();
        fcntl(&w, FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let mut got = 0;
        while got < TOTAL {
            let n = splice(&zero, None, &w, None, len, SpliceFFlags::empty()).unwrap();
            nix::unistd::read(&r, &mut buf[..n]).unwrap();
            sizes.push(n);
            got += n;
        }
        return sizes;
    }
    let (sock, writer) = pair(listener);
    let mut got = 0;
    match how {
        How::Recv => {
            while got < TOTAL {
                let n = nix::unistd::read(&sock, &mut buf).unwrap();
                assert!(n > 0);
                sizes.push(n);
                got += n;
            }
        }
        How::Readv => {
            while got < TOTAL {
                let mut iov: Vec<std::io::IoSliceMut> =
                    buf.chunks_mut(4096).map(std::io::IoSliceMut::new).collect();
                let n = nix::sys::uio::readv(&sock, &mut iov).unwrap();
                assert!(n > 0);
                sizes.push(n);
                got += n;
            }
        }
        How::Splice {
            len,
            flags,
            pipe,
            drain_at,
            lowat,
        } => {
            if lowat > 0 {
                // SAFETY: a valid socket and a c_int option value that outlives the call.
                let rc = unsafe {
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVLOWAT,
                        (&lowat as *const i32).cast(),
                        4,
                    )
                };
                assert_eq!(rc, 0, "SO_RCVLOWAT");
            }
            let (r, w) = nix::unistd::pipe().unwrap();
            fcntl(&w, FcntlArg::F_SETPIPE_SZ(pipe)).unwrap();
            let mut held = 0;
            while got < TOTAL {
                if flags.contains(SpliceFFlags::SPLICE_F_NONBLOCK) {
                    wait_readable(&sock);
                }
                match splice(&sock, None, &w, None, len, flags) {
                    Ok(n) => {
                        assert!(n > 0, "end of stream before {TOTAL}");
                        sizes.push(n);
                        got += n;
                        held += n;
                    }
                    Err(nix::errno::Errno::EAGAIN) => {}
                    Err(e) => panic!("splice: {e}"),
                }
                if held >= drain_at || got >= TOTAL {
                    while held > 0 {
                        let n = held.min(buf.len());
                        held -= nix::unistd::read(&r, &mut buf[..n]).unwrap();
                    }
                }
            }
        }
        How::Zero { .. } => unreachable!(),
    }
    writer.join().unwrap();
    assert_eq!(got, TOTAL);
    sizes
}

pub fn run() {
    super::guest_only();
    let listener = super::Listen::vsock(PORT);
    let nb = SpliceFFlags::SPLICE_F_NONBLOCK;
    let more = nb | SpliceFFlags::SPLICE_F_MORE;
    let blocking = SpliceFFlags::empty();
    let sp = |len, flags, pipe, drain_at, lowat| How::Splice {
        len,
        flags,
        pipe,
        drain_at,
        lowat,
    };
    let cases: &[(&str, How)] = &[
        ("recv 1 MiB (read)", How::Recv),
        ("readv 256 x 4 KiB iovecs", How::Readv),
        (
            "splice NONBLOCK after poll, pipe 1M, len 1M",
            sp(1 << 20, nb, 1 << 20, 0, 0),
        ),
        (
            "splice blocking, pipe 1M, len 1M",
            sp(1 << 20, blocking, 1 << 20, 0, 0),
        ),
        (
            "splice blocking, SO_RCVLOWAT 64K",
            sp(1 << 20, blocking, 1 << 20, 0, 65536),
        ),
        (
            "splice NONBLOCK, SO_RCVLOWAT 64K",
            sp(1 << 20, nb, 1 << 20, 0, 65536),
        ),
        ("splice NONBLOCK|MORE", sp(1 << 20, more, 1 << 20, 0, 0)),
        ("splice NONBLOCK, len 64K", sp(65536, nb, 1 << 20, 0, 0)),
        ("splice NONBLOCK, len 16M", sp(16 << 20, nb, 1 << 20, 0, 0)),
        (
            "splice NONBLOCK, pipe half full",
            sp(1 << 20, nb, 1 << 20, 512 << 10, 0),
        ),
        ("splice NONBLOCK, pipe 64K", sp(65536, nb, 65536, 0, 0)),
        ("splice NONBLOCK, pipe 4M", sp(4 << 20, nb, 4 << 20, 0, 0)),
        ("/dev/zero splice, len 1M", How::Zero { len: 1 << 20 }),
        ("/dev/zero splice, len 64K", How::Zero { len: 65536 }),
    ];
    println!(
        "kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );
    println!("| case | calls | bytes/call median | min | max | calls of 4096 |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, how) in cases {
        let mut s = measure(&listener, *how);
        let pages = s.iter().filter(|&&n| n == 4096).count();
        s.sort_unstable();
        println!(
            "| {name} | {} | {} | {} | {} | {pages} |",
            s.len(),
            s[s.len() / 2],
            s[0],
            s[s.len() - 1]
        );
    }
}
