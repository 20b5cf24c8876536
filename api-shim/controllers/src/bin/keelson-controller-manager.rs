//! `keelson-controller-manager`: keelson's controllers against any API server, given a kubeconfig.

use std::path::PathBuf;

use clap::Parser;
use keelson_controllers::{Opts, Selection};

#[derive(Parser)]
#[command(about = "keelson's controller manager (garbage collector, namespace lifecycle)")]
struct Args {
    /// Kubeconfig with the server address and credentials.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Controllers to run, upstream syntax: `*` (all), `name`, `-name` (e.g. `*,-garbagecollector`).
    #[arg(long, default_value = "*", value_delimiter = ',')]
    controllers: Vec<String>,
    /// Controllers to turn off (added to the `-name` entries of --controllers).
    #[arg(long, value_delimiter = ',')]
    disable_controllers: Vec<String>,
    /// The cluster CA (PEM) to publish as `kube-root-ca.crt` in every namespace.
    #[arg(long)]
    root_ca_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let selection = Selection::parse(&a.controllers, &a.disable_controllers)?;
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let root_ca = a.root_ca_file.map(std::fs::read_to_string).transpose()?;
    keelson_controllers::run(client, Opts { selection, root_ca, ..Default::default() }).await?;
    Ok(())
}
