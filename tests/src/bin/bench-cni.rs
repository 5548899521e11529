//! bench-cni: ADD and DEL latency of berth-cni (bridge mode, berth's IPAM in-process on its
//! local store) vs Debian's reference `bridge` + `host-local`, each plugin process executed
//! directly the way a runtime does (stdin config, CNI_* env), N pods each, same run, ratio
//! printed. Everything happens inside namespaces the bench creates: a "node" namespace the
//! plugins run in (entered between fork and exec, no extra process) and one namespace per pod.
//!
//! Then the same through CRI on test bed nodes (containerd 2.1): RunPodSandbox and
//! StopPodSandbox with berth-cni alone, with the reference bridge + host-local, and with
//! host-network pods (no CNI call: the runtime's own share of the latency).
//!
//! A dual-stack row does the same with an IPv4 and an IPv6 pool: berth-cni against the
//! reference bridge + host-local with two range sets (one address per family), same run.
//!
//! Usage: bench-cni [--pods N] [--rounds N] [--dual-pods N (0: skip)] [--cri-pods N (0: skip CRI)]
//! Env: BERTH_PLUGIN_DIR (where berth-cni is; scripts/bench passes the static build),
//!      else BERTH_BIN_DIR (default: next to this binary),
//!      BERTH_REF_CNI_DIR (default /usr/lib/cni: bridge, host-local).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_e2e::bench_report::{BenchReport, Target, millis};
use serde_json::{Value, json};

struct Args {
    pods: usize,
    rounds: usize,
    dual_pods: usize,
    cri_pods: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        pods: 200,
        rounds: 2,
        // The reference waits for IPv6 duplicate address detection (about 1-2 s per ADD).
        dual_pods: 20,
        cri_pods: 20,
    };
    berth_e2e::bench_args::counts(
        std::env::args().skip(1),
        &mut [
            ("--pods", &mut a.pods),
            ("--rounds", &mut a.rounds),
            ("--dual-pods", &mut a.dual_pods),
            ("--cri-pods", &mut a.cri_pods),
        ],
    )?;
    ensure!((1..=4000).contains(&a.pods), "--pods must be 1..=4000");
    ensure!((1..=20).contains(&a.rounds), "--rounds must be 1..=20");
    ensure!(a.cri_pods <= 200, "--cri-pods must be 0..=200");
    ensure!(
        a.dual_pods <= a.pods,
        "--dual-pods must be 0..=--pods (it reuses their namespaces)"
    );
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
    n: usize,
    round: usize,
    s: &mut Samples,
) -> Result<()> {
    let cid = |i: usize| format!("{}r{round}p{i}", p.label.chars().next().unwrap_or('x'));
    for i in 0..n {
        s.add.push(cni(p, node, "ADD", &cid(i), &pods.path(i))?);
    }
    for i in 0..n {
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

/// `rounds` rounds of ADD then DEL of the first `n` pods, alternating who goes first so
/// neither always runs on a warmer machine.
fn compare(
    berth: &Plugin,
    reference: &Plugin,
    node: &std::fs::File,
    node_name: &str,
    pods: &Namespaces,
    rounds: usize,
    n: usize,
) -> Result<(Samples, Samples)> {
    let mut sb = Samples::default();
    let mut sr = Samples::default();
    for round in 0..rounds {
        if round % 2 == 0 {
            run_plugin(berth, node, node_name, pods, n, round, &mut sb)?;
            run_plugin(reference, node, node_name, pods, n, round, &mut sr)?;
        } else {
            run_plugin(reference, node, node_name, pods, n, round, &mut sr)?;
            run_plugin(berth, node, node_name, pods, n, round, &mut sb)?;
        }
    }
    Ok((sb, sr))
}

/// The dual-stack row: berth-cni with an IPv4 and an IPv6 pool vs the reference bridge with
/// host-local's two range sets, the first `--dual-pods` pods, same rounds.
#[allow(clippy::too_many_arguments)]
fn dual_stack_row(
    args: &Args,
    berth_bin: &Path,
    ref_dir: &Path,
    work: &Path,
    node: &std::fs::File,
    node_name: &str,
    pods: &Namespaces,
    report: &mut BenchReport,
) -> Result<()> {
    let berth = Plugin {
        label: "berth-cni dual-stack",
        bin: berth_bin.to_path_buf(),
        conf: json!({
            "cniVersion": "1.0.0", "name": "bench-berth-ds", "type": "berth-cni",
            "mode": "bridge", "bridge": "bbench6", "hairpinMode": true, "ipForward": true,
            "arp": {"garpCount": 1},
            "ipam": {"store": {"type": "local", "dir": work.join("berth-ipam-ds")}, "node": "bench",
                     "hold": "0s",
                     "pools": [{"name": "v4", "subnet": "10.252.0.0/24", "gateway": "10.252.0.1"},
                               {"name": "v6", "subnet": "fd00:252::/64", "gateway": "fd00:252::1"}]}
        })
        .to_string()
        .into_bytes(),
    };
    let reference = Plugin {
        label: "reference dual-stack",
        bin: ref_dir.join("bridge"),
        conf: json!({
            "cniVersion": "1.0.0", "name": "bench-ref-ds", "type": "bridge",
            "bridge": "rbench6", "isGateway": true, "hairpinMode": true,
            "ipam": {"type": "host-local", "dataDir": work.join("host-local-ds"),
                     "ranges": [[{"subnet": "10.253.0.0/24"}], [{"subnet": "fd00:253::/64"}]]}
        })
        .to_string()
        .into_bytes(),
    };
    let (sb, sr) = compare(
        &berth,
        &reference,
        node,
        node_name,
        pods,
        args.rounds,
        args.dual_pods,
    )?;
    println!(
        "dual-stack: {} pods x {} rounds, an IPv4 and an IPv6 pool (berth) / two host-local range sets (reference)",
        args.dual_pods, args.rounds
    );
    let (ba, bd, ra, rd) = print_rows(("berth-cni dual-stack", &sb), ("reference dual-stack", &sr));
    println!(
        "ratio berth/reference dual-stack (mean): ADD {:.2}x, DEL {:.2}x, ADD+DEL {:.2}x",
        ba.mean / ra.mean,
        bd.mean / rd.mean,
        (ba.mean + bd.mean) / (ra.mean + rd.mean)
    );
    report.note(format!(
        "dual-stack: {} pods x {} rounds; berth-cni adds IPv6 addresses without kernel DAD (usable at once), the reference bridge waits for DAD to settle",
        args.dual_pods, args.rounds
    ));
    for (verb, b, r) in [("ADD", &sb.add, &sr.add), ("DEL", &sb.del, &sr.del)] {
        report.latency(&format!("{verb} dual-stack"), "berth-cni", "ms", &millis(b));
        report.latency(
            &format!("{verb} dual-stack"),
            "reference bridge+host-local",
            "ms",
            &millis(r),
        );
    }
    report
        .ratio(
            "dual-stack ADD+DEL mean",
            "ms",
            ba.mean + bd.mean,
            ra.mean + rd.mean,
        )
        .target(Target::AtMost(0.5));
    report.ratio("dual-stack ADD mean", "ms", ba.mean, ra.mean);
    // What berth-cni's choice (no kernel DAD, its own probe in the underlay modes) saves:
    // how long an IPv6 address stays `tentative` when the kernel's DAD runs.
    let settle = dad_settle(node_name, pods, args.dual_pods.min(10))?;
    let st = stats(&settle);
    println!(
        "{:<44} {:>9.2} {:>9.2} {:>9.2}",
        "kernel DAD: tentative until (wait)", st.mean, st.p50, st.p99
    );
    println!(
        "berth-cni adds IPv6 without kernel DAD: usable at once; its NDP probe (underlay modes, arp.probe) waits probeTimeoutMs (default 200 ms)"
    );
    report.latency(
        "IPv6 DAD settle",
        "kernel DAD (wait)",
        "ms",
        &millis(&settle),
    );
    Ok(())
}

/// How long a fresh IPv6 address on an up veth stays `tentative` under the kernel's DAD,
/// `n` samples (polled every millisecond through `ip`).
fn dad_settle(node_name: &str, pods: &Namespaces, n: usize) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let pod = &pods.0[i];
        ip(&[
            "-n", node_name, "link", "add", "dadh0", "type", "veth", "peer", "name", "dadp0",
            "netns", pod,
        ])?;
        let result = (|| -> Result<Duration> {
            ip(&["-n", node_name, "link", "set", "dadh0", "up"])?;
            ip(&["-n", pod, "link", "set", "dadp0", "up"])?;
            let addr = format!("fd00:254::{:x}/64", i + 2);
            ip(&["-n", pod, "addr", "add", &addr, "dev", "dadp0"])?;
            let start = Instant::now();
            loop {
                let t = ip(&["-n", pod, "-6", "addr", "show", "dev", "dadp0", "tentative"])?;
                if !t.contains("fd00:254::") {
                    return Ok(start.elapsed());
                }
                ensure!(
                    start.elapsed() < Duration::from_secs(10),
                    "{addr} stayed tentative for 10 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        })();
        ip(&["-n", node_name, "link", "del", "dadh0"])?;
        out.push(result?);
    }
    Ok(out)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Stats {
    mean: f64,
    p50: f64,
    p99: f64,
}

/// Prints the ADD and DEL latency rows of berth and of the reference; returns their stats:
/// berth ADD, berth DEL, reference ADD, reference DEL.
fn print_rows(
    berth: (&str, &Samples),
    reference: (&str, &Samples),
) -> (Stats, Stats, Stats, Stats) {
    for (label, s) in [berth, reference] {
        for (verb, v) in [("ADD", &s.add), ("DEL", &s.del)] {
            let st = stats(v);
            println!(
                "{:<44} {:>9.2} {:>9.2} {:>9.2}",
                format!("{label} {verb}"),
                st.mean,
                st.p50,
                st.p99
            );
        }
    }
    (
        stats(&berth.1.add),
        stats(&berth.1.del),
        stats(&reference.1.add),
        stats(&reference.1.del),
    )
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
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "bench-cni needs root (network namespaces)");
    let bin_dir = match std::env::var_os("BERTH_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    let ref_dir =
        PathBuf::from(std::env::var_os("BERTH_REF_CNI_DIR").unwrap_or("/usr/lib/cni".into()));
    // The plugin as shipped (static, scripts/lib/plugins.sh), which scripts/bench names.
    let berth_bin = std::env::var_os("BERTH_PLUGIN_DIR")
        .map_or_else(|| bin_dir.clone(), PathBuf::from)
        .join("berth-cni");
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
    let berth_build = berth_e2e::bench_report::plugin_build(&berth_bin);
    println!("berth-cni: {berth_build}");
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
    let (sb, sr) = compare(
        &berth,
        &reference,
        &node,
        &node_name,
        &pods,
        args.rounds,
        args.pods,
    )?;
    println!(
        "bench-cni: {} pods x {} rounds, bridge mode, each plugin process executed directly in a bench-owned node netns",
        args.pods, args.rounds
    );
    println!(
        "berth-cni: IPAM = berth-ipam-core in-process (local store); reference: /usr/lib/cni/bridge + host-local (Debian containernetworking-plugins)"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "latency (ms)", "mean", "p50", "p99"
    );
    let (ba, bd, ra, rd) = print_rows(("berth-cni", &sb), ("reference bridge+host-local", &sr));
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
    let mut report = BenchReport::new("cni");
    report.note(format!(
        "{} pods x {} rounds, bridge mode, each plugin process executed directly in a bench-owned node netns",
        args.pods, args.rounds
    ));
    report.note(format!(
        "berth-cni ({berth_build}): IPAM = berth-ipam-core in-process (local store); reference: /usr/lib/cni/bridge + host-local",
    ));
    for (verb, b, r) in [("ADD", &sb.add, &sr.add), ("DEL", &sb.del, &sr.del)] {
        report.latency(verb, "berth-cni", "ms", &millis(b));
        report.latency(verb, "reference bridge+host-local", "ms", &millis(r));
    }
    report
        .ratio("ADD+DEL mean", "ms", ba.mean + bd.mean, ra.mean + rd.mean)
        .target(Target::AtMost(0.5));
    report.ratio("ADD mean", "ms", ba.mean, ra.mean);
    report.ratio("DEL mean", "ms", bd.mean, rd.mean);
    report.ratio("ADD p99", "ms", ba.p99, ra.p99);
    report.ratio("DEL p99", "ms", bd.p99, rd.p99);
    if args.dual_pods > 0 {
        dual_stack_row(
            &args,
            &berth.bin,
            &ref_dir,
            &work,
            &node,
            &node_name,
            &pods,
            &mut report,
        )?;
    }
    if args.cri_pods > 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cri_bench(&berth.bin, args.cri_pods, tag, &mut report))?;
    }
    report.finish()?;
    Ok(())
}

/// Deletes a bridge a CRI node's plugin created on the host, when the bench ends.
struct BridgeGuard(&'static str);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// RunPodSandbox and StopPodSandbox latency through CRI: berth-cni, the reference bridge +
/// host-local (the test bed's default network), host network. The three kinds take turns
/// pod by pod, so load from other work on the machine spreads over all of them.
async fn cri_bench(
    berth_bin: &Path,
    pods: usize,
    tag: u32,
    report: &mut BenchReport,
) -> Result<()> {
    use berth_e2e::PodSpec;
    use berth_e2e::testbed::{Node, NodeOptions, workspace_root};

    const BERTH_BRIDGE: &str = "bbcri0";
    let _bridge = BridgeGuard(BERTH_BRIDGE);
    let berth_name = format!("bench-cni-b{tag}");
    let ref_name = format!("bench-cni-r{tag}");
    let berth_dir = workspace_root()
        .join(".run/testbed/nodes")
        .join(&berth_name);
    // berth-cni alone, as the reference network is bridge + host-local alone.
    let conflist = json!({
        "cniVersion": "1.0.0", "name": "bench-cri", "plugins": [{
            "type": "berth-cni", "mode": "bridge", "bridge": BERTH_BRIDGE, "hairpinMode": true,
            "ipForward": true, "arp": {"garpCount": 1},
            "ipam": {"store": {"type": "local", "dir": berth_dir.join("berth-ipam")},
                     "hold": "0s",
                     "pools": [{"name": "bench", "subnet": "10.252.0.0/24", "gateway": "10.252.0.1"}]}
        }]
    });
    let berth_node = Node::start(
        &berth_name,
        NodeOptions {
            conflist: Some(conflist.to_string()),
            cni_binaries: vec![berth_bin.to_path_buf()],
            ..NodeOptions::default()
        },
    )
    .context("starting the berth-cni node")?;
    let ref_node =
        Node::start(&ref_name, NodeOptions::default()).context("starting the reference node")?;
    let mut clients = [
        berth_node.cri().await.context("berth-cni node CRI")?,
        ref_node.cri().await.context("reference node CRI")?,
        ref_node.cri().await.context("reference node CRI")?,
    ];
    const KINDS: [&str; 3] = ["berth-cni", "reference bridge+host-local", "host network"];
    let mut run: [Vec<Duration>; 3] = Default::default();
    let mut stop: [Vec<Duration>; 3] = Default::default();
    // Per pod, its sandbox id of each kind.
    let mut ids: Vec<Vec<String>> = Vec::with_capacity(pods);
    for i in 0..pods {
        let mut row = Vec::with_capacity(3);
        for (k, client) in clients.iter_mut().enumerate() {
            let mut spec = PodSpec::new("bench", &format!("p{k}-{i}"));
            if k == 2 {
                spec = spec.host_network();
            }
            let start = Instant::now();
            let pod = client.run_pod(&spec).await?;
            run[k].push(start.elapsed());
            if k < 2 {
                let ip = client.pod_ip(&pod.id).await?;
                ensure!(!ip.is_unspecified(), "{} pod {i} got no address", KINDS[k]);
            }
            row.push(pod.id);
        }
        ids.push(row);
    }
    for row in &ids {
        for (k, (client, id)) in clients.iter_mut().zip(row).enumerate() {
            let start = Instant::now();
            client.stop_pod(id).await?;
            stop[k].push(start.elapsed());
            client.remove_pod(id).await?;
        }
    }
    println!();
    println!(
        "CRI: {pods} pods per kind, containerd 2.1 test bed nodes; berth-cni alone vs bridge+host-local alone"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>9}",
        "latency (ms)", "mean", "p50", "p99"
    );
    for k in 0..3 {
        for (verb, v) in [("RunPodSandbox", &run[k]), ("StopPodSandbox", &stop[k])] {
            let st = stats(v);
            let label = format!("{} {verb}", KINDS[k]);
            println!(
                "{label:<44} {:>9.2} {:>9.2} {:>9.2}",
                st.mean, st.p50, st.p99
            );
        }
    }
    let mean = |v: &[Duration]| stats(v).mean;
    report.note(format!(
        "CRI: {pods} pods per kind, containerd 2.1 test bed nodes; berth-cni alone vs bridge+host-local alone vs host network"
    ));
    for (verb, v) in [("RunPodSandbox", &run), ("StopPodSandbox", &stop)] {
        for k in 0..3 {
            report.latency(verb, KINDS[k], "ms", &millis(&v[k]));
        }
        report.ratio(
            &format!("{verb} network share (minus host network)"),
            "ms",
            mean(&v[0]) - mean(&v[2]),
            mean(&v[1]) - mean(&v[2]),
        );
    }
    println!(
        "ratio berth/reference (mean): RunPodSandbox {:.2}x, StopPodSandbox {:.2}x; network share (minus host network): Run {:.2}x, Stop {:.2}x",
        mean(&run[0]) / mean(&run[1]),
        mean(&stop[0]) / mean(&stop[1]),
        (mean(&run[0]) - mean(&run[2])) / (mean(&run[1]) - mean(&run[2])),
        (mean(&stop[0]) - mean(&stop[2])) / (mean(&stop[1]) - mean(&stop[2])),
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
