//! The seam between the session manager and containerd: the narrow set of runtime calls a
//! session needs. [`crate::ctrd::Ctrd`] implements it over gRPC; unit tests use a fake that
//! records calls, injects failures and plays the shim on the FIFOs.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_client::types::Mount;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::ctrd::{Ctrd, ImageInfo, PodContainer};
use crate::error::Result;

/// Stdio paths of a process (empty string: none).
pub(crate) struct StdioPaths<'a> {
    pub stdin: &'a str,
    pub stdout: &'a str,
    pub stderr: &'a str,
    pub terminal: bool,
}

pub(crate) trait Runtime: Send + Sync + 'static {
    /// The pid of a running task in namespace `ns` (the target's).
    fn task_pid<'a>(&'a self, ns: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<u32>>>;
    /// A handle whose calls hold a GC lease until [`Runtime::release`].
    fn leased<'a>(&'a self, purpose: &'a str) -> BoxFuture<'a, Result<Arc<dyn Runtime>>>;
    fn release(&self) -> BoxFuture<'_, Result<()>>;
    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        source_ns: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo>>;
    fn prepare<'a>(&'a self, key: &'a str, parent: &'a str) -> BoxFuture<'a, Result<Vec<Mount>>>;
    fn remove_snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>>;
    fn active_snapshots(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    fn create_container<'a>(
        &'a self,
        id: &'a str,
        image: &'a str,
        spec: &'a Value,
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<()>>;
    fn list_containers(&self) -> BoxFuture<'_, Result<Vec<String>>>;
    /// The app containers CRI created for a pod in namespace `ns` (the target's), as
    /// (container id, container name, created at).
    fn pod_containers<'a>(
        &'a self,
        ns: &'a str,
        pod_namespace: &'a str,
        pod: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PodContainer>>>;
    fn delete_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    fn create_task<'a>(
        &'a self,
        id: &'a str,
        rootfs: Vec<Mount>,
        stdio: StdioPaths<'a>,
    ) -> BoxFuture<'a, Result<u32>>;
    fn start<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>>;
    fn wait<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>>;
    fn kill<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        signal: u32,
        all: bool,
    ) -> BoxFuture<'a, Result<()>>;
    fn resize<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        cols: u32,
        rows: u32,
    ) -> BoxFuture<'a, Result<()>>;
    fn close_stdin<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<()>>;
    fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;
    fn exec<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        process: &'a Value,
        stdio: StdioPaths<'a>,
    ) -> BoxFuture<'a, Result<()>>;
    fn delete_process<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<()>>;
}

impl Runtime for Ctrd {
    fn task_pid<'a>(&'a self, ns: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<u32>>> {
        Box::pin(Ctrd::task_pid(self, ns, id))
    }
    fn leased<'a>(&'a self, purpose: &'a str) -> BoxFuture<'a, Result<Arc<dyn Runtime>>> {
        Box::pin(async move {
            let leased: Arc<dyn Runtime> = Arc::new(Ctrd::leased(self, purpose).await?);
            Ok(leased)
        })
    }
    fn release(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(Ctrd::release(self))
    }
    fn ensure_image<'a>(
        &'a self,
        image: &'a str,
        source_ns: &'a str,
    ) -> BoxFuture<'a, Result<ImageInfo>> {
        Box::pin(Ctrd::ensure_image(self, image, source_ns))
    }
    fn prepare<'a>(&'a self, key: &'a str, parent: &'a str) -> BoxFuture<'a, Result<Vec<Mount>>> {
        Box::pin(Ctrd::prepare(self, key, parent))
    }
    fn remove_snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::remove_snapshot(self, key))
    }
    fn active_snapshots(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(Ctrd::active_snapshots(self))
    }
    fn create_container<'a>(
        &'a self,
        id: &'a str,
        image: &'a str,
        spec: &'a Value,
        labels: HashMap<String, String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::create_container(self, id, image, spec, labels))
    }
    fn list_containers(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(Ctrd::list_containers(self))
    }
    fn pod_containers<'a>(
        &'a self,
        ns: &'a str,
        pod_namespace: &'a str,
        pod: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PodContainer>>> {
        Box::pin(Ctrd::pod_containers(self, ns, pod_namespace, pod))
    }
    fn delete_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::delete_container(self, id))
    }
    fn create_task<'a>(
        &'a self,
        id: &'a str,
        rootfs: Vec<Mount>,
        stdio: StdioPaths<'a>,
    ) -> BoxFuture<'a, Result<u32>> {
        Box::pin(Ctrd::create_task(
            self,
            id,
            rootfs,
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
            stdio.terminal,
        ))
    }
    fn start<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(Ctrd::start(self, id, exec_id))
    }
    fn wait<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>> {
        Box::pin(Ctrd::wait(self, id, exec_id))
    }
    fn kill<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        signal: u32,
        all: bool,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::kill(self, id, exec_id, signal, all))
    }
    fn resize<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        cols: u32,
        rows: u32,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::resize(self, id, exec_id, cols, rows))
    }
    fn close_stdin<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::close_stdin(self, id, exec_id))
    }
    fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::delete_task(self, id))
    }
    fn exec<'a>(
        &'a self,
        id: &'a str,
        exec_id: &'a str,
        process: &'a Value,
        stdio: StdioPaths<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::exec(
            self,
            id,
            exec_id,
            process,
            stdio.stdin,
            stdio.stdout,
            stdio.stderr,
            stdio.terminal,
        ))
    }
    fn delete_process<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(Ctrd::delete_process(self, id, exec_id))
    }
}

/// A runtime double: records every call, fails the calls it is told to, and plays the shim
/// on the FIFOs (prints a prompt, echoes stdin, exits on `exit` or a signal).
#[cfg(test)]
pub(crate) mod fake {
    use std::collections::{BTreeSet, HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use futures::future::BoxFuture;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::unix::pipe;
    use tokio::sync::watch;

    use super::*;
    use crate::error::Error;

    #[derive(Default)]
    pub struct State {
        pub calls: Vec<String>,
        pub fail: HashSet<&'static str>,
        pub containers: BTreeSet<String>,
        pub snapshots: BTreeSet<String>,
        pub tasks: HashMap<String, watch::Sender<Option<u32>>>,
        pub leases: i32,
        /// `namespace/pod` → its app containers (for `pod_containers`).
        pub pods: HashMap<String, Vec<PodContainer>>,
        /// Running target tasks (for `task_pid`).
        pub target_pids: HashMap<String, u32>,
        /// Every process exits right after its greeting (a command that ends at once).
        pub exit_at_start: bool,
    }

    #[derive(Clone, Default)]
    pub struct Fake {
        pub state: Arc<Mutex<State>>,
    }

    fn key(id: &str, exec_id: &str) -> String {
        if exec_id.is_empty() {
            id.to_string()
        } else {
            format!("{id}/{exec_id}")
        }
    }

    impl Fake {
        pub fn failing(call: &'static str) -> Fake {
            let f = Fake::default();
            f.state.lock().unwrap().fail.insert(call);
            f
        }

        pub fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }

        fn call(&self, name: &'static str, detail: &str) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            s.calls
                .push(format!("{name} {detail}").trim_end().to_string());
            if s.fail.contains(name) {
                return Err(Error::Containerd {
                    op: name.to_string(),
                    source: tonic::Status::internal("injected failure"),
                });
            }
            Ok(())
        }

        fn exit(state: &Mutex<State>, key: &str, status: u32) {
            if let Some(tx) = state.lock().unwrap().tasks.get(key) {
                tx.send_if_modified(|s| {
                    if s.is_none() {
                        *s = Some(status);
                        true
                    } else {
                        false
                    }
                });
            }
        }

        /// The shim side of a process: opens the FIFOs like containerd-shim does.
        fn shim(&self, key: String, stdin: String, stdout: String, greeting: Vec<u8>) {
            let state = self.state.clone();
            let mut exited = state.lock().unwrap().tasks[&key].subscribe();
            tokio::spawn(async move {
                let mut out = pipe::OpenOptions::new()
                    .open_sender(&stdout)
                    .expect("the agent opened its read end first");
                let _ = out.write_all(&greeting).await;
                let mut input = if stdin.is_empty() {
                    None
                } else {
                    Some(pipe::OpenOptions::new().open_receiver(&stdin).unwrap())
                };
                let exit_at_once = state.lock().unwrap().exit_at_start;
                if input.is_none() || exit_at_once {
                    Fake::exit(&state, &key, 0);
                }
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        n = async { input.as_mut().unwrap().read(&mut buf).await }, if input.is_some() => {
                            let n = n.unwrap_or(0);
                            if n == 0 {
                                input = None;
                                continue;
                            }
                            let _ = out.write_all(&buf[..n]).await;
                            if buf[..n].windows(4).any(|w| w == b"exit") {
                                Fake::exit(&state, &key, 0);
                            }
                        }
                        _ = async { let _ = exited.wait_for(|s| s.is_some()).await; } => break,
                    }
                }
            });
        }
    }

    impl Runtime for Fake {
        fn task_pid<'a>(&'a self, _: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<u32>>> {
            Box::pin(async move {
                self.call("task_pid", id)?;
                Ok(self.state.lock().unwrap().target_pids.get(id).copied())
            })
        }
        fn leased<'a>(&'a self, purpose: &'a str) -> BoxFuture<'a, Result<Arc<dyn Runtime>>> {
            Box::pin(async move {
                self.call("lease", purpose)?;
                self.state.lock().unwrap().leases += 1;
                let leased: Arc<dyn Runtime> = Arc::new(self.clone());
                Ok(leased)
            })
        }
        fn release(&self) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                self.call("release", "")?;
                self.state.lock().unwrap().leases -= 1;
                Ok(())
            })
        }
        fn ensure_image<'a>(
            &'a self,
            image: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<ImageInfo>> {
            Box::pin(async move {
                self.call("ensure_image", image)?;
                Ok(ImageInfo {
                    name: image.to_string(),
                    chain_id: "sha256:chain".into(),
                    env: vec!["PATH=/bin".into()],
                    cmd: vec!["/bin/sh".into()],
                    cwd: "/".into(),
                })
            })
        }
        fn prepare<'a>(&'a self, key: &'a str, _: &'a str) -> BoxFuture<'a, Result<Vec<Mount>>> {
            Box::pin(async move {
                self.call("prepare", key)?;
                self.state.lock().unwrap().snapshots.insert(key.to_string());
                Ok(Vec::new())
            })
        }
        fn remove_snapshot<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("remove_snapshot", key)?;
                self.state.lock().unwrap().snapshots.remove(key);
                Ok(())
            })
        }
        fn active_snapshots(&self) -> BoxFuture<'_, Result<Vec<String>>> {
            Box::pin(async move {
                self.call("active_snapshots", "")?;
                Ok(self
                    .state
                    .lock()
                    .unwrap()
                    .snapshots
                    .iter()
                    .cloned()
                    .collect())
            })
        }
        fn create_container<'a>(
            &'a self,
            id: &'a str,
            _: &'a str,
            _: &'a Value,
            _: HashMap<String, String>,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("create_container", id)?;
                self.state.lock().unwrap().containers.insert(id.to_string());
                Ok(())
            })
        }
        fn list_containers(&self) -> BoxFuture<'_, Result<Vec<String>>> {
            Box::pin(async move {
                self.call("list_containers", "")?;
                Ok(self
                    .state
                    .lock()
                    .unwrap()
                    .containers
                    .iter()
                    .cloned()
                    .collect())
            })
        }
        fn pod_containers<'a>(
            &'a self,
            _ns: &'a str,
            pod_namespace: &'a str,
            pod: &'a str,
        ) -> BoxFuture<'a, Result<Vec<PodContainer>>> {
            Box::pin(async move {
                self.call("pod_containers", &format!("{pod_namespace}/{pod}"))?;
                let s = self.state.lock().unwrap();
                Ok(s.pods
                    .get(&format!("{pod_namespace}/{pod}"))
                    .cloned()
                    .unwrap_or_default())
            })
        }
        fn delete_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("delete_container", id)?;
                let mut s = self.state.lock().unwrap();
                if s.tasks.contains_key(id) {
                    return Err(Error::Containerd {
                        op: "delete_container".into(),
                        source: tonic::Status::failed_precondition("task still exists"),
                    });
                }
                s.containers.remove(id);
                Ok(())
            })
        }
        fn create_task<'a>(
            &'a self,
            id: &'a str,
            _: Vec<Mount>,
            stdio: StdioPaths<'a>,
        ) -> BoxFuture<'a, Result<u32>> {
            Box::pin(async move {
                self.call("create_task", id)?;
                let (tx, _) = watch::channel(None);
                self.state.lock().unwrap().tasks.insert(id.to_string(), tx);
                self.shim(
                    id.to_string(),
                    stdio.stdin.into(),
                    stdio.stdout.into(),
                    b"$ ".to_vec(),
                );
                Ok(4242)
            })
        }
        fn start<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>> {
            Box::pin(async move {
                self.call("start", &key(id, exec_id))?;
                Ok(4243)
            })
        }
        fn wait<'a>(&'a self, id: &'a str, exec_id: &'a str) -> BoxFuture<'a, Result<u32>> {
            Box::pin(async move {
                let rx = self
                    .state
                    .lock()
                    .unwrap()
                    .tasks
                    .get(&key(id, exec_id))
                    .map(|t| t.subscribe());
                let Some(mut rx) = rx else {
                    return Err(Error::Containerd {
                        op: "wait".into(),
                        source: tonic::Status::not_found("no task"),
                    });
                };
                let status = rx.wait_for(|s| s.is_some()).await.map(|s| s.unwrap_or(0));
                Ok(status.unwrap_or(255))
            })
        }
        fn kill<'a>(
            &'a self,
            id: &'a str,
            exec_id: &'a str,
            signal: u32,
            _: bool,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("kill", &format!("{} {signal}", key(id, exec_id)))?;
                Fake::exit(&self.state, &key(id, exec_id), 128 + signal);
                Ok(())
            })
        }
        fn resize<'a>(
            &'a self,
            id: &'a str,
            _: &'a str,
            cols: u32,
            rows: u32,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move { self.call("resize", &format!("{id} {cols}x{rows}")) })
        }
        fn close_stdin<'a>(&'a self, id: &'a str, _: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move { self.call("close_stdin", id) })
        }
        fn delete_task<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("delete_task", id)?;
                let mut s = self.state.lock().unwrap();
                if s.tasks.get(id).is_some_and(|t| t.borrow().is_none()) {
                    return Err(Error::Containerd {
                        op: "delete_task".into(),
                        source: tonic::Status::failed_precondition("task is running"),
                    });
                }
                s.tasks.remove(id);
                Ok(())
            })
        }
        fn exec<'a>(
            &'a self,
            id: &'a str,
            exec_id: &'a str,
            process: &'a Value,
            stdio: StdioPaths<'a>,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                let argv: Vec<String> = serde_json::from_value(process["args"].clone()).unwrap();
                self.call("exec", &argv.join(" "))?;
                let k = key(id, exec_id);
                let (tx, _) = watch::channel(None);
                self.state.lock().unwrap().tasks.insert(k.clone(), tx);
                self.shim(
                    k,
                    String::new(),
                    stdio.stdout.into(),
                    format!("ran: {}", argv.join(" ")).into_bytes(),
                );
                Ok(())
            })
        }
        fn delete_process<'a>(
            &'a self,
            id: &'a str,
            exec_id: &'a str,
        ) -> BoxFuture<'a, Result<()>> {
            Box::pin(async move {
                self.call("delete_process", &key(id, exec_id))?;
                self.state.lock().unwrap().tasks.remove(&key(id, exec_id));
                Ok(())
            })
        }
    }
}
