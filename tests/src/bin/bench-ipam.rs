//! bench-ipam: IPAM allocations + releases per second with 8 concurrent processes, each
//! operation one CNI plugin process (ADD or DEL) exactly as a runtime executes it:
//! berth-ipam on its local store vs Debian's reference `host-local` (same machine, same run,
//! ratio printed), then berth-ipam on etcd (spawned on 127.0.0.1). Every run checks that no
//! address was held by two attachments at once and prints the count of duplicates.
//!
//! Usage: bench-ipam [--cycles N] [--workers N] [--rounds N]
//! Env: BERTH_BIN_DIR (where berth-ipam is; default: next to this binary),
//!      BERTH_HOST_LOCAL (default /usr/lib/cni/host-local), BERTH_ETCD (default /usr/bin/etcd).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

struct Args {
    cycles: usize,
    workers: usize,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        cycles: 250,
        workers: 8,
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
            "--cycles" => a.cycles = v()?,
            "--workers" => a.workers = v()?,
            "--rounds" => a.rounds = v()?,
            other => bail!("unknown argument {other}; use --cycles N --workers N --rounds N"),
        }
    }
    Ok(a)
}

/// One lifetime of an address: ADD returned at `from`, DEL started at `to`.
struct Life {
    cid: String,
    ip: IpAddr,
    from: Instant,
    to: Instant,
}

fn cni(plugin: &Path, conf: &[u8], cmd: &str, cid: &str) -> Result<String> {
    let mut child = Command::new(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/bench-ipam")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    child.stdin.take().unwrap().write_all(conf)?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd} {cid} with {} failed: {stdout} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

struct RunResult {
    ops: usize,
    secs: f64,
    duplicates: usize,
    /// CPU time (user + system) of the plugin processes per operation, in ms: a measure the
    /// machine's load does not distort as much as the rate.
    cpu_ms_per_op: f64,
}

/// User + system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// `workers` threads, each `cycles` times: ADD (a process) then DEL (a process).
fn run(plugin: &Path, conf: &Value, tag: &str, a: &Args) -> Result<RunResult> {
    let conf = Arc::new(conf.to_string().into_bytes());
    let lives = Arc::new(Mutex::new(Vec::new()));
    let cpu_before = children_cpu();
    let started = Instant::now();
    let handles: Vec<_> = (0..a.workers)
        .map(|w| {
            let (plugin, conf, lives, cycles) =
                (plugin.to_path_buf(), conf.clone(), lives.clone(), a.cycles);
            let tag = tag.to_string();
            std::thread::spawn(move || -> Result<()> {
                for c in 0..cycles {
                    let cid = format!("{tag}-w{w}-c{c}");
                    let out = cni(&plugin, &conf, "ADD", &cid)?;
                    let from = Instant::now();
                    let v: Value = serde_json::from_str(&out).context("ADD result")?;
                    let addr = v["ips"][0]["address"]
                        .as_str()
                        .context("ADD result has no ips[0].address")?;
                    let ip: IpAddr = addr.split('/').next().unwrap_or_default().parse()?;
                    let to = Instant::now();
                    lives.lock().unwrap().push(Life {
                        cid: cid.clone(),
                        ip,
                        from,
                        to,
                    });
                    cni(&plugin, &conf, "DEL", &cid)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked")?;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu_before;
    let lives = lives.lock().unwrap();
    let ops = lives.len() * 2;
    Ok(RunResult {
        ops,
        secs,
        duplicates: duplicates(&lives),
        cpu_ms_per_op: cpu * 1000.0 / ops.max(1) as f64,
    })
}

fn duplicates(lives: &[Life]) -> usize {
    let mut by_ip: BTreeMap<IpAddr, Vec<&Life>> = BTreeMap::new();
    for l in lives {
        by_ip.entry(l.ip).or_default().push(l);
    }
    let mut n = 0;
    for ls in by_ip.values_mut() {
        ls.sort_by_key(|l| l.from);
        for w in ls.windows(2) {
            if w[1].from < w[0].to && w[0].cid != w[1].cid {
                n += 1;
            }
        }
    }
    n
}

struct Etcd {
    child: Child,
    dir: PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_etcd(root: &Path) -> Result<Etcd> {
    let bin = std::env::var_os("BERTH_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/etcd".into());
    let dir = root.join("etcd");
    std::fs::create_dir_all(&dir)?;
    let (cp, pp) = (free_port()?, free_port()?);
    let client = format!("http://127.0.0.1:{cp}");
    let peer = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.join("etcd.log"))?;
    let child = Command::new(&bin)
        .args([
            "--name=bench".to_string(),
            format!("--data-dir={}", dir.join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=bench={peer}"),
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let etcd = Etcd {
        child,
        dir,
        endpoint: client,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", cp)).is_err() {
        if Instant::now() > deadline {
            bail!("etcd did not listen on {cp} within 15 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(etcd)
}

fn berth_conf(name: &str, store: Value) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": name, "type": "bridge",
        "ipam": {"type": "berth-ipam", "store": store, "rack": "bench",
                 "pools": [{"name": "bench", "subnet": "10.80.0.0/16", "gateway": "10.80.0.1"}]}
    })
}

fn report(label: &str, r: &RunResult) -> f64 {
    let rate = r.ops as f64 / r.secs;
    println!(
        "  {label:<28} {:>6} ops in {:>6.2} s = {:>7.0} ops/s, {:.2} ms CPU/op, duplicates: {}",
        r.ops, r.secs, rate, r.cpu_ms_per_op, r.duplicates
    );
    rate
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let bin_dir = std::env::var_os("BERTH_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .context("cannot find the binary directory; set BERTH_BIN_DIR")?;
    let berth = bin_dir.join("berth-ipam");
    let host_local = std::env::var_os("BERTH_HOST_LOCAL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/lib/cni/host-local".into());
    for p in [&berth, &host_local] {
        if !p.exists() {
            bail!(
                "{} not found (build with cargo build --release, install containernetworking-plugins)",
                p.display()
            );
        }
    }
    let root = std::env::temp_dir().join(format!("berth-bench-ipam-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(root.clone());

    println!(
        "bench-ipam: {} processes x {} cycles (ADD + DEL, one plugin process each), {} rounds",
        a.workers, a.cycles, a.rounds
    );
    // SAFETY: getloadavg writes at most 3 doubles into the array.
    let mut load = [0f64; 3];
    unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };
    println!(
        "machine: {} CPUs, load average {:.2} (rates are only comparable inside one run)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load[0]
    );
    let mut total_dups = 0;
    let (mut berth_rates, mut hl_rates) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        println!("round {}:", round + 1);
        let conf = berth_conf(
            &format!("bench-local-{round}"),
            json!({"type": "local", "dir": root.join(format!("berth-{round}"))}),
        );
        let r = run(&berth, &conf, &format!("bl{round}"), &a)?;
        total_dups += r.duplicates;
        berth_rates.push(report("berth-ipam (local store)", &r));
        let hl = json!({
            "cniVersion": "1.0.0", "name": format!("bench-hl-{round}"), "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": root.join(format!("hl-{round}")),
                     "ranges": [[{"subnet": "10.81.0.0/16", "gateway": "10.81.0.1"}]]}
        });
        let r = run(&host_local, &hl, &format!("hl{round}"), &a)?;
        total_dups += r.duplicates;
        hl_rates.push(report("host-local (reference)", &r));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (b, h) = (mean(&berth_rates), mean(&hl_rates));
    println!(
        "local: berth-ipam {b:.0} ops/s vs host-local {h:.0} ops/s: ratio {:.2}x (target >= 2000 ops/s)",
        b / h
    );

    let etcd = start_etcd(&root)?;
    let conf = berth_conf(
        "bench-etcd",
        json!({"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/bench", "timeout": "5s"}),
    );
    println!("etcd (spawned on {}):", etcd.endpoint);
    let r = run(&berth, &conf, "be", &a)?;
    total_dups += r.duplicates;
    let e = report("berth-ipam (etcd store)", &r);
    println!("etcd: berth-ipam {e:.0} ops/s (target >= 500 ops/s)");
    println!("duplicates in all runs: {total_dups}");
    if total_dups > 0 {
        bail!("{total_dups} duplicate address assignments");
    }
    Ok(())
}
