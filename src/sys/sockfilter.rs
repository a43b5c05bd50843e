//! A socket filter (classic BPF, `SO_ATTACH_FILTER`) that lets a UDP socket queue only the
//! datagrams of one peer.
//!
//! Why: a `UDP-LISTEN` session socket is bound to the listener's own address and then
//! connected to its sender (`net::udp`). Until the connect, and for a datagram whose socket
//! lookup ran just before it, the kernel may queue another new sender's datagram on the
//! session socket (it matches as well as the listener does), and the session would relay it
//! as its own sender's: one client's bytes to another client's backend flow, and the answer
//! to the wrong client (seen in `tests/service_udp.rs`, 2 of 12 runs of 50 senders under load).
//! With the filter attached right after the connect, nothing but the peer's datagrams is ever
//! queued from then on; what came before is taken off the queue by `net::udp`.
//!
//! The filter runs where UDP queues a datagram on the socket (`sk_filter_trim_cap` in
//! `udp_queue_rcv_one_skb`), with the packet's data at its UDP header: the source port is
//! at offset 0, and the IP header is reached through `SKF_NET_OFF`.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;

/// `SO_ATTACH_FILTER` of include/uapi/asm-generic/socket.h (the libc crate has it for some
/// targets only).
const SO_ATTACH_FILTER: libc::c_int = 26;

/// One classic BPF instruction.
fn insn(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// A load of `size` (`BPF_W`, `BPF_H`, `BPF_B`) at `offset` from the IP header.
fn load_ip(size: u32, offset: i32) -> libc::sock_filter {
    insn(
        libc::BPF_LD | size | libc::BPF_ABS,
        0,
        0,
        (libc::SKF_NET_OFF + offset) as u32,
    )
}

/// The program that keeps the datagrams whose source is `peer` (an IPv4-mapped IPv6 peer is
/// matched as the IPv4 packets it sends) and drops every other.
pub(crate) fn only_from(peer: SocketAddr) -> Vec<libc::sock_filter> {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    // Each check jumps to the final "drop" when it fails; its offset is filled in at the end.
    let mut program = vec![
        load_ip(libc::BPF_B, 0),
        insn(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, 0xf0),
    ];
    let mut checks = Vec::new();
    let mut check = |program: &mut Vec<libc::sock_filter>, value: u32| {
        checks.push(program.len());
        program.push(insn(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            0,
            value,
        ));
    };
    match ip {
        IpAddr::V4(v4) => {
            check(&mut program, 0x40);
            program.push(load_ip(libc::BPF_W, 12));
            check(&mut program, u32::from(v4));
        }
        IpAddr::V6(v6) => {
            check(&mut program, 0x60);
            for (i, word) in v6.octets().chunks(4).enumerate() {
                program.push(load_ip(libc::BPF_W, 8 + 4 * i as i32));
                check(
                    &mut program,
                    u32::from_be_bytes(word.try_into().expect("4 bytes")),
                );
            }
        }
    }
    // The UDP source port, at the start of the data.
    program.push(insn(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 0, 0, 0));
    check(&mut program, u32::from(peer.port()));
    program.push(insn(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    let drop = program.len();
    program.push(insn(libc::BPF_RET | libc::BPF_K, 0, 0, 0));
    for at in checks {
        program[at].jf = u8::try_from(drop - at - 1).expect("a short program");
    }
    program
}

/// Attaches [`only_from`]`(peer)` to the socket `fd`: from now on only `peer`'s datagrams are
/// queued on it (what is queued already stays).
pub(crate) fn accept_only_from(fd: BorrowedFd<'_>, peer: SocketAddr) -> io::Result<()> {
    let mut program = only_from(peer);
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, which lives to the end of this function; the
    // kernel copies the program during the call and keeps no pointer to it.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn an_ipv4_program_checks_version_address_and_port_and_jumps_to_one_drop() {
        let p = only_from("127.0.0.2:5353".parse().unwrap());
        assert_eq!(p.len(), 9);
        assert_eq!(p[3].k, (libc::SKF_NET_OFF + 12) as u32);
        assert_eq!(p[4].k, 0x7f00_0002);
        assert_eq!(p[6].k, 5353);
        let drop = p.len() - 1;
        assert_eq!((p[drop].code as u32, p[drop].k), (libc::BPF_RET, 0));
        for at in [2, 4, 6] {
            assert_eq!(at + 1 + p[at].jf as usize, drop, "check {at}");
        }
        let mapped = only_from("[::ffff:127.0.0.2]:5353".parse().unwrap());
        assert_eq!(
            mapped
                .iter()
                .map(|i| (i.code, i.jf, i.k))
                .collect::<Vec<_>>(),
            p.iter().map(|i| (i.code, i.jf, i.k)).collect::<Vec<_>>(),
            "an IPv4-mapped peer sends IPv4 packets"
        );
        assert_eq!(only_from("[::1]:53".parse().unwrap()).len(), 15);
    }

    /// Sends one datagram from each sender to `to`, then returns what `socket` queued.
    fn queued(socket: &UdpSocket, senders: &[&UdpSocket]) -> Vec<Vec<u8>> {
        let to = socket.local_addr().unwrap();
        for (i, s) in senders.iter().enumerate() {
            s.send_to(format!("from {i}").as_bytes(), to).unwrap();
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = socket.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
        got
    }

    #[test]
    fn a_filtered_socket_queues_its_peers_datagrams_and_no_other_senders() {
        for host in ["127.0.0.1", "::1"] {
            let Ok(socket) = UdpSocket::bind((host, 0)) else {
                continue;
            };
            let peer = UdpSocket::bind((host, 0)).unwrap();
            let other = UdpSocket::bind((host, 0)).unwrap();
            // An unconnected socket: the filter alone decides.
            accept_only_from(socket.as_fd(), peer.local_addr().unwrap()).unwrap();
            assert_eq!(
                queued(&socket, &[&other, &peer, &other]),
                vec![b"from 1".to_vec()],
                "{host}"
            );
        }
    }
}
