//! A container's root as the stack of directories overlayfs would merge (the container's own
//! upper dir over its image layers), read without mounting anything: lookups go through the
//! layers top-down the way overlayfs resolves them. No mount means no privilege to mount, no
//! mount left behind, and layer directories that live in another mount namespace
//! (containerd's, seen through `/proc/<pid>/root` from the DaemonSet) work as well as local
//! ones: overlayfs refuses lower dirs from another mount namespace.
//!
//! The rules followed (those of the layers containerd's overlayfs snapshotter unpacks): a
//! character device 0/0 is a whiteout and hides the name in the layers below; a directory with
//! the xattr `trusted.overlay.opaque` (or `user.overlay.opaque`, rootless) = `y` hides the
//! directories of the same name below; a directory merges with the directories of the same
//! name below it until a non-directory or an opaque one; a non-directory is taken from the
//! topmost layer that has the name. Redirects and metacopy (features of a mounted overlay's
//! upper dir, never in unpacked layers) are not followed.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use berth_faketime::rootfs::{EntryKind, RootView, kind_of};

/// The layers of one container, topmost first, as host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerRoot {
    layers: Vec<PathBuf>,
}

/// What a path is in the merged view.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Absent,
    /// A non-directory, from this layer.
    Entry(usize, EntryKind),
    /// A directory, merged from these layers (topmost first).
    Dir(Vec<usize>),
}

impl LayerRoot {
    /// `layers` topmost first.
    pub fn new(layers: Vec<PathBuf>) -> LayerRoot {
        LayerRoot { layers }
    }

    fn lookup(&self, rel: &Path) -> io::Result<Found> {
        let mut dirs: Vec<usize> = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            dirs.push(i);
            if is_opaque(layer)? {
                break;
            }
        }
        let names: Vec<&std::ffi::OsStr> = rel
            .components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n),
                _ => None,
            })
            .collect();
        let mut at = PathBuf::new();
        for (i, name) in names.iter().enumerate() {
            at.push(name);
            let mut merged = Vec::new();
            let mut entry = None;
            for &l in &dirs {
                let p = self.layers[l].join(&at);
                let m = match std::fs::symlink_metadata(&p) {
                    Ok(m) => m,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                        ) =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if m.file_type().is_char_device() && m.rdev() == 0 {
                    break; // whiteout: nothing of this name here or below
                }
                let kind = kind_of(&m.file_type());
                if kind == EntryKind::Dir {
                    merged.push(l);
                    if is_opaque(&p)? {
                        break;
                    }
                    continue;
                }
                // A non-directory: the name's entry when nothing above was a directory; below a
                // directory it ends the merge.
                if merged.is_empty() {
                    entry = Some((l, kind));
                }
                break;
            }
            let last = i + 1 == names.len();
            match (entry, merged.is_empty()) {
                (Some((l, kind)), _) if last => return Ok(Found::Entry(l, kind)),
                (Some(_), _) | (None, true) => return Ok(Found::Absent),
                (None, false) => dirs = merged,
            }
        }
        Ok(Found::Dir(dirs))
    }

    /// The host path of the non-directory at `rel`, if it is of `want` kind.
    fn entry_path(&self, rel: &Path, want: EntryKind) -> io::Result<PathBuf> {
        match self.lookup(rel)? {
            Found::Entry(l, kind) if kind == want => Ok(self.layers[l].join(rel)),
            Found::Absent => Err(io::Error::from(io::ErrorKind::NotFound)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("/{} is not a {want:?}", rel.display()),
            )),
        }
    }
}

/// overlayfs' opaque-directory mark, privileged or rootless.
fn is_opaque(dir: &Path) -> io::Result<bool> {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        let mut buf = [0u8; 4];
        match rustix::fs::lgetxattr(dir, name, &mut buf[..]) {
            Ok(n) => {
                if buf[..n] == *b"y" {
                    return Ok(true);
                }
            }
            Err(rustix::io::Errno::NODATA)
            | Err(rustix::io::Errno::NOTSUP)
            | Err(rustix::io::Errno::RANGE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(false)
}

impl RootView for LayerRoot {
    fn kind(&self, rel: &Path) -> io::Result<Option<EntryKind>> {
        Ok(match self.lookup(rel)? {
            Found::Absent => None,
            Found::Entry(_, kind) => Some(kind),
            Found::Dir(_) => Some(EntryKind::Dir),
        })
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(self.entry_path(rel, EntryKind::Symlink)?)
    }

    fn open(&self, rel: &Path) -> io::Result<File> {
        File::open(self.entry_path(rel, EntryKind::File)?)
    }

    fn display(&self, rel: &Path) -> PathBuf {
        Path::new("/").join(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_faketime::Coverage;
    use berth_faketime::rootfs::inspect;
    use std::os::unix::fs::symlink;

    /// Three layers: `top` over `mid` over `base`.
    fn stack() -> (tempfile::TempDir, LayerRoot) {
        let tmp = tempfile::tempdir().unwrap();
        let l = |n: &str| tmp.path().join(n);
        for d in [
            "base/bin",
            "base/etc",
            "base/opt/app",
            "mid/bin",
            "mid/etc",
            "top/opt/app",
        ] {
            std::fs::create_dir_all(l(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", l("base/bin/busybox")).unwrap();
        symlink("busybox", l("base/bin/sh")).unwrap();
        std::fs::copy("/usr/bin/python3", l("mid/bin/python3")).unwrap();
        std::fs::write(l("base/etc/hostname"), "base").unwrap();
        std::fs::write(l("mid/etc/hostname"), "mid").unwrap();
        // a file in base, a directory of the same name above it in mid
        std::fs::write(l("base/opt/app/data"), "file").unwrap();
        std::fs::create_dir_all(l("mid/opt/app/data")).unwrap();
        std::fs::write(l("top/opt/app/run.sh"), "#!/bin/sh\n").unwrap();
        let root = LayerRoot::new(vec![l("top"), l("mid"), l("base")]);
        (tmp, root)
    }

    #[test]
    fn names_come_from_the_topmost_layer_and_directories_merge() {
        let (_tmp, root) = stack();
        let read = |p: &str| {
            let mut s = String::new();
            io::Read::read_to_string(&mut root.open(Path::new(p)).unwrap(), &mut s).unwrap();
            s
        };
        assert_eq!(read("etc/hostname"), "mid");
        assert_eq!(root.kind(Path::new("bin")).unwrap(), Some(EntryKind::Dir));
        assert_eq!(
            root.kind(Path::new("bin/sh")).unwrap(),
            Some(EntryKind::Symlink)
        );
        assert_eq!(
            root.read_link(Path::new("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(
            root.kind(Path::new("opt/app/data")).unwrap(),
            Some(EntryKind::Dir),
            "the directory above hides the file below"
        );
        assert_eq!(root.kind(Path::new("opt/app/none")).unwrap(), None);
        assert_eq!(root.kind(Path::new("etc/hostname/x")).unwrap(), None);
        assert!(root.open(Path::new("bin")).is_err());
        // the entry point search sees the merged root: sh -> busybox (static) in base,
        // python3 (glibc) in mid, a script in top run by sh
        assert_eq!(
            inspect(&root, "sh", Some("/bin")).unwrap(),
            Coverage::Static
        );
        assert!(matches!(
            inspect(&root, "python3", Some("/bin")).unwrap(),
            Coverage::Glibc { .. }
        ));
        assert_eq!(
            inspect(&root, "/opt/app/run.sh", None).unwrap(),
            Coverage::Static
        );
    }

    /// Whiteouts and opaque directories need root (mknod of a 0/0 device, trusted.* xattrs);
    /// the same layers mounted by the kernel's overlayfs must agree with the view on every
    /// path.
    #[test]
    #[ignore = "needs root (mknod, trusted xattrs, mount): run by scripts/test"]
    fn whiteouts_and_opaque_dirs_agree_with_the_kernel() {
        assert!(rustix::process::geteuid().is_root(), "this test needs root");
        let (tmp, root) = stack();
        let l = |n: &str| tmp.path().join(n);
        // top deletes /bin/sh (a whiteout) and makes /etc opaque with its own file
        std::fs::create_dir_all(l("top/bin")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            l("top/bin/sh"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        std::fs::create_dir_all(l("top/etc")).unwrap();
        rustix::fs::setxattr(
            l("top/etc"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        std::fs::write(l("top/etc/motd"), "top").unwrap();

        assert_eq!(root.kind(Path::new("bin/sh")).unwrap(), None, "whited out");
        assert_eq!(
            root.kind(Path::new("bin/busybox")).unwrap(),
            Some(EntryKind::File)
        );
        assert_eq!(
            root.kind(Path::new("etc/hostname")).unwrap(),
            None,
            "hidden by the opaque dir"
        );
        assert_eq!(
            root.kind(Path::new("etc/motd")).unwrap(),
            Some(EntryKind::File)
        );

        // the kernel's view of the same layers
        let at = tmp.path().join("merged");
        std::fs::create_dir_all(&at).unwrap();
        let data = format!(
            "lowerdir={}:{}:{}",
            l("top").display(),
            l("mid").display(),
            l("base").display()
        );
        let data = std::ffi::CString::new(data).unwrap();
        rustix::mount::mount(
            "berth-test",
            &at,
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            data.as_c_str(),
        )
        .unwrap();
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _guard = Unmount(&at);
        let kernel = berth_faketime::rootfs::DirRoot::open(&at).unwrap();
        for p in [
            "bin",
            "bin/sh",
            "bin/busybox",
            "bin/python3",
            "etc",
            "etc/hostname",
            "etc/motd",
            "opt/app",
            "opt/app/data",
            "opt/app/run.sh",
            "none",
        ] {
            assert_eq!(
                root.kind(Path::new(p)).unwrap(),
                kernel.kind(Path::new(p)).unwrap(),
                "{p}"
            );
        }
        assert!(matches!(
            inspect(&root, "sh", Some("/bin")),
            Err(berth_faketime::elf::ElfError::NotFound { .. })
        ));
    }
}
