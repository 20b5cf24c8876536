//! `cargo xtask build-ebpf`: compiles the datapath's C eBPF programs (`datapath-ebpf/bpf/*.c`) with
//! clang into `<target>/bpf/`. It uses the very same code as `datapath-ebpf/build.rs` (which embeds
//! the objects during `cargo build`), so both always agree; this command is for inspecting the
//! objects (`bpftool`, `llvm-objdump`) and for checking the C on its own.

#[path = "../../datapath-ebpf/bpf/compile.rs"]
mod compile;

use crate::util::{root, target_dir};
use anyhow::Context;

pub fn run() -> anyhow::Result<()> {
    let out = target_dir().join("bpf");
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let objects = compile::compile_all(&root().join("datapath-ebpf/bpf"), &out).map_err(anyhow::Error::msg)?;
    for o in objects {
        let len = std::fs::metadata(&o).map(|m| m.len()).unwrap_or(0);
        println!("built {} ({len} bytes)", o.display());
    }
    Ok(())
}
