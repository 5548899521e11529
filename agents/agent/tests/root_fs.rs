//! Root tier: real mounts planted in the log root. Cleanup and dir creation must never cross
//! into them (a bind mount of the same file system included).

use std::path::{Path, PathBuf};

use berth_agent::filelogs::layout::RelPath;
use berth_agent::fsops::{FsError, LogFs, RealFs};
use rustix::mount::{MountFlags, UnmountFlags};

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (mounts): run it through scripts/test"
    );
}

/// Unmounts on drop, even when the test fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
    }
}

fn bind(src: &Path, dst: &Path) -> Mounted {
    rustix::mount::mount_bind(src, dst).expect("bind mount");
    Mounted(dst.to_path_buf())
}

fn tmpfs(dst: &Path) -> Mounted {
    rustix::mount::mount("berth-test", dst, "tmpfs", MountFlags::empty(), None)
        .expect("tmpfs mount");
    Mounted(dst.to_path_buf())
}

fn rp(s: &str) -> RelPath {
    RelPath::try_from(s.to_string()).unwrap()
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn cleanup_does_not_cross_a_bind_mount_or_another_fs() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let fs = RealFs::open(&d.path().join("root")).unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"x").unwrap();

    fs.ensure_dir(&rp("ns/pod/ctr/bound"), 0o777).unwrap();
    fs.ensure_dir(&rp("ns/pod/ctr/tmp"), 0o777).unwrap();
    std::fs::write(fs.root().join("ns/pod/ctr/app.log"), b"log").unwrap();
    let _b = bind(&outside, &fs.root().join("ns/pod/ctr/bound"));
    let _t = tmpfs(&fs.root().join("ns/pod/ctr/tmp"));
    std::fs::write(fs.root().join("ns/pod/ctr/tmp/in-tmpfs"), b"y").unwrap();

    // Usage does not count what lives in other mounts.
    let files: Vec<String> = fs
        .files(&rp("ns/pod/ctr"))
        .unwrap()
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(files, ["ns/pod/ctr/app.log"]);

    let r = fs.remove_tree(&rp("ns/pod/ctr")).unwrap();
    assert!(!r.complete());
    assert_eq!(r.skipped.len(), 2, "{r:?}");
    assert!(r.skipped.iter().any(|s| s.contains("bound")), "{r:?}");
    assert!(r.skipped.iter().any(|s| s.contains("tmp")), "{r:?}");
    assert_eq!(r.files, 1, "only app.log is ours");
    assert!(
        outside.join("precious").exists(),
        "deleted through a bind mount"
    );
    assert!(
        fs.root().join("ns/pod/ctr/tmp/in-tmpfs").exists(),
        "deleted inside another file system"
    );
    // The mount points and their parents stay.
    assert!(fs.root().join("ns/pod/ctr/bound").is_dir());
    assert_eq!(fs.remove_empty_parents(&rp("ns/pod/ctr")).unwrap(), 0);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn dir_creation_refuses_to_enter_a_planted_mount() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    let fs = RealFs::open(&d.path().join("root")).unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(fs.root().join("ns/pod")).unwrap();
    let _b = bind(&outside, &fs.root().join("ns/pod"));
    let e = fs.ensure_dir(&rp("ns/pod/ctr"), 0o777).unwrap_err();
    assert!(matches!(e, FsError::CrossesMount { .. }), "{e:?}");
    assert!(e.is_hostile());
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "created inside the planted mount"
    );
}
