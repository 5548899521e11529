//! A containerd NRI (Node Resource Interface) plugin client: multiplexed ttrpc, registration,
//! events.
//!
//! The plugin connects to the runtime's NRI socket. One connection carries two logical ttrpc
//! connections through a small multiplexer ([`wire`]): on conn 1 the runtime calls the plugin
//! (Configure, Synchronize, CreateContainer, events, Shutdown), on conn 2 the plugin calls the
//! runtime (RegisterPlugin). Implement [`Plugin`] and hand it to a [`Runner`], which connects,
//! registers, serves, and reconnects with backoff whenever the runtime restarts.
//!
//! A runtime may also start the plugin itself from its plugin dir ("pre-registered" plugin)
//! and pass it an already connected socket: [`LaunchVars::from_env`] detects that, and
//! [`Runner::launched`] serves that one connection without ever reconnecting.
//!
//! ```no_run
//! use std::sync::Arc;
//! use berth_nri::{Event, EventMask, Options, Plugin, Runner};
//!
//! struct Quiet;
//! impl Plugin for Quiet {
//!     fn events(&self) -> EventMask {
//!         EventMask::of(&[Event::RemoveContainer])
//!     }
//! }
//!
//! # async fn run() -> Result<(), berth_nri::Error> {
//! let runner = Runner::new(Options::new("/var/run/nri/nri.sock", "quiet", "50"), Arc::new(Quiet))?;
//! runner.run(tokio_util::sync::CancellationToken::new()).await;
//! # Ok(()) }
//! ```

pub mod api;
mod error;
#[cfg(feature = "fake-runtime")]
pub mod fake;
mod launch;
mod plugin;
mod runner;
mod session;
pub mod wire;

pub use api::{
    Container, ContainerAdjustment, ContainerUpdate, CreateContainerResponse, Event, EventMask,
    KeyValue, Mount, PodSandbox, StopContainerResponse, UpdateContainerResponse,
};
pub use error::{Error, HandlerError};
pub use launch::{IDX_ENV, LaunchVars, NAME_ENV, SOCKET_ENV};
pub use plugin::{HandlerResult, Plugin};
pub use runner::{Options, Runner, State};
