//! Faketime for entry points the shim cannot reach, end to end: berth-agent with its
//! **default** configuration on a real containerd (2.1 and 1.7), pods driven through CRI.
//!
//! The clock image's probes (`agents/faketime/testdata/clockprobe.{go,c}`, static) run as the
//! entry point in `serve` mode: every second they write their wall clock (through the vDSO) and
//! their own `clock_gettime` system call (which no patch reaches), how long their last 1 s
//! sleep took, and (musl) what a child they fork sees. The test reads that file through CRI
//! exec (`cat`: the exec'd process itself is not patched, it only reads the file).
//!
//! - a static Go program as entry point: +2d, `time.Sleep(1s)` lasts 1 s, its monotonic clock
//!   untouched, a live `berthctl faketime set +10d` and `clear` reach it, and `get` reports the
//!   process as shifted through its vDSO;
//! - a static musl program: +2d, and so is a child it forks;
//! - the static busybox shell as entry point: its `date` (forked, not exec'd) is +2d, while a
//!   `date` run through CRI exec has the real clock (exec is not reached, as documented);
//! - the same Go program judged at creation (with `faketime.containerd_address`): no shim is
//!   injected, the vDSO is patched at start.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_e2e::agent::AgentProcess;
use berth_e2e::faketime_api::{berthctl_faketime_json, clock_api_section};
use berth_e2e::testbed::{Containerd, Node, NodeOptions};
use berth_e2e::{BUSYBOX_IMAGE, CLOCK_IMAGE, ContainerSpec, CriClient, PodSpec};

const T: Duration = Duration::from_secs(10);
const DAY: i64 = 86_400_000_000_000;
const SEC: i64 = 1_000_000_000;

fn host_now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn exec(cri: &mut CriClient, id: &str, cmd: &[&str]) -> String {
    tokio::time::timeout(T + Duration::from_secs(5), cri.exec(id, cmd, T))
        .await
        .unwrap_or_else(|_| panic!("exec {cmd:?} hung"))
        .unwrap_or_else(|e| panic!("{e:#}"))
        .ok()
        .unwrap_or_else(|e| panic!("exec {cmd:?}: {e:#}"))
}

/// The probe's last line, as numbers.
async fn status(cri: &mut CriClient, id: &str) -> HashMap<String, i64> {
    loop {
        let out = tokio::time::timeout(T, cri.exec(id, &["cat", "/tmp/clock"], T))
            .await
            .expect("exec cat hung")
            .expect("exec cat");
        if out.exit_code == 0 {
            return out
                .stdout
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
        }
        // not written yet
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn near(got: i64, want: i64, slack: i64) -> bool {
    (got - want).abs() <= slack
}

/// Waits (at most `within`) for a line written after `after_seq` whose wall clock runs
/// `offset` ahead of its system call; returns it.
async fn wait_offset(
    cri: &mut CriClient,
    id: &str,
    offset: i64,
    after_seq: i64,
    within: Duration,
) -> HashMap<String, i64> {
    let start = Instant::now();
    loop {
        let s = status(cri, id).await;
        if s["seq"] > after_seq && near(s["real"] - s["sysreal"], offset, SEC / 2) {
            return s;
        }
        assert!(
            start.elapsed() < within,
            "no line {offset} ns ahead within {within:?}; last: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next line after `s` (the probe writes one a second).
async fn next_line(
    cri: &mut CriClient,
    id: &str,
    s: &HashMap<String, i64>,
) -> HashMap<String, i64> {
    let start = Instant::now();
    loop {
        let n = status(cri, id).await;
        if n["seq"] > s["seq"] {
            return n;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the probe stopped writing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_slept_one_second(s: &HashMap<String, i64>) {
    assert!(
        (950_000_000..3_000_000_000).contains(&s["slept"]),
        "a 1 s sleep lasted {} ns: {s:?}",
        s["slept"]
    );
}

fn probe(name: &str, program: &str) -> ContainerSpec {
    ContainerSpec::sleeper(name, CLOCK_IMAGE).command(&[program, "serve", "/tmp/clock"])
}

async fn static_entry_points(node_name: &str, containerd: Containerd) {
    let node = Node::start(
        node_name,
        NodeOptions {
            containerd,
            ..Default::default()
        },
    )
    .expect("node starts");
    let work = node.dir().join("faketime-static");
    std::fs::create_dir_all(&work).unwrap();
    let (state, logs) = (work.join("state"), work.join("logs"));
    // The agent's default configuration; only the API socket (for berthctl) is added.
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[nri]\nreconnect_max = \"500ms\"\n{}",
            clock_api_section(&work)
        ),
    )
    .unwrap();
    let agent_log = work.join("agent.log");
    let agent = AgentProcess::start(&node, &config, &logs, &state, &agent_log);
    agent.wait_ready(1);
    let mut cri = node.cri().await.expect("CRI ready");
    let socket = work.join("api.sock");

    // 1. A static Go program as the entry point.
    let pod = cri
        .run_pod(&PodSpec::new("clock", "go").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let go = cri
        .run_container(&pod, &probe("go", "/clockprobe-go"))
        .await
        .unwrap();
    // Patched at PostStart: the probe's first line may come before that.
    let s = wait_offset(&mut cri, &go, 2 * DAY, -1, Duration::from_secs(5)).await;
    let s = next_line(&mut cri, &go, &s).await;
    assert!(near(s["real"] - s["sysreal"], 2 * DAY, SEC / 2), "{s:?}");
    assert_slept_one_second(&s);
    assert!(
        near(s["since"] - s["syssince"], 0, SEC / 20),
        "the monotonic clock is untouched: {s:?}"
    );
    let st = berthctl_faketime_json(&socket, &["get", "clock/go"]);
    let c = &st[0];
    assert_eq!(c["covered"], true, "{c}");
    assert_eq!(c["coverage"], "static", "{c}");
    let procs = c["processes"].as_array().unwrap();
    let entry = procs
        .iter()
        .find(|p| p["exe"] == "/clockprobe-go")
        .unwrap_or_else(|| panic!("the entry point is not listed: {c}"));
    assert_eq!(entry["how"], "vdso", "{entry}");
    assert_eq!(entry["offset"], "+2d", "{entry}");
    // A live change reaches the running process within cache_duration (1 s) + a line.
    let set_at = Instant::now();
    let st = berthctl_faketime_json(&socket, &["set", "clock/go", "+10d"]);
    assert_eq!(st[0]["offset"], "+10d");
    let s = wait_offset(&mut cri, &go, 10 * DAY, s["seq"], Duration::from_secs(3)).await;
    eprintln!(
        "+10d seen by the running Go program {:?} after the set",
        set_at.elapsed()
    );
    let s = next_line(&mut cri, &go, &s).await;
    assert_slept_one_second(&s);
    berthctl_faketime_json(&socket, &["clear", "clock/go"]);
    let s = wait_offset(&mut cri, &go, 0, s["seq"], Duration::from_secs(3)).await;
    berthctl_faketime_json(&socket, &["set", "clock/go", "+2d"]);
    wait_offset(&mut cri, &go, 2 * DAY, s["seq"], Duration::from_secs(3)).await;

    // 2. A static musl program, and a child it forks.
    let pod = cri
        .run_pod(&PodSpec::new("clock", "musl").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let musl = cri
        .run_container(&pod, &probe("musl", "/clockprobe-musl"))
        .await
        .unwrap();
    let s = wait_offset(&mut cri, &musl, 2 * DAY, -1, Duration::from_secs(5)).await;
    let s = next_line(&mut cri, &musl, &s).await;
    assert!(
        near(s["forked"], 2 * DAY, SEC / 2),
        "the forked child: {s:?}"
    );
    assert!(near(s["mono"] - s["sysmono"], 0, SEC / 20), "{s:?}");
    assert_slept_one_second(&s);
    let st = berthctl_faketime_json(&socket, &["set", "clock/musl", "-3h"]);
    assert_eq!(st[0]["offset"], "-3h");
    let s = wait_offset(
        &mut cri,
        &musl,
        -3 * 3600 * SEC,
        s["seq"],
        Duration::from_secs(3),
    )
    .await;
    let s = next_line(&mut cri, &musl, &s).await;
    assert!(near(s["forked"], -3 * 3600 * SEC, SEC / 2), "{s:?}");

    // 3. The static busybox shell: its `date` runs in a forked child and is shifted; a
    // `date` started through CRI exec is a new program (exec) and is not.
    let pod = cri
        .run_pod(&PodSpec::new("clock", "busybox").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let bb = cri
        .run_container(
            &pod,
            &ContainerSpec::sleeper("bb", BUSYBOX_IMAGE).command(&[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do date +%s > /tmp/d.tmp; mv /tmp/d.tmp /tmp/d; sleep 1 & wait $!; done",
            ]),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = tokio::time::timeout(T, cri.exec(&bb, &["cat", "/tmp/d"], T))
            .await
            .unwrap()
            .unwrap();
        let theirs: Option<i64> = out.stdout.trim().parse().ok();
        if theirs.is_some_and(|t| (t - host_now_s() - 2 * 86_400).abs() <= 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "busybox's date never ran 2 days ahead: {out:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exec_date: i64 = exec(&mut cri, &bb, &["date", "+%s"])
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        (exec_date - host_now_s()).abs() <= 3,
        "a program started by CRI exec is not reached (documented): {exec_date}"
    );
    let st = berthctl_faketime_json(&socket, &["get", "clock/busybox"]);
    assert_eq!(st[0]["covered"], true, "{}", st[0]);
    assert!(
        st[0]["processes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["how"] == "vdso"),
        "{}",
        st[0]
    );
    let log = agent.log_text();
    let patched: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the entry point's vDSO is patched"))
        .collect();
    assert_eq!(patched.len(), 3, "one patch per container:\n{log}");
    for l in patched {
        // pid, vdso address, retries and how long the patch took (patch_us)
        eprintln!("{}", l.split("faketime: ").nth(1).unwrap_or(l));
    }
    drop(agent);

    // 4. Judged at creation (containerd's snapshot): no shim at all, patched at start.
    let probing = work.join("agent-probing.toml");
    std::fs::write(
        &probing,
        format!(
            "[nri]\nreconnect_max = \"500ms\"\n[faketime]\ncontainerd_address = {:?}\n{}",
            node.containerd_socket(),
            clock_api_section(&work),
        ),
    )
    .unwrap();
    let agent = AgentProcess::start(&node, &probing, &logs, &state, &agent_log);
    agent.wait_ready(2);
    let pod = cri
        .run_pod(&PodSpec::new("clock", "judged").annotation("berth.io/faketime", "+2d"))
        .await
        .unwrap();
    let judged = cri
        .run_container(&pod, &probe("go", "/clockprobe-go"))
        .await
        .unwrap();
    wait_offset(&mut cri, &judged, 2 * DAY, -1, Duration::from_secs(5)).await;
    let st = berthctl_faketime_json(&socket, &["get", "clock/judged"]);
    assert_eq!(st[0]["injected"], false, "no shim: {}", st[0]);
    assert_eq!(st[0]["covered"], true);
    assert_eq!(st[0]["checked_at"], "create");
    assert!(
        st[0]["reason"].as_str().unwrap().contains("vDSO"),
        "{}",
        st[0]
    );
    // The state survived the restart: the Go container above still follows set.
    let st = berthctl_faketime_json(&socket, &["set", "clock/go", "+1d"]);
    assert_eq!(st[0]["offset"], "+1d");
    wait_offset(&mut cri, &go, DAY, -1, Duration::from_secs(3)).await;

    cri.teardown_all().await.unwrap();
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn static_entry_points_on_containerd_2_1() {
    static_entry_points("ft-static-21", Containerd::V2_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and the test bed: run by scripts/test"]
async fn static_entry_points_on_containerd_1_7() {
    static_entry_points("ft-static-17", Containerd::V1_7).await;
}
