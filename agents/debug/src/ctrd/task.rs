//! Containers, tasks and execs of sessions in the debug namespace, and the target's task in
//! the namespace CRI runs pods in.

use std::collections::HashMap;

use containerd_client::services::v1 as api;
use containerd_client::types::Mount;
use prost_types::Any;
use serde_json::Value;

use super::{Ctrd, PodContainer, ignore_not_found};
use crate::error::{Error, Result};
use crate::spec::{PROCESS_TYPE_URL, SPEC_TYPE_URL};

impl Ctrd {
    /// The pid of a running task in another namespace (the target's).
    pub async fn task_pid(&self, ns: &str, container_id: &str) -> Result<Option<u32>> {
        let got = self
            .tasks()
            .get(self.req(
                ns,
                api::GetRequest {
                    container_id: container_id.to_string(),
                    exec_id: String::new(),
                },
            ))
            .await;
        Ok(ignore_not_found(got, "getting the target task")?
            .and_then(|r| r.process)
            .filter(|p| p.status == containerd_client::types::v1::Status::Running as i32)
            .map(|p| p.pid))
    }

    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        spec: &Value,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.containers()
            .create(self.req(
                &self.ns,
                api::CreateContainerRequest {
                    container: Some(api::Container {
                        id: id.to_string(),
                        labels,
                        image: image.to_string(),
                        runtime: Some(api::container::Runtime {
                            name: self.runtime.clone(),
                            options: self.runc.clone(),
                        }),
                        spec: Some(Any {
                            type_url: SPEC_TYPE_URL.into(),
                            value: serde_json::to_vec(spec).expect("spec serializes"),
                        }),
                        snapshotter: self.snapshotter.clone(),
                        snapshot_key: id.to_string(),
                        created_at: None,
                        updated_at: None,
                        extensions: HashMap::new(),
                        sandbox: String::new(),
                    }),
                },
            ))
            .await
            .map_err(Error::containerd(format!("creating container {id}")))?;
        Ok(())
    }

    pub async fn list_containers(&self) -> Result<Vec<String>> {
        Ok(self
            .containers()
            .list(self.req(&self.ns, api::ListContainersRequest { filters: vec![] }))
            .await
            .map_err(Error::containerd("listing containers"))?
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// The app containers (not the sandbox) CRI made for `pod_namespace/pod` in `ns`.
    pub async fn pod_containers(
        &self,
        ns: &str,
        pod_namespace: &str,
        pod: &str,
    ) -> Result<Vec<PodContainer>> {
        // containerd's filter syntax quotes values; pod and namespace names are DNS names,
        // which never need escaping (the caller checked them).
        let filter = format!(
            "labels.\"io.kubernetes.pod.namespace\"=={pod_namespace},labels.\"io.kubernetes.pod.name\"=={pod},labels.\"io.cri-containerd.kind\"==container"
        );
        let list = self
            .containers()
            .list(self.req(
                ns,
                api::ListContainersRequest {
                    filters: vec![filter],
                },
            ))
            .await
            .map_err(Error::containerd("listing the pod's containers"))?
            .into_inner()
            .containers;
        Ok(list
            .into_iter()
            .map(|c| PodContainer {
                name: c
                    .labels
                    .get("io.kubernetes.container.name")
                    .cloned()
                    .unwrap_or_default(),
                created_unix_ns: c
                    .created_at
                    .map(|t| t.seconds * 1_000_000_000 + i64::from(t.nanos))
                    .unwrap_or(0),
                id: c.id,
            })
            .collect())
    }

    pub async fn delete_container(&self, id: &str) -> Result<()> {
        ignore_not_found(
            self.containers()
                .delete(self.req(&self.ns, api::DeleteContainerRequest { id: id.to_string() }))
                .await,
            format!("deleting container {id}"),
        )
        .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<u32> {
        Ok(self
            .tasks()
            .create(self.req(
                &self.ns,
                api::CreateTaskRequest {
                    container_id: id.to_string(),
                    rootfs,
                    stdin: stdin.to_string(),
                    stdout: stdout.to_string(),
                    stderr: stderr.to_string(),
                    terminal,
                    checkpoint: None,
                    options: self.runc.clone(),
                    runtime_path: String::new(),
                },
            ))
            .await
            .map_err(Error::containerd(format!("creating task {id}")))?
            .into_inner()
            .pid)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        Ok(self
            .tasks()
            .start(self.req(
                &self.ns,
                api::StartRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
            ))
            .await
            .map_err(Error::containerd(format!("starting {id} {exec_id}")))?
            .into_inner()
            .pid)
    }

    /// Waits for the task (or exec) to exit; returns its exit status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32> {
        Ok(self
            .tasks()
            .wait(self.req(
                &self.ns,
                api::WaitRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                },
            ))
            .await
            .map_err(Error::containerd(format!("waiting for {id} {exec_id}")))?
            .into_inner()
            .exit_status)
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        ignore_not_found(
            self.tasks()
                .kill(self.req(
                    &self.ns,
                    api::KillRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                        signal,
                        all,
                    },
                ))
                .await,
            format!("signal {signal} to {id} {exec_id}"),
        )
        .map(|_| ())
    }

    pub async fn resize(&self, id: &str, exec_id: &str, cols: u32, rows: u32) -> Result<()> {
        self.tasks()
            .resize_pty(self.req(
                &self.ns,
                api::ResizePtyRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    width: cols,
                    height: rows,
                },
            ))
            .await
            .map_err(Error::containerd(format!("resizing the tty of {id}")))?;
        Ok(())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.tasks()
            .close_io(self.req(
                &self.ns,
                api::CloseIoRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdin: true,
                },
            ))
            .await
            .map_err(Error::containerd(format!("closing stdin of {id}")))?;
        Ok(())
    }

    pub async fn delete_task(&self, id: &str) -> Result<()> {
        ignore_not_found(
            self.tasks()
                .delete(self.req(
                    &self.ns,
                    api::DeleteTaskRequest {
                        container_id: id.to_string(),
                    },
                ))
                .await,
            format!("deleting task {id}"),
        )
        .map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &Value,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> Result<()> {
        self.tasks()
            .exec(self.req(
                &self.ns,
                api::ExecProcessRequest {
                    container_id: id.to_string(),
                    stdin: stdin.to_string(),
                    stdout: stdout.to_string(),
                    stderr: stderr.to_string(),
                    terminal,
                    spec: Some(Any {
                        type_url: PROCESS_TYPE_URL.into(),
                        value: serde_json::to_vec(process).expect("process serializes"),
                    }),
                    exec_id: exec_id.to_string(),
                },
            ))
            .await
            .map_err(Error::containerd(format!("exec in {id}")))?;
        Ok(())
    }

    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<()> {
        ignore_not_found(
            self.tasks()
                .delete_process(self.req(
                    &self.ns,
                    api::DeleteProcessRequest {
                        container_id: id.to_string(),
                        exec_id: exec_id.to_string(),
                    },
                ))
                .await,
            format!("deleting exec {exec_id}"),
        )
        .map(|_| ())
    }
}
