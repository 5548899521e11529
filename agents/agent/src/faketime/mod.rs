//! Faketime: containers whose pod asks (`berth.io/faketime: "+2d"`, or
//! `berth.io/faketime.<container>`) get berth's time shim preloaded, with a per-container
//! timestamp file whose offset can be changed while they run.
//!
//! - [`service`]: the NRI side (create, start, remove, synchronize);
//! - [`control`]: the agent-side API (`get`/`set`/`clear`) the gRPC service binds to;
//! - [`store`]: the persisted per-container state;
//! - [`probe`]: judging a container's entry point (glibc or not) before or after it starts;
//! - [`layers`]: a container's image layers read as overlayfs merges them, without a mount.
//! - [`vdso`]: static, Go and musl entry points, shifted by patching their vDSO after start.

pub mod control;
pub mod layers;
pub mod probe;
pub mod service;
pub mod store;
pub mod vdso;

pub use control::{Control, ControlError, Status, Target};
pub use service::{FakeTime, Injected};
