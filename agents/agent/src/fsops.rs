//! The file system seam: everything the agent does under the log root, fd-relative.
//!
//! Every path is resolved from an fd of the log root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS)`: a symlink planted at any
//! level makes the operation fail instead of redirecting it, `..` cannot leave the root, and
//! no walk enters another mount (a bind mount of the same file system included; the device
//! number is checked as well). Deletion never follows symlinks: they are unlinked as links.

use std::ffi::{CStr, OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_common::fs::openat2_beneath;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::filelogs::layout::RelPath;

/// Deepest directory nesting the agent walks (each level holds one fd).
pub const MAX_DEPTH: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(
        "{path} under the log root is a symlink (or contains one): refusing to follow it; remove it"
    )]
    Symlink { path: String },
    #[error("{path} under the log root crosses into another mount: refusing to enter it")]
    CrossesMount { path: String },
    #[error("{path} under the log root exists but is not a directory: remove it")]
    NotDir { path: String },
    #[error("{path} under the log root is nested deeper than {MAX_DEPTH} levels")]
    TooDeep { path: String },
    #[error("cannot {op} {path} under the log root")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl FsError {
    /// Whether the failure is someone tampering with the log root (not a plain I/O error).
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            FsError::Symlink { .. } | FsError::CrossesMount { .. } | FsError::NotDir { .. }
        )
    }
}

/// One regular file found under a container dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Relative to the log root.
    pub path: PathBuf,
    /// Allocated bytes (blocks × 512), what the disk budget counts.
    pub bytes: u64,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    pub files: u64,
    pub dirs: u64,
    /// Entries left in place: mount points, too-deep trees.
    pub skipped: Vec<String>,
}

impl RemoveReport {
    pub fn complete(&self) -> bool {
        self.skipped.is_empty()
    }
}

/// File system operations under the log root.
pub trait LogFs: Send + Sync + 'static {
    /// Creates `rel` and its missing parents (0755); the last component gets `leaf_mode`.
    fn ensure_dir(&self, rel: &RelPath, leaf_mode: u32) -> Result<(), FsError>;
    /// Replaces `rel` atomically with `data`.
    fn write_file(&self, rel: &RelPath, data: &[u8]) -> Result<(), FsError>;
    /// Reads at most `max` bytes of `rel`; `None` if it does not exist.
    fn read_file(&self, rel: &RelPath, max: usize) -> Result<Option<Vec<u8>>, FsError>;
    /// Entries of a dir (`None` if it does not exist), with whether each is a directory.
    fn list_dir(&self, rel: &RelPath) -> Result<Option<Vec<(OsString, bool)>>, FsError>;
    /// Regular files below `rel`, recursively (not following symlinks, not entering mounts).
    fn files(&self, rel: &RelPath) -> Result<Vec<FileInfo>, FsError>;
    /// Deletes `rel` (a file or a tree); absent is fine.
    fn remove_tree(&self, rel: &RelPath) -> Result<RemoveReport, FsError>;
    /// Deletes one regular file found by [`LogFs::files`]; `false` if it was gone.
    fn remove_file(&self, path: &Path) -> Result<bool, FsError>;
    /// Removes the now-empty ancestors of `rel`, deepest first, stopping at the first that is
    /// not empty. The log root itself stays.
    fn remove_empty_parents(&self, rel: &RelPath) -> Result<u32, FsError>;
    /// The absolute host path, for mount sources.
    fn host_path(&self, rel: &RelPath) -> PathBuf;
}

/// The real implementation over an fd of the log root.
pub struct RealFs {
    root: OwnedFd,
    root_path: PathBuf,
    root_dev: u64,
    tmp_counter: AtomicU64,
}

fn io_err(op: &'static str, path: impl Into<String>, e: Errno) -> FsError {
    FsError::Io {
        op,
        path: path.into(),
        source: e.into(),
    }
}

fn classify(op: &'static str, path: &str, e: Errno) -> FsError {
    match e {
        Errno::LOOP => FsError::Symlink {
            path: path.to_string(),
        },
        Errno::XDEV => FsError::CrossesMount {
            path: path.to_string(),
        },
        Errno::NOTDIR => FsError::NotDir {
            path: path.to_string(),
        },
        e => io_err(op, path, e),
    }
}

fn cname(name: &OsStr) -> std::ffi::CString {
    std::ffi::CString::new(name.as_bytes()).expect("names from the kernel contain no NUL")
}

impl RealFs {
    /// Opens (creating it if needed) the log root. The root path comes from trusted config;
    /// it is canonicalised once so mount sources are absolute real paths.
    pub fn open(root: &Path) -> std::io::Result<RealFs> {
        std::fs::create_dir_all(root)?;
        let root_path = std::fs::canonicalize(root)?;
        let fd = rustix::fs::open(
            &root_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        Ok(RealFs {
            root: fd,
            root_path,
            root_dev: st.st_dev,
            tmp_counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    fn open_dir_path(&self, rel: &Path) -> Result<OwnedFd, FsError> {
        let shown = rel.display().to_string();
        let c = if rel.as_os_str().is_empty() {
            c".".to_owned()
        } else {
            cname(rel.as_os_str())
        };
        let fd = openat2_beneath(
            &self.root,
            &c,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| classify("open", &shown, e))?;
        self.check_dev(&fd, &shown)?;
        Ok(fd)
    }

    fn open_dir(&self, rel: &RelPath) -> Result<OwnedFd, FsError> {
        self.open_dir_path(&rel_to_path(rel))
    }

    fn check_dev(&self, fd: &OwnedFd, shown: &str) -> Result<(), FsError> {
        let st = rustix::fs::fstat(fd).map_err(|e| io_err("stat", shown, e))?;
        if st.st_dev != self.root_dev {
            return Err(FsError::CrossesMount {
                path: shown.to_string(),
            });
        }
        Ok(())
    }

    fn walk_files(
        &self,
        dir: &OwnedFd,
        rel: &Path,
        depth: usize,
        out: &mut Vec<FileInfo>,
    ) -> Result<(), FsError> {
        if depth > MAX_DEPTH {
            return Err(FsError::TooDeep {
                path: rel.display().to_string(),
            });
        }
        let shown = rel.display().to_string();
        let entries = Dir::read_from(dir).map_err(|e| io_err("read", &shown, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err("read", &shown, e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let child_rel = rel.join(OsStr::from_bytes(name.to_bytes()));
            let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(io_err("stat", child_rel.display().to_string(), e)),
            };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => out.push(FileInfo {
                    path: child_rel,
                    bytes: (st.st_blocks as u64) * 512,
                    mtime: UNIX_EPOCH
                        + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32),
                }),
                FileType::Directory => {
                    if st.st_dev != self.root_dev {
                        continue;
                    }
                    let sub = match openat2_beneath(
                        dir,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    ) {
                        Ok(fd) => fd,
                        // A mount point or a dir swapped for a symlink meanwhile: not ours to count.
                        Err(Errno::XDEV | Errno::LOOP | Errno::NOENT | Errno::NOTDIR) => continue,
                        Err(e) => return Err(io_err("open", child_rel.display().to_string(), e)),
                    };
                    self.walk_files(&sub, &child_rel, depth + 1, out)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes `name` in `dir`; returns whether it is gone.
    fn remove_entry(
        &self,
        dir: &OwnedFd,
        name: &CStr,
        rel: &Path,
        depth: usize,
        report: &mut RemoveReport,
    ) -> Result<bool, FsError> {
        let shown = rel.display().to_string();
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(true),
            Err(e) => return Err(io_err("stat", shown, e)),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            // Files, symlinks (the link itself), sockets, fifos.
            match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
                Ok(()) => report.files += 1,
                Err(Errno::NOENT) => {}
                Err(e) => return Err(io_err("remove", shown, e)),
            }
            return Ok(true);
        }
        if st.st_dev != self.root_dev {
            report
                .skipped
                .push(format!("{shown} (another file system is mounted here)"));
            return Ok(false);
        }
        if depth > MAX_DEPTH {
            report
                .skipped
                .push(format!("{shown} (nested deeper than {MAX_DEPTH} levels)"));
            return Ok(false);
        }
        let sub = match openat2_beneath(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::XDEV) => {
                report.skipped.push(format!("{shown} (a bind mount)"));
                return Ok(false);
            }
            Err(Errno::NOENT) => return Ok(true),
            Err(e) => return Err(classify("open", &shown, e)),
        };
        let sub_st = rustix::fs::fstat(&sub).map_err(|e| io_err("stat", &shown, e))?;
        if sub_st.st_ino != st.st_ino || sub_st.st_dev != st.st_dev {
            report
                .skipped
                .push(format!("{shown} (replaced while being removed)"));
            return Ok(false);
        }
        let mut names = Vec::new();
        for entry in Dir::read_from(&sub).map_err(|e| io_err("read", &shown, e))? {
            let entry = entry.map_err(|e| io_err("read", &shown, e))?;
            let n = entry.file_name();
            if n != c"." && n != c".." {
                names.push(n.to_owned());
            }
        }
        let mut all = true;
        for n in names {
            let child = rel.join(OsStr::from_bytes(n.to_bytes()));
            all &= self.remove_entry(&sub, &n, &child, depth + 1, report)?;
        }
        if all {
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) => report.dirs += 1,
                Err(Errno::NOENT) => {}
                // Something was written meanwhile (a live writer): leave it for the next pass.
                Err(Errno::NOTEMPTY | Errno::EXIST) => {
                    report
                        .skipped
                        .push(format!("{shown} (not empty: written to during removal)"));
                    return Ok(false);
                }
                Err(Errno::BUSY) => {
                    report.skipped.push(format!("{shown} (a mount point)"));
                    return Ok(false);
                }
                Err(e) => return Err(io_err("remove", shown, e)),
            }
        }
        Ok(all)
    }
}

fn rel_to_path(rel: &RelPath) -> PathBuf {
    rel.components().iter().collect()
}

/// Splits a relative path into (parent, name), refusing anything but plain components.
fn split_rel(path: &Path) -> Option<(PathBuf, &OsStr)> {
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some((path.parent()?.to_path_buf(), path.file_name()?))
}

impl LogFs for RealFs {
    fn ensure_dir(&self, rel: &RelPath, leaf_mode: u32) -> Result<(), FsError> {
        let comps = rel.components();
        let n = comps.len();
        let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        // This runs while the runtime waits for CreateContainer: resolve what already exists
        // in one openat2 (the same RESOLVE rules hold for a whole path as for one name). A
        // restarted container finds its whole dir; a new one finds at least its pod's parent
        // most of the time; anything else walks from the root.
        let prefix = |upto: usize| -> Option<OwnedFd> {
            if upto == 0 {
                return None;
            }
            let path = comps[..upto].join("/");
            let fd = openat2_beneath(
                &self.root,
                &cname(OsStr::new(&path)),
                dir_flags,
                Mode::empty(),
            )
            .ok()?;
            self.check_dev(&fd, &path).ok().map(|()| fd)
        };
        if prefix(n).is_some() {
            return Ok(());
        }
        let (mut fd, start) = match prefix(n.saturating_sub(1)) {
            Some(fd) => (fd, n - 1),
            None => (
                openat2_beneath(&self.root, c".", dir_flags, Mode::empty())
                    .map_err(|e| io_err("open", ".", e))?,
                0,
            ),
        };
        let mut shown = comps[..start].join("/");
        for (i, comp) in comps.iter().enumerate().skip(start) {
            if !shown.is_empty() {
                shown.push('/');
            }
            shown.push_str(comp);
            let leaf = i + 1 == n;
            let mode = if leaf { leaf_mode } else { 0o755 };
            let c = cname(OsStr::new(comp));
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
            // Open first: the namespace and pod dirs usually exist, and a mkdir that fails
            // with EEXIST still takes the parent's lock. Create only what is missing.
            let (next, created) = match openat2_beneath(&fd, &c, flags, Mode::empty()) {
                Ok(next) => (next, false),
                Err(Errno::NOENT) => {
                    let created =
                        match rustix::fs::mkdirat(&fd, comp.as_str(), Mode::from_raw_mode(mode)) {
                            Ok(()) => true,
                            // Another creation made it in between.
                            Err(Errno::EXIST) => false,
                            Err(e) => return Err(classify("create", &shown, e)),
                        };
                    let next = openat2_beneath(&fd, &c, flags, Mode::empty())
                        .map_err(|e| classify("open", &shown, e))?;
                    (next, created)
                }
                Err(e) => return Err(classify("open", &shown, e)),
            };
            self.check_dev(&next, &shown)?;
            if created && leaf {
                // mkdir's mode is cut by the umask; the leaf must be writable by the
                // container's user, like an emptyDir.
                rustix::fs::fchmod(&next, Mode::from_raw_mode(leaf_mode))
                    .map_err(|e| io_err("chmod", &shown, e))?;
            }
            fd = next;
        }
        Ok(())
    }

    fn write_file(&self, rel: &RelPath, data: &[u8]) -> Result<(), FsError> {
        let parent = rel
            .parent()
            .expect("a file has a parent (at least the root)");
        let name = rel.file_name().expect("a file has a name");
        let dir = self.open_dir(&parent)?;
        let tmp = format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        );
        let shown = rel.to_string();
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| io_err("create", &shown, e))?;
        let mut f = std::fs::File::from(fd);
        // No fsync: this sits on the CreateContainer path, and the file is rewritten on every
        // creation; rename keeps readers from ever seeing a partial file.
        let written = f.write_all(data);
        drop(f);
        if let Err(e) = written {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            return Err(FsError::Io {
                op: "write",
                path: shown,
                source: e,
            });
        }
        rustix::fs::renameat(&dir, tmp.as_str(), &dir, name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
            io_err("replace", &shown, e)
        })
    }

    fn read_file(&self, rel: &RelPath, max: usize) -> Result<Option<Vec<u8>>, FsError> {
        let shown = rel.to_string();
        let fd = match openat2_beneath(
            &self.root,
            &cname(rel_to_path(rel).as_os_str()),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(classify("open", &shown, e)),
        };
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .take(max as u64)
            .read_to_end(&mut buf)
            .map_err(|source| FsError::Io {
                op: "read",
                path: shown,
                source,
            })?;
        Ok(Some(buf))
    }

    fn list_dir(&self, rel: &RelPath) -> Result<Option<Vec<(OsString, bool)>>, FsError> {
        let dir = match self.open_dir(rel) {
            Ok(d) => d,
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let shown = rel.to_string();
        let mut out = Vec::new();
        for entry in Dir::read_from(&dir).map_err(|e| io_err("read", &shown, e))? {
            let entry = entry.map_err(|e| io_err("read", &shown, e))?;
            let n = entry.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            let is_dir = match rustix::fs::statat(&dir, n, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                Err(_) => false,
            };
            out.push((OsStr::from_bytes(n.to_bytes()).to_os_string(), is_dir));
        }
        Ok(Some(out))
    }

    fn files(&self, rel: &RelPath) -> Result<Vec<FileInfo>, FsError> {
        let dir = match self.open_dir(rel) {
            Ok(d) => d,
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        self.walk_files(&dir, &rel_to_path(rel), 0, &mut out)?;
        Ok(out)
    }

    fn remove_tree(&self, rel: &RelPath) -> Result<RemoveReport, FsError> {
        let mut report = RemoveReport::default();
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            // Only a corrupted state file could ask for this.
            return Err(io_err("remove", ".", Errno::INVAL));
        };
        let dir = match self.open_dir(&parent) {
            Ok(d) => d,
            Err(FsError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(report);
            }
            Err(e) => return Err(e),
        };
        self.remove_entry(
            &dir,
            &cname(OsStr::new(name)),
            &rel_to_path(rel),
            0,
            &mut report,
        )?;
        Ok(report)
    }

    fn remove_file(&self, path: &Path) -> Result<bool, FsError> {
        let shown = path.display().to_string();
        let Some((parent, name)) = split_rel(path) else {
            return Err(io_err("remove", shown, Errno::INVAL));
        };
        let dir = self.open_dir_path(&parent)?;
        let name = cname(name);
        match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {}
            Ok(_) => return Err(io_err("remove", shown, Errno::ISDIR)),
            Err(Errno::NOENT) => return Ok(false),
            Err(e) => return Err(io_err("stat", shown, e)),
        }
        match rustix::fs::unlinkat(&dir, &name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(io_err("remove", shown, e)),
        }
    }

    fn remove_empty_parents(&self, rel: &RelPath) -> Result<u32, FsError> {
        let comps = rel.components();
        let mut removed = 0;
        // Ancestors of rel: comps[..i] for i = len-1 down to 1.
        for i in (1..comps.len()).rev() {
            let parent: PathBuf = comps[..i - 1].iter().collect();
            let dir = match self.open_dir_path(&parent) {
                Ok(d) => d,
                Err(FsError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            match rustix::fs::unlinkat(&dir, comps[i - 1].as_str(), AtFlags::REMOVEDIR) {
                Ok(()) => removed += 1,
                Err(Errno::NOENT) => {}
                Err(Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR | Errno::BUSY) => break,
                Err(e) => return Err(io_err("remove", comps[..i].join("/"), e)),
            }
        }
        Ok(removed)
    }

    fn host_path(&self, rel: &RelPath) -> PathBuf {
        self.root_path.join(rel_to_path(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RelPath {
        RelPath::try_from(s.to_string()).unwrap()
    }

    fn fs() -> (tempfile::TempDir, RealFs) {
        let d = tempfile::tempdir().unwrap();
        let f = RealFs::open(&d.path().join("root")).unwrap();
        (d, f)
    }

    #[test]
    fn ensure_dir_creates_nested_dirs_with_leaf_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, f) = fs();
        f.ensure_dir(&rp("ns/pod/ctr"), 0o777).unwrap();
        let p = f.host_path(&rp("ns/pod/ctr"));
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o777
        );
        assert_eq!(
            std::fs::metadata(p.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
        // Idempotent.
        f.ensure_dir(&rp("ns/pod/ctr"), 0o777).unwrap();
    }

    #[test]
    fn symlink_at_any_level_is_never_followed_by_ensure_dir() {
        for level in 0..3 {
            let (d, f) = fs();
            let outside = d.path().join("outside");
            std::fs::create_dir(&outside).unwrap();
            let comps = ["ns", "pod", "ctr"];
            let real: PathBuf = comps[..level].iter().collect();
            std::fs::create_dir_all(f.root().join(&real)).unwrap();
            std::os::unix::fs::symlink(&outside, f.root().join(&real).join(comps[level])).unwrap();
            let e = f.ensure_dir(&rp("ns/pod/ctr"), 0o777).unwrap_err();
            assert!(matches!(e, FsError::Symlink { .. }), "level {level}: {e:?}");
            assert!(e.is_hostile());
            assert_eq!(
                std::fs::read_dir(&outside).unwrap().count(),
                0,
                "level {level}: something was created outside"
            );
        }
    }

    #[test]
    fn file_in_place_of_a_dir_is_refused() {
        let (_d, f) = fs();
        std::fs::create_dir_all(f.root().join("ns")).unwrap();
        std::fs::write(f.root().join("ns/pod"), b"x").unwrap();
        assert!(matches!(
            f.ensure_dir(&rp("ns/pod/ctr"), 0o777),
            Err(FsError::NotDir { .. })
        ));
    }

    #[test]
    fn write_and_read_file_atomically_and_not_through_symlinks() {
        let (d, f) = fs();
        f.ensure_dir(&rp("ns/pod"), 0o755).unwrap();
        f.write_file(&rp("ns/pod/a.json"), b"one").unwrap();
        f.write_file(&rp("ns/pod/a.json"), b"two").unwrap();
        assert_eq!(
            f.read_file(&rp("ns/pod/a.json"), 100).unwrap().unwrap(),
            b"two"
        );
        assert_eq!(f.read_file(&rp("ns/pod/none.json"), 100).unwrap(), None);
        assert_eq!(
            std::fs::read_dir(f.root().join("ns/pod")).unwrap().count(),
            1,
            "temp file left behind"
        );
        // A planted symlink at the target name is replaced as a link, its target untouched.
        let victim = d.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, f.root().join("ns/pod/b.json")).unwrap();
        assert!(matches!(
            f.read_file(&rp("ns/pod/b.json"), 100),
            Err(FsError::Symlink { .. })
        ));
        f.write_file(&rp("ns/pod/b.json"), b"meta").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert!(
            !std::fs::symlink_metadata(f.root().join("ns/pod/b.json"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn remove_tree_unlinks_symlinks_without_following_them() {
        let (d, f) = fs();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("sub/precious"), b"x").unwrap();
        f.ensure_dir(&rp("ns/pod/ctr/deep"), 0o777).unwrap();
        std::fs::write(f.root().join("ns/pod/ctr/deep/a.log"), b"log").unwrap();
        std::os::unix::fs::symlink(&outside, f.root().join("ns/pod/ctr/link")).unwrap();
        std::os::unix::fs::symlink(
            outside.join("sub/precious"),
            f.root().join("ns/pod/ctr/deep/flink"),
        )
        .unwrap();
        let r = f.remove_tree(&rp("ns/pod/ctr")).unwrap();
        assert!(r.complete(), "{r:?}");
        assert_eq!((r.files, r.dirs), (3, 2));
        assert!(!f.root().join("ns/pod/ctr").exists());
        assert!(outside.join("sub/precious").exists());
        assert_eq!(f.remove_empty_parents(&rp("ns/pod/ctr")).unwrap(), 2);
        assert_eq!(
            std::fs::read_dir(f.root()).unwrap().count(),
            0,
            "empty parents left"
        );
        // Absent is fine.
        assert_eq!(
            f.remove_tree(&rp("ns/pod/ctr")).unwrap(),
            RemoveReport::default()
        );
    }

    #[test]
    fn remove_tree_refuses_a_symlinked_parent() {
        let (d, f) = fs();
        let outside = d.path().join("outside");
        std::fs::create_dir_all(outside.join("ctr")).unwrap();
        std::fs::create_dir_all(f.root().join("ns")).unwrap();
        std::os::unix::fs::symlink(&outside, f.root().join("ns/pod")).unwrap();
        assert!(matches!(
            f.remove_tree(&rp("ns/pod/ctr")),
            Err(FsError::Symlink { .. })
        ));
        assert!(outside.join("ctr").exists());
        assert_eq!(f.remove_empty_parents(&rp("ns/pod/ctr")).unwrap(), 0);
        assert!(std::fs::symlink_metadata(f.root().join("ns/pod")).is_ok());
    }

    #[test]
    fn the_log_root_itself_is_never_removed() {
        let (_d, f) = fs();
        f.ensure_dir(&rp("ns"), 0o755).unwrap();
        let e = f
            .remove_tree(&RelPath::new(Vec::new()).unwrap())
            .unwrap_err();
        assert!(matches!(e, FsError::Io { op: "remove", .. }), "{e:?}");
        assert!(f.root().join("ns").is_dir());
    }

    #[test]
    fn empty_parents_stop_at_a_non_empty_dir() {
        let (_d, f) = fs();
        f.ensure_dir(&rp("ns/pod/a"), 0o777).unwrap();
        f.ensure_dir(&rp("ns/pod2/b"), 0o777).unwrap();
        f.remove_tree(&rp("ns/pod/a")).unwrap();
        assert_eq!(f.remove_empty_parents(&rp("ns/pod/a")).unwrap(), 1);
        assert!(!f.root().join("ns/pod").exists());
        assert!(f.root().join("ns/pod2/b").exists());
    }

    #[test]
    fn files_lists_regular_files_only() {
        let (d, f) = fs();
        f.ensure_dir(&rp("ns/pod/ctr/sub"), 0o777).unwrap();
        std::fs::write(f.root().join("ns/pod/ctr/a.log"), vec![1u8; 10_000]).unwrap();
        std::fs::write(f.root().join("ns/pod/ctr/sub/b.log.1"), b"x").unwrap();
        std::fs::write(d.path().join("big"), vec![0u8; 100_000]).unwrap();
        std::os::unix::fs::symlink(d.path().join("big"), f.root().join("ns/pod/ctr/link")).unwrap();
        let mut v = f.files(&rp("ns/pod/ctr")).unwrap();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        let names: Vec<_> = v.iter().map(|i| i.path.display().to_string()).collect();
        assert_eq!(names, ["ns/pod/ctr/a.log", "ns/pod/ctr/sub/b.log.1"]);
        assert!(v[0].bytes >= 10_000);
        assert!(f.remove_file(&v[1].path).unwrap());
        assert!(!f.remove_file(&v[1].path).unwrap());
        assert!(
            f.remove_file(Path::new("ns/pod/ctr/link")).is_err(),
            "symlinks are not files to delete"
        );
        assert!(f.remove_file(Path::new("ns/../../etc/passwd")).is_err());
        assert!(f.files(&rp("ns/none")).unwrap().is_empty());
    }
}
