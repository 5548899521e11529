//! Shared helpers for the root tests: namespaces the test owns (removed on drop), running
//! plugin binaries inside a "node" namespace, and reading state back with iproute2.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{Value, json};

pub const BERTH: &str = env!("CARGO_BIN_EXE_berth-cni");

/// Fails (never skips) when the test cannot run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "needs root: run by scripts/test");
    for tool in ["/usr/sbin/ip", "/usr/bin/ping"] {
        assert!(
            Path::new(tool).exists() || Path::new(&tool.replace("/usr", "")).exists(),
            "needs {tool}"
        );
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (namespaces, networks, dirs).
pub fn tag(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id() % 100000,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command and panics with its stderr if it fails.
pub fn must(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace owned by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = tag(prefix);
        must(&["ip", "netns", "add", &name]);
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        must(&v)
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Link names in this namespace (without `@peer` suffixes).
    pub fn links(&self) -> Vec<String> {
        let out = self.ip(&["-o", "link", "show"]);
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    /// Pings `addr` from this namespace; up to three tries of one packet each.
    pub fn ping(&self, addr: &str) -> bool {
        (0..3).any(|_| {
            self.exec(&["ping", "-c", "1", "-W", "1", "-q", addr])
                .status
                .success()
        })
    }

    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            let _ = sh(&["ip", "netns", "del", &self.name]);
            self.name.clear();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(tag(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One CNI call's environment.
pub struct Call<'a> {
    pub verb: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
}

/// Runs `plugin` inside `node` with `conf` on stdin; returns the exit code and parsed stdout.
pub fn run_plugin(node: &Netns, plugin: &str, call: &Call<'_>, conf: &Value) -> (i32, Value) {
    let child = spawn_plugin(node, plugin, call, conf);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{plugin} printed {stdout:?}: {e}"))
    };
    (out.status.code().unwrap_or(-1), v)
}

pub fn spawn_plugin(
    node: &Netns,
    plugin: &str,
    call: &Call<'_>,
    conf: &Value,
) -> std::process::Child {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name, plugin])
        .env("CNI_COMMAND", call.verb)
        .env("CNI_CONTAINERID", call.container_id)
        .env(
            "CNI_NETNS",
            call.netns.map(|p| p.as_os_str()).unwrap_or_default(),
        )
        // STATUS and GC come without an attachment, as runtimes send them.
        .env(
            "CNI_IFNAME",
            if matches!(call.verb, "STATUS" | "GC") {
                ""
            } else {
                call.ifname
            },
        )
        .env("CNI_ARGS", "IgnoreUnknown=1")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    child
}

/// berth IPAM section with a local store under `dir`.
pub fn berth_ipam(dir: &Path, pools: Value) -> Value {
    json!({"store": {"type": "local", "dir": dir.join("ipam")}, "node": "node-1", "hold": "0s",
           "pools": pools})
}

/// The address berth IPAM still holds for the attachment (the first: IPv4 on dual-stack).
pub fn lease_of(ipam: &Value, network: &str, cid: &str, ifname: &str) -> Option<String> {
    leases_of(ipam, network, cid, ifname).into_iter().next()
}

/// Every address berth IPAM still holds for the attachment, IPv4 first.
pub fn leases_of(ipam: &Value, network: &str, cid: &str, ifname: &str) -> Vec<String> {
    let cfg = berth_ipam_core::IpamConfig::from_json(ipam).unwrap();
    let alloc = berth_ipam_core::open(&cfg).unwrap();
    alloc
        .lookup(network, cid, ifname)
        .unwrap()
        .iter()
        .map(|a| a.address.to_string())
        .collect()
}

/// Joins `a` (in its namespace) and `b` (in its namespace) with a veth pair.
pub fn veth_between(a: &Netns, a_name: &str, b: &Netns, b_name: &str) {
    must(&[
        "ip", "link", "add", a_name, "netns", &a.name, "type", "veth", "peer", "name", b_name,
        "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_name, "up"]);
    b.ip(&["link", "set", b_name, "up"]);
}
