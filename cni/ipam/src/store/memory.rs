//! An in-memory store for unit tests of the allocator and of code built on it. It is passed
//! in explicitly (`Ipam::with_store`); nothing switches to it behind the caller's back.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{HistoryLimits, Store, check_network_name, prune};
use crate::error::IpamError;
use crate::state::{Event, Leases};

/// Leases and history in a mutex; transactions are serialized by the mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<BTreeMap<String, (Leases, Vec<Event>)>>,
    limits: HistoryLimits,
    /// When set, every call fails with `Unavailable` (to test error paths of callers).
    down: std::sync::atomic::AtomicBool,
}

impl MemoryStore {
    pub fn new(limits: HistoryLimits) -> MemoryStore {
        MemoryStore {
            limits,
            ..Default::default()
        }
    }
    /// Makes every following call fail (or succeed again) as if the backend were unreachable.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
    fn up(&self) -> Result<(), IpamError> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(IpamError::Unavailable(
                "memory store is switched off".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for MemoryStore {
    fn read(&self, network: &str) -> Result<Leases, IpamError> {
        check_network_name(network)?;
        self.up()?;
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.get(network).map(|(l, _)| l.clone()).unwrap_or_default())
    }

    fn transact(&self, network: &str, decide: &mut super::Decide<'_>) -> Result<(), IpamError> {
        check_network_name(network)?;
        self.up()?;
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = g.entry(network.to_string()).or_default();
        let plan = decide(&entry.0)?;
        if plan.is_empty() {
            return Ok(());
        }
        plan.apply(&mut entry.0);
        let now = plan.events.last().map(|e| e.time);
        entry.1.extend(plan.events);
        if let Some(now) = now {
            prune(&mut entry.1, &self.limits, now);
        }
        Ok(())
    }

    fn history(&self, network: &str) -> Result<Vec<Event>, IpamError> {
        check_network_name(network)?;
        self.up()?;
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.get(network).map(|(_, h)| h.clone()).unwrap_or_default())
    }

    fn networks(&self) -> Result<Vec<String>, IpamError> {
        self.up()?;
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.keys().cloned().collect())
    }

    fn status(&self) -> Result<(), IpamError> {
        self.up()
    }
}
