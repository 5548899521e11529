//! Conformance: every verb in every CNI version berth-cni speaks, executed for real, and the
//! same checks against Debian's reference `bridge` + `host-local` wherever the behaviour is
//! shared (the reference speaks up to 1.0.0 and has no STATUS/GC).

mod support;

use serde_json::{Value, json};
use support::*;

const REF_BRIDGE: &str = "/usr/lib/cni/bridge";
const SHARED: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

enum Kind {
    Berth,
    Reference,
}

struct Subject {
    kind: Kind,
    node: Netns,
    dir: TempDir,
}

impl Subject {
    fn new(kind: Kind) -> Subject {
        require_root();
        if matches!(kind, Kind::Reference) {
            assert!(
                std::path::Path::new(REF_BRIDGE).exists(),
                "needs {REF_BRIDGE} (containernetworking-plugins)"
            );
        }
        Subject {
            kind,
            node: Netns::new("bcfn"),
            dir: TempDir::new("berth-cni-conf-"),
        }
    }

    fn bin(&self) -> &str {
        match self.kind {
            Kind::Berth => BERTH,
            Kind::Reference => REF_BRIDGE,
        }
    }

    fn conf(&self, version: &str) -> Value {
        match self.kind {
            Kind::Berth => json!({"cniVersion": version, "name": "conf", "type": "berth-cni",
                "mode": "bridge", "bridge": "br-cf",
                "ipam": berth_ipam(&self.dir.0, json!([{"name": "p", "subnet": "10.247.0.0/24", "gateway": "10.247.0.1"}]))}),
            Kind::Reference => json!({"cniVersion": version, "name": "conf", "type": "bridge",
                "bridge": "br-cf", "isGateway": true,
                "ipam": {"type": "host-local", "subnet": "10.247.0.0/24", "gateway": "10.247.0.1",
                         "dataDir": self.dir.0.join("host-local")}}),
        }
    }

    fn run(&self, verb: &str, cid: &str, pod: Option<&Netns>, conf: &Value) -> (i32, Value) {
        let path = pod.map(|p| p.path());
        run_plugin(
            &self.node,
            self.bin(),
            &Call {
                verb,
                container_id: cid,
                netns: path.as_deref(),
                ifname: "eth0",
            },
            conf,
        )
    }

    fn veths(&self) -> usize {
        self.node
            .ip(&["-o", "link", "show", "type", "veth"])
            .lines()
            .count()
    }
}

/// The checks both implementations must pass for one version.
fn shared_lifecycle(s: &Subject, version: &str) {
    let conf = s.conf(version);
    let pod = Netns::new("bcfp");
    let cid = format!("cf-{}", version.replace('.', ""));
    let (code, r) = s.run("ADD", &cid, Some(&pod), &conf);
    assert_eq!(code, 0, "{} ADD {version}: {r}", s.bin());
    assert_eq!(r["cniVersion"], version);
    let ip = &r["ips"][0];
    assert_eq!(ip["gateway"], "10.247.0.1");
    assert!(
        ip["address"].as_str().unwrap().starts_with("10.247.0."),
        "{r}"
    );
    assert_eq!(
        ip.get("version").is_some(),
        version < "1.0.0",
        "{} {version}: {r}",
        s.bin()
    );
    let idx = ip["interface"].as_u64().unwrap() as usize;
    let iface = &r["interfaces"][idx];
    assert_eq!(iface["name"], "eth0");
    assert_eq!(iface["sandbox"], pod.path().to_str().unwrap());
    let live = pod.ip(&["link", "show", "eth0"]);
    assert!(live.contains(iface["mac"].as_str().unwrap()), "{live}");
    assert!(
        pod.ping("10.247.0.1"),
        "{} {version}: pod cannot reach the gateway",
        s.bin()
    );
    // CHECK exists from 0.4.0 on; before, both refuse it with code 1.
    let mut chk = conf.clone();
    chk["prevResult"] = r.clone();
    let (code, e) = s.run("CHECK", &cid, Some(&pod), &chk);
    if version >= "0.4.0" {
        assert_eq!(code, 0, "{} CHECK {version}: {e}", s.bin());
    } else {
        assert_eq!(
            (code, e["code"].as_i64()),
            (1, Some(1)),
            "{} CHECK {version}: {e}",
            s.bin()
        );
    }
    // DEL, DEL again, DEL without netns: all succeed and leave nothing.
    let mut del = conf.clone();
    del["prevResult"] = r;
    assert_eq!(
        s.run("DEL", &cid, Some(&pod), &del).0,
        0,
        "{} DEL {version}",
        s.bin()
    );
    assert_eq!(
        s.run("DEL", &cid, Some(&pod), &del).0,
        0,
        "{} DEL twice {version}",
        s.bin()
    );
    assert_eq!(
        s.run("DEL", &cid, None, &conf).0,
        0,
        "{} DEL without netns {version}",
        s.bin()
    );
    assert_eq!(pod.links(), vec!["lo".to_string()], "{} {version}", s.bin());
    assert_eq!(s.veths(), 0, "{} {version}", s.bin());
}

fn shared_refusals(s: &Subject) {
    let pod = Netns::new("bcfr");
    let path = pod.path();
    // Malformed JSON: code 6.
    let out = {
        use std::io::Write;
        let mut c = std::process::Command::new("ip")
            .args(["netns", "exec", &s.node.name, s.bin()])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "x")
            .env("CNI_NETNS", &path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(b"{\"cniVersion\": ")
            .unwrap();
        c.wait_with_output().unwrap()
    };
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 6, "{}: {e}", s.bin());
    // An unknown version: code 1.
    let (code, e) = s.run("ADD", "x", Some(&pod), &s.conf("9.9.9"));
    assert_eq!((code, e["code"].as_i64()), (1, Some(1)), "{}: {e}", s.bin());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(s.veths(), 0);
    // VERSION lists every shared version.
    let (code, v) = s.run("VERSION", "", None, &json!({"cniVersion": "1.0.0"}));
    assert_eq!(code, 0);
    for ver in SHARED {
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x == ver),
            "{}: {v}",
            s.bin()
        );
    }
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn berth_every_verb_in_every_version() {
    let s = Subject::new(Kind::Berth);
    for v in SHARED {
        shared_lifecycle(&s, v);
    }
    shared_lifecycle(&s, "1.1.0");
    shared_refusals(&s);
    // 1.1.0 only: STATUS and GC succeed; older versions refuse them with code 1.
    for v in SHARED.iter().chain(["1.1.0"].iter()) {
        for verb in ["STATUS", "GC"] {
            let (code, e) = s.run(verb, "", None, &s.conf(v));
            if *v == "1.1.0" {
                assert_eq!(code, 0, "{verb} {v}: {e}");
            } else {
                assert_eq!((code, e["code"].as_i64()), (1, Some(1)), "{verb} {v}: {e}");
            }
        }
    }
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn reference_bridge_passes_the_same_shared_checks() {
    let s = Subject::new(Kind::Reference);
    for v in SHARED {
        shared_lifecycle(&s, v);
    }
    shared_refusals(&s);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn portmap_chains_after_berth_cni_and_forwards_a_host_port() {
    require_root();
    let node = Netns::new("bpmn");
    let dir = TempDir::new("berth-cni-pm-");
    let client = Netns::new("bpmc");
    veth_between(&node, "tocl", &client, "eth0");
    node.ip(&["addr", "add", "172.31.250.1/24", "dev", "tocl"]);
    client.ip(&["addr", "add", "172.31.250.2/24", "dev", "eth0"]);
    // The shipped conflist, with the store and subnet moved into this test's own space.
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/bridge.conflist"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut berth = list["plugins"][0].clone();
    berth["cniVersion"] = list["cniVersion"].clone();
    berth["name"] = json!("pm");
    berth["ipam"] = berth_ipam(
        &dir.0,
        json!([{"name": "node", "subnet": "10.248.0.0/24", "gateway": "10.248.0.1"}]),
    );
    let mut portmap = list["plugins"][1].clone();
    portmap["cniVersion"] = list["cniVersion"].clone();
    portmap["name"] = json!("pm");
    let mappings =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]});
    berth["runtimeConfig"] = mappings.clone();
    portmap["runtimeConfig"] = mappings;
    let pod = Netns::new("bpmp");
    let path = pod.path();
    let add = Call {
        verb: "ADD",
        container_id: "pm1",
        netns: Some(&path),
        ifname: "eth0",
    };
    let (code, r) = run_plugin(&node, BERTH, &add, &berth);
    assert_eq!(code, 0, "{r}");
    portmap["prevResult"] = r.clone();
    let (code, r2) = run_plugin(&node, "/usr/lib/cni/portmap", &add, &portmap);
    assert_eq!(code, 0, "portmap ADD: {r2}");
    assert_eq!(r2["ips"], r["ips"], "portmap passes berth's result through");
    let pod_ip = r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let nat = node.exec(&["iptables", "-t", "nat", "-S"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains(&format!("--to-destination {pod_ip}:8080")),
        "{nat}"
    );
    // Traffic: a client outside the node reaches the pod through the node's host port.
    client.ip(&["route", "add", "default", "via", "172.31.250.1"]);
    let server = std::process::Command::new("ip")
        .args([
            "netns", "exec", &pod.name, "busybox", "nc", "-l", "-p", "8080", "-w", "5",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut sent = false;
    for _ in 0..10 {
        let o = client.exec(&[
            "sh",
            "-c",
            "echo hello-through-portmap | busybox nc -w 2 172.31.250.1 18080",
        ]);
        if o.status.success() {
            sent = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let got = server.wait_with_output().unwrap();
    assert!(sent, "the client could not connect to the host port");
    assert!(String::from_utf8_lossy(&got.stdout).contains("hello-through-portmap"));
    // DEL in reverse order, as a runtime does.
    let del = Call {
        verb: "DEL",
        container_id: "pm1",
        netns: Some(&path),
        ifname: "eth0",
    };
    assert_eq!(
        run_plugin(&node, "/usr/lib/cni/portmap", &del, &portmap).0,
        0
    );
    assert_eq!(run_plugin(&node, BERTH, &del, &berth).0, 0);
    let nat = node.exec(&["iptables", "-t", "nat", "-S"]);
    assert!(!String::from_utf8_lossy(&nat.stdout).contains(&pod_ip));
    assert_eq!(pod.links(), vec!["lo".to_string()]);
}
