//! [`BerthCni`]: the CNI verbs, each built from the pieces (config → IPAM → plan → apply).

use std::collections::{BTreeMap, HashSet};

use berth_cni_spec::config::POD_ANNOTATIONS;
use berth_cni_spec::{CniError, CniResult, Context, ErrorCode, IfName, Plugin};
use berth_ipam_core::{AllocateRequest, Allocation, Allocator, Attachment, PodIdentity};

use crate::apply::{self, pod_preflight, preflight, teardown};
use crate::config::NetworkSpec;
use crate::error::{NETWORK_SETUP, from_ipam};
use crate::ipam::IpamOpener;
use crate::names::parse_alias;
use crate::net::{ArpNeeds, NetError, NetOps, Ns};
use crate::plan;
use crate::trace;

/// Opens the kernel seam for one call: the pod namespace (if any) and whether ARP sockets are
/// needed.
pub trait NetOpener {
    fn open(
        &self,
        netns: Option<&std::path::Path>,
        arp: ArpNeeds,
    ) -> Result<Box<dyn NetOps>, NetError>;
}

/// The real kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelNet;

impl NetOpener for KernelNet {
    fn open(
        &self,
        netns: Option<&std::path::Path>,
        arp: ArpNeeds,
    ) -> Result<Box<dyn NetOps>, NetError> {
        Ok(Box::new(crate::netlink::RealNet::open(netns, arp)?))
    }
}

/// berth's CNI plugin, generic over its two seams.
pub struct BerthCni<N: NetOpener, I: IpamOpener> {
    pub net: N,
    pub ipam: I,
}

/// The `CNI_ARGS` keys berth-cni accepts besides the K8S_* ones.
const KNOWN_ARGS: &[&str] = &[];

fn spec_of(ctx: &Context) -> Result<NetworkSpec, CniError> {
    // STATUS and GC come without CNI_IFNAME; they never use the single NIC's name.
    let eth0 = IfName::try_from("eth0").expect("eth0 is an interface name");
    let ifname = ctx.env.ifname.as_ref().unwrap_or(&eth0);
    NetworkSpec::from_value(&ctx.config.raw, ifname)
}

impl<N: NetOpener, I: IpamOpener> BerthCni<N, I> {
    fn allocator(&self, ctx: &Context, spec: &NetworkSpec) -> Result<Box<dyn Allocator>, CniError> {
        let ipam = spec.ipam.as_ref().ok_or_else(|| {
            CniError::invalid_config("the network config has no \"ipam\" section")
                .with_details("add an \"ipam\" object with at least one pool")
        })?;
        self.ipam.open(ctx, ipam)
    }

    fn request(ctx: &Context, ifname: &str, pools: &[String]) -> AllocateRequest {
        let a = &ctx.env.args;
        let pod = a.pod().map(|(ns, name)| PodIdentity {
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: a.k8s_pod_uid.clone(),
        });
        let annotations: BTreeMap<String, String> = if ctx
            .config
            .capabilities
            .get(POD_ANNOTATIONS)
            .copied()
            .unwrap_or(false)
            || !ctx.config.runtime_config.pod_annotations.is_empty()
        {
            ctx.config.runtime_config.pod_annotations.clone()
        } else {
            BTreeMap::new()
        };
        AllocateRequest {
            network: ctx.config.name.to_string(),
            container_id: ctx.env.container_id.clone(),
            ifname: ifname.to_string(),
            pod,
            annotations,
            pools: pools.to_vec(),
        }
    }

    fn release_all(alloc: &dyn Allocator, ctx: &Context, spec: &NetworkSpec) -> Vec<String> {
        spec.interfaces
            .iter()
            .filter_map(|i| {
                alloc
                    .release(&ctx.config.name, &ctx.env.container_id, &i.name)
                    .err()
                    .map(|e| format!("releasing {}: {e}", i.name))
            })
            .collect()
    }
}

/// Whether the network's IPAM may hand out IPv6 addresses (so ADD opens an NDP socket too):
/// berth's IPAM when a pool is IPv6, a delegated IPAM plugin always (its ranges are its own).
fn may_give_ipv6(ipam: Option<&serde_json::Value>) -> bool {
    let Some(ipam) = ipam else {
        return false;
    };
    match ipam.get("type").and_then(serde_json::Value::as_str) {
        None | Some("berth-ipam") => ipam
            .get("pools")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|pools| {
                pools.iter().any(|p| {
                    p.get("subnet")
                        .and_then(serde_json::Value::as_str)
                        .is_some_and(|s| s.contains(':'))
                })
            }),
        Some(_) => true,
    }
}

fn with_cleanup_failures(e: CniError, failures: Vec<String>) -> CniError {
    if failures.is_empty() {
        return e;
    }
    let extra = format!("cleanup also failed: {}", failures.join("; "));
    let details = match &e.details {
        Some(d) => format!("{d}; {extra}"),
        None => extra,
    };
    e.with_details(details)
}

impl<N: NetOpener, I: IpamOpener> Plugin for BerthCni<N, I> {
    fn add(&self, ctx: &Context) -> Result<CniResult, CniError> {
        trace::mark("ADD: parsed");
        ctx.env.args.check_unknown(KNOWN_ARGS)?;
        let spec = spec_of(ctx)?;
        let netns = ctx.env.netns.as_deref().expect("ADD has CNI_NETNS");
        let arp = ArpNeeds {
            raw_socket: spec.arp.probe || spec.arp.garp_count > 0,
            ndp_socket: may_give_ipv6(spec.ipam.as_ref()),
        };
        let mut net = self.net.open(Some(netns), arp)?;
        trace::mark("ADD: netlink opened");
        // Host NICs are checked before an address is taken. The pod namespace's sockets are
        // being opened on their own thread meanwhile; the pod is checked after allocation
        // (an address taken then is released again if the pod is refused).
        preflight(net.as_mut(), &spec)?;
        trace::mark("ADD: preflight");
        let alloc = self.allocator(ctx, &spec)?;
        trace::mark("ADD: IPAM opened");
        let mut allocations: Vec<Vec<Allocation>> = Vec::with_capacity(spec.interfaces.len());
        for iface in &spec.interfaces {
            match alloc.allocate(&Self::request(ctx, &iface.name, &iface.pools)) {
                Ok(a) => allocations.push(a),
                Err(e) => {
                    let failures = Self::release_all(alloc.as_ref(), ctx, &spec);
                    return Err(with_cleanup_failures(from_ipam(&e), failures));
                }
            }
        }
        trace::mark("ADD: allocated");
        if let Err(e) = pod_preflight(net.as_mut(), &spec) {
            let failures = Self::release_all(alloc.as_ref(), ctx, &spec);
            return Err(with_cleanup_failures(e, failures));
        }
        let plan = match plan::build(&ctx.config.name, &ctx.env.container_id, &spec, &allocations) {
            Ok(p) => p,
            Err(e) => {
                let failures = Self::release_all(alloc.as_ref(), ctx, &spec);
                return Err(with_cleanup_failures(e, failures));
            }
        };
        trace::mark("ADD: pod preflight, planned");
        let applied = apply::apply(net.as_mut(), &plan);
        trace::mark("ADD: applied");
        match applied {
            Ok(applied) => {
                let mut res = plan::result(&plan, &applied, &netns.display().to_string());
                if let Some(dns) = &ctx.config.dns {
                    res.dns = dns.clone();
                }
                Ok(res)
            }
            Err(e) => {
                let mut cni = e.into_cni();
                let failures = Self::release_all(alloc.as_ref(), ctx, &spec);
                cni = with_cleanup_failures(cni, failures);
                Err(cni)
            }
        }
    }

    fn del(&self, ctx: &Context) -> Result<(), CniError> {
        trace::mark("DEL: parsed");
        let spec = spec_of(ctx)?;
        // Bridge ports go with their host end; only macvlans need the pod namespace. It may
        // be gone or not given (second DEL): carry on without it.
        let pod_ns = ctx.env.netns.as_deref().filter(|_| {
            spec.interfaces
                .iter()
                .any(|i| matches!(i.kind, crate::config::IfaceKind::Macvlan { .. }))
        });
        let none = ArpNeeds::default();
        let net = match pod_ns {
            Some(p) => match self.net.open(Some(p), none) {
                Ok(n) => Ok(n),
                Err(NetError::Netns { .. }) => self.net.open(None, none),
                Err(e) => Err(e),
            },
            None => self.net.open(None, none),
        };
        let mut net = net?;
        trace::mark("DEL: netlink opened");
        // The address is released while the kernel unlists the links (closing them waits
        // for an RCU grace period): the two are independent, so neither waits for the other.
        let alloc = self.allocator(ctx, &spec);
        trace::mark("DEL: IPAM opened");
        let failures = std::thread::scope(|scope| {
            let ipam = scope.spawn(|| {
                let f = match &alloc {
                    Ok(alloc) => Self::release_all(alloc.as_ref(), ctx, &spec),
                    Err(e) => vec![format!("opening IPAM: {e}")],
                };
                trace::mark("DEL: released (IPAM thread)");
                f
            });
            let mut failures =
                teardown(net.as_mut(), &ctx.config.name, &ctx.env.container_id, &spec);
            trace::mark("DEL: links removed");
            failures.extend(ipam.join().expect("IPAM release does not panic"));
            failures
        });
        if failures.is_empty() {
            Ok(())
        } else {
            Err(
                CniError::new(NETWORK_SETUP, "DEL could not remove everything")
                    .with_details(failures.join("; ")),
            )
        }
    }

    fn check(&self, ctx: &Context) -> Result<(), CniError> {
        let spec = spec_of(ctx)?;
        let prev = ctx.config.prev_result.as_ref().ok_or_else(|| {
            CniError::invalid_config("CHECK needs prevResult")
                .with_details("the runtime passes the ADD result as prevResult")
        })?;
        let netns = ctx.env.netns.as_deref().expect("CHECK has CNI_NETNS");
        let mut net = self.net.open(Some(netns), ArpNeeds::default())?;
        apply::check(
            net.as_mut(),
            &ctx.config.name,
            &ctx.env.container_id,
            &spec,
            prev,
        )?;
        let alloc = self.allocator(ctx, &spec)?;
        for iface in &spec.interfaces {
            let have = alloc
                .lookup(&ctx.config.name, &ctx.env.container_id, &iface.name)
                .map_err(|e| from_ipam(&e))?;
            if let Some(a) = have
                .iter()
                .find(|a| !prev.ips.iter().any(|ip| ip.address == a.address))
            {
                return Err(CniError::new(
                    crate::error::CHECK_MISMATCH,
                    format!(
                        "IPAM holds {} for {} but prevResult does not list it",
                        a.address, iface.name
                    ),
                ));
            }
        }
        Ok(())
    }

    fn status(&self, ctx: &Context) -> Result<(), CniError> {
        let spec = spec_of(ctx)?;
        let alloc = self.allocator(ctx, &spec)?;
        alloc.status().map_err(|e| {
            let mut c = CniError::from_error(ErrorCode::NotAvailable, &e);
            c.msg = format!("berth-cni cannot add pods now: {}", c.msg);
            c
        })
    }

    fn gc(&self, ctx: &Context) -> Result<(), CniError> {
        let spec = spec_of(ctx)?;
        let valid: Vec<Attachment> = ctx
            .config
            .valid_attachments
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect();
        let keep: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let mut net = self.net.open(None, ArpNeeds::default())?;
        let mut failures = Vec::new();
        // Host veth ends of attachments the runtime no longer knows (alias says whose they are).
        for link in net.links(Ns::Host)? {
            let Some(alias) = link.alias.as_deref() else {
                continue;
            };
            let Some((network, cid, ifname)) = parse_alias(alias) else {
                continue;
            };
            if network == ctx.config.name
                && !keep.contains(&(cid, ifname))
                && let Err(e) = net.delete_link(Ns::Host, &link.name)
            {
                failures.push(format!("{}: {e}", link.name));
            }
        }
        let alloc = self.allocator(ctx, &spec)?;
        if let Err(e) = alloc.gc(&ctx.config.name, &valid) {
            failures.push(format!("IPAM GC: {e}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(NETWORK_SETUP, "GC could not free everything")
                .with_details(failures.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeIpam, FakeNetOpener};
    use crate::names::host_veth_name;
    use serde_json::{Value, json};
    use std::collections::HashMap;

    struct Harness {
        net: FakeNetOpener,
        ipam: FakeIpam,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                net: FakeNetOpener::default(),
                ipam: FakeIpam::default()
                    .with_pool("default", "10.1.0.0/24", Some("10.1.0.1"))
                    .with_pool("ext", "192.168.7.0/24", Some("192.168.7.1"))
                    .with_pool("int", "10.20.0.0/24", Some("10.20.0.1"))
                    .with_pool("wide", "10.0.0.0/8", Some("10.0.0.1")),
            }
        }

        fn call(&self, verb: &str, cid: &str, netns: &str, conf: &Value) -> (i32, Value) {
            // STATUS and GC come without an attachment, as runtimes send them.
            let attachment = !matches!(verb, "STATUS" | "GC");
            let ifname = if attachment { "eth0" } else { "" };
            let env: HashMap<&str, String> = [
                ("CNI_COMMAND", verb.to_string()),
                ("CNI_CONTAINERID", cid.to_string()),
                ("CNI_NETNS", netns.to_string()),
                ("CNI_IFNAME", ifname.to_string()),
                (
                    "CNI_ARGS",
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u1"
                        .to_string(),
                ),
                ("CNI_PATH", "/usr/lib/cni".to_string()),
            ]
            .into();
            let plugin = BerthCni {
                net: self.net.clone(),
                ipam: self.ipam.clone(),
            };
            let mut out = Vec::new();
            let code = berth_cni_spec::execute(
                &plugin,
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

        fn nothing_left(&self) {
            let s = self.net.state.lock().unwrap();
            assert!(
                s.links
                    .iter()
                    .all(|(_, l)| l.kind.as_deref() == Some("bridge") || l.kind.is_none()),
                "{:?}",
                s.links
            );
            assert_eq!(self.ipam.leases(), 0);
        }
    }

    fn conf(extra: Value) -> Value {
        let mut v = json!({"cniVersion": "1.1.0", "name": "net", "type": "berth-cni",
            "capabilities": {"io.kubernetes.cri.pod-annotations": true},
            "mode": "bridge", "bridge": "br0", "ipam": {"pools": []}});
        for (k, val) in extra.as_object().unwrap() {
            if val.is_null() {
                v.as_object_mut().unwrap().remove(k);
            } else {
                v[k] = val.clone();
            }
        }
        v
    }

    fn multi(eth1_pool: &str) -> Value {
        conf(json!({"mode": null, "bridge": null, "interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "br0", "pool": "ext"},
            {"name": "eth1", "mode": "bridge", "bridge": "br1", "pool": eth1_pool, "routes": [{"dst": "10.50.0.0/16"}]}]}))
    }

    #[test]
    fn add_returns_the_result_and_passes_pod_identity_and_annotations_to_ipam() {
        let h = Harness::new();
        let mut c = conf(json!({}));
        c["runtimeConfig"] =
            json!({"io.kubernetes.cri.pod-annotations": {"berth.io/ip": "10.1.0.9"}});
        let (code, r) = h.call("ADD", "c1", "/run/netns/p1", &c);
        assert_eq!(code, 0, "{r}");
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["ips"][0]["address"], "10.1.0.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.1.0.1");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p1");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        let s = h.ipam.0.lock().unwrap();
        let req = &s.requests[0];
        assert_eq!(req.network, "net");
        assert_eq!(req.ifname, "eth0");
        assert_eq!(req.pod.as_ref().unwrap().name, "web-0");
        assert_eq!(req.pod.as_ref().unwrap().uid.as_deref(), Some("u1"));
        assert_eq!(req.annotations["berth.io/ip"], "10.1.0.9");
    }

    #[test]
    fn two_nics_get_two_pools_and_one_default_route() {
        let h = Harness::new();
        let (code, r) = h.call("ADD", "c1", "/run/netns/p1", &multi("int"));
        assert_eq!(code, 0, "{r}");
        let ips: Vec<&str> = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap())
            .collect();
        assert_eq!(ips, ["192.168.7.2/24", "10.20.0.2/24"]);
        let routes = r["routes"].as_array().unwrap();
        assert_eq!(routes.iter().filter(|r| r["dst"] == "0.0.0.0/0").count(), 1);
        assert!(
            routes
                .iter()
                .any(|r| r["dst"] == "10.50.0.0/16" && r["gw"] == "10.20.0.1")
        );
        let s = h.ipam.0.lock().unwrap();
        assert_eq!(
            s.requests
                .iter()
                .map(|r| r.pools[0].clone())
                .collect::<Vec<_>>(),
            ["ext", "int"]
        );
    }

    #[test]
    fn overlapping_subnets_release_every_address_and_create_nothing() {
        let h = Harness::new();
        let mut c = multi("wide");
        c["interfaces"][0]["pool"] = json!("default");
        let (code, e) = h.call("ADD", "c1", "/run/netns/p1", &c);
        assert_eq!(code, 1);
        assert_eq!(e["code"], 7);
        assert!(
            e["msg"].as_str().unwrap().contains("overlapping subnets"),
            "{e}"
        );
        h.nothing_left();
        assert!(
            !h.net
                .state
                .lock()
                .unwrap()
                .calls
                .iter()
                .any(|c| c.starts_with("create"))
        );
    }

    #[test]
    fn a_failure_during_apply_releases_addresses_and_links() {
        let h = Harness::new();
        h.net.state.lock().unwrap().fail_on = Some("add_route".into());
        let (code, e) = h.call("ADD", "c1", "/run/netns/p1", &multi("int"));
        assert_eq!(code, 1);
        assert_eq!(e["code"], 100, "{e}");
        h.nothing_left();
    }

    #[test]
    fn bad_input_is_refused_before_anything_happens() {
        let cases: Vec<(Value, u64)> = vec![
            (conf(json!({"mode": "ipvlan"})), 7),
            (
                conf(json!({"mode": "macvlan", "bridge": null, "master": "nope0"})),
                7,
            ),
            (conf(json!({"mode": "macvlan", "bridge": null})), 7),
            (conf(json!({"cniVersion": "0.2.0"})), 1),
            (conf(json!({"ipam": null})), 7),
            (
                multi("int").tap(|v| {
                    v["interfaces"][0]["defaultRoute"] = json!(true);
                    v["interfaces"][1]["defaultRoute"] = json!(true);
                }),
                7,
            ),
        ];
        for (c, want) in cases {
            let h = Harness::new();
            let (code, e) = h.call("ADD", "c1", "/run/netns/p1", &c);
            assert_eq!(code, 1);
            assert_eq!(e["code"], want, "{c}: {e}");
            h.nothing_left();
            let s = h.net.state.lock().unwrap();
            assert!(!s.calls.iter().any(|c| c.starts_with("create")), "{c}");
        }
        let h = Harness::new();
        let mut out = Vec::new();
        let plugin = BerthCni {
            net: h.net.clone(),
            ipam: h.ipam.clone(),
        };
        let env: HashMap<&str, &str> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/x"),
            ("CNI_IFNAME", "a-very-long-ifname"),
        ]
        .into();
        assert_eq!(
            berth_cni_spec::execute(
                &plugin,
                |k| env.get(k).map(|v| v.to_string()),
                &mut conf(json!({})).to_string().as_bytes(),
                &mut out
            ),
            1
        );
        assert_eq!(serde_json::from_slice::<Value>(&out).unwrap()["code"], 4);
        h.nothing_left();
    }

    trait Tap {
        fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
    }
    impl Tap for Value {
        fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
            f(&mut self);
            self
        }
    }

    #[test]
    fn del_twice_without_netns_and_with_a_vanished_netns_succeeds() {
        let h = Harness::new();
        assert_eq!(h.call("ADD", "c1", "/run/netns/p1", &conf(json!({}))).0, 0);
        assert_eq!(h.call("DEL", "c1", "/run/netns/p1", &conf(json!({}))).0, 0);
        h.nothing_left();
        assert_eq!(h.call("DEL", "c1", "", &conf(json!({}))).0, 0);
        let gone = Harness {
            net: FakeNetOpener {
                netns_gone: true,
                ..h.net.clone()
            },
            ipam: h.ipam.clone(),
        };
        assert_eq!(
            gone.call("DEL", "c1", "/run/netns/p1", &conf(json!({}))).0,
            0
        );
        // DEL of an ADD that never happened is fine too.
        assert_eq!(h.call("DEL", "never", "", &conf(json!({}))).0, 0);
    }

    #[test]
    fn check_passes_then_detects_a_removed_route() {
        let h = Harness::new();
        let (_, r) = h.call("ADD", "c1", "/run/netns/p1", &conf(json!({})));
        let mut c = conf(json!({}));
        c["prevResult"] = r;
        assert_eq!(h.call("CHECK", "c1", "/run/netns/p1", &c), (0, Value::Null));
        h.net.state.lock().unwrap().routes.clear();
        let (code, e) = h.call("CHECK", "c1", "/run/netns/p1", &c);
        assert_eq!(code, 1);
        assert_eq!(e["code"], 130);
    }

    #[test]
    fn status_reports_ipam_health_as_code_50() {
        let h = Harness::new();
        assert_eq!(h.call("STATUS", "", "", &conf(json!({}))), (0, Value::Null));
        h.ipam.0.lock().unwrap().status = Some("etcd unreachable".into());
        let (code, e) = h.call("STATUS", "", "", &conf(json!({})));
        assert_eq!(code, 1);
        assert_eq!(e["code"], 50);
        assert!(
            e["msg"].as_str().unwrap().contains("etcd unreachable"),
            "{e}"
        );
    }

    #[test]
    fn gc_frees_links_and_addresses_of_attachments_not_listed() {
        let h = Harness::new();
        for c in ["keep", "drop"] {
            // The fake has one pod namespace: move the previous pod end out of the way.
            h.net
                .state
                .lock()
                .unwrap()
                .links
                .retain(|(ns, _)| *ns == Ns::Host);
            assert_eq!(h.call("ADD", c, "/run/netns/p", &conf(json!({}))).0, 0);
        }
        let mut c = conf(json!({}));
        c["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
        assert_eq!(h.call("GC", "", "", &c), (0, Value::Null));
        let names = h.net.state.lock().unwrap().names(Ns::Host);
        assert!(names.contains(&host_veth_name("net", "keep", "eth0")));
        assert!(!names.contains(&host_veth_name("net", "drop", "eth0")));
        let s = h.ipam.0.lock().unwrap();
        assert_eq!(s.leases.len(), 1);
        assert_eq!(s.gc_calls[0][0].container_id, "keep");
    }

    #[test]
    fn an_ndp_socket_is_opened_only_when_ipam_may_give_ipv6() {
        assert!(!may_give_ipv6(None));
        assert!(!may_give_ipv6(Some(
            &json!({"pools": [{"name": "a", "subnet": "10.0.0.0/24"}]})
        )));
        assert!(may_give_ipv6(Some(
            &json!({"type": "berth-ipam", "pools": [
            {"name": "a", "subnet": "10.0.0.0/24"}, {"name": "b", "subnet": "fd00::/64"}]})
        )));
        assert!(may_give_ipv6(Some(&json!({"type": "host-local"}))));
    }

    #[test]
    fn every_verb_in_every_version() {
        use berth_cni_spec::CniVersion;
        for v in CniVersion::ALL {
            let h = Harness::new();
            let c = conf(json!({"cniVersion": v.as_str()}));
            let (code, r) = h.call("ADD", "c1", "/run/netns/p1", &c);
            assert_eq!(code, 0, "{v}: {r}");
            assert_eq!(r["cniVersion"], v.as_str());
            assert_eq!(r["ips"][0].get("version").is_some(), v < CniVersion::V1_0_0);
            let mut chk = c.clone();
            chk["prevResult"] = r;
            let (code, _) = h.call("CHECK", "c1", "/run/netns/p1", &chk);
            assert_eq!(code == 0, v.supports_check(), "CHECK {v}");
            for verb in ["STATUS", "GC"] {
                let (code, e) = h.call(verb, "", "", &c);
                if v.supports_status_gc() {
                    assert_eq!(code, 0, "{verb} {v}: {e}");
                } else {
                    assert_eq!(e["code"], 1, "{verb} {v}");
                }
            }
            assert_eq!(h.call("DEL", "c1", "/run/netns/p1", &c).0, 0, "DEL {v}");
            // GC ran before DEL for 1.1.0 and freed c1 already; either way nothing is left.
            h.nothing_left();
        }
    }
}
