//! Shipping berth: the Kubernetes manifests in `deploy/` validate (and a broken copy does
//! not), and the image `scripts/image` builds imports into a real containerd node, where its
//! binaries run through CRI and the DaemonSet's own init step installs the CNI plugin.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use berth_e2e::testbed::{Node, NodeOptions, binary, require_root, workspace_root};
use berth_e2e::{ContainerSpec, CriClient, PodSpec};
use serde_json::Value;

const IMAGE: &str = "berth.local/berth:0.1.0";

/// A scratch directory removed on drop, even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = workspace_root()
            .join(".run/test-deploy")
            .join(format!("{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // The shared parent goes when this was the last scratch dir in it.
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs scripts/validate-manifests on `files` (all of deploy/ when empty) with the debug
/// binaries scripts/test built.
fn validate(files: &[PathBuf]) -> Output {
    let bin_dir = binary("berth-agent")
        .parent()
        .expect("binary has a dir")
        .to_path_buf();
    binary("berth-cni");
    Command::new(workspace_root().join("scripts/validate-manifests"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .args(files)
        .output()
        .expect("scripts/validate-manifests runs")
}

fn deploy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("deploy"))
        .expect("deploy/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "deploy/ lost manifests: {files:?} (namespace, configmap, daemonset, secrets)"
    );
    files
}

/// A copy of deploy/ in `dir` with `file` edited by `edit`; panics when the edit changes nothing
/// (so a manifest that drifted cannot turn a negative case into a vacuous one).
fn broken_copy(dir: &Path, file: &str, edit: impl Fn(&str) -> String) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in deploy_files() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let original = std::fs::read_to_string(&f).unwrap();
        let content = if name == file {
            let edited = edit(&original);
            assert_ne!(edited, original, "the edit of {file} changed nothing");
            edited
        } else {
            original
        };
        let target = dir.join(&name);
        std::fs::write(&target, content).unwrap();
        out.push(target);
    }
    out
}

#[test]
#[ignore = "needs root and the test bed: run by scripts/test"]
fn manifests_validate_and_broken_copies_fail_with_the_reason() {
    require_root();
    let ok = validate(&[]);
    let out = text(&ok);
    assert!(ok.status.success(), "deploy/ does not validate:\n{out}");
    for expected in [
        "passed for resource daemonset/berth-agent against version 1.29",
        "passed for resource configmap/berth-agent against version 1.37",
        "key agent.toml: berth-agent --check-config accepts it",
        "key 10-berth.conflist: berth-cni plugin 0 config and IPAM accepted",
        "store.tls.key /etc/berth/etcd/tls.key installed by install-cni from Secret berth-etcd-client",
        "key policy.toml: 3 roles, 3 bindings, methods match proto/",
        "all manifests valid",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }

    let scratch = TempDir::new("broken");
    // Each case: which file, how it is broken, what the validator must say.
    type Edit = fn(&str) -> String;
    let cases: [(&str, &str, Edit, &str); 14] = [
        (
            "schema: a misspelled pod field",
            "daemonset.yaml",
            |s| s.replacen("hostPID: true", "hostPid: true", 1),
            "'hostPid' was unexpected",
        ),
        (
            "schema: an unknown kind",
            "namespace.yaml",
            |s| s.replacen("kind: Namespace", "kind: Namespaces", 1),
            "Couldn't find schema for kind Namespaces",
        ),
        (
            "rule: a volume mount without a volume",
            "daemonset.yaml",
            |s| {
                s.replacen(
                    "{name: state, mountPath: /var/lib/berth}",
                    "{name: stat, mountPath: /var/lib/berth}",
                    1,
                )
            },
            "volumeMount 'stat' has no volume",
        ),
        (
            "rule: the agent's state dir not at its host path",
            "daemonset.yaml",
            |s| {
                s.replacen(
                    "{name: state, mountPath: /var/lib/berth}",
                    "{name: state, mountPath: /state}",
                    1,
                )
            },
            "state_dir = '/var/lib/berth/agent' is not on a hostPath volume",
        ),
        (
            "rule: the log root without mount propagation",
            "daemonset.yaml",
            |s| s.replacen(", mountPropagation: HostToContainer}", "}", 1),
            "needs mountPropagation HostToContainer",
        ),
        (
            "rule: faketime's containerd socket not mounted",
            "daemonset.yaml",
            |s| {
                s.replacen(
                    "            - {name: containerd, mountPath: /run/containerd}\n",
                    "",
                    1,
                )
            },
            "faketime.containerd_address = '/run/containerd/containerd.sock' is not on a hostPath volume",
        ),
        (
            "rule: faketime without the host's pid namespace",
            "daemonset.yaml",
            |s| s.replacen("      hostPID: true\n", "", 1),
            "faketime needs hostPID",
        ),
        (
            "code: a key berth-agent does not know",
            "configmap.yaml",
            |s| {
                s.replacen(
                    "    [cleanup]\n",
                    "    [cleanup]\n    retension = \"2d\"\n",
                    1,
                )
            },
            "berth-agent --check-config refused it",
        ),
        (
            "code: a typo in the conflist's IPAM pools",
            "configmap.yaml",
            |s| {
                s.replacen(
                    "\"gateway\": \"192.168.12.1\"",
                    "\"gatway\": \"192.168.12.1\"",
                    1,
                )
            },
            "unknown field `gatway`",
        ),
        (
            "rule: the conflist's etcd CA is a file nothing installs",
            "configmap.yaml",
            |s| s.replacen("\"/etc/berth/etcd/ca.crt\"", "\"/srv/etcd/ca.crt\"", 1),
            "store.tls.ca = '/srv/etcd/ca.crt': no init container mounts the host dir of this file",
        ),
        (
            "rule: the etcd client Secret lacks a file the conflist names",
            "secrets.example.yaml",
            |s| {
                s.replacen(
                    "  tls.key: |\n    -----BEGIN PRIVATE KEY-----\n    REPLACE with the client",
                    "  client.key: |\n    -----BEGIN PRIVATE KEY-----\n    REPLACE with the client",
                    1,
                )
            },
            "Secret berth-etcd-client (installed by install-cni) has no key 'tls.key'",
        ),
        (
            "rule: the init step does not mount the etcd client Secret",
            "daemonset.yaml",
            |s| {
                s.replacen(
                    "            - {name: etcd-client, mountPath: /etc/berth/etcd-client, readOnly: true}\n",
                    "",
                    1,
                )
            },
            "init container install-cni installs no Secret",
        ),
        (
            "code: store.tls with an http:// endpoint",
            "configmap.yaml",
            |s| {
                s.replacen("\"https://192.0.2.10:2379\", \"https://192.0.2.11:2379\", \"https://192.0.2.12:2379\"", "\"http://192.0.2.10:2379\"", 1)
            },
            "is http://: write it as https://",
        ),
        (
            "policy: a method pattern that matches no RPC",
            "secrets.example.yaml",
            |s| s.replacen("\"berth.v1.Logs/*\"", "\"berth.v1.Log/*\"", 1),
            "method pattern 'berth.v1.Log/*' matches no RPC",
        ),
    ];
    for (i, (what, file, edit, reason)) in cases.iter().enumerate() {
        let dir = scratch.0.join(format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let files = broken_copy(&dir, file, edit);
        let bad = validate(&files);
        let out = text(&bad);
        assert!(
            !bad.status.success(),
            "{what}: the validator accepted it:\n{out}"
        );
        assert!(
            out.contains(reason),
            "{what}: expected {reason:?} in:\n{out}"
        );
        assert!(
            !out.contains("all manifests valid"),
            "{what}: reported valid:\n{out}"
        );
    }
}

/// The DaemonSet's init script and the ConfigMap's conflist and node.toml, read with the
/// validator's Python (PyYAML), which scripts/validate-manifests installed.
fn manifest_parts() -> (String, String, String) {
    let ok = Command::new(workspace_root().join("scripts/validate-manifests"))
        .arg("--schema-only")
        .output()
        .unwrap();
    assert!(ok.status.success(), "manifests invalid:\n{}", text(&ok));
    let py = workspace_root().join(".cache/manifests-venv/bin/python");
    let out = Command::new(py)
        .current_dir(workspace_root())
        .args([
            "-c",
            r#"
import json, yaml
ds = yaml.safe_load(open("deploy/daemonset.yaml"))
init = ds["spec"]["template"]["spec"]["initContainers"][0]
assert init["command"][:2] == ["/bin/sh", "-ec"], init["command"]
cm = yaml.safe_load(open("deploy/configmap.yaml"))["data"]
print(json.dumps([init["command"][2], cm["10-berth.conflist"], cm["node.toml"]]))
"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "reading manifests: {}", text(&out));
    let parts: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    (parts[0].clone(), parts[1].clone(), parts[2].clone())
}

async fn sh(cri: &mut CriClient, c: &str, script: &str, args: &[&str]) -> String {
    let mut cmd = vec!["/bin/sh", "-ec", script, "sh"];
    cmd.extend_from_slice(args);
    cri.exec(c, &cmd, Duration::from_secs(20))
        .await
        .unwrap()
        .ok()
        .unwrap_or_else(|e| panic!("{script}: {e:#}"))
}

fn supported_versions(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("CNI VERSION output {json:?}: {e}"));
    v["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("no supportedVersions in {json}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn berth_image_imports_and_runs_its_binaries_and_init_step_through_cri() {
    require_root();
    for b in ["berth-agent", "berth-cni", "berth-ipam", "berthctl"] {
        binary(b);
    }
    let (init_script, conflist, node_toml) = manifest_parts();
    let node = Node::start("deploy-image", NodeOptions::default()).expect("node starts");
    let scratch = TempDir::new("image");
    let archive = scratch.0.join("berth.tar");
    let built = Command::new(workspace_root().join("scripts/image"))
        .args([
            "--profile",
            "debug",
            "--no-build",
            "--import",
            &node.name,
            "--out",
        ])
        .arg(&archive)
        .output()
        .expect("scripts/image runs");
    assert!(
        built.status.success(),
        "scripts/image failed:\n{}",
        text(&built)
    );
    assert!(archive.is_file(), "no archive at {}", archive.display());

    let mut cri = node.cri().await.expect("CRI ready");
    let images = cri.list_images().await.unwrap();
    assert!(
        images.iter().any(|i| i == IMAGE),
        "{IMAGE} not in the node's images after import: {images:?}"
    );

    let pod = cri
        .run_pod(&PodSpec::new("berth-system", "berth-agent-test"))
        .await
        .unwrap();
    // The image's entrypoint is berth-agent; the DaemonSet's init step runs /bin/sh from it.
    let c = cri
        .run_container(&pod, &ContainerSpec::sleeper("agent", IMAGE))
        .await
        .expect("a container from the berth image starts");

    let version = sh(&mut cri, &c, "berth-agent --version", &[]).await;
    assert_eq!(
        version.trim(),
        format!("berth-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let version = sh(&mut cri, &c, "berthctl --version", &[]).await;
    assert_eq!(
        version.trim(),
        format!("berthctl {}", env!("CARGO_PKG_VERSION"))
    );
    for plugin in ["berth-cni", "berth-ipam"] {
        let out = sh(
            &mut cri,
            &c,
            &format!("CNI_COMMAND=VERSION {plugin} </dev/null"),
            &[],
        )
        .await;
        let versions = supported_versions(&out);
        for v in ["1.0.0", "1.1.0"] {
            assert!(versions.iter().any(|s| s == v), "{plugin}: {versions:?}");
        }
    }
    let shim = sh(
        &mut cri,
        &c,
        "test -f /usr/local/lib/berth/libberth-faketime.so && ls -ln /usr/local/lib/berth/libberth-faketime.so",
        &[],
    )
    .await;
    assert!(shim.starts_with("-rw-r--r--"), "shim mode: {shim}");

    // The DaemonSet's init step, verbatim, against /host dirs inside the container.
    sh(
        &mut cri,
        &c,
        "mkdir -p /etc/berth/config /etc/berth/etcd-client /host/opt/cni/bin /host/etc/cni/net.d /host/etc/berth
         printf %s \"$1\" > /etc/berth/config/10-berth.conflist
         printf %s \"$2\" > /etc/berth/config/node.toml
         for k in ca.crt tls.crt tls.key; do echo \"secret $k\" > /etc/berth/etcd-client/$k; done",
        &[&conflist, &node_toml],
    )
    .await;
    let out = sh(&mut cri, &c, &init_script, &[]).await;
    assert!(out.contains("installed"), "init step said: {out}");
    let listing = sh(
        &mut cri,
        &c,
        "ls -a /host/opt/cni/bin /host/etc/cni/net.d /host/etc/berth",
        &[],
    )
    .await;
    assert!(!listing.contains(".tmp"), "temp files left: {listing}");
    // The etcd client files from the Secret, where the conflist's store.tls names them,
    // readable by root only.
    let etcd_files = sh(
        &mut cri,
        &c,
        "ls -la /host/etc/berth/etcd; for k in ca.crt tls.crt tls.key; do cat /host/etc/berth/etcd/$k; stat -c '%a' /host/etc/berth/etcd/$k; done; stat -c '%a' /host/etc/berth/etcd",
        &[],
    )
    .await;
    assert!(
        !etcd_files.contains(".tmp"),
        "temp files left: {etcd_files}"
    );
    for k in ["ca.crt", "tls.crt", "tls.key"] {
        assert!(
            etcd_files.contains(&format!("secret {k}\n600\n")),
            "{k} not installed 0600: {etcd_files}"
        );
        assert!(
            conflist.contains(&format!("/etc/berth/etcd/{k}")),
            "the conflist does not name /etc/berth/etcd/{k}"
        );
    }
    assert!(etcd_files.trim_end().ends_with("700"), "{etcd_files}");
    let installed = sh(
        &mut cri,
        &c,
        "cat /host/etc/cni/net.d/10-berth.conflist",
        &[],
    )
    .await;
    assert_eq!(installed, conflist, "installed conflist differs");
    let out = sh(
        &mut cri,
        &c,
        "test -x /host/opt/cni/bin/berth-ipam; CNI_COMMAND=VERSION /host/opt/cni/bin/berth-cni </dev/null",
        &[],
    )
    .await;
    assert!(supported_versions(&out).iter().any(|v| v == "1.0.0"));
    assert_eq!(
        sh(&mut cri, &c, "cat /host/etc/berth/node.toml", &[]).await,
        node_toml
    );

    // A node.toml written by provisioning is kept; the plugin and conflist are replaced.
    sh(
        &mut cri,
        &c,
        "printf 'rack = \"r7\"\\n' > /host/etc/berth/node.toml; echo old > /host/etc/cni/net.d/10-berth.conflist",
        &[],
    )
    .await;
    sh(&mut cri, &c, &init_script, &[]).await;
    assert_eq!(
        sh(&mut cri, &c, "cat /host/etc/berth/node.toml", &[]).await,
        "rack = \"r7\"\n"
    );
    assert_eq!(
        sh(
            &mut cri,
            &c,
            "cat /host/etc/cni/net.d/10-berth.conflist",
            &[]
        )
        .await,
        conflist
    );

    assert_eq!(cri.teardown_all().await.unwrap(), 1);
    assert!(cri.list_pods().await.unwrap().is_empty());
}
