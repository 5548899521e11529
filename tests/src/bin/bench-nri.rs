//! bench-nri: what berth-agent's NRI plugin costs. CreateContainer latency through CRI with
//! the agent registered and without it, measured in the same run on containerd 2.1 and 1.7.
//!
//! Design (per containerd version): two identical private nodes, A and B. The agent is
//! registered on one of them; creations alternate between the two nodes container by
//! container (in ABBA order), so both sides see the same machine load at the same moments.
//! Halfway the agent moves to the other node, so a difference between the nodes themselves
//! cancels out. Every container asks for file logs, so the agent creates dirs, writes
//! metadata and answers a mount. A second kind of container, created in the same ABBA turns,
//! belongs to a pod annotated `berth.io/faketime: "+2d"` and runs the glibc image: the agent
//! judges its entry point through containerd's snapshot API (a cached verdict after the
//! image's first container), writes its timestamp file and answers mounts and env. Printed for
//! each kind: p50/p99 of each side, their differences with a bootstrap 95% interval, the
//! agent's own handling time (timed inside the plugin; for faketime, judging and file work
//! apart), the NRI requests the runtime sent (count and size per method), and the agent's RSS
//! idle and after the creations.
//!
//! Usage: bench-nri [--containers N] [--containerd 2.1|1.7|both] [--baseline-agent PATH]
//!   N: creations per side and kind (default 2000; half with the agent on each node). A p99 rests on
//!   its largest 1% of samples: even at 2000 per side its 95% interval was 2.3–5.2 ms wide on
//!   the 2-core test VM (about 75 s per containerd).
//!   --baseline-agent: another berth-agent build runs on the other node, so the difference is
//!   between two builds measured at the same moments (runs apart differ by more than a change
//!   is worth on a busy machine). The report then says "baseline agent" for "without".
//! Env: BERTH_BIN_DIR (where berth-agent is; default: next to this binary).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::bench_report::{BenchReport, Target, process_cpu_ms};
use berth_e2e::testbed::{Containerd, Node, NodeOptions};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, GLIBC_IMAGE, Pod, PodSpec};

struct Args {
    containers: usize,
    versions: Vec<Containerd>,
    /// Another agent build for the other node, instead of none.
    baseline: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        containers: 2000,
        versions: Containerd::ALL.to_vec(),
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().context("missing value")?;
        match k.as_str() {
            "--containers" => a.containers = v.parse().context("not a number")?,
            "--rounds" => {} // accepted for older scripts; the design no longer uses rounds
            "--containerd" => {
                a.versions = match v.as_str() {
                    "2.1" => vec![Containerd::V2_1],
                    "1.7" => vec![Containerd::V1_7],
                    "both" => Containerd::ALL.to_vec(),
                    _ => bail!("--containerd is 2.1, 1.7 or both"),
                }
            }
            "--baseline-agent" => {
                let p = PathBuf::from(v);
                if !p.is_file() {
                    bail!("--baseline-agent {}: no such file", p.display());
                }
                a.baseline = Some(p);
            }
            other => bail!(
                "unknown argument {other}; use --containers N --containerd 2.1|1.7|both --baseline-agent PATH"
            ),
        }
    }
    if a.containers < 4 {
        bail!("--containers must be at least 4");
    }
    Ok(a)
}

fn bin_dir() -> PathBuf {
    std::env::var_os("BERTH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .to_path_buf()
        })
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(binary: &Path, node: &Node, work: &Path) -> Result<Agent> {
        let log = work.join("agent.log");
        let _ = std::fs::remove_file(&log);
        // The node's containerd is not at the default path: name it.
        let config = work.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[faketime]\ncontainerd_address = {:?}\n",
                node.containerd_socket()
            ),
        )?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .arg("--nri-socket")
            .arg(node.nri_socket())
            .arg("--log-root")
            .arg(work.join("logs"))
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("RUST_LOG", "warn,berth_nri=debug,berth_agent=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting berth-agent (run scripts/bench, which builds it)")?;
        let a = Agent { child, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !a.log_text().contains("nri plugin ready") {
            if Instant::now() > deadline {
                bail!("berth-agent did not register: {}", a.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(a)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `(field value as u64)` of `key=` on each log line containing every marker.
    fn field(&self, markers: &[&str], key: &str) -> Vec<u64> {
        let key = format!("{key}=");
        self.log_text()
            .lines()
            .filter(|l| markers.iter().all(|m| l.contains(m)))
            .filter_map(|l| {
                l.split(key.as_str())
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// Per NRI method: (count, total request bytes, largest request).
    fn requests(&self) -> BTreeMap<String, (usize, u64, u64)> {
        let mut out: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
        for l in self.log_text().lines() {
            if !l.contains("nri request handled") {
                continue;
            }
            let Some(method) = l
                .split("method=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            let bytes: u64 = l
                .split("bytes=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let e = out.entry(method.to_string()).or_default();
            e.0 += 1;
            e.1 += bytes;
            e.2 = e.2.max(bytes);
        }
        out
    }

    /// CPU time of all the agent's threads so far (user + system), in ms.
    fn cpu_ms(&self) -> f64 {
        process_cpu_ms(self.child.id())
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node of the pair, with its pods and CRI client.
struct Side {
    node: Node,
    cri: CriClient,
    pod: Pod,
    /// Annotated for faketime.
    ft_pod: Pod,
    work: PathBuf,
}

impl Side {
    async fn start(name: &str, containerd: Containerd) -> Result<Side> {
        let node = Node::start(
            name,
            NodeOptions {
                containerd,
                ..Default::default()
            },
        )?;
        let work = node.dir().join("bench-nri");
        std::fs::create_dir_all(&work)?;
        let mut cri = node.cri().await?;
        let pod = cri.run_pod(&PodSpec::new("bench", "nri")).await?;
        let ft_pod = cri
            .run_pod(&PodSpec::new("bench", "faketime").annotation("berth.io/faketime", "+2d"))
            .await?;
        Ok(Side {
            node,
            cri,
            pod,
            ft_pod,
            work,
        })
    }

    /// CreateContainer latency (ms) of one container, removed right after.
    async fn create(&mut self, tag: &str) -> Result<f64> {
        let spec =
            ContainerSpec::sleeper(tag, BUSYBOX_IMAGE).env("KUBERNETES_FILELOGS", "/app/logs");
        let t = Instant::now();
        let id = self.cri.create_container(&self.pod, &spec).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        self.cri.remove_container(&id).await?;
        Ok(ms)
    }

    /// The same for a glibc container of the faketime-annotated pod.
    async fn create_annotated(&mut self, tag: &str) -> Result<f64> {
        let spec = ContainerSpec::sleeper(tag, GLIBC_IMAGE);
        let t = Instant::now();
        let id = self.cri.create_container(&self.ft_pod, &spec).await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        self.cri.remove_container(&id).await?;
        Ok(ms)
    }
}

/// Nearest-rank percentile on a sorted copy.
fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

/// Bootstrap 95% interval of pct(with, p) - pct(without, p), resampling each side.
fn diff_interval(with: &[f64], without: &[f64], p: f64) -> (f64, f64) {
    // A small xorshift: the interval needs no crypto, and a fixed seed keeps runs comparable.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut diffs: Vec<f64> = (0..2000)
        .map(|_| {
            let w: Vec<f64> = (0..with.len()).map(|_| with[next(with.len())]).collect();
            let o: Vec<f64> = (0..without.len())
                .map(|_| without[next(without.len())])
                .collect();
            pct(&w, p) - pct(&o, p)
        })
        .collect();
    diffs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (pct(&diffs, 0.025), pct(&diffs, 0.975))
}

struct Outcome {
    with: Vec<f64>,
    without: Vec<f64>,
    /// Faketime-annotated glibc containers.
    ft_with: Vec<f64>,
    ft_without: Vec<f64>,
    handling_ms: Vec<f64>,
    fs_ms: Vec<f64>,
    /// Inside the agent, per annotated container: judging the entry point, then its files.
    ft_judge_ms: Vec<f64>,
    ft_prepare_ms: Vec<f64>,
    /// Annotated containers the agent injected.
    ft_injected: usize,
    requests: BTreeMap<String, (usize, u64, u64)>,
    rss_idle: u64,
    rss_after: u64,
    /// The agent's CPU time while serving the creations (and removals), and the baseline
    /// build's when there is one.
    cpu_ms: f64,
    baseline_cpu_ms: f64,
}

async fn measure(
    containerd: Containerd,
    per_side: usize,
    baseline: Option<&Path>,
) -> Result<Outcome> {
    let v = containerd.as_str().replace('.', "");
    let mut sides = [
        Side::start(&format!("bench-nri-{v}a"), containerd).await?,
        Side::start(&format!("bench-nri-{v}b"), containerd).await?,
    ];
    // Warm-up on both: image snapshot, first-call costs.
    for i in 0..5 {
        for s in sides.iter_mut() {
            s.create(&format!("warm-{i}")).await?;
            s.create_annotated(&format!("warm-ft-{i}")).await?;
        }
    }
    let mut o = Outcome {
        with: Vec::new(),
        without: Vec::new(),
        ft_with: Vec::new(),
        ft_without: Vec::new(),
        handling_ms: Vec::new(),
        fs_ms: Vec::new(),
        ft_judge_ms: Vec::new(),
        ft_prepare_ms: Vec::new(),
        ft_injected: 0,
        requests: BTreeMap::new(),
        rss_idle: 0,
        rss_after: 0,
        cpu_ms: 0.0,
        baseline_cpu_ms: 0.0,
    };
    let half = per_side / 2;
    for (phase, agent_on) in [0usize, 1].into_iter().enumerate() {
        let agent = Agent::start(
            &bin_dir().join("berth-agent"),
            &sides[agent_on].node,
            &sides[agent_on].work,
        )?;
        // With a baseline build, the other node runs it: the difference is then between the
        // two builds, measured at the same moments.
        let baseline_agent = match baseline {
            Some(b) => {
                let other = 1 - agent_on;
                Some(Agent::start(b, &sides[other].node, &sides[other].work)?)
            }
            None => None,
        };
        std::thread::sleep(Duration::from_millis(300));
        if phase == 0 {
            o.rss_idle = agent.rss_kib();
        }
        let cpu_before = agent.cpu_ms();
        let baseline_cpu_before = baseline_agent.as_ref().map_or(0.0, Agent::cpu_ms);
        let n = if phase == 0 { half } else { per_side - half };
        for i in 0..n {
            // ABBA: which side goes first alternates, so neither always runs right after
            // the other's removal.
            let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
            for s in order {
                let ms = sides[s].create(&format!("p{phase}-{i}")).await?;
                if s == agent_on {
                    o.with.push(ms);
                } else {
                    o.without.push(ms);
                }
            }
            for s in order {
                let ms = sides[s].create_annotated(&format!("f{phase}-{i}")).await?;
                if s == agent_on {
                    o.ft_with.push(ms);
                } else {
                    o.ft_without.push(ms);
                }
            }
        }
        o.rss_after = o.rss_after.max(agent.rss_kib());
        o.cpu_ms += agent.cpu_ms() - cpu_before;
        o.baseline_cpu_ms +=
            baseline_agent.as_ref().map_or(0.0, Agent::cpu_ms) - baseline_cpu_before;
        o.handling_ms.extend(
            agent
                .field(&["nri request handled", "CreateContainer"], "took_us")
                .into_iter()
                .map(|us| us as f64 / 1000.0),
        );
        o.fs_ms.extend(
            agent
                .field(&["file logs mounted"], "prepare_us")
                .into_iter()
                .map(|us| us as f64 / 1000.0),
        );
        let judge = agent.field(&["faketime injected"], "judge_us");
        o.ft_injected += judge.len();
        o.ft_judge_ms
            .extend(judge.into_iter().map(|us| us as f64 / 1000.0));
        o.ft_prepare_ms.extend(
            agent
                .field(&["faketime injected"], "prepare_us")
                .into_iter()
                .map(|us| us as f64 / 1000.0),
        );
        for (m, (c, b, max)) in agent.requests() {
            let e = o.requests.entry(m).or_default();
            e.0 += c;
            e.1 += b;
            e.2 = e.2.max(max);
        }
        drop(agent);
        // The runtime notices the plugin is gone before the next phase.
        std::thread::sleep(Duration::from_millis(300));
    }
    for s in sides.iter_mut() {
        s.cri.teardown_all().await?;
    }
    Ok(o)
}

fn report(containerd: Containerd, baseline: Option<&Path>, o: &Outcome, out: &mut BenchReport) {
    let (w50, w99) = (pct(&o.without, 0.50), pct(&o.without, 0.99));
    let (a50, a99) = (pct(&o.with, 0.50), pct(&o.with, 0.99));
    let (l50, h50) = diff_interval(&o.with, &o.without, 0.50);
    let (l99, h99) = diff_interval(&o.with, &o.without, 0.99);
    let v = containerd.as_str();
    let (without, added) = match baseline {
        Some(b) => (
            format!("baseline agent {}", b.display()),
            "added over the baseline",
        ),
        None => ("without agent".to_string(), "added by berth"),
    };
    out.note(format!(
        "containerd {v}: CreateContainer through CRI on two identical nodes, alternating ABBA, the agent moving sides halfway; {} creations per side",
        o.with.len()
    ));
    let plot = format!("CreateContainer, containerd {v}");
    out.latency(&plot, &without, "ms", &o.without);
    out.latency(&plot, "berth-agent registered", "ms", &o.with);
    if o.handling_ms.len() >= 2 {
        let plot = format!("agent handling, containerd {v}");
        out.latency(&plot, "CreateContainer in the plugin", "ms", &o.handling_ms);
        out.latency(
            &plot,
            "dirs (metadata written after the answer)",
            "ms",
            &o.fs_ms,
        );
    }
    let p99_added = out
        .figure(&format!("p99 {added}, containerd {v}"), a99 - w99, "ms")
        .interval(l99, h99);
    // The target is what berth may add to a node without it, not a build's difference.
    if baseline.is_none() {
        p99_added.target(Target::AtMost(2.0));
    }
    out.figure(&format!("p50 {added}, containerd {v}"), a50 - w50, "ms")
        .interval(l50, h50);
    out.ratio(
        &format!("CreateContainer p50 with/without, containerd {v}"),
        "ms",
        a50,
        w50,
    );
    out.ratio(
        &format!("CreateContainer p99 with/without, containerd {v}"),
        "ms",
        a99,
        w99,
    );
    out.figure(
        &format!("berth-agent CPU per creation (all threads, removal included), containerd {v}"),
        o.cpu_ms / o.with.len().max(1) as f64,
        "ms",
    );
    out.figure(
        &format!("berth-agent RSS idle, containerd {v}"),
        o.rss_idle as f64 / 1024.0,
        "MiB",
    )
    .target(Target::AtMost(20.0));
    out.figure(
        &format!(
            "berth-agent RSS after {} creations, containerd {v}",
            o.with.len()
        ),
        o.rss_after as f64 / 1024.0,
        "MiB",
    );
    println!(
        "CreateContainer through CRI, containerd {v} ({} containers per side, interleaved one by one on two nodes, agent moved halfway)",
        o.with.len(),
    );
    println!(
        "  {:<23} p50 {w50:7.2} ms   p99 {w99:7.2} ms",
        format!("{without}:")
    );
    println!(
        "  berth-agent registered: p50 {a50:7.2} ms   p99 {a99:7.2} ms   (every container gets a file-log mount)"
    );
    println!(
        "  {:<23} p50 {:+7.2} ms [{l50:+.2}, {h50:+.2}]   p99 {:+7.2} ms [{l99:+.2}, {h99:+.2}]   (95% bootstrap intervals; target: p99 added by berth <= 2 ms)",
        format!("{added}:"),
        a50 - w50,
        a99 - w99
    );
    println!(
        "  ratio with/without:     p50 {:.2}x   p99 {:.2}x",
        a50 / w50,
        a99 / w99
    );
    if o.handling_ms.len() >= 2 && o.fs_ms.len() >= 2 {
        println!(
            "  agent's own handling:   p50 {:7.3} ms   p99 {:7.3} ms   max {:7.3} ms   ({} CreateContainer calls, timed in the plugin)",
            pct(&o.handling_ms, 0.50),
            pct(&o.handling_ms, 0.99),
            pct(&o.handling_ms, 1.0),
            o.handling_ms.len()
        );
        println!(
            "    of which dirs (metadata written after the answer): p50 {:7.3} ms   p99 {:7.3} ms",
            pct(&o.fs_ms, 0.50),
            pct(&o.fs_ms, 0.99)
        );
    } else {
        println!("  agent's own handling: not found in its log");
    }
    report_faketime(containerd, &without, added, baseline.is_none(), o, out);
    let reqs: Vec<String> = o
        .requests
        .iter()
        .map(|(m, (c, b, max))| format!("{m} {c}x avg {} B max {max} B", b / *c as u64))
        .collect();
    println!("  requests from containerd: {}", reqs.join(", "));
    let per = |ms: f64| ms / o.with.len().max(1) as f64;
    match baseline {
        Some(_) => println!(
            "  agent CPU per creation (all threads, removal included): {:.3} ms, baseline {:.3} ms",
            per(o.cpu_ms),
            per(o.baseline_cpu_ms)
        ),
        None => println!(
            "  agent CPU per creation (all threads, removal included): {:.3} ms",
            per(o.cpu_ms)
        ),
    }
    println!(
        "berth-agent RSS: idle {:.1} MiB, after {} creations {:.1} MiB (target: idle <= 20 MiB)",
        o.rss_idle as f64 / 1024.0,
        o.with.len(),
        o.rss_after as f64 / 1024.0
    );
}

/// The faketime-annotated containers' rows: the same comparison as the file-log ones.
fn report_faketime(
    containerd: Containerd,
    without: &str,
    added: &str,
    target: bool,
    o: &Outcome,
    out: &mut BenchReport,
) {
    let v = containerd.as_str();
    let (w50, w99) = (pct(&o.ft_without, 0.50), pct(&o.ft_without, 0.99));
    let (a50, a99) = (pct(&o.ft_with, 0.50), pct(&o.ft_with, 0.99));
    let (l50, h50) = diff_interval(&o.ft_with, &o.ft_without, 0.50);
    let (l99, h99) = diff_interval(&o.ft_with, &o.ft_without, 0.99);
    let plot = format!("CreateContainer, faketime-annotated glibc container, containerd {v}");
    out.latency(&plot, without, "ms", &o.ft_without);
    out.latency(&plot, "berth-agent registered", "ms", &o.ft_with);
    if o.ft_judge_ms.len() >= 2 && o.ft_prepare_ms.len() >= 2 {
        let plot = format!("faketime handling, containerd {v}");
        out.latency(
            &plot,
            "judging the entry point (containerd, cached verdict)",
            "ms",
            &o.ft_judge_ms,
        );
        out.latency(&plot, "timestamp file and state", "ms", &o.ft_prepare_ms);
    }
    let p99_added = out
        .figure(
            &format!("p99 {added}, faketime-annotated, containerd {v}"),
            a99 - w99,
            "ms",
        )
        .interval(l99, h99);
    if target {
        p99_added.target(Target::AtMost(2.0));
    }
    out.figure(
        &format!("p50 {added}, faketime-annotated, containerd {v}"),
        a50 - w50,
        "ms",
    )
    .interval(l50, h50);
    out.ratio(
        &format!("CreateContainer p99 with/without, faketime-annotated, containerd {v}"),
        "ms",
        a99,
        w99,
    );
    println!(
        "  faketime-annotated glibc containers ({} per side; {} injected by the agent):",
        o.ft_with.len(),
        o.ft_injected
    );
    println!(
        "    {:<21} p50 {w50:7.2} ms   p99 {w99:7.2} ms",
        format!("{without}:")
    );
    println!("    berth-agent registered: p50 {a50:7.2} ms   p99 {a99:7.2} ms");
    println!(
        "    {:<21} p50 {:+7.2} ms [{l50:+.2}, {h50:+.2}]   p99 {:+7.2} ms [{l99:+.2}, {h99:+.2}]   (target: p99 added <= 2 ms)",
        format!("{added}:"),
        a50 - w50,
        a99 - w99
    );
    if o.ft_judge_ms.len() >= 2 && o.ft_prepare_ms.len() >= 2 {
        println!(
            "    in the agent: judging p50 {:.3} ms p99 {:.3} ms max {:.3} ms; files p50 {:.3} ms p99 {:.3} ms",
            pct(&o.ft_judge_ms, 0.50),
            pct(&o.ft_judge_ms, 0.99),
            pct(&o.ft_judge_ms, 1.0),
            pct(&o.ft_prepare_ms, 0.50),
            pct(&o.ft_prepare_ms, 0.99)
        );
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let mut out = BenchReport::new("nri");
    for v in &args.versions {
        let before = load();
        let o = measure(*v, args.containers, args.baseline.as_deref()).await?;
        report(*v, args.baseline.as_deref(), &o, &mut out);
        println!("  load average before / after: {before} / {}", load());
    }
    out.finish()?;
    Ok(())
}
