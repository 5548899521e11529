//! The build script of both CNI plugins, berth-cni and berth-ipam (whose Cargo.toml points
//! here). Each is a short-lived process started once per CNI call. Linked as a non-PIE
//! executable, the loader has about 100 relocations to apply at each start instead of
//! thousands of relative ones (about 8,000 in berth-ipam), and fewer pages of the binary to
//! copy on write: measured in `scripts/bench cni` and `scripts/bench ipam`. The cost is that
//! the binary's own image is not randomised (its heap, stack and libraries still are); its
//! input comes only from the container runtime.
//!
//! The shipped build (`scripts/lib/plugins.sh`) is static and non-PIE through rustc's own
//! flags; a static build without `-C relocation-model=static` is static-pie, which `-no-pie`
//! would turn into an image that needs the loader it does not have.

fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    // musl targets link static by default, whether or not the feature is named.
    let musl = std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|e| e == "musl");
    if !musl && !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
