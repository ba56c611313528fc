//! The eBPF object links with bpf-linker; rebuild when it changes and say how
//! to get it when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker not found in PATH: run `cargo xtask setup` \
             (it installs bpf-linker 0.10.4 and the nightly rust-src component)"
        ),
    }
}
