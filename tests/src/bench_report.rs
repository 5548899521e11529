//! What a benchmark measured, recorded for `docs/benchmarks.md`.
//!
//! A bench binary prints its text table as always and, beside it, fills a [`BenchReport`]:
//! latency series (raw samples, grouped into plots that put berth and its reference on the
//! same axes), figures such as throughput or memory (each with an optional target), ratios
//! berth/reference (with their target), and notes. [`BenchReport::finish`] writes it as
//! `$BERTH_BENCH_OUT/<bench>.json` when that variable is set (`scripts/bench all` sets it) and
//! does nothing otherwise; the `render-benchmarks` binary turns those files into the page and
//! its plots.
//!
//! The JSON also records where and when the bench ran (the [`Run`]: command, commit, time,
//! load) and on what machine ([`Machine`]), so rendering depends only on the files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// The directory a bench writes its report into; unset: no report is written.
pub const OUT_ENV: &str = "BERTH_BENCH_OUT";

/// One benchmark's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Short name: `cni`, `ipam`, `nri` (the file is `<bench>.json`).
    pub bench: String,
    pub series: Vec<Series>,
    pub figures: Vec<Figure>,
    pub ratios: Vec<Ratio>,
    pub notes: Vec<String>,
    /// Filled by [`BenchReport::finish`] / [`BenchReport::write_to`].
    pub run: Option<Run>,
    pub machine: Option<Machine>,
}

/// A latency distribution. Series with the same `plot` are drawn on the same axes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Which plot this series belongs to, e.g. `ADD`.
    pub plot: String,
    /// The line's label, e.g. `berth-cni` or `reference bridge+host-local`.
    pub label: String,
    pub unit: String,
    /// Raw samples in `unit`, in the order they were measured.
    pub samples: Vec<f64>,
    /// Derived from `samples` (kept in the JSON for readers with jq); `None` when empty.
    pub summary: Option<Summary>,
}

/// Order statistics of a series. Percentiles are nearest-rank on the sorted samples: the
/// sample at index `round((n - 1) * p)`, the definition the bench binaries print.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// A single number: a throughput, a memory size, an added latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    #[serde(deserialize_with = "nullable_f64")]
    pub value: f64,
    pub unit: String,
    pub target: Option<Target>,
    /// Whether `value` meets `target` (`None` without a target).
    pub met: Option<bool>,
    /// A 95% interval around `value` when the bench computed one (e.g. bootstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<(f64, f64)>,
}

/// berth divided by its reference, measured in the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub name: String,
    /// Unit of `berth` and `reference` (the ratio itself has none).
    pub unit: String,
    #[serde(deserialize_with = "nullable_f64")]
    pub berth: f64,
    #[serde(deserialize_with = "nullable_f64")]
    pub reference: f64,
    /// `berth / reference`; not finite (null in the JSON) when the reference is 0.
    #[serde(deserialize_with = "nullable_f64")]
    pub ratio: f64,
    pub target: Option<Target>,
    pub met: Option<bool>,
}

/// A bound a value should stay within.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    /// Whether `value` is within the bound (never for a value that is not finite).
    pub fn met_by(self, value: f64) -> bool {
        value.is_finite()
            && match self {
                Target::AtMost(t) => value <= t,
                Target::AtLeast(t) => value >= t,
            }
    }

    pub fn bound(self) -> f64 {
        match self {
            Target::AtMost(t) | Target::AtLeast(t) => t,
        }
    }

    /// `≤` or `≥`.
    pub fn symbol(self) -> &'static str {
        match self {
            Target::AtMost(_) => "≤",
            Target::AtLeast(_) => "≥",
        }
    }
}

/// How and when the bench ran.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The bench's command line, program name without its directory.
    pub command: Vec<String>,
    /// `git rev-parse HEAD` of the work tree, if it is one.
    pub commit: Option<String>,
    /// The work tree had uncommitted changes.
    pub dirty: bool,
    /// UTC, RFC 3339, seconds.
    pub finished_at: String,
    /// 1, 5 and 15 minute load averages when the bench finished.
    pub load_average: [f64; 3],
}

/// The machine the bench ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_mib: u64,
    pub kernel: String,
    /// `PRETTY_NAME` of /etc/os-release and /etc/debian_version.
    pub os: String,
    /// (containerd version of the test bed, Debian package version) from `.cache/containerd`.
    pub containerd: Vec<(String, String)>,
    /// (Debian package, version) of the references and the tools the benches run.
    pub packages: Vec<(String, String)>,
}

/// The Debian packages whose versions a report records: the reference plugins and the
/// runtime pieces the benches drive.
pub const PACKAGES: [&str; 3] = ["containernetworking-plugins", "etcd-server", "runc"];

impl BenchReport {
    /// An empty report for bench `name` (lowercase letters, digits and `-`: it names a file).
    pub fn new(name: &str) -> BenchReport {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "bench name {name:?} must be lowercase letters, digits and '-'"
        );
        BenchReport {
            bench: name.to_string(),
            series: Vec::new(),
            figures: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
            run: None,
            machine: None,
        }
    }

    /// Records a latency distribution; series sharing `plot` are drawn on the same axes.
    /// Panics on a sample that is not finite (a bench bug, not a measurement).
    pub fn latency(&mut self, plot: &str, label: &str, unit: &str, samples: &[f64]) {
        assert!(
            samples.iter().all(|s| s.is_finite()),
            "latency series {plot}/{label} has a sample that is not finite"
        );
        self.series.push(Series {
            plot: plot.to_string(),
            label: label.to_string(),
            unit: unit.to_string(),
            samples: samples.to_vec(),
            summary: Summary::of(samples),
        });
    }

    /// Records a single number; chain `.target(…)` to give it a bound.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str) -> &mut Figure {
        self.figures.push(Figure {
            name: name.to_string(),
            value,
            unit: unit.to_string(),
            target: None,
            met: None,
            interval: None,
        });
        self.figures.last_mut().expect("just pushed")
    }

    /// Records berth against its reference (both in `unit`); chain `.target(…)` to bound
    /// the ratio berth/reference.
    pub fn ratio(&mut self, name: &str, unit: &str, berth: f64, reference: f64) -> &mut Ratio {
        self.ratios.push(Ratio {
            name: name.to_string(),
            unit: unit.to_string(),
            berth,
            reference,
            ratio: berth / reference,
            target: None,
            met: None,
        });
        self.ratios.last_mut().expect("just pushed")
    }

    /// A free-form line shown under the bench's heading (setup, caveats).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Writes `$BERTH_BENCH_OUT/<bench>.json` when that variable is set and not empty, and
    /// returns its path; does nothing (and returns `None`) otherwise.
    pub fn finish(self) -> Result<Option<PathBuf>> {
        match out_dir(std::env::var_os(OUT_ENV)) {
            Some(dir) => self.write_to(&dir).map(Some),
            None => Ok(None),
        }
    }

    /// Records the run and the machine, then writes `<dir>/<bench>.json` (creating `dir`;
    /// the file is replaced atomically).
    pub fn write_to(mut self, dir: &Path) -> Result<PathBuf> {
        self.run = Some(Run::detect());
        self.machine = Some(Machine::detect(&crate::testbed::workspace_root()));
        self.save(dir)
    }

    /// Writes the report as it is to `<dir>/<bench>.json`.
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the report directory {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.bench));
        let tmp = dir.join(format!(".{}.json.tmp", self.bench));
        let json = serde_json::to_vec_pretty(self).context("encoding the report")?;
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// Reads a report written by [`BenchReport::save`].
    pub fn load(path: &Path) -> Result<BenchReport> {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a bench report", path.display()))
    }
}

impl Figure {
    /// Whether the value meets `target` is decided on the value itself; the page shows the
    /// interval beside it, so a reader sees when the verdict rests on noise.
    pub fn target(&mut self, target: Target) -> &mut Figure {
        self.target = Some(target);
        self.met = Some(target.met_by(self.value));
        self
    }

    /// The 95% interval `[low, high]` around the value.
    pub fn interval(&mut self, low: f64, high: f64) -> &mut Figure {
        self.interval = Some((low, high));
        self
    }
}

impl Ratio {
    pub fn target(&mut self, target: Target) -> &mut Ratio {
        self.target = Some(target);
        self.met = Some(target.met_by(self.ratio));
        self
    }
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Some(Summary {
            count: s.len(),
            min: s[0],
            mean: s.iter().sum::<f64>() / s.len() as f64,
            p50: percentile(&s, 0.50),
            p90: percentile(&s, 0.90),
            p99: percentile(&s, 0.99),
            max: s[s.len() - 1],
        })
    }
}

/// Nearest-rank percentile `p` (0..=1) of samples sorted ascending, not empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    sorted[i]
}

/// How a measured plugin binary was built, read off its place under `target/<triple>/<profile>/`
/// (`scripts/lib/plugins.sh`): musl or glibc changes a one-call process's start-up cost.
pub fn plugin_build(binary: &Path) -> String {
    let triple = binary
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_default();
    let libc = if triple.ends_with("-musl") {
        "musl"
    } else if triple.ends_with("-gnu") {
        "glibc"
    } else {
        return format!("built as found at {}", binary.display());
    };
    format!("static {libc} build ({triple})")
}

/// Durations as milliseconds, for [`BenchReport::latency`].
pub fn millis(durations: &[Duration]) -> Vec<f64> {
    durations.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// The output directory named by the value of [`OUT_ENV`]; unset or empty: none.
fn out_dir(value: Option<std::ffi::OsString>) -> Option<PathBuf> {
    value.filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// JSON has no NaN or infinity: serde_json writes them as null, read back here as NaN.
fn nullable_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Run {
    fn detect() -> Run {
        let root = crate::testbed::workspace_root();
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(args)
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let command = std::env::args()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    Path::new(&a)
                        .file_name()
                        .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
                } else {
                    a
                }
            })
            .collect();
        let mut load = [0f64; 3];
        // SAFETY: getloadavg writes at most 3 doubles into the array we pass.
        let n = unsafe { libc::getloadavg(load.as_mut_ptr(), 3) };
        if n != 3 {
            load = [f64::NAN; 3];
        }
        Run {
            command,
            commit: git(&["rev-parse", "HEAD"]),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            load_average: load,
        }
    }
}

impl Machine {
    /// This machine; `root` is the workspace (for `.cache/containerd/*/VERSION`). What
    /// cannot be read is recorded as `unknown`.
    pub fn detect(root: &Path) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let unknown = |s: String| if s.is_empty() { "unknown".into() } else { s };
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let memory_kib: u64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        let os_release = read("/etc/os-release");
        let pretty = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let debian = read("/etc/debian_version").trim().to_string();
        let os = match (pretty.is_empty(), debian.is_empty()) {
            (false, false) => format!("{pretty}, Debian {debian}"),
            (false, true) => pretty,
            (true, false) => format!("Debian {debian}"),
            (true, true) => String::new(),
        };
        let mut containerd: Vec<(String, String)> =
            std::fs::read_dir(root.join(".cache/containerd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let v = std::fs::read_to_string(e.path().join("VERSION")).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        v.trim().to_string(),
                    ))
                })
                .collect();
        containerd.sort();
        let packages = PACKAGES
            .iter()
            .map(|p| (p.to_string(), unknown(dpkg_version(p))))
            .collect();
        Machine {
            cpu_model: unknown(cpu_model),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_mib: memory_kib / 1024,
            kernel: unknown(read("/proc/sys/kernel/osrelease").trim().to_string()),
            os: unknown(os),
            containerd,
            packages,
        }
    }
}

/// The installed version of a Debian package, empty when it is not installed.
fn dpkg_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            let s = String::from_utf8_lossy(&o.stdout).into_owned();
            let (status, version) = s.split_once('\t')?;
            status
                .ends_with(" installed")
                .then(|| version.trim().to_string())
        })
        .unwrap_or_default()
}

/// A small report with every kind of record, for tests of the module and of the renderer.
pub fn sample_report() -> BenchReport {
    let mut r = BenchReport::new("sample");
    let berth: Vec<f64> = (1..=200).map(|i| 2.0 + f64::from(i) * 0.01).collect();
    let reference: Vec<f64> = (1..=200).map(|i| 5.0 + f64::from(i) * 0.05).collect();
    r.latency("ADD", "berth-cni", "ms", &berth);
    r.latency("ADD", "reference", "ms", &reference);
    r.latency("DEL", "berth-cni", "ms", &berth[..50]);
    r.figure("berth-ipam local", 2500.0, "ops/s")
        .target(Target::AtLeast(2000.0));
    r.figure("agent RSS idle", 24.0, "MiB")
        .target(Target::AtMost(20.0));
    r.figure("duplicates", 0.0, "addresses");
    r.figure("p99 added", 0.5, "ms")
        .interval(-1.25, 2.5)
        .target(Target::AtMost(2.0));
    r.ratio("ADD mean", "ms", 3.0, 10.0)
        .target(Target::AtMost(0.5));
    r.ratio("DEL p99", "ms", 4.0, 0.0);
    r.note("200 pods x 1 round, bridge mode");
    r.run = Some(Run {
        command: vec!["bench-sample".into(), "--pods".into(), "200".into()],
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        dirty: true,
        finished_at: "2026-11-23T21:00:00Z".into(),
        load_average: [1.5, 1.25, 1.0],
    });
    r.machine = Some(Machine {
        cpu_model: "Test CPU @ 2.00GHz".into(),
        cpus: 2,
        memory_mib: 24 * 1024,
        kernel: "6.1.0-test".into(),
        os: "Debian GNU/Linux 12 (bookworm), Debian 12.8".into(),
        containerd: vec![
            ("1.7".into(), "1.7.24~ds1-6".into()),
            ("2.1".into(), "2.1.9+ds1-5".into()),
        ],
        packages: vec![("containernetworking-plugins".into(), "1.1.1+ds1-3".into())],
    });
    r
}

/// CPU time (user + system, all threads) of process `pid` so far, in ms; 0 when it is gone.
pub fn process_cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // SAFETY: sysconf reads a constant of the C library.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    cpu_ms_of_stat(&stat, hz)
}

/// User + system time (ms) in a `/proc/<pid>/stat` line whose clock ticks `hz` per second.
pub fn cpu_ms_of_stat(stat: &str, hz: f64) -> f64 {
    // Fields after the command name, which is in parentheses and may hold spaces or ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 * 1000.0 / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parens() {
        let line = "4242 (berth (x) agent) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 130 0 0 20 0 6 0 100 0 0";
        assert_eq!(cpu_ms_of_stat(line, 100.0), 3800.0);
        assert_eq!(cpu_ms_of_stat("", 100.0), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_on_known_data() {
        // 1..=101 shuffled: index round(100 p) of the sorted data is the value 1 + round(100 p).
        let mut v: Vec<f64> = (1..=101).map(f64::from).collect();
        v.reverse();
        v.swap(3, 70);
        let s = Summary::of(&v).unwrap();
        assert_eq!(s.count, 101);
        assert_eq!((s.min, s.max), (1.0, 101.0));
        assert_eq!(s.mean, 51.0);
        assert_eq!((s.p50, s.p90, s.p99), (51.0, 91.0, 100.0));

        // Ten samples: p50 is index round(4.5) = 5 (ties away from zero), p99 index 9.
        let ten: Vec<f64> = (0..10).map(|i| f64::from(i) * 10.0).collect();
        let s = Summary::of(&ten).unwrap();
        assert_eq!((s.p50, s.p90, s.p99), (50.0, 80.0, 90.0));
        assert_eq!(s.mean, 45.0);

        let one = Summary::of(&[7.5]).unwrap();
        assert_eq!((one.min, one.p50, one.p99, one.max), (7.5, 7.5, 7.5, 7.5));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn plugin_build_names_the_c_library_from_the_target_dir() {
        let at = |p: &str| plugin_build(Path::new(p));
        assert_eq!(
            at("target/x86_64-unknown-linux-musl/plugin/berth-ipam"),
            "static musl build (x86_64-unknown-linux-musl)"
        );
        assert_eq!(
            at("/w/target/x86_64-unknown-linux-gnu/debug/berth-cni"),
            "static glibc build (x86_64-unknown-linux-gnu)"
        );
        assert_eq!(
            at("target/release/berth-ipam"),
            "built as found at target/release/berth-ipam"
        );
    }

    #[test]
    fn millis_converts_durations() {
        let v = millis(&[Duration::from_micros(1500), Duration::from_secs(2)]);
        assert_eq!(v, vec![1.5, 2000.0]);
    }

    #[test]
    fn targets_and_ratios() {
        let mut r = BenchReport::new("t");
        let f = r
            .figure("rate", 1999.0, "ops/s")
            .target(Target::AtLeast(2000.0));
        assert_eq!(f.met, Some(false));
        let f = r.figure("rss", 20.0, "MiB").target(Target::AtMost(20.0));
        assert_eq!(f.met, Some(true));
        assert_eq!(r.figure("plain", 1.0, "x").met, None);
        let q = r.ratio("ADD", "ms", 2.0, 8.0).target(Target::AtMost(0.5));
        assert_eq!((q.ratio, q.met), (0.25, Some(true)));
        let q = r
            .ratio("zero reference", "ms", 2.0, 0.0)
            .target(Target::AtMost(0.5));
        assert!(q.ratio.is_infinite());
        assert_eq!(q.met, Some(false));
        assert!(!Target::AtLeast(1.0).met_by(f64::NAN));
    }

    #[test]
    fn round_trip_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let report = sample_report();
        let path = report.save(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("sample.json"));
        let back = BenchReport::load(&path).unwrap();
        // The infinite ratio is written as null and read back as NaN; NaN != NaN, so
        // compare it apart and the rest structurally.
        assert!(back.ratios[1].ratio.is_nan());
        let (mut a, mut b) = (report.clone(), back.clone());
        a.ratios[1].ratio = 0.0;
        b.ratios[1].ratio = 0.0;
        assert_eq!(a, b);
        assert_eq!(
            back.series[0].summary,
            Summary::of(&report.series[0].samples)
        );
        // Nothing but the report is left in the directory (no temp file).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sample.json")]);
    }

    #[test]
    fn write_to_records_the_run_and_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = BenchReport::new("machine");
        r.latency("x", "berth", "ms", &[1.0, 2.0]);
        let back = BenchReport::load(&r.write_to(&dir.path().join("sub")).unwrap()).unwrap();
        let m = back.machine.expect("machine recorded");
        assert!(m.cpus >= 1);
        assert!(m.memory_mib > 0);
        assert_ne!(m.kernel, "unknown");
        assert_eq!(m.packages.len(), PACKAGES.len());
        let run = back.run.expect("run recorded");
        assert!(!run.command.is_empty());
        assert!(!run.command[0].contains('/'));
        assert!(chrono::DateTime::parse_from_rfc3339(&run.finished_at).is_ok());
    }

    #[test]
    fn no_output_directory_when_the_variable_is_unset_or_empty() {
        assert_eq!(out_dir(None), None);
        assert_eq!(out_dir(Some("".into())), None);
        assert_eq!(out_dir(Some("/x/y".into())), Some(PathBuf::from("/x/y")));
    }

    #[test]
    fn finish_writes_nothing_without_the_variable() {
        // The test harness does not set BERTH_BENCH_OUT; if a caller exported it, this test
        // would write into that directory, so say so instead of passing silently.
        assert!(
            std::env::var_os(OUT_ENV).is_none(),
            "unset {OUT_ENV} to run the unit tests"
        );
        let cwd_before: Vec<_> = std::fs::read_dir(".")
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mut r = BenchReport::new("unset");
        r.latency("x", "berth", "ms", &[1.0]);
        assert_eq!(r.finish().unwrap(), None);
        let cwd_after: Vec<_> = std::fs::read_dir(".")
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(cwd_before, cwd_after);
        assert!(!Path::new("unset.json").exists());
    }

    #[test]
    #[should_panic(expected = "must be lowercase")]
    fn bench_names_are_file_names() {
        BenchReport::new("../x");
    }
}
