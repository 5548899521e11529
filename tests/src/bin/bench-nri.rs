//! bench-nri: what berth-agent's NRI plugin costs. CreateContainer latency through CRI on a
//! private containerd 2.1 node, without the agent and with it registered (every container
//! asking for file logs, so the agent creates dirs, writes metadata and answers a mount),
//! rounds alternating so drift hits both sides; p50/p99 and the added latency printed. Then
//! the agent's RSS idle and after the creations.
//!
//! Usage: bench-nri [--containers N] [--rounds N] [--containerd 2.1|1.7]
//! Env: BERTH_BIN_DIR (where berth-agent is; default: next to this binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::testbed::{Containerd, Node, NodeOptions};
use berth_e2e::{BUSYBOX_IMAGE, ContainerSpec, CriClient, Pod, PodSpec};

struct Args {
    containers: usize,
    rounds: usize,
    containerd: Containerd,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        containers: 50,
        rounds: 4,
        containerd: Containerd::V2_1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().context("missing value")?;
        match k.as_str() {
            "--containers" => a.containers = v.parse().context("not a number")?,
            "--rounds" => a.rounds = v.parse().context("not a number")?,
            "--containerd" => {
                a.containerd = match v.as_str() {
                    "2.1" => Containerd::V2_1,
                    "1.7" => Containerd::V1_7,
                    _ => bail!("--containerd is 2.1 or 1.7"),
                }
            }
            other => bail!(
                "unknown argument {other}; use --containers N --rounds N --containerd 2.1|1.7"
            ),
        }
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
    fn start(node: &Node, work: &Path) -> Result<Agent> {
        let log = work.join("agent.log");
        let child = Command::new(bin_dir().join("berth-agent"))
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
        while !std::fs::read_to_string(&a.log)
            .unwrap_or_default()
            .contains("nri plugin ready")
        {
            if Instant::now() > deadline {
                bail!(
                    "berth-agent did not register: {}",
                    std::fs::read_to_string(&a.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(a)
    }

    /// Values (ms) of the microsecond field `field` on log lines containing every marker.
    fn log_ms(&self, markers: &[&str], field: &str) -> Vec<f64> {
        let key = format!("{field}=");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| markers.iter().all(|m| l.contains(m)))
            .filter_map(|l| {
                l.split(key.as_str())
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .map(|us| us / 1000.0)
            .collect()
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

/// CreateContainer latencies (ms) of `n` containers, each removed right after.
async fn round(cri: &mut CriClient, pod: &Pod, tag: &str, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let spec = ContainerSpec::sleeper(&format!("{tag}-{i}"), BUSYBOX_IMAGE)
            .env("KUBERNETES_FILELOGS", "/app/logs");
        let t = Instant::now();
        let id = cri.create_container(pod, &spec).await?;
        v.push(t.elapsed().as_secs_f64() * 1000.0);
        cri.remove_container(&id).await?;
    }
    Ok(v)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let node = Node::start(
        "bench-nri",
        NodeOptions {
            containerd: args.containerd,
            ..Default::default()
        },
    )?;
    let work = node.dir().join("bench-nri");
    std::fs::create_dir_all(&work)?;
    let mut cri = node.cri().await?;
    let pod = cri.run_pod(&PodSpec::new("bench", "nri")).await?;
    // Warm-up: image snapshot, first-call costs.
    round(&mut cri, &pod, "warm", 5).await?;

    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut rss_idle = 0;
    let mut rss_after = 0;
    let mut created = 0;
    let mut handler = Vec::new();
    let mut fs_work = Vec::new();
    for r in 0..args.rounds {
        without.extend(round(&mut cri, &pod, &format!("n{r}"), args.containers).await?);
        let agent = Agent::start(&node, &work)?;
        std::thread::sleep(Duration::from_millis(300));
        if r == 0 {
            rss_idle = agent.rss_kib();
        }
        with.extend(round(&mut cri, &pod, &format!("a{r}"), args.containers).await?);
        created += args.containers;
        rss_after = rss_after.max(agent.rss_kib());
        handler.extend(agent.log_ms(&["nri request handled", "CreateContainer"], "took_us"));
        fs_work.extend(agent.log_ms(&["file logs mounted"], "prepare_us"));
        drop(agent);
        let _ = std::fs::remove_file(work.join("agent.log"));
        // The runtime notices the plugin is gone before the next "without" round.
        std::thread::sleep(Duration::from_millis(300));
    }
    cri.teardown_all().await?;

    let (w50, w99) = (pct(&mut without, 0.50), pct(&mut without, 0.99));
    let (a50, a99) = (pct(&mut with, 0.50), pct(&mut with, 0.99));
    println!(
        "CreateContainer through CRI, containerd {} ({} containers per side, {} alternating rounds)",
        args.containerd.as_str(),
        without.len(),
        args.rounds
    );
    println!("  without agent:          p50 {w50:7.2} ms   p99 {w99:7.2} ms");
    println!(
        "  berth-agent registered: p50 {a50:7.2} ms   p99 {a99:7.2} ms   (every container gets a file-log mount)"
    );
    println!(
        "  added by berth:         p50 {:+7.2} ms   p99 {:+7.2} ms   (target: p99 added <= 2 ms)",
        a50 - w50,
        a99 - w99
    );
    if handler.len() >= 2 && fs_work.len() >= 2 {
        let (h50, h99) = (pct(&mut handler, 0.50), pct(&mut handler, 0.99));
        let (f50, f99) = (pct(&mut fs_work, 0.50), pct(&mut fs_work, 0.99));
        println!(
            "  agent's own handling:   p50 {h50:7.3} ms   p99 {h99:7.3} ms   ({} CreateContainer calls, timed in the plugin)",
            handler.len()
        );
        println!("    of which dirs + metadata: p50 {f50:7.3} ms   p99 {f99:7.3} ms");
    } else {
        println!("  agent's own handling: not found in its log");
    }
    println!(
        "  ratio with/without:     p50 {:.2}x   p99 {:.2}x",
        a50 / w50,
        a99 / w99
    );
    println!(
        "berth-agent RSS: idle {:.1} MiB, after {} creations {:.1} MiB (target: idle <= 20 MiB)",
        rss_idle as f64 / 1024.0,
        created,
        rss_after as f64 / 1024.0
    );
    Ok(())
}
