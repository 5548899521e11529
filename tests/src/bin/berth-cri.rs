//! berth-cri — a small CRI command line for the test bed (there is no crictl here):
//! `scripts/testbed` uses it to tear pods down over CRI, as kubelet would.

use std::path::PathBuf;

use anyhow::Result;
use std::time::Duration;

use berth_e2e::cri::{ContainerSpec, CriClient, NodeLayout, PodSpec};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Drive a containerd node over CRI")]
struct Cli {
    /// The containerd socket.
    #[arg(long)]
    socket: PathBuf,
    /// Where pod log directories go (kubelet's /var/log/pods).
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_root: PathBuf,
    /// The cgroupfs parent of pod cgroups.
    #[arg(long, default_value = "/berth-testbed/cli")]
    cgroup_parent: String,
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
    /// Run a pod with one container, as kubelet would; prints `<pod id> <container id> <ip>`.
    Run {
        #[arg(long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "app")]
        container: String,
        #[arg(long, default_value = berth_e2e::BUSYBOX_IMAGE)]
        image: String,
        /// Container environment, KEY=VALUE (repeatable).
        #[arg(long = "env", value_parser = parse_pair)]
        env: Vec<(String, String)>,
        /// Pod annotation, KEY=VALUE (repeatable).
        #[arg(long = "annotation", value_parser = parse_pair)]
        annotations: Vec<(String, String)>,
        /// Shell script the container runs (default: wait for TERM).
        #[arg(long)]
        script: Option<String>,
    },
    /// Run a command in a container and print its output.
    Exec {
        container: String,
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let layout = NodeLayout {
        pod_log_root: cli.pod_log_root.clone(),
        cgroup_parent: cli.cgroup_parent.clone(),
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
        Cmd::Run {
            namespace,
            name,
            container,
            image,
            env,
            annotations,
            script,
        } => {
            let mut pod_spec = PodSpec::new(&namespace, &name);
            for (k, v) in &annotations {
                pod_spec = pod_spec.annotation(k, v);
            }
            let pod = cri.run_pod(&pod_spec).await?;
            let mut spec = ContainerSpec::sleeper(&container, &image);
            if let Some(script) = script {
                spec.args = vec![script];
            }
            for (k, v) in &env {
                spec = spec.env(k, v);
            }
            let id = cri.run_container(&pod, &spec).await?;
            let ip = cri
                .pod_ip(&pod.id)
                .await
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            println!("{} {id} {ip}", pod.id);
        }
        Cmd::Exec { container, cmd } => {
            let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let out = cri.exec(&container, &args, Duration::from_secs(30)).await?;
            print!("{}", out.stdout);
            eprint!("{}", out.stderr);
            std::process::exit(out.exit_code);
        }
    }
    Ok(())
}
