//! `scripts/demo` end to end, as a newcomer meets it: `demo up` (a second, separate demo
//! instance, so a demo the user has up is left alone), then every command of the tour it
//! prints, run as printed through `sh -c`, with their outputs checked: who you are over mTLS,
//! the file logs (listed and followed), a debug shell and `exec` in web-0's network (its
//! address), the shifted clock of clock-0 in `faketime get` and inside the container, a
//! `faketime set` the container sees, the demo pods in `ipam list`/`history`, no session left
//! live, and every call in `audit query`. `demo status` prints the same tour. Then `demo down`
//! leaves no context (the previous current context is back, the file's comment kept), no
//! process, mount, link, netns or cgroup of the demo, and no berthctl link it made.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_e2e::testbed::{binary, require_root, workspace_root};

/// This instance's name (its node, run dir and context), bridge/subnet (10.244.250.0/24).
const NAME: &str = "demo-e2e";
const NET: &str = "250";
const CONTEXT: &str = "berth-demo-e2e";
const LINK: &str = "/usr/local/bin/berthctl";
/// The user's context file before the demo: a comment, a context of theirs, current.
const USER_CONFIG: &str = "# my contexts\ncurrent-context = \"lab\"\n\n[contexts.lab]\nendpoint = \"https://n1:7443\" # node 1\n";
/// The tour's commands after the program name, in the order printed.
const TOUR: [&str; 11] = [
    "node info",
    "logs ls shop/web-0",
    "logs tail -f shop/web-0 app app.log",
    "debug shop/web-0",
    "exec shop/web-0 -- ip -4 addr",
    "faketime get shop/clock-0",
    "faketime set shop/clock-0 +7d",
    "ipam list",
    "ipam history",
    "sessions ls",
    "audit query",
];
const DAY: i64 = 86_400;

struct Demo {
    config: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
    /// `demo down` ran (and was checked); otherwise dropping runs it, so a failed test
    /// leaves no demo behind.
    down: bool,
}

impl Drop for Demo {
    fn drop(&mut self) {
        if !self.down {
            let o = self.script("down");
            if !o.status.success() {
                eprintln!("scripts/demo down after a failure: {}", text(&o));
            }
        }
    }
}

impl Demo {
    fn script(&self, verb: &str) -> Output {
        Command::new(workspace_root().join("scripts/demo"))
            .arg(verb)
            .envs(self.env())
            .output()
            .expect("scripts/demo runs")
    }

    fn env(&self) -> Vec<(String, String)> {
        let path = std::env::var("PATH").unwrap_or_default();
        vec![
            ("BERTH_DEMO_NAME".into(), NAME.into()),
            ("BERTH_DEMO_NET".into(), NET.into()),
            ("BERTH_DEMO_PORT".into(), self.port.to_string()),
            // scripts/test built everything (and cargo test holds the build lock).
            ("BERTH_DEMO_PREBUILT".into(), "1".into()),
            ("BERTH_CONFIG".into(), self.config.display().to_string()),
            ("PATH".into(), format!("/usr/local/bin:{path}")),
        ]
    }

    /// A tour command as pasted into a shell.
    fn sh(&self, line: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(line)
            .envs(self.env())
            .env_remove("BERTH_ENDPOINT")
            .env_remove("BERTH_CONTEXT");
        c
    }

    fn run(&self, line: &str) -> String {
        let out = self.sh(line).stdin(Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn run_dir() -> PathBuf {
    workspace_root().join(".run").join(NAME)
}

fn node_dir() -> PathBuf {
    workspace_root().join(".run/testbed/nodes").join(NAME)
}

/// The tour in `demo up`/`status` output: (program, arguments, comment) per command line.
fn tour_lines(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip_while(|l| !l.starts_with("Try (as root):"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let (cmd, comment) = l.split_once("  # ").unwrap_or((l, ""));
            let cmd = cmd.trim();
            let (program, args) = cmd.split_once(' ').unwrap_or((cmd, ""));
            (
                program.to_string(),
                args.to_string(),
                comment.trim().to_string(),
            )
        })
        .collect()
}

/// `ns/name → IP` from the pod lines above the tour.
fn pod_ip(out: &str, pod: &str) -> String {
    let prefix = format!("  pod {pod} ");
    let line = out
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for pod {pod} in:\n{out}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn links() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

fn netns() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Processes whose command line names the demo's run or node dir.
fn demo_processes() -> Vec<String> {
    let dirs = [run_dir(), node_dir()].map(|d| d.display().to_string());
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if dirs.iter().any(|d| cmd.contains(d.as_str())) {
            found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
        }
    }
    found
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// clock-0's `date +%s`, read over CRI (the shim in the container, not berthctl).
fn clock_in_container() -> i64 {
    let cri = |args: &[&str]| -> String {
        let out = Command::new(binary("berth-cri"))
            .arg("--socket")
            .arg(node_dir().join("containerd.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "berth-cri {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pods = cri(&["pods"]);
    let pod = pods
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("shop/clock-0"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no shop/clock-0 in {pods}"))
        .to_string();
    let containers = cri(&["containers"]);
    let id = containers
        .lines()
        .find(|l| l.contains(&format!("pod={pod}")))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no container of {pod} in {containers}"))
        .to_string();
    cri(&["exec", &id, "--", "date", "+%s"])
        .trim()
        .parse()
        .unwrap()
}

/// Ctrl-C: SIGINT to the command's process group (the shell and berthctl), then reaped.
fn interrupt(child: &mut Child) {
    // SAFETY: kill(2) on the process group this test created for the child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let _ = child.wait();
}

/// `logs tail -f`: the lines already there, then at least two that are appended while it
/// runs; then Ctrl-C.
fn follow(demo: &Demo, line: &str) {
    let file = run_dir().join("filelogs/shop/web-0/app/app.log");
    let before = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .count()
        .min(10);
    let mut child = demo
        .sh(line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.len() < before + 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => {
                interrupt(&mut child);
                panic!("`{line}` printed {got:?} (the file had {before} lines to show first)")
            }
        }
    }
    interrupt(&mut child);
    assert!(
        got.iter().all(|l| l.contains(" accepted")),
        "not web-0's log lines: {got:?}"
    );
}

#[test]
#[ignore = "needs root and the test bed: run by scripts/test"]
fn demo_up_tour_and_down_leave_nothing_behind() {
    require_root();
    for b in ["berth-agent", "berthctl", "berth-cri"] {
        binary(b);
    }
    let user_demo = workspace_root().join(".run/demo/agent.pid");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("berth/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, USER_CONFIG).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut demo = Demo {
        config: config.clone(),
        port,
        _dir: dir,
        down: false,
    };
    // A leftover of an aborted run would carry stale pods: start clean.
    if run_dir().exists() || node_dir().exists() {
        let o = demo.script("down");
        assert!(o.status.success(), "cleaning a leftover demo: {}", text(&o));
        std::fs::write(&config, USER_CONFIG).unwrap();
    }
    let links_before = links();
    let netns_before = netns();
    let link_before = Path::new(LINK).symlink_metadata().is_ok();

    let started = Instant::now();
    let up = demo.script("up");
    let up_time = started.elapsed();
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.status.success(), "demo up failed:\n{}", text(&up));
    eprintln!("demo up took {up_time:?}:\n{out}");
    assert!(out.contains("up in "), "{out}");

    // The tour is the list, in order, each command as one pastes it.
    let tour = tour_lines(&out);
    let args: Vec<&str> = tour.iter().map(|(_, a, _)| a.as_str()).collect();
    assert_eq!(args, TOUR, "{out}");
    for (program, _, _) in &tour {
        if link_before {
            assert!(program.ends_with("berthctl"), "{program}");
        } else {
            // Nothing was at /usr/local/bin/berthctl: up put this build's berthctl there.
            assert_eq!(program, "berthctl", "{out}");
        }
    }
    let ip0 = pod_ip(&out, "shop/web-0");
    let ip1 = pod_ip(&out, "shop/web-1");
    let ipc = pod_ip(&out, "shop/clock-0");
    assert!(ip0.starts_with("10.244.250."), "{out}");
    // The live values beside the commands.
    let comment = |a: &str| &tour.iter().find(|(_, x, _)| x == a).unwrap().2;
    assert!(
        comment("node info").contains("cn:admin via mtls, roles admin"),
        "{out}"
    );
    assert!(
        comment("exec shop/web-0 -- ip -4 addr").contains(&format!("inet {ip0}/24")),
        "{out}"
    );
    assert!(
        comment("faketime get shop/clock-0").contains("+1d"),
        "{out}"
    );
    for (pod, ip) in [("web-0", &ip0), ("web-1", &ip1), ("clock-0", &ipc)] {
        assert!(
            comment("ipam list").contains(&format!("shop/{pod} {ip}")),
            "{out}"
        );
    }
    // The context is written and current; the user's context is still there.
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains(&format!("current-context = \"{CONTEXT}\""))
            && written.contains("[contexts.lab]"),
        "{written}"
    );

    let line = |a: &str| {
        let (p, args, _) = tour.iter().find(|(_, x, _)| x == a).unwrap();
        format!("{p} {args}")
    };
    let info = demo.run(&line("node info"));
    assert!(
        info.contains("cn:admin via mtls") && info.contains("admin"),
        "{info}"
    );
    let ls = demo.run(&line("logs ls shop/web-0"));
    assert!(ls.contains("app.log"), "{ls}");
    follow(&demo, &line("logs tail -f shop/web-0 app app.log"));

    // The debug shell, with a script on stdin instead of a terminal.
    let mut child = demo
        .sh(&line("debug shop/web-0"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ip -4 addr show eth0; exit 7\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("inet {ip0}/24")),
        "{}",
        text(&o)
    );

    let addr = demo.run(&line("exec shop/web-0 -- ip -4 addr"));
    assert!(addr.contains(&format!("inet {ip0}/24")), "{addr}");

    // faketime get: +1d, and the clock it reads is tomorrow's (either side of midnight).
    let day = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };
    let before = now();
    let got = demo.run(&line("faketime get shop/clock-0"));
    let after = now();
    assert!(got.contains("+1d") && got.contains("yes (glibc)"), "{got}");
    assert!(
        got.contains(&day(before + DAY)) || got.contains(&day(after + DAY)),
        "no date a day ahead in:\n{got}"
    );
    let inside = clock_in_container();
    assert!(
        (inside - now() - DAY).abs() <= 5,
        "clock-0 reads {inside}, a day ahead is {}",
        now() + DAY
    );

    let set = demo.run(&line("faketime set shop/clock-0 +7d"));
    assert!(set.contains("+7d"), "{set}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let inside = clock_in_container();
        if (inside - now() - 7 * DAY).abs() <= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clock-0 still reads {inside} after faketime set +7d"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let list = demo.run(&line("ipam list"));
    for (pod, ip) in [("web-0", &ip0), ("web-1", &ip1), ("clock-0", &ipc)] {
        assert!(
            list.lines()
                .any(|l| l.contains(ip.as_str()) && l.contains("allocated") && l.contains(pod)),
            "no allocation of {ip} to shop/{pod} in:\n{list}"
        );
    }
    let history = demo.run(&line("ipam history"));
    for pod in ["web-0", "web-1", "clock-0"] {
        assert!(
            history
                .lines()
                .any(|l| l.contains("allocate") && l.contains(pod)),
            "{history}"
        );
    }
    // The debug and exec sessions above ended with their commands.
    let sessions = demo.run(&line("sessions ls"));
    let mut rows = sessions.lines();
    assert!(rows.next().unwrap_or("").starts_with("ID"), "{sessions}");
    assert_eq!(rows.count(), 0, "live sessions left:\n{sessions}");

    // Each call is recorded when it ends: a stream's record comes a moment after its client
    // saw the end, so ask again until every call is there (at most 10 s).
    let methods = [
        "/berth.v1.Node/Info",
        "/berth.v1.Logs/List",
        "/berth.v1.Logs/Read",
        "/berth.v1.Debug/Attach",
        "/berth.v1.Debug/Exec",
        "/berth.v1.FakeTime/Get",
        "/berth.v1.FakeTime/Set",
        "/berth.v1.Ipam/List",
        "/berth.v1.Ipam/History",
        "/berth.v1.Debug/List",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = demo.run(&line("audit query"));
        let missing: Vec<&str> = methods
            .iter()
            .copied()
            .filter(|m| {
                !audit
                    .lines()
                    .any(|l| l.contains(m) && l.contains("cn:admin") && l.contains("allow"))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "calls by cn:admin missing from the audit: {missing:?}\n{audit}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // status: the same commands, with live values.
    let status = demo.script("status");
    assert!(status.status.success(), "{}", text(&status));
    let status_out = String::from_utf8_lossy(&status.stdout);
    let again: Vec<(String, String)> = tour_lines(&status_out)
        .into_iter()
        .map(|(p, a, _)| (p, a))
        .collect();
    let first: Vec<(String, String)> = tour
        .iter()
        .map(|(p, a, _)| (p.clone(), a.clone()))
        .collect();
    assert_eq!(again, first, "{status_out}");
    assert!(
        tour_lines(&status_out)
            .iter()
            .any(|(_, a, c)| a == "faketime get shop/clock-0" && c.contains("+7d")),
        "{status_out}"
    );

    let down = demo.script("down");
    demo.down = true;
    assert!(down.status.success(), "demo down failed:\n{}", text(&down));
    // The user's file as it was: their context current again, comments kept, ours gone.
    assert_eq!(std::fs::read_to_string(&config).unwrap(), USER_CONFIG);
    assert_eq!(demo_processes(), Vec::<String>::new());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    for d in [run_dir(), node_dir()] {
        assert!(
            !mounts.contains(&*d.to_string_lossy()),
            "mounts left under {}:\n{mounts}",
            d.display()
        );
        assert!(!d.exists(), "{} is left", d.display());
    }
    let left: Vec<String> = links().difference(&links_before).cloned().collect();
    assert!(left.is_empty(), "links left: {left:?}");
    assert!(!links().contains(&format!("berth{NET}")));
    assert_eq!(netns(), netns_before);
    assert_eq!(
        Path::new(LINK).symlink_metadata().is_ok(),
        link_before,
        "{LINK} is not as it was"
    );
    for ctrl in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cg = ctrl.path().join("berth-testbed").join(NAME);
        assert!(!cg.exists(), "cgroup {} is left", cg.display());
    }
    // A demo the user had up is untouched by all this.
    if user_demo.exists() {
        let pid = std::fs::read_to_string(&user_demo).unwrap();
        assert!(
            Path::new(&format!("/proc/{}", pid.trim())).exists(),
            "the user's demo agent is gone"
        );
    }

    // With the context gone and nothing named, berthctl says what it tried and what to do.
    let empty = demo._dir.path().join("empty.toml");
    let o = Command::new(binary("berthctl"))
        .args(["node", "info"])
        .env("BERTH_CONFIG", &empty)
        .env_remove("BERTH_ENDPOINT")
        .env_remove("BERTH_CONTEXT")
        .output()
        .unwrap();
    let msg = text(&o);
    assert!(!o.status.success(), "{msg}");
    assert!(
        !Path::new("/run/berth/api.sock").exists(),
        "an agent's socket is at /run/berth/api.sock on this machine (the test bed never makes one): berthctl would use it"
    );
    assert!(
        msg.contains("the local socket /run/berth/api.sock (absent)")
            && msg.contains(&format!(
                "current-context in {} (none set)",
                empty.display()
            ))
            && msg.contains("--endpoint unix://"),
        "{msg}"
    );
}
