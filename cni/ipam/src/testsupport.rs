//! Support for tests and benchmarks of code built on this crate: a throwaway etcd server.
//!
//! Not used by the allocator itself. [`EtcdServer::start`] spawns `/usr/bin/etcd` (or
//! `$BERTH_ETCD`) on 127.0.0.1 with free ports and a private data dir; dropping it kills the
//! process and removes the dir. [`EtcdServer::start_with`] serves clients over TLS (and
//! requires client certificates) with certificates the caller made.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// TLS for the client port of a test etcd: PEM files the caller made.
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, etcd runs with `--client-cert-auth` and trusts client certificates of this CA.
    pub client_ca: Option<PathBuf>,
}

/// A running etcd, killed and deleted on drop.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
    pub client_port: u16,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The etcd binary: `$BERTH_ETCD` or `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("BERTH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

impl EtcdServer {
    /// Starts etcd and waits until it accepts connections (at most 15 s).
    pub fn start() -> Result<EtcdServer, String> {
        EtcdServer::start_with(None)
    }

    /// Starts etcd serving clients over `https://` when `tls` is given.
    pub fn start_with(tls: Option<&ServerTls>) -> Result<EtcdServer, String> {
        EtcdServer::start_with_args(tls, &[])
    }

    /// As [`EtcdServer::start_with`], with more command-line flags for etcd.
    pub fn start_with_args(tls: Option<&ServerTls>, args: &[&str]) -> Result<EtcdServer, String> {
        let bin = etcd_binary();
        if !bin.exists() {
            return Err(format!(
                "{} not found: install etcd-server (Debian) or set BERTH_ETCD",
                bin.display()
            ));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("berth-etcd-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let (cp, pp) = (
            free_port().map_err(|e| e.to_string())?,
            free_port().map_err(|e| e.to_string())?,
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let log = std::fs::File::create(dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        if let Some(t) = tls {
            cmd.arg(format!("--cert-file={}", t.cert.display()))
                .arg(format!("--key-file={}", t.key.display()));
            if let Some(ca) = &t.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        let child = cmd
            .args(args)
            .arg("--name=berth-test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=berth-test={peer}"))
            .arg("--initial-cluster-state=new")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let mut server = EtcdServer {
            child,
            dir,
            endpoint: client,
            client_port: cp,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "etcd exited with {status}; log: {}",
                    server.log_tail()
                ));
            }
            if TcpStream::connect(("127.0.0.1", cp)).is_ok() {
                // Listening; give it a moment to elect itself leader.
                std::thread::sleep(Duration::from_millis(200));
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "etcd did not listen within 15 s; log: {}",
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid, e.g. to SIGSTOP it and simulate a hung server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last part of etcd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text[start..].to_string()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
