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

/// What a walk inside a root does: `..` stops at the root and absolute symlinks start again
/// from it (as for a process chrooted there), and magic links (`/proc/*/fd/*`) are refused.
pub const RESOLVE_IN_ROOT: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// How often an `EAGAIN` from `openat2` is retried. The kernel answers it when a rename or
/// mount elsewhere raced the lookup and it could not prove the walk stayed beneath the root;
/// a retry almost always succeeds.
const EAGAIN_TRIES: u32 = 8;

/// `openat2(dir, path, flags | O_CLOEXEC, mode, RESOLVE_BENEATH …)`, retried on `EAGAIN`.
/// For files a pod controls under a directory of the agent's: nothing in them is followed.
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
    openat2_retried(dir.as_fd(), path, flags, mode, RESOLVE_BENEATH)
}

/// `openat2(root, path, flags | O_CLOEXEC, mode, RESOLVE_IN_ROOT …)`, retried on `EAGAIN`.
/// For paths inside a container's root file system (`/proc/<pid>/root`, an image), resolved
/// as the container would resolve them, by the kernel: a symlink cannot lead out of it.
pub fn openat2_in_root(
    root: impl AsFd,
    path: impl rustix::path::Arg + Copy,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    openat2_retried(root.as_fd(), path, flags, mode, RESOLVE_IN_ROOT)
}

fn openat2_retried(
    dir: std::os::fd::BorrowedFd<'_>,
    path: impl rustix::path::Arg + Copy,
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
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

    #[test]
    fn in_root_resolves_like_a_chroot() {
        let t = tempfile::tempdir().unwrap();
        let root_path = t.path().join("root");
        std::fs::create_dir_all(root_path.join("etc")).unwrap();
        std::fs::write(root_path.join("etc/hostname"), "inside").unwrap();
        std::fs::write(t.path().join("hostname"), "outside").unwrap();
        // An absolute link and one climbing out both land inside the root.
        std::os::unix::fs::symlink("/etc/hostname", root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../hostname", root_path.join("etc/up")).unwrap();
        let root =
            rustix::fs::open(&root_path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let read = |p: &str| {
            let fd = openat2_in_root(&root, p, OFlags::RDONLY, Mode::empty()).unwrap();
            std::io::read_to_string(std::fs::File::from(fd)).unwrap()
        };
        assert_eq!(read("abs"), "inside");
        assert_eq!(read("/../../etc/hostname"), "inside");
        assert_eq!(
            openat2_in_root(&root, "etc/up", OFlags::RDONLY, Mode::empty()).unwrap_err(),
            Errno::NOENT,
            "../../../hostname from /etc is /hostname of the root, which does not exist"
        );
    }
}
