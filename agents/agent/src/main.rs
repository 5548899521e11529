//! berth-agent: parses the command line and hands over to the library.

#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    if let Err(e) = berth_agent::main_with(berth_agent::Args::parse()) {
        // The whole cause chain on one line, without a backtrace.
        eprintln!("berth-agent: {e:#}");
        std::process::exit(1);
    }
}
