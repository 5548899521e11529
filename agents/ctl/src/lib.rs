//! berthctl: the command-line client of berth's node agents.
//!
//! The binary parses [`cli::Cli`] and calls [`run`]; everything is here so tests can drive
//! it too.

#![forbid(unsafe_code)]

pub mod cli;
pub mod commands;
pub mod debug;
pub mod output;

pub use berth_api_client::context;

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
        Command::Config(c) => return commands::config(&cli.conn, c, fmt, out),
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
        Command::Completions { .. } | Command::Certs(_) | Command::Config(_) => {
            unreachable!("handled above")
        }
    }
}

/// The context file berthctl reads: `--config` (which must exist), else the default path.
pub fn context_file(conn: &cli::ConnArgs) -> (std::path::PathBuf, bool) {
    match &conn.config {
        Some(p) => (p.clone(), true),
        None => (
            context::default_path().unwrap_or_else(|| "berth-config.toml".into()),
            false,
        ),
    }
}

/// The agent did not answer where berthctl looked: which endpoint, why that one, what to do.
#[derive(Debug, thiserror::Error)]
#[error("no agent answers at {endpoint} ({hint})")]
pub struct Unreachable {
    pub endpoint: String,
    pub hint: String,
    #[source]
    pub source: tonic::transport::Error,
}

async fn connect(conn: &cli::ConnArgs) -> Result<tonic::transport::Channel> {
    let (path, explicit) = context_file(conn);
    let file = context::load(&path, explicit)?;
    let overrides = context::Overrides {
        context: conn.context.clone(),
        endpoint: conn.endpoint.clone(),
        ca: conn.ca.clone(),
        cert: conn.cert.clone(),
        key: conn.key.clone(),
        server_name: conn.server_name.clone(),
    };
    let target = context::resolve(
        &file,
        &path,
        &overrides,
        std::path::Path::new(context::LOCAL_SOCKET),
    )?;
    match berth_api_client::connect(&target.endpoint, target.tls.as_ref()).await {
        Ok(channel) => Ok(channel),
        Err(berth_api_client::ClientError::Connect { source, .. }) => Err(Unreachable {
            endpoint: target.endpoint,
            hint: target.origin.hint(),
            source,
        }
        .into()),
        Err(e) => Err(e.into()),
    }
}
