// Shared by `datapath-ebpf/build.rs` (via `include!`) and `cargo xtask build-ebpf` (via `#[path]`), so
// `cargo build` and the explicit xtask command compile the C programs in exactly the same way.

/// The eBPF programs of the datapath: (C source file in `bpf/`, object file name).
pub const PROGRAMS: &[(&str, &str)] = &[("sock_lb.bpf.c", "sock_lb.bpf.o")];

/// Compiles every program in `src_dir` into `out_dir` with clang (`-O2 -g -target bpf`).
/// Returns the object paths, or an error carrying clang's stderr.
pub fn compile_all(src_dir: &std::path::Path, out_dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, String> {
    let clang = std::env::var("BPF_CLANG").unwrap_or_else(|_| "clang".to_string());
    let mut objects = Vec::new();
    for (src, obj) in PROGRAMS {
        let src_path = src_dir.join(src);
        let obj_path = out_dir.join(obj);
        let out = std::process::Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I/usr/include/x86_64-linux-gnu", "-Wall"])
            .arg("-c")
            .arg(&src_path)
            .arg("-o")
            .arg(&obj_path)
            .output()
            .map_err(|e| format!("cannot run {clang}: {e} (install clang and libbpf-dev: `cargo xtask deps`)"))?;
        if !out.status.success() {
            return Err(format!("{clang} failed on {}:\n{}", src_path.display(), String::from_utf8_lossy(&out.stderr)));
        }
        objects.push(obj_path);
    }
    Ok(objects)
}
