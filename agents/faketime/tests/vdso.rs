//! The vDSO patch on real processes: static glibc, static musl and static Go builds of the
//! clock probe (`testdata/clockprobe.{c,go}`) and the static busybox, started as children of
//! the test, patched, and asked for their clocks through stdin.
//!
//! Their wall clock is compared with their own clock_gettime system call (which the patch
//! cannot reach), their monotonic clock likewise; elapsed times are measured by the probe on
//! the monotonic clock through the system call and by the test from outside. Every answer is
//! awaited under a deadline, so a hung or crashed probe fails the test.
//!
//! The tests need gcc (static glibc), musl-gcc (Debian's musl-tools), go (golang-go) and
//! busybox-static, which scripts/lib/install.sh installs: they are `#[ignore]`d for a plain
//! `cargo test` and run by scripts/test (`--include-ignored`). A missing tool fails the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use berth_faketime::vdso::{
    self, Carried, Memory, PatchError, Process, ProcessError, Ptraced, SetOutcome, Thread,
    token_for,
};

const DAY: i64 = 86_400_000_000_000;
const SEC: i64 = 1_000_000_000;
const T: Duration = Duration::from_secs(10);
const NEEDS: &str = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test";

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/lib/install.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The probe builds, made once per test binary.
fn program(kind: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap();
    if let Some(p) = built.get(kind) {
        return p.clone();
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vdso-probes");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("clockprobe-{kind}"));
    let c = testdata().join("clockprobe.c");
    match kind {
        "glibc" => run(Command::new("gcc")
            .args(["-O2", "-static", "-pthread", "-o"])
            .arg(&out)
            .arg(&c)),
        "musl" => run(Command::new("musl-gcc")
            .args(["-O2", "-static", "-pthread", "-o"])
            .arg(&out)
            .arg(&c)),
        "go" => run(Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(testdata().join("clockprobe.go"))
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", dir.join("gocache"))
            .env("GOFLAGS", "-mod=mod")
            .env("GO111MODULE", "off")),
        other => panic!("no probe {other}"),
    }
    built.insert(kind.to_string(), out.clone());
    out
}

/// A child answering one line per command line.
struct Probe {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Probe {
    fn start(cmd: &mut Command) -> Probe {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut p = Probe {
            child,
            stdin,
            lines,
        };
        assert_eq!(p.next(), "ready");
        p
    }

    fn built(kind: &str) -> Probe {
        Probe::start(&mut Command::new(program(kind)))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next(&mut self) -> String {
        self.lines
            .recv_timeout(T)
            .unwrap_or_else(|_| panic!("no answer within {T:?} (did the probe crash or hang?)"))
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        self.next()
    }

    fn now(&mut self) -> HashMap<String, i64> {
        fields(&self.ask("now"))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fields(line: &str) -> HashMap<String, i64> {
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn assert_about(got: i64, want: i64, slack: i64, what: &str) {
    assert!(
        (got - want).abs() <= slack,
        "{what}: {got} ns, want {want} ns ± {slack} ns (off by {} s)",
        (got - want) as f64 / 1e9
    );
}

/// The C probe's clocks through the vDSO, against its own system calls.
fn assert_c_offset(n: &HashMap<String, i64>, offset: i64) {
    assert_about(n["real"] - n["sysreal"], offset, SEC / 2, "CLOCK_REALTIME");
    assert_about(n["tai"] - n["systai"], offset, SEC / 2, "CLOCK_TAI");
    // the coarse clock lags by up to a tick
    assert_about(
        n["coarse"] - n["sysreal"],
        offset,
        SEC / 2,
        "CLOCK_REALTIME_COARSE",
    );
    assert_about(
        n["gtod"] * 1000 - n["sysreal"],
        offset,
        SEC / 2,
        "gettimeofday",
    );
    assert_about(n["time"] * SEC - n["sysreal"], offset, 2 * SEC, "time");
    assert_about(
        n["mono"] - n["sysmono"],
        0,
        SEC / 20,
        "CLOCK_MONOTONIC untouched",
    );
}

/// Asks the probe to sleep `ms` and checks how long it took, inside and outside.
fn assert_sleeps(p: &mut Probe, cmd: &str) {
    let start = Instant::now();
    let line = p.ask(cmd);
    let outside = start.elapsed();
    let inside: i64 = line
        .strip_prefix("slept ")
        .unwrap_or_else(|| panic!("{cmd}: {line}"))
        .parse()
        .unwrap();
    assert!(
        (950_000_000..3_000_000_000).contains(&inside),
        "{cmd} lasted {inside} ns inside"
    );
    assert!(
        outside >= Duration::from_millis(950) && outside < Duration::from_secs(3),
        "{cmd} lasted {outside:?} seen from outside"
    );
}

fn patch(pid: u32, token: u64, offset: i64) -> vdso::Patched {
    vdso::patch_pid(pid, token, offset).unwrap_or_else(|e| panic!("patch of {pid}: {e}"))
}

/// A patched C probe: shifted, sleeps real, fork inherits, live changes per process, clear.
fn c_probe_end_to_end(kind: &str) {
    let mut p = Probe::built(kind);
    assert_c_offset(&p.now(), 0);
    assert_eq!(vdso::carried_pid(p.pid()).unwrap(), Carried::Nothing);
    let token = token_for(kind);
    let patched = patch(p.pid(), token, 2 * DAY);
    assert!(!patched.already);
    assert_c_offset(&p.now(), 2 * DAY);
    assert_eq!(
        vdso::carried_pid(p.pid()).unwrap(),
        Carried::Patch {
            token,
            offset_ns: Some(2 * DAY),
            complete: true
        }
    );
    assert_sleeps(&mut p, "sleep 1000");

    // A forked child carries the patch; its copy changes on its own.
    let line = p.ask("fork");
    let child: u32 = line
        .strip_prefix("child ")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    assert_c_offset(&p.now(), 2 * DAY);
    assert_eq!(
        vdso::set_offset_pid(p.pid(), token, 10 * DAY).unwrap(),
        SetOutcome::Changed
    );
    assert_c_offset(&p.now(), 2 * DAY);
    assert_eq!(
        vdso::set_offset_pid(child, token, 10 * DAY).unwrap(),
        SetOutcome::Changed
    );
    assert_c_offset(&p.now(), 10 * DAY);
    assert_eq!(
        vdso::set_offset_pid(child, token, 10 * DAY).unwrap(),
        SetOutcome::Unchanged
    );
    assert_eq!(
        vdso::set_offset_pid(child, token_for("another container"), 0).unwrap(),
        SetOutcome::NotPatched,
        "another container's token changes nothing"
    );
    assert_c_offset(&p.now(), 10 * DAY);
    assert_sleeps(&mut p, "sleep 1000");
    assert_eq!(p.ask("exit"), "parent");
    // The parent got +10d above; clear brings the real clock back.
    assert_c_offset(&p.now(), 10 * DAY);
    vdso::set_offset_pid(p.pid(), token, -3 * 3600 * SEC).unwrap();
    assert_c_offset(&p.now(), -3 * 3600 * SEC);
    vdso::set_offset_pid(p.pid(), token, 0).unwrap();
    assert_c_offset(&p.now(), 0);
    // Patching again is idempotent: same patch, new offset.
    let again = patch(p.pid(), token, DAY);
    assert!(again.already);
    assert_eq!(again.block, patched.block);
    assert_c_offset(&p.now(), DAY);
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn static_glibc_program_is_shifted() {
    c_probe_end_to_end("glibc");
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn static_musl_program_is_shifted() {
    c_probe_end_to_end("musl");
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn static_go_program_is_shifted_and_sleeps_real_time() {
    let mut p = Probe::built("go");
    let token = token_for("go");
    patch(p.pid(), token, 2 * DAY);
    let check = |n: HashMap<String, i64>, offset: i64| {
        assert_about(n["real"] - n["sysreal"], offset, SEC / 2, "time.Now()");
        assert_about(
            n["since"] - n["syssince"],
            0,
            SEC / 20,
            "time.Since (monotonic)",
        );
    };
    check(p.now(), 2 * DAY);
    assert_sleeps(&mut p, "sleep 1000");
    vdso::set_offset_pid(p.pid(), token, 10 * DAY).unwrap();
    check(p.now(), 10 * DAY);
    assert_sleeps(&mut p, "sleep 1000");
    vdso::set_offset_pid(p.pid(), token, 0).unwrap();
    check(p.now(), 0);
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn static_busybox_shell_and_its_applets_are_shifted() {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "{NEEDS}: /bin/busybox (busybox-static) is missing"
    );
    let mut p = Probe::start(Command::new(busybox).args([
        "sh",
        "-c",
        "echo ready; while read c; do eval \"$c\"; done",
    ]));
    let host = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let date = |p: &mut Probe| -> i64 { p.ask("date +%s").parse::<i64>().unwrap() - host() };
    assert!(date(&mut p).abs() <= 2);
    patch(p.pid(), token_for("busybox"), 2 * DAY);
    // `date` runs in a child the shell forks (busybox runs its own applets without exec)
    assert!((date(&mut p) - 2 * 86_400).abs() <= 2, "{}", date(&mut p));
    let start = Instant::now();
    assert_eq!(p.ask("sleep 1; echo slept"), "slept");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "sleep 1 took {took:?}"
    );
    vdso::set_offset_pid(p.pid(), token_for("busybox"), 0).unwrap();
    assert!(date(&mut p).abs() <= 2);
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn threads_reading_the_clock_while_it_is_patched_keep_running() {
    let mut p = Probe::built("glibc");
    assert_eq!(p.ask("spin 4"), "spinning");
    std::thread::sleep(Duration::from_millis(100));
    let token = token_for("spin");
    let first = patch(p.pid(), token, 2 * DAY);
    eprintln!("patched with 4 threads reading the clock: {first:?}");
    for i in 0..20 {
        patch(p.pid(), token, (i % 3) * DAY);
        vdso::set_offset_pid(p.pid(), token, 5 * DAY).unwrap();
    }
    assert_c_offset(&p.now(), 5 * DAY);
    let c = fields(&p.ask("check"));
    assert!(c["reads"] > 1000, "{c:?}");
    assert_eq!(
        c["backwards"], 0,
        "the monotonic clock never went backwards"
    );
}

/// A real process behind a seam that can lie about memory, count what is done, and kill the
/// process at a chosen point.
struct Seam {
    inner: Ptraced,
    /// Bytes shown instead of the real ones at an address.
    overlay: Option<(u64, Vec<u8>)>,
    kill_after_stop: bool,
    kill_at_write: Option<usize>,
    /// The first n stops report a thread at this address.
    rip_at: Option<(u64, usize)>,
    stops: usize,
    writes: std::cell::Cell<usize>,
}

impl Seam {
    fn new(pid: u32) -> Seam {
        Seam {
            inner: Ptraced::open(pid).unwrap(),
            overlay: None,
            kill_after_stop: false,
            kill_at_write: None,
            rip_at: None,
            stops: 0,
            writes: Default::default(),
        }
    }
    fn kill(&self) {
        // SAFETY: sends SIGKILL to the test's own child.
        unsafe { libc::kill(self.inner.pid() as i32, libc::SIGKILL) };
        // SIGKILL ends a ptrace stop too; give the kernel a moment to tear the process down
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Memory for Seam {
    fn pid(&self) -> u32 {
        self.inner.pid()
    }
    fn maps(&self) -> Result<String, ProcessError> {
        self.inner.maps()
    }
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ProcessError> {
        self.inner.read(addr, buf)?;
        if let Some((at, bytes)) = &self.overlay {
            for (i, b) in bytes.iter().enumerate() {
                let a = at + i as u64;
                if a >= addr && a < addr + buf.len() as u64 {
                    buf[(a - addr) as usize] = *b;
                }
            }
        }
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), ProcessError> {
        let n = self.writes.get();
        self.writes.set(n + 1);
        if self.kill_at_write == Some(n) {
            self.kill();
        }
        self.inner.write(addr, data)
    }
}

impl Process for Seam {
    fn stop(&mut self) -> Result<Vec<Thread>, ProcessError> {
        self.stops += 1;
        let mut t = self.inner.stop()?;
        if self.kill_after_stop {
            self.kill();
        }
        if let Some((rip, n)) = self.rip_at
            && self.stops <= n
        {
            t[0].rip = rip;
        }
        Ok(t)
    }
    fn resume(&mut self) {
        self.inner.resume()
    }
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn an_unknown_prologue_is_refused_and_the_process_left_alone() {
    let mut p = Probe::built("musl");
    let before = p.now();
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid())).unwrap();
    let (base, _) = vdso::patch::find_vdso(&maps).unwrap();
    let mut own = vec![0u8; 8192];
    let mut seam = Seam::new(p.pid());
    seam.read(base, &mut own).unwrap();
    let img = vdso::image::parse(&own).unwrap();
    // clock_gettime seen starting with a call: not an instruction berth moves
    seam.overlay = Some((
        base + img.clock_gettime.offset as u64,
        vec![0xe8, 0, 0, 0, 0],
    ));
    let err = vdso::patch(&mut seam, token_for("x"), 2 * DAY).unwrap_err();
    assert!(
        matches!(err, PatchError::Plan(_)),
        "refused for its prologue: {err}"
    );
    assert!(
        err.to_string()
            .contains("cannot move the first instructions of clock_gettime"),
        "{err}"
    );
    assert_eq!(seam.stops, 0, "refused before any thread was stopped");
    assert_eq!(seam.writes.get(), 0, "nothing written");
    drop(seam);
    assert_eq!(vdso::carried_pid(p.pid()).unwrap(), Carried::Nothing);
    let after = p.now();
    assert_c_offset(&after, 0);
    assert!(after["mono"] > before["mono"], "still running");
}

/// The first hazard of the vDSO of `pid`: an instruction boundary inside the bytes a jump
/// replaces.
fn first_hazard(pid: u32) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (base, end) = vdso::patch::find_vdso(&maps).unwrap();
    let mut mem = vec![0u8; (end - base) as usize];
    vdso::ProcMem::open(pid)
        .unwrap()
        .read(base, &mut mem)
        .unwrap();
    let img = vdso::image::parse(&mem).unwrap();
    let plan =
        vdso::trampoline::plan(&mem, &img, base, 1, vdso::trampoline::Slot::from_nanos(0)).unwrap();
    base + *plan
        .hazards
        .first()
        .expect("this kernel's prologues have inner boundaries") as u64
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn a_thread_inside_the_replaced_bytes_delays_the_patch() {
    let mut p = Probe::built("glibc");
    let hazard = first_hazard(p.pid());
    // in the way for 3 stops: patched at the 4th
    let mut seam = Seam::new(p.pid());
    seam.rip_at = Some((hazard, 3));
    let patched = vdso::patch(&mut seam, token_for("x"), DAY).unwrap();
    assert_eq!((patched.retries, seam.stops), (3, 4));
    drop(seam);
    assert_c_offset(&p.now(), DAY);
    // always in the way: refused, nothing written
    let mut q = Probe::built("glibc");
    let mut seam = Seam::new(q.pid());
    seam.rip_at = Some((first_hazard(q.pid()), usize::MAX));
    let err = vdso::patch(&mut seam, token_for("x"), DAY).unwrap_err();
    assert!(matches!(err, PatchError::Busy(_)), "{err:?}");
    assert!(err.to_string().contains("stopped at"), "{err}");
    assert_eq!(seam.writes.get(), 0);
    drop(seam);
    assert_eq!(vdso::carried_pid(q.pid()).unwrap(), Carried::Nothing);
    assert_c_offset(&q.now(), 0);
}

#[test]
#[ignore = "needs gcc, musl-gcc, go and busybox-static: run by scripts/test"]
fn a_process_that_exits_during_the_patch_is_reported_gone() {
    // killed while its threads are stopped
    let mut p = Probe::built("glibc");
    p.ask("spin 2");
    let mut seam = Seam::new(p.pid());
    seam.kill_after_stop = true;
    let start = Instant::now();
    let err = vdso::patch(&mut seam, token_for("x"), DAY).unwrap_err();
    assert!(err.is_gone(), "{err:?}");
    assert!(start.elapsed() < T, "no hang");
    drop(seam);
    // killed between two writes (after the block, before the jumps)
    let mut p2 = Probe::built("glibc");
    let mut seam = Seam::new(p2.pid());
    seam.kill_at_write = Some(1);
    let err = vdso::patch(&mut seam, token_for("x"), DAY).unwrap_err();
    assert!(err.is_gone(), "{err:?}");
    assert_eq!(
        seam.writes.get(),
        2,
        "stopped at the first write that failed"
    );
    drop(seam);
    // both are gone; reaping them does not hang
    let _ = p.child.wait();
    let _ = p2.child.wait();
    // a pid that does not exist
    let err = vdso::patch_pid(u32::MAX / 2, 1, 0).unwrap_err();
    assert!(err.is_gone(), "{err:?}");
}

#[test]
fn a_process_with_the_shim_loaded_is_not_patched() {
    let dir = tempfile::tempdir().unwrap();
    let shim = berth_faketime::install_shim(dir.path()).unwrap();
    let mut child = Command::new("sleep")
        .arg("30")
        .env("LD_PRELOAD", &shim)
        .spawn()
        .unwrap();
    // wait until the loader has mapped the shim
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(format!("/proc/{}/maps", child.id()))
        .unwrap_or_default()
        .contains("libberth-faketime")
    {
        assert!(Instant::now() < deadline, "the shim never loaded");
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = vdso::patch_pid(child.id(), 1, DAY).unwrap_err();
    assert!(matches!(err, PatchError::ShimLoaded), "{err:?}");
    assert_eq!(vdso::carried_pid(child.id()).unwrap(), Carried::Nothing);
    child.kill().unwrap();
    child.wait().unwrap();
}
