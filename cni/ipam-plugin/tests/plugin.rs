//! The plugin through the CNI executor, in-process: results, idempotent DEL, CHECK, STATUS, GC
//! and every bad input mapped to its CNI code.

use std::collections::HashMap;

use berth_ipam::BerthIpam;
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use serde_json::{Value, json};

struct Call<'a> {
    cmd: &'a str,
    cid: &'a str,
    args: &'a str,
}

fn call(conf: &Value, c: Call<'_>) -> (i32, Value) {
    let env: HashMap<&str, String> = [
        ("CNI_COMMAND", c.cmd.to_string()),
        ("CNI_CONTAINERID", c.cid.to_string()),
        ("CNI_NETNS", "/var/run/netns/x".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/usr/lib/cni".to_string()),
        ("CNI_ARGS", c.args.to_string()),
    ]
    .into_iter()
    .collect();
    let mut out = Vec::new();
    let code = berth_cni_spec::execute(
        &BerthIpam,
        |k| env.get(k).cloned(),
        &mut conf.to_string().as_bytes(),
        &mut out,
    );
    let v = if out.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&out).unwrap()
    };
    (code, v)
}

fn add(conf: &Value, cid: &str, args: &str) -> (i32, Value) {
    call(
        conf,
        Call {
            cmd: "ADD",
            cid,
            args,
        },
    )
}

fn conf(dir: &std::path::Path, pools: Value) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "pnet", "type": "bridge",
        "ipam": {"type": "berth-ipam", "store": {"type": "local", "dir": dir}, "rack": "r1", "pools": pools}
    })
}

fn pools() -> Value {
    json!([{"name": "a", "subnet": "10.90.0.0/30", "gateway": "10.90.0.1", "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.90.0.1"}]}])
}

const POD: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_UID=u1";

#[test]
fn add_returns_ips_and_routes_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), pools());
    let (code, v) = add(&c, "c1", POD);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert_eq!(
        v["ips"],
        json!([{"address": "10.90.0.2/30", "gateway": "10.90.0.1"}])
    );
    assert_eq!(
        v["routes"],
        json!([{"dst": "0.0.0.0/0"}, {"dst": "10.0.0.0/8", "gw": "10.90.0.1"}])
    );
    assert_eq!(add(&c, "c1", POD).1, v, "ADD again: same answer");
    // CHECK with the matching prevResult passes, with another address fails (115).
    let mut chk = c.clone();
    chk["prevResult"] = v.clone();
    assert_eq!(
        call(
            &chk,
            Call {
                cmd: "CHECK",
                cid: "c1",
                args: POD
            }
        )
        .0,
        0
    );
    chk["prevResult"]["ips"][0]["address"] = json!("10.90.0.3/30");
    let (code, e) = call(
        &chk,
        Call {
            cmd: "CHECK",
            cid: "c1",
            args: POD,
        },
    );
    assert_eq!((code, e["code"].as_u64()), (1, Some(115)));
    // CHECK of an unknown container: code 3.
    chk["prevResult"] = v.clone();
    assert_eq!(
        call(
            &chk,
            Call {
                cmd: "CHECK",
                cid: "nope",
                args: POD
            }
        )
        .1["code"],
        3
    );
}

#[test]
fn del_is_idempotent_and_the_pod_gets_its_address_back() {
    let dir = tempfile::tempdir().unwrap();
    // Room for more than one pod: in a full pool a hold is soft and another pod
    // would reclaim it (see the next test).
    let c = conf(
        dir.path(),
        json!([{"name": "a", "subnet": "10.90.0.0/29", "gateway": "10.90.0.1"}]),
    );
    let first = add(&c, "c1", POD).1["ips"][0]["address"].clone();
    for _ in 0..2 {
        assert_eq!(
            call(
                &c,
                Call {
                    cmd: "DEL",
                    cid: "c1",
                    args: POD
                }
            ),
            (0, Value::Null)
        );
    }
    assert_eq!(
        call(
            &c,
            Call {
                cmd: "DEL",
                cid: "never-added",
                args: ""
            }
        )
        .0,
        0
    );
    // Another pod does not get the held address; the same pod (new sandbox) does.
    let other = add(&c, "c2", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1").1;
    assert_ne!(other["ips"][0]["address"], first);
    assert_eq!(add(&c, "c3", POD).1["ips"][0]["address"], first);
}

#[test]
fn a_full_pool_gives_the_hold_to_another_pod() {
    let dir = tempfile::tempdir().unwrap();
    // 10.90.0.0/30 with its gateway leaves one address.
    let c = conf(dir.path(), pools());
    let first = add(&c, "c1", POD).1["ips"][0]["address"].clone();
    let del = Call {
        cmd: "DEL",
        cid: "c1",
        args: POD,
    };
    assert_eq!(call(&c, del).0, 0);
    // Another pod takes the held address rather than failing with 110 ...
    let (code, other) = add(&c, "c2", "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1");
    assert_eq!(code, 0, "{other}");
    assert_eq!(other["ips"][0]["address"], first);
    // ... and the pod the hold was for now finds the pool exhausted: code 110.
    let (code, e) = add(&c, "c3", POD);
    assert_eq!((code, e["code"].as_u64()), (1, Some(110)), "{e}");
}

#[test]
fn annotation_and_ips_capability_request_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = conf(dir.path(), json!([{"name": "a", "subnet": "10.91.0.0/24"}]));
    c["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"berth.io/ip": "10.91.0.77"}});
    assert_eq!(add(&c, "c1", POD).1["ips"][0]["address"], "10.91.0.77/24");
    c["runtimeConfig"] = json!({"ips": ["10.91.0.78/24"]});
    assert_eq!(add(&c, "c2", "").1["ips"][0]["address"], "10.91.0.78/24");
    // The same address again for someone else: 111 with a reason naming the holder.
    let (code, e) = add(&c, "c3", "");
    assert_eq!((code, e["code"].as_u64()), (1, Some(111)));
    assert!(e["msg"].as_str().unwrap().contains("in use"), "{e}");
}

#[test]
fn bad_input_maps_to_cni_codes_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), pools());
    let code_of = |conf: &Value, cid: &str, args: &str| add(conf, cid, args).1["code"].as_u64();
    // Unknown pool (7).
    let mut unknown = c.clone();
    unknown["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"berth.io/pool": "zz"}});
    assert_eq!(code_of(&unknown, "c1", POD), Some(7));
    // Address outside the pool (111).
    let mut outside = c.clone();
    outside["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"berth.io/ip": "192.0.2.9"}});
    assert_eq!(code_of(&outside, "c1", POD), Some(111));
    // Bad annotation (114), bad config (7), no ipam section (7).
    let mut bad = c.clone();
    bad["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations": {"berth.io/sticky": "a b"}});
    assert_eq!(code_of(&bad, "c1", POD), Some(114));
    let mut typo = c.clone();
    typo["ipam"]["pools"][0]["gatway"] = json!("10.90.0.1");
    assert_eq!(code_of(&typo, "c1", POD), Some(7));
    let mut none = c.clone();
    none.as_object_mut().unwrap().remove("ipam");
    assert_eq!(code_of(&none, "c1", POD), Some(7));
    // A network name against the spec would be a file name (7).
    let mut dotted = c.clone();
    dotted["name"] = json!(".pnet");
    assert_eq!(code_of(&dotted, "c1", POD), Some(7));
    assert!(
        !dir.path().join("pnet.leases").exists(),
        "nothing was written by failed calls"
    );
    // A pod name that is no Kubernetes name (a runtime outside Kubernetes, or a hostile
    // one) is never a key or a path: the call is served as one without a pod. (The control:
    // a Kubernetes pod's name is recorded with its lease.)
    let recorded = |needle: &[u8]| {
        ["pnet.leases", "pnet.journal"].iter().any(|file| {
            let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    };
    for (args, name) in [
        ("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-9", "web-9"),
        ("K8S_POD_NAMESPACE=../..;K8S_POD_NAME=a/b", "a/b"),
    ] {
        let (code, v) = add(&c, "c0", args);
        assert_eq!(code, 0, "{v}");
        assert_eq!(recorded(name.as_bytes()), name == "web-9", "{args}");
        let del = Call {
            cmd: "DEL",
            cid: "c0",
            args,
        };
        assert_eq!(call(&c, del).0, 0);
    }
    assert!(!recorded(b"../.."));
    // Exhausted (110): a /30 with a gateway has one address.
    assert_eq!(add(&c, "c1", "").0, 0);
    let files =
        || ["pnet.leases", "pnet.journal"].map(|f| std::fs::read(dir.path().join(f)).unwrap());
    let before = files();
    assert_eq!(code_of(&c, "c2", ""), Some(110));
    assert_eq!(files(), before, "exhaustion wrote nothing");
    // Corrupt store (112), naming the file, and left as it was.
    std::fs::write(dir.path().join("pnet.leases"), b"{garbage").unwrap();
    let (_, e) = add(&c, "c3", "");
    assert_eq!(e["code"], 112);
    assert!(e["msg"].as_str().unwrap().contains("pnet.leases"), "{e}");
    assert_eq!(
        std::fs::read(dir.path().join("pnet.leases")).unwrap(),
        b"{garbage"
    );
}

#[test]
fn status_is_50_when_etcd_is_unreachable_and_0_on_a_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), pools());
    assert_eq!(
        call(
            &c,
            Call {
                cmd: "STATUS",
                cid: "",
                args: ""
            }
        ),
        (0, Value::Null)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut e = c.clone();
    e["ipam"]["store"] = json!({"type": "etcd", "endpoints": [format!("http://127.0.0.1:{port}")], "timeout": "300ms"});
    let (code, v) = call(
        &e,
        Call {
            cmd: "STATUS",
            cid: "",
            args: "",
        },
    );
    assert_eq!((code, v["code"].as_u64()), (1, Some(50)), "{v}");
    let (code, v) = add(&e, "c1", "");
    assert_eq!((code, v["code"].as_u64()), (1, Some(11)), "{v}");
}

#[test]
fn gc_frees_everything_not_in_valid_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), json!([{"name": "a", "subnet": "10.92.0.0/24"}]));
    for cid in ["keep", "gone1", "gone2"] {
        assert_eq!(add(&c, cid, "").0, 0);
    }
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    assert_eq!(
        call(
            &gc,
            Call {
                cmd: "GC",
                cid: "",
                args: ""
            }
        ),
        (0, Value::Null)
    );
    let store = LocalStore::new(dir.path(), HistoryLimits::default());
    let left: Vec<String> = store
        .read("pnet")
        .unwrap()
        .values()
        .map(|l| l.attachment().unwrap().0.to_string())
        .collect();
    assert_eq!(left, ["keep"]);
}

#[test]
fn dual_stack_gives_one_address_per_family_and_del_frees_both() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        json!([{"name": "a", "subnet": "10.91.0.0/24", "gateway": "10.91.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
               {"name": "a6", "subnet": "fd00:91::/64", "gateway": "fd00:91::1", "routes": [{"dst": "::/0"}]}]),
    );
    let (code, v) = add(&c, "c1", POD);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        v["ips"],
        json!([{"address": "10.91.0.2/24", "gateway": "10.91.0.1"},
               {"address": "fd00:91::2/64", "gateway": "fd00:91::1"}])
    );
    assert_eq!(v["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
    // Pre-1.0 results say each address's family.
    let mut old = c.clone();
    old["cniVersion"] = json!("0.4.0");
    let (_, v) = add(&old, "c1", POD);
    assert_eq!(v["ips"][1]["version"], "6", "{v}");
    // The ips capability asks for one address per family.
    let mut caps = c.clone();
    caps["runtimeConfig"] = json!({"ips": ["10.91.0.50/24", "fd00:91::50/64"]});
    let (code, v) = add(&caps, "c2", "");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ips"][0]["address"], "10.91.0.50/24");
    assert_eq!(v["ips"][1]["address"], "fd00:91::50/64");
    for cid in ["c1", "c2"] {
        for _ in 0..2 {
            let (code, v) = call(
                &c,
                Call {
                    cmd: "DEL",
                    cid,
                    args: POD,
                },
            );
            assert_eq!(code, 0, "{v}");
        }
    }
    let left = LocalStore::new(dir.path(), HistoryLimits::default())
        .read("pnet")
        .unwrap();
    // web-0 is sticky: both of its addresses are held; c2's are freed.
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.keys()
            .all(|ip| ip.to_string().ends_with("::2") || ip.to_string() == "10.91.0.2")
    );
}
