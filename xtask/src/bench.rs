//! `cargo xtask bench`: timing goals, measured outside the test suite (not written yet).

use anyhow::{Result, bail};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(args: Args) -> Result<()> {
    let Args {} = args;
    bail!("not yet")
}
