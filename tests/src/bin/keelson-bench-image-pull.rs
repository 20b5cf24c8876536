//! `cargo xtask bench image-pull`: the agent's registry pull (`keelson_agent::images::pull`
//! through its containerd store) beside `ctr images pull` (containerd's own Go client) of the
//! same generated image from the same loopback registry (the tests' fixture registry), in the
//! same run.
//!
//! The image: 5 layers of 40 MiB of pseudo-random bytes each (incompressible: ~200 MiB on the
//! wire). Cold: a fresh private containerd for every run (empty content store), so both sides
//! download, write and unpack everything. Warm: the same pull again on that containerd (every
//! blob present: both re-resolve the manifest and skip the content). Both sides unpack into
//! overlayfs snapshots (`ctr images pull` unpacks by default).

use keelson_agent::images::RegistryConfig;
use keelson_agent::images::pull::PullRequest;
use keelson_agent::runtime::ContainerRuntime;
use keelson_agent::runtime::containerd::Containerd as Runtime;
use keelson_tests::Containerd;
use keelson_tests::registry::{Options, Registry};
use std::time::Instant;

const LAYERS: usize = 5;
const RUNS: usize = 3;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ctr_pull(c: &Containerd, image: &str) -> anyhow::Result<f64> {
    let sock = c.socket();
    let t = Instant::now();
    keelson_tests::run(
        "ctr",
        &["--address", sock.to_str().unwrap_or_default(), "-n", "bench", "images", "pull", "--plain-http", image],
    )?;
    Ok(t.elapsed().as_secs_f64())
}

async fn agent_pull(rt: &Runtime, image: &str, node: &RegistryConfig) -> anyhow::Result<(f64, u64)> {
    let t = Instant::now();
    let r = rt.pull_image(PullRequest { image, pod_secrets: &[], node }).await?;
    Ok((t.elapsed().as_secs_f64(), r.fetched))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    keelson_tests::require_root();
    // `KEELSON_BENCH_LAYER_MIB` shrinks the layers for a quick check of the harness itself.
    let mib: usize = std::env::var("KEELSON_BENCH_LAYER_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let layer_bytes = mib << 20;
    let reg = Registry::start(Options::default())?;
    let t = Instant::now();
    let files: Vec<(String, Vec<u8>)> =
        (0..LAYERS).map(|i| (format!("layer{i}.bin"), noise(0x9e37_79b9_7f4a_7c15 ^ i as u64, layer_bytes))).collect();
    let img = reg.push_layers("bench/big", "1", &files)?;
    drop(files);
    eprintln!(
        "generated {} ({LAYERS} × {} MiB) in {:.1}s",
        img.reference,
        layer_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
    let node = RegistryConfig { insecure: vec![reg.host().to_string()], ..Default::default() };

    let (mut a_cold, mut a_warm, mut c_cold, mut c_warm) = (vec![], vec![], vec![], vec![]);
    let mut fetched = 0;
    for run in 0..RUNS {
        let c = Containerd::start()?;
        let rt = Runtime::connect(&c.socket(), "bench", &c.dir().join("scratch")).await?;
        let (cold, f) = agent_pull(&rt, &img.reference, &node).await?;
        let (warm, _) = agent_pull(&rt, &img.reference, &node).await?;
        fetched = f;
        drop(rt);
        drop(c);
        let c = Containerd::start()?;
        let ccold = ctr_pull(&c, &img.reference)?;
        let cwarm = ctr_pull(&c, &img.reference)?;
        drop(c);
        eprintln!("run {run}: agent cold {cold:.2}s warm {warm:.3}s | ctr cold {ccold:.2}s warm {cwarm:.3}s");
        a_cold.push(cold);
        a_warm.push(warm);
        c_cold.push(ccold);
        c_warm.push(cwarm);
    }
    let (ac, aw, cc, cw) = (median(&mut a_cold), median(&mut a_warm), median(&mut c_cold), median(&mut c_warm));
    println!("image-pull: {} MiB in {LAYERS} layers from a loopback registry, median of {RUNS} runs", fetched >> 20);
    println!("| pull | keelson agent | ctr images pull | ratio (agent/ctr) |");
    println!("|------|---------------|-----------------|-------------------|");
    println!("| cold (empty store, download + unpack) | {ac:.2} s | {cc:.2} s | {:.2}× |", ac / cc);
    println!("| warm (all blobs present) | {:.0} ms | {:.0} ms | {:.2}× |", aw * 1e3, cw * 1e3, aw / cw);
    Ok(())
}
