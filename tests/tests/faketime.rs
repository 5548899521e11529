//! Faketime end to end: berth-agent registered over a real containerd's NRI socket (2.1 and
//! 1.7) with its **default** faketime config, pods driven through CRI like kubelet does, the
//! glibc image (dash, coreutils, python3, built from `ldd` output: no libdl.so.2), the image
//! that sets LD_PRELOAD in its config, the musl image and the static busybox image, and the
//! host's OpenJDK 17 bind-mounted into a glibc container.
//!
//! The agent finds containerd where a node has it (`/run/containerd/containerd.sock`, given to
//! it in a mount namespace of its own as the DaemonSet's hostPath mount does) and judges entry
//! points at creation through containerd's snapshot API. A pod annotated
//! `berth.io/faketime: "+2d"` sees the wall clock two days ahead; a container with its own
//! `berth.io/faketime.<name>` keeps its own offset; a container without annotation is
//! untouched; relative sleeps, Python sleeps, threading timers and `timeout` keep real time;
//! an image's own LD_PRELOAD is kept and both libraries load; a JVM's
//! `System.currentTimeMillis()` is shifted while `Thread.sleep` and `Object.wait` keep real
//! time; the offset changes at run time through the agent's gRPC API (`berthctl faketime
//! set|clear` on the agent's unix socket, authorized and audited) without a restart, and
//! through `berth-agent faketime` on the node; static busybox, a static and a dynamic musl
//! program are reported as not covered, get no shim, and run. Without containerd (an agent
//! that cannot reach it) the shim is injected blindly: a glibc image without libdl.so.2 runs
//! shifted, busybox and musl run on the real clock, and each is judged after start
//! (`/proc/<pid>/exe`). The state survives an agent restart and goes with the container.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_e2e::agent::AgentProcess;
use berth_e2e::faketime_api::{berthctl_faketime, berthctl_faketime_json, clock_api_section};
use berth_e2e::testbed::{Containerd, Node, NodeOptions, binary};
use berth_e2e::{
    BUSYBOX_IMAGE, ContainerSpec, CriClient, GLIBC_IMAGE, MUSL_IMAGE, PRELOAD_IMAGE, PodSpec,
};

const T: Duration = Duration::from_secs(10);
/// A JVM start with an in-memory compile of a source file takes seconds on the test VM.
const JVM_T: Duration = Duration::from_secs(40);
/// This suite covers the shim and what it cannot reach; the vDSO path, which reaches static
/// entry points by default, has its own suite (faketime_static.rs).
const NO_VDSO: &str = "patch_vdso = false\n";
const DAY: i64 = 86_400;
const SHIM: &str = "/.berth/faketime/libberth-faketime.so";
/// What the preload image's config sets LD_PRELOAD to (scripts/lib/images.sh).
const PRELOAD: &str = "/usr/lib/x86_64-linux-gnu/libuuid.so.1";
/// The host's OpenJDK 17 (scripts/lib/install.sh installs it) and its configuration, which the
/// JRE's `lib/jvm.cfg` and `conf/` link to.
const JRE: &str = "/usr/lib/jvm/java-17-openjdk-amd64";
const JRE_ETC: &str = "/etc/java-17-openjdk";
/// Runs in the JVM container (`java /opt/clock/Clock.java <what>`):
/// `now` prints `currentTimeMillis() / 1000`; `waits` prints how long `Thread.sleep(1000)` and a
/// timed `Object.wait(1000)` took (s, on `nanoTime`); `watch` writes `/tmp/jvm-ready`, then
/// prints `set <s>` once its wall clock ran 7 days ahead of `nanoTime` and `clear <s>` once it
/// fell a day behind where it started (at most 30 s).
const CLOCK_JAVA: &str = r#"public class Clock {
    public static void main(String[] a) throws Exception {
        switch (a[0]) {
            case "now" -> System.out.println(System.currentTimeMillis() / 1000);
            case "waits" -> {
                long t = System.nanoTime();
                Thread.sleep(1000);
                double slept = (System.nanoTime() - t) / 1e9;
                Object o = new Object();
                t = System.nanoTime();
                synchronized (o) { o.wait(1000); }
                System.out.println(slept + " " + (System.nanoTime() - t) / 1e9);
            }
            case "watch" -> {
                long m0 = System.nanoTime(), w0 = System.currentTimeMillis();
                java.nio.file.Files.writeString(java.nio.file.Path.of("/tmp/jvm-ready"), "1");
                int state = 0;
                StringBuilder out = new StringBuilder();
                while (System.nanoTime() - m0 < 30_000_000_000L && state < 2) {
                    long mono = (System.nanoTime() - m0) / 1_000_000;
                    long drift = (System.currentTimeMillis() - w0) - mono;
                    if (state == 0 && drift > 7 * 86_400_000L) {
                        out.append("set ").append(mono / 1000.0).append(' ');
                        state = 1;
                    } else if (state == 1 && drift < -86_400_000L) {
                        out.append("clear ").append(mono / 1000.0);
                        state = 2;
                    }
                    Thread.sleep(20);
                }
                System.out.println(out.toString().trim());
            }
            default -> throw new IllegalArgumentException(a[0]);
        }
    }
}
"#;
/// Prints `jumped <seconds since start>` when its wall clock runs 7 days ahead of its
/// monotonic clock, or `nojump` after 8 s.
const WATCHER: &str = "import time
m0 = time.monotonic(); w0 = time.time()
while time.monotonic() - m0 < 8:
    if (time.time() - w0) - (time.monotonic() - m0) > 7 * 86400:
        print('jumped %.3f' % (time.monotonic() - m0)); break
    time.sleep(0.02)
else:
    print('nojump')
";

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `berth-agent --state-dir <state> faketime <args>`, bounded by 10 s: (exit ok, stdout+stderr).
fn ctl(state: &Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(binary("berth-agent"))
        .arg("--state-dir")
        .arg(state)
        .arg("faketime")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + T;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berth-agent faketime {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ctl_json(state: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let (ok, text) = ctl(state, args);
    assert!(ok, "berth-agent faketime {args:?} failed: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs a command in a container, bounded by `timeout` (CRI's own and a local one).
async fn exec(
    cri: &mut CriClient,
    id: &str,
    cmd: &[&str],
    timeout: Duration,
) -> berth_e2e::cri::ExecOutput {
    tokio::time::timeout(timeout + Duration::from_secs(5), cri.exec(id, cmd, timeout))
        .await
        .unwrap_or_else(|_| panic!("exec {cmd:?} hung"))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The container's `date +%s` minus the host's, in seconds.
async fn clock_offset(cri: &mut CriClient, id: &str) -> i64 {
    let before = host_now();
    let out = exec(cri, id, &["date", "+%s"], T).await.ok().unwrap();
    let after = host_now();
    let theirs: i64 = out.trim().parse().unwrap();
    // the nearer end of the host's interval
    if theirs < before {
        theirs - before
    } else if theirs > after {
        theirs - after
    } else {
        0
    }
}

fn assert_near(got: i64, want: i64, what: &str) {
    assert!(
        (got - want).abs() <= 5,
        "{what}: clock offset {got} s, want {want} s ±5"
    );
}

/// Waits (at most `within`) until the container's clock is `want` ahead; returns how long.
async fn wait_offset(cri: &mut CriClient, id: &str, want: i64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = clock_offset(cri, id).await;
        if (got - want).abs() <= 5 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "clock offset still {got} s after {:?}, want {want} s",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `cmd`, asserting it took between `min` and `max` of real time; returns the output.
async fn timed(
    cri: &mut CriClient,
    id: &str,
    cmd: &[&str],
    min: Duration,
    max: Duration,
) -> berth_e2e::cri::ExecOutput {
    let start = Instant::now();
    let out = exec(cri, id, cmd, T).await;
    let took = start.elapsed();
    assert!(
        took >= min && took <= max,
        "{cmd:?} took {took:?}, want {min:?}..{max:?}; output {out:?}"
    );
    eprintln!("{cmd:?} took {took:?}");
    out
}

fn status_of<'a>(list: &'a [serde_json::Value], container: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|s| s["container"] == container)
        .unwrap_or_else(|| panic!("no status for {container}: {list:?}"))
}

/// The status of one container once its entry point was judged (at most 10 s).
fn judged(state: &Path, pod: &str, container: &str) -> serde_json::Value {
    let deadline = Instant::now() + T;
    loop {
        let st = ctl_json(
            state,
            &[
                "get",
                "--namespace",
                "clock",
                "--pod",
                pod,
                "--container",
                container,
            ],
        );
        if !st[0]["covered"].is_null() {
            return st[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{container} never judged: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A container of the musl image whose entry point is `program` (it waits for TERM).
fn musl(name: &str, program: &str) -> ContainerSpec {
    ContainerSpec::sleeper(name, MUSL_IMAGE).command(&[program])
}

/// `musl-clock now` in a container: both its readings minus the host's clock, in seconds.
async fn musl_offsets(cri: &mut CriClient, id: &str, program: &str) -> Vec<i64> {
    let before = host_now();
    let out = exec(cri, id, &[program, "now"], T).await.ok().unwrap();
    out.split_whitespace()
        .map(|t| t.parse::<i64>().unwrap() - before)
        .collect()
}

fn glibc(name: &str) -> ContainerSpec {
    ContainerSpec::sleeper(name, GLIBC_IMAGE)
}

fn dir_entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn faketime_end_to_end(node_name: &str, containerd: Containerd) {
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            ..Default::default()
        },
    )
    .expect("node starts");
    let work = node.dir().join("faketime-test");
    std::fs::create_dir_all(&work).unwrap();
    let state = work.join("state");
    let log_root = work.join("logs");
    // The agent's default [faketime]: containerd_address is /run/containerd/containerd.sock,
    // which the agent's mount namespace maps to this node's socket (as on a real node).
    let default_config = work.join("agent.toml");
    std::fs::write(
        &default_config,
        format!(
            "[nri]\nreconnect_max = \"500ms\"\n[faketime]\n{NO_VDSO}{}",
            clock_api_section(&work)
        ),
    )
    .unwrap();
    let agent_log = work.join("agent.log");
    let agent = AgentProcess::start_with_default_containerd(
        &node,
        &default_config,
        &log_root,
        &state,
        &agent_log,
    );
    agent.wait_ready(1);
    let mut cri = node.cri().await.expect("CRI ready");
    let containers_dir = state.join("faketime/containers");
    let socket = work.join("api.sock");
    let audit = work.join("audit.jsonl");

    // 1. A pod two days ahead, one container with its own offset, one with its own preload.
    let pod = cri
        .run_pod(
            &PodSpec::new("clock", "shifted")
                .annotation("berth.io/faketime", "+2d")
                .annotation("berth.io/faketime.other", "-3h"),
        )
        .await
        .unwrap();
    let app = cri.run_container(&pod, &glibc("app")).await.unwrap();
    let other = cri.run_container(&pod, &glibc("other")).await.unwrap();
    let preload = cri
        .run_container(&pod, &ContainerSpec::sleeper("preload", PRELOAD_IMAGE))
        .await
        .unwrap();
    let plain_pod = cri.run_pod(&PodSpec::new("clock", "plain")).await.unwrap();
    let plain = cri
        .run_container(&plain_pod, &glibc("plain"))
        .await
        .unwrap();

    assert_near(clock_offset(&mut cri, &app).await, 2 * DAY, "app (+2d)");
    assert_near(
        clock_offset(&mut cri, &other).await,
        -3 * 3600,
        "other (-3h)",
    );
    assert_near(
        clock_offset(&mut cri, &preload).await,
        2 * DAY,
        "preload (+2d)",
    );
    assert_near(
        clock_offset(&mut cri, &plain).await,
        0,
        "plain (no annotation)",
    );

    // The environment: LD_PRELOAD appended to the image's, never FAKETIME.
    let env = exec(&mut cri, &app, &["env"], T).await.ok().unwrap();
    assert!(
        env.lines().any(|l| l == format!("LD_PRELOAD={SHIM}")),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == "FAKETIME_TIMESTAMP_FILE=/.berth/faketime/state/offset"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "FAKETIME_CACHE_DURATION=1"),
        "{env}"
    );
    assert!(!env.lines().any(|l| l.starts_with("FAKETIME=")), "{env}");
    let env = exec(&mut cri, &preload, &["env"], T).await.ok().unwrap();
    assert!(
        env.lines()
            .any(|l| l == format!("LD_PRELOAD={PRELOAD}:{SHIM}")),
        "{env}"
    );
    let maps = exec(&mut cri, &preload, &["cat", "/proc/self/maps"], T)
        .await
        .ok()
        .unwrap();
    assert!(
        maps.contains("libuuid.so.1"),
        "the image's preload is loaded"
    );
    assert!(maps.contains("libberth-faketime.so"), "the shim is loaded");
    // The glibc image is what `ldd` lists and nothing more: no libdl.so.2 anywhere, and the
    // shim needs none.
    let libs = exec(
        &mut cri,
        &app,
        &["ls", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"],
        T,
    )
    .await
    .ok()
    .unwrap();
    assert!(libs.lines().any(|l| l == "libc.so.6"), "{libs}");
    assert!(!libs.lines().any(|l| l.starts_with("libdl")), "{libs}");
    let maps = exec(&mut cri, &app, &["cat", "/proc/self/maps"], T)
        .await
        .ok()
        .unwrap();
    assert!(maps.contains("libberth-faketime.so"), "{maps}");
    assert!(!maps.contains("libdl"), "{maps}");
    let env = exec(&mut cri, &plain, &["env"], T).await.ok().unwrap();
    assert!(!env.contains("LD_PRELOAD"), "{env}");
    // The mounts are read-only.
    let mountinfo = exec(&mut cri, &app, &["cat", "/proc/self/mountinfo"], T)
        .await
        .ok()
        .unwrap();
    for dest in [SHIM, "/.berth/faketime/state"] {
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(dest))
            .unwrap_or_else(|| panic!("{dest} is not a mount:\n{mountinfo}"));
        assert!(
            line.split(' ')
                .nth(5)
                .unwrap()
                .split(',')
                .any(|f| f == "ro"),
            "{line}"
        );
    }

    // 2. Relative sleeps, Python sleeps, timers and timeout keep real time.
    let ms = Duration::from_millis;
    timed(&mut cri, &app, &["sleep", "1"], ms(950), ms(4000))
        .await
        .ok()
        .unwrap();
    timed(
        &mut cri,
        &app,
        &["python3", "-c", "import time; time.sleep(1)"],
        ms(950),
        ms(5000),
    )
    .await
    .ok()
    .unwrap();
    let out = timed(
        &mut cri,
        &app,
        &[
            "python3",
            "-c",
            "import threading; e = threading.Event(); threading.Timer(0.5, e.set).start(); print(e.wait(3))",
        ],
        ms(450),
        ms(5000),
    )
    .await
    .ok()
    .unwrap();
    assert_eq!(out.trim(), "True");
    let out = timed(
        &mut cri,
        &app,
        &["timeout", "2", "sleep", "10"],
        ms(1900),
        ms(6000),
    )
    .await;
    assert_eq!(out.exit_code, 124, "{out:?}");
    // Python's own wall clock is shifted too.
    let py = exec(
        &mut cri,
        &app,
        &["python3", "-c", "import time; print(int(time.time()))"],
        T,
    )
    .await
    .ok()
    .unwrap();
    assert_near(
        py.trim().parse::<i64>().unwrap() - host_now(),
        2 * DAY,
        "python time.time()",
    );

    // 3. The API: state and coverage of every container, over gRPC and on the node.
    let st = berthctl_faketime_json(&socket, &["get", "clock/shifted"]);
    assert_eq!(st.len(), 3, "{st:?}");
    let a = status_of(&st, "app");
    assert_eq!(a["container_id"], app.as_str());
    assert_eq!(a["offset"], "+2d");
    assert_eq!(a["injected"], true);
    assert_eq!(a["covered"], true);
    assert_eq!(a["coverage"], "glibc");
    assert_eq!(a["checked_at"], "create");
    assert!(a["reason"].as_str().unwrap().contains("glibc"), "{a}");
    assert_eq!(status_of(&st, "other")["offset"], "-3h");
    let (ok, text) = berthctl_faketime(&socket, &["get", "clock/plain"]);
    assert!(
        !ok && text.contains("not found") && text.contains("pod clock/plain"),
        "{text}"
    );
    let (ok, text) = ctl(&state, &["get", "--namespace", "clock", "--pod", "plain"]);
    assert!(
        !ok && text.contains("no faketime container in pod clock/plain"),
        "{text}"
    );
    // The caller's role covers namespace `clock` only.
    let (ok, text) = berthctl_faketime(&socket, &["set", "elsewhere/shifted", "+1d"]);
    assert!(
        !ok && text.to_lowercase().contains("permission denied"),
        "{text}"
    );

    // 4. A run-time change moves the running clock within 2 s, without a restart; clear
    // brings real time back. The other container keeps its own offset.
    // A process that runs across the change sees its wall clock jump (the shim re-reads the
    // file within its 1 s cache), and a fresh one sees the new offset.
    let watcher = {
        let mut cri2 = node.cri().await.unwrap();
        let id = app.clone();
        tokio::spawn(async move {
            let launched = Instant::now();
            let out = exec(&mut cri2, &id, &["python3", "-c", WATCHER], T).await;
            (launched, Instant::now(), out)
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let set_at = Instant::now();
    let st = berthctl_faketime_json(&socket, &["set", "clock/shifted", "-c", "app", "+10d"]);
    assert_eq!(st.len(), 1, "{st:?}");
    assert_eq!(st[0]["offset"], "+10d");
    let (launched, finished, out) = watcher.await.unwrap();
    let out = out.ok().unwrap();
    let seen: f64 = out
        .trim()
        .strip_prefix("jumped ")
        .unwrap_or_else(|| panic!("the running process never saw the change: {out:?}"))
        .parse()
        .unwrap();
    // Upper bound: the watcher had seen the jump by the time its exec returned. Estimate: its
    // own clock counts from its start, a little after `launched`.
    let bound = (finished - set_at).as_secs_f64();
    let estimate = seen - (set_at - launched).as_secs_f64();
    eprintln!("running process saw +10d {estimate:.3} s after the set (at most {bound:.3} s)");
    assert!(bound < 2.0, "change seen only {bound} s after the set");
    let took = wait_offset(&mut cri, &app, 10 * DAY, Duration::from_secs(2)).await;
    eprintln!("offset +10d seen by a new process after {took:?}");
    assert_near(
        clock_offset(&mut cri, &other).await,
        -3 * 3600,
        "other after set",
    );
    let st = berthctl_faketime_json(&socket, &["clear", "clock/shifted", "-c", "app"]);
    assert_eq!(st[0]["offset"], "0");
    let took = wait_offset(&mut cri, &app, 0, Duration::from_secs(2)).await;
    eprintln!("clear seen after {took:?}");
    // A negative offset is a value, not a flag; an absolute start becomes a running offset.
    let st = berthctl_faketime_json(&socket, &["set", "clock/shifted", "-c", "app", "-3h"]);
    assert_eq!(st[0]["offset"], "-3h");
    wait_offset(&mut cri, &app, -3 * 3600, Duration::from_secs(2)).await;
    berthctl_faketime_json(
        &socket,
        &["set", "clock/shifted", "-c", "app", "@2035-06-01"],
    );
    let want = 2_064_268_800 - host_now(); // 2035-06-01T00:00:00Z
    wait_offset(&mut cri, &app, want, Duration::from_secs(2)).await;
    berthctl_faketime_json(&socket, &["clear", "clock/shifted", "-c", "app"]);
    wait_offset(&mut cri, &app, 0, Duration::from_secs(2)).await;
    // Every call is in the audit log with who made it and what it targeted.
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    for want in [
        "pod clock/shifted container app offset +10d",
        "pod clock/shifted container app offset @2035-06-01",
    ] {
        assert!(
            audit_text.lines().any(|l| l.contains("\"event\":\"call\"")
                && l.contains("/berth.v1.FakeTime/Set")
                && l.contains("\"identity\":\"unix:uid:0\"")
                && l.contains(want)),
            "no audit line for {want}:\n{audit_text}"
        );
    }
    assert!(
        audit_text
            .lines()
            .any(|l| l.contains("\"decision\":\"deny\"") && l.contains("pod elsewhere/shifted")),
        "the denied call is not audited:\n{audit_text}"
    );
    let (ok, text) = ctl(
        &state,
        &[
            "set",
            "--namespace",
            "clock",
            "--pod",
            "shifted",
            "--offset",
            "2 days",
        ],
    );
    assert!(!ok && text.contains("invalid --offset"), "{text}");

    // 5. A static busybox is judged at creation: not covered, no shim, real clock, reported.
    let bb_pod = cri
        .run_pod(&PodSpec::new("clock", "static").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let bb = cri
        .run_container(&bb_pod, &ContainerSpec::sleeper("bb", BUSYBOX_IMAGE))
        .await
        .unwrap();
    let env = exec(&mut cri, &bb, &["env"], T).await.ok().unwrap();
    assert!(
        !env.contains("LD_PRELOAD") && !env.contains("FAKETIME"),
        "{env}"
    );
    let mountinfo = exec(&mut cri, &bb, &["cat", "/proc/self/mountinfo"], T)
        .await
        .ok()
        .unwrap();
    assert!(!mountinfo.contains("/.berth/faketime"), "{mountinfo}");
    assert_near(clock_offset(&mut cri, &bb).await, 0, "static busybox");
    let st = ctl_json(&state, &["get", "--namespace", "clock", "--pod", "static"]);
    let b = status_of(&st, "bb");
    assert_eq!(b["injected"], false);
    assert_eq!(b["covered"], false);
    assert_eq!(b["coverage"], "static");
    assert_eq!(b["checked_at"], "create");
    assert!(
        b["reason"].as_str().unwrap().contains("statically linked"),
        "{b}"
    );
    assert!(
        !containers_dir.join(&bb).exists(),
        "no state dir for an uninjected container"
    );
    assert!(
        agent.log_text().contains("faketime not injected"),
        "the agent log says why"
    );
    // musl programs, dynamic (musl's loader) and static, are judged at creation too: not
    // covered, no shim, and they run on the real clock.
    for (name, program, kind) in [
        ("musl", "/bin/musl-clock", "musl"),
        ("musl-static", "/bin/musl-clock-static", "static"),
    ] {
        let id = cri
            .run_container(&bb_pod, &musl(name, program))
            .await
            .unwrap();
        let st = ctl_json(
            &state,
            &[
                "get",
                "--namespace",
                "clock",
                "--pod",
                "static",
                "--container",
                name,
            ],
        );
        assert_eq!(st[0]["injected"], false, "{name}: {st:?}");
        assert_eq!(st[0]["covered"], false, "{name}: {st:?}");
        assert_eq!(st[0]["coverage"], kind, "{name}: {st:?}");
        assert_eq!(st[0]["checked_at"], "create", "{name}: {st:?}");
        let reason = st[0]["reason"].as_str().unwrap();
        assert!(reason.contains(program), "{name}: {reason}");
        for got in musl_offsets(&mut cri, &id, program).await {
            assert_near(got, 0, name);
        }
        let status = cri.container_status(&id).await.unwrap();
        assert_eq!(status.state, 1, "{name} runs: {status:?}");
    }
    let (ok, text) = berthctl_faketime(&socket, &["set", "clock/static", "+1d"]);
    assert!(
        !ok && text.to_lowercase().contains("failed precondition")
            && text.contains("no container has the shim"),
        "{text}"
    );

    // 5b. A JVM (the host's OpenJDK 17, bind-mounted into a glibc container): its wall clock is
    // shifted, Thread.sleep and a timed Object.wait last as long as asked, and live changes
    // reach a JVM that runs across them.
    for dir in [JRE, JRE_ETC] {
        assert!(
            Path::new(dir).is_dir(),
            "{dir} is missing: scripts/lib/install.sh installs openjdk-17-jre-headless"
        );
    }
    let java_dir = work.join("java");
    std::fs::create_dir_all(&java_dir).unwrap();
    std::fs::write(java_dir.join("Clock.java"), CLOCK_JAVA).unwrap();
    let jvm_pod = cri
        .run_pod(&PodSpec::new("clock", "jvm").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let jvm = cri
        .run_container(
            &jvm_pod,
            &glibc("jvm")
                .mount_ro(JRE, JRE)
                .mount_ro(JRE_ETC, JRE_ETC)
                .mount_ro(java_dir.to_str().unwrap(), "/opt/clock"),
        )
        .await
        .unwrap();
    let java = format!("{JRE}/bin/java");
    let jcmd = |what: &'static str| {
        vec![
            java.clone(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "/opt/clock/Clock.java".into(),
            what.into(),
        ]
    };
    let args = jcmd("now");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let before = host_now();
    let out = exec(&mut cri, &jvm, &args, JVM_T).await.ok().unwrap();
    let millis_secs: i64 = out.trim().parse().unwrap();
    assert_near(millis_secs - before, 2 * DAY, "System.currentTimeMillis()");
    let args = jcmd("waits");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = exec(&mut cri, &jvm, &args, JVM_T).await.ok().unwrap();
    let waits: Vec<f64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
    assert_eq!(waits.len(), 2, "{out}");
    assert!(
        (0.95..2.5).contains(&waits[0]),
        "Thread.sleep(1000) took {} s",
        waits[0]
    );
    assert!(
        (0.95..2.5).contains(&waits[1]),
        "Object.wait(1000) took {} s",
        waits[1]
    );
    eprintln!(
        "JVM: Thread.sleep(1000) {:.3} s, Object.wait(1000) {:.3} s",
        waits[0], waits[1]
    );
    let watcher = {
        let mut cri2 = node.cri().await.unwrap();
        let (id, args) = (jvm.clone(), jcmd("watch"));
        tokio::spawn(async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            exec(&mut cri2, &id, &args, JVM_T).await
        })
    };
    let deadline = Instant::now() + JVM_T;
    while exec(&mut cri, &jvm, &["test", "-e", "/tmp/jvm-ready"], T)
        .await
        .exit_code
        != 0
    {
        assert!(Instant::now() < deadline, "the JVM watcher never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    berthctl_faketime_json(&socket, &["set", "clock/jvm", "+10d"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    berthctl_faketime_json(&socket, &["clear", "clock/jvm"]);
    let out = watcher.await.unwrap().ok().unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    assert!(
        words.len() == 4 && words[0] == "set" && words[2] == "clear",
        "the running JVM did not see both changes: {out:?}"
    );
    eprintln!("JVM watcher: {out}");

    // 6. The state survives an agent restart. An agent that cannot reach containerd (the same
    // default config, without the node's socket at /run/containerd/containerd.sock) injects
    // the shim before judging and judges entry points after start: a glibc image without
    // libdl.so.2 runs shifted; busybox and a musl program run, are reported as not covered,
    // and get offset 0 so nothing in them runs on a shifted clock.
    drop(agent);
    let late = default_config.clone();
    let agent = AgentProcess::start(&node, &late, &log_root, &state, &agent_log);
    agent.wait_ready(2);
    let st = ctl_json(&state, &["get", "--namespace", "clock", "--pod", "shifted"]);
    assert_eq!(st.len(), 3, "state kept across the restart: {st:?}");
    ctl_json(
        &state,
        &[
            "set",
            "--namespace",
            "clock",
            "--pod",
            "shifted",
            "--container",
            "app",
            "--offset",
            "+1d",
        ],
    );
    wait_offset(&mut cri, &app, DAY, Duration::from_secs(2)).await;
    let bb2 = cri
        .run_container(&bb_pod, &ContainerSpec::sleeper("bb2", BUSYBOX_IMAGE))
        .await
        .unwrap();
    let b2 = judged(&state, "static", "bb2");
    assert_eq!(b2["injected"], true);
    assert_eq!(b2["covered"], false);
    assert_eq!(b2["coverage"], "static");
    assert_eq!(b2["checked_at"], "start");
    assert_eq!(b2["offset"], "0");
    assert!(
        b2["reason"].as_str().unwrap().contains("offset set to 0"),
        "{b2}"
    );
    assert_near(clock_offset(&mut cri, &bb2).await, 0, "late-judged busybox");
    let blind_pod = cri
        .run_pod(&PodSpec::new("clock", "blind").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let app2 = cri.run_container(&blind_pod, &glibc("app2")).await.unwrap();
    let a2 = judged(&state, "blind", "app2");
    assert_eq!(a2["injected"], true);
    assert_eq!(a2["covered"], true);
    assert_eq!(a2["checked_at"], "start");
    assert_near(clock_offset(&mut cri, &app2).await, 2 * DAY, "blind glibc");
    timed(
        &mut cri,
        &app2,
        &["python3", "-c", "import time; time.sleep(1)"],
        ms(950),
        ms(5000),
    )
    .await
    .ok()
    .unwrap();
    let musl2 = cri
        .run_container(&blind_pod, &musl("musl2", "/bin/musl-clock"))
        .await
        .unwrap();
    let m2 = judged(&state, "blind", "musl2");
    assert_eq!(m2["injected"], true);
    assert_eq!(m2["covered"], false);
    assert_eq!(m2["coverage"], "musl");
    assert_eq!(m2["offset"], "0");
    for got in musl_offsets(&mut cri, &musl2, "/bin/musl-clock").await {
        assert_near(got, 0, "blind musl");
    }
    let status = cri.container_status(&musl2).await.unwrap();
    assert_eq!(
        status.state, 1,
        "a musl program with the shim runs: {status:?}"
    );
    let log = agent.log_text();
    assert!(
        log.contains("entry point not judged at creation")
            && log.contains("/run/containerd/containerd.sock"),
        "the agent log says why it could not judge at creation"
    );

    // 7. A removed container's state goes with it; the rest stays.
    cri.stop_container(&other, 5).await.unwrap();
    cri.remove_container(&other).await.unwrap();
    let deadline = Instant::now() + T;
    while containers_dir.join(&other).exists() {
        assert!(
            Instant::now() < deadline,
            "state dir of a removed container stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = ctl_json(&state, &["get", "--namespace", "clock", "--pod", "shifted"]);
    assert_eq!(st.len(), 2, "{st:?}");
    assert!(containers_dir.join(&app).join("offset").exists());

    // 8. Containers removed while the agent is away are dropped at the next Synchronize.
    drop(agent);
    cri.teardown_all().await.unwrap();
    assert!(
        !dir_entries(&containers_dir).is_empty(),
        "the agent was away"
    );
    let agent = AgentProcess::start(&node, &late, &log_root, &state, &agent_log);
    agent.wait_ready(3);
    let deadline = Instant::now() + T;
    while !dir_entries(&containers_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "state of vanished containers kept: {:?}",
            dir_entries(&containers_dir)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (ok, _) = ctl(&state, &["get", "--namespace", "clock", "--pod", "shifted"]);
    assert!(!ok, "state of vanished containers kept");
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn faketime_on_containerd_2_1() {
    faketime_end_to_end("faketime-21", Containerd::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn faketime_on_containerd_1_7() {
    faketime_end_to_end("faketime-17", Containerd::V1_7).await;
}
