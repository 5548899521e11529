//! Wiring: state, log root, NRI runner, sweeper; and the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use berth_api::Metrics;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cleanup::Sweeper;
use crate::config::{Config, Listen, LogConfig, LogFormat, Overrides, Resolved};
use crate::events::EventLog;
use crate::faketime::FakeTime;
use crate::faketime::probe::{Containerd, ContainerdProbe};
use crate::filelogs::{AgentPlugin, FileLogs};
use crate::fsops::RealFs;
use crate::ipam::collector::Collector;
use crate::ipam::sandboxes::Sandboxes;
use crate::retention::{Clock, Policy, SystemClock};
use crate::state::Store;

/// berth's node agent: containerd NRI plugin for host file logs, log cleanup, API server.
#[derive(Debug, Parser)]
#[command(name = "berth-agent", version)]
pub struct Args {
    /// TOML config file (every key: agents/agent/README.md).
    #[arg(long, env = "BERTH_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The runtime's NRI socket (overrides nri.socket).
    #[arg(long)]
    pub nri_socket: Option<PathBuf>,
    /// Host dir for file logs (overrides filelogs.log_root).
    #[arg(long)]
    pub log_root: Option<PathBuf>,
    /// Agent state dir (overrides state_dir).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// API server address: ip:port or unix:/path (overrides api.listen).
    #[arg(long)]
    pub listen: Option<String>,
    /// Node name for metadata (overrides node_name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Validate the configuration, print it resolved, and exit.
    #[arg(long)]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands that work on the agent's state dir instead of running the agent.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Read or change the faketime offset of running containers (the same code as the agent's
    /// API; changes reach the containers within faketime.cache_duration). Prints JSON.
    Faketime {
        #[command(subcommand)]
        action: FakeTimeAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum FakeTimeAction {
    /// Show offset, coverage and reason of a pod's faketime containers.
    Get(TargetArgs),
    /// Set the offset (e.g. +10d, -3h, 0).
    Set {
        #[command(flatten)]
        target: TargetArgs,
        /// Relative offset: [+|-]<number>[.<fraction>][s|m|h|d|y].
        #[arg(long, allow_hyphen_values = true)]
        offset: String,
    },
    /// Back to the real clock (offset 0).
    Clear(TargetArgs),
}

#[derive(Debug, clap::Args)]
pub struct TargetArgs {
    #[arg(long)]
    pub namespace: String,
    #[arg(long)]
    pub pod: String,
    /// One container of the pod; all its faketime containers when omitted.
    #[arg(long)]
    pub container: Option<String>,
}

fn run_command(cmd: &Command, resolved: &Resolved) -> anyhow::Result<()> {
    let Command::Faketime { action } = cmd;
    let control = crate::faketime::Control::new(&resolved.config.state_dir);
    fn target(t: &TargetArgs) -> crate::faketime::Target<'_> {
        crate::faketime::Target {
            namespace: &t.namespace,
            pod: &t.pod,
            container: t.container.as_deref(),
        }
    }
    let out = match action {
        FakeTimeAction::Get(t) => control.get(&target(t))?,
        FakeTimeAction::Set { target: t, offset } => {
            let o: berth_faketime::Offset = offset
                .parse()
                .with_context(|| format!("invalid --offset {offset:?}"))?;
            control.set(&target(t), o)?
        }
        FakeTimeAction::Clear(t) => control.clear(&target(t))?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

impl Args {
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let mut cfg = Config::load(self.config.as_deref())?;
        cfg.apply(Overrides {
            nri_socket: self.nri_socket.clone(),
            log_root: self.log_root.clone(),
            state_dir: self.state_dir.clone(),
            listen: self.listen.clone(),
            node_name: self.node_name.clone(),
        });
        Ok(cfg.resolve()?)
    }
}

/// Starts logging to stderr through [`crate::logwriter`], so no handler waits for the log's
/// output. Keep the guard until the agent stops: dropping it writes out the queued lines.
pub fn init_tracing(cfg: &LogConfig) -> Option<crate::logwriter::FlushGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) =
        match crate::logwriter::spawn(std::io::stderr(), crate::logwriter::DEFAULT_CAPACITY) {
            Ok((w, g)) => (BoxMakeWriter::new(w), Some(g)),
            // No thread for the log: write in place rather than lose it.
            Err(e) => {
                eprintln!("berth-agent: cannot start the log thread ({e}); logging in place");
                (BoxMakeWriter::new(std::io::stderr), None)
            }
        };
    // Colours only on a terminal: journald and log files get plain `key=value` text.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match cfg.format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
    guard
}

/// A running agent's parts, for the binary and for tests.
pub struct Agent {
    pub resolved: Resolved,
    pub filelogs: Option<Arc<FileLogs>>,
    pub sweeper: Option<Arc<Sweeper>>,
    pub faketime: Option<Arc<FakeTime>>,
    /// Collection of leaked IPAM leases (`[ipam_gc]`).
    pub ipam_gc: Option<Arc<Collector>>,
    /// The agent's metrics, served by the API's metrics listener.
    pub metrics: Metrics,
    pub runner: berth_nri::Runner<AgentPlugin>,
}

impl Agent {
    pub fn new(resolved: Resolved, clock: Arc<dyn Clock>) -> anyhow::Result<Agent> {
        let cfg = &resolved.config;
        // A [debug] section the agent would not serve is an error, not a silent no-op.
        crate::api::debug_config(cfg)?;
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("cannot create the state dir {}", cfg.state_dir.display()))?;
        let events = Arc::new(EventLog::new(&cfg.state_dir));
        let faketime = if cfg.faketime.enabled {
            let dir = cfg.faketime.shim_dir(&cfg.state_dir);
            // Connected on first use (on the NRI thread): the agent starts whether containerd
            // is up or not, and an annotated container created while it cannot answer gets the
            // shim and is judged after start.
            let probe = Arc::new(ContainerdProbe::new(Containerd::new(
                cfg.faketime.containerd_address.clone(),
                cfg.faketime.containerd_namespace.clone(),
                cfg.faketime.snapshotter.clone(),
            )));
            let ft = FakeTime::new(
                cfg.faketime.clone(),
                &cfg.state_dir,
                &dir,
                probe,
                events.clone(),
                clock.clone(),
            )
            .with_context(|| format!("cannot install the faketime shim in {}", dir.display()))?;
            tracing::info!(shim_dir = %dir.display(), containerd = %cfg.faketime.containerd_address.display(),
                snapshotter = %cfg.faketime.snapshotter, "faketime shim installed");
            Some(Arc::new(ft))
        } else {
            None
        };
        let (filelogs, sweeper) = if cfg.filelogs.enabled {
            let fs = RealFs::open(&cfg.filelogs.log_root).with_context(|| {
                format!(
                    "cannot open the log root {}",
                    cfg.filelogs.log_root.display()
                )
            })?;
            let root = fs.root().to_path_buf();
            let store = Store::load(&cfg.state_dir)?;
            let f = Arc::new(FileLogs::new(
                cfg.filelogs.clone(),
                resolved.layout.clone(),
                cfg.node_name.clone(),
                Arc::new(fs),
                store,
                events,
                clock,
            ));
            let policy = Policy {
                retention: cfg.cleanup.retention,
                pod_budget: (cfg.filelogs.pod_budget > 0).then_some(cfg.filelogs.pod_budget),
                node_budget: (cfg.cleanup.node_budget > 0).then_some(cfg.cleanup.node_budget),
            };
            let s = Arc::new(Sweeper::new(
                f.clone(),
                policy,
                &cfg.state_dir,
                cfg.cleanup.full_scan_interval,
            ));
            s.watch(&root);
            (Some(f), Some(s))
        } else {
            (None, None)
        };
        // Pre-registered mode: the runtime started us from its plugin dir and passed the
        // connection; the name and index then come from the file name, not from the config.
        let launched = berth_nri::LaunchVars::from_env()?;
        let (name, index) = match &launched {
            Some(l) => (
                non_empty(&l.name, &cfg.nri.plugin_name),
                non_empty(&l.index, &cfg.nri.plugin_index),
            ),
            None => (cfg.nri.plugin_name.as_str(), cfg.nri.plugin_index.as_str()),
        };
        let mut opts = berth_nri::Options::new(&cfg.nri.socket, name, index);
        opts.registration_timeout = cfg.nri.registration_timeout;
        opts.backoff_max = cfg.nri.reconnect_max;
        // Open the network first: a bad ipam_network stops the agent before it registers.
        let gc_network = match (&cfg.ipam_gc, &cfg.ipam_network) {
            (Some(_), Some(path)) => Some(crate::ipam::open_network(path)?),
            _ => None,
        };
        let sandboxes = gc_network.as_ref().map(|_| Arc::new(Sandboxes::new()));
        let plugin = Arc::new(AgentPlugin {
            filelogs: filelogs.clone(),
            faketime: faketime.clone(),
            sandboxes: sandboxes.clone(),
        });
        let runner = match &launched {
            Some(l) => {
                tracing::info!(
                    fd = l.fd,
                    name,
                    index,
                    "started by the runtime as a pre-registered nri plugin: serving the connection it passed (nri.socket is not used, no reconnecting)"
                );
                berth_nri::Runner::launched(opts, plugin, l.take_socket()?)?
            }
            None => berth_nri::Runner::new(opts, plugin)?,
        };
        let metrics = Metrics::new();
        let ipam_gc = match (gc_network, sandboxes, &cfg.ipam_gc) {
            (Some(network), Some(sandboxes), Some(gc)) => {
                tracing::info!(network = %network.name, interval = %humantime::format_duration(gc.interval),
                    grace = %humantime::format_duration(gc.grace), "collecting leaked ipam leases");
                Some(Arc::new(Collector::new(
                    network,
                    gc.grace,
                    sandboxes,
                    runner.state(),
                    &metrics,
                )))
            }
            _ => None,
        };
        Ok(Agent {
            resolved,
            filelogs,
            sweeper,
            faketime,
            ipam_gc,
            metrics,
            runner,
        })
    }

    /// The validated API address (the server itself starts in `run`, see `crate::api`).
    pub fn api_listen(&self) -> Option<&Listen> {
        self.resolved.listen.as_ref()
    }

    /// Serves NRI and sweeps until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let api_task = if crate::api::wanted(&self.resolved.config) {
            match crate::api::server(
                &self.resolved.config,
                self.ipam_gc.clone(),
                self.metrics.clone(),
            ) {
                Ok(server) => {
                    let stop = shutdown.clone();
                    let failed = shutdown.clone();
                    let collector = self.ipam_gc.clone();
                    Some(tokio::spawn(async move {
                        let served = match server.start().await {
                            Ok(running) => {
                                if let Some(c) = &collector {
                                    c.audit_to(running.audit.clone());
                                }
                                running.run_until(stop.cancelled_owned()).await
                            }
                            Err(e) => Err(e),
                        };
                        if let Err(e) = served {
                            // No API means no audited access: stop rather than run half-configured.
                            tracing::error!(error = %e, "the API server failed; stopping the agent");
                            failed.cancel();
                        }
                    }))
                }
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "the API server cannot start; stopping the agent"
                    );
                    shutdown.cancel();
                    None
                }
            }
        } else {
            None
        };
        let sweeper_task = self.sweeper.clone().map(|s| {
            let every = self.resolved.config.cleanup.interval;
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.cancelled() => break,
                    }
                    let s = s.clone();
                    match tokio::task::spawn_blocking(move || s.sweep()).await {
                        Ok(r) if !r.removed_dirs.is_empty() || !r.removed_files.is_empty() => {
                            tracing::info!(
                                dirs = r.removed_dirs.len(),
                                files = r.removed_files.len(),
                                total_bytes = r.total_bytes,
                                "cleanup pass"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "cleanup pass panicked"),
                    }
                }
            })
        });
        let gc_task = match (&self.ipam_gc, &self.resolved.config.ipam_gc) {
            (Some(c), Some(gc)) => Some(tokio::spawn(crate::ipam::collector::run(
                c.clone(),
                gc.interval,
                shutdown.clone(),
            ))),
            _ => None,
        };
        serve_nri_on_own_thread(self.runner, shutdown.clone()).await;
        // A pre-registered agent's runner returns when the runtime closes its connection: the
        // runtime starts it again, so the whole agent stops.
        shutdown.cancel();
        if let Some(t) = sweeper_task {
            let _ = t.await;
        }
        if let Some(t) = gc_task {
            let _ = t.await;
        }
        if let Some(t) = api_task {
            let _ = t.await;
        }
        if let Some(f) = &self.filelogs {
            f.flush_metadata();
            f.save_if_dirty();
        }
        tracing::info!("berth-agent stopped");
    }
}

/// Serves NRI on a thread of its own, under a single-threaded runtime, until the runner ends.
///
/// The runtime waits for every CreateContainer answer. On one thread a request is read,
/// handled and answered without hand-offs between runtime workers, each a wake-up that waits
/// for a CPU on a busy node (and wakes an idle worker for nothing), and the API's or the
/// sweeper's work on the main runtime never sits in front of it.
async fn serve_nri_on_own_thread(
    runner: berth_nri::Runner<AgentPlugin>,
    shutdown: CancellationToken,
) {
    let (ended, wait) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("berth-nri".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(runner.run(shutdown)),
                Err(e) => tracing::error!(error = %e, "cannot start the NRI thread's runtime"),
            }
            // Dropped without a send when the runner panics: the wait below ends all the same.
            let _ = ended.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = wait.await;
        }
        Err(e) => tracing::error!(error = %e, "cannot start the NRI thread; stopping the agent"),
    }
}

fn non_empty<'a>(from_runtime: &'a str, configured: &'a str) -> &'a str {
    if from_runtime.is_empty() {
        configured
    } else {
        from_runtime
    }
}

/// The binary's whole life: parse, log, run until SIGTERM/SIGINT.
pub fn main_with(args: Args) -> anyhow::Result<()> {
    let resolved = args.resolve()?;
    if let Some(cmd) = &args.command {
        return run_command(cmd, &resolved);
    }
    if args.check_config {
        // The [api] table is only read by berth-api: check it here too, so a typo in it
        // fails the check instead of the agent's start.
        if crate::api::wanted(&resolved.config) {
            crate::api::check(&resolved.config)?;
        }
        crate::api::debug_config(&resolved.config)?;
        if let (Some(_), Some(path)) = (&resolved.config.ipam_gc, &resolved.config.ipam_network) {
            crate::ipam::read_network(path).context("invalid ipam_network for [ipam_gc]")?;
        }
        println!(
            "{}",
            toml::to_string_pretty(&resolved.config).context("cannot print the config")?
        );
        return Ok(());
    }
    let _log_flush = init_tracing(&resolved.config.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = Agent::new(resolved, Arc::new(SystemClock))?;
        let c = &agent.resolved.config;
        tracing::info!(nri_socket = %c.nri.socket.display(), log_root = %c.filelogs.log_root.display(),
            state_dir = %c.state_dir.display(), node = %c.node_name, "berth-agent starting");
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received; stopping");
            s.cancel();
        });
        agent.run(shutdown).await;
        anyhow::Ok(())
    })
}
