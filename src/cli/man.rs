//! vsplice(1), in roff, in socat's order: NAME, SYNOPSIS and DESCRIPTION from the clap
//! definitions; ADDRESS TYPES and ADDRESS OPTIONS from the grammar's tables; GLOBAL OPTIONS
//! from the flags (clap_mangen); SERVICE MODE and BENCH with their subcommands' flags;
//! EXAMPLES, EXIT STATUS and SIGNALS from [`super::help`]'s constants.

use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, roman};

use super::flags::Cli;
use super::help::{self, Block};

/// `text` with its markup: backquoted code in bold.
fn inlines(text: &str) -> Vec<Inline> {
    text.split('`')
        .enumerate()
        .filter(|(_, piece)| !piece.is_empty())
        .map(|(i, piece)| {
            if i % 2 == 1 {
                bold(piece)
            } else {
                roman(piece)
            }
        })
        .collect()
}

fn blocks(roff: &mut Roff, blocks: &[Block]) {
    for b in blocks {
        match b {
            Block::Para(text) => {
                roff.control("PP", []).text(inlines(text));
            }
            Block::Item(term, text) => {
                roff.control("TP", [])
                    .text([bold(*term)])
                    .text(inlines(text));
            }
        }
    }
}

/// A term in bold with its aliases after it: `TCP:host:port` (TCP-CONNECT:).
fn term(usage: &str, aliases: &[&str]) -> Vec<Inline> {
    let mut out = vec![bold(usage)];
    if !aliases.is_empty() {
        out.push(roman(" ("));
        for (i, a) in aliases.iter().enumerate() {
            if i > 0 {
                out.push(roman(", "));
            }
            out.push(bold(*a));
        }
        out.push(roman(")"));
    }
    out
}

/// `roff`'s lines without the preamble every rendering starts with (the page's head has it:
/// it defines the apostrophe that the lines use).
fn lines(roff: &Roff) -> String {
    let preamble = Roff::new().render();
    let text = roff.render();
    text.strip_prefix(&preamble).unwrap_or(&text).to_string()
}

/// clap_mangen's rendering of `cmd`'s flags, without its `.SH OPTIONS` heading.
fn flags_of(cmd: &clap::Command) -> String {
    let mut out = Vec::new();
    Man::new(cmd.clone())
        .render_options_section(&mut out)
        .expect("writing to memory");
    let text = String::from_utf8(out).expect("roff is UTF-8");
    let preamble = Roff::new().render();
    let text = text.strip_prefix(&preamble).unwrap_or(&text);
    // Nothing for a subcommand without flags; clap_mangen opens the section otherwise.
    text.strip_prefix(".SH OPTIONS\n")
        .unwrap_or(text)
        .to_string()
}

/// `vsplice bench client [OPTIONS] <ADDRESS>`: the usage line of a built subcommand.
fn usage(cmd: &mut clap::Command) -> String {
    let usage = cmd.render_usage().to_string();
    usage.strip_prefix("Usage: ").unwrap_or(&usage).to_string()
}

/// A subcommand of a section: its usage line, what it does and its flags.
fn subcommand(page: &mut String, roff: &mut Roff, cmd: &clap::Command) {
    let mut cmd = cmd.clone();
    roff.control("SS", [usage(&mut cmd).as_str()]);
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        roff.text(inlines(&about.to_string()));
    }
    page.push_str(&lines(roff));
    *roff = Roff::new();
    page.push_str(&flags_of(&cmd));
}

/// The whole page.
pub(crate) fn render() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let man = Man::new(cmd.clone())
        .section("1")
        .manual("vsplice manual")
        .source(format!("vsplice {}", env!("CARGO_PKG_VERSION")));
    let mut head = Vec::new();
    man.render_title(&mut head).expect("to memory");
    man.render_name_section(&mut head).expect("to memory");
    let mut page = String::from_utf8(head).expect("roff is UTF-8");
    // clap_mangen's synopsis lists every flag without its value; clap's usage lines read
    // better: the relay, then the subcommands.
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    for sub in ["", "serve", "bench", "generate"] {
        let mut c = match sub {
            "" => cmd
                .clone()
                .subcommand_negates_reqs(false)
                .disable_help_subcommand(true),
            name => cmd.find_subcommand(name).expect("a subcommand").clone(),
        };
        let usage = usage(&mut c);
        let first = usage.lines().next().unwrap_or_default().trim();
        roff.text([bold(first)]).control("br", []);
    }
    page.push_str(&lines(&roff));
    let mut head = Vec::new();
    man.render_description_section(&mut head)
        .expect("to memory");
    page.push_str(&String::from_utf8(head).expect("roff is UTF-8"));

    let docs = help::address_docs();
    let mut roff = Roff::new();
    roff.control("SH", ["ADDRESS TYPES"]);
    blocks(&mut roff, help::ADDRESS_SYNTAX);
    for t in &docs.types {
        let aliases: Vec<&str> = t.aliases.iter().map(String::as_str).collect();
        roff.control("TP", [])
            .text(term(&t.usage, &aliases))
            .text(inlines(t.help));
    }
    roff.control("SH", ["ADDRESS OPTIONS"]);
    for o in &docs.options {
        let mut text = vec![
            roman("("),
            roman(o.help.applies_to.replace('`', "")),
            roman(") "),
        ];
        text.extend(inlines(o.help.meaning));
        roff.control("TP", [])
            .text(term(&o.usage, &o.aliases))
            .text(text);
    }
    blocks(&mut roff, help::OPTIONS_NOTE);
    roff.control("SH", ["GLOBAL OPTIONS"]);
    page.push_str(&lines(&roff));
    page.push_str(&flags_of(&cmd));

    let mut roff = Roff::new();
    roff.control("SH", ["SERVICE MODE"]);
    blocks(&mut roff, help::SERVICE_MODE);
    let serve = cmd.find_subcommand("serve").expect("serve");
    subcommand(&mut page, &mut roff, serve);

    roff.control("SH", ["BENCH"]);
    blocks(&mut roff, help::BENCH);
    let bench = cmd.find_subcommand("bench").expect("bench");
    for sub in bench
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        subcommand(&mut page, &mut roff, sub);
    }

    roff.control("SH", ["GENERATE"]);
    let generate = cmd.find_subcommand("generate").expect("generate");
    for sub in generate
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        subcommand(&mut page, &mut roff, sub);
    }

    roff.control("SH", ["EXAMPLES"]);
    for (line, what) in help::EXAMPLES {
        roff.control("TP", [])
            .text([bold(*line)])
            .text(inlines(what));
    }
    roff.control("SH", ["EXIT STATUS"]);
    blocks(&mut roff, help::EXIT_STATUS);
    roff.control("SH", ["SIGNALS"]);
    blocks(&mut roff, help::SIGNALS);
    roff.control("SH", ["SEE ALSO"]);
    roff.text([
        bold("socat"),
        roman("(1), "),
        bold("vsock"),
        roman("(7), "),
        bold("splice"),
        roman("(2), "),
        bold("io_uring"),
        roman("(7), "),
        bold("systemd.socket"),
        roman("(5)"),
    ]);
    page.push_str(&lines(&roff));
    page
}
