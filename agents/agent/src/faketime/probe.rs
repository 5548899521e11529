//! Finding out whether the shim can work for a container: its entry point judged by
//! [`berth_faketime::elf::inspect_in_root`] in the container's root filesystem.
//!
//! At CreateContainer the root filesystem is not mounted yet (the runtime mounts it when the
//! task is created), but containerd has already prepared the container's snapshot under the
//! container's id. [`CtrProbe`] asks containerd for the snapshot's mounts
//! (`ctr snapshots mounts`), mounts them read-only in a private directory of the agent,
//! inspects, and unmounts before answering. Without a containerd address ([`NoProbe`]) the entry
//! point is judged once it runs, from `/proc/<pid>/exe` ([`inspect_process`]).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_faketime::elf::{ElfError, inspect_for_shim, inspect_in_root};
use berth_faketime::{Coverage, Variant};
use berth_nri::Container;

/// How long `ctr snapshots mounts` may take before the probe gives up.
pub const CTR_TIMEOUT: Duration = Duration::from_millis(800);

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "no faketime.containerd_address configured: the entry point is judged when the container starts"
    )]
    Unavailable,
    #[error("the container has no args: nothing to inspect")]
    NoArgs,
    #[error("cannot run {ctr}: set faketime.ctr to containerd's ctr binary")]
    Spawn {
        ctr: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ctr snapshots mounts did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ctr snapshots mounts failed: {0}")]
    Ctr(String),
    #[error("cannot understand the snapshot mounts {0:?}")]
    Parse(String),
    #[error("cannot mount the container's snapshot read-only at {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot judge the entry point")]
    Elf(#[from] ElfError),
}

/// Judges a container's entry point before it is created: its coverage, and which build of
/// the shim fits the image (`Some` exactly when covered).
pub trait RootfsProbe: Send + Sync {
    fn inspect(&self, ctr: &Container) -> Result<(Coverage, Option<Variant>), ProbeError>;
}

/// No create-time inspection.
pub struct NoProbe;

impl RootfsProbe for NoProbe {
    fn inspect(&self, _ctr: &Container) -> Result<(Coverage, Option<Variant>), ProbeError> {
        Err(ProbeError::Unavailable)
    }
}

/// The container's root as the snapshotter describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRoot {
    /// A directory that is the root as it is (a bind mount of a single layer).
    Dir(PathBuf),
    /// Overlay layers, topmost first.
    Overlay(Vec<PathBuf>),
}

/// Parses `ctr snapshots mounts <target> <key>` output: one line
/// `mount -t <type> <source> <target> -o <options>`.
pub fn parse_ctr_mounts(out: &str) -> Result<SnapshotRoot, ProbeError> {
    let bad = || ProbeError::Parse(out.trim().chars().take(300).collect());
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let [line] = lines.as_slice() else {
        return Err(bad());
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(&"mount"), Some(&"-t")) = (words.first(), words.get(1)) else {
        return Err(bad());
    };
    let fstype = *words.get(2).ok_or_else(bad)?;
    let source = *words.get(3).ok_or_else(bad)?;
    let opt_at = words.iter().position(|w| *w == "-o").ok_or_else(bad)?;
    let options: Vec<&str> = words
        .get(opt_at + 1)
        .map(|o| o.split(',').collect())
        .unwrap_or_default();
    match fstype {
        "bind" | "rbind" => {
            let p = PathBuf::from(source);
            if !p.is_absolute() {
                return Err(bad());
            }
            Ok(SnapshotRoot::Dir(p))
        }
        "overlay" => {
            let mut layers = Vec::new();
            for o in &options {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    layers.insert(0, PathBuf::from(u));
                }
            }
            for o in &options {
                if let Some(l) = o.strip_prefix("lowerdir=") {
                    layers.extend(l.split(':').map(PathBuf::from));
                }
            }
            if layers.is_empty() || layers.iter().any(|l| !l.is_absolute()) {
                return Err(bad());
            }
            Ok(SnapshotRoot::Overlay(layers))
        }
        _ => Err(bad()),
    }
}

/// Asks containerd (through `ctr`) for the container's snapshot and inspects it.
pub struct CtrProbe {
    pub ctr: PathBuf,
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// Private directory for temporary read-only mounts.
    pub work_dir: PathBuf,
}

impl CtrProbe {
    fn snapshot_root(&self, id: &str) -> Result<SnapshotRoot, ProbeError> {
        let mut child = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .arg("snapshots")
            .arg("--snapshotter")
            .arg(&self.snapshotter)
            .arg("mounts")
            .arg("/berth-probe")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProbeError::Spawn {
                ctr: self.ctr.clone(),
                source,
            })?;
        let deadline = Instant::now() + CTR_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ProbeError::Timeout(CTR_TIMEOUT));
                }
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| ProbeError::Spawn {
                ctr: self.ctr.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ProbeError::Ctr(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        parse_ctr_mounts(&String::from_utf8_lossy(&out.stdout))
    }
}

/// A temporary read-only mount, unmounted and removed on drop.
struct TempMount {
    path: PathBuf,
    mounted: bool,
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH)
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot unmount a faketime probe mount");
            return;
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn mount_overlay(layers: &[PathBuf], at: &Path) -> Result<TempMount, ProbeError> {
    let mount_err = |source: io::Error| ProbeError::Mount {
        path: at.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(at).map_err(mount_err)?;
    let mut m = TempMount {
        path: at.to_path_buf(),
        mounted: false,
    };
    let mut lower = String::new();
    for l in layers {
        let s = l.to_str().filter(|s| !s.contains([':', ',']));
        let Some(s) = s else {
            return Err(ProbeError::Parse(l.display().to_string()));
        };
        if !lower.is_empty() {
            lower.push(':');
        }
        lower.push_str(s);
    }
    // With a single layer, an overlay needs an upper dir: bind it read-only instead.
    if layers.len() == 1 {
        rustix::mount::mount_bind(&layers[0], at).map_err(|e| mount_err(e.into()))?;
        m.mounted = true;
        rustix::mount::mount_remount(
            at,
            rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
            "",
        )
        .map_err(|e| mount_err(e.into()))?;
        return Ok(m);
    }
    let data = std::ffi::CString::new(format!("lowerdir={lower}"))
        .map_err(|_| ProbeError::Parse(lower.clone()))?;
    rustix::mount::mount(
        "berth-probe",
        at,
        "overlay",
        rustix::mount::MountFlags::RDONLY
            | rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        data.as_c_str(),
    )
    .map_err(|e| mount_err(e.into()))?;
    m.mounted = true;
    Ok(m)
}

impl RootfsProbe for CtrProbe {
    fn inspect(&self, ctr: &Container) -> Result<(Coverage, Option<Variant>), ProbeError> {
        let program = ctr.args.first().ok_or(ProbeError::NoArgs)?;
        let path = ctr.env_var("PATH");
        match self.snapshot_root(&ctr.id)? {
            SnapshotRoot::Dir(d) => Ok(inspect_for_shim(&d, program, path)?),
            SnapshotRoot::Overlay(layers) => {
                let at = self.work_dir.join(&ctr.id);
                let m = mount_overlay(&layers, &at)?;
                let r = inspect_for_shim(&m.path, program, path);
                drop(m);
                Ok(r?)
            }
        }
    }
}

/// Judges a running container's entry point from `/proc/<pid>/exe`, resolved in its root.
pub fn inspect_process(pid: u32) -> Result<Coverage, ProbeError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let exe = std::fs::read_link(proc.join("exe")).map_err(|source| {
        ProbeError::Elf(ElfError::Io {
            path: proc.join("exe"),
            source,
        })
    })?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    Ok(inspect_in_root(&proc.join("root"), exe, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_and_bind_mounts() {
        let out = "mount -t overlay overlay /berth-probe -o index=off,workdir=/s/5/work,upperdir=/s/5/fs,lowerdir=/s/3/fs:/s/1/fs\n";
        assert_eq!(
            parse_ctr_mounts(out).unwrap(),
            SnapshotRoot::Overlay(vec!["/s/5/fs".into(), "/s/3/fs".into(), "/s/1/fs".into()])
        );
        let out = "mount -t bind /s/1/fs /berth-probe -o rbind,ro\n";
        assert_eq!(
            parse_ctr_mounts(out).unwrap(),
            SnapshotRoot::Dir("/s/1/fs".into())
        );
    }

    #[test]
    fn odd_output_is_a_parse_error() {
        for out in [
            "",
            "mount -t tmpfs tmpfs /x -o size=1\n",
            "mount -t overlay overlay /x -o index=off\n",
            "mount -t bind rel /x -o rbind\n",
            "a\nb\n",
        ] {
            assert!(
                matches!(parse_ctr_mounts(out), Err(ProbeError::Parse(_))),
                "{out:?}"
            );
        }
    }

    #[test]
    fn a_missing_ctr_says_which_binary() {
        let p = CtrProbe {
            ctr: "/nonexistent/ctr".into(),
            address: "/x.sock".into(),
            namespace: "k8s.io".into(),
            snapshotter: "overlayfs".into(),
            work_dir: "/tmp".into(),
        };
        let ctr = Container {
            id: "c1".into(),
            args: vec!["/bin/sh".into()],
            ..Default::default()
        };
        match p.inspect(&ctr) {
            Err(ProbeError::Spawn { ctr, .. }) => assert_eq!(ctr, Path::new("/nonexistent/ctr")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    #[ignore = "needs root: run by scripts/test"]
    fn overlay_of_layers_is_mounted_read_only_judged_and_unmounted() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (mount)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        std::fs::create_dir_all(lower.join("bin")).unwrap();
        std::fs::create_dir_all(upper.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", lower.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", upper.join("bin/sh")).unwrap();
        let at = tmp.path().join("probe/c1");
        let m = mount_overlay(&[upper.clone(), lower.clone()], &at).unwrap();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(at.to_str().unwrap()))
            .expect("mounted");
        assert!(line.split(' ').nth(5).unwrap().starts_with("ro"), "{line}");
        // the upper layer's link resolves into the lower layer's file
        let (c, v) = inspect_for_shim(&m.path, "sh", Some("/bin")).unwrap();
        assert_eq!((c, v), (Coverage::Static, None));
        assert!(std::fs::write(at.join("x"), b"x").is_err(), "read-only");
        drop(m);
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains(at.to_str().unwrap()), "left mounted");
        assert!(!at.exists(), "mount point left behind");
        assert_eq!(
            std::fs::read_dir(upper.join("bin")).unwrap().count(),
            1,
            "upper untouched"
        );
        // a single layer is bound read-only instead
        let m = mount_overlay(std::slice::from_ref(&lower), &at).unwrap();
        let (c, _) = inspect_for_shim(&m.path, "/bin/busybox", None).unwrap();
        assert_eq!(c, Coverage::Static);
        assert!(std::fs::write(at.join("x"), b"x").is_err(), "read-only");
        drop(m);
        assert!(!at.exists(), "mount point left behind");
        assert!(!lower.join("x").exists());
    }

    #[test]
    fn own_process_is_judged_through_proc() {
        // the test binary is a dynamically linked glibc program
        let c = inspect_process(std::process::id()).unwrap();
        assert!(matches!(c, Coverage::Glibc { .. }), "{c:?}");
    }
}
