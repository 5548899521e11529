//! Pre-registered plugins: the runtime starts the plugin itself.
//!
//! A runtime can start plugins it finds in its plugin dir (containerd: NRI `plugin_path`,
//! default `/opt/nri/plugins`; the file name is `<idx>-<name>`, e.g. `10-berth`). It then
//! connects the plugin through an inherited socket instead of the NRI socket, and tells it
//! who it is through the environment:
//!
//! - `NRI_PLUGIN_SOCKET`: the number of the inherited fd (containerd passes `3`),
//! - `NRI_PLUGIN_NAME`, `NRI_PLUGIN_IDX`: the name and index taken from the file name.
//!
//! Such a plugin still registers over that connection, but the runtime owns its lifetime:
//! when the connection closes the plugin must exit, not reconnect (the runtime starts it
//! again when the runtime itself starts again). The runtime also clears the rest of the
//! environment (no `PATH`, no `HOME`) and connects neither stdout nor stderr.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;

use crate::error::Error;

/// The fd of the connection the runtime passed.
pub const SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";
/// The plugin name the runtime derived from the file name.
pub const NAME_ENV: &str = "NRI_PLUGIN_NAME";
/// The plugin index the runtime derived from the file name.
pub const IDX_ENV: &str = "NRI_PLUGIN_IDX";

/// What the runtime told a plugin it started (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchVars {
    pub fd: RawFd,
    /// Empty when the runtime did not set it.
    pub name: String,
    /// Empty when the runtime did not set it.
    pub index: String,
}

impl LaunchVars {
    /// Reads the variables through `var`; `Ok(None)` when `NRI_PLUGIN_SOCKET` is unset or
    /// empty (the plugin was not started by a runtime: connect to the NRI socket instead).
    pub fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Option<LaunchVars>, Error> {
        let Some(raw) = var(SOCKET_ENV).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let fd: RawFd = raw
            .trim()
            .parse()
            .ok()
            .filter(|fd| *fd >= 0)
            .ok_or_else(|| {
                Error::Options(format!(
                    "{SOCKET_ENV}={raw:?} is not a file descriptor number; a runtime that starts \
                 plugins sets it (containerd: \"3\"), unset it to connect to the NRI socket"
                ))
            })?;
        Ok(Some(LaunchVars {
            fd,
            name: var(NAME_ENV).unwrap_or_default(),
            index: var(IDX_ENV).unwrap_or_default(),
        }))
    }

    /// Like [`LaunchVars::parse`] on the process environment.
    pub fn from_env() -> Result<Option<LaunchVars>, Error> {
        Self::parse(|k| std::env::var(k).ok())
    }

    /// Takes ownership of the inherited socket. The fd is checked to be an open socket first,
    /// and replaced by a close-on-exec duplicate, so processes the plugin starts do not hold
    /// the runtime's connection open.
    ///
    /// Call it once per process: the original fd is closed.
    pub fn take_socket(&self) -> Result<UnixStream, Error> {
        let proc_path = format!("/proc/self/fd/{}", self.fd);
        let meta = std::fs::metadata(&proc_path).map_err(|source| Error::Inherited {
            fd: self.fd,
            problem: "is not open".into(),
            source: Some(source),
        })?;
        if !meta.file_type().is_socket() {
            return Err(Error::Inherited {
                fd: self.fd,
                problem: "is not a socket".into(),
                source: None,
            });
        }
        // SAFETY: the fd is open (checked above) and nothing else in this process owns it:
        // the runtime passed it for the plugin alone, and this is the only place it is taken.
        let inherited = unsafe { OwnedFd::from_raw_fd(self.fd) };
        // F_DUPFD_CLOEXEC; dropping `inherited` closes the fd the runtime passed.
        let fd = inherited.try_clone().map_err(|source| Error::Inherited {
            fd: self.fd,
            problem: "cannot be duplicated".into(),
            source: Some(source),
        })?;
        drop(inherited);
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(true)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_socket_variable_means_not_launched() {
        assert_eq!(LaunchVars::parse(vars(&[])).unwrap(), None);
        assert_eq!(
            LaunchVars::parse(vars(&[(SOCKET_ENV, ""), (NAME_ENV, "berth")])).unwrap(),
            None
        );
    }

    #[test]
    fn launched_plugin_gets_fd_name_and_index() {
        let v = LaunchVars::parse(vars(&[
            (SOCKET_ENV, "3"),
            (NAME_ENV, "berth"),
            (IDX_ENV, "10"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            v,
            LaunchVars {
                fd: 3,
                name: "berth".into(),
                index: "10".into()
            }
        );
    }

    #[test]
    fn a_socket_variable_that_is_not_an_fd_is_an_error() {
        for bad in ["three", "-1", "3x", "99999999999"] {
            match LaunchVars::parse(vars(&[(SOCKET_ENV, bad)])) {
                Err(Error::Options(m)) => assert!(m.contains(SOCKET_ENV), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn take_socket_refuses_closed_fds_and_non_sockets() {
        // A high fd number nobody opened.
        let closed = LaunchVars {
            fd: 1_000_000,
            name: String::new(),
            index: String::new(),
        };
        assert!(
            matches!(closed.take_socket(), Err(Error::Inherited { problem, .. }) if problem == "is not open")
        );
        let file = tempfile::tempfile().unwrap();
        let not_socket = LaunchVars {
            fd: std::os::fd::AsRawFd::as_raw_fd(&file),
            name: String::new(),
            index: String::new(),
        };
        assert!(
            matches!(not_socket.take_socket(), Err(Error::Inherited { problem, .. }) if problem == "is not a socket")
        );
        // The file is still ours (and still open): nothing was taken.
        assert!(file.metadata().is_ok());
    }

    #[test]
    fn take_socket_takes_a_socket_as_a_close_on_exec_duplicate() {
        use std::io::{Read, Write};
        use std::os::fd::IntoRawFd;
        let (ours, theirs) = UnixStream::pair().unwrap();
        let raw = theirs.into_raw_fd();
        let v = LaunchVars {
            fd: raw,
            name: String::new(),
            index: String::new(),
        };
        let mut taken = v.take_socket().unwrap();
        taken.set_nonblocking(false).unwrap();
        (&ours).write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        taken.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let dup = std::os::fd::AsRawFd::as_raw_fd(&taken);
        assert_ne!(dup, raw, "the plugin keeps a close-on-exec duplicate");
        let flags = std::fs::read_to_string(format!("/proc/self/fdinfo/{dup}")).unwrap();
        let flags = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        assert_ne!(flags & 0o2000000, 0, "O_CLOEXEC is set on the duplicate");
    }
}
