//! A CRI client that drives pods the way kubelet does: the same metadata, kubelet labels,
//! pod annotations, log directories and namespace options, over containerd's unix socket.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// kubelet's namespace modes (`NamespaceMode` in the CRI API).
const NAMESPACE_POD: i32 = 0;
const NAMESPACE_CONTAINER: i32 = 1;
const NAMESPACE_NODE: i32 = 2;

/// What a test says about a pod; everything else is filled in as kubelet would.
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub attempt: u32,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub host_network: bool,
}

impl PodSpec {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodSpec {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uuid::Uuid::new_v4().to_string(),
            attempt: 0,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            host_network: false,
        }
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_string(), value.to_string());
        self
    }

    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }
}

/// What a test says about a container.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub attempt: u32,
    pub tty: bool,
    pub run_as_user: Option<i64>,
    /// Read-only bind mounts: (host path, container path).
    pub mounts: Vec<(String, String)>,
}

impl ContainerSpec {
    /// A container that waits for TERM (busybox `sleep` as PID 1 would ignore it).
    pub fn sleeper(name: &str, image: &str) -> Self {
        ContainerSpec {
            name: name.to_string(),
            image: image.to_string(),
            command: vec!["/bin/sh".into(), "-c".into()],
            args: vec!["trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done".into()],
            env: Vec::new(),
            attempt: 0,
            tty: false,
            run_as_user: None,
            mounts: Vec::new(),
        }
    }

    /// Binds a host path read-only into the container (CRI's `mounts`, as a pod's hostPath).
    pub fn mount_ro(mut self, host: &str, container: &str) -> Self {
        self.mounts.push((host.to_string(), container.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn command(mut self, command: &[&str]) -> Self {
        self.command = command.iter().map(|s| s.to_string()).collect();
        self.args.clear();
        self
    }
}

/// A running pod sandbox and the config it was created with (CreateContainer needs it).
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    pub config: cri::PodSandboxConfig,
}

/// The result of ExecSync.
#[derive(Debug)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    /// stdout when the command succeeded, or an error carrying everything it said.
    pub fn ok(self) -> Result<String> {
        if self.exit_code == 0 {
            Ok(self.stdout)
        } else {
            bail!(
                "exit code {}: stdout {:?} stderr {:?}",
                self.exit_code,
                self.stdout,
                self.stderr
            )
        }
    }
}

/// Where the client puts pod logs and pod cgroups (a node's own directories).
#[derive(Clone, Debug)]
pub struct NodeLayout {
    pub pod_log_root: PathBuf,
    pub cgroup_parent: String,
}

pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    layout: NodeLayout,
}

impl CriClient {
    /// Connects to a CRI socket.
    pub async fn connect(socket: &Path, layout: NodeLayout) -> Result<Self> {
        let socket = socket.to_path_buf();
        let channel =
            Endpoint::try_from("http://[::]:50051")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .context("connecting to the CRI socket")?;
        Ok(CriClient {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            layout,
        })
    }

    pub async fn version(&mut self) -> Result<cri::VersionResponse> {
        Ok(self
            .runtime
            .version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await?
            .into_inner())
    }

    /// Runtime conditions by type (RuntimeReady, NetworkReady) → (status, reason + message).
    pub async fn conditions(&mut self) -> Result<HashMap<String, (bool, String)>> {
        let status = self
            .runtime
            .status(cri::StatusRequest { verbose: false })
            .await?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("CRI Status returned no status"))?;
        Ok(status
            .conditions
            .into_iter()
            .map(|c| (c.r#type, (c.status, format!("{}: {}", c.reason, c.message))))
            .collect())
    }

    /// Waits until the runtime and its network are ready and the image is listed.
    pub async fn wait_ready(&mut self, images: &[&str], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let conditions = self.conditions().await.unwrap_or_default();
            let ready = |t: &str| conditions.get(t).map(|c| c.0).unwrap_or(false);
            let listed = self.list_images().await.unwrap_or_default();
            let missing: Vec<_> = images
                .iter()
                .filter(|i| !listed.iter().any(|l| l == *i))
                .collect();
            if ready("RuntimeReady") && ready("NetworkReady") && missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "node not ready after {timeout:?}: conditions {conditions:?}, images missing {missing:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn list_images(&mut self) -> Result<Vec<String>> {
        let images = self
            .images
            .list_images(cri::ListImagesRequest { filter: None })
            .await?
            .into_inner()
            .images;
        Ok(images.into_iter().flat_map(|i| i.repo_tags).collect())
    }

    fn sandbox_config(&self, spec: &PodSpec) -> cri::PodSandboxConfig {
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
        let log_directory = self
            .layout
            .pod_log_root
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        let network = if spec.host_network {
            NAMESPACE_NODE
        } else {
            NAMESPACE_POD
        };
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: spec.attempt,
            }),
            // kubelet sends no hostname for host-network pods: they share the node's UTS
            // namespace, where runc refuses to set one.
            hostname: if spec.host_network {
                String::new()
            } else {
                spec.name.clone()
            },
            log_directory: log_directory.display().to_string(),
            labels,
            annotations: spec.annotations.clone().into_iter().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!(
                    "{}/pod{}",
                    self.layout.cgroup_parent,
                    spec.uid.replace('-', "_")
                ),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network,
                        pid: NAMESPACE_CONTAINER,
                        ipc: NAMESPACE_POD,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox as kubelet sends it (the log directory is created first, as kubelet does).
    pub async fn run_pod(&mut self, spec: &PodSpec) -> Result<Pod> {
        let config = self.sandbox_config(spec);
        std::fs::create_dir_all(&config.log_directory)
            .with_context(|| format!("creating pod log dir {}", config.log_directory))?;
        let id = self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {}/{}", spec.namespace, spec.name))?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            spec: spec.clone(),
            config,
        })
    }

    pub async fn create_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let log_path = format!("{}/{}.log", spec.name, spec.attempt);
        std::fs::create_dir_all(Path::new(&pod.config.log_directory).join(&spec.name))?;
        let mut labels = HashMap::new();
        labels.insert(
            "io.kubernetes.container.name".to_string(),
            spec.name.clone(),
        );
        labels.insert("io.kubernetes.pod.name".to_string(), pod.spec.name.clone());
        labels.insert(
            "io.kubernetes.pod.namespace".to_string(),
            pod.spec.namespace.clone(),
        );
        labels.insert("io.kubernetes.pod.uid".to_string(), pod.spec.uid.clone());
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: spec.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: spec.image.clone(),
                user_specified_image: spec.image.clone(),
                ..Default::default()
            }),
            command: spec.command.clone(),
            args: spec.args.clone(),
            envs: spec
                .env
                .iter()
                .map(|(key, value)| cri::KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                })
                .collect(),
            labels,
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container)| cri::Mount {
                    container_path: container.clone(),
                    host_path: host.clone(),
                    readonly: true,
                    ..Default::default()
                })
                .collect(),
            log_path,
            tty: spec.tty,
            stdin: spec.tty,
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: if pod.spec.host_network {
                            NAMESPACE_NODE
                        } else {
                            NAMESPACE_POD
                        },
                        pid: NAMESPACE_CONTAINER,
                        ipc: NAMESPACE_POD,
                        ..Default::default()
                    }),
                    run_as_user: spec.run_as_user.map(|value| cri::Int64Value { value }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .with_context(|| {
                format!(
                    "CreateContainer {} in {}/{}",
                    spec.name, pod.spec.namespace, pod.spec.name
                )
            })?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .with_context(|| format!("StartContainer {id}"))?;
        Ok(())
    }

    /// CreateContainer + StartContainer.
    pub async fn run_container(&mut self, pod: &Pod, spec: &ContainerSpec) -> Result<String> {
        let id = self.create_container(pod, spec).await?;
        self.start_container(&id).await?;
        Ok(id)
    }

    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        self.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.to_string(),
                timeout: timeout_s,
            })
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
        Ok(())
    }

    /// The container's state: 0 created, 1 running, 2 exited, 3 unknown.
    pub async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        self.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .with_context(|| format!("ContainerStatus {id}"))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("ContainerStatus {id}: no status"))
    }

    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let response = self
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: timeout.as_secs().max(1) as i64,
            })
            .await
            .with_context(|| format!("ExecSync {cmd:?} in {id}"))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: response.exit_code,
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
        })
    }

    pub async fn pod_status(&mut self, id: &str) -> Result<cri::PodSandboxStatus> {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await
            .with_context(|| format!("PodSandboxStatus {id}"))?
            .into_inner()
            .status
            .ok_or_else(|| anyhow!("PodSandboxStatus {id}: no status"))
    }

    /// The pod's primary IP as the runtime reports it (from CNI ADD's result).
    pub async fn pod_ip(&mut self, id: &str) -> Result<IpAddr> {
        let status = self.pod_status(id).await?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .with_context(|| format!("pod {id} has no IP in its status ({ip:?})"))
    }

    /// Every IP the runtime reports for the pod: the first, then `additional_ips` (the
    /// second family's address on a dual-stack pod), as kubelet lists them in `podIPs`.
    pub async fn pod_ips(&mut self, id: &str) -> Result<Vec<IpAddr>> {
        let status = self.pod_status(id).await?;
        let net = status
            .network
            .with_context(|| format!("pod {id} has no network status"))?;
        std::iter::once(net.ip)
            .chain(net.additional_ips.into_iter().map(|a| a.ip))
            .map(|ip| {
                ip.parse()
                    .with_context(|| format!("pod {id} reports {ip:?}, not an IP"))
            })
            .collect()
    }

    pub async fn stop_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .with_context(|| format!("StopPodSandbox {id}"))?;
        Ok(())
    }

    pub async fn remove_pod(&mut self, id: &str) -> Result<()> {
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .with_context(|| format!("RemovePodSandbox {id}"))?;
        Ok(())
    }

    /// What kubelet does when a pod goes: stops and removes its container, then
    /// StopPodSandbox (CNI DEL with the netns) and RemovePodSandbox (CNI DEL again, with an
    /// empty netns).
    pub async fn delete_pod_like_kubelet(&mut self, pod: &str, container: &str) -> Result<()> {
        self.stop_container(container, 5).await?;
        self.remove_container(container).await?;
        self.stop_pod(pod)
            .await
            .context("StopPodSandbox: first DEL")?;
        self.remove_pod(pod)
            .await
            .context("RemovePodSandbox: second DEL")
    }

    pub async fn list_pods(&mut self) -> Result<Vec<cri::PodSandbox>> {
        Ok(self
            .runtime
            .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await?
            .into_inner()
            .items)
    }

    pub async fn list_containers(&mut self) -> Result<Vec<cri::Container>> {
        Ok(self
            .runtime
            .list_containers(cri::ListContainersRequest { filter: None })
            .await?
            .into_inner()
            .containers)
    }

    /// Stops and removes every container and pod, as kubelet would when draining the node.
    /// Does every step and reports all failures together.
    pub async fn teardown_all(&mut self) -> Result<usize> {
        let mut failures = Vec::new();
        let containers = self.list_containers().await?;
        for c in &containers {
            if let Err(e) = self.stop_container(&c.id, 2).await {
                failures.push(format!("{e:#}"));
            }
            if let Err(e) = self.remove_container(&c.id).await {
                failures.push(format!("{e:#}"));
            }
        }
        let pods = self.list_pods().await?;
        for p in &pods {
            if let Err(e) = self.stop_pod(&p.id).await {
                failures.push(format!("{e:#}"));
            }
            if let Err(e) = self.remove_pod(&p.id).await {
                failures.push(format!("{e:#}"));
            }
        }
        if failures.is_empty() {
            Ok(pods.len())
        } else {
            bail!(
                "teardown had {} failures:\n{}",
                failures.len(),
                failures.join("\n")
            )
        }
    }
}
