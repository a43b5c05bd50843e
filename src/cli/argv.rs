//! The words of `argv` before clap reads them: options written before `bench` move after it
//! (or are refused, naming the option), reading which relay flags take a value from the flag
//! definitions themselves.

use std::ffi::OsString;

use crate::error::{Error, Result};

use super::flags::Cli;

/// Relay options that take their value as the next word (`-b 64K`), read from the one
/// definition of the flags ([`Cli`]), so a new flag with a value is never missed here.
fn relay_value_options() -> Vec<String> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .flat_map(|a| {
            let short = a.get_short().map(|c| format!("-{c}"));
            let long = a.get_long().map(|l| format!("--{l}"));
            short.into_iter().chain(long)
        })
        .collect()
}

/// Options written before the `bench` subcommand. `-d` applies everywhere, so
/// `vsplice -d bench ...` becomes `vsplice bench -d ...`; a relay option there
/// (`vsplice -S bench demo`) is an error naming it, where clap would take `bench` for an
/// address. Any other command line is returned as it is.
pub fn options_after_bench(args: Vec<OsString>) -> Result<Vec<OsString>> {
    let value_options = relay_value_options();
    let mut before = Vec::new();
    let mut i = 1;
    while i < args.len() {
        let word = args[i].to_string_lossy();
        if word == "bench" {
            break;
        }
        if !word.starts_with('-') || word == "-" || word == "--" {
            return Ok(args);
        }
        before.push(i);
        if value_options.iter().any(|o| *o == word) && i + 1 < args.len() {
            i += 1;
            before.push(i);
        }
        i += 1;
    }
    if i >= args.len() || before.is_empty() {
        return Ok(args);
    }
    let is_debug = |w: &str| w.len() > 1 && w.starts_with('-') && w[1..].bytes().all(|b| b == b'd');
    if let Some(&j) = before
        .iter()
        .find(|&&j| !is_debug(&args[j].to_string_lossy()))
    {
        return Err(Error::Usage(format!(
            "\"{}\" is an option of the relay, not of `vsplice bench`: write bench options \
             after `bench` (see `vsplice bench --help`)",
            args[j].to_string_lossy()
        )));
    }
    let mut out = vec![args[0].clone(), args[i].clone()];
    out.extend(before.iter().map(|&j| args[j].clone()));
    out.extend(args[i + 1..].iter().cloned());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::plan;

    #[test]
    fn the_value_taking_relay_flags_are_read_from_the_flag_definitions() {
        let flags = relay_value_options();
        for f in [
            "-b",
            "-t",
            "-T",
            "--threads",
            "--mode",
            "--receive-budget",
            "--drain-timeout",
        ] {
            assert!(flags.iter().any(|x| x == f), "{f} takes a value: {flags:?}");
        }
        assert!(!flags.iter().any(|x| x == "-d" || x == "-S" || x == "--pin"));
    }

    fn words(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn debug_flags_before_bench_move_after_it_and_relay_options_there_are_named() {
        assert_eq!(
            options_after_bench(words(&["vsplice", "-d", "bench", "server", "X"])).unwrap(),
            words(&["vsplice", "bench", "-d", "server", "X"])
        );
        assert_eq!(
            options_after_bench(words(&["vsplice", "-dd", "-d", "bench", "demo"])).unwrap(),
            words(&["vsplice", "bench", "-dd", "-d", "demo"])
        );
        let e = options_after_bench(words(&["vsplice", "-S", "bench", "demo"])).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string()
                .starts_with("\"-S\" is an option of the relay"),
            "{e}"
        );
        let e = options_after_bench(words(&["vsplice", "-b", "64K", "bench", "demo"]));
        assert!(e.unwrap_err().to_string().contains("\"-b\""));
        // Relay command lines pass unchanged, even with an address after the options.
        for line in [
            &["vsplice", "-d", "TCP-L:1", "TCP:h:1"][..],
            &["vsplice", "-b", "bench", "TCP-L:1", "TCP:h:1"][..],
            &["vsplice", "bench", "demo"][..],
            &["vsplice", "-d", "TCP-L:1", "bench"][..],
        ] {
            assert_eq!(options_after_bench(words(line)).unwrap(), words(line));
        }
        // `vsplice -d bench server X` then plans as `bench server X`: an error about "X".
        let args = options_after_bench(words(&["vsplice", "-d", "bench", "server", "X"])).unwrap();
        let e = plan(Cli::try_parse_from(args).unwrap()).unwrap_err();
        assert!(e.to_string().contains("\"X\""), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
