//! berth-cri — a small CRI command line for the test bed (there is no crictl here):
//! `scripts/testbed` uses it to tear pods down over CRI, as kubelet would.

use std::path::PathBuf;

use anyhow::Result;
use berth_e2e::cri::{CriClient, NodeLayout};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Drive a containerd node over CRI")]
struct Cli {
    /// The containerd socket.
    #[arg(long)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runtime version and conditions.
    Info,
    /// Pod sandboxes with their state and IP.
    Pods,
    /// Containers with their state.
    Containers,
    /// Stop and remove every container and pod sandbox.
    TeardownAll,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let layout = NodeLayout {
        pod_log_root: PathBuf::from("/nonexistent"),
        cgroup_parent: String::new(),
    };
    let mut cri = CriClient::connect(&cli.socket, layout).await?;
    match cli.command {
        Cmd::Info => {
            let v = cri.version().await?;
            println!(
                "{} {} (CRI {})",
                v.runtime_name, v.runtime_version, v.runtime_api_version
            );
            for (kind, (ok, why)) in cri.conditions().await? {
                println!("{kind}: {ok} {why}");
            }
        }
        Cmd::Pods => {
            for pod in cri.list_pods().await? {
                let ip = cri
                    .pod_ip(&pod.id)
                    .await
                    .map(|ip| ip.to_string())
                    .unwrap_or_default();
                let meta = pod.metadata.unwrap_or_default();
                println!(
                    "{} {}/{} state={} ip={ip}",
                    pod.id, meta.namespace, meta.name, pod.state
                );
            }
        }
        Cmd::Containers => {
            for c in cri.list_containers().await? {
                let name = c.metadata.map(|m| m.name).unwrap_or_default();
                println!("{} {name} pod={} state={}", c.id, c.pod_sandbox_id, c.state);
            }
        }
        Cmd::TeardownAll => {
            let n = cri.teardown_all().await?;
            println!("removed {n} pod sandboxes");
        }
    }
    Ok(())
}
