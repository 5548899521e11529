//! berth-cni is a short-lived process started once per CNI call. Linked as a non-PIE
//! executable, the loader has about 100 relocations to apply at each start instead of
//! thousands of relative ones (and fewer pages of the binary to copy on write): measured in
//! `scripts/bench cni`. The cost is that the binary's own image is not randomised (its heap,
//! stack and libraries still are); its input comes only from the container runtime.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
