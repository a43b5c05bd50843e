//! The rules that span a relay's two addresses (which may fork, which may listen, STDIO
//! once): pure, shared by the command line and the service config, so that a pair the one
//! refuses the other refuses too.

use super::address::Address;
use super::kind::Kind;

/// Checks that the two addresses make sense together (stage two of argument parsing): the
/// message names the address at fault.
pub fn check_pair(first: &Address, second: &Address) -> Result<(), String> {
    if second.options.fork {
        return Err(format!(
            "option \"fork\" is only valid on the first address, not on \"{}\"",
            second.text
        ));
    }
    for a in [first, second] {
        if a.options.max_children.is_some() && !a.options.fork {
            return Err(format!(
                "option \"max-children\" needs \"fork\" in \"{}\"",
                a.text
            ));
        }
    }
    if first.is_proxy() {
        return Err(format!(
            "\"{}\" serves the clients of the other address: it must be the second address",
            first.text
        ));
    }
    // The PROXY protocol describes the accepted client to the dialed backend: `send-proxy`
    // belongs on the second address, `accept-proxy` on the first.
    if first.options.send_proxy.is_some() {
        return Err(format!(
            "option \"send-proxy\" is only valid on the second address, not on \"{}\"",
            first.text
        ));
    }
    if second.options.accept_proxy {
        return Err(format!(
            "option \"accept-proxy\" is only valid on the first address, not on \"{}\"",
            second.text
        ));
    }
    if second.is_proxy() && first.options.accept_proxy {
        return Err(format!(
            "option \"accept-proxy\" cannot be used with \"{}\": a connection runs one handshake, and the proxy's is its request",
            second.text
        ));
    }
    let stdio = |a: &Address| a.kind == Kind::Stdio;
    if second.is_proxy() && stdio(first) {
        return Err(format!(
            "\"{}\" needs a socket on the first address, not STDIO",
            second.text
        ));
    }
    if stdio(first) && stdio(second) {
        return Err("STDIO can be used only once".into());
    }
    if first.options.fork && stdio(second) {
        return Err(format!(
            "STDIO cannot serve more than one connection: remove \"fork\" from \"{}\"",
            first.text
        ));
    }
    // An inherited descriptor's type is known only once it is taken: checked then.
    let inherited = |a: &Address| matches!(a.kind, Kind::AcceptFd { .. });
    if !inherited(first) && !inherited(second) {
        check_message_pair(first, first.is_message(), second, second.is_message())?;
    }
    if matches!(second.kind, Kind::UdpListen { .. }) {
        return Err(format!(
            "\"{}\" must be the first address: UDP-LISTEN makes a session per sender, for \
             the second address to be opened for",
            second.text
        ));
    }
    if first.is_listener() && second.is_listener() {
        return Err(format!(
            "both addresses listen (\"{}\" and \"{}\"): one of them must connect or be STDIO",
            first.text, second.text
        ));
    }
    Ok(())
}

/// Checks that messages can cross between the two addresses (`*_message`: whether each end
/// keeps message boundaries): a message end and a stream end only with `framing=` on the
/// stream (without it each message's boundary would be lost on the stream), and `framing=`
/// only opposite a message end.
pub fn check_message_pair(
    first: &Address,
    first_message: bool,
    second: &Address,
    second_message: bool,
) -> Result<(), String> {
    let framed = |a: &Address| a.options.framing.is_some();
    match (first_message, second_message) {
        (true, false) | (false, true) => {
            let (message, stream) = match first_message {
                true => (first, second),
                false => (second, first),
            };
            if !framed(stream) {
                return Err(format!(
                    "\"{}\" carries messages and \"{}\" is a stream, which would merge them: \
                     add framing=len16 to \"{}\" (a 2-byte length before each message) or \
                     make both ends message sockets",
                    message.text, stream.text, stream.text
                ));
            }
        }
        _ => {
            if let Some(a) = [first, second].into_iter().find(|a| framed(a)) {
                return Err(format!(
                    "option \"framing\" on \"{}\" frames messages, but the other address \
                     (\"{}\") carries none: framing goes opposite a SEQPACKET or UDP address",
                    a.text,
                    if std::ptr::eq(a, first) {
                        &second.text
                    } else {
                        &first.text
                    }
                ));
            }
        }
    }
    Ok(())
}
