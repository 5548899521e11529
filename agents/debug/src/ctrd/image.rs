//! Tools images: the record copied from the namespace the image was imported into (its blobs
//! made visible in ours), the layers unpacked into our snapshotter, and the snapshots a
//! session's root is prepared from.

use std::collections::HashMap;

use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::types::{Descriptor, Mount};
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tonic::transport::Channel;

use super::{Ctrd, ImageInfo, ignore_not_found};
use crate::error::{Error, Result};

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
];
const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
];

impl Ctrd {
    /// Makes `image` usable in our namespace: copies the image record (and makes its blobs
    /// visible) from `source_ns` if needed, and unpacks its layers into our snapshotter.
    pub async fn ensure_image(&self, image: &str, source_ns: &str) -> Result<ImageInfo> {
        let ours = self.image_target(&self.ns, image).await?;
        let theirs = self.image_target(source_ns, image).await?;
        let target = match (ours, theirs) {
            // The source namespace moved the name to a new image: follow it.
            (Some(ours), Some(theirs)) if ours.digest != theirs.digest => {
                self.import(image, source_ns, &theirs).await?;
                theirs
            }
            (Some(ours), _) => ours,
            (None, Some(theirs)) => {
                self.import(image, source_ns, &theirs).await?;
                theirs
            }
            (None, None) => {
                return Err(Error::ImageNotFound {
                    image: image.to_string(),
                    namespace: self.ns.clone(),
                    source_namespace: source_ns.to_string(),
                });
            }
        };
        let bad = |reason: String| Error::BadImage {
            image: image.to_string(),
            reason,
        };
        let (manifest_desc, manifest) = self.resolve_manifest(&target, image).await?;
        let config_desc = descriptor(&manifest["config"]).ok_or_else(|| bad("no config".into()))?;
        let config: Value = serde_json::from_slice(&self.read_blob(&config_desc.digest).await?)
            .map_err(|e| bad(format!("config is not JSON: {e}")))?;
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let layers: Vec<Descriptor> = manifest["layers"]
            .as_array()
            .map(|a| a.iter().filter_map(descriptor).collect())
            .unwrap_or_default();
        if diff_ids.is_empty() || diff_ids.len() != layers.len() {
            return Err(bad(format!(
                "{} layers but {} diff ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chain = chain_ids(&diff_ids);
        self.unpack(&layers, &chain).await?;
        // GC references as containerd's own unpacker leaves them: manifest → config and
        // layers, config → the unpacked snapshot.
        let mut labels = HashMap::new();
        labels.insert(
            "containerd.io/gc.ref.content.config".to_string(),
            config_desc.digest.clone(),
        );
        for (i, l) in layers.iter().enumerate() {
            labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        self.label_blob(&manifest_desc.digest, labels).await?;
        let mut labels = HashMap::new();
        labels.insert(
            format!("containerd.io/gc.ref.snapshot.{}", self.snapshotter),
            chain.last().cloned().unwrap_or_default(),
        );
        self.label_blob(&config_desc.digest, labels).await?;

        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let c = &config["config"];
        let mut cmd = strings(&c["Entrypoint"]);
        cmd.extend(strings(&c["Cmd"]));
        Ok(ImageInfo {
            name: image.to_string(),
            chain_id: chain.last().cloned().unwrap_or_default(),
            env: strings(&c["Env"]),
            cmd,
            cwd: c["WorkingDir"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("/")
                .to_string(),
        })
    }

    async fn image_target(&self, ns: &str, image: &str) -> Result<Option<Descriptor>> {
        let got = self
            .images()
            .get(self.req(
                ns,
                api::GetImageRequest {
                    name: image.to_string(),
                },
            ))
            .await;
        Ok(
            ignore_not_found(got, format!("getting image {image} in {ns}"))?
                .and_then(|r| r.image)
                .and_then(|i| i.target),
        )
    }

    /// Copies the image record from `source_ns`, making each blob visible in our namespace
    /// (containerd shares blob data between namespaces; only the record is written).
    async fn import(&self, image: &str, source_ns: &str, target: &Descriptor) -> Result<()> {
        let mut queue = vec![target.clone()];
        while let Some(desc) = queue.pop() {
            let data = self.copy_blob(source_ns, &desc).await?;
            if INDEX_TYPES.contains(&desc.media_type.as_str()) {
                let v: Value = serde_json::from_slice(&data).unwrap_or_default();
                queue.extend(
                    v["manifests"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|m| platform_matches(m))
                        .filter_map(descriptor),
                );
            } else if MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
                let v: Value = serde_json::from_slice(&data).unwrap_or_default();
                queue.extend(descriptor(&v["config"]));
                queue.extend(
                    v["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(descriptor),
                );
            }
        }
        let created = self
            .images()
            .create(self.req(
                &self.ns,
                api::CreateImageRequest {
                    image: Some(api::Image {
                        name: image.to_string(),
                        labels: HashMap::new(),
                        target: Some(target.clone()),
                        created_at: None,
                        updated_at: None,
                    }),
                    source_date_epoch: None,
                },
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == tonic::Code::AlreadyExists => {
                self.images()
                    .update(self.req(
                        &self.ns,
                        api::UpdateImageRequest {
                            image: Some(api::Image {
                                name: image.to_string(),
                                labels: HashMap::new(),
                                target: Some(target.clone()),
                                created_at: None,
                                updated_at: None,
                            }),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec!["target".into()],
                            }),
                            source_date_epoch: None,
                        },
                    ))
                    .await
                    .map_err(Error::containerd(format!("updating image {image}")))?;
                Ok(())
            }
            Err(e) => Err(Error::containerd(format!("creating image {image}"))(e)),
        }
    }

    /// Makes one blob visible in our namespace; returns its bytes for small (JSON) blobs.
    async fn copy_blob(&self, source_ns: &str, desc: &Descriptor) -> Result<Vec<u8>> {
        let is_json = INDEX_TYPES.contains(&desc.media_type.as_str())
            || MANIFEST_TYPES.contains(&desc.media_type.as_str());
        let exists = self
            .content()
            .info(self.req(
                &self.ns,
                api::InfoRequest {
                    digest: desc.digest.clone(),
                },
            ))
            .await;
        if exists.is_err() {
            let data = self.read_blob_in(source_ns, &desc.digest).await?;
            self.write_blob(desc, data).await?;
        }
        if is_json {
            self.read_blob(&desc.digest).await
        } else {
            Ok(Vec::new())
        }
    }

    async fn write_blob(&self, desc: &Descriptor, data: Vec<u8>) -> Result<()> {
        let reference = format!("berth-debug-import-{}", desc.digest);
        let base = api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: reference.clone(),
            total: desc.size,
            expected: desc.digest.clone(),
            offset: 0,
            data: Vec::new(),
            labels: HashMap::new(),
        };
        let mut msgs = vec![base.clone()];
        for (i, chunk) in data.chunks(1 << 20).enumerate() {
            msgs.push(api::WriteContentRequest {
                action: api::WriteAction::Write as i32,
                offset: (i << 20) as i64,
                data: chunk.to_vec(),
                ..base.clone()
            });
        }
        msgs.push(api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            offset: desc.size,
            ..base
        });
        let stream = futures::stream::iter(msgs);
        match self.content().write(self.req(&self.ns, stream)).await {
            Ok(resp) => {
                let mut resp = resp.into_inner();
                while let Some(msg) = resp.next().await {
                    match msg {
                        Ok(_) => {}
                        Err(e) if e.code() == tonic::Code::AlreadyExists => return Ok(()),
                        Err(e) => {
                            return Err(Error::containerd(format!(
                                "writing blob {} into namespace {}",
                                desc.digest, self.ns
                            ))(e));
                        }
                    }
                }
                Ok(())
            }
            Err(e) if e.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(e) => Err(Error::containerd(format!(
                "writing blob {} into namespace {}",
                desc.digest, self.ns
            ))(e)),
        }
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        self.read_blob_in(&self.ns, digest).await
    }

    async fn read_blob_in(&self, ns: &str, digest: &str) -> Result<Vec<u8>> {
        let op = || format!("reading blob {digest} in {ns}");
        let mut stream = self
            .content()
            .read(self.req(
                ns,
                api::ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
            ))
            .await
            .map_err(Error::containerd(op()))?
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend(chunk.map_err(Error::containerd(op()))?.data);
        }
        Ok(data)
    }

    async fn label_blob(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.req(
                &self.ns,
                api::UpdateRequest {
                    info: Some(api::Info {
                        digest: digest.to_string(),
                        size: 0,
                        created_at: None,
                        updated_at: None,
                        labels,
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
            ))
            .await
            .map_err(Error::containerd(format!("labelling blob {digest}")))?;
        Ok(())
    }

    async fn resolve_manifest(
        &self,
        target: &Descriptor,
        image: &str,
    ) -> Result<(Descriptor, Value)> {
        let mut desc = target.clone();
        for _ in 0..4 {
            let v: Value =
                serde_json::from_slice(&self.read_blob(&desc.digest).await?).map_err(|e| {
                    Error::BadImage {
                        image: image.to_string(),
                        reason: format!("{} is not JSON: {e}", desc.digest),
                    }
                })?;
            if INDEX_TYPES.contains(&desc.media_type.as_str()) {
                desc = v["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| platform_matches(m))
                    .and_then(descriptor)
                    .ok_or_else(|| Error::BadImage {
                        image: image.to_string(),
                        reason: format!("no manifest for linux/{}", host_arch()),
                    })?;
                continue;
            }
            return Ok((desc, v));
        }
        Err(Error::BadImage {
            image: image.to_string(),
            reason: "index nesting too deep".into(),
        })
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        let stat = self
            .snapshots()
            .stat(self.req(
                &self.ns,
                snap::StatSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                },
            ))
            .await;
        Ok(ignore_not_found(stat, format!("stat snapshot {key}"))?.is_some())
    }

    /// Applies each layer missing from the snapshotter on top of its parent chain.
    async fn unpack(&self, layers: &[Descriptor], chain: &[String]) -> Result<()> {
        if self
            .snapshot_exists(chain.last().expect("non-empty"))
            .await?
        {
            return Ok(());
        }
        for (i, layer) in layers.iter().enumerate() {
            if self.snapshot_exists(&chain[i]).await? {
                continue;
            }
            let key = format!("extract-{}-{}", uuid::Uuid::new_v4().simple(), chain[i]);
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let mounts = self.prepare(&key, &parent).await?;
            let applied = self
                .diff()
                .apply(self.req(
                    &self.ns,
                    api::ApplyRequest {
                        diff: Some(layer.clone()),
                        mounts,
                        payloads: HashMap::new(),
                        sync_fs: false,
                    },
                ))
                .await;
            let committed = match applied {
                Ok(_) => self
                    .snapshots()
                    .commit(self.req(
                        &self.ns,
                        snap::CommitSnapshotRequest {
                            snapshotter: self.snapshotter.clone(),
                            name: chain[i].clone(),
                            key: key.clone(),
                            labels: HashMap::new(),
                        },
                    ))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = committed {
                let _ = self.remove_snapshot(&key).await;
                if e.code() == tonic::Code::AlreadyExists {
                    continue; // unpacked concurrently by another session
                }
                return Err(Error::containerd(format!(
                    "unpacking layer {}",
                    layer.digest
                ))(e));
            }
        }
        Ok(())
    }

    fn diff(&self) -> api::diff_client::DiffClient<Channel> {
        api::diff_client::DiffClient::new(self.channel.clone())
    }

    pub async fn prepare(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        Ok(self
            .snapshots()
            .prepare(self.req(
                &self.ns,
                snap::PrepareSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
            ))
            .await
            .map_err(Error::containerd(format!("preparing snapshot {key}")))?
            .into_inner()
            .mounts)
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<()> {
        let removed = self
            .snapshots()
            .remove(self.req(
                &self.ns,
                snap::RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: key.to_string(),
                },
            ))
            .await;
        ignore_not_found(removed, format!("removing snapshot {key}")).map(|_| ())
    }

    /// Active (writable) snapshots: session roots and interrupted unpacks.
    pub async fn active_snapshots(&self) -> Result<Vec<String>> {
        let mut stream = self
            .snapshots()
            .list(self.req(
                &self.ns,
                snap::ListSnapshotsRequest {
                    snapshotter: self.snapshotter.clone(),
                    filters: Vec::new(),
                },
            ))
            .await
            .map_err(Error::containerd("listing snapshots"))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream.next().await {
            let page = page.map_err(Error::containerd("listing snapshots"))?;
            keys.extend(
                page.info
                    .into_iter()
                    .filter(|i| i.kind == snap::Kind::Active as i32)
                    .map(|i| i.name),
            );
        }
        Ok(keys)
    }
}

fn descriptor(v: &Value) -> Option<Descriptor> {
    Some(Descriptor {
        media_type: v["mediaType"].as_str()?.to_string(),
        digest: v["digest"].as_str()?.to_string(),
        size: v["size"].as_i64()?,
        annotations: HashMap::new(),
    })
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn platform_matches(m: &Value) -> bool {
    let p = &m["platform"];
    p.is_null() || (p["os"] == "linux" && p["architecture"] == host_arch())
}

/// OCI chain ids: `chain[0] = diff[0]`, `chain[i] = sha256(chain[i-1] + " " + diff[i])`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match chain.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb"))
        );
        assert_eq!(chain[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn platform_filter_takes_this_arch_or_unlabelled_manifests() {
        assert!(platform_matches(&serde_json::json!({})));
        assert!(platform_matches(
            &serde_json::json!({"platform": {"os": "linux", "architecture": host_arch()}})
        ));
        assert!(!platform_matches(
            &serde_json::json!({"platform": {"os": "linux", "architecture": "s390x"}})
        ));
    }
}
