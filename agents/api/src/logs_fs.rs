//! File access for the Logs service that cannot leave a pod's log directory.
//!
//! The directory is opened once (`O_DIRECTORY|O_NOFOLLOW`); everything below it is opened
//! relative to that fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so `..`, absolute paths, symlinks (planted by
//! the pod, which owns the directory) and other mounts are refused by the kernel, not by
//! string checks alone. Requests are also checked lexically first to give clear errors.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use berth_common::fs::openat2_beneath;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("invalid path {path:?}: {why}")]
    Invalid { path: String, why: &'static str },
    #[error(
        "path {0:?} leaves the log directory or crosses a symlink or mount, which the API never follows"
    )]
    Escape(String),
    #[error("{0:?} does not exist in the log directory")]
    NotFound(String),
    #[error("{0:?} is not a regular file")]
    NotRegular(String),
    #[error("i/o error on {path:?}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Lexical check of a client-supplied relative path.
pub fn validate_rel(path: &str) -> Result<(), PathError> {
    let invalid = |why| {
        Err(PathError::Invalid {
            path: path.to_string(),
            why,
        })
    };
    if path.is_empty() {
        return invalid("empty");
    }
    if path.len() > 4096 {
        return invalid("longer than 4096 bytes");
    }
    if path.contains('\0') {
        return invalid("contains NUL");
    }
    if path.starts_with('/') {
        return invalid("absolute paths are not allowed; give it relative to the log directory");
    }
    for c in path.split('/') {
        match c {
            "" => return invalid("empty path component"),
            "." | ".." => return invalid("'.' and '..' components are not allowed"),
            _ => {}
        }
    }
    Ok(())
}

/// Opens a pod log directory given by the backend. The last component must not be a symlink.
pub fn open_dir(path: &Path) -> Result<OwnedFd, PathError> {
    let p = path.display().to_string();
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| map_errno(e, &p))
}

fn map_errno(e: rustix::io::Errno, path: &str) -> PathError {
    use rustix::io::Errno;
    match e {
        Errno::XDEV | Errno::LOOP => PathError::Escape(path.to_string()),
        Errno::NOENT => PathError::NotFound(path.to_string()),
        Errno::NOTDIR => PathError::NotRegular(path.to_string()),
        other => PathError::Io {
            path: path.to_string(),
            source: other.into(),
        },
    }
}

/// Opens a regular file below `dir`.
pub fn open_file(dir: &OwnedFd, rel: &str) -> Result<File, PathError> {
    validate_rel(rel)?;
    let fd = openat2_beneath(
        dir,
        rel,
        // NONBLOCK: opening a FIFO planted by the pod must not hang the server.
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| map_errno(e, rel))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| map_errno(e, rel))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(PathError::NotRegular(rel.to_string()));
    }
    Ok(File::from(fd))
}

/// A regular file found by [`walk`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub modified_unix_ms: i64,
}

/// Regular files below `dir` (depth ≤ 16), sorted by path; symlinks, devices, FIFOs and
/// other mounts are skipped. Returns whether `max_entries` cut the listing short.
pub fn walk(dir: &OwnedFd, max_entries: usize) -> Result<(Vec<Entry>, bool), PathError> {
    let mut out = Vec::new();
    let mut truncated = false;
    walk_into(dir, "", 0, max_entries, &mut out, &mut truncated)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((out, truncated))
}

fn walk_into(
    dir: &OwnedFd,
    prefix: &str,
    depth: usize,
    max: usize,
    out: &mut Vec<Entry>,
    truncated: &mut bool,
) -> Result<(), PathError> {
    let here = if prefix.is_empty() { "." } else { prefix };
    let iter = rustix::fs::Dir::read_from(dir).map_err(|e| map_errno(e, here))?;
    for ent in iter {
        let ent = ent.map_err(|e| map_errno(e, here))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            continue; // not addressable through the API's string paths
        };
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(st) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue; // vanished meanwhile
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                if out.len() >= max {
                    *truncated = true;
                    return Ok(());
                }
                out.push(Entry {
                    path: rel,
                    size: st.st_size as u64,
                    modified_unix_ms: st.st_mtime * 1000 + (st.st_mtime_nsec / 1_000_000) as i64,
                });
            }
            FileType::Directory if depth < 16 => {
                let sub = openat2_beneath(
                    dir,
                    name,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                );
                // EXDEV: a mount point (never crossed); other errors: vanished or unreadable.
                if let Ok(sub) = sub {
                    walk_into(&sub, &rel, depth + 1, max, out, truncated)?;
                    if *truncated {
                        return Ok(());
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Size of the tar [`write_tar`] produces for these entries (short names).
pub fn tar_size(entries: &[Entry]) -> u64 {
    entries
        .iter()
        .map(|e| 512 + e.size.div_ceil(512) * 512)
        .sum::<u64>()
        + 1024
}

/// Writes the entries (as listed: a file that grew is cut, one that shrank is zero-padded)
/// under `prefix/` into a tar stream.
pub fn write_tar<W: Write>(
    dir: &OwnedFd,
    prefix: &str,
    entries: &[Entry],
    out: W,
) -> Result<W, PathError> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Deterministic);
    let io_err = |path: &str| {
        let path = path.to_string();
        move |source| PathError::Io { path, source }
    };
    for e in entries {
        let f = match open_file(dir, &e.path) {
            Ok(f) => f,
            // Removed (rotated away) since the walk: skip it, the archive stays valid.
            Err(PathError::NotFound(_)) => continue,
            Err(err) => return Err(err),
        };
        let mut h = tar::Header::new_gnu();
        h.set_size(e.size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime((e.modified_unix_ms.max(0) / 1000) as u64);
        let data = f.take(e.size).chain(io::repeat(0)).take(e.size);
        b.append_data(&mut h, format!("{prefix}/{}", e.path), data)
            .map_err(io_err(&e.path))?;
    }
    b.into_inner().map_err(io_err(prefix))
}

/// Byte offset where the last `n` lines of `f` start.
pub fn tail_offset(f: &mut File, n: u32) -> io::Result<u64> {
    let len = f.metadata()?.len();
    if n == 0 || len == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut newlines = 0u32;
    let mut buf = vec![0u8; 64 << 10];
    // A final newline ends the last line; it does not start a new one.
    let mut skip_last = true;
    while pos > 0 {
        let step = (pos).min(buf.len() as u64);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let chunk = &mut buf[..step as usize];
        f.read_exact(chunk)?;
        for i in (0..chunk.len()).rev() {
            if chunk[i] == b'\n' {
                if skip_last && pos + i as u64 == len - 1 {
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(pos + i as u64 + 1);
                }
            }
        }
        skip_last = false;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, OwnedFd) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("logs");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("app.log"), "a\nb\nc\n").unwrap();
        std::fs::write(d.join("sub/x.log"), "x").unwrap();
        std::fs::write(t.path().join("secret"), "host secret").unwrap();
        symlink(t.path().join("secret"), d.join("evil")).unwrap();
        symlink("../secret", d.join("sub/evil-rel")).unwrap();
        symlink(t.path(), d.join("evil-dir")).unwrap();
        symlink("app.log", d.join("inner-link")).unwrap();
        let fd = open_dir(&d).unwrap();
        (t, fd)
    }

    #[test]
    fn lexical_checks_name_the_problem() {
        for (p, why) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../secret", "'..'"),
            ("sub/../../secret", "'..'"),
            ("a//b", "empty path component"),
            ("./a", "'.'"),
        ] {
            match validate_rel(p) {
                Err(PathError::Invalid { why: w, .. }) => assert!(w.contains(why), "{p}: {w}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        validate_rel("sub/x.log").unwrap();
    }

    #[test]
    fn symlinks_never_followed_even_inside_the_dir() {
        let (_t, fd) = setup();
        let mut s = String::new();
        open_file(&fd, "app.log")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "a\nb\nc\n");
        for p in ["evil", "sub/evil-rel", "evil-dir/secret", "inner-link"] {
            match open_file(&fd, p) {
                Err(PathError::Escape(_)) => {}
                other => panic!("{p}: {other:?}"),
            }
        }
        assert!(matches!(
            open_file(&fd, "nope"),
            Err(PathError::NotFound(_))
        ));
        assert!(matches!(
            open_file(&fd, "sub"),
            Err(PathError::NotRegular(_))
        ));
    }

    #[test]
    fn kernel_refuses_dotdot_even_without_the_lexical_check() {
        let (_t, fd) = setup();
        let r = openat2_beneath(&fd, "../secret", OFlags::RDONLY, Mode::empty());
        assert_eq!(r.unwrap_err(), rustix::io::Errno::XDEV);
        let r = openat2_beneath(&fd, "/etc/hostname", OFlags::RDONLY, Mode::empty());
        assert_eq!(r.unwrap_err(), rustix::io::Errno::XDEV);
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let (t, fd) = setup();
        let fifo = t.path().join("logs/pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(matches!(
            open_file(&fd, "pipe"),
            Err(PathError::NotRegular(_))
        ));
    }

    #[test]
    fn walk_lists_regular_files_only_and_tar_holds_them() {
        let (_t, fd) = setup();
        let (entries, truncated) = walk(&fd, 100).unwrap();
        assert!(!truncated);
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["app.log", "sub/x.log"]);
        let (one, truncated) = walk(&fd, 1).unwrap();
        assert!(truncated);
        assert_eq!(one.len(), 1);

        let tar_bytes = write_tar(&fd, "app", &entries, Vec::new()).unwrap();
        assert_eq!(tar_bytes.len() as u64, tar_size(&entries));
        let mut a = tar::Archive::new(&tar_bytes[..]);
        let mut got = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            got.push((e.path().unwrap().display().to_string(), s));
        }
        assert_eq!(
            got,
            [
                ("app/app.log".to_string(), "a\nb\nc\n".to_string()),
                ("app/sub/x.log".to_string(), "x".to_string())
            ]
        );
    }

    #[test]
    fn tail_offsets() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        std::fs::write(&p, "l1\nl2\nl3\n").unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(tail_offset(&mut f, 1).unwrap(), 6);
        assert_eq!(tail_offset(&mut f, 2).unwrap(), 3);
        assert_eq!(tail_offset(&mut f, 3).unwrap(), 0);
        assert_eq!(tail_offset(&mut f, 10).unwrap(), 0);
        std::fs::write(&p, "l1\nl2\npartial").unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(tail_offset(&mut f, 1).unwrap(), 6);
    }
}
