//! The containerd calls the session manager makes. Each request carries its namespace.
//!
//! - [`image`]: importing a tools image into the debug namespace, unpacking it, and the
//!   snapshots session roots are made from;
//! - [`task`]: containers, tasks and execs.
//!
//! Removals are idempotent: containerd's NotFound means the thing is gone already
//! ([`ignore_not_found`]).

mod image;
mod task;

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use prost_types::Any;
use tonic::Request;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// runc shim options (`containerd.runc.v1.Options`), only the fields berth sets.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "6")]
    binary_name: String,
    #[prost(string, tag = "7")]
    root: String,
}

/// An app container of a pod, as CRI labelled it in containerd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodContainer {
    pub id: String,
    /// `io.kubernetes.container.name`.
    pub name: String,
    /// Creation time (newest wins when a restarted container's old one is still listed).
    pub created_unix_ns: i64,
}

/// What the session manager needs from an unpacked image.
#[derive(Clone, Debug)]
pub(crate) struct ImageInfo {
    pub name: String,
    /// The chain id of the top layer: the parent of each session's snapshot.
    pub chain_id: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub cwd: String,
}

#[derive(Clone)]
pub(crate) struct Ctrd {
    channel: Channel,
    /// A containerd lease protecting what this handle creates from garbage collection
    /// until the objects are referenced (image record, container record).
    lease: Option<String>,
    pub ns: String,
    pub snapshotter: String,
    runtime: String,
    runc: Option<Any>,
}

fn req_leased<T>(ns: &str, lease: Option<&str>, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        ns.parse().expect("namespace names are ASCII"),
    );
    if let Some(lease) = lease {
        r.metadata_mut().insert(
            "containerd-lease",
            lease.parse().expect("lease ids are ASCII"),
        );
    }
    r
}

/// A containerd answer where NotFound means "already gone" (or "not there"): `Ok(None)`
/// then, the response otherwise; any other failure is `op` failing.
fn ignore_not_found<T>(
    answer: std::result::Result<tonic::Response<T>, tonic::Status>,
    op: impl Into<String>,
) -> Result<Option<T>> {
    match answer {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
        Err(e) => Err(Error::containerd(op)(e)),
    }
}

impl Ctrd {
    pub async fn connect(
        socket: &Path,
        ns: &str,
        snapshotter: &str,
        runtime: &str,
        runc_binary: Option<&Path>,
        runc_root: Option<&Path>,
    ) -> Result<Ctrd> {
        let channel =
            containerd_client::connect(socket)
                .await
                .map_err(|source| Error::Connect {
                    path: socket.to_path_buf(),
                    source,
                })?;
        let runc = (runc_binary.is_some() || runc_root.is_some()).then(|| {
            let opts = RuncOptions {
                binary_name: runc_binary
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                root: runc_root
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            };
            Any {
                type_url: "containerd.runc.v1.Options".into(),
                value: prost::Message::encode_to_vec(&opts),
            }
        });
        Ok(Ctrd {
            channel,
            lease: None,
            ns: ns.to_string(),
            snapshotter: snapshotter.to_string(),
            runtime: runtime.to_string(),
            runc,
        })
    }

    fn req<T>(&self, ns: &str, msg: T) -> Request<T> {
        req_leased(ns, self.lease.as_deref(), msg)
    }

    /// Creates a lease (expiring by itself after an hour, should the agent die) and returns
    /// a handle whose requests carry it.
    pub async fn leased(&self, purpose: &str) -> Result<Ctrd> {
        let id = format!("berth-debug-{purpose}-{}", uuid::Uuid::new_v4().simple());
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        );
        let mut labels = HashMap::new();
        labels.insert("containerd.io/gc.expire".to_string(), expire.to_string());
        api::leases_client::LeasesClient::new(self.channel.clone())
            .create(req_leased(
                &self.ns,
                None,
                api::CreateRequest {
                    id: id.clone(),
                    labels,
                },
            ))
            .await
            .map_err(Error::containerd("creating a lease"))?;
        Ok(Ctrd {
            lease: Some(id),
            ..self.clone()
        })
    }

    /// Deletes this handle's lease (what it protected must be referenced by now).
    pub async fn release(&self) -> Result<()> {
        let Some(id) = &self.lease else { return Ok(()) };
        let deleted = api::leases_client::LeasesClient::new(self.channel.clone())
            .delete(req_leased(
                &self.ns,
                None,
                api::DeleteRequest {
                    id: id.clone(),
                    sync: false,
                },
            ))
            .await;
        ignore_not_found(deleted, format!("deleting lease {id}")).map(|_| ())
    }

    fn tasks(&self) -> api::tasks_client::TasksClient<Channel> {
        api::tasks_client::TasksClient::new(self.channel.clone())
    }
    fn containers(&self) -> api::containers_client::ContainersClient<Channel> {
        api::containers_client::ContainersClient::new(self.channel.clone())
    }
    fn snapshots(&self) -> snap::snapshots_client::SnapshotsClient<Channel> {
        snap::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }
    fn content(&self) -> api::content_client::ContentClient<Channel> {
        api::content_client::ContentClient::new(self.channel.clone())
    }
    fn images(&self) -> api::images_client::ImagesClient<Channel> {
        api::images_client::ImagesClient::new(self.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_options_encode_with_containerds_field_numbers() {
        let bytes = prost::Message::encode_to_vec(&RuncOptions {
            binary_name: "/usr/sbin/runc".into(),
            root: "/r".into(),
        });
        // field 6, wire type 2 → 0x32; field 7 → 0x3a.
        assert_eq!(bytes[0], 0x32);
        assert_eq!(bytes[1] as usize, "/usr/sbin/runc".len());
        assert_eq!(bytes[2 + "/usr/sbin/runc".len()], 0x3a);
    }
}
