//! Running another CNI plugin (a delegated IPAM plugin, or a chained one) the way a runtime does.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use serde_json::Value;

use crate::env::Command;
use crate::error::{CniError, ErrorCode};

/// The `CNI_*` variables for the delegated call.
#[derive(Clone, Debug, Default)]
pub struct DelegateEnv {
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: String,
    pub path: Vec<PathBuf>,
}

/// Finds `name` in `CNI_PATH`. A name with a `/` is refused: plugins are found, not pointed at.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if name.is_empty() || name.contains('/') {
        return Err(CniError::invalid_config(format!(
            "plugin type {name:?} is not a plain binary name"
        )));
    }
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::invalid_config(format!("plugin {name:?} not found in CNI_PATH")).with_details(
                format!(
                    "install it into one of: {}",
                    path.iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            )
        })
}

/// Runs `plugin` with `command`, `env` and `config` on stdin. Returns the JSON it printed (if
/// any) on success; its own error (code, message) when it failed with error JSON; code 5
/// otherwise.
pub fn exec_plugin(
    plugin: &Path,
    command: Command,
    env: &DelegateEnv,
    config: &[u8],
) -> Result<Option<Value>, CniError> {
    let path = env
        .path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut child = Process::new(plugin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &env.container_id)
        .env(
            "CNI_NETNS",
            env.netns
                .as_deref()
                .map(Path::as_os_str)
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &env.ifname)
        .env("CNI_ARGS", &env.args)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CniError::new(
                ErrorCode::Io,
                format!("cannot start plugin {}", plugin.display()),
            )
            .with_details(e.to_string())
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: its exit status tells.
        let _ = stdin.write_all(config);
    }
    let out = child.wait_with_output().map_err(|e| {
        CniError::new(
            ErrorCode::Io,
            format!("plugin {} did not finish", plugin.display()),
        )
        .with_details(e.to_string())
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&stdout).map(Some).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                format!(
                    "plugin {} printed something that is not JSON",
                    plugin.display()
                ),
            )
            .with_details(e.to_string())
        });
    }
    match serde_json::from_str::<CniError>(&stdout) {
        Ok(mut e) => {
            e.msg = format!("{}: {}", plugin.display(), e.msg);
            Err(e)
        }
        Err(_) => Err(CniError::new(
            ErrorCode::Io,
            format!("plugin {} failed ({})", plugin.display(), out.status),
        )
        .with_details(String::from_utf8_lossy(&out.stderr).trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-cni-spec-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_plugins_only_by_plain_name() {
        let d = tmpdir("find");
        script(&d, "ipam-x", "exit 0");
        assert_eq!(
            find_plugin("ipam-x", &[PathBuf::from("/nonexistent"), d.clone()]).unwrap(),
            d.join("ipam-x")
        );
        assert_eq!(
            find_plugin("nope", std::slice::from_ref(&d))
                .unwrap_err()
                .code,
            ErrorCode::InvalidConfig
        );
        assert_eq!(
            find_plugin("../ipam-x", std::slice::from_ref(&d))
                .unwrap_err()
                .code,
            ErrorCode::InvalidConfig
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn passes_env_and_stdin_and_reads_results_and_errors() {
        let d = tmpdir("exec");
        let ok = script(
            &d,
            "ok",
            r#"read cfg; echo "{\"cmd\":\"$CNI_COMMAND\",\"if\":\"$CNI_IFNAME\",\"args\":\"$CNI_ARGS\",\"in\":$cfg}""#,
        );
        let env = DelegateEnv {
            container_id: "c".into(),
            ifname: "eth1".into(),
            args: "A=1".into(),
            ..DelegateEnv::default()
        };
        let v = exec_plugin(&ok, Command::Add, &env, b"{\"x\":1}\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cmd": "ADD", "if": "eth1", "args": "A=1", "in": {"x": 1}})
        );
        let quiet = script(&d, "quiet", "cat >/dev/null");
        assert_eq!(
            exec_plugin(&quiet, Command::Del, &env, b"{}").unwrap(),
            None
        );
        let err = script(
            &d,
            "err",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"busy"}'; exit 1"#,
        );
        let e = exec_plugin(&err, Command::Add, &env, b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::TryAgainLater);
        assert!(e.msg.ends_with("busy"));
        let crash = script(&d, "crash", "echo boom >&2; exit 3");
        let e = exec_plugin(&crash, Command::Add, &env, b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::Io);
        assert_eq!(e.details.as_deref(), Some("boom"));
        std::fs::remove_dir_all(d).unwrap();
    }
}
