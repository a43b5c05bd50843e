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
    if first.is_listener() && second.is_listener() {
        return Err(format!(
            "both addresses listen (\"{}\" and \"{}\"): one of them must connect or be STDIO",
            first.text, second.text
        ));
    }
    Ok(())
}
