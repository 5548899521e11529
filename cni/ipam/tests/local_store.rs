//! Local-store specifics: corrupt files are refused naming the file and left untouched;
//! leftovers of a killed writer do not matter.

mod conformance;

use std::sync::Arc;

use berth_ipam_core::store::local::LocalStore;
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
