//! `cargo xtask bench <name>`: each benchmark prints its figures next to a baseline measured in
//! the same run, as a ratio. Benchmarks never assert timings; they report.

mod api;
mod cni;
mod datapath;
mod image_pull;
mod pod_start;

use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark: pod-start, cni, datapath, api, image-pull
    pub name: String,
    /// Extra arguments passed to the benchmark.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub rest: Vec<String>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.name.as_str() {
        "api" => api::run_bench(&args.rest),
        "cni" => cni::run_bench(&args.rest),
        "datapath" => datapath::run_bench(&args.rest),
        "image-pull" => image_pull::run_bench(&args.rest),
        "pod-start" => pod_start::run_bench(&args.rest),
        other => anyhow::bail!("unknown benchmark {other:?}"),
    }
}
