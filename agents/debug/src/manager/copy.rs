//! Files copied into and out of a target, resolved inside its root (see [`crate::fsroot`]),
//! with or without a session, and audited either way.

use std::path::PathBuf;
use std::time::SystemTime;

use super::{DebugManager, Target};
use crate::audit::{AuditEvent, Caller, CopyDirection};
use crate::error::Result;
use crate::fsroot::{FsError, Root};

/// A file copied out of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopiedFile {
    pub data: Vec<u8>,
    pub mode: u32,
    pub size: u64,
    pub sha256: String,
}

impl DebugManager {
    fn target_root(&self, id: &str) -> Result<(u32, PathBuf)> {
        let pid = self.handle(id, |h| h.info.lock().expect("info lock").target_pid)?;
        Ok((pid, PathBuf::from(format!("/proc/{pid}/root"))))
    }

    /// [`DebugManager::copy_out`] without a session: the target's root comes from its running
    /// task. Audited with the session `direct:<target>`.
    pub async fn copy_out_of(
        &self,
        target: &Target,
        path: &str,
        caller: &Caller,
    ) -> Result<CopiedFile> {
        let pid = self.resolve_pid(target).await?;
        let label = format!("direct:{}", target.describe());
        self.copy_out_at(
            &label,
            PathBuf::from(format!("/proc/{pid}/root")),
            path,
            caller,
        )
        .await
    }

    /// [`DebugManager::copy_in`] without a session (see [`DebugManager::copy_out_of`]).
    pub async fn copy_into(
        &self,
        target: &Target,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let pid = self.resolve_pid(target).await?;
        let label = format!("direct:{}", target.describe());
        self.copy_in_at(
            &label,
            PathBuf::from(format!("/proc/{pid}/root")),
            path,
            data,
            mode,
            caller,
        )
        .await
    }

    /// Reads a file from the target container's filesystem (resolved inside its root).
    pub async fn copy_out(&self, id: &str, path: &str, caller: &Caller) -> Result<CopiedFile> {
        let (_, root) = self.target_root(id)?;
        self.copy_out_at(id, root, path, caller).await
    }

    async fn copy_out_at(
        &self,
        id: &str,
        root: PathBuf,
        path: &str,
        caller: &Caller,
    ) -> Result<CopiedFile> {
        let limit = self.inner.config.copy_limit_bytes;
        let p = path.to_string();
        let got = tokio::task::spawn_blocking(move || Root::open(&root)?.read_file(&p, limit))
            .await
            .expect("copy task does not panic");
        self.audit_copy(
            id,
            caller,
            CopyDirection::Out,
            path,
            got.as_ref()
                .map(|f| (f.data.len() as u64, f.sha256.clone())),
        );
        let f = got?;
        Ok(CopiedFile {
            size: f.data.len() as u64,
            data: f.data,
            mode: f.mode,
            sha256: f.sha256,
        })
    }

    /// Writes a file into the target container's filesystem (resolved inside its root).
    pub async fn copy_in(
        &self,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let (_, root) = self.target_root(id)?;
        self.copy_in_at(id, root, path, data, mode, caller).await
    }

    async fn copy_in_at(
        &self,
        id: &str,
        root: PathBuf,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        caller: &Caller,
    ) -> Result<crate::fsroot::Written> {
        let limit = self.inner.config.copy_limit_bytes;
        let p = path.to_string();
        let got = tokio::task::spawn_blocking(move || {
            Root::open(&root)?.write_file(&p, &data, mode, limit)
        })
        .await
        .expect("copy task does not panic");
        self.audit_copy(
            id,
            caller,
            CopyDirection::In,
            path,
            got.as_ref().map(|w| (w.size, w.sha256.clone())),
        );
        Ok(got?)
    }

    fn audit_copy(
        &self,
        id: &str,
        caller: &Caller,
        direction: CopyDirection,
        path: &str,
        result: std::result::Result<(u64, String), &FsError>,
    ) {
        let event = match result {
            Ok((size, sha256)) => AuditEvent::FileCopy {
                session: id.to_string(),
                caller: caller.clone(),
                direction,
                path: path.to_string(),
                size,
                sha256,
            },
            Err(e) => AuditEvent::FileCopyFailed {
                session: id.to_string(),
                caller: caller.clone(),
                direction,
                path: path.to_string(),
                error: e.to_string(),
            },
        };
        self.inner.audit.record(SystemTime::now(), event);
    }
}
