//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// berthctl: talk to berth node agents (node info, file logs, IPAM, faketime, debug
/// containers, grants, audit).
#[derive(Debug, Parser)]
#[command(name = "berthctl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone, Default)]
pub struct ConnArgs {
    /// Agent endpoint: https://host:port (mutual TLS) or unix:///path/to/api.sock.
    #[arg(long, env = "BERTH_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// Client certificate (PEM).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// CA that signed the agent's server certificate (PEM).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the endpoint host).
    #[arg(long, global = true)]
    pub server_name: Option<String>,
    /// Context from the context file.
    #[arg(long, env = "BERTH_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Context file (default: $BERTH_CONFIG or ~/.config/berth/config.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The agent's node.
    #[command(subcommand)]
    Node(NodeCmd),
    /// File logs of pods on the node.
    #[command(subcommand)]
    Logs(LogsCmd),
    /// Fixed-IP address management.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// The agent's audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Shifted wall clocks of containers (pods annotated berth.io/faketime).
    #[command(subcommand)]
    Faketime(FaketimeCmd),
    /// A debug container in a pod's namespaces: an interactive shell, or a command.
    ///
    /// The tools container joins the target container's net, pid, ipc and uts namespaces;
    /// the target's files are under /proc/1/root (with a profile that may read them). With
    /// a terminal on stdin the session is interactive (raw mode, resize); otherwise stdin is
    /// piped in and stdout/stderr come back apart. Exits with the session's exit status.
    /// Killing berthctl detaches: the session lives for the agent's grace period and can be
    /// re-attached with --attach.
    Debug(DebugArgs),
    /// One command in a debug container (a new session that ends with it, or --session);
    /// the agent's deny-list applies. Exits with the command's status.
    Exec(ExecArgs),
    /// Copy a file between this machine and a pod: one side is NAMESPACE/POD:/ABSOLUTE/PATH
    /// (resolved inside the container: symlinks cannot reach the node), the other a local
    /// path or "-" (stdin/stdout). Prefix ./ to a local path that holds a ':'.
    Cp(CpArgs),
    /// Live debug sessions on the node.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Temporary roles: grant a role to an identity for a bounded time (never to yourself).
    #[command(subcommand)]
    Grants(GrantsCmd),
    /// Certificates for a test bed or demo.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Contexts in the context file (--config, $BERTH_CONFIG or ~/.config/berth/config.toml):
    /// which agent berthctl talks to, with which certificate.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Node name, rack, versions, and who you are to the agent.
    Info,
    /// Health of the agent's components.
    Health,
    /// Services and features the agent serves.
    Capabilities,
}

#[derive(Debug, Subcommand)]
pub enum LogsCmd {
    /// List a pod's log dirs and files.
    Ls {
        /// namespace/pod
        pod: String,
    },
    /// Print a file.
    Cat {
        /// namespace/pod
        pod: String,
        /// Log dir name (see `logs ls`).
        dir: String,
        /// File path inside the dir.
        path: String,
        /// Start at this byte offset.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Print the end of a file, optionally following it.
    Tail {
        /// namespace/pod
        pod: String,
        /// Log dir name (see `logs ls`).
        dir: String,
        /// File path inside the dir.
        path: String,
        /// Lines from the end.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: u32,
        /// Keep printing what is appended.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Download a log dir as a tar file.
    Pull {
        /// namespace/pod
        pod: String,
        /// Log dir name (see `logs ls`).
        dir: String,
        /// Output file ("-" for stdout); default POD-DIR.tar.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum IpamCmd {
    /// Allocations, holds and reservations.
    List {
        /// CNI network name (default: every network).
        #[arg(long, default_value = "")]
        network: String,
        #[arg(long, default_value = "")]
        pool: String,
        /// Only this namespace (default: all, which needs a role scoped to "*").
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
    },
    /// One address.
    Show {
        /// IP address.
        address: String,
        #[arg(long, default_value = "")]
        network: String,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
    },
    /// Who had which address, oldest first.
    History {
        #[arg(long, default_value = "")]
        network: String,
        #[arg(long, default_value = "")]
        pool: String,
        #[arg(long, default_value = "")]
        address: String,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
        #[arg(long, default_value = "")]
        pod: String,
        /// Newest N events (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Reserve an address for a pod (namespace + owner), or for nobody (neither).
    Reserve {
        /// IP address.
        address: String,
        #[arg(long)]
        network: String,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
        /// Pod name, or app:KEY for an app's sticky addresses.
        #[arg(long, default_value = "")]
        owner: String,
        /// Only for this interface of the pod.
        #[arg(long, default_value = "")]
        ifname: String,
        /// The reservation ends after this long (e.g. 2h, 7d).
        #[arg(long = "for")]
        for_: Option<humantime::Duration>,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Free an address (with -n: only if it belongs to that namespace).
    Release {
        /// IP address.
        address: String,
        #[arg(long, default_value = "")]
        network: String,
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
    },
    /// Collect leaked addresses now: allocations of sandboxes the runtime no longer has
    /// (what the agent's [ipam_gc] does every interval).
    Gc {
        /// Show what would be freed; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct FaketimeTarget {
    /// namespace/pod
    pub pod: String,
    /// One container of the pod (default: every faketime container of the pod).
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
}

#[derive(Debug, Subcommand)]
pub enum FaketimeCmd {
    /// Offset, coverage and reason of the pod's faketime containers.
    Get(FaketimeTarget),
    /// Move the clock: a relative offset (+10d, -3h, +90m, 0) or a start (@2030-01-01,
    /// "@2030-01-01 09:00:00", UTC) that then runs on. Applies within about a second.
    Set {
        #[command(flatten)]
        target: FaketimeTarget,
        /// The new offset.
        #[arg(allow_hyphen_values = true)]
        offset: String,
    },
    /// Back to the real clock (offset 0).
    Clear(FaketimeTarget),
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Audit records, oldest first.
    Query {
        /// Exact caller identity, e.g. cn:alice or unix:uid:0.
        #[arg(long, default_value = "")]
        identity: String,
        /// Method or prefix ending in '/', e.g. /berth.v1.Logs/.
        #[arg(long, default_value = "")]
        method: String,
        /// allow or deny.
        #[arg(long, default_value = "")]
        decision: String,
        /// Only records newer than this (e.g. 15m, 2h, 1d).
        #[arg(long)]
        since: Option<humantime::Duration>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Check the hash chain of an audit log on this machine (the file and its rotations).
    Verify {
        /// The audit log, e.g. /var/log/berth/audit.log.
        path: PathBuf,
        /// Rotated files to include (audit.log.1 … audit.log.N).
        #[arg(long, default_value_t = 5)]
        keep: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Write a CA, a server certificate and client certificates into a directory.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Server SANs (DNS names or IPs); repeatable.
        #[arg(long = "server-san", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_sans: Vec<String>,
        /// Client as NAME or NAME:group1,group2 (groups go to OU and berth://group/ SANs);
        /// repeatable.
        #[arg(long = "client", default_values_t = ["admin:ops".to_string()])]
        clients: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the current context's name.
    CurrentContext,
    /// List the contexts (the current one marked with *).
    GetContexts,
    /// Save the connection flags given with it (--endpoint or $BERTH_ENDPOINT, --ca, --cert,
    /// --key, --server-name) as context NAME, replacing one of that name. Relative paths
    /// are stored absolute. Other contexts and comments in the file are kept.
    SetContext {
        /// The context's name (letters, digits, '.', '_', '-').
        name: String,
    },
    /// Make NAME the current context.
    UseContext { name: String },
    /// Remove context NAME (and current-context when it named it).
    DeleteContext { name: String },
}

/// Debug profiles (what the caller's roles allow: `debug_profiles` in the policy).
pub const PROFILES: [&str; 3] = ["general", "netadmin", "sysadmin"];

#[derive(Debug, Args)]
pub struct DebugArgs {
    /// namespace/pod
    pub pod: String,
    /// The target container (default: the pod's only running container).
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
    /// general: non-root, no capabilities; netadmin: + NET_ADMIN, NET_RAW; sysadmin: root
    /// (+ SYS_PTRACE, to read the target's files).
    #[arg(long, value_parser = PROFILES, default_value = "general")]
    pub profile: String,
    /// The tools image (default: the agent's; others only if a role allows them).
    #[arg(long, default_value = "")]
    pub image: String,
    /// Re-attach to a live session (its id was printed when it started).
    #[arg(long, value_name = "SESSION_ID", conflicts_with_all = ["profile", "image", "command"])]
    pub attach: Option<String>,
    /// The command (after --); default: the image's shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// namespace/pod
    pub pod: String,
    /// The target container (default: the pod's only running container).
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
    /// Run in this live session instead of a new one.
    #[arg(long, value_name = "ID", default_value = "")]
    pub session: String,
    /// Profile of the new session (see `debug --help`).
    #[arg(long, value_parser = PROFILES, default_value = "general")]
    pub profile: String,
    /// Tools image of the new session.
    #[arg(long, default_value = "")]
    pub image: String,
    /// The command (after --).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// NAMESPACE/POD:/PATH, a local path, or "-".
    pub src: String,
    /// NAMESPACE/POD:/PATH, a local path (a directory: the file keeps its name), or "-".
    pub dst: String,
    /// The target container (default: the pod's only running container).
    #[arg(short = 'c', long, default_value = "")]
    pub container: String,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// Live debug sessions.
    Ls {
        /// Only this namespace (default: all, which needs a role scoped to "*").
        #[arg(short = 'n', long, default_value = "")]
        namespace: String,
    },
    /// End a session (returns once its container is removed).
    Kill {
        /// namespace/pod
        pod: String,
        session_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantsCmd {
    /// Grant a policy role to an identity (cn:alice, unix:uid:1000, …) for a while.
    Grant {
        identity: String,
        role: String,
        /// How long (e.g. 10m, 2h); at most the agent's max_grant_duration.
        #[arg(long = "for")]
        for_: humantime::Duration,
        /// Why (ticket, incident): kept in the grant and the audit log (required).
        #[arg(long)]
        reason: String,
    },
    /// Live grants.
    Ls {
        /// Only this identity's.
        #[arg(long, default_value = "")]
        identity: String,
    },
    /// End a grant now.
    Revoke {
        /// The grant's id (see `grants ls`).
        id: String,
    },
}
