//! bench-faketime: what a faked `clock_gettime(CLOCK_REALTIME)` costs against a real one, in
//! ns per call, for both ways berth fakes the clock (scripts/bench faketime).
//!
//! - **vDSO path**: the clock probe (`agents/faketime/testdata/clockprobe.c`, built static
//!   against glibc and against musl; `clockprobe.go` built with `CGO_ENABLED=0`) runs twice
//!   side by side: one process untouched, one whose vDSO berth patched with `+2d`.
//! - **shim path**: the same probe built dynamically, run plain and with berth's shim
//!   preloaded (`+2d` in its timestamp file, the default 1 s cache).
//!
//! Each process times `n` calls in a loop (best of 7 runs, inside the process); the faked
//! and the real process take turns for several rounds, and each side's median round is
//! reported, with the ratio faked / real (goal: at most 2). Before measuring, every faked
//! process is checked to run 2 days ahead, and every real one to run on time.
//!
//! Needs gcc, musl-gcc and go (scripts/lib/install.sh); no root.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::bench_args;
use berth_e2e::bench_report::{BenchReport, Target};
use berth_faketime::vdso;

const TWO_DAYS_NS: i64 = 2 * 86_400 * 1_000_000_000;

struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Probe {
    fn start(cmd: &mut Command) -> Result<Probe> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut p = Probe {
            child,
            stdin,
            stdout,
        };
        let hello = p.line()?;
        ensure!(
            hello == "ready",
            "the probe said {hello:?} instead of ready"
        );
        Ok(p)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("the probe {} ended", self.child.id());
        }
        Ok(l.trim_end().to_string())
    }

    fn ask(&mut self, cmd: &str) -> Result<HashMap<String, f64>> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let l = self.line()?;
        Ok(l.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// Its wall clock (through the C library or Go) minus its system call's, in ns.
    fn offset(&mut self) -> Result<i64> {
        let n = self.ask("now")?;
        let (real, sys) = (n.get("real"), n.get("sysreal"));
        match (real, sys) {
            (Some(r), Some(s)) => Ok((r - s) as i64),
            _ => bail!("the probe's now answer lacks real/sysreal: {n:?}"),
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn build(dir: &Path) -> Result<HashMap<&'static str, PathBuf>> {
    let src = berth_e2e::testbed::workspace_root().join("agents/faketime/testdata");
    let c = src.join("clockprobe.c");
    let mut out = HashMap::new();
    let mut run = |name: &'static str, cmd: &mut Command| -> Result<()> {
        let o = cmd
            .output()
            .with_context(|| format!("running {cmd:?} (scripts/lib/install.sh installs it)"))?;
        ensure!(
            o.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out.insert(name, dir.join(name));
        Ok(())
    };
    let gcc = |static_: bool, cc: &str, name: &str| {
        let mut c2 = Command::new(cc);
        c2.args(["-O2", "-pthread"]);
        if static_ {
            c2.arg("-static");
        }
        c2.arg("-o").arg(dir.join(name)).arg(&c);
        c2
    };
    run("static-glibc", &mut gcc(true, "gcc", "static-glibc"))?;
    run("static-musl", &mut gcc(true, "musl-gcc", "static-musl"))?;
    run("dynamic-glibc", &mut gcc(false, "gcc", "dynamic-glibc"))?;
    run(
        "go",
        Command::new("go")
            .args(["build", "-o"])
            .arg(dir.join("go"))
            .arg(src.join("clockprobe.go"))
            .env("CGO_ENABLED", "0")
            .env("GO111MODULE", "off")
            .env("GOCACHE", dir.join("gocache")),
    )?;
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One comparison: the real and the faked process take turns; medians of their rounds.
struct Row {
    label: String,
    key: &'static str,
    real: Vec<f64>,
    faked: Vec<f64>,
}

fn compare(
    label: &str,
    key: &'static str,
    real: &mut Probe,
    faked: &mut Probe,
    cmd: &str,
    rounds: usize,
) -> Result<Row> {
    let mut row = Row {
        label: label.to_string(),
        key,
        real: Vec::new(),
        faked: Vec::new(),
    };
    for round in 0..rounds {
        // alternate who goes first, so a slow phase of the machine hits both
        let order: [&mut Probe; 2] = if round % 2 == 0 {
            [&mut *real, &mut *faked]
        } else {
            [&mut *faked, &mut *real]
        };
        let mut got = Vec::new();
        for p in order {
            let a = p.ask(cmd)?;
            got.push(
                *a.get(key)
                    .with_context(|| format!("{cmd}: no {key} in {a:?}"))?,
            );
        }
        let (r, f) = if round % 2 == 0 {
            (got[0], got[1])
        } else {
            (got[1], got[0])
        };
        row.real.push(r);
        row.faked.push(f);
    }
    Ok(row)
}

fn main() -> Result<()> {
    let (mut calls, mut rounds) = (2_000_000usize, 5usize);
    bench_args::counts(
        std::env::args().skip(1),
        &mut [("--calls", &mut calls), ("--rounds", &mut rounds)],
    )?;
    ensure!(calls > 0 && rounds > 0, "--calls and --rounds must be > 0");
    vdso::check_kernel().context("this kernel's vDSO cannot be patched")?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-faketime")
        .tempdir()?;
    let bins = build(work.path())?;
    let cmd = format!("bench {calls}");
    let mut rows = Vec::new();

    // vDSO path: the same static program, untouched beside patched.
    for (kind, label, key) in [
        (
            "static-glibc",
            "vDSO patch, static glibc, clock_gettime(REALTIME)",
            "realtime",
        ),
        (
            "static-musl",
            "vDSO patch, static musl, clock_gettime(REALTIME)",
            "realtime",
        ),
        ("go", "vDSO patch, static Go, time.Now()", "now"),
    ] {
        let mut real = Probe::start(&mut Command::new(&bins[kind]))?;
        let mut faked = Probe::start(&mut Command::new(&bins[kind]))?;
        vdso::patch_pid(faked.child.id(), vdso::token_for(kind), TWO_DAYS_NS)
            .with_context(|| format!("patching the {kind} probe"))?;
        check(&mut real, &mut faked, kind)?;
        rows.push(compare(label, key, &mut real, &mut faked, &cmd, rounds)?);
        if key == "realtime" {
            rows.push(compare(
                &label.replace(
                    "clock_gettime(REALTIME)",
                    "clock_gettime(MONOTONIC), passed through",
                ),
                "monotonic",
                &mut real,
                &mut faked,
                &cmd,
                rounds,
            )?);
        }
    }

    // shim path: the dynamic program, plain beside preloaded.
    let shim = berth_faketime::install_shim(&work.path().join("shim"))?;
    let offset_file = work.path().join("offset");
    berth_faketime::file::write_timestamp_file(&offset_file, "+2d".parse()?)?;
    let mut real = Probe::start(&mut Command::new(&bins["dynamic-glibc"]))?;
    let mut faked = Probe::start(
        Command::new(&bins["dynamic-glibc"])
            .env("LD_PRELOAD", &shim)
            .env("FAKETIME_TIMESTAMP_FILE", &offset_file),
    )?;
    check(&mut real, &mut faked, "dynamic-glibc with the shim")?;
    rows.push(compare(
        "shim, dynamic glibc, clock_gettime(REALTIME)",
        "realtime",
        &mut real,
        &mut faked,
        &cmd,
        rounds,
    )?);
    rows.push(compare(
        "shim, dynamic glibc, clock_gettime(MONOTONIC), passed through",
        "monotonic",
        &mut real,
        &mut faked,
        &cmd,
        rounds,
    )?);

    println!(
        "faketime: ns per call, median of {rounds} rounds (each the best of 7 runs of {calls} calls)"
    );
    println!(
        "{:<66} {:>9} {:>9} {:>7}  target",
        "", "real", "faked", "ratio"
    );
    let mut report = BenchReport::new("faketime");
    report.note(format!(
        "ns per call inside the process: each number is the best of 7 runs of {calls} calls; the \
         real and the faked process take turns for {rounds} rounds and each side's median round \
         is shown. vDSO rows: the same static program twice, one untouched and one whose vDSO \
         berth patched (+2d). Shim rows: the same dynamic glibc program, plain and with berth's \
         shim preloaded (+2d, 1 s cache). time.Now() in Go reads the wall and the monotonic \
         clock (two vDSO calls). Goal: a faked wall-clock read costs at most 2x a real one."
    ));
    for mut r in rows {
        let real = median(&mut r.real);
        let faked = median(&mut r.faked);
        let ratio = faked / real;
        let goal = r.key != "monotonic";
        println!(
            "{:<66} {:>9.2} {:>9.2} {:>7.2}  {}",
            r.label,
            real,
            faked,
            ratio,
            if goal {
                if ratio <= 2.0 {
                    "≤ 2 met"
                } else {
                    "≤ 2 MISSED"
                }
            } else {
                "-"
            }
        );
        let x = report.ratio(&format!("{}, faked / real", r.label), "ns", faked, real);
        if goal {
            x.target(Target::AtMost(2.0));
        }
    }
    if let Some(path) = report.finish()? {
        println!("report: {}", path.display());
    }
    Ok(())
}

/// The faked process must run 2 days ahead and the real one on time, or the numbers would
/// compare the wrong things.
fn check(real: &mut Probe, faked: &mut Probe, what: &str) -> Result<()> {
    let r = real.offset()?;
    let f = faked.offset()?;
    ensure!(
        r.abs() < 1_000_000_000,
        "the real {what} probe is off by {r} ns"
    );
    ensure!(
        (f - TWO_DAYS_NS).abs() < 1_000_000_000,
        "the faked {what} probe is not 2 days ahead ({f} ns)"
    );
    Ok(())
}
