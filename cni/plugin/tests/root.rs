//! berth-cni executed for real, inside network namespaces these tests create. A "node"
//! namespace plays the host; a "tor" namespace plays the top-of-rack switch. Nothing touches
//! the machine's own interfaces.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

struct Bed {
    node: Netns,
    dir: TempDir,
    network: String,
}

impl Bed {
    fn new() -> Bed {
        require_root();
        Bed {
            node: Netns::new("bnode"),
            dir: TempDir::new("berth-cni-root-"),
            network: tag("net"),
        }
    }

    fn ipam(&self, pools: Value) -> Value {
        berth_ipam(&self.dir.0, pools)
    }

    fn conf(&self, fields: Value, pools: Value) -> Value {
        let mut c = json!({"cniVersion": "1.1.0", "name": self.network, "type": "berth-cni",
            "ipam": self.ipam(pools)});
        for (k, v) in fields.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    fn run(&self, verb: &str, cid: &str, pod: Option<&Netns>, conf: &Value) -> (i32, Value) {
        let path = pod.map(|p| p.path());
        run_plugin(
            &self.node,
            BERTH,
            &Call {
                verb,
                container_id: cid,
                netns: path.as_deref(),
                ifname: "eth0",
            },
            conf,
        )
    }

    fn add(&self, cid: &str, pod: &Netns, conf: &Value) -> Value {
        let (code, r) = self.run("ADD", cid, Some(pod), conf);
        assert_eq!(code, 0, "ADD {cid}: {r}");
        r
    }

    fn host_veths(&self) -> Vec<String> {
        self.node
            .links()
            .into_iter()
            .filter(|l| l.starts_with("bv"))
            .collect()
    }
}

fn pool(name: &str, subnet: &str, gw: &str) -> Value {
    json!({"name": name, "subnet": subnet, "gateway": gw})
}

fn ip_of(result: &Value, n: usize) -> String {
    let a = result["ips"][n]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn bridge_pods_get_planned_addresses_and_reach_each_other_and_the_gateway() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-t", "hairpinMode": true, "ipForward": true, "mtu": 1400}),
        json!([pool("p", "10.244.9.0/24", "10.244.9.1")]),
    );
    let (a, b) = (Netns::new("bpa"), Netns::new("bpb"));
    let ra = bed.add("ca", &a, &conf);
    // Pod b's address is the pool's next one; its single announcement is the kernel's
    // (arp_notify), seen on the bridge.
    let listener = garp_listener(
        &bed.node,
        "br-t",
        "10.244.9.3".parse().unwrap(),
        1,
        Duration::from_secs(2),
    );
    let rb = bed.add("cb", &b, &conf);
    assert_eq!(
        listener.join().unwrap(),
        1,
        "no gratuitous ARP from pod b on the bridge"
    );
    let (ipa, ipb) = (ip_of(&ra, 0), ip_of(&rb, 0));
    assert_ne!(ipa, ipb);
    // The pod has what the plan said: address, MTU, default route via the bridge.
    let addr = a.ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("inet {ipa}/24")), "{addr}");
    assert!(a.ip(&["link", "show", "eth0"]).contains("mtu 1400"));
    let routes = a.ip(&["route"]);
    assert!(
        routes.contains("default via 10.244.9.1 dev eth0"),
        "{routes}"
    );
    let br = bed.node.ip(&["-o", "addr", "show", "dev", "br-t"]);
    assert!(br.contains("10.244.9.1/24"), "{br}");
    let fwd = bed.node.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(
        String::from_utf8_lossy(&fwd.stdout).trim(),
        "1",
        "ipForward was asked for"
    );
    let ports = bed.node.ip(&["-d", "link", "show", "master", "br-t"]);
    assert_eq!(ports.matches("hairpin on").count(), 2, "{ports}");
    assert_eq!(bed.host_veths().len(), 2);
    assert_eq!(
        ra["interfaces"][1]["mac"].as_str().unwrap(),
        a.ip(&["link", "show", "eth0"])
            .split("link/ether ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
    );
    assert!(a.ping("10.244.9.1"), "pod a cannot reach the gateway");
    assert!(a.ping(&ipb), "pod a cannot reach pod b");
    assert!(b.ping(&ipa), "pod b cannot reach pod a");
    // DEL twice (the second without a netns, as containerd does) leaves nothing.
    for cid in ["ca", "cb"] {
        let pod = if cid == "ca" { &a } else { &b };
        assert_eq!(bed.run("DEL", cid, Some(pod), &conf).0, 0);
        assert_eq!(bed.run("DEL", cid, None, &conf).0, 0);
        assert_eq!(lease_of(&conf["ipam"], &bed.network, cid, "eth0"), None);
    }
    assert!(bed.host_veths().is_empty(), "{:?}", bed.node.links());
    assert_eq!(a.links(), vec!["lo".to_string()]);
}

/// The TOR switch: a namespace with a bridge holding the gateway, ports facing the node.
struct Tor {
    ns: Netns,
}

impl Tor {
    fn new(node: &Netns, gw_cidr: &str, ports: &[&str]) -> Tor {
        let ns = Netns::new("btor");
        ns.ip(&["link", "add", "torbr", "type", "bridge"]);
        ns.ip(&["link", "set", "torbr", "up"]);
        ns.ip(&["addr", "add", gw_cidr, "dev", "torbr"]);
        for (i, p) in ports.iter().enumerate() {
            let tor_port = format!("tor{i}");
            veth_between(&ns, &tor_port, node, p);
            ns.ip(&["link", "set", &tor_port, "master", "torbr"]);
        }
        Tor { ns }
    }
}

/// Runs `count` on a raw socket for EtherType `protocol` bound to `dev` inside `ns`, on a
/// thread of its own; returns once the socket listens, so nothing sent after is missed.
fn listen_in(
    ns: &Netns,
    dev: &str,
    protocol: u16,
    count: impl FnOnce(&berth_cni::arp::ArpSocket) -> u32 + Send + 'static,
) -> std::thread::JoinHandle<u32> {
    let path = ns.path();
    let index: u32 = ns
        .ip(&["-o", "link", "show", dev])
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: setns on this test thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let sock = berth_cni::arp::ArpSocket::open_for(protocol).unwrap();
        sock.bind(index).unwrap();
        tx.send(()).unwrap();
        count(&sock)
    });
    rx.recv().unwrap();
    h
}

/// Counts gratuitous ARPs for `ip` seen on `dev` inside `ns` until `want` or the deadline.
fn garp_listener(
    ns: &Netns,
    dev: &str,
    ip: Ipv4Addr,
    want: u32,
    within: Duration,
) -> std::thread::JoinHandle<u32> {
    listen_in(ns, dev, berth_cni::arp::ETH_P_ARP, move |sock| {
        let seen = std::cell::Cell::new(0u32);
        let deadline = Instant::now() + within;
        let r = sock.recv_until(deadline, |p| {
            if p.sender_ip == ip && p.target_ip == ip {
                seen.set(seen.get() + 1);
            }
            seen.get() >= want
        });
        r.expect("receiving ARP at the TOR");
        seen.get()
    })
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn underlay_bridge_and_macvlan_pods_reach_the_tor_gateway_and_each_other() {
    let bed = Bed::new();
    let tor = Tor::new(&bed.node, "192.168.77.1/24", &["up0", "up1"]);
    let pools = json!([{"name": "rack", "subnet": "192.168.77.0/24", "gateway": "192.168.77.1",
        "ranges": [{"start": "192.168.77.10", "end": "192.168.77.20"}]}]);
    let arp = json!({"probe": true, "probeTimeoutMs": 100, "garpCount": 3, "garpIntervalMs": 50});
    let bridged = bed.conf(
        json!({"mode": "bridge", "bridge": "br-ext", "uplink": "up0", "arp": arp}),
        pools.clone(),
    );
    let macvlan = bed.conf(
        json!({"mode": "macvlan", "master": "up1", "arp": arp}),
        pools,
    );
    let (a, b) = (Netns::new("bua"), Netns::new("bub"));
    let ra = bed.add("ua", &a, &bridged);
    let ipa = ip_of(&ra, 0);
    // The pool's next address is known before ADD: listen for its announcements at the TOR.
    let expect_b: Ipv4Addr = "192.168.77.11".parse().unwrap();
    // On the TOR's bridge: a protocol-bound packet socket on a bridge port sees nothing,
    // the bridge consumes port frames before protocol handlers run.
    let listener = garp_listener(&tor.ns, "torbr", expect_b, 3, Duration::from_secs(3));
    let rb = bed.add("ub", &b, &macvlan);
    assert_eq!(ip_of(&rb, 0), expect_b.to_string());
    let seen = listener.join().unwrap();
    assert!(
        seen >= 3,
        "the TOR saw {seen} gratuitous ARPs for {expect_b}, want 3"
    );
    // The uplink is a bridge port; the bridge holds no address (the TOR is the gateway).
    assert!(
        bed.node
            .ip(&["link", "show", "up0"])
            .contains("master br-ext")
    );
    assert!(
        !bed.node
            .ip(&["-o", "addr", "show", "dev", "br-ext"])
            .contains("inet ")
    );
    assert!(
        a.ip(&["route"])
            .contains("default via 192.168.77.1 dev eth0")
    );
    assert!(
        b.ip(&["-d", "link", "show", "eth0"])
            .contains("macvlan mode bridge")
    );
    assert!(
        a.ping("192.168.77.1"),
        "bridged pod cannot reach the TOR gateway"
    );
    assert!(
        b.ping("192.168.77.1"),
        "macvlan pod cannot reach the TOR gateway"
    );
    assert!(
        a.ping(&expect_b.to_string()),
        "bridged pod cannot reach the macvlan pod"
    );
    assert!(b.ping(&ipa), "macvlan pod cannot reach the bridged pod");
    for (cid, pod, conf) in [("ua", &a, &bridged), ("ub", &b, &macvlan)] {
        assert_eq!(bed.run("DEL", cid, Some(pod), conf).0, 0);
        assert_eq!(bed.run("DEL", cid, None, conf).0, 0);
        assert_eq!(pod.links(), vec!["lo".to_string()]);
    }
    assert!(bed.host_veths().is_empty());
}

/// Counts unsolicited neighbour advertisements of `ip` seen on `dev` inside `ns` until `want`
/// or the deadline.
fn na_listener(
    ns: &Netns,
    dev: &str,
    ip: std::net::Ipv6Addr,
    want: u32,
    within: Duration,
) -> std::thread::JoinHandle<u32> {
    listen_in(ns, dev, berth_cni::ndp::ETH_P_IPV6, move |sock| {
        let seen = std::cell::Cell::new(0u32);
        let deadline = Instant::now() + within;
        let r = sock.recv_frame_until(deadline, |f| {
            let p = berth_cni::ndp::NdpPacket::parse(f)?;
            if !p.solicitation && p.source == ip && p.target == ip {
                seen.set(seen.get() + 1);
            }
            (seen.get() >= want).then_some(())
        });
        r.expect("receiving NDP at the TOR");
        seen.get()
    })
}

/// One ping, no retry: the address must be usable the moment ADD returns.
fn ping_once(ns: &Netns, addr: &str) -> bool {
    ns.exec(&["ping", "-c", "1", "-W", "2", "-q", addr])
        .status
        .success()
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn dual_stack_underlay_pods_probe_announce_and_reach_the_tor_over_both_families() {
    let bed = Bed::new();
    let tor = Tor::new(&bed.node, "192.168.79.1/24", &["up0", "up1", "up2"]);
    tor.ns
        .ip(&["addr", "add", "fd00:79::1/64", "dev", "torbr", "nodad"]);
    let pools = json!([
        {"name": "rack", "subnet": "192.168.79.0/24", "gateway": "192.168.79.1",
         "ranges": [{"start": "192.168.79.10", "end": "192.168.79.20"}]},
        {"name": "rack6", "subnet": "fd00:79::/64", "gateway": "fd00:79::1",
         "ranges": [{"start": "fd00:79::10", "end": "fd00:79::20"}]},
        pool("int", "10.31.0.0/24", "10.31.0.1"),
        pool("int6", "fd00:31::/64", "fd00:31::1"),
    ]);
    let arp = json!({"probe": true, "probeTimeoutMs": 100, "garpCount": 3, "garpIntervalMs": 50});
    let bridged = bed.conf(
        json!({"mode": "bridge", "bridge": "br-ext", "uplink": "up0", "pools": ["rack", "rack6"], "arp": arp}),
        pools.clone(),
    );
    let macvlan = bed.conf(
        json!({"mode": "macvlan", "master": "up1", "pools": ["rack", "rack6"], "arp": arp}),
        pools.clone(),
    );
    let multi = bed.conf(
        json!({"arp": arp, "interfaces": [
            {"name": "eth0", "mode": "macvlan", "master": "up2", "pools": ["rack", "rack6"], "defaultRoute": true},
            {"name": "eth1", "mode": "bridge", "bridge": "br-int", "gatewayMode": "bridge", "pools": ["int", "int6"],
             "routes": [{"dst": "fd00:50::/64"}]}]}),
        pools,
    );
    let (a, b, m) = (Netns::new("bda"), Netns::new("bdb"), Netns::new("bdm"));
    let ra = bed.add("da", &a, &bridged);
    assert_eq!(ip_of(&ra, 0), "192.168.79.10");
    assert_eq!(ip_of(&ra, 1), "fd00:79::10");
    // The next IPv6 address is known before ADD: listen for its advertisements at the TOR.
    let expect_b: std::net::Ipv6Addr = "fd00:79::11".parse().unwrap();
    let listener = na_listener(&tor.ns, "torbr", expect_b, 3, Duration::from_secs(3));
    let rb = bed.add("db", &b, &macvlan);
    assert_eq!(ip_of(&rb, 1), expect_b.to_string());
    let seen = listener.join().unwrap();
    assert!(
        seen >= 3,
        "the TOR saw {seen} neighbour advertisements for {expect_b}, want 3"
    );
    let rm = bed.add("dm", &m, &multi);
    let ips: Vec<String> = (0..4).map(|n| ip_of(&rm, n)).collect();
    assert_eq!(
        ips,
        ["192.168.79.12", "fd00:79::12", "10.31.0.2", "fd00:31::2"]
    );
    for (pod, name) in [(&a, "bridged"), (&b, "macvlan"), (&m, "multi-NIC")] {
        // The global addresses are usable at once (the kernel's link-local one goes through
        // its own DAD; pod traffic never leaves from it).
        let addrs = pod.ip(&["-o", "addr", "show", "dev", "eth0", "scope", "global"]);
        assert!(addrs.contains("inet6 fd00:79::"), "{name}: {addrs}");
        assert!(!addrs.contains("tentative"), "{name}: {addrs}");
        assert!(
            pod.ip(&["-6", "route"])
                .contains("default via fd00:79::1 dev eth0"),
            "{name}"
        );
        assert!(
            pod.ip(&["-4", "route"])
                .contains("default via 192.168.79.1 dev eth0"),
            "{name}"
        );
        for gw in ["192.168.79.1", "fd00:79::1"] {
            assert!(
                ping_once(pod, gw),
                "{name} pod cannot reach the TOR at {gw}"
            );
        }
    }
    assert!(
        ping_once(&a, "fd00:79::11"),
        "bridged pod cannot reach the macvlan pod"
    );
    assert!(
        ping_once(&b, "fd00:79::10"),
        "macvlan pod cannot reach the bridged pod"
    );
    // The second NIC: both families, its static IPv6 route, no default route, the bridge
    // the gateway of both.
    let r6 = m.ip(&["-6", "route"]);
    assert!(r6.contains("fd00:50::/64 via fd00:31::1 dev eth1"), "{r6}");
    assert_eq!(r6.matches("default").count(), 1, "{r6}");
    assert!(ping_once(&m, "fd00:31::1"));
    assert!(ping_once(&m, "10.31.0.1"));
    for (cid, pod, conf) in [
        ("da", &a, &bridged),
        ("db", &b, &macvlan),
        ("dm", &m, &multi),
    ] {
        assert_eq!(bed.run("DEL", cid, Some(pod), conf).0, 0);
        assert_eq!(bed.run("DEL", cid, None, conf).0, 0);
        assert_eq!(pod.links(), vec!["lo".to_string()]);
        for ifname in ["eth0", "eth1"] {
            assert_eq!(
                leases_of(&conf["ipam"], &bed.network, cid, ifname),
                Vec::<String>::new()
            );
        }
    }
    assert!(bed.host_veths().is_empty());
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn a_duplicate_ipv6_address_held_by_the_tor_is_refused_and_nothing_is_left() {
    let bed = Bed::new();
    let tor = Tor::new(&bed.node, "192.168.80.1/24", &["up0"]);
    // Someone behind the TOR holds the only IPv6 address of the pool.
    tor.ns
        .ip(&["addr", "add", "fd00:80::50/64", "dev", "torbr", "nodad"]);
    let conf = bed.conf(
        json!({"mode": "macvlan", "master": "up0", "arp": {"probe": true, "probeTimeoutMs": 300}}),
        json!([{"name": "rack", "subnet": "192.168.80.0/24", "gateway": "192.168.80.1"},
               {"name": "rack6", "subnet": "fd00:80::/64", "gateway": "fd00:80::1",
                "ranges": [{"start": "fd00:80::50", "end": "fd00:80::50"}]}]),
    );
    let before = bed.node.links();
    let pod = Netns::new("bd6");
    let (code, e) = bed.run("ADD", "d6", Some(&pod), &conf);
    assert_eq!(code, 1);
    assert_eq!(e["code"], 120, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("fd00:80::50 for eth0 is already in use"),
        "{e}"
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(bed.node.links(), before);
    assert_eq!(
        leases_of(&conf["ipam"], &bed.network, "d6", "eth0"),
        Vec::<String>::new(),
        "neither address is kept"
    );
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn two_nic_pod_has_the_default_route_on_eth0_and_static_routes_on_eth1() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "br-ext", "pool": "ext", "defaultRoute": true},
            {"name": "eth1", "mode": "bridge", "bridge": "br-int", "pool": "int", "mac": "02:42:0a:1e:00:99",
             "routes": [{"dst": "10.50.0.0/16"}, {"dst": "10.60.0.0/16", "gw": "10.30.0.254"}]}]}),
        json!([pool("ext", "10.40.0.0/24", "10.40.0.1"), pool("int", "10.30.0.0/24", "10.30.0.1")]),
    );
    let pod = Netns::new("b2n");
    let r = bed.add("c2", &pod, &conf);
    let routes = pod.ip(&["route"]);
    assert!(
        routes.contains("default via 10.40.0.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("10.50.0.0/16 via 10.30.0.1 dev eth1"),
        "{routes}"
    );
    assert!(
        routes.contains("10.60.0.0/16 via 10.30.0.254 dev eth1"),
        "{routes}"
    );
    assert_eq!(routes.matches("default").count(), 1, "{routes}");
    assert!(
        pod.ip(&["link", "show", "eth1"])
            .contains("02:42:0a:1e:00:99")
    );
    assert_eq!(ip_of(&r, 0), "10.40.0.2");
    assert_eq!(ip_of(&r, 1), "10.30.0.2");
    assert!(pod.ping("10.40.0.1"));
    assert!(pod.ping("10.30.0.1"));
    assert_eq!(bed.run("DEL", "c2", Some(&pod), &conf).0, 0);
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert!(bed.host_veths().is_empty());
    for ifname in ["eth0", "eth1"] {
        assert_eq!(lease_of(&conf["ipam"], &bed.network, "c2", ifname), None);
    }
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn an_address_another_host_answers_for_is_refused_and_nothing_is_left() {
    let bed = Bed::new();
    let tor = Tor::new(&bed.node, "192.168.78.1/24", &["up0"]);
    // Someone behind the TOR squats on the only address of the pool.
    tor.ns
        .ip(&["addr", "add", "192.168.78.50/24", "dev", "torbr"]);
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-ext", "uplink": "up0", "arp": {"probe": true, "probeTimeoutMs": 300}}),
        json!([{"name": "rack", "subnet": "192.168.78.0/24", "gateway": "192.168.78.1",
                "ranges": [{"start": "192.168.78.50", "end": "192.168.78.50"}]}]),
    );
    let before = bed.node.links();
    let pod = Netns::new("bcf");
    let (code, e) = bed.run("ADD", "cf", Some(&pod), &conf);
    assert_eq!(code, 1);
    assert_eq!(e["code"], 120, "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("192.168.78.50 for eth0 is already in use"),
        "{e}"
    );
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(
        bed.node.links(),
        before,
        "the bridge this ADD created must be gone"
    );
    assert!(!bed.node.ip(&["link", "show", "up0"]).contains("master"));
    assert_eq!(lease_of(&conf["ipam"], &bed.network, "cf", "eth0"), None);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn del_succeeds_twice_without_netns_and_after_the_netns_is_gone() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-d"}),
        json!([pool("p", "10.245.1.0/24", "10.245.1.1")]),
    );
    let mut pod = Netns::new("bdl");
    bed.add("cd", &pod, &conf);
    let path = pod.path();
    pod.delete();
    let (code, e) = run_plugin(
        &bed.node,
        BERTH,
        &Call {
            verb: "DEL",
            container_id: "cd",
            netns: Some(&path),
            ifname: "eth0",
        },
        &conf,
    );
    assert_eq!(code, 0, "{e}");
    assert_eq!(bed.run("DEL", "cd", None, &conf).0, 0);
    assert_eq!(bed.run("DEL", "never-added", None, &conf).0, 0);
    assert!(bed.host_veths().is_empty());
    assert_eq!(lease_of(&conf["ipam"], &bed.network, "cd", "eth0"), None);
}

/// ADD killed while it waits on the ARP probe (links created, address allocated).
fn kill_add_halfway(bed: &Bed, cid: &str, pod: &Netns, conf: &Value) {
    let path = pod.path();
    let mut child = spawn_plugin(
        &bed.node,
        BERTH,
        &Call {
            verb: "ADD",
            container_id: cid,
            netns: Some(&path),
            ifname: "eth0",
        },
        conf,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while bed.host_veths().is_empty() {
        assert!(Instant::now() < deadline, "ADD never created its veth");
        std::thread::sleep(Duration::from_millis(10));
    }
    // `ip netns exec` execs the plugin, so the child's pid is the plugin's.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(bed.host_veths().len(), 1, "the half-done ADD left its veth");
    assert!(
        lease_of(&conf["ipam"], &bed.network, cid, "eth0").is_some(),
        "and its address"
    );
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn an_add_killed_halfway_leaves_nothing_after_del_or_gc() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-k", "arp": {"probe": true, "probeTimeoutMs": 4000}}),
        json!([pool("p", "10.245.2.0/24", "10.245.2.1")]),
    );
    let pod = Netns::new("bkl");
    kill_add_halfway(&bed, "k1", &pod, &conf);
    assert_eq!(bed.run("DEL", "k1", Some(&pod), &conf).0, 0);
    assert!(bed.host_veths().is_empty());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(lease_of(&conf["ipam"], &bed.network, "k1", "eth0"), None);
    // The same through GC, with the runtime naming no attachment as valid.
    kill_add_halfway(&bed, "k2", &pod, &conf);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (code, e) = bed.run("GC", "", None, &gc);
    assert_eq!(code, 0, "{e}");
    assert!(bed.host_veths().is_empty());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(lease_of(&conf["ipam"], &bed.network, "k2", "eth0"), None);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn check_passes_on_a_fresh_pod_and_detects_a_removed_route() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-c"}),
        json!([pool("p", "10.245.3.0/24", "10.245.3.1")]),
    );
    let pod = Netns::new("bck");
    let r = bed.add("cc", &pod, &conf);
    let mut chk = conf.clone();
    chk["prevResult"] = r;
    assert_eq!(bed.run("CHECK", "cc", Some(&pod), &chk), (0, Value::Null));
    pod.ip(&["route", "del", "default"]);
    let (code, e) = bed.run("CHECK", "cc", Some(&pod), &chk);
    assert_eq!(code, 1);
    assert_eq!(e["code"], 130, "{e}");
    assert!(
        e["msg"].as_str().unwrap().contains("route to 0.0.0.0/0"),
        "{e}"
    );
    assert_eq!(bed.run("DEL", "cc", Some(&pod), &conf).0, 0);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn check_covers_both_families_of_a_dual_stack_pod_in_every_version() {
    let bed = Bed::new();
    let pools = json!([
        pool("p", "10.245.4.0/24", "10.245.4.1"),
        pool("p6", "fd00:245:4::/64", "fd00:245:4::1")
    ]);
    for (n, version) in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let mut conf = bed.conf(json!({"mode": "bridge", "bridge": "br-c6"}), pools.clone());
        conf["cniVersion"] = json!(version);
        let pod = Netns::new("bc6");
        let cid = format!("c6-{n}");
        let r = bed.add(&cid, &pod, &conf);
        assert_eq!(r["cniVersion"], *version);
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{version}: {r}");
        if *version < "1.0.0" {
            assert_eq!(
                (ips[0]["version"].as_str(), ips[1]["version"].as_str()),
                (Some("4"), Some("6")),
                "{r}"
            );
        }
        // CHECK takes the ADD result of its own version; only 0.4.0 and later have CHECK.
        if *version >= "0.4.0" {
            let mut chk = conf.clone();
            chk["prevResult"] = r.clone();
            assert_eq!(
                bed.run("CHECK", &cid, Some(&pod), &chk),
                (0, Value::Null),
                "{version}"
            );
            pod.ip(&["-6", "route", "del", "default"]);
            let (code, e) = bed.run("CHECK", &cid, Some(&pod), &chk);
            assert_eq!((code, e["code"].as_i64()), (1, Some(130)), "{version}: {e}");
            assert!(e["msg"].as_str().unwrap().contains("route to ::/0"), "{e}");
        }
        assert_eq!(bed.run("DEL", &cid, Some(&pod), &conf).0, 0);
        assert_eq!(bed.run("DEL", &cid, None, &conf).0, 0);
        assert_eq!(
            leases_of(&conf["ipam"], &bed.network, &cid, "eth0"),
            Vec::<String>::new()
        );
    }
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn status_reports_a_broken_store_as_code_50() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-s"}),
        json!([pool("p", "10.245.4.0/24", "10.245.4.1")]),
    );
    assert_eq!(bed.run("STATUS", "", None, &conf), (0, Value::Null));
    let mut bad = conf.clone();
    bad["ipam"]["store"] =
        json!({"type": "etcd", "endpoints": ["http://127.0.0.1:1"], "timeout": "300ms"});
    let (code, e) = bed.run("STATUS", "", None, &bad);
    assert_eq!(code, 1);
    assert_eq!(e["code"], 50, "{e}");
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn bad_input_gets_its_cni_code_and_creates_nothing() {
    let bed = Bed::new();
    let pools = json!([
        pool("a", "10.246.0.0/24", "10.246.0.1"),
        pool("b", "10.246.1.0/24", "10.246.1.1")
    ]);
    let good = bed.conf(json!({"mode": "bridge", "bridge": "br-x"}), pools.clone());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let cases: Vec<(&str, Value, &str, i64)> = vec![
        ("unknown mode", with(&|c| c["mode"] = json!("ipvlan")), "eth0", 7),
        ("missing master field", with(&|c| { c["mode"] = json!("macvlan"); c.as_object_mut().unwrap().remove("bridge"); }), "eth0", 7),
        ("master NIC absent", with(&|c| { c["mode"] = json!("macvlan"); c.as_object_mut().unwrap().remove("bridge"); c["master"] = json!("nosuch0"); }), "eth0", 7),
        ("overlapping pools", with(&|c| c["ipam"]["pools"] = json!([pool("a", "10.246.0.0/24", "10.246.0.1"), pool("b", "10.246.0.0/16", "10.246.0.1")])), "eth0", 7),
        ("overlapping subnets on two NICs", bed.conf(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "br-x", "pool": "a"},
            {"name": "eth1", "mode": "bridge", "bridge": "br-y", "pool": "a"}]}), pools.clone()), "eth0", 7),
        ("two default routes", bed.conf(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "br-x", "pool": "a", "defaultRoute": true},
            {"name": "eth1", "mode": "bridge", "bridge": "br-y", "pool": "b", "defaultRoute": true}]}), pools.clone()), "eth0", 7),
        ("config ifname over 15 bytes", bed.conf(json!({"interfaces": [
            {"name": "eth0-is-too-long", "mode": "bridge", "bridge": "br-x", "pool": "a"}]}), pools.clone()), "eth0", 7),
        ("CNI_IFNAME over 15 bytes", good.clone(), "eth0-is-too-long", 4),
        ("a gateway of the other family", with(&|c| c["ipam"]["pools"] = json!([pool("a", "10.246.0.0/24", "fd00:246::1")])), "eth0", 7),
        ("two pools of one family for one interface", bed.conf(json!({"interfaces": [
            {"name": "eth0", "mode": "bridge", "bridge": "br-x", "pools": ["a", "b"]}]}), pools.clone()), "eth0", 7),
        ("berth.io/ip with two addresses of one family", with(&|c| {
            c["capabilities"] = json!({"io.kubernetes.cri.pod-annotations": true});
            c["runtimeConfig"] = json!({"io.kubernetes.cri.pod-annotations":
                {"berth.io/ip": "eth0=10.246.0.5,eth0=10.246.0.6"}});
        }), "eth0", 114),
        ("an IPv6 subnet narrower than /120", with(&|c| c["ipam"]["pools"] = json!([
            pool("a", "10.246.0.0/24", "10.246.0.1"), pool("a6", "fd00:246::/121", "fd00:246::1")])), "eth0", 7),
        ("unknown cniVersion", with(&|c| c["cniVersion"] = json!("2.0.0")), "eth0", 1),
    ];
    let pod = Netns::new("bbad");
    let before = bed.node.links();
    for (what, conf, ifname, want) in cases {
        let path = pod.path();
        let (code, e) = run_plugin(
            &bed.node,
            BERTH,
            &Call {
                verb: "ADD",
                container_id: "cb",
                netns: Some(&path),
                ifname,
            },
            &conf,
        );
        assert_eq!(code, 1, "{what}");
        assert_eq!(e["code"], want, "{what}: {e}");
        assert!(!e["msg"].as_str().unwrap_or_default().is_empty(), "{what}");
        assert_eq!(
            bed.node.links(),
            before,
            "{what} created something on the node"
        );
        assert_eq!(
            pod.links(),
            vec!["lo".to_string()],
            "{what} created something in the pod"
        );
        for ifname in ["eth0", "eth1"] {
            assert_eq!(
                lease_of(&good["ipam"], &bed.network, "cb", ifname),
                None,
                "{what} leaked an address"
            );
        }
    }
    // Malformed JSON never reaches the config parser.
    let path = pod.path();
    let child = {
        use std::io::Write;
        let mut c = std::process::Command::new("ip")
            .args(["netns", "exec", &bed.node.name, BERTH])
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "cb")
            .env("CNI_NETNS", &path)
            .env("CNI_IFNAME", "eth0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(b"{\"cniVersion\": \"1.1.0\", ")
            .unwrap();
        c
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], 6);
    assert_eq!(bed.node.links(), before);
}

// The macvlan-on-VLAN path is covered with the recording fake only: this machine's kernel
// has no 802.1Q support (no 8021q module), so a real VLAN link cannot be created here.
#[test]
#[ignore = "needs root: run by scripts/test"]
fn a_vlan_pool_on_a_bridge_network_is_refused_before_anything_is_created() {
    let bed = Bed::new();
    let pod = Netns::new("btvp");
    let before = bed.node.links();
    let br = bed.conf(
        json!({"mode": "bridge", "bridge": "br-v"}),
        json!([{"name": "v30", "subnet": "192.168.30.0/24", "gateway": "192.168.30.1", "vlan": 30}]),
    );
    let (code, e) = bed.run("ADD", "cv2", Some(&pod), &br);
    assert_eq!((code, e["code"].as_i64()), (1, Some(2)), "{e}");
    assert!(e["msg"].as_str().unwrap().contains("VLAN 30"), "{e}");
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    assert_eq!(bed.node.links(), before);
    assert_eq!(lease_of(&br["ipam"], &bed.network, "cv2", "eth0"), None);
}

#[test]
#[ignore = "needs root: run by scripts/test"]
fn a_delegated_ipam_plugin_works_through_the_same_seam() {
    let bed = Bed::new();
    let data = bed.dir.0.join("host-local");
    let conf = json!({"cniVersion": "1.0.0", "name": bed.network, "type": "berth-cni",
        "mode": "bridge", "bridge": "br-hl",
        "ipam": {"type": "host-local", "subnet": "10.249.0.0/24", "gateway": "10.249.0.1",
                 "dataDir": data}});
    let pod = Netns::new("bhl");
    let r = bed.add("hl", &pod, &conf);
    assert_eq!(r["ips"][0]["address"], "10.249.0.2/24");
    assert_eq!(r["ips"][0]["gateway"], "10.249.0.1");
    assert!(pod.ping("10.249.0.1"));
    let leased = data.join(&bed.network).join("10.249.0.2");
    assert!(
        leased.exists(),
        "host-local recorded no lease at {}",
        leased.display()
    );
    assert_eq!(bed.run("DEL", "hl", Some(&pod), &conf).0, 0);
    assert_eq!(bed.run("DEL", "hl", None, &conf).0, 0);
    assert!(!leased.exists(), "DEL did not release the host-local lease");
    assert!(bed.host_veths().is_empty());
    // Pools are berth IPAM's: asking a delegated plugin for one is a config error.
    let mut pooled = conf.clone();
    pooled["pool"] = json!("ext");
    let (code, e) = bed.run("ADD", "hl2", Some(&pod), &pooled);
    assert_eq!((code, e["code"].as_i64()), (1, Some(7)), "{e}");
    assert_eq!(pod.links(), vec!["lo".to_string()]);
}

/// DEL answers before the kernel has finished tearing the veth down (a detached helper waits
/// for that), but only once both ends are unlisted: when DEL returns, neither end is
/// visible, and the same attachment can be added again at once under the same names.
#[test]
#[ignore = "needs root: run by scripts/test"]
fn a_deleted_veth_is_gone_when_del_returns_and_its_names_are_free_at_once() {
    let bed = Bed::new();
    let conf = bed.conf(
        json!({"mode": "bridge", "bridge": "br-r"}),
        json!([pool("p", "10.245.4.0/24", "10.245.4.1")]),
    );
    let pod = Netns::new("brr");
    for round in 0..10 {
        bed.add("cr", &pod, &conf);
        assert_eq!(bed.host_veths().len(), 1, "round {round}");
        let (code, e) = bed.run("DEL", "cr", Some(&pod), &conf);
        assert_eq!(code, 0, "round {round}: {e}");
        assert!(
            bed.host_veths().is_empty(),
            "round {round}: {:?}",
            bed.node.links()
        );
        assert_eq!(pod.links(), vec!["lo".to_string()], "round {round}");
    }
    // A DEL of a link that is already gone still succeeds.
    assert_eq!(bed.run("DEL", "cr", Some(&pod), &conf).0, 0);
}
