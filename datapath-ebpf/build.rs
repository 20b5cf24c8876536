//! Compiles the C eBPF programs in `bpf/` into `OUT_DIR` so they can be embedded with
//! `include_bytes!` and `cargo build` stays one command. The compile logic is shared with
//! `cargo xtask build-ebpf` (`bpf/compile.rs`).
//!
//! Without clang the crate still builds: an empty object is embedded and loading the eBPF backend
//! fails with a clear error, which makes the datapath fall back to nftables.

mod compile {
    include!("bpf/compile.rs");
}

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=BPF_CLANG");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let src = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into())).join("bpf");
    if let Err(e) = compile::compile_all(&src, &out) {
        for line in e.lines() {
            println!("cargo:warning={line}");
        }
        for (_, obj) in compile::PROGRAMS {
            let _ = std::fs::write(out.join(obj), b"");
        }
    }
}
