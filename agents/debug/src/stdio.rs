//! Stdio over FIFOs, as containerd's `cio` does: the agent makes the FIFOs, opens its ends,
//! and hands the paths to the shim, which opens the other ends.
//!
//! The agent opens stdout/stderr read-only and non-blocking *before* the shim opens them for
//! writing: Linux reports neither data nor hangup on a FIFO that never had a writer, so the
//! reader waits instead of seeing a false EOF, and sees the real EOF when the shim closes.
//! stdin is opened read-write so the open never blocks or fails for lack of a reader.

use std::path::{Path, PathBuf};

use rustix::fs::Mode;
use tokio::net::unix::pipe;

use crate::error::{Error, Result};

/// The FIFO paths of one process, in a private directory.
#[derive(Debug)]
pub(crate) struct Fifos {
    pub dir: PathBuf,
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: Option<PathBuf>,
}

/// The agent's ends.
pub(crate) struct Ends {
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: Option<pipe::Receiver>,
}

impl Fifos {
    /// Creates `dir` (mode 0700) and the FIFOs (mode 0600) in it.
    pub fn create(dir: &Path, stdin: bool, stderr: bool) -> Result<Fifos> {
        let err = |source: std::io::Error| Error::Stdio {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir.parent().unwrap_or(Path::new("/"))).map_err(err)?;
        std::fs::create_dir(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(err)?;
        let make = |name: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            rustix::fs::mkfifoat(rustix::fs::CWD, &path, Mode::from_raw_mode(0o600))
                .map_err(|e| err(e.into()))?;
            Ok(path)
        };
        Ok(Fifos {
            dir: dir.to_path_buf(),
            stdin: if stdin { Some(make("stdin")?) } else { None },
            stdout: make("stdout")?,
            stderr: if stderr { Some(make("stderr")?) } else { None },
        })
    }

    pub fn open(&self) -> Result<Ends> {
        let err = |source: std::io::Error| Error::Stdio {
            path: self.dir.clone(),
            source,
        };
        let stdin = match &self.stdin {
            Some(p) => Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(p)
                    .map_err(err)?,
            ),
            None => None,
        };
        let stdout = pipe::OpenOptions::new()
            .open_receiver(&self.stdout)
            .map_err(err)?;
        let stderr = match &self.stderr {
            Some(p) => Some(pipe::OpenOptions::new().open_receiver(p).map_err(err)?),
            None => None,
        };
        Ok(Ends {
            stdin,
            stdout,
            stderr,
        })
    }

    pub fn path_str(p: &Option<PathBuf>) -> String {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }

    /// Removes the directory and its FIFOs (idempotent).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reader_waits_for_a_late_writer_and_sees_eof_when_it_closes() {
        let tmp = tempfile::tempdir().unwrap();
        let fifos = Fifos::create(&tmp.path().join("p"), true, true).unwrap();
        let mut ends = fifos.open().unwrap();
        let path = fifos.stdout.clone();
        // The "shim" opens its write end only later.
        let writer = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut w = pipe::OpenOptions::new().open_sender(&path).unwrap();
            w.write_all(b"hello").await.unwrap();
        });
        let mut got = Vec::new();
        ends.stdout.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got, b"hello", "no false EOF before the writer came");

        // stdin: our write end opened before any reader; a late reader gets the bytes.
        let mut stdin = ends.stdin.take().unwrap();
        stdin.write_all(b"typed").await.unwrap();
        let mut r = std::fs::File::open(fifos.stdin.as_ref().unwrap()).unwrap();
        let mut buf = [0u8; 5];
        std::io::Read::read_exact(&mut r, &mut buf).unwrap();
        assert_eq!(&buf, b"typed");

        fifos.remove().unwrap();
        assert!(!fifos.dir.exists());
        fifos.remove().unwrap();
    }
}
