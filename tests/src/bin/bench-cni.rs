//! bench-cni: ADD and DEL latency of berth-cni (bridge mode, berth's IPAM in-process on its
//! local store) vs Debian's reference `bridge` + `host-local`, each plugin process executed
//! directly the way a runtime does (stdin config, CNI_* env), N pods each, same run, ratio
//! printed. Everything happens inside namespaces the bench creates: a "node" namespace the
//! plugins run in (entered between fork and exec, no extra process) and one namespace per pod.
//!
//! Usage: bench-cni [--pods N] [--rounds N]
//! Env: BERTH_BIN_DIR (where berth-cni is; default: next to this binary),
//!      BERTH_REF_CNI_DIR (default /usr/lib/cni: bridge, host-local).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

struct Args {
    pods: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        pods: 200,
        rounds: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || -> Result<usize> {
            it.next()
                .context("missing value")?
                .parse()
                .context("not a number")
        };
        match k.as_str() {
            "--pods" => a.pods = v()?,
            "--rounds" => a.rounds = v()?,
            other => bail!("unknown argument {other}; use --pods N --rounds N"),
        }
    }
    ensure!((1..=4000).contains(&a.pods), "--pods must be 1..=4000");
    ensure!((1..=20).contains(&a.rounds), "--rounds must be 1..=20");
    Ok(a)
}

fn ip(args: &[&str]) -> Result<String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Network namespaces owned by the bench, removed on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(names: Vec<String>) -> Result<Namespaces> {
        let mut batch = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("ip -batch")?;
        {
            let mut stdin = batch.stdin.take().context("stdin")?;
            for n in &names {
                writeln!(stdin, "netns add {n}")?;
            }
        }
        // Owned from here on, so a partial failure is cleaned up too.
        let ns = Namespaces(names);
        ensure!(batch.wait()?.success(), "creating namespaces failed");
        Ok(ns)
    }

    fn path(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.0[i]))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if let Ok(mut batch) = Command::new("ip")
            .args(["-force", "-batch", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            if let Some(mut stdin) = batch.stdin.take() {
                for n in &self.0 {
                    let _ = writeln!(stdin, "netns del {n}");
                }
            }
            let _ = batch.wait();
        }
    }
}

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
}

/// Runs one CNI call as a runtime does, inside the node namespace.
fn cni(p: &Plugin, node: &std::fs::File, verb: &str, cid: &str, netns: &Path) -> Result<Duration> {
    let fd = node.as_raw_fd();
    let mut cmd = Command::new(&p.bin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={cid};K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=uid-{cid}"),
        )
        .env("CNI_PATH", p.bin.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: setns is async-signal-safe; the fd stays open until exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", p.bin.display()))?;
    child.stdin.take().context("stdin")?.write_all(&p.conf)?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{} {verb} {cid} failed: {}{}",
        p.label,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if verb == "ADD" {
        let v: Value = serde_json::from_slice(&out.stdout).context("ADD result")?;
        ensure!(
            v["ips"][0]["address"].is_string(),
            "{} ADD {cid} returned no address: {v}",
            p.label
        );
    }
    Ok(took)
}

#[derive(Default)]
struct Samples {
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn run_plugin(
    p: &Plugin,
    node: &std::fs::File,
    node_name: &str,
    pods: &Namespaces,
    round: usize,
    s: &mut Samples,
) -> Result<()> {
    let cid = |i: usize| format!("{}r{round}p{i}", p.label.chars().next().unwrap_or('x'));
    for i in 0..pods.0.len() {
        s.add.push(cni(p, node, "ADD", &cid(i), &pods.path(i))?);
    }
    for i in 0..pods.0.len() {
        s.del.push(cni(p, node, "DEL", &cid(i), &pods.path(i))?);
    }
    let left = ip(&["-n", node_name, "-o", "link", "show", "type", "veth"])?;
    ensure!(
        left.trim().is_empty(),
        "{} left veths behind:\n{left}",
        p.label
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
}

fn stats(v: &[Duration]) -> Stats {
    let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
    s.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
    Stats {
        mean: s.iter().sum::<f64>() / s.len() as f64,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "bench-cni needs root (network namespaces)"
    );
    let bin_dir = match std::env::var_os("BERTH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    let ref_dir =
        PathBuf::from(std::env::var_os("BERTH_REF_CNI_DIR").unwrap_or("/usr/lib/cni".into()));
    let berth_bin = bin_dir.join("berth-cni");
    ensure!(
        berth_bin.is_file(),
        "{} not found: build it (cargo build --release -p berth-cni)",
        berth_bin.display()
    );
    for b in ["bridge", "host-local"] {
        ensure!(
            ref_dir.join(b).is_file(),
            "reference plugin {b} not in {}",
            ref_dir.display()
        );
    }
    let tag = std::process::id();
    let work = std::env::temp_dir().join(format!("bench-cni-{tag}"));
    std::fs::create_dir_all(&work)?;
    let _cleanup = Cleanup(work.clone());
    let node_name = format!("bcn-node-{tag}");
    let node_ns = Namespaces::create(vec![node_name.clone()])?;
    ip(&["-n", &node_name, "link", "set", "lo", "up"])?;
    let node = std::fs::File::open(node_ns.path(0))?;
    let pods = Namespaces::create((0..args.pods).map(|i| format!("bcn-{tag}-{i}")).collect())?;

    let subnet_prefix = if args.pods > 250 { 16 } else { 24 };
    let berth = Plugin {
        label: "berth-cni",
        bin: berth_bin,
        conf: json!({
            "cniVersion": "1.0.0", "name": "bench-berth", "type": "berth-cni",
            "mode": "bridge", "bridge": "bbench0", "hairpinMode": true, "ipForward": true,
            "arp": {"garpCount": 1},
            "ipam": {"store": {"type": "local", "dir": work.join("berth-ipam")}, "node": "bench",
                     "hold": "0s",
                     "pools": [{"name": "bench", "subnet": format!("10.250.0.0/{subnet_prefix}"), "gateway": "10.250.0.1"}]}
        })
        .to_string()
        .into_bytes(),
    };
    let reference = Plugin {
        label: "reference",
        bin: ref_dir.join("bridge"),
        conf: json!({
            "cniVersion": "1.0.0", "name": "bench-ref", "type": "bridge",
            "bridge": "rbench0", "isGateway": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "subnet": format!("10.251.0.0/{subnet_prefix}"),
                     "dataDir": work.join("host-local")}
        })
        .to_string()
        .into_bytes(),
    };
    let mut sb = Samples::default();
    let mut sr = Samples::default();
    for round in 0..args.rounds {
        // Alternate who goes first so neither always runs on a warmer machine.
        if round % 2 == 0 {
            run_plugin(&berth, &node, &node_name, &pods, round, &mut sb)?;
            run_plugin(&reference, &node, &node_name, &pods, round, &mut sr)?;
        } else {
            run_plugin(&reference, &node, &node_name, &pods, round, &mut sr)?;
            run_plugin(&berth, &node, &node_name, &pods, round, &mut sb)?;
        }
    }
    println!(
        "bench-cni: {} pods x {} rounds, bridge mode, each plugin process executed directly in a bench-owned node netns",
        args.pods, args.rounds
    );
    println!(
        "berth-cni: IPAM = berth-ipam-core in-process (local store); reference: /usr/lib/cni/bridge + host-local (Debian containernetworking-plugins)"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "latency (ms)", "mean", "p50", "p99"
    );
    for (label, s) in [("berth-cni", &sb), ("reference bridge+host-local", &sr)] {
        for (verb, v) in [("ADD", &s.add), ("DEL", &s.del)] {
            let st = stats(v);
            println!(
                "{:<34} {:>9.2} {:>9.2} {:>9.2}",
                format!("{label} {verb}"),
                st.mean,
                st.p50,
                st.p99
            );
        }
    }
    let (ba, bd, ra, rd) = (
        stats(&sb.add),
        stats(&sb.del),
        stats(&sr.add),
        stats(&sr.del),
    );
    let both = (ba.mean + bd.mean) / (ra.mean + rd.mean);
    println!(
        "ratio berth/reference (mean): ADD {:.2}x, DEL {:.2}x, ADD+DEL {:.2}x (target <= 0.50x: {})",
        ba.mean / ra.mean,
        bd.mean / rd.mean,
        both,
        if both <= 0.5 { "met" } else { "NOT met" }
    );
    println!(
        "ratio berth/reference (p99): ADD {:.2}x, DEL {:.2}x",
        ba.p99 / ra.p99,
        bd.p99 / rd.p99
    );
    Ok(())
}

/// Removes the bench's work directory on every exit path.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
