//! berth's node agent: NRI plugin (file logs, faketime), log cleanup, gRPC API server

#![forbid(unsafe_code)]

pub mod api;
pub mod cleanup;
pub mod config;
pub mod debug;
pub mod events;
pub mod faketime;
pub mod filelogs;
pub mod fsops;
pub mod ipam;
pub mod logwriter;
pub mod names;
pub mod retention;
pub mod run;
pub mod state;

pub use run::{Agent, Args, main_with};
