//! Applying a [`Plan`] through [`NetOps`]: every change is journaled and undone in reverse
//! when a later step fails. Also DEL's teardown and CHECK's comparison.

use std::time::Duration;

use berth_cni_spec::{CniError, CniResult};

use crate::config::{IfaceKind, NetworkSpec};
use crate::error::{ADDRESS_CONFLICT, CHECK_MISMATCH};
use crate::names::host_veth_name;
use crate::net::{LinkState, NetError, NetOps, Ns};
use crate::plan::{Applied, LinkPlan, Plan, mac_string, vlan_link_name};

/// How long a new link may take to pass frames before ARP work gives up.
pub const OPER_UP_TIMEOUT: Duration = Duration::from_secs(3);

/// One change to undo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Undo {
    DeleteLink(Ns, String),
    /// Delete a bridge this ADD created, unless another port joined it meanwhile; release the
    /// uplink this ADD enslaved to it.
    DeleteBridgeIfUnused {
        bridge: String,
        uplink: Option<String>,
    },
}

/// Why an apply failed.
#[derive(Debug)]
pub struct ApplyError {
    pub error: CniError,
    /// Undo steps that failed themselves (left behind).
    pub rollback_failures: Vec<String>,
}

impl ApplyError {
    /// The CNI error, with any rollback failures appended to the details.
    pub fn into_cni(self) -> CniError {
        if self.rollback_failures.is_empty() {
            return self.error;
        }
        let extra = format!(
            "rollback also failed: {}",
            self.rollback_failures.join("; ")
        );
        let details = match self.error.details.clone() {
            Some(d) => format!("{d}; {extra}"),
            None => extra,
        };
        self.error.clone().with_details(details)
    }
}

fn must(
    net_result: Result<Option<LinkState>, NetError>,
    ns: Ns,
    name: &str,
) -> Result<LinkState, CniError> {
    net_result?.ok_or_else(|| {
        CniError::from(NetError::NotFound {
            ns,
            name: name.to_string(),
        })
    })
}

/// Applies `plan`; on failure undoes what it did and returns the first error.
pub fn apply(net: &mut dyn NetOps, plan: &Plan) -> Result<Applied, ApplyError> {
    let mut journal = Vec::new();
    match apply_steps(net, plan, &mut journal) {
        Ok(a) => Ok(a),
        Err(error) => Err(ApplyError {
            error,
            rollback_failures: rollback(net, journal),
        }),
    }
}

/// Runs the journal backwards; returns what could not be undone.
pub fn rollback(net: &mut dyn NetOps, journal: Vec<Undo>) -> Vec<String> {
    let mut failures = Vec::new();
    for step in journal.into_iter().rev() {
        let r = match &step {
            Undo::DeleteLink(ns, name) => net.delete_link(*ns, name).map(|_| ()),
            Undo::DeleteBridgeIfUnused { bridge, uplink } => {
                delete_bridge_if_unused(net, bridge, uplink.as_deref())
            }
        };
        if let Err(e) = r {
            failures.push(format!("{step:?}: {e}"));
        }
    }
    failures
}

fn delete_bridge_if_unused(
    net: &mut dyn NetOps,
    bridge: &str,
    uplink: Option<&str>,
) -> Result<(), NetError> {
    let Some(br) = net.link(Ns::Host, bridge)? else {
        return Ok(());
    };
    let links = net.links(Ns::Host)?;
    let others = links
        .iter()
        .filter(|l| l.controller == Some(br.index) && Some(l.name.as_str()) != uplink)
        .count();
    if others == 0 {
        net.delete_link(Ns::Host, bridge)?;
    }
    Ok(())
}

fn apply_steps(
    net: &mut dyn NetOps,
    plan: &Plan,
    journal: &mut Vec<Undo>,
) -> Result<Applied, CniError> {
    if plan.ip_forward {
        net.enable_ip_forward()?;
    }
    let mut applied = Applied::default();
    let mut pod_index = Vec::with_capacity(plan.interfaces.len());
    // Links first: everything that can collide by name fails before addresses go live.
    for iface in &plan.interfaces {
        let host_mac = match &iface.link {
            LinkPlan::Veth {
                host_name,
                alias,
                bridge,
                hairpin,
            } => {
                let br = match net.link(Ns::Host, &bridge.name)? {
                    Some(l) if l.kind.as_deref() == Some("bridge") => l,
                    Some(l) => {
                        return Err(CniError::invalid_config(format!(
                            "{} exists on the host and is a {} link, not a bridge",
                            bridge.name,
                            l.kind.as_deref().unwrap_or("physical")
                        ))
                        .with_details("name a bridge (or a free name) in \"bridge\""));
                    }
                    None => {
                        if net.create_bridge(&bridge.name, bridge.mtu)? {
                            journal.push(Undo::DeleteBridgeIfUnused {
                                bridge: bridge.name.clone(),
                                uplink: bridge.uplink.clone(),
                            });
                        }
                        must(net.link(Ns::Host, &bridge.name), Ns::Host, &bridge.name)?
                    }
                };
                if !br.up {
                    net.set_link(Ns::Host, br.index, None, None)?;
                }
                for addr in &bridge.addresses {
                    net.add_address(Ns::Host, br.index, *addr)?;
                }
                if let Some(uplink) = &bridge.uplink {
                    let ul = net.link(Ns::Host, uplink)?.ok_or_else(|| {
                        CniError::invalid_config(format!(
                            "uplink NIC {uplink} not found on the host"
                        ))
                        .with_details("name an existing host NIC in \"uplink\"")
                    })?;
                    match ul.controller {
                        Some(c) if c == br.index => {}
                        Some(_) => {
                            return Err(CniError::invalid_config(format!(
                                "uplink NIC {uplink} is already a port of another bridge or bond"
                            )));
                        }
                        None => net.set_link(Ns::Host, ul.index, Some(br.index), None)?,
                    }
                }
                net.create_veth(host_name, &iface.name, iface.mtu, iface.mac)?;
                journal.push(Undo::DeleteLink(Ns::Host, host_name.clone()));
                let host = must(net.link(Ns::Host, host_name), Ns::Host, host_name)?;
                net.set_link(Ns::Host, host.index, Some(br.index), Some(alias))?;
                if *hairpin {
                    net.set_hairpin(host.index)?;
                }
                host.mac
            }
            LinkPlan::Macvlan { master, vlan } => {
                let mut m = net
                    .link(Ns::Host, master)?
                    .ok_or_else(|| missing_master(master))?;
                if let Some(id) = vlan {
                    // The VLAN link is shared by every pod of the pool: created once, kept.
                    let name = vlan_link_name(master, *id);
                    net.create_vlan(&name, m.index, *id)?;
                    m = must(net.link(Ns::Host, &name), Ns::Host, &name)?;
                    if m.kind.as_deref() != Some("vlan") {
                        return Err(CniError::invalid_config(format!(
                            "{name} exists on the host and is not a VLAN link"
                        )));
                    }
                    if !m.up {
                        net.set_link(Ns::Host, m.index, None, None)?;
                    }
                }
                net.create_macvlan(m.index, &iface.name, iface.mtu, iface.mac)?;
                journal.push(Undo::DeleteLink(Ns::Pod, iface.name.clone()));
                None
            }
        };
        let pod = must(net.link(Ns::Pod, &iface.name), Ns::Pod, &iface.name)?;
        let pod_mac = pod.mac.unwrap_or_default();
        applied.macs.push((host_mac, pod_mac));
        pod_index.push(pod.index);
    }
    // Addresses. With a probe the link must be up first and each address waits for the
    // probe's verdict (ARP for IPv4, NDP for IPv6).
    for (i, iface) in plan.interfaces.iter().enumerate() {
        let index = pod_index[i];
        if !plan.arp.probe {
            for a in &iface.addresses {
                net.add_address(Ns::Pod, index, a.address)?;
            }
            net.set_link(Ns::Pod, index, None, None)?;
            continue;
        }
        net.set_link(Ns::Pod, index, None, None)?;
        net.wait_oper_up(Ns::Pod, &iface.name, OPER_UP_TIMEOUT)?;
        let timeout = Duration::from_millis(plan.arp.probe_timeout_ms);
        // Every family's probe goes out at once and shares one wait.
        let ips: Vec<std::net::IpAddr> = iface.addresses.iter().map(|a| a.address.addr()).collect();
        if let Some((ip, other)) = net.arp_probe(
            index,
            applied.macs[i].1,
            &ips,
            plan.arp.probe_count,
            timeout,
        )? {
            let pool = iface
                .addresses
                .iter()
                .find(|a| a.address.addr() == ip)
                .map(|a| a.pool.as_str())
                .unwrap_or_default();
            return Err(CniError::new(
                ADDRESS_CONFLICT,
                format!(
                    "address {ip} for {} is already in use by {} on its network",
                    iface.name,
                    mac_string(&other)
                ),
            )
            .with_details(format!(
                "free the address on that host or remove it from pool {pool}; nothing was configured"
            )));
        }
        for a in &iface.addresses {
            net.add_address(Ns::Pod, index, a.address)?;
        }
    }
    // Routes once every address is up, so each gateway is on-link.
    for (i, iface) in plan.interfaces.iter().enumerate() {
        for r in &iface.routes {
            net.add_route(Ns::Pod, pod_index[i], r)?;
        }
    }
    if plan.arp.garp_count > 0 {
        for (i, iface) in plan.interfaces.iter().enumerate() {
            // Frames sent before both ends are up (linkwatch) are dropped, and a bridge
            // port forwards only once its carrier is seen.
            if let LinkPlan::Veth { host_name, .. } = &iface.link {
                net.wait_oper_up(Ns::Host, host_name, OPER_UP_TIMEOUT)?;
            }
            net.wait_oper_up(Ns::Pod, &iface.name, OPER_UP_TIMEOUT)?;
            // Gratuitous ARP for IPv4, unsolicited neighbour advertisements for IPv6.
            for a in &iface.addresses {
                net.announce(
                    pod_index[i],
                    applied.macs[i].1,
                    a.address.addr(),
                    plan.arp.garp_count,
                    Duration::from_millis(plan.arp.garp_interval_ms),
                )?;
            }
        }
    }
    Ok(applied)
}

pub fn missing_master(master: &str) -> CniError {
    CniError::invalid_config(format!("master NIC {master} not found on the host"))
        .with_details("name an existing host NIC in \"master\"; nothing was created")
}

/// Checks, before anything is allocated or created, that the host NICs the config names exist.
pub fn preflight(net: &mut dyn NetOps, spec: &NetworkSpec) -> Result<(), CniError> {
    for iface in &spec.interfaces {
        match &iface.kind {
            IfaceKind::Macvlan { master } => {
                if net.link(Ns::Host, master)?.is_none() {
                    return Err(missing_master(master));
                }
            }
            IfaceKind::Bridge {
                uplink: Some(uplink),
                ..
            } => {
                if net.link(Ns::Host, uplink)?.is_none() {
                    return Err(CniError::invalid_config(format!(
                        "uplink NIC {uplink} not found on the host"
                    ))
                    .with_details("name an existing host NIC in \"uplink\"; nothing was created"));
                }
            }
            IfaceKind::Bridge { .. } => {}
        }
    }
    Ok(())
}

/// Checks that the pod has none of the interfaces yet (an ADD repeated without DEL).
pub fn pod_preflight(net: &mut dyn NetOps, spec: &NetworkSpec) -> Result<(), CniError> {
    for iface in &spec.interfaces {
        if net.link(Ns::Pod, &iface.name)?.is_some() {
            return Err(CniError::from(NetError::Exists {
                ns: Ns::Pod,
                name: iface.name.to_string(),
            }));
        }
    }
    Ok(())
}

/// DEL's link work: every step is tried; returns the failures.
pub fn teardown(
    net: &mut dyn NetOps,
    network: &str,
    container_id: &str,
    spec: &NetworkSpec,
) -> Vec<String> {
    let mut failures = Vec::new();
    for iface in &spec.interfaces {
        let r = match &iface.kind {
            // Deleting the host end removes the pod end with it.
            IfaceKind::Bridge { .. } => net
                .delete_link(
                    Ns::Host,
                    &host_veth_name(network, container_id, &iface.name),
                )
                .map(|_| ()),
            // Without the pod namespace the macvlan dies with it; nothing on the host to do.
            IfaceKind::Macvlan { .. } if net.has_pod() => {
                net.delete_link(Ns::Pod, &iface.name).map(|_| ())
            }
            IfaceKind::Macvlan { .. } => Ok(()),
        };
        if let Err(e) = r {
            failures.push(format!("{}: {e}", iface.name));
        }
    }
    failures
}

/// CHECK: the pod's links, addresses and routes against `prev`.
pub fn check(
    net: &mut dyn NetOps,
    network: &str,
    container_id: &str,
    spec: &NetworkSpec,
    prev: &CniResult,
) -> Result<(), CniError> {
    let mismatch = |msg: String| {
        CniError::new(CHECK_MISMATCH, msg)
            .with_details("the pod's network differs from what ADD set up; recreate the pod")
    };
    for iface in &spec.interfaces {
        let pod = net
            .link(Ns::Pod, &iface.name)?
            .ok_or_else(|| mismatch(format!("interface {} is missing in the pod", iface.name)))?;
        if !pod.up {
            return Err(mismatch(format!("interface {} is down", iface.name)));
        }
        let prev_idx = prev
            .interfaces
            .iter()
            .position(|i| i.name == iface.name.as_str() && i.sandbox.is_some());
        if let Some(idx) = prev_idx {
            if let (Some(want), Some(have)) = (&prev.interfaces[idx].mac, pod.mac)
                && !want.eq_ignore_ascii_case(&mac_string(&have))
            {
                return Err(mismatch(format!(
                    "interface {} has MAC {} instead of {want}",
                    iface.name,
                    mac_string(&have)
                )));
            }
            let have = net.addresses(Ns::Pod, pod.index)?;
            for ip in prev.ips.iter().filter(|ip| ip.interface == Some(idx)) {
                if !have.contains(&ip.address) {
                    return Err(mismatch(format!(
                        "interface {} lacks address {}",
                        iface.name, ip.address
                    )));
                }
            }
        } else {
            return Err(mismatch(format!(
                "prevResult does not list interface {}",
                iface.name
            )));
        }
        if let IfaceKind::Bridge { bridge, .. } = &iface.kind {
            let host_name = host_veth_name(network, container_id, &iface.name);
            let host = net.link(Ns::Host, &host_name)?.ok_or_else(|| {
                mismatch(format!("host end {host_name} of {} is missing", iface.name))
            })?;
            let br = net.link(Ns::Host, bridge)?;
            if br.is_none() || host.controller != br.map(|b| b.index) {
                return Err(mismatch(format!(
                    "host end {host_name} is not a port of bridge {bridge}"
                )));
            }
        }
    }
    let live = net.routes(Ns::Pod)?;
    for r in &prev.routes {
        if !live
            .iter()
            .any(|l| l.dst == r.dst && (r.gw.is_none() || l.gw == r.gw))
        {
            return Err(mismatch(format!(
                "route to {}{} is missing in the pod",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeNet, NetState};
    use crate::plan::build;
    use berth_cni_spec::ErrorCode;
    use berth_ipam_core::Allocation;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    fn spec(v: serde_json::Value) -> NetworkSpec {
        let mut base = json!({"cniVersion": "1.1.0", "name": "net", "type": "berth-cni"});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        NetworkSpec::from_value(&base, &"eth0".parse().unwrap()).unwrap()
    }

    fn alloc(addr: &str, gw: &str) -> Allocation {
        Allocation {
            address: addr.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            routes: vec![],
            pool: "p".into(),
            vlan: None,
        }
    }

    fn net() -> (FakeNet, Arc<Mutex<NetState>>) {
        let state = Arc::new(Mutex::new(NetState::default()));
        (
            FakeNet {
                state: state.clone(),
                pod: true,
            },
            state,
        )
    }

    fn bridge_plan(extra: serde_json::Value) -> Plan {
        let mut v = json!({"mode": "bridge", "bridge": "br0", "hairpinMode": true, "ipForward": true,
            "arp": {"probe": true, "garpCount": 3}});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        build(
            "net",
            "c1",
            &spec(v),
            &[vec![alloc("10.1.0.5/24", "10.1.0.1")]],
        )
        .unwrap()
    }

    #[test]
    fn bridge_add_creates_everything_in_order() {
        let (mut n, state) = net();
        let applied = apply(&mut n, &bridge_plan(json!({}))).unwrap();
        let s = state.lock().unwrap();
        let host = host_veth_name("net", "c1", "eth0");
        assert_eq!(s.names(Ns::Host), vec!["br0".to_string(), host.clone()]);
        assert_eq!(s.names(Ns::Pod), vec!["eth0".to_string()]);
        let br = s.link(Ns::Host, "br0").unwrap().index;
        let h = s.link(Ns::Host, &host).unwrap();
        assert_eq!(h.controller, Some(br));
        assert_eq!(h.alias.as_deref(), Some("berth:net:c1:eth0"));
        assert!(s.ip_forward);
        let pod = s.link(Ns::Pod, "eth0").unwrap().index;
        assert!(
            s.addrs
                .contains(&(Ns::Host, br, "10.1.0.1/24".parse().unwrap()))
        );
        assert!(
            s.addrs
                .contains(&(Ns::Pod, pod, "10.1.0.5/24".parse().unwrap()))
        );
        assert_eq!(s.routes.len(), 1);
        assert_eq!(s.announced, vec![(pod, "10.1.0.5".parse().unwrap(), 3)]);
        // The probe comes before the address, the announcement after the routes.
        let pos = |p: &str| {
            s.calls
                .iter()
                .position(|c| c.starts_with(p))
                .unwrap_or_else(|| panic!("{p}: {:?}", s.calls))
        };
        assert!(pos("set_hairpin") > pos("create_veth"));
        assert!(pos("arp_probe") < pos("add_address Pod"));
        assert!(pos("add_route") > pos("add_address Pod"));
        assert!(pos("announce") > pos("add_route"));
        assert_eq!(applied.macs.len(), 1);
        assert_eq!(applied.macs[0].0, h.mac);
    }

    #[test]
    fn without_a_probe_the_address_goes_on_before_link_up_and_is_announced_once_up() {
        let (mut n, state) = net();
        let p = bridge_plan(json!({"arp": {"garpCount": 1}}));
        apply(&mut n, &p).unwrap();
        let s = state.lock().unwrap();
        let pod = s.link(Ns::Pod, "eth0").unwrap().index;
        let pos = |p: &str| s.calls.iter().position(|c| c.starts_with(p)).unwrap();
        assert!(
            pos("add_address Pod") < pos("set_link Pod"),
            "{:?}",
            s.calls
        );
        assert!(!s.calls.iter().any(|c| c.starts_with("arp_probe")));
        assert!(
            pos("wait_oper_up Host") < pos("announce") && pos("wait_oper_up Pod") < pos("announce")
        );
        assert_eq!(s.announced, vec![(pod, "10.1.0.5".parse().unwrap(), 1)]);
    }

    fn dual_plan(arp: serde_json::Value) -> Plan {
        let v = json!({"mode": "bridge", "bridge": "br0", "arp": arp});
        build(
            "net",
            "c1",
            &spec(v),
            &[vec![
                alloc("10.1.0.5/24", "10.1.0.1"),
                alloc("fd00:1::5/64", "fd00:1::1"),
            ]],
        )
        .unwrap()
    }

    #[test]
    fn dual_stack_probes_adds_and_announces_both_families() {
        let (mut n, state) = net();
        apply(&mut n, &dual_plan(json!({"probe": true, "garpCount": 3}))).unwrap();
        let s = state.lock().unwrap();
        let br = s.link(Ns::Host, "br0").unwrap().index;
        let pod = s.link(Ns::Pod, "eth0").unwrap().index;
        for (ns, idx, a) in [
            (Ns::Host, br, "10.1.0.1/24"),
            (Ns::Host, br, "fd00:1::1/64"),
            (Ns::Pod, pod, "10.1.0.5/24"),
            (Ns::Pod, pod, "fd00:1::5/64"),
        ] {
            assert!(s.addrs.contains(&(ns, idx, a.parse().unwrap())), "{a}");
        }
        let dsts: Vec<String> = s.routes.iter().map(|r| format!("{r:?}")).collect();
        assert!(
            dsts.iter()
                .any(|r| r.contains("0.0.0.0/0") && r.contains("10.1.0.1"))
                && dsts
                    .iter()
                    .any(|r| r.contains("::/0") && r.contains("fd00:1::1")),
            "{dsts:?}"
        );
        // Each address is probed before any goes on (ARP, then NDP) and announced after.
        let probes: Vec<&String> = s
            .calls
            .iter()
            .filter(|c| c.starts_with("arp_probe"))
            .collect();
        assert_eq!(
            probes,
            [
                &format!("arp_probe {pod} 10.1.0.5"),
                &format!("arp_probe {pod} fd00:1::5")
            ]
        );
        let last_probe = s
            .calls
            .iter()
            .rposition(|c| c.starts_with("arp_probe"))
            .unwrap();
        let first_addr = s
            .calls
            .iter()
            .position(|c| c.starts_with("add_address Pod"))
            .unwrap();
        assert!(last_probe < first_addr, "{:?}", s.calls);
        assert_eq!(
            s.announced,
            vec![
                (pod, "10.1.0.5".parse().unwrap(), 3),
                (pod, "fd00:1::5".parse().unwrap(), 3)
            ]
        );
    }

    #[test]
    fn a_duplicate_ipv6_address_is_refused_and_nothing_is_left() {
        let (mut n, state) = net();
        {
            let mut s = state.lock().unwrap();
            s.conflict = Some([2, 0, 0, 0, 0, 9]);
            s.conflict_ip = Some("fd00:1::5".parse().unwrap());
        }
        let e = apply(&mut n, &dual_plan(json!({"probe": true}))).unwrap_err();
        assert_eq!(e.error.code, ADDRESS_CONFLICT);
        assert!(
            e.error
                .msg
                .contains("address fd00:1::5 for eth0 is already in use by 02:00:00:00:00:09"),
            "{}",
            e.error.msg
        );
        let s = state.lock().unwrap();
        assert_eq!(s.names(Ns::Pod), Vec::<String>::new());
        assert!(!s.addrs.iter().any(|(ns, _, _)| *ns == Ns::Pod));
    }

    #[test]
    fn an_existing_bridge_is_reused_and_a_non_bridge_name_is_refused() {
        let (mut n, state) = net();
        state.lock().unwrap().add_host_nic("br0");
        let e = apply(&mut n, &bridge_plan(json!({}))).unwrap_err();
        assert_eq!(e.error.code, ErrorCode::InvalidConfig);
        assert!(e.error.msg.contains("not a bridge"), "{}", e.error.msg);
        assert_eq!(state.lock().unwrap().names(Ns::Pod), Vec::<String>::new());
        // A real bridge is used as it is, not re-created.
        let (mut n, state) = net();
        n.create_bridge("br0", None).unwrap();
        state.lock().unwrap().calls.clear();
        apply(&mut n, &bridge_plan(json!({}))).unwrap();
        assert!(
            !state
                .lock()
                .unwrap()
                .calls
                .iter()
                .any(|c| c.starts_with("create_bridge"))
        );
    }

    #[test]
    fn every_failing_step_rolls_back_to_nothing() {
        for step in [
            "create_veth",
            "set_link Host",
            "set_hairpin",
            "set_link Pod",
            "wait_oper_up",
            "arp_probe",
            "add_address Pod",
            "add_route",
            "announce",
        ] {
            let (mut n, state) = net();
            state.lock().unwrap().fail_on = Some(step.into());
            let e = apply(&mut n, &bridge_plan(json!({}))).unwrap_err();
            assert_eq!(e.error.code, crate::error::NETWORK_SETUP, "{step}");
            assert!(
                e.rollback_failures.is_empty(),
                "{step}: {:?}",
                e.rollback_failures
            );
            let s = state.lock().unwrap();
            assert!(s.links.is_empty(), "{step} left {:?}", s.links);
            assert!(s.addrs.iter().all(|(ns, _, _)| *ns == Ns::Host), "{step}");
        }
    }

    #[test]
    fn rollback_keeps_a_bridge_other_pods_use() {
        let (mut n, state) = net();
        apply(&mut n, &bridge_plan(json!({}))).unwrap();
        let other = build(
            "net",
            "c2",
            &spec(json!({"mode": "bridge", "bridge": "br0"})),
            &[vec![alloc("10.1.0.6/24", "10.1.0.1")]],
        )
        .unwrap();
        let mut n2 = FakeNet {
            state: state.clone(),
            pod: true,
        };
        // c2's pod namespace is a different one; the fake has one pod namespace, so drop c1's end.
        state
            .lock()
            .unwrap()
            .links
            .retain(|(ns, _)| *ns == Ns::Host);
        state.lock().unwrap().fail_on = Some("add_route".into());
        apply(&mut n2, &other).unwrap_err();
        let names = state.lock().unwrap().names(Ns::Host);
        assert!(names.contains(&"br0".to_string()));
        assert!(names.contains(&host_veth_name("net", "c1", "eth0")));
        assert!(!names.contains(&host_veth_name("net", "c2", "eth0")));
    }

    #[test]
    fn an_answered_probe_refuses_the_address_and_undoes_everything() {
        let (mut n, state) = net();
        state.lock().unwrap().conflict = Some([2, 0xbb, 0, 0, 0, 9]);
        let e = apply(&mut n, &bridge_plan(json!({})))
            .unwrap_err()
            .into_cni();
        assert_eq!(e.code, ADDRESS_CONFLICT);
        assert!(
            e.msg.contains("10.1.0.5") && e.msg.contains("02:bb:00:00:00:09"),
            "{}",
            e.msg
        );
        let s = state.lock().unwrap();
        assert!(s.links.is_empty());
        assert!(!s.calls.iter().any(|c| c.starts_with("add_address Pod")));
    }

    #[test]
    fn underlay_enslaves_the_uplink_and_rollback_releases_the_new_bridge() {
        let (mut n, state) = net();
        let up = state.lock().unwrap().add_host_nic("uplink0");
        let p = build(
            "net",
            "c1",
            &spec(json!({"mode": "bridge", "bridge": "br-ext", "uplink": "uplink0"})),
            &[vec![alloc("192.168.5.9/24", "192.168.5.1")]],
        )
        .unwrap();
        apply(&mut n, &p).unwrap();
        {
            let s = state.lock().unwrap();
            let br = s.link(Ns::Host, "br-ext").unwrap().index;
            assert_eq!(s.link(Ns::Host, "uplink0").unwrap().controller, Some(br));
            assert!(
                !s.addrs.iter().any(|(ns, _, _)| *ns == Ns::Host),
                "external gateway: bridge has no address"
            );
            assert!(up > 0);
        }
        let (mut n, state) = net();
        state.lock().unwrap().add_host_nic("uplink0");
        state.lock().unwrap().fail_on = Some("add_route".into());
        apply(&mut n, &p).unwrap_err();
        assert_eq!(
            state.lock().unwrap().names(Ns::Host),
            vec!["uplink0".to_string()]
        );
        // A missing uplink is a config error, found before anything is created.
        let (mut n, state) = net();
        let e = preflight(
            &mut n,
            &spec(json!({"mode": "bridge", "bridge": "br-ext", "uplink": "nope0"})),
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(state.lock().unwrap().links.is_empty());
    }

    #[test]
    fn macvlan_is_created_in_the_pod_and_a_missing_master_is_refused() {
        let (mut n, state) = net();
        let m = state.lock().unwrap().add_host_nic("eth9");
        let s = spec(json!({"mode": "macvlan", "master": "eth9"}));
        let p = build(
            "net",
            "c1",
            &s,
            &[vec![alloc("192.168.5.9/24", "192.168.5.1")]],
        )
        .unwrap();
        apply(&mut n, &p).unwrap();
        assert!(
            state
                .lock()
                .unwrap()
                .calls
                .contains(&format!("create_macvlan {m} eth0"))
        );
        assert_eq!(
            state.lock().unwrap().names(Ns::Pod),
            vec!["eth0".to_string()]
        );
        let (mut n, _) = net();
        let e = preflight(&mut n, &spec(json!({"mode": "macvlan", "master": "eth9"}))).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.msg.contains("master NIC eth9 not found"), "{}", e.msg);
    }

    #[test]
    fn a_vlan_pool_puts_the_macvlan_on_a_shared_vlan_link() {
        let (mut n, state) = net();
        state.lock().unwrap().add_host_nic("eth9");
        let s = spec(json!({"mode": "macvlan", "master": "eth9"}));
        let mut a = alloc("192.168.5.9/24", "192.168.5.1");
        a.vlan = Some(30);
        let p = build("net", "c1", &s, &[vec![a.clone()]]).unwrap();
        apply(&mut n, &p).unwrap();
        let st = state.lock().unwrap();
        let vl = st.link(Ns::Host, "eth9.30").expect("vlan link").index;
        assert!(
            st.calls.contains(&format!("create_macvlan {vl} eth0")),
            "{:?}",
            st.calls
        );
        drop(st);
        // A failure later keeps the shared VLAN link but removes the pod's macvlan.
        let (mut n, state) = net();
        state.lock().unwrap().add_host_nic("eth9");
        state.lock().unwrap().fail_on = Some("add_route".into());
        apply(&mut n, &p).unwrap_err();
        let st = state.lock().unwrap();
        assert_eq!(
            st.names(Ns::Host),
            vec!["eth9".to_string(), "eth9.30".to_string()]
        );
        assert!(st.names(Ns::Pod).is_empty());
    }

    #[test]
    fn preflight_refuses_an_interface_the_pod_already_has() {
        let (mut n, _) = net();
        apply(&mut n, &bridge_plan(json!({}))).unwrap();
        let e =
            pod_preflight(&mut n, &spec(json!({"mode": "bridge", "bridge": "br0"}))).unwrap_err();
        assert_eq!(e.code, crate::error::INTERFACE_EXISTS);
    }

    #[test]
    fn teardown_is_idempotent_and_works_without_the_pod() {
        let (mut n, state) = net();
        let s = spec(json!({"mode": "bridge", "bridge": "br0"}));
        apply(&mut n, &bridge_plan(json!({}))).unwrap();
        assert!(teardown(&mut n, "net", "c1", &s).is_empty());
        assert_eq!(
            state.lock().unwrap().names(Ns::Host),
            vec!["br0".to_string()]
        );
        assert!(state.lock().unwrap().names(Ns::Pod).is_empty());
        assert!(teardown(&mut n, "net", "c1", &s).is_empty());
        let mut no_pod = FakeNet {
            state: state.clone(),
            pod: false,
        };
        assert!(teardown(&mut no_pod, "net", "c1", &s).is_empty());
        let mv = spec(json!({"mode": "macvlan", "master": "eth9"}));
        assert!(teardown(&mut no_pod, "net", "c1", &mv).is_empty());
    }

    #[test]
    fn check_finds_each_kind_of_drift() {
        let s = spec(json!({"mode": "bridge", "bridge": "br0"}));
        let (mut n, state) = net();
        let p = bridge_plan(json!({}));
        let applied = apply(&mut n, &p).unwrap();
        let prev = crate::plan::result(&p, &applied, "/x");
        check(&mut n, "net", "c1", &s, &prev).unwrap();
        // A removed route.
        state.lock().unwrap().routes.clear();
        let e = check(&mut n, "net", "c1", &s, &prev).unwrap_err();
        assert_eq!(e.code, CHECK_MISMATCH);
        assert!(e.msg.contains("route to 0.0.0.0/0"), "{}", e.msg);
        // A removed address.
        let (mut n, state) = net();
        let applied = apply(&mut n, &p).unwrap();
        let prev = crate::plan::result(&p, &applied, "/x");
        state
            .lock()
            .unwrap()
            .addrs
            .retain(|(ns, _, _)| *ns == Ns::Host);
        assert!(
            check(&mut n, "net", "c1", &s, &prev)
                .unwrap_err()
                .msg
                .contains("lacks address")
        );
        // A removed interface.
        n.delete_link(Ns::Host, &host_veth_name("net", "c1", "eth0"))
            .unwrap();
        assert!(
            check(&mut n, "net", "c1", &s, &prev)
                .unwrap_err()
                .msg
                .contains("missing in the pod")
        );
    }
}
