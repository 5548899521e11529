//! Race tests: 8 OS processes of the real `berth-ipam` binary allocating and releasing at once
//! on the local store and on a real etcd, with random `kill -9` of allocators mid-call.
//! Afterwards: no address was ever held by two live attachments, the store is readable, and
//! after GC nothing is leaked.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_ipam_core::store::etcd::EtcdStore;
use berth_ipam_core::store::local::LocalStore;
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::testsupport::EtcdServer;
use rand::Rng;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_berth-ipam");
const WORKERS: usize = 8;

struct Outcome {
    code: Option<i32>,
    stdout: String,
}

/// Runs one CNI call; with `kill_after` the process is SIGKILLed after that delay.
fn cni(conf: &Value, cmd: &str, cid: &str, kill_after: Option<Duration>) -> Outcome {
    let mut child = Command::new(BIN)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/race")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn berth-ipam");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    if let Some(d) = kill_after {
        std::thread::sleep(d);
        let _ = child.kill(); // SIGKILL; may already have exited
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// One attachment's life as the workers saw it.
struct Life {
    cid: String,
    ip: IpAddr,
    /// ADD returned (the address is ours from here) ...
    from: Instant,
    /// ... until DEL was started.
    to: Instant,
}

fn network_config(name: &str, store: Value) -> Value {
    pool_config(name, store, "10.70.0.0/22")
}

fn pool_config(name: &str, store: Value, subnet: &str) -> Value {
    let network = subnet.split('/').next().unwrap();
    let gateway = format!("{}.1", network.rsplit_once('.').unwrap().0);
    json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "bridge",
        "ipam": {
            "type": "berth-ipam",
            "store": store,
            "rack": "r1",
            "pools": [{"name": "race", "subnet": subnet, "gateway": gateway}]
        }
    })
}

/// Runs the workers; returns the lives of every attachment whose ADD was seen to succeed.
fn hammer(conf: &Value, rounds: usize, kill_percent: u32) -> (Vec<Life>, usize) {
    hammer_as(std::slice::from_ref(conf), rounds, kill_percent, false)
}

/// [`hammer`] with worker `w` using `confs[w % confs.len()]` (one per node); with
/// `retry_killed_del`, a killed DEL is sent again as a runtime does (so a small pool is not
/// filled by the addresses of killed DELs, which only GC would collect).
fn hammer_as(
    confs: &[Value],
    rounds: usize,
    kill_percent: u32,
    retry_killed_del: bool,
) -> (Vec<Life>, usize) {
    let lives = Arc::new(Mutex::new(Vec::new()));
    let ops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let conf = confs[w % confs.len()].clone();
            let (lives, ops) = (lives.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rng();
                for r in 0..rounds {
                    let cid = format!("w{w}-r{r}");
                    let kill = |rng: &mut rand::rngs::ThreadRng| {
                        rng.random_ratio(kill_percent, 100)
                            .then(|| Duration::from_micros(rng.random_range(0..4000)))
                    };
                    let add = cni(&conf, "ADD", &cid, kill(&mut rng));
                    ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let added = Instant::now();
                    let ip = match add.code {
                        Some(0) => {
                            let v: Value = serde_json::from_str(&add.stdout).unwrap();
                            let a: ipnet::IpNet =
                                v["ips"][0]["address"].as_str().unwrap().parse().unwrap();
                            Some(a.addr())
                        }
                        None => None, // killed: allocated or not, DEL or GC cleans up
                        Some(c) => panic!("ADD {cid} failed with exit {c}: {}", add.stdout),
                    };
                    // Hold the address a little, like a pod does.
                    std::thread::sleep(Duration::from_micros(rng.random_range(0..2000)));
                    let del_start = Instant::now();
                    if let Some(ip) = ip {
                        lives.lock().unwrap().push(Life {
                            cid: cid.clone(),
                            ip,
                            from: added,
                            to: del_start,
                        });
                    }
                    loop {
                        let del = cni(&conf, "DEL", &cid, kill(&mut rng));
                        ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match del.code {
                            Some(c) => assert_eq!(c, 0, "DEL {cid} failed: {}", del.stdout),
                            None if retry_killed_del => continue,
                            None => {}
                        }
                        break;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let lives = Arc::try_unwrap(lives).ok().unwrap().into_inner().unwrap();
    (lives, ops.load(std::sync::atomic::Ordering::Relaxed))
}

/// No address was held by two attachments at overlapping times.
fn assert_no_duplicates(lives: &[Life]) {
    let mut by_ip: BTreeMap<IpAddr, Vec<&Life>> = BTreeMap::new();
    for l in lives {
        by_ip.entry(l.ip).or_default().push(l);
    }
    let mut dups = Vec::new();
    for (ip, ls) in &by_ip {
        let mut ls = ls.clone();
        ls.sort_by_key(|l| l.from);
        for w in ls.windows(2) {
            if w[1].from < w[0].to {
                dups.push(format!("{ip}: {} and {}", w[0].cid, w[1].cid));
            }
        }
    }
    assert!(dups.is_empty(), "addresses handed out twice: {dups:?}");
}

/// GC with no valid attachments must leave no allocation behind.
fn assert_gc_leaves_nothing(conf: &Value, store: &dyn Store, network: &str) {
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let out = Command::new(BIN)
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(gc.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "GC failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let left: Vec<_> = store
        .read(network)
        .unwrap()
        .into_values()
        .filter(|l| l.attachment().is_some())
        .collect();
    assert!(left.is_empty(), "leaked after GC: {left:?}");
}

#[test]
fn processes_racing_on_the_local_store_never_share_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let conf = network_config("race-local", json!({"type": "local", "dir": dir.path()}));
    let started = Instant::now();
    let (lives, ops) = hammer(&conf, 130, 8);
    assert!(ops >= 2000, "thousands of operations ({ops})");
    assert!(lives.len() > 900, "most ADDs succeeded ({})", lives.len());
    assert_no_duplicates(&lives);
    let store = LocalStore::new(dir.path(), HistoryLimits::default());
    // The store survived every kill -9: it parses, and every attachment has one address.
    store.read("race-local").unwrap();
    // History survived too: no torn line in the middle, every successful ADD is recorded.
    let history = store.history("race-local").unwrap();
    let allocs = history
        .iter()
        .filter(|e| e.kind == berth_ipam_core::EventKind::Allocate)
        .count();
    assert!(
        allocs >= lives.len(),
        "{allocs} allocate events for {} ADDs",
        lives.len()
    );
    assert_gc_leaves_nothing(&conf, &store, "race-local");
    eprintln!("local race: {ops} ops in {:?}", started.elapsed());
}

#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn processes_racing_on_etcd_never_share_an_address() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let conf = network_config(
        "race-etcd",
        json!({"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/race", "timeout": "5s"}),
    );
    let started = Instant::now();
    let (lives, ops) = hammer(&conf, 130, 8);
    assert!(ops >= 2000, "thousands of operations ({ops})");
    assert!(lives.len() > 900, "most ADDs succeeded ({})", lives.len());
    assert_no_duplicates(&lives);
    let store = EtcdStore::connect(
        std::slice::from_ref(&etcd.endpoint),
        "/race",
        Duration::from_secs(5),
        HistoryLimits::default(),
    )
    .unwrap();
    let history = store.history("race-etcd").unwrap();
    let allocs = history
        .iter()
        .filter(|e| e.kind == berth_ipam_core::EventKind::Allocate)
        .count();
    assert!(
        allocs >= lives.len(),
        "{allocs} allocate events for {} ADDs",
        lives.len()
    );
    assert_gc_leaves_nothing(&conf, &store, "race-etcd");
    eprintln!("etcd race: {ops} ops in {:?}", started.elapsed());
}

/// Four nodes of one rack, two processes each, share a /28 cut into four blocks of 4
/// addresses (the first and last lose the network, gateway and broadcast addresses): they
/// claim blocks, exhaust them, find none left and borrow from each other's blocks, all at
/// once and with `kill -9` in the middle of calls.
#[test]
#[ignore = "needs root: run by scripts/test (spawns /usr/bin/etcd)"]
fn nodes_exhausting_their_blocks_and_borrowing_never_share_an_address() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("{e}"));
    let store = json!({"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/borrow",
                       "timeout": "5s", "blockAddresses": 4});
    let confs: Vec<Value> = (0..4)
        .map(|n| {
            let mut c = pool_config("race-blocks", store.clone(), "10.71.0.0/28");
            c["ipam"]["node"] = json!(format!("node-{n}"));
            c
        })
        .collect();
    let (lives, ops) = hammer_as(&confs, 100, 8, true);
    assert!(ops >= 1500, "{ops} operations");
    assert!(lives.len() > 700, "most ADDs succeeded ({})", lives.len());
    assert_no_duplicates(&lives);
    let store = EtcdStore::connect(
        std::slice::from_ref(&etcd.endpoint),
        "/borrow",
        Duration::from_secs(5),
        HistoryLimits::default(),
    )
    .unwrap();
    // The pool's 4 blocks were all claimed, and nodes allocated in blocks of other nodes.
    let claims = store.block_claims("race-blocks").unwrap();
    assert_eq!(claims.len(), 4, "{claims:?}");
    let owner: BTreeMap<IpAddr, String> = claims.into_iter().map(|c| (c.first, c.node)).collect();
    let block_of = |ip: IpAddr| match ip {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a) & !3).into()),
        IpAddr::V6(_) => unreachable!("an IPv4 pool"),
    };
    let history = store.history("race-blocks").unwrap();
    let borrowed = history
        .iter()
        .filter(|e| e.kind == berth_ipam_core::EventKind::Allocate)
        .filter(|e| owner.get(&block_of(e.ip)).is_some_and(|n| *n != e.node))
        .count();
    assert!(
        borrowed > 0,
        "no node borrowed an address of another's block"
    );
    assert_gc_leaves_nothing(&confs[0], &store, "race-blocks");
}
