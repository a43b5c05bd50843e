//! Lexing of one socat-style address string into its keyword, parameters and options.
//!
//! This is the first of the two parsing stages: it only splits text and knows nothing about
//! address types. socat's rules are kept: parameters are separated by `:`, options by `,`
//! (once the first `,` is seen, `:` is part of option values such as `bind=1.2.3.4:80`);
//! `"..."` and `'...'` quote (the quotes are removed), `\` escapes one character (the
//! backslash is removed), and `( )`, `[ ]`, `{ }` open nested groups that are kept verbatim
//! but inside which `:` and `,` lose their meaning (so `[::1]` stays one parameter).

use std::fmt;

/// An address split into its parts, before any meaning is given to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAddress {
    /// The address type as written (case preserved for messages).
    pub keyword: String,
    /// Parameters after the keyword, separated by `:`.
    pub params: Vec<String>,
    /// Options after the first `,`.
    pub options: Vec<RawOption>,
}

/// One `name` or `name=value` option as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption {
    pub name: String,
    pub value: Option<String>,
}

/// Why an address string could not even be split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LexError {
    Empty,
    UnterminatedQuote(char),
    UnclosedGroup(char),
    TrailingBackslash,
    EmptyOption,
}

impl fmt::Display for LexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LexError::Empty => write!(f, "empty address"),
            LexError::UnterminatedQuote(q) => write!(f, "unterminated quote {q}"),
            LexError::UnclosedGroup(open) => write!(f, "unclosed {open}"),
            LexError::TrailingBackslash => write!(f, "trailing backslash"),
            LexError::EmptyOption => write!(f, "empty option (two commas in a row?)"),
        }
    }
}

/// Which separator ended a piece of the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Separator {
    Colon,
    Comma,
    End,
}

fn closer_of(open: char) -> Option<char> {
    match open {
        '(' => Some(')'),
        '[' => Some(']'),
        '{' => Some('}'),
        _ => None,
    }
}

/// Splits `input` into pieces, each with the separator that ended it.
fn pieces(input: &str) -> Result<Vec<(String, Separator)>, LexError> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut nest: Vec<char> = Vec::new();
    let mut in_options = false;
    let mut chars = input.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped) => current.push(escaped),
                None => return Err(LexError::TrailingBackslash),
            },
            '"' | '\'' => {
                let mut closed = false;
                for q in chars.by_ref() {
                    if q == c {
                        closed = true;
                        break;
                    }
                    current.push(q);
                }
                if !closed {
                    return Err(LexError::UnterminatedQuote(c));
                }
            }
            '(' | '[' | '{' => {
                nest.push(closer_of(c).expect("opening bracket"));
                current.push(c);
            }
            ')' | ']' | '}' if nest.last() == Some(&c) => {
                nest.pop();
                current.push(c);
            }
            ':' if nest.is_empty() && !in_options => {
                out.push((std::mem::take(&mut current), Separator::Colon));
            }
            ',' if nest.is_empty() => {
                out.push((std::mem::take(&mut current), Separator::Comma));
                in_options = true;
            }
            other => current.push(other),
        }
    }
    if let Some(closer) = nest.last() {
        let open = match closer {
            ')' => '(',
            ']' => '[',
            _ => '{',
        };
        return Err(LexError::UnclosedGroup(open));
    }
    out.push((current, Separator::End));
    Ok(out)
}

/// Splits one address string into keyword, parameters and options.
pub fn lex(input: &str) -> Result<RawAddress, LexError> {
    if input.is_empty() {
        return Err(LexError::Empty);
    }
    let pieces = pieces(input)?;
    let mut iter = pieces.into_iter();
    let (keyword, mut sep) = iter.next().expect("at least one piece");
    let mut params = Vec::new();
    let mut options = Vec::new();
    for (text, next_sep) in iter {
        // `sep` is the separator *before* this piece.
        if sep == Separator::Colon {
            params.push(text);
        } else {
            if text.is_empty() {
                return Err(LexError::EmptyOption);
            }
            let option = match text.split_once('=') {
                Some((name, value)) => RawOption {
                    name: name.to_string(),
                    value: Some(value.to_string()),
                },
                None => RawOption {
                    name: text,
                    value: None,
                },
            };
            options.push(option);
        }
        sep = next_sep;
    }
    Ok(RawAddress {
        keyword,
        params,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(name: &str, value: Option<&str>) -> RawOption {
        RawOption {
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn keyword_params_and_options() {
        let raw = lex("TCP-LISTEN:5201,fork,backlog=64").unwrap();
        assert_eq!(raw.keyword, "TCP-LISTEN");
        assert_eq!(raw.params, vec!["5201"]);
        assert_eq!(
            raw.options,
            vec![opt("fork", None), opt("backlog", Some("64"))]
        );
    }

    #[test]
    fn keyword_alone_and_keyword_with_options_only() {
        assert_eq!(lex("STDIO").unwrap().params, Vec::<String>::new());
        let raw = lex("STDIO,fork").unwrap();
        assert_eq!(raw.keyword, "STDIO");
        assert!(raw.params.is_empty());
        assert_eq!(raw.options, vec![opt("fork", None)]);
    }

    #[test]
    fn colon_inside_option_values_is_literal() {
        let raw = lex("TCP:example.org:80,bind=10.0.0.1:4000").unwrap();
        assert_eq!(raw.params, vec!["example.org", "80"]);
        assert_eq!(raw.options, vec![opt("bind", Some("10.0.0.1:4000"))]);
    }

    #[test]
    fn brackets_group_and_are_kept() {
        let raw = lex("TCP6:[::1]:80").unwrap();
        assert_eq!(raw.params, vec!["[::1]", "80"]);
        let raw = lex("UNIX-CONNECT:{a:b,c}").unwrap();
        assert_eq!(raw.params, vec!["{a:b,c}"]);
        let raw = lex("UNIX-CONNECT:(x[y:z])w").unwrap();
        assert_eq!(raw.params, vec!["(x[y:z])w"]);
    }

    #[test]
    fn quotes_and_backslashes_are_removed() {
        let raw = lex("UNIX-LISTEN:\"/tmp/a:b,c\"").unwrap();
        assert_eq!(raw.params, vec!["/tmp/a:b,c"]);
        let raw = lex("UNIX-LISTEN:'/tmp/x y'").unwrap();
        assert_eq!(raw.params, vec!["/tmp/x y"]);
        let raw = lex(r"UNIX-LISTEN:/tmp/a\:b\,c").unwrap();
        assert_eq!(raw.params, vec!["/tmp/a:b,c"]);
    }

    #[test]
    fn lexical_errors() {
        assert_eq!(lex(""), Err(LexError::Empty));
        assert_eq!(lex("UNIX:\"abc"), Err(LexError::UnterminatedQuote('"')));
        assert_eq!(lex("TCP6:[::1:80"), Err(LexError::UnclosedGroup('[')));
        assert_eq!(lex("UNIX:abc\\"), Err(LexError::TrailingBackslash));
        assert_eq!(lex("TCP-L:80,,fork"), Err(LexError::EmptyOption));
        assert_eq!(LexError::UnclosedGroup('[').to_string(), "unclosed [");
    }

    #[test]
    fn empty_parameters_are_kept_for_the_checker() {
        let raw = lex("TCP:host:").unwrap();
        assert_eq!(raw.params, vec!["host", ""]);
    }
}
