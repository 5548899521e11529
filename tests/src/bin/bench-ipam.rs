//! bench-ipam: IPAM allocations + releases per second with 8 concurrent processes, each
//! operation one CNI plugin process (ADD or DEL) exactly as a runtime executes it:
//! berth-ipam on its local store vs Debian's reference `host-local` (same machine, same run,
//! ratio printed), then berth-ipam on etcd (spawned on 127.0.0.1). Every run checks that no
//! address was held by two attachments at once and prints the count of duplicates.
//!
//! A `floor` row runs the same 8 x cycles x (2 processes) with a minimal static executable
//! that only exits: what process-per-operation itself costs on this machine (fork/exec, pipes,
//! exit, wait), the rate no plugin can beat. A second row does the same with `/bin/true`
//! (BERTH_DYNAMIC_FLOOR), a dynamically linked glibc program that does nothing: what loading
//! glibc alone adds to every process, which a dynamically linked plugin pays too.
//!
//! Usage: bench-ipam [--cycles N] [--workers N] [--rounds N]
//! Env: BERTH_PLUGIN_DIR (where berth-ipam is; scripts/bench passes the static build),
//!      else BERTH_BIN_DIR (default: next to this binary),
//!      BERTH_HOST_LOCAL (default /usr/lib/cni/host-local), BERTH_ETCD (default /usr/bin/etcd),
//!      BERTH_DYNAMIC_FLOOR (default /bin/true; the row is left out when it does not exist).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use berth_e2e::bench_report::{BenchReport, Target, process_cpu_ms};
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
    berth_e2e::bench_args::counts(
        std::env::args().skip(1),
        &mut [
            ("--cycles", &mut a.cycles),
            ("--workers", &mut a.workers),
            ("--rounds", &mut a.rounds),
        ],
    )?;
    Ok(a)
}

/// One lifetime of an address: ADD returned at `from`, DEL started at `to`.
struct Life {
    cid: String,
    ip: IpAddr,
    from: Instant,
    to: Instant,
}

/// Runs one CNI call as a runtime does: env, config on stdin, result on stdout.
fn cni(plugin: &Path, conf: &[u8], cmd: &str, cid: &str, pod: Option<&str>) -> Result<String> {
    let out = exec(plugin, conf, cmd, cid, pod)?;
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

/// Spawns the process with the CNI env and pipes, writes the config, waits for it. With a pod
/// name, CNI_ARGS names the pod as kubelet's runtime does (stickiness hangs on it).
fn exec(
    plugin: &Path,
    conf: &[u8],
    cmd: &str,
    cid: &str,
    pod: Option<&str>,
) -> Result<std::process::Output> {
    let mut command = Command::new(plugin);
    if let Some(pod) = pod {
        command.env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"),
        );
    }
    let mut child = command
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
    // The floor executable exits without reading: a broken pipe is expected there.
    match child.stdin.take().unwrap().write_all(conf) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r?,
    }
    Ok(child.wait_with_output()?)
}

/// A minimal static x86-64 Linux executable: one PT_LOAD segment whose code is
/// `exit(0)` (`mov eax, 60; xor edi, edi; syscall`). No loader, no libc, no relocations.
#[cfg(target_arch = "x86_64")]
fn floor_executable(dir: &Path) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    const BASE: u64 = 0x40_0000;
    const EHDR: u64 = 64;
    const PHDR: u64 = 56;
    let code: [u8; 9] = [0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05];
    let size = EHDR + PHDR + code.len() as u64;
    let mut elf = Vec::with_capacity(size as usize);
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, v1, SysV
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + EHDR + PHDR).to_le_bytes()); // entry: the code
    elf.extend_from_slice(&EHDR.to_le_bytes()); // program headers right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [EHDR as u16, PHDR as u16, 1, 0, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for v in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(&code);
    let path = dir.join("floor-exit0");
    std::fs::write(&path, &elf)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(Some(path))
}

#[cfg(not(target_arch = "x86_64"))]
fn floor_executable(_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(None)
}

/// The same workers and process count as [`run`], with an executable that only exits.
fn run_floor(exe: &Path, conf: &Value, a: &Args) -> Result<RunResult> {
    let conf = Arc::new(conf.to_string().into_bytes());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let cpu_before = children_cpu();
    let started = Instant::now();
    let handles: Vec<_> = (0..a.workers)
        .map(|w| {
            let (exe, conf, cycles) = (exe.to_path_buf(), conf.clone(), a.cycles);
            let latencies = latencies.clone();
            std::thread::spawn(move || -> Result<()> {
                for c in 0..cycles {
                    let cid = format!("floor-w{w}-c{c}");
                    for cmd in ["ADD", "DEL"] {
                        let spawned = Instant::now();
                        let out = exec(&exe, &conf, cmd, &cid, None)?;
                        let ms = spawned.elapsed().as_secs_f64() * 1000.0;
                        if !out.status.success() {
                            bail!("{} exited with {}", exe.display(), out.status);
                        }
                        latencies.lock().unwrap().push(ms);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked")?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ops = a.workers * a.cycles * 2;
    Ok(RunResult {
        ops,
        secs,
        duplicates: 0,
        cpu_ms_per_op: (children_cpu() - cpu_before) * 1000.0 / ops.max(1) as f64,
        latencies_ms: std::mem::take(&mut *latencies.lock().unwrap()),
    })
}

struct RunResult {
    ops: usize,
    secs: f64,
    duplicates: usize,
    /// CPU time (user + system) of the plugin processes per operation, in ms: a measure the
    /// machine's load does not distort as much as the rate.
    cpu_ms_per_op: f64,
    /// Each process's latency (spawn to exit), in ms.
    latencies_ms: Vec<f64>,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

/// User + system CPU seconds of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: rusage is plain integers, for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Addresses of the churn rows' /24 (its gateway and broadcast excluded).
const CHURN_POOL_SIZE: usize = 253;

/// ADD then DEL of `n` pods of their own names, one after the other: with a hold, every
/// address of a pool of `n` is then held for a pod that left. Checks that it is.
fn fill_with_holds(plugin: &Path, conf: &Value, n: usize, tag: &str) -> Result<()> {
    let conf = conf.to_string().into_bytes();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..n {
        let cid = format!("{tag}-{i}");
        let out = cni(plugin, &conf, "ADD", &cid, Some(&cid))?;
        let v: Value = serde_json::from_str(&out).context("ADD result")?;
        seen.insert(
            v["ips"][0]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        cni(plugin, &conf, "DEL", &cid, Some(&cid))?;
    }
    if seen.len() != n {
        bail!(
            "filling the pool with holds gave {} addresses to {n} pods",
            seen.len()
        );
    }
    Ok(())
}

/// `workers` threads, each `cycles` times: ADD (a process) then DEL (a process).
fn run(plugin: &Path, conf: &Value, tag: &str, a: &Args) -> Result<RunResult> {
    run_pods(plugin, conf, tag, a, false)
}

/// [`run`]; with `pods`, every cycle is a pod of its own name (a Deployment's churn), so
/// berth-ipam holds each released address for a pod that never comes back.
fn run_pods(plugin: &Path, conf: &Value, tag: &str, a: &Args, pods: bool) -> Result<RunResult> {
    let conf = Arc::new(conf.to_string().into_bytes());
    let lives = Arc::new(Mutex::new(Vec::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let cpu_before = children_cpu();
    let started = Instant::now();
    let handles: Vec<_> = (0..a.workers)
        .map(|w| {
            let (plugin, conf, lives, cycles) =
                (plugin.to_path_buf(), conf.clone(), lives.clone(), a.cycles);
            let latencies = latencies.clone();
            let tag = tag.to_string();
            std::thread::spawn(move || -> Result<()> {
                for c in 0..cycles {
                    let cid = format!("{tag}-w{w}-c{c}");
                    let spawned = Instant::now();
                    let pod = pods.then(|| cid.clone());
                    let out = cni(&plugin, &conf, "ADD", &cid, pod.as_deref())?;
                    let from = Instant::now();
                    let add_ms = (from - spawned).as_secs_f64() * 1000.0;
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
                    let del_start = Instant::now();
                    cni(&plugin, &conf, "DEL", &cid, pod.as_deref())?;
                    let del_ms = del_start.elapsed().as_secs_f64() * 1000.0;
                    latencies.lock().unwrap().extend([add_ms, del_ms]);
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
        latencies_ms: std::mem::take(&mut *latencies.lock().unwrap()),
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

fn report_floor(label: &str, r: &RunResult) -> f64 {
    let rate = r.ops as f64 / r.secs;
    println!(
        "  {label:<28} {:>6} ops in {:>6.2} s = {:>7.0} ops/s, {:.2} ms CPU/op (exec + exit only)",
        r.ops, r.secs, rate, r.cpu_ms_per_op
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
    // The plugin as shipped (static, scripts/lib/plugins.sh), which scripts/bench names.
    let berth = std::env::var_os("BERTH_PLUGIN_DIR")
        .map_or_else(|| bin_dir.clone(), PathBuf::from)
        .join("berth-ipam");
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
    let berth_build = berth_e2e::bench_report::plugin_build(&berth);
    println!("berth-ipam: {berth_build}");
    let mut load = [0f64; 3];
    // SAFETY: getloadavg writes at most 3 doubles into the array.
    unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };
    println!(
        "machine: {} CPUs, load average {:.2} (rates are only comparable inside one run)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load[0]
    );
    let mut total_dups = 0;
    let floor_exe = floor_executable(&root)?;
    let dynamic_floor = std::env::var_os("BERTH_DYNAMIC_FLOOR")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/bin/true".into());
    let (mut berth_rates, mut hl_rates, mut floor_rates) = (Vec::new(), Vec::new(), Vec::new());
    // Every run's result by row, for the report.
    let mut rows: Vec<(&str, RunResult)> = Vec::new();
    for round in 0..a.rounds {
        println!("round {}:", round + 1);
        if let Some(exe) = &floor_exe {
            let conf = berth_conf(&format!("bench-floor-{round}"), json!({"type": "local"}));
            let r = run_floor(exe, &conf, &a)?;
            floor_rates.push(report_floor(FLOOR_STATIC, &r));
            rows.push((FLOOR_STATIC, r));
        }
        if dynamic_floor.exists() {
            let conf = berth_conf(&format!("bench-floor-{round}"), json!({"type": "local"}));
            let r = run_floor(&dynamic_floor, &conf, &a)?;
            report_floor(FLOOR_DYNAMIC, &r);
            rows.push((FLOOR_DYNAMIC, r));
        }
        let conf = berth_conf(
            &format!("bench-local-{round}"),
            json!({"type": "local", "dir": root.join(format!("berth-{round}"))}),
        );
        let r = run(&berth, &conf, &format!("bl{round}"), &a)?;
        total_dups += r.duplicates;
        berth_rates.push(report(BERTH_LOCAL, &r));
        rows.push((BERTH_LOCAL, r));
        let hl = json!({
            "cniVersion": "1.0.0", "name": format!("bench-hl-{round}"), "type": "bridge",
            "ipam": {"type": "host-local", "dataDir": root.join(format!("hl-{round}")),
                     "ranges": [[{"subnet": "10.81.0.0/16", "gateway": "10.81.0.1"}]]}
        });
        let r = run(&host_local, &hl, &format!("hl{round}"), &a)?;
        total_dups += r.duplicates;
        hl_rates.push(report(HOST_LOCAL, &r));
        rows.push((HOST_LOCAL, r));
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (b, h) = (mean(&berth_rates), mean(&hl_rates));
    println!(
        "local: berth-ipam {b:.0} ops/s vs host-local {h:.0} ops/s: ratio {:.2}x (target >= 2000 ops/s)",
        b / h
    );
    if !floor_rates.is_empty() {
        let f = mean(&floor_rates);
        println!(
            "floor: {f:.0} ops/s; berth-ipam (local) reaches {:.0}% of it, host-local {:.0}%",
            100.0 * b / f,
            100.0 * h / f
        );
    }

    // Churn at saturation: a /24 (253 addresses) first filled with holds for pods that left
    // (untimed), then distinct pods through it (each ADD reclaims the oldest hold), beside
    // the same churn with no holds at all.
    let churn_conf = |name: &str, hold: &str| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "bridge",
            "ipam": {"type": "berth-ipam", "rack": "bench", "hold": hold, "sticky": "all",
                     "store": {"type": "local", "dir": root.join(name)},
                     "pools": [{"name": "churn", "subnet": "10.82.0.0/24", "gateway": "10.82.0.1"}]}
        })
    };
    let (mut held_rates, mut free_rates) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let held = churn_conf(&format!("churn-hold-{round}"), "10m");
        fill_with_holds(&berth, &held, CHURN_POOL_SIZE, &format!("fill{round}"))?;
        let r = run_pods(&berth, &held, &format!("ch{round}"), &a, true)?;
        total_dups += r.duplicates;
        held_rates.push(report(CHURN_HELD, &r));
        rows.push((CHURN_HELD, r));
        let r = run_pods(
            &berth,
            &churn_conf(&format!("churn-free-{round}"), "0s"),
            &format!("cf{round}"),
            &a,
            true,
        )?;
        total_dups += r.duplicates;
        free_rates.push(report(CHURN_FREE, &r));
        rows.push((CHURN_FREE, r));
    }
    let (ch, cf) = (mean(&held_rates), mean(&free_rates));
    println!(
        "churn at saturation: holds reclaimed {ch:.0} ops/s vs no holds {cf:.0} ops/s: ratio {:.2}x (target >= 0.90)",
        ch / cf
    );

    let etcd = start_etcd(&root)?;
    let conf = berth_conf(
        "bench-etcd",
        json!({"type": "etcd", "endpoints": [etcd.endpoint], "prefix": "/bench", "timeout": "5s"}),
    );
    println!("etcd (spawned on {}):", etcd.endpoint);
    let etcd_cpu_before = process_cpu_ms(etcd.child.id());
    let r = run(&berth, &conf, "be", &a)?;
    let etcd_cpu = (process_cpu_ms(etcd.child.id()) - etcd_cpu_before) / r.ops as f64;
    total_dups += r.duplicates;
    let e = report(BERTH_ETCD, &r);
    let plugin_cpu = r.cpu_ms_per_op;
    rows.push((BERTH_ETCD, r));
    println!(
        "etcd: berth-ipam {e:.0} ops/s, {:.0}% of the local store's {b:.0} ops/s (target >= 2000 ops/s)",
        100.0 * e / b
    );
    // What the machine's CPUs allow at most when etcd and the plugins share them: the bound
    // no client design can pass on this machine.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!(
        "etcd server CPU {etcd_cpu:.2} ms/op + plugin {plugin_cpu:.2} ms/op: {cpus:.0} CPUs allow at most {:.0} ops/s (etcd alone at most {:.0})",
        cpus * 1000.0 / (etcd_cpu + plugin_cpu),
        cpus * 1000.0 / etcd_cpu
    );
    if let Some(exe) = &floor_exe {
        // Again beside the etcd run: the machine's state may have changed since the rounds.
        report_floor(FLOOR_STATIC, &run_floor(exe, &conf, &a)?);
    }
    let scale = etcd_scale(&berth, &etcd.endpoint, etcd.child.id())?;
    println!("duplicates in all runs: {total_dups}");
    bench_report(
        &a,
        &berth_build,
        &rows,
        (b, h),
        (ch, cf),
        (&scale, etcd_cpu),
        total_dups,
    )?;
    if total_dups > 0 {
        bail!("{total_dups} duplicate address assignments");
    }
    Ok(())
}

/// Lease counts of the etcd latency rows (BERTH_BENCH_ETCD_SIZES, comma separated).
const ETCD_SIZES: &[usize] = &[0, 6_000, 50_000];
/// Sequential ADDs timed at each size.
const SCALE_SAMPLES: usize = 150;
/// Leases each simulated node of the prefill allocates (a node's pods).
const PODS_PER_NODE: usize = 100;

/// ADD latency of one berth-ipam process on an etcd network that holds each of
/// [`ETCD_SIZES`] leases: `(leases, ADD latencies in ms)`. The network is grown between the
/// rows by simulated nodes of [`PODS_PER_NODE`] pods each, allocating in-process through the
/// same library (untimed), so it holds the block claims and leases a real cluster would.
///
/// The growth runs in 8 threads over long-lived connections (one per simulated node), so the
/// etcd server's CPU per ADD printed beside it is what an ADD costs etcd without a connection
/// per process.
fn etcd_scale(plugin: &Path, endpoint: &str, etcd_pid: u32) -> Result<Vec<(usize, Vec<f64>)>> {
    let sizes: Vec<usize> = match std::env::var("BERTH_BENCH_ETCD_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().context("BERTH_BENCH_ETCD_SIZES: numbers"))
            .collect::<Result<_>>()?,
        Err(_) => ETCD_SIZES.to_vec(),
    };
    let endpoint = endpoint.to_string();
    let ipam = move |node: &str| {
        json!({"type": "berth-ipam", "node": node, "rack": "bench",
               "store": {"type": "etcd", "endpoints": [endpoint], "prefix": "/scale",
                         "timeout": "5s"},
               "pools": [{"name": "scale", "subnet": "10.84.0.0/16", "gateway": "10.84.0.1"}]})
    };
    let conf = json!({"cniVersion": "1.0.0", "name": "scale", "type": "bridge",
                      "ipam": ipam("bench-node")})
    .to_string()
    .into_bytes();
    println!(
        "etcd ADD latency by network size (one process at a time, {SCALE_SAMPLES} ADDs each):"
    );
    let mut held = 0;
    let mut out = Vec::new();
    for (row, size) in sizes.into_iter().enumerate() {
        let started = Instant::now();
        let etcd_cpu_before = process_cpu_ms(etcd_pid);
        let nodes: Vec<String> = (held / PODS_PER_NODE..size.div_ceil(PODS_PER_NODE))
            .map(|n| format!("sim-{n}"))
            .collect();
        let grown = nodes.len() * PODS_PER_NODE;
        let queue = Arc::new(Mutex::new(nodes));
        let fillers: Vec<_> = (0..8)
            .map(|_| {
                let (queue, ipam) = (queue.clone(), ipam.clone());
                std::thread::spawn(move || -> Result<()> {
                    while let Some(node) = queue.lock().unwrap().pop() {
                        let config = berth_ipam_core::IpamConfig::from_json(&ipam(&node))?;
                        let alloc = berth_ipam_core::open(&config)?;
                        for i in 0..PODS_PER_NODE {
                            alloc.allocate(&berth_ipam_core::AllocateRequest {
                                network: "scale".into(),
                                container_id: format!("{node}-{i}"),
                                ifname: "eth0".into(),
                                ..Default::default()
                            })?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for f in fillers {
            f.join().expect("filler panicked")?;
        }
        let growth_cpu = (process_cpu_ms(etcd_pid) - etcd_cpu_before) / grown.max(1) as f64;
        held = held.max(size.div_ceil(PODS_PER_NODE) * PODS_PER_NODE);
        let filled = started.elapsed();
        let mut samples = Vec::with_capacity(SCALE_SAMPLES);
        for i in 0..SCALE_SAMPLES {
            let cid = format!("scale-{row}-{i}");
            let t = Instant::now();
            cni(plugin, &conf, "ADD", &cid, None)?;
            samples.push(t.elapsed().as_secs_f64() * 1000.0);
            cni(plugin, &conf, "DEL", &cid, None)?;
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let growth = if grown > 0 {
            format!(
                "grown by {grown} in {:.0} s, etcd server {growth_cpu:.2} ms CPU per in-process ADD",
                filled.as_secs_f64()
            )
        } else {
            "not grown".to_string()
        };
        println!(
            "  {held:>6} leases: ADD median {:.2} ms, mean {:.2} ms, p90 {:.2} ms ({growth})",
            sorted[sorted.len() / 2],
            samples.iter().sum::<f64>() / samples.len() as f64,
            sorted[sorted.len() * 9 / 10],
        );
        out.push((held, samples));
    }
    if let (Some((_, first)), Some((n, last))) = (out.first(), out.last()) {
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        println!(
            "etcd ADD latency at {n} leases / empty: {:.2}x (target <= 1.5x)",
            mean(last) / mean(first)
        );
    }
    Ok(out)
}

const BERTH_LOCAL: &str = "berth-ipam (local store)";
const HOST_LOCAL: &str = "host-local (reference)";
const BERTH_ETCD: &str = "berth-ipam (etcd store)";
const FLOOR_STATIC: &str = "floor (static exit(0))";
const FLOOR_DYNAMIC: &str = "floor (dynamic /bin/true)";
const CHURN_HELD: &str = "berth-ipam churn, /24 full of holds";
const CHURN_FREE: &str = "berth-ipam churn, /24 without holds";

/// The report for docs/benchmarks.md (written when BERTH_BENCH_OUT is set).
fn bench_report(
    a: &Args,
    berth_build: &str,
    rows: &[(&str, RunResult)],
    (local, host_local): (f64, f64),
    (churn_held, churn_free): (f64, f64),
    (scale, etcd_server_cpu): (&[(usize, Vec<f64>)], f64),
    duplicates: usize,
) -> Result<()> {
    let mut report = BenchReport::new("ipam");
    report.note(format!(
        "{} concurrent workers x {} cycles, each cycle an ADD and a DEL, each one plugin process \
         exactly as a runtime executes it (config on stdin, result on stdout); {} round(s) of \
         berth-ipam on its local store beside Debian's host-local, then berth-ipam on an etcd \
         spawned on 127.0.0.1. berth-ipam: {berth_build}.",
        a.workers, a.cycles, a.rounds
    ));
    report.note(
        "The churn rows give every cycle a pod of its own name (CNI_ARGS), through a /24: with \
         hold 10m the pool is first filled (untimed) with 253 holds for pods that never come \
         back, so every timed ADD reclaims the oldest hold; beside it the same churn with hold \
         0s.",
    );
    report.note(
        "The floor rows run the same workers with executables that do nothing: a minimal static \
         exit(0) (what fork/exec/exit/wait cost) and /bin/true (what loading glibc adds). CPU/op \
         is the plugin processes' user + system time per operation: the machine's other load \
         distorts it less than the rates.",
    );
    for label in [
        BERTH_LOCAL,
        HOST_LOCAL,
        FLOOR_STATIC,
        FLOOR_DYNAMIC,
        CHURN_HELD,
        CHURN_FREE,
        BERTH_ETCD,
    ] {
        let runs: Vec<&RunResult> = rows
            .iter()
            .filter(|(l, _)| *l == label)
            .map(|(_, r)| r)
            .collect();
        if runs.is_empty() {
            continue;
        }
        let plot = if label == BERTH_ETCD {
            "per-process latency, etcd store"
        } else {
            "per-process latency, local stores"
        };
        let samples: Vec<f64> = runs.iter().flat_map(|r| r.latencies_ms.clone()).collect();
        report.latency(plot, label, "ms", &samples);
        let n = runs.len() as f64;
        let rate = runs.iter().map(|r| r.rate()).sum::<f64>() / n;
        let cpu = runs.iter().map(|r| r.cpu_ms_per_op).sum::<f64>() / n;
        let f = report.figure(&format!("{label} throughput"), rate, "ops/s");
        if label == BERTH_LOCAL || label == BERTH_ETCD {
            f.target(Target::AtLeast(2000.0));
        }
        report.figure(&format!("{label} CPU per operation"), cpu, "ms");
    }
    report.figure(
        "etcd server CPU per operation (beside the etcd throughput row)",
        etcd_server_cpu,
        "ms",
    );
    report.ratio(
        "local store throughput, berth-ipam / host-local",
        "ops/s",
        local,
        host_local,
    );
    report
        .ratio(
            "churn at saturation, holds reclaimed / no holds",
            "ops/s",
            churn_held,
            churn_free,
        )
        .target(Target::AtLeast(0.9));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (leases, samples) in scale {
        report.latency(
            "etcd ADD latency by network size",
            &format!("{leases} leases"),
            "ms",
            samples,
        );
    }
    if let Some((_, empty)) = scale.first() {
        for (leases, samples) in scale.iter().skip(1) {
            report
                .ratio(
                    &format!("etcd ADD latency, {leases} leases / empty network"),
                    "ms",
                    mean(samples),
                    mean(empty),
                )
                .target(Target::AtMost(1.5));
        }
    }
    report
        .figure("duplicate assignments", duplicates as f64, "")
        .target(Target::AtMost(0.0));
    if let Some(path) = report.finish()? {
        println!("report: {}", path.display());
    }
    Ok(())
}
