//! The service configuration file: TOML in, a checked [`ServePlan`] out, before anything is
//! opened.
//!
//! Two stages, like the command line: serde reads the text into raw structures that keep
//! every value's position ([`toml::Spanned`]), then `resolve.rs` gives each value meaning with
//! the same code the command line uses (the address grammar, the size and duration parsers,
//! [`crate::addr::check_pair`]). Every error names the file, the line and the key; unknown
//! keys are errors, not silently ignored, so a typo never leaves an option unset.
//!
//! The rooms: `plan.rs` holds what comes out, `raw.rs` what serde reads in (with positions),
//! `resolve.rs` the step between.

mod plan;
mod raw;
mod resolve;

pub(crate) use plan::{GlobalOptions, OneWay, ServePlan, ServiceOptions, ServicePlan};

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
