//! Faketime's second way in: containers whose entry point the shim does not cover (static,
//! Go, musl) get the vDSO of their entry-point process patched after it starts
//! ([`berth_faketime::vdso`]), so its wall clock follows the container's offset.
//!
//! - At CreateContainer such a container gets no shim: its entry is recorded as covered "by
//!   the vDSO" (`injected = false`, coverage covered) with its timestamp file kept on the host
//!   for bookkeeping only (nothing is mounted).
//! - At PostStartContainer the entry-point process (`Container.pid`, host pid namespace) is
//!   patched with the offset in force, under the state lock so that a concurrent `set` either
//!   comes first (and the patch carries its offset) or finds the patch.
//! - `set` / `clear` rewrite the offset in every process of the container that carries the
//!   patch: forked children have their own copy of the patched pages.
//! - `get` lists the container's processes and how each one's clock is shifted.
//!
//! The container's processes are found through their cgroup (`/proc/<pid>/cgroup` names the
//! container id, as containerd's cgroup paths do), plus the recorded entry point. Not reached:
//! programs started by `exec` after the patch (CRI exec, a shell running a command), which get
//! a fresh vDSO; they are listed as such.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use berth_common::error_chain;
use berth_faketime::Coverage;
use berth_faketime::vdso::{self, Carried, PatchError, SetOutcome};
use berth_nri::{Container, HandlerError, PodSandbox};
use serde::{Deserialize, Serialize};

use super::probe::inspect_process;
use super::service::{FakeTime, Injected};
use super::store::{CheckedAt, CoverageRecord, Entry, Store, now_rfc3339};
use crate::events::Record;

/// The entry point of a patched container, in its state dir (not mounted anywhere).
pub const ENTRY_POINT_FILE: &str = "entry-point.json";
/// How long PostStart waits for the runtime's init to exec the entry point.
pub const EXEC_WAIT: Duration = Duration::from_secs(1);

/// Whether this node can patch vDSOs (checked once when the agent starts).
#[derive(Debug, Clone)]
pub struct Vdso {
    kernel: Result<(), String>,
}

impl Vdso {
    /// `enabled` is `faketime.patch_vdso`. Checks this kernel's vDSO (layout, instructions,
    /// room, ptrace policy) on the agent's own, identical copy, writing nothing.
    pub fn new(enabled: bool) -> Vdso {
        let kernel = if enabled {
            vdso::check_kernel().map_err(|e| format!("this kernel's vDSO cannot be patched: {e}"))
        } else {
            Err("faketime.patch_vdso is false".to_string())
        };
        match &kernel {
            Ok(()) => tracing::info!(
                "faketime: static, Go and musl entry points are shifted by patching their vDSO"
            ),
            Err(e) => tracing::warn!(reason = %e,
                "faketime: static, Go and musl entry points cannot be shifted on this node"),
        }
        Vdso { kernel }
    }

    /// A node where the vDSO path is off, whatever the kernel (tests).
    pub fn off(reason: &str) -> Vdso {
        Vdso {
            kernel: Err(reason.to_string()),
        }
    }

    /// Why the vDSO path is off, if it is.
    pub fn unavailable(&self) -> Option<&str> {
        self.kernel.as_ref().err().map(String::as_str)
    }

    /// Whether an entry point judged `cov` gets its vDSO patched after it starts.
    pub fn will_patch(&self, cov: &Coverage) -> bool {
        self.kernel.is_ok() && cov.vdso_patchable()
    }
}

/// The coverage of an entry point the vDSO path takes over.
pub fn covered_record(cov: &Coverage, at: CheckedAt) -> CoverageRecord {
    let what = match cov {
        Coverage::Static => "statically linked (no ELF interpreter)".to_string(),
        Coverage::Musl { interpreter } => format!("linked against musl ({interpreter}), no shim"),
        Coverage::GoRuntime { interpreter } => {
            format!("a Go program ({interpreter}) that reads the vDSO itself, no shim")
        }
        other => other.reason(),
    };
    CoverageRecord {
        covered: true,
        reason: format!(
            "{what}: the vDSO of its entry point is patched when it starts; processes it \
             forks carry the patch, programs started later by exec run with the real clock"
        ),
        ..CoverageRecord::new(cov, at)
    }
}

/// An entry whose clock comes from the vDSO patch: covered without the shim.
pub fn is_vdso_entry(e: &Entry) -> bool {
    !e.injected && e.coverage.as_ref().is_some_and(|c| c.covered)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPoint {
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22: tells the entry point from a later process with its pid.
    pub start_time: u64,
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn read_entry_point(store: &Store, id: &str) -> Option<EntryPoint> {
    let b = std::fs::read(store.container_dir(id).join(ENTRY_POINT_FILE)).ok()?;
    let ep: EntryPoint = serde_json::from_slice(&b).ok()?;
    (start_time(ep.pid) == Some(ep.start_time)).then_some(ep)
}

/// Whether an entry point of container `id` was patched (also true for a container that got
/// the shim before it could be judged and turned out static).
pub fn patched_at_start(store: &Store, id: &str) -> bool {
    store.container_dir(id).join(ENTRY_POINT_FILE).exists()
}

fn write_entry_point(store: &Store, id: &str, ep: &EntryPoint) -> std::io::Result<()> {
    let dir = store.container_dir(id);
    let tmp = dir.join(format!(".{ENTRY_POINT_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(ep).expect("serialises"))?;
    std::fs::rename(&tmp, dir.join(ENTRY_POINT_FILE))
}

/// Whether a `/proc/<pid>/cgroup` text puts the process in container `id`: a path component
/// holds the id between non-alphanumeric characters (`cri-containerd-<id>.scope`, `<id>`).
/// Ids shorter than 12 characters are never matched: too likely to occur by chance.
pub fn cgroup_names(cgroup: &str, id: &str) -> bool {
    if id.len() < 12 {
        return false;
    }
    cgroup.lines().any(|l| {
        l.splitn(3, ':').nth(2).is_some_and(|path| {
            path.split('/').any(|c| {
                c.match_indices(id).any(|(at, _)| {
                    let before = c[..at].chars().next_back();
                    let after = c[at + id.len()..].chars().next();
                    !before.is_some_and(|b| b.is_ascii_alphanumeric())
                        && !after.is_some_and(|a| a.is_ascii_alphanumeric())
                })
            })
        })
    })
}

/// The container's processes: those whose cgroup names it, and its recorded entry point.
fn container_pids(store: &Store, id: &str) -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    if let Some(ep) = read_entry_point(store, id) {
        pids.insert(ep.pid);
    }
    if id.len() < 12 {
        return pids;
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for d in rd.flatten() {
        let Some(pid) = d.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(d.path().join("cgroup")).is_ok_and(|c| cgroup_names(&c, id)) {
            pids.insert(pid);
        }
    }
    pids
}

/// Waits (at most [`EXEC_WAIT`]) while `pid` is still the runtime's init that has not exec'd
/// the entry point yet: runc reports the start before its init calls exec. A patch made
/// before the exec would be lost with the old image.
fn wait_for_exec(pid: u32) {
    let deadline = Instant::now() + EXEC_WAIT;
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = exe.rsplit('/').next().unwrap_or("");
        let name = name.strip_suffix(" (deleted)").unwrap_or(name);
        let runtime = comm.starts_with("runc:[")
            || exe.starts_with("/memfd:")
            || matches!(name, "runc" | "crun" | "youki");
        if !runtime || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How one process of a container gets its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    pub pid: u32,
    /// `/proc/<pid>/exe`, as the container sees it.
    pub exe: String,
    /// `vdso` (its vDSO carries the container's patch), `shim` (the shim is loaded and covers
    /// it) or `none`.
    pub how: String,
    /// For `vdso`: the offset its patch carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<String>,
    pub reason: String,
}

/// The container's processes and how each one's clock is shifted (or why not).
pub fn processes(store: &Store, id: &str, e: &Entry) -> Vec<ProcessStatus> {
    let token = vdso::token_for(id);
    let entry_pid = read_entry_point(store, id).map(|ep| ep.pid);
    let mut out = Vec::new();
    for pid in container_pids(store, id) {
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
            continue; // exited, or a kernel thread
        };
        let exe = exe.to_string_lossy().into_owned();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let mut s = ProcessStatus {
            pid,
            exe,
            how: "none".into(),
            offset: None,
            reason: String::new(),
        };
        let carried = match vdso::carried_pid(pid) {
            Ok(Carried::Patch {
                token: t,
                offset_ns,
                complete,
            }) if t == token => Some((offset_ns, complete)),
            _ => None,
        };
        if let Some((offset_ns, true)) = carried {
            s.how = "vdso".into();
            s.offset = offset_ns.map(|o| berth_faketime::Offset::from_nanos(o).to_string());
            s.reason = if entry_pid == Some(pid) {
                "the entry point: its vDSO is patched".into()
            } else {
                "forked from a patched process: carries the vDSO patch".into()
            };
            out.push(s);
            continue;
        }
        let judged = inspect_process(pid);
        let shim = vdso::patch::shim_loaded(&maps);
        s.reason = match &judged {
            _ if carried.is_some() => {
                "berth's block is in its vDSO but not every jump: a patch was cut short".into()
            }
            Ok(c) if c.is_covered() && shim => {
                s.how = "shim".into();
                "the shim is preloaded".into()
            }
            Ok(c) if c.is_covered() => {
                "the shim is not loaded (LD_PRELOAD was removed, or the container has no shim)"
                    .into()
            }
            Ok(c) if is_vdso_entry(e) => format!(
                "started by exec after the container started (exec drops the vDSO patch): {}",
                c.reason()
            ),
            Ok(c) => c.reason(),
            Err(err) => format!("cannot judge its program: {}", error_chain(err)),
        };
        out.push(s);
    }
    out
}

/// Writes `offset_ns` into every process of container `id` that carries its patch. Repeats
/// the round while it changes something: a child forked from a process before that process
/// was updated carries the old offset, and the next round finds it. Processes that exit
/// meanwhile are skipped. Returns how many processes changed.
pub fn apply_offset(store: &Store, id: &str, offset_ns: i64) -> Result<usize, PatchError> {
    let token = vdso::token_for(id);
    let mut changed = 0;
    for _round in 0..4 {
        let mut this_round = 0;
        for pid in container_pids(store, id) {
            match vdso::set_offset_pid(pid, token, offset_ns) {
                Ok(SetOutcome::Changed) => this_round += 1,
                Ok(_) => {}
                Err(e) if e.is_gone() || matches!(e, PatchError::NoVdso) => {}
                Err(e) => return Err(e),
            }
        }
        changed += this_round;
        if this_round == 0 {
            break;
        }
    }
    Ok(changed)
}

impl FakeTime {
    /// CreateContainer of a container whose entry point only the vDSO patch can shift: its
    /// state without the shim (nothing to mount, no environment), patched at PostStart.
    /// The empty adjustment (not `None`) lets the caller undo this if another feature
    /// refuses the container.
    pub(super) fn vdso_planned(
        &self,
        pod: &PodSandbox,
        ctr: &Container,
        value: &str,
        mut entry: Entry,
        plan: &berth_faketime::plan::Plan,
    ) -> Result<Option<Injected>, HandlerError> {
        let dir = self.store.container_dir(&ctr.id);
        if let Err(e) = plan.prepare_host() {
            return Err(self.refuse(pod, ctr, value, &error_chain(&e)));
        }
        entry.injected = false;
        let id = ctr.id.clone();
        let kept = entry.clone();
        if let Err(e) = self.store.update(|m| {
            m.insert(id, kept);
        }) {
            let _ = berth_faketime::plan::remove_state_dir(&dir);
            return Err(self.refuse(pod, ctr, value, &error_chain(&e)));
        }
        let reason = entry.coverage.as_ref().map(|c| c.reason.clone());
        tracing::info!(namespace = %pod.namespace, pod = %pod.name, container = %ctr.name, id = %ctr.id,
            offset = %plan.offset, "faketime: the entry point's vDSO is patched when it starts");
        self.events.emit(Record {
            kind: "faketime_injected".into(),
            value: value.into(),
            path: dir.display().to_string(),
            reason: reason.unwrap_or_default(),
            ..Self::record(pod, ctr)
        });
        Ok(Some(Injected {
            mounts: Vec::new(),
            env: Vec::new(),
        }))
    }

    /// PostStartContainer: patches the entry point of a container planned for it, or of one
    /// that got the shim without being judged (no create-time probe) and turns out to be a
    /// static, Go or musl program without the shim loaded. Runs before the shim's own
    /// start-time check, which then finds the entry judged.
    pub(super) fn vdso_started(&self, ctr: &Container) {
        let Ok(entries) = self.store.read() else {
            return;
        };
        let Some(e) = entries.get(&ctr.id) else {
            return;
        };
        let planned = is_vdso_entry(e);
        let unjudged = e.injected && e.coverage.is_none();
        if !planned && !unjudged {
            return;
        }
        if ctr.pid == 0 {
            if planned {
                self.vdso_failed(ctr, e, "the runtime gave no pid for the entry point");
            }
            return;
        }
        wait_for_exec(ctr.pid);
        let cov = match inspect_process(ctr.pid) {
            Ok(c) => c,
            Err(err) if planned => {
                // judged at creation; the process itself is what gets patched
                tracing::debug!(id = %ctr.id, error = %error_chain(&err), "faketime: cannot judge the running entry point");
                Coverage::Static
            }
            Err(_) => return, // the shim's own check reports it
        };
        if unjudged && (cov.is_covered() || !self.vdso.will_patch(&cov)) {
            return;
        }
        let token = vdso::token_for(&ctr.id);
        let started = Instant::now();
        let id = ctr.id.clone();
        let result = self.store.update(|m| {
            let e = m.get_mut(&id)?;
            let r = vdso::patch_pid(ctr.pid, token, e.offset_ns);
            match &r {
                Ok(p) => {
                    if unjudged {
                        e.coverage = Some(covered_record(&cov, CheckedAt::Start));
                        e.note = format!(
                            "the shim was injected but cannot work for the entry point ({}); its vDSO is patched instead",
                            cov.reason()
                        );
                    } else {
                        e.note = String::new();
                    }
                    e.updated_at = now_rfc3339();
                    Some(Ok(*p))
                }
                Err(err) => Some(Err(err.to_string())),
            }
        });
        let patched = match result {
            Ok(Some(r)) => r,
            Ok(None) => return, // removed meanwhile
            Err(err) => {
                tracing::error!(id = %ctr.id, error = %error_chain(&err), "faketime: cannot record the vDSO patch");
                return;
            }
        };
        match patched {
            Ok(p) => {
                if let Some(st) = start_time(ctr.pid) {
                    let ep = EntryPoint {
                        pid: ctr.pid,
                        start_time: st,
                    };
                    if let Err(err) = write_entry_point(&self.store, &ctr.id, &ep) {
                        tracing::warn!(id = %ctr.id, error = %err, "faketime: cannot record the entry point");
                    }
                }
                tracing::info!(id = %ctr.id, pid = ctr.pid, vdso = format!("{:#x}", p.vdso),
                    retries = p.retries, patch_us = started.elapsed().as_micros() as u64,
                    "faketime: the entry point's vDSO is patched");
                self.events.emit(Record {
                    kind: "faketime_vdso_patched".into(),
                    reason: format!("pid {}", ctr.pid),
                    ..entry_record(e, &ctr.id)
                });
            }
            Err(reason) if planned => self.vdso_failed(ctr, e, &reason),
            Err(reason) => {
                // the shim's own check sets the offset to 0 and says why
                tracing::info!(id = %ctr.id, reason, "faketime: the vDSO of an unjudged entry point was not patched");
            }
        }
    }

    /// A planned container whose entry point could not be patched: real clock, said why.
    fn vdso_failed(&self, ctr: &Container, e: &Entry, why: &str) {
        let note = format!(
            "the vDSO of the entry point was not patched, it runs with the real clock: {why}"
        );
        let id = ctr.id.clone();
        let n = note.clone();
        let _ = self.store.update(|m| {
            if let Some(e) = m.get_mut(&id) {
                if let Some(c) = e.coverage.as_mut() {
                    c.covered = false;
                    c.checked_at = CheckedAt::Start;
                }
                e.note = n;
                e.updated_at = now_rfc3339();
            }
        });
        tracing::warn!(id = %ctr.id, reason = why, "faketime: the entry point's vDSO was not patched");
        if self.cfg.on_uncovered == crate::config::OnUncovered::Refuse {
            tracing::error!(id = %ctr.id, "faketime: on_uncovered = \"refuse\" cannot stop a container that already runs");
        }
        self.events.emit(Record {
            kind: "faketime_uncovered".into(),
            reason: note,
            ..entry_record(e, &ctr.id)
        });
    }

    /// Synchronize: patches running containers planned for the vDSO whose entry point does
    /// not carry the patch yet (the agent was away at their PostStart).
    pub(super) fn vdso_synchronize(&self, containers: &[Container]) {
        let Ok(entries) = self.store.read() else {
            return;
        };
        for c in containers {
            let Some(e) = entries.get(&c.id) else {
                continue;
            };
            if !is_vdso_entry(e) || c.pid == 0 {
                continue;
            }
            let token = vdso::token_for(&c.id);
            let carried = vdso::carried_pid(c.pid);
            if matches!(carried, Ok(Carried::Patch { token: t, complete: true, .. }) if t == token)
            {
                continue;
            }
            self.vdso_started(c);
        }
    }
}

fn entry_record(e: &Entry, id: &str) -> Record {
    Record {
        namespace: e.namespace.clone(),
        pod: e.pod.clone(),
        pod_uid: e.pod_uid.clone(),
        container: e.container.clone(),
        container_id: id.to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{FakeTimeConfig, OnUncovered};
    use crate::events::EventLog;
    use crate::faketime::control::{Control, Target};
    use crate::faketime::probe::{Judging, ProbeError, RootfsProbe};
    use crate::retention::SystemClock;
    use std::io::{BufRead, BufReader, Write};
    use std::path::Path;
    use std::process::{Child, ChildStdin, Command, Stdio};
    use std::sync::{Arc, mpsc};

    /// Judges every entry point the same (None: cannot judge before start). The agent's
    /// plugin asks it and hands the answer to `create_container`; these tests do the same.
    struct Judge(Option<Coverage>);

    impl Judge {
        fn answer(&self) -> Option<Result<Coverage, ProbeError>> {
            Some(match &self.0 {
                Some(c) => Ok(c.clone()),
                None => Err(ProbeError::NotJudged),
            })
        }
    }

    impl RootfsProbe for Judge {
        fn inspect<'a>(&'a self, _: &'a Container) -> Judging<'a> {
            let answer = self.answer().expect("always Some");
            Box::pin(async move { answer })
        }
    }

    fn faketime(judge: Option<Coverage>, tmp: &Path) -> FakeTime {
        let ft = FakeTime::new(
            FakeTimeConfig {
                on_uncovered: OnUncovered::RunUnfaked,
                ..FakeTimeConfig::default()
            },
            tmp,
            &tmp.join("faketime"),
            Arc::new(Judge(judge)),
            Arc::new(EventLog::new(tmp)),
            Arc::new(SystemClock),
        )
        .unwrap();
        assert_eq!(
            ft.vdso.unavailable(),
            None,
            "these tests need a kernel whose vDSO berth can patch"
        );
        ft
    }

    fn pod() -> PodSandbox {
        PodSandbox {
            id: "pod1".into(),
            name: "clock-0".into(),
            namespace: "shop".into(),
            uid: "uid-1".into(),
            annotations: [("berth.io/faketime".to_string(), "+2d".to_string())].into(),
            ..Default::default()
        }
    }

    fn ctr(pid: u32) -> Container {
        Container {
            id: "c0ffee0000000000000000000000000000000000000000000000000000000001".into(),
            pod_sandbox_id: "pod1".into(),
            name: "app".into(),
            args: vec!["/bin/busybox".into()],
            pid,
            ..Default::default()
        }
    }

    /// The static busybox shell, answering `eval`d lines (its `date` runs in a forked child).
    struct Shell {
        child: Child,
        stdin: ChildStdin,
        lines: mpsc::Receiver<String>,
    }

    impl Shell {
        fn start() -> Shell {
            let mut child = Command::new("/bin/busybox")
                .args(["sh", "-c", "echo ready; while read c; do eval \"$c\"; done"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("/bin/busybox (busybox-static, scripts/lib/install.sh)");
            let stdin = child.stdin.take().unwrap();
            let out = child.stdout.take().unwrap();
            let (tx, lines) = mpsc::channel();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
            });
            let s = Shell {
                child,
                stdin,
                lines,
            };
            assert_eq!(
                s.lines.recv_timeout(Duration::from_secs(10)).unwrap(),
                "ready"
            );
            s
        }
        /// Its `date +%s` minus this process's clock, in seconds.
        fn offset(&mut self) -> i64 {
            writeln!(self.stdin, "date +%s").unwrap();
            let theirs: i64 = self
                .lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap()
                .parse()
                .unwrap();
            let ours = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            theirs - ours
        }
    }

    impl Drop for Shell {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn near(got: i64, want: i64) {
        assert!((got - want).abs() <= 2, "offset {got} s, want {want} s");
    }

    const DAY: i64 = 86_400;

    #[test]
    fn a_static_entry_point_is_patched_at_start_and_follows_set_and_clear() {
        let tmp = tempfile::tempdir().unwrap();
        let ft = faketime(Some(Coverage::Static), tmp.path());
        let p = pod();
        // CreateContainer: covered through the vDSO, nothing mounted, no environment
        let inj = ft
            .create_container(&p, &ctr(0), Judge(Some(Coverage::Static)).answer(), 0)
            .unwrap()
            .expect("an (empty) adjustment");
        assert!(inj.mounts.is_empty() && inj.env.is_empty(), "{inj:?}");
        let id = ctr(0).id;
        let e = ft.store().read().unwrap()[&id].clone();
        assert!(!e.injected && is_vdso_entry(&e));
        assert_eq!(e.coverage.as_ref().unwrap().kind, "static");
        assert!(e.coverage.as_ref().unwrap().reason.contains("vDSO"));

        // PostStart: the running entry point is patched with the offset in force
        let mut sh = Shell::start();
        near(sh.offset(), 0);
        ft.container_started(&ctr(sh.child.id()));
        near(sh.offset(), 2 * DAY);
        let e = ft.store().read().unwrap()[&id].clone();
        assert!(e.note.is_empty(), "{}", e.note);
        assert!(
            ft.store()
                .container_dir(&id)
                .join(ENTRY_POINT_FILE)
                .exists()
        );

        // set and clear reach the running process; get lists it
        let control = Control::new(tmp.path());
        let t = Target {
            namespace: "shop",
            pod: "clock-0",
            container: None,
        };
        let st = control.set(&t, "+10d".parse().unwrap()).unwrap();
        near(sh.offset(), 10 * DAY);
        let procs = &st[0].processes;
        let me = procs
            .iter()
            .find(|s| s.pid == sh.child.id())
            .unwrap_or_else(|| panic!("{procs:?}"));
        assert_eq!(
            (me.how.as_str(), me.offset.as_deref()),
            ("vdso", Some("+10d"))
        );
        assert!(me.exe.ends_with("/busybox"), "{}", me.exe);
        assert_eq!(st[0].covered, Some(true));
        control.clear(&t).unwrap();
        near(sh.offset(), 0);
        // a second PostStart (a replayed event) changes nothing
        ft.container_started(&ctr(sh.child.id()));
        near(sh.offset(), 0);
        ft.container_removed(&ctr(sh.child.id()));
        assert!(!ft.store().container_dir(&id).exists());
    }

    #[test]
    fn an_entry_point_that_cannot_be_patched_is_reported_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let ft = faketime(Some(Coverage::Static), tmp.path());
        let id = ctr(0).id;
        // no pid from the runtime
        ft.create_container(&pod(), &ctr(0), Judge(Some(Coverage::Static)).answer(), 0)
            .unwrap();
        ft.container_started(&ctr(0));
        let e = ft.store().read().unwrap()[&id].clone();
        assert!(!e.coverage.as_ref().unwrap().covered);
        assert!(e.note.contains("the runtime gave no pid"), "{}", e.note);
        // a process with the shim loaded (its libc would be shifted twice)
        ft.container_removed(&ctr(0));
        ft.create_container(&pod(), &ctr(0), Judge(Some(Coverage::Static)).answer(), 0)
            .unwrap();
        let shim = tmp.path().join("faketime/libberth-faketime.so");
        let mut sleeper = Command::new("sleep")
            .arg("30")
            .env("LD_PRELOAD", &shim)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(format!("/proc/{}/maps", sleeper.id()))
            .unwrap_or_default()
            .contains("libberth-faketime")
        {
            assert!(Instant::now() < deadline, "the shim never loaded");
            std::thread::sleep(Duration::from_millis(10));
        }
        ft.container_started(&ctr(sleeper.id()));
        let e = ft.store().read().unwrap()[&id].clone();
        assert!(!e.coverage.as_ref().unwrap().covered);
        assert!(e.note.contains("shim is loaded"), "{}", e.note);
        assert_eq!(vdso::carried_pid(sleeper.id()).unwrap(), Carried::Nothing);
        let events = std::fs::read_to_string(tmp.path().join("events.jsonl")).unwrap();
        assert!(events.contains("faketime_uncovered"), "{events}");
        // set has nothing to move now
        let control = Control::new(tmp.path());
        let t = Target {
            namespace: "shop",
            pod: "clock-0",
            container: Some("app"),
        };
        assert!(control.set(&t, "+1d".parse().unwrap()).is_err());
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
    }

    #[test]
    fn an_unjudged_static_entry_point_with_the_shim_is_patched_instead_of_zeroed() {
        let tmp = tempfile::tempdir().unwrap();
        let ft = faketime(None, tmp.path());
        let inj = ft
            .create_container(&pod(), &ctr(0), Judge(None).answer(), 0)
            .unwrap()
            .unwrap();
        assert_eq!(inj.mounts.len(), 2, "the shim, injected before judging");
        let mut sh = Shell::start();
        ft.container_started(&ctr(sh.child.id()));
        near(sh.offset(), 2 * DAY);
        let e = ft.store().read().unwrap()[&ctr(0).id].clone();
        let cov = e.coverage.unwrap();
        assert_eq!((cov.covered, cov.kind.as_str()), (true, "static"));
        assert_eq!(cov.checked_at, CheckedAt::Start);
        assert_eq!(e.offset_ns, 2 * DAY * 1_000_000_000, "the offset is kept");
        assert!(e.note.contains("vDSO is patched instead"), "{}", e.note);
    }

    #[test]
    fn cgroups_are_matched_on_whole_ids() {
        let id = "4f1c2e9ab0d34c5e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e";
        for yes in [
            format!("0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{id}.scope\n"),
            format!("0::/kubepods/besteffort/pod123/{id}\n"),
            format!("12:pids:/k8s.io/{id}\n11:memory:/k8s.io/{id}\n"),
        ] {
            assert!(cgroup_names(&yes, id), "{yes}");
        }
        for no in [
            "0::/user.slice/user-0.slice/session-3.scope\n".to_string(),
            format!("0::/k8s.io/{id}0\n"),
            format!("0::/k8s.io/x{id}\n"),
            format!("0::/k8s.io/{}\n", &id[..40]),
        ] {
            assert!(!cgroup_names(&no, id), "{no}");
        }
        // short ids never match
        assert!(!cgroup_names("0::/session-c1.scope\n", "c1"));
    }

    #[test]
    fn the_own_process_has_a_start_time_and_is_not_a_runtime_init() {
        let me = std::process::id();
        assert!(start_time(me).is_some_and(|t| t > 0));
        let t0 = Instant::now();
        wait_for_exec(me);
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "no wait for a program that runs"
        );
        assert_eq!(start_time(u32::MAX / 2), None);
    }

    #[test]
    fn vdso_entries_are_covered_without_the_shim() {
        let rec = covered_record(&Coverage::Static, CheckedAt::Create);
        assert!(rec.covered);
        assert_eq!(rec.kind, "static");
        assert!(rec.reason.contains("vDSO"), "{}", rec.reason);
        let mut e = Entry {
            namespace: "ns".into(),
            pod: "p".into(),
            pod_uid: "u".into(),
            container: "c".into(),
            offset_ns: 0,
            injected: false,
            coverage: Some(rec),
            note: String::new(),
            updated_at: now_rfc3339(),
        };
        assert!(is_vdso_entry(&e));
        e.injected = true;
        assert!(!is_vdso_entry(&e), "the shim's");
        e.injected = false;
        e.coverage.as_mut().unwrap().covered = false;
        assert!(!is_vdso_entry(&e), "uncovered");
        let off = Vdso::off("tests");
        assert!(!off.will_patch(&Coverage::Static));
        assert_eq!(off.unavailable(), Some("tests"));
    }
}
