//! Running commands inside a pod's network namespace from the host side (`nsenter`), for
//! checks a test makes from outside the pod (links, routes, reachability).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The network namespace path of a running container's task.
pub fn netns_of_pid(pid: u32) -> String {
    format!("/proc/{pid}/ns/net")
}

/// Runs `cmd` inside the network namespace at `netns` and returns its stdout.
pub fn run_in(netns: &Path, cmd: &[&str]) -> Result<String> {
    let output = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(cmd)
        .output()
        .with_context(|| format!("nsenter {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} in {} failed: {}",
            netns.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
