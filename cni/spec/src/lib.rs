//! The CNI 1.1 protocol: verbs, environment, versions, results and errors, and one plugin executor.
//!
//! A plugin implements [`Plugin`] and its `main` calls [`run`] (or [`execute`] in tests):
//! the executor owns the environment, stdin, stdout and the exit code, answers `VERSION`
//! itself, checks the config's `cniVersion` and renders results and errors in the version
//! the runtime asked for. See `USAGE.md` beside this crate.

// Unsafe code lives in the allocator only; everything else is refused it.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod arena;
pub mod args;
pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod names;
pub mod plugin;
pub mod result;
pub mod version;

pub use args::CniArgs;
pub use config::{Capabilities, NetConf, PortMapping, RuntimeConfig};
pub use env::{Command, Env};
pub use error::{CniError, ErrorCode};
pub use names::{IfName, NetworkName};
pub use plugin::{Context, Plugin, execute, run};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use version::CniVersion;
