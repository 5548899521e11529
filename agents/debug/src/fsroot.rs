//! File copy in and out of a container's root filesystem, resolved INSIDE that root.
//!
//! The root is a directory fd (`/proc/<pid>/root` of the target). Every path is resolved
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: `..` stops at the root and an
//! absolute symlink such as `/etc/shadow` means the container's `/etc/shadow`, never the
//! host's; `/proc/<pid>/root`-style magic links inside the container are refused.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use berth_common::fs::openat2_in_root;
use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

/// Errors of in-root file access; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("path {0:?} must be absolute inside the container (start with /)")]
    NotAbsolute(String),
    #[error("{path:?} does not exist inside the container")]
    NotFound { path: String },
    #[error("{path:?} is not a regular file inside the container; copy a file, not a {kind}")]
    NotRegular { path: String, kind: &'static str },
    #[error(
        "{path:?} is {size} bytes, over the copy limit of {limit} bytes; raise the limit or copy a smaller file"
    )]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path:?} would leave the container's root through a magic link; refusing")]
    Escape { path: String },
    #[error("the kernel lacks openat2(RESOLVE_IN_ROOT) (Linux 5.6+); file copy is unavailable")]
    Unsupported,
    #[error("opening the container root {0}")]
    Root(PathBuf, #[source] std::io::Error),
    #[error("accessing {path:?} inside the container")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A file read out of the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileContent {
    pub data: Vec<u8>,
    pub mode: u32,
    pub sha256: String,
}

/// What a copy-in wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// A directory fd that all paths are resolved under.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Opens `dir` (e.g. `/proc/<pid>/root`) as the root for resolution.
    pub fn open(dir: &Path) -> Result<Root, FsError> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::Root(dir.to_path_buf(), e.into()))?;
        Ok(Root { fd })
    }

    fn resolve(&self, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, FsError> {
        openat2_in_root(&self.fd, path, flags, mode).map_err(|e| match e {
            rustix::io::Errno::NOENT => FsError::NotFound {
                path: path.to_string(),
            },
            rustix::io::Errno::XDEV | rustix::io::Errno::LOOP
                if flags.contains(OFlags::NOFOLLOW) =>
            {
                FsError::NotRegular {
                    path: path.to_string(),
                    kind: "symlink",
                }
            }
            rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => FsError::Escape {
                path: path.to_string(),
            },
            rustix::io::Errno::NOSYS => FsError::Unsupported,
            e => FsError::Io {
                path: path.to_string(),
                source: e.into(),
            },
        })
    }

    /// Reads a regular file of at most `limit` bytes.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<FileContent, FsError> {
        check_absolute(path)?;
        let fd = self.resolve(path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        let io = |source: std::io::Error| FsError::Io {
            path: path.to_string(),
            source,
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| io(e.into()))?;
        let kind = file_kind(stat.st_mode);
        if kind != "file" {
            return Err(FsError::NotRegular {
                path: path.to_string(),
                kind,
            });
        }
        let size = stat.st_size as u64;
        if size > limit {
            return Err(FsError::TooLarge {
                path: path.to_string(),
                size,
                limit,
            });
        }
        let mut data = Vec::with_capacity(size as usize);
        // Read one byte past the limit: a file growing while we read is caught too.
        File::from(fd)
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(io)?;
        if data.len() as u64 > limit {
            return Err(FsError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
                limit,
            });
        }
        Ok(FileContent {
            sha256: sha256_hex(&data),
            mode: stat.st_mode & 0o7777,
            data,
        })
    }

    /// Writes a regular file atomically (temp file + rename in the same directory). The parent
    /// must exist; the final component must not be a symlink or a directory.
    pub fn write_file(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
        limit: u64,
    ) -> Result<Written, FsError> {
        check_absolute(path)?;
        if data.len() as u64 > limit {
            return Err(FsError::TooLarge {
                path: path.to_string(),
                size: data.len() as u64,
                limit,
            });
        }
        let (parent, name) = split_parent(path)?;
        let dir = self.resolve(&parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        let io = |source: std::io::Error| FsError::Io {
            path: path.to_string(),
            source,
        };
        // The final component is handled relative to the resolved parent with plain *at
        // calls that never follow a symlink (the name has no '/').
        match rustix::fs::statat(&dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let kind = file_kind(st.st_mode);
                if kind != "file" {
                    return Err(FsError::NotRegular {
                        path: path.to_string(),
                        kind,
                    });
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io(e.into())),
        }
        // The parent is an O_PATH fd; re-open it as a real directory for the *at calls.
        let dir = rustix::fs::openat(
            &dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        let tmp = format!(".{name}.berth-copy-{}", std::process::id());
        let fd = rustix::fs::openat(
            &dir,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode & 0o777),
        )
        .map_err(|e| io(e.into()))?;
        let result = (|| {
            let mut file = File::from(fd);
            file.write_all(data)?;
            rustix::fs::fchmod(file.as_fd(), Mode::from_raw_mode(mode & 0o777))?;
            file.sync_all()?;
            rustix::fs::renameat(&dir, &tmp, &dir, &name)?;
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = result {
            let _ = rustix::fs::unlinkat(&dir, &tmp, rustix::fs::AtFlags::empty());
            return Err(io(e));
        }
        Ok(Written {
            size: data.len() as u64,
            sha256: sha256_hex(data),
        })
    }
}

fn check_absolute(path: &str) -> Result<(), FsError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(FsError::NotAbsolute(path.to_string()));
    }
    Ok(())
}

/// Splits `/a/b/c` into (`/a/b`, `c`); `..`, `.` and empty final names are refused.
fn split_parent(path: &str) -> Result<(String, String), FsError> {
    let p = Path::new(path);
    match p.components().next_back() {
        Some(Component::Normal(name)) => {
            let parent = p.parent().unwrap_or(Path::new("/"));
            Ok((
                parent.to_string_lossy().into_owned(),
                name.to_string_lossy().into_owned(),
            ))
        }
        _ => Err(FsError::NotRegular {
            path: path.to_string(),
            kind: "directory",
        }),
    }
}

fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR | libc::S_IFBLK => "device",
        _ => "special file",
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake host (`host/etc/shadow`) with a container root inside it full of traps.
    struct Tree {
        _dir: tempfile::TempDir,
        host: PathBuf,
        root: PathBuf,
    }

    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().to_path_buf();
        std::fs::create_dir_all(host.join("etc")).unwrap();
        std::fs::write(host.join("etc/shadow"), "HOST SECRET").unwrap();
        let root = host.join("container");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(root.join("etc/shadow"), "container shadow").unwrap();
        // Absolute, relative-escaping and host-absolute symlinks.
        symlink("/etc/shadow", root.join("tmp/abs")).unwrap();
        symlink("../../../../../etc/shadow", root.join("tmp/rel")).unwrap();
        symlink(host.join("etc/shadow"), root.join("tmp/hostpath")).unwrap();
        symlink("/", root.join("tmp/rootlink")).unwrap();
        symlink("/proc/self/root/etc/shadow", root.join("tmp/magic")).unwrap();
        Tree {
            _dir: dir,
            host,
            root,
        }
    }

    #[test]
    fn symlinks_resolve_inside_the_root_never_to_the_host() {
        let t = tree();
        let root = Root::open(&t.root).unwrap();
        for path in [
            "/tmp/abs",
            "/tmp/rel",
            "/../../etc/shadow",
            "/tmp/rootlink/etc/shadow",
        ] {
            let got = root.read_file(path, 1024).unwrap();
            assert_eq!(got.data, b"container shadow", "{path}");
            assert_eq!(got.sha256, sha256_hex(b"container shadow"));
        }
        // A symlink spelled with the host's absolute path lands on a path that does not
        // exist in the container: a clear refusal, not the host file.
        let err = root.read_file("/tmp/hostpath", 1024).unwrap_err();
        assert!(matches!(err, FsError::NotFound { .. }), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(t.host.join("etc/shadow")).unwrap(),
            "HOST SECRET"
        );
    }

    #[test]
    fn magic_links_are_refused() {
        let t = tree();
        let root = Root::open(&t.root).unwrap();
        // /proc does not exist in this root, so the link dangles inside it: NotFound. With a
        // real /proc inside, RESOLVE_NO_MAGICLINKS turns it into Escape (see e2e tests).
        let err = root.read_file("/tmp/magic", 1024).unwrap_err();
        assert!(
            matches!(err, FsError::NotFound { .. } | FsError::Escape { .. }),
            "{err:?}"
        );
        // Through the real procfs of this process, the magic link is refused.
        let proc_root = Root::open(Path::new("/proc/self")).unwrap();
        let err = proc_root.read_file("/root/etc/hostname", 1024).unwrap_err();
        assert!(matches!(err, FsError::Escape { .. }), "{err:?}");
    }

    #[test]
    fn limits_kinds_and_relative_paths_are_refused_with_the_reason() {
        let t = tree();
        std::fs::write(t.root.join("tmp/big"), vec![7u8; 100]).unwrap();
        let root = Root::open(&t.root).unwrap();
        match root.read_file("/tmp/big", 99).unwrap_err() {
            FsError::TooLarge { size, limit, .. } => assert_eq!((size, limit), (100, 99)),
            e => panic!("{e:?}"),
        }
        assert_eq!(root.read_file("/tmp/big", 100).unwrap().data.len(), 100);
        assert!(matches!(
            root.read_file("/etc", 100).unwrap_err(),
            FsError::NotRegular {
                kind: "directory",
                ..
            }
        ));
        assert!(matches!(
            root.read_file("etc/shadow", 100).unwrap_err(),
            FsError::NotAbsolute(_)
        ));
        assert!(matches!(
            root.read_file("/nope", 100).unwrap_err(),
            FsError::NotFound { .. }
        ));
    }

    #[test]
    fn write_lands_inside_the_root_through_symlinked_dirs_and_never_replaces_a_symlink() {
        let t = tree();
        symlink("/etc", t.root.join("tmp/etclink")).unwrap();
        let root = Root::open(&t.root).unwrap();
        let w = root
            .write_file("/tmp/etclink/new.conf", b"hello", 0o640, 1024)
            .unwrap();
        assert_eq!(w.size, 5);
        assert_eq!(w.sha256, sha256_hex(b"hello"));
        assert_eq!(
            std::fs::read(t.root.join("etc/new.conf")).unwrap(),
            b"hello"
        );
        assert!(!t.host.join("etc/new.conf").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(t.root.join("etc/new.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);

        // Writing to a symlink is refused: the link and its target stay untouched.
        let err = root.write_file("/tmp/abs", b"x", 0o644, 1024).unwrap_err();
        assert!(
            matches!(
                err,
                FsError::NotRegular {
                    kind: "symlink",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            std::fs::read_to_string(t.root.join("etc/shadow")).unwrap(),
            "container shadow"
        );
        assert_eq!(
            std::fs::read_to_string(t.host.join("etc/shadow")).unwrap(),
            "HOST SECRET"
        );
        // Over the limit: nothing is written, no temp file is left.
        let err = root
            .write_file("/tmp/limit", &[0u8; 10], 0o644, 9)
            .unwrap_err();
        assert!(matches!(err, FsError::TooLarge { .. }), "{err:?}");
        let leftovers: Vec<_> = std::fs::read_dir(t.root.join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("berth-copy") || n == "limit")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // Replacing an existing file works and is atomic.
        root.write_file("/etc/new.conf", b"v2", 0o644, 1024)
            .unwrap();
        assert_eq!(std::fs::read(t.root.join("etc/new.conf")).unwrap(), b"v2");
        assert!(matches!(
            root.write_file("/tmp/..", b"v2", 0o644, 1024).unwrap_err(),
            FsError::NotRegular { .. }
        ));
    }
}
