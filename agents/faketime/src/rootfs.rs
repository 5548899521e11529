//! Finding a container's entry point in its root file system, through a view of that root: a
//! host directory ([`DirRoot`]: `/proc/<pid>/root`, an unpacked image) or anything else that
//! can answer "what is at this path" (the agent's view of an image's layers, which needs no
//! mount). Symbolic links and `#!` lines are followed as the container would follow them.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use berth_common::fs::openat2_in_root;
use rustix::fs::{FileType, Mode, OFlags};

use crate::elf::{
    Coverage, ElfError, ElfFile, ElfSource, GLIBC_FLOOR, GlibcVersion, classify, libc_version,
};

const MAX_HOPS: usize = 40;
const MAX_SCRIPT_DEPTH: usize = 4;

/// Where images keep libc.so.6 (multiarch, RHEL-style, then plain).
const LIBC_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What is at a path of a root, without following a final symbolic link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// Devices, sockets, fifos.
    Other,
}

/// A read-only view of a container's root file system. Paths are relative to the root and
/// hold no symbolic links but (perhaps) the last component: [`inspect`] resolves links itself,
/// so a link can never lead out of the root.
pub trait RootView {
    /// What `rel` is, `None` when nothing is there.
    fn kind(&self, rel: &Path) -> io::Result<Option<EntryKind>>;
    /// The target of the symbolic link at `rel`.
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;
    /// Opens the regular file at `rel` for reading.
    fn open(&self, rel: &Path) -> io::Result<File>;
    /// How errors name `rel`.
    fn display(&self, rel: &Path) -> PathBuf;
}

/// A root that is a directory on this host, opened once: every path is resolved inside it by
/// the kernel (`openat2(RESOLVE_IN_ROOT)`), so a link the container swaps in while we look
/// still cannot lead the agent out of the root.
pub struct DirRoot<'a> {
    root: &'a Path,
    fd: OwnedFd,
}

impl<'a> DirRoot<'a> {
    pub fn open(root: &'a Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(DirRoot { root, fd })
    }

    /// An `O_PATH` fd of `rel` itself (a final symbolic link not followed).
    fn path_fd(&self, rel: &Path) -> io::Result<OwnedFd> {
        Ok(openat2_in_root(
            &self.fd,
            rel,
            OFlags::PATH | OFlags::NOFOLLOW,
            Mode::empty(),
        )?)
    }
}

impl RootView for DirRoot<'_> {
    fn kind(&self, rel: &Path) -> io::Result<Option<EntryKind>> {
        let fd = match self.path_fd(rel) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let st = rustix::fs::fstat(&fd)?;
        Ok(Some(match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => EntryKind::Symlink,
            FileType::Directory => EntryKind::Dir,
            FileType::RegularFile => EntryKind::File,
            _ => EntryKind::Other,
        }))
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        let fd = self.path_fd(rel)?;
        let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?;
        Ok(PathBuf::from(OsString::from_vec(target.into_bytes())))
    }

    fn open(&self, rel: &Path) -> io::Result<File> {
        let fd = openat2_in_root(&self.fd, rel, OFlags::RDONLY, Mode::empty())?;
        Ok(File::from(fd))
    }

    fn display(&self, rel: &Path) -> PathBuf {
        self.root.join(rel)
    }
}

/// The [`EntryKind`] of a file type.
pub fn kind_of(t: &std::fs::FileType) -> EntryKind {
    if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_dir() {
        EntryKind::Dir
    } else if t.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    }
}

/// [`crate::elf::inspect_in_root`] through any view of the root.
pub fn inspect<V: RootView + ?Sized>(
    view: &V,
    program: &str,
    path_env: Option<&str>,
) -> Result<Coverage, ElfError> {
    let mut program = program.to_string();
    for _ in 0..MAX_SCRIPT_DEPTH {
        let rel = find_program(view, &program, path_env)?;
        let file = open_elf(view, &rel)?;
        let shown = view.display(&rel);
        let head = file.read_at(0, 2).map_err(|_| ElfError::NotExecutable {
            path: shown.clone(),
        })?;
        if head == b"#!" {
            program = shebang_interpreter(&file, &shown)?;
            continue;
        }
        let coverage = match classify(&file) {
            Err(ElfError::NotElf) => return Err(ElfError::NotExecutable { path: shown }),
            other => other?,
        };
        return Ok(match coverage {
            Coverage::Glibc { interpreter, .. } => match image_glibc(view) {
                Some(v) if v < GLIBC_FLOOR => Coverage::OldGlibc {
                    interpreter,
                    glibc: v,
                },
                glibc => Coverage::Glibc { interpreter, glibc },
            },
            other => other,
        });
    }
    Err(ElfError::TooDeep(program))
}

fn open_elf<V: RootView + ?Sized>(view: &V, rel: &Path) -> Result<ElfFile, ElfError> {
    let file = view.open(rel).map_err(|source| ElfError::Io {
        path: view.display(rel),
        source,
    })?;
    Ok(ElfFile::from_file(file, view.display(rel)))
}

/// The interpreter named on a `#!` line (the first word after `#!`).
fn shebang_interpreter(file: &ElfFile, shown: &Path) -> Result<String, ElfError> {
    let mut line = Vec::new();
    for chunk in 0..4u64 {
        match file.read_at(chunk * 64, 64) {
            Ok(b) => line.extend_from_slice(&b),
            Err(ElfError::Malformed(_)) => {
                // shorter than the chunk: take what is left byte by byte
                let mut at = chunk * 64;
                while let Ok(b) = file.read_at(at, 1) {
                    line.extend_from_slice(&b);
                    at += 1;
                }
                break;
            }
            Err(e) => return Err(e),
        }
        if line.contains(&b'\n') {
            break;
        }
    }
    let end = line.iter().position(|&c| c == b'\n').unwrap_or(line.len());
    let text = String::from_utf8_lossy(&line[2..end]).into_owned();
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| ElfError::NotExecutable {
            path: shown.to_path_buf(),
        })
}

/// The path (relative to the root, links resolved) of `program`.
fn find_program<V: RootView + ?Sized>(
    view: &V,
    program: &str,
    path_env: Option<&str>,
) -> Result<PathBuf, ElfError> {
    let candidates: Vec<String> = if program.contains('/') {
        vec![program.to_string()]
    } else {
        path_env
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
            .collect()
    };
    for c in &candidates {
        let rel = resolve(view, c)?;
        let kind = view.kind(&rel).map_err(|source| ElfError::Io {
            path: view.display(&rel),
            source,
        })?;
        if kind == Some(EntryKind::File) {
            return Ok(rel);
        }
    }
    Err(ElfError::NotFound {
        program: program.to_string(),
        searched: candidates.join(", "),
    })
}

/// Resolves `path` as a process chrooted at the root would: `..` stops at the root and absolute
/// link targets start again from it. A missing component ends resolution (the caller then
/// finds nothing there).
pub fn resolve<V: RootView + ?Sized>(view: &V, path: &str) -> Result<PathBuf, ElfError> {
    let mut pending: Vec<PathBuf> = Path::new(path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    let mut current = PathBuf::new();
    let mut hops = 0;
    while let Some(next) = pending.pop() {
        if next == Path::new("..") {
            current.pop();
            continue;
        }
        let candidate = current.join(&next);
        let kind = view.kind(&candidate).map_err(|source| ElfError::Io {
            path: view.display(&candidate),
            source,
        })?;
        match kind {
            Some(EntryKind::Symlink) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(ElfError::TooDeep(path.to_string()));
                }
                let target = view.read_link(&candidate).map_err(|source| ElfError::Io {
                    path: view.display(&candidate),
                    source,
                })?;
                if target.is_absolute() {
                    current = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(PathBuf::from(n)),
                        Component::ParentDir => pending.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            Some(_) => current = candidate,
            None => {
                current = candidate;
                while let Some(rest) = pending.pop() {
                    current.push(rest);
                }
            }
        }
    }
    Ok(current)
}

/// The image's glibc version: the highest `GLIBC_x.y` its libc.so.6 defines.
fn image_glibc<V: RootView + ?Sized>(view: &V) -> Option<GlibcVersion> {
    LIBC_DIRS.iter().find_map(|dir| {
        let rel = resolve(view, &format!("{dir}/libc.so.6")).ok()?;
        if view.kind(&rel).ok()? != Some(EntryKind::File) {
            return None;
        }
        libc_version(&open_elf(view, &rel).ok()?)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_dir_root_never_lets_a_link_out() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/os-release"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc/os-release", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        let view = DirRoot::open(&root).unwrap();
        assert_eq!(
            view.kind(Path::new("abs")).unwrap(),
            Some(EntryKind::Symlink)
        );
        assert_eq!(view.kind(Path::new("etc")).unwrap(), Some(EntryKind::Dir));
        assert_eq!(view.kind(Path::new("nope/x")).unwrap(), None);
        assert_eq!(
            view.read_link(Path::new("abs")).unwrap(),
            Path::new("/etc/os-release")
        );
        // Opened as the container would: the root's file, not the host's.
        let read = |p: &str| std::io::read_to_string(view.open(Path::new(p)).unwrap()).unwrap();
        assert_eq!(read("abs"), "inside");
        assert_eq!(read("etc/up/etc/os-release"), "inside");
        assert_eq!(view.display(Path::new("abs")), root.join("abs"));
    }

    /// A root held in memory: files are copies of host files, links are targets.
    #[derive(Default)]
    struct MemRoot {
        entries: BTreeMap<PathBuf, (EntryKind, PathBuf)>,
    }

    impl MemRoot {
        fn dir(mut self, p: &str) -> Self {
            self.entries
                .insert(p.into(), (EntryKind::Dir, PathBuf::new()));
            self
        }
        fn file(mut self, p: &str, host: &str) -> Self {
            self.entries
                .insert(p.into(), (EntryKind::File, host.into()));
            self
        }
        fn link(mut self, p: &str, target: &str) -> Self {
            self.entries
                .insert(p.into(), (EntryKind::Symlink, target.into()));
            self
        }
    }

    impl RootView for MemRoot {
        fn kind(&self, rel: &Path) -> io::Result<Option<EntryKind>> {
            Ok(self.entries.get(rel).map(|e| e.0))
        }
        fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
            match self.entries.get(rel) {
                Some((EntryKind::Symlink, t)) => Ok(t.clone()),
                _ => Err(io::Error::from(io::ErrorKind::InvalidInput)),
            }
        }
        fn open(&self, rel: &Path) -> io::Result<File> {
            match self.entries.get(rel) {
                Some((EntryKind::File, host)) => File::open(host),
                _ => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
        fn display(&self, rel: &Path) -> PathBuf {
            Path::new("/").join(rel)
        }
    }

    #[test]
    fn a_view_that_is_not_a_directory_is_inspected_alike() {
        let root = MemRoot::default()
            .dir("usr")
            .dir("usr/bin")
            .link("bin", "usr/bin")
            .file("usr/bin/python3.11", "/usr/bin/python3")
            .link("usr/bin/python3", "/usr/bin/python3.11")
            .file("usr/bin/busybox", "/bin/busybox")
            .link("usr/bin/sh", "../../../../usr/bin/busybox")
            .dir("lib")
            .file("lib/libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6");
        match inspect(&root, "python3", Some("/bin")).unwrap() {
            Coverage::Glibc { glibc: Some(v), .. } => assert!(v >= GLIBC_FLOOR),
            other => panic!("expected glibc with a version, got {other:?}"),
        }
        assert_eq!(inspect(&root, "/bin/sh", None).unwrap(), Coverage::Static);
        match inspect(&root, "/bin/none", None) {
            Err(ElfError::NotFound { program, .. }) => assert_eq!(program, "/bin/none"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            resolve(&root, "/bin/../bin/./python3").unwrap(),
            Path::new("usr/bin/python3.11")
        );
    }
}
