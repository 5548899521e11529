//! The OCI runtime spec of a tools container: its own mount namespace and root filesystem
//! (the tools image), joined to the target's pid, network, ipc and uts namespaces by path.
//!
//! Because the pid namespace is the target's, the target's PID 1 is `1` inside the tools
//! container and its root filesystem is reachable as `/proc/1/root` (the kernel checks
//! ptrace access: only a profile with the target's uid or `CAP_SYS_PTRACE` gets in).

use serde_json::{Value, json};

use crate::profile::Security;

/// The namespaces a tools container joins, in the OCI spec's names, with their `/proc` names.
pub const JOINED_NAMESPACES: [(&str, &str); 4] = [
    ("pid", "pid"),
    ("network", "net"),
    ("ipc", "ipc"),
    ("uts", "uts"),
];

/// containerd's type URLs for specs carried in `google.protobuf.Any`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// Everything the spec depends on; built by the session manager, checked by unit tests.
#[derive(Clone, Debug)]
pub struct SpecInput {
    /// The target's host pid whose namespaces are joined.
    pub target_pid: u32,
    pub security: Security,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub terminal: bool,
    /// cgroupfs path (cgroup v1 `cgroupsPath`), e.g. `/berth-debug/<session>`.
    pub cgroups_path: String,
    pub pids_limit: i64,
    pub memory_limit_bytes: i64,
}

/// The process part of a spec (also what an exec runs).
pub fn process(
    security: &Security,
    args: &[String],
    env: &[String],
    cwd: &str,
    terminal: bool,
) -> Value {
    let caps: Vec<&str> = security.capabilities.clone();
    let none: Vec<&str> = Vec::new();
    let (inheritable, ambient) = if security.ambient {
        (&caps, &caps)
    } else {
        (&none, &none)
    };
    json!({
        "terminal": terminal,
        "user": {
            "uid": security.user.uid,
            "gid": security.user.gid,
            "additionalGids": [security.user.gid],
        },
        "args": args,
        "env": env,
        "cwd": cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": inheritable,
            "ambient": ambient,
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024u64, "soft": 1024u64}],
        "noNewPrivileges": security.no_new_privileges,
    })
}

/// The full runtime spec of a tools container.
pub fn runtime_spec(input: &SpecInput) -> Value {
    let mut namespaces: Vec<Value> = JOINED_NAMESPACES
        .iter()
        .map(|(oci, proc_name)| {
            json!({"type": oci, "path": format!("/proc/{}/ns/{}", input.target_pid, proc_name)})
        })
        .collect();
    // Its own mount namespace: the tools image is the root, never the target's or the host's.
    namespaces.push(json!({"type": "mount"}));
    json!({
        "ociVersion": "1.1.0",
        "process": process(&input.security, &input.args, &input.env, &input.cwd, input.terminal),
        "root": {"path": "rootfs", "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": input.cgroups_path,
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "pids": {"limit": input.pids_limit},
                "memory": {"limit": input.memory_limit_bytes},
            },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                "/sys/firmware", "/sys/devices/virtual/powercap",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
            "seccomp": seccomp(),
        },
    })
}

/// Syscalls a debug session never needs and that widen the kernel attack surface or let a
/// process leave the joined namespaces (EPERM). Everything else is allowed: debugging
/// needs `ptrace`, raw sockets and the like, which capabilities already gate.
pub const DENIED_SYSCALLS: [&str; 25] = [
    "acct",
    "add_key",
    "bpf",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "init_module",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "move_mount",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "reboot",
    "request_key",
    "setns",
    "swapoff",
    "swapon",
    "umount2",
    "unshare",
];

const CLONE_NEWUSER: u64 = 0x1000_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// A seccomp filter: allow by default, deny [`DENIED_SYSCALLS`], deny `clone` with
/// `CLONE_NEWUSER` (no new user namespace, where an unprivileged user would hold every
/// capability), and answer `clone3` with ENOSYS (its flags cannot be inspected, and libc
/// falls back to `clone`).
pub fn seccomp() -> Value {
    let architectures: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": [
            {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Profile, UserIds};

    fn input(profile: Profile) -> SpecInput {
        SpecInput {
            target_pid: 4242,
            security: profile.security(UserIds {
                uid: 65534,
                gid: 65534,
            }),
            args: vec!["/bin/sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            terminal: true,
            cgroups_path: "/berth-debug/s1".into(),
            pids_limit: 128,
            memory_limit_bytes: 256 << 20,
        }
    }

    #[test]
    fn joins_the_targets_namespaces_by_path_and_owns_only_its_mount_namespace() {
        let spec = runtime_spec(&input(Profile::General));
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        let by_type = |t: &str| ns.iter().find(|n| n["type"] == t).cloned();
        assert_eq!(by_type("pid").unwrap()["path"], "/proc/4242/ns/pid");
        assert_eq!(by_type("network").unwrap()["path"], "/proc/4242/ns/net");
        assert_eq!(by_type("ipc").unwrap()["path"], "/proc/4242/ns/ipc");
        assert_eq!(by_type("uts").unwrap()["path"], "/proc/4242/ns/uts");
        let mount = by_type("mount").unwrap();
        assert!(mount.get("path").is_none(), "mount namespace must be new");
        assert!(by_type("user").is_none() && by_type("cgroup").is_none());
        assert_eq!(ns.len(), 5);
        assert_eq!(spec["linux"]["cgroupsPath"], "/berth-debug/s1");
        assert_eq!(spec["linux"]["resources"]["pids"]["limit"], 128);
    }

    #[test]
    fn default_profile_has_no_capabilities_and_is_not_root() {
        let spec = runtime_spec(&input(Profile::General));
        let p = &spec["process"];
        assert_eq!(p["user"]["uid"], 65534);
        assert_eq!(p["user"]["gid"], 65534);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(
                p["capabilities"][set].as_array().unwrap().len(),
                0,
                "{set} must be empty: {}",
                p["capabilities"]
            );
        }
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["terminal"], true);
        // No device is allowed and no host path is mounted.
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        for m in spec["mounts"].as_array().unwrap() {
            assert_ne!(m["type"], "bind", "unexpected bind mount {m}");
        }
    }

    #[test]
    fn seccomp_denies_leaving_the_namespaces_and_new_user_namespaces() {
        let spec = runtime_spec(&input(Profile::Sysadmin));
        let sc = &spec["linux"]["seccomp"];
        assert_eq!(sc["defaultAction"], "SCMP_ACT_ALLOW");
        let rules = sc["syscalls"].as_array().unwrap();
        let denied = |name: &str| {
            rules
                .iter()
                .find(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
        };
        for name in ["unshare", "setns", "mount", "bpf", "keyctl", "init_module"] {
            let rule = denied(name).unwrap_or_else(|| panic!("{name} is allowed"));
            assert_eq!(rule["action"], "SCMP_ACT_ERRNO");
            assert!(rule.get("args").is_none(), "{name} must be denied outright");
        }
        assert_eq!(denied("clone3").unwrap()["errnoRet"], ENOSYS);
        let clone = denied("clone").unwrap();
        assert_eq!(clone["args"][0]["value"], CLONE_NEWUSER);
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        for allowed in ["ptrace", "socket", "execve", "clone"] {
            let rule = denied(allowed);
            assert!(
                rule.is_none() || rule.unwrap().get("args").is_some(),
                "{allowed} must stay usable"
            );
        }
        assert!(!sc["architectures"].as_array().unwrap().is_empty());
    }

    #[test]
    fn netadmin_raises_ambient_caps_and_sysadmin_is_root() {
        let net = runtime_spec(&input(Profile::Netadmin));
        let caps = &net["process"]["capabilities"];
        assert_eq!(caps["ambient"], json!(["CAP_NET_ADMIN", "CAP_NET_RAW"]));
        assert_eq!(caps["inheritable"], caps["ambient"]);
        assert_eq!(net["process"]["user"]["uid"], 65534);

        let sys = runtime_spec(&input(Profile::Sysadmin));
        assert_eq!(sys["process"]["user"]["uid"], 0);
        let eff: Vec<&str> = sys["process"]["capabilities"]["effective"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(eff.contains(&"CAP_SYS_PTRACE"));
        assert!(!eff.contains(&"CAP_SYS_ADMIN"));
        assert_eq!(
            sys["process"]["capabilities"]["ambient"]
                .as_array()
                .unwrap()
                .len(),
            0
        );
    }
}
