//! `vsplice bench` (work in progress).
use std::process::ExitCode;

use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

#[derive(Debug)]
pub struct BenchPlan {}

pub fn plan(_args: BenchArgs) -> Result<BenchPlan> {
    Err(Error::Bench("not implemented yet".into()))
}

pub fn run(_plan: BenchPlan) -> Result<ExitCode> {
    Err(Error::Bench("not implemented yet".into()))
}
