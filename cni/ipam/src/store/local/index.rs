//! A network's leases as a transaction sees them: the state file's headers with the
//! journal's records replayed over them, by address. Answers a decision's questions
//! ([`LeaseView`]) from the [`Fields`] and decodes only the leases it hands out.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::records::{Body, Fields, Kind, Op, Record, attachment_key, nanos, parse_record};
use super::records::{pool_key, sticky_key};
use super::state_file::{self, StateFile};
use crate::error::IpamError;
use crate::pool::Family;
use crate::state::{Lease, Leases, Plan, Sticky};
use crate::view::LeaseView;

pub(super) struct Index<'a> {
    records: Vec<(IpAddr, Record<'a>)>,
    state: Option<&'a StateFile>,
    /// The state file's body block, once something needed all of it.
    bodies: OnceCell<Vec<u8>>,
    state_path: &'a Path,
    journal_path: &'a Path,
}

impl<'a> Index<'a> {
    /// The state file's headers (`None`: the network has none yet) with the journal's
    /// complete lines replayed over them. Returns the index and the number of journal lines.
    pub fn load(
        state: Option<&'a StateFile>,
        journal: &'a [u8],
        state_path: &'a Path,
        journal_path: &'a Path,
    ) -> Result<(Index<'a>, usize), IpamError> {
        let mut records = match state {
            Some(s) => s.records()?,
            None => Vec::new(),
        };
        // The journal's changes, then one merge into the state's sorted records.
        let mut changes: BTreeMap<IpAddr, Option<Record<'a>>> = BTreeMap::new();
        let mut lines = 0;
        let mut rest = journal;
        while !rest.is_empty() {
            let at = |e: String| IpamError::CorruptStore {
                path: journal_path.to_path_buf(),
                reason: format!("line {}: {e}", lines + 1),
            };
            let (op, after) = parse_record(rest).map_err(at)?;
            match op {
                Op::Put(ip, r) => changes.insert(ip, Some(r)),
                Op::Delete(ip) => changes.insert(ip, None),
            };
            match after.split_first() {
                Some((b'\t', tail)) => rest = tail,
                Some((b'\n', tail)) => {
                    lines += 1;
                    rest = tail;
                }
                _ => return Err(at("a record is not followed by a tab or a line end".into())),
            }
        }
        // Changes of leases the state file has are made in place (a hold taken, an
        // allocation released into its hold); new and deleted addresses cost one pass.
        let mut inserts = Vec::new();
        let mut deleted = Vec::new();
        for (ip, change) in changes {
            match (records.binary_search_by_key(&ip, |(ip, _)| *ip), change) {
                (Ok(i), Some(r)) => records[i].1 = r,
                (Ok(i), None) => deleted.push(i),
                (Err(_), Some(r)) => inserts.push((ip, r)),
                (Err(_), None) => {}
            }
        }
        if !deleted.is_empty() {
            let mut n = 0;
            records.retain(|_| {
                n += 1;
                deleted.binary_search(&(n - 1)).is_err()
            });
        }
        if !inserts.is_empty() {
            records.extend(inserts);
            records.sort_unstable_by_key(|(ip, _)| *ip);
        }
        let index = Index {
            records,
            state,
            bodies: OnceCell::new(),
            state_path,
            journal_path,
        };
        index.check_attachments()?;
        Ok((index, lines))
    }

    fn lookup(&self, ip: IpAddr) -> Option<&Record<'a>> {
        self.records
            .binary_search_by_key(&ip, |(ip, _)| *ip)
            .ok()
            .map(|i| &self.records[i].1)
    }

    /// Refuses a state in which one attachment holds two addresses of one IP family
    /// (decoding only the leases whose attachment keys collide).
    fn check_attachments(&self) -> Result<(), IpamError> {
        // Every transaction runs this: sorted keys, no allocation per lease.
        let mut keys: Vec<(u64, IpAddr)> = self
            .records
            .iter()
            .filter_map(|(ip, r)| r.fields.attachment.map(|k| (k, *ip)))
            .collect();
        keys.sort_unstable();
        for run in keys.chunk_by(|a, b| a.0 == b.0).filter(|run| run.len() > 1) {
            let mut attachments = std::collections::BTreeSet::new();
            for (_, ip) in run {
                let (r, l) = self.decode_at(*ip)?;
                if let Some((c, i)) = l.attachment()
                    && !attachments.insert((c.to_string(), i.to_string(), Family::of(l.ip)))
                {
                    return Err(self.corrupt(
                        &r,
                        format!(
                            "attachment {c}/{i} holds two {} addresses",
                            Family::of(l.ip)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn corrupt(&self, r: &Record<'_>, reason: String) -> IpamError {
        let path = match r.body {
            Body::Journal(_) => self.journal_path,
            Body::State { .. } => self.state_path,
        };
        IpamError::CorruptStore {
            path: path.to_path_buf(),
            reason,
        }
    }

    /// The state file's body block, read once.
    fn all_bodies(&self) -> Result<&[u8], IpamError> {
        if let Some(b) = self.bodies.get() {
            return Ok(b);
        }
        let b = match self.state {
            Some(s) => s.bodies()?,
            None => Vec::new(),
        };
        Ok(self.bodies.get_or_init(|| b))
    }

    /// A record's JSON: from the journal's bytes, the body block if it was read, or the file.
    fn body(&self, r: &Record<'a>) -> Result<Cow<'_, [u8]>, IpamError> {
        match (r.body, self.state) {
            (Body::Journal(b), _) => Ok(Cow::Borrowed(b)),
            (Body::State { offset, len }, Some(s)) => match self.bodies.get() {
                Some(all) => Ok(Cow::Borrowed(slice(all, offset, len))),
                None => Ok(Cow::Owned(s.body(offset, len)?)),
            },
            (Body::State { .. }, None) => unreachable!("state records come from a state file"),
        }
    }

    fn decode_at(&self, ip: IpAddr) -> Result<(Record<'a>, Lease), IpamError> {
        let r = *self.lookup(ip).expect("an address of the index");
        Ok((r, self.decode(ip, &r)?))
    }

    /// The lease behind a record; a lease that disagrees with its fields is corrupt.
    fn decode(&self, ip: IpAddr, r: &Record<'a>) -> Result<Lease, IpamError> {
        let body = self.body(r)?;
        let l: Lease = serde_json::from_slice(&body)
            .map_err(|e| self.corrupt(r, format!("the lease of {ip} does not parse: {e}")))?;
        if l.ip == ip && Fields::of(&l) == r.fields {
            Ok(l)
        } else {
            Err(self.corrupt(r, format!("the header of {ip} does not match its lease")))
        }
    }

    /// The state file's bytes after `plan`: unchanged leases keep their JSON as it is.
    pub fn compacted(&self, plan: &Plan) -> Result<Vec<u8>, IpamError> {
        let all = if self
            .records
            .iter()
            .any(|(_, r)| matches!(r.body, Body::State { .. }))
        {
            self.all_bodies()?
        } else {
            &[]
        };
        let put: BTreeMap<IpAddr, (Fields, Vec<u8>)> = plan
            .puts
            .iter()
            .map(|l| {
                let json = serde_json::to_vec(l).expect("leases always serialize");
                (l.ip, (Fields::of(l), json))
            })
            .collect();
        // Deletes apply before puts (as `Plan::apply` does): a put of a deleted address stays.
        let deleted: std::collections::BTreeSet<IpAddr> = plan.deletes.iter().copied().collect();
        let mut leases: Vec<(IpAddr, Fields, &[u8])> =
            Vec::with_capacity(self.records.len() + put.len());
        for (ip, r) in &self.records {
            if put.contains_key(ip) || deleted.contains(ip) {
                continue;
            }
            let body = match r.body {
                Body::Journal(b) => b,
                Body::State { offset, len } => slice(all, offset, len),
            };
            leases.push((*ip, r.fields, body));
        }
        leases.extend(put.iter().map(|(ip, (f, json))| (*ip, *f, json.as_slice())));
        leases.sort_unstable_by_key(|(ip, _, _)| *ip);
        Ok(state_file::encode(&leases))
    }
}

fn slice(all: &[u8], offset: u64, len: u32) -> &[u8] {
    &all[offset as usize..offset as usize + len as usize]
}

/// A state file holding `leases` (a migration from an older format).
pub(super) fn state_of(leases: &Leases) -> Vec<u8> {
    let json: Vec<(IpAddr, Fields, Vec<u8>)> = leases
        .values()
        .map(|l| {
            let j = serde_json::to_vec(l).expect("leases always serialize");
            (l.ip, Fields::of(l), j)
        })
        .collect();
    let borrowed: Vec<(IpAddr, Fields, &[u8])> = json
        .iter()
        .map(|(ip, f, j)| (*ip, *f, j.as_slice()))
        .collect();
    state_file::encode(&borrowed)
}

impl LeaseView for Index<'_> {
    fn get(&self, ip: IpAddr) -> Result<Option<Lease>, IpamError> {
        self.lookup(ip).map(|r| self.decode(ip, r)).transpose()
    }

    fn attached(&self, container_id: &str, ifname: &str) -> Result<Vec<Lease>, IpamError> {
        let key = attachment_key(container_id, ifname);
        let mut out = Vec::new();
        for (ip, r) in self
            .records
            .iter()
            .filter(|(_, r)| r.fields.attachment == Some(key))
        {
            let l = self.decode(*ip, r)?;
            if l.attachment() == Some((container_id, ifname)) {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn stuck_to(&self, sticky: &Sticky) -> Result<Vec<Lease>, IpamError> {
        let key = sticky_key(&sticky.namespace, &sticky.name);
        let mut out = Vec::new();
        for (ip, r) in self
            .records
            .iter()
            .filter(|(_, r)| r.fields.sticky == Some(key))
        {
            let l = self.decode(*ip, r)?;
            if l.sticky.as_ref().is_some_and(|s| s.matches(sticky)) {
                out.push(l);
            }
        }
        Ok(out)
    }

    fn taken(&self, ip: IpAddr, now: DateTime<Utc>) -> bool {
        self.lookup(ip)
            .is_some_and(|r| !r.fields.expired(nanos(now)))
    }

    fn oldest_reclaimable(
        &self,
        pool: &str,
        usable: &dyn Fn(IpAddr) -> bool,
    ) -> Result<Option<Lease>, IpamError> {
        let key = pool_key(pool);
        let mut candidates: Vec<(i64, IpAddr)> = self
            .records
            .iter()
            .filter(|(ip, r)| {
                let f = &r.fields;
                f.kind == Kind::Held && !f.pinned && f.pool == key && usable(*ip)
            })
            .map(|(ip, r)| (r.fields.since, *ip))
            .collect();
        candidates.sort_unstable();
        // A pool key collision (another pool's hold) is skipped after decoding.
        for (_, ip) in candidates {
            let (_, l) = self.decode_at(ip)?;
            if l.pool == pool && l.reclaimable() {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    fn newest_after(&self, t: DateTime<Utc>) -> Result<Option<Lease>, IpamError> {
        // The last of the newest, as `Iterator::max_by_key` picks it; decoded only when it
        // is after `t` (almost never).
        let newest = self
            .records
            .iter()
            .max_by_key(|(_, r)| r.fields.since)
            .filter(|(_, r)| r.fields.since > nanos(t))
            .map(|(ip, _)| *ip);
        newest.map(|ip| Ok(self.decode_at(ip)?.1)).transpose()
    }

    fn all(&self) -> Result<Leases, IpamError> {
        self.all_bodies()?;
        self.records
            .iter()
            .map(|(ip, r)| Ok((*ip, self.decode(*ip, r)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::records::journal_line;
    use super::*;
    use crate::allocator::PodIdentity;
    use crate::state::LeaseState;
    use std::path::PathBuf;

    /// A state file on disk, opened.
    struct Fixture {
        _dir: tempfile::TempDir,
        state_path: PathBuf,
        journal_path: PathBuf,
        state: StateFile,
    }

    fn fixture(bytes: &[u8]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("net.leases");
        std::fs::write(&state_path, bytes).unwrap();
        let state = StateFile::open(&state_path).unwrap().unwrap();
        Fixture {
            journal_path: dir.path().join("net.journal"),
            _dir: dir,
            state_path,
            state,
        }
    }

    impl Fixture {
        fn index<'a>(&'a self, journal: &'a [u8]) -> Index<'a> {
            Index::load(
                Some(&self.state),
                journal,
                &self.state_path,
                &self.journal_path,
            )
            .unwrap()
            .0
        }
    }

    fn lease(ip: &str, state: LeaseState, sticky: Option<(&str, &str)>) -> Lease {
        Lease {
            ip: ip.parse().unwrap(),
            pool: "p".into(),
            state,
            sticky: sticky.map(|(ns, n)| Sticky {
                namespace: ns.into(),
                name: n.into(),
                ifname: Some("eth0".into()),
            }),
            pod: sticky.map(|(ns, n)| PodIdentity {
                namespace: ns.into(),
                name: n.into(),
                uid: None,
            }),
            node: "n1".into(),
            rack: None,
            since: "2026-01-01T00:00:00.123456789Z".parse().unwrap(),
            pinned: false,
        }
    }

    fn sample() -> Leases {
        let until = "2026-01-01T00:10:00Z".parse().unwrap();
        [
            lease(
                "10.0.0.2",
                LeaseState::Allocated {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                },
                Some(("ns", "web-0")),
            ),
            lease(
                "10.0.0.3",
                LeaseState::Held { until },
                Some(("ns", "web-1")),
            ),
            lease(
                "fd00::4",
                LeaseState::Reserved {
                    until: None,
                    note: Some("a note with\ttab and\nnewline".into()),
                },
                None,
            ),
        ]
        .into_iter()
        .map(|l| (l.ip, l))
        .collect()
    }

    #[test]
    fn a_state_file_reads_back_the_leases_it_was_written_from() {
        let leases = sample();
        let f = fixture(&state_of(&leases));
        let index = f.index(b"");
        // Each question first (reading single bodies), then everything.
        // Questions answer as the map answers them.
        let now = "2026-01-01T00:05:00Z".parse().unwrap();
        let later = "2026-01-01T00:20:00Z".parse().unwrap();
        for ip in ["10.0.0.2", "10.0.0.3", "fd00::4", "10.0.0.9"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(index.get(ip).unwrap(), LeaseView::get(&leases, ip).unwrap());
            for t in [now, later] {
                assert_eq!(index.taken(ip, t), leases.taken(ip, t), "{ip} at {t}");
            }
        }
        let s = Sticky {
            namespace: "ns".into(),
            name: "web-1".into(),
            ifname: None,
        };
        assert_eq!(index.stuck_to(&s).unwrap(), leases.stuck_to(&s).unwrap());
        assert_eq!(index.stuck_to(&s).unwrap().len(), 1);
        assert_eq!(
            index.attached("c1", "eth0").unwrap(),
            leases.attached("c1", "eth0").unwrap()
        );
        assert_eq!(index.attached("c1", "eth1").unwrap(), vec![]);
        let any = |_: IpAddr| true;
        assert_eq!(
            index.oldest_reclaimable("p", &any).unwrap(),
            leases.oldest_reclaimable("p", &any).unwrap()
        );
        assert_eq!(index.oldest_reclaimable("q", &any).unwrap(), None);
        for t in [now, later, "2025-12-31T00:00:00Z".parse().unwrap()] {
            assert_eq!(
                index.newest_after(t).unwrap(),
                leases.newest_after(t).unwrap()
            );
        }
        assert_eq!(index.all().unwrap(), leases);
        assert_eq!(
            index.get("10.0.0.3".parse().unwrap()).unwrap(),
            leases.get(&"10.0.0.3".parse().unwrap()).cloned()
        );
    }

    #[test]
    fn journal_lines_replay_puts_and_deletes_in_order() {
        let leases = sample();
        let f = fixture(&state_of(&leases));
        let mut moved = leases[&"10.0.0.3".parse().unwrap()].clone();
        moved.pinned = true;
        // Changes below, between and above the state's addresses.
        let low = Lease {
            ip: "10.0.0.1".parse().unwrap(),
            ..moved.clone()
        };
        let high = Lease {
            ip: "fd00::9".parse().unwrap(),
            ..moved.clone()
        };
        let plan = Plan {
            puts: vec![high, moved.clone(), low],
            deletes: vec!["10.0.0.2".parse().unwrap()],
            events: vec![],
        };
        let line = journal_line(&plan);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let (index, lines) =
            Index::load(Some(&f.state), &line, &f.state_path, &f.journal_path).unwrap();
        assert_eq!(lines, 1);
        let mut expected = leases.clone();
        plan.apply(&mut expected);
        assert_eq!(index.all().unwrap(), expected);
        // A compaction writes the same state, by address.
        let compacted = index.compacted(&Plan::default()).unwrap();
        let g = fixture(&compacted);
        let records = g.state.records().unwrap();
        assert_eq!(records.len(), expected.len());
        assert_eq!(g.index(b"").all().unwrap(), expected);
        // And a compaction with a plan applies it.
        let gone = Plan {
            deletes: vec!["10.0.0.1".parse().unwrap()],
            ..Plan::default()
        };
        let h = fixture(&g.index(b"").compacted(&gone).unwrap());
        let mut fewer = expected.clone();
        gone.apply(&mut fewer);
        assert_eq!(h.index(b"").all().unwrap(), fewer);
    }

    #[test]
    fn a_header_that_disagrees_with_its_lease_is_corrupt() {
        let mut bytes = state_of(&sample());
        // The first lease (10.0.0.2, allocated) said to be held.
        bytes[32 + 17] = 1;
        let f = fixture(&bytes);
        let err = f.index(b"").get("10.0.0.2".parse().unwrap()).unwrap_err();
        assert!(
            matches!(&err, IpamError::CorruptStore { path, reason } if path == &f.state_path && reason.contains("does not match")),
            "{err}"
        );
    }

    #[test]
    fn one_attachment_on_two_addresses_is_corrupt() {
        let mut leases = sample();
        let mut twin = leases[&"10.0.0.2".parse().unwrap()].clone();
        twin.ip = "10.0.0.9".parse().unwrap();
        leases.insert(twin.ip, twin);
        let f = fixture(&state_of(&leases));
        let err = Index::load(Some(&f.state), b"", &f.state_path, &f.journal_path)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, IpamError::CorruptStore { reason, .. } if reason.contains("c1/eth0 holds two IPv4 addresses")),
            "{err}"
        );
    }

    #[test]
    fn one_attachment_holds_one_address_per_family() {
        let mut leases = sample();
        let mut v6 = leases[&"10.0.0.2".parse().unwrap()].clone();
        v6.ip = "fd00::9".parse().unwrap();
        leases.insert(v6.ip, v6.clone());
        let f = fixture(&state_of(&leases));
        let index = f.index(b"");
        let both = index.attached("c1", "eth0").unwrap();
        assert_eq!(both, leases.attached("c1", "eth0").unwrap());
        assert_eq!(
            both.iter().map(|l| l.ip.to_string()).collect::<Vec<_>>(),
            ["10.0.0.2", "fd00::9"]
        );
        // A second IPv6 address on the same attachment is refused.
        let mut twin = v6;
        twin.ip = "fd00::a".parse().unwrap();
        leases.insert(twin.ip, twin);
        let f = fixture(&state_of(&leases));
        let err = Index::load(Some(&f.state), b"", &f.state_path, &f.journal_path)
            .err()
            .expect("refused");
        assert!(
            matches!(&err, IpamError::CorruptStore { reason, .. } if reason.contains("c1/eth0 holds two IPv6 addresses")),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_state_file_is_refused_naming_it() {
        let good = state_of(&sample());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.leases");
        let mut unsorted = good.clone();
        // Swap the first two headers.
        let (a, b) = (32..32 + 72, 32 + 72..32 + 144);
        let first = unsorted[a.clone()].to_vec();
        unsorted.copy_within(b.clone(), a.start);
        unsorted[b].copy_from_slice(&first);
        let mut twice = good.clone();
        // The second header (10.0.0.3) names the first one's address.
        twice[32 + 72 + 3] = 2;
        for (bytes, why) in [
            (twice, "listed twice"),
            (good[..good.len() - 1].to_vec(), "bytes long"),
            (good[..20].to_vec(), "too short"),
            (
                b"berth-ipam/2 and more bytes than a prefix".to_vec(),
                "does not start",
            ),
            (unsorted, "out of order"),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let err = StateFile::open(&path)
                .and_then(|s| s.unwrap().records().map(|_| ()))
                .unwrap_err();
            assert!(
                matches!(&err, IpamError::CorruptStore { path: p, reason } if p == &path && reason.contains(why)),
                "{why}: {err}"
            );
        }
    }
}
