//! Local-store specifics: corrupt files are refused naming the file and left untouched;
//! leftovers of a killed writer do not matter; the journal is replayed over the state file and
//! folded into it.

mod conformance;

use std::sync::Arc;

use berth_ipam_core::store::local::{JOURNAL_COMPACT_AFTER, LocalStore};
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::{Allocator, HistoryQuery, IpamError, ManualClock};

fn setup() -> (tempfile::TempDir, Arc<LocalStore>, berth_ipam_core::Ipam) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path(), HistoryLimits::default()));
    let ipam = conformance::ipam(store.clone(), Arc::new(ManualClock::new(conformance::t0())));
    (dir, store, ipam)
}

fn assert_corrupt_names(err: IpamError, file: &std::path::Path) {
    assert_eq!(err.cni_code(), 112);
    match &err {
        IpamError::CorruptStore { path, .. } => assert_eq!(path, file),
        other => panic!("expected CorruptStore, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn corrupt_state_file_is_refused_naming_it_and_never_reset() {
    let (_dir, store, ipam) = setup();
    ipam.allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    let path = store.state_path("net1");
    for garbage in [
        &b"{\"format\":\"berth-ipam/1\",\"leases\":[{\"ip\":"[..],
        b"",
        b"\x00\x01binary",
        b"{\"format\":\"other/9\",\"leases\":[]}",
    ] {
        std::fs::write(&path, garbage).unwrap();
        assert_corrupt_names(
            ipam.allocate(&conformance::req("net1", "c2", None))
                .unwrap_err(),
            &path,
        );
        assert_corrupt_names(ipam.release("net1", "c1", "eth0").unwrap_err(), &path);
        assert_corrupt_names(ipam.gc("net1", &[]).unwrap_err(), &path);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            garbage,
            "the corrupt file is left as it was"
        );
    }
}

#[test]
fn duplicate_address_in_state_file_is_corrupt() {
    let (_dir, store, ipam) = setup();
    ipam.allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    let path = store.state_path("net1");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let first = v["leases"][0].clone();
    v["leases"].as_array_mut().unwrap().push(first);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = store.read("net1").unwrap_err();
    assert!(
        matches!(&err, IpamError::CorruptStore { reason, .. } if reason.contains("listed twice")),
        "{err}"
    );
}

#[test]
fn leftovers_of_a_killed_writer_are_harmless() {
    let (dir, store, ipam) = setup();
    let a = ipam
        .allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    // A writer killed after writing its temp file but before rename, and a torn history line.
    std::fs::write(dir.path().join(".net1.json.tmp"), b"{\"half").unwrap();
    let hist = dir.path().join("net1.history.jsonl");
    let mut h = std::fs::read(&hist).unwrap();
    h.extend_from_slice(b"{\"time\":\"2026-");
    std::fs::write(&hist, &h).unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 1);
    let b = ipam
        .allocate(&conformance::req("net1", "c2", None))
        .unwrap();
    assert_ne!(a.address, b.address);
    let h = ipam.history("net1", &HistoryQuery::default()).unwrap();
    let cids: Vec<_> = h.iter().map(|e| e.container_id.clone().unwrap()).collect();
    assert_eq!(
        cids,
        ["c1", "c2"],
        "the torn line is cut off, the next event is whole"
    );
}

#[test]
fn corrupt_history_line_is_reported_but_does_not_block_allocation() {
    let (dir, _store, ipam) = setup();
    ipam.allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    let hist = dir.path().join("net1.history.jsonl");
    let mut h = b"not json\n".to_vec();
    h.extend(std::fs::read(&hist).unwrap());
    std::fs::write(&hist, &h).unwrap();
    assert_corrupt_names(
        ipam.history("net1", &HistoryQuery::default()).unwrap_err(),
        &hist,
    );
    ipam.allocate(&conformance::req("net1", "c2", None))
        .unwrap();
}

#[test]
fn unwritable_directory_is_an_io_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let store = Arc::new(LocalStore::new(file.join("sub"), HistoryLimits::default()));
    let ipam = conformance::ipam(store.clone(), Arc::new(ManualClock::new(conformance::t0())));
    let err = ipam
        .allocate(&conformance::req("net1", "c1", None))
        .unwrap_err();
    assert_eq!(err.cni_code(), 5);
    assert!(
        matches!(&err, IpamError::Io { path, .. } if path.starts_with(&file)),
        "{err:?}"
    );
    assert!(matches!(store.status(), Err(IpamError::Io { .. })));
}

fn state_file_leases(store: &LocalStore, net: &str) -> usize {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.state_path(net)).unwrap()).unwrap();
    v["leases"].as_array().unwrap().len()
}

fn journal_lines(store: &LocalStore, net: &str) -> Vec<serde_json::Value> {
    match std::fs::read(store.journal_path(net)) {
        Ok(text) => text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("every journal line is whole JSON"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn journal_holds_changes_until_they_are_folded_into_the_state_file() {
    let (_dir, store, ipam) = setup();
    // The first write creates the state file; later ones append a journal line each.
    ipam.allocate(&conformance::req("net1", "c0", None))
        .unwrap();
    assert_eq!(state_file_leases(&store, "net1"), 1);
    assert!(journal_lines(&store, "net1").is_empty());
    for i in 1..=5 {
        ipam.allocate(&conformance::req("net1", &format!("c{i}"), None))
            .unwrap();
    }
    ipam.release("net1", "c2", "eth0").unwrap();
    assert_eq!(state_file_leases(&store, "net1"), 1, "not compacted yet");
    let lines = journal_lines(&store, "net1");
    assert_eq!(lines.len(), 6);
    assert_eq!(
        lines[5]["deletes"].as_array().unwrap().len(),
        1,
        "{}",
        lines[5]
    );
    assert_eq!(
        store.read("net1").unwrap().len(),
        5,
        "readers replay the journal"
    );

    // Compaction: the journal empties and the state file holds everything.
    let mut i = 6;
    while !journal_lines(&store, "net1").is_empty() {
        assert!(
            i < 7 + JOURNAL_COMPACT_AFTER,
            "the journal was never folded into the state file"
        );
        ipam.allocate(&conformance::req("net1", &format!("c{i}"), None))
            .unwrap();
        i += 1;
    }
    let leases = store.read("net1").unwrap();
    assert_eq!(leases.len(), i - 1);
    assert_eq!(state_file_leases(&store, "net1"), leases.len());
    // Every change is still there: c2 released, the others allocated once.
    let attached: Vec<String> = leases
        .values()
        .filter_map(|l| l.attachment().map(|(c, _)| c.to_string()))
        .collect();
    assert_eq!(attached.len(), i - 1);
    assert!(!attached.contains(&"c2".to_string()));
}

#[test]
fn torn_journal_line_is_ignored_and_cut_off() {
    let (_dir, store, ipam) = setup();
    ipam.allocate(&conformance::req("net1", "c0", None))
        .unwrap();
    ipam.allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    // A writer killed mid-append: its line has no newline and was never acknowledged.
    let path = store.journal_path("net1");
    let mut j = std::fs::read(&path).unwrap();
    j.extend_from_slice(b"{\"puts\":[{\"ip\":\"10.");
    std::fs::write(&path, &j).unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 2);
    ipam.allocate(&conformance::req("net1", "c2", None))
        .unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 3);
    assert_eq!(journal_lines(&store, "net1").len(), 2, "torn line cut off");
}

#[test]
fn corrupt_journal_line_is_refused_naming_it_and_never_reset() {
    let (_dir, store, ipam) = setup();
    ipam.allocate(&conformance::req("net1", "c0", None))
        .unwrap();
    ipam.allocate(&conformance::req("net1", "c1", None))
        .unwrap();
    let path = store.journal_path("net1");
    let mut j = b"not json\n".to_vec();
    j.extend(std::fs::read(&path).unwrap());
    std::fs::write(&path, &j).unwrap();
    assert_corrupt_names(
        ipam.allocate(&conformance::req("net1", "c2", None))
            .unwrap_err(),
        &path,
    );
    assert_corrupt_names(store.read("net1").unwrap_err(), &path);
    assert_eq!(std::fs::read(&path).unwrap(), j, "left as it was");
}

#[test]
fn replaying_journal_lines_the_state_file_already_holds_changes_nothing() {
    // A compaction killed after renaming the new state file but before emptying the journal
    // (the state file written as version 1, which is read as it is).
    let (_dir, store, ipam) = setup();
    for i in 0..5 {
        ipam.allocate(&conformance::req("net1", &format!("c{i}"), None))
            .unwrap();
    }
    ipam.release("net1", "c1", "eth0").unwrap();
    ipam.allocate(&conformance::req("net1", "c5", None))
        .unwrap();
    let before = store.read("net1").unwrap();
    assert!(journal_lines(&store, "net1").len() >= 6);
    let state = serde_json::json!({
        "format": "berth-ipam/1",
        "leases": before.values().collect::<Vec<_>>(),
    });
    std::fs::write(
        store.state_path("net1"),
        serde_json::to_vec(&state).unwrap(),
    )
    .unwrap();
    assert_eq!(store.read("net1").unwrap(), before);
    // And the next transaction works on it.
    let next = ipam
        .allocate(&conformance::req("net1", "c6", None))
        .unwrap();
    assert!(!before.contains_key(&next.address.addr()));
}
