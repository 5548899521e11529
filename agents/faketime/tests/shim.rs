//! Host-level behaviour of the shim: real programs run with the embedded shim preloaded and a
//! temporary timestamp file. Plain tests (no root). Every child runs under a deadline and is
//! killed when it passes it, so a hang fails the test instead of hanging CI.
//!
//! Time-of-day checks compare the faked program against this (unshifted) test process's
//! clock; elapsed times are measured on the monotonic clock, in the child where possible.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_faketime::elf::{self, ElfSource, GLIBC_FLOOR, GlibcVersion};
use berth_faketime::env::{Injection, apply_env};
use berth_faketime::file::{self, TIMESTAMP_FILE_NAME, parse_content, write_timestamp_file};
use berth_faketime::{Offset, SHIM, install_shim};

const PROBE: &str = env!("BERTH_FAKETIME_PROBE");
const DAY: f64 = 86_400.0;
/// Allowed difference between a faked reading and host time + offset.
const CLOCK_SLACK: f64 = 5.0;

fn host_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A shim installed in a temp dir plus a timestamp file.
struct Bed {
    _dir: tempfile::TempDir,
    shim: PathBuf,
    offset_file: PathBuf,
    cache: u32,
    preload_before: Option<String>,
}

impl Bed {
    fn new(content: Option<&str>) -> Bed {
        let dir = tempfile::tempdir().unwrap();
        let shim = install_shim(&dir.path().join("lib")).unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let offset_file = state.join(TIMESTAMP_FILE_NAME);
        if let Some(c) = content {
            std::fs::write(&offset_file, c).unwrap();
        }
        Bed {
            _dir: dir,
            shim,
            offset_file,
            cache: 1,
            preload_before: None,
        }
    }

    fn set(&self, offset: Offset) {
        write_timestamp_file(&self.offset_file, offset).unwrap();
    }

    /// `program args` with the environment berth's agent would give a container.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut base = vec!["PATH=/usr/bin:/bin".to_string(), "LC_ALL=C".to_string()];
        if let Some(p) = &self.preload_before {
            base.push(format!("LD_PRELOAD={p}"));
        }
        let injection = Injection {
            shim_path: self.shim.to_str().unwrap().to_string(),
            timestamp_file: self.offset_file.to_str().unwrap().to_string(),
            cache_duration_secs: self.cache,
        };
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear();
        for kv in apply_env(&base, &injection) {
            let (k, v) = kv.split_once('=').unwrap();
            cmd.env(k, v);
        }
        cmd
    }
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    /// `key=value` lines of the probe.
    fn values(&self) -> HashMap<String, i64> {
        self.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad probe line {l:?}", l = (k, v)));
                (k.to_string(), v)
            })
            .collect()
    }
}

/// Kills the child when the test panics before waiting for it.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn drain<R: Read + Send + 'static>(r: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(r).read_to_string(&mut s);
        s
    })
}

/// Runs `cmd` to completion; panics (after killing it) when it outlives `deadline`.
fn run(mut cmd: Command, deadline: Duration) -> Finished {
    let what = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = Reaper(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}")),
    );
    let out = drain(child.0.stdout.take().unwrap());
    let err = drain(child.0.stderr.take().unwrap());
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            let elapsed = start.elapsed();
            return Finished {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
                elapsed,
            };
        }
        if start.elapsed() > deadline {
            drop(child);
            panic!(
                "{what} hung: killed after {deadline:?}; stdout: {:?} stderr: {:?}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn run_ok(cmd: Command, deadline: Duration) -> Finished {
    let f = run(cmd, deadline);
    assert!(
        f.status.success(),
        "exit {:?}; stderr: {}",
        f.status,
        f.stderr
    );
    f
}

fn date_offset(bed: &Bed) -> f64 {
    let before = host_now();
    let f = run_ok(bed.command("date", &["+%s.%N"]), Duration::from_secs(10));
    let faked: f64 = f.stdout.trim().parse().unwrap();
    faked - (before + host_now()) / 2.0
}

fn assert_near(what: &str, value: f64, expected: f64, slack: f64) {
    assert!(
        (value - expected).abs() <= slack,
        "{what}: {value} is not within {slack} of {expected}"
    );
}

#[test]
fn shim_needs_nothing_newer_than_glibc_2_17() {
    let needs = elf::version_needs(SHIM).unwrap();
    assert!(!needs.is_empty(), "the shim has no version needs at all?");
    for n in &needs {
        assert_eq!(n.file, "libc.so.6", "unexpected dependency {n:?}");
    }
    let max = elf::max_glibc(needs.iter().map(|n| n.version.as_str())).unwrap();
    assert!(max <= GLIBC_FLOOR, "shim needs GLIBC_{max}: {needs:?}");
    // an independent reader agrees: objdump from binutils (installed with gcc)
    let dir = tempfile::tempdir().unwrap();
    let so = install_shim(dir.path()).unwrap();
    let f = run_ok(
        {
            let mut c = Command::new("objdump");
            c.arg("-T").arg(&so);
            c
        },
        Duration::from_secs(30),
    );
    let mut seen = Vec::new();
    for word in f
        .stdout
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
    {
        if let Some(v) = GlibcVersion::from_symbol_version(word) {
            seen.push(v);
        }
    }
    assert!(
        !seen.is_empty(),
        "objdump shows no GLIBC versions: {}",
        f.stdout
    );
    assert_eq!(seen.iter().max(), Some(&max));
    // and the library exports the wrappers
    for sym in [
        "clock_gettime",
        "gettimeofday",
        "pthread_cond_timedwait",
        "timerfd_settime",
    ] {
        assert!(
            f.stdout
                .lines()
                .any(|l| l.contains(".text") && l.ends_with(sym)),
            "{sym} not exported"
        );
    }
    // the ELF inspector sees the shim as an x86_64 object too
    let hdr = SHIM.read_at(0, 20).unwrap();
    assert_eq!(&hdr[..4], b"\x7fELF");
}

#[test]
fn date_is_two_days_ahead() {
    let bed = Bed::new(Some("+2d\n"));
    assert_near("date", date_offset(&bed), 2.0 * DAY, CLOCK_SLACK);
}

#[test]
fn every_wall_clock_is_shifted_and_no_other_clock_is() {
    let bed = Bed::new(Some("+2d"));
    let before = host_now();
    let f = run_ok(bed.command(PROBE, &["now"]), Duration::from_secs(10));
    let now = (before + host_now()) / 2.0;
    let v = f.values();
    let secs = |k: &str| *v.get(k).unwrap_or_else(|| panic!("no {k} in {}", f.stdout)) as f64 / 1e9;
    for k in [
        "realtime",
        "realtime_coarse",
        "gettimeofday",
        "time",
        "timespec_get",
        "ftime",
    ] {
        assert_near(k, secs(k), now + 2.0 * DAY, CLOCK_SLACK);
    }
    assert_near("raw realtime", secs("raw_realtime"), now, CLOCK_SLACK);
    assert_near("tai", secs("tai") - secs("raw_tai"), 2.0 * DAY, 1.0);
    // monotonic and boottime are what the kernel says (read a moment apart)
    for k in ["monotonic", "boottime"] {
        let d = secs(&format!("raw_{k}")) - secs(k);
        assert!(
            (0.0..0.5).contains(&d),
            "{k} differs from the kernel's by {d}s"
        );
    }
}

#[test]
fn negative_offsets_and_an_existing_preload() {
    let mut bed = Bed::new(Some("-3h"));
    bed.preload_before = Some("/lib/x86_64-linux-gnu/libm.so.6".into());
    let f = run_ok(
        bed.command("sh", &["-c", "echo $LD_PRELOAD"]),
        Duration::from_secs(10),
    );
    assert_eq!(
        f.stdout.trim(),
        format!("/lib/x86_64-linux-gnu/libm.so.6:{}", bed.shim.display())
    );
    assert_near("date", date_offset(&bed), -3.0 * 3600.0, CLOCK_SLACK);
}

#[test]
fn relative_sleeps_take_real_time() {
    let bed = Bed::new(Some("+2d"));
    let f = run_ok(bed.command("sleep", &["1"]), Duration::from_secs(15));
    assert!(
        (0.9..4.0).contains(&f.elapsed.as_secs_f64()),
        "sleep 1 took {:?}",
        f.elapsed
    );
    // python's time.sleep (clock_nanosleep on CLOCK_MONOTONIC), measured inside python
    let f = run_ok(
        bed.command(
            "python3",
            &[
                "-c",
                "import time; t=time.monotonic(); time.sleep(1); print(time.monotonic()-t)",
            ],
        ),
        Duration::from_secs(20),
    );
    let took: f64 = f.stdout.trim().parse().unwrap();
    assert!((0.95..2.5).contains(&took), "time.sleep(1) took {took}s");
}

#[test]
fn python_timer_and_event_wait() {
    let bed = Bed::new(Some("+2d"));
    let f = run_ok(
        bed.command(
            "python3",
            &[
                "-c",
                "import threading, time\n\
                 e = threading.Event(); t = time.monotonic()\n\
                 threading.Timer(0.5, e.set).start()\n\
                 print(e.wait(3), time.monotonic() - t)",
            ],
        ),
        Duration::from_secs(20),
    );
    let (ok, took) = f.stdout.trim().split_once(' ').unwrap();
    assert_eq!(ok, "True", "Event.wait(3) timed out");
    let took: f64 = took.parse().unwrap();
    assert!((0.45..2.0).contains(&took), "the timer fired after {took}s");
}

#[test]
fn select_poll_and_timeout_end_on_time() {
    let bed = Bed::new(Some("+2d"));
    let f = run_ok(
        bed.command(
            "python3",
            &[
                "-c",
                "import select, time\n\
                 t = time.monotonic(); select.select([], [], [], 1); a = time.monotonic() - t\n\
                 p = select.poll(); t = time.monotonic(); p.poll(1000); b = time.monotonic() - t\n\
                 print(a, b)",
            ],
        ),
        Duration::from_secs(20),
    );
    for took in f.stdout.split_whitespace() {
        let took: f64 = took.parse().unwrap();
        assert!(
            (0.95..2.5).contains(&took),
            "select/poll of 1 s took {took}s"
        );
    }
    let f = run(
        bed.command("timeout", &["2", "sleep", "10"]),
        Duration::from_secs(15),
    );
    assert_eq!(
        f.status.code(),
        Some(124),
        "timeout did not kill sleep: {:?}",
        f.status
    );
    assert!(
        (1.9..5.0).contains(&f.elapsed.as_secs_f64()),
        "timeout 2 took {:?}",
        f.elapsed
    );
}

/// Every absolute-deadline wait of the probe, "faked now + 0.5 s": returns after ~0.5 s with
/// the function's timeout result. Without translation a +2d offset would hang (killed after
/// 20 s) and a -3h offset would return at once.
fn absolute_waits(content: &str) {
    const WAITS: [(&str, i64); 13] = [
        ("cond", 110),
        ("cond-mono", 110),
        ("cond-clock", 110),
        ("sem", 110),
        ("sem-clock", 110),
        ("mutex", 110),
        ("rwlock", 110),
        ("nanosleep-abs", 0),
        ("timerfd-abs", 0),
        ("timerfd-dup", 0),
        ("timer-abs", 0),
        ("mq", 110),
        ("join", 110),
    ];
    let bed = Bed::new(Some(content));
    let handles: Vec<_> = WAITS
        .iter()
        .map(|&(kind, rc)| {
            let cmd = bed.command(PROBE, &[kind, "0.5"]);
            (
                kind,
                rc,
                thread::spawn(move || run(cmd, Duration::from_secs(20))),
            )
        })
        .collect();
    for (kind, rc, h) in handles {
        let f = h
            .join()
            .unwrap_or_else(|_| panic!("{kind} with {content:?} failed"));
        let v = f.values();
        assert_eq!(v["rc"], rc, "{kind} with {content:?}: {}", f.stdout);
        let ms = v["elapsed_ms"];
        assert!(
            (450..2500).contains(&ms),
            "{kind} with {content:?} waited {ms} ms instead of 500"
        );
    }
}

#[test]
fn absolute_deadlines_are_translated_forward() {
    absolute_waits("+2d");
}

#[test]
fn absolute_deadlines_are_translated_backward() {
    absolute_waits("-3h");
}

#[test]
fn past_and_invalid_deadlines_keep_their_meaning() {
    let bed = Bed::new(Some("+2d"));
    // 1970-01-01T00:00:01 is in the past whatever the offset: ETIMEDOUT at once
    let f = run_ok(
        bed.command(PROBE, &["sem-at", "1", "0"]),
        Duration::from_secs(10),
    );
    let v = f.values();
    assert_eq!(v["rc"], 110);
    assert!(v["elapsed_ms"] < 200, "{}", f.stdout);
    // an invalid tv_nsec still gets EINVAL from glibc
    let f = run_ok(
        bed.command(PROBE, &["sem-at", "1", "1000000000"]),
        Duration::from_secs(10),
    );
    assert_eq!(f.values()["rc"], 22);
}

#[test]
fn zero_missing_and_malformed_files_mean_real_time() {
    for content in [
        Some("0"),
        Some("+0"),
        Some("offset_ns=0"),
        None,
        Some("garbage"),
        Some(""),
        Some("2020-01-01 00:00:00"),
    ] {
        let bed = Bed::new(content);
        assert_near(&format!("{content:?}"), date_offset(&bed), 0.0, CLOCK_SLACK);
    }
    // and no FAKETIME_TIMESTAMP_FILE at all
    let bed = Bed::new(Some("+2d"));
    let mut cmd = bed.command("date", &["+%s"]);
    cmd.env_remove("FAKETIME_TIMESTAMP_FILE");
    let f = run_ok(cmd, Duration::from_secs(10));
    assert_near(
        "unset",
        f.stdout.trim().parse().unwrap(),
        host_now(),
        CLOCK_SLACK,
    );
    assert!(f.stderr.is_empty(), "the shim printed {:?}", f.stderr);
}

/// The C parser in the shim and `file::parse_content` agree, byte for byte of grammar.
#[test]
fn shim_and_rust_parse_files_alike() {
    let cases = [
        "+2d",
        "-3h",
        "+90m",
        "+30s",
        "+1.5d",
        "0",
        "+0",
        "-0.25s",
        "0.75",
        "+1.25",
        "12",
        "offset_ns=250000000",
        "offset_ns=-1750000000",
        "# comment\n\n  +1h  \r\n+5d",
        "+1y",
        "2d",
        "+2dd",
        "+2 d",
        "+2w",
        "1.",
        ".5",
        "offset_ns=1e9",
        "offset_ns= 1",
        "++1s",
        "+300y",
        "+0.0000000001s",
        "x\n+1h",
        "\t-45m\t",
    ];
    let handles: Vec<_> = cases
        .iter()
        .map(|&content| {
            let bed = Bed::new(Some(content));
            let cmd = bed.command(PROBE, &["now"]);
            (
                content,
                bed,
                thread::spawn(move || run_ok(cmd, Duration::from_secs(20))),
            )
        })
        .collect();
    for (content, _bed, h) in handles {
        let expected = parse_content(content.as_bytes()).map_or(0, |o| o.as_nanos());
        let v = h.join().unwrap().values();
        let seen = v["realtime"] - v["raw_realtime"];
        // the two reads are microseconds apart (the raw one second)
        assert!(
            (seen - expected).abs() < 50_000_000,
            "{content:?}: the shim applied {seen} ns, Rust parses {expected} ns"
        );
    }
}

/// A long-running process follows the file: +2d, then +10d without a restart.
#[test]
fn offset_changes_apply_within_two_seconds() {
    let bed = Bed::new(None);
    bed.set("+2d".parse().unwrap());
    let mut cmd = bed.command(
        "python3",
        &[
            "-u",
            "-c",
            "import time\nfor _ in range(300):\n    print(time.time(), flush=True)\n    time.sleep(0.1)",
        ],
    );
    let mut child = Reaper(
        cmd.stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel::<f64>();
    let stdout = child.0.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().parse().unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |limit: Duration| {
        rx.recv_timeout(limit)
            .expect("the python loop stopped printing (hung or died)")
    };
    let first = next(Duration::from_secs(10));
    assert_near("first", first - host_now(), 2.0 * DAY, CLOCK_SLACK);

    bed.set("+10d".parse().unwrap());
    let changed = Instant::now();
    loop {
        let t = next(Duration::from_secs(5));
        let offset = t - host_now();
        if (offset - 10.0 * DAY).abs() <= CLOCK_SLACK {
            break;
        }
        assert_near("before the change took", offset, 2.0 * DAY, CLOCK_SLACK);
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "still +2d {:?} after the file changed",
            changed.elapsed()
        );
    }
    assert!(changed.elapsed() < Duration::from_millis(2500));
}

/// FAKETIME_CACHE_DURATION: a long cache holds the old offset, 0 re-checks on every call.
#[test]
fn cache_duration_bounds_rechecks() {
    let script = "import sys, time\nprint(time.time(), flush=True)\nsys.stdin.readline()\n\
                  print(time.time(), flush=True)";
    for (cache, expect_change) in [(3600, false), (0, true)] {
        let mut bed = Bed::new(Some("+2d"));
        bed.cache = cache;
        let mut cmd = bed.command("python3", &["-u", "-c", script]);
        let mut child = Reaper(
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            while let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l.trim().parse::<f64>().unwrap());
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no first line");
        assert_near("first", first - host_now(), 2.0 * DAY, CLOCK_SLACK);
        bed.set(Offset::from_secs(10 * 86_400).unwrap());
        thread::sleep(Duration::from_millis(1200));
        use std::io::Write;
        child.0.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
        let second = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no second line");
        let expected = if expect_change { 10.0 } else { 2.0 };
        assert_near(
            &format!("cache {cache}"),
            second - host_now(),
            expected * DAY,
            CLOCK_SLACK,
        );
    }
}

#[test]
fn forked_and_executed_children_keep_the_offset() {
    let bed = Bed::new(Some("+2d"));
    let f = run_ok(
        bed.command(
            "python3",
            &[
                "-c",
                "import os, subprocess, sys, time\n\
                 pid = os.fork()\n\
                 if pid == 0:\n    print('child', time.time(), flush=True); os._exit(0)\n\
                 os.waitpid(pid, 0)\n\
                 print('exec', subprocess.check_output(['date', '+%s']).decode().strip(), flush=True)",
            ],
        ),
        Duration::from_secs(20),
    );
    let mut seen = 0;
    for line in f.stdout.lines() {
        let (_, t) = line.split_once(' ').unwrap();
        assert_near(
            line,
            t.parse::<f64>().unwrap() - host_now(),
            2.0 * DAY,
            CLOCK_SLACK,
        );
        seen += 1;
    }
    assert_eq!(seen, 2, "{}", f.stdout);
}

#[test]
fn timestamp_file_written_by_rust_is_read_by_the_shim() {
    let bed = Bed::new(None);
    let offset = Offset::parse_annotation("@2030-01-01 00:00:00", SystemTime::now()).unwrap();
    bed.set(offset);
    assert_eq!(file::read_timestamp_file(&bed.offset_file).unwrap(), offset);
    let f = run_ok(
        bed.command("date", &["-u", "+%Y-%m-%d %H:%M"]),
        Duration::from_secs(10),
    );
    // the clock started at 2030-01-01 00:00:00 a moment ago and runs
    assert_eq!(f.stdout.trim(), "2030-01-01 00:00");
    let _ = Path::new(&bed.offset_file);
}

/// Eight threads read the clock for 3 s while the file flips between +2d and +3d, with
/// `FAKETIME_CACHE_DURATION=0` so that every read races for the refresh: every reading carries
/// one of the two offsets (never 0, never a mix) and both are seen.
#[test]
fn concurrent_readers_during_changes_see_whole_offsets() {
    let mut bed = Bed::new(Some("+2d"));
    bed.cache = 0;
    let two = 2 * 86_400 * 1_000_000_000i64;
    let three = 3 * 86_400 * 1_000_000_000i64;
    let cmd = bed.command(
        PROBE,
        &["stress", "8", "3", &two.to_string(), &three.to_string()],
    );
    let probe = thread::spawn(move || run_ok(cmd, Duration::from_secs(30)));
    let start = Instant::now();
    let mut flips = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        bed.set(Offset::from_nanos(if flips % 2 == 0 { three } else { two }));
        flips += 1;
        thread::sleep(Duration::from_millis(20));
    }
    let f = probe.join().unwrap();
    let v = f.values();
    assert_eq!(v["other"], 0, "readings with neither offset: {}", f.stdout);
    assert!(v["offset0"] > 0 && v["offset1"] > 0, "{}", f.stdout);
    assert!(flips > 10, "only {flips} rewrites");
}

/// Async-signal safety: a SIGALRM handler reads the clock every 200 µs while the main loop
/// reads it too, with `FAKETIME_CACHE_DURATION=0` so that signals land inside refreshes that
/// hold the shim's lock. The handler must neither deadlock (the run is bounded) nor see real
/// time.
#[test]
fn clock_reads_in_signal_handlers_during_refreshes() {
    let mut bed = Bed::new(Some("+2d"));
    bed.cache = 0;
    let two = (2 * 86_400 * 1_000_000_000i64).to_string();
    let f = run_ok(
        bed.command(PROBE, &["signals", "2", &two]),
        Duration::from_secs(30),
    );
    let v = f.values();
    assert_eq!(v["handler_bad"], 0, "{}", f.stdout);
    assert!(v["handler_good"] > 100, "too few signals: {}", f.stdout);
    assert!(v["main_reads"] > 100, "{}", f.stdout);
}

/// `readelf -d`: the only library the shim needs is libc.so.6, so it loads wherever a glibc
/// program runs, with or without libdl.so.2, libpthread.so.0 or librt.so.1 in the image.
#[test]
fn shim_needs_libc_so_6_and_nothing_else() {
    assert_eq!(elf::needed_libraries(SHIM).unwrap(), ["libc.so.6"]);
    // readelf (binutils, installed with gcc) reads the same dynamic section
    let dir = tempfile::tempdir().unwrap();
    let so = install_shim(dir.path()).unwrap();
    let mut c = Command::new("readelf");
    c.arg("-dW").arg(&so);
    let f = run_ok(c, Duration::from_secs(30));
    let needed: Vec<&str> = f
        .stdout
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    assert_eq!(needed, ["libc.so.6"], "{}", f.stdout);
    // and the symbols it imports are glibc's oldest: no dlsym, nothing from libdl
    let imports = run_ok(
        {
            let mut c = Command::new("objdump");
            c.arg("-T").arg(&so);
            c
        },
        Duration::from_secs(30),
    );
    let undefined: Vec<&str> = imports
        .stdout
        .lines()
        .filter(|l| l.contains("*UND*") && l.contains("GLIBC_"))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    let mut sorted = undefined.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "__cxa_finalize",
            "__errno_location",
            "dl_iterate_phdr",
            "getenv"
        ],
        "{}",
        imports.stdout
    );
}

/// A root file system that holds the loader, `libc.so.6` and the program's own libraries
/// (what `ldd` lists, as minimal images are built), for the host's glibc.
struct MinimalRoot {
    dir: tempfile::TempDir,
}

impl MinimalRoot {
    fn new(programs: &[&str]) -> MinimalRoot {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for d in [
            "tmp",
            "state",
            "lib64",
            "lib/x86_64-linux-gnu",
            "usr/bin",
            "usr/lib",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for p in programs {
            let real = std::fs::canonicalize(p).unwrap();
            std::fs::copy(&real, root.join(p.trim_start_matches('/'))).unwrap();
            let ldd = run_ok(
                {
                    let mut c = Command::new("ldd");
                    c.arg(&real);
                    c
                },
                Duration::from_secs(10),
            );
            for lib in ldd.stdout.split_whitespace().filter(|w| w.starts_with('/')) {
                let target = root.join(lib.trim_start_matches('/'));
                std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                if !target.exists() {
                    std::fs::copy(lib, &target).unwrap();
                }
            }
        }
        MinimalRoot { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every library file in the root, by name.
    fn libraries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in ["lib64", "lib/x86_64-linux-gnu"] {
            for e in std::fs::read_dir(self.path().join(d)).unwrap() {
                out.push(e.unwrap().file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        out
    }

    /// `program args` chrooted into the root with the shim preloaded and `offset` in its
    /// timestamp file. The chroot happens in the child, so no host program (chroot(8)) runs
    /// with the root's preload path.
    fn command(&self, offset: &str, program: &str, args: &[&str], preload: &str) -> Command {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::process::CommandExt;
        let root = self.path();
        std::fs::write(root.join("state/offset"), offset).unwrap();
        let root = std::ffi::CString::new(root.as_os_str().as_bytes()).unwrap();
        let mut c = Command::new(program);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/bin")
            .env("LD_PRELOAD", preload)
            .env("FAKETIME_TIMESTAMP_FILE", "/state/offset");
        // SAFETY: chroot and chdir are async-signal-safe; the closure touches only its own
        // captured, already allocated string.
        unsafe {
            c.pre_exec(move || {
                if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// In a root made only of what `ldd` lists for `date` and `python3` (no libdl.so.2, no
/// libpthread.so.0, no librt.so.1), the shim loads, shifts `date` and Python's clock, and
/// Python's sleeps and timer waits keep real time. A library that needs libdl.so.2 cannot be
/// preloaded there (the control: the root really lacks it).
#[test]
#[ignore = "needs root (chroot): run by scripts/test"]
fn minimal_root_without_libdl_loads_the_shim() {
    assert!(is_root(), "this test needs root (chroot)");
    let root = MinimalRoot::new(&["/usr/bin/date", "/usr/bin/python3"]);
    let libs = root.libraries();
    for absent in ["libdl.so.2", "libpthread.so.0", "librt.so.1"] {
        assert!(!libs.iter().any(|l| l == absent), "{absent} in {libs:?}");
    }
    assert!(libs.iter().any(|l| l == "libc.so.6"), "{libs:?}");
    // python's standard library, for `import time, threading`
    let stdlib = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let stdlib = Path::new("/usr/lib").join(stdlib.file_name().unwrap());
    run_ok(
        {
            let mut c = Command::new("cp");
            c.arg("-a").arg(&stdlib).arg(root.path().join("usr/lib"));
            c
        },
        Duration::from_secs(60),
    );
    let shim = install_shim(&root.path().join("shim")).unwrap();
    let shim_in_root = Path::new("/").join(shim.strip_prefix(root.path()).unwrap());
    let shim_in_root = shim_in_root.to_str().unwrap();

    let before = host_now();
    let f = run_ok(
        root.command("+2d", "/usr/bin/date", &["+%s"], shim_in_root),
        Duration::from_secs(10),
    );
    let faked: f64 = f.stdout.trim().parse().unwrap();
    assert_near(
        "date in the minimal root",
        faked - before,
        2.0 * DAY,
        CLOCK_SLACK,
    );
    assert!(f.stderr.is_empty(), "{}", f.stderr);

    let f = run_ok(
        root.command(
            "+2d",
            "/usr/bin/python3",
            &[
                "-c",
                "import threading, time\n\
                 w = time.time(); t = time.monotonic(); time.sleep(1); s = time.monotonic() - t\n\
                 e = threading.Event(); t = time.monotonic()\n\
                 threading.Timer(0.5, e.set).start(); ok = e.wait(3)\n\
                 print(w, s, ok, time.monotonic() - t)",
            ],
            shim_in_root,
        ),
        Duration::from_secs(20),
    );
    let v: Vec<&str> = f.stdout.split_whitespace().collect();
    assert_eq!(v.len(), 4, "{}", f.stdout);
    assert_near(
        "python time.time()",
        v[0].parse::<f64>().unwrap() - host_now(),
        2.0 * DAY,
        CLOCK_SLACK,
    );
    let slept: f64 = v[1].parse().unwrap();
    assert!((0.95..2.5).contains(&slept), "time.sleep(1) took {slept}s");
    assert_eq!(v[2], "True", "Event.wait(3) timed out");
    let waited: f64 = v[3].parse().unwrap();
    assert!(
        (0.45..2.0).contains(&waited),
        "the timer fired after {waited}s"
    );

    // the control: a preload that needs libdl.so.2 stops the program in this root
    let needs_libdl = root.path().join("shim/needs-libdl.so");
    let src = root.path().join("tmp/x.c");
    std::fs::write(&src, "int berth_test_marker(void) { return 1; }\n").unwrap();
    run_ok(
        {
            let mut c = Command::new("cc");
            c.args(["-shared", "-fPIC", "-o"])
                .arg(&needs_libdl)
                .arg(&src)
                .args(["-Wl,--no-as-needed", "-l:libdl.so.2"]);
            c
        },
        Duration::from_secs(30),
    );
    let f = run(
        root.command("+2d", "/usr/bin/date", &[], "/shim/needs-libdl.so"),
        Duration::from_secs(10),
    );
    assert_eq!(f.status.code(), Some(127), "{}", f.stderr);
    assert!(f.stderr.contains("libdl.so.2"), "{}", f.stderr);
}

/// A dynamically linked musl program that gets the shim (the agent injects it before an entry
/// point is judged when containerd cannot answer): musl's loader takes `libc.so.6` for itself,
/// finds the three functions the shim imports, and the program runs with its clock shifted. A
/// static musl program ignores the preload.
#[test]
fn musl_programs_are_never_broken_by_the_shim() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/images/musl-clock.c");
    for (name, extra) in [("dyn", None), ("static", Some("-static"))] {
        let out = dir.path().join(name);
        let mut c = Command::new("musl-gcc");
        c.arg("-O2").arg("-o").arg(&out).arg(&src).args(extra);
        let f = run(c, Duration::from_secs(60));
        assert!(
            f.status.success(),
            "musl-gcc failed (scripts/lib/install.sh installs musl-tools): {}",
            f.stderr
        );
        let bed = Bed::new(Some("+2d"));
        let before = host_now();
        let f = run_ok(
            bed.command(out.to_str().unwrap(), &["now"]),
            Duration::from_secs(10),
        );
        assert!(f.stderr.is_empty(), "{name}: {}", f.stderr);
        let v: Vec<f64> = f
            .stdout
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(v.len(), 2, "{name}: {}", f.stdout);
        let want = if extra.is_some() { 0.0 } else { 2.0 * DAY };
        for t in v {
            assert_near(&format!("musl {name}"), t - before, want, CLOCK_SLACK);
        }
    }
}
