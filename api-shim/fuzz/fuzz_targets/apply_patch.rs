//! libFuzzer entry point; the harness and its invariants are in `src/lib.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| keelson_api_shim_fuzz::apply_patch(data));
