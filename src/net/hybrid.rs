//! The hybrid-vsock handshake's text (Firecracker, cloud-hypervisor): the `OK <port>` reply a
//! VMM gives to `CONNECT <port>`, parsed, and a peer's text made safe to print. Pure, so it is
//! tested on byte literals; the exchange itself is a phase of [`crate::net::dial::Dial`].

/// The longest handshake reply line accepted.
pub(crate) const MAX_REPLY: usize = 128;

/// A peer's text made safe to print in one log line or error: control characters (newline,
/// ESC, BEL) are escaped, so a peer's bytes cannot forge or hide lines nor drive a terminal.
pub(crate) fn escape_peer_text(text: &str) -> String {
    text.escape_debug().to_string()
}

/// Parses a hybrid-vsock reply line (without its newline): `OK <port>` means connected. A
/// rejected reply is quoted with its control characters escaped (`\n`, `\u{1b}`), so a
/// VMM's bytes cannot forge or hide log lines.
pub fn parse_handshake_reply(line: &[u8]) -> Result<u32, String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    let quoted = || escape_peer_text(text);
    match text.strip_prefix("OK ") {
        Some(port) => port
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("unexpected reply \"{}\"", quoted())),
        None => Err(format!("reply \"{}\"", quoted())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_replies() {
        assert_eq!(parse_handshake_reply(b"OK 1073741824"), Ok(1073741824));
        assert_eq!(parse_handshake_reply(b"OK 5\r"), Ok(5));
        assert_eq!(
            parse_handshake_reply(b"ERR no listener"),
            Err("reply \"ERR no listener\"".to_string())
        );
        assert_eq!(
            parse_handshake_reply(b"OK x"),
            Err("unexpected reply \"OK x\"".to_string())
        );
    }

    #[test]
    fn a_vmm_reply_with_control_bytes_cannot_forge_log_lines() {
        let forged = b"ERR x\r\n2026/11/26 vsplice[1] N conn 1 closed: finished\x1b[2K";
        let why = parse_handshake_reply(forged).unwrap_err();
        assert!(!why.chars().any(char::is_control), "escaped: {why:?}");
        assert!(why.contains("\\n2026"), "{why}");
        assert!(why.contains("\\u{1b}"), "{why}");
        let why = parse_handshake_reply(b"OK 5\nx").unwrap_err();
        assert!(!why.chars().any(char::is_control), "{why:?}");
    }
}
