//! What the faketime suites share of the agent's API: an `[api]` section that lets uid 0 use
//! FakeTime in namespace `clock` only, and `berthctl faketime` calls over its socket.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::testbed::binary;

/// The agent's `[api]` under `work`: a root-only unix socket (`api.sock`); uid 0 may use
/// FakeTime in namespace `clock` only, so a call for another namespace is denied (and
/// audited to `audit.jsonl`).
pub fn clock_api_section(work: &Path) -> String {
    let policy = work.join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.clock]\nmethods = [\"berth.v1.FakeTime/*\"]\nnamespaces = [\"clock\"]\n\
         [[bindings]]\nrole = \"clock\"\nidentities = [\"unix:uid:0\"]\n",
    )
    .unwrap();
    format!(
        "[api]\nunix_socket = {:?}\npolicy = {:?}\n[api.audit]\npath = {:?}\n",
        work.join("api.sock"),
        policy,
        work.join("audit.jsonl"),
    )
}

/// `berthctl --endpoint unix://<socket> -o json faketime <args>`: (exit ok, stdout+stderr).
pub fn berthctl_faketime(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(binary("berthctl"))
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .args(["-o", "json", "faketime"])
        .args(args)
        .env_remove("BERTH_ENDPOINT")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The containers `berthctl faketime …` reports; the call must succeed.
pub fn berthctl_faketime_json(socket: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let (ok, text) = berthctl_faketime(socket, args);
    assert!(ok, "berthctl faketime {args:?} failed: {text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["containers"].as_array().cloned().unwrap_or_default()
}
