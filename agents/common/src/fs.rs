//! Opening paths beneath a directory fd, the one way every agent crate does it.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// What a walk beneath a root refuses, by the kernel rather than by string checks: `..` or an
/// absolute path leaving the directory, a symlink at any level (one planted by a pod would
/// otherwise redirect the agent), a magic link (`/proc/*/fd/*`), and another mount (a bind
/// mount of the same file system included).
pub const RESOLVE_BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// How often an `EAGAIN` from `openat2` is retried. The kernel answers it when a rename or
/// mount elsewhere raced the lookup and it could not prove the walk stayed beneath the root;
/// a retry almost always succeeds.
const EAGAIN_TRIES: u32 = 8;

/// `openat2(dir, path, flags | O_CLOEXEC, mode, RESOLVE_BENEATH …)`, retried on `EAGAIN`.
///
/// `O_NOFOLLOW` is not needed: `RESOLVE_NO_SYMLINKS` reports every symlink, the last
/// component included, as `ELOOP` (and with `O_DIRECTORY`, `O_NOFOLLOW` would turn a final
/// symlink into `ENOTDIR` instead). A mount point on the way is `EXDEV`.
pub fn openat2_beneath(
    dir: impl AsFd,
    path: impl rustix::path::Arg + Copy,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir.as_fd(),
            path,
            flags | OFlags::CLOEXEC,
            mode,
            RESOLVE_BENEATH,
        ) {
            Err(Errno::AGAIN) if tries < EAGAIN_TRIES => tries += 1,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_dotdot_absolute_and_symlinks_and_opens_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let root_path = t.path().join("root");
        std::fs::create_dir_all(root_path.join("a/b")).unwrap();
        std::fs::write(root_path.join("a/b/f"), "x").unwrap();
        std::fs::write(t.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink("b", root_path.join("a/link")).unwrap();
        let root = rustix::fs::open(
            &root_path,
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
        openat2_beneath(&root, "a/b/f", OFlags::RDONLY, Mode::empty()).unwrap();
        for bad in ["../secret", "/etc/hostname", "a/link/f", "a/../../secret"] {
            let e = openat2_beneath(&root, bad, OFlags::RDONLY, Mode::empty()).unwrap_err();
            assert!(matches!(e, Errno::XDEV | Errno::LOOP), "{bad}: {e:?}");
        }
    }
}
