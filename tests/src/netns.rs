//! Running commands inside a pod's network namespace from the host side (`nsenter`), for
//! checks a test makes from outside the pod (links, routes, reachability).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// `ip -o -d link show` of the host: every link with its details (a veth's alias names its
/// attachment), for checks that a pod's host end is gone.
pub fn host_links() -> String {
    let o = Command::new("ip")
        .args(["-o", "-d", "link", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

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
