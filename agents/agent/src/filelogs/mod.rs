//! File logs: host dirs for the log files of containers, bind-mounted where the container
//! asks (`KUBERNETES_FILELOGS` or the pod annotation `berth.io/filelogs.<container>`).

pub mod dest;
pub mod layout;
pub mod metadata;
pub mod plan;
pub mod service;
pub mod spec;

pub use service::{AgentPlugin, FileLogs, MOUNT_OPTIONS};
