//! Test bed for the API server: a temp dir with a CA, certificates, a policy, an audit log
//! and a pod log tree; a real server on 127.0.0.1:0 and/or a temp unix socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::client::{self, TlsFiles};
use berth_api::pki::{Authority, ClientSpec, Issued, Validity};
use berth_api::{
    ApiConfig, AuditConfig, BackendError, DirLayout, IpamBackend, RunningServer, Server, TlsConfig,
};
use berth_proto::v1;
use tonic::transport::Channel;

pub const POLICY: &str = r#"
[roles.admin]
methods = ["*"]
namespaces = ["*"]

[roles.reader]
methods = ["berth.v1.Logs/*", "berth.v1.Node/Info"]
namespaces = ["team-a"]

[[bindings]]
role = "admin"
groups = ["ops"]

[[bindings]]
role = "reader"
identities = ["cn:bob"]
"#;

pub struct Bed {
    pub dir: tempfile::TempDir,
    pub ca: Authority,
    pub logs_root: PathBuf,
}

impl Bed {
    pub fn new(policy: &str) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("test CA", Validity::days(1)).unwrap();
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .unwrap();
        let p = dir.path();
        std::fs::write(p.join("ca.pem"), &ca.cert.cert_pem).unwrap();
        std::fs::write(p.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(p.join("server-key.pem"), &server.key_pem).unwrap();
        std::fs::write(p.join("policy.toml"), policy).unwrap();
        let logs_root = p.join("pods");
        let app = logs_root.join("team-a/web-0/app");
        std::fs::create_dir_all(app.join("sub")).unwrap();
        std::fs::write(app.join("app.log"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(app.join("sub/x.log"), "x").unwrap();
        std::fs::write(p.join("host-secret"), "host secret").unwrap();
        std::os::unix::fs::symlink(p.join("host-secret"), app.join("evil")).unwrap();
        std::os::unix::fs::symlink(p, app.join("evil-dir")).unwrap();
        std::fs::create_dir_all(logs_root.join("kube-system/etcd-0/etcd")).unwrap();
        std::fs::write(logs_root.join("kube-system/etcd-0/etcd/etcd.log"), "secret").unwrap();
        Bed { dir, ca, logs_root }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.path("audit.log")
    }

    /// TCP (mTLS) config.
    pub fn config(&self) -> ApiConfig {
        let mut cfg = ApiConfig::new(
            self.path("policy.toml"),
            AuditConfig::new(self.audit_path()),
        );
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.tls = Some(TlsConfig {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            client_ca: self.path("ca.pem"),
            crl: None,
        });
        cfg.node.name = "node-1".into();
        cfg.node.rack = "rack-7".into();
        cfg
    }

    pub async fn start(&self, cfg: ApiConfig) -> RunningServer {
        self.start_with(cfg, Arc::new(FakeIpam::default())).await
    }

    pub async fn start_with(&self, cfg: ApiConfig, ipam: Arc<FakeIpam>) -> RunningServer {
        Server::builder(cfg)
            .logs(DirLayout::new(&self.logs_root))
            .ipam(ipam)
            .start()
            .await
            .unwrap()
    }

    /// Writes a client cert + key signed by `ca` and returns the TLS files to use them.
    pub fn client_files(
        &self,
        ca: &Authority,
        name: &str,
        groups: &[&str],
        validity: Validity,
    ) -> TlsFiles {
        let issued = ca
            .issue_client(
                &ClientSpec {
                    common_name: name.into(),
                    groups: groups.iter().map(|g| g.to_string()).collect(),
                    ..Default::default()
                },
                validity,
            )
            .unwrap();
        self.write_client(name, &issued)
    }

    pub fn write_client(&self, name: &str, issued: &Issued) -> TlsFiles {
        let cert = self.path(&format!("{name}.pem"));
        let key = self.path(&format!("{name}-key.pem"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        TlsFiles {
            ca: self.path("ca.pem"),
            cert,
            key,
            server_name: Some("localhost".into()),
        }
    }

    pub fn alice(&self) -> TlsFiles {
        self.client_files(&self.ca, "alice", &["ops"], Validity::days(1))
    }

    pub fn bob(&self) -> TlsFiles {
        self.client_files(&self.ca, "bob", &[], Validity::days(1))
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        audit_lines(&self.audit_path())
    }
}

pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

pub async fn tls_channel(
    srv: &RunningServer,
    files: &TlsFiles,
) -> Result<Channel, client::ClientError> {
    let ep = format!("https://{}", srv.tcp_addr.unwrap());
    client::connect(&ep, Some(files)).await
}

pub async fn node(srv: &RunningServer, files: &TlsFiles) -> v1::node_client::NodeClient<Channel> {
    v1::node_client::NodeClient::new(tls_channel(srv, files).await.unwrap())
}

/// Polls `f` every 20 ms until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// An in-memory IPAM that records every call.
#[derive(Default)]
pub struct FakeIpam {
    pub allocations: Mutex<Vec<v1::Allocation>>,
    pub calls: Mutex<Vec<String>>,
    /// Makes `reserve` this slow (for hang-up tests).
    pub reserve_delay: Mutex<Duration>,
}

impl FakeIpam {
    pub fn with(allocs: Vec<v1::Allocation>) -> FakeIpam {
        FakeIpam {
            allocations: Mutex::new(allocs),
            ..Default::default()
        }
    }
}

#[tonic::async_trait]
impl IpamBackend for FakeIpam {
    async fn list(
        &self,
        f: &v1::ListAllocationsRequest,
    ) -> Result<Vec<v1::Allocation>, BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("list {}", f.namespace));
        Ok(self
            .allocations
            .lock()
            .unwrap()
            .iter()
            .filter(|a| f.pool.is_empty() || a.pool == f.pool)
            .cloned()
            .collect())
    }
    async fn show(&self, _network: &str, address: &str) -> Result<v1::Allocation, BackendError> {
        self.calls.lock().unwrap().push(format!("show {address}"));
        self.allocations
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.address == address)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(format!("address {address}")))
    }
    async fn history(
        &self,
        _q: &v1::IpamHistoryRequest,
    ) -> Result<Vec<v1::IpamEvent>, BackendError> {
        Ok(vec![])
    }
    async fn reserve(
        &self,
        r: &v1::ReserveRequest,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        let delay = *self.reserve_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.calls
            .lock()
            .unwrap()
            .push(format!("reserve {} by {actor}", r.address));
        let a = v1::Allocation {
            network: r.network.clone(),
            pool: r.pool.clone(),
            address: r.address.clone(),
            state: "reserved".into(),
            namespace: r.namespace.clone(),
            owner: r.owner.clone(),
            ..Default::default()
        };
        self.allocations.lock().unwrap().push(a.clone());
        Ok(a)
    }
    async fn release(
        &self,
        _pool: &str,
        address: &str,
        actor: &str,
    ) -> Result<v1::Allocation, BackendError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("release {address} by {actor}"));
        let mut all = self.allocations.lock().unwrap();
        let i = all
            .iter()
            .position(|a| a.address == address)
            .ok_or_else(|| BackendError::NotFound(format!("address {address}")))?;
        Ok(all.remove(i))
    }
}
