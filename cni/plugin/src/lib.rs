//! berth's CNI plugin: bridge and macvlan underlay networking with several NICs per pod.
//!
//! Flow of an ADD: [`config`] validates the network config into a [`config::NetworkSpec`];
//! [`apply::preflight`] refuses missing host NICs; the IPAM [`ipam`] seam allocates one
//! address per interface; [`plan::build`] turns spec + allocations into a typed
//! [`plan::Plan`] (pure); [`apply::apply`] executes it through the [`net::NetOps`] seam
//! ([`netlink::RealNet`] in production), undoing everything if a step fails.

// Unsafe code (raw sockets, fork, setns, poll) is confined to the modules that allow it.
#![deny(unsafe_code)]

pub mod apply;
#[allow(unsafe_code)]
pub mod arp;
pub mod config;
#[allow(unsafe_code)]
mod detach;
pub mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod ipam;
pub mod names;
pub mod ndp;
pub mod net;
#[allow(unsafe_code)]
pub mod netlink;
pub mod plan;
pub mod plugin;
#[allow(unsafe_code)]
mod sockwait;
pub mod trace;

pub use plugin::{BerthCni, KernelNet, NetOpener};
