//! images (being built).
pub fn run() -> anyhow::Result<()> { anyhow::bail!("images: not built yet") }
