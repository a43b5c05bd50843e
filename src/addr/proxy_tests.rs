//! The proxy addresses' grammar: `SOCKS5-SERVER` and `HTTP-CONNECT-SERVER`, their options,
//! and the rules that keep them second and never open.

use super::*;

fn error(text: &str) -> String {
    Address::parse(text).unwrap_err().to_string()
}

#[test]
fn proxy_keywords_parse_with_their_dest_list() {
    let a = Address::parse("socks5-server,dest=example.com:443,dest=10.0.0.0/8:5432").unwrap();
    assert_eq!(a.kind, Kind::Socks5Server);
    assert!(a.is_proxy() && !a.is_connector() && !a.is_listener());
    let rules: Vec<String> = a
        .options
        .proxy
        .dest
        .unwrap()
        .rules()
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(rules, ["example.com:443", "10.0.0.0/8:5432"]);
    let a = Address::parse(
        "HTTP-CONNECT-SERVER,dest=*.example.com:443,user=alice,password-file=/etc/pw,connect-timeout=3",
    )
    .unwrap();
    assert_eq!(a.kind, Kind::HttpConnectServer);
    assert_eq!(a.options.proxy.user.as_deref(), Some("alice"));
    assert_eq!(
        a.options.connect_timeout,
        Some(std::time::Duration::from_secs(3))
    );
}

#[test]
fn a_proxy_without_a_dest_list_is_refused() {
    assert_eq!(
        error("SOCKS5-SERVER"),
        "SOCKS5-SERVER needs at least one dest=HOST:PORT entry: an open proxy is never started"
    );
    assert!(error("HTTP-CONNECT-SERVER,connect-timeout=1").contains("dest="));
}

#[test]
fn user_and_password_file_come_together() {
    for text in [
        "SOCKS5-SERVER,dest=a.b:1,user=u",
        "SOCKS5-SERVER,dest=a.b:1,password-file=/x",
    ] {
        assert!(
            error(text).contains("user= and password-file= together"),
            "{text}"
        );
    }
    assert!(error("SOCKS5-SERVER,dest=a.b:1,user=a:b,password-file=/x").contains("\"a:b\""));
}

#[test]
fn proxy_options_belong_to_proxies_only() {
    assert_eq!(
        error("TCP:h:1,dest=a.b:1"),
        "option \"dest\" is not valid for TCP"
    );
    assert_eq!(
        error("SOCKS5-SERVER,dest=a.b:1,retry=3"),
        "option \"retry\" is not valid for SOCKS5-SERVER"
    );
    assert_eq!(
        error("SOCKS5-SERVER:1080,dest=a.b:1"),
        "SOCKS5-SERVER takes no parameters"
    );
    assert!(error("SOCKS5-SERVER,dest=*:443").contains("open proxy"));
}

#[test]
fn a_proxy_is_the_second_address_of_a_socket() {
    let proxy = Address::parse("SOCKS5-SERVER,dest=a.b:1").unwrap();
    let listen = Address::parse("TCP-LISTEN:1080,fork").unwrap();
    assert!(check_pair(&listen, &proxy).is_ok());
    let tcp = Address::parse("TCP:h:1").unwrap();
    assert!(
        check_pair(&proxy, &tcp)
            .unwrap_err()
            .contains("second address")
    );
    let stdio = Address::parse("STDIO").unwrap();
    assert!(
        check_pair(&stdio, &proxy)
            .unwrap_err()
            .contains("not STDIO")
    );
}
