//! berthctl: the command-line client of berth's node agents.
//!
//! The binary parses [`cli::Cli`] and calls [`run`]; everything is here so tests can drive
//! it too.

pub mod cli;
pub mod commands;
pub mod context;
pub mod debug;
pub mod output;

use std::io::Write;

use anyhow::Result;
use clap::CommandFactory;

use cli::{Cli, Command};

/// Runs one command, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let fmt = cli.output;
    let command = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berthctl", out);
            return Ok(());
        }
        Command::Certs(c) => return commands::certs(c, fmt, out),
        Command::Audit(c @ cli::AuditCmd::Verify { .. }) => {
            return commands::audit_verify(c, fmt, out);
        }
        other => other,
    };
    let channel = connect(&cli.conn).await?;
    match command {
        Command::Node(c) => commands::node(channel, c, fmt, out).await,
        Command::Logs(c) => commands::logs(channel, c, fmt, out).await,
        Command::Ipam(c) => commands::ipam(channel, c, fmt, out).await,
        Command::Audit(c) => commands::audit(channel, c, fmt, out).await,
        Command::Faketime(c) => commands::faketime(channel, c, fmt, out).await,
        Command::Debug(a) => debug::debug(channel, a, out).await,
        Command::Exec(a) => debug::exec(channel, a, out).await,
        Command::Cp(a) => debug::cp(channel, a, fmt, out).await,
        Command::Sessions(c) => debug::sessions(channel, c, fmt, out).await,
        Command::Grants(c) => debug::grants(channel, c, fmt, out).await,
        Command::Completions { .. } | Command::Certs(_) => unreachable!("handled above"),
    }
}

async fn connect(conn: &cli::ConnArgs) -> Result<tonic::transport::Channel> {
    let (path, explicit) = match &conn.config {
        Some(p) => (p.clone(), true),
        None => (
            context::default_path().unwrap_or_else(|| "berth-config.toml".into()),
            false,
        ),
    };
    let file = context::load(&path, explicit)?;
    let overrides = context::Overrides {
        context: conn.context.clone(),
        endpoint: conn.endpoint.clone(),
        ca: conn.ca.clone(),
        cert: conn.cert.clone(),
        key: conn.key.clone(),
        server_name: conn.server_name.clone(),
    };
    let (endpoint, tls) = context::resolve(&file, &path, &overrides)?;
    Ok(berth_api::client::connect(&endpoint, tls.as_ref()).await?)
}
