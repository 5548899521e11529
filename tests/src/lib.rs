//! End-to-end suites on a real containerd node (the test bed), the CRI driver they use, and
//! the benchmark programs (`src/bin/bench-*.rs`, run by `scripts/bench`).
//!
//! Suites in `tests/*.rs` are marked `#[ignore = "needs root and the test bed: …"]`, so a plain
//! `cargo test` reports them as ignored, never passed; `scripts/test` runs them as root with
//! `--include-ignored`, and each fails (panics) when what it needs is missing.

pub mod agent;
pub mod bench_args;
pub mod bench_report;
pub mod cri;
pub mod faketime_api;
pub mod netns;
pub mod testbed;

pub use cri::{ContainerSpec, CriClient, ExecOutput, Pod, PodSpec};
pub use testbed::{
    BUSYBOX_IMAGE, CLOCK_IMAGE, Containerd, GLIBC_IMAGE, MUSL_IMAGE, Node, NodeOptions,
    PAUSE_IMAGE, PRELOAD_IMAGE,
};
