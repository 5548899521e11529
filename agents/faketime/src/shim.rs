//! The embedded shim library, its installation on the host, and where it lives inside
//! containers.
//!
//! Inside every container that asks for faketime, berth mounts (both read-only):
//!
//! - the shim, a single file: host [`install_shim`] result → [`CONTAINER_SHIM_PATH`];
//! - the container's state *directory* (holding [`crate::file::TIMESTAMP_FILE_NAME`]) →
//!   [`CONTAINER_STATE_DIR`]. A directory, not the file: the timestamp file is replaced by
//!   rename, and a file bind mount would keep the old inode.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{Durability, atomic_write};

/// `libberth-faketime.so`, built by this crate's build script: x86_64, glibc ≥ 2.17, and no
/// `DT_NEEDED` but `libc.so.6`, so it loads into any glibc image, even one that holds nothing
/// but the loader and `libc.so.6`.
pub const SHIM: &[u8] = include_bytes!(env!("BERTH_FAKETIME_SHIM"));
/// The shim's file name, on the host and in containers.
pub const SHIM_FILE_NAME: &str = "libberth-faketime.so";
/// The second build earlier berth versions installed beside [`SHIM_FILE_NAME`] (for images
/// without `libdl.so.2`); [`install_shim`] removes it.
const OLD_LIBC_ONLY_FILE_NAME: &str = "libberth-faketime-libc.so";

/// Everything berth mounts for faketime lives under this directory in a container.
pub const CONTAINER_DIR: &str = "/.berth/faketime";
/// The shim inside a container.
pub const CONTAINER_SHIM_PATH: &str = "/.berth/faketime/libberth-faketime.so";
/// The container's state directory (read-only mount of a per-container host directory).
pub const CONTAINER_STATE_DIR: &str = "/.berth/faketime/state";
/// The timestamp file inside a container.
pub const CONTAINER_TIMESTAMP_FILE: &str = "/.berth/faketime/state/offset";

/// Errors of installing the shim on the host.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot create shim directory {path}: check that its parent is writable")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write shim {path}: check free space and permissions")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Writes [`SHIM`] to `dir/libberth-faketime.so` (creating `dir`), atomically and with mode
/// 0644, and returns its path. An identical file already there is left alone, so running
/// containers and repeated agent starts see one stable inode. A different file (an older
/// berth) is replaced by rename: containers that mounted it keep the old inode. The second
/// build older versions installed is removed the same way (mounted copies stay as they are).
pub fn install_shim(dir: &Path) -> Result<PathBuf, InstallError> {
    fs::create_dir_all(dir).map_err(|source| InstallError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(SHIM_FILE_NAME);
    let _ = fs::remove_file(dir.join(OLD_LIBC_ONLY_FILE_NAME));
    if let Ok(meta) = fs::symlink_metadata(&path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.is_file()
            && meta.len() == SHIM.len() as u64
            && meta.permissions().mode() & 0o7777 == 0o644
            && fs::read(&path).is_ok_and(|current| current == SHIM)
        {
            return Ok(path);
        }
    }
    atomic_write(&path, SHIM, 0o644, Durability::Synced).map_err(|source| InstallError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// A read-only bind mount the runtime must add to the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: &'static str,
    pub options: &'static [&'static str],
}

/// Mount options: read-only, and nothing that could be abused through the mount.
pub const MOUNT_OPTIONS: &[&str] = &["rbind", "ro", "nosuid", "nodev"];

/// The two mounts a faketime container needs: the shim (host path from [`install_shim`])
/// and its state directory (the host directory holding its timestamp file).
pub fn bind_mounts(host_shim: &Path, host_state_dir: &Path) -> [BindMount; 2] {
    [
        BindMount {
            source: host_shim.to_path_buf(),
            destination: CONTAINER_SHIM_PATH,
            options: MOUNT_OPTIONS,
        },
        BindMount {
            source: host_state_dir.to_path_buf(),
            destination: CONTAINER_STATE_DIR,
            options: MOUNT_OPTIONS,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn embedded_shim_is_an_x86_64_shared_object() {
        assert_eq!(&SHIM[..4], b"\x7fELF");
        assert_eq!(SHIM[4], 2, "64-bit");
        assert_eq!(u16::from_le_bytes([SHIM[16], SHIM[17]]), 3, "ET_DYN");
        assert_eq!(u16::from_le_bytes([SHIM[18], SHIM[19]]), 62, "EM_X86_64");
    }

    #[test]
    fn install_writes_0644_atomically_and_keeps_an_identical_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lib/berth");
        let path = install_shim(&dir).unwrap();
        assert_eq!(path, dir.join(SHIM_FILE_NAME));
        assert_eq!(fs::read(&path).unwrap(), SHIM);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        // identical: same inode, nothing rewritten
        let again = install_shim(&dir).unwrap();
        assert_eq!(fs::metadata(&again).unwrap().ino(), meta.ino());
        // different content (an older berth) is replaced by a new inode
        fs::write(&path, b"old").unwrap();
        install_shim(&dir).unwrap();
        let new = fs::metadata(&path).unwrap();
        assert_ne!(new.ino(), meta.ino());
        assert_eq!(fs::read(&path).unwrap(), SHIM);
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SHIM_FILE_NAME)]);
    }

    #[test]
    fn the_second_build_of_older_versions_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join(OLD_LIBC_ONLY_FILE_NAME), b"old").unwrap();
        install_shim(tmp.path()).unwrap();
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SHIM_FILE_NAME)]);
    }

    #[test]
    fn install_into_an_unusable_directory_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        match install_shim(&file.join("sub")) {
            Err(InstallError::CreateDir { path, .. }) => assert_eq!(path, file.join("sub")),
            other => panic!("expected CreateDir, got {other:?}"),
        }
    }

    #[test]
    fn mounts_are_read_only_and_mount_the_state_directory() {
        let [shim, state] = bind_mounts(Path::new("/h/shim.so"), Path::new("/run/b/c1"));
        assert_eq!(shim.destination, CONTAINER_SHIM_PATH);
        assert_eq!(state.source, Path::new("/run/b/c1"));
        assert_eq!(state.destination, CONTAINER_STATE_DIR);
        assert!(shim.options.contains(&"ro") && state.options.contains(&"ro"));
        assert_eq!(
            Path::new(CONTAINER_STATE_DIR).join(crate::file::TIMESTAMP_FILE_NAME),
            Path::new(CONTAINER_TIMESTAMP_FILE)
        );
    }
}
