//! Config + allocations → a typed [`Plan`]: which links, addresses, routes and ARP actions
//! one ADD performs. Pure: built and tested without root.

use std::net::IpAddr;

use berth_cni_spec::result::{CniResult, Interface, IpConfig, Route};
use berth_cni_spec::{CniError, ErrorCode, IfName};
use berth_ipam_core::Allocation;
use ipnet::IpNet;

use crate::config::{ArpConf, GatewayMode, IfaceKind, NetworkSpec, is_default};
use crate::names::{attachment_alias, host_veth_name};

/// A bridge the veth's host end joins; created if missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePlan {
    pub name: String,
    pub mtu: Option<u32>,
    /// The gateway addresses the bridge holds, one per IP family (gateway mode `bridge`).
    pub addresses: Vec<IpNet>,
    /// The host NIC to enslave (underlay).
    pub uplink: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkPlan {
    Veth {
        host_name: String,
        /// `IFLA_IFALIAS` of the host end: which attachment it belongs to (for GC).
        alias: String,
        bridge: BridgePlan,
        hairpin: bool,
    },
    Macvlan {
        master: String,
        /// The pool's VLAN: the macvlan sits on `<master>.<vlan>`, created if missing.
        vlan: Option<u16>,
    },
}

/// The host's VLAN sub-interface of `master` for `vlan` (at most 15 bytes).
pub fn vlan_link_name(master: &str, vlan: u16) -> String {
    let suffix = format!(".{vlan}");
    let keep = 15 - suffix.len();
    let mut end = master.len().min(keep);
    while !master.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{suffix}", &master[..end])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// One address of a pod interface (an interface has one per IP family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrPlan {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// The pool the address came from (for errors and logs).
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfacePlan {
    /// The name inside the pod.
    pub name: String,
    pub link: LinkPlan,
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    /// IPv4 first, then IPv6.
    pub addresses: Vec<AddrPlan>,
    /// Routes of every family, each through the interface's address of its family.
    pub routes: Vec<RoutePlan>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub ip_forward: bool,
    pub interfaces: Vec<IfacePlan>,
    pub arp: ArpConf,
}

fn bad(msg: impl Into<String>) -> CniError {
    CniError::invalid_config(msg)
}

/// Builds the plan. `allocations[i]` (one address per IP family) belongs to
/// `spec.interfaces[i]`.
pub fn build(
    network: &str,
    container_id: &str,
    spec: &NetworkSpec,
    allocations: &[Vec<Allocation>],
) -> Result<Plan, CniError> {
    assert_eq!(
        spec.interfaces.len(),
        allocations.len(),
        "one allocation per interface"
    );
    for (iface, allocs) in spec.interfaces.iter().zip(allocations) {
        if allocs.is_empty() {
            return Err(bad(format!("{}: IPAM gave no address", iface.name)));
        }
        for (k, a) in allocs.iter().enumerate() {
            if let Some(b) = allocs[k + 1..]
                .iter()
                .find(|b| b.address.addr().is_ipv4() == a.address.addr().is_ipv4())
            {
                return Err(bad(format!(
                    "{}: two addresses of one IP family: {} (pool {}) and {} (pool {})",
                    iface.name, a.address, a.pool, b.address, b.pool
                ))
                .with_details("give each interface at most one pool per IP family"));
            }
        }
    }
    // Subnets of different NICs must not overlap: the pod could not tell where to send.
    let flat: Vec<(usize, &Allocation)> = allocations
        .iter()
        .enumerate()
        .flat_map(|(i, v)| v.iter().map(move |a| (i, a)))
        .collect();
    for (k, (i, a)) in flat.iter().enumerate() {
        for (j, b) in flat.iter().skip(k + 1).filter(|(j, _)| j != i) {
            let (na, nb) = (a.address.trunc(), b.address.trunc());
            if na.contains(&nb.network()) || nb.contains(&na.network()) {
                return Err(bad(format!(
                    "overlapping subnets: {} gets {} (pool {}) and {} gets {} (pool {})",
                    spec.interfaces[*i].name, na, a.pool, spec.interfaces[*j].name, nb, b.pool
                ))
                .with_details("give each interface a pool from a distinct subnet"));
            }
        }
    }
    let mut interfaces = Vec::with_capacity(spec.interfaces.len());
    for (iface, allocs) in spec.interfaces.iter().zip(allocations) {
        let mut allocs: Vec<&Allocation> = allocs.iter().collect();
        allocs.sort_by_key(|a| a.address.addr().is_ipv6());
        for alloc in &allocs {
            let subnet = alloc.address.trunc();
            if let Some(gw) = alloc.gateway {
                if !subnet.contains(&gw) {
                    return Err(bad(format!(
                        "{}: gateway {gw} of pool {} is outside its subnet {subnet}",
                        iface.name, alloc.pool
                    )));
                }
                if gw == alloc.address.addr() {
                    return Err(bad(format!(
                        "{}: pool {} handed out its own gateway {gw}",
                        iface.name, alloc.pool
                    )));
                }
            }
            if let Some(v) = alloc.vlan
                && !(1..=4094).contains(&v)
            {
                return Err(bad(format!(
                    "{}: pool {} has VLAN {v}; use 1 to 4094",
                    iface.name, alloc.pool
                )));
            }
        }
        // One link carries every family: their pools must agree on the VLAN.
        let vlan = allocs[0].vlan;
        if let Some(other) = allocs.iter().find(|a| a.vlan != vlan) {
            return Err(bad(format!(
                "{}: pools {} and {} put the interface on different VLANs ({:?} and {:?})",
                iface.name, allocs[0].pool, other.pool, vlan, other.vlan
            ))
            .with_details("give the pools of one interface the same vlan"));
        }
        let link = match &iface.kind {
            IfaceKind::Bridge { .. } if vlan.is_some() => {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!(
                        "{}: pool {} is on VLAN {}, which bridge mode cannot tag",
                        iface.name,
                        allocs[0].pool,
                        vlan.unwrap_or_default()
                    ),
                )
                .with_details(
                    "use macvlan mode for VLAN pools, or make the bridge's uplink the VLAN interface and drop the pool's vlan",
                ));
            }
            IfaceKind::Bridge {
                bridge,
                gateway_mode,
                uplink,
                hairpin,
            } => {
                let addresses = match gateway_mode {
                    GatewayMode::External => Vec::new(),
                    GatewayMode::Bridge => allocs
                        .iter()
                        .map(|alloc| {
                            let gw = alloc.gateway.ok_or_else(|| {
                                bad(format!(
                                    "{}: gatewayMode bridge needs a gateway, pool {} has none",
                                    iface.name, alloc.pool
                                ))
                                .with_details(
                                    "set the pool's gateway or use \"gatewayMode\": \"external\"",
                                )
                            })?;
                            Ok(IpNet::new(gw, alloc.address.prefix_len()).expect("prefix fits"))
                        })
                        .collect::<Result<Vec<_>, CniError>>()?,
                };
                LinkPlan::Veth {
                    host_name: host_veth_name(network, container_id, &iface.name),
                    alias: attachment_alias(network, container_id, &iface.name),
                    bridge: BridgePlan {
                        name: bridge.to_string(),
                        mtu: iface.mtu,
                        addresses,
                        uplink: uplink.as_ref().map(IfName::to_string),
                    },
                    hairpin: *hairpin,
                }
            }
            IfaceKind::Macvlan { master } => LinkPlan::Macvlan {
                master: master.to_string(),
                vlan,
            },
        };
        let of_family = |ip: IpAddr| {
            allocs
                .iter()
                .copied()
                .find(|a| a.address.addr().is_ipv4() == ip.is_ipv4())
        };
        let mut routes = Vec::new();
        if iface.default_route {
            // A default route for each family the interface has an address of.
            for alloc in &allocs {
                let gw = alloc.gateway.ok_or_else(|| {
                    bad(format!(
                        "{} carries the default route but pool {} has no gateway",
                        iface.name, alloc.pool
                    ))
                    .with_details(
                        "set the pool's gateway, or mark another interface \"defaultRoute\": true",
                    )
                })?;
                let dst = if gw.is_ipv4() {
                    "0.0.0.0/0".parse().expect("literal")
                } else {
                    "::/0".parse().expect("literal")
                };
                routes.push(RoutePlan { dst, gw: Some(gw) });
            }
        }
        for alloc in &allocs {
            for r in &alloc.routes {
                // The pool's default route is only honoured on the default interface (added
                // above); a route of the other family has no address to leave from.
                if is_default(&r.dst) || r.dst.addr().is_ipv4() != alloc.address.addr().is_ipv4() {
                    continue;
                }
                push_unique(
                    &mut routes,
                    RoutePlan {
                        dst: r.dst,
                        gw: r.gw.or(alloc.gateway),
                    },
                );
            }
        }
        for r in &iface.routes {
            let Some(alloc) = of_family(r.dst.addr()) else {
                return Err(bad(format!(
                    "{}: route {} is of an IP family the interface has no address of ({})",
                    iface.name,
                    r.dst,
                    allocs
                        .iter()
                        .map(|a| a.address.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_details("add a pool of that family for the interface, or drop the route"));
            };
            let subnet = alloc.address.trunc();
            let gw = r.gw.or(alloc.gateway);
            if let Some(g) = gw
                && !subnet.contains(&g)
            {
                return Err(bad(format!(
                    "{}: route {} via {g} is not reachable from subnet {subnet}",
                    iface.name, r.dst
                ))
                .with_details("use a gateway inside the interface's subnet"));
            }
            push_unique(&mut routes, RoutePlan { dst: r.dst, gw });
        }
        interfaces.push(IfacePlan {
            name: iface.name.to_string(),
            link,
            mtu: iface.mtu,
            mac: iface.mac,
            addresses: allocs
                .iter()
                .map(|a| AddrPlan {
                    address: a.address,
                    gateway: a.gateway,
                    pool: a.pool.clone(),
                })
                .collect(),
            routes,
        });
    }
    Ok(Plan {
        ip_forward: spec.ip_forward,
        interfaces,
        arp: spec.arp.clone(),
    })
}

fn push_unique(routes: &mut Vec<RoutePlan>, r: RoutePlan) {
    if !routes.iter().any(|x| x.dst == r.dst) {
        routes.push(r);
    }
}

/// Formats a MAC address the way results carry it.
pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The live facts an applied plan produced (MACs are known only after the links exist).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Per interface: (host-end MAC for veths, pod-side MAC).
    pub macs: Vec<(Option<[u8; 6]>, [u8; 6])>,
}

/// The CNI result for an applied plan.
pub fn result(plan: &Plan, applied: &Applied, netns: &str) -> CniResult {
    let mut res = CniResult::default();
    for (iface, (host_mac, pod_mac)) in plan.interfaces.iter().zip(&applied.macs) {
        if let LinkPlan::Veth { host_name, .. } = &iface.link {
            res.interfaces.push(Interface {
                name: host_name.clone(),
                mac: host_mac.as_ref().map(mac_string),
                ..Interface::default()
            });
        }
        res.interfaces.push(Interface {
            name: iface.name.clone(),
            mac: Some(mac_string(pod_mac)),
            mtu: iface.mtu,
            sandbox: Some(netns.to_string()),
            ..Interface::default()
        });
        let idx = res.interfaces.len() - 1;
        for a in &iface.addresses {
            res.ips.push(IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: Some(idx),
            });
        }
        for r in &iface.routes {
            res.routes.push(Route::new(r.dst, r.gw));
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_cni_spec::ErrorCode;
    use berth_ipam_core::RouteSpec;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> NetworkSpec {
        let mut base = json!({"cniVersion": "1.1.0", "name": "net", "type": "berth-cni"});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        NetworkSpec::from_value(&base, &"eth0".parse().unwrap()).unwrap()
    }

    fn alloc(addr: &str, gw: Option<&str>, pool: &str) -> Allocation {
        Allocation {
            address: addr.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            routes: vec![],
            pool: pool.into(),
            vlan: None,
        }
    }

    fn route(dst: &str, gw: Option<&str>) -> RoutePlan {
        RoutePlan {
            dst: dst.parse().unwrap(),
            gw: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn bridge_plan_puts_the_gateway_on_the_bridge() {
        let s =
            spec(json!({"mode": "bridge", "bridge": "berth0", "hairpinMode": true, "mtu": 1400}));
        let p = build(
            "net",
            "c1",
            &s,
            &[vec![alloc("10.244.0.5/24", Some("10.244.0.1"), "p")]],
        )
        .unwrap();
        assert_eq!(p.interfaces.len(), 1);
        let i = &p.interfaces[0];
        assert_eq!(i.name, "eth0");
        assert_eq!(
            i.link,
            LinkPlan::Veth {
                host_name: host_veth_name("net", "c1", "eth0"),
                alias: "berth:net:c1:eth0".into(),
                bridge: BridgePlan {
                    name: "berth0".into(),
                    mtu: Some(1400),
                    addresses: vec!["10.244.0.1/24".parse().unwrap()],
                    uplink: None
                },
                hairpin: true
            }
        );
        assert_eq!(i.routes, vec![route("0.0.0.0/0", Some("10.244.0.1"))]);
        assert_eq!(
            i.addresses[0].address,
            "10.244.0.5/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn dual_stack_plan_and_result_carry_both_families() {
        let s = spec(json!({"mode": "bridge", "bridge": "berth0",
            "routes": [{"dst": "fd00:99::/64"}]}));
        let v4 = alloc("10.244.0.5/24", Some("10.244.0.1"), "v4");
        let v6 = alloc("fd00:244::5/64", Some("fd00:244::1"), "v6");
        // IPAM order does not matter: IPv4 comes first.
        let p = build("net", "c1", &s, &[vec![v6.clone(), v4.clone()]]).unwrap();
        let i = &p.interfaces[0];
        let LinkPlan::Veth { bridge, .. } = &i.link else {
            panic!()
        };
        assert_eq!(
            bridge.addresses,
            vec![
                "10.244.0.1/24".parse::<IpNet>().unwrap(),
                "fd00:244::1/64".parse().unwrap()
            ]
        );
        assert_eq!(
            i.routes,
            vec![
                route("0.0.0.0/0", Some("10.244.0.1")),
                route("::/0", Some("fd00:244::1")),
                route("fd00:99::/64", Some("fd00:244::1")),
            ]
        );
        let applied = Applied {
            macs: vec![(Some([2, 0, 0, 0, 0, 1]), [2, 0, 0, 0, 0, 2])],
        };
        let res = result(&p, &applied, "/ns");
        let ips: Vec<(String, Option<usize>)> = res
            .ips
            .iter()
            .map(|ip| (ip.address.to_string(), ip.interface))
            .collect();
        assert_eq!(
            ips,
            [
                ("10.244.0.5/24".to_string(), Some(1)),
                ("fd00:244::5/64".to_string(), Some(1))
            ]
        );
        // Every version renders both, with "version" before 1.0.0.
        for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let out = res.to_value(v.parse().unwrap());
            assert_eq!(out["ips"].as_array().unwrap().len(), 2, "{v}");
            if v < "1.0.0" {
                assert_eq!(out["ips"][1]["version"], "6", "{v}");
            }
        }
        // An IPv6 static route on an IPv4-only interface, two IPv4 addresses: refused.
        let e = build("net", "c1", &s, &[vec![v4.clone()]]).unwrap_err();
        assert!(
            e.to_string()
                .contains("route fd00:99::/64 is of an IP family the interface has no address of"),
            "{e}"
        );
        let mut v4b = v4.clone();
        v4b.address = "10.245.0.5/24".parse().unwrap();
        let e = build("net", "c1", &s, &[vec![v4, v4b]]).unwrap_err();
        assert!(
            e.to_string().contains("two addresses of one IP family"),
            "{e}"
        );
    }

    #[test]
    fn underlay_bridge_leaves_the_gateway_to_the_switch() {
        let s = spec(json!({"mode": "bridge", "bridge": "br-ext", "uplink": "eth1"}));
        let p = build(
            "net",
            "c1",
            &s,
            &[vec![alloc("192.168.10.20/24", Some("192.168.10.1"), "r1")]],
        )
        .unwrap();
        let LinkPlan::Veth { bridge, .. } = &p.interfaces[0].link else {
            panic!()
        };
        assert_eq!(bridge.addresses, vec![]);
        assert_eq!(bridge.uplink.as_deref(), Some("eth1"));
        assert_eq!(
            p.interfaces[0].routes,
            vec![route("0.0.0.0/0", Some("192.168.10.1"))]
        );
    }

    #[test]
    fn two_nics_one_default_route_and_static_routes() {
        let s = spec(json!({"interfaces": [
            {"name": "eth0", "mode": "macvlan", "master": "uplink0", "pool": "ext"},
            {"name": "eth1", "mode": "bridge", "bridge": "br-int", "gatewayMode": "external", "pool": "int",
             "routes": [{"dst": "10.50.0.0/16"}, {"dst": "10.60.0.0/16", "gw": "10.20.0.254"}]}]}));
        let mut int = alloc("10.20.0.7/24", Some("10.20.0.1"), "int");
        // A pool's default route on the non-default NIC is dropped; its other routes stay.
        int.routes = vec![
            RouteSpec {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
            },
            RouteSpec {
                dst: "10.70.0.0/16".parse().unwrap(),
                gw: None,
            },
        ];
        let p = build(
            "net",
            "c1",
            &s,
            &[
                vec![alloc("192.168.1.10/24", Some("192.168.1.1"), "ext")],
                vec![int],
            ],
        )
        .unwrap();
        assert_eq!(
            p.interfaces[0].link,
            LinkPlan::Macvlan {
                master: "uplink0".into(),
                vlan: None
            }
        );
        assert_eq!(
            p.interfaces[0].routes,
            vec![route("0.0.0.0/0", Some("192.168.1.1"))]
        );
        assert_eq!(
            p.interfaces[1].routes,
            vec![
                route("10.70.0.0/16", Some("10.20.0.1")),
                route("10.50.0.0/16", Some("10.20.0.1")),
                route("10.60.0.0/16", Some("10.20.0.254")),
            ]
        );
        let defaults = p
            .interfaces
            .iter()
            .flat_map(|i| &i.routes)
            .filter(|r| r.dst.prefix_len() == 0)
            .count();
        assert_eq!(defaults, 1);
    }

    #[test]
    fn plan_refusals_are_code_7() {
        let two = spec(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "a"},
            {"name": "eth1", "mode": "bridge", "bridge": "b"}]}));
        let one = spec(json!({"mode": "bridge", "bridge": "b"}));
        let ext = spec(json!({"mode": "bridge", "bridge": "b", "gatewayMode": "external"}));
        let routed = spec(
            json!({"mode": "bridge", "bridge": "b", "gatewayMode": "external",
            "routes": [{"dst": "10.9.0.0/16", "gw": "10.8.0.1"}]}),
        );
        let cases: Vec<(&NetworkSpec, Vec<Allocation>, &str)> = vec![
            (
                &two,
                vec![
                    alloc("10.1.0.5/24", Some("10.1.0.1"), "a"),
                    alloc("10.1.0.6/16", Some("10.1.0.1"), "b"),
                ],
                "overlapping subnets",
            ),
            (
                &one,
                vec![alloc("10.1.0.5/24", None, "a")],
                "gatewayMode bridge needs a gateway",
            ),
            (
                &ext,
                vec![alloc("10.1.0.5/24", None, "a")],
                "has no gateway",
            ),
            (
                &ext,
                vec![alloc("10.1.0.5/24", Some("10.2.0.1"), "a")],
                "outside its subnet",
            ),
            (
                &ext,
                vec![alloc("10.1.0.1/24", Some("10.1.0.1"), "a")],
                "its own gateway",
            ),
            (
                &routed,
                vec![alloc("10.1.0.5/24", Some("10.1.0.1"), "a")],
                "not reachable",
            ),
        ];
        for (s, allocs, needle) in cases {
            let per_iface: Vec<Vec<Allocation>> = allocs.into_iter().map(|a| vec![a]).collect();
            let e = build("net", "c1", s, &per_iface).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn vlan_pools_put_macvlans_on_a_vlan_link_and_are_refused_in_bridge_mode() {
        let mv = spec(json!({"mode": "macvlan", "master": "uplink0"}));
        let mut a = alloc("192.168.12.5/24", Some("192.168.12.1"), "r12");
        a.vlan = Some(12);
        let p = build("net", "c1", &mv, &[vec![a.clone()]]).unwrap();
        assert_eq!(
            p.interfaces[0].link,
            LinkPlan::Macvlan {
                master: "uplink0".into(),
                vlan: Some(12)
            }
        );
        let br = spec(json!({"mode": "bridge", "bridge": "b", "uplink": "eth1"}));
        let e = build("net", "c1", &br, &[vec![a.clone()]]).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnsupportedField);
        assert!(e.msg.contains("VLAN 12"), "{e}");
        a.vlan = Some(4095);
        assert_eq!(
            build("net", "c1", &mv, &[vec![a]]).unwrap_err().code,
            ErrorCode::InvalidConfig
        );
        assert_eq!(vlan_link_name("eth1", 12), "eth1.12");
        assert_eq!(vlan_link_name("enp0s31f6long", 4094), "enp0s31f6l.4094");
        assert!(vlan_link_name("abcdefghijklmno", 1).len() <= 15);
    }

    #[test]
    fn result_lists_host_and_pod_ends_and_points_ips_at_the_pod_end() {
        let s = spec(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "a", "mtu": 1450},
            {"name": "eth1", "mode": "macvlan", "master": "m"}]}));
        let p = build(
            "net",
            "c1",
            &s,
            &[
                vec![alloc("10.1.0.5/24", Some("10.1.0.1"), "a")],
                vec![alloc("10.2.0.5/24", Some("10.2.0.1"), "b")],
            ],
        )
        .unwrap();
        let applied = Applied {
            macs: vec![
                (Some([2, 0, 0, 0, 0, 1]), [2, 0, 0, 0, 0, 2]),
                (None, [2, 0, 0, 0, 0, 3]),
            ],
        };
        let r = result(&p, &applied, "/run/netns/x");
        let names: Vec<_> = r.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            [host_veth_name("net", "c1", "eth0").as_str(), "eth0", "eth1"]
        );
        assert_eq!(r.interfaces[0].sandbox, None);
        assert_eq!(r.interfaces[1].sandbox.as_deref(), Some("/run/netns/x"));
        assert_eq!(r.interfaces[1].mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(r.interfaces[1].mtu, Some(1450));
        assert_eq!(r.ips[0].interface, Some(1));
        assert_eq!(r.ips[1].interface, Some(2));
        assert_eq!(r.routes.len(), 1);
        let v = r.to_value(berth_cni_spec::CniVersion::V0_4_0);
        assert_eq!(v["ips"][0]["version"], "4");
    }
}
