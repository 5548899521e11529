//! Local-store specifics: corrupt files are refused naming the file and left untouched;
//! leftovers of a killed writer do not matter; the journal is replayed over the state file and
//! folded into it.

mod conformance;

use std::sync::Arc;

use berth_ipam_core::store::local::{JOURNAL_COMPACT_AFTER, LocalStore};
use berth_ipam_core::store::{HistoryLimits, Store};
use berth_ipam_core::{Allocator, HistoryQuery, IpamError, ManualClock};
use conformance::AllocateOne;

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
    ipam.allocate_one(&conformance::req("net1", "c1", None))
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
            ipam.allocate_one(&conformance::req("net1", "c2", None))
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
fn leftovers_of_a_killed_writer_are_harmless() {
    let (dir, store, ipam) = setup();
    let a = ipam
        .allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    // A writer killed after writing its temp file but before rename, and a torn history line.
    std::fs::write(dir.path().join(".net1.leases.tmp"), b"berth-ipam/3\n+ 10.").unwrap();
    let hist = dir.path().join("net1.history.jsonl");
    let mut h = std::fs::read(&hist).unwrap();
    h.extend_from_slice(b"{\"time\":\"2026-");
    std::fs::write(&hist, &h).unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 1);
    let b = ipam
        .allocate_one(&conformance::req("net1", "c2", None))
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
    ipam.allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    let hist = dir.path().join("net1.history.jsonl");
    let mut h = b"not json\n".to_vec();
    h.extend(std::fs::read(&hist).unwrap());
    std::fs::write(&hist, &h).unwrap();
    assert_corrupt_names(
        ipam.history("net1", &HistoryQuery::default()).unwrap_err(),
        &hist,
    );
    ipam.allocate_one(&conformance::req("net1", "c2", None))
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
        .allocate_one(&conformance::req("net1", "c1", None))
        .unwrap_err();
    assert_eq!(err.cni_code(), 5);
    assert!(
        matches!(&err, IpamError::Io { path, .. } if path.starts_with(&file)),
        "{err:?}"
    );
    assert!(matches!(store.status(), Err(IpamError::Io { .. })));
}

/// The number of leases in the state file (its prefix says).
fn state_file_leases(store: &LocalStore, net: &str) -> usize {
    let bytes = std::fs::read(store.state_path(net)).unwrap();
    assert!(bytes.starts_with(b"berth-ipam/3\n"), "{bytes:?}");
    u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize
}

/// The journal's lines, each a transaction's records joined by tabs.
fn journal_lines(store: &LocalStore, net: &str) -> Vec<String> {
    match std::fs::read_to_string(store.journal_path(net)) {
        Ok(text) => {
            assert!(text.is_empty() || text.ends_with('\n'), "whole lines");
            text.lines().map(str::to_string).collect()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn journal_holds_changes_until_they_are_folded_into_the_state_file() {
    let (_dir, store, ipam) = setup();
    // The first write creates the state file; later ones append a journal line each.
    ipam.allocate_one(&conformance::req("net1", "c0", None))
        .unwrap();
    assert_eq!(state_file_leases(&store, "net1"), 1);
    assert!(journal_lines(&store, "net1").is_empty());
    for i in 1..=5 {
        ipam.allocate_one(&conformance::req("net1", &format!("c{i}"), None))
            .unwrap();
    }
    ipam.release("net1", "c2", "eth0").unwrap();
    assert_eq!(state_file_leases(&store, "net1"), 1, "not compacted yet");
    let lines = journal_lines(&store, "net1");
    assert_eq!(lines.len(), 6);
    assert!(
        lines[5].starts_with("- 10."),
        "a DEL without hold deletes: {}",
        lines[5]
    );
    assert!(
        lines[..5].iter().all(|l| l.starts_with("+ 10.")),
        "{lines:?}"
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
        ipam.allocate_one(&conformance::req("net1", &format!("c{i}"), None))
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
    ipam.allocate_one(&conformance::req("net1", "c0", None))
        .unwrap();
    ipam.allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    // A writer killed mid-append: its line has no newline and was never acknowledged.
    let path = store.journal_path("net1");
    let mut j = std::fs::read(&path).unwrap();
    j.extend_from_slice(b"+ 10.0.0.9 a 0 17");
    std::fs::write(&path, &j).unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 2);
    ipam.allocate_one(&conformance::req("net1", "c2", None))
        .unwrap();
    assert_eq!(store.read("net1").unwrap().len(), 3);
    assert_eq!(journal_lines(&store, "net1").len(), 2, "torn line cut off");
}

#[test]
fn corrupt_journal_line_is_refused_naming_it_and_never_reset() {
    let (_dir, store, ipam) = setup();
    ipam.allocate_one(&conformance::req("net1", "c0", None))
        .unwrap();
    ipam.allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    let path = store.journal_path("net1");
    let mut j = b"not json\n".to_vec();
    j.extend(std::fs::read(&path).unwrap());
    std::fs::write(&path, &j).unwrap();
    assert_corrupt_names(
        ipam.allocate_one(&conformance::req("net1", "c2", None))
            .unwrap_err(),
        &path,
    );
    assert_corrupt_names(store.read("net1").unwrap_err(), &path);
    assert_eq!(std::fs::read(&path).unwrap(), j, "left as it was");
}

#[test]
fn an_earlier_format_is_read_as_it_is_and_migrated_by_the_first_write() {
    let (_dir, store, ipam) = setup();
    for i in 0..4 {
        ipam.allocate_one(&conformance::req("net1", &format!("c{i}"), None))
            .unwrap();
    }
    ipam.release("net1", "c1", "eth0").unwrap();
    let before = store.read("net1").unwrap();
    // The same leases as a version 2 store: a state file with two of them, and a journal
    // line that puts the rest and deletes an address the state file lists.
    let mut in_state: Vec<_> = before.values().take(2).cloned().collect();
    let stale = berth_ipam_core::Lease {
        ip: "10.50.99.9".parse().unwrap(),
        state: berth_ipam_core::LeaseState::Reserved {
            until: None,
            note: None,
        },
        ..in_state[0].clone()
    };
    in_state.push(stale.clone());
    let in_journal: Vec<_> = before.values().skip(2).cloned().collect();
    std::fs::remove_file(store.state_path("net1")).unwrap();
    std::fs::remove_file(store.journal_path("net1")).unwrap();
    let legacy_state = store.legacy_state_path("net1");
    std::fs::write(
        &legacy_state,
        serde_json::to_vec(&serde_json::json!({"format": "berth-ipam/2", "leases": in_state}))
            .unwrap(),
    )
    .unwrap();
    let mut line =
        serde_json::to_vec(&serde_json::json!({"puts": in_journal, "deletes": [stale.ip]}))
            .unwrap();
    line.push(b'\n');
    std::fs::write(store.legacy_journal_path("net1"), &line).unwrap();

    // Readers see it as it is, and leave it.
    assert_eq!(store.read("net1").unwrap(), before);
    assert!(!store.state_path("net1").exists());
    // The first transaction migrates it: the leases in the new files, the old journal gone,
    // and a state file that a build of the old format refuses.
    let next = ipam
        .allocate_one(&conformance::req("net1", "c9", None))
        .unwrap();
    assert!(!before.contains_key(&next.address.addr()));
    let after = store.read("net1").unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert!(before.iter().all(|(ip, l)| after.get(ip) == Some(l)));
    assert!(!store.legacy_journal_path("net1").exists());
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&legacy_state).unwrap()).unwrap();
    assert_eq!(marker["format"], "berth-ipam/3");
    assert_eq!(marker["leases"], serde_json::json!([]));
    assert_eq!(store.networks().unwrap(), ["net1"]);

    // The marker without the state file it points to is corrupt, never an empty network.
    std::fs::remove_file(store.state_path("net1")).unwrap();
    std::fs::remove_file(store.journal_path("net1")).unwrap();
    assert_corrupt_names(store.read("net1").unwrap_err(), &store.state_path("net1"));
    assert_corrupt_names(
        ipam.allocate_one(&conformance::req("net1", "c10", None))
            .unwrap_err(),
        &store.state_path("net1"),
    );
}

#[test]
fn a_new_network_gets_the_marker_that_old_builds_refuse() {
    let (_dir, store, ipam) = setup();
    ipam.allocate_one(&conformance::req("net1", "c1", None))
        .unwrap();
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.legacy_state_path("net1")).unwrap()).unwrap();
    assert_eq!(marker["format"], "berth-ipam/3");
}
