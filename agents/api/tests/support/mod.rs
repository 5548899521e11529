//! Test bed for the API server: a temp dir with a CA, certificates, a policy, an audit log
//! and a pod log tree; a real server on 127.0.0.1:0 and/or a temp unix socket.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::{
    ApiConfig, AuditConfig, BackendError, CopiedIn, CopiedOut, DebugAttachment, DebugBackend,
    DebugEvent, DebugEvents, DebugInput, DebugSession, DebugStart, DebugTarget, DirLayout,
    ExecOutput, IpamBackend, RunningServer, Server, TlsConfig,
};
use berth_api_client::connect::{self as client, TlsFiles};
use berth_api_client::pki::{Authority, ClientSpec, Issued, Validity};
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

/// Stdin bytes a fake session received, with the session's id.
pub type Typed = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Debug containers in memory: records what was started and typed; an attached session
/// says `ready`, echoes nothing and ends when its client closes stdin.
#[derive(Default)]
pub struct FakeDebug {
    pub starts: Mutex<Vec<DebugStart>>,
    pub typed: Typed,
    events: Mutex<Option<DebugEvents>>,
}

pub const FAKE_DEBUG_IMAGE: &str = "berth.test/debug-tools:1";

impl FakeDebug {
    fn session(&self, req: &DebugStart) -> DebugSession {
        let mut starts = self.starts.lock().unwrap();
        starts.push(req.clone());
        DebugSession {
            id: format!("s-{}", starts.len()),
            target_pid: 4242,
            caller: req.caller.clone(),
            profile: req.profile.clone(),
            image: req.image.clone().unwrap_or_else(|| FAKE_DEBUG_IMAGE.into()),
            command: req.command.clone(),
            tty: req.tty,
            started_at: std::time::SystemTime::now(),
            attached: true,
        }
    }
}

#[tonic::async_trait]
impl DebugBackend for FakeDebug {
    fn start(&self, events: DebugEvents) {
        *self.events.lock().unwrap() = Some(events);
    }
    fn profiles(&self) -> &'static [&'static str] {
        &["general", "netadmin", "sysadmin"]
    }
    fn default_image(&self) -> &str {
        FAKE_DEBUG_IMAGE
    }
    fn copy_limit(&self) -> u64 {
        1 << 20
    }
    async fn find_target(
        &self,
        _namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<DebugTarget, tonic::Status> {
        Ok(DebugTarget {
            container_id: format!("ctr-{pod}"),
            container: container.unwrap_or("app").into(),
        })
    }
    async fn start_session(&self, req: DebugStart) -> Result<DebugSession, tonic::Status> {
        Ok(self.session(&req))
    }
    async fn start_attached(
        &self,
        req: DebugStart,
    ) -> Result<(DebugSession, DebugAttachment), tonic::Status> {
        use berth_proto::v1::attach_response::Msg;
        let session = self.session(&req);
        let (input, mut typed_rx) = tokio::sync::mpsc::channel::<DebugInput>(8);
        let (out_tx, out_rx) = tokio::sync::mpsc::channel(8);
        let (typed, events, id) = (
            self.typed.clone(),
            self.events.lock().unwrap().clone(),
            session.id.clone(),
        );
        let caller = req.caller.clone();
        tokio::spawn(async move {
            let _ = out_tx.send(Msg::Stdout(b"ready".to_vec())).await;
            while let Some(i) = typed_rx.recv().await {
                match i {
                    DebugInput::Stdin(b) => {
                        typed.lock().unwrap().push((id.clone(), b.to_vec()));
                        if let Some(ev) = &events {
                            ev.record(
                                std::time::SystemTime::now(),
                                DebugEvent {
                                    session: id.clone(),
                                    identity: caller.clone(),
                                    method: "/berth.v1.Debug/Attach",
                                    denied: false,
                                    detail: Some(serde_json::json!({"typed": b.len()})),
                                },
                            );
                        }
                    }
                    DebugInput::CloseStdin => break,
                    DebugInput::Resize { .. } | DebugInput::Signal(_) => {}
                }
            }
            let _ = out_tx
                .send(Msg::Exit(v1::SessionEnd {
                    reason: "exited".into(),
                    exit_status: Some(0),
                }))
                .await;
        });
        let output = Box::pin(tokio_stream::wrappers::ReceiverStream::new(out_rx));
        Ok((session, DebugAttachment { input, output }))
    }
    async fn attach(&self, session: &str, _caller: &str) -> Result<DebugAttachment, tonic::Status> {
        Err(tonic::Status::not_found(format!(
            "no debug session {session}"
        )))
    }
    fn sessions(&self) -> Result<Vec<DebugSession>, tonic::Status> {
        Ok(Vec::new())
    }
    async fn exec(
        &self,
        _session: &str,
        _argv: Vec<String>,
        _caller: &str,
    ) -> Result<ExecOutput, tonic::Status> {
        Err(tonic::Status::unimplemented("the fake runs no commands"))
    }
    async fn terminate(&self, _session: &str) -> Result<(), tonic::Status> {
        Ok(())
    }
    async fn wait_ended(&self, _session: &str) {
        std::future::pending::<()>().await
    }
    async fn copy_in(
        &self,
        _container_id: &str,
        _path: &str,
        _data: Vec<u8>,
        _mode: u32,
        _caller: &str,
    ) -> Result<CopiedIn, tonic::Status> {
        Err(tonic::Status::unimplemented("the fake copies nothing"))
    }
    async fn copy_out(
        &self,
        _container_id: &str,
        _path: &str,
        _caller: &str,
    ) -> Result<CopiedOut, tonic::Status> {
        Err(tonic::Status::unimplemented("the fake copies nothing"))
    }
}

/// A pod reference as requests carry it.
pub fn pod(ns: &str, name: &str) -> Option<v1::PodRef> {
    Some(v1::PodRef {
        namespace: ns.into(),
        pod: name.into(),
    })
}
