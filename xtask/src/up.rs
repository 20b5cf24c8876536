//! `cargo xtask up` (being built).
use clap::Args;
#[derive(Args)]
pub struct UpArgs {}
pub fn run(_a: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("up: not built yet")
}
