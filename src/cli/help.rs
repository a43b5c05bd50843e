//! The help text beyond the flags, written once as data and rendered three ways: plain text
//! for `--help`, roff for the man page ([`super::man`]), Markdown for the manual's tables (`docs/manual.md`)
//! ([`super::readme`]). The address types and options are read from the grammar's own tables
//! ([`crate::addr::keyword_docs`], [`crate::addr::option_docs`]), so a keyword or option the
//! grammar accepts cannot be missing here; the sections socat's man page has and clap does not
//! render (examples, exit status, signals) are the constants below.
//!
//! Markup is one rule: text in backquotes is code (bold in the man page, as written in
//! the Markdown docs, plain in `--help`).

use crate::addr::{KeywordDoc, OptionDoc, keyword_docs, option_docs};

/// One block of a section: a paragraph, or a term with its explanation.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Block {
    Para(&'static str),
    Item(&'static str, &'static str),
}

/// How an address is written, before the table of types.
pub(crate) const ADDRESS_SYNTAX: &[Block] = &[
    Block::Para(
        "An address is `KEYWORD:param:param,option,option=value`. Keywords and option names \
         are case-insensitive. Quoting follows socat: `\"...\"` and `'...'` quote (the quotes \
         are removed), `\\` escapes one character, and `( )`, `[ ]`, `{ }` group text in which \
         `:` and `,` lose their meaning (so `TCP6:[::1]:80` works). Once the first `,` is seen, \
         `:` belongs to option values (`bind=10.0.0.1:4000`).",
    ),
    Block::Para(
        "The first address is the one that listens (or `STDIO`); the second connects for \
         every connection the first accepts.",
    ),
];

/// What follows the table of options.
pub(crate) const OPTIONS_NOTE: &[Block] = &[Block::Para(
    "An option that does not apply to the address type is an error, never silently ignored. \
     Every malformed address or option fails before anything is opened, with exit status 2 and \
     a message that names the token.",
)];

/// `vsplice serve`, in a few paragraphs (`docs/service.md` has the whole story).
pub(crate) const SERVICE_MODE: &[Block] = &[
    Block::Para(
        "`vsplice serve --config FILE` runs every relay a TOML file declares in one process, \
         on one engine: each `[[service]]` has a `name`, a `listen` address (with `fork`), a \
         `connect` address, an optional `allow` list and the relay options of the command line \
         as keys (`idle-timeout`, `linger`, `one-way`, `buffer`, `mode`, `max-children`). \
         Top-level keys (`drain-timeout`, `threads`, `receive-budget`, `pin`) are global; a \
         `[metrics]` table with `listen` serves Prometheus text at `GET /metrics`.",
    ),
    Block::Para(
        "`vsplice serve --check --config FILE` only checks the file: one line per service and \
         exit 0, or the first error (file, line, key) and exit 2. Nothing is opened before the \
         whole file is checked. Under systemd (`Type=notify`) vsplice reports `READY=1`, \
         `RELOADING=1`, `STOPPING=1` and feeds the watchdog; `ACCEPT-FD:n` serves sockets that \
         systemd passes.",
    ),
];

/// `vsplice bench`, in one paragraph before its subcommands.
pub(crate) const BENCH: &[Block] = &[Block::Para(
    "`vsplice bench` measures throughput (iperf style), request-response latency and \
     connection rates over vsock, TCP or UNIX sockets, with or without a relay in the path: a \
     `server` on one side, a `client` on the other, or `demo` on one machine.",
)];

/// Example command lines and what each does.
pub(crate) const EXAMPLES: &[(&str, &str)] = &[
    (
        "vsplice VSOCK-LISTEN:5201,fork TCP:localhost:5201",
        "guests' connections to vsock port 5201 -> a TCP service on this host",
    ),
    (
        "vsplice TCP-LISTEN:8080,fork VSOCK-CONNECT:3:80",
        "TCP port 8080 of the host -> port 80 of the guest with CID 3",
    ),
    (
        "vsplice UNIX-LISTEN:/run/app.sock,fork VSOCK:2:9000",
        "in a guest: a local UNIX socket -> port 9000 of the host",
    ),
    (
        "vsplice - VSOCK-CONNECT:2:5000 < request > reply",
        "STDIO, like socat",
    ),
    (
        "vsplice TCP-LISTEN:2222,fork VSOCK-UDS-CONNECT:/run/firecracker.vsock:22",
        "TCP port 2222 -> port 22 of a Firecracker guest, through the VMM's hybrid-vsock socket",
    ),
    (
        "vsplice VSOCK-LISTEN:22,fork,allow=cid:3,allow=cid:10-20 TCP:127.0.0.1:22",
        "serve only the guests with CID 3 or 10 to 20",
    ),
    (
        "vsplice VSOCK-LISTEN:1080,fork,allow=cid:16 SOCKS5-SERVER,dest=*.example.com:443",
        "an egress proxy for the enclave with CID 16: SOCKS5, to port 443 of example.com's hosts only",
    ),
    (
        "vsplice UDP-LISTEN:53,bind=127.0.0.1,fork VSOCK-CONNECT:2:53,framing=len16",
        "in an enclave or guest: DNS queries -> the host over vsock, framed as DNS over TCP",
    ),
    (
        "systemd-socket-activate -l 2222 vsplice ACCEPT-FD:3,fork VSOCK-CONNECT:3:22",
        "serve a listening socket that systemd opened",
    ),
    (
        "vsplice serve --config /etc/vsplice/relays.toml",
        "every relay a TOML file declares (service mode)",
    ),
    (
        "vsplice bench demo",
        "measure on this machine: direct, through vsplice, and through socat",
    ),
    (
        "vsplice bench client VSOCK-CONNECT:3:5201 --time 10",
        "on the host, against `vsplice bench server VSOCK-LISTEN:5201` in the guest",
    ),
];

/// What the exit status says.
pub(crate) const EXIT_STATUS: &[Block] = &[
    Block::Item(
        "0",
        "the relay ended normally, or a signal asked it to end (the signals are listed below)",
    ),
    Block::Item(
        "1",
        "a run-time failure stopped it (address in use, connect refused, DNS failure: the \
         message names the address and the OS error), or a relay without `fork` had its only \
         connection fail",
    ),
    Block::Item(
        "2",
        "a usage error: a malformed address, option or configuration file, named in the message",
    ),
];

/// What each signal does.
pub(crate) const SIGNALS: &[Block] = &[
    Block::Item(
        "SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGXCPU, SIGIO, SIGPWR",
        "drain: stop accepting, let open connections finish for `--drain-timeout` (or the \
         file's `drain-timeout`), then cut what is left with resets; a second signal cuts at \
         once. A UNIX-LISTEN socket file is removed. Exit status 0.",
    ),
    Block::Item(
        "SIGHUP",
        "`vsplice serve` reads its file again and applies it to new connections (open ones keep \
         their service's entry); a relay on the command line drains as on SIGTERM.",
    ),
    Block::Item(
        "SIGPIPE",
        "ignored: a peer that went away costs its connection, never the process.",
    ),
];

/// Every address type and option (aliases included), read from the grammar's tables.
pub(crate) struct AddressDocs {
    pub types: Vec<KeywordDoc>,
    pub options: Vec<OptionDoc>,
}

pub(crate) fn address_docs() -> AddressDocs {
    AddressDocs {
        types: keyword_docs(),
        options: option_docs(),
    }
}

/// Text without its markup, for `--help`.
pub(crate) fn plain(text: &str) -> String {
    text.replace('`', "")
}

/// `text` wrapped to `width` columns, every line indented by `indent` spaces.
pub(crate) fn wrap(text: &str, indent: usize, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent + line.len() + 1 + word.len() > width {
            out.push_str(&" ".repeat(indent));
            out.push_str(&line);
            out.push('\n');
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        out.push_str(&" ".repeat(indent));
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn aliases_in_parens<S: AsRef<str>>(aliases: &[S]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let list: Vec<&str> = aliases.iter().map(AsRef::as_ref).collect();
    format!(" ({})", list.join(", "))
}

/// The text after `-h`'s flags: every address type and option with its aliases, and the
/// example command lines.
pub(crate) fn short_help() -> String {
    let docs = address_docs();
    let mut out = String::from(
        "Addresses (socat syntax: KEYWORD:param:param,option,option=value; case-insensitive):\n",
    );
    for t in &docs.types {
        let line = format!("  {:<30}{}", t.usage, t.aliases.join(", "));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let options: Vec<String> = docs
        .options
        .iter()
        .map(|o| format!("{}{}", o.usage, aliases_in_parens(&o.aliases)))
        .collect();
    out.push_str("Address options:\n");
    out.push_str(&wrap(&(options.join(", ") + "."), 2, 96));
    out.push_str("\nExamples:\n");
    for (line, _) in EXAMPLES {
        out.push_str(&format!("  {line}\n"));
    }
    out.push_str("\nMore in `vsplice --help` and vsplice(1).");
    plain(&out)
}

fn blocks_text(blocks: &[Block], out: &mut String) {
    for b in blocks {
        match b {
            Block::Para(text) => {
                // A blank line between paragraphs and before one that follows a list.
                if !out.is_empty() && !out.ends_with(":\n") && !out.ends_with("\n\n") {
                    out.push('\n');
                }
                out.push_str(&wrap(&plain(text), 2, 96));
            }
            Block::Item(term, text) => {
                out.push_str(&format!("  {}\n", plain(term)));
                out.push_str(&wrap(&plain(text), 6, 96));
            }
        }
    }
}

/// `blocks` as `--help` shows them, for a subcommand's `--help` (`serve`, `bench`).
pub(crate) fn blocks_help(blocks: &[Block]) -> String {
    let mut out = String::new();
    blocks_text(blocks, &mut out);
    out.trim_end().to_string()
}

/// The text after `--help`'s flags: the address syntax, every address type and option with
/// its help, the examples, the exit status and the signals.
pub(crate) fn long_help() -> String {
    let docs = address_docs();
    let mut out = String::from("Addresses:\n");
    blocks_text(ADDRESS_SYNTAX, &mut out);
    out.push('\n');
    for t in &docs.types {
        out.push_str(&format!("  {}{}\n", t.usage, aliases_in_parens(&t.aliases)));
        out.push_str(&wrap(&plain(t.help), 6, 96));
    }
    out.push_str("\nAddress options:\n");
    for o in &docs.options {
        out.push_str(&format!("  {}{}\n", o.usage, aliases_in_parens(&o.aliases)));
        let text = format!("[{}] {}", o.help.applies_to, o.help.meaning);
        out.push_str(&wrap(&plain(&text), 6, 96));
    }
    blocks_text(OPTIONS_NOTE, &mut out);
    out.push_str("\nExamples:\n");
    for (line, what) in EXAMPLES {
        out.push_str(&format!("  {line}\n"));
        out.push_str(&wrap(&plain(what), 6, 96));
    }
    out.push_str("\nExit status:\n");
    blocks_text(EXIT_STATUS, &mut out);
    out.push_str("\nSignals:\n");
    blocks_text(SIGNALS, &mut out);
    out.trim_end().to_string()
}
