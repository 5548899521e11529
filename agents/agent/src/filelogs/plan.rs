//! From a container's request to what must exist on the host and which mounts to add.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dest::Destination;
use super::layout::{Layout, LayoutError, Names, RelPath};

/// Suffix of the metadata file written beside each container dir (`<container>.berth.json`).
/// Container names are DNS labels (no dots), so it never collides with a container dir.
pub const META_SUFFIX: &str = ".berth.json";

/// One bind mount: `source` is relative to the log root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMount {
    pub destination: Destination,
    pub source: RelPath,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `<log_root>/<layout>`: the container's dir.
    pub container_dir: RelPath,
    /// Beside the container dir, outside every mount: the container cannot rewrite it.
    pub metadata: RelPath,
    pub mounts: Vec<PlannedMount>,
}

/// What a collector needs to tag the lines of a container's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub container_id: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// Destination in the container → dir relative to the container dir (`.` if the
    /// container dir itself is mounted).
    pub mounts: BTreeMap<String, String>,
    /// RFC 3339.
    pub updated_at: String,
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Dir names for several destinations of one container: the flattened destination, with a
/// short hash of the full destination where two would collide or the name is too long.
pub fn subdir_names(dirs: &[Destination]) -> Vec<String> {
    let flat: Vec<String> = dirs.iter().map(Destination::flat_name).collect();
    flat.iter()
        .zip(dirs)
        .map(|(f, d)| {
            let collides = flat.iter().filter(|g| *g == f).count() > 1;
            if collides || f.len() > 200 {
                let head: String = f.chars().take(180).collect();
                format!("{head}-{}", short_hash(d.as_str()))
            } else {
                f.clone()
            }
        })
        .collect()
}

pub fn plan(layout: &Layout, names: &Names<'_>, dirs: &[Destination]) -> Result<Plan, LayoutError> {
    let container_dir = layout.render(names)?;
    let parent = container_dir
        .parent()
        .unwrap_or_else(|| RelPath::new(Vec::new()).expect("empty path"));
    let metadata = parent.join(&format!("{}{META_SUFFIX}", names.container))?;
    let mounts = if dirs.len() == 1 {
        vec![PlannedMount {
            destination: dirs[0].clone(),
            source: container_dir.clone(),
        }]
    } else {
        subdir_names(dirs)
            .into_iter()
            .zip(dirs)
            .map(|(name, d)| {
                Ok(PlannedMount {
                    destination: d.clone(),
                    source: container_dir.join(&name)?,
                })
            })
            .collect::<Result<_, LayoutError>>()?
    };
    Ok(Plan {
        container_dir,
        metadata,
        mounts,
    })
}

#[cfg(test)]
mod tests {
    use super::super::layout::DEFAULT_LAYOUT;
    use super::*;

    fn d(s: &str) -> Destination {
        Destination::parse(s, &[]).unwrap()
    }

    fn names() -> Names<'static> {
        Names {
            namespace: "shop",
            pod: "web",
            pod_uid: "u-1",
            container: "app",
            node: "n1",
        }
    }

    #[test]
    fn single_dir_mounts_the_container_dir() {
        let l = Layout::parse(DEFAULT_LAYOUT).unwrap();
        let p = plan(&l, &names(), &[d("/app/logs")]).unwrap();
        assert_eq!(p.container_dir.to_string(), "shop/web/app");
        assert_eq!(p.metadata.to_string(), "shop/web/app.berth.json");
        assert_eq!(p.mounts.len(), 1);
        assert_eq!(p.mounts[0].source.to_string(), "shop/web/app");
        assert_eq!(p.mounts[0].destination.as_str(), "/app/logs");
    }

    #[test]
    fn several_dirs_get_a_subdir_each_without_collisions() {
        let l = Layout::parse(DEFAULT_LAYOUT).unwrap();
        let p = plan(
            &l,
            &names(),
            &[d("/app/logs"), d("/var/log/nginx"), d("/app_logs")],
        )
        .unwrap();
        let srcs: Vec<String> = p.mounts.iter().map(|m| m.source.to_string()).collect();
        assert_eq!(srcs[1], "shop/web/app/var_log_nginx");
        // `/app/logs` and `/app_logs` flatten alike: both get a hash suffix, and differ.
        assert!(
            srcs[0].starts_with("shop/web/app/app_logs-")
                && srcs[2].starts_with("shop/web/app/app_logs-")
        );
        assert_ne!(srcs[0], srcs[2]);
        // Stable across restarts: the same request renders the same names.
        let again = plan(
            &l,
            &names(),
            &[d("/app/logs"), d("/var/log/nginx"), d("/app_logs")],
        )
        .unwrap();
        assert_eq!(p, again);
    }

    #[test]
    fn two_containers_of_a_pod_never_share_a_dir() {
        let l = Layout::parse(DEFAULT_LAYOUT).unwrap();
        let mut other = names();
        other.container = "sidecar";
        let a = plan(&l, &names(), &[d("/logs")]).unwrap();
        let b = plan(&l, &other, &[d("/logs")]).unwrap();
        assert_ne!(a.container_dir, b.container_dir);
        assert_ne!(a.metadata, b.metadata);
        assert!(!b.container_dir.starts_with(&a.container_dir));
    }

    #[test]
    fn very_long_destination_gets_a_bounded_name() {
        let long = format!("/{}", ["x".repeat(200), "y".repeat(200)].join("/"));
        let names = subdir_names(&[d(&long), d("/b")]);
        assert!(names[0].len() <= 255, "{}", names[0].len());
        assert_eq!(names[1], "b");
    }
}
